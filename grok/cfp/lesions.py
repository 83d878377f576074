"""Lesion candidates with boxes, typed by rules: haemorrhages, microaneurysms, hard exudates,
cotton-wool spots, drusen.

Two stages, so that the decisions can be inspected (``lesion_candidates`` returns every candidate with
its features and, after ``classify``, its type or the reason it was dropped):

1. **Candidates.** Dark and bright isotropic blobs of the background-relative green channel
   (``grok.cfp.preprocess.relative_channels``): a multi-scale, scale-normalised Hessian blob measure
   (both eigenvalues of the same sign, so vessels, which have one near-zero eigenvalue, respond
   little), turned into a z-score against the local noise, local maxima above ``LesionRules.z_seed``.
   Each seed grows into the connected region above half its peak contrast; the box is that region's
   pixel-edge box, as in the phantom truth.
2. **Features** of each region: contrast (relative and in noise units), equivalent diameter and
   elongation, edge width (contrast over the mean border gradient), colour of the absolute change
   against a ring around it (dB/dG: yellow exudates and drusen about 0.3-0.6, white cotton-wool
   spots and whitish nerve-fibre sheen or reflexes 0.8 and more; dR/dG for dark pigment), vessel
   contacts (vessel branches touching the region, their calibre, the share of the region on the
   vessel mask, the gap to the nearest vessel and whether the region runs along it), and position
   relative to the disc and the fovea in disc diameters (DD).
3. **Typed rules** (``classify``), all thresholds in ``LesionRules``. Dark: a piece of vessel
   (crossing, bifurcation, vessel end: touched by a vessel not much narrower than itself), dark
   pigment (dark in red nearly as much as in green), the foveal pit, low contrast and unbounded
   regions are dropped; the rest split by size at 0.065 DD (about 125 um) into microaneurysm and
   hemorrhage. Bright: near-disc and foveal-reflex spots, low-contrast whitish spots (nerve-fibre
   sheen, which is brightest along the arcades near the disc), elongated spots lying along a vessel
   (wall reflexes) and large unbounded regions are dropped; whitish, soft, large spots are cotton-wool
   spots; yellow spots are hard exudates when sharp-edged or bright, drusen when soft and macular.

These are rules from the clinical descriptions of the lesions; they are checked against the phantom
and against the real normal photograph ``skimage.data.retina()`` (which must give no lesion), not
against annotated real lesions (none ship here). See docs/cfp.md for the figures.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi


@dataclass(frozen=True)
class LesionRules:
    """Thresholds of the lesion detector (contrasts are fractions of the local background level,
    lengths are in disc diameters (DD) unless named ``_px``)."""

    z_seed: float = 4.0
    """Blob z-score (local noise units) a local maximum needs to become a candidate."""
    dark_min_contrast: float = 0.07
    """Minimum relative darkness (green) of a haemorrhage or microaneurysm."""
    dark_min_z: float = 5.0
    """Minimum peak darkness in local noise units."""
    ma_max_diameter_dd: float = 0.065
    """Equivalent diameter splitting microaneurysms (below, ~125 um) from haemorrhages."""
    ma_min_diameter_dd: float = 0.018
    """Smaller dark dots are noise / JPEG artefacts."""
    dark_max_diameter_dd: float = 0.45
    """Larger dark regions are background variation (the macula, a choroidal shadow)."""
    dark_max_elongation: float = 4.5
    """Major/minor axis ratio above which a dark region is a vessel piece (flame haemorrhages reach ~4)."""
    vessel_branch_width_ratio: float = 1.7
    """A dark region touched by a vessel is a vessel piece unless its minor width exceeds the
    vessel's calibre by this factor."""
    pigment_red_ratio: float = 0.75
    """Dark regions whose relative red darkness reaches this share of the green darkness are pigment."""
    fovea_exclusion_dd: float = 0.25
    """Dark candidates this close to the detected fovea centre are the foveal pit."""
    disc_exclusion_dd: float = 0.7
    """Candidates this close to the disc centre are disc / peripapillary structure."""
    bright_min_contrast: float = 0.12
    """Minimum relative brightness (green) of any bright lesion."""
    bright_min_z: float = 6.0
    white_min_b_over_g: float = 0.8
    """dB/dG (absolute channel changes) at and above which a bright spot is whitish (not yellow)."""
    cws_min_diameter_dd: float = 0.08
    cws_min_contrast: float = 0.2
    """Whitish spots below this relative brightness are nerve-fibre sheen or reflexes, not cotton wool."""
    exudate_min_contrast: float = 0.2
    """Yellow spots at least this bright, or sharp-edged, are hard exudates."""
    sharp_edge_px: float = 2.2
    """Edge width (px at the 1024-px reference scale) at or below which an edge is sharp."""
    drusen_max_fovea_dd: float = 2.0
    """Drusen lie in the macula: within this distance of the fovea."""
    bright_max_diameter_dd: float = 0.45
    along_vessel_gap_px: float = 3.0
    """Bright regions within this gap (px at reference scale) of a vessel and elongated along it are
    vessel-wall reflexes or sheen."""
    foveal_reflex_dd: float = 0.15
    """Small bright spots this close to the fovea centre are the foveal light reflex."""

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"LesionRules.{k}={v!r} must be a finite non-negative number")
        if self.ma_min_diameter_dd >= self.ma_max_diameter_dd:
            raise ValueError("LesionRules: ma_min_diameter_dd must be below ma_max_diameter_dd")


