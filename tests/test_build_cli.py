"""``grok build`` refuses to pseudonymise with the public demo key unless told to (``--demo-key``), and
``build.json`` says ``complete: true`` only once the version is published."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from grok.stages.config import BuildConfig, ConfigError
from tests.test_build_shards import copy, ingested, tiny_config  # noqa: F401 (fixtures)

GROK = [sys.executable, "-m", "grok"]


def _no_key_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "GROK_PSEUDONYM_KEY"}
    env["PREFECT_HOME"] = str(tmp / "prefect-home")
    env.pop("PREFECT_API_URL", None)
    return env


def _config_file(tmp: Path) -> Path:
    cfg = tiny_config(tmp).model_dump(mode="json")
    p = tmp / "build.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.mark.parametrize("mode", [["--no-prefect"], []], ids=["plain", "prefect"])
def test_build_without_key_is_refused(tmp_path, mode):
    proc = subprocess.run([*GROK, "build", str(_config_file(tmp_path)), *mode], capture_output=True, text=True,
                          env=_no_key_env(tmp_path), timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "GROK_PSEUDONYM_KEY" in proc.stderr and "--demo-key" in proc.stderr
    assert not (tmp_path / "build").exists()  # refused before anything ran


def test_library_and_flow_refuse_too(tmp_path, monkeypatch):
    from flows.build import build_dataset
    from grok.stages.runner import run_build

    monkeypatch.delenv("GROK_PSEUDONYM_KEY", raising=False)
    cfg = tiny_config(tmp_path)
    with pytest.raises(ConfigError, match="--demo-key"):
        run_build(cfg)
    with pytest.raises(ConfigError, match="GROK_PSEUDONYM_KEY"):
        build_dataset.fn(config=cfg.model_dump(mode="json"))
    assert not (tmp_path / "build").exists()


def test_demo_key_flag_lets_the_build_run(tmp_path):
    empty = tmp_path / "archive"
    empty.mkdir()
    cfg = tiny_config(tmp_path, source={"phantom": None, "archive": str(empty)}).model_dump(mode="json")
    p = tmp_path / "build.yaml"
    p.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([*GROK, "build", str(p), "--no-prefect", "--demo-key"], capture_output=True, text=True,
                          env=_no_key_env(tmp_path), timeout=600)
    assert "would pseudonymise" not in proc.stderr, proc.stderr[-2000:]  # not refused
    assert "using the public demo key" in proc.stderr  # and said so, loudly
    assert (tmp_path / "build" / "build.json").exists()  # it ran (and stopped on the empty archive)
    assert proc.returncode == 1


def test_config_cannot_smuggle_the_flag(tmp_path):
    with pytest.raises(ValueError):
        BuildConfig.model_validate({**tiny_config(tmp_path).model_dump(mode="json"), "demo_key": True})


def test_complete_only_after_publication(copy):  # noqa: F811 (the fixture imported above)
    from grok.stages.runner import run_stage

    blocker = copy / "registry-is-a-file"
    blocker.write_text("not a folder\n")
    cfg = tiny_config(copy, publish={"registry": str(blocker)})
    for stage in ("measure", "records", "instruct"):
        run_stage(cfg, stage)
    info = copy / "build" / "build.json"
    with pytest.raises(ValueError, match="not writable"):
        run_stage(cfg, "publish")  # publication fails after every stage before it finished
    assert json.loads(info.read_text())["complete"] is False
    good = tiny_config(copy)
    rep = run_stage(good, "publish")  # a rerun publishes the finished stages (resume)
    after = json.loads(info.read_text())
    assert after["complete"] is True and after["published"] == rep.outputs["dataset"] == "tiny@0.1.0"
