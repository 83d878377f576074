"""Macular biomarkers from layer boundaries and lesion masks (canonical ids of ``grok.ids``).

The same functions turn the phantom's *true* boundaries into its truth biomarkers and the segmentation's
boundaries into measured ones, so an accuracy figure measures only the image analysis.

Definitions (all thicknesses are axial distances, boundary gap x axial spacing):

* total retina = ILM -> BM (Spectralis convention); ``macular_thickness_*`` are ETDRS means of it,
  ``macular_thickness_overall_um`` its mean over the 6 mm circle.
* bands: ``inl_elm`` = IPL_INL -> ELM, ``elm_isos`` = ELM -> EZ, ``isos_rpe`` = EZ -> RPE (inner edge of
  the RPE band), ``inl_rpe`` = IPL_INL -> RPE; regions ``central`` (1 mm), ``inner`` / ``outer`` rings,
  ``average`` = 6 mm circle.
* ``rnfl`` = ILM -> RNFL_GCL, ``gcipl`` = RNFL_GCL -> IPL_INL, ``inl`` = IPL_INL -> INL_OPL,
  ``rpe`` = RPE -> BM (the RPE-Bruch complex, which drusen thicken); means over the 6 mm circle.
* ``macular_volume_mm3``: mean total thickness over the covered part of the 6 mm circle x its area.
* ``foveal_pit_depth_um``: mean total thickness on the rim annulus (0.9-1.2 mm from the fovea) minus the
  mean in the foveola (r < 0.15 mm).
* ``drusen_volume_{3,5}mm_mm3``: integral of the drusen height (sub-RPE elevation) inside the 3 / 5 mm circles.
* ``irf_volume_nl`` / ``srf_volume_nl``: fluid voxels in the whole cube x voxel volume (1 nl = 1e6 um^3).
* ``ped_max_height_um``: largest PED height (BM up to the lifted RPE band); 0 when there is none.
* ``hrf_count``: hyperreflective foci in the cube.
* ``subfoveal_choroidal_thickness_um``: BM -> choroid-sclera interface, mean over the foveola.
* ``ez_disruption_fraction``: fraction of the central 3 mm circle where the EZ band is missing.
* ``disc_diameter_vertical_mm``: not measurable on a macular cube -> NaN ("needs a disc-centred scan/CFP").
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from grok.ids import BOUNDARIES, OCT_EXTRA_BIOMARKERS, OCT_GROK_BIOMARKERS
from grok.oct.grid import (
    QUADRANTS,
    CubeSpacing,
    EtdrsGrid,
    enface_coordinates,
    etdrs_grid,
    interpolation_matrix,
)

B = {name: i for i, name in enumerate(BOUNDARIES)}

#: (upper boundary, lower boundary) of each band whose thickness the catalogue reports.
BANDS: dict[str, tuple[str, str]] = {
    "total": ("ILM", "BM"),
    "rnfl": ("ILM", "RNFL_GCL"),
    "gcipl": ("RNFL_GCL", "IPL_INL"),
    "inl": ("IPL_INL", "INL_OPL"),
    "rpe": ("RPE", "BM"),
    "inl_elm": ("IPL_INL", "ELM"),
    "elm_isos": ("ELM", "EZ"),
    "isos_rpe": ("EZ", "RPE"),
    "inl_rpe": ("IPL_INL", "RPE"),
}
DISC_REASON = "needs a disc-centred scan/CFP"
FLUID_TYPES: tuple[str, ...] = ("irf", "srf", "ped", "drusen")


def band_maps_um(boundaries: np.ndarray, axial_um: float) -> dict[str, np.ndarray]:
    """Thickness maps in micrometres.

    boundaries : (n_bscans, 9, cols) float, rows in pixels (NaN where not found)
    Returns ``{band: (n_bscans, cols) float}`` for every band in :data:`BANDS`.
    """
    out = {}
    for name, (up, lo) in BANDS.items():
        out[name] = (boundaries[:, B[lo], :] - boundaries[:, B[up], :]).astype(np.float64) * axial_um
    return out


def _extend_grid(grid: EtdrsGrid, n_bscans: int, cols: int, spacing: CubeSpacing, upsample: int) -> None:
    """Add the ``foveola`` (r < 0.15 mm) and ``rim`` (0.9-1.2 mm) regions used by the pit and choroid."""
    _, x, y = enface_coordinates(n_bscans, cols, spacing, grid.fovea, grid.laterality, upsample)
    r = np.hypot(x[None, :], y[:, None])
    p = interpolation_matrix(n_bscans, upsample)
    for name, m, area in (
        ("foveola", r < 0.15, math.pi * 0.15**2),
        ("rim", (r >= 0.9) & (r < 1.2), math.pi * (1.2**2 - 0.9**2)),
    ):
        grid.weights[name] = p.T @ m.astype(np.float64)
        grid.area_fraction[name] = min(1.0, float(m.sum() * grid.cell_area_mm2 / area))


def macular_biomarkers(
    boundaries: np.ndarray,
    spacing: CubeSpacing,
    fovea: tuple[float, float],
    laterality: str,
    *,
    choroid_sclera: np.ndarray | None = None,
    masks: Mapping[str, np.ndarray] | None = None,
    hrf_count: int | None = None,
    ez_disrupted: np.ndarray | None = None,
    upsample: int = 4,
) -> tuple[dict[str, float], dict[str, str]]:
    """Every canonical macular biomarker (31 GROK + extras) of one cube.

    boundaries : (n_bscans, 9, cols) float rows (pixels) in ``grok.ids.BOUNDARIES`` order
    choroid_sclera : (n_bscans, cols) float rows of the choroid-sclera interface, or None
    masks : ``{"irf"|"srf"|"ped"|"drusen": (n_bscans, rows, cols) bool}``; None -> lesion measures NaN
    ez_disrupted : (n_bscans, cols) bool, or None -> ``ez_disruption_fraction`` NaN
    fovea : (B-scan index, column) floats

    Returns ``(biomarkers, reasons)``: ``biomarkers`` holds every id of ``OCT_GROK_BIOMARKERS`` and
    ``OCT_EXTRA_BIOMARKERS`` (NaN where not measurable); ``reasons[id]`` says why a value is NaN.
    """
    n, nb, cols = boundaries.shape
    if nb != len(BOUNDARIES):
        raise ValueError(f"boundaries must be (n_bscans, {len(BOUNDARIES)}, cols), got {boundaries.shape}")
    bio: dict[str, float] = {k: math.nan for k in (*OCT_GROK_BIOMARKERS, *OCT_EXTRA_BIOMARKERS)}
    why: dict[str, str] = {}
    grid = etdrs_grid(n, cols, spacing, fovea, laterality, upsample=upsample)
    _extend_grid(grid, n, cols, spacing, upsample)
    maps = band_maps_um(boundaries, spacing.axial_um)

    def put(key: str, region: str, values: np.ndarray) -> None:
        v, reason = grid.mean(region, values)
        bio[key] = v
        if reason:
            why[key] = reason

    total = maps["total"]
    put("macular_thickness_overall_um", "full", total)
    put("macular_thickness_central_um", "central", total)
    for ring in ("inner", "outer"):
        for q in QUADRANTS:
            put(f"macular_thickness_{ring}_{q}_um", f"{ring}_{q}", total)
    for band in ("inl_elm", "elm_isos", "isos_rpe", "inl_rpe"):
        for label, region in (("central", "central"), ("inner", "inner"), ("outer", "outer"), ("average", "full")):
            put(f"{band}_thickness_{label}_um", region, maps[band])
    for key, band in (
        ("rnfl_thickness_um", "rnfl"),
        ("gcipl_thickness_um", "gcipl"),
        ("inl_thickness_um", "inl"),
        ("rpe_thickness_um", "rpe"),
    ):
        put(key, "full", maps[band])
    why["disc_diameter_vertical_mm"] = DISC_REASON

    mean_total = bio["macular_thickness_overall_um"]
    if math.isfinite(mean_total):
        bio["macular_volume_mm3"] = mean_total * 1e-3 * math.pi * 3.0**2
    else:
        why["macular_volume_mm3"] = why.get("macular_thickness_overall_um", "no total thickness")
    rim, r1 = grid.mean("rim", total)
    pit, r2 = grid.mean("foveola", total)
    if math.isfinite(rim) and math.isfinite(pit):
        bio["foveal_pit_depth_um"] = rim - pit
    else:
        why["foveal_pit_depth_um"] = r1 or r2 or "no thickness at the fovea"

    if choroid_sclera is not None:
        ch = (choroid_sclera - boundaries[:, B["BM"], :]).astype(np.float64) * spacing.axial_um
        put("subfoveal_choroidal_thickness_um", "foveola", ch)
    else:
        why["subfoveal_choroidal_thickness_um"] = "choroid-sclera interface not segmented"

    if ez_disrupted is not None:
        put("ez_disruption_fraction", "circle_3mm", ez_disrupted.astype(np.float64))
    else:
        why["ez_disruption_fraction"] = "EZ integrity not assessed"

    if hrf_count is not None:
        bio["hrf_count"] = float(hrf_count)
    else:
        why["hrf_count"] = "hyperreflective foci not assessed"

    if masks is not None:
        voxel_nl = spacing.axial_um * spacing.lateral_um * spacing.bscan_spacing_um * 1e-6
        for kind in ("irf", "srf"):
            bio[f"{kind}_volume_nl"] = float(np.count_nonzero(masks[kind])) * voxel_nl
        drusen_h_mm = masks["drusen"].sum(axis=1, dtype=np.float64) * spacing.axial_um * 1e-3
        for key, region in (("drusen_volume_3mm_mm3", "circle_3mm"), ("drusen_volume_5mm_mm3", "circle_5mm")):
            bio[key] = grid.integral_mm2(region, drusen_h_mm)
        ped_h = masks["ped"].sum(axis=1)
        bio["ped_max_height_um"] = float(ped_h.max()) * spacing.axial_um if ped_h.size else 0.0
    else:
        for key in ("irf_volume_nl", "srf_volume_nl", "drusen_volume_3mm_mm3", "drusen_volume_5mm_mm3",
                    "ped_max_height_um"):
            why[key] = "lesion masks not available"
    return bio, why
