"""Pinned dataset pull: local folders, the registry contract, and errors before training."""

from __future__ import annotations

import sys
import types

import pytest

pytest.importorskip("datasets")
from grok_train.data import load_split, parse_spec, resolve_dataset
from grok_train.errors import DatasetNotFoundError
from tests.train_fixtures import make_alignment_dataset, write_dataset_folder


@pytest.fixture(scope="module")
def small():
    return make_alignment_dataset(6, seed=0, size_px=16)


@pytest.fixture
def fake_registry(monkeypatch, tmp_path, small):
    """A stand-in for grok.registry that knows one version, as the lead's contract describes."""
    import grok

    folder = write_dataset_folder(tmp_path / "reg" / "phantom" / "0.1.0", {"alignment": {"train": small}})
    calls = []

    def resolve(spec, registry=None):
        calls.append(("resolve", spec, registry))
        if spec != "phantom@0.1.0":
            raise KeyError(f"no such version: {spec}")
        return {"name": "phantom", "version": "0.1.0", "fingerprint": "sha256:abc", "path": str(folder)}

    def load(spec, config, split, registry=None):
        calls.append(("load", spec, config, split, registry))
        resolve(spec, registry)
        return load_split(None, config, split, dataset_path=folder)

    mod = types.ModuleType("grok.registry")
    mod.resolve, mod.load, mod.calls = resolve, load, calls
    monkeypatch.setitem(sys.modules, "grok.registry", mod)
    monkeypatch.setattr(grok, "registry", mod, raising=False)
    return mod


def test_local_folder_pin_comes_from_its_manifest(tmp_path, small):
    root = write_dataset_folder(tmp_path / "ds", {"alignment": {"train": small}}, name="phantom", version="2.0.0",
                                fingerprint="fp-1")
    pin = resolve_dataset(dataset_path=root)
    assert (pin.name, pin.version, pin.fingerprint, pin.source) == ("phantom", "2.0.0", "fp-1", "local")
    ds = load_split(None, "alignment", "train", dataset_path=root, max_rows=4)
    assert len(ds) == 4 and ds.column_names[:2] == ["sample_id", "patient_id"]
    assert ds[0]["image"].size == (16, 16)
    assert ds[0]["biomarker_values"].count(None) == sum(v is None for v in small[0]["biomarker_values"])


def test_local_fingerprint_without_manifest_tracks_the_content(tmp_path, small):
    root = write_dataset_folder(tmp_path / "ds", {"alignment": {"train": small}})
    (root / "manifest.json").unlink()
    first = resolve_dataset(dataset_path=root)
    assert first.version == "local" and len(first.fingerprint) == 64
    assert resolve_dataset(dataset_path=root).fingerprint == first.fingerprint
    write_dataset_folder(root, {"alignment": {"train": small.select(range(5))}})
    (root / "manifest.json").unlink()
    assert resolve_dataset(dataset_path=root).fingerprint != first.fingerprint


def test_missing_split_config_or_folder_is_a_clear_error(tmp_path, small):
    root = write_dataset_folder(tmp_path / "ds", {"alignment": {"train": small}})
    with pytest.raises(DatasetNotFoundError, match=r"splits of 'alignment': \['train'\]"):
        load_split(None, "alignment", "validation", dataset_path=root)
    with pytest.raises(DatasetNotFoundError, match=r"configs present: \['alignment'\]"):
        load_split(None, "instructions", "train", dataset_path=root)
    with pytest.raises(DatasetNotFoundError, match="not a dataset folder"):
        resolve_dataset(dataset_path=tmp_path / "nowhere")


@pytest.mark.parametrize("spec", ["phantom", "phantom@", "@1.0"])
def test_specs_must_pin_a_version(spec):
    with pytest.raises(DatasetNotFoundError, match="NAME@VERSION"):
        parse_spec(spec)


def test_registry_versions_resolve_and_load(fake_registry):
    pin = resolve_dataset("phantom@0.1.0", "/srv/registry")
    assert (pin.name, pin.version, pin.fingerprint, pin.source) == ("phantom", "0.1.0", "sha256:abc", "registry")
    ds = load_split("phantom@0.1.0", "alignment", "train", "/srv/registry")
    assert len(ds) == 6
    assert ("load", "phantom@0.1.0", "alignment", "train", "/srv/registry") in fake_registry.calls


def test_unknown_version_fails_before_any_training(fake_registry, tmp_path):
    from grok_train.align import run_align
    from grok_train.config import AlignConfig, config_from_dict

    with pytest.raises(DatasetNotFoundError, match=r"'phantom@9.9.9' not found.*version '9.9.9'"):
        resolve_dataset("phantom@9.9.9")
    cfg = config_from_dict(AlignConfig, {"data": {"dataset": "phantom@9.9.9"}, "output_dir": str(tmp_path / "out")})
    with pytest.raises(DatasetNotFoundError):
        run_align(cfg)
    assert not (tmp_path / "out").exists()
