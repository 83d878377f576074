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
def _border(p: np.ndarray, start: int, other: int, d: int, lv: float, rise: float, off: np.ndarray) -> float:  # pragma: no cover
    """Border offset of one side of a vessel profile ``p`` (m,), walking from the side peak ``start`` in
    direction ``d`` (-1 left, +1 right): the interpolated crossing of the level ``lv``, or a valley (a
    minimum followed by a rise of ``rise``: a neighbouring vessel) met before it. A peak below the level
    walks inward (towards ``other``) to the first sample above it. NaN when the profile ends first."""
    m = p.shape[0]
    a = start
    if p[a] >= lv:
        vmin = p[a]
        imin = a
        while True:
            if (d < 0 and a == 0) or (d > 0 and a == m - 1):
                return np.nan
            a += d
            v = p[a]
            if v < lv:  # crossing between a - d (>= lv) and a (< lv)
                return off[a] + (lv - v) / (p[a - d] - v) * (off[a - d] - off[a])
            if v < vmin:
                vmin = v
                imin = a
            elif v > vmin + rise:
                return off[imin]
    while a != other and p[a] < lv:
        a -= d
    o = a + d  # the outer neighbour, below the level
    if 0 <= o <= m - 1 and p[a] >= lv:
        return off[o] + (lv - p[o]) / (p[a] - p[o]) * (off[a] - off[o])
    return np.nan


