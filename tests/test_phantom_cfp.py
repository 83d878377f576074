"""The CFP phantom: determinism, geometry conventions, truth consistency."""

from __future__ import annotations

import json

import numpy as np
import pytest

from grok.cfp.formulas import av_ratio_knudtson, knudtson_equivalent
from grok.ids import CATEGORIES, CFP_LESION_TYPES
from grok.phantom.cfp import draw_lesion, synth_fundus

SIZE = 320


@pytest.fixture(scope="module")
def dr_od():
    return synth_fundus("diabetic_retinopathy", "OD", np.random.default_rng(5), size=SIZE)


def test_shapes_types_and_json_truth(dr_od):
    ph = dr_od
    assert ph.image.shape == (SIZE, SIZE, 3) and ph.image.dtype == np.uint8
    for m in (ph.fov_mask, ph.vessel_mask, ph.artery_mask, ph.vein_mask, ph.disc_mask, ph.cup_mask):
        assert m.shape == (SIZE, SIZE) and m.dtype == bool
    json.dumps(ph.truth)  # JSON-able
    assert ph.vessel_mask.sum() == (ph.artery_mask | ph.vein_mask).sum()
    assert not (ph.vessel_mask & ~ph.fov_mask).any()
    assert (ph.cup_mask & ~ph.disc_mask).sum() == 0


def test_deterministic_given_rng():
    a = synth_fundus("amd", "OS", np.random.default_rng(11), size=256)
    b = synth_fundus("amd", "OS", np.random.default_rng(11), size=256)
    c = synth_fundus("amd", "OS", np.random.default_rng(12), size=256)
    assert np.array_equal(a.image, b.image) and a.truth == b.truth
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("lat", ["OD", "OS"])
def test_disc_nasal_convention(lat):
    """Right eye: disc on the viewer's right of the fovea; left eye: on the left."""
    ph = synth_fundus("normal", lat, np.random.default_rng(1), size=256)
    dx = ph.truth["disc_center_xy_px"][0] - ph.truth["fovea_center_xy_px"][0]
    assert (dx > 0) == (lat == "OD")
    dd = ph.truth["disc_diameter_px"]
    assert 2.2 < abs(dx) / dd < 2.8
    ys, xs = np.nonzero(ph.disc_mask)
    assert abs(xs.mean() - ph.truth["disc_center_xy_px"][0]) < 1.5
    assert abs((ys.max() - ys.min() + 1) - dd) < 2.5


def test_surround_dark_fundus_red(dr_od):
    ph = dr_od
    outside = ph.image[~ph.fov_mask].mean(axis=0)
    inside = ph.image[ph.fov_mask & ~ph.vessel_mask & ~ph.disc_mask].mean(axis=0)
    assert outside.max() < 15
    assert inside[0] > inside[1] > inside[2]  # orange-red fundus
    disc = ph.image[ph.disc_mask & ~ph.vessel_mask].mean(axis=0)
    assert disc.mean() > inside.mean() + 20  # bright disc
    veins = ph.image[ph.vein_mask].mean(axis=0)
    arts = ph.image[ph.artery_mask].mean(axis=0)
    assert veins[0] < arts[0]  # veins darker in red


def test_category_effects():
    rng = np.random.default_rng(3)
    g = synth_fundus("glaucoma", "OD", rng, size=256)
    n = synth_fundus("normal", "OD", rng, size=256)
    h = synth_fundus("hypertension", "OD", rng, size=256, severity=1.5)
    assert g.truth["cup_disc_ratio_vertical"] >= 0.6 and 0.25 <= n.truth["cup_disc_ratio_vertical"] <= 0.45
    assert h.truth["av_ratio"] < n.truth["av_ratio"]
    assert n.truth["lesions"] == [] and all(n.truth[f"{t}_count"] == 0 for t in CFP_LESION_TYPES)
    dr = synth_fundus("diabetic_retinopathy", "OS", rng, size=512, severity=1.5)
    types = {les["type"] for les in dr.truth["lesions"]}
    assert {"microaneurysm", "hemorrhage", "hard_exudate"} <= types
    amd = synth_fundus("amd", "OS", rng, size=256)
    assert {les["type"] for les in amd.truth["lesions"]} == {"drusen"}


def test_requested_av_ratio_is_drawn():
    ph = synth_fundus("normal", "OD", np.random.default_rng(9), size=384, av_ratio=0.6)
    assert abs(ph.truth["av_ratio"] - 0.6) < 0.02
    assert ph.truth["crae_px"] / ph.truth["crve_px"] == pytest.approx(ph.truth["av_ratio"])


def test_lesion_boxes_inside_image_and_fov(dr_od):
    for les in dr_od.truth["lesions"]:
        x1, y1, x2, y2 = les["box_xyxy_px"]
        assert les["type"] in CFP_LESION_TYPES
        assert 0 <= x1 < x2 <= SIZE and 0 <= y1 < y2 <= SIZE
        assert dr_od.fov_mask[(y1 + y2) // 2, (x1 + x2) // 2]


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match="category"):
        synth_fundus("flu", "OD", np.random.default_rng(0))
    with pytest.raises(ValueError, match="laterality"):
        synth_fundus("normal", "R", np.random.default_rng(0))
    with pytest.raises(ValueError, match="size"):
        synth_fundus("normal", "OD", np.random.default_rng(0), size=64)
    assert set(CATEGORIES) >= {"normal", "glaucoma"}


def test_knudtson_formula_by_hand():
    # three widths: pair 10 with 6 -> 0.88 * hypot(10, 6); carry 8; then pair the two
    w1 = 0.88 * np.hypot(10, 6)
    expect = 0.88 * np.hypot(w1, 8)
    assert knudtson_equivalent([10, 8, 6], 0.88) == pytest.approx(expect)
    assert np.isnan(av_ratio_knudtson([], [5.0]))


def test_draw_lesion_known_size_and_box():
    """A drawn lesion of given radius has a half-maximum box of about that size around its centre and
    darkens (blood) or brightens (exudate) the image there; an unknown kind names the valid ones."""
    img = np.full((200, 200, 3), (0.7, 0.25, 0.12), np.float32)
    rng = np.random.default_rng(0)
    mic = draw_lesion(img, "microaneurysm", (60.0, 60.0), rng, dd_px=130.0, radius_px=3.0, strength=0.9)
    x1, y1, x2, y2 = mic["box_xyxy_px"]
    assert mic["type"] == "microaneurysm" and abs((x2 - x1) - 6) <= 1 and abs((y2 - y1) - 6) <= 1
    assert x1 < 60 < x2 and y1 < 60 < y2
    assert img[60, 60, 1] < 0.25 * 0.5 and img[60, 60, 0] > img[60, 60, 1]  # blood: dark in green
    ex = draw_lesion(img, "hard_exudate", (140.0, 140.0), rng, dd_px=130.0, radius_px=4.0, strength=0.9)
    assert ex["type"] == "hard_exudate" and img[140, 140, 1] > 0.6  # bright yellow
    flame = draw_lesion(img, "flame_hemorrhage", (100.0, 40.0), rng, dd_px=130.0, disc_xy=(100.0, 180.0))
    assert flame["type"] == "hemorrhage"
    fx1, fy1, fx2, fy2 = flame["box_xyxy_px"]
    assert (fy2 - fy1) > 2 * (fx2 - fx1)  # elongated along the line to the disc (vertical here)
    with pytest.raises(ValueError, match="cotton_wool_spot"):
        draw_lesion(img, "blot", (50.0, 50.0), rng, dd_px=130.0)
