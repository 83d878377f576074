"""Synthetic colour fundus photographs with known ground truth.

Run as: python -m grok.phantom.cfp --category diabetic_retinopathy --laterality OD --out fundus.png

``synth_fundus`` draws a 45-degree, macula-centred colour fundus photograph: a circular field of view on a
dark surround with vignetting and uneven illumination, an orange-red fundus with choroidal texture and
pigmentation, an optic disc with a cup, an artery/vein tree growing from the disc, a darker macula and
fovea, the normal look-alikes of lesions (nerve-fibre-layer sheen and vessel-wall reflexes along the
arcades, small bright flecks beside vessels, the foveal light reflex, occasional pigment clumps; none of
them is a lesion), and lesions by disease category. Everything drawn is also returned as masks and a
JSON-able ``truth`` dictionary, so measurement code can be scored against it. ``draw_lesion`` draws one
lesion of a given (or random) size and strength into any image, a real photograph included.

Orientation convention (documented in docs/cfp.md): images are shown as the examiner sees the fundus,
not mirrored, with the patient's superior retina at the top. The optic disc lies nasal to the fovea, and
the nasal side of the RIGHT eye (OD) is the patient's left, which faces the viewer's RIGHT. So in a
right-eye photograph the disc is on the viewer's right and the fovea to its left; in a left-eye (OS)
photograph the disc is on the viewer's left (as in ``skimage.data.retina()``, a left eye).

Geometry (typical adult values): the field of view spans about 7.2 disc diameters (DD); the fovea lies
2.5 DD temporal to the disc centre and about 0.3 DD below it; the disc is slightly taller than wide.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from grok.cfp.formulas import (
    av_ratio_knudtson,
    box_counting_dimension,
    knudtson_equivalent,
    resample_polyline,
    tortuosity_per_dd,
)
from grok.ids import CATEGORIES, CFP_LESION_TYPES, LATERALITIES

__all__ = ["TRUTH_MIN_WIDTH_DD", "ZONE_B_MID_DD", "CfpPhantom", "draw_lesion", "render_vessels", "synth_fundus"]

#: Zone B runs from 0.5 to 1.0 DD beyond the disc margin, i.e. 1.0 to 1.5 DD from the disc centre;
#: the phantom reads its drawn calibres on the middle circle.
ZONE_B_MID_DD = 1.25
#: Vessels narrower than this (in DD) are left out of the tortuosity truth (they are barely visible).
TRUTH_MIN_WIDTH_DD = 0.025
#: Nominal disc diameter (mm) used only to state an assumed pixel spacing in ``truth``.
NOMINAL_DISC_DIAMETER_MM = 1.8


@dataclass
class CfpPhantom:
    """A synthetic fundus photograph and its ground truth.

    image : (H, W, 3) uint8 RGB.
    fov_mask, vessel_mask, artery_mask, vein_mask, disc_mask, cup_mask : (H, W) bool.
    laterality : "OD" or "OS".
    truth : JSON-able dict (see ``synth_fundus``).
    """

    image: np.ndarray
    fov_mask: np.ndarray
    vessel_mask: np.ndarray
    artery_mask: np.ndarray
    vein_mask: np.ndarray
    disc_mask: np.ndarray
    cup_mask: np.ndarray
    laterality: str
    truth: dict[str, Any] = field(default_factory=dict)

    def masks(self) -> dict[str, np.ndarray]:
        """The masks by the names ``grok cfp measure --masks`` writes (fov, vessels, arteries, veins, disc, cup)."""
        return {
            "fov": self.fov_mask,
            "vessels": self.vessel_mask,
            "arteries": self.artery_mask,
            "veins": self.vein_mask,
            "disc": self.disc_mask,
            "cup": self.cup_mask,
        }


# --------------------------------------------------------------------------------------------- vessels
@dataclass
class _Vessel:
    pts: np.ndarray  # (N, 2) x, y px
    radius: np.ndarray  # (N,) px
    kind: str  # "artery" | "vein"
    root: bool  # leaves the disc


@numba.njit(cache=True)
def _raster_segments(pts, rad, seg_ok, sd, rel, h, w):  # pragma: no cover - compiled
    """For each pixel keep the smallest signed distance (d - r) to any segment, and d / r there."""
    n = pts.shape[0]
    for i in range(n - 1):
        if not seg_ok[i]:
            continue
        x0 = pts[i, 0]
        y0 = pts[i, 1]
        x1 = pts[i + 1, 0]
        y1 = pts[i + 1, 1]
        r0 = rad[i]
        r1 = rad[i + 1]
        rm = max(r0, r1) + 2.0
        xa = int(max(0.0, math.floor(min(x0, x1) - rm)))
        xb = int(min(w - 1.0, math.ceil(max(x0, x1) + rm)))
        ya = int(max(0.0, math.floor(min(y0, y1) - rm)))
        yb = int(min(h - 1.0, math.ceil(max(y0, y1) + rm)))
        dx = x1 - x0
        dy = y1 - y0
        L2 = dx * dx + dy * dy
        for y in range(ya, yb + 1):
            for x in range(xa, xb + 1):
                if L2 > 0:
                    t = ((x - x0) * dx + (y - y0) * dy) / L2
                    if t < 0.0:
                        t = 0.0
                    elif t > 1.0:
                        t = 1.0
                else:
                    t = 0.0
                px = x0 + t * dx - x
                py = y0 + t * dy - y
                d = math.sqrt(px * px + py * py)
                r = r0 + t * (r1 - r0)
                s = d - r
                if s < sd[y, x]:
                    sd[y, x] = s
                    rel[y, x] = d / r if r > 0 else 10.0


def render_vessels(vessels: list[tuple[np.ndarray, np.ndarray]], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise tubes of varying radius.

    vessels : list of (pts (N, 2) x/y px, radius (N,) px) polylines.
    shape : (H, W).
    Returns (signed_distance_px, relative_distance): (H, W) float32 arrays; ``signed_distance <= 0`` is
    inside a vessel, and ``relative_distance`` is distance from the nearest centreline over its radius.
    """
    h, w = shape
    sd = np.full((h, w), 1e6, dtype=np.float64)
    rel = np.full((h, w), 10.0, dtype=np.float64)
    for pts, rad in vessels:
        if len(pts) < 2:
            continue
        p = np.ascontiguousarray(pts, dtype=np.float64)
        r = np.ascontiguousarray(rad, dtype=np.float64)
        ok = np.ones(len(p) - 1, dtype=np.bool_)
        _raster_segments(p, r, ok, sd, rel, h, w)
    return sd.astype(np.float32), rel.astype(np.float32)


def _smooth_noise_1d(n: int, rng: np.random.Generator, wavelengths: np.ndarray) -> np.ndarray:
    """Sum of sinusoids with random phases and amplitudes (unit RMS-ish), sampled at n points 1 px apart."""
    s = np.arange(n, dtype=float)
    out = np.zeros(n)
    for lam in wavelengths:
        out += rng.uniform(0.5, 1.0) * np.sin(2 * np.pi * s / lam + rng.uniform(0, 2 * np.pi))
    return out / max(len(wavelengths), 1) ** 0.5


def _add_wiggle(pts: np.ndarray, amp_px: float, rng: np.random.Generator, dd: float, ramp_px: float) -> np.ndarray:
    """Offset a 1-px-spaced polyline along its normal by smooth noise (tortuosity)."""
    if len(pts) < 5 or amp_px <= 0:
        return pts
    d = np.gradient(pts, axis=0)
    nrm = np.column_stack([-d[:, 1], d[:, 0]])
    nrm /= np.maximum(np.hypot(nrm[:, 0], nrm[:, 1]), 1e-9)[:, None]
    lams = rng.uniform(0.35, 0.9, size=3) * dd
    off = amp_px * _smooth_noise_1d(len(pts), rng, lams)
    ramp = np.clip(np.arange(len(pts)) / max(ramp_px, 1.0), 0, 1)
    return pts + nrm * (off * ramp)[:, None]


