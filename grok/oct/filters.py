"""Filters down the rows of a B-scan, compiled: the same numbers as ``scipy.ndimage``'s, in less time.

``scipy.ndimage`` filters a C-ordered image along axis 0 by copying each column into a line buffer (strided
reads), which made the vertical smoothing of every B-scan one of the larger costs of the segmentation
(docs/oct.md, speed). These kernels walk the rows in memory order and carry out, per pixel, the same
double-precision operations in the same order as ``scipy.ndimage.correlate1d`` (symmetric weights: a
Gaussian) and ``scipy.ndimage.uniform_filter1d`` in mode ``"nearest"``, so the results are identical to the
last bit, not merely close. ``tests/test_oct_filters.py`` compares every function here with its scipy
counterpart on random arrays: should a scipy release change its arithmetic, that test fails and these calls
go back to scipy.
"""

from __future__ import annotations

from functools import lru_cache

import numba
import numpy as np
from scipy import ndimage


@numba.njit(cache=True, nogil=True)
def _correlate_rows_symmetric(x, w):
    """``ndimage.correlate1d(x, w, axis=0, mode="nearest")`` for symmetric odd-length weights ``w`` (float64):
    per pixel ``x[r] * w[s] + sum_{j = s..1} (x[r - j] + x[r + j]) * w[s - j]`` in double precision, stored in
    ``x``'s dtype (scipy's symmetric branch, in its order)."""
    rows, cols = x.shape
    s = w.size // 2
    out = np.empty((rows, cols), x.dtype)
    acc = np.empty(cols, np.float64)
    for r in range(rows):
        w0 = w[s]
        for c in range(cols):
            acc[c] = np.float64(x[r, c]) * w0
        for j in range(s, 0, -1):
            ra = max(r - j, 0)
            rb = min(r + j, rows - 1)
            wj = w[s - j]
            for c in range(cols):
                acc[c] += (np.float64(x[ra, c]) + np.float64(x[rb, c])) * wj
        for c in range(cols):
            out[r, c] = acc[c]
    return out


@numba.njit(cache=True, nogil=True)
def _correlate_symmetric_1d(x, w):
    """The same for a 1-D float64 ``x`` (one column): the tap loop outside, so the outputs' sums (each in
    scipy's order) run side by side instead of one long chain of dependent additions at a time."""
    n = x.size
    s = w.size // 2
    xe = np.empty(n + 2 * s, np.float64)  # edge-extended, as scipy's line buffer
    for i in range(n + 2 * s):
        xe[i] = x[min(max(i - s, 0), n - 1)]
    acc = np.empty(n, np.float64)
    w0 = w[s]
    for r in range(n):
        acc[r] = xe[r + s] * w0
    for j in range(s, 0, -1):
        wj = w[s - j]
        lo, hi = np.uint64(s - j), np.uint64(s + j)  # unsigned: no wrap-around test, the loop vectorises
        for r in range(n):
            ur = np.uint64(r)
            acc[ur] += (xe[ur + lo] + xe[ur + hi]) * wj
    return acc


@numba.njit(cache=True, nogil=True)
def _uniform_rows(x, size):
    """``ndimage.uniform_filter1d(x, size, axis=0, mode="nearest")``: a running sum in double precision over
    the edge-extended column, each output the sum divided by ``size`` (scipy's order), stored in ``x``'s dtype."""
    rows, cols = x.shape
    s1 = size // 2
    out = np.empty((rows, cols), x.dtype)
    tmp = np.zeros(cols, np.float64)
    for k in range(size):
        r = min(max(k - s1, 0), rows - 1)
        for c in range(cols):
            tmp[c] += np.float64(x[r, c])
    for c in range(cols):
        out[0, c] = tmp[c] / size
    for r in range(1, rows):
        ra = min(max(r - 1 - s1, 0), rows - 1)
        rb = min(max(r - 1 - s1 + size, 0), rows - 1)
        for c in range(cols):
            tmp[c] += np.float64(x[rb, c]) - np.float64(x[ra, c])
            out[r, c] = tmp[c] / size
    return out


