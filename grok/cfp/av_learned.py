"""Learned artery/vein colour evidence per vessel segment, fitted by self-training (issue #14).

``grok.cfp.vessels.classify_av`` types each vessel segment from its own colour (a two-class model fitted
to each photograph) propagated over the vessel graph. This module replaces the colour step's log-odds by
those of a small set of boosted decision trees that sees the same colour measures, standardised per
photograph, together with calibre, position and neighbourhood contrast (``FEATURES``), so that one set of
rules learned across photographs weighs them rather than each photograph's own two-class fit alone. The
graph propagation is kept.

The trees are fitted without any human artery/vein label (``scripts/train_av_colour.py``): the product's
own typing of the CHASE_DB1 photographs (Fraz et al. 2012, CC BY 4.0; all 28), kept only where it is
confident, serves as the labels (self-training), and the fitted trees' typing of the same photographs
serves as the labels of a second round; phantom photographs (``grok.phantom.cfp``) add segments with
their true labels, so that clear colour the per-photograph model reads right is not overridden. The
weights are package data (``av_colour_weights.npz``, a few kB); without them ``classify_av`` falls back
to the per-photograph colour model.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np

#: Shipped weights (package data).
WEIGHTS_PATH = Path(__file__).resolve().parent / "av_colour_weights.npz"

#: The inputs of the trees, one row per segment (``segment_features``). z_*: robust z-scores over the
#: photograph's reliable segments (weighted median and MAD, clipped at +-4); *_dd: in disc diameters.
FEATURES = (
    "score",  # the photograph-wide colour score of classify_av (ratio + red - reflex, each a z-score)
    "z_ratio",  # red / green optical density ratio of the vessel core (detrended where classify_av does)
    "z_red",  # red optical density of the core (detrended likewise)
    "z_reflex",  # central-reflex strength
    "z_green",  # green optical density of the core
    "em_log_odds",  # the per-photograph two-class model's log-odds of vein (sectors included), clipped at +-10
    "width_dd",  # median calibre / DD
    "width_rank",  # share of the photograph's reliable segments narrower than this one
    "distance_dd",  # distance of the segment's mean position from the disc centre / DD (at most 6)
    "reliability",  # colour reliability of av_features (calibre and length ramps)
    "local_red",  # z_red less the weighted median z_red of the reliable segments within 1 DD
    "local_ratio",  # z_ratio less that of the reliable segments within 1 DD
    "local_width",  # width_dd less that of the reliable segments within 1 DD
    "width_to_widest_nearby",  # calibre / the widest reliable segment within 1 DD
)
#: Fewest reliable segments within 1 DD for the neighbourhood features (else 0).
NEIGHBOURS_MIN = 3
#: Clip of the robust z-scores.
Z_CLIP = 4.0


def wquantile(x: np.ndarray, w: np.ndarray, q: float) -> float:
    """The weighted ``q`` quantile of ``x`` (weights ``w``; the first value whose cumulative weight reaches it)."""
    o = np.argsort(x)
    cw = np.cumsum(w[o])
    return float(x[o][min(np.searchsorted(cw, q * cw[-1]), len(x) - 1)])


def _robust_z(col: np.ndarray, ref: np.ndarray, wts: np.ndarray) -> np.ndarray:
    use = ref & np.isfinite(col)
    if use.sum() < 3:
        return np.zeros_like(col)
    c, w = col[use], wts[use]
    med = wquantile(c, w, 0.5)
    mad = wquantile(np.abs(c - med), w, 0.5)
    scale = 1.4826 * mad if mad > 1e-9 else float(np.std(c)) + 1e-9
    z = np.clip((col - med) / scale, -Z_CLIP, Z_CLIP)
    return np.where(np.isfinite(z), z, 0.0)


def segment_features(score: np.ndarray, ratio: np.ndarray, red: np.ndarray, reflex: np.ndarray,
                     green: np.ndarray, em_log_odds: np.ndarray, width_px: np.ndarray, reliability: np.ndarray,
                     mid_xy: np.ndarray, ok: np.ndarray, wts: np.ndarray, disc_xy: tuple[float, float] | None,
                     dd_px: float) -> np.ndarray:
    """The trees' inputs (``FEATURES``), float (n, 14), from ``classify_av``'s per-segment arrays (each (n,)).

    score : colour score; ratio, red, reflex, green : od_ratio, od_red (both as used by the score, i.e.
    detrended where classify_av detrends), reflex, od_green; em_log_odds : the two-class model's log-odds
    of vein; width_px : median calibre; reliability : colour reliability; mid_xy (n, 2) : mean position;
    ok : bool, the reliable segments (the reference of the z-scores and of the neighbourhoods); wts : their
    weights; disc_xy, dd_px : the disc (None / NaN: no disc; ``dd_px`` must then be the photograph's
    estimated DD, and every distance reads 2 DD). NaN inputs read 0."""
    n = len(score)
    zr, zd, zf, zg = (_robust_z(c, ok, wts) for c in (ratio, red, reflex, green))
    wdd = np.where(np.isfinite(width_px), width_px / dd_px, 0.0)
    ref_w = np.sort(width_px[ok & np.isfinite(width_px)])
    rank = np.where(np.isfinite(width_px), np.searchsorted(ref_w, np.nan_to_num(width_px), side="left"), 0)
    rank = rank / max(ref_w.size, 1)
    if disc_xy is not None:
        dist = np.minimum(np.hypot(mid_xy[:, 0] - disc_xy[0], mid_xy[:, 1] - disc_xy[1]) / dd_px, 6.0)
    else:
        dist = np.full(n, 2.0)
    d2 = (mid_xy[:, None, 0] - mid_xy[None, :, 0]) ** 2 + (mid_xy[:, None, 1] - mid_xy[None, :, 1]) ** 2
    near = (d2 < dd_px**2) & ok[None, :]
    local = np.zeros((n, 3))
    widest = np.zeros(n)
    for i in range(n):
        nb = near[i]
        if nb.sum() < NEIGHBOURS_MIN:
            continue
        for k, col in enumerate((zd, zr, wdd)):
            local[i, k] = col[i] - wquantile(col[nb], wts[nb], 0.5)
        if np.isfinite(width_px[i]):
            widest[i] = width_px[i] / max(float(np.nanmax(width_px[nb])), 1e-3)
    X = np.stack([score, zr, zd, zf, zg, np.clip(em_log_odds, -10, 10), wdd, rank, dist, reliability,
                  local[:, 0], local[:, 1], local[:, 2], widest], axis=1)
    return np.nan_to_num(X, nan=0.0, posinf=0.0, neginf=0.0)


# ------------------------------------------------------------------------------------------ boosted trees
def _grow(X: np.ndarray, g: np.ndarray, h: np.ndarray, idx: np.ndarray, depth: int, cuts: list[np.ndarray],
          min_leaf: int, l2: float, nodes: list[list]) -> int:
    """Grow one regression tree on gradient ``g`` and hessian ``h`` (Newton steps); returns its node id.
    nodes: [feature (-1 leaf), threshold, left, right, value]."""
    node = len(nodes)
    G, H = float(g[idx].sum()), float(h[idx].sum())
    nodes.append([-1, 0.0, -1, -1, -G / (H + l2)])
    if depth == 0 or len(idx) < 2 * min_leaf:
        return node
    best = (0.0, -1, 0.0)
    parent = G * G / (H + l2)
    for f, cut in enumerate(cuts):
        if cut.size == 0:
            continue
        b = np.searchsorted(cut, X[idx, f], side="left")  # bin k: value <= cut[k]
        gs = np.bincount(b, g[idx], cut.size + 1).cumsum()[:-1]
        hs = np.bincount(b, h[idx], cut.size + 1).cumsum()[:-1]
        ns = np.bincount(b, None, cut.size + 1).cumsum()[:-1]
        valid = (ns >= min_leaf) & (len(idx) - ns >= min_leaf)
        if not valid.any():
            continue
        gain = gs**2 / (hs + l2) + (G - gs) ** 2 / (H - hs + l2) - parent
        gain[~valid] = -np.inf
        k = int(np.argmax(gain))
        if gain[k] > best[0]:
            best = (float(gain[k]), f, float(cut[k]))
    if best[1] < 0:
        return node
    f, thr = best[1], best[2]
    go_left = X[idx, f] <= thr
    nodes[node][0], nodes[node][1] = f, thr
    nodes[node][2] = _grow(X, g, h, idx[go_left], depth - 1, cuts, min_leaf, l2, nodes)
    nodes[node][3] = _grow(X, g, h, idx[~go_left], depth - 1, cuts, min_leaf, l2, nodes)
    return node


def fit_trees(X: np.ndarray, y: np.ndarray, w: np.ndarray | None = None, n_trees: int = 150, depth: int = 3,
              learning_rate: float = 0.05, min_leaf: int = 40, l2: float = 1.0, bins: int = 32) -> dict:
    """Gradient-boosted trees for the log-odds of ``y`` (0 artery, 1 vein), logistic loss, Newton leaves.

    X (n, k) float, y (n,) int, w (n,) sample weights (None: 1). Each feature is split only at its
    ``bins``-quantile cuts; each tree has at most ``depth`` levels and ``min_leaf`` samples a leaf; leaf
    values are shrunk by ``l2`` and ``learning_rate``. Returns the model as arrays (``predict_log_odds``)."""
    X = np.asarray(X, float)
    y = np.asarray(y, float)
    w = np.ones(len(y)) if w is None else np.asarray(w, float)
    p0 = float(np.clip((w * y).sum() / w.sum(), 1e-3, 1 - 1e-3))
    base = math.log(p0 / (1 - p0))
    cuts = [np.unique(np.quantile(X[:, f], np.linspace(0, 1, bins + 1)[1:-1])) for f in range(X.shape[1])]
    f_x = np.full(len(y), base)
    trees = []
    idx = np.arange(len(y))
    for _ in range(n_trees):
        p = 1 / (1 + np.exp(-f_x))
        nodes: list[list] = []
        _grow(X, w * (p - y), w * p * (1 - p), idx, depth, cuts, min_leaf, l2, nodes)
        for nd in nodes:
            nd[4] *= learning_rate
        trees.append(nodes)
        f_x += _tree_values(nodes, X)
    m = max(len(t) for t in trees)
    arr = np.zeros((len(trees), m, 5))
    arr[:, :, 0] = -1
    for i, t in enumerate(trees):
        arr[i, : len(t)] = np.array(t, float)
    return {"feature": arr[:, :, 0].astype(np.int16), "threshold": arr[:, :, 1], "left": arr[:, :, 2].astype(np.int16),
            "right": arr[:, :, 3].astype(np.int16), "value": arr[:, :, 4], "base": np.array(base),
            "features": np.array(FEATURES[: X.shape[1]]) if X.shape[1] <= len(FEATURES) else np.array([])}


def _tree_values(nodes: list[list], X: np.ndarray) -> np.ndarray:
    a = np.array(nodes, float)
    node = np.zeros(len(X), int)
    for _ in range(len(nodes)):
        f = a[node, 0].astype(int)
        inner = f >= 0
        if not inner.any():
            break
        xv = X[np.arange(len(X)), np.maximum(f, 0)]
        nxt = np.where(xv <= a[node, 1], a[node, 2], a[node, 3]).astype(int)
        node = np.where(inner, nxt, node)
    return a[node, 4]


def predict_log_odds(model: dict, X: np.ndarray) -> np.ndarray:
    """Log-odds of vein, (n,), of the trees ``model`` (``fit_trees`` or the shipped weights) for inputs X (n, k)."""
    X = np.asarray(X, float)
    feat, thr, left, right, val = (np.asarray(model[k]) for k in ("feature", "threshold", "left", "right", "value"))
    out = np.full(len(X), float(model["base"]))
    rows = np.arange(len(X))
    for t in range(feat.shape[0]):
        node = np.zeros(len(X), int)
        for _ in range(feat.shape[1]):
            f = feat[t, node]
            inner = f >= 0
            if not inner.any():
                break
            xv = X[rows, np.maximum(f, 0)]
            node = np.where(inner, np.where(xv <= thr[t, node], left[t, node], right[t, node]), node)
        out += val[t, node]
    return out


@lru_cache(maxsize=4)
def load(path: str | None = None) -> dict | None:
    """The trees stored at ``path`` (None: the shipped ``WEIGHTS_PATH``), or None when that file is missing."""
    p = Path(path) if path is not None else WEIGHTS_PATH
    if not p.is_file():
        return None
    with np.load(p, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def save(model: dict, path: Path, meta: dict | None = None) -> None:
    """Write the trees (compact dtypes) and ``meta`` (str values) to ``path`` (.npz)."""
    extra = {f"meta_{k}": np.array(str(v)) for k, v in (meta or {}).items()}
    np.savez_compressed(path, feature=model["feature"].astype(np.int16), threshold=model["threshold"].astype(np.float64),
                        left=model["left"].astype(np.int16), right=model["right"].astype(np.int16),
                        value=model["value"].astype(np.float32), base=np.asarray(model["base"], np.float64),
                        features=np.asarray(model["features"]), **extra)
