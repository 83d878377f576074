"""Records stage: biomarkers + eye-level labels + the reasoner -> one study record per eye-visit.

Run as: the records stage of grok build (or grok.stages.records_stage.build_records(BUILD_DIR, cohort=...))

Joins ``BUILD/biomarkers.parquet`` with the cohort labels (``grok label``) on the pseudonymous
patient id, eye and visit, runs the knowledge-base reasoner on every study, and writes
``BUILD/records.jsonl`` (the input of ``grok instruct``) and ``BUILD/labels.parquet``.

Visits: a study's visit is its de-identified date (shifted per patient, or the year). When the cohort
table has a ``visit_date`` column (its name can be mapped in the knowledge base's ``cohort.fields``),
each date is de-identified exactly as ingestion does it and a study takes the row of its own visit.
Undated rows label every visit of that patient and eye only when they agree. A study with no label
(no cohort row, rows of other visits only, rows that disagree, or a conflicting row) is not guessed:
it goes to ``BUILD/records_quarantine.parquet`` with the reason, so studies in = records + quarantined.

Streamed: biomarkers are read :data:`BATCH_ROWS` rows at a time and each record is written as soon as it is
made, so the stage holds one batch (and the cohort's labels), not the archive's records.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from grok import __version__
from grok.ingest.deid import DeidConfig, pseudonymise_patient_id, transform_date
from grok.knowledge import label_cohort, load_knowledge_base, reason
from grok.knowledge.labeller import read_cohort
from grok.parquet_io import iter_batches
from grok.stages.folder import BuildFolder, StageReport
from grok.stages.measure_stage import POSITION_IDS, SCALAR_IDS
from grok.stages.stage import SingleStage

RECORDS_VERSION = "1"
#: Biomarker rows read (and records written) at a time: the stage's memory does not grow with the archive.
BATCH_ROWS = 256
QUARANTINE_SCHEMA = pa.schema([("study_id", pa.string()), ("stage", pa.string()), ("reason", pa.string()),
                               ("error_class", pa.string())])


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _lesions_for_reasoner(lesions: list[dict[str, Any]], spacing_mm: list[float] | None,
                          cfp_spacing_mm: float | None) -> list[dict[str, Any]]:
    out = []
    for les in lesions:
        x1, y1, x2, y2 = les["box_xyxy_px"]
        d = {"type": les["type"]}
        if les["modality"] == "oct" and spacing_mm and spacing_mm[1] and math.isfinite(spacing_mm[1]):
            d["diameter_um"] = float((x2 - x1 + 1) * spacing_mm[1] * 1000.0)
        elif les["modality"] == "cfp" and cfp_spacing_mm and math.isfinite(cfp_spacing_mm):
            d["diameter_um"] = float(max(x2 - x1, y2 - y1) * cfp_spacing_mm * 1000.0)
        out.append(d)
    return out


def _device_of(row: dict[str, Any], devices: dict[str, tuple[str | None, str | None]], kb) -> dict[str, Any]:
    """The acquisition device of a study: manufacturer and model of its OCT (else circle scan, else
    photo) as the manifest read them (DICOM, vendor header or export sidecar), resolved to a
    knowledge-base device id. ``device_text`` is what the reasoner is given: unknown text is flagged
    there (device-specific ranges unused), never turned into a silent generic range."""
    for key in ("oct_image_id", "circle_image_id", "cfp_image_id"):
        manufacturer, model = devices.get(row.get(key) or "", (None, None))
        text = " ".join(str(x).strip() for x in (manufacturer, model) if x and str(x).strip())
        if text:
            dev_id, note = kb.resolve_device(text)
            return {"device": dev_id, "device_text": text, "device_image_id": row.get(key),
                    "manufacturer": manufacturer, "model": model, "device_note": note}
    return {"device": "generic", "device_text": None, "device_image_id": None, "manufacturer": None,
            "model": None, "device_note": "no manufacturer or model in the manifest for this study's images"}


def _manifest_devices(build: Path) -> dict[str, tuple[str | None, str | None]]:
    m = build / "ingest" / "manifest.parquet"
    if not m.exists():
        return {}
    cols = [c for c in ("image_id", "manufacturer", "model") if c in pq.read_schema(m).names]
    if "image_id" not in cols:
        return {}
    return {r["image_id"]: (r.get("manufacturer"), r.get("model")) for r in pq.read_table(m, columns=cols).to_pylist()}


def _visit_tokens(df: pd.DataFrame, labels: pd.DataFrame, kb, deid: DeidConfig | None) -> list[str | None]:
    """Per label row, its cohort row's visit date de-identified like the images' (None when undated)."""
    col = (kb.cohort.fields.get("visit_date") if kb.cohort else None) or "visit_date"
    if deid is None or col not in df.columns:
        return [None] * len(labels)
    per_row = len(labels) // max(len(df), 1)
    if per_row * len(df) != len(labels):
        raise ValueError(f"label_cohort gave {len(labels)} rows for {len(df)} cohort rows; expected one per eye")
    tokens: list[str | None] = []
    for raw, pid in zip(df[col].tolist(), labels["patient_id"].tolist()[::per_row]):
        try:
            d = dt.date.fromisoformat(str(raw).strip()[:10])
        except ValueError:
            d = None
        tok = None
        if d is not None and isinstance(pid, str):
            tok = transform_date(d, pid, deid).isoformat()
            tok = tok[:4] if deid.date_mode == "year" else tok
        tokens += [tok] * per_row
    return tokens


def _label_for_visit(cands: list[dict[str, Any]], visit: str | None) -> tuple[dict[str, Any] | None, tuple[str, str]]:
    """The cohort row that labels a study of ``visit`` among its patient's and eye's rows, or why none does."""
    if not cands:
        return None, ("unlabelled", "no cohort label for this patient and eye; add the patient to the cohort table "
                                    "or pass labels")
    dated = [c for c in cands if c.get("visit_token")]
    same = [c for c in dated if c["visit_token"] == visit]
    pool = same or [c for c in cands if not c.get("visit_token")]
    if not pool:
        return None, ("label_visit_unmatched", f"the cohort table has {len(dated)} dated row(s) for this patient "
                                               "and eye but none of this visit (dates compared after the build's "
                                               "date de-identification); add the row of this visit")
    outcomes = {(str(c.get("primary_label")), json.dumps(c.get("labels"), default=str)) for c in pool}
    if len(outcomes) > 1:
        which = "rows of this visit" if same else "undated rows"
        return None, ("label_ambiguous", f"{len(pool)} cohort {which} for this patient and eye give different labels "
                                         f"({', '.join(sorted({o[0] for o in outcomes}))}); give each visit its own "
                                         "row with a visit_date column (the build shifts those dates like the "
                                         "images') so each study takes the row of its visit")
    return pool[0], ("", "")


def build_records(
    build_dir: str | Path,
    *,
    cohort: str | Path | pd.DataFrame | None = None,
    labels: pd.DataFrame | None = None,
    kb=None,
    pseudonymise: Callable[[str], str] | None = None,
    deid: DeidConfig | None = None,
    build_id: str = "",
) -> dict[str, int]:
    """Write ``records.jsonl``, ``labels.parquet`` and ``records_quarantine.parquet``; return counts.

    ``cohort`` is a cohort table (path or DataFrame) labelled with the knowledge base's cohort rules;
    ``labels`` may be given instead (already labelled, with ``patient_id``, ``eye``, ``primary_label``,
    ``labels`` and optionally ``visit_token``, the de-identified visit). Without either, every study is
    quarantined as unlabelled. ``deid`` is the de-identification the images went through: its key
    pseudonymises the cohort's patient ids and its date shift turns the cohort's ``visit_date`` into
    the studies' visits (without it, cohort rows count as undated).
    """

    build = Path(build_dir)
    kb = kb or load_knowledge_base()
    if pseudonymise is None and deid is not None:
        def pseudonymise(pid: str) -> str:
            return pseudonymise_patient_id(pid, deid.key)
    if labels is None and cohort is not None:
        df = read_cohort(cohort) if not isinstance(cohort, pd.DataFrame) else cohort
        labels = label_cohort(df, kb, pseudonymise=pseudonymise) if pseudonymise else label_cohort(df, kb)
        labels = labels.assign(visit_token=_visit_tokens(df, labels, kb, deid))
    if labels is not None:
        keep = [c for c in labels.columns if c in ("patient_id", "eye", "primary_label", "labels", "rule",
                                                   "conflicts", "missing_fields")]
        lab = labels[keep].copy()
        for col in lab.columns:
            if lab[col].map(lambda v: isinstance(v, (list, dict))).any():
                lab[col] = lab[col].map(lambda v: json.dumps(v, default=str) if isinstance(v, (list, dict)) else v)
        lab.to_parquet(build / "labels.parquet", index=False)
        by_key: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
        for r in labels.to_dict("records"):
            by_key.setdefault((r["patient_id"], r["eye"]), []).append(r)
    else:
        by_key = {}
    devices = _manifest_devices(build)
    n_in = n_records = n_quarantined = 0
    # streamed: biomarkers are read BATCH_ROWS rows at a time and every record is written as it is made,
    # so the memory of this stage is one batch (plus the cohort's labels), not the archive
    with open(build / "records.jsonl", "w") as fh, \
            pq.ParquetWriter(build / "records_quarantine.parquet", QUARANTINE_SCHEMA) as qw:
        for batch in iter_batches(build / "biomarkers.parquet", BATCH_ROWS):
            quarantine = []
            for row in batch.to_pylist():
                n_in += 1
                record, why = _record(row, by_key, devices, kb, build_id)
                if record is None:
                    quarantine.append(why)
                    continue
                n_records += 1
                fh.write(json.dumps(record, sort_keys=True, default=_json_default) + "\n")
            if quarantine:
                n_quarantined += len(quarantine)
                qw.write_table(pa.Table.from_pylist(quarantine, schema=QUARANTINE_SCHEMA))
    return {"studies_in": n_in, "records": n_records, "quarantined": n_quarantined}


def _record(row: dict[str, Any], by_key: dict[tuple[Any, Any], list[dict[str, Any]]], devices, kb,
            build_id: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """One biomarkers row -> its study record, or None and its quarantine row (with the reason)."""
    sid = row["study_id"]
    lab_row, (error_class, why) = _label_for_visit(by_key.get((row["patient_id"], row["eye"]), []), row["visit"])
    if lab_row is None:
        return None, dict(study_id=sid, stage="records", error_class=error_class, reason=why)
    primary = lab_row.get("primary_label")
    if not primary or (isinstance(primary, float) and math.isnan(primary)):
        conflicts = lab_row.get("conflicts")
        return None, dict(study_id=sid, stage="records", error_class="label_conflict",
                          reason=f"cohort fields give no primary label (conflicts: {conflicts})")
    lab_list = lab_row.get("labels")
    if isinstance(lab_list, str):
        try:
            lab_list = json.loads(lab_list)
        except json.JSONDecodeError:
            lab_list = [lab_list]
    biomarkers = {b: _clean(row.get(b)) for b in SCALAR_IDS}
    for b in POSITION_IDS:
        biomarkers[b] = row.get(b)
    lesions = json.loads(row["lesions"] or "[]")
    device = _device_of(row, devices, kb)
    rec_in = {
        "biomarkers": biomarkers, "device": device["device_text"], "engine_measured": True, "sex": row.get("sex"),
        "age_years": _clean(row.get("age_years")), "laterality": row["eye"],
        "lesions": _lesions_for_reasoner(lesions, row.get("oct_spacing_mm"), row.get("cfp_pixel_spacing_mm")),
    }
    try:
        reasoning = reason(rec_in, kb).to_dict()
    except Exception as exc:  # noqa: BLE001 - a record the reasoner refuses is quarantined, not lost
        return None, dict(study_id=sid, stage="records", error_class="reasoner_error",
                          reason=f"{type(exc).__name__}: {str(exc)[:300]}")
    extractors = json.loads(row["extractors"] or "{}")
    return {
        "study_id": sid, "patient_id": row["patient_id"], "eye": row["eye"], "visit": row["visit"],
        "age_years": _clean(row.get("age_years")), "sex": row.get("sex"), "device": device["device"],
        "device_source": {k: device[k] for k in ("device_text", "device_image_id", "manufacturer", "model",
                                                 "device_note")},
        "label": primary, "labels": list(lab_list or [primary]),
        "biomarkers": biomarkers,
        "quality": {"oct": json.loads(row["oct_quality"] or "{}"),
                    "cfp": {"grade": row.get("cfp_quality_grade"),
                            "reasons": list(row.get("cfp_quality_reasons") or [])}},
        "lesions": lesions,
        "images": json.loads(row["images"] or "{}"),
        "image_sizes": json.loads(row["image_sizes"] or "{}"),
        "overlays": json.loads(row["overlays"] or "{}"),
        "reasoning": reasoning,
        "provenance": {"source_sha256s": list(row.get("source_sha256s") or []), "extractors": extractors,
                       "kb_snapshot": kb.snapshot_id, "code_version": __version__, "build_id": build_id,
                       "records_stage": RECORDS_VERSION},
    }, None


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return _clean(o.item())
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def read_records(build_dir: str | Path) -> list[dict[str, Any]]:
    with open(Path(build_dir) / "records.jsonl") as fh:
        return [json.loads(line) for line in fh if line.strip()]


class Records(SingleStage):
    """Labels (joined by visit) and reasoner findings for every measured study."""

    name = "records"
    inputs: ClassVar[tuple[str, ...]] = ("biomarkers.parquet",)
    outputs: ClassVar[tuple[str, ...]] = ("records.jsonl", "labels.parquet", "records_quarantine.parquet")

    def work(self, folder: BuildFolder) -> StageReport:
        # the same key and date mode as ingestion: cohort ids and visit dates map onto the studies' own
        res = build_records(folder.root, cohort=folder.source()["cohort"] or None, kb=folder.kb, deid=folder.deid(),
                            build_id=folder.build_id())
        return StageReport("records", n_in=res["studies_in"], n_out=res["records"], n_quarantined=res["quarantined"],
                           outputs={"records": str(folder.path("records.jsonl")),
                                    "quarantine": str(folder.path("records_quarantine.parquet"))})
