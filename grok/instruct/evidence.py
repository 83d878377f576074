"""The evidence a row's text is checked against, as a published ``records`` row, and back.

Run as: python -c "from grok.instruct.evidence import records_features; print(records_features())"

A published version carries one ``records`` row per study (split like the instructions, by patient):
its ids, eye, age band, sex, label, device, every biomarker with its unit, the reasoner's findings
with the normal range and source each used, the differential, and ``evidence``: the study record
(JSON) with exactly the fields :func:`grok.instruct.records.build_facts` reads, so that the verifier
can be rerun from the dataset alone (``grok verify --dataset NAME@VERSION``). Nothing here is an
identifier: ids are the build's pseudonyms, ages are 10-year bands (exact ages, visit dates, source
file hashes and the device's own image ids stay in the build folder).
"""

from __future__ import annotations

import json
import math
from typing import Any

#: Record fields copied into ``evidence`` (what :func:`grok.instruct.records.build_facts` reads).
EVIDENCE_FIELDS = ("study_id", "patient_id", "eye", "label", "sex", "device", "biomarkers", "lesions", "images",
                   "image_sizes", "quality", "reasoning")


def age_band(age: Any) -> str | None:
    """``"50-59"`` for 50 to 59.99 years, ``"90+"`` from 90 (HIPAA Safe Harbour groups ages over 89)."""
    try:
        a = float(age)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(a) or a < 0:
        return None
    if a >= 90:
        return "90+"
    lo = int(a // 10) * 10
    return f"{lo}-{lo + 9}"


def _finite(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


def evidence_record(rec: dict[str, Any]) -> dict[str, Any]:
    """The study record reduced to the fields the verifier reads, ages removed (``age_band`` replaces them)."""
    out = {k: rec.get(k) for k in EVIDENCE_FIELDS if k in rec}
    if isinstance(out.get("reasoning"), dict):
        out["reasoning"] = {k: v for k, v in out["reasoning"].items() if k != "age_years"}
    out["age_band"] = age_band(rec.get("age_years"))
    return out


def records_row(rec: dict[str, Any], kb) -> dict[str, Any]:
    """One ``records`` row (see the module docstring) for a study record of the build."""
    reasoning = rec.get("reasoning") or {}
    bios = []
    for bid, v in sorted((rec.get("biomarkers") or {}).items()):
        meta = kb.biomarkers.get(bid)
        if meta is not None and meta.value_kind == "position":
            continue  # pixel positions are geometry (in ``evidence``), not measurements
        bios.append({"id": bid, "value": _finite(v), "unit": meta.unit if meta is not None else None})
    findings = []
    for f in reasoning.get("findings") or []:
        rng = f.get("normal_range") or {}
        thr = f.get("threshold") or {}
        findings.append({
            "id": f.get("id"), "name": f.get("name"), "biomarker": f.get("biomarker"), "value": _finite(f.get("value")),
            "unit": f.get("unit"), "abnormal": bool(f.get("abnormal")), "grade": f.get("grade"),
            "normal_range_id": rng.get("id"), "normal_p5": _finite(rng.get("p5")), "normal_p95": _finite(rng.get("p95")),
            "normal_range_source": rng.get("source"), "normal_range_device": rng.get("device_matched"),
            "threshold": _finite(thr.get("value")), "sources": list(f.get("sources") or []),
            "explanation": f.get("explanation"),
        })
    differential = [{"id": d.get("id"), "name": d.get("name"), "status": d.get("status"), "reason": d.get("reason"),
                     "stage": ((d.get("staging") or [{}])[0] or {}).get("stage"), "sources": list(d.get("sources") or [])}
                    for d in reasoning.get("differential") or []]
    return {
        "study_id": str(rec["study_id"]), "patient_id": str(rec["patient_id"]), "eye": rec.get("eye"),
        "age_band": age_band(rec.get("age_years")), "sex": rec.get("sex") if rec.get("sex") in ("F", "M") else None,
        "label": rec.get("label"), "device": rec.get("device"), "kb_snapshot": reasoning.get("kb_snapshot_id"),
        "biomarkers": bios, "findings": findings, "differential": differential,
        "not_evaluable": [{"finding": str(n.get("finding")), "reason": str(n.get("reason"))}
                          for n in reasoning.get("not_evaluable") or [] if isinstance(n, dict)],
        "evidence": json.dumps(evidence_record(rec), sort_keys=True, default=str),
    }


def records_features():
    """The ``datasets.Features`` of the ``records`` config."""
    import datasets

    s, f = datasets.Value("string"), datasets.Value("float64")
    return datasets.Features({
        "study_id": s, "patient_id": s, "eye": s, "age_band": s, "sex": s, "label": s, "device": s, "kb_snapshot": s,
        "biomarkers": datasets.List({"id": s, "value": f, "unit": s}),
        "findings": datasets.List({
            "id": s, "name": s, "biomarker": s, "value": f, "unit": s, "abnormal": datasets.Value("bool"),
            "grade": datasets.Value("int64"), "normal_range_id": s, "normal_p5": f, "normal_p95": f,
            "normal_range_source": s, "normal_range_device": s, "threshold": f, "sources": datasets.List(s),
            "explanation": s}),
        "differential": datasets.List({"id": s, "name": s, "status": s, "reason": s, "stage": s,
                                       "sources": datasets.List(s)}),
        "not_evaluable": datasets.List({"finding": s, "reason": s}), "evidence": s,
    })


def record_from_evidence(evidence: str) -> dict[str, Any]:
    """The study record a ``records`` row's ``evidence`` holds (for :func:`grok.instruct.records.build_facts`)."""
    return json.loads(evidence)
