"""``grok cfp measure``: JSON on stdout, masks and overlay files, exit codes; PNG and DICOM OP input."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from grok.cli import app
from grok.ids import CFP_BIOMARKERS
from grok.phantom.cfp import synth_fundus


@pytest.fixture(scope="module")
def phantom():
    return synth_fundus("normal", "OS", np.random.default_rng(8), size=384)


def _run(args):
    return CliRunner().invoke(app, args)


def test_png_json_masks_overlay(tmp_path, phantom):
    src = tmp_path / "eye.png"
    Image.fromarray(phantom.image).save(src)
    r = _run(["cfp", "measure", str(src), "--json", "--png", str(tmp_path / "ov.png"),
              "--masks", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert set(d) >= {"laterality", "biomarkers", "lesions", "quality"}
    assert set(d["biomarkers"]) == set(CFP_BIOMARKERS)
    assert d["quality"]["grade"] in ("good", "usable")
    assert d["laterality"] == "OS"
    for name in ("fov", "vessels", "arteries", "veins", "disc", "cup"):
        m = np.asarray(Image.open(tmp_path / "m" / f"{name}.png"))
        assert m.shape == phantom.image.shape[:2] and set(np.unique(m)) <= {0, 255}
    assert Image.open(tmp_path / "ov.png").size == (384, 384)


def test_sidecar_laterality_is_the_header(tmp_path, phantom):
    src = tmp_path / "eye.png"
    Image.fromarray(phantom.image).save(src)
    (tmp_path / "eye.png.json").write_text(json.dumps({"modality": "cfp", "eye": "OD"}))
    r = _run(["cfp", "measure", str(src), "--json"])
    d = json.loads(r.stdout)
    assert d["laterality"] == "OD"
    assert d["extras"]["laterality_disagrees_with_header"] is True


def test_reject_exit_1_and_missing_file_exit_3(tmp_path, phantom):
    grey = tmp_path / "grey.png"
    Image.fromarray(phantom.image[..., 1]).save(grey)
    r = _run(["cfp", "measure", str(grey), "--json"])
    assert r.exit_code == 1
    assert json.loads(r.stdout)["quality"]["grade"] == "reject"
    r = _run(["cfp", "measure", str(tmp_path / "nope.png"), "--json"])
    assert r.exit_code == 3


def test_dicom_op_input(tmp_path, phantom):
    dicom = pytest.importorskip("grok.phantom.dicom")
    ident = dicom.DicomIdentity(
        patient_name="DOE^JANE", patient_id="123", birth_date=dt.date(1950, 1, 1), sex="F",
        study_date=dt.date(2024, 1, 1), accession_number="A1", institution="Clinic",
        institution_address="Street 1", referring_physician="DOC^A", operator="OP^B",
        other_patient_id="X9", device_serial="SN1",
    )
    path = tmp_path / "op.dcm"
    dicom.write_op(path, phantom.image, ident, laterality="OS", study_uid=dicom.phantom_uid("s"),
                   series_uid=dicom.phantom_uid("se"), sop_instance=dicom.phantom_uid("i"),
                   pixel_spacing_mm=0.0125)
    r = _run(["cfp", "measure", str(path), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["laterality"] == "OS" and d["biomarkers"]["disc_center_xy_px"] is not None
    assert d["extras"]["disc_diameter_mm"] > 0


@pytest.mark.parametrize("fmt", ["ppm", "bmp", "png16", "tiff16", "pgm16", "jpg_black_border"])
def test_any_clinic_export_is_read_and_measured(tmp_path, phantom, fmt):
    """PPM (STARE-style), BMP, 16-bit PNG/TIFF, with black borders: read and measured like the PNG."""
    import tifffile

    img = phantom.image
    if fmt == "ppm":
        src = tmp_path / "eye.ppm"
        Image.fromarray(img).save(src)
    elif fmt == "bmp":
        src = tmp_path / "eye.bmp"
        Image.fromarray(img).save(src)
    elif fmt == "png16":
        import cv2

        src = tmp_path / "eye.png"
        cv2.imwrite(str(src), (img.astype(np.uint16) * 257)[..., ::-1])
    elif fmt == "tiff16":
        src = tmp_path / "eye.tif"
        tifffile.imwrite(src, img.astype(np.uint16) * 257)
    elif fmt == "pgm16":  # a 16-bit greyscale (red-free) export: read, then graded reject for having no colour
        src = tmp_path / "eye.pgm"
        Image.fromarray(img[..., 1].astype(np.uint16) * 257).save(src)
    else:
        src = tmp_path / "eye.jpg"
        pad = np.zeros((img.shape[0] + 60, img.shape[1] + 200, 3), np.uint8)
        pad[30:-30, 100:-100] = img
        Image.fromarray(pad).save(src, quality=95)
    r = _run(["cfp", "measure", str(src), "--json"])
    d = json.loads(r.stdout)
    if fmt == "pgm16":
        assert r.exit_code == 1 and d["quality"]["grade"] == "reject"
        assert any("colour" in s for s in d["quality"]["reasons"])
        return
    assert r.exit_code == 0, r.output
    assert d["quality"]["grade"] in ("good", "usable")
    assert d["biomarkers"]["disc_center_xy_px"] is not None
    assert d["laterality"] == "OS"
