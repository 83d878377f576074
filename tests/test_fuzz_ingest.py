"""Fuzz the readers: mutated valid files never crash or hang ingestion; each ends ingested or quarantined."""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grok.ingest.deid import DeidConfig
from grok.ingest.pipeline import IngestConfig, ingest
from grok.phantom.dicom import DicomIdentity, phantom_uid, write_op, write_opt

_IDENT = DicomIdentity("FUZZINGTON^OPHELIA", "MRN5550001", dt.date(1955, 2, 3), "F", dt.date(2022, 6, 7),
                       "ACC55500011", "FUZZ EYE UNIT", "1 Fuzz Rd", "DOCTORSON^ALFRED", "TECH^BOB", "NHS5550001",
                       "SN555000")


def _seeds(tmp: Path) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    out = {}
    write_op(tmp / "op.dcm", (rng.random((24, 32, 3)) * 255).astype(np.uint8), _IDENT, laterality="OD",
             study_uid=phantom_uid("s"), series_uid=phantom_uid("a"), sop_instance=phantom_uid("b"),
             pixel_spacing_mm=0.01)
    write_opt(tmp / "opt.dcm", (rng.random((3, 20, 24)) * 255).astype(np.uint8), _IDENT, laterality="OS",
              study_uid=phantom_uid("s"), series_uid=phantom_uid("c"), sop_instance=phantom_uid("d"),
              spacing_mm=(0.004, 0.012, 0.12), fundus_sop_instance=None)
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((rng.random((20, 24)) * 255).astype(np.uint8)).save(buf, format="PNG")
    out["op.dcm"] = (tmp / "op.dcm").read_bytes()
    out["opt.dcm"] = (tmp / "opt.dcm").read_bytes()
    out["oct/scan.png"] = buf.getvalue()
    return out


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return _seeds(tmp_path_factory.mktemp("seeds"))


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("zero_run"), st.integers(0, 10**6), st.integers(1, 64)),
)


def _mutate(data: bytes, muts) -> bytes:
    b = bytearray(data)
    for kind, pos, val in muts:
        if not b:
            break
        p = pos % len(b)
        if kind == "flip":
            b[p] = val
        elif kind == "truncate":
            b = b[:p]
        elif kind == "insert":
            b[p:p] = bytes([val]) * 4
        else:
            b[p:p + val] = bytes(min(val, len(b) - p))
    return bytes(b)


@pytest.mark.timeout(300)
@settings(max_examples=200, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow])
@given(which=st.sampled_from(["op.dcm", "opt.dcm", "oct/scan.png"]), muts=st.lists(mutation, min_size=1, max_size=6))
def test_mutated_files_never_crash(seeds, tmp_path_factory, which, muts):
    src = tmp_path_factory.mktemp("fz")
    data = _mutate(seeds[which], muts)
    (src / which).parent.mkdir(parents=True, exist_ok=True)
    (src / which).write_bytes(data)
    out = tmp_path_factory.mktemp("fz_out")
    res = ingest(str(src), out, IngestConfig(deid=DeidConfig(key="fuzz")))
    assert res.files_seen == 1
    assert res.files_ingested + res.files_quarantined + res.files_skipped == 1
    files = pq.read_table(out / "files.parquet").to_pylist()
    assert files[0]["status"] in ("ingested", "quarantined")
    blob = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    assert b"FUZZINGTON" not in blob and b"MRN5550001" not in blob
    if res.files_ingested:
        m = pq.read_table(out / "manifest.parquet").to_pylist()[0]
        arr = np.load(out / m["normalized_path"])
        assert arr.size == m["rows"] * m["cols"] * m["frames"] * m["channels"]
        json.dumps(m, default=str)
