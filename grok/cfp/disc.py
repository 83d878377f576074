"""Optic disc, cup, fovea and laterality.

Orientation convention: images as the examiner sees the fundus (not mirrored). The disc is nasal to the
fovea; in a right eye (OD) nasal faces the viewer's right, so a disc right of the fovea means OD.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from grok.cfp.preprocess import background, erode, fill_outside, smooth

#: Expected disc diameter as a fraction of the FOV radius for a 45-degree photograph (FOV ~ 7.2 DD).
EXPECTED_DD_PER_FOV_RADIUS = 2 / 7.2


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


def find_disc(rgb: np.ndarray, fov_mask: np.ndarray, fov_center: tuple[float, float], fov_radius: float,
              vessel_mask: np.ndarray, darkness: np.ndarray) -> DiscResult:
    """Locate the optic disc (brightness + vessel convergence), fit its rim, and estimate the cup.

    rgb : (h, w, 3) float; fov_mask, vessel_mask : (h, w) bool; darkness : vessel darkness map.
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
    vconv = smooth((vessel_mask * np.clip(darkness, 0, None)).astype(np.float32), 0.45 * dd0)
    inner = erode(fov_mask, max(int(0.15 * dd0), 1))
    if inner.sum() < 100:
        res.reasons.append("field of view too small to search for the optic disc")
        return res
    zb = _zmap(bright, inner)
    zv = _zmap(vconv, inner)
    score = np.where(inner, zb + 0.6 * np.clip(zv, -3, 8), -np.inf)
    cy, cx = np.unravel_index(int(np.argmax(score)), score.shape)
    contrast = float(bright[cy, cx])
    vc = float(vconv[cy, cx] / (np.median(vconv[inner]) + 1e-9))
    if contrast < 0.08 or zb[cy, cx] < 4.0:
        res.reasons.append(
            f"no visible optic disc: the brightest disc-sized region is only {100 * contrast:.0f}% above "
            "the background (need 8%)"
        )
        return res
    # --- rim: radial strongest falling edge, axis-aligned ellipse fit, two passes (on a crop) ---
    R = int(1.6 * dd0) + 8
    cys, cxs = slice(max(cy - R, 0), min(cy + R + 1, h)), slice(max(cx - R, 0), min(cx + R + 1, w))
    sm_crop = ndi.gaussian_filter(lnv[cys, cxs], 1.5 * sc)
    center = np.array([cx, cy], dtype=float)
    a = b = 0.5 * dd0
    fit_ok = False
    for _ in range(2):
        ang = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        r = np.linspace(0.12 * dd0, 0.95 * dd0, 80)
        X = center[0] + np.cos(ang)[:, None] * r[None, :]
        Y = center[1] + np.sin(ang)[:, None] * r[None, :]
        prof = ndi.map_coordinates(sm_crop, [Y.ravel() - cys.start, X.ravel() - cxs.start], order=1,
                                   mode="nearest").reshape(X.shape)
        prof = ndi.gaussian_filter1d(prof, 1.5, axis=1)
        grad = np.gradient(prof, r, axis=1)
        valid = (r >= 0.25 * dd0) & (r <= 0.85 * dd0)
        gi = np.where(valid[None, :], grad, np.inf)
        k = np.argmin(gi, axis=1)
        strength = -gi[np.arange(len(ang)), k]
        rr = r[k]
        px = center[0] + np.cos(ang) * rr
        py = center[1] + np.sin(ang) * rr
        good = strength > 0.3 * np.median(strength[strength > 0]) if (strength > 0).any() else strength > 0
        if good.sum() < 12:
            break
        # robust: drop radii far from the median
        med = np.median(rr[good])
        good &= np.abs(rr - med) < 0.25 * dd0
        if good.sum() < 12:
            break
        M = np.column_stack([px[good] ** 2, py[good] ** 2, px[good], py[good]])
        try:
            sol, *_ = np.linalg.lstsq(M, np.ones(good.sum()), rcond=None)
        except np.linalg.LinAlgError:
            break
        A, C, D, E = sol
        if A <= 0 or C <= 0:
            break
        x0, y0 = -D / (2 * A), -E / (2 * C)
        G = 1 + D * D / (4 * A) + E * E / (4 * C)
        if G <= 0:
            break
        a, b = math.sqrt(G / A), math.sqrt(G / C)
        if math.hypot(x0 - center[0], y0 - center[1]) > 0.6 * dd0:
            break
        center = np.array([x0, y0])
        fit_ok = True
    if not fit_ok or not (0.45 * dd0 <= 2 * b <= 1.8 * dd0) or not (0.6 < a / b < 1.6):
        # fall back on the half-maximum region of the brightness map
        lvl = 0.5 * contrast
        lab, _ = ndi.label(bright > lvl)
        k = lab[cy, cx]
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
        res.confidence = float(np.clip(0.5 + 0.25 * (contrast / 0.2) + 0.1 * min(vc, 3) / 3, 0, 1))
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
    _cup(res, rgb[ys, xs], vessel_mask[ys, xs], fov_mask[ys, xs], er, sc)
    if res.cup_mask is not None:
        full = np.zeros((h, w), bool)
        full[ys, xs] = res.cup_mask
        res.cup_mask = full
    return res


