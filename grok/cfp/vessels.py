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
   the filter's blur), restricted to a band around the ridge mask; thin enclosed holes (the central
   light reflex of wide arterioles) filled.

Artery/vein labels (``classify_av``), tuned for real photographs rather than the phantom's look:

1. per segment, from perpendicular profiles away from the disc, lesions and junctions (``av_features``):
   red and green optical density of the vessel core against the local background, their ratio (the
   oximetry principle: venous blood absorbs red far more than arterial blood; the ratio does not depend
   on calibre or illumination) and the central-reflex strength; a reliability from calibre and length
   (thin vessels lose their colour to blur and JPEG chroma subsampling);
2. a score standardised over the photograph's own wide vessels and a two-class model fitted to it give
   each segment colour log-odds, so that the evidence adapts to camera, exposure and pigmentation; with a
   disc, a smooth trend of the colour across the fundus is taken out first (where it is large), and the
   model is fitted per angular sector around the disc (rotating, overlapping sectors), so that each vessel
   is compared with vessels of its own part of the fundus; opt-in (``AvConfig.colour_model="learned"``),
   those log-odds, the colour measures, calibre, position and neighbourhood contrast then go through
   boosted trees fitted across photographs by self-training (``grok.cfp.av_learned``), whose log-odds are
   the colour evidence;
3. the vessel graph (``vessel_graph``): straight-through continuations and bifurcations share the type,
   the two vessels of a crossing (a 4-way junction, or two nearby 3-way ones) differ, so do the two ends
   of a 2-way junction turning sharply (two touching vessels), and nothing is linked inside the disc, so
   that each vessel leaving the disc is its own tree; each kind of link has the probability measured on
   real photographs (``AvConfig``), and thin vessels, whose colour is washed out, follow their tree;
4. belief propagation over that graph combines a segment's own evidence with its tree's;
5. with a disc, the zone-B vessels are typed against each other (``_retype_zone_b``), and so are the
   vessels of wider rings around the disc (``_ring_priors``); that typing is added to their evidence
   (``ZONE_B_PRIOR``, ``RING_PRIOR_WEIGHT``) before the propagation is run again, so the comparison is
   between vessels of like calibre and background, and each vessel tree takes it along.

