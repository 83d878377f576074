"""Reasoner: worked cases and hypothesis properties (monotone grades, OD/OS symmetry, no finding from
missing inputs).

Run as: .venv/bin/python -m pytest tests/test_reasoner.py -q
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from grok.knowledge import load_knowledge_base, reason
from grok.knowledge.models import DeviationFinding, ThresholdFinding
from grok.knowledge.reasoner import value_at_percentile

KB = load_knowledge_base()
SCALAR_IDS = sorted(b.id for b in KB.biomarkers.values() if b.value_kind != "position")


def rec(biomarkers, **kw):
    base = {"device": "generic", "sex": "F", "age_years": 60.0, "laterality": "OD"}
    base.update(kw)
    base["biomarkers"] = biomarkers
    return base


def status(r, disease):
    return r.status(disease)


# ------------------------------------------------------------------------------------------------
# worked cases
# ------------------------------------------------------------------------------------------------


def test_cst_thickening_graded_against_the_sex_specific_range():
    r = reason(rec({"macular_thickness_central_um": 338.0}, sex="F"))
    f = r.finding("central_subfield_thickening")
    assert f.grade == 2 and f.term == "markedly thickened"
    assert f.normal_range.id == "cst_spectralis_chalam2012_f"
    assert f.deviation["z"] == pytest.approx((338 - 262) / 22)
    assert "chalam2012" in f.sources
    assert r.finding("cst_dme_threshold").term.startswith("central subfield thickening")


def test_dme_threshold_is_sex_specific_and_needs_sex():
    assert reason(rec({"macular_thickness_central_um": 310.0}, sex="F")).finding("cst_dme_threshold")
    assert reason(rec({"macular_thickness_central_um": 310.0}, sex="M")).finding("cst_dme_threshold") is None
    assert reason(rec({"macular_thickness_central_um": 320.0}, sex="M")).finding("cst_dme_threshold")
    r = reason(rec({"macular_thickness_central_um": 400.0}, sex=None))
    assert r.finding("cst_dme_threshold") is None
    why = {n["finding"]: n["reason"] for n in r.not_evaluable}["cst_dme_threshold"]
    assert "sex unknown" in why


def test_range_choice_prefers_the_age_band_and_reports_no_match():
    old = reason(rec({"macular_thickness_central_um": 270.0}, sex="F", age_years=75))
    assert old.measurements[0].normal_range.id == "cst_spectralis_etheridge2021_f69"
    # an age outside every Cirrus RNFL band (16-20 y sample, 20-87 y derived fallback): not evaluable
    r = reason(rec({"rnfl_peripapillary_mean_um": 70.0}, device="cirrus", age_years=90))
    why = {n["finding"]: n["reason"] for n in r.not_evaluable}["rnfl_peripapillary_thinning"]
    assert "16-20 y" in why and "20-87 y" in why and r.finding("rnfl_peripapillary_thinning") is None
    assert "normative_ranges.yaml" in why and "Fix:" in why
    young = reason(
        rec({"rnfl_peripapillary_mean_um": 70.0}, device="Carl Zeiss Cirrus HD-OCT 5000", age_years=18)
    )
    assert young.device == "cirrus" and young.finding("rnfl_peripapillary_thinning").grade == 2


def test_known_device_never_borrows_another_devices_range():
    # Stratus (time domain) reads ~70 µm thinner than Spectralis: it has no bundled CST range
    r = reason(rec({"macular_thickness_central_um": 400.0}, device="Carl Zeiss Meditec Stratus OCT"))
    assert r.device == "stratus" and r.finding("central_subfield_thickening") is None
    assert any(n["finding"] == "central_subfield_thickening" for n in r.not_evaluable)



def test_unknown_device_is_flagged_never_a_silent_generic_range():
    unknown = reason(rec({"macular_thickness_central_um": 400.0, "subfoveal_choroidal_thickness_um": 520.0},
                         device="Acme OCT 9"))
    assert unknown.device == "unrecognised" and any("not in the knowledge base" in n for n in unknown.notes)
    assert unknown.finding("central_subfield_thickening") is None
    why = {n["finding"]: n["reason"] for n in unknown.not_evaluable}["central_subfield_thickening"]
    assert "'Acme OCT 9'" in why and "kb.yaml" in why and "aliases" in why
    # device-independent ranges still apply; a missing device is generic (this engine's convention)
    assert unknown.finding("choroid_thickened").normal_range.id == "sfct_kong2018"
    missing = reason(rec({"macular_thickness_central_um": 400.0}, device=None))
    assert missing.device == "generic" and missing.finding("central_subfield_thickening") is not None


@pytest.mark.parametrize(
    "text, device",
    [
        ("Heidelberg Engineering Spectralis", "spectralis"),
        ("HEIDELBERG ENGINEERING  spectralis", "spectralis"),
        ("Carl Zeiss Meditec Cirrus HD-OCT 5000", "cirrus"),
        ("Carl Zeiss Meditec Stratus OCT", "stratus"),  # the longest alias wins: not read as Cirrus
        ("Topcon 3D OCT-1000 Mark II", "topcon"),
        ("TOPCON Maestro2", "topcon"),
        ("Optovue RTVue XR Avanti", "optovue"),
        ("GROK Phantom Optics Spectral OCT 2", "generic"),
    ],
)
def test_manufacturer_and_model_resolve_to_a_device(text, device):
    assert KB.resolve_device(text)[0] == device


def test_device_specific_ranges_by_age_band():
    topcon = reason(rec({"macular_thickness_central_um": 200.0}, device="topcon", age_years=55))
    f = topcon.finding("central_subfield_thinning")
    assert f.normal_range.id == "cst_topcon_patel2016" and f.normal_range.source == "patel2016" and f.grade == 2
    assert reason(rec({"macular_thickness_central_um": 200.0}, device="topcon", age_years=75)).finding(
        "central_subfield_thinning") is None  # outside the UK Biobank ages: not evaluable, not borrowed
    old = reason(rec({"gcipl_thickness_um": 68.0}, device="cirrus", age_years=80))
    assert old.finding("gcipl_thinning").normal_range.id == "gcipl_cirrus_yoo2020_75"
    mid = reason(rec({"gcipl_thickness_um": 68.0}, device="cirrus", age_years=60))
    assert mid.finding("gcipl_thinning").normal_range.id == "gcipl_cirrus_xu2021"


def test_oct_lesion_boxes_are_known_lesion_types():
    from grok.oct.lesions import LESION_TYPES

    lesions = [{"type": t, "diameter_um": 80.0} for t in LESION_TYPES]
    r = reason(rec({"irf_volume_nl": 12.0}, lesions=lesions))
    assert not [n for n in r.notes if "no known 'type'" in n]
    assert set(LESION_TYPES) <= set(KB.lesion_types)


def test_device_independent_range_applies_to_every_device():
    for dev in ("spectralis", "cirrus", "topcon", "generic"):
        r = reason(rec({"subfoveal_choroidal_thickness_um": 520.0}, device=dev))
        assert r.finding("choroid_thickened").normal_range.id == "sfct_kong2018"


def test_normal_approximation_percentiles():
    rng = KB.normative_ranges["cst_spectralis_chalam2012_any"]
    v5, how = value_at_percentile(rng, 5)
    assert how == "normal_approximation" and v5 == pytest.approx(270 - 1.6449 * 24, abs=0.01)


def test_diabetic_eye_case_differential_and_stages():
    r = reason(
        rec(
            {
                "macular_thickness_central_um": 338.0,
                "irf_volume_nl": 12.5,
                "srf_volume_nl": 0.0,
                "microaneurysm_count": 6,
                "hemorrhage_count": 2,
                "hard_exudate_count": 4,
                "cotton_wool_spot_count": 0,
                "drusen_count": 0,
                "drusen_volume_5mm_mm3": 0.0,
                "ez_disruption_fraction": 0.0,
            }
        )
    )
    assert status(r, "diabetic_retinopathy") == "supported"
    assert status(r, "dme") == "supported"
    assert status(r, "normal") == "ruled_out"
    assert status(r, "csc") == "ruled_out"
    assert status(r, "amd") == "ruled_out"
    assert status(r, "rvo") == "indeterminate"  # microaneurysms and exudates oppose it
    assert status(r, "alzheimers") == "indeterminate"
    dr = next(d for d in r.differential if d.id == "diabetic_retinopathy")
    assert dr.staging[0].stage == "moderate_npdr_or_worse"
    assert dr.staging[0].not_assessable_above == ["proliferative", "severe_npdr_signs"]


def test_beckman_stages_from_drusen_sizes():
    base = {"drusen_count": 3, "drusen_volume_5mm_mm3": 0.01}
    small = reason(rec(base, lesions=[{"type": "drusen", "diameter_um": d} for d in (40, 50, 60)]))
    amd = lambda r: next(d for d in r.differential if d.id == "amd")
    assert amd(small).staging[0].stage == "normal_ageing"
    large = reason(rec(base, lesions=[{"type": "drusen", "diameter_um": d} for d in (40, 90, 160)]))
    assert amd(large).staging[0].stage == "intermediate" and status(large, "amd") == "supported"
    unsized = reason(rec(base, lesions=[{"type": "drusen"}]))
    assert unsized.finding("drusen_large") is None
    assert any(
        n["finding"] == "drusen_large" and "without diameter_um" in n["reason"] for n in unsized.not_evaluable
    )


def test_glaucoma_cupping_grades_and_staging():
    r = reason(rec({"cup_disc_ratio_vertical": 0.8}))
    f = r.finding("disc_cupping")
    assert f.grade == 2
    g = next(d for d in r.differential if d.id == "glaucoma")
    assert g.status == "supported" and g.staging[0].stage == "category_2_structural"
    normal_disc = reason(rec({"cup_disc_ratio_vertical": 0.3}))
    assert status(normal_disc, "glaucoma") == "indeterminate"  # RNFL not evaluated: not ruled out


def test_normal_supported_only_when_everything_evaluated_is_normal():
    r = reason(
        rec(
            {
                "macular_thickness_central_um": 265.0,
                "microaneurysm_count": 0,
                "hemorrhage_count": 0,
                "hard_exudate_count": 0,
                "cotton_wool_spot_count": 0,
                "drusen_count": 0,
                "cup_disc_ratio_vertical": 0.35,
            }
        )
    )
    assert not [f for f in r.findings if f.abnormal]
    assert status(r, "normal") == "supported"
    empty = reason(rec({}))
    assert empty.findings == [] and status(empty, "normal") == "indeterminate"


def test_bad_values_are_reported_and_treated_as_missing():
    r = reason(
        rec({"hrf_count": -2, "irf_volume_nl": "lots", "not_a_biomarker_um": 3, "disc_center_xy_px": [1]})
    )
    assert r.findings == []
    assert {"hrf_count", "irf_volume_nl"} <= set(r.missing)
    assert len(r.notes) == 4


def test_reasoning_is_json_ready():
    r = reason(rec({"macular_thickness_central_um": 338.0, "disc_center_xy_px": [10, 20]}))
    text = json.dumps(r.to_dict())
    assert r.kb_snapshot_id in text


def test_cli_reason(tmp_path):
    from grok.cli import app

    p = tmp_path / "rec.json"
    p.write_text(
        json.dumps([rec({"cup_disc_ratio_vertical": 0.8}), rec({}, laterality="OS")]), encoding="utf-8"
    )
    res = CliRunner().invoke(app, ["reason", str(p), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert len(out) == 2 and out[0]["findings"][0]["id"] == "disc_cupping"
    bad = tmp_path / "bad.json"
    bad.write_text("{nope", encoding="utf-8")
    assert CliRunner().invoke(app, ["reason", str(bad)]).exit_code == 3


# ------------------------------------------------------------------------------------------------
# properties
# ------------------------------------------------------------------------------------------------


def _context_for(f):
    """A (device, sex, age) under which finding ``f`` can be evaluated, or None."""
    if isinstance(f, DeviationFinding):
        for r in KB.ranges_for(f.biomarker):
            dev = "generic" if r.devices[0] == "any" else r.devices[0]
            sex = "F" if r.sex == "any" else r.sex
            age = 50.0 if r.age_band is None else (r.age_band.min_years + r.age_band.max_years) / 2
            return dev, sex, age
        return None
    ts = f.thresholds[0]
    return (
        ("generic" if ts.devices[0] == "any" else ts.devices[0]),
        ("F" if ts.sex == "any" else ts.sex),
        60.0,
    )


GRADED = [
    f
    for f in sorted(KB.findings.values(), key=lambda f: f.id)
    if isinstance(f, (DeviationFinding, ThresholdFinding)) and _context_for(f) is not None
]


def _grade(f, value, ctx):
    dev, sex, age = ctx
    r = reason({"biomarkers": {f.biomarker: value}, "device": dev, "sex": sex, "age_years": age}, KB)
    hit = r.finding(f.id)
    assert hit is not None or f.id in r.absent
    return hit.grade if hit else 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(idx=st.integers(0, len(GRADED) - 1), a=st.floats(0, 1), b=st.floats(0, 1))
def test_a_value_further_from_normal_never_gets_a_milder_grade(idx, a, b):
    f = GRADED[idx]
    ctx = _context_for(f)
    kind = KB.biomarkers[f.biomarker].value_kind
    # span the finding's cut-offs generously: 0 .. 3x the largest cut (or the range's 99.9th pct)
    if isinstance(f, DeviationFinding):
        rng = next(r for r in KB.ranges_for(f.biomarker))
        hi = value_at_percentile(rng, 99.9)[0] * 1.5
    else:
        hi = max(g.cut for ts in f.thresholds for g in ts.grades) * 3 + 1
    v1, v2 = sorted((a * hi, b * hi))
    if kind == "count":
        v1, v2 = math.floor(v1), math.ceil(v2)
    near, far = (v1, v2) if f.direction == "high" else (v2, v1)
    assert _grade(f, far, ctx) >= _grade(f, near, ctx)


_values = st.one_of(st.none(), st.just(float("nan")), st.floats(0, 600, allow_nan=False), st.integers(0, 40))
_records = st.fixed_dictionaries(
    {},
    optional={bid: _values for bid in SCALAR_IDS},
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bms=_records,
    sex=st.sampled_from(["F", "M", None]),
    age=st.one_of(st.none(), st.floats(16, 95)),
    device=st.sampled_from(["generic", "spectralis", "cirrus", "topcon", None]),
)
def test_od_and_os_get_identical_reasoning(bms, sex, age, device):
    left = reason(
        {"biomarkers": bms, "sex": sex, "age_years": age, "device": device, "laterality": "OS"}, KB
    ).to_dict()
    right = reason(
        {"biomarkers": bms, "sex": sex, "age_years": age, "device": device, "laterality": "OD"}, KB
    ).to_dict()
    assert left.pop("laterality") == "OS" and right.pop("laterality") == "OD"
    assert left == right


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bms=_records, sex=st.sampled_from(["F", "M", None]), device=st.sampled_from(["generic", "cirrus"]))
def test_missing_inputs_never_produce_a_finding(bms, sex, device):
    r = reason({"biomarkers": bms, "sex": sex, "age_years": 60.0, "device": device}, KB)
    given_ids = {k for k, v in bms.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}
    for f in r.findings:
        assert f.biomarker in given_ids, f"{f.id} came from missing {f.biomarker}"
    # the same record with the missing keys spelled out as None / NaN gives the same findings
    spelled = dict(bms)
    for bid in SCALAR_IDS:
        spelled.setdefault(bid, None)
    r2 = reason({"biomarkers": spelled, "sex": sex, "age_years": 60.0, "device": device}, KB)
    assert [f.id for f in r2.findings] == [f.id for f in r.findings]
    # and every biomarker a rule needed but did not get is listed as missing
    needed = {f.biomarker for f in KB.findings.values() if not hasattr(f, "lesion_type")}
    assert needed - given_ids <= set(r.missing)


def test_engine_measured_values_fall_back_to_the_engine_convention_and_say_so():
    # a 74-year-old on a Topcon: outside the UK Biobank ages of the only Topcon CST range
    scanner = reason(rec({"macular_thickness_central_um": 380.0}, device="topcon", age_years=74))
    assert scanner.finding("central_subfield_thickening") is None  # scanner-exported value: no borrowing
    engine = reason(rec({"macular_thickness_central_um": 380.0}, device="topcon", age_years=74,
                        engine_measured=True))
    f = engine.finding("central_subfield_thickening")
    assert f.normal_range.device_matched == "generic" and "engine" in f.explanation and "topcon" in f.explanation
    dme = engine.finding("cst_dme_threshold")
    assert dme is not None and "engine" in dme.explanation
    # the scanner's own range still wins where it covers the record
    own = reason(rec({"macular_thickness_central_um": 380.0}, device="topcon", age_years=60, engine_measured=True))
    assert own.finding("central_subfield_thickening").normal_range.id == "cst_topcon_patel2016"
    assert "engine" not in own.finding("central_subfield_thickening").explanation
    # an unknown device is flagged even for engine-measured values
    odd = reason(rec({"macular_thickness_central_um": 380.0}, device="Acme OCT 9", engine_measured=True))
    assert odd.finding("central_subfield_thickening") is None


def test_spectralis_example_from_issue_20():
    """A 67-year-old woman on a Spectralis, peripapillary RNFL 70 µm and GC-IPL 60 µm."""
    r = reason({"biomarkers": {"rnfl_peripapillary_mean_um": 70.0, "gcipl_thickness_um": 60.0},
                "device": "Heidelberg Engineering Spectralis", "sex": "F", "age_years": 67, "laterality": "OD"}, KB)
    rnfl = r.finding("rnfl_peripapillary_thinning")
    assert r.device == "spectralis" and rnfl.grade == 2
    assert rnfl.normal_range.id == "rnfl_pp_mean_spectralis_alasil2013" and rnfl.normal_range.source == "alasil2013"
    assert "alasil2013" in rnfl.sources
    # no verified Spectralis GC-IPL range is bundled: not evaluable, with the reason and the fix
    why = {n["finding"]: n["reason"] for n in r.not_evaluable}["gcipl_thinning"]
    assert "device spectralis" in why and "Fix:" in why and "gcipl_engine_xu2018" in why
    # read as this engine's 6 mm-circle GC-IPL, 60 µm is graded against Xu 2018 (derived): it lies above
    # the conservative range's 5th percentile, so it is not called thin (and the record says so)
    e = reason({"biomarkers": {"rnfl_peripapillary_mean_um": 70.0, "gcipl_thickness_um": 60.0},
                "device": "spectralis", "sex": "F", "age_years": 67, "laterality": "OD",
                "engine_measured": True}, KB)
    m = next(x for x in e.measurements if x.biomarker == "gcipl_thickness_um")
    assert m.normal_range.id == "gcipl_engine_xu2018" and m.normal_range.device_matched == "generic"
    assert m.normal_range.p5 < 60.0 and "gcipl_thinning" in e.absent
    assert e.finding("rnfl_peripapillary_thinning").grade == 2


def test_derived_range_says_so_in_the_finding():
    """Cirrus adults: Alasil 2013 moved to the Cirrus scale by Leite 2011's same-eye offset; the finding
    names the derivation and both sources; the young-adult Cirrus sample keeps its own figures."""
    r = reason(rec({"rnfl_peripapillary_mean_um": 62.0}, device="Carl Zeiss Meditec Cirrus HD-OCT 5000",
                   age_years=61))
    f = r.finding("rnfl_peripapillary_thinning")
    assert f.normal_range.id == "rnfl_pp_mean_cirrus_alasil2013_leite2011" and f.grade == 2
    assert "derived range" in f.explanation and "Leite 2011" in f.explanation
    assert {"alasil2013", "leite2011"} <= set(f.sources)
    d = f.normal_range.to_dict()
    assert d["mean"] == pytest.approx(97.3 - (106.6 - 98.7)) and "7.9" in d["derived"]
    young = reason(rec({"rnfl_peripapillary_mean_um": 68.0}, device="cirrus", age_years=18))
    yf = young.finding("rnfl_peripapillary_thinning")
    assert yf.normal_range.id == "rnfl_pp_mean_cirrus_tariq2012" and "derived" not in yf.normal_range.to_dict()
    assert "derived" not in yf.explanation
    # quadrants have no Cirrus adult range (the offset is for the mean only)
    q = reason(rec({"rnfl_peripapillary_superior_um": 60.0}, device="cirrus", age_years=61))
    assert "rnfl_peripapillary_superior_thinning" in {n["finding"] for n in q.not_evaluable}


# Xu 2018 (BMC Ophthalmol 18:169), Table 6, mean ± SD (µm): fovea, pericentral S/N/I/T, peripheral S/N/I/T
XU2018_T6 = {
    "RNFL": [(10.78, 2.24), (23.44, 3.68), (20.11, 2.32), (24.50, 3.10), (16.82, 1.33),
             (37.52, 5.14), (46.12, 6.85), (38.93, 5.70), (19.21, 8.37)],
    "GCL": [(12.31, 3.20), (52.03, 5.76), (50.12, 6.04), (51.33, 5.33), (46.66, 5.51),
            (36.58, 3.88), (40.48, 4.26), (34.03, 3.69), (36.92, 4.74)],
    "IPL": [(18.28, 2.85), (41.18, 3.82), (42.34, 3.84), (40.90, 3.67), (41.01, 3.64),
            (29.67, 2.96), (31.20, 3.19), (27.81, 3.06), (32.61, 3.00)],
}


def _etdrs6(layer, k):
    """Area-weighted over the 6 mm circle: fovea r 0.5 mm, rings to 1.5 and 3 mm, four sectors each."""
    w = [0.5 ** 2] + [(1.5 ** 2 - 0.5 ** 2) / 4] * 4 + [(3 ** 2 - 1.5 ** 2) / 4] * 4
    return sum(wi * row[k] for wi, row in zip(w, XU2018_T6[layer])) / 3 ** 2


def test_engine_gcipl_and_macular_rnfl_from_xu2018_sectors():
    """The engine's 6 mm-circle GC-IPL and macular RNFL: Xu 2018's sector table area-weighted (mean exact,
    SD the weighted sum of sector SDs, an upper bound); engine-measured values on any device use it and
    the finding says it is derived; a scanner's export does not."""
    vals = {"gcipl_thickness_um": 52.0, "rnfl_thickness_um": 20.0}
    r = reason(rec(vals, device="cirrus", age_years=88, engine_measured=True))
    g, n = r.finding("gcipl_thinning"), r.finding("macular_rnfl_thinning")
    assert g.normal_range.id == "gcipl_engine_xu2018" and n.normal_range.id == "macular_rnfl_engine_xu2018"
    assert g.normal_range.mean == pytest.approx(_etdrs6("GCL", 0) + _etdrs6("IPL", 0), abs=0.01)
    assert g.normal_range.sd == pytest.approx(_etdrs6("GCL", 1) + _etdrs6("IPL", 1), abs=0.01)
    assert n.normal_range.mean == pytest.approx(_etdrs6("RNFL", 0), abs=0.01)
    assert n.normal_range.sd == pytest.approx(_etdrs6("RNFL", 1), abs=0.01)
    for f in (g, n):
        assert f.grade >= 1 and "derived range" in f.explanation and "engine" in f.explanation
        assert "xu2018" in f.sources
    # the Cirrus annulus ranges are another convention: never used for the engine's circle mean
    assert g.normal_range.device_matched == "generic"
    scanner = reason(rec(vals, device="spectralis", age_years=60))
    assert {"gcipl_thinning", "macular_rnfl_thinning"} <= {x["finding"] for x in scanner.not_evaluable}
    # within the range: absent, not flagged
    ok = reason(rec({"gcipl_thickness_um": 72.0, "rnfl_thickness_um": 32.0}, engine_measured=True))
    assert {"gcipl_thinning", "macular_rnfl_thinning"} <= set(ok.absent)