@numba.njit(cache=True, nogil=True)
def _row_cumsum_kernel(a):
    rows, cols = a.shape
    out = np.empty((rows + 1, cols), np.float64)
    for c in range(cols):
        out[0, c] = 0.0
    for r in range(rows):
        for c in range(cols):
            out[r + 1, c] = out[r, c] + np.float64(a[r, c])
    return out


@numba.njit(cache=True, nogil=True)
def _window_mean_kernel(cum, a, b):
    rows = a.size
    cols = cum.shape[1]
    out = np.empty((rows, cols), np.float64)
    for r in range(rows):
        ar, br = a[r], b[r]
        d = np.float64(max(br - ar, 1))
        for c in range(cols):
            out[r, c] = (cum[br, c] - cum[ar, c]) / d
    return out


@lru_cache(maxsize=64)
def gaussian_weights(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """The weights ``scipy.ndimage.gaussian_filter1d`` correlates with, read back as its response to a unit
    impulse (exact: every other term of each sum is a zero), so they follow scipy's own definition."""
    radius = int(truncate * float(sigma) + 0.5) + 2
    impulse = np.zeros(2 * radius + 1)
    impulse[radius] = 1.0
    w = ndimage.gaussian_filter1d(impulse, sigma, mode="constant", truncate=truncate)
    nz = np.flatnonzero(w)
    w = w[nz[0] : nz[-1] + 1]
    if w.size % 2 == 0 or not np.array_equal(w, w[::-1]):
        raise ValueError(f"the Gaussian weights of sigma {sigma} are not symmetric; use scipy.ndimage directly")
    w.setflags(write=False)
    return w


def gaussian_rows(x: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter1d(x, sigma, axis=0, mode="nearest", truncate=truncate)`` for a 1-D or
    2-D float array, identical to the last bit."""
    w = gaussian_weights(float(sigma), float(truncate))
    if x.ndim == 1:
        if x.dtype != np.float64:
            return _correlate_rows_symmetric(x[:, None], w)[:, 0]
        return _correlate_symmetric_1d(x, w)
    return _correlate_rows_symmetric(x, w)


def uniform_rows(x: np.ndarray, size: int) -> np.ndarray:
    """``scipy.ndimage.uniform_filter1d(x, size, axis=0, mode="nearest")`` for a 2-D float array."""
    if size < 1:
        raise ValueError(f"filter size must be >= 1, got {size}")
    return _uniform_rows(x, int(size))


def uniform2d(x: np.ndarray, size: tuple[int, int] | int) -> np.ndarray:
    """``scipy.ndimage.uniform_filter(x, size, mode="nearest")`` for a 2-D float array: the pass down the rows
    compiled, the pass along them (already contiguous) by scipy, in scipy's order (rows first) and dtype."""
    sr, sc = (size, size) if isinstance(size, int) else size
    out = uniform_rows(x, int(sr)) if sr > 1 else np.array(x, copy=True)
    if sc > 1:
        ndimage.uniform_filter1d(out, int(sc), axis=1, output=out, mode="nearest")
    return out


def row_cumsum(a: np.ndarray) -> np.ndarray:
    """Cumulative sum down the rows with a leading zero row, float64: ``np.cumsum(a, axis=0, dtype=float64)``
    under a zero row, the same additions in the same order."""
    return _row_cumsum_kernel(a)


def window_mean(cum: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row r, ``(cum[b[r]] - cum[a[r]]) / max(b[r] - a[r], 1)`` for a :func:`row_cumsum` ``cum`` and
    in-range int64 row indices ``a``, ``b``."""
    return _window_mean_kernel(cum, np.ascontiguousarray(a, np.int64), np.ascontiguousarray(b, np.int64))
