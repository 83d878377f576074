"""ETDRS grid on a macular cube: en-face coordinates, laterality, and region weights.

Conventions (the phantom, the DICOM writer and the readers follow them):

* A cube is ``(n_bscans, rows, cols)``. B-scan 0 is the most **superior** B-scan; the index grows
  inferiorly. Columns run left to right in the fundus (examiner's) view, so for a right eye (OD) the
  optic disc, i.e. **nasal**, is towards the last column and for a left eye (OS) towards column 0.
* En-face coordinates are in mm relative to the fovea: ``x_nasal_mm`` (positive nasal) and
  ``y_superior_mm`` (positive superior). In these coordinates the grid is the same for both eyes, so a
  cube of an OS eye is measured exactly like the column-mirrored cube of an OD eye.
* Region means treat the thickness between two neighbouring B-scans as linearly interpolated
  (``upsample`` lines per B-scan gap). Because the interpolation is linear, the mean over a region is a
  weighted sum of the B-scan values; :func:`region_weights` returns those weights, so every biomarker
  is one dot product.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: ETDRS circle diameters in mm: central subfield, inner ring, outer ring.
ETDRS_DIAMETERS_MM: tuple[float, float, float] = (1.0, 3.0, 6.0)
QUADRANTS: tuple[str, ...] = ("superior", "nasal", "inferior", "temporal")
#: Smallest fraction of a region's area that must lie inside the scan (and have valid values)
#: for its mean to be reported; below it the value is NaN with a reason.
MIN_COVERAGE: float = 0.5


@dataclass(frozen=True)
class CubeSpacing:
    """Physical sampling of a cube in micrometres."""

    axial_um: float  #: between rows of a B-scan
    lateral_um: float  #: between columns (A-scans)
    bscan_spacing_um: float  #: between B-scans

    def __post_init__(self) -> None:
        for name in ("axial_um", "lateral_um", "bscan_spacing_um"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(
                    f"CubeSpacing.{name} must be a positive finite number of micrometres, got {v!r}; "
                    "pass the scan's spacing (DICOM PixelSpacing / SliceThickness or --spacing-um)"
                )

    @classmethod
    def from_mm(cls, spacing_mm: tuple[float, float, float]) -> CubeSpacing:
        """From ``(axial, lateral, between B-scans)`` in mm, the order of ``OctScan.spacing_mm``."""
        a, l, s = (float(v) * 1000.0 for v in spacing_mm)
        return cls(a, l, s)


def enface_coordinates(
    n_bscans: int, cols: int, spacing: CubeSpacing, fovea: tuple[float, float], laterality: str, upsample: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(y_index, x_nasal_mm, y_superior_mm)`` for the en-face sample grid.

    y_index : (ny,) float, B-scan index of each grid line (``ny = (n_bscans - 1) * upsample + 1``)
    x_nasal_mm : (cols,) float, nasal distance from the fovea of each column
    y_superior_mm : (ny,) float, superior distance from the fovea of each grid line
    """
    side = _side(laterality)
    fb, fc = fovea
    ny = (n_bscans - 1) * upsample + 1 if n_bscans > 1 else 1
    y_index = np.linspace(0.0, n_bscans - 1, ny) if n_bscans > 1 else np.zeros(1)
    x_nasal = (np.arange(cols, dtype=np.float64) - fc) * spacing.lateral_um * 1e-3 * side
    y_sup = (fb - y_index) * spacing.bscan_spacing_um * 1e-3
    return y_index, x_nasal, y_sup


def _side(laterality: str) -> int:
    if laterality == "OD":
        return 1
    if laterality == "OS":
        return -1
    raise ValueError(f"laterality must be 'OD' or 'OS', got {laterality!r}; read it from the scan header")


def interpolation_matrix(n_bscans: int, upsample: int) -> np.ndarray:
    """(ny, n_bscans) matrix P with ``fine = P @ coarse`` (linear interpolation between B-scans)."""
    if n_bscans == 1:
        return np.ones((1, 1))
    ny = (n_bscans - 1) * upsample + 1
    pos = np.linspace(0.0, n_bscans - 1, ny)
    i0 = np.minimum(np.floor(pos).astype(int), n_bscans - 2)
    frac = pos - i0
    p = np.zeros((ny, n_bscans))
    p[np.arange(ny), i0] = 1.0 - frac
    p[np.arange(ny), i0 + 1] = frac
    return p