def test_topcon_peripapillary_rnfl_18_to_53_with_the_temporal_quadrant():
    """Topcon Maestro exports (Daromosu 2022, 18-53 y): mean and quadrants, temporal included; older
    Topcon records stay not evaluable rather than borrow another device's range."""
    bms = {"rnfl_peripapillary_mean_um": 85.0, "rnfl_peripapillary_temporal_um": 45.0}
    r = reason(rec(bms, device="Topcon 3D OCT-1 Maestro", age_years=45))
    t = r.finding("rnfl_peripapillary_temporal_thinning")
    assert r.device == "topcon" and t.normal_range.id == "rnfl_pp_temporal_topcon_daromosu2022" and t.grade == 2
    assert r.finding("rnfl_peripapillary_thinning").normal_range.source == "daromosu2022"
    old = reason(rec(bms, device="topcon", age_years=60))
    why = {x["finding"]: x["reason"] for x in old.not_evaluable}
    assert "18-54 y" in why["rnfl_peripapillary_temporal_thinning"] and old.finding("rnfl_peripapillary_thinning") is None
    # engine-measured circle scans keep the Spectralis-convention range, not Topcon's disc-cube scale
    eng = reason(rec(bms, device="topcon", age_years=45, engine_measured=True))
    used = {m.biomarker: m.normal_range for m in eng.measurements}
    assert used["rnfl_peripapillary_mean_um"].id == "rnfl_pp_mean_spectralis_alasil2013"
    assert used["rnfl_peripapillary_temporal_um"].id == "rnfl_pp_temporal_spectralis_mendezgomez2017_sung2009"


