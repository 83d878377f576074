"""A published split larger than ``max_shard_bytes`` is written as several parquet shards that
``grok.registry.load`` and ``datasets.load_dataset`` read lazily, with the fingerprint of one file."""

from __future__ import annotations

import datasets
import mlcroissant as mlc

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
