"""Retinal vessels: segmentation, skeleton graph, calibre, artery/vein labels, AV ratio, tortuosity, fractal dimension.

Segmentation (``segment_vessels``), on the green channel at working resolution:

1. fill outside the FOV by normalised convolution (no edge response), estimate the background with a
   coarse median (window about 3x the widest vessel) and form the relative darkness
   ``d = 1 - green / background``; this flattens uneven illumination and vignetting and plays the role
   of CLAHE's contrast equalisation without its noise amplification;
2. multi-scale Hessian ridge measure on ``d`` (Frangi's eigenvalue ratio without the structure term),
   each scale turned into a noise z-score (robust spread of the response inside the FOV), max over scales;
3. hysteresis threshold of the ridge z-score (seeds must be strong, the tree grows through weaker
   ridge pixels connected to them), small components removed;
4. vessel borders at half the local peak darkness (so calibres follow the photograph's own profile, not
   the filter's blur), restricted to a band around the ridge mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from grok.cfp.formulas import (
    KNUDTSON_ARTERY_COEFFICIENT,
    KNUDTSON_VEIN_COEFFICIENT,
    box_counting_dimension,
    knudtson_equivalent,
    tortuosity_per_dd,
)

#: Share of the darkness-vs-calibre slope removed before artery/vein scoring (0: raw darkness).
AV_WIDTH_DAMPING = 0.0
#: Hessian scales (px at the 1024-px reference scale) of the vessel (and lesion blob) measures.
VESSEL_SCALES = (1.0, 1.5, 2.3, 3.5, 5.0)
#: Hysteresis thresholds on the ridge z-score, half-maximum border fraction, darkness floors (x noise).
LOW, HIGH, HALF, CORE_K, HALF_K = 2.5, 6.0, 0.5, 1.0, 2.0


@dataclass
class VesselMaps:
    """Per-pixel vessel results at working resolution, all (h, w).

    mask : bool vessel pixels. darkness : float relative darkness ``1 - green / background`` (smoothed).
    ridge_z : float ridge z-score (max over scales). noise : robust noise level of ``darkness`` (scalar).
    """

    mask: np.ndarray
    darkness: np.ndarray
    ridge_z: np.ndarray
    noise: float
    hessian: list[tuple[float, np.ndarray, np.ndarray]] = field(default_factory=list, repr=False)
    """(sigma_px, l1, l2) of ``darkness`` per scale, reused by the lesion detector."""
    highpass: np.ndarray | None = field(default=None, repr=False)
    """Fine-scale residual of the relative green darkness (noise estimates), reused by the lesion detector."""


def _half(img: np.ndarray) -> np.ndarray:
    """2 x 2 block mean (h // 2, w // 2) of a 2-D float array."""
    from grok.cfp._kernels import block_mean

    return block_mean(np.asarray(img, dtype=np.float32), 2)


def hessian_eigen(img: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Scale-normalised Hessian eigenvalues (l1 >= l2, each sigma^2 x eigenvalue) of a 2-D float image.

    img : (h, w) float. The image is Gaussian-smoothed at ``sigma`` and differentiated by central
    differences (one smoothing instead of three derivative filters); scales of 3 px and more are
    computed on a 2x block-averaged copy and upsampled. Returns (l1, l2), (h, w) float32 each.
    """
    from grok.cfp._kernels import hessian_eigen_fd

    if sigma >= 3.0 and min(img.shape) >= 64:
        from grok.cfp.preprocess import upsample

        h, w = img.shape
        l1, l2 = hessian_eigen(_half(img), sigma / 2)
        return upsample(l1, (h, w)), upsample(l2, (h, w))
    sm = ndi.gaussian_filter(np.asarray(img, np.float32), sigma, truncate=3.5)
    return hessian_eigen_fd(sm, float(sigma * sigma))


def _hessian_ridge(img: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scale-normalised bright-ridge measure of ``img`` (vessels are bright in the darkness map).

    Returns (ridge, blob, l2): ridge = max(0, -l2) * exp(-(l1/l2)^2 / 0.5) with l2 the more negative
    (scale-normalised) eigenvalue; blob = max(0, -l1) (both eigenvalues negative: a dark spot in the photo).
    """
    from grok.cfp._kernels import ridge_from_eigen

    l1, l2 = hessian_eigen(img, sigma)
    return ridge_from_eigen(l1, l2), np.maximum(-l1, 0), l2


def _robust_scale(x: np.ndarray, mask: np.ndarray) -> float:
    v = x[mask]
    if v.size == 0:
        return 1.0
    med = float(np.median(v))
    mad = float(np.median(np.abs(v - med)))
    return max(1.4826 * mad, 1e-6)


def segment_vessels(rgb: np.ndarray, fov_mask: np.ndarray, sc: float,
                    rel: list[np.ndarray] | None = None) -> VesselMaps:
    """Vessel mask of a fundus photograph.

    rgb : (h, w, 3) float in [0, 1]; fov_mask : (h, w) bool; sc : length scale (FOV radius / 480 px);
    rel : optional precomputed ``grok.cfp.preprocess.relative_channels``.
    """
    from skimage.filters import apply_hysteresis_threshold

    from grok.cfp.preprocess import relative_channels

    if rel is None:
        rel = relative_channels(rgb, fov_mask, sc)
    d = (-rel[1]).astype(np.float32)
    ds = ndi.gaussian_filter(d, 0.6 * sc)
    hp = d - ndi.gaussian_filter(d, 1.5 * sc)
    from grok.cfp.preprocess import erode

    inner = erode(fov_mask, max(int(6 * sc), 1))
    noise = _robust_scale(hp, inner)

    from grok.cfp._kernels import ridge_from_eigen

    zmax = np.zeros_like(d)
    hess = []
    for s in VESSEL_SCALES:
        sig = s * sc
        l1, l2 = hessian_eigen(ds, sig)
        hess.append((sig, l1, l2))
        z = ridge_from_eigen(l1, l2) / _local_scale(l2, inner, int(48 * sc))
        np.maximum(zmax, z, out=zmax)
    zmax[~fov_mask] = 0
    # suppress the FOV rim (a bright-to-dark step) by the relative darkness sign: vessels are darker
    zmax[ds <= 0.5 * noise] = 0

    core = apply_hysteresis_threshold(zmax, LOW, HIGH)
    core = _remove_small(core, int(60 * sc * sc) + 8)

    # half-maximum borders: peak darkness within ~ the widest vessel radius of the ridge mask
    peak = ndi.maximum_filter(np.where(core, ds, 0), size=int(9 * sc) | 1)
    band = ndi.binary_dilation(core, iterations=max(int(3 * sc), 1))
    half = band & (ds >= HALF * peak) & (peak > 0) & (ds > HALF_K * noise)
    mask = (core & (ds > CORE_K * noise) & (ds >= HALF * peak)) | half
    mask = ndi.binary_closing(mask, iterations=1) & fov_mask
    mask = _remove_small(mask, int(80 * sc * sc) + 8)
    return VesselMaps(mask=mask, darkness=ds, ridge_z=zmax, noise=noise, hessian=hess, highpass=hp)


def _local_scale(x: np.ndarray, mask: np.ndarray, block: int) -> np.ndarray:
    """Spatially varying robust spread of ``x``: 1.4826 x the median of |x| over blocks of ``block`` px
    inside ``mask`` (vessels are a minority of any block, so the median sees the noise), smoothed and
    upsampled to (h, w)."""
    from grok.cfp._kernels import block_median_abs

    h, w = x.shape
    b = max(block, 8)
    hb, wb = -(-h // b), -(-w // b)
    med = block_median_abs(np.asarray(x, np.float32), np.asarray(mask, np.bool_), b)
    glob = float(np.nanmedian(med)) if np.isfinite(med).any() else 1e-6
    med = np.where(np.isfinite(med), med, glob)
    med = np.maximum(med, 0.25 * glob)
    from grok.cfp.preprocess import upsample

    med = ndi.gaussian_filter(med, 1.0)
    up = upsample(med, (hb * b, wb * b))[:h, :w]
    return np.maximum(1.4826 * up, 1e-6).astype(np.float32)


def _remove_small(mask: np.ndarray, min_px: int) -> np.ndarray:
    lab, n = ndi.label(mask, structure=np.ones((3, 3)))
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    keep = sizes >= min_px
    keep[0] = False
    return keep[lab]


# ------------------------------------------------------------------------------------------ skeleton graph
@dataclass
class Segment:
    """One vessel segment between branch/crossing points.

    xy : (N, 2) float ordered centreline (x, y) px. width_px : median calibre (px, half-maximum width of
    the darkness profile). av_score : > 0 vein-like, < 0 artery-like (NaN when not classified).
    kind : "artery" | "vein" | "".
    """

    xy: np.ndarray
    width_px: float = float("nan")
    widths: np.ndarray = field(default_factory=lambda: np.zeros(0))
    av_score: float = float("nan")
    kind: str = ""
    ends: tuple[int, int] = (-1, -1)  # junction-cluster ids at each end (-1: free end)


_NB8 = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def skeleton_segments(mask: np.ndarray, min_len_px: int = 6) -> tuple[list[Segment], np.ndarray, np.ndarray]:
    """Break the skeleton of ``mask`` at junctions into ordered pixel chains.

    Returns (segments, skeleton (h, w) bool, junction_labels (h, w) int: 0 none, k > 0 junction cluster k).
    """
    from skimage.morphology import skeletonize

    sk = skeletonize(mask)
    nb = ndi.convolve(sk.astype(np.uint8), np.ones((3, 3), np.uint8), mode="constant") - 1
    junction = sk & (nb >= 3)
    jd = ndi.binary_dilation(junction, structure=np.ones((3, 3))) & sk
    jlab, _ = ndi.label(ndi.binary_dilation(junction, structure=np.ones((3, 3))), structure=np.ones((3, 3)))
    paths = sk & ~jd
    lab, _ = ndi.label(paths, structure=np.ones((3, 3)))
    segs: list[Segment] = []
    for k, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is None:
            continue
        sub = lab[sl] == k
        ys, xs = np.nonzero(sub)
        if len(ys) < min_len_px:
            continue
        pts = set(zip(ys.tolist(), xs.tolist()))
        # an endpoint: a pixel with at most one neighbour in the chain
        start = None
        for p in pts:
            c = sum((p[0] + dy, p[1] + dx) in pts for dy, dx in _NB8)
            if c <= 1:
                start = p
                break
        if start is None:  # a closed loop
            start = next(iter(pts))
        order = [start]
        seen = {start}
        cur = start
        while True:
            nxt = None
            for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1)):
                q = (cur[0] + dy, cur[1] + dx)
                if q in pts and q not in seen:
                    nxt = q
                    break
            if nxt is None:
                break
            order.append(nxt)
            seen.add(nxt)
            cur = nxt
        if len(order) < min_len_px:
            continue
        arr = np.asarray(order, dtype=float)
        xy = np.column_stack([arr[:, 1] + sl[1].start, arr[:, 0] + sl[0].start])
        ends = []
        for p in (xy[0], xy[-1]):
            x, y = int(p[0]), int(p[1])
            win = jlab[max(y - 2, 0): y + 3, max(x - 2, 0): x + 3]
            ids = win[win > 0]
            ends.append(int(ids[0]) if ids.size else -1)
        segs.append(Segment(xy=xy, ends=(ends[0], ends[1])))
    return segs, sk, jlab


def profile_widths(darkness: np.ndarray, xy: np.ndarray, max_half_px: float, step_px: float = 2.0,
                   smooth_px: float = 2.0) -> np.ndarray:
    """Calibres (px) along a centreline from the half-maximum width of perpendicular darkness profiles.

    darkness : (h, w) relative darkness (vessels positive). xy : (N, 2) ordered centreline.
    Returns an array of widths, NaN where a profile has no clear half-maximum crossing on both sides.
    """
    from grok.cfp.formulas import resample_polyline

    pts = resample_polyline(xy, 1.0)
    if len(pts) < 5:
        return np.full(0, np.nan)
    sm = np.column_stack([ndi.gaussian_filter1d(pts[:, 0], smooth_px, mode="nearest"),
                          ndi.gaussian_filter1d(pts[:, 1], smooth_px, mode="nearest")])
    tan = np.gradient(sm, axis=0)
    tan /= np.maximum(np.hypot(tan[:, 0], tan[:, 1]), 1e-9)[:, None]
    idx = np.arange(2, len(pts) - 2, max(int(step_px), 1))
    if idx.size == 0:
        return np.full(0, np.nan)
    c = pts[idx]
    nrm = np.column_stack([-tan[idx, 1], tan[idx, 0]])
    half = max(int(math.ceil(max_half_px)), 3)
    off = np.arange(-half, half + 0.01, 0.5)
    X = c[:, 0:1] + nrm[:, 0:1] * off[None, :]
    Y = c[:, 1:2] + nrm[:, 1:2] * off[None, :]
    prof = ndi.map_coordinates(darkness, [Y.ravel(), X.ravel()], order=1, mode="nearest").reshape(X.shape)
    mid = len(off) // 2
    near = np.abs(off) <= 1.5
    pk_i = np.flatnonzero(near)[np.argmax(prof[:, near], axis=1)]
    peak = prof[np.arange(len(prof)), pk_i]
    base_l = np.min(prof[:, :mid], axis=1)
    base_r = np.min(prof[:, mid + 1:], axis=1)
    base = np.maximum(np.maximum(base_l, base_r), 0.0)
    level = base + 0.5 * (peak - base)
    from grok.cfp._kernels import half_max_widths

    widths = half_max_widths(np.ascontiguousarray(prof, np.float64), np.ascontiguousarray(off, np.float64),
                             pk_i.astype(np.int64), level.astype(np.float64), peak.astype(np.float64),
                             base.astype(np.float64))
    return widths


def classify_av(segments: list[Segment], rel: list[np.ndarray], min_width_px: float) -> None:
    """Label segments artery/vein in place from colour along the centreline, propagated over bifurcations.

    Feature: darkness of the red and green channels at the centreline relative to their backgrounds.
    Venules carry deoxygenated blood and are darker, above all in red; arterioles are lighter and
    often show a central reflex. Both darken with calibre, so each feature is taken as the residual of
    a robust linear fit against calibre; the score is the sum of the standardised residuals, then
    averaged with the scores of segments meeting at the same junction (bifurcations keep their type;
    crossings are diluted), and thresholded at the median of the wide segments.
    """
    if not segments:
        return
    dr, dg = -rel[0], -rel[1]
    rows = []
    for s in segments:
        x = np.clip(np.round(s.xy[:, 0]).astype(int), 0, dr.shape[1] - 1)
        y = np.clip(np.round(s.xy[:, 1]).astype(int), 0, dr.shape[0] - 1)
        rows.append((float(np.median(dr[y, x])), float(np.median(dg[y, x])), s.width_px, len(s.xy)))
    A = np.asarray(rows, dtype=float)
    ok = np.isfinite(A[:, 2]) & (A[:, 2] >= min_width_px)
    if ok.sum() < 4:
        return
    score = np.zeros(len(A))
    for col, wgt in ((0, 1.0), (1, 0.5)):
        # calibre explains part of the darkness (partial volume in thin vessels): remove a damped share
        coef = np.polyfit(A[ok, 2], A[ok, col], 1, w=np.sqrt(A[ok, 3]))
        res = A[:, col] - AV_WIDTH_DAMPING * coef[0] * A[:, 2]
        res[~np.isfinite(res)] = 0
        scale = 1.4826 * np.median(np.abs(res[ok] - np.median(res[ok]))) + 1e-9
        score += wgt * res / scale
    # propagate over junctions: average with the neighbours sharing an end cluster
    by_j: dict[int, list[int]] = {}
    for i, s in enumerate(segments):
        for e in s.ends:
            if e > 0:
                by_j.setdefault(e, []).append(i)
    for _ in range(2):
        new = score.copy()
        for members in by_j.values():
            if len(members) == 3:  # a bifurcation: the three segments are one vessel type
                m = np.average(score[members], weights=[len(segments[i].xy) for i in members])
                for i in members:
                    new[i] = 0.5 * new[i] + 0.5 * m
        score = new
    thr = float(np.median(score[ok]))
    for i, s in enumerate(segments):
        if np.isfinite(A[i, 0]):
            s.av_score = float(score[i] - thr)
            s.kind = "vein" if score[i] > thr else "artery"


def zone_b_widths(segments: list[Segment], disc_xy: tuple[float, float], dd_px: float,
                  darkness: np.ndarray, exclude: np.ndarray | None = None) -> tuple[list[float], list[float], list[dict]]:
    """Calibres (px) of arteries and veins in zone B (1.0 to 1.5 DD from the disc centre).

    One calibre per vessel: segments of the same type whose zone-B positions lie within a vessel
    width of each other are one vessel (the longest piece counts). ``exclude`` (h, w) bool: centreline
    points there are not measured (haemorrhages and cotton-wool spots, which the vessel mask takes in
    or which hide vessels). Returns (artery_widths, vein_widths, records) with records
    [{"kind", "width_px", "angle_rad", "xy"}].
    """
    cx, cy = disc_xy
    recs = []
    for s in segments:
        if s.kind not in ("artery", "vein"):
            continue
        r = np.hypot(s.xy[:, 0] - cx, s.xy[:, 1] - cy) / dd_px
        inz = (r >= 1.0) & (r <= 1.5)
        if exclude is not None:
            xi = np.clip(s.xy[:, 0].astype(int), 0, exclude.shape[1] - 1)
            yi = np.clip(s.xy[:, 1].astype(int), 0, exclude.shape[0] - 1)
            inz &= ~exclude[yi, xi]
        if inz.sum() < max(0.15 * dd_px, 5):
            continue
        w = profile_widths(darkness, s.xy[inz], max_half_px=0.08 * dd_px + 4)
        w = w[np.isfinite(w)]
        if w.size < 3:
            continue
        mid = s.xy[inz].mean(axis=0)
        recs.append({"kind": s.kind, "width_px": float(np.median(w)), "n": int(inz.sum()),
                     "angle_rad": float(math.atan2(mid[1] - cy, mid[0] - cx)), "xy": [float(mid[0]), float(mid[1])]})
    # de-duplicate pieces of the same vessel
    recs.sort(key=lambda d: -d["n"])
    kept: list[dict] = []
    for d in recs:
        dup = False
        for k in kept:
            if k["kind"] != d["kind"]:
                continue
            dist = math.hypot(k["xy"][0] - d["xy"][0], k["xy"][1] - d["xy"][1])
            ang = abs((k["angle_rad"] - d["angle_rad"] + math.pi) % (2 * math.pi) - math.pi)
            if ang * 1.25 * dd_px < 1.5 * max(k["width_px"], d["width_px"]) and dist < 0.5 * dd_px:
                dup = True
                break
        if not dup:
            kept.append(d)
    a = [d["width_px"] for d in kept if d["kind"] == "artery"]
    v = [d["width_px"] for d in kept if d["kind"] == "vein"]
    return a, v, kept


@dataclass
class VesselMeasures:
    """Vessel biomarkers (working-resolution pixels unless stated)."""

    vessel_density: float = float("nan")
    av_ratio: float = float("nan")
    crae_px: float = float("nan")
    crve_px: float = float("nan")
    n_arteries_zone_b: int = 0
    n_veins_zone_b: int = 0
    arterial_tortuosity: float = float("nan")
    venular_tortuosity: float = float("nan")
    arterial_fractal_dimension: float = float("nan")
    venular_fractal_dimension: float = float("nan")
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def measure_vessels(maps: VesselMaps, rel: list[np.ndarray], fov_mask: np.ndarray, sc: float,
                    disc_xy: tuple[float, float] | None, dd_px: float, exclude: np.ndarray | None = None,
                    ) -> tuple[VesselMeasures, np.ndarray, np.ndarray, list[Segment]]:
    """All vessel measures from a segmentation. Returns (measures, artery_mask, vein_mask, segments).

    exclude : optional (h, w) bool, areas not used for zone-B calibres (detected haemorrhages and
    cotton-wool spots).

    Without a disc (``disc_xy`` None or ``dd_px`` NaN) the disc-referenced measures (AV ratio in zone B,
    tortuosity per DD) are NaN with a reason; density and fractal dimensions are still given.
    """
    out = VesselMeasures()
    mask = maps.mask
    out.vessel_density = float(mask[fov_mask].mean()) if fov_mask.any() else float("nan")
    segs, _, _ = skeleton_segments(mask)
    if exclude is not None and exclude.any():
        # segments lying mostly on a haemorrhage or cotton-wool spot are not vessels (or not visible ones)
        def on_lesion(sg: Segment) -> bool:
            xi = np.clip(sg.xy[:, 0].astype(int), 0, exclude.shape[1] - 1)
            yi = np.clip(sg.xy[:, 1].astype(int), 0, exclude.shape[0] - 1)
            return float(exclude[yi, xi].mean()) >= 0.5

        segs = [sg for sg in segs if not on_lesion(sg)]
    have_disc = disc_xy is not None and np.isfinite(dd_px) and dd_px > 0
    dd_eff = dd_px if have_disc else 0.27 * math.sqrt(fov_mask.sum() / math.pi)
    for s in segs:
        w = profile_widths(maps.darkness, s.xy, max_half_px=0.08 * dd_eff + 4)
        w = w[np.isfinite(w)]
        s.widths = w
        s.width_px = float(np.median(w)) if w.size else float("nan")
    classify_av(segs, rel, min_width_px=0.02 * dd_eff)
    # artery / vein masks: each vessel pixel takes the label of its nearest labelled centreline
    lab_img = np.zeros(mask.shape, dtype=np.uint8)
    for s in segs:
        if s.kind:
            x = s.xy[:, 0].astype(int)
            y = s.xy[:, 1].astype(int)
            lab_img[y, x] = 1 if s.kind == "artery" else 2
    if (lab_img > 0).any():
        _, (iy, ix) = ndi.distance_transform_edt(lab_img == 0, return_indices=True)
        near = lab_img[iy, ix]
        art = mask & (near == 1)
        vein = mask & (near == 2)
    else:
        art = np.zeros_like(mask)
        vein = np.zeros_like(mask)
        out.reasons.append("no vessel segment could be classified as artery or vein")
    out.arterial_fractal_dimension = box_counting_dimension(art)
    out.venular_fractal_dimension = box_counting_dimension(vein)
    if not have_disc:
        out.reasons.append("no optic disc: AV ratio and tortuosity (referenced to the disc) not measured")
        return out, art, vein, segs
    a_w, v_w, _ = zone_b_widths(segs, disc_xy, dd_px, maps.darkness, exclude)
    out.n_arteries_zone_b, out.n_veins_zone_b = len(a_w), len(v_w)
    if len(a_w) >= 2 and len(v_w) >= 2:
        out.crae_px = knudtson_equivalent(a_w, KNUDTSON_ARTERY_COEFFICIENT)
        out.crve_px = knudtson_equivalent(v_w, KNUDTSON_VEIN_COEFFICIENT)
        out.av_ratio = out.crae_px / out.crve_px
    else:
        out.reasons.append(f"zone B holds {len(a_w)} arteries and {len(v_w)} veins (need 2 of each) for the AV ratio")
    cx, cy = disc_xy
    for kind, attr in (("artery", "arterial_tortuosity"), ("vein", "venular_tortuosity")):
        chains = []
        for s in segs:
            if s.kind != kind or not (s.width_px >= 0.025 * dd_px):
                continue
            far = np.hypot(s.xy[:, 0] - cx, s.xy[:, 1] - cy) > 0.6 * dd_px
            if far.sum() > 2:
                chains.append(s.xy[far])
        setattr(out, attr, tortuosity_per_dd(chains, dd_px))
    return out, art, vein, segs
