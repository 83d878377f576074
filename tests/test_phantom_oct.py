"""Invariants of the OCT phantom (grok.phantom.oct): geometry checks, determinism, layer order,
truth consistency, pathology by category, circle scans."""

from __future__ import annotations

import math

import numpy as np
import pytest

from grok.ids import BOUNDARIES, OCT_EXTRA_BIOMARKERS, OCT_GROK_BIOMARKERS, OCT_PERIPAPILLARY_BIOMARKERS
from grok.phantom.oct import OctGeometry, synth_circle_scan, synth_oct_volume

#: 3 mm x 2 mm cube with Spectralis pixel size: fast but anatomically complete around the fovea.
SMALL = OctGeometry(n_bscans=9, rows=496, cols=256, axial_um=3.87, lateral_um=11.7, bscan_spacing_um=240.0)


def _ph(category="normal", seed=0, **kw):
    return synth_oct_volume(category, kw.pop("laterality", "OD"), np.random.default_rng(seed), geometry=SMALL, **kw)


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"n_bscans": 0}, "n_bscans"),
        ({"rows": 10}, "rows"),
        ({"axial_um": -1.0}, "axial_um"),
        ({"lateral_um": float("nan")}, "lateral_um"),
        ({"rows": 100, "axial_um": 3.87}, "rows x axial_um"),
    ],
)
def test_geometry_validation_names_the_field(kw, field):
    with pytest.raises(ValueError, match=field.split()[0]):
        OctGeometry(**kw)


def test_bad_arguments_are_refused():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="category"):
        synth_oct_volume("flu", "OD", rng, geometry=SMALL)
    with pytest.raises(ValueError, match="laterality"):
        synth_oct_volume("normal", "left", rng, geometry=SMALL)
    with pytest.raises(ValueError, match="severity"):
        synth_oct_volume("amd", "OD", rng, severity=-1, geometry=SMALL)


def test_deterministic_given_seed():
    a, b, c = _ph("amd", 3), _ph("amd", 3), _ph("amd", 4)
    assert np.array_equal(a.volume, b.volume)
    assert np.array_equal(a.boundaries, b.boundaries)
    assert a.to_truth() == b.to_truth()
    assert not np.array_equal(a.volume, c.volume)


def test_shapes_dtypes_and_boundary_order():
    ph = _ph("diabetic_retinopathy", 1)
    n, rows, cols = SMALL.n_bscans, SMALL.rows, SMALL.cols
    assert ph.volume.shape == (n, rows, cols) and ph.volume.dtype == np.uint8
    assert ph.boundaries.shape == (n, len(BOUNDARIES), cols) and ph.boundaries.dtype == np.float32
    assert ph.choroid_sclera.shape == (n, cols)
    assert np.all(np.diff(ph.boundaries, axis=1) >= -1e-4), "boundaries must be ordered ILM..BM"
    assert np.all(ph.choroid_sclera > ph.boundaries[:, -1])
    assert 0 <= ph.boundaries.min() and ph.boundaries.max() < rows
    for m in ph.masks.values():
        assert m.shape == (n, rows, cols) and m.dtype == bool


def test_truth_biomarkers_complete_and_plausible():
    ph = _ph("normal", 2, severity=0.0)
    bio = ph.biomarkers
    assert set(bio) == set(OCT_GROK_BIOMARKERS) | set(OCT_EXTRA_BIOMARKERS)
    assert math.isnan(bio["disc_diameter_vertical_mm"])
    # the small cube does not cover the outer ETDRS ring; everything central must be there
    assert 220 < bio["macular_thickness_central_um"] < 320  # Spectralis CST 270 +- 24 um
    assert bio["foveal_pit_depth_um"] > 30
    for k in ("irf_volume_nl", "srf_volume_nl", "drusen_volume_3mm_mm3", "ped_max_height_um", "hrf_count"):
        assert bio[k] == 0.0, k
    truth = ph.to_truth()
    assert truth["biomarkers"]["disc_diameter_vertical_mm"] is None


def test_severity_zero_means_no_pathology_and_amd_has_drusen():
    clean = _ph("amd", 5, severity=0.0)
    assert not any(m.any() for m in clean.masks.values()) and clean.hrf == [] and clean.lesions == []
    sick = _ph("amd", 5, severity=1.5)
    assert sick.masks["drusen"].any() or sick.masks["ped"].any()
    assert sick.biomarkers["drusen_volume_5mm_mm3"] > 0 or sick.biomarkers["ped_max_height_um"] > 0
    kinds = {les["type"] for les in sick.lesions}
    assert kinds & {"drusen", "ped"}


