"""Compressed DICOM as clinics store it (JPEG Lossless, JPEG 2000 Lossless, RLE Lossless) ingests to the
same pixels as the uncompressed files; a compressed file that cannot be decoded is quarantined with a
reason that names the transfer syntax."""

from __future__ import annotations

import shutil
import subprocess

import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, RLELossless

from grok.ingest.deid import DeidConfig
from grok.ingest.pipeline import IngestConfig, ingest

KEY = "test-compressed-key"


def _dicoms(phantom_archive, n: int = 6):
    """A mix of OP photographs and OPT cubes (both multi-frame and single-frame series)."""
    files = sorted((phantom_archive / "dicom").rglob("*.dcm"))
    ops = [f for f in files if pydicom.dcmread(f, stop_before_pixels=True).Modality == "OP"][:2]
    opts = [f for f in files if pydicom.dcmread(f, stop_before_pixels=True).Modality == "OPT"][:n - 2]
    return ops + opts


def _encode(src, dst, codec: str) -> None:
    if codec == "jpeg-lossless":
        dcmcjpeg = shutil.which("dcmcjpeg")
        assert dcmcjpeg, "dcmtk's dcmcjpeg is missing: bash scripts/bootstrap.sh --test installs it"
        # dcmcjpeg's default: JPEG Lossless, first-order prediction (process 14, selection value 1)
        subprocess.run([dcmcjpeg, str(src), str(dst)], check=True, capture_output=True)
        return
    ds = pydicom.dcmread(src)
    ds.compress(JPEG2000Lossless if codec == "j2k" else RLELossless)
    ds.save_as(dst)


def _pixels(out) -> dict[tuple, str]:
    t = pq.read_table(out / "manifest.parquet", columns=["modality", "rows", "cols", "frames", "pixel_sha256"])
    return {(r["modality"], r["rows"], r["cols"], r["frames"], r["pixel_sha256"]) for r in t.to_pylist()}


@pytest.mark.parametrize("codec", ["jpeg-lossless", "j2k", "rle"])
def test_lossless_compressed_dicom_ingests_to_the_same_pixels(phantom_archive, tmp_path, codec):
    plain, packed = tmp_path / "plain", tmp_path / "packed"
    for i, f in enumerate(_dicoms(phantom_archive)):
        for d in (plain, packed):
            d.mkdir(exist_ok=True)
        shutil.copy(f, plain / f"{i}.dcm")
        _encode(f, packed / f"{i}.dcm", codec)
    assert pydicom.dcmread(packed / "0.dcm", stop_before_pixels=True).file_meta.TransferSyntaxUID.is_compressed
    cfg = IngestConfig(deid=DeidConfig(key=KEY))
    a = ingest(str(plain), tmp_path / "out_plain", cfg)
    b = ingest(str(packed), tmp_path / "out_packed", cfg)
    assert b.files_quarantined == 0 and b.files_ingested == a.files_ingested == len(list(plain.iterdir()))
    assert _pixels(tmp_path / "out_packed") == _pixels(tmp_path / "out_plain")


def test_undecodable_compressed_pixels_are_quarantined_with_the_syntax(phantom_archive, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    f = _dicoms(phantom_archive, 3)[0]
    ds = pydicom.dcmread(f)
    ds.compress(RLELossless)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]  # a truncated transfer: the frames cannot decode
    ds.save_as(src / "broken.dcm")
    shutil.copy(f, src / "good.dcm")
    res = ingest(str(src), tmp_path / "out", IngestConfig(deid=DeidConfig(key=KEY)))
    assert (res.files_ingested, res.files_quarantined) == (1, 1)
    q = pq.read_table(tmp_path / "out" / "quarantine.parquet").to_pylist()
    assert len(q) == 1 and q[0]["reason"]
