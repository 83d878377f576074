"""The compiled kernels of the OCT measurement give the numbers of the code they replaced, exactly.

grok/oct/filters.py (row filters), segment._first_strong, segment._edge_cost, segment._dp_path (rows of a
column updated together) and lesions._band_mask replace scipy.ndimage / whole-array numpy / per-row loops on
the hot path of every B-scan; the segmentation's results must not move by a bit (docs/oct.md, speed), so
each is compared here with the call or loop it replaces, on random arrays of both float dtypes, with ties,
NaN, edges and odd sizes, by exact equality.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from scipy import ndimage

from grok.oct import filters
from grok.oct.lesions import _band_mask
from grok.oct.segment import _dp_path, _edge_cost, _first_strong, _first_strong_numpy


def _arrays(seed: int, n: int):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        rows, cols = int(rng.integers(1, 80)), int(rng.integers(1, 40))
        dt = (np.float32, np.float64)[int(rng.integers(0, 2))]
        scale = float(rng.choice([1e-3, 1.0, 300.0]))
        x = (rng.normal(0.3, 1.0, (rows, cols)) * scale).astype(dt)
        if rng.random() < 0.3:  # plateaus and exact ties
            x = (np.round(x * 4) / 4).astype(dt)
        yield rng, x


def test_gaussian_rows_equals_scipy():
    for rng, x in _arrays(0, 150):
        sigma = float(rng.choice([0.6, 0.8, 1.29, 2.0, 3.4, rng.uniform(0.3, 6.0)]))
        truncate = float(rng.choice([2.5, 3.0, 4.0]))
        want = ndimage.gaussian_filter1d(x, sigma, axis=0, mode="nearest", truncate=truncate)
        got = filters.gaussian_rows(x, sigma, truncate)
        assert got.dtype == want.dtype
        assert np.array_equal(got, want), (x.shape, x.dtype, sigma, truncate)


def test_gaussian_rows_1d_equals_scipy():
    rng = np.random.default_rng(1)
    for _ in range(60):
        y = rng.normal(0, 50, int(rng.integers(1, 700)))
        sigma = float(rng.choice([5.0, 13.4, 40.2, rng.uniform(0.5, 60.0)]))
        assert np.array_equal(filters.gaussian_rows(y, sigma),
                              ndimage.gaussian_filter1d(y, sigma, mode="nearest")), (y.size, sigma)


def test_uniform_filters_equal_scipy():
    for rng, x in _arrays(2, 150):
        size = int(rng.integers(1, 30))
        assert np.array_equal(filters.uniform_rows(x, size),
                              ndimage.uniform_filter1d(x, size, axis=0, mode="nearest")), (x.shape, x.dtype, size)
        sizes = (int(rng.integers(1, 12)), int(rng.integers(1, 12)))
        got = filters.uniform2d(x, sizes)
        want = ndimage.uniform_filter(x, sizes, mode="nearest")
        assert got.dtype == want.dtype and np.array_equal(got, want), (x.shape, x.dtype, sizes)
    # a strided view (the choroid search filters every second row)
    x = np.random.default_rng(3).random((101, 37), dtype=np.float32)[5::2]
    assert np.array_equal(filters.uniform2d(x, (5, 7)), ndimage.uniform_filter(x, (5, 7), mode="nearest"))


def test_row_cumsum_and_window_mean_equal_numpy():
    for rng, x in _arrays(4, 80):
        rows = x.shape[0]
        cum = filters.row_cumsum(x)
        want = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(x, axis=0, dtype=np.float64)])
        assert cum.dtype == np.float64 and np.array_equal(cum, want)
        idx = np.arange(rows)
        da, db = sorted(int(v) for v in rng.integers(-6, 7, 2))
        a, b = np.clip(idx + da, 0, rows), np.clip(idx + db, 0, rows)
        assert np.array_equal(filters.window_mean(cum, a, b), (cum[b] - cum[a]) / np.maximum(b - a, 1)[:, None])


def test_first_strong_equals_numpy_reference():
    rng = np.random.default_rng(5)
    for _ in range(400):
        rows, cols = int(rng.integers(2, 50)), int(rng.integers(1, 30))
        dt = (np.float32, np.float64)[int(rng.integers(0, 2))]
        g = rng.normal(0, 1, (rows, cols)).astype(dt)
        if rng.random() < 0.4:
            g = (np.round(g * 2) / 2).astype(dt)  # ties at the threshold (float32 products round)
        if rng.random() < 0.15:
            g[rng.random((rows, cols)) < 0.1] = np.nan
        lo = rng.uniform(-3, rows + 2, cols)
        hi = lo + rng.uniform(-5, rows, cols)  # some windows empty
        frac = float(rng.choice([0.4, 0.6, 0.75, rng.random()]))
        lo_i = np.clip(np.round(lo), 0, rows - 1).astype(np.int64)
        hi_i = np.clip(np.round(hi), 0, rows - 1).astype(np.int64)
        for last in (False, True):
            assert np.array_equal(_first_strong(g, lo, hi, frac, last=last),
                                  _first_strong_numpy(g, lo_i, hi_i, frac, last=last)), (dt, frac, last)


def test_edge_cost_equals_numpy_expression():
    for rng, x in _arrays(6, 120):
        if rng.random() < 0.2:
            x[rng.random(x.shape) < 0.1] = np.nan
        scale = float(rng.choice([1e-6, 0.037, 1.0, float(np.nanmax(np.abs(x))) or 1.0]))
        for negate in (False, True):
            v = -x if negate else x
            want = (1.0 - np.minimum(np.clip(v, 0.0, None) / scale, 1.0)).astype(np.float32)
            got = _edge_cost(x, scale, negate=negate)
            assert got.dtype == np.float32 and np.array_equal(got, want, equal_nan=True), (x.dtype, scale, negate)


def test_gaussian_weights_are_scipys():
    w = filters.gaussian_weights(1.29, 3.0)
    assert w.size == 2 * int(3.0 * 1.29 + 0.5) + 1 and np.isclose(w.sum(), 1.0) and np.array_equal(w, w[::-1])
    with pytest.raises(ValueError):
        filters.uniform_rows(np.zeros((4, 4), np.float32), 0)


@numba.njit(cache=False)
def _dp_path_per_row(cost, lo, hi, dexp, max_jump, penalty, ref, ref_w):
    """The path search as it was before the rows were updated together (commit 038d883): the reference."""
    rows, cols = cost.shape
    inf = 1e30
    prev = np.full(rows, inf)
    cur = np.full(rows, inf)
    back = np.zeros((rows, cols), np.int32)
    for r in range(lo[0], hi[0] + 1):
        prev[r] = cost[r, 0] + ref_w * abs(r - ref[0])
    for c in range(1, cols):
        d0 = dexp[c]
        plo, phi = lo[c - 1], hi[c - 1]
        for r in range(lo[c], hi[c] + 1):
            centre = int(round(r - d0))
            best = inf
            arg = -1
            a = max(plo, centre - max_jump)
            b = min(phi, centre + max_jump)
            for rp in range(a, b + 1):
                v = prev[rp] + penalty * abs(r - rp - d0)
                if v < best:
                    best = v
                    arg = rp
            if arg < 0:
                rp = min(max(centre, plo), phi)
                best = prev[rp] + penalty * abs(r - rp - d0)
                arg = rp
            cur[r] = best + cost[r, c] + ref_w * abs(r - ref[c])
            back[r, c] = arg
        for r in range(plo, phi + 1):
            prev[r] = inf
        for r in range(lo[c], hi[c] + 1):
            prev[r] = cur[r]
            cur[r] = inf
    path = np.empty(cols, np.int64)
    best = inf
    arg = lo[cols - 1]
    for r in range(lo[cols - 1], hi[cols - 1] + 1):
        if prev[r] < best:
            best = prev[r]
            arg = r
    path[cols - 1] = arg
    for c in range(cols - 1, 0, -1):
        path[c - 1] = back[path[c], c]
    return path


def test_dp_path_equals_per_row_reference():
    """Random costs with ties, bands that shift, narrow and miss each other, slopes on and off the half."""
    rng = np.random.default_rng(7)
    for _ in range(1500):
        rows, cols = int(rng.integers(4, 60)), int(rng.integers(1, 40))
        cost = rng.random((rows, cols)).astype(np.float32)
        if rng.random() < 0.3:
            cost = (np.round(cost * 4) / 4).astype(np.float32)
        lo = rng.integers(1, rows - 2, cols)
        hi = np.minimum(lo + rng.integers(0, rows, cols), rows - 2)
        if rng.random() < 0.5:
            lo, hi = np.full(cols, lo.min()), np.full(cols, hi.max())
        if rng.random() < 0.3:
            dexp = np.round(rng.normal(0, 2, cols) * 2) / 2  # exact halves: rounding is not a plain shift
        else:
            dexp = float(rng.choice([0.0, 0.5, -1.5, 0.3])) + rng.normal(0, 1, cols) * float(rng.choice([0, 0.5, 1]))
        dexp = np.asarray(dexp * np.ones(cols), np.float64)
        ref = rng.normal(rows / 2, 5, cols)
        args = (cost, lo.astype(np.int64), hi.astype(np.int64), dexp, int(rng.integers(1, 8)),
                float(rng.choice([0.0, 0.04, 0.1, 0.3])), ref, float(rng.choice([0.0, 0.01, 0.02])))
        assert np.array_equal(_dp_path(*args), _dp_path_per_row(*args))


def test_band_mask_equals_numpy_reference():
    rng = np.random.default_rng(8)
    for _ in range(200):
        rows, cols = int(rng.integers(1, 60)), int(rng.integers(1, 30))
        dt = (np.float32, np.float64)[int(rng.integers(0, 2))]
        top = rng.uniform(-5, rows + 5, cols).astype(dt)
        bottom = (top + rng.uniform(-3, rows, cols)).astype(dt)
        if rng.random() < 0.5:
            top, bottom = np.round(top).astype(dt), np.round(bottom).astype(dt)  # bounds on whole rows
        for a in (top, bottom):
            a[rng.random(cols) < 0.1] = rng.choice([np.nan, np.inf, -np.inf])
        rr = np.arange(rows, dtype=np.float32)[:, None]
        want = (rr >= np.where(np.isfinite(top), top, np.inf)[None, :]) & \
            (rr < np.where(np.isfinite(bottom), bottom, -np.inf)[None, :])
        assert np.array_equal(_band_mask(rows, top, bottom), want)
