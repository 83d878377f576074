"""PNG overlays for people (curators, reviewers): a B-scan with its boundaries and lesion masks, and an
en-face thickness map with the ETDRS grid and its values. matplotlib is imported lazily (Agg backend).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import numpy as np
from PIL import Image, ImageDraw

from grok.ids import BOUNDARIES

#: One colour per boundary, top to bottom.
BOUNDARY_COLOURS: tuple[str, ...] = (
    "#ff3b30", "#ff9500", "#ffcc00", "#34c759", "#00c7be", "#30b0c7", "#007aff", "#af52de", "#ff2d55",
)
MASK_COLOURS: dict[str, tuple[float, float, float]] = {
    "irf": (0.1, 0.6, 1.0),
    "srf": (0.2, 1.0, 0.4),
    "ped": (1.0, 0.4, 0.1),
    "drusen": (1.0, 0.9, 0.1),
}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def bscan_png(
    bscan: np.ndarray,
    boundaries: np.ndarray | None,
    path: str | os.PathLike,
    *,
    masks: Mapping[str, np.ndarray] | None = None,
    hrf: list[tuple[float, float]] | None = None,
    title: str | None = None,
    dpi: int = 100,
) -> str:
    """Write a B-scan with its boundaries (and lesion masks) as a PNG at native resolution.

    bscan : (rows, cols) ndarray, any numeric dtype (displayed min..max)
    boundaries : (9, cols) float rows in ``grok.ids.BOUNDARIES`` order, NaN gaps are left blank
    masks : optional ``{"irf"|"srf"|"ped"|"drusen": (rows, cols) bool}``, drawn translucent
    hrf : optional (row, col) of hyperreflective foci, drawn as small circles
    Returns the path written.
    """
    plt = _plt()
    img = np.asarray(bscan, dtype=np.float64)
    finite = np.isfinite(img)
    lo, hi = (float(img[finite].min()), float(img[finite].max())) if finite.any() else (0.0, 1.0)
    rows, cols = img.shape
    fig = plt.figure(figsize=(cols / dpi, (rows + 30) / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, rows / (rows + 30)))
    ax.imshow(np.where(finite, img, lo), cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, aspect="auto",
              interpolation="nearest")
    if masks:
        rgba = np.zeros((rows, cols, 4))
        for kind, m in masks.items():
            if m is not None and np.any(m):
                rgba[m, :3] = MASK_COLOURS.get(kind, (1, 0, 1))
                rgba[m, 3] = 0.45
        ax.imshow(rgba, aspect="auto", interpolation="nearest")
    if boundaries is not None:
        xs = np.arange(cols)
        for k, name in enumerate(BOUNDARIES):
            ax.plot(xs, boundaries[k], lw=0.8, color=BOUNDARY_COLOURS[k], label=name)
    if hrf:
        for r, c in hrf:
            ax.plot([c], [r], marker="o", ms=6, mfc="none", mec="#ff00ff", mew=0.8)
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    ax.axis("off")
    if title or boundaries is not None:
        fig.text(0.005, 1 - 15 / (rows + 30), title or "", color="black", fontsize=8, va="center")
        if boundaries is not None:
            x0 = 0.42
            for k, name in enumerate(BOUNDARIES):
                fig.text(x0, 1 - 15 / (rows + 30), name, color=BOUNDARY_COLOURS[k], fontsize=6, va="center")
                x0 += (len(name) + 1.5) * 4.2 / cols
    fig.savefig(os.fspath(path), dpi=dpi)
    plt.close(fig)
    return os.fspath(path)


def thickness_map_png(
    thickness_um: np.ndarray,
    spacing_um: tuple[float, float],
    fovea: tuple[float, float],
    laterality: str,
    path: str | os.PathLike,
    *,
    values: Mapping[str, float] | None = None,
    title: str | None = None,
) -> str:
    """Write an en-face thickness map with the ETDRS grid (1, 3, 6 mm) and subfield values.

    thickness_um : (n_bscans, cols) total retinal thickness in um (B-scan 0 superior)
    spacing_um : (lateral, between B-scans) in um
    fovea : (B-scan index, column)
    values : ``macular_thickness_*_um`` biomarkers to print in the subfields (optional)
    """
    plt = _plt()
    lat_mm, sp_mm = spacing_um[0] * 1e-3, spacing_um[1] * 1e-3
    n, cols = thickness_um.shape
    fb, fc = fovea
    # image coordinates in mm relative to the fovea (x right, y up = superior)
    extent = (-fc * lat_mm, (cols - 1 - fc) * lat_mm, -(n - 1 - fb) * sp_mm, fb * sp_mm)
    fig, ax = plt.subplots(figsize=(5.6, 5.0), dpi=100)
    finite = thickness_um[np.isfinite(thickness_um)]
    vmin, vmax = (np.percentile(finite, [1, 99]) if finite.size else (0, 1))
    im = ax.imshow(thickness_um, extent=extent, origin="upper", cmap="turbo", vmin=vmin, vmax=vmax,
                   aspect="equal", interpolation="bilinear")
    fig.colorbar(im, ax=ax, label="ILM-BM thickness (um)", shrink=0.85)
    t = np.linspace(0, 2 * np.pi, 256)
    for d in (1.0, 3.0, 6.0):
        ax.plot(d / 2 * np.cos(t), d / 2 * np.sin(t), color="white", lw=0.8)
    for a in (45, 135, 225, 315):
        ca, sa = math.cos(math.radians(a)), math.sin(math.radians(a))
        ax.plot([0.5 * ca, 3 * ca], [0.5 * sa, 3 * sa], color="white", lw=0.8)
    side = 1 if laterality == "OD" else -1  # nasal is +x (right) for OD
    if values:
        pos = {"central": (0, 0)}
        for ring, rad in (("inner", 1.0), ("outer", 2.25)):
            pos[f"{ring}_superior"] = (0, rad)
            pos[f"{ring}_inferior"] = (0, -rad)
            pos[f"{ring}_nasal"] = (side * rad, 0)
            pos[f"{ring}_temporal"] = (-side * rad, 0)
        for key, (x, y) in pos.items():
            v = values.get(f"macular_thickness_{key}_um")
            txt = "NA" if v is None or not math.isfinite(v) else f"{v:.0f}"
            ax.text(x, y, txt, color="white", ha="center", va="center", fontsize=8, fontweight="bold")
    ax.set_xlabel(f"mm ({'nasal' if side > 0 else 'temporal'} ->)")
    ax.set_ylabel("mm (superior ->)")
    ax.set_title(title or f"{laterality} retinal thickness, ETDRS grid", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.fspath(path))
    plt.close(fig)
    return os.fspath(path)


#: The structure layers :func:`bscan_layer_pngs` writes (the review app toggles each on its own).
BSCAN_LAYERS = ("layers", "fluid", "drusen")


def _hex_rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def bscan_layer_pngs(
    shape: tuple[int, int],
    boundaries: np.ndarray | None,
    path_prefix: str | os.PathLike,
    *,
    masks: Mapping[str, np.ndarray] | None = None,
    hrf: list[tuple[float, float]] | None = None,
) -> dict[str, str]:
    """Transparent PNGs the size of the B-scan, one per structure, for viewers that toggle them separately:
    ``layers`` (each boundary as a line in its colour, NaN gaps left open), ``fluid`` (IRF, SRF and PED
    translucent) and ``drusen`` (drusen translucent, hyperreflective foci as rings). A structure with nothing
    on this B-scan gets no file. Written as ``<path_prefix>_<layer>.png``; returns ``{layer: path}``."""
    rows, cols = int(shape[0]), int(shape[1])
    out: dict[str, str] = {}

    def save(name: str, img: Image.Image) -> None:
        p = f"{os.fspath(path_prefix)}_{name}.png"
        os.makedirs(os.path.dirname(p) or ".", exist_ok=True)
        img.save(p, optimize=False)
        out[name] = p

    if boundaries is not None and np.isfinite(boundaries).any():
        img = Image.new("RGBA", (cols, rows), (0, 0, 0, 0))
        draw = ImageDraw.Draw(img)
        xs = np.arange(cols, dtype=float)
        for k in range(min(len(boundaries), len(BOUNDARY_COLOURS))):
            y = np.asarray(boundaries[k], dtype=float)
            ok = np.isfinite(y)
            # contiguous finite runs: starts where ok turns on, ends where it turns off
            edges = np.flatnonzero(np.diff(np.r_[0, ok.astype(np.int8), 0]))
            for a, b in zip(edges[::2], edges[1::2]):
                pts = list(zip(xs[a:b].tolist(), y[a:b].tolist()))
                if len(pts) == 1:
                    draw.point(pts, fill=(*_hex_rgb(BOUNDARY_COLOURS[k]), 255))
                else:
                    draw.line(pts, fill=(*_hex_rgb(BOUNDARY_COLOURS[k]), 255), width=1)
        save("layers", img)

    def mask_layer(kinds: tuple[str, ...]) -> np.ndarray | None:
        rgba = np.zeros((rows, cols, 4), np.uint8)
        hit = False
        for kind in kinds:
            m = None if masks is None else masks.get(kind)
            if m is not None and np.shape(m) == (rows, cols) and np.any(m):
                rgba[np.asarray(m, bool), :3] = [int(round(255 * c)) for c in MASK_COLOURS[kind]]
                rgba[np.asarray(m, bool), 3] = 120
                hit = True
        return rgba if hit else None

    fluid = mask_layer(("irf", "srf", "ped"))
    if fluid is not None:
        save("fluid", Image.fromarray(fluid, "RGBA"))
    drusen = mask_layer(("drusen",))
    if drusen is not None or hrf:
        img = Image.fromarray(drusen if drusen is not None else np.zeros((rows, cols, 4), np.uint8), "RGBA")
        draw = ImageDraw.Draw(img)
        for r, c in hrf or []:
            draw.ellipse([c - 3, r - 3, c + 3, r + 3], outline=(255, 0, 255, 255), width=1)
        save("drusen", img)
    return out
