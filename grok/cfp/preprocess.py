"""Input normalisation for fundus photographs: dtype, working resolution, field of view, background.

All functions take and return plain arrays; nothing here knows about discs or vessels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from grok.cfp._kernels import block_mean, block_median_abs, channel_mean_min_max

#: Photographs whose longer side exceeds this are analysed downscaled to it; results are mapped back
#: to original pixels.
WORKING_MAX_SIDE_PX = 1024
#: Below this shorter side an image is too small to measure (rejected).
MIN_SIDE_PX = 128
#: FOV radius (px) of a 1024-px, 45-degree photograph; length parameters scale with fov_radius / this.
REFERENCE_FOV_RADIUS_PX = 480.0


@dataclass
class Working:
    """An image prepared for analysis.

    rgb : (h, w, 3) float32 in [0, 1] at working resolution.
    scale : working px per original px (<= 1).
    original_shape : (H, W) of the input.
    greyscale : True when the three channels are (nearly) identical.
    """

    rgb: np.ndarray
    scale: float
    original_shape: tuple[int, int]
    greyscale: bool


def to_working(image: np.ndarray) -> Working:
    """Convert any (H, W), (H, W, 3) or (H, W, 4) uint8/uint16/float image to a float RGB working image.

    Raises ValueError naming the fix when the array cannot be a photograph (wrong rank or channels).
    """
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(
            f"measure_fundus: image has shape {a.shape}; pass an (H, W, 3) RGB array (or (H, W) greyscale)"
        )
    a = a[..., :3]
    if a.dtype == np.uint8:
        f = a.astype(np.float32) / 255.0
    elif a.dtype == np.uint16:
        f = a.astype(np.float32) / 65535.0
    elif np.issubdtype(a.dtype, np.integer):
        mx = float(a.max()) if a.size else 1.0
        f = a.astype(np.float32) / max(mx, 1.0)
    else:
        f = a.astype(np.float32)
        if f.size and np.nanmax(f) > 1.5:
            f = f / 255.0
        f = np.nan_to_num(np.clip(f, 0, 1))
    H, W = f.shape[:2]
    scale = 1.0
    if max(H, W) > WORKING_MAX_SIDE_PX:
        scale = WORKING_MAX_SIDE_PX / max(H, W)
        f = _resize(f, scale)
    grey = _is_greyscale(f)
    return Working(rgb=f, scale=scale, original_shape=(H, W), greyscale=grey)


def _resize(f: np.ndarray, scale: float) -> np.ndarray:
    """Area-averaging downscale of a float image (H, W, C) by ``scale`` < 1 (Pillow box filter)."""
    H, W = f.shape[:2]
    h, w = max(int(round(H * scale)), 1), max(int(round(W * scale)), 1)
    out = np.empty((h, w, f.shape[2]), dtype=np.float32)
    for c in range(f.shape[2]):
        im = Image.fromarray(f[..., c].astype(np.float32), mode="F")
        out[..., c] = np.asarray(im.resize((w, h), Image.Resampling.BOX))
    return out


def _is_greyscale(f: np.ndarray) -> bool:
    """True when the channels carry no colour (red-free, greyscale, an OCT B-scan)."""
    sub = f[:: max(f.shape[0] // 256, 1), :: max(f.shape[1] // 256, 1)]
    r, g, b = sub[..., 0], sub[..., 1], sub[..., 2]
    bright = (r + g + b) > 0.05
    if bright.sum() < 10:
        return False
    diff = max(float(np.mean(np.abs(r - g)[bright])), float(np.mean(np.abs(r - b)[bright])))
    return diff < 0.02


@dataclass
class Fov:
    """Field of view. mask : (h, w) bool; centre (x, y) px; radius px (equal-area circle); coverage is the
    FOV's share of the image; circularity is area / (pi r_max^2) of the mask (1 for a disc)."""

    mask: np.ndarray
    center_xy: tuple[float, float]
    radius: float
    coverage: float
    circularity: float


def find_fov(rgb: np.ndarray) -> Fov:
    """The camera's circular field of view: the bright region against the dark surround.

    rgb : (h, w, 3) float in [0, 1]. The threshold is a fraction of the bright-pixel level of the red
    channel (the fundus is red-dominated), so exposure changes do not move it.
    """
    h, w = rgb.shape[:2]
    lum = channel_mean_min_max(np.asarray(rgb, np.float32))[2]
    hi = float(np.percentile(lum[::2, ::2], 90))  # a quarter of the pixels fix a percentile well enough
    thr = max(0.035, 0.2 * hi)
    m = lum > thr
    m = ndi.binary_opening(m, iterations=2)
    lab, n = ndi.label(m)
    if n == 0:
        return Fov(np.zeros((h, w), bool), (w / 2, h / 2), 0.0, 0.0, 0.0)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    m = lab == (int(np.argmax(sizes)) + 1)
    m = ndi.binary_fill_holes(m)
    area = float(m.sum())
    ys, xs = np.nonzero(m)
    cx, cy = float(xs.mean()), float(ys.mean())
    r = math.sqrt(area / math.pi)
    cut = _cut_circle(m, r)
    if cut is not None:  # the camera's circle is cut by the frame: its own centre and radius
        cx, cy, r = cut
    # circularity: mask area against the circle reaching the far edge (robust 99.5th percentile of
    # the distances of the border pixels' neighbourhood, here of every 4th mask pixel)
    rmax = float(np.percentile(np.hypot(xs[::4] - cx, ys[::4] - cy), 99.5))
    circ = area / (math.pi * rmax**2) if rmax > 0 else 0.0
    # erode a little: the FOV rim is dark and blurred
    m = erode(m, max(int(round(r / 160)), 1))
    return Fov(m, (cx, cy), r, area / float(h * w), circ)