def test_masks_sit_where_the_anatomy_says():
    ph = _ph("diabetic_retinopathy", 11, severity=2.0)
    assert ph.masks["irf"].any(), "severe DR should have intraretinal cysts"
    i, r, c = np.nonzero(ph.masks["irf"])
    b = ph.boundaries
    assert np.all(r >= b[i, 2, c]) and np.all(r < b[i, 5, c]), "IRF lies between IPL_INL and ELM"
    for les in ph.lesions:
        x1, y1, x2, y2 = les["box_xyxy_px"]
        assert 0 <= les["bscan"] < SMALL.n_bscans and x1 <= x2 and y1 <= y2


def test_glaucoma_thins_inner_retina():
    normal = _ph("normal", 7, severity=0.0)
    glau = _ph("glaucoma", 7, severity=1.5)
    # the small cube does not cover the 6 mm circle (those means are NaN): compare the maps directly
    def mean_gap(ph, up, lo):
        return float(np.mean(ph.boundaries[:, lo] - ph.boundaries[:, up])) * SMALL.axial_um

    assert math.isnan(glau.biomarkers["gcipl_thickness_um"])
    assert mean_gap(glau, 1, 2) < mean_gap(normal, 1, 2) - 5  # GC-IPL
    assert mean_gap(glau, 0, 1) < mean_gap(normal, 0, 1)  # RNFL


def test_circle_scan_tsnit_shape():
    c = synth_circle_scan("normal", "OD", np.random.default_rng(0), rows=256, cols=256)
    assert c.bscan.shape == (256, 256) and c.bscan.dtype == np.uint8
    assert c.boundaries.shape == (len(BOUNDARIES), 256)
    assert set(c.biomarkers) == set(OCT_PERIPAPILLARY_BIOMARKERS)
    b = c.biomarkers
    # the double hump: superior and inferior thicker than nasal and temporal
    assert min(b["rnfl_peripapillary_superior_um"], b["rnfl_peripapillary_inferior_um"]) > max(
        b["rnfl_peripapillary_nasal_um"], b["rnfl_peripapillary_temporal_um"])
    assert 70 < b["rnfl_peripapillary_mean_um"] < 130
    g = synth_circle_scan("glaucoma", "OD", np.random.default_rng(0), rows=256, cols=256, severity=1.5)
    assert g.biomarkers["rnfl_peripapillary_mean_um"] < b["rnfl_peripapillary_mean_um"] - 15


def test_device_appearance_same_anatomy_other_look_and_orders_kept():
    """appearance="device": the same anatomy and truth for the same seed, a different look per eye, and
    the reflectivity orders every device shows (EZ/RPE above the plexiform layers, ONL the darkest)."""
    from grok.phantom.oct import _BASE_REFL, _SEG_TISSUE, DeviceLook

    std, dev = _ph("amd", 5), _ph("amd", 5, appearance="device")
    assert np.array_equal(std.boundaries, dev.boundaries) and std.to_truth()["biomarkers"] == dev.to_truth()["biomarkers"]
    assert not np.array_equal(std.volume, dev.volume)
    assert dev.params["appearance"] == "device"
    with pytest.raises(ValueError, match="appearance"):
        _ph("normal", 0, appearance="vendorX")
    for seed in range(30):
        look = DeviceLook.draw(np.random.default_rng(seed))
        r = dict(zip(_SEG_TISSUE, np.asarray(_BASE_REFL) * look.factors))
        assert max(r["opl"], r["ipl"], r["elm"]) <= 0.4 * min(r["ez"], r["rpe"]) * (1 + 1e-6), seed
        assert r["onl"] <= 0.8 * min(r["inl"], r["gcl"], r["is"]) * (1 + 1e-6), seed
    looks = [DeviceLook.draw(np.random.default_rng(s)) for s in range(30)]
    assert any(lk.factors[_SEG_TISSUE.index("ez")] * _BASE_REFL[_SEG_TISSUE.index("ez")]
               > lk.factors[_SEG_TISSUE.index("rpe")] * _BASE_REFL[_SEG_TISSUE.index("rpe")] for lk in looks)


def test_circle_scan_device_appearance_keeps_truth():
    a = synth_circle_scan("glaucoma", "OS", np.random.default_rng(2), rows=256, cols=384)
    b = synth_circle_scan("glaucoma", "OS", np.random.default_rng(2), rows=256, cols=384, appearance="device")
    assert np.array_equal(a.boundaries, b.boundaries) and a.biomarkers == b.biomarkers
    assert not np.array_equal(a.bscan, b.bscan)
