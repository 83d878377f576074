"""Optic disc swelling from OCT: the peripapillary RNFL above the upper limit of its matched normative range.

Swelling of the disc thickens the peripapillary RNFL; Sibony 2021 (J Neuro-Ophthalmol, Table 1) reads
a mean RNFL above 95% of controls as thickening and warns that a normal one does not exclude mild
swelling. ``disc_swelling_present`` is a deviation finding on ``rnfl_peripapillary_mean_um`` (the range
lookup of the thinning findings, by device, sex and age), absent within or below the range with a text
that names its basis and limit, not evaluable without an RNFL value or a range.

Run as: .venv/bin/python -m pytest tests/test_kb_disc_swelling.py -q
"""

from __future__ import annotations

import pytest

from grok.knowledge import load_knowledge_base, reason
from grok.knowledge.coverage import EVALUABLE, kb_coverage
from grok.knowledge.reasoner import value_at_percentile

KB = load_knowledge_base()
SWELL = "disc_swelling_present"


def rec(rnfl, device="spectralis", age=60.0, **kw):
    bm = {} if rnfl is None else {"rnfl_peripapillary_mean_um": rnfl}
    out = {"device": device, "sex": "M", "age_years": age, "laterality": "OD", "biomarkers": bm}
    out.update(kw)
    return out


def limits(range_id):
    rng = KB.normative_ranges[range_id]
    return value_at_percentile(rng, 95)[0], value_at_percentile(rng, 99)[0]


def test_present_above_the_upper_limit_of_the_matched_range():
    p95, p99 = limits("rnfl_pp_mean_spectralis_alasil2013")
    just = reason(rec(p95 + 0.5)).finding(SWELL)
    assert just is not None and just.grade == 1 and just.normal_range.id == "rnfl_pp_mean_spectralis_alasil2013"
    assert "consistent with optic disc swelling" in just.term and "sibony2021" in just.sources
    assert reason(rec(p99 + 0.5)).finding(SWELL).grade == 2


@pytest.mark.parametrize("offset", [-0.5, -40.0])
def test_absent_within_or_below_with_its_basis_and_limit(offset):
    p95, _ = limits("rnfl_pp_mean_spectralis_alasil2013")
    r = reason(rec(p95 + offset))
    assert SWELL in r.absent and r.finding(SWELL) is None
    why = r.absent_reasons[SWELL]
    assert why.startswith("no peripapillary RNFL thickening on OCT") and "mild swelling can be missed" in why
    assert f"{p95:.1f}" in why and "rnfl_pp_mean_spectralis_alasil2013" in why


def test_the_device_decides_the_range():
    """108 um: above the Cirrus-scale upper limit (the Alasil range moved by Leite's offset), within
    Spectralis's; an engine-measured value on a Topcon study falls back to the engine's range and says so."""
    assert reason(rec(108.0, device="Carl Zeiss Meditec Cirrus HD-OCT 5000")).finding(SWELL).normal_range.id == \
        "rnfl_pp_mean_cirrus_alasil2013_leite2011"
    assert SWELL in reason(rec(108.0)).absent
    topcon = reason(rec(100.0, device="topcon", engine_measured=True))
    assert SWELL in topcon.absent and "('generic') was used" in topcon.absent_reasons[SWELL]


def test_not_evaluable_without_an_rnfl_value_or_a_range():
    none = {n["finding"]: n["reason"] for n in reason(rec(None)).not_evaluable}
    assert none[SWELL] == "rnfl_peripapillary_mean_um missing"
    old = {n["finding"]: n["reason"] for n in reason(rec(100.0, age=88.0)).not_evaluable}  # Alasil: 9-86 y
    assert "no normative range of rnfl_peripapillary_mean_um" in old[SWELL] and "Fix:" in old[SWELL]
    topcon = {n["finding"]: n["reason"] for n in reason(rec(100.0, device="topcon", age=70.0)).not_evaluable}
    assert SWELL in topcon  # a Topcon export from 54 y: no range (an export never borrows the engine's)


def test_malignant_hypertensive_stage_needs_the_swelling():
    p95, _ = limits("rnfl_pp_mean_spectralis_alasil2013")
    signs = {"hemorrhage_count": 3, "cotton_wool_spot_count": 1}
    swollen = reason({**rec(p95 + 5), "biomarkers": {"rnfl_peripapillary_mean_um": p95 + 5, **signs}})
    flat = reason({**rec(p95 - 5), "biomarkers": {"rnfl_peripapillary_mean_um": p95 - 5, **signs}})
    stage = lambda r: next(d for d in r.differential if d.id == "hypertension").staging[0]  # noqa: E731
    assert stage(swollen).stage == "malignant"
    assert stage(flat).stage == "moderate" and "malignant" not in stage(flat).not_assessable_above


def test_coverage_lists_it_evaluable_where_a_range_matches():
    for device, age, evaluable in (("spectralis", 67, True), ("cirrus", 80, True), ("topcon", 70, False)):
        cats = {c["category"]: c for c in kb_coverage(KB, device=device, age_years=age, sex="F")["categories"]}
        row = next(f for f in cats["hypertension"]["findings"] if f["finding"] == SWELL)
        assert (row["status"] == EVALUABLE) is evaluable, (device, age, row)
        assert SWELL in cats["hypertension"]["key_findings"]
