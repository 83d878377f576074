"""Ingestion: every file accounted for, no identifier in any output, bad files quarantined, re-runs cached."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest

from grok.ingest.deid import DeidConfig
from grok.ingest.pipeline import IngestConfig, ingest, locate


def _cfg(**kw) -> IngestConfig:
    return IngestConfig(deid=DeidConfig(key="test-secret-key", **kw))


def _accounting(out: Path) -> dict:
    summary = json.loads((out / "ingest_summary.json").read_text())
    files = pq.read_table(out / "files.parquet").to_pylist()
    assert summary["files_seen"] == len(files)
    assert summary["files_seen"] == summary["files_ingested"] + summary["files_quarantined"] + summary["files_skipped"]
    assert {f["status"] for f in files} <= {"ingested", "quarantined", "skipped"}
    q = pq.read_table(out / "quarantine.parquet").to_pylist()
    assert len(q) == summary["files_quarantined"]
    assert all(r["reason"] and r["error_class"] for r in q)
    return summary


def _assert_no_identifiers(out: Path, planted: list[str]) -> None:
    needles = set()
    for p in planted:
        needles |= {p, p.upper(), p.lower(), p.title()}
    needles = [n.encode() for n in needles if len(n) >= 6]
    checked = 0
    for f in out.rglob("*"):
        if not f.is_file():
            continue
        data = f.read_bytes()
        for n in needles:
            assert n not in data, f"identifier {n!r} found in {f}"
        if f.suffix == ".parquet":  # compressed pages would hide a string from the byte search
            for row in pq.read_table(f).to_pylist():
                text = json.dumps(row, default=str)
                for n in needles:
                    assert n.decode() not in text, f"identifier {n!r} in a row of {f.name}"
        checked += 1
    assert checked > 5


def test_ingest_phantom_dicom(phantom_archive, planted, tmp_path):
    out = tmp_path / "ing"
    res = ingest(str(phantom_archive / "dicom"), out, _cfg())
    s = _accounting(out)
    # 4 subjects x 2 eyes x (CFP + OCT cube + circle scan)
    assert res.images == 24
    assert res.files_quarantined == 0
    assert s["studies"] == 8 and s["paired_studies"] == 8
    m = pq.read_table(out / "manifest.parquet").to_pandas()
    assert set(m.modality) == {"cfp", "oct"}
    assert set(m.scan_pattern) == {"photo", "volume", "circle"}
    vols = m[m.scan_pattern == "volume"]
    assert (vols.frames == 7).all() and (vols.rows == 160).all() and (vols.cols == 128).all()
    assert np.allclose(vols.spacing_axial_mm, 0.008) and np.allclose(vols.spacing_slice_mm, 1.0)
    assert set(m.eye) == {"OD", "OS"}
    assert m.patient_id.str.match(r"^P[0-9a-f]{16}$").all()
    # the truth's pixel fingerprints join the manifest one to one
    truth = [json.loads(x) for x in (phantom_archive / "truth" / "truth.jsonl").read_text().splitlines()]
    assert {t["pixel_sha256"] for t in truth} == set(m.pixel_sha256)
    # normalised copies hold exactly the pixels that were written
    t0 = next(t for t in truth if t["modality"] == "oct" and t.get("single_frame_series"))
    row = m[m.pixel_sha256 == t0["pixel_sha256"]].iloc[0]
    vol = np.load(out / row.normalized_path)
    assert vol.shape == (7, 160, 128) and vol.dtype == np.uint8
    _assert_no_identifiers(out, planted)


def test_single_frame_series_assembled(phantom_archive, tmp_path):
    out = tmp_path / "ing"
    ingest(str(phantom_archive / "dicom"), out, _cfg())
    files = pq.read_table(out / "files.parquet").to_pylist()
    per_image: dict[str, int] = {}
    for f in files:
        for i in f["image_ids"]:
            per_image[i] = per_image.get(i, 0) + 1
    assert max(per_image.values()) == 7  # one image made of 7 single-frame files


@pytest.mark.parametrize("form", ["zip", "tar.gz", "memory", "file_url"])
def test_archive_forms_give_identical_manifest(phantom_archive, tmp_path, form):
    src_dir = phantom_archive / "dicom"
    ref = tmp_path / "ref"
    ingest(str(src_dir), ref, _cfg())
    if form == "zip":
        src = tmp_path / "a.zip"
        with zipfile.ZipFile(src, "w") as zf:
            for f in sorted(src_dir.rglob("*")):
                if f.is_file():
                    zf.write(f, f.relative_to(src_dir).as_posix())
        src = str(src)
    elif form == "tar.gz":
        src = tmp_path / "a.tar.gz"
        with tarfile.open(src, "w:gz") as tf:
            for f in sorted(src_dir.rglob("*")):
                if f.is_file():
                    tf.add(f, f.relative_to(src_dir).as_posix())
        src = str(src)
    elif form == "memory":
        import fsspec

        fs = fsspec.filesystem("memory")
        for f in sorted(src_dir.rglob("*")):
            if f.is_file():
                fs.pipe(f"/arch-{tmp_path.name}/{f.relative_to(src_dir).as_posix()}", f.read_bytes())
        src = f"memory://arch-{tmp_path.name}"
    else:
        src = src_dir.resolve().as_uri()
    out = tmp_path / "out"
    ingest(src, out, _cfg())
    a = pq.read_table(ref / "manifest.parquet").to_pylist()
    b = pq.read_table(out / "manifest.parquet").to_pylist()
    assert len(a) == 24
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN-safe comparison


def test_reingest_is_cached_and_identical(phantom_archive, tmp_path):
    out = tmp_path / "ing"
    r1 = ingest(str(phantom_archive / "dicom"), out, _cfg())
    before = (out / "manifest.parquet").read_bytes()
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    r2 = ingest(str(phantom_archive / "dicom"), out, _cfg())
    assert (out / "manifest.parquet").read_bytes() == before
    assert r2.files_cached == r1.files_seen
    assert {p: p.stat().st_mtime_ns for p in (out / "images").iterdir()} == mtimes


def _tables(out: Path) -> dict[str, str]:
    return {t: json.dumps(pq.read_table(out / f"{t}.parquet").to_pylist(), sort_keys=True, default=str)  # NaN-safe
            for t in ("manifest", "studies", "files", "quarantine")}


def test_tables_written_a_batch_at_a_time_and_changed_files_leave_no_stale_copy(phantom_archive, tmp_path,
                                                                              monkeypatch):
    """The staged tables are written sorted a few rows at a time (issue 22): the same tables as one batch; a file
    that changed or went away since the last run leaves no normalised copy behind."""
    import grok.ingest.pipeline as pipeline

    whole = tmp_path / "whole"
    ingest(str(phantom_archive / "dicom"), whole, _cfg())
    monkeypatch.setattr(pipeline, "WRITE_BATCH_ROWS", 5)
    monkeypatch.setattr(pipeline, "SPOOL_BATCH_ROWS", 3)
    out = tmp_path / "batched"
    src = tmp_path / "src"
    shutil.copytree(phantom_archive / "dicom", src)
    ingest(str(src), out, _cfg())
    assert _tables(out) == _tables(whole)
    studies = pq.read_table(out / "studies.parquet").to_pylist()
    assert len(studies) > 5 and [s["study_id"] for s in studies] == sorted(s["study_id"] for s in studies)
    gone = sorted(src.rglob("*.dcm"))[0]
    files = pq.read_table(out / "files.parquet").to_pylist()
    sha = hashlib.sha256(gone.read_bytes()).hexdigest()
    old_ids = next(f["image_ids"] for f in files if f["source_sha256"] == sha and f["status"] == "ingested")
    gone.unlink()
    ingest(str(src), out, _cfg())
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    refs = {p for r in manifest for p in (r["normalized_path"], r["header_path"]) if p}
    on_disk = {f"images/{p.name}" for p in (out / "images").iterdir()}
    assert on_disk == refs and len(refs) >= len(manifest)
    assert old_ids and not any((out / "images" / f"{i}.npy").exists() for i in old_ids)


def test_pseudonyms_stable_and_keyed(phantom_archive, tmp_path):
    a = ingest(str(phantom_archive / "dicom"), tmp_path / "a", _cfg())
    b = ingest(str(phantom_archive / "dicom"), tmp_path / "b", IngestConfig(deid=DeidConfig(key="another-key")))
    pa_ = set(pq.read_table(tmp_path / "a" / "manifest.parquet").column("patient_id").to_pylist())
    pb_ = set(pq.read_table(tmp_path / "b" / "manifest.parquet").column("patient_id").to_pylist())
    assert len(pa_) == 4 and len(pb_) == 4 and not (pa_ & pb_)
    assert a.images == b.images


def test_date_mode_year(phantom_archive, tmp_path):
    out = tmp_path / "y"
    ingest(str(phantom_archive / "dicom"), out, _cfg(date_mode="year"))
    visits = set(pq.read_table(out / "manifest.parquet").column("visit").to_pylist())
    assert all(len(v) == 4 and v.isdigit() for v in visits)


def test_exports_layout_matches_dicom(phantom_archive, planted, tmp_path):
    out_d, out_e = tmp_path / "d", tmp_path / "e"
    ingest(str(phantom_archive / "dicom"), out_d, _cfg())
    ingest(str(phantom_archive / "exports"), out_e, _cfg())
    md = pq.read_table(out_d / "manifest.parquet").to_pandas()
    me = pq.read_table(out_e / "manifest.parquet").to_pandas()
    _accounting(out_e)
    # same pixels (circle scans exist only as DICOM), same pseudonyms, same shifted visits, same eyes
    vol_d = md[md.scan_pattern != "circle"].set_index("pixel_sha256")
    me = me.set_index("pixel_sha256")
    assert set(me.index) == set(vol_d.index)
    for col in ("patient_id", "eye", "visit", "modality"):
        assert (me[col] == vol_d.loc[me.index, col]).all(), col
    _assert_no_identifiers(out_e, planted)


def _bad_files(phantom_archive: Path, tmp_path: Path) -> dict[str, bytes]:
    good_op = next((phantom_archive / "dicom").rglob("CFP_OD.dcm")).read_bytes()
    good_opt = next((phantom_archive / "dicom").rglob("OCT_OD.dcm")).read_bytes()
    bad: dict[str, bytes] = {}
    bad["truncated.dcm"] = good_opt[: len(good_opt) // 2]
    bad["zero.dcm"] = b""
    bad["notes.bin"] = b"\x00\x01 just some bytes"
    bad["garbage.dcm"] = b"\x00" * 128 + b"DICM" + b"\xff" * 500
    # wrong SOP class: a CT image that ships with pydicom
    from pydicom.data import get_testdata_file

    bad["ct.dcm"] = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    # missing pixel data
    ds = pydicom.dcmread(io.BytesIO(good_op))
    del ds.PixelData
    b = io.BytesIO()
    ds.save_as(b, enforce_file_format=True)
    bad["nopixels.dcm"] = b.getvalue()
    # inconsistent dimensions: header claims more rows than the pixel data holds
    ds = pydicom.dcmread(io.BytesIO(good_op))
    ds.Rows = ds.Rows + 40
    b = io.BytesIO()
    ds.save_as(b, enforce_file_format=True)
    bad["rows.dcm"] = b.getvalue()
    # decompression bomb: a header claiming 200k x 200k pixels
    ds = pydicom.dcmread(io.BytesIO(good_op))
    ds.Rows, ds.Columns = 60000, 60000
    b = io.BytesIO()
    ds.save_as(b, enforce_file_format=True)
    bad["bomb.dcm"] = b.getvalue()
    # burned-in annotation
    ds = pydicom.dcmread(io.BytesIO(good_op))
    ds.BurnedInAnnotation = "YES"
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".9"
    arr = ds.pixel_array.copy()
    arr[0, 0] = 1
    ds.PixelData = arr.tobytes()
    b = io.BytesIO()
    ds.save_as(b, enforce_file_format=True)
    bad["burned.dcm"] = b.getvalue()
    # unreadable PNG, PNG bomb header
    bad["cfp/broken.png"] = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40
    import struct
    import zlib

    def png_chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    # 120000 x 120000 RGB declared, a few bytes of data: Pillow would allocate 43 GB
    bad["cfp/bomb.png"] = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 120000, 120000, 8, 2, 0, 0, 0))
                           + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b""))
    return bad


def test_bad_files_quarantined_run_finishes(phantom_archive, planted, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(phantom_archive / "dicom", src)
    for name, data in _bad_files(phantom_archive, tmp_path).items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    (src / ".DS_Store").write_bytes(b"junk")
    out = tmp_path / "out"
    res = ingest(str(src), out, _cfg())
    s = _accounting(out)
    assert res.images == 24  # every good image still ingested
    q = {r["error_class"] for r in pq.read_table(out / "quarantine.parquet").to_pylist()}
    expected = {"corrupt_dicom", "empty_file", "unknown_format", "wrong_sop_class", "missing_pixel_data",
                "inconsistent_dimensions", "decompression_bomb", "burned_in_annotation", "unreadable_image"}
    assert expected <= q, expected - q
    assert s["files_quarantined"] == 11
    assert s["files_skipped"] == 1  # .DS_Store
    _assert_no_identifiers(out, planted)
    # the operator can map quarantined keys back to source paths, on demand only
    found = locate(str(src), out, _cfg())
    assert set(found.values()) >= {"zero.dcm", "ct.dcm", "cfp/bomb.png"}


def test_burned_in_allowed_by_config(phantom_archive, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "burned.dcm").write_bytes(_bad_files(phantom_archive, tmp_path)["burned.dcm"])
    res = ingest(str(src), tmp_path / "out", _cfg(allow_burned_in=True))
    assert res.images == 1
    flags = pq.read_table(tmp_path / "out" / "manifest.parquet").column("quality_flags").to_pylist()[0]
    assert "burned_in_annotation_allowed" in flags


def test_oct2017_class_folder_layout(tmp_path):
    from PIL import Image

    src = tmp_path / "OCT2017" / "train"
    rng = np.random.default_rng(0)
    for cls, pid in (("CNV", "1016042"), ("DME", "2230"), ("NORMAL", "1016042")):
        (src / cls).mkdir(parents=True)
        Image.fromarray((rng.random((96, 128)) * 255).astype(np.uint8)).save(src / cls / f"{cls}-{pid}-1.jpeg")
    out = tmp_path / "out"
    ingest(str(tmp_path / "OCT2017"), out, _cfg())
    m = pq.read_table(out / "manifest.parquet").to_pandas()
    assert sorted(m.source_label) == ["cnv", "dme", "normal"]
    assert (m.modality == "oct").all() and (m.scan_pattern == "bscan").all()
    assert m.patient_id.nunique() == 2  # patient 1016042 appears twice
    assert not any("1016042" in json.dumps(r, default=str) for r in m.to_dict("records"))


def test_files_from_other_software(tmp_path, planted):
    """OP written by DCMTK's img2dcm (JPEG baseline) and OPT written by dump2dcm, not by our phantom."""
    if not shutil.which("img2dcm") or not shutil.which("dump2dcm"):
        pytest.skip("dcmtk is not installed (.ci/run installs it)")
    from PIL import Image

    rng = np.random.default_rng(1)
    jpg = tmp_path / "fundus.jpg"
    Image.fromarray((rng.random((120, 160, 3)) * 255).astype(np.uint8)).save(jpg, quality=90)
    src = tmp_path / "src"
    src.mkdir()
    subprocess.run(["img2dcm", "-oph", "-k", "PatientName=QUILLFEATHER^ROSALIND", "-k", "PatientID=MRN7654321",
                    "-k", "PatientBirthDate=19511224", "-k", "ImageLaterality=L", "-k", "StudyDate=20210304",
                    "-k", "InstitutionName=NORTHGATE RETINA CLINIC",
                    "-k", "AcquisitionDeviceTypeCodeSequence[0].CodeValue=409899009",
                    "-k", "AcquisitionDeviceTypeCodeSequence[0].CodingSchemeDesignator=SCT",
                    "-k", "AcquisitionDeviceTypeCodeSequence[0].CodeMeaning=Fundus Camera", str(jpg), str(src / "op.dcm")], check=True)
    dump = tmp_path / "opt.dump"
    rows, cols, frames = 32, 40, 3
    dump.write_text("\n".join([
        "(0002,0010) UI =LittleEndianImplicit",
        "(0008,0016) UI =OphthalmicTomographyImageStorage",
        "(0008,0018) UI [1.2.3.4.5.6.7.8.9]",
        "(0008,0060) CS [OPT]",
        "(0008,0020) DA [20210304]",
        "(0010,0010) PN [QUILLFEATHER^ROSALIND]",
        "(0010,0020) LO [MRN7654321]",
        "(0010,0030) DA [19511224]",
        "(0020,000d) UI [1.2.3.4.5.6.7.8.10]",
        "(0020,000e) UI [1.2.3.4.5.6.7.8.11]",
        "(0020,0062) CS [L]",
        "(0028,0002) US 1",
        "(0028,0004) CS [MONOCHROME2]",
        f"(0028,0008) IS [{frames}]",
        f"(0028,0010) US {rows}",
        f"(0028,0011) US {cols}",
        "(0028,0030) DS [0.0039\\0.0117]",
        "(0018,0050) DS [0.12]",
        "(0028,0100) US 8",
        "(0028,0101) US 8",
        "(0028,0102) US 7",
        "(0028,0103) US 0",
    ]) + "\n")
    raw = tmp_path / "pixels.raw"
    raw.write_bytes((rng.random((frames, rows, cols)) * 255).astype(np.uint8).tobytes())
    subprocess.run(["dump2dcm", "-q", "+E", str(dump), str(src / "opt.dcm")], check=True)
    ds = pydicom.dcmread(src / "opt.dcm")
    ds.PixelData = raw.read_bytes()
    ds["PixelData"].VR = "OB"
    ds.save_as(src / "opt.dcm")
    out = tmp_path / "out"
    res = ingest(str(src), out, _cfg())
    assert res.images == 2, pq.read_table(out / "quarantine.parquet").to_pylist()
    m = pq.read_table(out / "manifest.parquet").to_pandas().set_index("modality")
    assert m.loc["cfp", "eye"] == "OS" and m.loc["oct", "eye"] == "OS"
    assert m.loc["oct", "frames"] == 3 and abs(m.loc["oct", "spacing_lateral_mm"] - 0.0117) < 1e-9
    assert m.loc["cfp", "patient_id"] == m.loc["oct", "patient_id"]
    _assert_no_identifiers(out, ["QUILLFEATHER", "ROSALIND", "MRN7654321", "19511224", "NORTHGATE RETINA CLINIC"])