@dataclass
class Lesion:
    """type : one of grok.ids.CFP_LESION_TYPES; box_xyxy_px : [x_min, y_min, x_max + 1, y_max + 1] (working px);
    score : 0..1 (contrast in noise units through a logistic); area_px."""

    type: str
    box_xyxy_px: list[float]
    score: float
    area_px: int

    def to_dict(self) -> dict:
        return {"type": self.type, "box_xyxy_px": list(self.box_xyxy_px), "score": self.score, "area_px": self.area_px}


@dataclass
class Candidate:
    """One dark or bright blob and its features (working px unless stated; ``_dd`` in disc diameters).

    polarity : "dark" | "bright". xy : peak (x, y). box_xyxy_px : half-maximum region's pixel-edge box.
    type : lesion type after ``classify`` ("" when dropped); reason : why it was dropped.
    """

    polarity: str
    xy: tuple[float, float]
    box_xyxy_px: list[float]
    area_px: int
    features: dict[str, float] = field(default_factory=dict)
    type: str = ""
    reason: str = ""
    score: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"polarity": self.polarity, "xy": list(self.xy), "box_xyxy_px": list(self.box_xyxy_px),
                "area_px": self.area_px, "type": self.type, "reason": self.reason, "score": self.score,
                **self.features}


def _logistic(z: float, z0: float, k: float = 1.0) -> float:
    return float(1.0 / (1.0 + math.exp(-(z - z0) / k)))


