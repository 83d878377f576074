"""Every image of a study is measured: with several photographs, cubes or circle scans one is chosen,
deterministically by quality, for the record and the others are measured and flagged, never ignored."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from tests.test_build_shards import _dicoms, _measure, _reingest, _rewrite_image, copy, ingested, tiny_config  # noqa: F401


@pytest.mark.parametrize(("modality", "description", "kind", "field", "ids", "biomarker"), [
    ("OP", None, "cfp", "cfp_image_id", "cfp_image_ids", "vessel_density"),
    ("OPT", "Peripapillary RNFL circle scan", "oct_circle", "circle_image_id", "oct_image_ids",
     "rnfl_peripapillary_mean_um"),
], ids=["photograph", "circle-scan"])
def test_every_image_of_a_study_is_measured_or_flagged(copy, modality, description, kind, field, ids,  # noqa: F811
                                                       biomarker):
    cfg = tiny_config(copy)
    src = _dicoms(copy, modality, description)[0]
    _rewrite_image(src, src.with_name(src.stem + "-second.dcm"), scale=0.35, new_uid=True)
    _reingest(cfg)
    studies = pq.read_table(copy / "build" / "ingest" / "studies.parquet").to_pylist()
    manifest = {r["image_id"]: r for r in pq.read_table(copy / "build" / "ingest" / "manifest.parquet").to_pylist()}
    rows = _measure(cfg)
    q = pq.read_table(copy / "build" / "measure_quarantine.parquet").to_pylist()
    assert len(rows) + len({r["study_id"] for r in q}) == len(studies)  # rows in = rows out + quarantined
    for study in studies:
        mine = [i for i in study[ids] if kind != "oct_circle" or manifest[i]["scan_pattern"] == "circle"]
        row = rows[study["study_id"]]
        measured = [m for m in json.loads(row["image_measurements"]) if m["kind"] == kind]
        assert sorted(m["image_id"] for m in measured) == sorted(mine)  # every image, not the first
        assert [m["primary"] for m in measured].count(True) == 1
        primary = next(m for m in measured if m["primary"])
        assert row[field] == primary["image_id"]
        for other in (m for m in measured if not m["primary"]):
            assert f"image_not_primary:{other['image_id']}" in row["flags"]
            assert biomarker in other["biomarkers"]  # measured, not ignored
    assert any(len(json.loads(r["image_measurements"])) > 3 for r in rows.values())  # the added image is there
