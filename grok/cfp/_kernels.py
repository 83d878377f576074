"""Compiled (numba) pixel loops of the CFP measures: Hessian eigenvalues, ridge/blob measures, block medians.

Each kernel fuses what would be a chain of whole-image numpy operations (and their temporaries) into one
pass over the pixels. They are single-threaded (the speed target is one core); ``cache=True`` keeps the
compiled code on disk so that only the first run after an install pays the compilation.
"""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True, fastmath=True)
def hessian_eigen_fd(s: np.ndarray, scale2: float) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """Eigenvalues (l1 >= l2) of the Hessian of an already Gaussian-smoothed image ``s`` (h, w) by central
    finite differences (edges replicated), each multiplied by ``scale2`` (sigma^2 for scale normalisation).
    Returns two (h, w) float32 arrays."""
    h, w = s.shape
    l1 = np.empty((h, w), np.float32)
    l2 = np.empty((h, w), np.float32)
    for y in range(h):
        ym = max(y - 1, 0)
        yp = min(y + 1, h - 1)
        for x in range(w):
            xm = max(x - 1, 0)
            xp = min(x + 1, w - 1)
            c = s[y, x]
            hxx = s[y, xp] - 2.0 * c + s[y, xm]
            hyy = s[yp, x] - 2.0 * c + s[ym, x]
            hxy = 0.25 * (s[yp, xp] - s[yp, xm] - s[ym, xp] + s[ym, xm])
            tr = hxx + hyy
            d = math.sqrt((hxx - hyy) * (hxx - hyy) + 4.0 * hxy * hxy)
            l1[y, x] = 0.5 * scale2 * (tr + d)
            l2[y, x] = 0.5 * scale2 * (tr - d)
    return l1, l2


@numba.njit(cache=True, fastmath=True)
def ridge_from_eigen(l1: np.ndarray, l2: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """Bright-ridge measure max(0, -l2) * exp(-(l1 / l2)^2 / 0.5) (Frangi's eigenvalue ratio, no structure
    term) of (h, w) eigenvalue maps."""
    h, w = l1.shape
    out = np.empty((h, w), np.float32)
    for y in range(h):
        for x in range(w):
            b = l2[y, x]
            if b >= 0.0:
                out[y, x] = 0.0
            else:
                r = l1[y, x] / b if b < -1e-12 else l1[y, x] / -1e-12
                out[y, x] = -b * math.exp(-2.0 * r * r)
    return out


@numba.njit(cache=True)
def block_median_abs(x: np.ndarray, mask: np.ndarray, b: int, step: int = 2) -> np.ndarray:  # pragma: no cover
    """Median of |x| over the ``mask`` pixels of each b x b block, sampled every ``step`` pixels in both
    directions (a block holds hundreds of samples; the median does not need all of them); NaN for blocks
    without mask pixels. x : (h, w) float; mask : (h, w) bool. Returns (ceil(h / b), ceil(w / b)) float32."""
    h, w = x.shape
    hb = (h + b - 1) // b
    wb = (w + b - 1) // b
    out = np.full((hb, wb), np.nan, np.float32)
    buf = np.empty(b * b, np.float32)
    for i in range(hb):
        for j in range(wb):
            n = 0
            for y in range(i * b, min((i + 1) * b, h), step):
                for xx in range(j * b, min((j + 1) * b, w), step):
                    if mask[y, xx]:
                        buf[n] = abs(x[y, xx])
                        n += 1
            if n > 0:
                out[i, j] = np.median(buf[:n])
    return out


@numba.njit(cache=True, fastmath=True)
def update_best_blob(eig: np.ndarray, factor: float, inv_noise: np.ndarray, sigma: float, best: np.ndarray,
                     best_s: np.ndarray) -> None:  # pragma: no cover - compiled
    """In place: z = max(0, factor * eig) * inv_noise; where z > best, best = z and best_s = sigma.
    All arrays (h, w); ``factor`` carries the blob polarity and the scale's noise spread."""
    h, w = eig.shape
    for y in range(h):
        for x in range(w):
            z = factor * eig[y, x]
            if z > 0.0:
                z *= inv_noise[y, x]
                if z > best[y, x]:
                    best[y, x] = z
                    best_s[y, x] = sigma


@numba.njit(cache=True, fastmath=True)
def block_mean(x: np.ndarray, f: int) -> np.ndarray:  # pragma: no cover - compiled
    """Mean over f x f blocks of a 2-D array (the last partial rows / columns are dropped).
    x : (h, w) float. Returns (h // f, w // f) float32."""
    h, w = x.shape
    hs = h // f
    ws = w // f
    out = np.zeros((hs, ws), np.float32)
    inv = 1.0 / (f * f)
    for y in range(hs * f):
        i = y // f
        for xx in range(ws * f):
            out[i, xx // f] += x[y, xx]
    for i in range(hs):
        for j in range(ws):
            out[i, j] *= inv
    return out


@numba.njit(cache=True, fastmath=True)
def channel_mean_min_max(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # pragma: no cover
    """Per-pixel mean, minimum and maximum over the channels of an (h, w, c) float image, in one pass.
    Returns three (h, w) float32 arrays."""
    h, w, nc = rgb.shape
    mean = np.empty((h, w), np.float32)
    mn = np.empty((h, w), np.float32)
    mx = np.empty((h, w), np.float32)
    for y in range(h):
        for x in range(w):
            a = rgb[y, x, 0]
            s = a
            lo = a
            hi = a
            for c in range(1, nc):
                v = rgb[y, x, c]
                s += v
                lo = min(lo, v)
                hi = max(hi, v)
            mean[y, x] = s / nc
            mn[y, x] = lo
            mx[y, x] = hi
    return mean, mn, mx


@numba.njit(cache=True)
def half_max_widths(prof: np.ndarray, off: np.ndarray, pk: np.ndarray, level: np.ndarray, peak: np.ndarray,
                    base: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """Width (in ``off`` units) of each profile (row of ``prof``, (n, m)) at ``level``: from the peak index
    ``pk`` walk out both ways to the first samples below the level and interpolate the crossings. NaN
    where the peak is not above the base or a side never falls below the level."""
    n, m = prof.shape
    out = np.full(n, np.nan)
    for i in range(n):
        lv = level[i]
        if peak[i] <= base[i]:
            continue
        j = pk[i]
        a = j
        while a > 0 and prof[i, a] >= lv:
            a -= 1
        b = j
        while b < m - 1 and prof[i, b] >= lv:
            b += 1
        if prof[i, a] >= lv or prof[i, b] >= lv:
            continue
        xl = off[a] + (lv - prof[i, a]) / (prof[i, a + 1] - prof[i, a]) * (off[a + 1] - off[a])
        xr = off[b - 1] + (prof[i, b - 1] - lv) / (prof[i, b - 1] - prof[i, b]) * (off[b] - off[b - 1])
        out[i] = xr - xl
    return out
