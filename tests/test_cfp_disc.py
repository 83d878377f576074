"""Optic disc rim and cup cues on drawn discs: the margin (not the cup's edge), vessel bends, cup from bends."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.morphology import disk

from grok.cfp.disc import disc_vessel_mask, disk_closing, find_disc, vessel_bends

S = 400
FUNDUS = np.array([0.80, 0.30, 0.15], np.float32)
RIM = np.array([0.95, 0.60, 0.38], np.float32)
CUP = np.array([1.00, 0.90, 0.72], np.float32)


def _polyline_dist(xx, yy, pts):
    d = np.full(xx.shape, np.inf, np.float32)
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
        vx, vy = x1 - x0, y1 - y0
        t = np.clip(((xx - x0) * vx + (yy - y0) * vy) / (vx * vx + vy * vy), 0, 1)
        d = np.minimum(d, np.hypot(xx - x0 - t * vx, yy - y0 - t * vy))
    return d


def _draw(disc_r=(60.0, 66.0), cup_r=None, vessels=(), vessel_w=4.0, center=(200.0, 200.0)):
    """A fundus patch with an elliptical disc (semi-axes x, y px), an optional pale cup (same shape,
    ``cup_r`` x the disc) and dark vessels (polylines), soft edges."""
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    cx, cy = center
    er = np.hypot((xx - cx) / disc_r[0], (yy - cy) / disc_r[1])
    img = np.broadcast_to(FUNDUS, (S, S, 3)).copy()
    a_disc = np.clip((1 - er) / 0.06 + 0.5, 0, 1)[..., None]
    img = img * (1 - a_disc) + RIM * a_disc
    if cup_r is not None:
        a_cup = np.clip((cup_r - er) / 0.06 + 0.5, 0, 1)[..., None]
        img = img * (1 - a_cup) + CUP * a_cup
    for pts in vessels:
        d = _polyline_dist(xx, yy, pts)
        a = np.clip(vessel_w / 2 - d + 0.5, 0, 1)[..., None]
        img = img * (1 - 0.55 * a)
    rng = np.random.default_rng(0)
    img = np.clip(img + rng.normal(0, 0.004, img.shape).astype(np.float32), 0, 1)
    return img, er


def _find(img):
    fov = np.ones((S, S), bool)
    none = np.zeros((S, S), bool)
    # a 45-degree field 7.2 DD across: the expected disc (130 px) needs a FOV radius of ~470 px
    return find_disc(img, fov, (S / 2, S / 2), 470.0, none)


@pytest.mark.parametrize("cup", [None, 0.45, 0.8])
def test_rim_follows_the_disc_margin_not_the_cup_edge(cup):
    img, _ = _draw(cup_r=cup)
    d = _find(img)
    assert d.center_xy is not None, d.reasons
    assert math.dist(d.center_xy, (200, 200)) < 3
    assert abs(d.diameter_vertical_px - 132) < 0.05 * 132, d.diameter_vertical_px
    assert abs(d.diameter_horizontal_px - 120) < 0.05 * 120, d.diameter_horizontal_px
    assert not any("half-maximum" in r for r in d.reasons), d.reasons  # the rim was fitted, not the fallback
    if cup is not None:
        assert abs(d.cdr_vertical - cup) < 0.06, (d.cdr_vertical, d.cdr_cues)


def _kinked(center, ang_out_deg, r_kink, turn_deg, r_end=150.0):
    """A vessel running radially out from ``r_kink``, and inside it turned by ``turn_deg``."""
    a = math.radians(ang_out_deg)
    p_k = (center[0] + r_kink * math.cos(a), center[1] + r_kink * math.sin(a))
    p_out = (center[0] + r_end * math.cos(a), center[1] + r_end * math.sin(a))
    b = a + math.radians(turn_deg)
    p_in = (p_k[0] - r_kink * math.cos(b), p_k[1] - r_kink * math.sin(b))
    return [p_in, p_k, p_out], p_k


def test_vessel_bends_found_at_the_kinks_and_not_on_straight_or_smooth_vessels():
    c = (200.0, 200.0)
    v1, k1 = _kinked(c, -60, 40.0, 35)
    v2, k2 = _kinked(c, 120, 40.0, -35)
    straight = [(200.0, 200.0), (200.0 + 150 * math.cos(0.3), 200.0 + 150 * math.sin(0.3))]
    # a smooth arc (radius 45 px = 0.34 DD, 70 degrees), about as curved as an arcade leaving the disc
    arc_ang = np.radians(np.linspace(200, 270, 40))
    arc = [(190 + 45 * math.cos(aa), 200 + 45 * math.sin(aa)) for aa in arc_ang]
    img, er = _draw(cup_r=None, vessels=[v1, v2, straight, arc])
    dvm = disc_vessel_mask(img[..., 1], er**2, 132.0, 1.0)
    bends = vessel_bends(dvm, er**2, 132.0)
    found = [(x, y) for x, y, _ in bends]
    for k in (k1, k2):
        assert any(math.dist(f, k) < 6 for f in found), (k, bends)
    assert len(bends) == 2, bends
    assert all(25 <= t <= 50 for *_, t in bends), bends


def test_cup_from_vessel_bending_when_the_disc_has_no_pallor():
    c = (200.0, 200.0)
    vessels = [_kinked(c, a, 0.5 * 66, s * 35)[0] for a, s in ((-70, 1), (-110, -1), (70, -1), (110, 1), (0, 1))]
    img, _ = _draw(cup_r=None, vessels=vessels)
    d = _find(img)
    assert d.center_xy is not None, d.reasons
    assert d.cdr_cues["n_vessel_bends"] >= 3, d.cdr_cues
    assert np.isnan(d.cdr_cues["pallor"])
    assert abs(d.cdr_vertical - 0.5) < 0.08, d.cdr_cues
    assert any("vessel bending only" in r for r in d.reasons), d.reasons
    assert d.cup_mask is not None and d.cup_mask.any()


@pytest.mark.parametrize("rad", [1, 2, 3, 5, 7, 10, 13])
def test_disk_closing_equals_the_footprint_closing(rad):
    """The disc's vessel top-hat closes by a disk row by row of the disk: the same values as scipy's 2-D
    footprint filter, borders (reflected) and images thinner than the disk included."""
    rng = np.random.default_rng(rad)
    for shape in ((41, 57), (120, 90), (4, 33)):
        a = rng.random(shape).astype(np.float32)
        a[shape[0] // 2, :] = 0.0  # a dark line (a vessel) that the closing fills
        assert np.array_equal(disk_closing(a, rad), ndi.grey_closing(a, footprint=disk(rad)))
