"""A small fully convolutional vessel network (compact U-Net), run in NumPy (no torch at run time).

Input normalisation (``net_input``), the part that lets one set of weights see every camera alike:

* **calibre-normalised scale**: the photograph is resampled so that its wide vessels are as many pixels
  across as in the training photographs. The scale is read from the classical ridge mask
  (``calibre_px``: twice the mean distance-to-border of its widest 10 % of pixels, i.e. the calibre of the
  main vessels), not from the field-of-view radius, because cameras differ in field angle (CHASE_DB1 is a
  30-degree camera, HRF a 45-degree one: at the same FOV radius HRF's vessels are half as wide);
* **illumination- and contrast-normalised green**: relative darkness ``1 - green / background`` (the
  pipeline's own green background, ``VesselMaps.green_background``, interpolated to the net's grid),
  divided by the median darkness of the classical mask's pixels (so the main vessels are ~1 on every
  camera and exposure), clipped to [-CLIP, CLIP] and 0 outside the field of view.

The network (``ARCH``): 4 levels with 8, 16, 32, 32 channels, two 3 x 3 convolutions per encoder level,
one per decoder level after concatenating the skip, ReLU, 2 x 2 max-pooling, nearest upsampling, a 1 x 1
convolution to one logit; batch normalisation folded into the convolutions at export. 63,673
weights in ``vessel_net_weights.npz`` (package data), trained by ``python -m grok.cfp.train_vessel_net``
on CHASE_DB1 children 01-10 only (``docs/cfp.md``, "Vessel network card"). The forward pass here is
im2col in row stripes + one float32 matrix product per stripe (BLAS); ``tests/test_cfp_vessel_net.py``
checks it against torch's.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

#: Shipped weights (package data).
WEIGHTS_PATH = Path(__file__).resolve().parent / "vessel_net_weights.npz"
#: Encoder channels per level (the decoder mirrors them).
ARCH = (8, 16, 32, 32)
#: Input clip (units of the main vessels' median darkness).
CLIP = 4.0
#: Resampling factor (net px per working px) is kept within these bounds, and the net's grid under
#: MAX_NET_PX pixels.
SCALE_BOUNDS = (0.4, 3.0)
MAX_NET_PX = 6_000_000


def calibre_px(mask: np.ndarray) -> float:
    """Calibre (px) of the main vessels of a vessel mask: twice the mean Euclidean distance-to-border over
    the mask pixels at or above the 90th percentile of that distance (the centres of the widest vessels).
    NaN for a mask of under 200 pixels."""
    if int(mask.sum()) < 200:
        return float("nan")
    dt = ndi.distance_transform_edt(mask)
    v = dt[mask]
    return float(2.0 * v[v >= np.percentile(v, 90)].mean())


def _resample(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a float 2-D array to ``shape`` (h, w): area average when shrinking, bilinear when growing."""
    h, w = shape
    if a.shape == (h, w):
        return np.asarray(a, np.float32)
    im = Image.fromarray(np.ascontiguousarray(a, np.float32), mode="F")
    shrink = h < a.shape[0]
    return np.asarray(im.resize((w, h), Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR), np.float32)


def net_grid(original_shape: tuple[int, int], working_scale: float, net_per_working: float) -> tuple[int, int]:
    """(h, w) of the net's grid: the original size x working scale x ``net_per_working``, capped."""
    H, W = original_shape
    f = working_scale * net_per_working
    if H * W * f * f > MAX_NET_PX:
        f = math.sqrt(MAX_NET_PX / (H * W))
    return max(int(round(H * f)), 16), max(int(round(W * f)), 16)


