"""Shared vessel formulas: Knudtson CRAE/CRVE, curvature tortuosity, box-counting fractal dimension.

Pure functions with no image processing, used both by the measurement code (on detected vessels) and by
the phantom (on the vessels it draws), so that a phantom's ground truth and a measurement are the same
quantity computed from different inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

#: Knudtson et al. (2003) revised branching coefficients: arterioles 0.88, venules 0.95.
KNUDTSON_ARTERY_COEFFICIENT = 0.88
KNUDTSON_VEIN_COEFFICIENT = 0.95

#: How many of the largest vessels in zone B enter the Knudtson summary.
KNUDTSON_N_LARGEST = 6


def knudtson_equivalent(widths: Sequence[float], coefficient: float, n_largest: int = KNUDTSON_N_LARGEST) -> float:
    """Central retinal equivalent (CRAE or CRVE) by Knudtson's revised iterative pairing.

    Parameters
    ----------
    widths : sequence of float
        Vessel calibres (any length unit; the result has the same unit), one per vessel crossing zone B.
    coefficient : float
        0.88 for arterioles (CRAE) or 0.95 for venules (CRVE).
    n_largest : int
        Only the ``n_largest`` widest vessels are used (6 in the revised formula).

    Returns
    -------
    float
        The summary calibre; NaN when ``widths`` holds no finite positive value.

    Each round pairs the largest remaining width with the smallest, combines each pair as
    ``coefficient * sqrt(w1**2 + w2**2)``, and carries an unpaired middle width to the next round
    unchanged, until one value is left.
    """
    w = np.asarray([float(x) for x in widths if np.isfinite(x) and x > 0], dtype=float)
    if w.size == 0:
        return float("nan")
    w = np.sort(w)[::-1][:n_largest]
    vals = list(w)
    while len(vals) > 1:
        vals.sort(reverse=True)
        n = len(vals)
        nxt = [coefficient * math.hypot(vals[i], vals[n - 1 - i]) for i in range(n // 2)]
        if n % 2 == 1:
            nxt.append(vals[n // 2])
        vals = nxt
    return float(vals[0])


def av_ratio_knudtson(artery_widths: Sequence[float], vein_widths: Sequence[float]) -> float:
    """Arteriolar-to-venular ratio CRAE / CRVE (dimensionless); NaN when either side has no vessel."""
    crae = knudtson_equivalent(artery_widths, KNUDTSON_ARTERY_COEFFICIENT)
    crve = knudtson_equivalent(vein_widths, KNUDTSON_VEIN_COEFFICIENT)
    if not (np.isfinite(crae) and np.isfinite(crve)) or crve <= 0:
        return float("nan")
    return crae / crve


def resample_polyline(points: np.ndarray, step_px: float = 1.0) -> np.ndarray:
    """Resample a polyline at a uniform arc-length step.

    points : (N, 2) ndarray of (x, y) in pixels. Returns (M, 2); fewer than 2 points are returned unchanged.
    """
    pts = np.asarray(points, dtype=float)
    if len(pts) < 2:
        return pts
    seg = np.hypot(*np.diff(pts, axis=0).T)
    keep = np.concatenate([[True], seg > 1e-9])
    pts = pts[keep]
    if len(pts) < 2:
        return pts
    s = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(pts, axis=0).T))])
    n = max(int(s[-1] / step_px) + 1, 2)
    t = np.linspace(0.0, s[-1], n)
    return np.column_stack([np.interp(t, s, pts[:, 0]), np.interp(t, s, pts[:, 1])])


def curvature_turning(points: np.ndarray, smoothing_px: float) -> tuple[float, float]:
    """Total absolute turning angle (rad) and arc length (px) of a smoothed centreline.

    points : (N, 2) ndarray of (x, y) in pixels along one vessel segment, in order.
    smoothing_px : Gaussian smoothing of the resampled centreline (sigma, px) that removes the pixel
        staircase of a skeleton before angles are taken.

    The ends (one sigma each) are left out of both totals, where smoothing is one-sided.
    Returns (0.0, 0.0) for a segment too short to measure.
    """
    pts = resample_polyline(points, 1.0)
    trim = int(math.ceil(smoothing_px))
    if len(pts) < 2 * trim + 4:
        return 0.0, 0.0
    if smoothing_px > 0:
        pts = np.column_stack(
            [ndi.gaussian_filter1d(pts[:, 0], smoothing_px, mode="nearest"),
             ndi.gaussian_filter1d(pts[:, 1], smoothing_px, mode="nearest")]
        )
    pts = pts[trim : len(pts) - trim]
    d = np.diff(pts, axis=0)
    length = float(np.hypot(d[:, 0], d[:, 1]).sum())
    heading = np.unwrap(np.arctan2(d[:, 1], d[:, 0]))
    turning = float(np.abs(np.diff(heading)).sum())
    return turning, length


def tortuosity_per_dd(
    segments: Sequence[np.ndarray], disc_diameter_px: float, *, min_length_dd: float = 0.5, smoothing_dd: float = 0.05
) -> float:
    """Length-weighted mean absolute curvature of vessel centrelines, in radians per disc diameter.

    segments : sequence of (N, 2) ndarrays (x, y) in pixels, one per vessel segment between branch points.
    disc_diameter_px : the image's disc diameter (px), which makes the figure independent of resolution.
    min_length_dd : segments shorter than this (in disc diameters) are ignored.
    smoothing_dd : centreline smoothing sigma in disc diameters.

    Definition: sum of absolute turning angles over all segments divided by their summed length, times
    the disc diameter (the curvature-integral family of Hart et al., 1999). A straight vessel scores 0;
    a vessel arching a quarter circle over 3 DD scores about 0.5. NaN when nothing is long enough.
    """
    if not np.isfinite(disc_diameter_px) or disc_diameter_px <= 0:
        return float("nan")
    sm = smoothing_dd * disc_diameter_px
    tot_turn = 0.0
    tot_len = 0.0
    for seg in segments:
        seg = np.asarray(seg, dtype=float)
        if len(seg) < 2:
            continue
        approx_len = float(np.hypot(*np.diff(seg, axis=0).T).sum())
        if approx_len < min_length_dd * disc_diameter_px:
            continue
        turn, length = curvature_turning(seg, sm)
        tot_turn += turn
        tot_len += length
    if tot_len <= 0:
        return float("nan")
    return tot_turn / tot_len * disc_diameter_px


def box_counting_dimension(mask: np.ndarray, min_box_px: int = 2, max_box_frac: float = 0.125) -> float:
    """Box-counting (Minkowski-Bouligand) fractal dimension of a binary pattern.

    mask : (M, N) bool ndarray (a vessel mask or skeleton).
    Box sizes are powers of two from ``min_box_px`` up to ``max_box_frac`` of the shorter image side;
    the dimension is the least-squares slope of log N(s) against log(1/s). NaN when the mask is empty or
    fewer than three box sizes fit.
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2 or not m.any():
        return float("nan")
    side = min(m.shape)
    sizes = []
    s = max(int(min_box_px), 1)
    while s <= side * max_box_frac:
        sizes.append(s)
        s *= 2
    if len(sizes) < 3:
        return float("nan")
    counts = []
    for s in sizes:
        h = -(-m.shape[0] // s) * s
        w = -(-m.shape[1] // s) * s
        pad = np.zeros((h, w), dtype=bool)
        pad[: m.shape[0], : m.shape[1]] = m
        blocks = pad.reshape(h // s, s, w // s, s).any(axis=(1, 3))
        counts.append(int(blocks.sum()))
    x = np.log(1.0 / np.asarray(sizes, dtype=float))
    y = np.log(np.asarray(counts, dtype=float))
    slope = np.polyfit(x, y, 1)[0]
    return float(slope)
