"""Lesion boxes (for grounding) and lesion detection on segmented B-scans."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numba
import numpy as np
from scipy import ndimage

#: Lesion types in the order boxes are listed.
LESION_TYPES: tuple[str, ...] = ("irf", "srf", "ped", "drusen", "hrf")


def lesion_boxes(
    masks: Mapping[str, np.ndarray], hrf: Sequence[tuple[int, float, float]] = (), *, hrf_half_size_px: int = 3
) -> list[dict]:
    """One box per connected lesion component per B-scan.

    masks : ``{"irf"|"srf"|"ped"|"drusen": (n_bscans, rows, cols) bool}``
    hrf : (bscan, row, col) of each hyperreflective focus; boxed with ``hrf_half_size_px``
    Returns ``[{"type", "bscan", "box_xyxy_px": [x1, y1, x2, y2]}]`` with inclusive pixel corners
    (x = column, y = row, origin at the top-left of the B-scan).
    """
    out: list[dict] = []
    for kind in ("irf", "srf", "ped", "drusen"):
        m = masks.get(kind)
        if m is None:
            continue
        any_row = m.any(axis=2)  # (n_bscans, rows)
        for i in np.flatnonzero(any_row.any(axis=1)):
            rr = np.flatnonzero(any_row[i])
            r0 = int(rr[0])
            lab, _ = ndimage.label(m[i, r0 : int(rr[-1]) + 1])
            for sl in ndimage.find_objects(lab):
                if sl is None:
                    continue
                ys, xs = sl
                out.append({"type": kind, "bscan": int(i), "box_xyxy_px": [
                    int(xs.start), int(ys.start) + r0, int(xs.stop - 1), int(ys.stop - 1) + r0]})
    for b, r, c in hrf:
        h = hrf_half_size_px
        out.append({"type": "hrf", "bscan": int(b),
                    "box_xyxy_px": [int(round(c)) - h, int(round(r)) - h, int(round(c)) + h, int(round(r)) + h]})
    return out


# ----------------------------------------------------------------------------------------------------
# Detection on a segmented B-scan
# ----------------------------------------------------------------------------------------------------

_ILM, _RNFL, _IPL, _INL, _OPL, _ELM, _EZ, _RPE, _BM = range(9)


@numba.njit(cache=True, nogil=True)
def _band_mask_kernel(rows, top, bottom):
    cols = top.size
    out = np.empty((rows, cols), np.bool_)
    for r in range(rows):
        rf = np.float64(r)
        for c in range(cols):
            out[r, c] = (rf >= top[c]) & (rf < bottom[c])
    return out


def _band_mask(rows: int, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """(rows, cols) bool: pixel centres r with top <= r < bottom (NaN -> empty). Compared in float64: the
    same answers as in the rows' float32 (whole rows and float32 bounds are exact in both)."""
    t = np.where(np.isfinite(top), top, np.inf).astype(np.float64)
    b = np.where(np.isfinite(bottom), bottom, -np.inf).astype(np.float64)
    return _band_mask_kernel(int(rows), t, b)


