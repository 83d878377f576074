"""Dataset cards the Hub accepts as they are: complete ``dataset_info`` per config, metadata that round-trips
through huggingface_hub's card classes, and every config of a published version loads with plain
``datasets.load_dataset`` without a single warning from ``datasets`` or ``huggingface_hub``."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import datasets
import numpy as np
import pytest
from datasets.info import DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData
from PIL import Image

from grok import registry as reg
from tests.test_registry import _ds as _align

datasets.disable_progress_bars()

LOGGERS = ("datasets", "huggingface_hub")


def _chat(n: int) -> datasets.Dataset:
    """An instructions-like config: nested messages, a list of images, a float column."""
    rng = np.random.default_rng(1)
    msg = datasets.Features({"role": datasets.Value("string"), "content": datasets.Value("string")})
    feats = datasets.Features({"id": datasets.Value("string"), "messages": datasets.List(msg),
                               "images": datasets.List(datasets.Image()), "score": datasets.Value("float32")})
    return datasets.Dataset.from_dict({
        "id": [f"r{i}" for i in range(n)],
        "messages": [[{"role": "user", "content": f"<image> q{i}"}, {"role": "assistant", "content": "a"}]
                     for i in range(n)],
        "images": [[Image.fromarray((rng.random((8, 8)) * 255).astype(np.uint8))] for _ in range(n)],
        "score": [0.5 * i for i in range(n)],
    }, features=feats)


@pytest.fixture
def published(tmp_path):
    chat, align = _chat(7), _align(6)
    tables = {"instructions": {"train": chat.select(range(5)), "validation": chat.select([6, 5])},  # reordered
              "alignment": {"train": align.select(range(4)), "validation": align.select([4, 5]),
                            "test": align.select([])}}  # an empty split keeps its features
    info = reg.publish(tables, "phantom", registry=str(tmp_path / "reg"),
                       card_meta={"license": "cc-by-4.0", "pretty_name": "Phantom", "synthetic": True})
    return tables, info


@pytest.fixture
def hub_warnings(caplog):
    """WARNING records of the ``datasets`` and ``huggingface_hub`` loggers (they may not propagate to root)."""
    loggers = [logging.getLogger(name) for name in LOGGERS]
    for lg in loggers:
        lg.addHandler(caplog.handler)
    with caplog.at_level(logging.WARNING, logger="datasets"), \
            caplog.at_level(logging.WARNING, logger="huggingface_hub"):
        yield caplog
    for lg in loggers:
        lg.removeHandler(caplog.handler)


def _loaded_without_warnings(path: str, config: str, caplog) -> datasets.DatasetDict:
    caplog.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dsd = datasets.load_dataset(path, config)
    ours = [w for w in caught if not issubclass(w.category, ResourceWarning)]
    assert not ours, f"{config}: " + "; ".join(f"{w.category.__name__}: {w.message}" for w in ours)
    logged = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith(LOGGERS)]
    assert not logged, f"{config}: " + "; ".join(f"{r.name}: {r.getMessage()}" for r in logged)
    return dsd


def test_every_config_loads_without_warning_and_sizes_match(published, hub_warnings):
    tables, info = published
    path = info["path"]
    card = DatasetCard.load(Path(path) / "README.md")
    infos = DatasetInfosDict.from_dataset_card_data(card.data)
    assert sorted(infos) == sorted(tables)
    for config, splits in tables.items():
        dsd = _loaded_without_warnings(path, config, hub_warnings)
        assert sorted(dsd) == sorted(s for s, ds in splits.items() if len(ds))  # the empty one is not listed
        card_info = infos[config]
        assert card_info.features == splits["train"].features
        parquet = sum((Path(path) / "data" / config / f"{s}-00000-of-00001.parquet").stat().st_size
                      for s, ds in splits.items() if len(ds))
        assert card_info.download_size == parquet
        assert card_info.dataset_size == sum(s.num_bytes for s in card_info.splits.values())
        for split, ds in splits.items():
            if not len(ds):
                assert split not in card_info.splits and reg.load(f"phantom@{info['version']}", config, split,
                                                                  registry=str(Path(path).parents[1])).features == ds.features
                continue
            loaded = dsd[split]
            assert len(loaded) == len(ds) == card_info.splits[split].num_examples
            assert loaded.features == ds.features
            # the card's sizes are the ones datasets computes itself when it prepares the split
            assert card_info.splits[split].num_bytes == loaded.info.splits[split].num_bytes > 0
        assert dsd["validation"][0][next(iter(ds.features))] == splits["validation"][0][next(iter(ds.features))]


def test_card_metadata_round_trips_through_huggingface_hub(published):
    _, info = published
    text = (Path(info["path"]) / "README.md").read_text()
    card = DatasetCard(text)
    assert isinstance(card.data, DatasetCardData)
    again = DatasetCard(str(card))
    assert again.data.to_dict() == card.data.to_dict() and again.text == card.text
    meta = card.data.to_dict()
    assert meta["license"] == "cc-by-4.0" and meta["pretty_name"] == "Phantom"
    assert meta["task_categories"] == ["image-text-to-text"] and meta["size_categories"] == ["n<1K"]
    assert "synthetic" in meta["tags"]
    configs = MetadataConfigs.from_dataset_card_data(card.data)
    assert sorted(configs) == ["alignment", "instructions"]
    assert [f["split"] for f in configs["alignment"]["data_files"]] == ["train", "validation"]  # test is empty
    assert "Empty splits (alignment/test)" in card.text
    for entry in meta["dataset_info"]:
        assert set(entry) >= {"config_name", "features", "splits", "download_size", "dataset_size"}
        for split in entry["splits"]:
            assert set(split) >= {"name", "num_bytes", "num_examples"}
    assert f"Content fingerprint: `{info['fingerprint']}`" in card.text


def test_single_config_card_loads_without_warning(tmp_path, hub_warnings):
    """One config: datasets writes ``dataset_info`` as a mapping, not a list; still read back whole."""
    info = reg.publish({"alignment": {"train": _align(3)}}, "phantom", registry=str(tmp_path / "reg"))
    dsd = _loaded_without_warnings(info["path"], "alignment", hub_warnings)
    card_info = DatasetInfosDict.from_dataset_card_data(DatasetCard.load(Path(info["path"]) / "README.md").data)
    assert card_info["alignment"].splits["train"].num_bytes == dsd["train"].info.splits["train"].num_bytes


def test_fingerprint_covers_selected_rows(tmp_path):
    """A ``select`` (indices mapping) publishes, and fingerprints, the selected rows in their order."""
    align = _align(6)
    picked = align.select([5, 0, 3])
    same = datasets.Dataset.from_dict(picked.to_dict(), features=align.features)
    a = reg.publish({"alignment": {"train": picked}}, "a", registry=str(tmp_path / "reg"))
    b = reg.publish({"alignment": {"train": same}}, "b", registry=str(tmp_path / "reg"))
    c = reg.publish({"alignment": {"train": align.select([0, 3, 5])}}, "c", registry=str(tmp_path / "reg"))
    assert a["fingerprint"] == b["fingerprint"] != c["fingerprint"]
