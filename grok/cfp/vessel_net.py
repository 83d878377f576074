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
im2col in stripes of zero-bordered buffers + one float32 matrix product per stripe (BLAS); ``tests/test_cfp_vessel_net.py``
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
#
# Every activation lives in a zero-bordered buffer (C, h + 2, w + 2). Flattened per channel, the 3 x 3 tap
# (ky, kx) of the pixel at flat index q is at q + (ky - 1) * (w + 2) + (kx - 1), so the im2col matrix of a
# run of consecutive flat indices is nine contiguous slices per channel (no window gathering, no padded
# copy per layer). A run also covers the border columns between image rows; they are zeroed afterwards.

#: Floats per im2col stripe (256 kB: a stripe and its product stay in the L2 cache).
STRIPE_FLOATS = 1 << 16


def _buffer(c: int, h: int, w: int) -> np.ndarray:
    """A zero-bordered activation buffer (c, h + 2, w + 2) float32."""
    return np.zeros((c, h + 2, w + 2), np.float32)


def _conv_flat(src: np.ndarray, kmat: np.ndarray, taps: tuple[int, int, int, int], dst: np.ndarray,
               relu: bool = False) -> None:
    """dst's interior (O, h, w) = kmat applied to the taps of src (C, h + 2, w + 2), a zero-bordered buffer of
    the same size as dst: taps = (dy0, dx0, ny, nx) are the rows dy0 .. dy0 + ny - 1 and columns dx0 .. dx0 +
    nx - 1 around each pixel, kmat (O, C * ny * nx) or, with a bias as its last column, (O, C * ny * nx + 1).
    The im2col of a run of flat indices is one strided copy (a tap is a fixed flat offset), in stripes of
    ~``STRIPE_FLOATS``, then one BLAS matrix product per stripe; dst's border stays zero."""
    c, hb, wb = src.shape
    dy0, dx0, ny, nx = taps
    o, k = kmat.shape[0], c * ny * nx
    sf, df = src.reshape(c, -1), dst.reshape(o, -1)
    step = max(256, STRIPE_FLOATS // k)
    cols = np.empty((kmat.shape[1], step), np.float32)
    cols[k:] = 1.0  # the bias row, when kmat carries one
    win = cols[:k].reshape(c, ny, nx, step)
    y = np.empty((o, step), np.float32)
    sc, se = sf.strides
    q0, q1 = wb + 1, (hb - 1) * wb - 1  # first and one past the last interior pixel
    for s in range(q0, q1, step):
        n = min(step, q1 - s)
        win[..., :n] = np.lib.stride_tricks.as_strided(sf[:, s + dy0 * wb + dx0:], (c, ny, nx, n),
                                                       (sc, wb * se, se, se), writeable=False)
        yy = np.matmul(kmat, cols[:, :n], out=y[:, :n]) if n == step else kmat @ cols[:, :n]
        if relu:
            np.maximum(yy, 0, out=df[:, s:s + n])
        else:
            df[:, s:s + n] = yy
    dst[:, 1:-1, 0] = 0  # the border columns that the runs crossed
    dst[:, 1:-1, -1] = 0


def _with_bias(wmat: np.ndarray, b: np.ndarray) -> np.ndarray:
    """wmat (O, K) with the bias b (O,) as an extra last column (the im2col's row of ones)."""
    return np.ascontiguousarray(np.concatenate([wmat, b[:, None]], axis=1), np.float32)


def _conv3x3(src: np.ndarray, wb: np.ndarray, relu: bool = True) -> np.ndarray:
    """'same' 3 x 3 convolution of a zero-bordered buffer src (C, h + 2, w + 2) with wb (O, C * 9 + 1) (torch's
    (O, C, 3, 3) flattened, the bias as the last column); returns a zero-bordered buffer (O, h + 2, w + 2)."""
    dst = np.empty((wb.shape[0],) + src.shape[1:], np.float32)
    dst[:, 0] = 0
    dst[:, -1] = 0
    _conv_flat(src, wb, (-1, -1, 3, 3), dst, relu)
    return dst


def _add_up_conv3x3(a: np.ndarray, phases: list[np.ndarray], dst: np.ndarray) -> None:
    """Add to dst's interior (O, 2h, 2w) the 3 x 3 'same' convolution (no bias) of the nearest 2x upsampling
    of the buffer a (C, h + 2, w + 2), without forming it: each output phase (py, px) is a 2 x 2 convolution
    of ``a`` itself (``_phase_kernels``), 4/9 of the multiply-adds and no upsampled copy."""
    _, hb, wb = a.shape
    h, w = hb - 2, wb - 2
    tmp = np.empty((dst.shape[0], hb, wb), np.float32)
    for py in range(2):
        for px in range(2):
            # phase 0 of an axis reads low-resolution rows i-1, i; phase 1 rows i, i+1
            _conv_flat(a, phases[2 * py + px], (py - 1, px - 1, 2, 2), tmp)
            dst[:, 1 + py:1 + py + 2 * h:2, 1 + px:1 + px + 2 * w:2] += tmp[:, 1:-1, 1:-1]


def _phase_kernels(wt: np.ndarray) -> list[np.ndarray]:
    """The four 2 x 2 kernels (O, C * 4) that ``_add_up_conv3x3`` applies for a 3 x 3 kernel wt (O, C, 3, 3):
    phase 0 of an axis merges taps 1 and 2 (they read the same low-resolution pixel), phase 1 taps 0 and 1."""
    merge = [np.array([[1, 0, 0], [0, 1, 1]], np.float32), np.array([[1, 1, 0], [0, 0, 1]], np.float32)]
    out = []
    for py in range(2):
        for px in range(2):
            k = np.einsum("ay,bx,ocyx->ocab", merge[py], merge[px], wt.astype(np.float64))
            out.append(np.ascontiguousarray(k.reshape(wt.shape[0], -1), np.float32))
    return out


def _pool(src: np.ndarray) -> np.ndarray:
    """2 x 2 max-pooling of the buffer src (C, H + 2, W + 2) (H, W even) into a buffer (C, H/2 + 2, W/2 + 2)."""
    c, hb, wb = src.shape
    h, w = (hb - 2) // 2, (wb - 2) // 2
    dst = _buffer(c, h, w)
    d = dst[:, 1:-1, 1:-1]
    np.maximum(src[:, 1:-1:2, 1:-1:2], src[:, 2::2, 1:-1:2], out=d)
    np.maximum(d, src[:, 1:-1:2, 2::2], out=d)
    np.maximum(d, src[:, 2::2, 2::2], out=d)
    return dst


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
    W8 = weights or load_weights()
    h, w = x.shape
    n = 2 ** (len(ARCH) - 1)
    hp, wp = -(-h // n) * n, -(-w // n) * n
    a = _buffer(1, hp, wp)
    a[0, 1:h + 1, 1:w + 1] = x
    skips = []
    for lvl in range(len(ARCH)):
        if lvl:
            a = _pool(a)
        a = _conv3x3(a, _biased(W8, f"enc{lvl}a"))
        a = _conv3x3(a, _biased(W8, f"enc{lvl}b"))
        skips.append(a)
    for lvl in range(len(ARCH) - 2, -1, -1):
        # conv(concat(up(a), skip)) = conv(skip) + conv_up(a) (sub-pixel phases, see _add_up_conv3x3)
        phases, ws = _decoder_kernels(W8, lvl, a.shape[0])
        y = _conv3x3(skips[lvl], ws, relu=False)
        _add_up_conv3x3(a, phases, y)
        a = np.maximum(y, 0, out=y)
    wo, bo = W8["layers"]["out"]
    y = (wo @ a.reshape(a.shape[0], -1)).reshape(a.shape[1:])[1:h + 1, 1:w + 1]
    return y + bo[0]


def _biased(weights: dict, name: str) -> np.ndarray:
    """Layer ``name``'s (O, C * 9 + 1) kernel with its bias as the last column; cached in the weights dict."""
    cache = weights.setdefault("_biased", {})
    if name not in cache:
        cache[name] = _with_bias(*weights["layers"][name])
    return cache[name]


def _decoder_kernels(weights: dict, lvl: int, ca: int) -> tuple[list[np.ndarray], np.ndarray]:
    """(phase kernels of the upsampled part, (O, Cs * 9 + 1) kernel of the skip part with the bias as its last
    column) of decoder level ``lvl``, whose input concatenates ``ca`` upsampled channels and the skip's;
    cached in the weights dict."""
    cache = weights.setdefault("_decoder", {})
    if lvl not in cache:
        wm, b = weights["layers"][f"dec{lvl}"]
        wt = wm.reshape(wm.shape[0], -1, 3, 3)
        cache[lvl] = (_phase_kernels(wt[:, :ca]), _with_bias(wt[:, ca:].reshape(wm.shape[0], -1), b))
    return cache[lvl]


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
