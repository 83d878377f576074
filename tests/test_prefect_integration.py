"""Integration: a real Prefect server, work pools, deployments from prefect.yaml, a process worker per
pool; the build deployment publishes a version and triggers the training deployments with it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.test_build import small_config

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_health(url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"Prefect server at {url} did not become healthy in {timeout}s")


def _prefect(args: list[str], env: dict, timeout: int = 300) -> str:
    proc = subprocess.run([str(BIN / "prefect"), *args], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=timeout)
    assert proc.returncode == 0, f"prefect {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_build_deployment_publishes_and_triggers_training(tmp_path):
    port = _port()
    api = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ)
    env.update(PREFECT_HOME=str(tmp_path / "home"), PREFECT_API_URL=api, GROK_REPO_DIR=str(REPO),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false",
               PREFECT_API_SERVICES_LATE_RUNS_ENABLED="false", PREFECT_API_SERVICES_FOREMAN_ENABLED="false",
               PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_SERVER_API_PORT=str(port),
               PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}")
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen] = []

    def start(name: str, args: list[str]) -> None:
        fh = open(logs / f"{name}.log", "w")
        procs.append(subprocess.Popen([str(BIN / "prefect"), *args], stdout=fh, stderr=subprocess.STDOUT, env=env,
                                      cwd=REPO, start_new_session=True))

    cfg = small_config(tmp_path, train={"jobs": ["align", "sft"], "profile": "cpu_smoke", "via": "deployment",
                                        "overrides": {"align": ["batch_size=4"]}})
    cfg_path = tmp_path / "build.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    try:
        start("server", ["server", "start", "--host", "127.0.0.1", "--port", str(port)])
        _wait_health(api, 180)
        _prefect(["work-pool", "create", "grok-cpu", "--type", "process"], env)
        _prefect(["work-pool", "create", "grok-gpu", "--type", "process"], env)
        _prefect(["--no-prompt", "deploy", "--all"], env)
        start("worker-cpu", ["worker", "start", "--pool", "grok-cpu", "--limit", "1"])
        start("worker-gpu", ["worker", "start", "--pool", "grok-gpu", "--limit", "1"])
        from prefect.client.orchestration import get_client  # noqa: F401 (env must be set first)

        os.environ["PREFECT_API_URL"] = api
        script = f"""
import json, sys
from prefect.deployments import run_deployment
run = run_deployment("build-dataset/cpu", parameters={{"config_path": {str(cfg_path)!r}}}, timeout=1500)
print(json.dumps({{"state": run.state.type.value, "id": str(run.id)}}))
"""
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=1600)
        assert out.returncode == 0, out.stderr[-3000:]
        state = json.loads(out.stdout.strip().splitlines()[-1])
        assert state["state"] == "COMPLETED", (logs / "worker-cpu.log").read_text()[-5000:]
        # the version was published and passes its contract again
        from grok.registry import load, resolve

        info = resolve("small@latest", str(tmp_path / "registry"))
        assert info["version"] == "0.1.0"
        assert len(load("small@0.1.0", "instructions", "train", registry=str(tmp_path / "registry"))) > 0
        # the training deployments ran on that version, in CPU smoke mode, to completion
        check = """
import asyncio, json
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId, DeploymentFilter
async def main():
    async with get_client() as c:
        out = []
        for name in ("train-align/gpu", "train-sft/gpu"):
            dep = await c.read_deployment_by_name(name)
            for _ in range(600):
                runs = await c.read_flow_runs(flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[dep.id])))
                if runs and runs[0].state.is_final():
                    break
                await asyncio.sleep(2)
            out.append({"name": name, "n": len(runs), "state": runs[0].state.type.value if runs else None,
                         "params": runs[0].parameters if runs else None})
        print(json.dumps(out))
asyncio.run(main())
"""
        out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, timeout=1500)
        assert out.returncode == 0, out.stderr[-3000:]
        runs = json.loads(out.stdout.strip().splitlines()[-1])
        for r in runs:
            assert r["n"] == 1, r
            assert r["params"]["dataset"] == "small@0.1.0" and r["params"]["profile"] == "cpu_smoke"
            assert r["state"] == "COMPLETED", (r, (logs / "worker-gpu.log").read_text()[-5000:])
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, 15)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
        shutil.rmtree(tmp_path / "home", ignore_errors=True)
