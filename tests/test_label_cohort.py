"""Cohort labelling rules against hand-written edge cases (no codes, contradictory codes, BP exactly at
140/90, laterality, missing columns) and the CLI.

Run as: .venv/bin/python -m pytest tests/test_label_cohort.py -q
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from grok.knowledge import label_cohort, load_knowledge_base
from grok.knowledge.labeller import read_cohort, write_labels

KB = load_knowledge_base()
COLUMNS = list(KB.cohort.fields.values())


def cohort(*rows: dict) -> pd.DataFrame:
    """Rows as the phantom writes them: every column present, empty string = none."""
    full = []
    for i, r in enumerate(rows):
        base = {c: "" for c in COLUMNS}
        base.update({"patient_id": f"10000{i}", "visit": "0", "sex": "F", "age_years": "60"})
        base.update({k: str(v) for k, v in r.items()})
        full.append(base)
    return pd.DataFrame(full, columns=COLUMNS)


def lab(df: pd.DataFrame) -> pd.DataFrame:
    return label_cohort(df, KB, pseudonymise=lambda s: "P-" + s)


def eye(out: pd.DataFrame, e: str, i: int = 0) -> dict:
    return out[out["eye"] == e].iloc[i].to_dict()


def bp(s1="", s2="", d1="", d2="", sm="", dm=""):
    return {
        "systolic_bp_auto_1": s1,
        "systolic_bp_auto_2": s2,
        "diastolic_bp_auto_1": d1,
        "diastolic_bp_auto_2": d2,
        "systolic_bp_manual_1": sm,
        "diastolic_bp_manual_1": dm,
    }


def test_no_codes_is_normal_in_both_eyes():
    out = lab(cohort(dict(bp(120, 122, 70, 72), diabetes_diagnosed_by_doctor="0")))
    assert len(out) == 2 and list(out["eye"]) == ["OD", "OS"]
    for e in ("OD", "OS"):
        r = eye(out, e)
        assert r["labels"] == ["normal"] and r["primary_label"] == "normal" and r["label_normal"]
        assert r["conflicts"] == [] and r["missing_fields"] == []
        assert r["rules"][0]["rule"] == "normal"
    unknown = lab(cohort(bp(120, 122, 70, 72)))  # 2443 left empty: unknown, so reported as missing
    assert eye(unknown, "OD")["missing_fields"] == ["diabetes_diagnosed_by_doctor"]
    assert set(out["patient_id"]) == {"P-100000"} and set(out["kb_snapshot_id"]) == {KB.snapshot_id}


@pytest.mark.parametrize(
    "readings,expected",
    [
        (bp(140, "", 80, ""), True),  # systolic exactly at the threshold
        (bp(130, "", 90, ""), True),  # diastolic exactly at the threshold
        (bp(139.9, "", 89.9, ""), False),  # just below both
        (bp(150, 129, 80, 80), False),  # mean systolic (150 + 129) / 2 = 139.5
        (bp(150, 130, 80, 80), True),  # mean systolic 140.0
        (bp(145, 130, 80, 80, sm=140), False),  # auto and manual pooled: (145 + 130 + 140) / 3 = 138.3
        (bp("", "", "", "", sm=160, dm=70), True),  # manual reading alone
    ],
)
def test_blood_pressure_threshold_at_mean_140_90(readings, expected):
    out = lab(cohort(readings))
    assert bool(eye(out, "OD")["label_hypertension"]) is expected
    assert bool(eye(out, "OS")["label_hypertension"]) is expected
    if expected:
        rule = next(r for r in eye(out, "OD")["rules"] if r["label"] == "hypertension")
        assert rule["rule"] == "hypertension.blood_pressure" and "mmHg" in rule["explanation"]


def test_hypertension_by_self_report_or_medication_without_readings():
    out = lab(cohort({"vascular_heart_problem_codes": "4"}, {"medication_codes": "1;2"}, {}))
    assert bool(out.iloc[0]["label_hypertension"]) and bool(out.iloc[2]["label_hypertension"])
    last = out.iloc[4].to_dict()
    assert last["labels"] == ["normal"]
    assert "systolic_bp_auto_1" in last["missing_fields"]  # reported, not guessed


def test_icd10_prefixes_with_and_without_dots():
    out = lab(
        cohort(
            {"icd10_codes": "H353"},
            {"icd10_codes": "E11.3"},
            {"icd10_codes": "E11.9;H40.1"},
            {"icd10_codes": "G30.1"},
        )
    )
    assert eye(out, "OD", 0)["labels"] == ["amd"]
    assert eye(out, "OD", 1)["labels"] == ["diabetic_retinopathy", "diabetes"]
    assert eye(out, "OD", 2)["labels"] == ["glaucoma", "diabetes"]
    assert eye(out, "OD", 3)["labels"] == ["alzheimers"]
    assert eye(out, "OD", 1)["primary_label"] == "diabetic_retinopathy"


def test_self_report_and_eye_problem_codes():
    out = lab(
        cohort(
            {"self_reported_illness_codes": "1277"},
            {"eye_problem_codes": "1"},
            {"self_reported_illness_codes": "1222"},
            {"self_reported_illness_codes": "1263"},
        )
    )
    assert eye(out, "OS", 0)["labels"] == ["glaucoma"]
    assert eye(out, "OS", 1)["labels"] == ["diabetic_retinopathy"]
    assert eye(out, "OS", 2)["labels"] == ["diabetes"]
    assert eye(out, "OS", 3)["labels"] == ["alzheimers"]


def test_laterality_codes_left_right_both_and_unknown():
    out = lab(
        cohort(
            {"eye_problem_codes": "5", "amd_laterality": "1"},
            {"eye_problem_codes": "5", "amd_laterality": "2"},
            {"eye_problem_codes": "5", "amd_laterality": "3"},
            {"eye_problem_codes": "5", "amd_laterality": "-1"},
        )
    )
    assert not eye(out, "OD", 0)["label_amd"] and eye(out, "OS", 0)["label_amd"]
    assert eye(out, "OD", 1)["label_amd"] and not eye(out, "OS", 1)["label_amd"]
    assert eye(out, "OD", 2)["label_amd"] and eye(out, "OS", 2)["label_amd"]
    assert eye(out, "OD", 3)["label_amd"] and eye(out, "OS", 3)["label_amd"]
    assert "amd_laterality" in eye(out, "OD", 3)["missing_fields"]
    # an eye without the disease is normal only if nothing else fired
    assert eye(out, "OD", 0)["labels"] == ["normal"]


def test_contradictory_codes_are_reported_and_block_normal():
    out = lab(
        cohort(
            {"eye_problem_codes": "-7;5"},
            {"eye_problem_codes": "-7", "icd10_codes": "H40.1"},
            {"diabetes_diagnosed_by_doctor": "0", "self_reported_illness_codes": "1223"},
            {"amd_laterality": "2"},
        )
    )
    r0 = eye(out, "OD", 0)
    assert r0["label_amd"] and any(c.startswith("eye_problems.none_exclusive") for c in r0["conflicts"])
    assert any(c.startswith("eye_problems.none_vs_label") for c in eye(out, "OD", 1)["conflicts"])
    assert any(c.startswith("diabetes.doctor_said_no") for c in eye(out, "OD", 2)["conflicts"])
    r3 = eye(out, "OD", 3)  # laterality given, no AMD evidence: conflict, no label, not normal
    assert r3["labels"] == [] and r3["primary_label"] is None
    assert any(c.startswith("laterality.without_label") for c in r3["conflicts"])


def test_diagnosis_age_after_visit_and_bad_bp_pairs_are_conflicts():
    out = lab(cohort({"age_years": "50", "age_glaucoma_diagnosed": "55"}, bp(80, "", 90, "")))
    assert any(c.startswith("ages.diagnosis_after_visit") for c in eye(out, "OD", 0)["conflicts"])
    assert eye(out, "OD", 0)["label_glaucoma"]  # the age itself is evidence; the conflict is reported
    assert any(c.startswith("blood_pressure.diastolic") for c in eye(out, "OD", 1)["conflicts"])


def test_negative_ukb_codes_in_ages_are_not_evidence():
    out = lab(cohort({"age_amd_diagnosed": "-1"}, {"age_diabetes_diagnosed": "-3"}))
    assert eye(out, "OD", 0)["labels"] == ["normal"] and eye(out, "OD", 1)["labels"] == ["normal"]


def test_missing_columns_are_reported_not_guessed():
    df = cohort({"icd10_codes": "H35.3"}).drop(columns=["amd_laterality", "medication_codes"])
    out = lab(df)
    r = eye(out, "OD")
    assert r["labels"] == ["amd"]
    assert {"amd_laterality", "medication_codes"} <= set(r["missing_fields"])


def test_numeric_columns_from_parquet_work_like_text(tmp_path):
    df = cohort({"eye_problem_codes": "2", "glaucoma_laterality": "2"}, bp(141, "", 80, ""))
    num = df.copy()
    for c in ("visit", "age_years", "glaucoma_laterality", "systolic_bp_auto_1", "diastolic_bp_auto_1"):
        num[c] = pd.to_numeric(num[c].replace("", None))
    p = tmp_path / "c.parquet"
    num.to_parquet(p)
    a, b = lab(df), lab(read_cohort(p))
    cols = ["patient_id", "visit", "eye", "labels", "primary_label", "conflicts"]
    assert a[cols].to_dict("records") == b[cols].to_dict("records")


def test_default_pseudonym_is_keyed_and_stable(monkeypatch):
    monkeypatch.setenv("GROK_PSEUDONYM_KEY", "k1")
    a = label_cohort(cohort({}), KB)["patient_id"].iloc[0]
    assert a != "100000" and a == label_cohort(cohort({}), KB)["patient_id"].iloc[0]
    monkeypatch.setenv("GROK_PSEUDONYM_KEY", "k2")
    assert label_cohort(cohort({}), KB)["patient_id"].iloc[0] != a


def test_write_labels_parquet_roundtrip(tmp_path):
    out = lab(cohort({"icd10_codes": "E11.3", "diabetic_eye_laterality": "1"}))
    p = write_labels(out, tmp_path / "labels.parquet")
    back = pd.read_parquet(p)
    assert list(back["eye"]) == ["OD", "OS"]
    assert list(back.iloc[1]["labels"]) == ["diabetic_retinopathy", "diabetes"]
    assert back.iloc[1]["rules"][0]["rule"] == "diabetic_retinopathy.icd10"


def test_column_names_map_through_the_yaml(tmp_path):
    """A user's own column names need only an overlay of cohort.fields."""
    import yaml

    from grok.knowledge import bundled_knowledge_base_dir

    theirs = tmp_path / "mine"
    theirs.mkdir()
    fields = dict(KB.cohort.fields, icd10_codes="diag_icd10", patient_id="eid")
    (theirs / "cohort.yaml").write_text(yaml.safe_dump({"cohort": {"fields": fields}}), encoding="utf-8")
    kb2 = load_knowledge_base([bundled_knowledge_base_dir(), theirs])
    df = cohort({"icd10_codes": "G30"}).rename(columns={"icd10_codes": "diag_icd10", "patient_id": "eid"})
    out = label_cohort(df, kb2, pseudonymise=str.lower)
    assert out.iloc[0]["labels"] == ["alzheimers"] and out.iloc[0]["kb_snapshot_id"] != KB.snapshot_id


