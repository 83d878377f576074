"""``absent_when``: a finding no extractor assesses, absent by definition (or by a stated inference) where the
knowledge base says so.

AMD pigmentary abnormalities are defined by their association with medium or large drusen (Beckman,
Ferris 2013), so an eye whose drusen were assessed and hold no medium or large ones has none; with
medium or large drusen, or with the drusen not assessed, the finding stays not evaluable. The rule is
YAML on the finding (``absent_when:``), validated by the loader like the rest of the knowledge base. Diabetic
retinopathy's venous beading, IRMA and new vessels are absent *by inference* (``basis: inference``) when none of
its lower signs (microaneurysms, haemorrhages, hard exudates, cotton-wool spots) is found, the reading the
knowledge base's own rule-out of the disease makes.

Run as: .venv/bin/python -m pytest tests/test_kb_absent_when.py -q
"""

from __future__ import annotations

import shutil

import pytest
import yaml

from grok.knowledge import KnowledgeBaseError, bundled_knowledge_base_dir, load_knowledge_base, reason
from grok.knowledge.coverage import BY_DEFINITION, NO_EXTRACTOR, kb_coverage

KB_DIR = bundled_knowledge_base_dir()
KB = load_knowledge_base()
PIGMENT = "pigmentary_abnormality_present"


def rec(biomarkers, lesions=(), **kw):
    out = {"device": "generic", "sex": "F", "age_years": 72.0, "laterality": "OS", "biomarkers": biomarkers,
           "lesions": list(lesions)}
    out.update(kw)
    return out


def drusen(*diameters):
    return [{"type": "drusen", "diameter_um": d} for d in diameters]


def ne_reason(r, fid):
    return {n["finding"]: n["reason"] for n in r.not_evaluable}.get(fid)


def amd(r):
    return next(d for d in r.differential if d.id == "amd")


def test_absent_by_definition_without_medium_or_large_drusen():
    none = reason(rec({"drusen_count": 0, "drusen_volume_5mm_mm3": 0.0}))
    assert PIGMENT in none.absent and ne_reason(none, PIGMENT) is None
    assert none.absent_reasons[PIGMENT].startswith("by definition: no medium or large drusen")
    assert none.to_dict()["absent_reasons"] == {PIGMENT: none.absent_reasons[PIGMENT]}
    small = reason(rec({"drusen_count": 2}, drusen(40, 55)))
    assert PIGMENT in small.absent and amd(small).staging[0].stage == "normal_ageing"


@pytest.mark.parametrize("diameters,present", [((40, 90), "drusen_medium"), ((40, 160), "drusen_large")])
def test_not_evaluable_with_medium_or_large_drusen(diameters, present):
    r = reason(rec({"drusen_count": len(diameters)}, drusen(*diameters)))
    why = ne_reason(r, PIGMENT)
    assert PIGMENT not in r.absent and PIGMENT not in r.absent_reasons
    assert "not assessed" in why and "condition is false" in why and f"{present} present" in why
    assert "ferris2013" in why
    if present == "drusen_medium":  # early vs intermediate needs the pigment: left open, not guessed
        assert amd(r).staging[0].stage is None and "early" in amd(r).staging[0].not_assessable_above


def test_not_evaluable_when_the_drusen_were_not_assessed():
    r = reason(rec({"macular_thickness_central_um": 270.0}))
    why = ne_reason(r, PIGMENT)
    assert "condition is unknown" in why and "drusen_medium not evaluable" in why
    unsized = reason(rec({"drusen_count": 1}, [{"type": "drusen"}]))  # one druse of unknown size
    assert "condition is unknown" in ne_reason(unsized, PIGMENT)


def test_a_listed_pigment_is_never_overridden():
    r = reason(rec({"drusen_count": 1}, [*drusen(40), {"type": "pigmentary_abnormality"}]))
    assert r.finding(PIGMENT) is not None and PIGMENT not in r.absent_reasons


def _copy_with(tmp_path, old: str, new: str, rel: str = "findings/cfp.yaml"):
    work = tmp_path / "kb"
    shutil.copytree(KB_DIR, work)
    p = work / rel
    text = p.read_text(encoding="utf-8")
    assert old in text, f"test setup: {old!r} not in {rel}"
    p.write_text(text.replace(old, new, 1), encoding="utf-8")
    return work


OLD_COND = "condition: {all: [{not: drusen_medium}, {not: drusen_large}]}"


