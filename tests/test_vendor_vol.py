"""Heidelberg .vol through eyepy: a synthetic .vol is written at test time (no vendor sample is committed).

The file is built with eyepy's own format description (``eyepy.io.he.vol_reader.vol_format``, a
``construct`` struct), so the reader is tested against the layout eyepy parses: a 2048-byte header with
planted identifiers, an SLO image, then per B-scan a header with start/end positions and segmentation
lines followed by float32 reflectivity. eyepy 0.21's ``IntDate`` adapter encodes ``exam_time`` as a
float, which ``Int64ul`` refuses (so ``HeVolWriter`` cannot write a file either); the helper swaps that
one field for a plain ``Int64ul`` of 100 ns ticks since 1601, the same bytes a Heidelberg file holds.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from grok.ids import BOUNDARIES
from grok.ingest.deid import DeidConfig, pseudonymise_patient_id
from grok.ingest.pipeline import IngestConfig, ingest
from grok.ingest.readers import VENDOR_EXTRA, ReaderError, read_oct, read_oct_vendor
from tests.test_ingest import _accounting, _assert_no_identifiers

pytest.importorskip("eyepy")

KEY = "test-secret-key"
PATIENT_ID = "PIDHEYEX9876"
VISIT_ID = "VISHEYEX4321"
SERIES_ID = "SERHEY4242"
PROG_ID = "PROGHEYEX5555"
DOB = dt.date(1950, 6, 7)
VISIT = dt.datetime(2021, 3, 4, 10, 11, 12)
#: (axial = scale_y, lateral = scale_x, between B-scans = distance) in mm; distinct so a swap shows.
SPACING_MM = (0.02, 0.0625, 0.25)
N, ROWS, COLS = 3, 64, 96
FLT_MAX = np.finfo(np.float32).max
PLANTED = [PATIENT_ID, VISIT_ID, SERIES_ID, PROG_ID, DOB.isoformat(), DOB.strftime("%Y%m%d"),
           VISIT.date().isoformat(), VISIT.strftime("%Y%m%d"), "HEYEXDOE", "JANETTE"]


def _cfg() -> IngestConfig:
    return IngestConfig(deid=DeidConfig(key=KEY))


@pytest.fixture(scope="module")
def phantom():
    from grok.phantom.oct import OctGeometry, synth_oct_volume

    geom = OctGeometry(N, ROWS, COLS, axial_um=SPACING_MM[0] * 1e3, lateral_um=SPACING_MM[1] * 1e3,
                       bscan_spacing_um=SPACING_MM[2] * 1e3)
    return synth_oct_volume("amd", "OD", np.random.default_rng(11), geometry=geom)


def _iso(d: dt.date) -> str:
    return dt.datetime.combine(d, dt.time()).isoformat()  # eyepy's FloatDate takes an ISO string


def vol_bytes(pixels: np.ndarray, truth_rows: np.ndarray, *, laterality: str = "OD", order: str = "heyex",
              patient_id: str = PATIENT_ID, no_data_cols: int = 2, version: str = "HSF-OCT-103",
              scan_pattern: int = 3) -> bytes:
    """A Heidelberg .vol file of ``pixels`` ((n, rows, cols) uint8 display values).

    ``order``: ``"heyex"`` stores B-scan 0 as the most inferior (largest SLO y), as Spectralis volumes
    do; ``"superior_first"`` the reverse; ``"right_to_left"`` is ``"heyex"`` with every B-scan running
    from right to left on the SLO. The first ``no_data_cols`` columns of B-scan 0 hold FLT_MAX, the
    format's "no data" value. ``truth_rows`` ((n, 9, cols), ``grok.ids.BOUNDARIES`` order) fills the ILM,
    BM and RNFL segmentation lines in the file's order for those layers.
    """
    import construct as cs
    from eyepy.core.utils import to_vol_intensity
    from eyepy.io.he.vol_reader import vol_format

    n, rows, cols = pixels.shape
    fmt = cs.Struct(*[("exam_time" / cs.Int64ul) if sc.name == "exam_time" else sc for sc in vol_format.subcons])
    ticks = int((VISIT - dt.datetime(1601, 1, 1)).total_seconds()) * 10**7
    segs = truth_rows[:, [BOUNDARIES.index("ILM"), BOUNDARIES.index("BM"), BOUNDARIES.index("RNFL_GCL")], :]
    hdr_size = 256 + segs.shape[1] * 4 * cols
    width_mm = cols * SPACING_MM[1]
    bscans = []
    for k in range(n):
        y = 1.0 + (n - 1 - k if order in ("heyex", "right_to_left") else k) * SPACING_MM[2]
        x0, x1 = (width_mm, 0.0) if order == "right_to_left" else (0.0, width_mm)
        stored = to_vol_intensity(pixels[k]).astype(np.float32)
        if k == 0 and no_data_cols:
            stored[:, :no_data_cols] = FLT_MAX
        bscans.append(dict(bscan_hdr_size=hdr_size, start_x=x0, start_y=y, end_x=x1, end_y=y + 0.01,
                           num_seg=segs.shape[1], quality=28.5, shift=0, iv_transformation=[0.0] * 6,
                           layer_segmentations=np.ascontiguousarray(segs[k], dtype=np.float32), data=stored))
    yy, xx = np.mgrid[0:32, 0:40]
    slo = (180 - 120 * np.exp(-((yy - 16) ** 2 + (xx - 20) ** 2) / 60.0)).astype(np.uint8)  # dark fovea
    return fmt.build(dict(
        version=version, size_x=cols, n_bscans=n, size_y=rows, scale_x=SPACING_MM[1], distance=SPACING_MM[2],
        scale_y=SPACING_MM[0], size_x_slo=40, size_y_slo=32, scale_x_slo=0.15, scale_y_slo=0.15, field_size_slo=20,
        scan_focus=-0.5, scan_position=laterality, exam_time=ticks, scan_pattern=scan_pattern, bscan_hdr_size=hdr_size,
        id=SERIES_ID, reference_id=SERIES_ID, pid=424242, patient_id=patient_id, dob=_iso(DOB), vid=77,
        visit_id=VISIT_ID, visit_date=_iso(VISIT.date()), grid_type=0, grid_offset=0, grid_type1=0,
        grid_offset1=0, prog_id=PROG_ID, localizer=slo, bscans=bscans,
    ))


def _expected_display(pixels: np.ndarray, no_data_cols: int = 2) -> np.ndarray:
    """What the reader shows for the stored floats: 255 * v ** 0.25 (no-data columns 0)."""
    from eyepy.core.utils import to_vol_intensity

    out = []
    for k in range(pixels.shape[0]):
        v = np.clip(to_vol_intensity(pixels[k]).astype(np.float64), 0.0, 1.0)
        d = 255.0 * v ** 0.25
        if k == 0 and no_data_cols:
            d[:, :no_data_cols] = 0.0
        out.append(d)
    return np.stack(out)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------------------------------
# reader
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order,laterality", [("heyex", "OD"), ("superior_first", "OS"), ("right_to_left", "OS")])
def test_read_vol_volume_spacing_laterality(phantom, tmp_path, order, laterality):
    path = _write(tmp_path / "scan.vol", vol_bytes(phantom.volume, phantom.boundaries, laterality=laterality,
                                                   order=order))
    scan = read_oct(path)
    assert scan.volume.shape == (N, ROWS, COLS) and scan.volume.dtype == np.float32
    assert scan.spacing_mm == pytest.approx(SPACING_MM)
    assert scan.laterality == laterality
    assert scan.scan_pattern == "volume" and scan.manufacturer == "Heidelberg Engineering" and scan.bit_depth == 8
    # Stored B-scan k of a "heyex" file is the (n-1-k)th from the top: the reader puts the superior first.
    want = _expected_display(phantom.volume)
    if order != "superior_first":
        want = want[::-1]
    if order == "right_to_left":
        want = want[:, :, ::-1]
    assert np.abs(scan.volume - want).max() <= 1.0
    assert scan.meta["bscan_order"] == ("superior_first" if order == "superior_first" else "reversed_to_superior_first")
    assert scan.meta["columns_flipped"] is (order == "right_to_left")
    nodata = np.zeros(want.shape, bool)
    first = 0 if order == "superior_first" else N - 1
    cols = slice(0, 2) if order != "right_to_left" else slice(COLS - 2, COLS)
    nodata[first, :, cols] = True
    assert np.all(scan.volume[nodata] == 0), "FLT_MAX (no data) pixels must read as 0"
    # the device's own lines come back in canonical rows, in the same B-scan order and column direction
    dev = scan.meta["device_boundaries"]
    truth = phantom.boundaries if order == "superior_first" else phantom.boundaries[::-1]
    truth = truth[:, :, ::-1] if order == "right_to_left" else truth
    assert dev.shape == (N, len(BOUNDARIES), COLS) and scan.meta["device_lines"] == ["ILM", "BM", "RNFL_GCL"]
    for name in ("ILM", "BM", "RNFL_GCL"):
        k = BOUNDARIES.index(name)
        np.testing.assert_allclose(dev[:, k], truth[:, k], atol=1e-4)
    assert np.isnan(dev[:, BOUNDARIES.index("EZ")]).all()
    assert PATIENT_ID not in json.dumps(scan.meta, default=str)


def test_read_vol_identity_for_ingestion_only(phantom, tmp_path):
    path = _write(tmp_path / "scan.vol", vol_bytes(phantom.volume, phantom.boundaries))
    scan, ident = read_oct_vendor(path)
    assert ident.patient_id == PATIENT_ID
    assert ident.birth_date == DOB.strftime("%Y%m%d") and ident.visit_date == VISIT.strftime("%Y%m%d")
    assert scan.volume.shape == (N, ROWS, COLS)
    blank = _write(tmp_path / "blank.vol", vol_bytes(phantom.volume, phantom.boundaries, patient_id="unknown"))
    assert read_oct_vendor(blank)[1].patient_id is None


# ---------------------------------------------------------------------------------------------------
# ingestion
# ---------------------------------------------------------------------------------------------------


def test_ingest_vol_pairs_with_dicom_and_leaks_nothing(phantom, tmp_path):
    from grok.phantom.dicom import DicomIdentity, phantom_uid, write_op

    src = tmp_path / "src"
    _write(src / f"HEYEXDOE_JANETTE_{PATIENT_ID}" / f"{PATIENT_ID}_{VISIT_ID}.vol",
           vol_bytes(phantom.volume, phantom.boundaries))
    ident = DicomIdentity(
        patient_name="HEYEXDOE^JANETTE", patient_id=PATIENT_ID, birth_date=DOB, sex="F", study_date=VISIT.date(),
        accession_number="ACCHEYEX77", institution="Heyex Test Eye Clinic", institution_address="1 Retina Road",
        referring_physician="REFERDOC^ALBERTA", operator="OPERATORX^BEN", other_patient_id="OTHERPID31",
        device_serial="SERIALNO5151",
    )
    rng = np.random.default_rng(0)
    write_op(src / "cfp.dcm", (rng.random((48, 64, 3)) * 255).astype(np.uint8), ident, laterality="OD",
             study_uid=phantom_uid("hs"), series_uid=phantom_uid("hse"), sop_instance=phantom_uid("hi"),
             pixel_spacing_mm=0.01)
    out = tmp_path / "ing"
    res = ingest(str(src), out, _cfg())
    s = _accounting(out)
    assert res.files_quarantined == 0 and res.images == 2, s
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    octs = [r for r in rows if r["modality"] == "oct"]
    cfps = [r for r in rows if r["modality"] == "cfp"]
    assert len(octs) == 1 and len(cfps) == 1
    o = octs[0]
    assert (o["frames"], o["rows"], o["cols"]) == (N, ROWS, COLS)
    assert (o["spacing_axial_mm"], o["spacing_lateral_mm"], o["spacing_slice_mm"]) == pytest.approx(SPACING_MM)
    assert o["eye"] == "OD" and o["laterality_source"] == "header"
    assert o["source_format"] == "vendor.vol" and o["manufacturer"] == "Heidelberg Engineering"
    assert o["scan_pattern"] == "volume" and o["bit_depth"] == 8
    assert o["patient_id"] == pseudonymise_patient_id(PATIENT_ID, KEY)
    assert o["age_years"] == 70.0  # born June 1950, seen March 2021
    assert "patient_unknown" not in o["quality_flags"] and "visit_date_unknown" not in o["quality_flags"]
    # the .vol and the DICOM photograph of the same patient, eye and visit form one paired study
    assert o["patient_id"] == cfps[0]["patient_id"] and o["visit"] == cfps[0]["visit"] is not None
    assert o["visit"] != VISIT.date().isoformat()  # shifted
    studies = pq.read_table(out / "studies.parquet").to_pylist()
    assert len(studies) == 1 and studies[0]["paired"]
    arr = np.load(out / o["normalized_path"])
    assert arr.dtype == np.uint8 and arr.shape == (N, ROWS, COLS)
    assert np.array_equal(arr, read_oct(next(src.rglob("*.vol"))).volume.astype(np.uint8))
    _assert_no_identifiers(out, PLANTED + ident.planted_strings())


def test_truncated_and_corrupt_vol_quarantined(phantom, tmp_path):
    good = vol_bytes(phantom.volume, phantom.boundaries)
    src = tmp_path / "src"
    _write(src / "good.vol", good)
    _write(src / "half.vol", good[: len(good) // 2])
    _write(src / "stub.vol", good[:1000])
    _write(src / "notvol.vol", b"JUNKJUNKJUNK" + good[12:])
    bad_hdr = bytearray(good)  # first B-scan header claims 0 header bytes: the body cannot be parsed
    first_bscan = 2048 + 32 * 40
    bad_hdr[first_bscan + 12: first_bscan + 16] = (0).to_bytes(4, "little")
    _write(src / "badbody.vol", bytes(bad_hdr))
    with pytest.raises(ReaderError) as ei:
        read_oct(src / "half.vol")
    assert ei.value.error_class == "truncated_file" and "truncated" in str(ei.value)
    assert f"{len(good) // 2} bytes" in str(ei.value)
    out = tmp_path / "ing"
    res = ingest(str(src), out, _cfg())
    _accounting(out)
    assert res.files_ingested == 1 and res.files_quarantined == 4
    q = pq.read_table(out / "quarantine.parquet").to_pylist()
    classes = sorted(r["error_class"] for r in q)
    assert classes == ["corrupt_vendor_file", "truncated_file", "truncated_file", "unknown_format"]
    for r in q:
        assert ".vol" in r["reason"] and ("export" in r["reason"] or "copy" in r["reason"]), r["reason"]
        assert "unexpected decoder failure" not in r["reason"]
    _assert_no_identifiers(out, PLANTED)


def test_missing_eyepy_names_the_extra(phantom, tmp_path, monkeypatch):
    src = tmp_path / "src"
    path = _write(src / "scan.vol", vol_bytes(phantom.volume, phantom.boundaries))
    monkeypatch.setitem(sys.modules, "eyepy", None)
    with pytest.raises(ImportError) as ei:
        read_oct(path)
    assert VENDOR_EXTRA in str(ei.value) and "pip install 'grok-data-engine[vendor]'" in str(ei.value)
    out = tmp_path / "ing"
    res = ingest(str(src), out, _cfg())
    _accounting(out)
    assert res.files_quarantined == 1 and res.images == 0
    (q,) = pq.read_table(out / "quarantine.parquet").to_pylist()
    assert q["error_class"] == "missing_dependency"
    assert "pip install 'grok-data-engine[vendor]'" in q["reason"]
    assert "scan.vol" not in q["reason"]


def test_circle_vol_is_read_with_device_lines_and_measured(tmp_path):
    """A Heidelberg circle scan (.vol scan pattern 2) is read, keeps the device's lines and is measured."""
    from grok.oct.volume import measure_circle
    from grok.phantom.oct import synth_circle_scan

    ph = synth_circle_scan("normal", "OD", np.random.default_rng(5), rows=256, cols=384)
    path = _write(tmp_path / "circle.vol", vol_bytes(ph.bscan[None], ph.boundaries[None], scan_pattern=2,
                                                      no_data_cols=0))
    scan = read_oct(path)
    assert scan.scan_pattern == "circle" and scan.volume.shape == (1, 256, 384)
    dev = scan.meta["device_boundaries"][0]
    np.testing.assert_allclose(dev[BOUNDARIES.index("RNFL_GCL")], ph.boundaries[BOUNDARIES.index("RNFL_GCL")],
                               atol=1e-4)
    m = measure_circle(scan.volume[0], ph.axial_um, ph.lateral_um, "OD")
    assert m.quality["usable"]
    assert abs(m.biomarkers["rnfl_peripapillary_mean_um"] - ph.biomarkers["rnfl_peripapillary_mean_um"]) < 5.0


def test_radial_vol_is_refused_with_the_fix(phantom, tmp_path):
    path = _write(tmp_path / "star.vol", vol_bytes(phantom.volume, phantom.boundaries, scan_pattern=5))
    with pytest.raises(ReaderError, match="radial .*export this scan as DICOM OPT") as exc:
        read_oct(path)
    assert exc.value.error_class == "unsupported_scan_pattern"
