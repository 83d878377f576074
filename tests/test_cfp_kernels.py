"""Compiled helpers of the lesion search (``grok.cfp._kernels``) equal the scipy operations they replace."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from grok.cfp._kernels import cityblock_distance, flood_fill4


@pytest.mark.parametrize("seed", range(5))
def test_flood_fill4_is_the_labelled_component(seed):
    rng = np.random.default_rng(seed)
    region = ndi.gaussian_filter(rng.normal(size=(41, 57)), 1.5) > 0.0  # blobs touching the borders too
    lab, n = ndi.label(region)
    assert n > 3
    for y, x in zip(*np.nonzero(region), strict=True):
        if (y * 7 + x) % 23:  # a sample of seed pixels
            continue
        reg, st = flood_fill4(region, int(y), int(x))
        ref = lab == lab[y, x]
        np.testing.assert_array_equal(reg, ref)
        ry, rx = np.nonzero(ref)
        assert list(st) == [ry.size, ry.min(), ry.max(), rx.min(), rx.max(), ry.sum(), rx.sum()]
    y, x = np.argwhere(~region)[0]
    reg, st = flood_fill4(region, int(y), int(x))
    assert not reg.any() and st[0] == 0


@pytest.mark.parametrize("seed", range(5))
def test_cityblock_distance_gives_the_iterated_cross_dilation(seed):
    rng = np.random.default_rng(seed)
    m = rng.random((37, 52)) > 0.985
    m[0, 5] = m[-1, -1] = True  # on the border: nothing outside the array counts
    d = cityblock_distance(m)
    for n in (1, 2, 3, 6):
        np.testing.assert_array_equal(d <= n, ndi.binary_dilation(m, iterations=n))
    assert (cityblock_distance(np.zeros((5, 6), bool)) > 11).all()