def test_missing_source_is_a_clear_error(tmp_path):
    from grok.ingest.source import SourceError

    with pytest.raises(SourceError, match="no such folder or archive"):
        ingest(str(tmp_path / "nope"), tmp_path / "out", _cfg())


@pytest.mark.parametrize("reader, says", [("read_oct", "cfp"), ("read_cfp", "oct")])
def test_export_whose_sidecar_names_another_modality_is_refused(tmp_path, reader, says):
    from PIL import Image

    from grok.ingest import readers

    png = tmp_path / "img.png"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(png)
    (tmp_path / "img.png.json").write_text(json.dumps({"modality": says, "eye": "OD"}))
    with pytest.raises(readers.ReaderError, match=f"sidecar says modality '{says}'") as err:
        getattr(readers, reader)(png)
    assert err.value.error_class == "wrong_modality"


def test_folder_walk_is_sorted_path_order_without_listing_the_archive(tmp_path):
    """A folder is read one directory listing at a time, in the same order as sorting every relative path
    (names where a file and a folder share a prefix: "OCT_OD.dcm" before "OCT_OD/0001.dcm" before "OCT_OD0");
    a link to a folder is not followed, as os.walk does not."""
    from grok.ingest.source import iter_source

    rng = np.random.default_rng(5)
    names = ["a", "a.b", "a-b", "a0", "A", "a b", "ä", "ab", "OCT_OD", "OCT_OD.dcm", "OCT_OD0", "é", "a~"]
    for _ in range(300):
        parts = [str(rng.choice(names)) for _ in range(int(rng.integers(1, 5)))]
        p = tmp_path.joinpath("src", *parts)
        if any(tmp_path.joinpath("src", *parts[:k]).is_file() for k in range(1, len(parts) + 1)) or p.is_dir():
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "f.dcm").write_bytes(b"y")
    (tmp_path / "src" / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    expected = sorted(p.relative_to(tmp_path / "src").as_posix() for p in (tmp_path / "src").rglob("*")
                      if p.is_file() and "link" not in p.relative_to(tmp_path / "src").parts)
    got = [sf.relpath for sf in iter_source(tmp_path / "src")]
    assert len(got) > 50
    assert got == expected
