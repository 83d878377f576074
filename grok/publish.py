"""Publish a finished build as a versioned Hugging Face dataset (instructions, alignment, benchmark).

Run as: grok publish BUILD_DIR --name NAME [--version X.Y.Z | --bump major|minor|patch]

Steps, each of which can stop publication with a clear error and nothing written to the registry:

1. the build folder must be complete (``build.json`` says so, or every required table exists);
2. every generated instruction row is accounted for (verified, quarantined by reason, skipped by reason:
   :mod:`grok.instruct.accounting`) and publication is refused when the verified share of all of them is
   under ``verifier_pass_rate``;
   patients are split train/validation/test (stratified by label, deterministic by seed);
3. exact and near-duplicate instruction texts are removed, and train is decontaminated against the
   held-out splits (every removed row is counted in the manifest and the card);
4. the data contracts (``data_contracts/``) run on the instructions, alignment, biomarkers and
   labels tables with the deny list of the source archive's identifiers (the hashed
   ``ingest/deny_list.json`` ingestion wrote, plus ``deny_list``), then the privacy scan
   (:mod:`grok.privacy.scan`) reads every input of the version (tables, records, media) for the same
   identifiers; a failure or a hit blocks publication and names the failing expectations or the
   files (never an identifier);
5. the configs are built with images embedded (``datasets.Image``): ``instructions`` (train,
   validation), ``benchmark`` (test), ``alignment`` (train, validation, test) and ``records`` (train,
   validation, test: the evidence every row's text is checked against, joined by ``study_id``;
   :mod:`grok.instruct.evidence`);
6. the version folder (parquet, dataset card, manifest, curator report) is written atomically by
   :func:`grok.registry.publish`, after the same scan of the staged version (data, manifest, report,
   card) finds nothing; optionally pushed to the Hugging Face Hub with a tag per version.

Memory: the instruction rows' text is never whole in memory. Publication keeps the rows' splits, labels,
scores and places in the file (:class:`InstructionRows`, about 35 bytes a row), reads their ids and text from a
memory-mapped Arrow copy of ``instructions.parquet`` a few hundred rows at a time for the lint, the
duplicate checks (which keep an index, not the texts), the contracts (:mod:`grok.contracts` keeps the
columns its expectations read) and the published splits (written batch by batch to memory-mapped files,
fingerprinted a batch at a time); study records are read from ``records.jsonl`` when needed.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import html
import itertools
import json
import math
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import jinja2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, field_validator

import grok.contracts
from grok import __version__, registry
from grok.config import Settings
from grok.ids import OCT_GROK_BIOMARKERS
from grok.instruct.accounting import account, describe, pass_rate
from grok.instruct.evidence import records_features, records_row
from grok.instruct.lint import lint_rows
from grok.instruct.records import StudyError, load_studies
from grok.knowledge import load_knowledge_base
from grok.knowledge.lexicon import build_lexicon
from grok.parquet_io import (
    TableWriter,
    arrow_pool,
    iter_batches,
    map_arrow,
    open_parquet,
    release_memory,
    take_rows,
)
from grok.privacy.denylist import DENY_LIST_FILE, DenyList
from grok.privacy.scan import scan_path
from grok.resources import bundled_dir
from grok.review.apply import apply_reviews
from grok.splits import PatientSplits, assign_splits, decontaminate_texts, dedup_texts, sorted_positions

TEMPLATES = bundled_dir("templates") / "report"


class PublishError(RuntimeError):
    """Publication refused; the message says why and what to fix."""


class PublishConfig(Settings):
    """How a build becomes a dataset version (``grok publish``; the build's ``publish`` section extends it
    with the deny-list file, :class:`grok.stages.config.PublishSettings`).

    What is not a setting is an argument of :func:`publish_build`: the identifiers to deny, the pseudonym
    secret they are hashed with, whether the data are synthetic.
    """

    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9._-]*$", description=(
        "Registry dataset name (lower case, digits, '.', '-', '_')."))
    version: str | None = Field(None, description="Explicit X.Y.Z; default: bump the latest by `bump`.")
    bump: Literal["major", "minor", "patch"] = Field("minor", description="Which part of the latest version to bump.")
    registry: str | None = Field(None, description=(
        "Registry root (folder or fsspec URL); default $GROK_REGISTRY or ./registry."))
    split_ratios: tuple[float, float, float] = Field((0.8, 0.1, 0.1), description=(
        "Train, validation, test fractions of patients."))
    split_seed: int = Field(0, description="Seed of the patient split.")
    verifier_pass_rate: float = Field(0.9, ge=0, le=1, description=(
        "Minimum share of verified rows among every generated row (verified + quarantined + skipped); below "
        "it publication is refused with the counts per reason."))
    near_dup_threshold: float = Field(0.9, gt=0, le=1, description=(
        "Jaccard similarity (5-word shingles) at or above which two texts are duplicates."))
    report_rows_per_group: int = Field(2, ge=1, description="Rows per (label, task) in the curator report.")
    hub_repo: str | None = Field(None, description="Also push to this Hugging Face Hub dataset repo (org/name).")
    license: str = Field("other", description="Licence id for the dataset card.")
    reviews: str | None = Field(None, description=(
        "Curator review database (SQLAlchemy URL or SQLite file, see grok review) whose decisions apply: rejected "
        "rows are dropped, accepted edits replace the text after a new verification; coverage, acceptance and "
        "agreement go into the card and manifest.json."))
    max_shard_bytes: int = Field(500_000_000, ge=1, description=(
        "Largest data file of a split (Arrow bytes): a larger split is written as several parquet shards "
        "(<split>-NNNNN-of-MMMMM.parquet), which datasets.load_dataset and grok.registry.load read lazily."))

    @field_validator("split_ratios")
    @classmethod
    def _ratios(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if abs(sum(v) - 1.0) > 1e-6 or min(v) < 0:
            raise ValueError("{here}split_ratios must be three non-negative numbers summing to 1")
        return v


REQUIRED = ("records.jsonl", "biomarkers.parquet", "instructions.parquet")
#: Build files a version is made of (besides the media its rows refer to), read by the privacy scan.
INPUTS = REQUIRED + ("labels.parquet",)


def check_build(build_dir: Path) -> dict[str, Any]:
    """Refuse half-written builds; returns ``build.json`` (or a minimal stand-in)."""
    if not build_dir.is_dir():
        raise PublishError(f"{build_dir}: no such build folder; run grok build first")
    info_path = build_dir / "build.json"
    info: dict[str, Any] = {}
    if info_path.exists():
        try:
            info = json.loads(info_path.read_text())
        except json.JSONDecodeError as exc:
            raise PublishError(f"{info_path}: unreadable ({exc}); the build was interrupted, rerun grok build") from exc
        # ready_to_publish: every stage before publication finished; complete: the version was published
        if not (info.get("complete") or info.get("ready_to_publish")):
            raise PublishError(f"{build_dir}: build.json says the build is not complete (last stage: "
                               f"{info.get('last_stage', 'unknown')}); rerun grok build to finish it")
    missing = [f for f in REQUIRED if not (build_dir / f).exists()]
    if missing:
        raise PublishError(f"{build_dir}: half-written build, missing {', '.join(missing)}; rerun grok build")
    return info


def _text(messages: Any) -> str:
    ms = messages.tolist() if hasattr(messages, "tolist") else messages
    return "\n".join(f"{m['role']}: {m['content']}" for m in ms)


def _image_bytes(build_dir: Path, rel: str) -> dict[str, Any]:
    # plain strings, no Path per image: pathlib interns every part of a path it parses (study folders, file
    # names), and the interpreter's table of interned strings grew 3.8 MB over 10,000 studies' images and never
    # shrinks (tracemalloc, issue 22)
    p = os.path.join(build_dir, rel)
    if not os.path.isfile(p):
        raise PublishError(f"{build_dir}: image {rel} referenced by a row is missing; rerun the measure stage")
    with open(p, "rb") as fh:
        return {"bytes": fh.read(), "path": os.path.basename(rel)}


def _table(path: Path, columns: list[str]) -> pd.DataFrame:
    """``columns`` of a build table as a frame (no rows when the file does not exist: an older or empty build;
    a column the file lacks is empty). Only those columns are read (a quarantine table holds whole rows)."""
    if not path.exists():
        return pd.DataFrame(columns=columns)
    have = [c for c in columns if c in pq.read_schema(path).names]
    df = pq.read_table(path, columns=have).to_pandas()
    return df.reindex(columns=columns)


class StudyRecords(Mapping):
    """The build's study records by study id, read from ``records.jsonl`` when asked for: only each record's
    place in the file (and its patient and label, which the split needs) stays in memory, as arrays (the study
    ids sorted, as fixed-width UTF-8 bytes, found by binary search; offsets and sizes as integers; patients and
    labels as Arrow arrays), never a Python object per study (issue 22), so publication does not hold every
    record of the archive at once. Iteration follows the file (as a dict read from it would; a study id written
    twice keeps its first place and its last record)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._whole: dict[str, dict[str, Any]] | None = None
        if self.path.suffix != ".jsonl":  # another format: read whole (small, hand-made inputs)
            self._whole = {r["study_id"]: r for r in load_studies(self.path)}
            return
        if not self.path.exists():
            load_studies(self.path)  # the error that names the file and the fix
        ids: list[bytes] = []
        places: list[tuple[int, int]] = []
        patients: list[Any] = []
        labels: list[Any] = []
        with open(self.path, "rb") as fh:
            pos = 0
            for i, line in enumerate(fh, 1):
                start, pos = pos, pos + len(line)
                if not line.strip():
                    continue
                try:
                    r = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise StudyError(f"{self.path}:{i}: not valid JSON ({exc.msg}); each line must be one study "
                                     "record") from exc
                ids.append(r["study_id"].encode())
                places.append((start, pos - start))
                patients.append(r["patient_id"])
                labels.append(r["label"])
        key = np.array(ids, dtype=bytes)
        order = np.argsort(key, kind="stable")  # equal ids stay in file order
        key = key[order]
        first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, np.int64)
        last = order[np.r_[first[1:], len(key)].astype(np.int64) - 1] if len(key) else first  # each id's last line
        #: sorted study ids; where each one's record is (bytes from the start, size); each one's patient, label
        self._ids = key[first]
        self._place = np.array(places, dtype=np.int64).reshape(-1, 2)[last]
        self._patient = pa.array(patients).take(pa.array(last))
        self._label = pa.array(labels).take(pa.array(last))
        #: places in the sorted ids in the order of the file (each id's first line)
        self._file_order = np.argsort(order[first], kind="stable")

    def _find(self, sid: Any) -> int:
        """The place of ``sid`` in the sorted ids; KeyError when it has no record."""
        i = int(sorted_positions(self._ids, np.array([sid.encode()], dtype=bytes))[0]) if isinstance(sid, str) else -1
        if i < 0:
            raise KeyError(sid)
        return i

    def _read(self, i: int) -> dict[str, Any]:
        start, n = self._place[i]
        with open(self.path, "rb") as fh:
            fh.seek(int(start))
            return json.loads(fh.read(int(n)))

    def __getitem__(self, sid: str) -> dict[str, Any]:
        if self._whole is not None:
            return self._whole[sid]
        return self._read(self._find(sid))

    def __contains__(self, sid: object) -> bool:
        if self._whole is not None:
            return sid in self._whole
        try:
            self._find(sid)
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        if self._whole is not None:
            return iter(self._whole)
        return (self._ids[i].decode() for i in self._file_order)

    def __len__(self) -> int:
        return len(self._whole) if self._whole is not None else len(self._ids)

    def patients(self) -> Iterator[tuple[Any, Any]]:
        """(patient id, label) of every record, in file order, without reading the records."""
        if self._whole is not None:
            return ((r["patient_id"], r["label"]) for r in self._whole.values())
        take = pa.array(self._file_order)
        return zip(self._patient.take(take).to_pylist(), self._label.take(take).to_pylist())

    def sorted_values(self) -> Iterator[dict[str, Any]]:
        """Every record in study-id order, one at a time."""
        if self._whole is not None:
            return (self._whole[sid] for sid in sorted(self._whole))
        return (self._read(i) for i in range(len(self._ids)))