class _TreeBuilder:
    """Grows an artery/vein tree from the disc. All lengths are in px; ``dd`` is the disc diameter."""

    def __init__(self, rng, disc_xy, fovea_xy, dd, fov_c, fov_r, tortuosity):
        self.rng = rng
        self.disc = np.asarray(disc_xy, float)
        self.fovea = np.asarray(fovea_xy, float)
        self.dd = dd
        self.c = np.asarray(fov_c, float)
        self.R = fov_r
        self.tort = tortuosity
        self.vessels: list[_Vessel] = []
        self.min_r = max(0.4, 0.006 * dd)

    def inside(self, p) -> bool:
        return float(np.hypot(*(p - self.c))) < self.R * 0.985

    def arcade(self, kind: str, superior: bool, radius: float, rise_dd: float, bend_dd: float) -> None:
        """A temporal arcade: leaves the disc steeply, arches above/below the macula, then runs temporally.

        In a frame with u pointing from the disc towards the fovea and v away from the horizontal raphe,
        v(u) = rise * (1 - exp(-u / bend)) + 0.12 u (all in DD), so the arcade starts at about 65 degrees
        from horizontal and passes about 2 DD above (or below) the fovea.
        """
        dd = self.dd
        fd = self.fovea - self.disc
        ut = fd / max(float(np.hypot(*fd)), 1e-9)
        vt = np.array([ut[1], -ut[0]])  # perpendicular; make it point up (or down)
        if (vt[1] < 0) != superior:
            vt = -vt
        u = np.linspace(0, 7.5, 4000)
        v = rise_dd * (1 - np.exp(-u / bend_dd)) + 0.12 * u
        pts = self.disc + dd * (u[:, None] * ut + v[:, None] * vt)

        pts = resample_polyline(pts, 1.0)
        pts = _add_wiggle(pts, self.tort * 0.022 * dd, self.rng, dd, ramp_px=0.8 * dd)
        self._finish(pts, radius, kind, root=True, taper=0.35, depth=0)

    def straight(self, kind: str, start, heading: float, radius: float, length: float, curv: float,
                 root: bool, depth: int) -> None:
        """A vessel grown by a heading with constant drift curvature (rad/px) plus wiggle."""
        n = max(int(length), 3)
        hd = heading + curv * np.arange(n)
        steps = np.column_stack([np.cos(hd), np.sin(hd)])
        pts = np.asarray(start, float) + np.vstack([[0, 0], np.cumsum(steps, axis=0)[:-1]])
        pts = _add_wiggle(pts, self.tort * 0.018 * self.dd * min(1.0, radius / (0.03 * self.dd)) ** 0.3,
                          self.rng, self.dd, ramp_px=0.3 * self.dd)
        self._finish(pts, radius, kind, root=root, taper=0.3, depth=depth)

    def _finish(self, pts: np.ndarray, radius: float, kind: str, root: bool, taper: float, depth: int) -> None:
        """Clip to the FOV / avascular zone, assign radii with Murray branching, spawn children."""
        dd = self.dd
        dfov = np.hypot(pts[:, 0] - self.c[0], pts[:, 1] - self.c[1])
        dfov_ = np.hypot(pts[:, 0] - self.fovea[0], pts[:, 1] - self.fovea[1])
        ddisc = np.hypot(pts[:, 0] - self.disc[0], pts[:, 1] - self.disc[1])
        bad = (dfov > self.R * 0.985) | (dfov_ < 0.33 * dd)
        if not root:
            bad |= ddisc < 1.6 * dd
        idx = np.flatnonzero(bad)
        if len(idx):
            pts = pts[: idx[0]]
        if len(pts) < 6:
            return
        n = len(pts)
        s = np.arange(n, dtype=float)
        r = radius * (1 - taper * s / max(n, 1))
        # branch points: beyond 1.6 DD from the disc (zone B stays clean), spaced 0.45-1.1 DD apart
        children = []
        pos = self.rng.uniform(0.2, 0.6) * dd
        while pos < n - 0.3 * dd and depth < 5:
            i = int(pos)
            if ddisc[i] > 1.6 * dd and r[i] > 1.6 * self.min_r:
                rc = r[i] * self.rng.uniform(0.5, 0.8)
                rp = (max(r[i] ** 3 - rc**3, (0.45 * r[i]) ** 3)) ** (1 / 3)
                r[i:] *= rp / r[i]
                children.append((i, rc))
            pos += self.rng.uniform(0.3, 0.8) * dd
        ok = r >= self.min_r
        if not ok.all():
            cut = int(np.argmin(ok))
            pts, r = pts[:cut], r[:cut]
        if len(pts) < 6:
            return
        self.vessels.append(_Vessel(pts, r, kind, root))
        for i, rc in children:
            if i >= len(pts) - 2:
                continue
            t = pts[min(i + 2, len(pts) - 1)] - pts[max(i - 2, 0)]
            h0 = math.atan2(t[1], t[0])
            side = self.rng.choice([-1.0, 1.0])
            hd = h0 + side * math.radians(self.rng.uniform(35, 70))
            length = self.rng.uniform(1.5, 3.5) * dd * (rc / (0.03 * dd)) ** 0.5
            curv = self.rng.normal(0, 0.15) / dd
            self.straight(kind, pts[i], hd, rc, length, curv, root=False, depth=depth + 1)


def _bend_at_cup_margin(vessels: list[_Vessel], cup_c, cup_h: float, cup_v: float, dd: float,
                        rng: np.random.Generator) -> int:
    """Kink the vessels that leave the disc where they climb over the cup margin; returns how many.

    In a cupped disc the vessels run down the cup wall and change direction where they pass its edge
    (the vessel-bending sign of the cup margin, strongest as "bayoneting" in glaucoma). Each root vessel
    keeps its course outside the cup; inside, it runs straight from the margin at 20-45 degrees (random
    side) to its course outside, so the kink lies on the cup margin.
    """
    n = 0
    for v in vessels:
        if not v.root or len(v.pts) < 8:
            continue
        cr = np.hypot((v.pts[:, 0] - cup_c[0]) / (cup_h / 2), (v.pts[:, 1] - cup_c[1]) / (cup_v / 2))
        out = np.flatnonzero(cr >= 1.0)
        if out.size == 0 or out[0] < 4:
            continue
        ie = int(out[0])
        k = min(ie + max(int(0.06 * dd), 2), len(v.pts) - 1)
        d_out = v.pts[k] - v.pts[ie]
        nrm = float(np.hypot(*d_out))
        if nrm < 1e-6:
            continue
        d_out /= nrm
        kink = math.radians(rng.uniform(20, 45)) * rng.choice([-1.0, 1.0])
        c, s_ = math.cos(kink), math.sin(kink)
        d_in = np.array([c * d_out[0] - s_ * d_out[1], s_ * d_out[0] + c * d_out[1]])
        inner = v.pts[ie] - d_in[None, :] * np.arange(ie, 0, -1, dtype=float)[:, None]
        v.pts = np.vstack([inner, v.pts[ie:]])
        n += 1
    return n


