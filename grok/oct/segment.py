"""Nine-boundary layer segmentation of OCT B-scans by dynamic programming over edge costs.

Two methods share the preparation (robust normalisation, a linear-intensity export 4th-root compressed,
NaN/inf replaced, anisotropic smoothing in physical units), the compiled minimum-cost path search
(after Chiu et al. 2010: one row per column, a smoothness penalty, sub-pixel refinement) and the checks
at the end (order enforced, columns without signal NaN, tissue cut off at the top flagged):

* ``layered`` (the default; ``docs/oct.md`` describes it step by step): the outer retina is the wide
  dark-to-bright step from the outer nuclear layer into the photoreceptor/RPE complex (a box gradient over
  ~25 um); the B-scan is flattened to it and averaged along the layers; EZ = half-rise of the outer
  complex, RPE outer edge / Bruch's membrane = the wide bright-to-dark step closing it (subretinal fluid
  over a flat RPE recognised and searched through; a serous PED's dome taken over its floor; an RPE band
  with a brighter band under it searched again on BM), drusen and PED bridged by a lower envelope; ELM =
  ridge of a thin-line detector; the inner layers are anchored on the outer nuclear layer (the darkest
  band above the ELM): OPL_ONL, INL_OPL, IPL_INL by nearest clear steps above it, RNFL_GCL last (on circle
  scans as the broad step under the thick RNFL; on macular scans IPL_INL is searched again under the RNFL's
  lower edge where the INL it left would fill an implausible share of the layers above INL_OPL). Stretches
  without an outer complex (the optic disc at the edge of a macular scan) are NaN with a flag.
* ``classic``: the first, phantom-tuned search (rough RPE = brightest deep band; boundaries searched in
  fixed bands from the RPE up). Kept selectable for comparison; on real scans it fails (docs/oct.md).

Edge strengths are capped at a high percentile so that a very dark fluid pocket does not pull a
boundary more than a normal layer edge does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numba
import numpy as np
from scipy import ndimage

from grok.ids import BOUNDARIES
from grok.oct.filters import gaussian_rows, row_cumsum, uniform2d, window_mean

_I = {name: i for i, name in enumerate(BOUNDARIES)}
#: The EZ band (see :func:`_ez_band`) counts in a column where its prominence is at least this share of the
#: outer complex's contrast; gaps up to :data:`_EZ_BRIDGE_UM` wide are bridged from both sides
_EZ_MIN_PROM = 0.12
_EZ_BRIDGE_UM = 500.0
#: Width of the running median over the RPE's inner edge (see its search)
_RPE_MEDIAN_UM = 150.0


@dataclass
class BscanSegmentation:
    """Result of :func:`segment_bscan`.

    Unpacks as ``boundaries, flags = segment_bscan(...)``.
    """

    boundaries: np.ndarray  #: (9, cols) float32 rows in pixels from the top; NaN where not found
    flags: dict[str, str]  #: quality flag -> reason (empty when nothing was noticed)
    choroid_sclera: np.ndarray  #: (cols,) float32 row of the choroid-sclera interface (NaN if not found)
    image: np.ndarray | None = field(default=None, repr=False)  #: (rows, cols) float16 normalised smoothed image
    fine: np.ndarray | None = field(default=None, repr=False)  #: (rows, cols) float16 3 x 3 averaged, retina rows
    #: (9, cols) float32 in [0, 1]: the boundary's edge strength at its row, relative to the B-scan's typical
    #: strength of that boundary and averaged over ~100 um; NaN where the row is NaN (see :func:`confidence`)
    confidence: np.ndarray | None = field(default=None, repr=False)

    def __iter__(self):
        yield self.boundaries
        yield self.flags

    def to_dict(self) -> dict:
        return {
            "boundaries": {name: self.boundaries[k] for k, name in enumerate(BOUNDARIES)},
            "choroid_sclera": self.choroid_sclera,
            "flags": dict(self.flags),
            **({"confidence": {name: self.confidence[k] for k, name in enumerate(BOUNDARIES)}}
               if self.confidence is not None else {}),
        }


# ----------------------------------------------------------------------------------------------------
# Compiled kernels
# ----------------------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _dp_path(cost, lo, hi, dexp, max_jump, penalty, ref, ref_w):
    """Minimum-cost path, one row per column, ``lo[c] <= row <= hi[c]``.

    cost : (rows, cols) float32, lower is better
    dexp : (cols,) expected row change from column c-1 to c (slope of the reference curve)
    ref, ref_w : an extra cost ``ref_w * |row - ref[c]|`` (pull towards a reference row; ref_w = 0: none)

    Row ``r`` of column ``c`` continues the best of rows ``round(r - dexp[c]) +- max_jump`` of the previous
    column's band (the first one on a tie), paying ``penalty * |r - rp - dexp[c]|``; where that window misses
    the band it joins the band's nearest row. Where ``round(r - dexp[c]) - r`` is the same for every row of
    the column (always, unless ``dexp[c]`` sits on a half), the rows are updated together, one window offset
    at a time (a loop the compiler vectorises; rows outside the previous band hold 1e30 and never win), which
    picks the same row with the same sum as the per-row loop kept for the other columns
    (tests/test_oct_filters.py checks the two against each other).
    """
    rows, cols = cost.shape
    inf = 1e30
    dmax = 0.0
    for c in range(cols):
        dmax = max(dmax, abs(dexp[c]))
    pad = max_jump + int(dmax) + 3  # prev[r] is prevp[r + pad]: every window stays inside prevp
    prevp = np.full(rows + 2 * pad, inf)
    cur = np.full(rows, inf)
    best = np.empty(rows)
    arg = np.empty(rows, np.int64)
    back = np.empty((cols, rows), np.int32)  # per column, contiguous (only rows inside the band are read)
    for r in range(lo[0], hi[0] + 1):
        prevp[r + pad] = cost[r, 0] + ref_w * abs(r - ref[0])
    for c in range(1, cols):
        d0 = dexp[c]
        plo, phi = lo[c - 1], hi[c - 1]
        lc, hc = lo[c], hi[c]
        k0 = int(round(lc - d0)) - lc
        uniform = True
        for r in range(lc, hc + 1):
            if int(round(r - d0)) - r != k0:
                uniform = False
                break
        if uniform:
            for r in range(lc, hc + 1):
                best[r] = inf
                arg[r] = -1
            for j in range(-max_jump, max_jump + 1):
                m = k0 + j  # rp = r + m
                t = penalty * abs(-m - d0)  # = penalty * abs(r - rp - d0), the same int and float steps
                for r in range(lc, hc + 1):
                    ur = np.uint64(r)  # unsigned indices: no negative-index wrap-around test in the loop
                    v = prevp[np.uint64(r + m + pad)] + t
                    bo = best[ur]
                    take = v < bo
                    best[ur] = v if take else bo
                    arg[ur] = (r + m) if take else arg[ur]
        else:
            for r in range(lc, hc + 1):
                centre = int(round(r - d0))
                bb = inf
                aa = -1
                for rp in range(max(plo, centre - max_jump), min(phi, centre + max_jump) + 1):
                    v = prevp[rp + pad] + penalty * abs(r - rp - d0)
                    if v < bb:
                        bb = v
                        aa = rp
                best[r] = bb
                arg[r] = aa
        for r in range(lc, hc + 1):
            a_, b_ = arg[r], best[r]
            if a_ < 0:  # bands do not overlap here: join the nearest row of the previous band
                rp = min(max(int(round(r - d0)), plo), phi)
                b_ = prevp[rp + pad] + penalty * abs(r - rp - d0)
                a_ = rp
            cur[r] = b_ + cost[r, c] + ref_w * abs(r - ref[c])
            back[c, r] = a_
        for r in range(plo, phi + 1):
            prevp[r + pad] = inf
        for r in range(lc, hc + 1):
            prevp[r + pad] = cur[r]
            cur[r] = inf
    path = np.empty(cols, np.int64)
    bb = inf
    aa = lo[cols - 1]
    for r in range(lo[cols - 1], hi[cols - 1] + 1):
        if prevp[r + pad] < bb:
            bb = prevp[r + pad]
            aa = r
    path[cols - 1] = aa
    for c in range(cols - 1, 0, -1):
        path[c - 1] = back[c, path[c]]
    return path


@numba.njit(cache=True, nogil=True)
def _subpixel(edge, path, climb):
    """Move each row up to ``climb`` px uphill on the edge strength, then to the vertex of a parabola
    through the three samples around the local maximum (offset clamped to +-0.5 px)."""
    rows, cols = edge.shape
    out = np.empty(cols, np.float64)
    for c in range(cols):
        r = path[c]
        for _ in range(climb):
            if 1 <= r < rows - 1:
                if edge[r - 1, c] > edge[r, c] and edge[r - 1, c] >= edge[r + 1, c]:
                    r -= 1
                elif edge[r + 1, c] > edge[r, c]:
                    r += 1
                else:
                    break
        out[c] = r
        if 1 <= r < rows - 1:
            a, b, d = edge[r - 1, c], edge[r, c], edge[r + 1, c]
            den = a - 2.0 * b + d
            if b >= a and b >= d and den < 0:
                off = 0.5 * (a - d) / den
                out[c] = r + min(0.5, max(-0.5, off))
    return out


@numba.njit(cache=True, nogil=True)
def _edge_cost_kernel(x, scale, negate, one, zero):
    """See :func:`_edge_cost`; ``scale``, ``one`` and ``zero`` in ``x``'s dtype, so each step rounds as numpy's."""
    rows, cols = x.shape
    out = np.empty((rows, cols), np.float32)
    for r in range(rows):
        for c in range(cols):
            v = -x[r, c] if negate else x[r, c]
            if np.isnan(v):
                out[r, c] = np.nan
                continue
            if not v > zero:
                v = zero
            v = v / scale
            if not v < one:
                v = one
            out[r, c] = one - v
    return out


def _edge_cost(x: np.ndarray, scale: float, negate: bool = False) -> np.ndarray:
    """``(1.0 - np.minimum(np.clip(x, 0.0, None) / scale, 1.0)).astype(np.float32)`` (``-x`` when ``negate``) in
    one pass: an edge strength turned into a path cost in [0, 1], the same numbers as that expression."""
    t = x.dtype.type
    return _edge_cost_kernel(x, t(scale), negate, t(1.0), t(0.0))


# ----------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------


class _Ctx:
    """Per-B-scan arrays shared by the boundary searches."""

    def __init__(self, rows: int, cols: int, gp, gn, cost_p, cost_n, dexp):
        self.rows, self.cols = rows, cols
        self.gp, self.gn = gp, gn  # fine edge strengths (little axial smoothing) for sub-pixel refinement
        self.cost_p, self.cost_n = cost_p, cost_n
        self.dexp = dexp
        self.zero = np.zeros(cols)

    def find(self, polarity: int, lo, hi, *, jump: int = 2, penalty: float = 0.1, ref=None, ref_w: float = 0.0,
             climb: int = 1):
        """Best path of ``polarity`` (+1 dark->light, -1 light->dark) with ``lo <= row <= hi`` per column."""
        lo_i = np.clip(np.floor(np.nan_to_num(lo, nan=1.0)), 1, self.rows - 2).astype(np.int64)
        hi_i = np.clip(np.ceil(np.nan_to_num(hi, nan=self.rows - 2.0)), 1, self.rows - 2).astype(np.int64)
        hi_i = np.maximum(hi_i, lo_i)
        cost, edge = (self.cost_p, self.gp) if polarity > 0 else (self.cost_n, self.gn)
        r = self.zero if ref is None else np.nan_to_num(np.asarray(ref, np.float64), nan=0.0)
        path = _dp_path(cost, lo_i, hi_i, self.dexp, jump, penalty, r, ref_w if ref is not None else 0.0)
        return _subpixel(edge, path, climb)


def _smooth_odd(y: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing with point-symmetric padding, so a linear trend at either end is preserved."""
    pad = int(min(len(y) - 1, max(1, round(3 * sigma))))
    if pad < 1:
        return y.astype(np.float64)
    left = 2 * y[0] - y[pad:0:-1]
    right = 2 * y[-1] - y[-2 : -pad - 2 : -1]
    z = gaussian_rows(np.concatenate([left, y, right]).astype(np.float64), sigma)
    return z[pad : pad + len(y)]


