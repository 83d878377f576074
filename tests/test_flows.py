"""The Prefect build flow: resumable after SIGKILL with the same fingerprint, same dataset on a Dask cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.test_build import small_config

pytestmark = pytest.mark.slow

GROK = [sys.executable, "-m", "grok"]


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PREFECT_HOME"] = str(tmp / "prefect-home")
    env.pop("PREFECT_API_URL", None)
    return env


def _write(tmp: Path, name: str, **over) -> Path:
    cfg = small_config(tmp / name, **over)
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _build(cfg: Path, env: dict, *extra: str) -> dict:
    proc = subprocess.run([*GROK, "build", str(cfg), "--json", *extra], capture_output=True, text=True, env=env,
                          timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted build with the stages called directly (no Prefect)."""
    tmp = tmp_path_factory.mktemp("ref")
    return _build(_write(tmp, "ref"), _env(tmp), "--no-prefect")


def test_killed_build_resumes_to_the_same_dataset(reference, tmp_path):
    cfg = _write(tmp_path, "resume")
    env = _env(tmp_path)
    work = tmp_path / "resume" / "build"
    proc = subprocess.Popen([*GROK, "build", str(cfg), "--json"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.time() + 900
    while time.time() < deadline and not list((work / "measure").glob("shard-*.parquet")):
        assert proc.poll() is None, "the build finished before it could be killed"
        time.sleep(0.5)
    first = sorted((work / "measure").glob("shard-*.parquet"))
    assert first, "no measure shard appeared in time"
    os.killpg(proc.pid, signal.SIGKILL)  # the flow, its temporary Prefect server and every child
    proc.wait(timeout=60)
    assert json.loads((work / "build.json").read_text())["complete"] is False
    mtimes = {p: p.stat().st_mtime_ns for p in first}
    res = _build(cfg, env)
    assert {p: p.stat().st_mtime_ns for p in first} == mtimes  # finished shards were not redone
    assert res["dataset"] == "small@0.1.0"
    assert res["fingerprint"] == _fingerprint(reference)


def _fingerprint(result: dict) -> str:
    pub = next(s for s in result["stages"] if s["stage"] == "publish")
    return pub["details"]["fingerprint"]


def test_dask_runner_gives_the_same_dataset(reference, tmp_path):
    cfg = _write(tmp_path, "dask", runner={"kind": "dask", "n_workers": 2})
    res = _build(cfg, _env(tmp_path))
    assert res["fingerprint"] == _fingerprint(reference)