@dataclass
class EtdrsGrid:
    """Region weights of the ETDRS grid on one cube.

    ``weights[name]`` is an ``(n_bscans, cols)`` array; the mean of a map ``m`` over the region is
    ``sum(w * m) / sum(w)``. ``area_fraction[name]`` is the fraction of the region's true area that the
    scan covers. Regions: ``central``, ``inner_<quadrant>``, ``outer_<quadrant>``, ``inner`` (ring),
    ``outer`` (ring), ``full`` (6 mm circle), ``circle_3mm`` (central 3 mm disc) and ``circle_5mm``.
    """

    weights: dict[str, np.ndarray]
    area_fraction: dict[str, float]
    cell_area_mm2: float  #: en-face area one unit of weight stands for
    fovea: tuple[float, float]
    laterality: str

    def mean(self, region: str, values: np.ndarray) -> tuple[float, str | None]:
        """Weighted mean of ``values`` (n_bscans, cols) over ``region``; NaN entries are skipped.

        Returns ``(value, reason)``; ``reason`` is None when the value is valid, otherwise it says why the
        value is NaN (region outside the scan, or too few valid values).
        """
        w = self.weights[region]
        total = float(w.sum())
        if total <= 0 or self.area_fraction[region] < MIN_COVERAGE:
            return math.nan, f"ETDRS region {region!r} lies mostly outside the scan"
        ok = np.isfinite(values)
        wv = np.where(ok, w, 0.0)
        s = float(wv.sum())
        if s < MIN_COVERAGE * total:
            return math.nan, f"fewer than {MIN_COVERAGE:.0%} of region {region!r} has a valid segmentation"
        return float(np.sum(wv * np.where(ok, values, 0.0)) / s), None

    def integral_mm2(self, region: str, values: np.ndarray) -> float:
        """Integral of ``values`` over the covered part of ``region`` in (value units) x mm^2."""
        w = self.weights[region]
        v = np.where(np.isfinite(values), values, 0.0)
        return float(np.sum(w * v) * self.cell_area_mm2)


def etdrs_grid(
    n_bscans: int,
    cols: int,
    spacing: CubeSpacing,
    fovea: tuple[float, float],
    laterality: str,
    upsample: int = 4,
) -> EtdrsGrid:
    """Build the ETDRS region weights for a cube of ``n_bscans`` x ``cols`` centred on ``fovea``.

    fovea : (B-scan index, column), floats.
    """
    _, x_nasal, y_sup = enface_coordinates(n_bscans, cols, spacing, fovea, laterality, upsample)
    p = interpolation_matrix(n_bscans, upsample)
    xx = x_nasal[None, :]
    yy = y_sup[:, None]
    r = np.hypot(xx, yy)
    ang = np.degrees(np.arctan2(yy, xx)) % 360.0  # 0 = nasal, 90 = superior, 180 = temporal, 270 = inferior
    quad = {
        "nasal": (ang >= 315) | (ang < 45),
        "superior": (ang >= 45) & (ang < 135),
        "temporal": (ang >= 135) & (ang < 225),
        "inferior": (ang >= 225) & (ang < 315),
    }
    r1, r2, r3 = (d / 2.0 for d in ETDRS_DIAMETERS_MM)
    masks: dict[str, np.ndarray] = {
        "central": r < r1,
        "inner": (r >= r1) & (r < r2),
        "outer": (r >= r2) & (r < r3),
        "full": r < r3,
        "circle_3mm": r < 1.5,
        "circle_5mm": r < 2.5,
    }
    for q in QUADRANTS:
        masks[f"inner_{q}"] = masks["inner"] & quad[q]
        masks[f"outer_{q}"] = masks["outer"] & quad[q]
    dy_mm = spacing.bscan_spacing_um * 1e-3 / upsample if n_bscans > 1 else spacing.bscan_spacing_um * 1e-3
    cell = spacing.lateral_um * 1e-3 * dy_mm
    true_area = {
        "central": math.pi * r1**2,
        "inner": math.pi * (r2**2 - r1**2),
        "outer": math.pi * (r3**2 - r2**2),
        "full": math.pi * r3**2,
        "circle_3mm": math.pi * 1.5**2,
        "circle_5mm": math.pi * 2.5**2,
    }
    for q in QUADRANTS:
        true_area[f"inner_{q}"] = true_area["inner"] / 4
        true_area[f"outer_{q}"] = true_area["outer"] / 4
    names = list(masks)
    stacked = np.concatenate([masks[k] for k in names], axis=1).astype(np.float64)  # (ny, n_regions * cols)
    w_all = p.T @ stacked
    weights = {k: w_all[:, j * cols : (j + 1) * cols] for j, k in enumerate(names)}
    frac = {k: float(m.sum() * cell / true_area[k]) for k, m in masks.items()}
    return EtdrsGrid(weights, {k: min(1.0, v) for k, v in frac.items()}, cell, fovea, laterality)
