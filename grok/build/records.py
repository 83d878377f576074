"""Records stage: biomarkers + eye-level labels + the reasoner -> one study record per eye-visit.

Run as: part of grok build (or grok.build.records.build_records(BUILD_DIR, cohort=...))

Joins ``BUILD/biomarkers.parquet`` with the cohort labels (``grok label``) on the pseudonymous
patient id and eye, runs the knowledge-base reasoner on every study, and writes
``BUILD/records.jsonl`` (the input of ``grok instruct``) and ``BUILD/labels.parquet``. A study with
no label (no cohort row, or a conflicting one) is not guessed: it goes to
``BUILD/records_quarantine.parquet`` with the reason, so studies in = records + quarantined.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from grok import __version__
from grok.build.measure import POSITION_IDS, SCALAR_IDS

RECORDS_VERSION = "1"
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


def build_records(
    build_dir: str | Path,
    *,
    cohort: str | Path | pd.DataFrame | None = None,
    labels: pd.DataFrame | None = None,
    kb=None,
    pseudonymise: Callable[[str], str] | None = None,
    build_id: str = "",
) -> dict[str, int]:
    """Write ``records.jsonl``, ``labels.parquet`` and ``records_quarantine.parquet``; return counts.

    ``cohort`` is a cohort table (path or DataFrame) labelled with the knowledge base's cohort rules;
    ``labels`` may be given instead (already labelled, with ``patient_id``, ``eye``, ``primary_label``,
    ``labels``). Without either, every study is quarantined as unlabelled.
    """
    from grok.knowledge import label_cohort, load_knowledge_base, reason
    from grok.knowledge.labeller import read_cohort

    build = Path(build_dir)
    kb = kb or load_knowledge_base()
    if labels is None and cohort is not None:
        df = read_cohort(cohort) if not isinstance(cohort, pd.DataFrame) else cohort
        labels = label_cohort(df, kb, pseudonymise=pseudonymise) if pseudonymise else label_cohort(df, kb)
    if labels is not None:
        keep = [c for c in labels.columns if c in ("patient_id", "eye", "primary_label", "labels", "rule",
                                                   "conflicts", "missing_fields")]
        lab = labels[keep].copy()
        for col in lab.columns:
            if lab[col].map(lambda v: isinstance(v, (list, dict))).any():
                lab[col] = lab[col].map(lambda v: json.dumps(v, default=str) if isinstance(v, (list, dict)) else v)
        lab.to_parquet(build / "labels.parquet", index=False)
        by_key = {(r["patient_id"], r["eye"]): r for r in labels.to_dict("records")}
    else:
        by_key = {}
    bio = pq.read_table(build / "biomarkers.parquet").to_pylist()
    records, quarantine = [], []
    for row in bio:
        sid = row["study_id"]
        lab_row = by_key.get((row["patient_id"], row["eye"]))
        if lab_row is None:
            quarantine.append(dict(study_id=sid, stage="records", error_class="unlabelled",
                                   reason="no cohort label for this patient and eye; add the patient to the cohort "
                                          "table or pass labels"))
            continue
        primary = lab_row.get("primary_label")
        if not primary or (isinstance(primary, float) and math.isnan(primary)):
            conflicts = lab_row.get("conflicts")
            quarantine.append(dict(study_id=sid, stage="records", error_class="label_conflict",
                                   reason=f"cohort fields give no primary label (conflicts: {conflicts})"))
            continue
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
        rec_in = {
            "biomarkers": biomarkers, "device": "generic", "sex": row.get("sex"),
            "age_years": _clean(row.get("age_years")), "laterality": row["eye"],
            "lesions": _lesions_for_reasoner(lesions, row.get("oct_spacing_mm"), row.get("cfp_pixel_spacing_mm")),
        }
        try:
            reasoning = reason(rec_in, kb).to_dict()
        except Exception as exc:  # noqa: BLE001 - a record the reasoner refuses is quarantined, not lost
            quarantine.append(dict(study_id=sid, stage="records", error_class="reasoner_error",
                                   reason=f"{type(exc).__name__}: {str(exc)[:300]}"))
            continue
        extractors = json.loads(row["extractors"] or "{}")
        records.append({
            "study_id": sid, "patient_id": row["patient_id"], "eye": row["eye"], "visit": row["visit"],
            "age_years": _clean(row.get("age_years")), "sex": row.get("sex"), "device": "generic",
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
        })
    with open(build / "records.jsonl", "w") as fh:
        for r in records:
            fh.write(json.dumps(r, sort_keys=True, default=_json_default) + "\n")
    pq.write_table(pa.Table.from_pylist(quarantine, schema=QUARANTINE_SCHEMA), build / "records_quarantine.parquet")
    return {"studies_in": len(bio), "records": len(records), "quarantined": len(quarantine)}


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return _clean(o.item())
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def read_records(build_dir: str | Path) -> list[dict[str, Any]]:
    with open(Path(build_dir) / "records.jsonl") as fh:
        return [json.loads(line) for line in fh if line.strip()]