@numba.njit(cache=True)
def profile_stats(prof_d: np.ndarray, prof_m: np.ndarray, prof_r: np.ndarray, prof_g: np.ndarray, off: np.ndarray,
                  use_mask: bool, reflex_peak_ratio: float = 0.85, valley_rise: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # pragma: no cover
    """Per perpendicular vessel profile (rows of the (n, m) arrays, offsets ``off`` (m,) px, centre at m // 2):

    prof_d : smoothed relative darkness (calibre); prof_m : vessel mask (0/1, linearly interpolated);
    prof_r, prof_g : red and green optical density -ln(I / background) (colour, central reflex).
    ``use_mask`` False: the search window comes from the darkness profile (run above a quarter maximum).

    Returns five (n,) float arrays:
    width : half-maximum width (px) that tolerates a central reflex: the peak is searched on each side of
        the centre within half the mask width, the level is half-way between the higher side peak and the
        base (the higher of the two side minima, >= 0), and each border is found walking outwards from its
        own side peak, so a dip in the middle (the reflex) is inside the vessel, not a border. Only when
        the lower side peak reaches ``reflex_peak_ratio`` x the higher one (a reflex splits one vessel
        into two equal halves; an artery touching a vein gives two unequal humps): otherwise the walk
        starts from the higher peak alone. A border is also set at a valley (a minimum followed by a rise
        of ``valley_rise`` x (peak - base)) met before the half level: a touching neighbour. NaN when
        no clear crossing on both sides.
    mask_width : length (px) of the run of mask samples >= 0.5 through the centre.
    core_r, core_g : mean red / green optical density over the inner 60 % of the mask width (>= 1 px).
    reflex : 1 - (mean green density over the central 1 px) / (lower of the two side peaks of green
        density, searched from 1 px off the centre to half the mask width), >= 0 (an off-centre single peak
        gives 0: its lower side is below the centre); NaN where the vessel is narrower than 3 px.
    """
    n, m = prof_d.shape
    mid = m // 2
    step = off[1] - off[0]
    width = np.full(n, np.nan)
    mwidth = np.full(n, np.nan)
    core_r = np.full(n, np.nan)
    core_g = np.full(n, np.nan)
    reflex = np.full(n, np.nan)
    for i in range(n):
        # --- search half-window from the mask (or a quarter-maximum run of the darkness)
        if use_mask:
            a = mid
            while a > 0 and prof_m[i, a - 1] >= 0.5:
                a -= 1
            b = mid
            while b < m - 1 and prof_m[i, b + 1] >= 0.5:
                b += 1
            if prof_m[i, mid] < 0.5:
                a = mid
                b = mid
            wm = (b - a + 1) * step
        else:
            lo = prof_d[i, 0]
            for k in range(m):
                lo = min(lo, prof_d[i, k])
            lo = max(lo, 0.0)
            pk0 = prof_d[i, mid]
            for k in range(max(mid - 3, 0), min(mid + 4, m)):
                pk0 = max(pk0, prof_d[i, k])
            q = lo + 0.25 * (pk0 - lo)
            a = mid
            while a > 0 and prof_d[i, a - 1] >= q:
                a -= 1
            b = mid
            while b < m - 1 and prof_d[i, b + 1] >= q:
                b += 1
            wm = (b - a + 1) * step
        mwidth[i] = wm
        hs = max(int(0.5 * wm / step + 0.5), int(1.0 / step))
        hs = min(hs, mid)
        # --- side peaks of the calibre profile
        lp = mid
        for k in range(mid - hs, mid + 1):
            if prof_d[i, k] > prof_d[i, lp]:
                lp = k
        rp = mid
        for k in range(mid, mid + hs + 1):
            if prof_d[i, k] > prof_d[i, rp]:
                rp = k
        peak = max(prof_d[i, lp], prof_d[i, rp])
        if min(prof_d[i, lp], prof_d[i, rp]) < reflex_peak_ratio * peak:
            # unequal side peaks: not a reflex but a neighbouring vessel (an artery beside a vein) or an
            # off-centre skeleton; measure the single vessel of the higher peak
            if prof_d[i, lp] >= prof_d[i, rp]:
                rp = lp
            else:
                lp = rp
        base_l = prof_d[i, 0]
        for k in range(mid):
            base_l = min(base_l, prof_d[i, k])
        base_r = prof_d[i, m - 1]
        for k in range(mid + 1, m):
            base_r = min(base_r, prof_d[i, k])
        base = max(max(base_l, base_r), 0.0)
        if peak > base:
            lv = base + 0.5 * (peak - base)
            rise = valley_rise * (peak - base)
            # borders: the half-level crossing walking out from each side peak, or a valley (a minimum
            # followed by a rise: a neighbouring vessel) met before it
            xl = _border(prof_d[i], lp, rp, -1, lv, rise, off)
            xr = _border(prof_d[i], rp, lp, 1, lv, rise, off)
            ok = not (np.isnan(xl) or np.isnan(xr))
            if ok and xr > xl:
                width[i] = xr - xl
        # --- colour of the core and the central reflex
        hc = max(int(0.3 * wm / step + 0.5), int(0.5 / step))
        hc = min(hc, mid)
        sr = 0.0
        sg = 0.0
        for k in range(mid - hc, mid + hc + 1):
            sr += prof_r[i, k]
            sg += prof_g[i, k]
        core_r[i] = sr / (2 * hc + 1)
        core_g[i] = sg / (2 * hc + 1)
        if wm >= 3.0 and hs * step > 1.0:
            c = (prof_g[i, mid - 1] + prof_g[i, mid] + prof_g[i, mid + 1]) / 3.0
            inner = int(1.0 / step)
            pl = prof_g[i, mid - inner]
            for k in range(mid - hs, mid - inner + 1):
                pl = max(pl, prof_g[i, k])
            pr = prof_g[i, mid + inner]
            for k in range(mid + inner, mid + hs + 1):
                pr = max(pr, prof_g[i, k])
            ps = min(pl, pr)
            if ps > 0.0:
                reflex[i] = max(1.0 - c / ps, 0.0)
    return width, mwidth, core_r, core_g, reflex


@numba.njit(cache=True)
def ising_belief_propagation(h: np.ndarray, src: np.ndarray, dst: np.ndarray, rev: np.ndarray, tj: np.ndarray,
                             iterations: int, damping: float) -> np.ndarray:  # pragma: no cover - compiled
    """Loopy belief propagation on a binary pairwise model (spins +-1), synchronous with damping.

    h : (n,) local fields (half the log-odds of +1 from each node's own evidence); src, dst : (e,) directed
    edges (each undirected link appears in both directions); rev : (e,) index of the reverse edge;
    tj : (e,) tanh of the coupling (> 0: the two ends tend to agree, < 0: to differ).
    Returns the (n,) beliefs as fields: h + the sum of incoming messages (half the posterior log-odds);
    exact on a forest.
    """
    n = h.shape[0]
    e = src.shape[0]
    msg = np.zeros(e)
    old = np.zeros(e)
    tot = np.empty(n)
    for _ in range(iterations):
        for k in range(n):
            tot[k] = h[k]
        for k in range(e):
            tot[dst[k]] += msg[k]
            old[k] = msg[k]
        for k in range(e):
            cav = tot[src[k]] - old[rev[k]]
            t = tj[k] * math.tanh(cav)
            t = min(max(t, -0.999999), 0.999999)
            new = 0.5 * math.log((1.0 + t) / (1.0 - t))
            msg[k] = damping * msg[k] + (1.0 - damping) * new
    for k in range(n):
        tot[k] = h[k]
    for k in range(e):
        tot[dst[k]] += msg[k]
    return tot


@numba.njit(cache=True)
def flood_fill4(region: np.ndarray, y: int, x: int) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """The 4-connected component of ``region`` (bool (h, w)) that holds pixel (y, x), as a bool (h, w) mask
    (empty when ``region[y, x]`` is False): ``scipy.ndimage.label(region)[0] == label at (y, x)`` without
    labelling every component. Also returns its int64 stats [area, min y, max y, min x, max x, sum of y,
    sum of x]."""
    h, w = region.shape
    out = np.zeros((h, w), np.bool_)
    st = np.zeros(7, np.int64)
    if not region[y, x]:
        return out, st
    stack = np.empty(h * w, np.int64)  # a pixel is pushed once (marked when pushed)
    out[y, x] = True
    stack[0] = y * w + x
    n = 1
    st[1] = st[2] = y
    st[3] = st[4] = x
    while n > 0:
        n -= 1
        q = stack[n]
        cy = q // w
        cx = q - cy * w
        st[0] += 1
        st[1] = min(st[1], cy)
        st[2] = max(st[2], cy)
        st[3] = min(st[3], cx)
        st[4] = max(st[4], cx)
        st[5] += cy
        st[6] += cx
        if cy > 0 and region[cy - 1, cx] and not out[cy - 1, cx]:
            out[cy - 1, cx] = True
            stack[n] = q - w
            n += 1
        if cy < h - 1 and region[cy + 1, cx] and not out[cy + 1, cx]:
            out[cy + 1, cx] = True
            stack[n] = q + w
            n += 1
        if cx > 0 and region[cy, cx - 1] and not out[cy, cx - 1]:
            out[cy, cx - 1] = True
            stack[n] = q - 1
            n += 1
        if cx < w - 1 and region[cy, cx + 1] and not out[cy, cx + 1]:
            out[cy, cx + 1] = True
            stack[n] = q + 1
            n += 1
    return out, st


@numba.njit(cache=True)
def cityblock_distance(mask: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """City-block (4-connected) distance in px of every pixel of a bool (h, w) mask to its nearest True pixel
    (h + w + 1 everywhere when there is none), by the two raster scans of Rosenfeld and Pfaltz (exact for
    this metric). ``distance <= n`` is ``scipy.ndimage.binary_dilation(mask, iterations=n)`` (the default
    cross, nothing outside the array): a shortest 4-connected path stays within its ends' bounding box."""
    h, w = mask.shape
    big = h + w + 1
    d = np.empty((h, w), np.int32)
    for i in range(h):
        for j in range(w):
            if mask[i, j]:
                d[i, j] = 0
            else:
                v = big
                if i > 0:
                    v = min(v, d[i - 1, j] + 1)
                if j > 0:
                    v = min(v, d[i, j - 1] + 1)
                d[i, j] = v
    for i in range(h - 1, -1, -1):
        for j in range(w - 1, -1, -1):
            v = d[i, j]
            if i < h - 1:
                v = min(v, d[i + 1, j] + 1)
            if j < w - 1:
                v = min(v, d[i, j + 1] + 1)
            d[i, j] = v
    return d