def _cup(res: DiscResult, rgb: np.ndarray, vessel_mask: np.ndarray, fov_mask: np.ndarray, er: np.ndarray,
         sc: float) -> None:
    """Cup = the pale core of the disc: vessel-free green above the half-way level between the rim
    (median of the outer disc annulus) and the palest part (98th percentile), connected to the palest point."""
    g = inpaint_vessels(rgb[..., 1].astype(np.float32), vessel_mask, fov_mask, 3 * sc)
    g = ndi.gaussian_filter(g, 1.5 * sc)
    inside = er <= 0.9**2
    rim = (er >= 0.8**2) & (er <= 0.95**2)
    if inside.sum() < 50 or rim.sum() < 20:
        res.reasons.append("cup not measurable (disc too small)")
        return
    rim_lvl = float(np.median(g[rim]))
    peak = float(np.percentile(g[inside], 98))
    contrast = (peak - rim_lvl) / max(rim_lvl, 1e-6)
    if contrast < 0.02:
        res.reasons.append("no pale cup visible inside the disc (flat disc)")
        res.cdr_confidence = 0.0
        return
    lvl = rim_lvl + 0.5 * (peak - rim_lvl)
    cup = (g >= lvl) & (er <= 1.0)
    # vessels crossing the cup cut it into pieces: close gaps up to a main-vessel width, keep the largest
    rad = max(int(round(0.05 * res.diameter_vertical_px)), 1)
    yy, xx = np.mgrid[-rad: rad + 1, -rad: rad + 1]
    cup = ndi.binary_closing(cup, structure=(xx**2 + yy**2) <= rad * rad) & (er <= 1.0)
    lab, n = ndi.label(cup)
    if n == 0:
        res.reasons.append("no pale cup found inside the disc")
        return
    sizes = ndi.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
    cup = ndi.binary_fill_holes(lab == (int(np.argmax(sizes)) + 1))
    ys, _ = np.nonzero(cup)
    cup_v = 4.0 * float(ys.std())  # vertical diameter of the equal-moment ellipse
    res.cup_mask = cup
    res.cdr_vertical = float(np.clip(cup_v / res.diameter_vertical_px, 0.0, 1.0))
    # confidence: cup/rim contrast (pallor) and how much of the cup stays inside the disc
    inside_share = float((cup & (er <= 0.9**2)).sum()) / max(float(cup.sum()), 1.0)
    res.cdr_confidence = float(np.clip(contrast / 0.15, 0, 1) * inside_share)
    if res.cdr_confidence < 0.3:
        res.reasons.append("low cup/rim contrast: cup-to-disc ratio is uncertain")


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
    if abs(dx) < 0.25 * disc.diameter_vertical_px:
        return None
    return "OD" if dx > 0 else "OS"