def test_overall_thickness_and_volume_from_ring_means_for_older_women():
    women = reason(rec({"macular_thickness_overall_um": 250.0, "macular_volume_mm3": 7.0},
                       device="spectralis", sex="F", age_years=75))
    thin, vol = women.finding("macular_thinning_overall"), women.finding("macular_volume_reduced")
    assert thin.normal_range.id == "overall_spectralis_etheridge2021_f69" and "derived range" in thin.explanation
    assert vol.normal_range.id == "volume_spectralis_etheridge2021_f69" and vol.grade == 2
    # the area weighting of the reported ring means (1 : 8 : 27 of the 6 mm circle)
    mean = (277 * 1 + 326 * 8 + 282 * 27) / 36
    assert thin.normal_range.mean == pytest.approx(mean, abs=0.05)
    assert vol.normal_range.mean == pytest.approx(mean * math.pi * 9 / 1000, abs=0.005)
    # everyone else: the unbanded Thai Spectralis sample (a band beats an unbanded range for women 69+)
    men = reason(rec({"macular_thickness_overall_um": 250.0, "macular_volume_mm3": 8.4},
                     device="spectralis", sex="M", age_years=75))
    mthin = men.finding("macular_thinning_overall")
    assert mthin.normal_range.id == "overall_spectralis_thai_pmid23053633" and "28.27" in mthin.explanation
    assert mthin.normal_range.mean == pytest.approx(8.59 / (math.pi * 9) * 1000, abs=0.05)
    assert "macular_volume_reduced" in men.absent  # 8.4 mm³ lies within 8.59 ± 0.37


