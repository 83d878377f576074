"""A published split larger than ``max_shard_bytes`` is written as several parquet shards that
``grok.registry.load`` and ``datasets.load_dataset`` read lazily, with the fingerprint of one file; every
file's row groups hold about ``ROW_GROUP_BYTES`` of Arrow data, whatever the split's size."""

from __future__ import annotations

from pathlib import Path

import datasets
import mlcroissant as mlc
import numpy as np
import pyarrow.parquet as pq

from grok import registry as reg
from tests.test_registry import _ds

datasets.disable_progress_bars()


def test_large_split_is_sharded_and_loads_whole(tmp_path):
    big = _ds(n=40)
    tables = {"alignment": {"train": big, "validation": big.select(range(3))}}
    whole = reg.publish(tables, "whole", registry=str(tmp_path / "a"))
    limit = big.data.nbytes // 4 + 1  # about four shards for train; validation fits in one file
    sharded = reg.publish(tables, "sharded", registry=str(tmp_path / "b"), max_shard_bytes=limit)
    assert sharded["fingerprint"] == whole["fingerprint"]
    files = sorted(p.name for p in (tmp_path / "b" / "sharded" / sharded["version"] / "data" / "alignment").iterdir())
    assert files == [f"train-{i:05d}-of-00004.parquet" for i in range(4)] + ["validation-00000-of-00001.parquet"]
    loaded = reg.load(f"sharded@{sharded['version']}", "alignment", "train", registry=str(tmp_path / "b"))
    assert loaded.cache_files  # memory-mapped from the parquet shards, not read into memory
    assert loaded["sample_id"] == big["sample_id"]
    hub = datasets.load_dataset(sharded["path"], "alignment")  # the card's data_files name the shards
    assert hub["train"]["sample_id"] == big["sample_id"] and hub.num_rows["validation"] == 3
    croissant = mlc.Dataset(jsonld=str(tmp_path / "b" / "sharded" / sharded["version"] / "croissant.json"))
    assert not croissant.metadata.issues.errors, croissant.metadata.issues.report()
    assert len(list(croissant.records(record_set="alignment"))) == 43


def _text_split(n: int) -> datasets.Dataset:
    rng = np.random.default_rng(n)
    words = ["drusen", "fluid", "macula", "disc", "vessel", "layer"]
    return datasets.Dataset.from_dict({"id": [f"s{i:04d}" for i in range(n)],
                                       "text": [" ".join(rng.choice(words, 400)) for _ in range(n)]})


def _row_groups(info) -> list[int]:
    (f,) = Path(info["path"]).glob("data/records/train-*.parquet")
    md = pq.ParquetFile(f).metadata
    return [md.row_group(g).num_rows for g in range(md.num_row_groups)]


def test_row_groups_are_bounded_and_not_in_the_fingerprint(tmp_path, monkeypatch):
    split = _text_split(300)
    tables = {"records": {"train": split}}
    limit = 64 << 10
    monkeypatch.setattr(reg, "ROW_GROUP_BYTES", limit)
    small = reg.publish(tables, "groups", registry=str(tmp_path / "a"))
    monkeypatch.setattr(reg, "ROW_GROUP_BYTES", 1 << 30)
    whole = reg.publish(tables, "groups", registry=str(tmp_path / "b"))
    assert small["fingerprint"] == whole["fingerprint"]  # the files' layout is not the content
    assert _row_groups(whole) == [300]  # datasets' own 100 MB groups: the whole split in one
    rows = _row_groups(small)
    per_group = 300 * limit // split.data.nbytes
    assert sum(rows) == 300 and len(rows) > 1 and max(rows) == per_group
    loaded = reg.load("groups@latest", "records", "train", registry=str(tmp_path / "a"))
    assert loaded["id"] == split["id"] and loaded["text"] == split["text"]
