"""Segmentation on the real Spectralis scans in ``../shared/real/oct`` (read-only, never copied here).

Each bound below is the level ``benchmarks/oct_real.py`` measured when the layered method was introduced
(docs/oct.md quotes the figures) plus a small margin: a change that makes a real scan worse fails here.
The issue's targets (e.g. RNFL_GCL <= 2 px on the manual circle scan) are tighter and not all met yet;
the benchmark prints both.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.oct_real import (
    DEFAULT_REAL,
    boundary_errors,
    load_circle_manual9,
    load_linescan,
    vs_manual_read,
)
from grok.oct.segment import segment_bscan
from grok.oct.volume import measure_circle, measure_volume

pytestmark = pytest.mark.skipif(not DEFAULT_REAL.is_dir(), reason=f"real OCT data not found at {DEFAULT_REAL}")

#: (boundary, bound in px) for the manual circle scan (rows shifted from the file's MATLAB 1-based ones, see
#: benchmarks.oct_real.MATLAB_ROW_BASE) with the default (layered) circle method: the issue's targets where
#: they are met (ILM, BM <= 1; RNFL_GCL .. OPL_ONL <= 2), the measured level plus a margin elsewhere
CIRCLE_BOUNDS = {"ILM": 1.0, "RNFL_GCL": 2.0, "IPL_INL": 2.0, "INL_OPL": 2.0, "OPL_ONL": 2.0, "ELM": 4.0, "EZ": 3.8,
                 "RPE": 1.0, "BM": 1.0}
#: the same scan with the manual outer lines read by the anatomy they lie on (benchmarks.oct_real.MANUAL_READ:
#: the line stored as "ELM" is the upper edge of the EZ band, the one stored as "RPE" the rise of the RPE
#: complex; there is no manual ELM line): our EZ on the EZ band's upper edge (0.82 px when the EZ band rule came in)
READ_BOUNDS = {"EZ": 0.9}
#: device lines of the .vol line scan, layered method
LINE_BOUNDS = {"ILM": 0.6, "BM": 0.5}


@pytest.fixture(scope="module")
def circle():
    return load_circle_manual9(DEFAULT_REAL / "spectralis_circle_manual9")


@pytest.fixture(scope="module")
def line():
    return load_linescan(DEFAULT_REAL / "spectralis_linescan")


def test_circle_scan_boundaries_against_manual_lines(circle):
    seg = segment_bscan(circle["image"], circle["axial_um"], circle["lateral_um"], pattern="circle")
    err = boundary_errors(seg.boundaries.astype(np.float64), circle["manual"], circle["axial_um"])
    for name, bound in CIRCLE_BOUNDS.items():
        assert err[name]["mae_px"] <= bound, (name, err[name])
        # columns whose edge is under 15 % of its usual strength are NaN by design (better missing than wrong)
        assert err[name]["nan_fraction"] < 0.10, (name, err[name])
    read = vs_manual_read(seg.boundaries.astype(np.float64), circle["manual"], circle["axial_um"])
    for name, bound in READ_BOUNDS.items():
        assert read[name]["mae_px"] <= bound and read[name]["nan_fraction"] < 0.10, (name, read[name])
    # never a confident wrong order
    b = seg.boundaries
    assert np.all(np.diff(b, axis=0)[np.isfinite(np.diff(b, axis=0))] >= 0)


def test_circle_scan_rnfl_is_plausible_and_near_manual(circle):
    m = measure_circle(circle["image"], circle["axial_um"], circle["lateral_um"], "OD")
    manual = (circle["manual"][1] - circle["manual"][0]).mean() * circle["axial_um"]
    assert m.quality["usable"]
    assert abs(m.biomarkers["rnfl_peripapillary_mean_um"] - manual) <= 15.0, (m.biomarkers, manual)
    assert abs(m.biomarkers["rnfl_peripapillary_temporal_um"] - 69.5) <= 10.0
    # the targets, met since the RNFL_GCL search ignores the edges under vessel shadows
    # (-3.9 um mean, -8.5 um inferior): mean within 5 um, sectors within 10 um of the manual lines
    assert abs(m.biomarkers["rnfl_peripapillary_mean_um"] - manual) <= 5.0, (m.biomarkers, manual)
    assert abs(m.biomarkers["rnfl_peripapillary_inferior_um"] - 141.9) <= 10.0, m.biomarkers


def test_classic_method_on_circle_scan_is_not_published(circle):
    """The phantom-tuned search reads ~23 um of RNFL here: the quality gate must refuse the number."""
    m = measure_circle(circle["image"], circle["axial_um"], circle["lateral_um"], "OD", method="classic")
    assert not m.quality["usable"] and "implausible_rnfl" in m.quality["flags"]
    assert all(math.isnan(v) for v in m.biomarkers.values())


def test_vol_line_scan_from_the_file_against_device_lines(line):
    seg = segment_bscan(line["image"], line["axial_um"], line["lateral_um"])
    err = boundary_errors(seg.boundaries.astype(np.float64), line["device"], line["axial_um"])
    for name, bound in LINE_BOUNDS.items():
        assert err[name]["mae_px"] <= bound, (name, err[name])


def test_vol_line_scan_normal_eye_shows_no_lesion(line):
    """A normal macula read from the .vol file: no fluid, PED or drusen (the classic method reported
    23 nl of subretinal fluid and a 225 um PED here), and the optic disc at its edge is flagged."""
    scan = line["scan"]
    m = measure_volume(scan.volume, scan.spacing_mm, scan.laterality)
    b = m.biomarkers
    assert b["srf_volume_nl"] <= 1.0 and b["irf_volume_nl"] <= 1.0, b
    assert b["ped_max_height_um"] <= 50.0 and b["drusen_volume_3mm_mm3"] <= 0.003, b
    assert "outer_retina_absent" in m.quality["flags"]
    # no sharp choroid-sclera edge on this scan (the choroid fades into the noise): NaN with the reason,
    # never the ~57 um the first strong step under Bruch's membrane gave
    ch = "subfoveal_choroidal_thickness_um"
    assert math.isnan(b[ch]) and "choroid-sclera interface not found" in m.quality["reasons"][ch]


def test_reference_rows_share_our_convention(circle, line):
    # the circle scan's lines are stored as MATLAB 1-based rows (shifted by the loader): after the shift our
    # ILM and BM sit on the device's lines without an offset, as on the .vol line scan read by our own reader
    seg = segment_bscan(circle["image"], circle["axial_um"], circle["lateral_um"], pattern="circle")
    on_circle = boundary_errors(seg.boundaries.astype(np.float64), circle["device"], circle["axial_um"])
    seg = segment_bscan(line["image"], line["axial_um"], line["lateral_um"])
    on_line = boundary_errors(seg.boundaries.astype(np.float64), line["device"], line["axial_um"])
    for err in (on_circle, on_line):
        for name in ("ILM", "BM"):
            assert abs(err[name]["signed_px"]) <= 0.3, (name, err[name])


def test_circle_scan_with_a_blink_reports_no_biased_sector(circle):
    # a blink blanks 60 of the 192 inferior columns, over the inferior hump: the sector's partial mean would be
    # ~14 um thin, so it is NaN with the reason; the other sectors are still measured
    img = circle["image"].copy()
    img[:, 560:620] = 0.0
    m = measure_circle(img, circle["axial_um"], circle["lateral_um"], "OD")
    assert "low_signal_columns" in m.quality["flags"]
    assert math.isnan(m.biomarkers["rnfl_peripapillary_inferior_um"])
    assert "blink" in m.quality["reasons"]["rnfl_peripapillary_inferior_um"]
    assert abs(m.biomarkers["rnfl_peripapillary_superior_um"] - 92.3) <= 10.0
    assert abs(m.biomarkers["rnfl_peripapillary_temporal_um"] - 69.5) <= 10.0
