"""``grok oct segment`` / ``grok oct measure`` on phantom DICOM and PNG exports (in-process CLI runs)."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from grok.cli import app
from grok.ids import BOUNDARIES, OCT_GROK_BIOMARKERS, OCT_PERIPAPILLARY_BIOMARKERS
from grok.phantom.oct import OctGeometry, synth_circle_scan, synth_oct_volume

GEO = OctGeometry(n_bscans=5, rows=496, cols=256, bscan_spacing_um=300.0)
runner = CliRunner()


@pytest.fixture(scope="module")
def phantom():
    return synth_oct_volume("amd", "OS", np.random.default_rng(12), geometry=GEO)


@pytest.fixture(scope="module")
def dicom_file(phantom, tmp_path_factory):
    from grok.phantom.dicom import DicomIdentity, write_opt

    ident = DicomIdentity("DOE^JANE", "MRN1", dt.date(1950, 1, 2), "F", dt.date(2020, 5, 6), "ACC1", "Clinic",
                          "1 Road", "SMITH^A", "JONES^B", "OTHER1", "SN1")
    path = tmp_path_factory.mktemp("oct") / "OCT_OS.dcm"
    write_opt(path, phantom.volume, ident, laterality="OS", study_uid="2.25.1", series_uid="2.25.2",
              sop_instance="2.25.3", spacing_mm=GEO.spacing_mm, fundus_sop_instance=None)
    return path


def _json(result):
    assert result.stdout.strip().startswith("{"), result.output
    return json.loads(result.stdout)


def test_segment_dicom_frame(dicom_file, phantom, tmp_path):
    png = tmp_path / "seg.png"
    res = runner.invoke(app, ["oct", "segment", str(dicom_file), "--frame", "2", "--png", str(png), "--json"])
    assert res.exit_code == 0, res.output
    d = _json(res)
    assert d["frame"] == 2 and list(d["boundaries"]) == list(BOUNDARIES)
    assert d["spacing_um"]["axial"] == pytest.approx(GEO.axial_um)
    ilm = np.array([np.nan if v is None else v for v in d["boundaries"]["ILM"]])
    assert len(ilm) == GEO.cols and np.nanmean(np.abs(ilm - phantom.boundaries[2, 0])) < 1.0
    assert png.stat().st_size > 1000


def test_segment_png_export_with_spacing_flag(phantom, tmp_path):
    path = tmp_path / "bscan.png"
    Image.fromarray(phantom.volume[2].astype(np.uint16) * 257).save(path)  # 16-bit export, no sidecar
    res = runner.invoke(app, ["oct", "segment", str(path), "--spacing-um", "3.87", "11.7", "--json"])
    assert res.exit_code == 0, res.output
    d = _json(res)
    assert d["frame"] == 0 and "missing_spacing" not in d["flags"]
    bm = np.array([np.nan if v is None else v for v in d["boundaries"]["BM"]])
    assert np.nanmean(np.abs(bm - phantom.boundaries[2, 8])) < 1.5
    res = runner.invoke(app, ["oct", "segment", str(path), "--json"])  # no spacing anywhere
    assert res.exit_code == 0 and "missing_spacing" in _json(res)["flags"]


def test_measure_dicom_volume(dicom_file, tmp_path):
    png = tmp_path / "m.png"
    res = runner.invoke(app, ["oct", "measure", str(dicom_file), "--png", str(png), "--json"])
    d = _json(res)
    assert d["laterality"] == "OS" and set(OCT_GROK_BIOMARKERS) <= set(d["biomarkers"])
    assert d["biomarkers"]["disc_diameter_vertical_mm"] is None
    assert isinstance(d["biomarkers"]["macular_thickness_central_um"], float)
    assert res.exit_code == (0 if d["quality"]["usable"] else 1)
    assert png.exists() and (tmp_path / "m_thickness.png").exists()


def test_measure_circle_export(tmp_path):
    c = synth_circle_scan("glaucoma", "OD", np.random.default_rng(2), rows=496, cols=384)
    path = tmp_path / "rnfl.png"
    Image.fromarray(c.bscan).save(path)
    side = {"modality": "oct", "eye": "OD", "scan_pattern": "circle",
            "spacing_mm": {"axial": c.axial_um / 1000, "lateral": c.lateral_um / 1000}}
    (tmp_path / "rnfl.png.json").write_text(json.dumps(side))
    res = runner.invoke(app, ["oct", "measure", str(path), "--json"])
    assert res.exit_code == 0, res.output
    d = _json(res)
    assert d["scan_pattern"] == "circle" and set(d["biomarkers"]) == set(OCT_PERIPAPILLARY_BIOMARKERS)
    assert abs(d["biomarkers"]["rnfl_peripapillary_mean_um"] - c.biomarkers["rnfl_peripapillary_mean_um"]) < 6


def test_bad_inputs_exit_codes(dicom_file, tmp_path):
    assert runner.invoke(app, ["oct", "segment", str(tmp_path / "nope.dcm"), "--json"]).exit_code == 3
    assert runner.invoke(app, ["oct", "segment", str(dicom_file), "--frame", "99", "--json"]).exit_code == 2
    flat = tmp_path / "flat.png"
    Image.fromarray(np.full((200, 128), 90, np.uint8)).save(flat)
    res = runner.invoke(app, ["oct", "segment", str(flat), "--spacing-um", "3.87", "11.7", "--json"])
    assert res.exit_code == 1 and "constant_bscan" in _json(res)["flags"]
    res = runner.invoke(app, ["oct", "measure", str(flat), "--json"])
    assert res.exit_code == 1 and _json(res)["quality"]["usable"] is False
