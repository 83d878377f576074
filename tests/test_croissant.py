"""Croissant metadata with each version: ``croissant.json`` that ``mlcroissant`` validates without an issue
and reads record by record from the local files (no network), matching the published rows."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import mlcroissant as mlc
import numpy as np
import pytest
from PIL import Image

from grok import registry as reg
from grok.instruct.evidence import records_features
from tests.test_hub_card import _chat
from tests.test_registry import _ds

datasets.disable_progress_bars()


def _records(n: int) -> datasets.Dataset:
    """Rows of the real ``records`` config's features: structs in lists, a list inside a struct, bool, int."""
    feats = records_features()
    rows = []
    for i in range(n):
        row = {k: f"{k}{i}" for k in feats}
        row.update(
            biomarkers=[{"id": "cst", "value": 250.0 + i, "unit": "um"}],
            findings=[{"id": f"f{i}", "name": "thick", "biomarker": "cst", "value": 250.0 + i, "unit": "um",
                       "abnormal": bool(i % 2), "grade": i, "normal_range_id": "r", "normal_p5": 1.0,
                       "normal_p95": 2.0, "normal_range_source": "src", "normal_range_device": "dev",
                       "threshold": None, "sources": ["a", f"b{i}"], "explanation": "e"}],
            differential=[], not_evaluable=[{"finding": "x", "reason": "no scan"}])
        rows.append(row)
    return datasets.Dataset.from_list(rows, features=feats)


@pytest.fixture
def published(tmp_path):
    chat, align = _chat(5), _ds(4)
    tables = {"instructions": {"train": chat.select(range(3)), "validation": chat.select([4, 3])},
              "alignment": {"train": align, "test": align.select([])},
              "records": {"train": _records(3)}}
    info = reg.publish(tables, "phantom", registry=str(tmp_path / "reg"),
                       card_meta={"license": "cc-by-4.0", "synthetic": True},
                       manifest_extra={"build_id": "b-1", "versions": {"code_version": "0.1.0+abc",
                                                                      "kb_snapshots": ["kb-2025"]}})
    return tables, info


def _text(v):
    return v.decode() if isinstance(v, bytes) else v


def test_croissant_validates_and_reads_every_record(published):
    tables, info = published
    path = Path(info["path"])
    doc = json.loads((path / "croissant.json").read_text())
    ds = mlc.Dataset(jsonld=str(path / "croissant.json"))
    assert not ds.metadata.issues.errors and not ds.metadata.issues.warnings, ds.metadata.issues.report()
    manifest = json.loads((path / "manifest.json").read_text())
    assert doc["identifier"] == f"sha256:{info['fingerprint']}" and doc["version"] == info["version"]
    assert doc["license"] == "cc-by-4.0" and doc["datePublished"] == manifest["created_utc"]
    assert "build id b-1" in doc["description"] and "kb-2025" in doc["description"]
    assert [r["@id"] for r in doc["recordSet"]] == sorted(tables)
    for config, splits in tables.items():
        records = list(ds.records(record_set=config))
        expected = [(split, row) for split in sorted(splits) for row in splits[split]]
        assert len(records) == len(expected) == sum(len(d) for d in splits.values())  # the empty split adds none
        for rec, (split, row) in zip(records, expected, strict=True):
            assert _text(rec[f"{config}/split"]) == split
            first = next(iter(row))
            assert _text(rec[f"{config}/{first}"]) == row[first]
    # typed values, images and nested fields come back as published
    align = list(ds.records(record_set="alignment"))
    for rec, row in zip(align, tables["alignment"]["train"], strict=True):
        assert np.array_equal(np.asarray(rec["alignment/image"]), np.asarray(row["image"]))
        # a missing value (None in datasets) reads back as NaN through mlcroissant's pandas reader
        assert [None if np.isnan(v) else v for v in rec["alignment/biomarker_values"]] == row["biomarker_values"]
    chat = list(ds.records(record_set="instructions"))
    first = tables["instructions"]["train"][0]
    assert [_text(m["instructions/messages/content"]) for m in chat[0]["instructions/messages"]] == \
        [m["content"] for m in first["messages"]]
    assert len(chat[0]["instructions/images"]) == 1 and isinstance(chat[0]["instructions/images"][0], Image.Image)
    assert chat[0]["instructions/score"] == pytest.approx(first["score"])
    rec = list(ds.records(record_set="records"))[1]
    finding = rec["records/findings"][0]
    assert finding["records/findings/abnormal"] is True and finding["records/findings/grade"] == 1
    assert [_text(s) for s in finding["records/findings/sources"]] == ["a", "b1"]


def test_croissant_field_types(published):
    _, info = published
    doc = json.loads((Path(info["path"]) / "croissant.json").read_text())
    fields = {f["@id"]: f for rs in doc["recordSet"] for f in rs["field"]}
    assert fields["alignment/image"]["dataType"] == "sc:ImageObject"
    assert fields["alignment/biomarker_values"] == {**fields["alignment/biomarker_values"], "dataType": "sc:Float",
                                                    "repeated": True}
    assert fields["instructions/images"]["dataType"] == "sc:ImageObject" and fields["instructions/images"]["repeated"]
    assert fields["records/findings"]["dataType"] == "cr:RecordSet"
    sub = {f["@id"]: f["dataType"] for f in fields["records/findings"]["subField"]}
    assert sub["records/findings/abnormal"] == "sc:Boolean" and sub["records/findings/grade"] == "sc:Integer"
    # no local path: every file is named relative to the version folder
    text = (Path(info["path"]) / "croissant.json").read_text()
    assert str(Path(info["path"]).parent) not in text


def test_croissant_not_in_fingerprint_and_unknown_feature_refused(tmp_path):
    a = reg.publish({"alignment": {"train": _ds(3)}}, "a", registry=str(tmp_path / "reg"), card_meta={"license": "mit"})
    b = reg.publish({"alignment": {"train": _ds(3)}}, "b", registry=str(tmp_path / "reg"))
    assert a["fingerprint"] == b["fingerprint"]  # licence and metadata differ, the data do not
    arr = datasets.Dataset.from_dict({"x": [np.zeros((2, 2))]},
                                     features=datasets.Features({"x": datasets.Array2D((2, 2), "float32")}))
    with pytest.raises(reg.RegistryError, match="no Croissant data type"):
        reg.publish({"grid": {"train": arr}}, "c", registry=str(tmp_path / "reg"))
    assert reg.list_versions("c", str(tmp_path / "reg")) == []


def test_pushed_versions_name_their_hub_page(tmp_path):
    """publish.card_meta gives a version pushed with --hub-repo its Hub page as the Croissant url, and a
    local version none; the url reaches croissant.json, never the fingerprint."""
    from grok.publish import PublishConfig, card_meta

    local = card_meta(PublishConfig(name="phantom"), synthetic=True)
    pushed = card_meta(PublishConfig(name="phantom", hub_repo="org/grok-phantom"), synthetic=True)
    assert "url" not in local and pushed["url"] == "https://huggingface.co/datasets/org/grok-phantom"
    chat = _chat(3)
    fps = []
    for meta, where in ((local, "a"), (pushed, "b")):
        info = reg.publish({"instructions": {"train": chat}}, "phantom", registry=str(tmp_path / where),
                           card_meta=meta, manifest_extra={"build_id": "b-1"})
        doc = json.loads((Path(info["path"]) / "croissant.json").read_text())
        assert doc.get("url") == meta.get("url")
        fps.append(info["fingerprint"])
    assert fps[0] == fps[1]