#: Columns of ``instructions.parquet`` that hold the rows' text: read a batch at a time, never all at once.
TEXT_COLUMNS = ("messages", "provenance")
#: Columns of ``instructions.parquet`` held in memory for every row (:attr:`InstructionRows.frame`): what selecting,
#: splitting, ordering, reviewing and accounting for rows read. The others (the row's id, the text, image paths
#: and roles, template, seed and knowledge-base ids, the verifier's reasons) stay in the memory-mapped copy and are
#: read with the text. On the 5,000-study build's 24,401 published rows the frame was 16.0 MB of pandas with every column,
#: 10.3 MB of it the columns now left out (``DataFrame.memory_usage(deep=True)``, issue 22). Every column held is
#: categorical or numeric, no Python object per row: ``verifier_reasons`` (a list per row, a
#: numpy array of Python strings in pandas) was 1.76 of the frame's 3.86 MB at 2,500 synthetic studies.
INDEX_COLUMNS = ("study_id", "patient_id", "eye", "task", "label", "verifier_passed", "verifier_score")
#: Columns of :attr:`InstructionRows.frame` held as pandas categoricals (a small integer code a row, each distinct
#: value once): a study's rows share its study and patient ids, and eyes, tasks, labels and splits are a handful of
#: values. On 10,000 synthetic studies (53,291 published rows) the frame was 8.55 MB with Arrow strings, 160 bytes
#: a row (``memory_usage(deep=True)``, issue 22); what is left per row is the codes, the row's place and score
#: (34-37 bytes a row at 2,500-40,000 synthetic studies since the id is read from the file, 66 with it).
CATEGORY_COLUMNS = ("study_id", "patient_id", "eye", "task", "label")
#: Columns a curator's edit (grok.review.apply) adds to the frame, None where a row is not edited: the value
#: replaces the column of the row's own (read from the file) when it is written.
EDITED_COLUMNS = {"messages_edited": "messages", "verifier_reasons_edited": "verifier_reasons"}
#: Rows read with their text at a time (lint, dedup, contracts, the published splits).
TEXT_BATCH_ROWS = 256
#: :meth:`InstructionRows.full` gives the Arrow pool's unused pages back after this many batches: a pass over the
#: 5,000-study build's 26,372 rows took 1.01-1.09 s CPU without releases, 1.42 s releasing after every batch and
#: 1.14-1.18 s after every 4th, its resident memory back where it started (ad-hoc probe, one thread)
RELEASE_EVERY_BATCHES = 4
#: The biomarkers whose distribution (p5, median, p95, missing) the dataset card shows.
CARD_BIOMARKERS = ("macular_thickness_central_um", "macular_thickness_overall_um", "rnfl_thickness_um",
                   "gcipl_thickness_um", "drusen_volume_3mm_mm3", "irf_volume_nl", "srf_volume_nl",
                   "cup_disc_ratio_vertical", "av_ratio", "vessel_density", "rnfl_peripapillary_mean_um")