def _cut_circle(m: np.ndarray, r_area: float) -> tuple[float, float, float] | None:
    """Centre and radius of a field of view cut by the image frame (many cameras crop the circle at the
    top and bottom): a least-squares circle through the FOV border where it does not run along the frame.
    The equal-area circle of a cut FOV is too small (every length scale would shrink with it). m : (h, w)
    bool FOV mask; r_area : its equal-area radius. None when the border does not touch the frame (a whole
    circle: the equal-area circle is exact) or the fit is implausible."""
    h, w = m.shape
    on_frame = int(m[0].sum() + m[-1].sum() + m[:, 0].sum() + m[:, -1].sum())
    if on_frame < 0.05 * 2 * math.pi * r_area:
        return None
    border = m & ~ndi.binary_erosion(m)
    bys, bxs = np.nonzero(border)
    keep = (bxs > 2) & (bxs < w - 3) & (bys > 2) & (bys < h - 3)
    if keep.sum() < 50:
        return None
    x, y = bxs[keep].astype(float), bys[keep].astype(float)
    # Kasa fit: x^2 + y^2 + D x + E y + F = 0, in coordinates centred on the border's mean
    x0, y0 = x.mean(), y.mean()
    u, v = x - x0, y - y0
    A = np.column_stack([u, v, np.ones_like(u)])
    sol, *_ = np.linalg.lstsq(A, -(u * u + v * v), rcond=None)
    D, E, F = sol
    cx, cy = x0 - D / 2, y0 - E / 2
    r2 = D * D / 4 + E * E / 4 - F
    if not r2 > 0:
        return None
    r = math.sqrt(r2)
    if not (r_area <= r <= 1.6 * r_area):
        return None
    return float(cx), float(cy), float(r)


def lit_fov(rgb: np.ndarray) -> np.ndarray:
    """The photograph's lit area (max channel > 20 of 255, holes filled): the field of view that scoring
    uses for sets without FOV masks (CHASE_DB1), in ``benchmarks/cfp_real.py`` and the vessel trainers."""
    m = rgb.max(axis=-1) > 20
    m = ndi.binary_opening(m, iterations=2)
    return ndi.binary_fill_holes(m)


def erode(mask: np.ndarray, k: int) -> np.ndarray:
    """``mask`` (h, w) bool eroded by ``k`` steps of the 4-neighbour cross (image outside = background)."""
    if k <= 0:
        return np.asarray(mask, bool).copy()
    return ndi.binary_erosion(mask, iterations=k)


def smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of a 2-D array; large sigmas run on a block-averaged copy (fast, same result
    to within a few per cent of the local contrast) and are upsampled back to (h, w)."""
    x = np.asarray(x, dtype=np.float32)
    if sigma < 4:
        return ndi.gaussian_filter(x, sigma)
    h, w = x.shape
    f = max(int(sigma / 2), 1)
    hs, ws = h // f, w // f
    if hs < 4 or ws < 4:
        return ndi.gaussian_filter(x, sigma)

    small = block_mean(x, f)
    small = ndi.gaussian_filter(small, math.sqrt(max(sigma**2 / f**2 - 1 / 12, 0.25)), mode="nearest")
    return upsample(small, (h, w))


def upsample(small: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float 2-D array to ``shape`` (h, w) (Pillow; pixel-centre aligned)."""
    h, w = shape
    im = Image.fromarray(np.ascontiguousarray(small, dtype=np.float32), mode="F")
    return np.asarray(im.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)


