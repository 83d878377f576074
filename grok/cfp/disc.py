"""Optic disc, cup, fovea and laterality.

Orientation convention: images as the examiner sees the fundus (not mirrored). The disc is nasal to the
fovea; in a right eye (OD) nasal faces the viewer's right, so a disc right of the fovea means OD.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from grok.cfp.preprocess import background, block_mean, disk_filter, erode, fill_outside, smooth
from grok.cfp.vessels import skeleton_segments

#: Disc candidate: least brightness above its 2.5-DD background, least z-score over the photograph's
#: brightness variation, and the brightness above the background that counts without the z test.
DISC_MIN_CONTRAST = 0.08
DISC_MIN_Z = 4.0
#: 0.25 until issue #14: real photographs with bright reflexes (children's fundi, CHASE_DB1) or uneven
#: illumination (HRF) have discs 17-25 % above their background at z 2.3-3.8, and were reported as having
#: no disc (8 of 73); a photograph without a disc gives ~9-11 % (the phantom with its disc painted over,
#: skimage.data.retina() cut to its temporal half).
DISC_CLEAR_CONTRAST = 0.15
#: Vessel convergence (issue #14): the centre lines of the wider vessels (half-width at or above this percentile of
#: the ridge mask's centre line) vote along their own direction over this span on both sides (x expected DD).
#: The main vessels run radially for the first disc diameter or so after leaving the disc, so their lines meet
#: on it; a vessel's own length only adds to a line along itself, where few other lines cross.
CONVERGENCE_WIDE_PERCENTILE = 60.0
CONVERGENCE_SPAN_DD = (0.1, 1.5)
#: Weight of the vessel-convergence z-score beside the brightness z-score in the disc candidate's score.
CONVERGENCE_WEIGHT = 0.6
#: Expected disc diameter as a fraction of the FOV radius for a 45-degree photograph (FOV ~ 7.2 DD).
EXPECTED_DD_PER_FOV_RADIUS = 2 / 7.2
#: A disc within this many disc diameters of the FOV centre (horizontally) marks a disc-centred photograph
#: (CHASE_DB1: 0.0-1.0 DD; macula-centred ones ~2-2.5 DD): the macula lies near the rim on a side the photograph
#: does not fix, so neither the fovea nor the laterality is inferred (issue #14: the side towards the FOV centre
#: gave the right eye on 8 of 28 CHASE_DB1 photographs; the darker of both sides 20 of 28, the side with
#: less vessel area 1-3 DD from the disc 19 of 28: too many wrong eyes to write into a record).
DISC_CENTRED_DD = 1.25


@dataclass
class DiscResult:
    """Disc and cup at working resolution (px). NaN / None when not found, with ``reasons``."""

    center_xy: tuple[float, float] | None = None
    diameter_vertical_px: float = float("nan")
    diameter_horizontal_px: float = float("nan")
    confidence: float = 0.0
    cdr_vertical: float = float("nan")
    cdr_confidence: float = 0.0
    disc_mask: np.ndarray | None = None
    cup_mask: np.ndarray | None = None
    cdr_cues: dict = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)


@dataclass
class FoveaResult:
    center_xy: tuple[float, float] | None = None
    confidence: float = 0.0
    reasons: list[str] = field(default_factory=list)


def inpaint_vessels(channel: np.ndarray, vessel_mask: np.ndarray, fov_mask: np.ndarray, sigma: float) -> np.ndarray:
    """Replace vessel pixels by the normalised-convolution mean of nearby non-vessel FOV pixels."""
    keep = fov_mask & ~ndi.binary_dilation(vessel_mask, iterations=1)
    return fill_outside(channel, keep, sigma)


def _zmap(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    v = x[m]
    med = float(np.median(v))
    s = 1.4826 * float(np.median(np.abs(v - med))) + 1e-9
    return (x - med) / s


def vessel_convergence(vessel_mask: np.ndarray, fov_mask: np.ndarray, dd0: float, sc: float) -> np.ndarray:
    """Where the wider vessels' lines meet: calibre-weighted votes along each wide centre-line pixel's direction.

    vessel_mask, fov_mask : (h, w) bool; dd0 : expected disc diameter (px); sc : length scale (FOV radius / 480).
    Each centre-line pixel (skeleton) whose half-width (distance to the mask's edge) is at or above
    ``CONVERGENCE_WIDE_PERCENTILE`` of the centre line's casts votes, weighted by that half-width, at every
    2 x ``sc`` px along its direction (structure tensor of the mask) over ``CONVERGENCE_SPAN_DD`` on both sides, in
    the spirit of Hoover & Goldbaum's fuzzy convergence (IEEE TMI 2003): the main vessels radiate from the disc,
    so their lines cross there, while a bright reflex or lesion elsewhere has at most a vessel or two running
    past it. Returns (h, w) float32 votes (unsmoothed).
    """
    from skimage.morphology import skeletonize

    m = vessel_mask & fov_mask
    h, w = m.shape
    ys, xs = np.nonzero(skeletonize(m))
    if len(ys) < 10:
        return np.zeros((h, w), np.float32)
    # half-width: the mean of the taxicab and chessboard distances to the mask's edge (within 6 % of the
    # Euclidean one at any angle, at a fifth of its cost)
    half_width = 0.5 * (ndi.distance_transform_cdt(m, metric="taxicab")[ys, xs]
                        + ndi.distance_transform_cdt(m, metric="chessboard")[ys, xs])
    wide = half_width >= np.percentile(half_width, CONVERGENCE_WIDE_PERCENTILE)
    ys, xs, half_width = ys[wide], xs[wide], half_width[wide]
    # direction from the structure tensor of the mask on a 2 x 2 block-averaged copy (a quarter of the cost)
    gy, gx = np.gradient(ndi.gaussian_filter(block_mean(m.astype(np.float32), 2), 0.75 * sc))
    hs, ws = gx.shape
    py, px = np.minimum(ys // 2, hs - 1), np.minimum(xs // 2, ws - 1)
    jxx, jyy, jxy = (ndi.gaussian_filter(a, 1.5 * sc)[py, px] for a in (gx * gx, gy * gy, gx * gy))
    along = 0.5 * np.arctan2(2 * jxy, jxx - jyy) + np.pi / 2  # the vessel runs across its edges' gradient
    t = np.arange(CONVERGENCE_SPAN_DD[0] * dd0, CONVERGENCE_SPAN_DD[1] * dd0, max(1.0, 2.0 * sc))
    t = np.concatenate([t, -t])
    X = np.rint(xs[:, None] + np.cos(along)[:, None] * t).astype(np.int64)
    Y = np.rint(ys[:, None] + np.sin(along)[:, None] * t).astype(np.int64)
    ok = (X >= 0) & (X < w) & (Y >= 0) & (Y < h)
    votes = np.bincount((Y * w + X)[ok], weights=np.broadcast_to(half_width[:, None], X.shape)[ok], minlength=h * w)
    return votes.reshape(h, w).astype(np.float32)


def find_disc(rgb: np.ndarray, fov_mask: np.ndarray, fov_center: tuple[float, float], fov_radius: float,
              vessel_mask: np.ndarray) -> DiscResult:
    """Locate the optic disc (brightness + vessel convergence), fit its rim, and estimate the cup.

    rgb : (h, w, 3) float; fov_mask, vessel_mask : (h, w) bool.
    """
    res = DiscResult()
    h, w = fov_mask.shape
    dd0 = EXPECTED_DD_PER_FOV_RADIUS * fov_radius
    sc = fov_radius / 480.0
    lum = rgb.mean(axis=2).astype(np.float32)
    lnv = inpaint_vessels(lum, vessel_mask, fov_mask, 5 * sc)
    lnv = fill_outside(lnv, fov_mask, 0.2 * dd0)
    bg = background(lnv, fov_mask, 2.5 * dd0)
    bright = smooth(lnv / bg - 1.0, 0.22 * dd0)
    vconv = smooth(vessel_convergence(vessel_mask, fov_mask, dd0, sc), 0.22 * dd0)
    inner = erode(fov_mask, max(int(0.15 * dd0), 1))
    if inner.sum() < 100:
        res.reasons.append("field of view too small to search for the optic disc")
        return res
    zb = _zmap(bright, inner)
    zv = _zmap(vconv, inner)
    score = np.where(inner, zb + CONVERGENCE_WEIGHT * np.clip(zv, -3, 8), -np.inf)
    cy, cx = np.unravel_index(int(np.argmax(score)), score.shape)
    # the vessels converge on the disc but leave it from their trunk, often on its nasal side, so the
    # candidate can lie off the disc's brightest part: its visibility is judged at the brightest point within
    # half an expected disc diameter (the rim search still starts from the candidate)
    rr = max(int(0.5 * dd0), 1)
    yy, xx = np.mgrid[max(cy - rr, 0): min(cy + rr + 1, h), max(cx - rr, 0): min(cx + rr + 1, w)]
    near = np.where(((yy - cy) ** 2 + (xx - cx) ** 2 <= rr * rr) & inner[yy, xx], bright[yy, xx], -np.inf)
    k = int(np.argmax(near))
    by, bx = int(yy.flat[k]), int(xx.flat[k])
    contrast = float(bright[by, bx])
    vc = float(vconv[cy, cx] / (np.median(vconv[inner]) + 1e-9))
    # a disc stands out from the fundus (>= 8 % brighter than its background) and from the rest of this
    # photograph's brightness variation (z >= 4); strong vignetting or uneven illumination inflates that
    # variation, so a region >= 15 % brighter than its background counts without the z test
    if contrast < DISC_MIN_CONTRAST:
        res.reasons.append(
            f"no visible optic disc: the brightest disc-sized region is only {100 * contrast:.0f}% above "
            f"the background (need {100 * DISC_MIN_CONTRAST:.0f}%)")
        return res
    if zb[by, bx] < DISC_MIN_Z and contrast < DISC_CLEAR_CONTRAST:
        res.reasons.append(
            f"no visible optic disc: the brightest disc-sized region ({100 * contrast:.0f}% above its "
            f"background) does not stand out from the photograph's brightness variation (z {zb[by, bx]:.1f}, "
            f"need {DISC_MIN_Z:.0f}, or {100 * DISC_CLEAR_CONTRAST:.0f}% above the background)")
        return res
    # --- rim: closed contour through the outer falling edge (polar dynamic programming), ellipse fit ---
    R = int(1.6 * dd0) + 8
    cys, cxs = slice(max(cy - R, 0), min(cy + R + 1, h)), slice(max(cx - R, 0), min(cx + R + 1, w))
    # vessels on the disc (which the fundus-wide mask mostly misses) inpainted too: a dark vessel
    # crossing the pale cup has an edge that falls almost to the fundus level, like the margin
    yy, xx = np.mgrid[cys, cxs]
    er0 = ((xx - cx) ** 2 + (yy - cy) ** 2) / (0.75 * dd0) ** 2
    dvm = disc_vessel_mask(rgb[cys, cxs, 1].astype(np.float32), er0, dd0, sc)
    lum_crop = inpaint_vessels(lum[cys, cxs], vessel_mask[cys, cxs] | dvm, fov_mask[cys, cxs], 5 * sc)
    rel_crop = ndi.gaussian_filter(lum_crop / bg[cys, cxs] - 1.0, 1.5 * sc)
    center = np.array([cx, cy], dtype=float)
    a = b = 0.5 * dd0
    fit_ok = False
    rim_support = 0.0
    for _ in range(2):
        rim = _rim_contour(rel_crop, (center[0] - cxs.start, center[1] - cys.start), dd0, sc)
        if rim is None:
            break
        px, py, good = rim
        px, py = px + cxs.start, py + cys.start
        if good.sum() < 12:
            break
        # axis-aligned ellipse A u^2 + C v^2 + D u + E v = 1 in coordinates centred on the current
        # estimate (the origin inside the ellipse keeps A, C > 0 for a valid fit)
        u, v = px[good] - center[0], py[good] - center[1]
        try:
            sol, *_ = np.linalg.lstsq(np.column_stack([u**2, v**2, u, v]), np.ones(good.sum()), rcond=None)
        except np.linalg.LinAlgError:
            break
        A, C, D, E = sol
        if A <= 0 or C <= 0:
            break
        x0, y0 = center[0] - D / (2 * A), center[1] - E / (2 * C)
        G = 1 + D * D / (4 * A) + E * E / (4 * C)
        if G <= 0:
            break
        a, b = math.sqrt(G / A), math.sqrt(G / C)
        if math.hypot(x0 - center[0], y0 - center[1]) > 0.6 * dd0:
            break
        center = np.array([x0, y0])
        fit_ok = True
        rim_support = float(good.mean())
    if not fit_ok or not (0.45 * dd0 <= 2 * b <= 1.8 * dd0) or not (0.6 < a / b < 1.6):
        # fall back on the half-maximum region of the brightness map
        lvl = 0.5 * contrast
        lab, _ = ndi.label(bright > lvl)
        k = lab[by, bx]
        reg = lab == k if k > 0 else np.zeros_like(fov_mask)
        if reg.sum() < 20 or reg.sum() > 4 * dd0 * dd0:
            res.reasons.append("optic disc rim could not be fitted")
            return res
        ys, xs = np.nonzero(reg)
        center = np.array([xs.mean(), ys.mean()])
        b = 2 * ys.std()
        a = 2 * xs.std()
        res.reasons.append("disc rim fitted from the brightness half-maximum (weak edge)")
        res.confidence = 0.4
    else:
        res.confidence = float(np.clip((0.5 + 0.25 * (contrast / 0.2) + 0.1 * min(vc, 3) / 3)
                                       * (0.6 + 0.4 * rim_support), 0, 1))
    res.center_xy = (float(center[0]), float(center[1]))
    res.diameter_vertical_px = float(2 * b)
    res.diameter_horizontal_px = float(2 * a)
    # disc and cup on a crop around the disc (pasted back into full-size masks)
    m = int(max(a, b) * 1.3) + int(6 * sc) + 4
    ys = slice(max(int(center[1]) - m, 0), min(int(center[1]) + m + 1, h))
    xs = slice(max(int(center[0]) - m, 0), min(int(center[0]) + m + 1, w))
    yy, xx = np.mgrid[ys, xs]
    er = ((xx - center[0]) / a) ** 2 + ((yy - center[1]) / b) ** 2
    res.disc_mask = np.zeros((h, w), bool)
    res.disc_mask[ys, xs] = (er <= 1.0) & fov_mask[ys, xs]
    _cup(res, rgb[ys, xs], vessel_mask[ys, xs], fov_mask[ys, xs], er, sc,
         (center[0] - xs.start, center[1] - ys.start), (a, b))
    if res.cup_mask is not None:
        full = np.zeros((h, w), bool)
        full[ys, xs] = res.cup_mask
        res.cup_mask = full
    return res

#: Polar sampling of the disc rim: angles, radial range (x expected DD), outer-edge windows (x expected DD).
RIM_ANGLES = 72
RIM_R_RANGE_DD = (0.15, 0.9)
RIM_LEVEL_WINDOW_DD = (0.025, 0.07)
#: The level just outside the margin lies within this fraction of the disc-fundus span above the fundus.
RIM_OUTSIDE_FRACTION = 0.5


def _circular_dp(score: np.ndarray, max_step: int) -> np.ndarray:
    """Closed path r(theta) through ``score`` (n_angles, n_radii) maximising the summed score with
    |r(i+1) - r(i)| <= max_step. The angles are run three times round and the middle lap kept, so the
    path closes up (to within max_step). Returns (n_angles,) radius indices."""
    na, nr = score.shape
    S = np.concatenate([score, score, score], axis=0)
    acc = S[0].copy()
    back = np.zeros(S.shape, dtype=np.int32)
    cols = np.arange(nr)
    shifts = range(-max_step, max_step + 1)
    for i in range(1, len(S)):
        cand = np.full((len(shifts), nr), -np.inf)
        for j, d in enumerate(shifts):  # predecessor at radius r - d
            if d > 0:
                cand[j, d:] = acc[:-d]
            elif d < 0:
                cand[j, :d] = acc[-d:]
            else:
                cand[j] = acc
        arg = np.argmax(cand, axis=0)
        back[i] = cols - (arg - max_step)
        acc = cand[arg, cols] + S[i]
    path = np.empty(len(S), dtype=np.int32)
    path[-1] = int(np.argmax(acc))
    for i in range(len(S) - 1, 0, -1):
        path[i - 1] = back[i, path[i]]
    return path[na: 2 * na]


def _rim_contour(rel: np.ndarray, center_xy: tuple[float, float], dd0: float, sc: float
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Disc margin points around ``center_xy`` on the relative-brightness map ``rel`` (crop coordinates).

    The margin is the edge where the disc's brightness falls to the fundus level. Inside a cupped disc
    the pale cup's edge is usually the strongest edge, but it falls only to the rim's level; so each
    falling edge is weighted by how close the level just beyond it (a window RIM_LEVEL_WINDOW_DD out)
    comes to the fundus level of its ray (1 at the fundus, 0 at RIM_OUTSIDE_FRACTION of the way up to
    the disc's level), and a smooth closed contour through the weighted edges is found by dynamic programming in polar
    coordinates (robust to vessel gaps and weak sectors). Returns (x, y, good) per angle, good = the
    contour lies on a clear edge there; None when the disc has no edge at all.
    """
    cx, cy = center_xy
    step = 1.0
    r = np.arange(RIM_R_RANGE_DD[0] * dd0, RIM_R_RANGE_DD[1] * dd0, step)
    ang = np.linspace(0, 2 * np.pi, RIM_ANGLES, endpoint=False)
    X = cx + np.cos(ang)[:, None] * r[None, :]
    Y = cy + np.sin(ang)[:, None] * r[None, :]
    prof = ndi.map_coordinates(rel, [Y.ravel(), X.ravel()], order=1, mode="nearest").reshape(X.shape)
    prof = ndi.gaussian_filter1d(prof, 1.0, axis=0, mode="wrap")
    prof = ndi.gaussian_filter1d(prof, max(1.0, 1.2 * sc), axis=1, mode="nearest")
    fall = np.maximum(-np.gradient(prof, step, axis=1), 0.0)
    w0 = max(int(round(RIM_LEVEL_WINDOW_DD[0] * dd0 / step)), 1)
    w1 = max(int(round(RIM_LEVEL_WINDOW_DD[1] * dd0 / step)), w0 + 1)
    # mean level over [r - w1, r - w0] (inside) and [r + w0, r + w1] (outside) by cumulative sums
    pad = np.pad(prof, ((0, 0), (w1 + 1, w1 + 1)), mode="edge")
    cs = np.cumsum(pad, axis=1)
    n = prof.shape[1]
    idx = np.arange(n) + w1 + 1

    def win(lo: int, hi: int) -> np.ndarray:  # mean of pad[:, idx+lo .. idx+hi]
        return (cs[:, idx + hi] - cs[:, idx + lo - 1]) / (hi - lo + 1)

    outside = win(w0, w1)
    # fundus level (outer quarter of each ray) and disc level (95th percentile), median over nearby rays
    nq = max(n // 4, 1)
    fund = ndi.median_filter(np.median(prof[:, -nq:], axis=1), size=9, mode="wrap")
    top = ndi.median_filter(np.percentile(prof, 95, axis=1), size=9, mode="wrap")
    span = (top - fund)[:, None]
    # an edge counts as the margin when the level just beyond it is near the fundus level: the cup's
    # edge falls only to the rim's level, which stays above half-way between fundus and disc
    near_fundus = np.clip(1.0 - (outside - fund[:, None]) / np.maximum(RIM_OUTSIDE_FRACTION * span, 1e-6), 0.0, 1.0)
    near_fundus[np.broadcast_to(span <= 0.02, near_fundus.shape)] = 0.0
    e = fall * near_fundus
    scale = float(np.percentile(e, 99))
    if not np.isfinite(scale) or scale <= 0:
        return None
    e = e / scale
    k = _circular_dp(e, max(int(round(1.5 * sc)), 1))
    rr = r[k]
    strength = e[np.arange(len(ang)), k]
    pos = strength[strength > 0]
    good = strength > 0.25 * float(np.median(pos)) if pos.size else np.zeros(len(ang), bool)
    return cx + np.cos(ang) * rr, cy + np.sin(ang) * rr, good


def _cup(res: DiscResult, rgb: np.ndarray, vessel_mask: np.ndarray, fov_mask: np.ndarray, er: np.ndarray,
         sc: float, center_xy: tuple[float, float], axes: tuple[float, float]) -> None:
    """Cup and vertical cup-to-disc ratio from two cues, on a crop around the disc.

    rgb, vessel_mask, fov_mask, er : crop arrays ((h, w, 3), (h, w) bool, (h, w) bool, (h, w) squared
    ellipse-normalised distance from the disc centre); center_xy, axes : the disc ellipse in crop px.
    Pallor (``_pallor_cup``) gives the cup's shape; vessel bending (``vessel_bends``) gives the radius of
    the cup margin where vessels kink over it. The vCDR is their confidence-weighted mean; both values
    and the number of bends are kept in ``res.cdr_cues``.
    """
    dvm = disc_vessel_mask(rgb[..., 1].astype(np.float32), er, res.diameter_vertical_px, sc)
    pal = _pallor_cup(res, rgb, vessel_mask | dvm, fov_mask, er, sc)
    a, b = axes
    pc = center_xy
    if pal is not None:
        ys, xs = np.nonzero(pal[0])
        pc = (float(xs.mean()), float(ys.mean()))
    bends = vessel_bends(dvm, er, res.diameter_vertical_px)
    cdr_b, conf_b = float("nan"), 0.0
    if len(bends) >= MIN_BENDS:
        # a bend's radius from the cup centre, in disc-ellipse units = the cup's size relative to the
        # disc along that direction (vertical CDR for a cup shaped like its disc)
        rho = np.array([math.hypot((x - pc[0]) / a, (y - pc[1]) / b) for x, y, _ in bends])
        cdr_b = float(np.median(rho))
        q1, q3 = np.percentile(rho, [25, 75])
        conf_b = float(min(1.0, len(bends) / 4) * np.clip(1.0 - (q3 - q1) / max(cdr_b, 1e-6), 0.0, 1.0))
    cdr_p, conf_p = (pal[1], pal[2]) if pal is not None else (float("nan"), 0.0)
    res.cdr_cues = {"pallor": cdr_p, "pallor_confidence": conf_p, "vessel_bending": cdr_b,
                    "vessel_bending_confidence": conf_b, "n_vessel_bends": len(bends)}
    w = np.array([conf_p if np.isfinite(cdr_p) else 0.0, BEND_WEIGHT * conf_b if np.isfinite(cdr_b) else 0.0])
    if w.sum() <= 0:
        if not res.reasons or "cup" not in res.reasons[-1]:
            res.reasons.append("no cup cue: neither pallor nor vessel bending inside the disc")
        return
    vals = np.nan_to_num(np.array([cdr_p, cdr_b]))
    res.cdr_vertical = float(np.clip((w * vals).sum() / w.sum(), 0.0, 1.0))
    res.cdr_confidence = float(np.clip(max(conf_p, conf_b) + 0.25 * min(conf_p, conf_b), 0.0, 1.0))
    if pal is not None:
        res.cup_mask = pal[0]
    else:  # no pallor: the cup drawn as the disc ellipse scaled by the bending estimate
        res.cup_mask = er <= res.cdr_vertical**2
        res.reasons.append("cup from vessel bending only (no pallor)")
    if res.cdr_confidence < 0.3:
        res.reasons.append("low cup confidence: cup-to-disc ratio is uncertain")


#: Vessel-bending cue: smallest turn (degrees) over a chord of BEND_CHORD_DD disc diameters on each side,
#: radial range (disc-ellipse units) where a bend can mark the cup margin, bends needed, weight vs pallor.
BEND_MIN_DEG = 25.0
BEND_CHORD_DD = 0.06
BEND_RHO_RANGE = (0.15, 0.9)
MIN_BENDS = 2
BEND_WEIGHT = 0.5
#: Disc vessels: relative darkness below the local grey closing.
VESSEL_TOPHAT_REL = 0.08


def disk_closing(a: np.ndarray, rad: int) -> np.ndarray:
    """``scipy.ndimage.grey_closing(a, footprint=skimage.morphology.disk(rad))``, computed row by row of the
    disk (``grok.cfp.preprocess.disk_filter``; identical values, ``tests/test_cfp_disc.py``)."""
    return disk_filter(disk_filter(a, rad, "max"), rad, "min")


def disc_vessel_mask(green: np.ndarray, er: np.ndarray, dd_px: float, sc: float) -> np.ndarray:
    """Vessels on and around the disc (crop): relative black top-hat of the green channel.

    green, er : (h, w) crop arrays. The disc is a bright plateau with the cup's edge inside it, which
    the fundus-wide segmentation (scaled to a dark background) handles poorly; a grey closing with a
    disk wider than the widest vessel (0.12 DD) gives the local vessel-free level, and vessels are
    pixels at least VESSEL_TOPHAT_REL darker than it (and 4 noise units). Returns (h, w) bool.
    """
    g = ndi.gaussian_filter(green, 0.8 * sc)
    rad = max(int(round(0.06 * dd_px)), 2)
    clo = disk_closing(g, rad)
    rel = (clo - g) / np.maximum(clo, 1e-6)
    region = er <= 1.3**2
    hp = g - ndi.gaussian_filter(g, 1.5 * sc)
    noise = 1.4826 * float(np.median(np.abs(hp[region] - np.median(hp[region])))) / max(float(np.median(g[region])), 1e-6)
    m = (rel >= max(VESSEL_TOPHAT_REL, 4 * noise)) & region
    m = ndi.binary_opening(m, structure=np.ones((2, 2)))
    lab, n = ndi.label(m, structure=np.ones((3, 3)))
    if n:
        sizes = np.bincount(lab.ravel())
        keep = sizes >= max(int(0.15 * dd_px), 8)
        keep[0] = False
        m = keep[lab]
    return m


def vessel_bends(near: np.ndarray, er: np.ndarray, dd_px: float) -> list[tuple[float, float, float]]:
    """Points inside the disc where a vessel changes direction sharply: where vessels climb over the
    cup margin they kink (the vessel-bending sign of the cup edge).

    near, er : (h, w) crop arrays (vessels on the disc from ``disc_vessel_mask``; squared
    ellipse-normalised radius). The skeleton is split at junctions (branchings are not bends); on each piece
    the turn between the chords BEND_CHORD_DD x ``dd_px`` before and after a point is computed (a
    smooth curve of radius R turns about chord / R there: 25 degrees needs R < ~0.14 DD, far tighter than
    the arcades leaving the disc), and its largest value, if at least BEND_MIN_DEG and inside BEND_RHO_RANGE of the disc radius, is kept (one
    per piece). Returns [(x, y, turn_deg)] in crop px.
    """
    if not np.isfinite(dd_px) or dd_px <= 0:
        return []
    k = max(int(round(BEND_CHORD_DD * dd_px)), 3)
    if near.sum() < 4 * k:
        return []
    segs, _, _ = skeleton_segments(near, min_len_px=2 * k + 1)
    h, w = er.shape

    def angle(u: np.ndarray, v: np.ndarray) -> np.ndarray:  # degrees between row vectors
        cosang = (u * v).sum(1) / np.maximum(np.hypot(*u.T) * np.hypot(*v.T), 1e-9)
        return np.degrees(np.arccos(np.clip(cosang, -1.0, 1.0)))

    out = []
    for sg in segs:
        p = sg.xy
        if len(p) < 2 * k + 1:
            continue
        i = np.arange(k, len(p) - k)
        cand = angle(p[i] - p[i - k], p[i + k] - p[i])
        i = int(np.argmax(cand))
        if cand[i] < BEND_MIN_DEG:
            continue
        x, y = p[i + k]
        rho = math.sqrt(float(er[min(int(round(y)), h - 1), min(int(round(x)), w - 1)]))
        if BEND_RHO_RANGE[0] <= rho <= BEND_RHO_RANGE[1]:
            out.append((float(x), float(y), float(cand[i])))
    return out


def _pallor_cup(res: DiscResult, rgb: np.ndarray, vessel_mask: np.ndarray, fov_mask: np.ndarray, er: np.ndarray,
                sc: float) -> tuple[np.ndarray, float, float] | None:
    """Cup = the pale core of the disc: vessel-free green above the half-way level between the rim
    (median of the outer disc annulus) and the palest part (98th percentile), connected to the palest
    point. Returns (cup mask, vertical CDR, confidence) or None (reason added)."""
    g = inpaint_vessels(rgb[..., 1].astype(np.float32), vessel_mask, fov_mask, 3 * sc)
    g = ndi.gaussian_filter(g, 1.5 * sc)
    inside = er <= 0.9**2
    rim = (er >= 0.8**2) & (er <= 0.95**2)
    if inside.sum() < 50 or rim.sum() < 20:
        res.reasons.append("cup not measurable (disc too small)")
        return None
    rim_lvl = float(np.median(g[rim]))
    peak = float(np.percentile(g[inside], 98))
    contrast = (peak - rim_lvl) / max(rim_lvl, 1e-6)
    if contrast < 0.02:
        res.reasons.append("no pale cup visible inside the disc (flat disc)")
        return None
    lvl = rim_lvl + 0.5 * (peak - rim_lvl)
    cup = (g >= lvl) & (er <= 1.0)
    # vessels crossing the cup cut it into pieces: close gaps up to a main-vessel width, keep the largest
    rad = max(int(round(0.05 * res.diameter_vertical_px)), 1)
    yy, xx = np.mgrid[-rad: rad + 1, -rad: rad + 1]
    cup = ndi.binary_closing(cup, structure=(xx**2 + yy**2) <= rad * rad) & (er <= 1.0)
    lab, n = ndi.label(cup)
    if n == 0:
        res.reasons.append("no pale cup found inside the disc")
        return None
    sizes = ndi.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
    cup = ndi.binary_fill_holes(lab == (int(np.argmax(sizes)) + 1))
    ys, _ = np.nonzero(cup)
    cup_v = 4.0 * float(ys.std())  # vertical diameter of the equal-moment ellipse
    cdr = float(np.clip(cup_v / res.diameter_vertical_px, 0.0, 1.0))
    # confidence: cup/rim contrast (pallor) and how much of the cup stays inside the disc
    inside_share = float((cup & (er <= 0.9**2)).sum()) / max(float(cup.sum()), 1.0)
    return cup, cdr, float(np.clip(contrast / 0.15, 0, 1) * inside_share)


def find_fovea(rgb: np.ndarray, fov_mask: np.ndarray, fov_center: tuple[float, float], fov_radius: float,
               vessel_mask: np.ndarray, disc: DiscResult) -> FoveaResult:
    """Darkest vessel-free region about 2.5 DD temporal to the disc (or near the FOV centre without a disc)."""
    out = FoveaResult()
    sc = fov_radius / 480.0
    have_disc = disc.center_xy is not None and np.isfinite(disc.diameter_vertical_px)
    dd = disc.diameter_vertical_px if have_disc else EXPECTED_DD_PER_FOV_RADIUS * fov_radius
    lum = rgb[..., 1].astype(np.float32) + 0.3 * rgb[..., 0].astype(np.float32)
    lnv = inpaint_vessels(lum, vessel_mask, fov_mask, 5 * sc)
    lnv = fill_outside(lnv, fov_mask, 0.2 * dd)
    sm = smooth(lnv, 0.18 * dd)
    bg = smooth(lnv, 1.2 * dd)
    rel = sm / np.maximum(bg, 1e-4) - 1.0
    h, w = fov_mask.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if have_disc:
        dx, dy = disc.center_xy
        if abs(dx - fov_center[0]) < DISC_CENTRED_DD * dd:
            out.reasons.append(
                f"disc-centred photograph (disc {abs(dx - fov_center[0]) / dd:.2f} DD from the FOV centre): the "
                "macula lies near the edge of the field on a side the image does not fix, so it is not searched")
            return out
        temporal = -1.0 if dx > fov_center[0] else 1.0
        ex, ey = dx + temporal * 2.5 * dd, dy + 0.3 * dd
        dist = np.hypot(xx - dx, yy - dy) / dd
        region = (dist > 1.8) & (dist < 3.3) & (np.abs(yy - ey) < 1.2 * dd) & ((xx - dx) * temporal > 0)
        prior = 0.004 * (((xx - ex) / dd) ** 2 + ((yy - ey) / dd) ** 2)
    else:
        region = np.hypot(xx - fov_center[0], yy - fov_center[1]) < 1.5 * dd
        prior = 0.004 * ((xx - fov_center[0]) ** 2 + (yy - fov_center[1]) ** 2) / dd**2
        out.reasons.append("fovea searched near the FOV centre (no disc to reference)")
    region &= erode(fov_mask, max(int(0.3 * dd), 1))
    if region.sum() < 10:
        out.reasons.append("fovea search region lies outside the field of view")
        return out
    cost = np.where(region, rel + prior, np.inf)
    fy, fx = np.unravel_index(int(np.argmin(cost)), cost.shape)
    depth = -float(rel[fy, fx])
    if depth < 0.03:
        out.reasons.append(f"no dark macula found (darkest point only {100 * depth:.1f}% below its surround)")
        return out
    out.center_xy = (float(fx), float(fy))
    out.confidence = float(np.clip(depth / 0.12, 0, 1) * (1.0 if have_disc else 0.6))
    return out


def laterality_from_image(disc: DiscResult, fovea: FoveaResult, fov_center: tuple[float, float]) -> str | None:
    """"OD" when the disc lies to the viewer's right of the fovea (or of the FOV centre), "OS" when left."""
    if disc.center_xy is None:
        return None
    ref = fovea.center_xy[0] if fovea.center_xy is not None else fov_center[0]
    dx = disc.center_xy[0] - ref
    if abs(dx) < (0.25 if fovea.center_xy is not None else DISC_CENTRED_DD) * disc.diameter_vertical_px:
        return None
    return "OD" if dx > 0 else "OS"
