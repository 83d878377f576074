"""The phantom archive: valid DICOM OPT/OP objects, determinism, categories, cohort table, planted identifiers."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess

import numpy as np
import pydicom
import pytest

from grok.ids import CATEGORIES
from grok.phantom.archive import COHORT_COLUMNS, PhantomConfig, make_subjects

#: dicom3tools (2022) lists the concatenation attributes as type 1 in the OPT image module while the
#: multi-frame functional groups module forbids them outside a concatenation; these three are expected.
_KNOWN_DCIODVFY = ("ConcatenationFrameOffsetNumber", "InConcatenationNumber", "InConcatenationTotalNumber")


def _dciodvfy_errors(path) -> list[str]:
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [ln for ln in lines if ln.startswith("Error") and not any(k in ln for k in _KNOWN_DCIODVFY)]


def test_dicom_objects_are_valid_iods(phantom_archive):
    files = sorted((phantom_archive / "dicom").rglob("*.dcm"))
    kinds = {"OPT": 0, "OP": 0}
    for f in files:
        ds = pydicom.dcmread(f)
        kinds[ds.Modality] += 1
        assert ds.ImageLaterality in ("R", "L")
        assert ds.AcquisitionDeviceTypeCodeSequence[0].CodeValue
        if ds.Modality == "OPT":
            assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.5.4"
            pm = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
            assert float(pm.PixelSpacing[0]) > 0 and float(pm.PixelSpacing[1]) > 0
            assert int(ds.NumberOfFrames) == len(ds.PerFrameFunctionalGroupsSequence)
            assert ds.pixel_array.shape[-2:] in ((160, 128), (256, 256))
        else:
            assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.5.1"
            assert ds.pixel_array.shape == (256, 256, 3)
            assert float(ds.PixelSpacing[0]) > 0
    assert kinds["OP"] == 8 and kinds["OPT"] > 8
    if not shutil.which("dciodvfy"):
        pytest.skip("dicom3tools is not installed (.ci/run installs it)")
    singles = [f for f in files if f.parent.name.startswith("OCT_")][:1]
    for f in [*(f for f in files if f.parent.name[:1].isdigit())][:6] + singles:
        assert _dciodvfy_errors(f) == [], f


def test_categories_cover_all_seven_and_labels_per_eye():
    subjects = make_subjects(PhantomConfig(subjects=14, seed=3))
    assert {s.category for s in subjects} == set(CATEGORIES)
    for s in subjects:
        for eye in ("OD", "OS"):
            lab = s.eye_label(eye)
            assert lab in CATEGORIES
            if s.category in ("diabetes", "hypertension", "alzheimers", "normal"):
                assert lab == s.category


def test_same_seed_same_archive(tmp_path):
    from grok.phantom.archive import write_phantom

    kw = dict(subjects=2, seed=11, oct_shape=(3, 160, 96), oct_spacing_um=(8.0, 62.5, 1000.0), cfp_size=160,
              exports=False)
    write_phantom(PhantomConfig(**kw), tmp_path / "a")
    write_phantom(PhantomConfig(**kw), tmp_path / "b")
    write_phantom(PhantomConfig(**dict(kw, seed=12)), tmp_path / "c")
    ta = (tmp_path / "a" / "truth" / "truth.jsonl").read_text()
    assert ta == (tmp_path / "b" / "truth" / "truth.jsonl").read_text()
    sha_a = {json.loads(x)["pixel_sha256"] for x in ta.splitlines()}
    sha_c = {json.loads(x)["pixel_sha256"] for x in (tmp_path / "c" / "truth" / "truth.jsonl").read_text().splitlines()}
    assert not sha_a & sha_c


def test_headers_carry_planted_identifiers(phantom_archive, planted):
    """The phantom must plant what ingestion strips, or the leak tests prove nothing."""
    ds = pydicom.dcmread(next((phantom_archive / "dicom").rglob("CFP_OD.dcm")))
    for value in (str(ds.PatientName), ds.PatientID, ds.PatientBirthDate, ds.InstitutionName,
                  str(ds.ReferringPhysicianName), ds.AccessionNumber):
        assert value in planted or value.replace("^", "") in "".join(planted) or value in json.dumps(planted)
    assert any(t.group == 0x0099 for t in ds.keys())  # a private vendor block with identifiers


def test_cohort_table(phantom_archive):
    with open(phantom_archive / "cohort.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4
    assert list(rows[0].keys()) == COHORT_COLUMNS
    subjects = json.loads((phantom_archive / "truth" / "subjects.json").read_text())
    by_id = {s["patient_id"]: s for s in subjects}
    for r in rows:
        s = by_id[r["patient_id"]]
        if s["category"] == "glaucoma":
            assert "2" in r["eye_problem_codes"].split(";")
        if s["category"] == "amd":
            assert "5" in r["eye_problem_codes"].split(";")
        if s["category"] == "hypertension":
            sbp = np.mean([float(x) for x in (r["systolic_bp_auto_1"], r["systolic_bp_auto_2"]) if x])
            assert sbp > 125


def test_each_device_gets_its_scan_pattern_and_name():
    """device_geometry: each OCT cube takes the standard macular scan pattern of the device it is named
    after; oct_devices deals only the listed devices; without it every cube keeps oct_shape."""
    from grok.phantom.archive import PHANTOM_OCT_SCAN_PATTERNS

    cfg = PhantomConfig(device_geometry=True)
    assert [cfg.oct_device(i)[0] for i in range(4)] == ["spectralis", "cirrus", "topcon", "spectralis"]
    for dev, ((n, rows, cols), (ax, lat, bs)) in PHANTOM_OCT_SCAN_PATTERNS.items():
        g = cfg.oct_geometry(dev)
        assert (g.n_bscans, g.rows, g.cols) == (n, rows, cols)
        assert n * bs == pytest.approx(6000, rel=0.03) and cols * lat == pytest.approx(6000, rel=0.01)  # 6 x 6 mm
        assert PhantomConfig(oct_shape=(3, 320, 96)).oct_geometry(dev).rows == 320  # off: the configured cube
    assert PhantomConfig(oct_devices=("cirrus",)).oct_device(5)[1:] == ("Carl Zeiss Meditec", "Cirrus HD-OCT 5000")
    with pytest.raises(ValueError, match="unknown oct_devices"):
        PhantomConfig(oct_devices=("acme",))


def test_a_single_device_archive_is_written_with_that_devices_cube(tmp_path):
    from grok.phantom.archive import PHANTOM_OCT_SCAN_PATTERNS, write_phantom

    write_phantom(PhantomConfig(subjects=1, oct_devices=("topcon",), device_geometry=True, cfp_size=128,
                                exports=False, single_frame_fraction=0.0), tmp_path)
    (n, rows, cols), (ax, lat, bs) = PHANTOM_OCT_SCAN_PATTERNS["topcon"]
    octs = sorted((tmp_path / "dicom").rglob("OCT_*.dcm"))
    assert len(octs) == 2
    for f in octs:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert (ds.Manufacturer, ds.ManufacturerModelName) == ("Topcon", "3D OCT-1000 Mark II")
        assert (int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns)) == (n, rows, cols)
        pm = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        assert [float(v) * 1000 for v in pm.PixelSpacing] == pytest.approx([ax, lat])
        assert float(pm.SliceThickness) * 1000 == pytest.approx(bs)
