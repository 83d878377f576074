"""Geographic atrophy on a macular cube: complete RPE and outer retinal atrophy (cRORA).

The Classification of Atrophy Meetings' OCT definition (Sadda et al., Ophthalmology 2018;125:537-548) needs,
over at least 250 um: (1) hypertransmission of signal into the choroid, (2) a zone of RPE attenuation or
disruption and (3) degeneration of the overlying photoreceptors, without signs of an RPE tear. Here, per
B-scan column:

1. **Hypertransmission** (which is what RPE loss does to the light: nothing above absorbs it). The mean of
   the smoothed, log-like B-scan (``BscanSegmentation.image``) 150-500 um under Bruch's membrane (outer
   choroid and sclera), smoothed over ~120 um along the B-scan, stands above its running level (the median
   over ~4 mm of the B-scan, robust while atrophy covers under half of it) by more than three robust
   spreads (median absolute deviation over the B-scan's columns). Vessel shadows darken this band, so they
   never read as atrophy; gaps up to ~60 um (a shadow across the atrophy) are bridged. Columns over drusen
   or a PED are not atrophy (the RPE is there, lifted).
2. **Width.** Runs at least 250 um wide.
3. **Photoreceptor degeneration.** At least half of a run's columns have a disrupted EZ (the lesion
   detector's EZ-loss columns).
4. Connected runs across neighbouring B-scans (8-connected on the en-face grid) are one region.

RPE attenuation (criterion 2 of the definition) is not read directly: where the RPE is gone its edge is weak,
the segmented RPE and BM fall on what is left (Bruch's membrane, the choroid's top) and a band between them
reads bright; hypertransmission is its consequence and is read instead.

The count of regions is ``geographic_atrophy_count`` (``grok.oct.volume``); their en-face area is
reported by :func:`atrophy_regions` only (benchmarks), not published.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from grok.ids import BOUNDARIES

_B = {n: i for i, n in enumerate(BOUNDARIES)}
#: cRORA's minimum width (Sadda 2018), in um along the B-scan.
MIN_WIDTH_UM = 250.0
#: Depth of the band read under Bruch's membrane, um (top, bottom): the outer choroid and the sclera, where
#: the choroid's own vessel pattern matters least and hypertransmission shows most; deep enough that a BM
#: found 10-20 um off (the RPE is gone, so its edge is weak) changes little.
CHOROID_BAND_UM = (150.0, 500.0)
#: Smoothing along the B-scan, um.
SMOOTH_UM = 120.0
#: Window of the running level, um.
LEVEL_WINDOW_UM = 4000.0
#: Percentile of the running level.
LEVEL_PERCENTILE = 50
#: Robust spreads (MAD over the B-scan's columns) the band must stand above its running level.
K_SPREAD = 3.0
#: Floor of the spread, in the normalised image's units (a textureless band must still rise visibly).
MIN_SPREAD = 0.01
#: Share of a run's columns whose EZ is disrupted (photoreceptor degeneration over the atrophy).
MIN_EZ_LOSS = 0.5
#: Gaps (um) inside a run that are bridged (a vessel shadow interrupts the hypertransmission).
GAP_UM = 60.0


def _band_mean(img: np.ndarray, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """Per column, the mean of rows round(top) .. round(bottom) - 1 (clipped to the image), NaN where empty:
    one cumulative sum over the rows the bands span, then two gathers."""
    rows, cols = img.shape
    t = np.clip(np.rint(top), 0, rows).astype(np.intp)
    b = np.clip(np.rint(bottom), 0, rows).astype(np.intp)
    r0, r1 = int(t.min()), int(b.max())
    if r1 <= r0:
        return np.full(cols, np.nan)
    cs = np.zeros((r1 - r0 + 1, cols), np.float32)
    np.cumsum(img[r0:r1], axis=0, dtype=np.float32, out=cs[1:])
    c = np.arange(cols)
    n = b - t
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (cs[b - r0, c] - cs[t - r0, c]) / n, np.nan)


def bscan_atrophy(image: np.ndarray, boundaries: np.ndarray, ez_disrupted: np.ndarray, axial_um: float,
                  lateral_um: float, sub_rpe_masks: tuple[np.ndarray, ...] = ()) -> np.ndarray:
    """(cols,) bool: columns of one segmented B-scan inside complete RPE and outer retinal atrophy.

    sub_rpe_masks : (rows, cols) bool masks of drusen and PED (the lesion detector's); their columns are never
        atrophy (the RPE is there, lifted), and where BM may have been found on the lifted RPE the band
        under it would sit in the bright inner choroid. Read only when the B-scan has EZ loss enough for a
        run, so most B-scans cost nothing here"""
    img = np.asarray(image)
    rows, cols = img.shape
    out = np.zeros(cols, bool)
    ez = np.asarray(ez_disrupted, bool)
    if ez.sum() * lateral_um < MIN_EZ_LOSS * MIN_WIDTH_UM:  # no photoreceptor loss a run could hold: none
        return out
    bm = boundaries[_B["BM"]]
    ok = np.isfinite(bm) & (bm + CHOROID_BAND_UM[1] / axial_um <= rows)
    if ok.sum() < max(10, 0.3 * cols):
        return out
    bm_f = np.where(ok, bm, 0.0)
    deep = _band_mean(img, bm_f + CHOROID_BAND_UM[0] / axial_um, bm_f + CHOROID_BAND_UM[1] / axial_um)
    deep[~ok] = np.nan
    good = np.isfinite(deep)
    # smooth along the B-scan (choroidal vessel lumens, speckle), NaN-aware
    size = max(3, int(round(SMOOTH_UM / lateral_um)) | 1)
    w = ndimage.uniform_filter1d(good.astype(np.float32), size, mode="nearest")
    with np.errstate(invalid="ignore", divide="ignore"):
        deep_s = ndimage.uniform_filter1d(np.where(good, deep, 0.0).astype(np.float32), size, mode="nearest") / w
    # the level to rise above: a running median over ~4 mm (the choroid thins away from the fovea and the
    # band's share of choroid and sclera changes along the B-scan), robust while atrophy covers under half
    # of the window; on every 4th column, interpolated back (the level varies over millimetres)
    filled = np.where(good, deep_s, np.nanmedian(deep_s[good]))
    step = 4
    coarse = ndimage.percentile_filter(filled[::step], LEVEL_PERCENTILE,
                                       size=max(5, int(round(LEVEL_WINDOW_UM / (step * lateral_um))) | 1), mode="nearest")
    level = np.interp(np.arange(cols), np.arange(0, cols, step), coarse)
    rise = deep_s - level
    spread = max(1.4826 * float(np.median(np.abs(rise[good] - np.median(rise[good])))), MIN_SPREAD)
    hyper = good & (rise > K_SPREAD * spread)
    for mask in sub_rpe_masks:
        hyper &= ~np.asarray(mask, bool).any(axis=0)
    gap = max(1, int(round(GAP_UM / lateral_um)))
    hyper = (ndimage.binary_closing(hyper, structure=np.ones(2 * gap + 1, bool)) & good) | hyper
    lab, _ = ndimage.label(hyper)
    min_cols = MIN_WIDTH_UM / lateral_um
    for k, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None or sl[0].stop - sl[0].start < min_cols:
            continue
        run = lab[sl[0]] == k
        if ez[sl[0]][run].mean() >= MIN_EZ_LOSS:  # the photoreceptors over it have degenerated
            out[sl[0]] |= run
    return out


def atrophy_regions(enface: np.ndarray, lateral_um: float, bscan_um: float) -> tuple[int, float, list[dict]]:
    """(count, area mm^2, one ``{"type": "geographic_atrophy", "bscans": [first, last], "cols": [c0, c1]}``
    per region) of an (n_bscans, cols) atrophy map; regions are 8-connected on the en-face grid."""
    lab, n = ndimage.label(enface, structure=np.ones((3, 3), bool))
    regions = []
    for sl in ndimage.find_objects(lab):
        regions.append({"type": "geographic_atrophy", "bscans": [int(sl[0].start), int(sl[0].stop - 1)],
                        "cols": [int(sl[1].start), int(sl[1].stop - 1)]})
    area = float(enface.sum()) * lateral_um * bscan_um * 1e-6
    return int(n), area, regions
