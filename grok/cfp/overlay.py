"""Overlay PNG and binary mask PNGs for a CfpMeasurement (for people: curators, reports)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi

from grok.cfp.measure import MASK_NAMES, CfpMeasurement

_COLORS = {
    "hemorrhage": (255, 40, 40),
    "microaneurysm": (255, 0, 200),
    "hard_exudate": (255, 255, 0),
    "cotton_wool_spot": (255, 255, 255),
    "drusen": (0, 255, 255),
}


def _to_uint8_rgb(rgb: np.ndarray) -> np.ndarray:
    a = np.asarray(rgb)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    a = a[..., :3]
    if a.dtype == np.uint8:
        return a.copy()
    if a.dtype == np.uint16:
        return (a / 257).astype(np.uint8)
    f = a.astype(np.float32)
    if f.size and f.max() <= 1.5:
        f = f * 255
    return np.clip(f, 0, 255).astype(np.uint8)


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
    return mask & ~ndi.binary_erosion(mask, iterations=max(width, 1))


def overlay_png(rgb: np.ndarray, measurement: CfpMeasurement, path: str | os.PathLike) -> Path:
    """Write an overlay PNG: arteries red / veins blue (tinted), disc (green) and cup (yellow) contours,
    zone B (white dashed ring: 0.5-1 DD beyond the disc margin), fovea cross, lesion boxes by type.

    rgb : (H, W, 3) the photograph measured; path : output file (parent folders are created).
    Returns the path written.
    """
    img = _to_uint8_rgb(rgb)
    H, W = img.shape[:2]
    m = measurement.masks
    out = img.astype(np.float32)
    for name, col in (("arteries", (255, 60, 60)), ("veins", (60, 110, 255))):
        mk = m.get(name)
        if mk is not None and mk.shape == (H, W):
            out[mk] = 0.45 * out[mk] + 0.55 * np.asarray(col, np.float32)
    lw = max(int(round(max(H, W) / 500)), 1)
    for name, col in (("disc", (0, 255, 0)), ("cup", (255, 230, 0))):
        mk = m.get(name)
        if mk is not None and mk.shape == (H, W) and mk.any():
            out[_outline(mk, lw)] = col
    pil = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(pil)
    bm = measurement.biomarkers
    dc, dd = bm.get("disc_center_xy_px"), bm.get("disc_diameter_px")
    if dc is not None and dd is not None and np.isfinite(dd):
        for r_dd in (1.0, 1.5):
            r = r_dd * dd
            d.ellipse([dc[0] - r, dc[1] - r, dc[0] + r, dc[1] + r], outline=(255, 255, 255), width=lw)
    fc = bm.get("fovea_center_xy_px")
    if fc is not None:
        s = 12 * lw
        d.line([fc[0] - s, fc[1], fc[0] + s, fc[1]], fill=(0, 255, 0), width=lw)
        d.line([fc[0], fc[1] - s, fc[0], fc[1] + s], fill=(0, 255, 0), width=lw)
    for les in measurement.lesions:
        x1, y1, x2, y2 = les["box_xyxy_px"]
        d.rectangle([x1 - lw, y1 - lw, x2 + lw, y2 + lw], outline=_COLORS.get(les["type"], (255, 255, 255)), width=lw)
    q = measurement.quality
    d.text((10, 10), f"quality: {q['grade']}  laterality: {measurement.laterality}", fill=(255, 255, 255))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    pil.save(p, format="PNG")
    return p


def write_masks(measurement: CfpMeasurement, directory: str | os.PathLike) -> list[Path]:
    """Write fov.png, vessels.png, arteries.png, veins.png, disc.png, cup.png (0/255, 8-bit, original size)."""
    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in MASK_NAMES:
        mk = measurement.masks.get(name)
        if mk is None:
            continue
        p = out_dir / f"{name}.png"
        Image.fromarray((np.asarray(mk, dtype=bool) * 255).astype(np.uint8), mode="L").save(p)
        written.append(p)
    return written