def _blob_z(c: np.ndarray, sigmas: list[float], noise_rel: np.ndarray, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Max over scales of the scale-normalised blob measure of the bright spots of ``c``, in units of
    the robust spread of the same scale's Laplacian inside ``allowed`` times the local noise ratio.
    Returns (z, sigma_px of the best scale), both (h, w)."""
    from grok.cfp.vessels import hessian_eigen

    best = np.zeros(c.shape, np.float32)
    best_s = np.zeros(c.shape, np.float32)
    sub = allowed[::4, ::4]
    for s in sigmas:
        l1, l2 = hessian_eigen(c, s)  # l1 >= l2
        lap = (l1 + l2)[::4, ::4][sub]
        spread = 1.4826 * float(np.median(np.abs(lap - np.median(lap)))) + 1e-9 if lap.size else 1.0
        z = np.maximum(-l1, 0) / (spread * noise_rel)
        upd = z > best
        best[upd] = z[upd]
        best_s[upd] = s
    return best, best_s


def lesion_candidates(rgb: np.ndarray, rel: list[np.ndarray], fov_mask: np.ndarray, vessel_mask: np.ndarray,
                      sc: float, disc_xy: tuple[float, float] | None, dd_px: float,
                      fovea_xy: tuple[float, float] | None, rules: LesionRules | None = None) -> list[Candidate]:
    """Dark and bright blob candidates with their features (not yet typed; see ``classify``).

    rgb : (h, w, 3) float in [0, 1] working image; rel : ``relative_channels`` (R, G, B each (h, w));
    fov_mask, vessel_mask : (h, w) bool; sc : length scale (FOV radius / 480 px); disc_xy, fovea_xy :
    (x, y) or None; dd_px : disc diameter (NaN: estimated from the FOV size).
    """
    from grok.cfp.preprocess import background
    from grok.cfp.vessels import _local_scale

    r = rules or LesionRules()
    h, w = fov_mask.shape
    if not np.isfinite(dd_px) or dd_px <= 0:
        dd_px = 0.278 * math.sqrt(fov_mask.sum() / math.pi)
    inner = ndi.distance_transform_cdt(np.pad(fov_mask, 1), metric="chessboard")[1:-1, 1:-1]
    allowed = inner > max(int(8 * sc), 1)
    if not allowed.any():
        return []
    rr, rg, rb = rel
    # the relative green level around lesions, without vessels (they would lower it near vessels)
    base = allowed & ~vessel_mask
    lvl = background(np.where(base, rg, 0).astype(np.float32) + 1.0, base, 42 * sc) - 1.0
    g = ndi.gaussian_filter(rg - lvl, 0.7 * sc)
    hp = rg - ndi.gaussian_filter(rg, 1.5 * sc)
    noise_map = _local_scale(hp, base, int(64 * sc))
    noise_glob = float(np.median(noise_map[allowed]))
    noise_rel = noise_map / max(noise_glob, 1e-9)
    vdist, vidx = ndi.distance_transform_edt(~vessel_mask, return_indices=True)
    vwidth = 2.0 * ndi.distance_transform_edt(vessel_mask)  # calibre at vessel pixels (centre ~ full width)
    vwidth = ndi.maximum_filter(vwidth, size=max(int(5 * sc), 3))
    ctx = _Ctx(rgb=rgb, rr=rr, g=g, noise=noise_map, vessel=vessel_mask, vdist=vdist, vidx=vidx, vwidth=vwidth,
               sc=sc, dd=dd_px, disc=disc_xy, fovea=fovea_xy)
    out: list[Candidate] = []
    sig = [1.0 * sc, 1.6 * sc, 2.5 * sc, 4.0 * sc, 6.0 * sc]
    for pol, c in (("dark", -g), ("bright", g)):
        z, zs = _blob_z(c, [max(s, 0.8) for s in sig], noise_rel, allowed)
        z[~allowed] = 0
        peaks = (z >= r.z_seed) & (z == ndi.maximum_filter(z, size=max(int(3 * sc), 1) * 2 + 1))
        ys, xs = np.nonzero(peaks)
        order = np.argsort(-z[ys, xs])
        taken = np.zeros((h, w), bool)
        for i in order[:3000]:
            y, x = int(ys[i]), int(xs[i])
            if taken[y, x]:
                continue
            cand = _grow(ctx, c, x, y, float(zs[y, x]), float(z[y, x]), pol, taken)
            if cand is not None:
                out.append(cand)
    return out


@dataclass
class _Ctx:
    rgb: np.ndarray
    rr: np.ndarray
    g: np.ndarray
    noise: np.ndarray
    vessel: np.ndarray
    vdist: np.ndarray
    vidx: np.ndarray
    vwidth: np.ndarray
    sc: float
    dd: float
    disc: tuple[float, float] | None
    fovea: tuple[float, float] | None


def _grow(ctx: _Ctx, c: np.ndarray, x: int, y: int, sigma: float, zb: float, pol: str,
          taken: np.ndarray) -> Candidate | None:
    """Half-maximum region around a seed and its features; marks the region in ``taken``."""
    h, w = c.shape
    sc, dd = ctx.sc, ctx.dd
    half = int(max(4 * sigma, 0.3 * dd)) + 3
    y0, y1, x0, x1 = max(y - half, 0), min(y + half + 1, h), max(x - half, 0), min(x + half + 1, w)
    win = c[y0:y1, x0:x1]
    ly, lx = y - y0, x - x0
    r0 = max(int(round(sigma)), 1)
    nb = win[max(ly - r0, 0): ly + r0 + 1, max(lx - r0, 0): lx + r0 + 1]
    peak = float(nb.max())
    if peak <= 0:
        return None
    py, px = np.unravel_index(int(np.argmax(nb)), nb.shape)
    py += max(ly - r0, 0)
    px += max(lx - r0, 0)
    reg_all = win >= 0.5 * peak
    lab, _ = ndi.label(reg_all)
    k = lab[py, px]
    if k == 0:
        return None
    reg = lab == k
    ry, rx = np.nonzero(reg)
    area = int(ry.size)
    touches = bool(ry.min() == 0 or rx.min() == 0 or ry.max() == reg.shape[0] - 1 or rx.max() == reg.shape[1] - 1)
    taken[y0:y1, x0:x1] |= reg
    box = [float(rx.min() + x0), float(ry.min() + y0), float(rx.max() + x0 + 1), float(ry.max() + y0 + 1)]
    cx, cy = float(rx.mean() + x0), float(ry.mean() + y0)
    f: dict[str, float] = {}
    f["z_blob"] = zb
    f["sigma_px"] = sigma
    f["contrast"] = peak
    f["z_contrast"] = peak / max(float(ctx.noise[y, x]), 1e-6)
    eqd = 2.0 * math.sqrt(area / math.pi)
    f["eqd_px"] = eqd
    f["eqd_dd"] = eqd / dd
    f["touches_window"] = float(touches)
    if area >= 3:
        cov = np.cov(np.vstack([rx, ry]).astype(float)) + np.eye(2) / 12.0
        ev, evec = np.linalg.eigh(cov)
        f["elongation"] = float(math.sqrt(ev[1] / max(ev[0], 1e-6)))
        f["minor_px"] = float(4 * math.sqrt(max(ev[0], 1e-6)))
        major = evec[:, 1]
    else:
        f["elongation"] = 1.0
        f["minor_px"] = eqd
        major = np.array([1.0, 0.0])
    # edge width: contrast over the mean gradient on the half-maximum border
    gy, gx = np.gradient(win)
    edge = reg & ~ndi.binary_erosion(reg)
    gm = float(np.mean(np.hypot(gx, gy)[edge])) if edge.any() else 0.0
    f["edge_width_px"] = (0.5 * peak) / max(gm, 1e-9) / sc if gm > 0 else 99.0
    # colour of the absolute change against a ring (vessels and other regions left out)
    d1 = ndi.binary_dilation(reg, iterations=max(int(2 * sc), 1))
    ring = ndi.binary_dilation(d1, iterations=max(int(4 * sc), 2)) & ~d1 & ~ctx.vessel[y0:y1, x0:x1] & ~reg_all
    if ring.sum() < 6:
        ring = ndi.binary_dilation(d1, iterations=max(int(4 * sc), 2)) & ~d1
    sub = ctx.rgb[y0:y1, x0:x1]
    dcol = sub[reg].mean(axis=0) - sub[ring].mean(axis=0) if ring.any() else np.zeros(3)
    dg = float(dcol[1]) if abs(float(dcol[1])) > 1e-6 else 1e-6
    f["dr_over_dg"] = float(dcol[0]) / dg
    f["db_over_dg"] = float(dcol[2]) / dg
    f["red_ratio"] = float(np.median(-ctx.rr[y0:y1, x0:x1][reg])) / max(peak, 1e-6) if pol == "dark" else 0.0
    # vessel contacts: vessel pixels in a thin ring around the region, grouped into branches
    vsub = ctx.vessel[y0:y1, x0:x1]
    f["vessel_frac"] = float(vsub[reg].mean())
    near = ndi.binary_dilation(reg, iterations=max(int(2 * sc), 1) + 1) & ~reg
    touch = near & vsub
    nl, nbr = ndi.label(touch, structure=np.ones((3, 3)))
    f["vessel_branches"] = float(nbr)
    f["vessel_branch_width_px"] = float(ctx.vwidth[y0:y1, x0:x1][touch].max()) if nbr else 0.0
    # vessel gap and alignment: nearest vessel pixel from the region
    vd = ctx.vdist[y0:y1, x0:x1]
    f["vessel_gap_px"] = float(vd[reg].min()) / sc
    iy, ix = ctx.vidx[0][y0:y1, x0:x1][reg], ctx.vidx[1][y0:y1, x0:x1][reg]
    j = int(np.argmin(vd[reg]))
    vy, vx = int(iy[j]), int(ix[j])
    # local vessel direction from the vessel mask's structure tensor around the nearest vessel pixel
    f["along_vessel"] = _alignment(ctx.vessel, vx, vy, major, max(int(4 * sc), 3))
    f["d_disc_dd"] = math.hypot(cx - ctx.disc[0], cy - ctx.disc[1]) / dd if ctx.disc is not None else 99.0
    f["d_fovea_dd"] = math.hypot(cx - ctx.fovea[0], cy - ctx.fovea[1]) / dd if ctx.fovea is not None else 99.0
    return Candidate(polarity=pol, xy=(float(px + x0), float(py + y0)), box_xyxy_px=box, area_px=area, features=f)


def _alignment(vessel: np.ndarray, x: int, y: int, axis: np.ndarray, r: int) -> float:
    """|cos| of the angle between ``axis`` (x, y) and the local vessel direction at (x, y) (0..1)."""
    h, w = vessel.shape
    sub = vessel[max(y - r, 0): y + r + 1, max(x - r, 0): x + r + 1]
    yy, xx = np.nonzero(sub)
    if yy.size < 3:
        return 0.0
    cov = np.cov(np.vstack([xx, yy]).astype(float)) + np.eye(2) * 1e-6
    ev, evec = np.linalg.eigh(cov)
    if ev[1] < 1.5 * ev[0]:
        return 0.0  # no clear direction (a crossing or a blob)
    d = evec[:, 1]
    return float(abs(d[0] * axis[0] + d[1] * axis[1]))


def classify(c: Candidate, rules: LesionRules | None = None, sc: float = 1.0) -> Candidate:
    """Type a candidate in place (``c.type``) or record why it is dropped (``c.reason``); returns it."""
    r = rules or LesionRules()
    f = c.features
    if f["d_disc_dd"] < r.disc_exclusion_dd:
        c.reason = "disc"
        return c
    if f["touches_window"]:
        c.reason = "unbounded region (background variation)"
        return c
    if c.polarity == "dark":
        _classify_dark(c, r)
    else:
        _classify_bright(c, r)
    if c.type:
        c.score = _logistic(f["z_contrast"], 8.0, 2.0)
    return c


def _classify_dark(c: Candidate, r: LesionRules) -> None:
    f = c.features
    if f["eqd_dd"] > r.dark_max_diameter_dd:
        c.reason = "too large"
    elif f["eqd_dd"] < r.ma_min_diameter_dd:
        c.reason = "too small"
    elif f["contrast"] < r.dark_min_contrast or f["z_contrast"] < r.dark_min_z:
        c.reason = "low contrast"
    elif f["d_fovea_dd"] < r.fovea_exclusion_dd:
        c.reason = "foveal pit"
    elif f["vessel_branches"] > 0 and f["minor_px"] < r.vessel_branch_width_ratio * f["vessel_branch_width_px"]:
        c.reason = "vessel piece (crossing, branch or end)"
    elif f["elongation"] > r.dark_max_elongation:
        c.reason = "elongated (vessel)"
    elif f["red_ratio"] >= r.pigment_red_ratio:
        c.reason = "dark in red as well (pigment)"
    else:
        c.type = "microaneurysm" if f["eqd_dd"] < r.ma_max_diameter_dd else "hemorrhage"


def _classify_bright(c: Candidate, r: LesionRules) -> None:
    f = c.features
    white = f["db_over_dg"] >= r.white_min_b_over_g
    sharp = f["edge_width_px"] <= r.sharp_edge_px
    if f["eqd_dd"] > r.bright_max_diameter_dd:
        c.reason = "too large"
    elif f["contrast"] < r.bright_min_contrast or f["z_contrast"] < r.bright_min_z:
        c.reason = "low contrast"
    elif f["d_fovea_dd"] < r.foveal_reflex_dd:
        c.reason = "foveal reflex"
    elif f["vessel_gap_px"] <= r.along_vessel_gap_px and f["elongation"] > 1.8 and f["along_vessel"] > 0.8:
        c.reason = "along a vessel (wall reflex or sheen)"
    elif white:
        if f["contrast"] < r.cws_min_contrast:
            c.reason = "faint whitish spot (nerve-fibre sheen or reflex)"
        elif f["eqd_dd"] >= r.cws_min_diameter_dd and not sharp:
            c.type = "cotton_wool_spot"
        else:
            c.reason = "small or sharp whitish spot (reflex)"
    elif sharp or f["contrast"] >= r.exudate_min_contrast:
        c.type = "hard_exudate"
    elif f["d_fovea_dd"] <= r.drusen_max_fovea_dd:
        c.type = "drusen"
    else:
        c.reason = "faint soft yellow spot outside the macula"


def find_lesions(rgb: np.ndarray, rel: list[np.ndarray], fov_mask: np.ndarray, vessel_mask: np.ndarray, sc: float,
                 disc_xy: tuple[float, float] | None, dd_px: float,
                 fovea_xy: tuple[float, float] | None, rules: LesionRules | None = None) -> list[Lesion]:
    """Typed lesions at working resolution (see the module docstring)."""
    out = []
    for c in lesion_candidates(rgb, rel, fov_mask, vessel_mask, sc, disc_xy, dd_px, fovea_xy, rules):
        classify(c, rules, sc)
        if c.type:
            out.append(Lesion(c.type, c.box_xyxy_px, round(c.score, 3), c.area_px))
    return out