def _column_mean(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    cnt = mask.sum(axis=0)
    s = np.where(mask, img, 0.0).sum(axis=0)
    return np.where(cnt > 0, s / np.maximum(cnt, 1), np.nan)


def _fill_nan(x: np.ndarray, default: float) -> np.ndarray:
    ok = np.isfinite(x)
    if not ok.any():
        return np.full_like(x, default)
    idx = np.arange(x.size)
    return np.interp(idx, idx[ok], x[ok])


def _robust_spread(img: np.ndarray, mask: np.ndarray, level: np.ndarray) -> float:
    """Robust standard deviation (1.4826 x median absolute deviation) of ``img`` about the per-column
    ``level`` inside ``mask``; 0 when the mask is empty."""
    d = (img - level[None, :])[mask]
    d = d[np.isfinite(d)]
    return float(1.4826 * np.median(np.abs(d - np.median(d)))) if d.size >= 20 else 0.0


def _sag_not_lift(rpe: np.ndarray, bm: np.ndarray, c0: int, c1: int) -> bool:
    """True when a sub-RPE "elevation" over columns ``c0 .. c1 - 1`` comes from Bruch's membrane sagging
    below the line joining its rows just outside the run, more than from the RPE rising above its own such
    line: drusen and PED lift the RPE and leave Bruch's membrane on the eye's curvature, a Bruch's
    membrane path that slipped into the choroid does the opposite. The lines make it tilt-free."""
    cols = rpe.size
    a, z = max(0, c0 - 1), min(cols - 1, c1)
    x = np.arange(c0, c1)

    def off(y: np.ndarray) -> np.ndarray:
        ya, yz = y[a], y[z]
        if not (np.isfinite(ya) and np.isfinite(yz)):
            return np.zeros(x.size)
        line = ya + (yz - ya) * (x - a) / max(z - a, 1)
        return np.nan_to_num(y[c0:c1] - line)

    lift = float(np.max(-off(rpe), initial=0.0))  # rows grow downwards: a lifted RPE has smaller rows
    sag = float(np.max(off(bm), initial=0.0))
    return sag > lift


def _keep_components(mask: np.ndarray, min_area: int, min_height: int) -> np.ndarray:
    if not mask.any():
        return mask
    lab, n = ndimage.label(mask)
    if n == 0:
        return mask
    areas = np.bincount(lab.ravel(), minlength=n + 1)
    keep = areas >= min_area
    keep[0] = False
    for k, sl in enumerate(ndimage.find_objects(lab), start=1):
        if keep[k] and sl is not None and (sl[0].stop - sl[0].start) < min_height:
            keep[k] = False
    return keep[lab]


def detect_bscan_lesions(
    image: np.ndarray,
    boundaries: np.ndarray,
    axial_um: float,
    lateral_um: float,
    rpe_ref_px: float,
    fine: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], list[tuple[float, float]], np.ndarray]:
    """Fluid, PED, drusen, hyperreflective foci and EZ loss on one segmented B-scan.

    image : (rows, cols) normalised, lightly smoothed B-scan (``BscanSegmentation.image``; log-like
        intensities, so fluid is a dark offset and vessel shadows subtract a constant)
    boundaries : (9, cols) rows of the nine boundaries
    rpe_ref_px : normal RPE-band thickness (RPE -> BM) in pixels, measured over the whole cube
    fine : (rows, cols) the normalised B-scan with only 3 x 3 averaging (``BscanSegmentation.fine``), used
        for hyperreflective foci; None -> no HRF detection

    Returns ``(masks, hrf, ez_disrupted)``: masks ``{"irf","srf","ped","drusen"}`` of (rows, cols) bool,
    hrf as (row, col) centroids, ez_disrupted (cols,) bool.

    Method: a fluid threshold halfway (in the log-like image) between the vitreous background and the
    local outer nuclear layer level (hysteresis: each pocket needs a core below 30 % of the way);
    above the ELM the thresholds also stay 1.5 (core: 3) robust spreads of the outer nuclear layer's own
    speckle under its level, and that level is lowered over vessel shadows (the RPE band's dip);
    pockets between RNFL_GCL and the RPE that reach the RPE are SRF, the others (above the ELM) IRF; a
    "subretinal" pocket with no RPE-bright band under it is the fluid of a serous PED; sub-RPE elevation = (BM - RPE) - ``rpe_ref_px``: runs at least 10 um
    high are PED when the space under the RPE is dark (serous) or the run is taller than 150 um, drusen
    otherwise; HRF = small bright components in the INL and ONL; EZ loss = columns whose brightest pixel
    between ELM and RPE stays below halfway from the ONL to the RPE level.
    """
    rows, cols = image.shape
    image = np.asarray(image, np.float32)
    if fine is not None:
        fine = np.asarray(fine, np.float32)
    b = boundaries
    px_um = 1.0 / axial_um
    fin = np.isfinite(b).all(axis=0)
    full_masks = {k: np.zeros((rows, cols), bool) for k in ("irf", "srf", "ped", "drusen")}
    if fin.mean() < 0.3:
        return full_masks, [], np.zeros(cols, bool)
    # vitreous level, then work on the retina rows only (ILM .. BM), pasted back at the end
    ilm_med = float(np.nanmedian(b[_ILM]))
    top = max(0, int(ilm_med - 60 * px_um))
    bot = max(0, int(ilm_med - 12 * px_um))
    bg = float(np.median(image[top:bot])) if bot - top >= 3 else float(np.percentile(image[::3, ::3], 5))
    r0 = max(0, int(np.nanmin(b[_ILM])) - 2)
    r1 = min(rows, int(np.nanmax(b[_BM])) + 3)
    image = image[r0:r1]
    if fine is not None:
        fine = fine[r0:r1]
    b = b - r0
    rows = r1 - r0
    masks = {k: np.zeros((rows, cols), bool) for k in full_masks}
    sm = image  # already smoothed by the segmentation (about 5 x 30 um)
    onl_mask = _band_mask(rows, b[_OPL] + 3, b[_ELM] - 3)
    onl = _column_mean(image, onl_mask)
    onl = ndimage.median_filter(_fill_nan(onl, bg + 0.3), size=max(5, int(700 / lateral_um)) | 1, mode="nearest")
    rpe_mask = _band_mask(rows, b[_RPE] + 1, b[_RPE] + max(2.0, rpe_ref_px - 1))
    rpe_col = _column_mean(image, rpe_mask)
    rpe_level = float(np.nanmedian(rpe_col)) if np.isfinite(rpe_col).any() else float(np.max(onl) + 0.3)
    # a retinal vessel's shadow darkens every layer under it, the outer nuclear layer as much as the RPE:
    # over a shadow (the RPE band under its running median) the layer's level is lowered by the same
    # factor, so shadowed tissue is not taken for fluid (fluid does not darken the RPE below it). Only above
    # the ELM: under it a PED or SRF changes the RPE band's own brightness
    onl_fl = onl  # the level the fluid thresholds compare with
    if np.isfinite(rpe_col).any():
        rc = _fill_nan(rpe_col, rpe_level) - bg
        rmed = ndimage.median_filter(rc, size=max(5, int(700 / lateral_um)) | 1, mode="nearest")
        with np.errstate(invalid="ignore", divide="ignore"):
            fac = np.clip(ndimage.uniform_filter1d(rc, max(3, int(30 / lateral_um)) | 1, mode="nearest") / np.maximum(rmed, 1e-6), 0.2, 1.0)
        onl_fl = bg + (onl - bg) * fac
    # the B-scan's own texture: the spread of the outer nuclear layer around its level (speckle left after
    # the smoothing). A device whose outer nuclear layer sits near the noise floor shows it as dark
    # speckle, not fluid: in the neurosensory retina (above the ELM) every fluid threshold also stays this
    # many spreads under the layer's level. Under the ELM fluid lies between bright bands (the ELM, the
    # photoreceptors, the RPE) and keeps the thresholds set by the background alone
    spread = _robust_spread(image, onl_mask, onl)
    spread_f = _robust_spread(fine, onl_mask, onl) if fine is not None else spread
    above_elm = _band_mask(rows, np.zeros(cols), b[_ELM])

    def under(frac: float, k: float, sp: float) -> np.ndarray:
        """(rows, cols) threshold: ``frac`` of the way from the background to the layer's level; above the
        ELM from the shadow-corrected level and at least ``k`` spreads ``sp`` under it."""
        t_in = np.minimum(bg + frac * (onl_fl - bg), onl_fl - k * sp)[None, :]
        return np.where(above_elm, t_in, (bg + frac * (onl - bg))[None, :])

    thr = bg + 0.65 * (onl - bg)  # (cols,): above the midpoint, log-like blur shrinks dark pockets
    loose = sm < under(0.65, 1.5, spread)
    if fine is not None:  # thin fluid margins blur away in the smoothed image; the 3 x 3 one keeps them
        with np.errstate(invalid="ignore"):
            loose |= fine < under(0.65, 1.5, spread_f)
    # between the EZ and the RPE the tissue (outer segments) is brighter than the ONL, and a thin fluid
    # lens there is brightened by the blur of the RPE below it: the extent threshold can be looser
    sub = _band_mask(rows, b[_EZ] - 2, b[_RPE] + 1)
    loose |= sub & (sm < (bg + 0.85 * (onl - bg))[None, :])
    strict = sm < under(0.3, 3.0, spread)
    min_area = max(6, int(round(800.0 / (axial_um * lateral_um))))  # ~ 800 um^2 in the B-scan plane
    min_h = max(2, int(round(10.0 * px_um)))
    # dark pockets in the neurosensory retina and under it (hysteresis: a pocket needs a clearly dark core);
    # a pocket that reaches down to the RPE is subretinal (SRF), one that does not is intraretinal (IRF)
    # from below the RNFL: a cyst pushes the inner layers up and IPL_INL can follow its upper edge
    region = _band_mask(rows, b[_RNFL] + 2, b[_RPE])
    cand = loose & region
    if cand.any():
        lab, n = ndimage.label(cand)
        has_core = np.zeros(n + 1, bool)
        has_core[np.unique(lab[strict & cand])] = True
        has_core[0] = False
        keep = has_core[lab] & _keep_components(cand, min_area, min_h)
        lab = np.where(keep, lab, 0)
        rpe_row = np.where(np.isfinite(b[_RPE]), b[_RPE], np.inf)
        touches = np.zeros(n + 1, bool)
        rr_idx, cc_idx = np.nonzero(lab)
        near = rr_idx >= rpe_row[cc_idx] - max(2.0, 8.0 * px_um)
        touches[np.unique(lab[rr_idx[near], cc_idx[near]])] = True
        touches[0] = False
        is_srf = touches[lab] & keep
        masks["srf"] = is_srf
        masks["irf"] = keep & ~is_srf & _band_mask(rows, b[_RNFL] + 2, b[_ELM] + max(2.0, 8.0 * px_um))
        masks["srf"] |= keep & ~is_srf & ~masks["irf"] & _band_mask(rows, b[_EZ], b[_RPE])
    # sub-RPE elevation: drusen / PED
    elev = (b[_BM] - b[_RPE]) - rpe_ref_px
    elev = np.where(np.isfinite(elev), elev, 0.0)
    elev = ndimage.uniform_filter1d(elev, 3, mode="nearest")  # one-column jitter is not a druse
    elevated = elev >= max(2.0, 10.0 * px_um)
    lab, n = ndimage.label(elevated)
    min_cols = max(3, int(round(45.0 / lateral_um)))
    for k, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        cs = sl[0]
        run = lab[cs] == k
        peak_um = float(elev[cs][run].max()) * axial_um
        if peak_um < 25.0 or run.sum() < min_cols:
            continue
        if _sag_not_lift(b[_RPE], b[_BM], cs.start, cs.stop):
            continue
        top_r = b[_RPE, cs] + rpe_ref_px
        region = _band_mask(rows, np.where(run, top_r, np.nan), np.where(run, b[_BM, cs], np.nan))
        vals = image[:, cs][region]
        is_dark = vals.size > 0 and float(np.median(vals)) < float(np.median(thr[cs]))
        kind = "ped" if (is_dark and peak_um >= 40.0) or peak_um >= 150.0 else "drusen"
        masks[kind][:, cs] |= region
    # HRF: small spots much brighter than their smoothed surroundings (top-hat) in the INL and the ONL
    hrf: list[tuple[float, float]] = []
    if fine is not None:
        span = rpe_level - onl  # (cols,)
        with np.errstate(invalid="ignore"):
            cand = (fine - image > 0.35 * span[None, :]) & (fine > (onl + 0.5 * span)[None, :])
        m3 = 3.0 * px_um * 3.87  # ~ 3 px at 3.87 um: keep away from the bright plexiform layers and the ELM
        band = _band_mask(rows, b[_IPL] + m3, b[_INL] - m3) | _band_mask(rows, b[_OPL] + m3, b[_ELM] - m3)
        band[:, ~fin] = False
        cand &= band
        if cand.any():
            lab, n = ndimage.label(cand)
            max_area = max(8, int(round(2500.0 / (axial_um * lateral_um))))  # < ~ 50 x 50 um
            flat = lab.ravel()
            areas = np.bincount(flat, minlength=n + 1)
            rr, cc = np.indices(lab.shape)
            sum_r = np.bincount(flat, weights=rr.ravel(), minlength=n + 1)
            sum_c = np.bincount(flat, weights=cc.ravel(), minlength=n + 1)
            keep = np.flatnonzero((areas >= 3) & (areas <= max_area))
            keep = keep[keep > 0]
            hrf = [(float(sum_r[k] / areas[k]), float(sum_c[k] / areas[k])) for k in keep]
    # EZ integrity
    # columns where a "subretinal" pocket reaches down to Bruch's membrane hold fluid of a PED whose steep
    # wall the RPE path cut (true SRF rests on the RPE band, which lies between it and BM)
    if masks["srf"].any():
        rr_c, cc_c = np.nonzero(masks["srf"])
        deep = rr_c >= b[_BM, cc_c] - max(1.0, 0.5 * rpe_ref_px)
        if deep.any():
            move = np.zeros((rows, cols), bool)
            move[:, np.unique(cc_c[deep])] = True
            move &= masks["srf"]
            masks["ped"] |= move
            masks["srf"] &= ~move
    # subretinal fluid rests on the RPE band: in the RPE band's thickness under the pocket (down to Bruch's
    # membrane at most) the tissue is as bright as the B-scan's RPE. A pocket with nothing that bright under it lies under the RPE (a serous PED
    # whose dome the RPE path did not follow): moved to PED down to Bruch's membrane
    if masks["srf"].any():
        lab, n = ndimage.label(masks["srf"])
        rr_i = np.arange(rows)[:, None]
        bottom = np.where(masks["srf"], rr_i, -1).max(axis=0)
        cnum = np.cumsum(np.concatenate([np.zeros((1, cols)), image], axis=0), axis=0)
        lo_r = np.clip(bottom + 1, 0, rows)
        bm_r = np.round(np.nan_to_num(b[_BM], nan=0.0)).astype(np.int64) + 1
        band_px = max(2, int(round(rpe_ref_px)))  # one RPE band under the pocket (SRF over a PED keeps it)
        hi_r = np.clip(np.maximum(np.minimum(bm_r, lo_r + band_px), lo_r + 2), 0, rows)
        cc = np.arange(cols)
        under = (cnum[hi_r, cc] - cnum[lo_r, cc]) / np.maximum(hi_r - lo_r, 1)
        mid = onl + 0.35 * (rpe_level - onl)  # clearly under the RPE's brightness
        min_w = max(3, int(round(150.0 / lateral_um)))  # a serous PED is wider than ~150 um
        for k, sl in enumerate(ndimage.find_objects(lab), start=1):
            if sl is None:
                continue
            cs = np.flatnonzero((lab[sl] == k).any(axis=0)) + sl[1].start
            if cs.size >= min_w and float(np.median(under[cs] - mid[cs])) < 0.0:
                comp = lab == k
                top_c = np.where(comp, rr_i, rows).min(axis=0)
                fill = _band_mask(rows, np.where(top_c < rows, top_c, np.nan), b[_BM])
                masks["ped"] |= fill
                masks["srf"] &= ~comp
    ez_band = _band_mask(rows, b[_ELM] + 2, b[_RPE] - 2)
    peak = np.where(ez_band, sm, -np.inf).max(axis=0)
    ez_dis = peak < onl + 0.5 * (rpe_level - onl)
    ez_dis = ndimage.binary_opening(ez_dis, structure=np.ones(max(3, int(60 / lateral_um)) | 1))
    ez_dis &= fin
    for k, m in masks.items():
        full_masks[k][r0:r1] = m
    return full_masks, [(r + r0, c) for r, c in hrf], ez_dis
