"""Property-based checks of the verifier and template mode (hypothesis)."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from grok.instruct.families import FAMILIES, Skip
from grok.instruct.generate import TemplateGenerator
from grok.instruct.records import build_facts
from grok.instruct.samples import sample_record
from grok.instruct.templating import TemplateLibrary
from grok.knowledge import load_knowledge_base
from grok.knowledge.lexicon import build_lexicon
from grok.verify.verifier import Verifier

KB = load_knowledge_base()
LEX = build_lexicon(KB)
GEN = TemplateGenerator(TemplateLibrary(), LEX, Verifier(LEX))
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

records = st.builds(
    lambda label, i, cst, drusen, srf, irf, cdr, ma, eye_odd: _record(label, i, cst, drusen, srf, irf, cdr, ma, eye_odd),
    st.sampled_from(["normal", "amd", "glaucoma", "diabetic_retinopathy", "dme", "hypertension", "diabetes"]),
    st.integers(0, 10_000), st.floats(150, 520), st.sampled_from([0.0, 0.004, 0.02, 0.05, 0.2]),
    st.sampled_from([0.0, 3.5, 40.0]), st.sampled_from([0.0, 12.0]), st.floats(0.2, 0.92),
    st.integers(0, 6), st.booleans())


def _record(label, i, cst, drusen, srf, irf, cdr, ma, eye_odd):
    rec = sample_record(i * 2 + int(eye_odd), label, seed=1, kb=KB, with_reasoning=False)
    bm = rec["biomarkers"]
    bm.update({"macular_thickness_central_um": round(cst, 1), "drusen_volume_3mm_mm3": drusen,
               "drusen_volume_5mm_mm3": round(drusen * 1.5, 3), "srf_volume_nl": srf, "irf_volume_nl": irf,
               "cup_disc_ratio_vertical": round(cdr, 2), "microaneurysm_count": ma})
    return rec


@SETTINGS
@given(records, st.integers(0, 3))
def test_template_rows_always_verify(rec, seed):
    facts = build_facts(rec, KB, LEX)
    for fam in FAMILIES.values():
        try:
            row = GEN.verify(GEN.render(facts, fam, seed, "h"), facts)
        except Skip:
            continue
        assert row["verifier_passed"], (fam.id, row["verifier_reasons"], row["messages"][-1]["content"])
        assert 0.0 <= row["verifier_score"] <= 1.0


@SETTINGS
@given(records, st.one_of(st.floats(1.15, 3.0), st.floats(0.2, 0.85)))
def test_a_perturbed_measurement_is_caught(rec, factor):
    facts = build_facts(rec, KB, LEX)
    try:
        row = GEN.render(facts, FAMILIES["cot"], 0, "h")
    except Skip:
        assume(False)
    cst = facts.biomarkers["macular_thickness_central_um"]
    text = row["messages"][-1]["content"]
    step1 = text.split("\n", 1)[0]
    assert cst.text in step1
    wrong = f"{cst.value * factor:.1f} µm"
    row["messages"][-1]["content"] = text.replace(step1, step1.replace(cst.text, wrong), 1)
    res = GEN.verifier.verify(row, facts)
    assert not res.passed
    assert any(r.startswith("wrong_number") for r in res.reasons)


@SETTINGS
@given(records, st.floats(1.0, 5000.0))
def test_a_number_with_no_source_is_flagged(rec, value):
    facts = build_facts(rec, KB, LEX)
    # lesion diameters measured in the record are valid sources of a length too (verifier rule)
    candidates = [b.value for b in facts.biomarkers.values() if b.unit in ("um", "mm")] + \
                 [r for b in facts.biomarkers.values() if b.unit in ("um", "mm") for r in b.references] + \
                 list(facts.lesion_lengths_um)
    assume(all(abs(value - c * (1000 if u == "mm" else 1)) > 0.2 * max(abs(c), 1) for c, u in
               [(b.value, b.unit) for b in facts.biomarkers.values() if b.unit in ("um", "mm")]))
    assume(all(abs(value - c) > 0.2 * max(abs(c), 1) and abs(value - 1000 * c) > 0.2 * max(abs(1000 * c), 1)
               for c in candidates))
    eye = facts.eye_words
    row = {"task": "biomarker_qa", "eye": facts.eye, "images": [], "image_roles": [],
           "messages": [{"role": "user", "content": f"What do you see in the {eye}?"},
                        {"role": "assistant", "content": f"A lesion of {value:.1f} µm is visible in the {eye}."}]}
    res = GEN.verifier.verify(row, facts)
    assert any(r.startswith("hallucinated_number") for r in res.reasons), res.reasons


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=400))
def test_verifier_never_crashes_on_arbitrary_text(text):
    facts = _FACTS
    row = {"task": "report", "eye": facts.eye, "images": [], "image_roles": [],
           "messages": [{"role": "user", "content": "Describe."}, {"role": "assistant", "content": text}]}
    res = GEN.verifier.verify(row, facts)
    assert 0.0 <= res.score <= 1.0
    assert res.passed == (not res.hard_reasons)


_FACTS = build_facts(sample_record(3, "glaucoma", seed=2, kb=KB), KB, LEX)


@pytest.mark.parametrize("number", ["12.5", "0.3", "250"])
def test_numbers_inside_boxes_and_region_names_are_not_measurements(number):
    facts = _FACTS
    box = f"<|box_start|>({number.split('.')[0]},10),(300,400)<|box_end|>"
    text = f"In the central 3 mm, at the 5th percentile, the optic disc is at {box}."
    row = {"task": "biomarker_qa", "eye": facts.eye, "images": [], "image_roles": [],
           "messages": [{"role": "user", "content": "Where?"}, {"role": "assistant", "content": text}]}
    res = GEN.verifier.verify(row, facts)
    assert not any(re.match(r"(wrong|hallucinated)_number", r) for r in res.reasons), res.reasons