def test_the_rule_is_the_yaml_and_generic(tmp_path):
    """Without the YAML rule the finding stays not evaluable; the same key on another finding works."""
    plain = load_knowledge_base(_copy_with(tmp_path / "a", OLD_COND, "condition: {not: disc_cupping}"))
    r = reason(rec({"drusen_count": 0, "cup_disc_ratio_vertical": 0.8}), plain)
    assert PIGMENT not in r.absent and "condition is false (disc_cupping present)" in ne_reason(r, PIGMENT)
    overlay = tmp_path / "mine"
    overlay.mkdir()
    nv = dict(KB.findings["neovascularisation_present"].model_dump(mode="json", by_alias=True))
    nv["absent_when"] = {"condition": {"not": "hemorrhages_present"}, "source": "wilkinson2003",
                         "reason": "test rule: no haemorrhages"}
    (overlay / "nv.yaml").write_text(yaml.safe_dump({"findings": [nv]}), encoding="utf-8")
    mine = load_knowledge_base([KB_DIR, overlay])
    assert mine.snapshot_id != KB.snapshot_id
    r = reason(rec({"hemorrhage_count": 0}), mine)
    assert r.absent_reasons["neovascularisation_present"] == "test rule: no haemorrhages"
    assert "neovascularisation_present" in {n["finding"] for n in reason(rec({"hemorrhage_count": 0})).not_evaluable}


@pytest.mark.parametrize(
    "old,new,key,msg",
    [
        (OLD_COND, "condition: {all: [{not: drusen_mediun}, {not: drusen_large}]}",
         "findings[id=pigmentary_abnormality_present].absent_when.condition.all[0].not.finding", "not a known finding"),
        (OLD_COND, "condition: {not: pigmentary_abnormality_present}",
         "findings[id=pigmentary_abnormality_present].absent_when.condition", "cycle"),
        ("source: ferris2013,\n                   reason:", "source: ferris2031,\n                   reason:",
         "findings[id=pigmentary_abnormality_present].absent_when.source", "not a known source"),
        (OLD_COND, "condition: {all: [drusen_medium, drusen_large], any: [drusen_small]}",
         "findings[id=pigmentary_abnormality_present]", "exactly one of"),
    ],
    ids=["unknown-finding", "self-cycle", "unknown-source", "two-operators"],
)
def test_loader_rejects_a_bad_absent_when(tmp_path, old, new, key, msg):
    with pytest.raises(KnowledgeBaseError) as err:
        load_knowledge_base(_copy_with(tmp_path, old, new))
    hits = [i for i in err.value.issues if i.key.startswith(key) and msg in i.message + i.fix]
    assert hits, "\n".join(map(str, err.value.issues))
    assert hits[0].file.endswith("cfp.yaml") and hits[0].fix


def test_loader_rejects_a_cycle_through_two_findings(tmp_path):
    work = _copy_with(tmp_path, OLD_COND, "condition: {not: neovascularisation_present}")
    overlay = tmp_path / "mine"
    overlay.mkdir()
    nv = dict(KB.findings["neovascularisation_present"].model_dump(mode="json", by_alias=True))
    nv["absent_when"] = {"condition": {"not": PIGMENT}, "source": "wilkinson2003", "reason": "loop"}
    (overlay / "nv.yaml").write_text(yaml.safe_dump({"findings": [nv]}), encoding="utf-8")
    with pytest.raises(KnowledgeBaseError, match="cycle") as err:
        load_knowledge_base([work, overlay])
    assert any(PIGMENT in i.message and "neovascularisation_present" in i.message for i in err.value.issues)


def test_coverage_reports_absent_by_definition_not_as_evaluable(tmp_path):
    for device in ("spectralis", "cirrus", "topcon"):
        cov = {c["category"]: c for c in kb_coverage(KB, device=device, age_years=70, sex="M",
                                                     engine_measured=True)["categories"]}["amd"]
        row = next(f for f in cov["findings"] if f["finding"] == PIGMENT)
        assert row["status"] == BY_DEFINITION and "drusen_medium (evaluable)" in row["reason"]
        assert PIGMENT in cov["absent_by_definition"]
        assert PIGMENT not in cov["evaluable"] + cov["not_evaluable"] + cov["key_findings"]
    no_rule = tmp_path / "norule"
    no_rule.mkdir()
    pig = KB.findings[PIGMENT].model_dump(mode="json", by_alias=True)
    pig.pop("absent_when")
    (no_rule / "p.yaml").write_text(yaml.safe_dump({"findings": [pig]}), encoding="utf-8")
    cov = kb_coverage(load_knowledge_base([KB_DIR, no_rule]), device="spectralis", age_years=70, sex="M")
    row = next(f for c in cov["categories"] if c["category"] == "amd" for f in c["findings"] if f["finding"] == PIGMENT)
    assert row["status"] == NO_EXTRACTOR