def _box(sigma: float) -> int:
    """Odd box width with the standard deviation of a Gaussian of ``sigma`` pixels."""
    return int(round(math.sqrt(12.0 * sigma * sigma + 1.0))) | 1


def _lower_envelope(y: np.ndarray, sigma: float, iters: int = 12, tol: float = 2.0) -> np.ndarray:
    """Smooth curve under ``y`` (rows grow downwards, so 'under' = larger rows) ignoring local elevations.

    Points above (smaller row than) the smoothed curve by more than ``tol`` are replaced by the curve,
    and the smoothing is repeated, so drusen and PED (which lift the RPE) are bridged.
    """
    cur = y.astype(np.float64).copy()
    for _ in range(iters):
        s = _smooth_odd(cur, sigma)
        cur = np.where(y < s - tol, s, y)
    return _smooth_odd(cur, sigma / 3)


@numba.njit(cache=True, nogil=True)
def _first_strong_kernel(g, lo, hi, frac, last):
    """:func:`_first_strong` per column over rows ``lo[c]..hi[c]`` only; ``frac`` in ``g``'s dtype, so the
    threshold is the same product as numpy's. Returns ``(rows, ok)``; ``ok`` False when a NaN was met (the
    caller then takes numpy's path, whose NaN rules these loops do not copy)."""
    rows, cols = g.shape
    out = np.empty(cols, np.float64)
    for c in range(cols):
        peak = -np.inf
        am = 0  # numpy's argmax over the masked column: the first maximum, row 0 when all are -inf
        for r in range(lo[c], hi[c] + 1):
            v = g[r, c]
            if np.isnan(v):
                return out, False
            if v > peak:
                peak = v
                am = r
        res = am
        if peak > 0:
            thr = frac * g[am, c]  # the peak in g's dtype (``peak`` itself is a float64 variable)
            if last:
                for r in range(hi[c], lo[c] - 1, -1):
                    if g[r, c] >= thr:
                        res = r
                        break
            else:
                for r in range(lo[c], hi[c] + 1):
                    if g[r, c] >= thr:
                        res = r
                        break
        out[c] = res
    return out, True


def _first_strong(g: np.ndarray, lo: np.ndarray, hi: np.ndarray, frac: float, *, last: bool = False) -> np.ndarray:
    """Per column, the first (``last``: the deepest) row in ``lo..hi`` whose ``g`` reaches ``frac`` of the
    column's maximum there."""
    rows, cols = g.shape
    lo = np.clip(np.round(lo), 0, rows - 1).astype(np.int64)
    hi = np.clip(np.round(hi), 0, rows - 1).astype(np.int64)
    out, ok = _first_strong_kernel(g, lo, hi, g.dtype.type(frac), last)
    return out if ok else _first_strong_numpy(g, lo, hi, frac, last=last)


def _first_strong_numpy(g: np.ndarray, lo: np.ndarray, hi: np.ndarray, frac: float, *, last: bool = False) -> np.ndarray:
    """:func:`_first_strong` in whole-array numpy (``lo``, ``hi`` already int rows): the reference the compiled
    loops are tested against, and their path where ``g`` holds NaN."""
    rows, cols = g.shape
    rr = np.arange(rows)[:, None]
    inside = (rr >= lo[None, :]) & (rr <= hi[None, :])
    gm = np.where(inside, g, -np.inf)
    peak = gm.max(axis=0)
    hit = inside & (g >= frac * peak[None, :]) & (peak[None, :] > 0)
    out = rows - 1 - np.argmax(hit[::-1], axis=0) if last else np.argmax(hit, axis=0)
    return np.where(hit.any(axis=0), out, np.argmax(gm, axis=0)).astype(np.float64)


def _fluid_over_rpe(band_mean: np.ndarray, ez: np.ndarray, rpeo: np.ndarray, env: np.ndarray, P: float) -> np.ndarray:
    """Columns where a dark gap separates the outer complex found so far (EZ .. ``rpeo``, lifted above the
    envelope ``env`` by more than ~15 um) from a bright band of RPE thickness lying on the envelope:
    subretinal fluid over the RPE. ``band_mean`` is the image averaged over ~20 um axially."""
    rows, cols = band_mean.shape
    c = np.arange(cols)
    lifted = env - rpeo > 15.0 * P
    if not lifted.any():
        return lifted
    rr = np.arange(rows)[:, None]
    top = np.clip(np.round(ez), 0, rows - 1).astype(np.int64)
    r_o = np.clip(np.round(rpeo), 0, rows - 1).astype(np.int64)
    r_e = np.clip(np.round(env - 8.0 * P), 0, rows - 1).astype(np.int64)
    upper = np.where((rr >= top[None, :]) & (rr <= r_o[None, :]), band_mean, -np.inf).max(axis=0)
    gap = np.where((rr > r_o[None, :] + 4.0 * P) & (rr < r_e[None, :] - 4.0 * P), band_mean, np.inf).min(axis=0)
    lower = band_mean[r_e, c]
    ref = np.maximum(upper, lower)
    return lifted & np.isfinite(gap) & (lower >= 0.85 * upper) & (gap <= 0.45 * ref)


#: PED dome test (see :func:`_ped_dome`): the band above the outer step darker than this share of its median
#: (fluid, not the outer nuclear layer), the complex over it stepping at least this share of the usual outer
#: step (the RPE itself is lifted; over subretinal fluid only the thinner photoreceptor band is, and it steps
#: 0.7-0.9 of that on the phantom), the band under the step under this share of its median (a thin BM line
#: over the choroid, not an RPE band)
_PED_DARK = 0.5
_PED_STEP = 1.0
_PED_FLOOR = 0.85


def _ped_dome(ctx_box, box: np.ndarray, csum: np.ndarray, outer: np.ndarray, lo: np.ndarray, wb: int, P: float,
              lateral_um: float, jump: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ped_columns, dome_row)``: columns where the outer-complex step ``outer`` (box gradient ``box``,
    window ``wb`` rows, image cumulative sums ``csum``) is the floor of a serous PED, and the complex over it.

    A serous PED lifts the RPE as a bright dome over a pocket of fluid; below the pocket lie only the thin
    Bruch's membrane and the choroid. The step from that pocket (darker than any retinal layer) into them can
    outdo the step from the outer nuclear layer into the lifted complex. Such columns are those where the
    band above ``outer`` is fluid-dark (under :data:`_PED_DARK` of its median over the B-scan: the outer
    nuclear layer elsewhere), the band under it is no RPE (under :data:`_PED_FLOOR` of its median: subretinal
    fluid over a flat RPE ends on the full RPE band and is left to the RPE search), in runs of at least
    ~100 um; a run is taken whole where it holds ~100 um whose best box step at least ~30 um higher
    (``dome_row``) is at least :data:`_PED_STEP` of the usual outer step (the dome's sloping walls step
    less). ``dome_row`` is ``outer`` where nothing was found."""
    rows, cols = box.shape
    c = np.arange(cols)
    o = np.clip(np.round(outer), wb, rows - 1 - wb).astype(np.int64)
    above = (csum[o, c] - csum[o - wb, c]) / wb
    below = (csum[o + wb, c] - csum[o, c]) / wb
    run = max(3, int(round(100.0 / lateral_um)))
    cand = (above < _PED_DARK * float(np.median(above))) & (below < _PED_FLOOR * float(np.median(below)))
    cand = ndimage.binary_opening(cand, structure=np.ones(run, bool))
    none = np.zeros(cols, bool)
    if not cand.any():
        return none, outer
    dome = ctx_box.find(+1, lo, np.maximum(outer - 30.0 * P, lo + 1), jump=jump, penalty=0.04, climb=0)
    d = np.clip(np.round(dome), 0, rows - 1).astype(np.int64)
    strong = box[d, c] >= _PED_STEP * float(np.median(box[o, c]))
    core = ndimage.binary_opening(cand & strong, structure=np.ones(run, bool))
    if not core.any():
        return none, outer
    # the dome's walls step less (a thin sloping band): a run of dark-topped columns holding a strong core
    # is taken whole
    lab, n = ndimage.label(cand)
    keep = np.zeros(n + 1, bool)
    keep[np.unique(lab[core])] = True
    keep[0] = False
    return keep[lab], dome


#: An elevation of the RPE above Bruch's membrane is a misplaced RPE when the band under it holds a level at
#: least this share of the "RPE" band's own (see :func:`_misplaced_rpe`)
_RPE_MISPLACED = 1.1


def _misplaced_rpe(band_mean: np.ndarray, rpe: np.ndarray, rpeo: np.ndarray, bm: np.ndarray, P: float,
                   lateral_um: float) -> np.ndarray:
    """Columns (runs of at least ~60 um) where the RPE band found (``rpe`` .. ``rpeo``) lies more than ~10 um
    above Bruch's membrane ``bm`` and the space between them (from ~4 um under ``rpeo`` to ~6 um above
    ``bm``, off the BM line) holds a level at least :data:`_RPE_MISPLACED` of the band's peak in
    ``band_mean`` (the image averaged over ~20 um). Drusen lift the RPE over dimmer material, a PED over
    dark fluid: a brighter band under the "RPE" is the real RPE, and the band found is one above it."""
    rows, cols = band_mean.shape
    mis = np.zeros(cols, bool)
    run = max(3, int(round(60.0 / lateral_um)))
    with np.errstate(invalid="ignore"):
        lifted = bm - rpeo > 10.0 * P
    if lifted.sum() < run:  # most B-scans: nothing lifted, nothing to check
        return mis
    rr = np.arange(rows)[:, None]
    sub = band_mean[:, lifted]
    top, ro = np.round(rpe[lifted])[None, :], np.round(rpeo[lifted])[None, :]
    up = np.where((rr >= top) & (rr <= ro), sub, -np.inf).max(axis=0)
    low = np.where((rr >= ro + 4.0 * P) & (rr <= np.round(bm[lifted])[None, :] - 6.0 * P), sub, -np.inf).max(axis=0)
    mis[lifted] = np.isfinite(low) & (up > 0) & (low >= _RPE_MISPLACED * up)
    return ndimage.binary_opening(mis, structure=np.ones(run, bool))


#: Normal share of the inner nuclear layer in the span from RNFL_GCL to INL_OPL, INL / (GCL + IPL + INL):
#: 0.29-0.34 in every ETDRS sector of 9 (mean layer thicknesses of healthy eyes, Spectralis; BMC Ophthalmology
#: 2018;18:169, doi:10.1186/s12886-018-0842-y, Table 6)
_INL_SHARE = 0.32
#: A first IPL_INL whose INL takes more than this share of that span took the RNFL's lower edge
#: (see :func:`_rnfl_edge_taken`)
_INL_SHARE_MAX = 0.55
#: The thickest macular RNFL the step taken may close: the same table's thickest sector, 46 +- 7 um (outer
#: nasal), plus 2 SD
_RNFL_MAX_UM = 60.0
#: ... over a stretch at least this wide: the outer macula's layers thin gradually, so the RNFL's edge is taken
#: over long stretches there, while at the foveola, where the inner layers merge and the first search can
#: already be off, a high share is local (a 60 um run there moved the foveal IPL_INL 4-9 px further off)
_TAKEN_RUN_UM = 200.0


def _rnfl_edge_taken(ilm: np.ndarray, ipl_inl: np.ndarray, rnfl_gcl: np.ndarray, inl_opl: np.ndarray, P: float,
                     lateral_um: float) -> np.ndarray:
    """Columns (runs of at least :data:`_TAKEN_RUN_UM`) where the IPL_INL path took the RNFL's lower edge: the INL it
    leaves (IPL_INL to INL_OPL) fills more than :data:`_INL_SHARE_MAX` of the span from RNFL_GCL (found
    above it) to INL_OPL, where a normal INL fills about a third (:data:`_INL_SHARE`), that span is at
    least ~30 um (at the foveola the layers merge and shares mean nothing), and the tissue from the ILM down
    to the step taken is no thicker than a macular RNFL (:data:`_RNFL_MAX_UM`; near the fovea, where the
    ganglion cell and inner plexiform layers thin before the INL and the share can pass the limit with the
    right step taken, that tissue holds them too)."""
    span = inl_opl - rnfl_gcl
    with np.errstate(invalid="ignore", divide="ignore"):
        taken = ((inl_opl - ipl_inl) > _INL_SHARE_MAX * span) & (span > 30.0 * P) & (ipl_inl - ilm <= _RNFL_MAX_UM * P)
    return ndimage.binary_opening(taken, structure=np.ones(max(3, int(round(_TAKEN_RUN_UM / lateral_um))), bool))


def _window_mean(cum: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row r, the column-wise mean of rows ``a[r]`` .. ``b[r] - 1`` (clipped to the image) from a
    :func:`grok.oct.filters.row_cumsum`; an empty window counts one row."""
    rows = cum.shape[0] - 1
    return window_mean(cum, np.clip(a, 0, rows), np.clip(b, 0, rows))