def biomarker_distributions(path: Path) -> list[dict[str, Any]]:
    """The dataset card's distribution of each of :data:`CARD_BIOMARKERS` the table has and measured at least
    once: values measured (``n``), 5th percentile, median and 95th percentile (linear interpolation, as pandas'
    ``quantile``) and rows without a value (``missing``). The file is read a column at a time and only the
    summary kept: the card's columns held for every study were 4.4 MB at 40,000 studies (issue 22)."""
    pf = open_parquet(path)
    out = []
    for b in CARD_BIOMARKERS:
        if b not in pf.schema_arrow.names:
            continue
        col = pf.read(columns=[b]).column(0)
        vals = pc.cast(col, pa.float64(), safe=False).to_numpy(zero_copy_only=False) if len(col) else np.zeros(0)
        vals = vals[np.isfinite(vals)]
        if len(vals):
            p5, median, p95 = np.quantile(vals, [0.05, 0.5, 0.95])
            out.append({"id": b, "n": len(vals), "p5": float(p5), "median": float(median), "p95": float(p95),
                        "missing": len(col) - len(vals)})
        del col, vals
    return out


class InstructionRows:
    """The build's instruction rows for publication. ``frame``: the :data:`INDEX_COLUMNS` of every row as a pandas
    frame in the order of the rows' ids (stable), with ``_pos``, each row's place in the file; the other columns
    (the id, the text, image paths, template ids: :attr:`heavy_columns`) stay in an Arrow copy of
    ``instructions.parquet`` memory-mapped from ``tmp`` and are read for a few hundred rows at a time
    (:meth:`full`, :meth:`values`, :meth:`ids`), so publication holds the archive's labels and places, not its
    text (:func:`prepare` takes the frame, leaving ``None``, and keeps only the rows it publishes). The id is read
    with the text: as text it was 32 of the index's 66 bytes a row (issue 22); the frame is put in id order once,
    here, and every selection of it keeps that order. Without ``tmp`` the table is read into memory (small
    builds, tests)."""

    def __init__(self, path: Path, tmp: Path | None = None):
        self.arrow: Path | None = None  # the memory-mapped copy, when there is one
        if tmp is None:
            self.table = pq.read_table(path)
        else:
            arrow = self.arrow = Path(tmp) / "instructions.arrow"
            pf = open_parquet(path)
            with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_file(sink, pf.schema_arrow) as writer:
                for batch in iter_batches(pf, 4096):
                    writer.write_batch(batch)
            self.table = map_arrow(arrow)  # zero-copy, pages from disk
        names = self.table.column_names
        self.heavy_columns = [c for c in names if c not in INDEX_COLUMNS]
        index = [c for c in names if c in INDEX_COLUMNS]
        frame = self.table.select(index).to_pandas(categories=[c for c in CATEGORY_COLUMNS if c in index])
        pos = np.arange(len(frame), dtype=np.int32 if len(frame) < 2**31 else np.int64)
        if "id" in names and len(frame):
            # Arrow's sort is stable: rows with equal ids (which the contracts refuse) keep the file's order
            pos = pc.sort_indices(self.table.column("id")).to_numpy().astype(pos.dtype)
            frame = frame.take(pos).reset_index(drop=True)
        self.frame = frame.assign(_pos=pos)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (for the contracts' child process) as the mapped copy's path, which the other process maps
        again, not as the text; an in-memory table travels whole."""
        state = dict(self.__dict__)
        if self.arrow is not None:
            del state["table"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if "table" not in state:
            self.table = map_arrow(self.arrow)

    def _take(self, frame: pd.DataFrame, columns: list[str]) -> pa.Table:
        return take_rows(self.table.select(columns), frame["_pos"].to_numpy())

    def ids(self, frame: pd.DataFrame) -> pd.Series:
        """The ids of the rows of ``frame`` (read from the file), as text, indexed as ``frame`` is."""
        return pd.Series(self._take(frame, ["id"]).column(0).to_pylist(), index=frame.index, dtype=object)

    def values(self, frame: pd.DataFrame, columns: list[str]) -> pa.Table:
        """``columns`` (those the file has) of the rows of ``frame``, in its order, as an Arrow table."""
        return self._take(frame, [c for c in columns if c in self.table.column_names])

    def full(self, frame: pd.DataFrame, batch: int | None = None) -> Iterator[dict[str, Any]]:
        """The rows of ``frame`` (a selection of :attr:`frame`, in any order) as dicts with every column, in
        ``frame``'s order; the frame's own values win (a split, an edited score), and a curator's edit
        (:data:`EDITED_COLUMNS`) replaces the messages and reasons. ``batch``: rows read at a time
        (:data:`TEXT_BATCH_ROWS`)."""
        batch = batch or TEXT_BATCH_ROWS
        heavy = [c for c in self.heavy_columns if c not in frame.columns]
        for start in range(0, len(frame), batch):
            part = frame.iloc[start:start + batch]
            read = self._take(part, heavy).to_pylist()
            # each taken batch is freed, but the pool's allocator (mimalloc) keeps its pages: over a 5,000-study
            # build's rows that was +27 MB of resident memory (issue 22), given back every few batches
            if start // batch % RELEASE_EVERY_BATCHES == RELEASE_EVERY_BATCHES - 1:
                pa.default_memory_pool().release_unused()
            for r, h in zip(part.to_dict("records"), read):
                edits = {col: r.pop(edit) for edit, col in EDITED_COLUMNS.items() if edit in r}
                r.update(h)
                r.update((col, v) for col, v in edits.items() if isinstance(v, list))
                yield r

    def frames(self, frame: pd.DataFrame, batch: int | None = None) -> Iterator[pd.DataFrame]:
        """:meth:`full` as pandas batches with the instructions table's columns, of the contracts' batch size
        (:data:`grok.contracts.BATCH_ROWS`) by default."""
        batch = batch or grok.contracts.BATCH_ROWS
        heavy = [c for c in self.heavy_columns if c not in frame.columns]
        for start in range(0, max(len(frame), 1), batch):
            part = frame.iloc[start:start + batch]
            rows = list(self.full(part))
            out = part.drop(columns=[c for c in ("_pos", *EDITED_COLUMNS) if c in part.columns])
            out = out.astype({c: "str" for c in out.columns if isinstance(out[c].dtype, pd.CategoricalDtype)})
            for c in heavy:
                out = out.assign(**{c: [r[c] for r in rows]})
            yield out


class InstructionFrames:
    """The rows of ``frame`` as the contracts read them (:meth:`InstructionRows.frames`, batch by batch when
    iterated), picklable: the mapped copy's path and the rows' index travel to the contracts' child process, not
    the text (:func:`run_contracts`). With a mapped copy the index is first written beside it (:meth:`spill`, one
    pickled part per batch of rows) and the child reads it a part at a time, so neither process holds a second
    copy of it (it was 12 MB, 58 bytes a row, in the child at 40,000 synthetic studies; issue 22)."""

    def __init__(self, rows: InstructionRows, frame: pd.DataFrame):
        self.rows, self.frame = rows, frame
        self.index_file: Path | None = None
        self.n_rows = len(frame)

    def spill(self) -> InstructionFrames:
        """Write the index beside the mapped copy (nothing without one) and let go of it here."""
        if self.rows.arrow is not None and self.frame is not None:
            path = self.rows.arrow.with_name(f"index-{os.getpid()}-{id(self):x}.pickles")
            batch = grok.contracts.BATCH_ROWS
            with open(path, "wb") as fh:
                for start in range(0, max(len(self.frame), 1), batch):
                    pickle.dump(self.frame.iloc[start:start + batch], fh, protocol=pickle.HIGHEST_PROTOCOL)
            self.index_file, self.frame = path, None
        return self

    def __iter__(self) -> Iterator[pd.DataFrame]:
        if self.frame is not None:
            yield from self.rows.frames(self.frame)
            return
        with open(self.index_file, "rb") as fh:
            while True:
                try:
                    part = pickle.load(fh)
                except EOFError:
                    return
                yield from self.rows.frames(part)

    def close(self) -> None:
        """Remove the spilled index."""
        if self.index_file is not None:
            self.index_file.unlink(missing_ok=True)


#: Rows of the instruction index looked at a time when one split's rows are read (:func:`split_rows`): a split is
#: selected part by part, never copied out of the index whole (the train split's copy was 80 % of the index).
SPLIT_SCAN_ROWS = 4096


def split_rows(rows: InstructionRows, frame: pd.DataFrame, *splits: str) -> Iterator[dict[str, Any]]:
    """The rows of ``frame`` in ``splits`` (one after the other, each in ``frame``'s order) with every column, as
    :meth:`InstructionRows.full` gives them; ``frame`` is scanned :data:`SPLIT_SCAN_ROWS` rows at a time, so what
    is selected at once is bounded, whatever the split's size (issue 22)."""
    for split in splits:
        for start in range(0, len(frame), SPLIT_SCAN_ROWS):
            part = frame.iloc[start:start + SPLIT_SCAN_ROWS]
            part = part[(part["split"] == split).to_numpy()]
            if len(part):
                yield from rows.full(part)
                pa.default_memory_pool().release_unused()


def _failed_rows(rows: InstructionRows, failed: pd.DataFrame) -> Iterator[dict[str, Any]]:
    """The rows of ``failed`` (rows that failed verification) as the accounting counts them, their task and
    reasons, read :data:`SPLIT_SCAN_ROWS` rows at a time: a list of the failed rows' reasons held at once was
    a Python list and strings for each of about a tenth of the rows (issue 22)."""
    for start in range(0, len(failed), SPLIT_SCAN_ROWS):
        part = failed.iloc[start:start + SPLIT_SCAN_ROWS]
        reasons = rows.values(part, ["verifier_reasons"])
        reasons = reasons.column(0).to_pylist() if reasons.num_columns else [None] * len(part)
        yield from ({"task": t, "verifier_reasons": r} for t, r in zip(part["task"], reasons))


def _row_text(r: Mapping[str, Any]) -> str:
    """What the duplicate checks compare: the messages, then the image references (a multimodal row is its
    images plus its text: the same templated answer about other images is not a duplicate)."""
    imgs = r.get("images")
    return _text(r["messages"]) + "\n" + " ".join(list(imgs) if imgs is not None else [])


def prepare(build_dir: Path, cfg: PublishConfig, kb=None, tmp: Path | None = None) -> dict[str, Any]:
    """Everything publish needs: the instruction rows to publish (``instructions``: their ids, splits and labels
    in id order, the text left in ``rows``, an :class:`InstructionRows` over a memory-mapped copy in ``tmp``),
    removed rows, per-table frames for contracts, and the accounting of every generated row (verified,
    quarantined, skipped)."""
    if kb is None:
        kb = load_knowledge_base()
    records = StudyRecords(build_dir / "records.jsonl")
    rows = InstructionRows(build_dir / "instructions.parquet", tmp)
    ins, rows.frame = rows.frame, None  # the rows kept below are a copy: the whole index is not held twice
    n_in = len(ins)
    passed = ins["verifier_passed"].astype(bool)
    failed = ins[~passed]
    ins = ins[passed].copy()
    # style and variety of the verified text (grok lint-text), before curator edits: the card's figures
    text_lint = lint_rows(rows.full(ins), kb, build_lexicon(kb), examples=2)
    quarantine = _table(build_dir / "instructions_quarantine.parquet", ["task", "verifier_reasons", "error_class"])
    skipped = _table(build_dir / "instructions_skipped.parquet", ["study_id", "task", "reason_code", "label"])
    # one row at a time, not a list of a dict per row (33 MB while it was counted at 40,000 synthetic studies),
    # the failed rows' reasons read from the mapped copy a part at a time (issue 22)
    acc = account(({"task": t} for t in ins["task"]),
                  itertools.chain(_failed_rows(rows, failed), quarantine.to_dict("records")),
                  ({"task": t, "reason_code": c} for t, c in zip(skipped["task"], skipped["reason_code"])))
    pat = pd.DataFrame([{"patient_id": p, "label": lab} for p, lab in records.patients()])
    if pat.empty:
        raise PublishError(f"{build_dir}: no labelled study records; nothing to publish (see records_quarantine)")
    split_of = PatientSplits(assign_splits(pat, ratios=cfg.split_ratios, seed=cfg.split_seed))
    del pat
    ins["split"] = split_of.of(ins["patient_id"]).astype("category")
    orphan = ins["split"].isna()
    if orphan.any():
        raise PublishError(f"{int(orphan.sum())} instruction rows belong to patients without a study record; "
                           "the build folder is inconsistent, rerun grok build")
    # exact and near duplicates within each split (first by id kept: the index is in id order), then train rows
    # near a held-out row; the texts are read a batch at a time, a row is named by its place in the file (which
    # row a check removes depends only on the order), and the kept rows are those not removed (issue 22)
    removed = []
    for split in ("train", "validation", "test"):
        removed += dedup_texts(((r["_pos"], _row_text(r)) for r in split_rows(rows, ins, split)),
                               threshold=cfg.near_dup_threshold, tmp=tmp, kept_ids=False)[1]
    ins = ins[~ins["_pos"].isin([r["id"] for r in removed]).to_numpy()]
    rem = decontaminate_texts(((r["_pos"], _row_text(r)) for r in split_rows(rows, ins, "train")),
                              ((r["_pos"], _row_text(r)) for r in split_rows(rows, ins, "validation", "test")),
                              threshold=cfg.near_dup_threshold, tmp=tmp, kept_ids=False)[1]
    removed += rem
    ins = ins[~ins["_pos"].isin([r["id"] for r in rem]).to_numpy()].reset_index(drop=True)
    # only why each row went is kept (the card counts them): the removed rows' ids were three Python strings a
    # row for the rest of publication (issue 22)
    removed_df = pd.DataFrame({"reason": pd.Categorical([r["reason"] for r in removed])})
    del removed, rem
    # alignment: one row per record with a foveal B-scan
    # the biomarker table's contract reads the file a batch at a time (run_contracts); the card's distributions
    # are summarised here, a column at a time, and only the summary is kept
    bio = biomarker_distributions(build_dir / "biomarkers.parquet")
    align = _alignment_rows(records, split_of, tmp)
    labels = pd.read_parquet(build_dir / "labels.parquet") if (build_dir / "labels.parquet").exists() else None
    # the records config's rows, made one at a time when the dataset is written (build_datasets)
    evidence = _Evidence(records, kb, split_of)
    return {"records": records, "instructions": ins, "rows": rows, "removed": removed_df,
            "failed_verification": len(failed),
            "instructions_in": n_in, "alignment": align,
            "alignment_file": Path(tmp) / ALIGNMENT_FILE if tmp is not None else None,
            "biomarker_distributions": bio, "labels": labels,
            "split_of": split_of, "accounting": acc, "skipped": skipped, "evidence": evidence, "text_lint": text_lint}


#: The alignment rows' columns (``prepare()['alignment']``), before the published config's image is read.
ALIGNMENT_SCHEMA = pa.schema([("sample_id", pa.string()), ("patient_id", pa.string()), ("eye", pa.string()),
                              ("label", pa.string()), ("image_path", pa.string()),
                              ("biomarker_ids", pa.list_(pa.string())), ("biomarker_values", pa.list_(pa.float64())),
                              ("split", pa.string())])


#: The alignment rows' Arrow file in publication's temporary folder (``prepare()['alignment_file']``).
ALIGNMENT_FILE = "alignment.arrow"


def _alignment_rows(records: StudyRecords, split_of: Mapping[str, str], tmp: Path | None) -> pa.Table:
    """One row per record with a foveal B-scan, in study-id order, as an Arrow table: with ``tmp``, an Arrow file
    there written a batch at a time and mapped back (its pages are the file's, not the heap's), so publication
    does not hold a Python row per study (issue 22)."""
    rows: list[dict[str, Any]] = []
    writer = TableWriter(Path(tmp) / ALIGNMENT_FILE, ALIGNMENT_SCHEMA) if tmp is not None else None
    for r in records.sorted_values():
        img = r["images"].get("oct_foveal")
        if not img:
            continue
        vals = [None if (v := r["biomarkers"].get(b)) is None or (isinstance(v, float) and math.isnan(v)) else float(v)
                for b in OCT_GROK_BIOMARKERS]
        row = {"sample_id": r["study_id"], "patient_id": r["patient_id"], "eye": r["eye"], "label": r["label"],
               "image_path": img, "biomarker_ids": list(OCT_GROK_BIOMARKERS), "biomarker_values": vals,
               "split": split_of[r["patient_id"]]}
        if writer is not None:
            writer.write(row)
        else:
            rows.append(row)
    return writer.read() if writer is not None else pa.Table.from_pylist(rows, schema=ALIGNMENT_SCHEMA)


class _Evidence:
    """The ``records`` config's rows (:func:`grok.instruct.evidence.records_row` of every record in study-id
    order, with its split), made when iterated rather than held."""

    def __init__(self, records: StudyRecords, kb, split_of: Mapping[str, str]):
        self.records, self.kb, self.split_of = records, kb, split_of

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for r in self.records.sorted_values():
            yield {**records_row(r, self.kb), "split": self.split_of[r["patient_id"]]}


def check_pass_rate(prep: dict[str, Any], cfg: PublishConfig) -> None:
    """Refuse publication when verified rows are under ``cfg.verifier_pass_rate`` of every generated row."""
    rate = pass_rate(prep["accounting"])
    if rate is None:
        raise PublishError("no instruction rows were generated; nothing to publish (see the instruct stage's report)")
    if rate < cfg.verifier_pass_rate:
        raise PublishError(
            f"only {rate:.1%} of the generated instruction rows passed verification, under publish.verifier_pass_rate "
            f"= {cfg.verifier_pass_rate:.0%}; nothing was published.\n{describe(prep['accounting'])}\nSee "
            "instructions_quarantine.parquet and instructions_skipped.parquet in the build folder (grok verify "
            "re-checks a table), fix the prompts, templates or records, or lower the threshold deliberately.")


def check_text_lint(prep: dict[str, Any]) -> None:
    """Refuse publication when a template row breaks a text style rule (grok lint-text): the engine wrote it,
    so it is a template bug. Rows an LLM wrote are measured (the card shows them), not gated."""
    lint = prep["text_lint"]
    n = lint["violations_by_mode"].get("template", 0)
    if n:
        shown = "; ".join(f"{code}: {ex['task']} {ex['id']} {ex['detail']}" for code, exs in lint["examples"].items()
                          for ex in exs)
        raise PublishError(f"{n} text style violations in template rows ({lint['violations']}); nothing was "
                           f"published. Examples: {shown}. Run grok lint-text on the build folder and fix the "
                           "templates under templates/instruct/.")


def deny_list(build_dir: Path, identifiers=(), pseudonym_key: str | None = None):
    """The build's hashed deny list (``ingest/deny_list.json``) plus ``identifiers``, keyed with the build's
    secret ``pseudonym_key`` (default ``$GROK_PSEUDONYM_KEY``)."""
    deny = DenyList.from_identifiers([str(x) for x in identifiers], pseudonym_key)
    path = build_dir / "ingest" / DENY_LIST_FILE
    if path.is_file():
        try:
            deny.update(DenyList.load(path, pseudonym_key))
        except ValueError as exc:
            raise PublishError(f"{exc}; nothing was published") from exc
    return deny


def privacy_check(root: Path, deny, what: str, files: Iterable[str] | None = None, text: str = "") -> None:
    """Refuse to publish when the scan of ``files`` below ``root`` (all of them by default) or ``text`` finds a
    known identifier; the error names the files and counts, never the identifier."""
    if not deny:
        return
    rep = scan_path(root, deny, files=files)
    problems = list(dict.fromkeys(  # a file given twice (see _media_inputs) is named once
        f"  {h.path}: {h.hits} identifiers ({', '.join(f'{k} {v}' for k, v in h.by_kind.items())})" for h in rep.hits))
    if deny.count(text):
        problems.append(f"  dataset card: {deny.count(text)} identifiers")
    if problems:
        raise PublishError(f"privacy scan: known identifiers of the source archive in {what}; nothing was "
                           "published. Remove them at their source (rerun the stage that wrote them):\n"
                           + "\n".join(problems))


#: Rows whose image paths are checked against their own records at a time (:func:`_media_inputs`).
MEDIA_BATCH_ROWS = 4096


def _own_media(record: Mapping[str, Any]) -> list[str]:
    """A record's images and overlays (each path once, in the record's order)."""
    return list(dict.fromkeys(v for d in (record.get("images") or {}, record.get("overlays") or {})
                              for v in d.values() if v))


def _not_in_own_record(records: StudyRecords, pairs: Iterator[tuple[list[Any], list[Any]]]) -> Iterator[str]:
    """The paths of ``pairs`` (a batch's study ids, and each row's path or list of paths) that the row's own study
    record does not list, each once per batch; a row of a study without a record gives all its paths."""
    for sids, paths in pairs:
        own: dict[Any, set[str]] = {}
        out: dict[str, None] = {}
        for sid, ps in zip(sids, paths):
            if sid not in own:
                own[sid] = set(_own_media(records[sid])) if sid in records else set()
            for rel in [ps] if isinstance(ps, str) else (ps or []):
                if rel and rel not in own[sid]:
                    out[rel] = None
        yield from out


def _media_inputs(prep: dict[str, Any]) -> Iterator[str]:
    """Every media file a published row reads, one path at a time and never as a set of the archive's paths
    (issue 22): each record's images and overlays, then any image of an instruction or alignment row that its own
    study's record does not list (none in a consistent build: the rows are made from the records; a path listed
    by two sources may be given twice, which costs a second scan, not a miss)."""
    records = prep["records"]
    for r in records.values():  # one record at a time (StudyRecords reads them from the file)
        yield from _own_media(r)
    ins, rows = prep["instructions"], prep["rows"]

    def instruction_pairs():
        for start in range(0, len(ins), MEDIA_BATCH_ROWS):
            t = rows.values(ins.iloc[start:start + MEDIA_BATCH_ROWS], ["study_id", "images"])
            if "images" in t.column_names:
                yield t.column("study_id").to_pylist(), t.column("images").to_pylist()

    al = prep["alignment"]
    yield from _not_in_own_record(records, instruction_pairs())
    yield from _not_in_own_record(records, ((b.column("sample_id").to_pylist(), b.column("image_path").to_pylist())
                                            for b in al.select(["sample_id", "image_path"]).to_batches(MEDIA_BATCH_ROWS)))


def run_contracts(build_dir: Path, prep: dict[str, Any], cfg: PublishConfig, deny=None) -> dict[str, Any]:
    """Each table's contract (:func:`grok.contracts.validate`), run in a child process
    (:func:`grok.contracts.contracts_process`) that reads the tables from their files: the instruction rows a batch
    at a time with their text from the memory-mapped copy (the index travels, not the text), the alignment rows from
    their mapped Arrow file, the biomarkers from their parquet file. This process only waits: Great Expectations'
    import, the reading and the validation's churn stay in the child, whose memory goes back when it ends
    (issue 22)."""
    params = {"verifier_pass_rate": cfg.verifier_pass_rate}
    docs = build_dir / "contracts"
    results = {}
    instructions = InstructionFrames(prep["rows"], prep["instructions"]).spill()
    tables = {"instructions": instructions,
              "alignment": prep.get("alignment_file") or prep["alignment"],
              "biomarkers": build_dir / "biomarkers.parquet"}
    if prep["labels"] is not None:
        tables["labels"] = prep["labels"]
    try:
        with grok.contracts.contracts_process() as child:
            for name, data in tables.items():
                results[name] = child.validate(data, name, params=params,
                                               deny_list=deny if deny is not None else [], docs_dir=docs / name)
    finally:
        instructions.close()
    return results


def _features():
    import datasets

    msg = datasets.Features({"role": datasets.Value("string"), "content": datasets.Value("string")})
    instr = datasets.Features({
        "id": datasets.Value("string"), "study_id": datasets.Value("string"), "patient_id": datasets.Value("string"),
        "eye": datasets.Value("string"), "task": datasets.Value("string"), "label": datasets.Value("string"),
        "messages": datasets.List(msg), "images": datasets.List(datasets.Image()),
        "image_roles": datasets.List(datasets.Value("string")), "verifier_score": datasets.Value("float32"),
        "verifier_reasons": datasets.List(datasets.Value("string")),
        "template_id": datasets.Value("string"), "kb_snapshot": datasets.Value("string"),
        "provenance": datasets.Value("string"),
    })
    align = datasets.Features({
        "sample_id": datasets.Value("string"), "patient_id": datasets.Value("string"), "eye": datasets.Value("string"),
        "label": datasets.Value("string"), "image": datasets.Image(),
        "biomarker_ids": datasets.List(datasets.Value("string")),
        "biomarker_values": datasets.List(datasets.Value("float32")),
    })
    return instr, align


#: Rows of a published split made (with their images read) at a time: each split is written batch by batch to
#: an Arrow file that the dataset then maps from disk, so the images of the archive are never all in memory.
DATASET_BATCH_ROWS = 256
#: Rows of such a batch encoded by ``datasets`` at a time (``_SplitWriter._flush``).
DATASET_ENCODE_ROWS = 64


@functools.cache
def _unhashed_dataset():
    """``datasets.Dataset`` that takes a fixed fingerprint instead of hashing its content: ``Dataset.from_dict``
    otherwise pickles the whole encoded table, images and all, to hash it (a transient copy of every batch's
    bytes, and the hash's CPU), and :class:`_SplitWriter` uses only the encoded table (the published version's
    fingerprint is :func:`grok.registry.content_fingerprint`)."""
    import datasets

    class _Unhashed(datasets.Dataset):
        def __init__(self, arrow_table, info=None, split=None, indices_table=None, fingerprint=None):
            super().__init__(arrow_table, info=info, split=split, indices_table=indices_table,
                             fingerprint=fingerprint or "grok-split-batch")

    return _Unhashed


class _SplitWriter:
    """Rows of one split -> a memory-mapped ``datasets.Dataset`` (its Arrow file in ``tmp``), a batch at a time.
    The rows are encoded exactly as ``datasets.Dataset.from_dict`` of the whole split encodes them."""

    def __init__(self, tmp: Path | None, name: str, features):
        self.features, self.path = features, (tmp / f"{name}.arrow" if tmp is not None else None)
        self.rows: dict[str, list[Any]] = {k: [] for k in features}
        self.tables: list[Any] = []
        self.writer = None

    def add(self, row: dict[str, Any]) -> None:
        for k in self.features:
            self.rows[k].append(row[k])
        if len(self.rows["id" if "id" in self.rows else next(iter(self.rows))]) >= DATASET_BATCH_ROWS:
            self._flush()

    def _flush(self) -> None:
        n = len(next(iter(self.rows.values())))
        if not n:
            return
        # encoded DATASET_ENCODE_ROWS rows at a time, each part's Python rows let go as it is made, then joined
        # into the batch's one record batch (the file's batches, hence its parquet pages and fingerprint, as one
        # ``from_dict`` of the batch makes them): ``from_dict`` holds several copies of what it encodes (a batch
        # of images: about 6x their bytes, before its fingerprint hash was skipped), so the part bounds them
        rows, self.rows = self.rows, {k: [] for k in self.features}
        parts = []
        for start in range(0, n, DATASET_ENCODE_ROWS):
            part = {k: v[start:start + DATASET_ENCODE_ROWS] for k, v in rows.items()}
            for v in rows.values():
                v[start:start + DATASET_ENCODE_ROWS] = [None] * len(v[start:start + DATASET_ENCODE_ROWS])
            parts.append(_unhashed_dataset().from_dict(part, features=self.features).data.table)
            del part
        del rows
        table = parts[0] if len(parts) == 1 else pa.concat_tables(parts).combine_chunks()
        del parts
        if self.path is None:
            self.tables.append(table)
            return
        if self.writer is None:
            self.sink = pa.OSFile(str(self.path), "wb")
            self.writer = pa.ipc.new_stream(self.sink, table.schema)
        self.writer.write_table(table)

    def dataset(self):
        import datasets

        self._flush()
        if self.writer is None:  # in memory (no folder given) or no rows
            if not self.tables:
                return datasets.Dataset.from_dict({k: [] for k in self.features}, features=self.features)
            return datasets.concatenate_datasets([datasets.Dataset(datasets.table.InMemoryTable(t))
                                                  for t in self.tables])
        self.writer.close()
        self.sink.close()
        return datasets.Dataset.from_file(str(self.path), info=datasets.DatasetInfo(features=self.features))


def build_datasets(build_dir: Path, prep: dict[str, Any], tmp: Path | None = None) -> dict[str, dict[str, Any]]:
    """The version's configs and splits as ``datasets.Dataset`` objects, images embedded. With ``tmp`` (a folder
    removed after publication) every split is written there batch by batch and mapped from disk, so memory
    holds one batch of rows, not the archive's images."""
    instr_f, align_f = _features()
    out: dict[str, dict[str, Any]] = {"instructions": {}, "benchmark": {}, "alignment": {}}
    ins = prep["instructions"]
    for split in ("train", "validation", "test"):
        w = _SplitWriter(tmp, f"instructions-{split}", instr_f)
        for r in split_rows(prep["rows"], ins, split):
            msgs = r["messages"].tolist() if hasattr(r["messages"], "tolist") else r["messages"]
            imgs = r["images"].tolist() if hasattr(r["images"], "tolist") else list(r["images"] or [])
            roles = r.get("image_roles")
            roles = roles.tolist() if hasattr(roles, "tolist") else list(roles or [])
            reasons = r.get("verifier_reasons")
            w.add({"id": r["id"], "study_id": r["study_id"], "patient_id": r["patient_id"], "eye": r["eye"],
                   "task": r["task"], "label": r["label"],
                   "messages": [{"role": m["role"], "content": m["content"]} for m in msgs],
                   "images": [_image_bytes(build_dir, p) for p in imgs], "image_roles": roles,
                   "verifier_score": float(r.get("verifier_score") or 0.0),
                   "verifier_reasons": [str(x) for x in (list(reasons) if reasons is not None else [])],
                   "template_id": str(r.get("template_id") or ""), "kb_snapshot": str(r.get("kb_snapshot") or ""),
                   "provenance": str(r.get("provenance") or "{}")})
        ds = w.dataset()
        if split == "test":
            out["benchmark"]["test"] = ds
        else:
            out["instructions"][split] = ds
    al = prep["alignment"]
    for split in ("train", "validation", "test"):
        # a batch of the mapped table filtered at a time: filtering the whole table copied the split out of the
        # file into memory (its biomarker lists: about 1.5 kB a study)
        part = (b.filter(pc.equal(b.column("split"), split)) for b in al.to_batches(DATASET_BATCH_ROWS))
        w = _SplitWriter(tmp, f"alignment-{split}", align_f)
        for r in (r for b in part for r in b.to_pylist()):
            w.add({"sample_id": r["sample_id"], "patient_id": r["patient_id"], "eye": r["eye"], "label": r["label"],
                   "image": _image_bytes(build_dir, r["image_path"]), "biomarker_ids": list(r["biomarker_ids"]),
                   "biomarker_values": list(r["biomarker_values"])})
        out["alignment"][split] = w.dataset()
    rec_f = records_features()
    writers = {split: _SplitWriter(tmp, f"records-{split}", rec_f) for split in ("train", "validation", "test")}
    for r in prep["evidence"]:  # one pass over the records, each row to its split's file
        writers[r["split"]].add(r)
    out["records"] = {split: w.dataset() for split, w in writers.items()}
    return {k: v for k, v in out.items() if v}


def _versions(build_dir: Path, prep: dict[str, Any]) -> dict[str, Any]:
    """The versions a dataset rests on: the code, the knowledge-base snapshots and the templates (id and sha256)
    its published rows were made with. The rows' template and snapshot ids are read :data:`SPLIT_SCAN_ROWS` rows
    at a time and only their distinct values kept: reading the three columns of every row at once was a
    transient of about 90 bytes a row (+19 MB at 40,000 synthetic studies, issue 22)."""
    rows, ins = prep["rows"], prep["instructions"]
    templates: set[str] = set()
    kb: set[str] = set()
    for start in range(0, len(ins), SPLIT_SCAN_ROWS):
        ids = rows.values(ins.iloc[start:start + SPLIT_SCAN_ROWS], ["template_id", "template_sha256", "kb_snapshot"])
        if {"template_id", "template_sha256"} <= set(ids.column_names):
            pairs = ids.select(["template_id", "template_sha256"]).group_by(["template_id", "template_sha256"]
                                                                              ).aggregate([])
            templates.update(f"{a}:{b}" for a, b in zip(pairs.column(0).to_pylist(), pairs.column(1).to_pylist()))
        if "kb_snapshot" in ids.column_names:
            kb.update(pc.unique(ids.column("kb_snapshot")).drop_null().to_pylist())
        del ids
    th = hashlib.sha256("\n".join(sorted(templates)).encode()).hexdigest()[:16]
    return {"code_version": __version__, "kb_snapshots": sorted(kb), "templates_fingerprint": th,
            "templates": sorted(templates)}


def _card_body(cfg: PublishConfig, prep: dict[str, Any], contracts: dict[str, Any], info: dict[str, Any],
               versions: dict[str, Any], synthetic: bool = False, reviews: dict[str, Any] | None = None) -> str:
    ins = prep["instructions"]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             autoescape=False, keep_trailing_newline=True)
    counts = ins.groupby(["split", "label"]).size().unstack(fill_value=0)
    tasks = ins.groupby(["split", "task"]).size().unstack(fill_value=0)
    dist = prep["biomarker_distributions"]
    examples = []
    for r in prep["rows"].full(ins.groupby("task").head(1).sort_values("task", kind="stable")):
        task = r["task"]
        msgs = r["messages"].tolist() if hasattr(r["messages"], "tolist") else r["messages"]
        examples.append({"task": task, "messages": [{"role": m["role"], "content": m["content"][:600]} for m in msgs]})
    return env.get_template("card.md.j2").render(
        cfg=cfg, synthetic=synthetic, counts=counts, tasks=tasks, dist=dist, examples=examples[:6], versions=versions, build=info,
        contracts={k: {"success": v.success, "n_rows": v.n_rows, "failed": len(v.failed),
                       "distributions": v.distributions} for k, v in contracts.items()},
        removed=prep["removed"].groupby("reason").size().to_dict() if len(prep["removed"]) else {},
        failed_verification=prep["failed_verification"], instructions_in=prep["instructions_in"],
        accounting=prep["accounting"], reviews=reviews, text_lint=prep["text_lint"])


#: Studies whose label the findings contradict that the curator report's page lists (the first, by study id); every
#: one of them is in ``contradicted_studies.csv`` beside the page. The page listed every such study, each read from
#: the records file and held until the page was rendered: about 12 % of a phantom build's studies (issue 22).
CONTRADICTED_SHOWN = 200
CONTRADICTED_CSV = "contradicted_studies.csv"


def _contradicted(prep: dict[str, Any], csv_path: Path | None = None,
                  shown: int | None = None) -> tuple[list[dict[str, Any]], int, int]:
    """The studies whose label the reasoner rules out (their rows were skipped), for the curator report: the first
    ``shown`` (:data:`CONTRADICTED_SHOWN`) by study id, how many there are, and how many rows were skipped for
    them. With ``csv_path`` every one is written there, one record read at a time."""
    shown = CONTRADICTED_SHOWN if shown is None else shown
    sk = prep["skipped"]
    sk = sk[sk["reason_code"] == "label_contradicted_by_findings"] if len(sk) else sk
    sids = sk["study_id"].drop_duplicates().sort_values() if len(sk) else pd.Series([], dtype=object)
    out: list[dict[str, Any]] = []
    n = 0
    fh = open(csv_path, "w", newline="", encoding="utf-8") if csv_path is not None and len(sids) else None
    try:
        writer = csv.writer(fh) if fh is not None else None
        if writer is not None:
            writer.writerow(["study_id", "split", "eye", "label", "reason", "supported", "abnormal"])
        for sid in sids:
            rec = prep["records"].get(sid)
            if rec is None:
                continue
            rs = rec.get("reasoning") or {}
            diff = rs.get("differential") or []
            mine = next((d for d in diff if d.get("id") == rec["label"]), {})
            c = {"study_id": sid, "split": prep["split_of"].get(rec["patient_id"], ""), "eye": rec["eye"],
                 "label": rec["label"], "reason": mine.get("reason", ""),
                 "supported": [d["id"] for d in diff if d.get("status") == "supported"],
                 "abnormal": [f.get("explanation") or f.get("id") for f in rs.get("findings") or [] if f.get("abnormal")]}
            n += 1
            if writer is not None:
                writer.writerow([c["study_id"], c["split"], c["eye"], c["label"], c["reason"], "; ".join(c["supported"]),
                                 "; ".join(str(a) for a in c["abnormal"])])
            if len(out) < shown:
                out.append(c)
    finally:
        if fh is not None:
            fh.close()
    return out, n, len(sk)


def write_curator_report(out_dir: Path, build_dir: Path, prep: dict[str, Any], *, rows_per_group: int = 2,
                         title: str = "") -> Path:
    """A static HTML page: rows sampled by class and task, images with overlays, biomarkers, findings, flags."""
    out_dir.mkdir(parents=True, exist_ok=True)
    media = out_dir / "media"
    media.mkdir(exist_ok=True)
    ins = prep["instructions"]
    records = prep["records"]
    samples = []
    copied: dict[str, str] = {}

    def copy(rel: str) -> str:
        if rel not in copied:
            src = build_dir / rel
            name = hashlib.sha256(rel.encode()).hexdigest()[:16] + src.suffix
            shutil.copyfile(src, media / name)
            copied[rel] = f"media/{name}"
        return copied[rel]

    for (label, task), grp in ins.groupby(["label", "task"]):  # the index is in id order
        for r in prep["rows"].full(grp.head(rows_per_group)):
            rec = records.get(r["study_id"], {})
            msgs = r["messages"].tolist() if hasattr(r["messages"], "tolist") else r["messages"]
            imgs = r["images"].tolist() if hasattr(r["images"], "tolist") else list(r["images"] or [])
            overlays = rec.get("overlays", {})
            shown = []
            for rel in imgs:
                key = next((k for k, v in rec.get("images", {}).items() if v == rel), None)
                shown.append({"src": copy(rel), "overlay": copy(overlays[key]) if key in overlays else None,
                              "key": key or Path(rel).stem})
            bios = [(k, v) for k, v in sorted((rec.get("biomarkers") or {}).items())
                    if v is not None and not (isinstance(v, float) and math.isnan(v))]
            reasons = r.get("verifier_reasons")
            reasons = reasons.tolist() if hasattr(reasons, "tolist") else list(reasons or [])
            samples.append({
                "id": r["id"], "label": label, "task": task, "split": r["split"], "eye": r["eye"],
                "messages": [{"role": m["role"], "content": m["content"]} for m in msgs], "images": shown,
                "biomarkers": bios, "findings": (rec.get("reasoning") or {}).get("findings", []),
                "differential": (rec.get("reasoning") or {}).get("differential", []),
                "verifier": {"passed": bool(r["verifier_passed"]), "score": r.get("verifier_score"),
                             "reasons": reasons},
            })
    contradicted, n_studies, n_contradicted = _contradicted(prep, out_dir / CONTRADICTED_CSV)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    page = env.get_template("curator.html.j2").render(title=title, samples=samples, n_rows=len(ins),
                                                      esc=html.escape, contradicted=contradicted,
                                                      contradicted_studies=n_studies, contradicted_rows=n_contradicted,
                                                      contradicted_csv=CONTRADICTED_CSV)
    index = out_dir / "index.html"
    index.write_text(page)
    return index


@dataclass
class PublishResult:
    name: str
    version: str
    fingerprint: str
    path: str
    counts: dict[str, Any]
    contracts: dict[str, bool]
    report: str
    card: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def card_meta(cfg: PublishConfig, synthetic: bool) -> dict[str, Any]:
    """What the dataset card and ``croissant.json`` say about a version beyond its data: licence, name,
    whether it is synthetic, and (when it is pushed) the Hub page it will live at."""
    meta: dict[str, Any] = {"license": cfg.license, "synthetic": synthetic, "pretty_name": cfg.name}
    if cfg.hub_repo:
        meta["url"] = f"https://huggingface.co/datasets/{cfg.hub_repo}"
    return meta


def publish_build(build_dir: str | Path, cfg: PublishConfig, *, kb=None, deny_identifiers=(),
                  pseudonym_key: str | None = None, synthetic: bool = False) -> PublishResult:
    """Validate, split, dedup and publish a build; see the module docstring. Raises :class:`PublishError`.

    ``kb``: the build's knowledge base (units of the ``records`` config); default the bundled one.
    ``deny_identifiers``: strings that must appear nowhere (e.g. the phantom's planted ones), added to the
    build's own hashed ``ingest/deny_list.json``; hashed at once, never written. ``pseudonym_key``: the
    secret the build was ingested with (default ``$GROK_PSEUDONYM_KEY``), which keys those hashes.
    ``synthetic``: the data are phantom data (tagged in the card)."""
    import datasets

    datasets.disable_progress_bars()
    build = Path(build_dir)
    info = check_build(build)
    # the instruction rows' text, the published splits: memory-mapped files here, removed afterwards
    with tempfile.TemporaryDirectory(dir=build, prefix=".publish-") as tmp, arrow_pool():
        prep = prepare(build, cfg, kb, Path(tmp))
        release_memory()  # here and below: each phase's freed buffers given back before the next builds on them
        reviews, dropped = None, []
        if cfg.reviews:  # curators' decisions (grok review): drop rejected rows, apply verified edits
            prep["instructions"], dropped, reviews = apply_reviews(
                prep["instructions"], prep["records"], cfg.reviews, kb or load_knowledge_base(),
                full_rows=prep["rows"].full, ids=prep["rows"].ids(prep["instructions"]))
        deny = deny_list(build, deny_identifiers, pseudonym_key)
        contracts = run_contracts(build, prep, cfg, deny)
        release_memory()
        bad = {k: v for k, v in contracts.items() if not v.success}
        if bad:
            raise PublishError("data contracts failed; nothing was published:\n"
                               + "\n".join(v.summary() for v in bad.values()))
        privacy_check(build, deny, "the build's inputs", files=itertools.chain(
            [f for f in INPUTS if (build / f).exists()], _media_inputs(prep)))
        check_pass_rate(prep, cfg)
        check_text_lint(prep)
        release_memory()
        return _publish_tables(build, cfg, prep, info, contracts, deny, dropped, reviews, synthetic, Path(tmp))


def _publish_tables(build: Path, cfg: PublishConfig, prep: dict[str, Any], info: dict[str, Any], contracts, deny,
                    dropped, reviews, synthetic: bool, tmp: Path) -> PublishResult:
    tables = build_datasets(build, prep, tmp)
    release_memory()
    versions = _versions(build, prep)
    body = _card_body(cfg, prep, contracts, info, versions, synthetic, reviews)
    counts = {
        "instructions_in": prep["instructions_in"], "failed_verification_excluded": prep["failed_verification"],
        "duplicates_removed": int(len(prep["removed"])), "removed_by_review": len(dropped),
        "published": {c: {s: len(d) for s, d in v.items()} for c, v in tables.items()},
        "generated": prep["accounting"], "pass_rate": pass_rate(prep["accounting"]),
    }
    manifest_extra = {
        "build_id": info.get("build_id"), "versions": versions, "counts": None,
        "contracts": {k: {"success": v.success, "n_rows": v.n_rows, "distributions": v.distributions}
                      for k, v in contracts.items()},
        "publish_counts": counts, "split_seed": cfg.split_seed, "split_ratios": list(cfg.split_ratios),
    }
    manifest_extra.pop("counts")
    if reviews is not None:
        manifest_extra["reviews"] = reviews

    def extra(staging: Path) -> None:
        write_curator_report(staging / "report", build, prep, rows_per_group=cfg.report_rows_per_group,
                             title=cfg.name)
        privacy_check(staging, deny, "the version about to be published", text=body)

    res = registry.publish(tables, cfg.name, version=cfg.version, bump=cfg.bump, registry=cfg.registry,
                           card_body=body, card_meta=card_meta(cfg, synthetic),
                           manifest_extra=manifest_extra, extra_writer=extra, max_shard_bytes=cfg.max_shard_bytes)
    if cfg.hub_repo:
        push_to_hub(res["path"], cfg.hub_repo, res["version"])
    return PublishResult(name=res["name"], version=res["version"], fingerprint=res["fingerprint"], path=res["path"],
                         counts=counts, contracts={k: v.success for k, v in contracts.items()},
                         report=f"{res['path']}/report/index.html", card=f"{res['path']}/README.md")


def push_to_hub(path: str, repo: str, version: str) -> None:
    """Upload a published version folder to a Hub dataset repo and tag it ``v<version>``."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo, repo_type="dataset", exist_ok=True)
    api.upload_folder(folder_path=path, repo_id=repo, repo_type="dataset", commit_message=f"Publish {version}")
    api.create_tag(repo, tag=f"v{version}", repo_type="dataset")