# ---- diabetic retinopathy's severe and proliferative signs: absent by inference (basis: inference) ----
DR_SEVERE = ("neovascularisation_present", "venous_beading_present", "irma_present")
LOWER = {"microaneurysm_count": 0, "hemorrhage_count": 0, "hard_exudate_count": 0, "cotton_wool_spot_count": 0}


def dr(r):
    return next(d for d in r.differential if d.id == "diabetic_retinopathy")


def test_dr_severe_signs_absent_by_inference_without_any_lower_sign(tmp_path):
    r = reason(rec(dict(LOWER)))
    for fid in DR_SEVERE:
        assert fid in r.absent and ne_reason(r, fid) is None
        assert r.absent_reasons[fid].startswith("inferred, not seen: none of diabetic retinopathy's lower signs")
    assert "sickle-cell" in r.absent_reasons["neovascularisation_present"]
    # the grading is then complete: no more severe stage is left unassessed
    stage = dr(r).staging[0]
    assert stage.stage == "no_apparent_retinopathy" and stage.not_assessable_above == []
    before = reason(rec(dict(LOWER)), load_knowledge_base(_strip_dr_rules(tmp_path)))
    assert dr(before).staging[0].not_assessable_above == ["proliferative", "severe_npdr_signs"]


@pytest.mark.parametrize("count", sorted(LOWER))
def test_dr_severe_signs_stay_not_evaluable_with_any_lower_sign(count):
    r = reason(rec({**LOWER, count: 3}))
    for fid in DR_SEVERE:
        why = ne_reason(r, fid)
        assert fid not in r.absent and why is not None
        assert "absence by inference (wilkinson2003) does not apply: its condition is false" in why


def test_dr_severe_signs_stay_not_evaluable_when_a_lower_sign_was_not_measured():
    partial = {k: v for k, v in LOWER.items() if k != "microaneurysm_count"}
    r = reason(rec(partial))
    assert all("condition is unknown" in ne_reason(r, fid) and "microaneurysms_present not evaluable"
               in ne_reason(r, fid) for fid in DR_SEVERE)


def test_a_listed_severe_sign_is_never_overridden_and_coverage_says_inference():
    r = reason(rec(dict(LOWER), [{"type": "irma"}]))
    assert r.finding("irma_present") is not None and "irma_present" not in r.absent_reasons
    assert dr(r).staging[0].stage == "severe_npdr_signs"
    from grok.knowledge.coverage import BY_INFERENCE

    cov = {c["category"]: c for c in kb_coverage(KB, device="cirrus", age_years=60, sex="F")["categories"]}
    rows = {f["finding"]: f for f in cov["diabetic_retinopathy"]["findings"]}
    for fid in DR_SEVERE:
        assert rows[fid]["status"] == BY_INFERENCE and "absent by inference" in rows[fid]["reason"]
    assert sorted(cov["diabetic_retinopathy"]["absent_by_inference"]) == sorted(DR_SEVERE)
    assert cov["amd"]["absent_by_definition"] == [PIGMENT] and cov["amd"]["absent_by_inference"] == []


def test_basis_is_validated_and_defaults_to_definition(tmp_path):
    with pytest.raises(KnowledgeBaseError) as err:
        load_knowledge_base(_copy_with(tmp_path, "basis: inference", "basis: hunch"))
    assert any("basis" in i.key for i in err.value.issues)
    # a rule without the key dumps without it (its knowledge base keeps its snapshot id)
    assert "basis" not in KB.findings[PIGMENT].model_dump(mode="json", by_alias=True)["absent_when"]


def _strip_dr_rules(tmp_path):
    work = tmp_path / "kb"
    shutil.copytree(KB_DIR, work)
    data = yaml.safe_load((work / "findings" / "cfp.yaml").read_text(encoding="utf-8"))
    for f in data["findings"]:
        if f["id"] in DR_SEVERE:
            f.pop("absent_when", None)
    (work / "findings" / "cfp.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    return work