def _vitreous_above(s1: np.ndarray, ilm: np.ndarray, low: np.ndarray, band_px: float, flags: dict[str, str]) -> bool:
    """False (with a flag) when the band above the ILM is not darker than the retina below it by a clear
    margin in most columns: an inverted (upside-down) or mirror-image B-scan."""
    rows, cols = s1.shape
    c = np.arange(cols)
    r = np.clip(np.round(ilm), 0, rows - 1).astype(np.int64)
    above = np.stack([s1[np.clip(r - 2 - k, 0, rows - 1), c] for k in range(max(1, int(band_px)))]).mean(axis=0)
    below = np.stack([s1[np.clip(r + 2 + k, 0, rows - 1), c] for k in range(max(1, int(band_px)))]).mean(axis=0)
    room = r >= int(band_px) + 3  # columns with a whole band above the ILM (a cut-off retina has none)
    ok = ~low & room
    if ok.sum() < 0.3 * cols:
        return True
    floor = float(np.percentile(s1[::2, ::2], 2))
    dark = (above - floor) < 0.5 * (below - floor)
    if dark[ok].mean() < 0.5:
        flags["inverted_or_mirrored"] = ("the band above the first retinal edge is not dark in "
                                         f"{1 - dark[ok].mean():.0%} of the columns: an inverted or mirror-image "
                                         "B-scan; flip or re-export it")
        return False
    return True


def _outer_level(band_mean: np.ndarray, ez: np.ndarray, bm: np.ndarray) -> np.ndarray:
    """Per column, the brightest outer-complex level (EZ .. BM, image averaged over ~20 um) above the
    image's floor (5th percentile)."""
    rows, _ = band_mean.shape
    rr = np.arange(rows)[:, None]
    top = np.clip(np.round(ez), 0, rows - 1)[None, :]
    bot = np.clip(np.round(bm), 0, rows - 1)[None, :]
    peak = np.where((rr >= top) & (rr <= bot), band_mean, -np.inf).max(axis=0)
    return peak - float(np.percentile(band_mean, 5))


def _outer_complex_absent(level: np.ndarray, min_run: int) -> np.ndarray:
    """Columns in runs of at least ``min_run`` whose outer-complex ``level`` is under 45 % of the median."""
    weak = level < 0.45 * float(np.median(level))
    return ndimage.binary_opening(weak, structure=np.ones(min_run, bool)) if level.size >= min_run else weak


def _vessel_shadows(level: np.ndarray, window: int, max_run: int, margin: int = 0) -> np.ndarray:
    """Columns in runs of at most ``max_run`` whose outer-complex ``level`` is under 75 % of its running
    median over ``window`` columns: the shadow a retinal vessel casts on every layer below it. Each shadow
    is widened by ``margin`` columns on both sides (the vessel's walls reach past its shadow's core) and
    shadows closer than twice that are joined (vessels running side by side)."""
    ref = ndimage.median_filter(level, size=max(3, window) | 1, mode="nearest")
    dark = level < 0.75 * ref
    if margin > 0 and dark.any():
        dark = ndimage.binary_dilation(dark, structure=np.ones(2 * margin + 1, bool))
        dark = ndimage.binary_closing(dark, structure=np.ones(2 * margin + 1, bool))
    lab, n = ndimage.label(dark)
    if n:
        sizes = ndimage.sum(dark, lab, index=np.arange(1, n + 1))
        dark &= np.concatenate([[False], sizes <= max_run])[lab]
    return dark


def _bridge(y: np.ndarray, gap: np.ndarray) -> np.ndarray:
    """``y`` with the columns in ``gap`` replaced by linear interpolation from the nearest columns outside it."""
    if not gap.any() or gap.all():
        return y
    x = np.arange(y.size)
    return np.where(gap, np.interp(x, x[~gap], y[~gap]), y)


def _half_level(f: np.ndarray, path: np.ndarray, polarity: int, span: int, power: float = 1.0) -> np.ndarray:
    """Per column, the row near ``path`` where ``f ** power`` crosses half-way between its levels at the ends
    of a window of ``span`` rows on either side (the mean of three rows each), going the edge's way
    (``polarity`` +1: dark to light); the crossing nearest ``path``, linearly interpolated. Columns without
    one keep ``path``. ``power=4`` undoes a 4th-root display compression (Spectralis), so the half-way
    point is that of the blurred step in about linear intensity, where the point-spread function acts."""
    rows, cols = f.shape
    c = np.arange(cols)
    r0 = np.clip(np.round(np.nan_to_num(path, nan=0.0)).astype(np.int64), span, rows - 1 - span)
    win = np.clip(f[r0[None, :] + np.arange(-span, span + 1)[:, None], c[None, :]], 0.0, None) ** power
    half = 0.5 * (win[:3].mean(axis=0) + win[-3:].mean(axis=0))
    d = polarity * (win - half[None, :])
    cross = (d[:-1] < 0) & (d[1:] >= 0)
    x = np.arange(-span, span)[:, None] + r0[None, :]  # row of the sample before each crossing
    dist = np.where(cross, np.abs(x + 0.5 - path[None, :]), np.inf)
    i = np.argmin(dist, axis=0)
    lo, hi = win[i, c], win[i + 1, c]
    frac = np.clip((half - lo) / np.where(hi != lo, hi - lo, 1.0), 0.0, 1.0)
    out = x[i, c] + frac
    return np.where(np.isfinite(dist[i, c]) & np.isfinite(path), out, path)


def _running_thickness(upper: np.ndarray, lower: np.ndarray, window: int) -> np.ndarray:
    """Running median over ``window`` columns (wrapping round: a circle scan closes on itself) of the
    thickness ``lower - upper``: what a layer's thickness is expected to be where one of its edges slipped."""
    t = lower - upper
    t = np.where(np.isfinite(t), t, np.nanmedian(t))
    return ndimage.median_filter(t, size=min(window, t.size) | 1, mode="wrap")


def _half_rise(f: np.ndarray, lo: np.ndarray, hi: np.ndarray, frac: float = 0.5) -> np.ndarray:
    """Per column, the first row in ``lo..hi`` where ``f`` rises ``frac`` of the way from the dark level
    (20th percentile of the window) to the window's peak; sub-pixel by linear interpolation."""
    rows, cols = f.shape
    lo_i = np.clip(np.round(lo), 1, rows - 2).astype(np.int64)
    hi_i = np.maximum(np.clip(np.round(hi), 1, rows - 2).astype(np.int64), lo_i + 1)
    h = int((hi_i - lo_i).max()) + 1
    c = np.arange(cols)
    at = lo_i[None, :] + np.arange(h)[:, None]
    inside = at <= hi_i[None, :]
    win = np.where(inside, f[np.minimum(at, rows - 1), c[None, :]], np.inf)
    n_in = inside.sum(axis=0)
    srt = np.sort(win, axis=0)
    dark = srt[np.minimum((0.2 * (n_in - 1)).astype(np.int64), h - 1), c]
    peak = srt[n_in - 1, c]
    half = dark + frac * (peak - dark)
    hit = inside & (win >= half[None, :])
    r = lo_i + np.argmax(hit, axis=0)
    prev = f[np.maximum(r - 1, 0), c]
    cur = f[r, c]
    frac = np.clip((half - prev) / np.maximum(cur - prev, 1e-6), 0.0, 1.0)
    return (r - 1 + frac).astype(np.float64)


