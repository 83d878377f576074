"""The rows a curator reviews: a published version (``NAME@VERSION`` or its folder) or a build folder.

A published version gives its ``instructions`` (train, validation) and ``benchmark`` (test) rows with the
``records`` config as their evidence; images are embedded in the parquet and read one row at a time.
A build folder gives every generated row: the verified ones (``instructions.parquet``), the quarantined
ones with their reason (``instructions_quarantine.parquet``) and the skipped ones (``instructions_skipped
.parquet``, no text: a study and family the build did not write a row for, with the reason); its records
(``records.jsonl``), images and overlays are files of the folder.

Overlays of a published version are those its curator report carries (``report/media``); pass the build
folder (``grok review NAME@VERSION --build DIR``) to show every row's overlays.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import mimetypes
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from grok.instruct.evidence import record_from_evidence, records_row
from grok.instruct.records import load_studies
from grok.knowledge import load_knowledge_base
from grok.parquet_io import iter_batches, open_parquet
from grok.registry import RegistryError, resolve
from grok.review.decisions import content_hash

#: Configs and splits of a version that hold instruction rows.
ROW_CONFIGS = (("instructions", "train"), ("instructions", "validation"), ("benchmark", "test"))
#: Columns of the row index (one entry per row; what the queue filters and sorts on).
INDEX_COLUMNS = ("row_id", "study_id", "eye", "task", "label", "split", "verdict", "reasons", "status_reason",
                 "score", "hash")


class SourceError(ValueError):
    """A review source that cannot be opened; the message names it and the fix."""


def _list(v: Any) -> list:
    if v is None:
        return []
    return v.tolist() if hasattr(v, "tolist") else list(v)


def _codes(reasons: Any) -> str:
    """Space-separated reason codes (``wrong_number: ...`` -> ``wrong_number``), unique, in order."""
    out: list[str] = []
    for r in _list(reasons):
        c = str(r).split(":", 1)[0].strip()
        if c and c not in out:
            out.append(c)
    return " ".join(out)


@dataclass
class Row:
    """One row as the row page shows it."""

    row_id: str
    index: dict[str, Any]
    messages: list[dict[str, str]]
    image_names: list[str]
    image_roles: list[str]
    reasons: list[str]
    record: dict[str, Any] | None  #: the ``records`` row (biomarkers with units, findings, differential)
    evidence: dict[str, Any] | None  #: the study record the verifier reads
    extra: dict[str, Any] = field(default_factory=dict)


class ReviewSource:
    """Rows, records, images and overlays of one version or build folder (see the module docstring)."""

    def __init__(self, spec: str | Path, registry: str | None = None, build: str | Path | None = None, kb=None):
        self.kb = kb or load_knowledge_base()
        self.spec = str(spec)
        self._messages: dict[str, list[dict[str, str]]] = {}
        self._images: dict[str, list[str]] = {}
        self._roles: dict[str, list[str]] = {}
        self._reasons: dict[str, list[str]] = {}
        self._where: dict[str, tuple[str, int]] = {}  #: row id -> (parquet file, row) for embedded images
        self._records: dict[str, dict[str, Any]] = {}  #: study id -> records row
        self._overlays: dict[str, dict[str, str]] = {}  #: study id -> {image key: path relative to media_root}
        self.media_root: Path
        path = Path(self.spec)
        if path.is_dir() and (path / "manifest.json").is_file():
            self._open_version(path, json.loads((path / "manifest.json").read_text()))
        elif path.is_dir() and (path / "instructions.parquet").is_file():
            self._open_build(path)
        elif path.exists():
            raise SourceError(f"{path}: neither a published version folder (with manifest.json) nor a build folder "
                              "(with instructions.parquet); pass NAME@VERSION, a version folder or a build folder")
        elif "@" not in self.spec and ("/" in self.spec or self.spec.startswith(".")):
            raise SourceError(f"{path}: no such folder; pass NAME@VERSION, a published version folder or a build "
                              "folder")
        else:
            try:
                info = resolve(self.spec, registry)
            except RegistryError as exc:
                raise SourceError(f"{self.spec}: {exc}") from exc
            if "://" in info["path"] and not info["path"].startswith("file://"):
                raise SourceError(f"{self.spec} lives at {info['path']}: grok review reads a local registry; pull it "
                                  "first (grok datasets pull NAME@VERSION --out DIR) and review DIR")
            self._open_version(Path(info["path"]), info["manifest"])
        if build is not None:
            self._overlays_from_build(Path(build))
        # free-text search: every row's lower-cased text in one string, rows separated by NUL (see text_matches)
        texts = [t.encode() for *_r, t in self._index]
        self._blob = b"\x00".join(texts) + b"\x00"
        self._starts = [0, *itertools.accumulate(len(t) + 1 for t in texts)]
        del texts
        self.rows = pd.DataFrame([r[:-1] for r in self._index], columns=list(INDEX_COLUMNS))
        del self._index
        if self.rows["row_id"].duplicated().any():
            dup = self.rows.loc[self.rows["row_id"].duplicated(), "row_id"].iloc[0]
            raise SourceError(f"{self.spec}: row id {dup} appears twice; the source is inconsistent, rebuild it")
        self.position = {rid: i for i, rid in enumerate(self.rows["row_id"])}

    # -- opening -----------------------------------------------------------------------------------
    def _open_version(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.kind = "version"
        self.folder = folder
        self.label = f"{manifest.get('name', folder.parent.name)}@{manifest.get('version', folder.name)}"
        self.media_root = folder / "report"
        self.db_folder = folder.parent  # reviews.sqlite beside the versions: reviews carry over to the next one
        self._index: list[tuple] = []
        for split in ("train", "validation", "test"):
            for f in sorted((folder / "data" / "records").glob(f"{split}-*.parquet")):
                for r in pq.read_table(f).to_pylist():
                    self._records[r["study_id"]] = r
        for config, split in ROW_CONFIGS:
            for f in sorted((folder / "data" / config).glob(f"{split}-*.parquet")):
                pf = open_parquet(f)
                cols = [c for c in pf.schema_arrow.names if c != "images"]
                n = 0
                for batch in iter_batches(pf, 512, columns=cols + ["images"]):
                    d = batch.to_pydict()
                    d["images"] = [[{"path": im.get("path")} for im in ims or []] for ims in d["images"]]
                    for i in range(batch.num_rows):
                        row = {k: d[k][i] for k in d}
                        self._add(row, split, "passed", row.get("verifier_reasons"), "", row.get("verifier_score"))
                        self._where[row["id"]] = (str(f), n + i)
                    n += batch.num_rows
        for sid, rec in self._records.items():  # overlays the curator report carries
            ev = json.loads(rec["evidence"]) if rec.get("evidence") else {}
            found = {}
            for key, rel in (ev.get("images") or {}).items():
                cand = f"{rel.rsplit('/', 1)[0]}/{key}_overlay.png"
                name = hashlib.sha256(cand.encode()).hexdigest()[:16] + ".png"
                if (self.media_root / "media" / name).is_file():
                    found[key] = f"media/{name}"
            if found:
                self._overlays[sid] = found

    def _open_build(self, folder: Path) -> None:
        self.kind = "build"
        self.folder = folder
        self.label = f"build {folder.name}"
        self.media_root = folder
        self.db_folder = folder
        self._index = []
        try:
            studies = load_studies(folder / "records.jsonl")
        except FileNotFoundError as exc:
            raise SourceError(f"{folder}: no records.jsonl; the build did not reach the records stage (rerun grok "
                              "build)") from exc
        for rec in studies:
            self._records[str(rec["study_id"])] = records_row(rec, self.kb)
            self._overlays[str(rec["study_id"])] = {k: v for k, v in (rec.get("overlays") or {}).items() if v}
        for name, verdict in (("instructions.parquet", None), ("instructions_quarantine.parquet", "quarantined")):
            p = folder / name
            if not p.exists():
                continue
            for row in pq.read_table(p).to_pylist():
                v = verdict or ("passed" if row.get("verifier_passed") else "failed")
                self._add(row, "", v, row.get("verifier_reasons"),
                          str(row.get("error_class") or "") if verdict else "", row.get("verifier_score"))
        p = folder / "instructions_skipped.parquet"
        if p.exists():
            for row in pq.read_table(p).to_pylist():
                row = {**row, "id": f"skipped-{row['study_id']}-{row['task']}", "messages": [], "images": []}
                self._add(row, "", "skipped", [row.get("reason") or ""], str(row.get("reason_code") or ""), None)

    def _overlays_from_build(self, build: Path) -> None:
        if not (build / "records.jsonl").is_file():
            raise SourceError(f"--build {build}: no records.jsonl there; pass the build folder this version was "
                              "published from")
        self.media_root = build
        self._overlays = {str(r["study_id"]): {k: v for k, v in (r.get("overlays") or {}).items() if v}
                          for r in load_studies(build / "records.jsonl")}
        self._build_images = build

    def _add(self, row: dict[str, Any], split: str, verdict: str, reasons: Any, status_reason: str,
             score: Any) -> None:
        rid = str(row["id"])
        msgs = [{"role": str(m["role"]), "content": str(m["content"])} for m in _list(row.get("messages"))]
        imgs = [str((im.get("path") if isinstance(im, dict) else im) or "") for im in _list(row.get("images"))]
        reasons = [str(r) for r in _list(reasons)]
        text = "\n".join(m["content"] for m in msgs)
        self._messages[rid] = msgs
        self._images[rid] = imgs
        self._roles[rid] = [str(r) for r in _list(row.get("image_roles"))]
        self._reasons[rid] = reasons
        sc = float(score) if score is not None and not (isinstance(score, float) and math.isnan(score)) else None
        self._index.append((rid, str(row.get("study_id") or ""), str(row.get("eye") or ""), str(row.get("task") or ""),
                            str(row.get("label") or ""), split, verdict, _codes(reasons), status_reason, sc,
                            content_hash({**row, "messages": msgs, "images": imgs}),
                            (text + " " + rid + " " + str(row.get("study_id") or "")).lower()))

    # -- reading -----------------------------------------------------------------------------------
    def text_matches(self, text: str, within: np.ndarray | None = None) -> np.ndarray:
        """Boolean mask of the rows (among ``within``, a mask) whose text, row id or study id contains ``text``
        (case-insensitive). A large selection is one scan of the joined UTF-8 texts, skipping to the next row
        after each hit; a small one (under an eighth of the rows) checks its rows one by one."""
        needle = text.lower().replace("\x00", "").encode()
        n = len(self.rows)
        out = np.zeros(n, dtype=bool)
        if not needle:
            out[:] = True if within is None else within
            return out
        blob, starts = self._blob, self._starts
        if within is not None and within.sum() < n // 8:
            for i in np.flatnonzero(within):
                out[i] = blob.find(needle, starts[i], starts[i + 1]) >= 0
            return out
        find = blob.find
        pos = find(needle)
        while pos >= 0:
            i = bisect_right(starts, pos) - 1
            out[i] = True
            pos = find(needle, starts[i + 1])
        return out if within is None else out & within

    def row(self, row_id: str) -> Row:
        """The row ``row_id`` with its record; ``KeyError`` when there is none."""
        i = self.position[row_id]
        idx = self.rows.iloc[i].to_dict()
        rec = self._records.get(idx["study_id"])
        ev = record_from_evidence(rec["evidence"]) if rec is not None and rec.get("evidence") else None
        return Row(row_id, idx, self._messages[row_id], self._images[row_id], self._roles[row_id],
                   self._reasons[row_id], rec, ev)

    def verify_row(self, row_id: str, messages: list[dict[str, str]]) -> dict[str, Any]:
        """The row as the verifier reads it, with ``messages`` in place of its own."""
        r = self.row(row_id)
        return {"id": row_id, "study_id": r.index["study_id"], "eye": r.index["eye"], "task": r.index["task"],
                "label": r.index["label"], "messages": messages, "images": r.image_names, "image_roles": r.image_roles}

    def records_for_verifier(self) -> dict[str, dict[str, Any]]:
        """study id -> the study record the verifier reads (parsed on first use, then kept)."""
        if not hasattr(self, "_evidence"):
            self._evidence = {sid: record_from_evidence(r["evidence"]) for sid, r in self._records.items()
                              if r.get("evidence")}
        return self._evidence

    def image(self, row_id: str, i: int) -> tuple[bytes, str]:
        """``(bytes, media type)`` of the ``i``-th image of a row; ``KeyError``/``IndexError`` when absent."""
        name = self._images[row_id][i]
        if self.kind == "build" or getattr(self, "_build_images", None) is not None:
            base = self.folder if self.kind == "build" else self._build_images
            rel = name if self.kind == "build" else self._build_rel(row_id, name)
            p = _inside(base, rel)
            return p.read_bytes(), mimetypes.guess_type(p.name)[0] or "application/octet-stream"
        f, n = self._where[row_id]
        pf = open_parquet(f)
        start = 0
        for g in range(pf.num_row_groups):
            rows = pf.metadata.row_group(g).num_rows
            if n < start + rows:
                ims = pf.read_row_group(g, columns=["images"]).column("images")[n - start].as_py()
                im = ims[i]
                return im["bytes"], mimetypes.guess_type(im.get("path") or "")[0] or "application/octet-stream"
            start += rows
        raise IndexError(f"row {row_id}: image {i} not in {f}")

    def _build_rel(self, row_id: str, name: str) -> str:
        ev = self.records_for_verifier().get(self.rows.iloc[self.position[row_id]]["study_id"]) or {}
        for rel in (ev.get("images") or {}).values():
            if rel.rsplit("/", 1)[-1] == name:
                return rel
        raise KeyError(name)

    def overlays(self, study_id: str) -> dict[str, str]:
        """image key -> overlay path (relative to :attr:`media_root`) for a study."""
        return self._overlays.get(study_id, {})

    def media(self, rel: str) -> tuple[bytes, str]:
        """A file below :attr:`media_root` (an overlay); ``KeyError`` for anything outside it."""
        p = _inside(self.media_root, rel)
        return p.read_bytes(), mimetypes.guess_type(p.name)[0] or "application/octet-stream"


def _inside(base: Path, rel: str) -> Path:
    """``base / rel`` when that is a file inside ``base`` (never a path that climbs out)."""
    root = base.resolve()
    p = (root / rel).resolve()
    if root not in p.parents or not p.is_file():
        raise KeyError(rel)
    return p


def db_folder(spec: str | Path, registry: str | None = None) -> Path:
    """Where the default review database of a source lives: beside the versions of a published dataset
    (``<registry>/<name>/reviews.sqlite``, so reviews carry over to the next version) or in a build folder."""
    path = Path(str(spec))
    if path.is_dir() and (path / "manifest.json").is_file():
        return path.parent
    if path.is_dir():
        return path
    try:
        info = resolve(str(spec), registry)
    except RegistryError as exc:
        raise SourceError(f"{spec}: {exc}") from exc
    return Path(info["path"]).parent
