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
    "venous_beading": (80, 160, 255),
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
    for seg in (measurement.extras.get("venous_beading") or {}).get("assessed", []):
        if seg.get("beaded") and measurement.biomarkers.get("venous_beading_count") is not None:
            x1, y1, x2, y2 = seg["box_xyxy_px"]  # beaded vein segments (grok.cfp.vessel_signs): not lesions
            d.rectangle([x1 - lw, y1 - lw, x2 + lw, y2 + lw], outline=_COLORS["venous_beading"], width=lw)
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


#: The structure layers :func:`cfp_layer_pngs` writes (the review app toggles each on its own).
CFP_LAYERS = ("vessels", "disc_cup")


def _fit(mask: np.ndarray | None, size_wh: tuple[int, int]) -> np.ndarray | None:
    """A boolean mask resized to ``size_wh`` = (width, height): a shown pixel is set when any measured pixel
    under it is (area resampling, so a one-pixel vessel stays visible when the photograph is shown smaller)."""
    if mask is None or not np.any(mask):
        return None
    m = np.asarray(mask, bool)
    if (m.shape[1], m.shape[0]) == tuple(size_wh):
        return m
    return np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(size_wh, Image.BOX)) > 0


def cfp_layer_pngs(measurement: CfpMeasurement, size_wh: tuple[int, int], path_prefix: str | os.PathLike,
                   scale: float = 1.0) -> dict[str, str]:
    """Transparent PNGs of ``size_wh`` (the photograph as shown, ``scale`` x the measured one), one per
    structure, for viewers that toggle them separately: ``vessels`` (arteries red, veins blue, vessels not
    typed grey) and ``disc_cup`` (disc green and cup yellow outlines from the segmentation masks, fovea cross).
    A structure the measurement did not find gets no file. Written as ``<path_prefix>_<layer>.png``; returns
    ``{layer: path}``."""
    w, h = int(size_wh[0]), int(size_wh[1])
    m = measurement.masks
    out: dict[str, str] = {}

    def save(name: str, img: Image.Image) -> None:
        p = Path(f"{os.fspath(path_prefix)}_{name}.png")
        p.parent.mkdir(parents=True, exist_ok=True)
        img.save(p, optimize=False)
        out[name] = os.fspath(p)

    arteries, veins = _fit(m.get("arteries"), (w, h)), _fit(m.get("veins"), (w, h))
    vessels = _fit(m.get("vessels"), (w, h))
    if vessels is not None or arteries is not None or veins is not None:
        rgba = np.zeros((h, w, 4), np.uint8)
        if vessels is not None:
            rgba[vessels] = (220, 220, 220, 150)
        for mk, col in ((arteries, (255, 60, 60, 210)), (veins, (60, 110, 255, 210))):
            if mk is not None:
                rgba[mk] = col
        save("vessels", Image.fromarray(rgba, "RGBA"))
    lw = max(int(round(max(w, h) / 500)), 1)
    disc, cup = _fit(m.get("disc"), (w, h)), _fit(m.get("cup"), (w, h))
    fc = measurement.biomarkers.get("fovea_center_xy_px")
    if disc is not None or cup is not None or fc is not None:
        rgba = np.zeros((h, w, 4), np.uint8)
        for mk, col in ((disc, (0, 255, 0, 255)), (cup, (255, 230, 0, 255))):
            if mk is not None:
                rgba[_outline(mk, lw)] = col
        img = Image.fromarray(rgba, "RGBA")
        if fc is not None and all(np.isfinite(fc)):
            d, s, x, y = ImageDraw.Draw(img), 12 * lw, fc[0] * scale, fc[1] * scale
            d.line([x - s, y, x + s, y], fill=(0, 255, 0, 255), width=lw)
            d.line([x, y - s, x, y + s], fill=(0, 255, 0, 255), width=lw)
        save("disc_cup", img)
    return out
