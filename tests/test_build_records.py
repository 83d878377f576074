"""The records stage joins cohort labels by visit: with several cohort rows per patient each visit gets
its own row's label (the cohort's visit dates shifted exactly like the images' dates), and a study whose
label cannot be told apart is quarantined with the reason, never given one of them."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grok.ingest.deid import DeidConfig, pseudonymise_patient_id, transform_date
from grok.stages.measure_stage import BIOMARKER_SCHEMA, SCALAR_IDS
from grok.stages.records_stage import build_records

KEY = "records-test-key"
MRN = "MRN-0042"
BASE = {"patient_id": MRN, "sex": "F", "age_years": 70, "icd10_codes": "", "self_reported_illness_codes": "",
        "eye_problem_codes": "", "amd_laterality": "", "glaucoma_laterality": "", "diabetic_eye_laterality": "",
        "age_amd_diagnosed": "", "age_glaucoma_diagnosed": "", "age_diabetic_eye_diagnosed": "",
        "age_diabetes_diagnosed": "", "diabetes_diagnosed_by_doctor": "0", "systolic_bp_auto_1": "120",
        "systolic_bp_auto_2": "122", "diastolic_bp_auto_1": "75", "diastolic_bp_auto_2": "76",
        "systolic_bp_manual_1": "", "diastolic_bp_manual_1": "", "vascular_heart_problem_codes": "",
        "medication_codes": ""}
AMD = {"icd10_codes": "H35.3", "amd_laterality": "3", "age_amd_diagnosed": "72"}


def _visit(d: dt.date, deid: DeidConfig) -> str:
    """The study's visit exactly as ingestion writes it (the per-patient shifted date, or the year)."""
    pid = pseudonymise_patient_id(MRN, deid.key)
    v = transform_date(d, pid, deid).isoformat()
    return v[:4] if deid.date_mode == "year" else v


def _build(tmp: Path, visits: list[str]) -> Path:
    pid = pseudonymise_patient_id(MRN, KEY)
    rows = []
    for i, v in enumerate(visits):
        row = {k: None for k in BIOMARKER_SCHEMA.names}
        row.update({b: math.nan for b in SCALAR_IDS}, study_id=f"S{i}", patient_id=pid, eye="OD", visit=v,
                   age_years=70.0, sex="F", lesions="[]", images="{}", image_sizes="{}", overlays="{}",
                   oct_quality="{}", extractors="{}", flags=[])
        rows.append(row)
    tmp.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=BIOMARKER_SCHEMA), tmp / "biomarkers.parquet")
    return tmp


def _records(build: Path) -> dict[str, dict]:
    return {r["study_id"]: r for r in map(json.loads, (build / "records.jsonl").read_text().splitlines())}


def _quarantine(build: Path) -> dict[str, dict]:
    return {r["study_id"]: r for r in pq.read_table(build / "records_quarantine.parquet").to_pylist()}


@pytest.mark.parametrize("date_mode", ["shift", "year"])
def test_each_visit_gets_its_own_cohort_row(tmp_path, date_mode):
    deid = DeidConfig(key=KEY, date_mode=date_mode)
    d0, d1 = dt.date(2014, 3, 1), dt.date(2019, 6, 20)
    build = _build(tmp_path, [_visit(d0, deid), _visit(d1, deid)])
    cohort = pd.DataFrame([{**BASE, "visit": 0, "visit_date": d0.isoformat()},
                           {**BASE, **AMD, "visit": 1, "visit_date": d1.isoformat()}])
    res = build_records(build, cohort=cohort, deid=deid)
    recs = _records(build)
    assert recs["S0"]["label"] == "normal"
    assert recs["S1"]["label"] == "amd"
    assert res == {"studies_in": 2, "records": 2, "quarantined": 0}
    # the real visit dates never reach a table the build writes
    for f in build.iterdir():
        assert d0.isoformat() not in f.read_bytes().decode("latin-1"), f


def test_several_undated_rows_that_disagree_are_quarantined(tmp_path):
    deid = DeidConfig(key=KEY)
    build = _build(tmp_path, [_visit(dt.date(2014, 3, 1), deid), _visit(dt.date(2019, 6, 20), deid)])
    cohort = pd.DataFrame([{**BASE, "visit": 0}, {**BASE, **AMD, "visit": 1}])
    res = build_records(build, cohort=cohort, deid=deid)
    q = _quarantine(build)
    assert set(q) == {"S0", "S1"} and {r["error_class"] for r in q.values()} == {"label_ambiguous"}
    assert "visit_date" in q["S0"]["reason"]
    assert res == {"studies_in": 2, "records": 0, "quarantined": 2}


def test_several_rows_that_agree_label_every_visit(tmp_path):
    deid = DeidConfig(key=KEY)
    build = _build(tmp_path, [_visit(dt.date(2014, 3, 1), deid), _visit(dt.date(2019, 6, 20), deid)])
    cohort = pd.DataFrame([{**BASE, **AMD, "visit": 0}, {**BASE, **AMD, "visit": 1}])
    build_records(build, cohort=cohort, deid=deid)
    assert {r["label"] for r in _records(build).values()} == {"amd"} and len(_records(build)) == 2


def test_dated_rows_of_other_visits_do_not_label_a_study(tmp_path):
    deid = DeidConfig(key=KEY)
    build = _build(tmp_path, [_visit(dt.date(2021, 1, 5), deid)])
    cohort = pd.DataFrame([{**BASE, "visit": 0, "visit_date": "2014-03-01"},
                           {**BASE, **AMD, "visit": 1, "visit_date": "2019-06-20"}])
    build_records(build, cohort=cohort, deid=deid)
    assert _quarantine(build)["S0"]["error_class"] == "label_visit_unmatched"
