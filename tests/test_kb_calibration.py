"""The engine-scale vessel ranges (AV ratio, arteriolar / venular fractal dimension) and their calibration.

The knowledge base grades this engine's vessel measures against UK Biobank's published figures placed on
the engine's scale by a mean-matching calibration on the 15 healthy HRF photographs
(``benchmarks/cfp_calibration.py``). The last test measures those photographs again and fails when the
vessel code has moved the engine's healthy means away from the YAML (rerun the benchmark and update
``knowledge_base/normative_ranges.yaml``). HRF (Budai et al. 2013, CC BY 4.0) is read in place.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from grok.knowledge import load_knowledge_base, reason
from grok.knowledge.coverage import kb_coverage
from grok.knowledge.reasoner import _ordinal

KB = load_knowledge_base()
HRF = Path(__file__).resolve().parents[1].parent / "shared" / "real" / "cfp" / "hrf_av"
ENGINE_RANGES = {"av_ratio": "av_ratio_engine_ukb2024_hrf",
                 "arterial_fractal_dimension": "fd_arterial_engine_ukb2024_hrf",
                 "venular_fractal_dimension": "fd_venular_engine_ukb2024_hrf"}


def _record(engine_measured: bool, **bm) -> dict:
    return {"biomarkers": bm, "device": "spectralis", "sex": "F", "age_years": 67, "laterality": "OD",
            "engine_measured": engine_measured}


def test_engine_vessel_ranges_are_derived_sourced_and_engine_only():
    for biomarker, rid in ENGINE_RANGES.items():
        rng = KB.normative_ranges[rid]
        assert rng.biomarker == biomarker and rng.devices == ["generic"]
        assert rng.source == "ukb_vascular_atlas2024" and rng.derived_sources == ["budai2013"]
        assert "15 healthy HRF" in rng.derived and rng.engine_comparable
        assert KB.biomarkers[biomarker].no_normal_range_reason is None  # no stale "no range" text


def test_low_engine_values_are_graded_with_the_calibration_named():
    # 1.12: below the arteriolar range's 1st percentile (1.221 - 2.326 x 0.039 = 1.130 since the recalibration)
    r = reason(_record(True, av_ratio=0.48, arterial_fractal_dimension=1.12, venular_fractal_dimension=1.30), KB)
    found = {f.id: f for f in r.findings}
    avr = found["arteriolar_narrowing"]
    assert avr.grade == 1 and avr.normal_range.id == "av_ratio_engine_ukb2024_hrf"
    assert "a derived range" in avr.explanation and "152 / 233" in avr.explanation
    assert "fundus-photograph measure ('generic')" in avr.explanation and "ILM -> BM" not in avr.explanation
    assert sorted(avr.sources) == ["budai2013", "ukb_vascular_atlas2024", "wong2004"]
    fd = found["arterial_fractal_dimension_reduced"]
    assert fd.grade == 2 and "below the 1st percentile" in fd.explanation  # not "1th"
    assert "venular_fractal_dimension_reduced" in r.absent  # 1.30 lies above the venular mean
    normal = reason(_record(True, av_ratio=0.66, arterial_fractal_dimension=1.25, venular_fractal_dimension=1.24), KB)
    assert {"arteriolar_narrowing", "arterial_fractal_dimension_reduced",
            "venular_fractal_dimension_reduced"} <= set(normal.absent)


def test_another_tools_values_are_never_graded_against_the_engine_scale():
    """A plain record (values from the user's own vessel tool) gets no engine-calibrated range."""
    r = reason(_record(False, av_ratio=0.48, arterial_fractal_dimension=1.14), KB)
    ne = {n["finding"]: n["reason"] for n in r.not_evaluable}
    assert "arteriolar_narrowing" in ne and "av_ratio_engine_ukb2024_hrf (generic" in ne["arteriolar_narrowing"]
    assert "arterial_fractal_dimension_reduced" in ne


@pytest.mark.parametrize("device", ["spectralis", "cirrus", "topcon"])
def test_engine_measured_alzheimers_and_hypertension_coverage(device):
    for age in (40, 65, 90):
        cats = {c["category"]: c for c in kb_coverage(KB, device=device, age_years=age, sex="M", engine_measured=True)["categories"]}
        assert {"arterial_fractal_dimension_reduced", "venular_fractal_dimension_reduced"} <= set(cats["alzheimers"]["evaluable"])
        assert "arteriolar_narrowing" in cats["hypertension"]["evaluable"], (device, age)


def test_stale_no_range_reason_is_warned(tmp_path):
    (tmp_path / "vd.yaml").write_text(yaml.safe_dump({"normative_ranges": [{
        "id": "vd_local", "biomarker": "vessel_density", "devices": ["generic"], "mean": 0.1, "sd": 0.02,
        "derivation": "mean_sd_normal_approximation", "population": "local sample", "source": "budai2013"}]}))
    from grok.knowledge.loader import bundled_knowledge_base_dir

    kb = load_knowledge_base([bundled_knowledge_base_dir(), tmp_path])
    assert any(w.key.startswith("biomarkers[id=vessel_density]") and "stale" in w.message for w in kb.warnings)
    assert not any("stale" in w.message for w in KB.warnings)


def test_ordinal():
    assert [_ordinal(p) for p in (1, 2, 3, 5, 11, 13, 21, 95, 99, 2.5)] == [
        "1st", "2nd", "3rd", "5th", "11th", "13th", "21st", "95th", "99th", "2.5th"]


@pytest.mark.slow
@pytest.mark.skipif(not HRF.is_dir(), reason=f"HRF photographs not found at {HRF}")
def test_calibration_is_in_sync_with_the_vessel_code():
    """Measures the 15 healthy HRF photographs (about 45 CPU s): the YAML's engine-scale means must lie within
    two standard errors of what the vessel code measures now (python -m benchmarks.cfp_calibration)."""
    from benchmarks.cfp_calibration import calibration_report, measure_group_rows

    rep = calibration_report(measure_group_rows(HRF, {"h"}))
    for k, e in rep["measures"].items():
        assert e["healthy"]["n"] >= 14, (k, e["healthy"])
        assert e["in_sync"], (f"{k}: knowledge base {e.get('kb')} vs healthy HRF {e['healthy']}; rerun "
                              "python -m benchmarks.cfp_calibration and update knowledge_base/normative_ranges.yaml")