def _zone_overlap(v: _Vessel, others: list[_Vessel], disc, dd: float) -> float:
    """Share of ``v``'s centreline 0.9-1.6 DD from the disc centre that lies inside, or touches without a
    visible gap (0.015 DD), another vessel's tube."""
    r = np.hypot(v.pts[:, 0] - disc[0], v.pts[:, 1] - disc[1]) / dd
    sel = (r >= 0.9) & (r <= 1.6)
    if not sel.any() or not others:
        return 0.0
    p, rad = v.pts[sel], v.radius[sel]
    covered = np.zeros(len(p), bool)
    for o in others:
        d = np.hypot(p[:, None, 0] - o.pts[None, :, 0], p[:, None, 1] - o.pts[None, :, 1])
        j = np.argmin(d, axis=1)
        covered |= d[np.arange(len(p)), j] < rad + o.radius[j] + 0.015 * dd  # no visible gap (~2 px)
    return float(covered.mean())


def _draw_apart(tb: "_TreeBuilder", kind: str, draw, tries: int = 6) -> None:
    """Draw a root vessel (``draw()`` appends it and its branches) so that it does not run inside a root
    vessel of the other kind around zone B (0.9-1.6 DD): real arterioles and venules leave the disc at
    their own angles and cross, they do not run merged for a disc radius; a merged pair (or one with no
    visible gap) hides one of them from every grader. Redrawn (new random parameters) up to ``tries`` times."""
    for _ in range(tries):
        n0 = len(tb.vessels)
        draw()
        if len(tb.vessels) == n0:
            return
        others = [o for o in tb.vessels[:n0] if o.root and o.kind != kind]
        if _zone_overlap(tb.vessels[n0], others, tb.disc, tb.dd) <= 0.3:
            return
        del tb.vessels[n0:]
    draw()


def _build_tree(rng, disc, fovea, dd, fov_c, fov_r, nasal_sign, tort, av_ratio) -> list[_Vessel]:
    tb = _TreeBuilder(rng, disc, fovea, dd, fov_c, fov_r, tort)
    rv = 0.036 * dd * rng.uniform(0.92, 1.08)  # main venule radius (px), width ~0.072 DD (~130 um)
    ra = 0.70 * rv  # provisional; rescaled below to hit the requested AV ratio
    for kind, r0, rise in (("vein", rv, 1.75), ("artery", ra, 1.35)):
        for sup in (True, False):
            _draw_apart(tb, kind, lambda: tb.arcade(kind, sup, r0 * rng.uniform(0.93, 1.07),
                                                    rise * rng.uniform(0.9, 1.1), bend_dd=rng.uniform(0.6, 0.85)))
        # nasal vessels: leave the disc nasally, up and down
        for sgn in (-1.0, 1.0):
            base = 0.0 if nasal_sign > 0 else math.pi
            _draw_apart(tb, kind, lambda: tb.straight(
                kind, disc, base + sgn * nasal_sign * math.radians(rng.uniform(35, 60)), r0 * rng.uniform(0.62, 0.75),
                4.0 * dd, rng.normal(0, 0.08) / dd * sgn, root=True, depth=1))
        # one small macular vessel toward the fovea
        hd = math.atan2(fovea[1] - disc[1], fovea[0] - disc[0]) + rng.normal(0, 0.25)
        tb.straight(kind, disc, hd, r0 * rng.uniform(0.30, 0.40), 2.2 * dd, rng.normal(0, 0.2) / dd,
                    root=True, depth=2)
    vessels = tb.vessels
    # rescale arteries so that the Knudtson AV ratio on the zone-B circle equals the requested value
    a_w, v_w = _zone_b_widths(vessels, disc, dd)
    avr0 = av_ratio_knudtson(a_w, v_w)
    if np.isfinite(avr0) and avr0 > 0:
        k = av_ratio / avr0
        for v in vessels:
            if v.kind == "artery":
                v.radius = v.radius * k
    return vessels


def _zone_b_widths(vessels: list[_Vessel], disc, dd) -> tuple[list[float], list[float]]:
    """Drawn calibres (px, 2 x radius) where each root vessel first crosses the zone-B middle circle."""
    a, v = [], []
    rz = ZONE_B_MID_DD * dd
    for ves in vessels:
        if not ves.root:
            continue
        d = np.hypot(ves.pts[:, 0] - disc[0], ves.pts[:, 1] - disc[1])
        idx = np.flatnonzero(d >= rz)
        if len(idx) == 0:
            continue
        w = 2.0 * float(ves.radius[idx[0]])
        (a if ves.kind == "artery" else v).append(w)
    return a, v


def _av_nicking(vessels: list[_Vessel], strength: float,
                rng: np.random.Generator) -> list[tuple[float, float, float, bool]]:
    """Narrow venules where an arteriole crosses them (hypertensive AV nicking); returns (x, y, w, crossing)
    per narrowed place: its centre (px, the venule point nearest the arteriole's centreline), the venule's
    calibre there before the narrowing (px), and whether the arteriole crosses the venule there with the
    venule going on at least 2 of its calibres on both sides (else the two touch side by side, or the
    venule ends there: no grader would call it a crossing)."""
    arts = [v for v in vessels if v.kind == "artery"]
    if not arts or strength <= 0:
        return []
    apts = np.vstack([v.pts for v in arts])
    arad = np.concatenate([v.radius for v in arts])
    owner = np.concatenate([np.full(len(v.pts), k) for k, v in enumerate(arts)])
    start = np.concatenate([[0], np.cumsum([len(v.pts) for v in arts])[:-1]])
    tree = cKDTree(apts)
    where: list[tuple[float, float, float, bool]] = []
    for v in vessels:
        if v.kind != "vein":
            continue
        dist, j = tree.query(v.pts, k=1)
        cross = dist < (arad[j] + v.radius) * 0.5
        if not cross.any():
            continue
        lab, n = ndi.label(cross)
        for k in range(1, n + 1):
            if rng.uniform() > strength:
                continue
            i = int(np.mean(np.flatnonzero(lab == k)))
            halfw = 3.0 * float(arad[j[i]]) + 2
            s = np.arange(len(v.pts)) - i
            dip = 1.0 - 0.55 * np.exp(-0.5 * (s / halfw) ** 2) * (np.abs(s) > arad[j[i]])
            w0 = 2.0 * float(v.radius[i])
            # the arteriole's course near the point, as signed distances from the venule's axis there
            a = arts[int(owner[j[i]])]
            ja = int(j[i] - start[owner[j[i]]])
            reach = int(2 * w0 + 4)
            seg = a.pts[max(ja - reach, 0): ja + reach + 1]
            t = v.pts[min(i + 2, len(v.pts) - 1)] - v.pts[max(i - 2, 0)]
            t = t / max(float(np.hypot(*t)), 1e-9)
            side = (seg[:, 0] - v.pts[i, 0]) * t[1] - (seg[:, 1] - v.pts[i, 1]) * t[0]
            both_arms = 2 * w0 <= i <= len(v.pts) - 1 - 2 * w0
            crossing = bool(both_arms and side.min() < -0.5 * w0 and side.max() > 0.5 * w0)
            v.radius = v.radius * dip
            where.append((float(v.pts[i, 0]), float(v.pts[i, 1]), w0, crossing))
    return where


#: Beaded venous stretches (``synth_fundus(venous_beading=n)``): bead period in local vein calibres, the
#: widening of each bead (fraction of the calibre), beads per stretch, and the smallest vein drawn beaded
#: (radius as a fraction of the main venule's, ``0.036 DD``).
BEAD_PERIOD_WIDTHS = (2.0, 3.0)
BEAD_WIDENING = (0.35, 0.6)
BEADS_PER_STRETCH = (3, 3)
BEAD_MIN_RADIUS_DD = 0.02


