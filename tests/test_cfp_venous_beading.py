"""Venous beading (grok.cfp.vessel_signs.find_venous_beading): drawn beaded and smooth veins, the same at two
resolutions, the phantom's beaded veins (and the phantom unchanged without them), not assessable inputs
give None with a reason."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from grok.cfp import measure_fundus
from grok.cfp.measure import BEADING_OFF
from grok.cfp.vessel_signs import VenousBeadingConfig, find_venous_beading, um_per_px
from grok.cfp.vessels import profile_widths, skeleton_segments
from grok.knowledge import load_knowledge_base, reason
from grok.phantom.cfp import synth_fundus

VEIN_W = 8.0  # px at scale 1
UM_PX = 13.0  # µm per px at scale 1: a 104 µm vein


def _veins(beaded: tuple[bool, ...], scale: float = 1.0, widen: float = 0.5, beads: int = 3):
    """Darkness, mask and vein-typed segments of horizontal veins (one per entry of ``beaded``, 60 px apart
    at scale 1); a beaded one widens by ``widen`` (raised cosine) ``beads`` times, 2.5 calibres apart,
    in its middle."""
    n_x, gap = int(300 * scale), 60 * scale
    yy, xx = np.mgrid[0: int(gap * (len(beaded) + 1)), 0:n_x].astype(float)
    dark = np.zeros(yy.shape)
    w0 = VEIN_W * scale
    period = 2.5 * w0
    for k, b in enumerate(beaded):
        w = np.full(n_x, w0)
        if b:
            s = np.arange(n_x) - (n_x / 2 - beads * period / 2)
            inside = (s >= 0) & (s < beads * period)
            w[inside] *= 1 + widen * 0.5 * (1 - np.cos(2 * np.pi * s[inside] / period))
        yc = gap * (k + 1)
        dark = np.maximum(dark, 0.3 * np.clip(0.5 + (w[None, :] / 2 - np.abs(yy - yc)), 0, 1))
    dark = dark.astype(np.float32)
    mask = dark > 0.1
    segs, _, _ = skeleton_segments(mask)
    for sg in segs:
        sg.kind, sg.av_score = "vein", 1.0
        sg.width_px = float(np.nanmedian(profile_widths(dark, sg.xy, 2 * w0, vessel_mask=mask)))
    return dark, mask, segs


def _find(beaded, scale=1.0, **kw):
    dark, mask, segs = _veins(beaded, scale, **kw)
    return find_venous_beading(segs, dark, mask, None, float("nan"), UM_PX / scale)


def test_beaded_vein_is_found_and_smooth_veins_are_not():
    res = _find((True, False))
    assert res.count == 1, res
    (beaded,) = [s for s in res.segments if s["beaded"]]
    x1, y1, x2, y2 = beaded["box_xyxy"]
    assert 60 - 10 < (y1 + y2) / 2 < 60 + 10 and x1 > 100 and x2 < 200  # on the first vein's beads
    assert beaded["beads"] >= 2 and beaded["peak_ratio"] > VenousBeadingConfig().min_widening
    smooth = _find((False, False))
    assert smooth.count == 0 and len(smooth.segments) == 2


def test_one_widening_or_a_faint_ripple_is_not_beading():
    assert _find((True, False), beads=1).count == 0  # one dilatation, no repeat
    assert _find((True, False), widen=0.08).count == 0  # within the calibre's noise


@pytest.mark.parametrize("scale", [0.75, 2.0])
def test_same_veins_at_another_resolution_give_the_same_verdicts(scale):
    ref = _find((True, False))
    res = _find((True, False), scale=scale)
    assert res.count == ref.count == 1
    assert [s["beaded"] for s in res.segments] == [s["beaded"] for s in ref.segments]


def test_untyped_veins_too_few_segments_or_no_scale_give_none_with_a_reason():
    dark, mask, segs = _veins((True, False))
    for sg in segs:
        sg.kind, sg.av_score = "", float("nan")
    res = find_venous_beading(segs, dark, mask, None, float("nan"), UM_PX)
    assert res.count is None and "typed vein" in res.reason
    dark, mask, segs = _veins((True,))
    res = find_venous_beading(segs, dark, mask, None, float("nan"), UM_PX)
    assert res.count is None and "too few vein segments" in res.reason
    dark, mask, segs = _veins((True, False))
    res = find_venous_beading(segs, dark, mask, None, float("nan"), UM_PX * 0.4)  # veins of 42 µm: too thin
    assert res.count is None and res.skipped.get("vein too thin") == 2
    assert find_venous_beading(segs, dark, mask, None, float("nan"), float("nan")).count is None
    assert np.isnan(um_per_px(float("nan"), float("nan"))) and um_per_px(120.0, 480.0) == pytest.approx(15.0)


def test_config_is_checked():
    with pytest.raises(ValueError, match="min_widening"):
        VenousBeadingConfig(min_widening=0.9)
    with pytest.raises(ValueError, match="spacing_widths"):
        VenousBeadingConfig(spacing_widths=(4.0, 2.0))
    with pytest.raises(ValueError, match="min_beads"):
        VenousBeadingConfig(min_beads=1)


# ------------------------------------------------------------------------------------------------ phantom
SEED = 111  # a development seed (benchmarks/cfp_venous_beading.py reports held-out seeds 2000-2015)


def _overlap(a, b) -> bool:
    return not (a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1])


def _beaded_boxes(m) -> list[list[float]]:
    return [b["box_xyxy_px"] for b in m.extras["venous_beading"]["assessed"] if b["beaded"]]


@pytest.fixture(scope="module")
def beaded_phantom():
    return synth_fundus("diabetic_retinopathy", "OD", np.random.default_rng(SEED), venous_beading=3)


def test_phantom_beading_found_where_drawn(beaded_phantom):
    ph = beaded_phantom
    drawn = [t["box_xyxy_px"] for t in ph.truth["venous_beading"]]
    assert ph.truth["venous_beading_count"] == len(drawn) >= 1
    m = measure_fundus(ph.image, venous_beading=True)
    boxes = _beaded_boxes(m)
    assert m.biomarkers["venous_beading_count"] == len(boxes) >= 1
    assert any(_overlap(b, d) for b in boxes for d in drawn)
    assert not any(les["type"] == "venous_beading" for les in m.lesions)  # not read as lesions (not specific)
    # the same photograph at three quarters of the size: the same stretches found (scale from the disc)
    small = np.asarray(Image.fromarray(ph.image).resize((768, 768), Image.BICUBIC))
    ms = measure_fundus(small, venous_beading=True)
    boxes_s = [[v / 0.75 for v in b] for b in _beaded_boxes(ms)]
    assert any(_overlap(b, d) for b in boxes_s for d in drawn)


@pytest.fixture(scope="module")
def normal_phantom():
    return synth_fundus("normal", "OD", np.random.default_rng(SEED))


def test_normal_phantom_has_no_beading(normal_phantom):
    ph = normal_phantom
    m = measure_fundus(ph.image, venous_beading=True)
    assert m.biomarkers["venous_beading_count"] == 0
    assert m.extras["venous_beading"]["assessed"], "nothing assessed: the test would not show a false positive"
    assert ph.truth["venous_beading_count"] == 0 and ph.truth["venous_beading"] == []


def test_photo_without_usable_vein_colour_gives_none_with_a_reason(normal_phantom):
    """Darkened to 15 grey levels of green: veins cannot be told from arteries (the A/V-dependent measures'
    rule), so the count is None and the reason says why."""
    m = measure_fundus((normal_phantom.image * 0.3).astype(np.uint8), venous_beading=True)
    assert m.quality["grade"] != "reject"
    assert m.biomarkers["venous_beading_count"] is None
    assert any("artery/vein colour not usable" in r for r in m.extras["reasons"]["venous_beading"])


def test_phantom_without_beading_is_unchanged(beaded_phantom):
    """Beading draws from its own generator (seeded by the rng's state, not advancing it): the rng ends in
    the same state, and the photograph differs from the one without beading only around the drawn
    stretches (blur and JPEG blocks reach a few px)."""
    rng_a, rng_b = np.random.default_rng(SEED), np.random.default_rng(SEED)
    plain = synth_fundus("diabetic_retinopathy", "OD", rng_a)
    again = synth_fundus("diabetic_retinopathy", "OD", rng_b, venous_beading=3)
    assert rng_a.bit_generator.state == rng_b.bit_generator.state
    assert np.array_equal(plain.image, synth_fundus("diabetic_retinopathy", "OD", np.random.default_rng(SEED),
                                                    venous_beading=0).image)
    assert np.array_equal(again.image, beaded_phantom.image)
    near = np.zeros(plain.image.shape[:2], bool)
    for t in again.truth["venous_beading"]:
        x1, y1, x2, y2 = (int(v) for v in t["box_xyxy_px"])
        near[max(y1 - 16, 0): y2 + 16, max(x1 - 16, 0): x2 + 16] = True
    diff = (plain.image != again.image).any(axis=-1)
    assert diff.any() and not (diff & ~near).any()
    assert plain.truth["lesions"] == again.truth["lesions"]


def test_phantom_beading_request_is_checked():
    with pytest.raises(ValueError, match="venous_beading"):
        synth_fundus("normal", "OD", np.random.default_rng(0), size=128, venous_beading=-1)
    with pytest.raises(ValueError, match="venous_beading"):
        synth_fundus("normal", "OD", np.random.default_rng(0), size=128, venous_beading=True)


# ------------------------------------------------------------------------------------------ knowledge base
def _record(count: float, lesions: list | None = None) -> dict:
    return {"device": "generic", "sex": "F", "age_years": 60.0, "laterality": "OD",
            "biomarkers": {"venous_beading_count": count}, "lesions": lesions or []}


def test_venous_beading_count_is_measured_but_never_reads_as_absent():
    """venous_beading_count is not the venous_beading lesion type's count_biomarker: it failed its ship rule
    (beaded segments in 15 of the 32 assessable healthy real eyes, docs/cfp.md), so a zero from it is no evidence of absence
    and a count is no evidence of presence; the finding stays not evaluable (fails with the count wired)."""
    kb = load_knowledge_base()
    assert "venous_beading_count" in kb.biomarkers
    assert kb.lesion_types["venous_beading"].count_biomarker is None
    for count in (0.0, 3.0):
        r = reason(_record(count), kb)
        assert r.finding("venous_beading_present") is None and "venous_beading_present" not in r.absent
        assert "venous_beading_present" in {n["finding"] for n in r.not_evaluable}
    boxed = reason(_record(1.0, [{"type": "venous_beading", "modality": "cfp"}]), kb)  # a grader's box still counts
    assert boxed.finding("venous_beading_present") is not None


def test_beading_is_not_measured_unless_asked(normal_phantom):
    """Not validated on real photographs, so a build's records get no count: None with the reason."""
    m = measure_fundus(normal_phantom.image)
    assert m.biomarkers["venous_beading_count"] is None
    assert m.extras["reasons"]["venous_beading"] == [BEADING_OFF]
    assert m.extras["venous_beading"]["assessed"] == []