def net_input(green: np.ndarray, green_background: np.ndarray, fov_mask: np.ndarray, contrast: float,
              grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The network's input on ``grid`` and the FOV mask there.

    green : (H, W) float in [0, 1], the photograph's own green channel at its original size (or the
    working copy's); green_background, fov_mask : working-resolution maps (``VesselMaps``); contrast :
    the median relative darkness of the classical mask (> 0). Returns (x float32 (h, w), fov bool (h, w)).
    """
    h, w = grid
    g = _resample(green, (h, w))
    bg = _resample(green_background, (h, w)) if green_background.shape != (h, w) else green_background
    fh, fw = fov_mask.shape
    yi = np.minimum(((np.arange(h) + 0.5) * fh / h).astype(int), fh - 1)
    xi = np.minimum(((np.arange(w) + 0.5) * fw / w).astype(int), fw - 1)
    fov = fov_mask[yi[:, None], xi[None, :]]
    ok = fov & (bg > 1e-3)
    x = np.zeros((h, w), np.float32)
    x[ok] = (1.0 - g[ok] / bg[ok]) / max(float(contrast), 1e-3)
    np.clip(x, -CLIP, CLIP, out=x)
    return x, fov


def contrast_of(darkness: np.ndarray, mask: np.ndarray) -> float:
    """Median relative darkness over the classical mask (the main vessels' contrast); NaN when empty."""
    v = darkness[mask]
    return float(np.median(v)) if v.size else float("nan")


# ---------------------------------------------------------------- forward pass (NumPy)

def _stripe_conv(xp: np.ndarray, kmat: np.ndarray, taps: list[tuple[int, int]], h: int, w: int, out: np.ndarray,
                 bias: np.ndarray | None = None, relu: bool = False) -> None:
    """out (O, h, w) = kmat (O, C * len(taps)) applied to the shifted windows ``xp[:, dy:dy + h, dx:dx + w]`` of a
    padded xp (C, ., .), one tap per (dy, dx): im2col in row stripes of ~256 kB (they stay in the L2 cache)
    and one BLAS matrix product per stripe."""
    c, t, o = xp.shape[0], len(taps), kmat.shape[0]
    rows = max(1, (1 << 16) // (c * t * w))
    cols = np.empty((c, t, rows, w), np.float32)
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        n = r1 - r0
        cc = cols[:, :, :n]
        for k, (dy, dx) in enumerate(taps):
            cc[:, k] = xp[:, r0 + dy:r1 + dy, dx:dx + w]
        y = kmat @ cc.reshape(c * t, n * w)
        if bias is not None:
            y += bias[:, None]
        if relu:
            np.maximum(y, 0, out=y)
        out[:, r0:r1] = y.reshape(o, n, w)


def _padded(x: np.ndarray) -> np.ndarray:
    c, h, w = x.shape
    xp = np.zeros((c, h + 2, w + 2), np.float32)
    xp[:, 1:-1, 1:-1] = x
    return xp


def _conv3x3(x: np.ndarray, wmat: np.ndarray, b: np.ndarray, relu: bool = True) -> np.ndarray:
    """'same' 3 x 3 convolution of x (C, H, W) with wmat (O, C * 9) (torch's (O, C, 3, 3) flattened), bias b."""
    _, h, w = x.shape
    out = np.empty((wmat.shape[0], h, w), np.float32)
    _stripe_conv(_padded(x), wmat, [(ky, kx) for ky in range(3) for kx in range(3)], h, w, out, b, relu)
    return out


def _up_conv3x3(a: np.ndarray, phases: list[np.ndarray]) -> np.ndarray:
    """3 x 3 'same' convolution (no bias) of the nearest 2x upsampling of a (C, h, w), without forming it:
    each output phase (py, px) is a 2 x 2 convolution of ``a`` itself (``_phase_kernels``), 4/9 of the
    multiply-adds and no upsampled copy. Returns (O, 2h, 2w)."""
    _, h, w = a.shape
    ap = _padded(a)
    out = np.empty((phases[0].shape[0], 2 * h, 2 * w), np.float32)
    for py in range(2):
        for px in range(2):
            # padded offsets: phase 0 of an axis reads low-resolution rows i-1, i; phase 1 rows i, i+1
            taps = [(py + dy, px + dx) for dy in range(2) for dx in range(2)]
            _stripe_conv(ap, phases[2 * py + px], taps, h, w, out[:, py::2, px::2])
    return out


def _phase_kernels(wt: np.ndarray) -> list[np.ndarray]:
    """The four 2 x 2 kernels (O, C * 4) that ``_up_conv3x3`` applies for a 3 x 3 kernel wt (O, C, 3, 3):
    phase 0 of an axis merges taps 1 and 2 (they read the same low-resolution pixel), phase 1 taps 0 and 1."""
    merge = [np.array([[1, 0, 0], [0, 1, 1]], np.float32), np.array([[1, 1, 0], [0, 0, 1]], np.float32)]
    out = []
    for py in range(2):
        for px in range(2):
            k = np.einsum("ay,bx,ocyx->ocab", merge[py], merge[px], wt.astype(np.float64))
            out.append(np.ascontiguousarray(k.reshape(wt.shape[0], -1), np.float32))
    return out


def _pool(x: np.ndarray) -> np.ndarray:
    """2 x 2 max-pooling of x (C, H, W) (H, W even)."""
    return np.maximum(np.maximum(x[:, ::2, ::2], x[:, 1::2, ::2]), np.maximum(x[:, ::2, 1::2], x[:, 1::2, 1::2]))


@lru_cache(maxsize=2)
def load_weights(path: str | None = None) -> dict:
    """The layers {name: (wmat float32 (O, C*k*k), bias float32 (O,))} and metadata of a weights file."""
    p = Path(path) if path else WEIGHTS_PATH
    with np.load(p, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    layers = {}
    for k in d:
        if k.endswith(".w"):
            name = k[:-2]
            wt = d[k].astype(np.float32)
            layers[name] = (np.ascontiguousarray(wt.reshape(wt.shape[0], -1)), d[name + ".b"].astype(np.float32))
    meta = {k[5:]: d[k] for k in d if k.startswith("meta.")}
    return {"layers": layers, "meta": meta}


def forward(x: np.ndarray, weights: dict | None = None) -> np.ndarray:
    """Vessel logits (h, w) float32 of the network on an input x (h, w) (any size: padded to a multiple of 8)."""
    L = (weights or load_weights())["layers"]
    h, w = x.shape
    n = 2 ** (len(ARCH) - 1)
    hp, wp = -(-h // n) * n, -(-w // n) * n
    a = np.zeros((1, hp, wp), np.float32)
    a[0, :h, :w] = x
    skips = []
    for lvl in range(len(ARCH)):
        if lvl:
            a = _pool(a)
        a = _conv3x3(a, *L[f"enc{lvl}a"])
        a = _conv3x3(a, *L[f"enc{lvl}b"])
        skips.append(a)
    for lvl in range(len(ARCH) - 2, -1, -1):
        # conv(concat(up(a), skip)) = conv_up(a) (sub-pixel phases, see _up_conv3x3) + conv(skip)
        wm, b = L[f"dec{lvl}"]
        ca = a.shape[0]
        wt = wm.reshape(wm.shape[0], -1, 3, 3)
        key = f"_phases{lvl}"
        if key not in L:
            L[key] = _phase_kernels(wt[:, :ca])
        ws = np.ascontiguousarray(wt[:, ca:].reshape(wm.shape[0], -1))
        y = _up_conv3x3(a, L[key])
        y += _conv3x3(skips[lvl], ws, b, relu=False)
        a = np.maximum(y, 0, out=y)
    wo, bo = L["out"]
    y = (wo @ a.reshape(a.shape[0], -1) + bo[:, None]).reshape(hp, wp)
    return y[:h, :w]


def probability(x: np.ndarray, weights: dict | None = None) -> np.ndarray:
    """Vessel probability (h, w) float32 of the network on input x."""
    z = forward(x, weights)
    return (1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))).astype(np.float32)


def threshold(weights: dict | None = None) -> float:
    """The probability threshold chosen on the training photographs (stored with the weights)."""
    return float((weights or load_weights())["meta"]["threshold"])


def calibre_target(weights: dict | None = None) -> float:
    """Main-vessel calibre (px) on the net's grid that the weights were trained at."""
    return float((weights or load_weights())["meta"]["calibre_px"])


def available() -> bool:
    """True when the weights file is installed."""
    return WEIGHTS_PATH.is_file()


#: Net grid relative to the training calibre (1.0: main vessels as wide as in the training photographs;
#: below 1 the net runs on a coarser grid, within the training scale jitter, for speed).
NET_SCALE = 1.0


def segment(vm, green: np.ndarray | None, original_shape: tuple[int, int], working_scale: float,
            fov_mask: np.ndarray, weights: dict | None = None):
    """The vessel maps ``vm`` (classical, ``grok.cfp.vessels.segment_vessels``) with the network's mask.

    green : the photograph's green channel at its original size (float in [0, 1]; None: the working
    copy's is not available here, so the classical maps are returned unchanged). The classical ridge
    mask stays as ``graph_mask`` (the vessel graph, A/V colour and calibres, disc and lesion rules are
    read from it); ``mask`` becomes the network's (reported vessels, density, fractal dimensions), at
    working resolution; ``net_probability`` keeps the network's map for the original-size mask. When
    the classical mask is too small to give a calibre, ``vm`` is returned unchanged.
    """
    import dataclasses

    if green is None or not vm.mask.any():
        return vm
    cal = calibre_px(vm.mask)
    con = contrast_of(vm.darkness, vm.mask)
    if not (np.isfinite(cal) and cal > 0 and np.isfinite(con) and con > 0):
        return vm
    w8 = weights or load_weights()
    f = float(np.clip(NET_SCALE * calibre_target(w8) / cal, *SCALE_BOUNDS))
    grid = net_grid(original_shape, working_scale, f)
    x, _ = net_input(green, vm.green_background, fov_mask, con, grid)
    p = probability(x, w8)
    thr = threshold(w8)
    mask = (_resample(p, fov_mask.shape) >= thr) & fov_mask
    return dataclasses.replace(vm, mask=mask, graph_mask=vm.mask, net_probability=p, net_threshold=thr,
                               fov=fov_mask)