def disk_filter(a: np.ndarray, rad: int, op: str, border: float | None = None) -> np.ndarray:
    """Grey dilation (``op="max"``) or erosion (``"min"``) of ``a`` by a disk of radius ``rad`` (pixels with
    x^2 + y^2 <= rad^2, scikit-image's ``disk``), exactly as scipy's 2-D footprint filter: each row of the
    disk is a horizontal segment, so the disk's extreme is the extreme over its rows of 1-D filters of their
    widths (one per distinct width), each shifted by its row's offset. Borders are reflected as scipy's
    "reflect" mode, or held at ``border`` (e.g. 0 for a binary erosion / dilation, whose border value is 0).
    About 3-6 x faster than the footprint filter for radii 4-10."""
    filter1d, combine = (ndi.maximum_filter1d, np.maximum) if op == "max" else (ndi.minimum_filter1d, np.minimum)
    dy = np.arange(-rad, rad + 1)
    half = np.floor(np.sqrt(rad * rad - dy * dy)).astype(int)  # the disk's rows
    h, w = a.shape
    if border is None:
        p = np.pad(a, rad, mode="symmetric")  # numpy's "symmetric" is scipy's "reflect" (d c b a | a b c d)
    else:
        p = np.pad(a, rad, mode="constant", constant_values=border)
    rows = {hw: filter1d(p, size=2 * hw + 1, axis=1)[:, rad: rad + w] for hw in set(half.tolist())}
    out = rows[int(half[0])][:h].copy()
    for k in range(1, 2 * rad + 1):
        combine(out, rows[int(half[k])][k: k + h], out=out)
    return out


def relative_channels(rgb: np.ndarray, fov_mask: np.ndarray, sc: float) -> list[np.ndarray]:
    """Each channel divided by its background minus 1: (h, w) float32 arrays, 0 on plain fundus,
    negative on vessels and haemorrhages, positive on exudates, drusen and the disc. Bright structures
    are clipped against a coarse background first so they do not darken their surroundings."""
    out = []
    den = smooth(fov_mask.astype(np.float32), 8 * sc)  # shared by the three channels
    for ch in range(3):
        c = fill_outside(rgb[..., ch].astype(np.float32), fov_mask, 8 * sc, den=den)
        coarse = background(c, fov_mask, 160 * sc)
        bg = background(np.minimum(c, 1.12 * coarse), fov_mask, 42 * sc)
        out.append(np.where(fov_mask, c / bg - 1.0, 0.0).astype(np.float32))
    return out


def fill_outside(channel: np.ndarray, mask: np.ndarray, sigma: float, den: np.ndarray | None = None) -> np.ndarray:
    """Replace pixels outside ``mask`` by a smooth extrapolation of the inside (normalised convolution),
    so that filters do not respond to the FOV edge. channel, mask : (h, w); den : ``smooth(mask, sigma)``
    when already computed (it is the same for every channel)."""
    m = mask.astype(np.float32)
    num = smooth(channel * m, sigma)
    if den is None:
        den = smooth(m, sigma)
    ext = num / np.maximum(den, 1e-4)
    far = den < 1e-3
    if far.any():
        ext[far] = float(np.mean(channel[mask])) if mask.any() else 0.0
    return np.where(mask, channel, ext).astype(np.float32)


def background(channel: np.ndarray, mask: np.ndarray, size_px: float) -> np.ndarray:
    """Slowly varying background of a fundus channel, robust to vessels and small lesions.

    A median over windows of about ``size_px`` (computed at reduced resolution for speed), then
    upsampled. channel : (h, w) float, already filled outside ``mask``. Returns (h, w) float32 > 0.
    """
    h, w = channel.shape
    f = max(int(size_px // 6), 1)
    small = block_mean(np.asarray(channel, dtype=np.float32), f)
    k = max(int(round(size_px / f)) | 1, 3)
    med = ndi.median_filter(small, size=k, mode="nearest")
    med = ndi.gaussian_filter(med, k / 4)
    up = upsample(med, (h, w))
    return np.maximum(up, 1e-3).astype(np.float32)


def _fit_shape(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    out = np.empty((h, w), dtype=a.dtype)
    hh, ww = min(h, a.shape[0]), min(w, a.shape[1])
    out[:hh, :ww] = a[:hh, :ww]
    if hh < h:
        out[hh:, :ww] = a[hh - 1 : hh, :ww]
    if ww < w:
        out[:, ww:] = out[:, ww - 1 : ww]
    return out


def local_scale(x: np.ndarray, mask: np.ndarray, block: int) -> np.ndarray:
    """Spatially varying robust spread of ``x``: 1.4826 x the median of |x| over blocks of ``block`` px
    inside ``mask`` (vessels are a minority of any block, so the median sees the noise), smoothed and
    upsampled to (h, w)."""
    h, w = x.shape
    b = max(block, 8)
    hb, wb = -(-h // b), -(-w // b)
    med = block_median_abs(np.asarray(x, np.float32), np.asarray(mask, np.bool_), b)
    glob = float(np.nanmedian(med)) if np.isfinite(med).any() else 1e-6
    med = np.where(np.isfinite(med), med, glob)
    med = np.maximum(med, 0.25 * glob)

    med = ndi.gaussian_filter(med, 1.0)
    up = upsample(med, (hb * b, wb * b))[:h, :w]
    return np.maximum(1.4826 * up, 1e-6).astype(np.float32)