def test_engine_measured_circle_scan_rnfl_uses_the_engine_convention_on_other_devices():
    bms = {"rnfl_peripapillary_mean_um": 70.0, "rnfl_peripapillary_inferior_um": 90.0}
    scanner = reason(rec(bms, device="topcon", age_years=66))
    assert scanner.finding("rnfl_peripapillary_thinning") is None  # a Topcon export never borrows
    engine = reason(rec(bms, device="topcon", age_years=66, engine_measured=True))
    f = engine.finding("rnfl_peripapillary_thinning")
    assert f.normal_range.id == "rnfl_pp_mean_spectralis_alasil2013" and f.normal_range.device_matched == "generic"
    assert "engine" in f.explanation and "topcon" in f.explanation
    assert engine.finding("rnfl_peripapillary_inferior_thinning").grade >= 1


def test_engine_measured_values_never_meet_a_range_of_another_convention():
    """The Cirrus cube volume (6 x 6 mm), GC-IPL annulus and ILM -> RPE CST are not what this engine
    measures (6 mm circle, ILM -> BM): an engine-measured value on a Cirrus record is not graded against
    them (it falls back to the engine's own convention where one exists); an exported Cirrus value is."""
    bms = {"macular_volume_mm3": 8.5, "gcipl_thickness_um": 68.0, "macular_thickness_central_um": 330.0}
    exported = reason(rec(bms, device="cirrus", sex="M", age_years=65))
    assert exported.finding("macular_volume_reduced").normal_range.id == "volume_cirrus_hu2010"
    assert exported.finding("gcipl_thinning").normal_range.id == "gcipl_cirrus_xu2021"
    engine = reason(rec(bms, device="cirrus", sex="M", age_years=65, engine_measured=True))
    why = {n["finding"]: n["reason"] for n in engine.not_evaluable}
    # the engine's 6 mm-circle volume falls back to its own convention (the Spectralis ILM -> BM sample)
    vol = next(m for m in engine.measurements if m.biomarker == "macular_volume_mm3")
    assert vol.normal_range.id == "volume_spectralis_thai_pmid23053633" and vol.normal_range.device_matched == "generic"
    assert "macular_volume_reduced" in engine.absent
    assert "gcipl_thinning" not in why  # graded, but against the engine's own 6 mm-circle convention
    gcipl = next(m for m in engine.measurements if m.biomarker == "gcipl_thickness_um")
    assert gcipl.normal_range.id == "gcipl_engine_xu2018" and gcipl.normal_range.device_matched == "generic"
    assert "gcipl_thinning" in engine.absent  # 68 µm: within the circle-mean range, "thin" on the annulus one
    cst = engine.finding("central_subfield_thickening")
    assert cst.normal_range.id == "cst_spectralis_chalam2012_m" and cst.normal_range.device_matched == "generic"
    assert "this engine's convention" in cst.explanation


def test_av_nicking_is_present_from_a_box_and_never_absent_from_a_zero_count():
    """av_nicking_count is measured, but a zero from an extractor of unproven sensitivity is no evidence of
    absence: only a nick boxed in the lesion list makes the finding (present); otherwise not evaluable."""
    boxed = reason(rec({"av_nicking_count": 1.0}, lesions=[{"type": "av_nicking", "modality": "cfp"}]))
    assert boxed.finding("av_nicking_present") is not None
    zero = reason(rec({"av_nicking_count": 0.0}))
    assert zero.finding("av_nicking_present") is None and "av_nicking_present" not in zero.absent
    assert "av_nicking_present" in {n["finding"] for n in zero.not_evaluable}
