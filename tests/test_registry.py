"""Registry: publish versions atomically, never overwrite, same content same fingerprint, pull by version."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from grok import registry as reg

datasets.disable_progress_bars()


def _ds(n: int = 6, seed: int = 0) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    feats = datasets.Features({"sample_id": datasets.Value("string"), "image": datasets.Image(),
                               "biomarker_values": datasets.Sequence(datasets.Value("float32"))})
    return datasets.Dataset.from_dict({
        "sample_id": [f"s{i}" for i in range(n)],
        "image": [Image.fromarray((rng.random((16, 24)) * 255).astype(np.uint8)) for _ in range(n)],
        "biomarker_values": [[float(i), None if i % 2 else 1.0] for i in range(n)],
    }, features=feats)


def _tables(seed: int = 0):
    d = _ds(seed=seed)
    return {"alignment": {"train": d.select(range(4)), "validation": d.select([4, 5])}}


def test_publish_load_and_versions(tmp_path):
    root = str(tmp_path / "reg")
    a = reg.publish(_tables(), "phantom", registry=root)
    assert a["version"] == "0.1.0"
    b = reg.publish(_tables(seed=1), "phantom", registry=root)
    assert b["version"] == "0.2.0" and b["fingerprint"] != a["fingerprint"]
    c = reg.publish(_tables(), "phantom", registry=root, bump="patch")
    assert c["version"] == "0.2.1" and c["fingerprint"] == a["fingerprint"]  # same content, same fingerprint
    assert reg.list_versions("phantom", root) == ["0.1.0", "0.2.0", "0.2.1"]
    ds = reg.load("phantom@0.1.0", "alignment", "validation", registry=root)
    assert len(ds) == 2 and ds[0]["image"].size == (24, 16)
    assert "phantom@0.1.0" in ds.info.description and a["fingerprint"] in ds.info.description
    assert reg.resolve("phantom@latest", root)["version"] == "0.2.1"
    plain = datasets.load_dataset(a["path"], "alignment", split="train")
    assert len(plain) == 4 and plain.features["image"] == datasets.Image()


def test_existing_version_never_overwritten(tmp_path):
    root = str(tmp_path / "reg")
    a = reg.publish(_tables(), "phantom", registry=root, version="1.0.0")
    before = {p: p.read_bytes() for p in Path(a["path"]).rglob("*") if p.is_file()}
    with pytest.raises(reg.RegistryError, match="already exists"):
        reg.publish(_tables(seed=3), "phantom", registry=root, version="1.0.0")
    after = {p: p.read_bytes() for p in Path(a["path"]).rglob("*") if p.is_file()}
    assert before == after


def test_missing_version_names_existing(tmp_path):
    root = str(tmp_path / "reg")
    reg.publish(_tables(), "phantom", registry=root)
    with pytest.raises(reg.RegistryError, match="published versions: 0.1.0"):
        reg.resolve("phantom@0.9.0", root)
    with pytest.raises(reg.RegistryError, match="no config"):
        reg.load("phantom@0.1.0", "instructions", "train", registry=root)
    with pytest.raises(reg.RegistryError, match="not X.Y.Z"):
        reg.resolve("phantom@1.0", root)


def test_unwritable_registry(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # works as root too, unlike permission bits
    with pytest.raises(reg.RegistryError, match="not writable"):
        reg.publish(_tables(), "phantom", registry=str(blocker / "reg"))


def test_concurrent_publish_is_refused(tmp_path):
    root = tmp_path / "reg"
    (root / "phantom").mkdir(parents=True)
    (root / "phantom" / ".publish.lock").write_text(str(os.getpid()))  # a live holder: this process
    with pytest.raises(reg.RegistryError, match="another publish"):
        reg.publish(_tables(), "phantom", registry=str(root))
    assert reg.list_versions("phantom", str(root)) == []


def test_killed_publish_leaves_no_partial_version(tmp_path):
    root = tmp_path / "reg"
    script = textwrap.dedent(f"""
        import datasets, numpy as np, sys, time
        from grok import registry as reg
        datasets.disable_progress_bars()
        n = 50
        rng = np.random.default_rng(0)
        ds = datasets.Dataset.from_dict({{"sample_id": [str(i) for i in range(n)],
                                          "blob": [rng.bytes(1000) for _ in range(n)]}})
        orig = datasets.Dataset.to_parquet
        def slow(self, *a, **k):
            print("WRITING", flush=True)
            time.sleep(30)
            return orig(self, *a, **k)
        datasets.Dataset.to_parquet = slow
        reg.publish({{"instructions": {{"train": ds}}}}, "phantom", registry={str(root)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "WRITING"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert reg.list_versions("phantom", str(root)) == []
    # the stale lock of the killed process does not block the next publish
    info = reg.publish(_tables(), "phantom", registry=str(root))
    assert info["version"] == "0.1.0"
    assert not (root / "phantom" / ".publish.lock").exists()


def test_fsspec_registry_memory(tmp_path):
    """Any fsspec path works as a registry root (here memory://): publish, list, resolve, load."""
    root = f"memory://reg-{tmp_path.name}"
    a = reg.publish(_tables(), "phantom", registry=root)
    assert a["version"] == "0.1.0"
    b = reg.publish(_tables(seed=2), "phantom", registry=root)
    assert reg.list_versions("phantom", root) == ["0.1.0", "0.2.0"]
    with pytest.raises(reg.RegistryError, match="already exists"):
        reg.publish(_tables(), "phantom", registry=root, version="0.2.0")
    assert reg.resolve("phantom@latest", root)["fingerprint"] == b["fingerprint"]
    ds = reg.load("phantom@0.1.0", "alignment", "train", registry=root)
    assert len(ds) == 4