def test_cli_label(tmp_path):
    from grok.cli import app

    p = tmp_path / "cohort.csv"
    cohort({"icd10_codes": "H35.3", "amd_laterality": "3"}, bp(150, 150, 95, 95)).to_csv(p, index=False)
    out = tmp_path / "labels.parquet"
    res = CliRunner().invoke(
        app, ["label", str(p), "--out", str(out), "--json"], env={"GROK_PSEUDONYM_KEY": "t"}
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["label_rows"] == 4 and summary["label_counts_eyes"] == {"amd": 2, "hypertension": 2}
    assert pd.read_parquet(out).shape[0] == 4
    assert CliRunner().invoke(app, ["label", str(tmp_path / "none.csv"), "--out", str(out)]).exit_code == 3


def _oracle(subject, eye_id: str) -> str:
    """Expected primary label from the phantom's ground truth and the documented rules."""
    row = subject.cohort
    if subject.category == "diabetic_retinopathy" and not subject.eyes_affected[eye_id]:
        return "diabetes"  # the other eye of a diabetic patient is 'diabetes', not 'normal'
    if subject.category == "hypertension":
        sys_ = [
            float(row[k])
            for k in ("systolic_bp_auto_1", "systolic_bp_auto_2", "systolic_bp_manual_1")
            if row.get(k)
        ]
        dia = [
            float(row[k])
            for k in ("diastolic_bp_auto_1", "diastolic_bp_auto_2", "diastolic_bp_manual_1")
            if row.get(k)
        ]
        high = (sys_ and sum(sys_) / len(sys_) >= 140) or (dia and sum(dia) / len(dia) >= 90)
        told = "4" in row["vascular_heart_problem_codes"].split(";") or "2" in row["medication_codes"].split(
            ";"
        )
        return "hypertension" if (high or told) else "normal"
    return subject.eye_label(eye_id)


@pytest.mark.parametrize("seed", [0, 3])
def test_phantom_cohort_labels_match_ground_truth(seed):
    from grok.phantom.archive import COHORT_COLUMNS, PhantomConfig, make_subjects

    subjects = make_subjects(PhantomConfig(subjects=42, seed=seed, exports=False))
    df = pd.DataFrame([{k: str(s.cohort.get(k, "")) for k in COHORT_COLUMNS} for s in subjects])
    out = label_cohort(df, KB, pseudonymise=str)
    by_id = {s.identity.patient_id: s for s in subjects}
    assert len(out) == 2 * len(subjects)
    for r in out.to_dict("records"):
        s = by_id[r["patient_id"]]
        assert r["primary_label"] == _oracle(s, r["eye"]), (s.category, r["eye"], r["rules"])
        assert r["conflicts"] == []
