"""Biomarker arithmetic on constructed layer geometries: thickness = gap x spacing, ETDRS laterality."""

from __future__ import annotations

import math

import numpy as np
import pytest

from grok.ids import BOUNDARIES, OCT_EXTRA_BIOMARKERS, OCT_GROK_BIOMARKERS
from grok.oct.circle import circle_biomarkers
from grok.oct.grid import CubeSpacing, etdrs_grid
from grok.oct.measures import DISC_REASON, macular_biomarkers

SP = CubeSpacing(axial_um=4.0, lateral_um=20.0, bscan_spacing_um=100.0)
N, COLS = 65, 321  # 6.4 x 6.4 mm: covers the whole 6 mm ETDRS circle
FOVEA = ((N - 1) / 2, (COLS - 1) / 2)
GAPS_PX = np.array([5.0, 20.0, 9.0, 7.0, 18.0, 6.0, 9.0, 5.0])  # between consecutive boundaries


def _flat(top: float = 100.0) -> np.ndarray:
    rows = top + np.concatenate([[0.0], np.cumsum(GAPS_PX)])
    return np.broadcast_to(rows[None, :, None], (N, len(BOUNDARIES), COLS)).astype(np.float64).copy()


def test_thickness_equals_gap_times_spacing():
    bio, why = macular_biomarkers(_flat(), SP, FOVEA, "OD")
    total = GAPS_PX.sum() * SP.axial_um
    for k in ("macular_thickness_overall_um", "macular_thickness_central_um",
              "macular_thickness_inner_nasal_um", "macular_thickness_outer_inferior_um"):
        assert bio[k] == pytest.approx(total, rel=1e-9), k
    g = dict(zip(BOUNDARIES, np.concatenate([[0.0], np.cumsum(GAPS_PX)]) * SP.axial_um))
    assert bio["rnfl_thickness_um"] == pytest.approx(g["RNFL_GCL"] - g["ILM"])
    assert bio["gcipl_thickness_um"] == pytest.approx(g["IPL_INL"] - g["RNFL_GCL"])
    assert bio["inl_thickness_um"] == pytest.approx(g["INL_OPL"] - g["IPL_INL"])
    assert bio["rpe_thickness_um"] == pytest.approx(g["BM"] - g["RPE"])
    for region in ("central", "inner", "outer", "average"):
        assert bio[f"inl_elm_thickness_{region}_um"] == pytest.approx(g["ELM"] - g["IPL_INL"])
        assert bio[f"elm_isos_thickness_{region}_um"] == pytest.approx(g["EZ"] - g["ELM"])
        assert bio[f"isos_rpe_thickness_{region}_um"] == pytest.approx(g["RPE"] - g["EZ"])
        assert bio[f"inl_rpe_thickness_{region}_um"] == pytest.approx(g["RPE"] - g["IPL_INL"])
    assert bio["macular_volume_mm3"] == pytest.approx(total * 1e-3 * math.pi * 9.0)
    assert bio["foveal_pit_depth_um"] == pytest.approx(0.0, abs=1e-9)
    assert math.isnan(bio["disc_diameter_vertical_mm"]) and why["disc_diameter_vertical_mm"] == DISC_REASON
    assert set(bio) == set(OCT_GROK_BIOMARKERS) | set(OCT_EXTRA_BIOMARKERS)


def test_etdrs_areas_match_geometry():
    grid = etdrs_grid(N, COLS, SP, FOVEA, "OD")
    for region, area in (("central", math.pi * 0.25), ("inner", math.pi * 2.0), ("full", math.pi * 9.0)):
        covered = grid.weights[region].sum() * grid.cell_area_mm2
        assert covered == pytest.approx(area, rel=0.03), region
        assert grid.area_fraction[region] == pytest.approx(1.0, abs=0.03)


def _asymmetric() -> np.ndarray:
    """Retina thicker towards the last column (the nasal side of an OD eye)."""
    b = _flat()
    extra = np.linspace(0.0, 20.0, COLS)  # px added to the ONL band, growing to the right
    b[:, 5:, :] += extra[None, None, :]
    return b


