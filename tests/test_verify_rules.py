"""The verifier against hand-written good and bad answers (each planted defect must be caught)."""

from __future__ import annotations

import pytest

from grok.instruct.records import build_facts
from grok.instruct.samples import sample_record
from grok.knowledge import load_knowledge_base
from grok.knowledge.lexicon import build_lexicon
from grok.verify.verifier import Verifier, VerifyConfig


@pytest.fixture(scope="module")
def ctx():
    kb = load_knowledge_base()
    lex = build_lexicon(kb)
    rec = sample_record(1, "amd", seed=11, kb=kb)  # eye OS (odd index)
    rec["biomarkers"]["macular_thickness_central_um"] = 262.0
    rec.pop("reasoning")
    facts = build_facts(rec, kb, lex)
    return facts, Verifier(lex)


def _row(task, answer, facts, question="<image>\n<image>\nWhat is the diagnosis?", images=2):
    return {"task": task, "eye": facts.eye, "images": ["a.png", "b.png"][:images],
            "image_roles": ["cfp", "oct_foveal"][:images],
            "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def _codes(res):
    return {r.split(":", 1)[0] for r in res.reasons}


def _good_report(facts):
    cst = facts.biomarkers["macular_thickness_central_um"]
    return (f"The left eye shows a central subfield thickness (CST) of {cst.text}, within the normal range "
            f"({cst.low_text} to {cst.high_text}); there is no subretinal fluid and sub-RPE drusen are present. "
            "Glaucoma is unlikely given no enlarged vertical cup-to-disc ratio. "
            "Diagnosis: age-related macular degeneration.")


def test_good_report_passes(ctx):
    facts, v = ctx
    assert facts.eye == "OS" and facts.label == "amd"
    res = v.verify(_row("report", _good_report(facts), facts), facts)
    assert res.passed, res.reasons
    assert res.score == 1.0 and res.checks >= 6


def test_wrong_number_is_caught(ctx):
    facts, v = ctx
    text = _good_report(facts).replace(facts.biomarkers["macular_thickness_central_um"].text, "331.0 µm")
    res = v.verify(_row("report", text, facts), facts)
    assert not res.passed and "wrong_number" in _codes(res)


def test_small_rounding_is_accepted_but_eleven_percent_is_not(ctx):
    facts, v = ctx
    base = _good_report(facts)
    cst = facts.biomarkers["macular_thickness_central_um"]
    ok = base.replace(cst.text, f"{round(cst.value * 1.08)} µm")
    assert v.verify(_row("report", ok, facts), facts).passed
    bad = base.replace(cst.text, f"{cst.value * 1.11:.1f} µm")
    assert "wrong_number" in _codes(v.verify(_row("report", bad, facts), facts))
    strict = Verifier(v.lex, VerifyConfig(tolerance=0.05))
    assert "wrong_number" in _codes(strict.verify(_row("report", ok, facts), facts))


def test_invented_number_is_hallucinated(ctx):
    facts, v = ctx
    text = _good_report(facts).replace("Glaucoma is unlikely", "The foveal pit depth is 97.0 µm. Glaucoma is unlikely")
    res = v.verify(_row("report", text, facts), facts)
    assert "hallucinated_number" in _codes(res) and not res.passed
    text = _good_report(facts).replace("Diagnosis:", "A lesion of 1234 µm is seen. Diagnosis:")
    assert "hallucinated_number" in _codes(v.verify(_row("report", text, facts), facts))


def test_leaked_label_and_data_sheet_talk_are_forbidden(ctx):
    facts, v = ctx
    for leak in ("As given in the label, this is AMD.", "The provided report lists drusen.",
                 "According to the data sheet the CST is normal.", "The JSON says so."):
        res = v.verify(_row("report", _good_report(facts) + " " + leak, facts), facts)
        assert "forbidden_phrase" in _codes(res), leak
        assert not res.passed


def test_wrong_laterality_is_caught(ctx):
    facts, v = ctx
    res = v.verify(_row("report", _good_report(facts).replace("left eye", "right eye"), facts), facts)
    assert "laterality" in _codes(res)
    res = v.verify(_row("report", _good_report(facts).replace("The left eye", "OD"), facts), facts)
    assert "laterality" in _codes(res)
    # IS/OS (a band name) is not the left eye's abbreviation
    ok = _good_report(facts).replace("Glaucoma", "The IS/OS band is intact. Glaucoma")
    assert "laterality" not in _codes(v.verify(_row("report", ok, facts), facts))


def test_wrong_diagnosis_and_ruling_out_the_label(ctx):
    facts, v = ctx
    res = v.verify(_row("report", _good_report(facts).replace("Diagnosis: age-related macular degeneration",
                                                              "Diagnosis: glaucoma"), facts), facts)
    assert "diagnosis_mismatch" in _codes(res)
    res = v.verify(_row("report", _good_report(facts) + " AMD is ruled out.", facts), facts)
    assert "self_contradiction" in _codes(res)  # it also states AMD as the diagnosis
    res = v.verify(_row("biomarker_qa", "Drusen are present, but AMD is ruled out.", facts), facts)
    assert "contradiction" in _codes(res) and not res.passed
    res = v.verify(_row("diagnosis", "Answer: Normal.", facts), facts)
    assert "diagnosis_mismatch" in _codes(res)
    res = v.verify(_row("diagnosis", "Drusen are present.", facts), facts)
    assert "format" in _codes(res)  # a diagnosis row must state one


def test_qualitative_contradictions(ctx):
    facts, v = ctx
    text = _good_report(facts).replace("within the normal range", "markedly thickened")
    assert "contradiction" in _codes(v.verify(_row("report", text, facts), facts))
    text = _good_report(facts).replace("no subretinal fluid and sub-RPE drusen are present",
                                       "subretinal fluid is present and no sub-RPE drusen")
    res = v.verify(_row("report", text, facts), facts)
    assert sum(r.startswith("contradiction") for r in res.reasons) == 2


def test_format_rules(ctx):
    facts, v = ctx
    two_paragraphs = _good_report(facts).replace(" Glaucoma", "\n\nGlaucoma")
    assert "format" in _codes(v.verify(_row("report", two_paragraphs, facts), facts))
    long = _good_report(facts) + " The fundus is otherwise quiet." * 60
    assert "length" in _codes(v.verify(_row("report", long, facts), facts))
    missing_image = _row("report", _good_report(facts), facts, question="What is the diagnosis?")
    assert "format" in _codes(v.verify(missing_image, facts))
    cot = "Step 1 (measurements): x.\nStep 3 (findings): y.\nStep 4: Diagnosis: age-related macular degeneration."
    assert "format" in _codes(v.verify(_row("cot", cot, facts), facts))


def test_boxes_must_be_inside_and_grounded(ctx):
    facts, v = ctx
    good = facts.boxes["cfp"][0]
    q = "<image>\nLocate the drusen."
    row = {"task": "localisation", "eye": facts.eye, "images": ["a.png"], "image_roles": ["cfp"],
           "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ""}]}
    from grok.instruct.boxes import format_box

    row["messages"][1]["content"] = "- " + format_box(good)
    assert v.verify(row, facts).passed
    row["messages"][1]["content"] = "- <|box_start|>(10,20),(1200,40)<|box_end|>"
    assert "box" in _codes(v.verify(row, facts))
    row["messages"][1]["content"] = "- <|object_ref_start|>drusen<|object_ref_end|><|box_start|>(1,1),(5,5)<|box_end|>"
    assert "box" in _codes(v.verify(row, facts))
    row["messages"][1]["content"] = "- <|box_start|>(1,1)<|box_end|>"
    assert "box" in _codes(v.verify(row, facts))


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="tolerance"):
        VerifyConfig(tolerance=1.5)
    with pytest.raises(ValueError, match="iou_min"):
        VerifyConfig(iou_min=0)


def test_numbers_that_are_not_measurements(ctx):
    facts, v = ctx
    for text in ("The CST is 1.3 times the upper limit of normal.", "The CST z-score is 2.1.",
                 "The CST lies 2 SD above the mean.", "RNFL thinning is seen in 2 quadrants.",
                 "The CST should be rechecked in 3 months.", "The cup-to-disc ratio is 0.43 with an IOP of 24 mmHg.",
                 "The CST is normal and visual acuity is 6/12."):
        res = v.verify(_row("biomarker_qa", text, facts), facts)
        assert not {"wrong_number", "hallucinated_number"} & _codes(res), (text, res.reasons)
    res = v.verify(_row("biomarker_qa", "The CST is 400.", facts), facts)
    assert "wrong_number" in _codes(res)  # a bare number about a biomarker is still checked


def test_comparisons_and_hedges_of_diagnoses(ctx):
    facts, v = ctx
    assert facts.label == "amd"
    for text in ("Glaucoma is less likely than AMD.", "AMD is more likely than glaucoma.",
                 "Drusen are present; the picture is more consistent with AMD than with glaucoma.",
                 "Drusen are present, in keeping with AMD; glaucoma cannot be excluded."):
        res = v.verify(_row("diagnosis", text, facts), facts)
        assert res.passed, (text, res.reasons)
    for text in ("AMD is less likely than glaucoma.", "The findings point to glaucoma rather than AMD."):
        res = v.verify(_row("diagnosis", text, facts), facts)
        assert not res.passed and {"diagnosis_mismatch", "contradiction"} & _codes(res), (text, res.reasons)