Zone-B calibres (``zone_b_widths``): half-maximum widths that keep a central reflex inside the vessel
but stop at an unequal neighbour, one calibre per vessel (pieces joined through junctions or lying side by
side counted once), isolated streaks within the ring ignored, and vessels that ran merged with one of the
other type through zone B measured where they part; the zone-B vessels typed again against each other
(``_retype_zone_b``: the ring's own vessels as the colour reference) before the calibres are summarised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from grok.cfp import av_learned
from grok.cfp._kernels import (
    block_mean,
    hessian_eigen_fd,
    ising_belief_propagation,
    profile_stats,
    ridge_from_eigen,
)
from grok.cfp.av_learned import wquantile as _wquantile
from grok.cfp.formulas import (
    KNUDTSON_ARTERY_COEFFICIENT,
    KNUDTSON_VEIN_COEFFICIENT,
    box_counting_dimension,
    knudtson_equivalent,
    resample_polyline,
    tortuosity_per_dd,
)
from grok.cfp.preprocess import erode, local_scale, relative_channels, upsample
from grok.cfp.vessel_model import predict, vessel_features
from grok.cfp.vessel_net import _resample

#: An isolated piece (free at both ends) counts in zone B only if it reaches within 1.0 DD + this of
#: the disc centre, or ...
ZONE_B_ENTRY_TOLERANCE_DD = 0.05
#: ... beyond this distance (DD) from it; one confined to the ring between is not a vessel.
ZONE_B_EXIT_DD = 2.0
#: Limit of each standardised artery/vein feature (robust z-score) in the colour score.
Z_CLIP = 4.0
#: A segment with more of its colour samples than this next to red-clipped pixels has no red features.
RED_SATURATED_MAX_SHARE = 0.3
#: AV ratios outside this range are not physiological (CRAE above CRVE, or arterioles under 0.4 of the
#: venules): on real photographs they come from swapped or mixed artery/vein labels in zone B, so the
#: ratio is NaN with a reason (issue #14: HRF healthy eyes gave 0.4-1.3 before this guard).
AV_RATIO_PLAUSIBLE = (0.4, 1.0)
#: With a reported mask other than the ridge mask (the vessel network's), only its pixels within this many
#: px of the ridge mask (the vessel graph's vessels, whose colour was measured) are typed artery or vein;
#: None: every pixel takes its nearest labelled centreline's type.
AV_GRAPH_REACH_PX: int | None = 2
#: Hessian scales (px at the 1024-px reference scale) of the vessel (and lesion blob) measures.
VESSEL_SCALES = (1.0, 1.5, 2.3, 3.5, 5.0)
#: Hysteresis thresholds on the ridge z-score, half-maximum border fraction, darkness floors (x noise).
#: 2.5 / 6.0 / 0.5 until issue #14: on real photographs (CHASE_DB1, HRF) that missed most thin vessels
#: (sensitivity 0.43 / 0.68 against the human reference); 2.0 / 4.5 / 0.45 keep fainter ridges joined to
#: clear ones and set the border nearer the observers' (benchmarks/cfp_real.py, docs/cfp.md).
LOW, HIGH, HALF, CORE_K, HALF_K = 2.0, 4.5, 0.45, 1.0, 2.0


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
    border: np.ndarray | None = field(default=None, repr=False)
    """``darkness - HALF x local peak darkness`` (>= 0 inside the half-maximum border), float32 (h, w)."""
    band: np.ndarray | None = field(default=None, repr=False)
    """Where a border may lie: near a ridge, above the darkness floor, bool (h, w)."""
    graph_mask: np.ndarray | None = field(default=None, repr=False)
    """The classical ridge mask (bool (h, w)) the vessel graph, A/V colour and calibres are read from
    when ``mask`` comes from the learned classifier; None: ``mask`` itself."""
    probability: np.ndarray | None = field(default=None, repr=False)
    """Vessel probability of the learned classifier, float32 (h, w) (None with the classical method)."""
    peak: np.ndarray | None = field(default=None, repr=False)
    """Local peak darkness of the nearby ridge (the half-maximum reference), float32 (h, w); 0 where none."""
    green_background: np.ndarray | None = field(default=None, repr=False)
    """The green channel's background (``green / (1 + relative green)``), float32 (h, w): with ``peak``,
    the half-maximum border is found again on an original-resolution green channel (``vessel_mask_at``)."""
    net_probability: np.ndarray | None = field(default=None, repr=False)
    """Vessel probability of the vessel network (``grok.cfp.vessel_net``) on its own grid (calibre-normalised,
    float32); when set, ``mask`` is the network's and ``vessel_mask_at`` resamples this map instead."""
    net_threshold: float = 0.5
    """The network's probability threshold (chosen on its training photographs)."""
    fov: np.ndarray | None = field(default=None, repr=False)
    """The working field-of-view mask (bool (h, w)), set with ``net_probability``."""


def _half(img: np.ndarray) -> np.ndarray:
    """2 x 2 block mean (h // 2, w // 2) of a 2-D float array."""
    return block_mean(np.asarray(img, dtype=np.float32), 2)


def hessian_eigen(img: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Scale-normalised Hessian eigenvalues (l1 >= l2, each sigma^2 x eigenvalue) of a 2-D float image.

    img : (h, w) float. The image is Gaussian-smoothed at ``sigma`` and differentiated by central
    differences (one smoothing instead of three derivative filters); scales of 3 px and more are
    computed on a 2x block-averaged copy and upsampled. Returns (l1, l2), (h, w) float32 each.
    """
    if sigma >= 3.0 and min(img.shape) >= 64:
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
    l1, l2 = hessian_eigen(img, sigma)
    return ridge_from_eigen(l1, l2), np.maximum(-l1, 0), l2


def _robust_scale(x: np.ndarray, mask: np.ndarray) -> float:
    v = x[mask]
    if v.size == 0:
        return 1.0
    med = float(np.median(v))
    mad = float(np.median(np.abs(v - med)))
    return max(1.4826 * mad, 1e-6)


def _vessel_inputs(rgb: np.ndarray, fov_mask: np.ndarray, sc: float, rel: list[np.ndarray]) -> dict:
    """The multi-scale maps both vessel methods start from (see ``segment_vessels``)."""

    d = (-rel[1]).astype(np.float32)
    ds = ndi.gaussian_filter(d, 0.6 * sc)
    hp = d - ndi.gaussian_filter(d, 1.5 * sc)
    inner = erode(fov_mask, max(int(6 * sc), 1))
    noise = _robust_scale(hp, inner)
    zmax = np.zeros_like(d)
    hess, eig_z = [], []
    for s in VESSEL_SCALES:
        sig = s * sc
        l1, l2 = hessian_eigen(ds, sig)
        hess.append((sig, l1, l2))
        ls = local_scale(l2, inner, int(48 * sc))
        eig_z.append((l1 / ls, l2 / ls))
        z = ridge_from_eigen(l1, l2) / ls
        np.maximum(zmax, z, out=zmax)
    zmax[~fov_mask] = 0
    # suppress the FOV rim (a bright-to-dark step) by the relative darkness sign: vessels are darker
    zmax[ds <= 0.5 * noise] = 0
    return {"ds": ds, "hp": hp, "inner": inner, "noise": noise, "zmax": zmax, "hess": hess, "eig_z": eig_z}


#: The reported vessel mask of ``grok.cfp.measure_fundus`` when not told: "net" (``grok.cfp.vessel_net``,
#: the compact U-Net trained on CHASE_DB1 children 01-10) or "classical" (``segment_vessels``).
VESSEL_METHOD = "net"
#: Whether :func:`vessel_maps` uses the learned classifier when not told (see its docstring: no).
LEARNED_BY_DEFAULT = False


def learned_model_available() -> bool:
    """True when the trained weights module is importable (``grok.cfp.vessel_model_weights``)."""
    try:
        from grok.cfp import vessel_model_weights  # noqa: F401
    except ImportError:
        return False
    return True


def segment_vessels(rgb: np.ndarray, fov_mask: np.ndarray, sc: float,
                    rel: list[np.ndarray] | None = None, *, learned: bool | None = None) -> VesselMaps:
    """Vessel mask of a fundus photograph.

    rgb : (h, w, 3) float in [0, 1]; fov_mask : (h, w) bool; sc : length scale (FOV radius / 480 px);
    rel : optional precomputed ``grok.cfp.preprocess.relative_channels``; learned : use the learned
    per-pixel classifier (``grok.cfp.vessel_model``) over the multi-scale features (opt-in, when its
    weights are installed), else (default) the classical ridge hysteresis with half-maximum borders.
    The shipped weights are fitted to CHASE_DB1 alone (the only vessel reference here whose licence
    allows shipping derived weights) and do not carry to another camera: on HRF they score vessel F1
    0.60 against 0.73 for the classical path (``benchmarks/cfp_real.py``), so they are not the default.
    """
    if rel is None:
        rel = relative_channels(rgb, fov_mask, sc)
    if learned is None:
        learned = LEARNED_BY_DEFAULT and learned_model_available()
    inp = _vessel_inputs(rgb, fov_mask, sc, rel)
    ds, hp, noise, zmax, hess = inp["ds"], inp["hp"], inp["noise"], inp["zmax"], inp["hess"]
    from skimage.filters import apply_hysteresis_threshold

    core = apply_hysteresis_threshold(zmax, LOW, HIGH)
    core = _remove_small(core, int(60 * sc * sc) + 8)

    # half-maximum borders: peak darkness within ~ the widest vessel radius of the ridge mask
    peak = ndi.maximum_filter(np.where(core, ds, 0), size=int(9 * sc) | 1)
    band = ndi.binary_dilation(core, iterations=max(int(3 * sc), 1))
    half = band & (ds >= HALF * peak) & (peak > 0) & (ds > HALF_K * noise)
    mask = (core & (ds > CORE_K * noise) & (ds >= HALF * peak)) | half
    mask = ndi.binary_closing(mask, iterations=1) & fov_mask
    mask = fill_reflex_holes(mask, max(round(2.0 * sc), 1))
    mask = _remove_small(mask, int(80 * sc * sc) + 8)
    border = np.where(peak > 0, ds - HALF * peak, -1.0).astype(np.float32)
    band_ok = (band & (peak > 0) & (ds > HALF_K * noise)) | mask
    gbg = np.where(fov_mask, rgb[..., 1] / np.maximum(1.0 + rel[1], 1e-3), 0.0).astype(np.float32)
    if learned:
        prob = predict(vessel_features(ds, inp["eig_z"], zmax, rel, inp["inner"], sc, hp), fov_mask)
        vm = _mask_from_probability(prob, ds, zmax, noise, hess, hp, fov_mask, sc)
        vm.graph_mask = mask
        return vm
    return VesselMaps(mask=mask, darkness=ds, ridge_z=zmax, noise=noise, hessian=hess, highpass=hp,
                      border=border, band=ndi.binary_dilation(band_ok) & ndi.binary_dilation(mask, iterations=2),
                      peak=peak.astype(np.float32), green_background=gbg)


#: Learned classifier: vessel where the probability reaches P_LOW in a component that reaches P_HIGH.
P_LOW, P_HIGH = 0.4, 0.7


def _mask_from_probability(prob, ds, zmax, noise, hess, hp, fov_mask, sc) -> VesselMaps:
    from skimage.filters import apply_hysteresis_threshold

    mask = apply_hysteresis_threshold(prob, P_LOW, P_HIGH) & fov_mask
    mask = fill_reflex_holes(mask, max(round(2.0 * sc), 1))
    mask = _remove_small(mask, int(40 * sc * sc) + 8)
    border = (prob - P_LOW).astype(np.float32)
    band = ndi.binary_dilation(mask, iterations=2)
    return VesselMaps(mask=mask, darkness=ds, ridge_z=zmax, noise=noise, hessian=hess, highpass=hp,
                      border=border, band=band, probability=prob)


def _bilinear_up(a: np.ndarray, H: int, W: int) -> np.ndarray:
    """Bilinear resize of a working-resolution map ``a`` (h, w) to (H, W) (pixel centres mapped back)."""
    h, w = a.shape
    yf = np.clip((np.arange(H) + 0.5) * h / H - 0.5, 0, h - 1)
    xf = np.clip((np.arange(W) + 0.5) * w / W - 0.5, 0, w - 1)
    y0 = np.minimum(yf.astype(int), h - 2)
    x0 = np.minimum(xf.astype(int), w - 2)
    fy = (yf - y0).astype(np.float32)[:, None]
    fx = (xf - x0).astype(np.float32)[None, :]
    top = a[y0][:, x0] * (1 - fx) + a[y0][:, x0 + 1] * fx
    bot = a[y0 + 1][:, x0] * (1 - fx) + a[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bot * fy


#: Gaussian smoothing (original px) of an original-resolution green channel before its half-maximum border
#: is found (``vessel_mask_at``): JPEG and sensor noise, not a vessel scale.
FULL_RES_SMOOTH_PX = 1.0


def vessel_mask_at(vm: VesselMaps, shape: tuple[int, int], green: np.ndarray | None = None) -> np.ndarray:
    """The vessel mask at an original size ``shape`` = (H, W) larger than the working one.

    The half-maximum border is found again at the original resolution, in the working mask's
    neighbourhood (``vm.band``). With ``green`` ((H, W) float in [0, 1], the photograph's own green
    channel) and the classical maps: the relative darkness ``1 - green / background`` of the original
    pixels (smoothed at ``FULL_RES_SMOOTH_PX``; background and local peak darkness interpolated
    bilinearly from the working maps at the band's pixels only) against ``HALF`` x the peak, so borders
    and thin vessels follow the photograph's own resolution rather than the area-downscaled working copy
    (issue #14: HRF 3504 x 2336, vessel F1 0.732 -> 0.736, and faster). Otherwise ``vm.border`` (darkness
    minus half the local peak, or the learned probability minus its threshold) is interpolated
    bilinearly and thresholded at 0 (HRF: F1 +0.01 over nearest-neighbour upsampling). Falls back to
    nearest-neighbour when the maps are missing. With the vessel network's maps (``vm.net_probability``,
    the default path since issue #14's network) its probability is resampled from the network's own grid
    to (H, W) and thresholded, inside the field of view. Returns bool (H, W)."""
    H, W = shape
    h, w = vm.mask.shape
    yi = np.minimum(((np.arange(H) + 0.5) * h / H).astype(int), h - 1)
    xi = np.minimum(((np.arange(W) + 0.5) * w / W).astype(int), w - 1)
    if vm.net_probability is not None and vm.fov is not None:
        p = vm.net_probability
        return (_resample(p, (H, W)) >= vm.net_threshold) & vm.fov[yi[:, None], xi[None, :]]
    near = vm.mask[yi[:, None], xi[None, :]]
    if vm.border is None or vm.band is None or (H, W) == (h, w):
        return near
    band = vm.band[yi[:, None], xi[None, :]]
    if green is not None and vm.peak is not None and vm.green_background is not None and green.shape == (H, W):
        ys, xs = np.nonzero(band)  # only the band's pixels are interpolated (a few % of the frame)
        cy = np.clip((ys + 0.5) * h / H - 0.5, 0, h - 1)
        cx = np.clip((xs + 0.5) * w / W - 0.5, 0, w - 1)
        peak = ndi.map_coordinates(vm.peak, [cy, cx], order=1, mode="nearest")
        bg = ndi.map_coordinates(vm.green_background, [cy, cx], order=1, mode="nearest")
        g = ndi.gaussian_filter(np.asarray(green, np.float32), FULL_RES_SMOOTH_PX, truncate=3.0)[ys, xs]
        out = np.zeros((H, W), bool)
        out[ys, xs] = (peak > 0) & (bg > 1e-3) & (g <= (1.0 - HALF * peak) * bg)
        return out
    return band & (_bilinear_up(vm.border, H, W) >= 0)


def fill_reflex_holes(mask: np.ndarray, max_half_thickness_px: int) -> np.ndarray:
    """Fill thin enclosed holes of a vessel mask: the central light reflex of wide arterioles.

    A strong reflex leaves a narrow lighter line along the middle of a vessel whose darkness falls below
    the half-maximum border, so the mask gets a hole along it and the skeleton runs as two parallel
    ridges (one vessel counted as two thin ones). A hole (a background component not connected to the
    image border) that disappears after ``max_half_thickness_px`` erosion steps is filled; the larger
    holes enclosed by vessel loops and crossings survive the erosion and are kept.
    mask : (h, w) bool. Returns a new (h, w) bool mask.
    """
    bg_lab, n = ndi.label(~mask)
    if n <= 1:
        return mask
    border = np.unique(np.concatenate([bg_lab[0], bg_lab[-1], bg_lab[:, 0], bg_lab[:, -1]]))
    out = mask.copy()
    k = max(int(max_half_thickness_px), 1)
    for lab_id, sl in enumerate(ndi.find_objects(bg_lab), start=1):
        if sl is None or lab_id in border:
            continue
        hole = bg_lab[sl] == lab_id
        if min(hole.shape) > 2 * k + 1 and ndi.binary_erosion(hole, iterations=k).any():
            continue
        out[sl] |= hole
    return out


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
    the darkness profile, central reflex inside the vessel). av_score : > 0 vein-like, < 0 artery-like
    (half the posterior log-odds of "vein" after propagation over the vessel graph; NaN when not
    classified). kind : "artery" | "vein" | "".
    features : the colour features of ``classify_av`` (``av_features``), their reliability and the
    segment's own colour log-odds (``evidence``). tree : id of the vessel tree (segments joined by
    continuation and bifurcation links; -1 alone). vessel : id of the vessel (segments joined straight
    through junctions and crossings; zone-B pieces with the same id are one vessel).
    """

    xy: np.ndarray
    width_px: float = float("nan")
    widths: np.ndarray = field(default_factory=lambda: np.zeros(0))
    av_score: float = float("nan")
    kind: str = ""
    ends: tuple[int, int] = (-1, -1)  # junction-cluster ids at each end (-1: free end)
    features: dict = field(default_factory=dict)
    tree: int = -1
    vessel: int = -1


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


# ------------------------------------------------------------------------------------ perpendicular profiles
def _profile_frames(xy: np.ndarray, step_px: float, smooth_px: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Profile centres (k, 2), unit normals (k, 2) and arc positions (k,) px every ``step_px`` along a
    centreline (xy (N, 2), resampled at 1 px and smoothed at ``smooth_px`` for the direction)."""
    pts = resample_polyline(xy, 1.0)
    if len(pts) < 5:
        return np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0)
    sm = np.column_stack([ndi.gaussian_filter1d(pts[:, 0], smooth_px, mode="nearest"),
                          ndi.gaussian_filter1d(pts[:, 1], smooth_px, mode="nearest")])
    tan = np.gradient(sm, axis=0)
    tan /= np.maximum(np.hypot(tan[:, 0], tan[:, 1]), 1e-9)[:, None]
    idx = np.arange(2, len(pts) - 2, max(int(step_px), 1))
    return pts[idx], np.column_stack([-tan[idx, 1], tan[idx, 0]]), idx.astype(float)


def _sample_profiles(maps: list[np.ndarray | None], centres: np.ndarray, normals: np.ndarray,
                     half_px: float) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """Sample each (h, w) map (None: skipped) along the normals: offsets (m,) px every 0.5 px over
    [-half_px, half_px] and one (k, m) float64 array per map (bilinear, edges replicated)."""
    half = max(math.ceil(half_px), 3)
    off = np.arange(-half, half + 0.01, 0.5)
    X = (centres[:, 0:1] + normals[:, 0:1] * off[None, :]).ravel()
    Y = (centres[:, 1:2] + normals[:, 1:2] * off[None, :]).ravel()
    out: list[np.ndarray | None] = []
    for mp in maps:
        if mp is None:
            out.append(None)
            continue
        v = ndi.map_coordinates(np.asarray(mp, np.float32), [Y, X], order=1, mode="nearest")
        out.append(np.ascontiguousarray(v.reshape(len(centres), len(off)), np.float64))
    return off, out


def profile_widths(darkness: np.ndarray, xy: np.ndarray, max_half_px: float, step_px: float = 2.0,
                   smooth_px: float = 2.0, vessel_mask: np.ndarray | None = None) -> np.ndarray:
    """Calibres (px) along a centreline from the half-maximum width of perpendicular darkness profiles.

    darkness : (h, w) relative darkness (vessels positive). xy : (N, 2) ordered centreline. vessel_mask :
    optional (h, w) bool; its width across the centreline bounds the search for the two side peaks
    (without it a quarter-maximum run of the profile does). A central light reflex (a dip in the middle of
    the profile) stays inside the vessel: each border is found from its own side peak (see
    ``grok.cfp._kernels.profile_stats``). Returns an array of widths, one per profile every ``step_px``,
    NaN where a profile has no clear half-maximum crossing on both sides.
    """
    c, nrm, _ = _profile_frames(xy, step_px, smooth_px)
    if len(c) == 0:
        return np.full(0, np.nan)
    mk = None if vessel_mask is None else vessel_mask.astype(np.float32)
    off, (pd, pm) = _sample_profiles([darkness, mk], c, nrm, max_half_px)
    z = np.zeros_like(pd)
    w, *_ = profile_stats(pd, pm if pm is not None else z, z, z, off, pm is not None)
    return w


# ------------------------------------------------------------------------------------- artery/vein labels
@dataclass(frozen=True)
class AvConfig:
    """Settings of the artery/vein classification (``classify_av``). Lengths in working px (1024-px
    photograph) unless the name ends in ``_dd`` (disc diameters)."""

    disc_radius_dd: float = 0.55
    """Junctions closer than this to the disc centre link nothing (the vessel trees are separate at the
    disc, where the skeleton of converging vessels is a tangle), and colour is not sampled there (the disc
    background distorts relative darkness)."""
    weight_ratio: float = 1.0
    """Weight of the red/green optical-density ratio (oximetry principle: deoxygenated venous blood absorbs
    red light much more than arterial blood, while both absorb green about equally; the ratio does not
    depend on calibre or illumination)."""
    weight_red: float = 0.5
    """Weight of the red optical density of the vessel core (veins darker in red)."""
    weight_reflex: float = 0.5
    """Weight of the central reflex strength (a light stripe along the middle: arterioles)."""
    reliable_width_px: tuple[float, float] = (2.0, 5.0)
    """Colour reliability ramps from 0 at the first calibre to 1 at the second (px at the 480-px reference
    FOV radius, scaled with the eye's size): the colour of thin vessels is washed out by blur and JPEG
    chroma subsampling (their darkening turns grey: on ``skimage.data.retina()`` the red/green density
    ratio of 3-5 px vessels sits at or above that of the widest veins whatever their type)."""
    thin_colour_px: float = 5.0
    """Segments narrower than this (px at the reference scale) have their colour evidence scaled by how
    well thin vessels' colour agrees with the graph *in this photograph* (``thin_colour_trust``): on HRF
    (issue #14; Hemelings et al. labels) the colour score of segments 3-5 px wide separated the classes
    with an AUC of only 0.80 (>= 5 px: 0.96) while the junction links into them were 0.8-0.99 right, so
    their tree should type them; on the phantom, whose thin vessels keep their colour, they keep it. A
    fixed down-weighting instead (reliability ramp 3 -> 8 px) raised HRF's pixel A/V accuracy more (0.828)
    but took the phantom's from 0.97 to 0.89, so it was not kept."""
    thin_trust_min_links: int = 10
    """Fewest thin-to-wide links with confident wide colour needed to measure the agreement (else full trust)."""
    calibrate_links: bool = True
    """Cap each kind of link's probability at how often confident colour agrees with it in this photograph
    (``calibrate_links``): the probabilities above were measured on one camera's skeletons, and a skeleton
    that misreads more junctions (or the phantom's trees, which cross vessels of their own type) must not be
    trusted as much."""
    calibration_confidence: float = 3.0
    """Colour log-odds (absolute) both ends of a link need to count in that calibration."""
    calibration_min_links: int = 8
    """Fewest such links of one kind for its cap (else the probability above stands)."""
    reliable_length_px: float = 24.0
    """Colour reliability is also scaled by min(1, sampled length / this) (px at the reference scale)."""
    detrend_min_spread: float | None = 0.5
    """With a disc, the ratio and red density are first freed of a smooth trend across the fundus (a
    quadratic surface in position, ``_detrend``: illumination and pigmentation change the vessels' colour
    contrast from one side of the photograph to the other) when the trend's spread is at least this
    multiple of the spread about it; None: never. Issue #14 (replays of the A/V step with the sectors of
    that round and the ring typing; docs/cfp.md): HRF pixel A/V accuracy (45 photos, Hemelings et al.
    labels, used only to score) 0.819 without -> 0.859 always / 0.858 at 0.35 / 0.847 at 0.5 / 0.831 at
    0.75, the phantom's 0.969 -> 0.950 / 0.958 / 0.964 / 0.969: its colour has no such trend, and a surface
    fitted there follows where its arterioles and venules happen to lie. 0.5 is the smallest setting tried
    that kept the phantom within 0.01 (with the final sector model: HRF 0.851, phantom 0.964)."""
    colour_sectors: int = 4
    """With a disc, the two-class model of the colour score is fitted per angular sector around the disc
    (``_sector_log_odds``; after Vazquez et al. 2010's rotating quadrants), so that each vessel is compared
    with its own part of the fundus; 1: the whole photograph."""
    sector_rotations: int = 4
    """The sectors are rotated this many times by 1 / this of a sector; a segment's log-odds is the mean
    over the sectors holding it."""
    sector_min_segments: int = 12
    """Fewest reliable segments (``min_width_px`` wide, with colour) for a sector's own colour model;
    a sector with fewer keeps the photograph-wide log-odds."""
    p_continuation: float = 0.9
    """Probability that two segments meeting straight through a junction are the same vessel type. The
    link probabilities are those of the junction *as read from the skeleton*, which also merges touching
    vessels and misreads crossings. They were 0.75 / 0.6 / 0.6 (continuation / bifurcation and side
    branch / crossing) until issue #14 measured them: on the 15 healthy HRF eyes (Hemelings et al.
    labels, links whose two segments are >= 0.8 one type) a straight continuation joined one type 0.99
    (2-way junction) / 0.97 (through a side branch) / 0.93 (through a crossing) of the time, the three
    segments of a bifurcation 0.92, a side branch its through vessel 0.81, a crossing's two vessels
    differed 0.93, straight pairs at complex junctions 0.73, and the two ends of a 2-way junction that
    turns sharply were one type only 0.23 (``p_sharp_turn``); the 30 DR and glaucoma eyes gave the same
    within 0.03. The probabilities are those rounded down to 0.9 / 0.75 / 0.7 (a skeleton of a smaller
    photograph misreads more junctions: with 0.95 / 0.75 / 0.75, before the zone-B typing existed, the graph
    overrode clear colour on `skimage.data.retina()` downscaled to 565 px), the side branch to 0.7 rather
    than 0.8 (more right on the healthy eyes: 0.813 against 0.805 of the centreline, an ad-hoc replay of
    the A/V step; the 45 eyes were scored together, the choice made on the healthy ones)."""
    p_bifurcation: float = 0.9
    """Probability that the segments of a bifurcation (3 ends, no straight pair) share the type."""
    p_side_branch: float = 0.7
    """Probability that a side branch (the third end of a 3-way junction with a straight pair) shares the
    type of the vessel going through (a crossing that lost one arm looks the same)."""
    p_crossing: float = 0.9
    """Probability that the two vessels of a crossing differ in type (arterioles cross venules)."""
    p_sharp_turn: float = 0.75
    """Probability that the two ends of a 2-way junction turning by more than twice ``straight_max_deg``
    differ in type: a vessel does not turn that sharply, two touching vessels meet that way."""
    p_complex: float = 0.7
    """Probability that a straight pair at a junction of 4 ends that is not a crossing, or of 5 or more,
    shares the type."""
    straight_max_deg: float = 35.0
    """Largest change of direction (degrees) for a straight-through continuation."""
    crossing_gap_widths: float = 1.6
    """Junctions closer than this many calibres of their widest vessel are one node (a crossing drawn by
    the skeleton as two nearby 3-way junctions)."""
    evidence_clip: float = 10.0
    """Limit of a segment's own colour log-odds (one segment can never outvote everything)."""
    bp_iterations: int = 40
    """Belief-propagation sweeps over the vessel graph."""
    colour_model: str = "em"
    """Where each segment's colour log-odds come from: "em", the per-photograph two-class model (the
    default), or "learned", the boosted trees of ``grok.cfp.av_learned`` (fitted across the CHASE_DB1
    photographs by self-training, without human A/V labels, and on phantom photographs with their true
    labels; they read the per-photograph model's log-odds among their inputs). Without the trees' weights
    file, "learned" falls back to "em". Opt-in for now: on HRF it types 0.857 of the labelled pixels right
    against 0.848 (a development figure, docs/cfp.md), but it moves the engine's healthy arteriolar fractal
    dimension (1.221 -> 1.206 on the 15 healthy HRF photographs), so making it the default means
    recalibrating the knowledge base's engine-scale vessel ranges (``benchmarks/cfp_calibration.py``,
    ``tests/test_kb_calibration.py``). The docstring of ``scripts/train_av_colour.py`` gives the figures."""
    learned_weights: str | None = None
    """The trees' weights file (.npz) for ``colour_model="learned"``; None: the shipped
    ``grok/cfp/av_colour_weights.npz``."""
    keep_learned_inputs: bool = False
    """Compute the learned model's per-segment inputs (``features["learned_inputs"]``) with "em" too, for
    ``scripts/train_av_colour.py``, which fits the trees to them; otherwise they are made only for "learned"."""

    def __post_init__(self) -> None:
        for name in ("disc_radius_dd", "reliable_length_px", "evidence_clip", "straight_max_deg",
                     "crossing_gap_widths", "thin_colour_px", "calibration_confidence"):
            if not getattr(self, name) > 0:
                raise ValueError(f"AvConfig.{name}={getattr(self, name)!r}: must be > 0")
        for name in ("weight_ratio", "weight_red", "weight_reflex"):
            if getattr(self, name) < 0:
                raise ValueError(f"AvConfig.{name}={getattr(self, name)!r}: must be >= 0 (0 switches it off)")
        for name in ("p_continuation", "p_bifurcation", "p_side_branch", "p_crossing", "p_sharp_turn", "p_complex"):
            v = getattr(self, name)
            if not 0.5 <= v < 1.0:
                raise ValueError(f"AvConfig.{name}={v!r}: must be in [0.5, 1) (0.5 = no link)")
        lo, hi = self.reliable_width_px
        if not 0 <= lo < hi:
            raise ValueError(f"AvConfig.reliable_width_px={self.reliable_width_px!r}: need 0 <= low < high px")
        if self.detrend_min_spread is not None and not self.detrend_min_spread >= 0:
            raise ValueError(f"AvConfig.detrend_min_spread={self.detrend_min_spread!r}: must be >= 0 or None (never)")
        for name in ("colour_sectors", "sector_rotations", "sector_min_segments"):
            if getattr(self, name) < 1:
                raise ValueError(f"AvConfig.{name}={getattr(self, name)!r}: must be >= 1")
        if self.colour_model not in ("learned", "em"):
            raise ValueError(f"AvConfig.colour_model={self.colour_model!r}: use 'learned' or 'em'")
        if self.bp_iterations < 1:
            raise ValueError(f"AvConfig.bp_iterations={self.bp_iterations!r}: must be >= 1")


@dataclass
class Junction:
    """A node of the vessel graph: one skeleton junction cluster, or several merged (a crossing).

    xy : (x, y) px. ends : [(segment index, 0 start / 1 end of its ``xy``)]. kind : "disc" (inside the
    disc: no links), "continuation" (2 ends), "bifurcation" (3 ends, no straight pair), "branching"
    (3 ends with a straight pair: a side branch, or a crossing that lost one arm), "crossing" (4 ends in
    two straight pairs), "complex" (other; only straight pairs are linked).
    """

    xy: tuple[float, float]
    ends: list[tuple[int, int]]
    kind: str = ""


@dataclass
class AvLink:
    """A relation between two segments at a junction: ``same`` (probability that they share the type)
    or ``differ`` (that they differ), with the reason: continuation, bifurcation or crossing."""

    i: int
    j: int
    relation: str
    reason: str
    prob: float
    junction: int


@dataclass
class AvGraph:
    """Result of ``classify_av``: the junctions, the links used and the per-class colour model."""

    junctions: list[Junction] = field(default_factory=list)
    links: list[AvLink] = field(default_factory=list)
    model: dict = field(default_factory=dict)


def _end_direction(xy: np.ndarray, which: int, width_px: float) -> np.ndarray:
    """Unit vector pointing from a junction into the segment, from its first few px (skipping the 2 px
    where the skeleton bends into the junction)."""
    pts = xy if which == 0 else xy[::-1]
    n = len(pts)
    k1 = min(2, n - 2)
    k2 = min(k1 + max(6, int(2 * (width_px if np.isfinite(width_px) else 3.0))), n - 1)
    v = pts[k2] - pts[k1]
    nv = math.hypot(v[0], v[1])
    return v / nv if nv > 1e-9 else np.array([1.0, 0.0])


def _bend_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Change of direction (degrees) going straight through: 0 when ``a`` and ``b`` point opposite ways."""
    c = float(np.clip(-(a[0] * b[0] + a[1] * b[1]), -1.0, 1.0))
    return math.degrees(math.acos(c))


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.p = list(range(n))

    def find(self, a: int) -> int:
        while self.p[a] != a:
            self.p[a] = self.p[self.p[a]]
            a = self.p[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.p[max(ra, rb)] = min(ra, rb)


def vessel_graph(segments: list[Segment], disc_xy: tuple[float, float] | None = None, dd_px: float = float("nan"),
                 config: AvConfig | None = None) -> tuple[list[Junction], list[AvLink]]:
    """Junctions of the skeleton and the artery/vein relations they imply.

    Segments meet at junction clusters (``Segment.ends``). Junctions closer than ``crossing_gap_widths``
    calibres (joined by a short segment or not) are merged: a crossing often shows as two nearby 3-way
    junctions. At each junction the ends are paired by direction: two ends whose directions differ from
    straight by less than ``straight_max_deg`` are one vessel going through (``same``, continuation).
    4 ends in two straight pairs: a crossing (the pairs ``differ``). 3 ends: a bifurcation or side branch
    (all ``same``, bifurcation). Junctions inside the disc link nothing.
    Returns (junctions, links).
    """
    cfg = config or AvConfig()
    ids: dict[int, list[tuple[int, int]]] = {}
    for i, s in enumerate(segments):
        for e, jid in enumerate(s.ends):
            if jid > 0:
                ids.setdefault(jid, []).append((i, e))
    keys = sorted(ids)
    if not keys:
        return [], []
    pos = np.array([np.mean([segments[i].xy[0 if e == 0 else -1] for i, e in ids[k]], axis=0) for k in keys])
    wid = np.array([np.nanmax([segments[i].width_px for i, _ in ids[k]] + [2.0]) for k in keys])
    kidx = {k: n for n, k in enumerate(keys)}
    uf = _UnionFind(len(keys))
    gap = cfg.crossing_gap_widths * wid
    # nearby junctions (a crossing drawn as two 3-way junctions, or a short connecting piece)
    d = np.hypot(pos[:, None, 0] - pos[None, :, 0], pos[:, None, 1] - pos[None, :, 1])
    near = d <= np.maximum(gap[:, None], gap[None, :])
    internal: set[int] = set()
    for i, s in enumerate(segments):
        a, b = s.ends
        if a > 0 and b > 0 and a != b and len(s.xy) <= max(gap[kidx[a]], gap[kidx[b]]) + 2:
            uf.union(kidx[a], kidx[b])
            internal.add(i)
    for a, b in zip(*np.nonzero(np.triu(near, 1))):
        uf.union(int(a), int(b))
    groups: dict[int, list[int]] = {}
    for n in range(len(keys)):
        groups.setdefault(uf.find(n), []).append(n)
    have_disc = disc_xy is not None and np.isfinite(dd_px) and dd_px > 0
    junctions: list[Junction] = []
    links: list[AvLink] = []
    p_c, p_b, p_x = cfg.p_continuation, cfg.p_bifurcation, cfg.p_crossing
    p_s, p_k = cfg.p_side_branch, cfg.p_complex
    for members in groups.values():
        ends = [(i, e) for n in members for (i, e) in ids[keys[n]] if i not in internal]
        inner = sorted({i for n in members for (i, _) in ids[keys[n]] if i in internal})
        xy = pos[members].mean(axis=0)
        jn = Junction(xy=(float(xy[0]), float(xy[1])), ends=ends)
        jid = len(junctions)
        junctions.append(jn)
        if have_disc and math.hypot(xy[0] - disc_xy[0], xy[1] - disc_xy[1]) < cfg.disc_radius_dd * dd_px:
            jn.kind = "disc"
            continue
        segs_at = [i for i, _ in ends]
        # a connecting piece inside a merged junction shares the type of the straighter through-vessel;
        # it is too short to matter: tie it weakly to every end
        for i in inner:
            for j in segs_at:
                links.append(AvLink(i, j, "same", "inside a junction", 0.6, jid))
        dirs = [_end_direction(segments[i].xy, e, segments[i].width_px) for i, e in ends]
        m = len(ends)
        if m < 2:
            jn.kind = "end"
            continue
        bend = np.full((m, m), 180.0)
        for a in range(m):
            for b in range(a + 1, m):
                bend[a, b] = bend[b, a] = _bend_deg(dirs[a], dirs[b])
        if m == 2:
            jn.kind = "continuation"
            if bend[0, 1] <= 2 * cfg.straight_max_deg:
                links.append(AvLink(segs_at[0], segs_at[1], "same", "continuation", p_c, jid))
            else:  # a sharp turn: two touching vessels, not one
                links.append(AvLink(segs_at[0], segs_at[1], "differ", "sharp turn", cfg.p_sharp_turn, jid))
        elif m == 3:
            a, b = min(((0, 1), (0, 2), (1, 2)), key=lambda ab: bend[ab])
            if bend[a, b] <= cfg.straight_max_deg:
                jn.kind = "branching"
                c = 3 - a - b
                links.append(AvLink(segs_at[a], segs_at[b], "same", "continuation", p_c, jid))
                links.append(AvLink(segs_at[c], segs_at[a], "same", "side branch", p_s, jid))
                links.append(AvLink(segs_at[c], segs_at[b], "same", "side branch", p_s, jid))
            else:
                jn.kind = "bifurcation"
                for x, y in ((0, 1), (0, 2), (1, 2)):
                    links.append(AvLink(segs_at[x], segs_at[y], "same", "bifurcation", p_b, jid))
        elif m == 4:
            pairings = (((0, 1), (2, 3)), ((0, 2), (1, 3)), ((0, 3), (1, 2)))
            (a, b), (c, e) = min(pairings, key=lambda pr: bend[pr[0]] + bend[pr[1]])
            if bend[a, b] <= cfg.straight_max_deg and bend[c, e] <= cfg.straight_max_deg:
                jn.kind = "crossing"
                links.append(AvLink(segs_at[a], segs_at[b], "same", "continuation", p_c, jid))
                links.append(AvLink(segs_at[c], segs_at[e], "same", "continuation", p_c, jid))
                for x in (a, b):
                    for y in (c, e):
                        links.append(AvLink(segs_at[x], segs_at[y], "differ", "crossing", p_x, jid))
            else:
                jn.kind = "complex"
                for x, y in ((a, b), (c, e)):
                    if bend[x, y] <= cfg.straight_max_deg:
                        links.append(AvLink(segs_at[x], segs_at[y], "same", "continuation", p_k, jid))
        else:
            jn.kind = "complex"
            used: set[int] = set()
            order = sorted((bend[x, y], x, y) for x in range(m) for y in range(x + 1, m))
            for bd, x, y in order:
                if bd > cfg.straight_max_deg:
                    break
                if x in used or y in used:
                    continue
                used.update((x, y))
                links.append(AvLink(segs_at[x], segs_at[y], "same", "continuation", p_k, jid))
    links = [lk for lk in links if lk.i != lk.j]
    return junctions, links


def _two_class_model(x: np.ndarray, w: np.ndarray) -> dict:
    """Two Gaussian classes with a shared variance fitted by EM to the 1-D score ``x`` (weights ``w``),
    started at the weighted 25th / 75th percentiles; the higher mean is the vein class. Returns
    {"mean_artery", "mean_vein", "sd", "p_vein"} (p_vein kept within [0.25, 0.75])."""
    mu0, mu1 = _wquantile(x, w, 0.25), _wquantile(x, w, 0.75)
    sd = max(0.5 * (mu1 - mu0), 1e-3)
    pv = 0.5
    for _ in range(60):
        l0 = (1 - pv) * np.exp(-0.5 * ((x - mu0) / sd) ** 2)
        l1 = pv * np.exp(-0.5 * ((x - mu1) / sd) ** 2)
        r = l1 / np.maximum(l0 + l1, 1e-300)
        w1, w0 = w * r, w * (1 - r)
        if w1.sum() <= 0 or w0.sum() <= 0:
            break
        mu0, mu1 = float((w0 * x).sum() / w0.sum()), float((w1 * x).sum() / w1.sum())
        var = float((w0 * (x - mu0) ** 2).sum() + (w1 * (x - mu1) ** 2).sum()) / float(w.sum())
        sd = max(math.sqrt(var), 0.05 * abs(mu1 - mu0), 1e-3)
        pv = float(np.clip(w1.sum() / w.sum(), 0.25, 0.75))
    if mu1 < mu0:
        mu0, mu1, pv = mu1, mu0, 1 - pv
    return {"mean_artery": mu0, "mean_vein": mu1, "sd": sd, "p_vein": pv}


def _standard_score(cols, ref: np.ndarray, wts: np.ndarray) -> np.ndarray:
    """Colour score: the weighted sum of each feature's robust z-score (weighted median and MAD over the
    reference segments ``ref`` (bool (n,)), clipped at +-``Z_CLIP``). ``cols`` = ((values (n,), weight,
    sign), ...); a NaN value adds 0."""
    score = np.zeros(len(wts))
    for col, wgt, sign in cols:
        if wgt == 0:
            continue
        med = _wquantile(col[ref], wts[ref], 0.5)
        mad = _wquantile(np.abs(col[ref] - med), wts[ref], 0.5)
        scale = 1.4826 * mad if mad > 1e-9 else (float(np.std(col[ref])) + 1e-9)
        zc = np.clip((col - med) / scale, -Z_CLIP, Z_CLIP)  # one odd segment must not stretch the model
        score += sign * wgt * np.where(np.isfinite(zc), zc, 0.0)
    return score


def _model_log_odds(model: dict, score: np.ndarray) -> np.ndarray:
    """Log-odds of "vein" of each score under a two-class model (``_two_class_model``)."""
    mu0, mu1, sd, pv = model["mean_artery"], model["mean_vein"], model["sd"], model["p_vein"]
    return (mu1 - mu0) / sd**2 * (score - 0.5 * (mu0 + mu1)) + math.log(pv / (1 - pv))


def _sector_log_odds(score: np.ndarray, ok: np.ndarray, wts: np.ndarray, angle: np.ndarray, llr: np.ndarray,
                     cfg: AvConfig) -> np.ndarray:
    """Colour log-odds with a two-class model of the score per angular sector around the disc.

    ``cfg.colour_sectors`` sectors of equal angle, the set rotated ``cfg.sector_rotations`` times by a
    fraction of a sector (so that every segment lies in that many overlapping sectors, none at an edge of
    all of them); in each sector with at least ``cfg.sector_min_segments`` reliable segments (``ok``) the
    two classes' means, spread and share are fitted to that sector's own scores (``_two_class_model``),
    elsewhere the photograph-wide log-odds ``llr`` stand. Returns the mean over the rotations. ``score``
    (n,): the photograph-wide colour score; ``angle`` (n,) rad: each segment's direction from the disc centre."""
    width = 2 * math.pi / cfg.colour_sectors
    total = np.zeros_like(llr)
    for r in range(cfg.sector_rotations):
        sector = np.floor(np.mod(angle - r * width / cfg.sector_rotations, 2 * math.pi) / width).astype(int)
        l_r = llr.copy()
        for k in range(cfg.colour_sectors):
            m = sector == k
            mk = m & ok
            if int(mk.sum()) >= cfg.sector_min_segments:
                l_r[m] = _model_log_odds(_two_class_model(score[mk], wts[mk]), score[m])
        total += l_r
    return total / cfg.sector_rotations


def _detrend(col: np.ndarray, xy: np.ndarray, disc_xy: tuple[float, float], dd_px: float, ok: np.ndarray,
             wts: np.ndarray, min_spread: float) -> np.ndarray:
    """``col`` (n,) less a smooth trend across the fundus, when the trend is large enough to matter.

    The trend is a quadratic surface in (x, y) / DD around the disc, fitted to the reliable segments
    ``ok`` (weights ``wts``; iteratively reweighted with Tukey's biweight, so that the two classes' spread
    is treated as noise); it is subtracted (the median level kept) only when its spread over those segments
    (MAD of the fitted values) is at least ``min_spread`` x the spread of the residuals; otherwise, and with
    fewer than 20 such segments, ``col`` is returned unchanged. ``xy`` (n, 2): each segment's mean position."""
    use = ok & np.isfinite(col)
    if use.sum() < 20:
        return col
    u, v = (xy[:, 0] - disc_xy[0]) / dd_px, (xy[:, 1] - disc_xy[1]) / dd_px
    X = np.stack([np.ones_like(u), u, v, u * u, u * v, v * v], axis=1)
    w = wts[use].copy()
    beta = np.zeros(X.shape[1])
    for _ in range(5):
        sw = np.sqrt(w)
        beta = np.linalg.lstsq(X[use] * sw[:, None], col[use] * sw, rcond=None)[0]
        res = col[use] - X[use] @ beta
        c = 4.685 * 1.4826 * max(float(np.median(np.abs(res))), 1e-9)
        w = wts[use] * np.clip(1 - (res / c) ** 2, 0, None) ** 2
    fit = X @ beta
    f_u = fit[use]
    res = col[use] - f_u
    spread = float(np.median(np.abs(f_u - np.median(f_u))))
    if spread < min_spread * max(float(np.median(np.abs(res - np.median(res)))), 1e-9):
        return col
    return col - fit + float(np.median(f_u))


def av_features(segments: list[Segment], rel: list[np.ndarray], darkness: np.ndarray | None = None,
                vessel_mask: np.ndarray | None = None, disc_xy: tuple[float, float] | None = None,
                dd_px: float = float("nan"), exclude: np.ndarray | None = None, max_half_px: float = 12.0,
                config: AvConfig | None = None, length_scale: float = 1.0,
                red_saturated: np.ndarray | None = None) -> None:
    """Measure each segment's calibre and colour features from perpendicular profiles (in place).

    rel : the relative channels (``grok.cfp.preprocess.relative_channels``: I / background - 1, (h, w)
    each); darkness : (h, w) smoothed relative green darkness (calibre; default -rel[1]); vessel_mask :
    (h, w) bool (bounds the reflex-tolerant peak search). Sets ``width_px``/``widths`` and
    ``features`` = {
      "od_red", "od_green": median optical density -ln(I / background) of the vessel core (the inner 60 %
          of its width, at least 1 px) in red and green: the contrast against the local background, so
          uneven illumination and pigmentation cancel;
      "od_ratio": od_red / od_green (the oximetry ratio: venous blood absorbs red far more than arterial
          blood; NaN when the green density is too small to divide by);
      "reflex": median central-reflex strength (1 - centre / lower side peak of the green density;
          profiles >= 3 px wide; 0 without a reflex);
      "n": profiles used, "reliability": 0..1 (width ramp ``reliable_width_px`` x length ramp, both
          multiplied by ``length_scale`` = FOV radius / 480 px, so that they follow the eye's size)}.
    Colour is sampled away from the disc (``disc_radius_dd``), off ``exclude`` (h, w) bool (lesions) and
    more than one calibre from the segment's junction ends (crossing vessels mix their colours there).
    ``red_saturated`` (h, w) bool: where the red channel is clipped at full scale (or next to such
    pixels) the red density of a vessel against its background is not measurable; a segment with more
    than ``RED_SATURATED_MAX_SHARE`` of its samples there gets NaN red features (its label then comes
    from the graph, and an image saturated in red throughout gets no A/V labels at all).
    """
    cfg = config or AvConfig()
    ls = max(float(length_scale), 1e-3)
    dk = -rel[1] if darkness is None else darkness
    frames = [_profile_frames(s.xy, 2.0, 2.0) for s in segments]
    counts = [len(f[0]) for f in frames]
    if sum(counts) == 0:
        return
    C = np.concatenate([f[0] for f in frames if len(f[0])])
    N = np.concatenate([f[1] for f in frames if len(f[1])])
    mk = None if vessel_mask is None else vessel_mask.astype(np.float32)
    off, (pd, pm, pr, pg) = _sample_profiles([dk, mk, rel[0], rel[1]], C, N, max_half_px)
    pr = -np.log(np.maximum(1.0 + pr, 0.02))
    pg = -np.log(np.maximum(1.0 + pg, 0.02))
    z = np.zeros_like(pd)
    width, mwidth, core_r, core_g, reflex = profile_stats(pd, pm if pm is not None else z, pr, pg, off, pm is not None)
    h, w_img = dk.shape
    ok_pt = np.ones(len(C), bool)
    if disc_xy is not None and np.isfinite(dd_px) and dd_px > 0:
        ok_pt &= np.hypot(C[:, 0] - disc_xy[0], C[:, 1] - disc_xy[1]) >= cfg.disc_radius_dd * dd_px
    if exclude is not None:
        xi = np.clip(np.round(C[:, 0]).astype(int), 0, w_img - 1)
        yi = np.clip(np.round(C[:, 1]).astype(int), 0, h - 1)
        ok_pt &= ~exclude[yi, xi]
    lo, hi = cfg.reliable_width_px
    k0 = 0
    for s, f, n in zip(segments, frames, counts):
        sl = slice(k0, k0 + n)
        k0 += n
        wv = width[sl]
        s.widths = wv[np.isfinite(wv)]
        s.width_px = float(np.median(s.widths)) if s.widths.size else float("nan")
        if n == 0:
            s.features = {"od_red": float("nan"), "od_green": float("nan"), "od_ratio": float("nan"),
                          "reflex": float("nan"), "n": 0, "reliability": 0.0}
            continue
        wref = s.width_px if np.isfinite(s.width_px) else float(np.nanmedian(mwidth[sl]))
        trim = max(wref if np.isfinite(wref) else 3.0, 3.0)
        arc = f[2]
        use = ok_pt[sl].copy()
        if s.ends[0] > 0:
            use &= arc >= trim
        if s.ends[1] > 0:
            use &= arc <= arc[-1] + 2 - trim
        rel_w = 1.0
        if use.sum() < 3:  # all on the disc, a lesion or a junction: use what there is, trusted less
            use = np.ones(n, bool)
            rel_w = 0.25
        odr = float(np.median(core_r[sl][use]))
        odg = float(np.median(core_g[sl][use]))
        if red_saturated is not None:
            cu = C[sl][use]
            xi = np.clip(np.round(cu[:, 0]).astype(int), 0, w_img - 1)
            yi = np.clip(np.round(cu[:, 1]).astype(int), 0, h - 1)
            if float(red_saturated[yi, xi].mean()) > RED_SATURATED_MAX_SHARE:
                odr = float("nan")
        rf = reflex[sl][use]
        rf = rf[np.isfinite(rf)]
        ratio = odr / odg if odg > 0.02 and np.isfinite(odr) else float("nan")
        wr = float(np.clip((wref - lo * ls) / ((hi - lo) * ls), 0.0, 1.0)) if np.isfinite(wref) else 0.0
        lr = min(1.0, 2.0 * int(use.sum()) / (cfg.reliable_length_px * ls))
        s.features = {"od_red": odr, "od_green": odg, "od_ratio": ratio,
                      "reflex": float(np.median(rf)) if rf.size else 0.0, "n": int(use.sum()),
                      "reliability": rel_w * wr * lr}


def calibrate_links(links: list[AvLink], llr: np.ndarray, confidence: float = 3.0,
                    min_links: int = 8) -> tuple[list[AvLink], dict]:
    """Each kind of link (relation and reason) with its probability capped at how often it agrees with
    confident colour in this photograph.

    Among the links whose two segments both have colour log-odds ``llr`` of at least ``confidence``
    (absolute), the share that the colours agree with (same sign for "same", opposite for "differ"),
    smoothed as (agree + 1) / (n + 2), caps that kind's probability when ``min_links`` such links exist; a
    kind agreeing no better than chance (<= 0.5) links nothing. Confident colour is itself wrong now and
    then, so the cap sits under the link's true reliability: it only matters where the links are much
    worse than the probabilities assume. Returns (links, {kind: (agree, n)})."""
    conf = np.abs(llr) >= confidence
    stats: dict[tuple[str, str], list[int]] = {}
    for lk in links:
        if conf[lk.i] and conf[lk.j]:
            agree = (llr[lk.i] > 0) == (llr[lk.j] > 0)
            if lk.relation == "differ":
                agree = not agree
            st = stats.setdefault((lk.relation, lk.reason), [0, 0])
            st[0] += int(agree)
            st[1] += 1
    out = []
    for lk in links:
        st = stats.get((lk.relation, lk.reason))
        if st and st[1] >= min_links:
            a = (st[0] + 1) / (st[1] + 2)
            p = float(min(lk.prob, max(a, 0.5)))
            if p <= 0.5:
                continue
            lk = AvLink(lk.i, lk.j, lk.relation, lk.reason, p, lk.junction)
        out.append(lk)
    return out, {f"{k[0]} {k[1]}": (v[0], v[1]) for k, v in stats.items()}


def thin_colour_trust(llr: np.ndarray, thin: np.ndarray, links: list[AvLink], min_links: int = 10) -> float:
    """How far thin vessels' own colour can be trusted in this photograph, 0.25..1, from the graph.

    Over the links between a thin segment and a wide one whose colour is confident (|log-odds| >= 1), and
    over the links between two such wide segments, count how often the two colours agree with the link
    (same sign for "same", opposite for "differ"). Colour that knew the type would agree as often as the
    links are right, colour that knows nothing half the time, so trust = (agreement of thin - 0.5) /
    (agreement of wide - 0.5), clipped to 0.25..1 (1 with fewer than ``min_links`` links of either kind).
    ``llr`` (n,) colour log-odds of "vein" (0: no colour), ``thin`` (n,) bool."""
    conf = (np.abs(llr) >= 1.0) & ~thin
    counts = {"thin": [0, 0], "wide": [0, 0]}
    for lk in links:
        i, j = lk.i, lk.j
        if conf[j] and thin[i]:
            i, j = j, i
        if not conf[i] or llr[j] == 0 or not (thin[j] or conf[j]):
            continue
        agree = (llr[i] > 0) == (llr[j] > 0)
        if lk.relation == "differ":
            agree = not agree
        c = counts["thin" if thin[j] else "wide"]
        c[0] += int(agree)
        c[1] += 1
    (at, nt), (aw, nw) = counts["thin"], counts["wide"]
    if nt < min_links or nw < min_links:
        return 1.0
    ref = max(aw / nw - 0.5, 0.05)
    return float(np.clip((at / nt - 0.5) / ref, 0.25, 1.0))


def classify_av(segments: list[Segment], rel: list[np.ndarray], min_width_px: float,
                disc_xy: tuple[float, float] | None = None, dd_px: float = float("nan"),
                config: AvConfig | None = None, darkness: np.ndarray | None = None,
                vessel_mask: np.ndarray | None = None, exclude: np.ndarray | None = None,
                length_scale: float = 1.0, prior: dict[int, float] | None = None) -> AvGraph:
    """Label segments artery/vein in place: colour evidence per segment, propagated over the vessel graph.

    1. Features (``av_features``, measured here unless every segment already has them): red and green
       optical density of the vessel core, their ratio, the central-reflex strength.
    2. Score = weight_ratio x z(od_ratio) + weight_red x z(od_red) - weight_reflex x z(reflex), each z a
       robust standardisation (weighted median and MAD, clipped at +-``Z_CLIP``) over the reliable
       segments (>= ``min_width_px`` wide) of this photograph, so that the score adapts to the camera,
       exposure and pigmentation. With a disc, od_ratio and od_red are first freed of a smooth trend
       across the fundus where it is large (``_detrend``, ``AvConfig.detrend_min_spread``; the values
       used are kept as ``features["od_ratio_local"]`` / ``["od_red_local"]`` for the ring typing).
    3. A two-class model of the score (shared-variance Gaussians fitted by EM, reliability x length
       weighted) turns each score into colour log-odds of "vein" (``features["evidence"]``), clipped and
       scaled by the segment's reliability: thin and short segments say little by themselves. With a
       disc, the model is fitted per angular sector around it (``_sector_log_odds``,
       ``AvConfig.colour_sectors``), the log-odds averaged over the overlapping sectors holding a segment.
       With ``AvConfig.colour_model="learned"`` (opt-in) and the trees' weights installed, those
       log-odds, the colour measures, calibre, position and neighbourhood contrast
       (``grok.cfp.av_learned.FEATURES``, kept as ``features["learned_inputs"]``) go through the boosted
       trees fitted by self-training, whose log-odds of vein take their place.
    4. Relations from the graph (``vessel_graph``): continuation, bifurcation and side branch (same type),
       crossing and sharp turn (different types), none inside the disc, so that every vessel leaving the
       disc is its own tree.
       Each kind of link is capped at how often confident colour agrees with it in this photograph
       (``calibrate_links``), and the colour of segments narrower than ``thin_colour_px`` is trusted as far
       as it agrees with the graph as well as wide vessels' colour does (``thin_colour_trust``).
    5. Loopy belief propagation combines each segment's evidence with its neighbours' (exact on a tree):
       ``av_score`` = half the posterior log-odds of vein, kind = its sign.
    ``tree`` and ``vessel`` ids are set from the same-type links that the labels kept (all / continuations
    only), so each tree has one type. ``prior``: {segment index: log-odds of "vein"} added to those
    segments' own evidence (``measure_vessels`` gives the zone-B typing back this way).
    Returns the ``AvGraph`` (junctions, links, colour model) for inspection.
    """
    cfg = config or AvConfig()
    out = AvGraph()
    if not segments:
        return out
    if any(not s.features for s in segments):
        av_features(segments, rel, darkness, vessel_mask, disc_xy, dd_px, exclude,
                    max_half_px=(0.08 * dd_px + 4) if np.isfinite(dd_px) else 12.0, config=cfg,
                    length_scale=length_scale)
    F = np.array([[s.features["od_red"], s.features["od_ratio"], s.features["reflex"], s.features["reliability"],
                   s.width_px, s.features["n"]] for s in segments], dtype=float)
    odr, ratio, refl, relia, wd, npts = F.T
    ok = np.isfinite(odr) & np.isfinite(ratio) & np.isfinite(wd) & (wd >= min_width_px) & (relia > 0)
    if ok.sum() < 4:
        return out
    wts = relia * np.maximum(npts, 1)
    have_disc = disc_xy is not None and np.isfinite(dd_px) and dd_px > 0
    mid = np.array([sg.xy.mean(axis=0) for sg in segments], float)
    if have_disc and cfg.detrend_min_spread is not None:
        ratio, odr = (_detrend(c, mid, disc_xy, dd_px, ok, wts, cfg.detrend_min_spread) for c in (ratio, odr))
    for sg, a, b in zip(segments, ratio, odr):
        sg.features["od_ratio_local"], sg.features["od_red_local"] = float(a), float(b)
    cols = ((ratio, cfg.weight_ratio, 1.0), (odr, cfg.weight_red, 1.0), (refl, cfg.weight_reflex, -1.0))
    score = _standard_score(cols, ok, wts)
    model = _two_class_model(score[ok], wts[ok])
    llr = _model_log_odds(model, score)
    if have_disc and cfg.colour_sectors > 1:
        llr = _sector_log_odds(score, ok, wts, np.arctan2(mid[:, 1] - disc_xy[1], mid[:, 0] - disc_xy[0]), llr, cfg)
    mu0, mu1, sd = model["mean_artery"], model["mean_vein"], model["sd"]
    # the learned colour model's inputs, kept on each segment (features["learned_inputs"]); with "em" only when
    # asked for (keep_learned_inputs: scripts/train_av_colour.py fits the trees to them)
    if cfg.colour_model == "learned" or cfg.keep_learned_inputs:
        og = np.array([sg.features.get("od_green", np.nan) for sg in segments], float)
        dd_unit = dd_px if have_disc else min_width_px / 0.02  # measure_vessels passes 0.02 x its DD estimate
        X = av_learned.segment_features(score, ratio, odr, refl, og, llr, wd, relia, mid, ok, wts,
                                        disc_xy if have_disc else None, dd_unit)
        for sg, row in zip(segments, X):
            sg.features["learned_inputs"] = row
        trees = av_learned.load(cfg.learned_weights) if cfg.colour_model == "learned" else None
        if trees is not None:
            llr = av_learned.predict_log_odds(trees, X)
    llr = np.clip(llr, -cfg.evidence_clip, cfg.evidence_clip)
    has = np.isfinite(odr) & np.isfinite(ratio)
    llr[~has] = 0.0
    evidence = llr * np.where(has, relia, 0.0)
    if prior:  # extra log-odds of "vein" per segment index (the zone-B typing, see measure_vessels)
        for i, v in prior.items():
            evidence[i] += v
            has[i] = True
    model.update(separation=float((mu1 - mu0) / sd), n_segments=int(ok.sum()))
    out.model = model
    junctions, links = vessel_graph(segments, disc_xy, dd_px, cfg)
    out.junctions, out.links = junctions, links
    own = llr * np.where(np.isfinite(odr) & np.isfinite(ratio), 1.0, 0.0)
    if cfg.calibrate_links:
        links, model["link_agreement"] = calibrate_links(links, own, cfg.calibration_confidence,
                                                         cfg.calibration_min_links)
        out.links = links
    thin = has & np.isfinite(wd) & (wd < cfg.thin_colour_px * max(float(length_scale), 1e-3))
    trust = thin_colour_trust(own, thin, links, cfg.thin_trust_min_links)
    evidence[thin] *= trust
    model["thin_colour_trust"] = trust
    n = len(segments)
    if links:
        src, dst, tj = [], [], []
        for lk in links:
            j = 0.5 * math.log(lk.prob / (1 - lk.prob)) * (1 if lk.relation == "same" else -1)
            src += [lk.i, lk.j]
            dst += [lk.j, lk.i]
            tj += [math.tanh(j)] * 2
        src_a = np.asarray(src, np.int64)
        rev = np.arange(len(src)) ^ 1

        belief = ising_belief_propagation(0.5 * evidence, src_a, np.asarray(dst, np.int64), rev.astype(np.int64),
                                          np.asarray(tj, float), cfg.bp_iterations, 0.5)
    else:
        belief = 0.5 * evidence
    for i, s in enumerate(segments):
        s.features["evidence"] = float(evidence[i])
        s.features["score"] = float(score[i])
        b = float(belief[i]) if abs(belief[i]) > 1e-9 else 1e-3 * float(llr[i])
        if not has[i] and abs(b) < 1e-9:
            s.kind, s.av_score = "", float("nan")
            continue
        s.av_score = b
        s.kind = "vein" if b > 0 else "artery"
    # ids: trees (same-type links whose ends got the same label: a tree has one type) and vessels
    # (continuations only)
    uf_t, uf_v = _UnionFind(n), _UnionFind(n)
    for lk in links:
        if lk.relation == "same" and segments[lk.i].kind == segments[lk.j].kind:
            uf_t.union(lk.i, lk.j)
            if lk.reason == "continuation":
                uf_v.union(lk.i, lk.j)
    for i, s in enumerate(segments):
        s.tree, s.vessel = uf_t.find(i), uf_v.find(i)
    return out


# ------------------------------------------------------------------------------------------------ zone B
def zone_b_widths(segments: list[Segment], disc_xy: tuple[float, float], dd_px: float,
                  darkness: np.ndarray, exclude: np.ndarray | None = None,
                  vessel_mask: np.ndarray | None = None,
                  recover_merged: bool = True, retype: bool = True) -> tuple[list[float], list[float], list[dict]]:
    """Calibres (px) of arteries and veins in zone B (1.0 to 1.5 DD from the disc centre).

    Calibre of a piece = median reflex-tolerant half-maximum width (``profile_widths``) of its zone-B
    profiles. An isolated piece (no junction at either end) counts only if it reaches inside the inner
    circle (1.0 DD + ``ZONE_B_ENTRY_TOLERANCE_DD``) or beyond ``ZONE_B_EXIT_DD``: vessels run from the
    disc to the periphery, while an undetected flame haemorrhage (a short wide dark streak) or a stray
    fragment lies within the ring. One calibre per vessel: pieces with the same ``Segment.vessel`` id (joined straight through
    junctions) are one vessel, and so are pieces of the same type whose zone-B positions lie within a
    vessel width of each other; the longest piece counts. ``exclude`` (h, w) bool: centreline points there
    are not measured (haemorrhages and cotton-wool spots, which the vessel mask takes in or which hide
    vessels). ``vessel_mask`` (h, w) bool bounds the reflex-tolerant peak search. Returns (artery_widths,
    vein_widths, records) with records [{"kind", "width_px", "angle_rad", "xy", "n", "vessel", "segment",
    "tree"}].
    """
    cx, cy = disc_xy
    # a vessel measured in zone B runs from the disc to the periphery; an isolated piece (no junction at
    # either end, no link) confined to the ring and just beyond is a flame haemorrhage or a fragment
    recs = []
    for si, s in enumerate(segments):
        if s.kind not in ("artery", "vein") or len(s.xy) == 0:
            continue
        r = np.hypot(s.xy[:, 0] - cx, s.xy[:, 1] - cy) / dd_px
        if (s.ends[0] <= 0 and s.ends[1] <= 0 and float(r.min()) > 1.0 + ZONE_B_ENTRY_TOLERANCE_DD
                and float(r.max()) < ZONE_B_EXIT_DD):
            continue
        inz = (r >= 1.0) & (r <= 1.5)
        if exclude is not None:
            xi = np.clip(s.xy[:, 0].astype(int), 0, exclude.shape[1] - 1)
            yi = np.clip(s.xy[:, 1].astype(int), 0, exclude.shape[0] - 1)
            inz &= ~exclude[yi, xi]
        if inz.sum() < max(0.15 * dd_px, 5):
            continue
        w = profile_widths(darkness, s.xy[inz], max_half_px=0.08 * dd_px + 4, vessel_mask=vessel_mask)
        w = w[np.isfinite(w)]
        if w.size < 3:
            continue
        mid = s.xy[inz].mean(axis=0)
        recs.append({"kind": s.kind, "width_px": float(np.median(w)), "n": int(inz.sum()), "vessel": int(s.vessel),
                     "angle_rad": float(math.atan2(mid[1] - cy, mid[0] - cx)), "xy": [float(mid[0]), float(mid[1])],
                     "segment": si, "tree": int(s.tree)})
    kept = _dedup_zone_b(recs, dd_px)
    if retype:
        kept = _dedup_zone_b(_retype_zone_b(kept, segments), dd_px)
    if recover_merged:
        kept += _merged_companions(segments, kept, disc_xy, dd_px, darkness, vessel_mask)
    a = [d["width_px"] for d in kept if d["kind"] == "artery"]
    v = [d["width_px"] for d in kept if d["kind"] == "vein"]
    return a, v, kept


#: Log-odds of "vein" per unit of zone-B score (``_retype_zone_b``, clipped at +-2) added to a zone-B
#: segment's own colour evidence before the graph propagation is run again (``measure_vessels``), so the
#: ring's typing carries out along each vessel tree (0: off). 3 was chosen on 9 HRF photos (02/06/13 of
#: each group): pixel A/V accuracy 0.689 (off) -> 0.732 (1) -> 0.753 (3) -> 0.751 (6).
ZONE_B_PRIOR = 3.0
#: Rings (DD from the disc centre) beyond zone B whose vessels are typed against each other in the same
#: way (``_ring_priors``), and the log-odds per unit of their score (x the segment's colour reliability).
#: The photograph-wide colour model compares a thin peripheral vessel with the wide ones at the disc;
#: within a ring, vessels of like calibre and background are compared. Chosen on the same 9 HRF photos:
#: pixel A/V accuracy 0.753 (zone B only) -> 0.788 (rings 1.5-2.5-4 DD, weight 1) -> 0.817 (and 4 DD
#: outwards, weight 2); weight 4 or six narrower rings 0.819 / 0.820. With the measured link probabilities
#: of ``AvConfig`` (issue #14) weight 4 (was 2): pixel A/V accuracy of the 15 healthy HRF eyes 0.822 ->
#: 0.827 (ad-hoc replay of the A/V step, all 45 scored together, chosen on the healthy; the 30 others
#: 0.806 -> 0.814); on 4 phantoms the weight changed nothing (0.971 either way).
RING_PRIORS: tuple[tuple[float, float], ...] = ((1.5, 2.5), (2.5, 4.0), (4.0, math.inf))
RING_PRIOR_WEIGHT = 4.0


def _robust_z(x: np.ndarray) -> np.ndarray:
    """(x - median) / (1.4826 x MAD) (the standard deviation when the MAD is 0)."""
    med = float(np.median(x))
    mad = float(np.median(np.abs(x - med)))
    return (x - med) / (1.4826 * mad if mad > 1e-9 else float(np.std(x)) + 1e-9)


def _colour_score(ratio: np.ndarray, red: np.ndarray) -> np.ndarray:
    """Vein-likeness of a set of vessels against each other: z(red/green density ratio) + ``ZONE_B_RED_WEIGHT``
    x z(red density) (> 0: vein)."""
    return _robust_z(ratio) + ZONE_B_RED_WEIGHT * _robust_z(red)


def _ring_priors(segs: list[Segment], disc_xy: tuple[float, float], dd_px: float,
                 min_width_px: float) -> dict[int, float]:
    """{segment index: log-odds of "vein"} from typing the vessels of each ring of ``RING_PRIORS`` against
    each other (``_colour_score`` of the detrended features ``od_ratio_local`` / ``od_red_local`` that
    ``classify_av`` left, else the raw ones, over the ring's segments at least ``min_width_px`` wide with colour,
    clipped at +-2, x ``RING_PRIOR_WEIGHT`` x the segment's reliability); a ring with fewer than
    ``ZONE_B_MIN_TYPED`` such segments gives nothing. A segment belongs to the ring of its median distance."""
    out: dict[int, float] = {}
    if RING_PRIOR_WEIGHT <= 0 or not segs:
        return out
    cx, cy = disc_xy
    rad = np.array([float(np.median(np.hypot(s.xy[:, 0] - cx, s.xy[:, 1] - cy))) / dd_px for s in segs])
    ratio = np.array([s.features.get("od_ratio_local", s.features.get("od_ratio", np.nan)) for s in segs], float)
    red = np.array([s.features.get("od_red_local", s.features.get("od_red", np.nan)) for s in segs], float)
    relia = np.array([s.features.get("reliability", 0.0) for s in segs], float)
    wd = np.array([s.width_px for s in segs], float)
    ok = np.isfinite(ratio) & np.isfinite(red) & (wd >= min_width_px) & (relia > 0)
    for r0, r1 in RING_PRIORS:
        idx = np.nonzero(ok & (rad >= r0) & (rad < r1))[0]
        if idx.size < ZONE_B_MIN_TYPED:
            continue
        score = _colour_score(ratio[idx], red[idx])
        for i, v in zip(idx, score):
            out[int(i)] = RING_PRIOR_WEIGHT * float(np.clip(v, -2, 2)) * float(relia[i])
    return out


#: Zone-B typing (``_retype_zone_b``): weight of the red optical density beside the red/green density ratio.
ZONE_B_RED_WEIGHT = 0.5
#: Fewest zone-B vessels with colour for typing them among themselves.
ZONE_B_MIN_TYPED = 4


def _dedup_zone_b(recs: list[dict], dd_px: float) -> list[dict]:
    """One record per vessel: pieces of the same type with the same ``vessel`` id, or lying within a
    vessel width of each other along the ring (0.5 DD at most apart), are one vessel; the longest counts."""
    kept: list[dict] = []
    for d in sorted(recs, key=lambda d: -d["n"]):
        dup = False
        for k in kept:
            if k["kind"] != d["kind"]:
                continue
            if d["vessel"] >= 0 and k["vessel"] == d["vessel"]:
                dup = True
                break
            dist = math.hypot(k["xy"][0] - d["xy"][0], k["xy"][1] - d["xy"][1])
            ang = abs((k["angle_rad"] - d["angle_rad"] + math.pi) % (2 * math.pi) - math.pi)
            if ang * 1.25 * dd_px < 1.5 * max(k["width_px"], d["width_px"]) and dist < 0.5 * dd_px:
                dup = True
                break
        if not dup:
            kept.append(d)
    return kept


def _retype_zone_b(recs: list[dict], segments: list[Segment]) -> list[dict]:
    """Type the zone-B vessels against each other rather than against the whole photograph.

    Around the disc the background, the illumination and the vessel calibres differ from the periphery,
    and the photograph-wide colour model plus the graph (``classify_av``) typed only about 0.7 of HRF's
    zone-B vessels right (issue #14; 45 photos, Hemelings et al. labels). Within the ring itself, a vessel
    is a vein when z(red/green optical-density ratio) + ``ZONE_B_RED_WEIGHT`` x z(red optical density) > 0,
    each z a robust standardisation (median, MAD) over this ring's vessels: the oximetry principle, as in
    ``classify_av``, but with the ring's own arterioles and venules as the reference (0.80-0.85 of zone-B
    vessels typed right on the same photos; no weights fitted, the red weight is ``AvConfig.weight_red``).
    Vessels without colour (NaN densities: on the disc, red clipped) are left out, since nothing types
    them. With fewer than ``ZONE_B_MIN_TYPED`` coloured vessels the graph's labels are kept. ``recs`` as
    built by ``zone_b_widths`` (a "segment" index each); returns new records ("kind" replaced,
    "kind_graph" the previous one).
    """
    ratio = np.array([segments[d["segment"]].features.get("od_ratio", np.nan) for d in recs], float)
    red = np.array([segments[d["segment"]].features.get("od_red", np.nan) for d in recs], float)
    ok = np.isfinite(ratio) & np.isfinite(red)
    if int(ok.sum()) < ZONE_B_MIN_TYPED:
        return recs

    score = _colour_score(ratio[ok], red[ok])
    out = []
    for d, sc in zip([d for d, o in zip(recs, ok) if o], score):
        out.append(dict(d, kind="vein" if sc > 0 else "artery", kind_graph=d["kind"], zone_b_score=float(sc)))
    return out


def _merged_companions(segments: list[Segment], kept: list[dict], disc_xy: tuple[float, float], dd_px: float,
                       darkness: np.ndarray, vessel_mask: np.ndarray | None) -> list[dict]:
    """Vessels that ran through zone B merged with a vessel of the other type, measured where they part.

    Graders measure a vessel that overlaps another in zone B at the nearest place where it is distinct.
    A confidently labelled piece (|av_score| >= 1) that starts 1.3-2.0 DD from the disc centre, within
    1.5 calibres of a zone-B vessel of the other type (the merged trunk), with no zone-B vessel of its
    own type within 0.4 DD along the ring (else it is a branch of one already counted), is added with
    the calibre of its first 0.3 DD. Returns the added records ("merged_with": the trunk's index).
    """
    cx, cy = disc_xy
    added: list[dict] = []
    for si, s in enumerate(segments):
        if s.kind not in ("artery", "vein") or len(s.xy) < 8 or not abs(s.av_score) >= 1.0:
            continue
        r = np.hypot(s.xy[:, 0] - cx, s.xy[:, 1] - cy) / dd_px
        if not 1.3 <= float(r.min()) <= ZONE_B_EXIT_DD:
            continue
        pts = s.xy if r[0] <= r[-1] else s.xy[::-1]
        end = pts[0]
        ang = math.atan2(end[1] - cy, end[0] - cx)
        w_s = s.width_px if np.isfinite(s.width_px) else 3.0
        same_near = any(d["kind"] == s.kind and
                        abs((d["angle_rad"] - ang + math.pi) % (2 * math.pi) - math.pi) * 1.25 < 0.4
                        for d in kept + added)
        if same_near:
            continue
        partner = None
        for k, d in enumerate(kept):
            if d["kind"] == s.kind:
                continue
            t = segments[d["segment"]]
            if float(np.min(np.hypot(t.xy[:, 0] - end[0], t.xy[:, 1] - end[1]))) <= 1.5 * max(w_s, d["width_px"]) + 2.0:
                partner = k
                break
        if partner is None:
            continue
        n = max(int(0.3 * dd_px), 8)
        w = profile_widths(darkness, pts[:n], max_half_px=0.08 * dd_px + 4, vessel_mask=vessel_mask)
        w = w[np.isfinite(w)]
        if w.size < 3:
            continue
        mid = pts[:n].mean(axis=0)
        added.append({"kind": s.kind, "width_px": float(np.median(w)), "n": int(min(n, len(pts))),
                      "vessel": int(s.vessel), "angle_rad": float(math.atan2(mid[1] - cy, mid[0] - cx)),
                      "xy": [float(mid[0]), float(mid[1])], "segment": si, "tree": int(s.tree),
                      "merged_with": partner})
    return added


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
                    av_config: AvConfig | None = None, red_saturated: np.ndarray | None = None,
                    ) -> tuple[VesselMeasures, np.ndarray, np.ndarray, list[Segment]]:
    """All vessel measures from a segmentation. Returns (measures, artery_mask, vein_mask, segments).

    exclude : optional (h, w) bool, areas not used for zone-B calibres or colour (detected haemorrhages
    and cotton-wool spots). av_config : artery/vein settings (``AvConfig``; defaults when None).
    red_saturated : optional (h, w) bool, red channel clipped (see ``av_features``).

    Without a disc (``disc_xy`` None or ``dd_px`` NaN) the disc-referenced measures (AV ratio in zone B,
    tortuosity per DD) are NaN with a reason; density and fractal dimensions are still given. With a
    disc the zone-B typing is given back to the graph as evidence (``ZONE_B_PRIOR``).
    """
    out = VesselMeasures()
    mask = maps.mask
    out.vessel_density = float(mask[fov_mask].mean()) if fov_mask.any() else float("nan")
    # the vessel graph, the colour profiles and the zone-B calibres are read from the ridge mask (its
    # connectivity and half-maximum borders are what the A/V rules and calibres were built on); the
    # artery/vein masks, density and fractal dimensions use the vessel mask itself
    gmask = maps.graph_mask if maps.graph_mask is not None else mask
    segs, _, _ = skeleton_segments(gmask)
    if exclude is not None and exclude.any():
        # segments lying mostly on a haemorrhage or cotton-wool spot are not vessels (or not visible ones)
        def on_lesion(sg: Segment) -> bool:
            xi = np.clip(sg.xy[:, 0].astype(int), 0, exclude.shape[1] - 1)
            yi = np.clip(sg.xy[:, 1].astype(int), 0, exclude.shape[0] - 1)
            return float(exclude[yi, xi].mean()) >= 0.5

        segs = [sg for sg in segs if not on_lesion(sg)]
    have_disc = disc_xy is not None and np.isfinite(dd_px) and dd_px > 0
    dd_eff = dd_px if have_disc else 0.27 * math.sqrt(fov_mask.sum() / math.pi)
    av_features(segs, rel, maps.darkness, gmask, disc_xy if have_disc else None, dd_eff if have_disc else float("nan"),
                exclude, max_half_px=0.08 * dd_eff + 4, config=av_config, length_scale=sc,
                red_saturated=red_saturated)
    classify_av(segs, rel, min_width_px=0.02 * dd_eff, disc_xy=disc_xy if have_disc else None,
                dd_px=dd_px if have_disc else float("nan"), config=av_config, length_scale=sc)
    if have_disc and ZONE_B_PRIOR > 0:
        _, _, zrecs = zone_b_widths(segs, disc_xy, dd_px, maps.darkness, exclude, vessel_mask=gmask,
                                    recover_merged=False)
        prior = {d["segment"]: ZONE_B_PRIOR * float(np.clip(d["zone_b_score"], -2, 2)) for d in zrecs if "zone_b_score" in d}
        for i, v in _ring_priors(segs, disc_xy, dd_px, 0.02 * dd_eff).items():
            prior[i] = prior.get(i, 0.0) + v
        if prior:
            classify_av(segs, rel, min_width_px=0.02 * dd_eff, disc_xy=disc_xy, dd_px=dd_px, config=av_config,
                        prior=prior, length_scale=sc)
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
        typed = mask
        if AV_GRAPH_REACH_PX is not None and maps.graph_mask is not None:
            # a vessel the graph does not hold (thin ones the network adds) has no colour evidence of its own
            typed = mask & ndi.binary_dilation(gmask, iterations=AV_GRAPH_REACH_PX)
        art = typed & (near == 1)
        vein = typed & (near == 2)
    else:
        art = np.zeros_like(mask)
        vein = np.zeros_like(mask)
        out.reasons.append("no vessel segment could be classified as artery or vein")
    out.arterial_fractal_dimension = box_counting_dimension(art)
    out.venular_fractal_dimension = box_counting_dimension(vein)
    if not have_disc:
        out.reasons.append("no optic disc: AV ratio and tortuosity (referenced to the disc) not measured")
        return out, art, vein, segs
    a_w, v_w, _ = zone_b_widths(segs, disc_xy, dd_px, maps.darkness, exclude, vessel_mask=gmask)
    out.n_arteries_zone_b, out.n_veins_zone_b = len(a_w), len(v_w)
    if len(a_w) >= 2 and len(v_w) >= 2:
        out.crae_px = knudtson_equivalent(a_w, KNUDTSON_ARTERY_COEFFICIENT)
        out.crve_px = knudtson_equivalent(v_w, KNUDTSON_VEIN_COEFFICIENT)
        avr = out.crae_px / out.crve_px
        if AV_RATIO_PLAUSIBLE[0] <= avr <= AV_RATIO_PLAUSIBLE[1]:
            out.av_ratio = avr
        else:
            out.reasons.append(
                f"AV ratio {avr:.2f} outside {AV_RATIO_PLAUSIBLE[0]}-{AV_RATIO_PLAUSIBLE[1]}: the artery/vein labels in "
                "zone B are too weak to trust (arteries wider than veins, or thin branches taken for the arteries); "
                "not given")
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