def _ez_band(f: np.ndarray, rpe: np.ndarray, P: float, lo_um: float = 16.0, hi_um: float = 65.0,
             side_um: float = 25.0, power: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Per column, the ellipsoid zone as a band of its own above the RPE: ``(upper_edge_row, prominence)``.

    Going up from the RPE's inner edge ``rpe`` the outer retina shows the interdigitation zone (on the RPE),
    the outer segments (dark), the EZ band, the inner-segment myoids (dark) and the thin, faint ELM line. The
    EZ band is the local maximum of ``f`` whose peak lies ``lo_um``..``hi_um`` above ``rpe`` and stands out
    most from the dips on both sides (within ``side_um`` above it, and down to the RPE), relative to the
    contrast from the dark level above the RPE to the RPE complex's peak. Its upper edge is where ``f ** power``
    falls half-way from that peak to the dip above it (linear interpolation; ``power=4`` undoes a 4th-root
    display compression, as for the RPE's inner edge). Where the EZ is not resolved from the
    RPE complex (or lost) no maximum stands out: the prominence is low there and the caller keeps another
    estimate.
    """
    rows, cols = f.shape
    c = np.arange(cols)
    base = np.round(np.nan_to_num(rpe, nan=rows // 2)).astype(np.int64)
    k0, k1 = max(1, int(round(lo_um * P))), max(2, int(round(hi_um * P)))
    sa = max(2, int(round(side_um * P)))
    prof = f[np.clip(base[None, :] - np.arange(0, k1 + sa + 2)[:, None], 0, rows - 1), c]  # k rows above rpe
    peak = f[np.clip(base[None, :] + np.arange(0, max(2, int(round(20.0 * P))) + 1)[:, None], 0, rows - 1), c].max(axis=0)
    q = int(0.2 * (prof.shape[0] - k0 - 1))
    dark = np.partition(prof[k0:], q, axis=0)[q]  # the 20th percentile (by rank) of the window above
    contrast = np.maximum(peak - dark, 1e-6)
    ks = np.arange(k0, k1 + 1)
    v = prof[ks]
    is_max = (v >= prof[ks - 1]) & (v >= prof[ks + 1])
    dip_below = np.minimum.accumulate(prof[:k1], axis=0)[ks - 1]
    dip_above = np.stack([prof[ks + j] for j in range(1, sa + 1)]).min(axis=0)
    prom = np.where(is_max, np.minimum(v - dip_below, v - dip_above) / contrast[None, :], -np.inf)
    i = np.argmax(prom, axis=0)
    kpk = ks[i]
    lin = np.clip(prof, 0.0, None) ** power  # the crossing in about linear intensity (as the RPE's)
    half = 0.5 * (lin[kpk, c] + np.clip(dip_above[i, c], 0.0, None) ** power)
    edge = np.full(cols, np.nan)
    for j in range(1, sa + 1):
        k = kpk + j
        a, b = lin[k - 1, c], lin[k, c]
        new = np.isnan(edge) & (b < half)
        edge = np.where(new, k - 1 + np.clip((a - half) / np.maximum(a - b, 1e-9), 0.0, 1.0), edge)
    return base - edge, prom[i, c]


def _ez_from_band(f: np.ndarray, rpe: np.ndarray, ez: np.ndarray, P: float, lateral_um: float) -> np.ndarray:
    """The EZ row per column: the upper edge of the EZ band (:func:`_ez_band`, half-way in about linear
    intensity) where the band stands out in most of the ~100 um around a column; across gaps of up to
    :data:`_EZ_BRIDGE_UM` (a vessel shadow, a short EZ loss) the edge interpolated from both sides, unless
    ``ez`` (the outer complex's half-rise) lies higher there (photoreceptors lifted by subretinal fluid);
    ``ez`` elsewhere."""
    edge, prom = _ez_band(f, rpe, P, power=4.0)
    band = np.isfinite(edge) & (prom >= _EZ_MIN_PROM)
    if band.sum() < 2:
        return ez
    wz = max(3, int(round(100.0 / lateral_um))) | 1
    use = ndimage.uniform_filter1d(band.astype(np.float64), wz, mode="nearest") >= 0.5
    guide = ndimage.median_filter(_bridge(np.where(band, edge, 0.0), ~band), size=wz, mode="nearest")
    out = np.where(use, guide, ez)
    if use.any() and not use.all():
        lab, n = ndimage.label(~use)
        sizes = ndimage.sum(~use, lab, index=np.arange(1, n + 1))
        gap = np.concatenate([[False], sizes * lateral_um <= _EZ_BRIDGE_UM])[lab]
        out = np.where(gap, np.minimum(guide, ez), out)
    return out


def _nan_result(rows: int, cols: int, flags: dict[str, str], image=None) -> BscanSegmentation:
    nan9 = np.full((len(BOUNDARIES), cols), np.nan, np.float32)
    return BscanSegmentation(nan9, flags, np.full(cols, np.nan, np.float32), image, None, nan9.copy())


def prepare_bscan(bscan: np.ndarray) -> tuple[np.ndarray | None, dict[str, str]]:
    """Normalise a B-scan to float32 in about [0, 1] and report problems.

    Returns ``(image or None, flags)``; None means nothing can be segmented (the flags say why).
    """
    flags: dict[str, str] = {}
    a = np.asarray(bscan)
    if a.ndim != 2:
        raise ValueError(f"a B-scan must be a (rows, cols) array, got shape {a.shape}")
    if a.shape[0] < 64 or a.shape[1] < 16:
        raise ValueError(f"B-scan of shape {a.shape} is too small to segment (need >= 64 rows, >= 16 columns)")
    a = a.astype(np.float32, copy=True)
    finite = np.isfinite(a)
    n_bad = int(a.size - np.count_nonzero(finite))
    if n_bad:
        if n_bad > 0.5 * a.size:
            flags["non_finite_pixels"] = f"{n_bad} of {a.size} pixels are NaN/inf"
            return None, flags
        fill = float(np.percentile(a[finite], 5))
        a[~finite] = fill
        flags["non_finite_pixels"] = f"{n_bad} NaN/inf pixels replaced by the background level"
    sub = a[::3, ::3]
    p1, p50, p997 = np.percentile(sub, [1, 50, 99.7])
    if not p997 - p1 > 1e-6 * max(1.0, abs(float(p997))):
        flags["constant_bscan"] = "the B-scan has (almost) no contrast"
        return None, flags
    top = float(a.max())
    sat = float(np.mean(sub >= top)) if top > p50 else 0.0
    if sat > 0.02:  # the detector clipped: bright layers run together, their edges are lost
        flags["saturated_pixels"] = f"{sat:.0%} of the pixels sit at the maximum value; bright-layer edges are unreliable"
    if (p50 - p1) / (p997 - p1) < 0.02 and a.min() >= 0:
        # linear (un-compressed) intensities, e.g. raw vendor floats: compress like the devices do
        a = np.power(a - a.min(), 0.25, dtype=np.float32)
        p1, p997 = np.percentile(a[::3, ::3], [1, 99.7])
        flags["linear_intensity"] = "intensities looked linear; 4th-root compressed before segmentation"
    a -= np.float32(p1)
    a *= np.float32(1.0 / (p997 - p1))
    np.clip(a, -0.2, 1.2, out=a)
    return a, flags


def _rough_ilm(s2: np.ndarray, levels: np.ndarray, flags: dict[str, str]):
    """``(bg, fg, has, ilm_r)``: background / foreground levels (``levels``: the 1st, 5th and 99.5th
    percentiles of ``s2[::2, ::2]``), columns with tissue and the first row above 35 % of the way to the
    foreground (a rough ILM); None (with a flag) when no bright band exists."""
    bg, fg = levels[1], levels[2]
    if fg - bg < 0.05:
        flags["no_retina"] = "no bright retinal band found"
        return None
    above = s2 > bg + 0.35 * (fg - bg)
    return bg, fg, above.any(axis=0), np.argmax(above, axis=0).astype(np.float64)


def _retina_like(top: np.ndarray, bottom: np.ndarray, axial_um: float, low: np.ndarray, flags: dict[str, str],
                 what: str) -> bool:
    """False (flag ``not_oct_like``) when the median ``top``-to-``bottom`` distance is not that of a retina
    (60-1500 um); otherwise flag the low-signal columns left NaN, if any, and return True."""
    thick_um = float(np.median(bottom - top)) * axial_um
    if not (60.0 <= thick_um <= 1500.0):
        flags["not_oct_like"] = f"{what} distance {thick_um:.0f} um is not that of a retina"
        return False
    if low.any():
        flags["low_signal_columns"] = f"{int(low.sum())} columns without usable signal are NaN"
    return True


def _low_signal(has: np.ndarray, col_peak: np.ndarray, bg: float, fg: float, flags: dict[str, str]):
    """Columns without usable signal (no tissue, or a peak under 25 % of the way to the foreground);
    None (with a flag) when they are more than 70 % of the B-scan."""
    low = ~has | (col_peak < bg + 0.25 * (fg - bg))
    if low.mean() > 0.7:
        flags["no_retina"] = "fewer than 30% of the columns show a retina"
        return None
    return low


def _edge_costs(s1: np.ndarray, s0: np.ndarray):
    """Vertical gradient ``g`` of ``s1``, its 99th-percentile scale, the dark->light / light->dark costs and
    the edge strengths of the lightly smoothed ``s0`` used for sub-pixel refinement (thin lines keep edges)."""
    g = np.zeros_like(s1)
    g[1:-1] = s1[2:] - s1[:-2]
    scale = float(np.percentile(np.abs(g[::2, ::2]), 99.0)) or 1.0
    cost_p, cost_n = _edge_cost(g, scale), _edge_cost(g, scale, negate=True)
    g0 = np.zeros_like(s0)
    g0[1:-1] = s0[2:] - s0[:-2]
    return g, scale, cost_p, cost_n, np.clip(g0, 0.0, None), np.clip(-g0, 0.0, None)


def _oct_like(g_scaled: np.ndarray, ilm: np.ndarray, outer: np.ndarray, flags: dict[str, str]) -> bool:
    """A retina has strong, continuous ILM and outer-retina edges; speckle or a non-OCT image does not."""
    rows, cols = g_scaled.shape
    cols_i = np.arange(cols)
    ilm_edge = float(np.median(g_scaled[np.clip(np.round(ilm).astype(int), 0, rows - 1), cols_i]))
    out_edge = float(np.median(g_scaled[np.clip(np.round(outer).astype(int), 0, rows - 1), cols_i]))
    if ilm_edge < 0.8 and out_edge < 0.9:  # calibrated: speckle-only images give ~0.5 / ~0.7
        flags["not_oct_like"] = (f"no continuous retinal edges (ILM {ilm_edge:.2f}, RPE {out_edge:.2f} of the "
                                 "strongest gradients); not an OCT B-scan, or too noisy")
        return False
    return True


def _boundaries_classic(img, s0, s1, s2, s2_levels, axial_um: float, lateral_um: float, flags: dict[str, str],
                      pattern: str):
    """The phantom-tuned method: rough RPE = brightest deep band, boundaries searched bottom-up in fixed bands."""
    rows, cols = img.shape
    um = 1.0 / axial_um
    # ---- rough retina -------------------------------------------------------------------------
    rough = _rough_ilm(s2, s2_levels, flags)
    if rough is None:
        return None
    bg, fg, has, ilm_r = rough
    rr = np.arange(rows)[:, None]
    s_lat = ndimage.uniform_filter1d(s1, max(3, int(100.0 / lateral_um)), axis=1, mode="nearest")
    # brightest band below the inner retina, mildly preferring deeper rows: near the disc the RNFL can be
    # as bright as the RPE, but it is never the deepest bright band
    depth = (rr - ilm_r[None, :]) * (axial_um / 250.0)
    deep = depth >= 80.0 / 250.0
    # vessel shadows: in a log-like image a shadow subtracts a constant below the vessel; remove the
    # column offset relative to the neighbourhood so a shadowed RPE still wins
    col_mean = np.where(deep, s1, 0.0).sum(axis=0) / np.maximum(deep.sum(axis=0), 1)
    base = ndimage.median_filter(col_mean, size=max(5, int(400.0 / lateral_um)) | 1, mode="nearest")
    offset = np.minimum(col_mean - base, 0.0)
    masked = np.where(deep, (s_lat - offset[None, :]) * (1.0 + 0.3 * np.minimum(depth, 1.0)), -np.inf)
    rpe_r = np.argmax(masked, axis=0).astype(np.float64)
    col_peak = s2[rpe_r.astype(int), np.arange(cols)]
    low = _low_signal(has, col_peak, bg, fg, flags)
    if low is None:
        return None
    ilm_r, rpe_r = _bridge(ilm_r, low), _bridge(rpe_r, low)
    rpe_r = ndimage.median_filter(rpe_r, size=max(3, int(60.0 / lateral_um)) | 1, mode="nearest")
    if not _retina_like(ilm_r, rpe_r, axial_um, low, flags, "ILM-to-RPE"):
        return None
    ref = _lower_envelope(rpe_r, sigma=max(5.0, 600.0 / lateral_um), iters=4, tol=8.0)
    dexp = np.concatenate([[0.0], np.diff(ref)])
    slope_px_per_mm = np.abs(np.diff(ref)).mean() / (lateral_um * 1e-3) if cols > 1 else 0.0
    if slope_px_per_mm * axial_um > 150.0:  # > ~150 um of depth per mm across: ~8.5 degrees mean tilt
        flags["extreme_tilt"] = f"retina tilted by {slope_px_per_mm * axial_um:.0f} um per mm on average"

    # ---- costs -------------------------------------------------------------------------------
    g, scale, cost_p, cost_n, gp, gn = _edge_costs(s1, s0)
    ctx = _Ctx(rows, cols, gp, gn, cost_p, cost_n, dexp)
    P = um  # pixels per micrometre (axial)

    # ---- boundaries in robust order ---------------------------------------------------------------
    def J(slope: float) -> int:
        """Largest row change per column for a boundary rising at ``slope`` (axial um per lateral um)."""
        return max(1, int(math.ceil(slope * lateral_um / axial_um)))

    ilm = ctx.find(+1, ilm_r - 45 * P, ilm_r + 45 * P, jump=J(0.8), penalty=0.08, climb=2)
    rpe = ctx.find(+1, np.maximum(rpe_r - 28 * P, ilm + 40 * P), rpe_r + 6 * P, jump=J(7.0), penalty=0.06)
    rpeo = ctx.find(-1, rpe + 8 * P, rpe + 36 * P, jump=J(7.0), penalty=0.06, ref=rpe + 16 * P, ref_w=0.012 * axial_um)
    ez = ctx.find(+1, ilm + 30 * P, rpe - 18 * P, jump=J(1.6), penalty=0.12, ref=rpe - 40 * P, ref_w=0.004)
    env = _lower_envelope(rpeo, sigma=max(5.0, 470.0 / lateral_um), iters=8, tol=max(1.5, 10.0 * P))
    bm = ctx.find(-1, np.maximum(rpe + 8 * P, env - 20 * P), np.maximum(env + 12 * P, rpe + 10 * P), jump=J(0.55),
                  penalty=0.15, ref=env, ref_w=0.012 * axial_um)
    elm = ctx.find(+1, ez - 62 * P, ez - 12 * P, jump=J(1.6), penalty=0.12, ref=ez - 28 * P, ref_w=0.01)
    opl_onl = ctx.find(-1, ilm, elm - 20 * P, jump=J(0.55), penalty=0.1, ref=elm, ref_w=0.006)
    inl_opl = ctx.find(+1, np.maximum(ilm, opl_onl - 55 * P), opl_onl - 4 * P, jump=J(0.55), penalty=0.1,
                       ref=opl_onl - 25 * P, ref_w=0.01)
    ipl_inl = ctx.find(-1, np.maximum(ilm, inl_opl - 90 * P), inl_opl - 6 * P, jump=J(0.55), penalty=0.1,
                       ref=inl_opl - 20 * P, ref_w=0.008 * axial_um)
    rnfl_gcl = ctx.find(-1, ilm, np.maximum(ilm, ipl_inl - 8 * P), jump=J(0.55), penalty=0.1, ref=ilm, ref_w=0.004)
    if not _oct_like(g / scale, ilm, rpe, flags):
        return None

    return np.stack([ilm, rnfl_gcl, ipl_inl, inl_opl, opl_onl, elm, ez, rpe, bm]).astype(np.float64), low, dexp


def _boundaries_layered(img, s0, s1, s2, s2_levels, axial_um: float, lateral_um: float, flags: dict[str, str],
                      pattern: str):
    """The real-scan method: box-gradient outer retina, flattened search, half-rise EZ, BM closing the complex."""
    rows, cols = img.shape
    um = 1.0 / axial_um
    flat_sigma_um = 40.0
    # ---- rough retina -------------------------------------------------------------------------
    rough = _rough_ilm(s2, s2_levels, flags)
    if rough is None:
        return None
    bg, fg, has, ilm_r = rough
    # the brightest level below the rough ILM tells a retina from an empty column
    rr = np.arange(rows)[:, None]
    below = rr >= ilm_r[None, :]
    col_peak = np.where(below, s2, -np.inf).max(axis=0)
    low = _low_signal(has, col_peak, bg, fg, flags)
    if low is None:
        return None
    ilm_r = _bridge(ilm_r, low)
    P = um  # pixels per micrometre (axial)

    # ---- costs -------------------------------------------------------------------------------
    g, scale, cost_p, cost_n, gp, gn = _edge_costs(s1, s0)

    def J(slope: float) -> int:
        """Largest row change per column for a boundary rising at ``slope`` (axial um per lateral um)."""
        return max(1, int(math.ceil(slope * lateral_um / axial_um)))

    zero = np.zeros(cols)
    ctx = _Ctx(rows, cols, gp, gn, cost_p, cost_n, zero)
    ilm = ctx.find(+1, ilm_r - 45 * P, ilm_r + 45 * P, jump=J(0.8), penalty=0.08, climb=2)

    # ---- outer retina: the wide dark-to-bright step from the outer nuclear layer into the
    # photoreceptor / RPE complex. A box gradient over ~25 um on each side answers to that step and
    # not to thin lines or to the bright RNFL of a peripapillary scan (which ends light-to-dark).
    wb = max(2, int(round(25.0 * P)))
    csum = row_cumsum(s1)
    idx = np.arange(rows)
    below_mean = _window_mean(csum, idx, idx + wb)
    box = below_mean - _window_mean(csum, idx - wb, idx)
    # weighted by the brightness it steps into: the photoreceptor / RPE complex is the brightest band of
    # the outer retina, the OPL (whose step from the INL can be as large in some eyes) is not
    weight = below_mean / max(float(np.percentile(below_mean[::2, ::2], 99.5)), 1e-6)
    box *= np.clip(weight, 0.0, 1.0, out=weight)
    lo_o = ilm + 60.0 * P
    band = (rr >= lo_o[None, :]) & (rr <= rows - 3) & (box > 0)
    bscale = float(np.percentile(box[band], 99.0)) if band.any() else 1.0
    cost_box = _edge_cost(box, max(bscale, 1e-6))
    ctx_box = _Ctx(rows, cols, np.clip(box, 0, None), gn, cost_box, cost_n, zero)
    outer = ctx_box.find(+1, lo_o, np.full(cols, rows - 3.0), jump=J(1.2), penalty=0.04, climb=0)
    # a serous PED lifts the RPE off Bruch's membrane as a thin bright dome over a dark pocket: the step
    # from the pocket into the thin BM line and the choroid under it can outdo the step into the lifted
    # complex. Where it did, the complex over the pocket is taken instead (see _ped_dome), and Bruch's
    # membrane's curvature (``floor``, for the envelopes below) is bridged under it
    ped, dome = _ped_dome(ctx_box, box, csum, outer, lo_o, wb, P, lateral_um, J(1.2))
    lift = float(np.max(outer[ped] - dome[ped])) if ped.any() else 0.0
    floor = _bridge(outer, ped)
    outer = np.where(ped, dome, outer)
    outer_s = ndimage.median_filter(outer, size=max(3, int(80.0 / lateral_um)) | 1, mode="nearest")
    ref = _smooth_odd(outer_s, max(2.0, 60.0 / lateral_um))
    ref_floor = ref if not ped.any() else _smooth_odd(
        ndimage.median_filter(floor, size=max(3, int(80.0 / lateral_um)) | 1, mode="nearest"), max(2.0, 60.0 / lateral_um))
    dexp = np.concatenate([[0.0], np.diff(ref)])
    ctx.dexp = dexp
    if not _retina_like(ilm, ref, axial_um, low, flags, "ILM-to-outer-retina"):
        return None
    slope_px_per_mm = np.abs(np.diff(ref)).mean() / (lateral_um * 1e-3) if cols > 1 else 0.0
    if slope_px_per_mm * axial_um > 150.0 and pattern != "circle":  # ~8.5 degrees mean tilt
        flags["extreme_tilt"] = f"retina tilted by {slope_px_per_mm * axial_um:.0f} um per mm on average"

    # ---- flatten to the outer retina ------------------------------------------------------------
    # every later search runs on the image shifted column by column so the outer retina is straight:
    # layers then run (nearly) horizontally and can be averaged along them without blurring their
    # edges, which is what a single-frame (unaveraged) real B-scan needs against its speckle
    shift = np.round(ref - np.median(ref)).astype(np.int64)
    # only the rows from just above the ILM to ~250 um below the outer retina are searched: crop to them
    r0 = int(max(0, math.floor(np.min(ilm - shift)) - 10))
    r1 = int(min(rows, math.ceil(np.max(ref - shift) + 250.0 * P + lift) + 1))  # a PED's floor lies deeper
    src_rows = np.clip(np.arange(r0, r1)[:, None] + shift[None, :], 0, rows - 1)
    flat = np.take_along_axis(img, src_rows, axis=0)
    rows = r1 - r0  # band rows from here on: band row b of column c is image row b + r0 + shift[c]
    idx = np.arange(rows)
    rr = idx[:, None]
    latf = ndimage.gaussian_filter1d(flat, max(1.0, flat_sigma_um / lateral_um), axis=1, mode="nearest",
                                     truncate=2.5)
    f1 = gaussian_rows(latf, max(0.8, 4.0 * um), truncate=3.0)
    f0 = gaussian_rows(latf, 0.6, truncate=3.0)
    gf = np.zeros_like(f1)
    gf[1:-1] = f1[2:] - f1[:-2]
    fscale = float(np.percentile(np.abs(gf[::2, ::2]), 99.0)) or 1.0
    g0f = np.zeros_like(f0)
    g0f[1:-1] = f0[2:] - f0[:-2]
    fctx = _Ctx(rows, cols, np.clip(g0f, 0.0, None), np.clip(-g0f, 0.0, None),
                _edge_cost(gf, fscale), _edge_cost(gf, fscale, negate=True), zero)
    sh = (shift + r0).astype(np.float64)

    # Bruch's membrane follows the eye's curvature smoothly; the flattening reference may not (it can
    # step between EZ and RPE): envelopes are taken relative to a broad (~600 um) smoothing of it
    base = _smooth_odd(ref_floor, max(5.0, 600.0 / lateral_um)) - sh

    def bm_envelope(y: np.ndarray) -> np.ndarray:
        """Lower envelope of an RPE outer edge (band rows) relative to ``base``: drusen and PED are bridged."""
        return _lower_envelope(y - base, sigma=max(5.0, 470.0 / lateral_um), iters=8, tol=max(1.5, 10.0 * P)) + base

    filmn = ilm - sh
    fref = ref - sh

    # ---- boundaries in robust order (flattened rows) -------------------------------------------------
    # the EZ is where the outer complex first rises half-way from the outer nuclear layer's level to its
    # own peak (the box step can land on the RPE where the outer segments are long and dark; the thin
    # ELM line above the EZ stays well under half-way once the image is averaged along the layers)
    first = _half_rise(f1, fref - 60 * P, fref + 30 * P)
    first = ndimage.median_filter(first, size=max(3, int(100.0 / lateral_um)) | 1, mode="nearest")
    ez = fctx.find(+1, first - 6 * P, first + 8 * P, jump=J(1.6), penalty=0.1, ref=first, ref_w=0.01)
    # Bruch's membrane closes the hyper-reflective outer complex (EZ, interdigitation zone, RPE): the
    # deepest wide bright-to-dark step below the EZ, found on a box gradient over ~15 um each side so
    # that the dips between the complex's own bands (EZ -> IZ -> RPE) do not answer
    wo = max(2, int(round(15.0 * P)))
    fsum = row_cumsum(f1)
    fbox = _window_mean(fsum, idx - wo, idx) - _window_mean(fsum, idx, idx + wo)
    olo, ohi = ez + 25 * P, ez + 110 * P
    in_band = (rr >= np.round(olo)[None, :]) & (rr <= np.round(ohi)[None, :]) & (fbox > 0)
    oscale = float(np.percentile(fbox[in_band], 99.0)) if in_band.any() else 1.0
    cost_o = _edge_cost(fbox, max(oscale, 1e-6))
    # the first strong such step from the top: the textured choroid below has steps of its own
    ofirst = _first_strong(fbox, np.clip(np.round(olo), 1, rows - 2).astype(np.int64),
                           np.clip(np.round(ohi), 1, rows - 2).astype(np.int64), 0.6)
    ofirst = ndimage.median_filter(ofirst, size=max(3, int(60.0 / lateral_um)) | 1, mode="nearest")
    rpeo = _Ctx(rows, cols, fctx.gn, fctx.gn, cost_o, cost_o, zero).find(
        -1, np.maximum(olo, ofirst - 12 * P), np.minimum(ohi, ofirst + 12 * P), jump=J(7.0), penalty=0.05,
        ref=ofirst, ref_w=0.004)
    # Bruch's membrane never dips locally: a stretch found deeper than the running median (a choroidal
    # vessel's edge where the true one is faint) is pulled back before the envelope is taken
    run_med = ndimage.median_filter(rpeo, size=max(5, int(300.0 / lateral_um)) | 1, mode="nearest")
    rpeo = np.minimum(rpeo, run_med + 6.0 * P)
    env = bm_envelope(rpeo)
    # subretinal fluid lifts the photoreceptors off a flat RPE: the step found above closes the EZ / IZ over
    # the fluid, and the full RPE band still lies on Bruch's membrane below a dark gap. (Drusen and PED lift
    # the RPE itself: below them lies only the thin, faint Bruch's membrane.) There the RPE outer edge is
    # searched again next to the envelope
    wv = max(1, int(round(10.0 * P)))
    band_mean = _window_mean(fsum, idx - wv, idx + wv)  # the image averaged over ~20 um
    srf_cols = _fluid_over_rpe(band_mean, ez, rpeo, env, P)
    if srf_cols.any():
        lower = fctx.find(-1, env - 12 * P, env + 12 * P, jump=J(7.0), penalty=0.05, ref=env, ref_w=0.004)
        rpeo = np.where(srf_cols, lower, rpeo)
        env = bm_envelope(rpeo)
    # RPE (inner edge of the RPE band): the dark-to-bright step just above the lifted or flat RPE outer edge
    plo, phi = np.maximum(ez + 4 * P, rpeo - 35 * P), np.maximum(rpeo - 6 * P, ez + 5 * P)
    rpe = fctx.find(+1, plo, phi, jump=J(7.0), penalty=0.06)
    # the RPE band keeps its thickness over drusen and PED (both lift it whole): a second pass pulled to
    # the B-scan's median thickness keeps the edge from hopping to the interdigitation zone's rise, and the
    # outer edge is searched again at that thickness below it (where the outer edge is faint, the first
    # strong step can be a choroidal vessel's)
    t_med = float(np.nanmedian(rpeo - rpe))
    rpe = fctx.find(+1, plo, phi, jump=J(7.0), penalty=0.06, ref=rpeo - t_med, ref_w=0.02)
    t_ref = float(np.clip(t_med, 12.0 * P, 30.0 * P))  # RPE band (inner edge to BM) ~20 um in adults
    rpeo = fctx.find(-1, rpe + 8 * P, rpe + 40 * P, jump=J(7.0), penalty=0.05, ref=rpe + t_ref, ref_w=0.05)
    # the envelope follows the deepest points: single-column spikes of a noisy edge must not reach it
    spikeless = ndimage.median_filter(rpeo, size=max(3, int(80.0 / lateral_um)) | 1, mode="nearest")
    env = bm_envelope(spikeless)
    bm = fctx.find(-1, env - 20 * P, env + 12 * P, jump=J(0.55), penalty=0.15, ref=env, ref_w=0.012 * axial_um)
    # a druse's interior is never brighter than the RPE over it: where the band between the RPE found and
    # Bruch's membrane holds one brighter than that "RPE", the search took a band above the RPE (near the
    # fovea an EZ band brighter than the RPE, on some devices): the RPE is searched again just above BM
    misplaced = _misplaced_rpe(band_mean, rpe, rpeo, bm, P, lateral_um)
    if misplaced.any():
        lower = fctx.find(+1, bm - t_ref - 12 * P, bm - 6 * P, jump=J(7.0), penalty=0.06, ref=bm - t_ref, ref_w=0.02)
        rpe = np.where(misplaced, lower, rpe)
    # the RPE's inner edge where its rise is half-way in expanded (about linear) intensity: the steepest
    # row of the compressed image lies on the dark side of a strong step
    rpe = _half_level(f1, rpe, +1, max(2, int(round(15.0 * P))), power=4.0)
    # the half-way row is taken per column: on a single-frame B-scan its speckle moves it by a pixel from
    # column to column, while the RPE is smooth over ~150 um (a running median keeps the steps of drusen
    # and PED, which are wider)
    rpe = ndimage.median_filter(rpe, size=max(3, int(round(_RPE_MEDIAN_UM / lateral_um))) | 1, mode="nearest")
    # the ELM is a thin bright line above the EZ: follow the ridge of a line detector (the image minus
    # the mean of the bands ~6 um above and below), then take the line's upper edge
    d6 = max(1, int(round(6.0 * P)))
    line = np.zeros_like(f1)
    line[d6:-d6] = f1[d6:-d6] - 0.5 * (f1[:-2 * d6] + f1[2 * d6:])
    elo, ehi = np.maximum(filmn, ez - 50 * P), ez - 8 * P
    ein = (rr >= np.round(elo)[None, :]) & (rr <= np.round(ehi)[None, :]) & (line > 0)
    lscale = float(np.percentile(line[ein], 99.0)) if ein.any() else 1.0
    lcost = _edge_cost(line, max(lscale, 1e-6))
    ridge = _Ctx(rows, cols, np.clip(line, 0.0, None), np.clip(line, 0.0, None), lcost, lcost, zero).find(
        +1, elo, ehi, jump=J(1.6), penalty=0.12, ref=ez - 22 * P, ref_w=0.01)
    elm = fctx.find(+1, np.maximum(filmn, ridge - 6 * P), np.maximum(ridge, filmn + 1), jump=J(1.6), penalty=0.12,
                    ref=ridge - 2 * P, ref_w=0.02)
    # the EZ where it is a band of its own above the RPE complex (the ellipsoid zone; the phantom and the
    # IN-OCT consensus put the boundary on its upper edge, the old IS/OS junction). The half-rise above takes
    # the EZ only where that band is brighter than half the complex: on a single-frame scan whose EZ is
    # fainter than its RPE it lands on the complex's own rise (the interdigitation zone / RPE) instead.
    # The ELM search above stays anchored on the half-rise (the inner layers' search depends on the ELM)
    ez_band = _ez_from_band(f1, rpe, ez, P, lateral_um)
    # the retinal vessels lie in the nerve fibre and ganglion cell layers: under a vessel's shadow the
    # edges at RNFL_GCL's depth are the vessel's own (its walls, its lumen). Those columns give the
    # RNFL_GCL search no edge evidence (every row costs the same), so its path crosses them on its
    # smoothness from the clear columns on both sides instead of being drawn to the vessel and carrying
    # that into the columns beside it. All inner boundaries are then bridged there, as graders do
    level = _outer_level(band_mean, ez, bm)
    shadow = _vessel_shadows(level, int(400.0 / lateral_um), max(1, int(800.0 / lateral_um)),
                             max(1, int(round(50.0 / lateral_um))))

    def blind(cost: np.ndarray) -> np.ndarray:
        if not shadow.any():
            return cost
        out = cost.copy()
        out[:, shadow] = 1.0
        return out

    fin = _Ctx(rows, cols, fctx.gp, fctx.gn, blind(fctx.cost_p), blind(fctx.cost_n), zero)
    # inner retina (Chiu 2010's order): INL_OPL is the one clear dark-to-bright step between the ILM and
    # the ELM; OPL_ONL and IPL_INL are the light-to-dark steps just below and above it; RNFL_GCL is the
    # strongest light-to-dark step between the ILM and IPL_INL.
    top = filmn + 20 * P
    # the outer nuclear layer is the darkest thick band above the ELM: the valley of the image averaged
    # over ~20 um anchors the inner search (Chiu's search regions, but from the darkest band, which is
    # the one every device and pathology-free eye shows)
    valley = band_mean
    vlo, vhi = np.minimum(top, elm - 12 * P), elm - 8 * P
    inside = (rr >= np.round(vlo)[None, :]) & (rr <= np.round(vhi)[None, :])
    # one call for both (valley is float64, where a list of q interpolates as the single calls do)
    vmin, vmax = (float(v) for v in np.percentile(valley[inside], [2, 98])) if inside.any() else (0.0, 1.0)
    dark_cost = np.clip((valley - vmin) / max(vmax - vmin, 1e-6), 0.0, 1.0).astype(np.float32)
    # the outer nuclear layer ends on the ELM: of the dark bands (the INL is nearly as dark), take the one
    # nearest above the ELM
    deepest_dark = _first_strong(1.0 - dark_cost, vlo, vhi, 0.75, last=True)
    deepest_dark = ndimage.median_filter(deepest_dark, size=max(3, int(100.0 / lateral_um)) | 1, mode="nearest")
    onl = _Ctx(rows, cols, fctx.gn, fctx.gn, dark_cost, dark_cost, zero).find(
        -1, vlo, vhi, jump=J(0.7), penalty=0.05, climb=0, ref=deepest_dark - 8 * P, ref_w=0.01)
    # at the foveola the inner layers end on the ILM: a faint pull towards it decides where no edge does
    # (a macular scan only; a circle scan has no foveola)
    to_ilm = 0.003 if pattern != "circle" else 0.0
    circ_win = max(3, int(round(1500.0 / lateral_um))) | 1
    # OPL_ONL: the nearest clear light-to-dark step above the outer nuclear layer's centre (the RNFL's
    # and the IPL's lower edges lie further up); where no step stands out (the foveola, where the inner
    # layers end) the path is drawn to the ILM instead
    olo_i = np.maximum(filmn + 2 * P, onl - 60 * P) if pattern == "circle" else filmn + 2 * P
    ohi_i = np.maximum(onl - 2 * P, olo_i + 1)
    near_o = _first_strong(fctx.gn, olo_i, ohi_i, 0.4, last=True)
    c_i = np.arange(cols)
    st = fctx.gn[np.clip(near_o.astype(np.int64), 0, rows - 1), c_i]
    clear = st >= 0.35 * float(np.median(st))
    guide = np.where(clear, near_o, filmn + 2 * P) if pattern != "circle" else near_o
    guide = ndimage.median_filter(guide, size=max(3, int(150.0 / lateral_um)) | 1, mode="nearest")
    if pattern != "circle":  # the window narrows to the guide: the RNFL's lower edge is stronger
        olo_i, ohi_i = np.maximum(olo_i, guide - 15 * P), np.minimum(ohi_i, np.maximum(guide + 15 * P, olo_i + 1))
    opl_onl = fctx.find(-1, olo_i, ohi_i, jump=J(0.7), penalty=0.1, ref=guide, ref_w=0.01)
    inl_opl = fctx.find(+1, np.maximum(filmn + 1 * P, opl_onl - 35 * P), np.maximum(opl_onl - 3 * P, filmn + 2 * P),
                        jump=J(0.7), penalty=0.1, ref=filmn, ref_w=to_ilm)
    # IPL_INL: the nearest clear light-to-dark step above INL_OPL (the RNFL's lower edge is another one)
    ilo = np.maximum(filmn + 0.5 * P, inl_opl - 55 * P)
    ihi = np.maximum(inl_opl - 5 * P, ilo + 1)
    near = _first_strong(fctx.gn, ilo, ihi, 0.4, last=True)
    near = ndimage.median_filter(near, size=max(3, int(60.0 / lateral_um)) | 1, mode="nearest")
    ipl_inl = fctx.find(-1, ilo, ihi, jump=J(0.7), penalty=0.1, ref=near, ref_w=0.01)
    if pattern == "circle":
        # around the disc the inner nuclear layer is thin and the inner plexiform layer faint: over a stretch
        # the nearest step above INL_OPL can be the RNFL's lower edge instead. The INL's thickness changes
        # slowly around the circle: a second pass is pulled to its running median (~1.5 mm, wrapping round)
        ipl_inl = fctx.find(-1, ilo, ihi, jump=J(0.7), penalty=0.1,
                            ref=inl_opl - _running_thickness(ipl_inl, inl_opl, circ_win), ref_w=0.02 * axial_um)
        # around the disc the RNFL is the thick bright top layer: its lower edge is the broad light-to-dark
        # step (box gradient, ~15 um each side) above the ganglion cell and inner plexiform layers
        rnfl_cost = blind(cost_o)  # the same cost as the RPE outer edge's (blind copies before it blanks)
        rctx = _Ctx(rows, cols, fctx.gn, fctx.gn, rnfl_cost, rnfl_cost, zero)
        rlo, rhi = filmn + 12 * P, np.maximum(filmn + 13 * P, ipl_inl - 15 * P)
        rnfl_gcl = rctx.find(-1, rlo, rhi, jump=J(0.9), penalty=0.08)
        # the nerve fibre layer is striated (bundles, vessels): a step inside it can outdo its lower edge over
        # a stretch, while the ganglion cell and inner plexiform layers under it keep their thickness: a
        # second pass is pulled to that thickness's running median
        rnfl_gcl = rctx.find(-1, rlo, rhi, jump=J(0.9), penalty=0.08,
                             ref=ipl_inl - _running_thickness(rnfl_gcl, ipl_inl, circ_win), ref_w=0.02 * axial_um)
    else:
        rnfl_gcl = fin.find(-1, filmn, np.maximum(filmn, ipl_inl - 12 * P), jump=J(0.7), penalty=0.1)
        # away from the fovea the ganglion cell, inner plexiform and inner nuclear layers are thin and, on some
        # devices, the IPL hardly brighter than the INL: there the nearest clear step above INL_OPL can be the
        # RNFL's lower edge. Such columns read an INL far thicker than the layers above it (a normal INL is a
        # third of the span from RNFL_GCL to INL_OPL); IPL_INL is searched again at least ~12 um under the
        # edge taken, pulled to the INL's normal share of the span, and RNFL_GCL follows it
        taken = _rnfl_edge_taken(filmn, ipl_inl, rnfl_gcl, inl_opl, P, lateral_um)
        lo2 = np.maximum(ilo, ipl_inl + 12 * P)
        taken &= lo2 < ihi - 1
        if taken.any():
            prior = inl_opl - _INL_SHARE * (inl_opl - ipl_inl)
            again = fctx.find(-1, np.where(taken, lo2, ilo), ihi, jump=J(0.7), penalty=0.1,
                              ref=np.where(taken, prior, near), ref_w=0.01)
            ipl_inl = np.where(taken, again, ipl_inl)
            rnfl_gcl = fin.find(-1, filmn, np.maximum(filmn, ipl_inl - 12 * P), jump=J(0.7), penalty=0.1)
    # where the outer complex is missing over a stretch (the optic disc at the edge of a macular line
    # scan, a dense shadow) there are no outer boundaries to find, nor layers between them: NaN, flagged
    rnfl_gcl, ipl_inl, inl_opl, opl_onl = (_bridge(v, shadow) for v in (rnfl_gcl, ipl_inl, inl_opl, opl_onl))
    absent = _outer_complex_absent(level, max(3, int(round(150.0 / lateral_um))))
    if absent.any():
        flags["outer_retina_absent"] = (f"{int(absent.sum())} columns show no photoreceptor / RPE complex (optic "
                                        "disc or dense shadow): only the ILM is given there")
    # the continuity check measures the edge at the outer complex's half-rise (its steepest step)
    rise = np.where(absent, ilm, ez + sh)
    ez, rpeo, rpe, bm, elm, inl_opl, opl_onl, ipl_inl, rnfl_gcl = (
        np.where(absent, np.nan, v + sh) for v in (ez_band, rpeo, rpe, bm, elm, inl_opl, opl_onl, ipl_inl, rnfl_gcl))
    if not _oct_like(g / scale, ilm, rise, flags):
        return None
    # the vitreous above the ILM is the darkest part of a B-scan; an inverted or mirror-image B-scan
    # puts the choroid there
    if not _vitreous_above(s1, ilm, low, 60.0 / axial_um, flags):
        return None

    return np.stack([ilm, rnfl_gcl, ipl_inl, inl_opl, opl_onl, elm, ez, rpe, bm]).astype(np.float64), low, dexp


_METHODS = {"classic": _boundaries_classic, "layered": _boundaries_layered}
#: Method used per scan pattern when ``method="auto"``. The layered search is the default everywhere:
#: on the real Spectralis scans in ``shared/real/oct`` the classic one put RNFL_GCL 20-28 px and BM 10 px
#: off on a circle scan and BM 4.4 px off (with 23 nl of false subretinal fluid) on a macular line scan
#: (``benchmarks/oct_real.py``). The classic search stays selectable for comparison.
DEFAULT_METHOD = {"macula": "layered", "circle": "layered"}


def segment_bscan(
    bscan: np.ndarray, axial_um: float = 3.87, lateral_um: float = 11.7, *, keep_image: bool = False,
    pattern: str = "macula", method: str = "auto",
) -> BscanSegmentation:
    """Segment the nine boundaries ``grok.ids.BOUNDARIES`` of one B-scan.

    bscan : (rows, cols) ndarray, intensities as exported (uint8/uint16/float; NaN/inf tolerated)
    axial_um, lateral_um : pixel spacing in micrometres (sets the smoothing and band sizes)
    keep_image : keep the normalised smoothed image on the result (lesion detection uses it)
    pattern : ``"macula"`` (line scans and cubes) or ``"circle"`` (peripapillary: thick RNFL first)
    method : ``"layered"`` (flattened search built on real Spectralis scans), ``"classic"`` (the first,
        phantom-tuned search, kept for comparison) or ``"auto"`` (:data:`DEFAULT_METHOD` of the pattern)

    Returns a :class:`BscanSegmentation`; rows are floats in pixels from the top, NaN where a boundary
    was not found, and ``flags`` names every problem seen (``constant_bscan``, ``non_finite_pixels``,
    ``no_retina``, ``retina_cut_off_top``, ``low_signal_columns``, ``extreme_tilt``, ...).
    """
    for name, v in (("axial_um", axial_um), ("lateral_um", lateral_um)):
        if not (isinstance(v, (int, float, np.floating)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a positive pixel spacing in micrometres, got {v!r}; "
                             "pass it from the scan header or --spacing-um")
    if pattern not in DEFAULT_METHOD:
        raise ValueError(f"pattern must be one of {sorted(DEFAULT_METHOD)}, got {pattern!r}")
    if method not in ("auto", *_METHODS):
        raise ValueError(f"method must be 'auto' or one of {sorted(_METHODS)}, got {method!r}")
    chosen = DEFAULT_METHOD[pattern] if method == "auto" else method
    img, flags = prepare_bscan(bscan)
    rows, cols = np.shape(bscan)
    if img is None:
        return _nan_result(rows, cols, flags)
    um = 1.0 / axial_um  # pixels per micrometre, axially
    # one lateral box pass (~30 um sigma) shared by the fine (s0) and the working (s1) images; large
    # smoothing for the rough estimates (s2) is a box filter too: O(1) per pixel whatever its size
    lat = ndimage.uniform_filter1d(img, _box(max(1.0, 30.0 / lateral_um)), axis=1, mode="nearest")
    s1 = gaussian_rows(lat, max(0.8, 5.0 * um), truncate=3.0)
    s0 = gaussian_rows(lat, 0.6, truncate=3.0)
    s2 = uniform2d(s1, (_box(max(1.5, 12.0 * um)), _box(max(3.0, 90.0 / lateral_um))))

    # s2's levels, read once: the background / foreground of the rough search and the vitreous check below
    # (one percentile call with the three q gives the same three values as the two calls it replaces)
    s2_levels = np.percentile(s2[::2, ::2], [1, 5, 99.5])
    found = _METHODS[chosen](img, s0, s1, s2, s2_levels, axial_um, lateral_um, flags, pattern)
    if found is None:
        return _nan_result(rows, cols, flags, s1 if keep_image else None)
    b, low, dexp = found
    bm = b[-1].copy()
    for k in range(1, len(BOUNDARIES)):
        b[k] = np.maximum(b[k], b[k - 1])

    # ---- choroid-sclera interface --------------------------------------------------------------
    csi = _choroid_sclera(s1, bm, axial_um, lateral_um, dexp, flags)

    # ---- validity ------------------------------------------------------------------------------
    b[:, low] = np.nan
    csi[low] = np.nan
    # tissue in the first rows: the vitreous (the darkest part of a B-scan) is missing there
    dark, fg = s2_levels[0], s2_levels[2]
    cut = (s2[:3].mean(axis=0) > dark + 0.15 * (fg - dark)) & ~low
    if cut.mean() > 0.05:
        flags["retina_cut_off_top"] = (f"tissue touches the top edge in {int(cut.sum())} columns; the boundaries "
                                       "above the first clear edge are NaN there")
        b[: _I["IPL_INL"] + 1, cut] = np.nan
    fine = None
    if keep_image:  # 3 x 3 average of the retina rows only (for hyperreflective foci), others NaN
        fine = np.full(img.shape, np.nan, np.float16)
        r0 = int(max(0, np.nanmin(b[0]) - 3)) if np.isfinite(b[0]).any() else 0
        r1 = int(min(rows, np.nanmax(b[_I["ELM"]]) + 4)) if np.isfinite(b[_I["ELM"]]).any() else rows
        if r1 > r0:
            fine[r0:r1] = uniform2d(img[max(0, r0 - 1) : min(rows, r1 + 1)], 3)[
                r0 - max(0, r0 - 1) : r0 - max(0, r0 - 1) + (r1 - r0)]
    conf = confidence(b, s0, max(3, int(round(100.0 / lateral_um))))
    # better missing than wrong: an intermediate boundary whose edge is under 15 % of its usual
    # strength over ~100 um is NaN (not where it merges with the ILM at the foveola, where no edge is the
    # truth); ILM, RPE and BM anchor the thickness measures and are kept
    near_ilm = np.abs(b - b[0][None, :]) <= 8.0 / axial_um
    weak = (conf < WEAK_CONFIDENCE) & ~near_ilm
    weak[[0, _I["RPE"], _I["BM"]]] = False
    b[weak] = np.nan  # the NaN and the confidence say it per column; a flag when a boundary loses > 10 %
    many = [k for k in range(len(BOUNDARIES)) if weak[k].mean() > 0.10]
    if many:
        flags["weak_boundaries"] = ", ".join(f"{BOUNDARIES[k]} {int(weak[k].sum())}" for k in many) + \
            " columns NaN (edge under 15 % of its usual strength)"
    return BscanSegmentation(b.astype(np.float32), flags, csi.astype(np.float32),
                             s1.astype(np.float16) if keep_image else None, fine, conf)


#: Confidence under which an intermediate boundary's row is NaN (see :func:`confidence`).
WEAK_CONFIDENCE = 0.15
#: Edge polarity of each boundary going down (+1 dark -> light, -1 light -> dark), in BOUNDARIES order.
POLARITY = (+1, -1, -1, +1, -1, +1, +1, +1, -1)


def confidence(boundaries: np.ndarray, smoothed: np.ndarray, width: int) -> np.ndarray:
    """Per boundary and column: the edge strength of the boundary's polarity at its row, divided by the
    B-scan's median strength of that boundary, clipped to [0, 1] and averaged over ``width`` columns.

    1 means "as clear as this boundary usually is in this B-scan"; values near 0 mark stretches where the
    row was carried by smoothness and the band, not by an edge (shadows, the foveola's merged layers).
    """
    rows, cols = smoothed.shape
    g = np.zeros_like(smoothed, dtype=np.float32)
    g[1:-1] = smoothed[2:] - smoothed[:-2]
    out = np.full(boundaries.shape, np.nan, np.float32)
    c = np.arange(cols)
    for k, pol in enumerate(POLARITY):
        ok = np.isfinite(boundaries[k])
        if not ok.any():
            continue
        r = np.clip(np.round(np.nan_to_num(boundaries[k])), 0, rows - 1).astype(np.int64)
        st = np.clip(pol * g[r, c], 0.0, None)
        ref = float(np.median(st[ok]))
        rel = np.clip(st / ref, 0.0, 1.0) if ref > 0 else np.zeros(cols, np.float32)
        rel = ndimage.uniform_filter1d(np.where(ok, rel, 0.0).astype(np.float32), width, mode="nearest")
        out[k] = np.where(ok, rel, np.nan)
    return out


def _column_quantile(a: np.ndarray, mask: np.ndarray, q: float) -> np.ndarray:
    """Per column, the ``q`` quantile of ``a`` where ``mask`` (numpy's linear interpolation, as
    ``np.nanpercentile`` with the rest NaN, without its per-column loop); NaN for an empty column."""
    x = np.sort(np.where(mask, a, np.inf), axis=0)
    n = mask.sum(axis=0)
    pos = q * np.maximum(n - 1, 0)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
    c = np.arange(a.shape[1])
    v_lo, v_hi = x[lo, c], x[hi, c]
    with np.errstate(invalid="ignore"):
        out = v_lo + (v_hi - v_lo) * (pos - lo)
    out = np.where(hi == lo, v_lo, out)
    return np.where(n > 0, out, np.nan)


def _choroid_sclera(s1, bm, axial_um, lateral_um, dexp, flags) -> np.ndarray:
    """Choroid-sclera interface: light->dark edge of the heavily smoothed choroid below BM.

    Searched at half the axial resolution (the interface is a blurred, smooth boundary), then mapped back.
    """
    rows, cols = s1.shape
    if not np.isfinite(bm).any():
        return np.full(cols, np.nan)
    top = int(np.clip(np.nanmin(bm), 0, rows - 1))
    half = s1[top::2]  # rows top, top + 2, ...
    hr = half.shape[0]
    P2 = 0.5 / axial_um  # half-resolution rows per micrometre
    if hr < 8:
        flags["choroid_not_visible"] = "too little image below Bruch's membrane to find the choroid-sclera interface"
        return np.full(cols, np.nan)
    s3 = uniform2d(half, (_box(max(1.0, 16.0 * P2)), _box(max(4.0, 150.0 / lateral_um))))
    g = np.zeros_like(s3)
    g[1:-1] = s3[2:] - s3[:-2]
    g[:2] = 0.0
    gn = np.clip(-g, 0.0, None)
    bmh = (bm - top) / 2.0
    lo = bmh + 60.0 * P2
    hi = np.minimum(bmh + 600.0 * P2, hr - 3)
    if np.nanmedian(hi - lo) < 20 * P2:
        flags["choroid_not_visible"] = "too little image below Bruch's membrane to find the choroid-sclera interface"
        return np.full(cols, np.nan)
    region = gn[max(0, int(np.nanmin(lo))) : int(np.nanmax(hi)) + 1]
    scale = float(np.percentile(region, 99.5)) if region.size else 0.0
    if scale <= 0:
        flags["choroid_not_visible"] = "no edge below the choroid"
        return np.full(cols, np.nan)
    gnn = gn / scale
    cost = (1.0 - np.minimum(gnn, 1.0)).astype(np.float32)
    lo_i = np.clip(np.floor(np.nan_to_num(lo, nan=1.0)), 1, hr - 2).astype(np.int64)
    hi_i = np.maximum(np.clip(np.ceil(np.nan_to_num(hi, nan=hr - 2.0)), 1, hr - 2).astype(np.int64), lo_i)
    # the choroid as a whole: averaged over ~400 um along the layers its vessel lumens merge into one
    # level, and the interface is the deepest row still half-way from the tissue under it (sclera, or the
    # noise floor where the signal fades) up to that level. Vessel lumens' own edges, the first strong
    # steps under Bruch's membrane, do not answer to it. The path is pulled to that row.
    wide = ndimage.uniform_filter1d(s3, _box(max(4.0, 400.0 / lateral_um)), axis=1, mode="nearest")
    c = np.arange(cols)
    rr = np.arange(hr)[:, None]
    inside = (rr >= lo_i[None, :]) & (rr <= hi_i[None, :])
    upper = inside & (rr <= (lo_i + 150.0 * P2)[None, :])
    level = _column_quantile(wide, upper, 0.75)
    floor = _column_quantile(wide, inside, 0.10)
    above = inside & (wide >= (floor + 0.5 * (level - floor))[None, :])
    guide = np.where(above.any(axis=0), hr - 1 - np.argmax(above[::-1], axis=0), lo_i).astype(np.float64)
    guide = ndimage.median_filter(guide, size=max(3, int(300.0 / lateral_um)) | 1, mode="nearest")
    g_lo = np.maximum(lo_i, np.floor(guide - 60.0 * P2)).astype(np.int64)
    g_hi = np.maximum(np.minimum(hi_i, np.ceil(guide + 60.0 * P2)).astype(np.int64), g_lo)
    path = _dp_path(cost, g_lo, g_hi, dexp / 2.0, 1, 0.3, guide, 0.02)
    csi = top + 2.0 * _subpixel(gnn, path, 2)
    # a real interface is a fall, not a fade: across ~100 um around it the choroid's averaged level drops
    # by at least half of its contrast over the tissue under it (the signal fading with depth drops far
    # less there). The lumens' sharp edges set no scale for this
    d50 = max(1, int(round(50.0 * P2)))
    pu, pd = np.clip(path - d50, 0, hr - 1), np.clip(path + d50, 0, hr - 1)
    fall = (wide[pu, c] - wide[pd, c]) / np.maximum(level - floor, 1e-6)
    weak = ndimage.uniform_filter1d(fall, 25, mode="nearest") < 0.5
    at_edge = path >= hr - 3
    # an interface at the top of its search window (60 um under BM) is the choriocapillaris' or a vessel
    # lumen's edge, not the sclera's: a choroid that thin is not measured from this B-scan
    at_top = path <= lo_i + max(1.0, 15.0 * P2)
    # the level must stand clear of the floor: where the choroid does not stand out from the tissue under
    # it the interface cannot be placed
    flat = (level - floor) < 0.1 * max(float(np.percentile(s3[: max(2, int(np.nanmin(lo_i)))], 99)) - float(np.nanmin(floor)), 1e-6)
    bad = weak | at_edge | at_top | flat
    if bad.mean() > 0.5:
        why = ("the interface found lies at the top of the choroid (its vessels' edges): no choroid-sclera "
               "interface below it" if at_top.mean() > 0.3 else "the choroid-sclera interface is faint or below the image")
        flags["choroid_low_contrast"] = why
    csi[bad] = np.nan
    return csi