def test_nasal_follows_laterality_and_od_os_mirror():
    b = _asymmetric()
    od, _ = macular_biomarkers(b, SP, FOVEA, "OD")
    assert od["macular_thickness_inner_nasal_um"] > od["macular_thickness_inner_temporal_um"] + 10
    os_same, _ = macular_biomarkers(b, SP, FOVEA, "OS")
    assert os_same["macular_thickness_inner_nasal_um"] < os_same["macular_thickness_inner_temporal_um"] - 10
    # the column-mirrored cube of a left eye measures exactly like the right eye
    mirrored = b[:, :, ::-1]
    os_mirror, _ = macular_biomarkers(mirrored, SP, (FOVEA[0], COLS - 1 - FOVEA[1]), "OS")
    for k, v in od.items():
        if math.isnan(v):
            assert math.isnan(os_mirror[k])
        else:
            assert os_mirror[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k


def test_superior_is_bscan_zero_side():
    b = _flat()
    b[: N // 2, 5:, :] += 10.0  # thicker in the first (superior) half of the B-scans
    bio, _ = macular_biomarkers(b, SP, FOVEA, "OD")
    assert bio["macular_thickness_outer_superior_um"] > bio["macular_thickness_outer_inferior_um"] + 30


def test_lesion_measures_from_masks():
    rows = 300
    masks = {k: np.zeros((N, rows, COLS), bool) for k in ("irf", "srf", "ped", "drusen")}
    masks["irf"][30:33, 150:160, 150:170] = True  # 3 x 10 x 20 voxels
    masks["drusen"][N // 2, 200:210, int(FOVEA[1])] = True  # one column 10 px high at the fovea
    masks["ped"][10, 100:150, 40] = True
    bio, _ = macular_biomarkers(_flat(), SP, FOVEA, "OD", masks=masks, hrf_count=4,
                                ez_disrupted=np.zeros((N, COLS), bool))
    voxel_nl = SP.axial_um * SP.lateral_um * SP.bscan_spacing_um * 1e-6
    assert bio["irf_volume_nl"] == pytest.approx(600 * voxel_nl)
    assert bio["srf_volume_nl"] == 0.0
    assert bio["ped_max_height_um"] == pytest.approx(50 * SP.axial_um)
    assert bio["hrf_count"] == 4.0 and bio["ez_disruption_fraction"] == 0.0
    # one column 40 um high; it stands for lateral x bscan spacing of en-face area
    expected = 40e-3 * SP.lateral_um * 1e-3 * SP.bscan_spacing_um * 1e-3
    assert bio["drusen_volume_3mm_mm3"] == pytest.approx(expected, rel=1e-6)
    assert bio["drusen_volume_5mm_mm3"] == pytest.approx(expected, rel=1e-6)


def test_nan_boundaries_give_nan_with_reason():
    b = _flat()
    b[:, 0, :] = np.nan
    bio, why = macular_biomarkers(b, SP, FOVEA, "OD")
    assert math.isnan(bio["macular_thickness_central_um"]) and "valid" in why["macular_thickness_central_um"]
    assert math.isfinite(bio["rpe_thickness_um"])  # does not need the ILM


def test_circle_sectors():
    cols = 360
    b = np.zeros((len(BOUNDARIES), cols)) + np.arange(len(BOUNDARIES))[:, None] * 10.0
    rnfl_px = np.full(cols, 10.0)
    rnfl_px[45:135] = 30.0  # superior quadrant (TSNIT from temporal)
    b[1:] += (rnfl_px - 10.0)[None, :]
    bio, _ = circle_biomarkers(b, axial_um=4.0)
    assert bio["rnfl_peripapillary_superior_um"] == pytest.approx(120.0)
    assert bio["rnfl_peripapillary_temporal_um"] == pytest.approx(40.0)
    assert bio["rnfl_peripapillary_mean_um"] == pytest.approx(40.0 * 0.75 + 120.0 * 0.25)