def _venous_beading(vessels: list[_Vessel], n: int, disc, dd: float,
                    rng: np.random.Generator) -> list[dict[str, Any]]:
    """Bead ``n`` vein stretches (severe NPDR's venous beading: repeated sausage-like dilatations of a
    vein, Wilkinson 2003); returns one truth record per stretch drawn: {"xy": centre [x, y], "box_xyxy_px",
    "beads", "period_px", "widening", "width_px" (the vein's calibre there before beading)}.

    Each stretch lies on a vein at least ``BEAD_MIN_RADIUS_DD`` in radius, 1.3-3.5 DD from the disc centre,
    clear of every other vessel (no branch point or crossing on it: the vein goes on unbroken through its
    beads), at most one stretch per vein. Its radius is multiplied by 1 + a * b(s), b a raised cosine
    ((1 - cos(2 pi s / period)) / 2, 0 at the stretch's ends and between beads, 1 at each bead's middle):
    ``beads`` widenings of ``a`` (``BEAD_WIDENING``) separated by the vein's own calibre, ``BEAD_PERIOD_WIDTHS``
    calibres apart. Fewer stretches than asked are drawn when no vein has room."""
    out: list[dict[str, Any]] = []
    if n <= 0:
        return out
    disc = np.asarray(disc, float)
    veins = [k for k, v in enumerate(vessels) if v.kind == "vein"]
    order = [veins[i] for i in rng.permutation(len(veins))]
    for k in order:
        if len(out) >= n:
            break
        v = vessels[k]
        r_dd = np.hypot(v.pts[:, 0] - disc[0], v.pts[:, 1] - disc[1]) / dd
        ok = (r_dd >= 1.3) & (r_dd <= 3.5) & (v.radius >= BEAD_MIN_RADIUS_DD * dd)
        if ok.sum() < 8:
            continue
        rad = float(np.median(v.radius[ok]))
        period = rng.uniform(*BEAD_PERIOD_WIDTHS) * 2.0 * rad
        beads = int(rng.integers(BEADS_PER_STRETCH[0], BEADS_PER_STRETCH[1] + 1))
        widen = float(rng.uniform(*BEAD_WIDENING))
        L = int(math.ceil(beads * period))
        # clear of every other vessel: no branch point, crossing or touching neighbour on the stretch
        others = [o for j, o in enumerate(vessels) if j != k]
        if others:
            opts = np.vstack([o.pts for o in others])
            orad = np.concatenate([o.radius for o in others])
            dist, j = cKDTree(opts).query(v.pts, k=1)
            ok &= dist > (1 + widen) * v.radius + orad[j] + 2.0
        run = np.convolve(ok.astype(int), np.ones(L, int), mode="valid") == L  # windows wholly ok
        starts = np.flatnonzero(run)
        if starts.size == 0:
            continue
        i0 = int(starts[int(rng.integers(starts.size))])
        sl = slice(i0, i0 + L)
        pts = v.pts[sl]
        w0 = 2.0 * float(np.median(v.radius[sl]))
        v.radius = v.radius.copy()
        v.radius[sl] *= 1.0 + widen * 0.5 * (1.0 - np.cos(2 * np.pi * np.arange(L) / period))
        half = float(np.max(v.radius[sl]))
        c = pts[L // 2]
        out.append({"xy": [float(c[0]), float(c[1])],
                    "box_xyxy_px": [float(pts[:, 0].min() - half), float(pts[:, 1].min() - half),
                                    float(pts[:, 0].max() + half + 1), float(pts[:, 1].max() + half + 1)],
                    "beads": beads, "period_px": float(period), "widening": widen, "width_px": w0})
    return out


# --------------------------------------------------------------------------------------------- lesions
_LESION_PLAN = {
    # category: {lesion type: (min, max) count at severity 1}
    "diabetic_retinopathy": {"microaneurysm": (6, 14), "hemorrhage": (3, 7), "hard_exudate": (5, 12),
                             "cotton_wool_spot": (1, 3)},
    "hypertension": {"hemorrhage": (1, 4), "cotton_wool_spot": (1, 3)},
    "amd": {"drusen": (8, 22)},
}


def _place(rng, n, center, r_min, r_max, ok_fn, tries=60):
    out = []
    for _ in range(n):
        for _ in range(tries):
            ang = rng.uniform(0, 2 * np.pi)
            rad = math.sqrt(rng.uniform(r_min**2, r_max**2))
            p = np.asarray(center, float) + rad * np.array([math.cos(ang), math.sin(ang)])
            if ok_fn(p):
                out.append(p)
                break
    return out


def _local(pxy, half: float, S: int) -> tuple[slice, slice]:
    y0, x0 = max(int(pxy[1] - half), 0), max(int(pxy[0] - half), 0)
    y1, x1 = min(int(pxy[1] + half) + 1, S), min(int(pxy[0] + half) + 1, S)
    return (slice(y0, y1), slice(x0, x1))


def _normal_reflexes(img, rng, xx, yy, disc, fovea, dd, sc, dvs, fov_c, fov_r):
    """Normal findings that are not lesions, drawn on every eye with random strength.

    Nerve-fibre-layer sheen: whitish striations radial to the disc, brightest along the vessel arcades
    0.6-2.5 DD from the disc, with bright lines along the vessel walls (strong in young eyes, faint or
    absent in older ones); a few small bright flecks beside the vessels near the disc; the foveal light
    reflex; occasionally small dark pigment clumps. These are what makes lesion detectors report false
    exudates and microaneurysms on normal photographs. img : (S, S, 3) float, modified and returned.
    """
    S = img.shape[0]
    green = float(np.median(img[::8, ::8, 1]))
    white = np.array([0.8, 1.0, 1.05], dtype=np.float32)
    # sheen
    amp = rng.uniform(0.0, 0.22) * green
    if amp > 0.01 * green:
        th = np.arctan2(yy - disc[1], xx - disc[0])
        rho = np.hypot(xx - disc[0], yy - disc[1]) / dd
        nt = 900
        grid = ndi.gaussian_filter(rng.normal(0, 1, (48, nt)).astype(np.float32), (2.0, 0.8), mode="wrap")
        grid /= max(float(grid.std()), 1e-6)
        stri = ndi.map_coordinates(grid, [np.clip(rho * 6, 0, 47), (th + np.pi) / (2 * np.pi) * nt], order=1,
                                   mode="grid-wrap")
        stri = np.clip(0.5 + 0.35 * stri, 0, 1)
        radial = np.clip((rho - 0.55) / 0.25, 0, 1) * np.exp(-np.maximum(rho - 1.6, 0) / 0.9)
        arc = np.abs(np.sin(th)) ** 0.7
        band = np.exp(-dvs / (0.3 * dd))
        wall = np.exp(-(((dvs - 2.0 * sc) / (1.2 * sc)) ** 2))
        pat = radial * arc * (0.6 * band * stri + 0.7 * wall * stri)
        img += (amp * pat)[..., None] * white
    # small bright flecks beside vessels near the disc
    for _ in range(int(rng.integers(0, 9))):
        for _ in range(30):
            ang = rng.uniform(0, 2 * np.pi)
            rad = rng.uniform(0.7, 2.6) * dd
            q = np.asarray(disc) + rad * np.array([math.cos(ang), math.sin(ang)])
            x, y = round(q[0]), round(q[1])
            if 0 <= x < S and 0 <= y < S and 1.0 * sc <= dvs[y, x] <= 6 * sc and \
                    math.hypot(q[0] - fov_c[0], q[1] - fov_c[1]) < 0.9 * fov_r:
                r = rng.uniform(0.8, 1.8) * sc
                sl = _local(q, r + 4 * sc + 3, S)
                prof = np.exp(-((xx[sl] - q[0]) ** 2 + (yy[sl] - q[1]) ** 2) / (2 * r * r))
                img[sl] += (rng.uniform(0.15, 0.45) * green * prof)[..., None] * white
                break
    # foveal light reflex
    r = rng.uniform(1.2, 2.8) * sc
    sl = _local(fovea, 4 * r + 3, S)
    prof = np.exp(-((xx[sl] - fovea[0]) ** 2 + (yy[sl] - fovea[1]) ** 2) / (2 * r * r))
    img[sl] += (rng.uniform(0.1, 0.45) * green * prof)[..., None] * white
    # pigment clumps (dark in every channel, brown-black)
    if rng.uniform() < 0.3:
        for _ in range(int(rng.integers(1, 4))):
            ang = rng.uniform(0, 2 * np.pi)
            q = np.asarray(fov_c) + math.sqrt(rng.uniform(0.05, 0.75)) * fov_r * np.array([math.cos(ang), math.sin(ang)])
            x, y = round(q[0]), round(q[1])
            if not (0 <= x < S and 0 <= y < S) or dvs[y, x] < 6 * sc or math.hypot(q[0] - disc[0], q[1] - disc[1]) < dd:
                continue
            r = rng.uniform(1.5, 3.5) * sc
            sl = _local(q, r + 4 * sc + 3, S)
            rr = np.hypot(xx[sl] - q[0], yy[sl] - q[1]) / r
            prof = 1 / (1 + np.exp(np.clip((rr - 1) * r / (0.5 * sc), -30, 30)))
            img[sl] *= 1 - (rng.uniform(0.4, 0.7) * prof)[..., None] * np.array([0.75, 0.7, 0.6], np.float32)
    return img


#: Colours of drawn lesions: "absorb" colours are per-channel absorption, "blend" colours are mixed in.
_BLOOD = np.array([0.28, 0.70, 0.58], dtype=np.float32)  # extravasated blood: dark in green, less in red
_EXUDATE = np.array([0.98, 0.88, 0.42], dtype=np.float32)  # waxy yellow lipid
_COTTON_WOOL = np.array([0.90, 0.86, 0.80], dtype=np.float32)  # whitish-grey swollen axons
_DRUSEN = np.array([0.92, 0.80, 0.55], dtype=np.float32)  # pale yellow


def _blob_profile(xx, yy, pxy, rx, ry, ang, edge, extra=()):
    """Soft ellipse profile (1 inside, 0.5 on the boundary, 0 outside) on a local window.

    ``extra`` holds more (centre, rx, ry, angle) ellipses merged into the same lesion (irregular blots
    and plaques). Returns (window slices, (h, w) float32 profile)."""
    S_y, S_x = xx.shape
    parts = [(np.asarray(pxy, float), rx, ry, ang)] + list(extra)
    half = max(max(p[1], p[2]) + float(np.hypot(*(p[0] - parts[0][0]))) for p in parts) + 4 * edge + 3
    y0, x0 = max(int(pxy[1] - half), 0), max(int(pxy[0] - half), 0)
    sl = (slice(y0, min(int(pxy[1] + half) + 1, S_y)), slice(x0, min(int(pxy[0] + half) + 1, S_x)))
    X0 = xx[sl]
    Y0 = yy[sl]
    prof = np.zeros(X0.shape, np.float32)
    for c, a_, b_, t in parts:
        ca, sa = math.cos(t), math.sin(t)
        X = X0 - c[0]
        Y = Y0 - c[1]
        rr = np.sqrt(((X * ca + Y * sa) / a_) ** 2 + ((-X * sa + Y * ca) / b_) ** 2)
        np.maximum(prof, 1 / (1 + np.exp(np.clip((rr - 1) * min(a_, b_) / max(edge, 1e-3), -30, 30))), out=prof)
    return sl, prof


def draw_lesion(img: np.ndarray, kind: str, center_xy, rng: np.random.Generator, *, dd_px: float,
                disc_xy=None, xx: np.ndarray | None = None, yy: np.ndarray | None = None,
                radius_px: float | None = None, strength: float | None = None) -> dict[str, Any] | None:
    """Draw one lesion into a float RGB fundus image in place and return its truth.

    img : (H, W, 3) float32 in [0, 1] (a phantom before illumination, or a real photograph / 255).
    kind : one of ``grok.ids.CFP_LESION_TYPES`` or "flame_hemorrhage" (a hemorrhage drawn flame-shaped,
        elongated along the nerve fibres, i.e. radial to ``disc_xy``).
    center_xy : (x, y) px; dd_px : the eye's disc diameter (px), which sets the lesion's size.
    Sizes (DD = disc diameter ~ 1.8 mm): microaneurysm 1.6-3.2 px radius at 1024 px (~25-90 um);
    dot/blot hemorrhage 5.5-11 px radius (larger than 125 um), irregular; flame 0.18-0.32 DD long; hard exudate 1.6-4.8 px,
    sharp, sometimes irregular; cotton-wool spot 0.12-0.22 DD, fluffy; drusen 0.045-0.11 DD
    (63-200 um), soft-edged, some confluent. ``radius_px`` (the main ellipse's semi-major axis; the half
    length for a flame) and ``strength`` (0-1 opacity / absorption) replace the random draws when given
    (the other shape draws are still made). Returns {"type", "box_xyxy_px" (half-maximum pixel-edge box),
    "_footprint" (slices), "_profile"} or None when nothing was drawn.
    """
    H, W = img.shape[:2]
    if xx is None or yy is None:
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    sc = dd_px / (2 * 0.472 * 1024 / 7.2)  # the phantom's length scale (1 at a 1024-px, 45-degree photo)
    q = np.asarray(center_xy, float)

    def size(lo, hi):  # the random size, unless given
        v = rng.uniform(lo, hi)
        return float(radius_px) if radius_px is not None else v

    def opacity(lo, hi):
        v = rng.uniform(lo, hi)
        return float(strength) if strength is not None else v

    if kind == "microaneurysm":
        r = size(1.6 * sc, 3.2 * sc)
        (sl, prof), col, k, mode = _blob_profile(xx, yy, q, r, r, 0.0, 0.35 * sc), _BLOOD, opacity(0.4, 0.95), "absorb"
    elif kind == "hemorrhage":  # dot and blot: irregular
        rx = size(5.5 * sc, 11 * sc)  # equivalent diameter >= ~0.07 DD (~125 um): larger than a microaneurysm
        extra = [(q + rng.normal(0, 0.45 * rx, 2), rx * rng.uniform(0.4, 0.7), rx * rng.uniform(0.4, 0.6),
                  rng.uniform(0, np.pi)) for _ in range(int(rng.integers(0, 3)))]
        sl, prof = _blob_profile(xx, yy, q, rx, rx * rng.uniform(0.75, 1.0), rng.uniform(0, np.pi),
                                 rng.uniform(0.6, 1.4) * sc, extra)
        col, k, mode = _BLOOD, opacity(0.45, 0.92), "absorb"
    elif kind == "flame_hemorrhage":  # along the nerve fibres (radial to the disc), feathered ends
        d = np.asarray(disc_xy if disc_xy is not None else (W / 2, H / 2), float)
        ang = math.atan2(q[1] - d[1], q[0] - d[0])
        L = size(0.09 * dd_px, 0.16 * dd_px)
        Wd = L * rng.uniform(0.25, 0.4)
        tails = [(q + sgn * 0.8 * L * np.array([math.cos(ang), math.sin(ang)]), 0.5 * L, 0.6 * Wd, ang)
                 for sgn in (-1.0, 1.0)]
        sl, prof = _blob_profile(xx, yy, q, L, Wd, ang, 1.0 * sc, tails)
        col, k, mode = _BLOOD, opacity(0.45, 0.88), "absorb"
        kind = "hemorrhage"
    elif kind == "hard_exudate":
        r = size(1.6 * sc, 4.8 * sc)
        extra = [(q + rng.normal(0, 0.8 * r, 2), r * rng.uniform(0.5, 0.8), r * rng.uniform(0.4, 0.7),
                  rng.uniform(0, np.pi)) for _ in range(int(rng.integers(0, 3)) if r > 2.5 * sc else 0)]
        sl, prof = _blob_profile(xx, yy, q, r, r * rng.uniform(0.6, 1.0), rng.uniform(0, np.pi), 0.3 * sc, extra)
        col, k, mode = _EXUDATE, opacity(0.6, 0.95), "blend"
    elif kind == "cotton_wool_spot":
        d = np.asarray(disc_xy if disc_xy is not None else (W / 2, H / 2), float)
        r = size(0.06 * dd_px, 0.11 * dd_px)
        ang = math.atan2(q[1] - d[1], q[0] - d[0]) + math.pi / 2 + rng.normal(0, 0.3)
        sl, prof = _blob_profile(xx, yy, q, r, r * rng.uniform(0.55, 0.9), ang, 0.3 * r)
        fluff = ndi.gaussian_filter(rng.normal(0, 1, prof.shape).astype(np.float32), 1.2 * sc)
        prof = np.clip(prof * (1 + 0.25 * fluff / max(float(fluff.std()), 1e-6)), 0, 1).astype(np.float32)
        col, k, mode = _COTTON_WOOL, opacity(0.45, 0.72), "blend"
    elif kind == "drusen":
        r = size(0.022 * dd_px, 0.055 * dd_px)
        extra = [(q + rng.normal(0, 0.9 * r, 2), r * rng.uniform(0.6, 0.9), r * rng.uniform(0.6, 0.9), 0.0)
                 for _ in range(1 if rng.uniform() < 0.25 else 0)]
        sl, prof = _blob_profile(xx, yy, q, r, r * rng.uniform(0.8, 1.0), 0.0, rng.uniform(0.3, 0.5) * r, extra)
        col, k, mode = _DRUSEN, opacity(0.3, 0.55), "blend"
    else:
        raise ValueError(f"draw_lesion: kind={kind!r} is unknown; use one of {', '.join(CFP_LESION_TYPES)} "
                         "or 'flame_hemorrhage'")
    ys, xs = np.nonzero(prof > 0.5)
    if len(ys) == 0:
        return None
    a = (k * prof)[..., None]
    if mode == "absorb":
        img[sl] = img[sl] * (1 - a * col)
    else:
        img[sl] = img[sl] * (1 - a) + col * a
    y0, x0 = sl[0].start, sl[1].start
    return {"type": kind, "box_xyxy_px": [int(x0 + xs.min()), int(y0 + ys.min()), int(x0 + xs.max() + 1),
                                          int(y0 + ys.max() + 1)], "_footprint": sl, "_profile": prof}


# --------------------------------------------------------------------------------------------- main
def synth_fundus(
    category: str,
    laterality: str,
    rng: np.random.Generator,
    *,
    severity: float = 1.0,
    size: int = 1024,
    av_ratio: float | None = None,
    tortuosity: float | None = None,
    pigmentation: float | None = None,
    venous_beading: int = 0,
) -> CfpPhantom:
    """Draw one synthetic colour fundus photograph.

    Parameters
    ----------
    category : one of ``grok.ids.CATEGORIES``.
    laterality : "OD" (right eye: disc on the viewer's right) or "OS".
    rng : numpy Generator; the result is a deterministic function of its state and the arguments.
    severity : 0 (no lesions, category look only) to about 2; scales lesion counts, cup enlargement,
        arteriolar narrowing and AV nicking.
    size : image side in px (square), at least 128.
    av_ratio : Knudtson CRAE/CRVE of the drawn vessels; default by category (normal about 0.70,
        hypertension about 0.70 - 0.12 * severity).
    tortuosity : vessel wiggle amplitude factor (0 = smooth arcs, 1 = typical, 2-3 = tortuous); default
        about 1, higher in hypertension and diabetic retinopathy.
    pigmentation : 0 (light, red fundus) to 1 (dark, brown fundus); default random in [0.15, 0.85].
    venous_beading : number of vein stretches to draw beaded (``_venous_beading``; 0: none, the default).
        Drawn from a generator seeded by ``rng``'s state without advancing it, so every other draw, and
        every photograph drawn without beading, is unchanged (the phantom cohort draws none: its diabetic
        eyes have no severe-NPDR stage).

    Returns
    -------
    CfpPhantom with ``truth`` keys: category, severity, laterality, size_px, disc_center_xy_px,
    disc_diameter_px (vertical), disc_diameter_horizontal_px, fovea_center_xy_px,
    cup_disc_ratio_vertical, av_ratio, crae_px, crve_px, arterial_tortuosity, venular_tortuosity
    (radians per DD, see ``grok.cfp.formulas.tortuosity_per_dd``), vessel_density (vessel fraction of the
    FOV), arterial_fractal_dimension, venular_fractal_dimension, fov_center_xy_px, fov_radius_px,
    av_nicking_count (every narrowed crossing drawn, those on the disc, where the root vessels overlap,
    included), av_nicking_xy_px (their [x, y] centres), av_nicking_venule_width_px (the venule's calibre
    there before narrowing), av_nicking_is_crossing (the arteriole crosses the venule there, which goes on
    on both sides; else they touch side by side or the venule ends), venous_beading_count (beaded vein
    stretches drawn), venous_beading (one record per stretch: centre, box, beads, period, widening, the
    vein's calibre), pigmentation, lesions (list of {"type", "box_xyxy_px"}; boxes are pixel-edge
    coordinates [x_min, y_min, x_max + 1, y_max + 1] of the lesion's half-maximum area), and
    ``<type>_count`` for every lesion type.
    """
    if category not in CATEGORIES:
        raise ValueError(f"synth_fundus: category={category!r} is unknown; use one of {', '.join(CATEGORIES)}")
    if laterality not in LATERALITIES:
        raise ValueError(f"synth_fundus: laterality={laterality!r} is invalid; use 'OD' or 'OS'")
    if not (isinstance(size, (int, np.integer)) and size >= 128):
        raise ValueError(f"synth_fundus: size={size!r} is too small; use an int >= 128 (default 1024)")
    if not (0.0 <= severity <= 3.0):
        raise ValueError(f"synth_fundus: severity={severity!r} is out of range; use 0..3")
    if not (isinstance(venous_beading, (int, np.integer)) and not isinstance(venous_beading, bool)
            and 0 <= venous_beading <= 8):
        raise ValueError(f"synth_fundus: venous_beading={venous_beading!r}; use an int 0..8 (beaded vein stretches)")
    size = int(size)
    S = size
    sc = S / 1024.0
    sev = float(severity)
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)

    # --- layout ---------------------------------------------------------------------------------
    fov_c = np.array([S / 2 + rng.normal(0, 0.005 * S), S / 2 + rng.normal(0, 0.005 * S)])
    fov_r = 0.472 * S
    dd = 2 * fov_r / 7.2 * rng.uniform(0.9, 1.1)  # vertical disc diameter, px
    nasal = 1.0 if laterality == "OD" else -1.0
    fovea = fov_c + np.array([-nasal * rng.uniform(0.75, 1.05) * dd, rng.uniform(-0.15, 0.25) * dd])
    disc = fovea + np.array([nasal * rng.uniform(2.35, 2.65) * dd, -rng.uniform(0.15, 0.4) * dd])
    disc_h = dd / rng.uniform(1.04, 1.12)  # horizontal diameter

    # --- category parameters ----------------------------------------------------------------------
    if category == "glaucoma":
        cdr = float(np.clip(rng.uniform(0.62, 0.75) + 0.08 * (sev - 1), 0.45, 0.9))
    else:
        cdr = float(rng.uniform(0.28, 0.45))
    if av_ratio is None:
        av_ratio = rng.uniform(0.66, 0.74)
        if category == "hypertension":
            av_ratio -= 0.12 * sev
        av_ratio = float(max(av_ratio, 0.4))
    if tortuosity is None:
        tortuosity = rng.uniform(0.8, 1.2) * (1 + 0.4 * sev * (category in ("hypertension", "diabetic_retinopathy")))
    if pigmentation is None:
        pigmentation = rng.uniform(0.15, 0.85)
    for name, val, lo, hi in (("av_ratio", av_ratio, 0.3, 1.2), ("tortuosity", tortuosity, 0.0, 4.0),
                              ("pigmentation", pigmentation, 0.0, 1.0)):
        if not (lo <= val <= hi):
            raise ValueError(f"synth_fundus: {name}={val!r} is out of range; use {lo}..{hi}")

    # pale cup, slightly temporal of the disc centre (drawn below; its margin bends the vessels)
    cup_c = disc + np.array([-nasal * 0.06 * disc_h, 0.02 * dd])
    cup_v = cdr * dd
    cup_h = cup_v * rng.uniform(0.85, 1.0)

    # --- vessels ----------------------------------------------------------------------------------
    vessels = _build_tree(rng, disc, fovea, dd, fov_c, fov_r, nasal, float(tortuosity), float(av_ratio))
    n_bent = _bend_at_cup_margin(vessels, cup_c, cup_h, cup_v, dd, rng)
    nicks = _av_nicking(vessels, 0.5 * sev, rng) if category == "hypertension" else []
    # beading from its own generator, seeded by rng's state without advancing it: nothing else moves
    beads = (_venous_beading(vessels, int(venous_beading), disc, dd,
                             np.random.default_rng(int(rng.bit_generator.state["state"]["state"])))
             if venous_beading else [])
    sd_a, rel_a = render_vessels([(v.pts, v.radius) for v in vessels if v.kind == "artery"], (S, S))
    sd_v, rel_v = render_vessels([(v.pts, v.radius) for v in vessels if v.kind == "vein"], (S, S))

    fov_d = np.hypot(xx - fov_c[0], yy - fov_c[1])
    fov_mask = fov_d <= fov_r
    artery_mask = (sd_a <= 0) & fov_mask
    vein_mask = (sd_v <= 0) & fov_mask
    vessel_mask = artery_mask | vein_mask

    # --- base fundus colour -----------------------------------------------------------------------
    p = float(pigmentation)
    base = np.array([0.84 - 0.22 * p, 0.31 - 0.11 * p, 0.16 - 0.06 * p], dtype=np.float32)
    lo_res = max(S // 16, 8)
    tex1 = ndi.zoom(rng.normal(0, 1, (lo_res, lo_res)).astype(np.float32), S / lo_res, order=3)[:S, :S]
    mid_res = max(S // 5, 8)
    tex2 = ndi.zoom(rng.normal(0, 1, (mid_res, mid_res)).astype(np.float32), S / mid_res, order=1)[:S, :S]
    tex2 = ndi.gaussian_filter(tex2, 1.2 * sc)
    texture = 0.02 * tex1 + (0.015 + 0.03 * p) * tex2
    img = np.empty((S, S, 3), dtype=np.float32)
    for ch in range(3):
        img[..., ch] = base[ch] * (1 + texture * (1.0, 1.4, 1.6)[ch])

    # macula and fovea: darker (luteal pigment, denser RPE)
    df2 = ((xx - fovea[0]) ** 2 + (yy - fovea[1]) ** 2) / dd**2
    mac = 0.22 * np.exp(-df2 / (2 * 0.7**2)) + 0.18 * np.exp(-df2 / (2 * 0.14**2))
    img *= (1 - mac[..., None] * np.array([0.8, 1.0, 1.0], dtype=np.float32))

    # optic disc (vertical ellipse) with a pale cup slightly temporal of centre
    ex = (xx - disc[0]) / (disc_h / 2)
    ey = (yy - disc[1]) / (dd / 2)
    er = np.sqrt(ex**2 + ey**2)
    edge_w = 0.08  # soft edge width in normalised radius units
    disc_alpha = np.clip((1 - er) / edge_w + 0.5, 0, 1) * rng.uniform(0.8, 0.95)
    disc_mask = er <= 1.0
    rim_shade = (1 - 0.12 * np.clip(er, 0, 1) ** 2)[..., None]
    rim_col = np.array([0.97, 0.64, 0.40], dtype=np.float32) * (1 - 0.1 * p) * rim_shade
    halo = 0.12 * np.exp(-np.clip(er - 1, 0, None) ** 2 / (2 * 0.25**2)) * (er > 1)
    img = img * (1 + halo[..., None] * np.array([0.6, 0.8, 0.5], dtype=np.float32))
    img = img * (1 - disc_alpha[..., None]) + rim_col * disc_alpha[..., None]
    cr = np.sqrt(((xx - cup_c[0]) / (cup_h / 2)) ** 2 + ((yy - cup_c[1]) / (cup_v / 2)) ** 2)
    cup_mask = (cr <= 1.0) & disc_mask
    cup_alpha = np.clip((1 - cr) / 0.12 + 0.5, 0, 1) * disc_alpha
    cup_col = np.array([1.0, 0.90, 0.72], dtype=np.float32)
    img = img * (1 - 0.9 * cup_alpha[..., None]) + cup_col * (0.9 * cup_alpha[..., None])

    # vessels: absorption with a near-cylindrical profile; arteries lighter with a central reflex
    def od_profile(sd, rel):
        cover = np.clip(0.5 - sd, 0, 1)
        core = np.sqrt(np.clip(1 - np.minimum(rel, 1) ** 2, 0, 1))
        return cover * (0.45 + 0.55 * core)

    od_v = od_profile(sd_v, rel_v)
    od_a = od_profile(sd_a, rel_a)
    r_near_a = np.where(sd_a < 0, -sd_a / np.maximum(1 - np.minimum(rel_a, 0.999), 1e-3), 0)  # approx radius
    reflex = 0.45 * np.exp(-(rel_a / 0.28) ** 2) * np.clip((r_near_a - 2.0 * sc) / (2.0 * sc), 0, 1)
    od_a = od_a * (1 - reflex)
    vein_abs = np.array([0.30, 0.55, 0.45], dtype=np.float32)
    art_abs = np.array([0.13, 0.40, 0.30], dtype=np.float32)
    img *= 1 - od_v[..., None] * vein_abs
    img *= 1 - od_a[..., None] * art_abs

    # --- normal reflexes and pigment (not lesions; the detector must ignore them) --------------------
    dvs = np.maximum(np.minimum(sd_a, sd_v), 0.0)  # distance to the nearest vessel wall, px
    img = _normal_reflexes(img, rng, xx, yy, disc, fovea, dd, sc, dvs, fov_c, fov_r)

    # --- lesions ----------------------------------------------------------------------------------
    vdist = ndi.distance_transform_edt(~vessel_mask)
    occupied = np.zeros((S, S), dtype=bool)
    lesions: list[dict[str, Any]] = []
    plan = _LESION_PLAN.get(category, {}) if sev > 0 else {}

    def free(pxy, rad, vessel_gap=None):
        x, y = int(round(pxy[0])), int(round(pxy[1]))
        if not (0 <= x < S and 0 <= y < S):
            return False
        if math.hypot(pxy[0] - fov_c[0], pxy[1] - fov_c[1]) > 0.9 * fov_r - rad:
            return False
        if math.hypot(pxy[0] - disc[0], pxy[1] - disc[1]) < 0.85 * dd + rad:
            return False
        if vdist[y, x] < (rad + 3 * sc + 2 if vessel_gap is None else vessel_gap):
            return False
        r = int(rad + 4 * sc + 3)
        return not occupied[max(0, y - r): y + r + 1, max(0, x - r): x + r + 1].any()

    def stamp(kind, q):
        les = draw_lesion(img, kind, q, rng, dd_px=dd, disc_xy=disc, xx=xx, yy=yy)
        if les is not None:
            occupied[les.pop("_footprint")] |= les.pop("_profile") > 0.05
            lesions.append(les)

    for kind, (lo, hi) in plan.items():
        n = int(round(rng.uniform(lo, hi) * sev))
        if n <= 0:
            continue
        if kind == "microaneurysm":
            for q in _place(rng, n, fovea, 0.4 * dd, 2.2 * dd, lambda q: free(q, 4 * sc)):
                stamp(kind, q)
        elif kind == "hemorrhage" and category == "diabetic_retinopathy":  # dot and blot
            for q in _place(rng, n, fovea, 0.5 * dd, 2.6 * dd, lambda q: free(q, 14 * sc)):
                stamp(kind, q)
        elif kind == "hemorrhage":  # flame-shaped, near the disc
            for q in _place(rng, n, disc, 0.9 * dd, 2.6 * dd, lambda q: free(q, 20 * sc)):
                stamp("flame_hemorrhage", q)
        elif kind == "hard_exudate":  # clusters or circinate rings
            n_cl = max(1, int(round(rng.uniform(1, 3))))
            centers = _place(rng, n_cl, fovea, 0.6 * dd, 1.8 * dd, lambda q: free(q, 10 * sc))
            per = int(math.ceil(n / max(len(centers), 1)))
            for cc in centers:
                ring = rng.uniform() < 0.4
                rmin, rmax = ((0.18 * dd, 0.32 * dd) if ring else (0.0, 0.35 * dd))
                for q in _place(rng, per, cc, rmin, rmax, lambda q: free(q, 6 * sc)):
                    stamp(kind, q)
        elif kind == "cotton_wool_spot":  # in the nerve-fibre layer near the disc: may cover small vessels
            for q in _place(rng, n, disc, 1.0 * dd, 3.0 * dd, lambda q: free(q, 18 * sc, vessel_gap=4 * sc + 2)):
                stamp(kind, q)
        elif kind == "drusen":  # macular
            for q in _place(rng, n, fovea, 0.1 * dd, 1.4 * dd, lambda q: free(q, 7 * sc)):
                stamp(kind, q)

    # --- illumination, FOV, blur, noise, JPEG ------------------------------------------------------
    gdir = rng.uniform(0, 2 * np.pi)
    grad = 1 + rng.uniform(0.05, 0.18) * ((xx - fov_c[0]) * math.cos(gdir) + (yy - fov_c[1]) * math.sin(gdir)) / fov_r
    rn = fov_d / fov_r
    vignette = 1 - rng.uniform(0.25, 0.45) * np.clip(rn, 0, 1) ** 3
    exposure = rng.uniform(0.92, 1.08)
    illum = (grad * vignette * exposure).astype(np.float32)
    edge = np.clip((fov_r - fov_d) / (1.2 * sc) + 0.5, 0, 1).astype(np.float32)
    img = img * (illum * edge)[..., None] * 255.0
    img += 3.0 * (1 - edge)[..., None] * np.array([1.0, 0.5, 0.3], dtype=np.float32)
    sigma = rng.uniform(0.6, 1.0) * sc
    for ch in range(3):
        img[..., ch] = ndi.gaussian_filter(img[..., ch], sigma)
    img += rng.normal(0, 1.6, img.shape).astype(np.float32)
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)
    image = _jpeg_roundtrip(image, quality=int(rng.integers(88, 96)))

    # --- truth ------------------------------------------------------------------------------------
    a_w, v_w = _zone_b_widths(vessels, disc, dd)

    crae = knudtson_equivalent(a_w, 0.88)
    crve = knudtson_equivalent(v_w, 0.95)
    min_w = TRUTH_MIN_WIDTH_DD * dd

    def tort_segments(kind):
        segs = []
        for v in vessels:
            if v.kind != kind:
                continue
            keep = (2 * v.radius >= min_w) & (np.hypot(v.pts[:, 0] - disc[0], v.pts[:, 1] - disc[1]) > 0.6 * dd)
            lab, n = ndi.label(keep)
            for k in range(1, n + 1):
                segs.append(v.pts[lab == k])
        return segs

    counts = {f"{t}_count": sum(1 for les in lesions if les["type"] == t) for t in CFP_LESION_TYPES}
    truth: dict[str, Any] = {
        "category": category,
        "severity": sev,
        "laterality": laterality,
        "size_px": S,
        "fov_center_xy_px": [float(fov_c[0]), float(fov_c[1])],
        "fov_radius_px": float(fov_r),
        "disc_center_xy_px": [float(disc[0]), float(disc[1])],
        "disc_diameter_px": float(dd),
        "disc_diameter_horizontal_px": float(disc_h),
        "fovea_center_xy_px": [float(fovea[0]), float(fovea[1])],
        "cup_disc_ratio_vertical": float(cdr),
        "av_ratio": float(crae / crve) if crve > 0 else float("nan"),
        "crae_px": float(crae),
        "crve_px": float(crve),
        "arterial_tortuosity": tortuosity_per_dd(tort_segments("artery"), dd),
        "venular_tortuosity": tortuosity_per_dd(tort_segments("vein"), dd),
        "tortuosity_factor": float(tortuosity),
        "vessel_density": float(vessel_mask.sum() / max(fov_mask.sum(), 1)),
        "arterial_fractal_dimension": box_counting_dimension(artery_mask),
        "venular_fractal_dimension": box_counting_dimension(vein_mask),
        "av_nicking_count": len(nicks),
        "av_nicking_xy_px": [[x, y] for x, y, _, _ in nicks],
        "av_nicking_venule_width_px": [w for _, _, w, _ in nicks],
        "av_nicking_is_crossing": [c for _, _, _, c in nicks],
        "venous_beading_count": len(beads),
        "venous_beading": beads,
        "vessels_bent_at_cup_margin": int(n_bent),
        "pigmentation": float(pigmentation),
        "pixel_spacing_mm_assumed": NOMINAL_DISC_DIAMETER_MM / float(dd),
        "lesions": lesions,
        **counts,
    }
    return CfpPhantom(
        image=image,
        fov_mask=fov_mask,
        vessel_mask=vessel_mask,
        artery_mask=artery_mask,
        vein_mask=vein_mask,
        disc_mask=disc_mask,
        cup_mask=cup_mask,
        laterality=laterality,
        truth=truth,
    )


def _jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """Compress and decompress in memory (JPEG block artefacts, as in archived fundus photographs)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality, subsampling=0)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def _main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    ap = argparse.ArgumentParser(description="Write one phantom fundus photograph (PNG) and its truth (JSON).")
    ap.add_argument("--category", default="normal", choices=CATEGORIES)
    ap.add_argument("--laterality", default="OD", choices=LATERALITIES)
    ap.add_argument("--severity", type=float, default=1.0)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--venous-beading", type=int, default=0, help="beaded vein stretches to draw")
    ap.add_argument("--out", default="fundus.png")
    args = ap.parse_args(argv)
    ph = synth_fundus(args.category, args.laterality, np.random.default_rng(args.seed), severity=args.severity,
                      size=args.size, venous_beading=args.venous_beading)
    Image.fromarray(ph.image).save(args.out)
    with open(args.out + ".truth.json", "w") as fh:
        json.dump(ph.truth, fh, indent=2)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
