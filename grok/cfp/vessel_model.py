"""A small learned per-pixel vessel classifier over the classical multi-scale vessel features.

The features are the ones ``grok.cfp.vessels.segment_vessels`` computes anyway, each normalised by a
local noise level so that they do not depend on the camera's brightness or contrast: the scale-normalised
Hessian eigenvalues of the relative green darkness at five scales (tied to the field-of-view radius),
the darkness itself and two band-passed copies, the red channel's darkness and the ridge z-score. A
multilayer perceptron (``N_FEATURES`` -> 32 -> 16 -> 1, ReLU; about 1,100 weights, in
``grok.cfp.vessel_model_weights``) turns them into a vessel probability. It was trained here by
``python -m grok.cfp.train_vessel_model`` on part of CHASE_DB1 and HRF (see that module and
``docs/cfp.md``, "Vessel model card"); no weights are downloaded.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from grok.cfp.preprocess import local_scale

#: Feature names, in order (the weights module records the same list and is checked against it).
FEATURES = (
    [f"{k}_s{i}" for i in range(5) for k in ("l1", "l2")]
    + ["dark", "dark_bp3", "dark_bp8", "red_dark", "ridge_z", "dark_fine"]
)
N_FEATURES = len(FEATURES)
CLIP = 30.0


def vessel_features(ds: np.ndarray, eig_z: list[tuple[np.ndarray, np.ndarray]], zmax: np.ndarray,
                    rel: list[np.ndarray], inner: np.ndarray, sc: float, fine: np.ndarray) -> np.ndarray:
    """(N_FEATURES, h, w) float32 features of every pixel (one plane per feature).

    ds : (h, w) relative green darkness (smoothed); eig_z : per scale (l1, l2) already divided by their
    local noise scale; zmax : ridge z-score (max over scales); rel : relative channels; inner : eroded
    FOV (noise statistics); sc : length scale (FOV radius / 480 px); fine : the unsmoothed darkness minus
    its 1.5-px x scale Gaussian (the finest detail, where capillary-size vessels are).
    """
    h, w = ds.shape
    out = np.empty((N_FEATURES, h, w), np.float32)
    k = 0
    for l1, l2 in eig_z:
        out[k] = l1
        out[k + 1] = l2
        k += 2
    hp = ds - ndi.gaussian_filter(ds, 1.5 * sc)
    nl = local_scale(hp, inner, int(48 * sc))
    b3 = ds - ndi.gaussian_filter(ds, 3.0 * sc)
    b8 = ds - ndi.gaussian_filter(ds, 8.0 * sc)
    out[k] = ds / nl
    out[k + 1] = b3 / nl
    out[k + 2] = b8 / nl
    red = ndi.gaussian_filter(-rel[0], 0.6 * sc)
    rhp = red - ndi.gaussian_filter(red, 1.5 * sc)
    out[k + 3] = red / local_scale(rhp, inner, int(48 * sc))
    out[k + 4] = zmax
    out[k + 5] = fine / nl
    np.clip(out, -CLIP, CLIP, out=out)
    return out


def predict(features: np.ndarray, where: np.ndarray, weights=None) -> np.ndarray:
    """Vessel probability (h, w) float32 (0 outside ``where``) from ``vessel_features``."""
    if weights is None:
        from grok.cfp import vessel_model_weights as weights
    if list(weights.FEATURES) != list(FEATURES):
        raise RuntimeError("grok.cfp.vessel_model_weights was trained on other features; retrain with "
                           "python -m grok.cfp.train_vessel_model")
    layers = _layers(weights)
    nf, h, w = features.shape
    flat = features.reshape(nf, -1)
    rows = np.flatnonzero(where.ravel())
    p = np.zeros(h * w, np.float32)
    for start in range(0, rows.size, 1 << 16):  # blocks of 65,536 pixels stay in cache
        x = np.ascontiguousarray(flat[:, rows[start:start + (1 << 16)]].T)
        for i, (W, b) in enumerate(layers):
            x = x @ W
            x += b
            if i < len(layers) - 1:
                np.maximum(x, 0, out=x)
        p[rows[start:start + (1 << 16)]] = 1.0 / (1.0 + np.exp(-np.clip(x[:, 0], -30, 30)))
    return p.reshape(h, w)


_CACHE: dict[int, list] = {}


def _layers(weights) -> list[tuple[np.ndarray, np.ndarray]]:
    """The layers as float32 arrays, the input standardisation folded into the first layer."""
    key = id(weights)
    if key not in _CACHE:
        mean = np.asarray(weights.MEAN, np.float64)
        std = np.asarray(weights.STD, np.float64)
        out = []
        for i, (W, b) in enumerate(weights.LAYERS):
            W = np.asarray(W, np.float64)
            b = np.asarray(b, np.float64)
            if i == 0:  # ((x - mean) / std) @ W + b = x @ (W / std) + (b - (mean / std) @ W)
                b = b - (mean / std) @ W
                W = W / std[:, None]
            out.append((W.astype(np.float32), b.astype(np.float32)))
        _CACHE[key] = out
    return _CACHE[key]
