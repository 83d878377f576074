"""A build on a real multi-process Dask cluster, started the way a team runs one (`dask scheduler`, two
`dask worker` processes, here on loopback): the build records the scheduler and its dashboard in
build.json, survives a worker killed in the middle of a measure shard, and publishes the fingerprint of
a plain run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml
from distributed import Client

from grok.stages.config import BuildConfig
from grok.stages.runner import run_build
from tests.conftest import SMALL_CFP, SMALL_OCT, SMALL_OCT_SPACING_UM
from tests.test_build import small_config

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
#: 3 subjects (6 studies) at the small test geometry, one study per measure shard
PHANTOM = {"subjects": 3, "seed": 7, "oct_shape": list(SMALL_OCT), "oct_spacing_um": list(SMALL_OCT_SPACING_UM),
           "cfp_size": SMALL_CFP, "circle_scans": False, "workers": 1}


def _config(tmp: Path, **over) -> dict:
    return small_config(tmp, source={"phantom": PHANTOM}, measure={"shard_size": 1},
                        publish={"verifier_pass_rate": 0.5}, **over)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster(tmp_path):
    """`dask scheduler` and two one-thread `dask worker` processes (no nanny: killing one kills the worker)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    port, dash = _port(), _port()
    address = f"tcp://127.0.0.1:{port}"
    logs = tmp_path / "dask-logs"
    logs.mkdir()
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", f"127.0.0.1:{dash}"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=open(logs / "scheduler.log", "w"))]
    for i in range(2):
        procs.append(subprocess.Popen(
            [str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-nanny", "--name", f"w{i}",
             "--local-directory", str(tmp_path / f"w{i}")], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
            stderr=open(logs / f"worker{i}.log", "w")))
    with Client(address, timeout=120) as client:
        client.wait_for_workers(2, timeout=300)
        yield {"address": address, "dashboard": f"http://127.0.0.1:{dash}/status",
               "workers": {p.pid: p for p in procs[1:]}, "client": client}
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


def _kill_a_worker_mid_shard(client: Client, workers: dict, work: Path, done: threading.Event,
                             killed: list) -> None:
    """Once the measure stage runs (a study's media folder appeared, the merged table not yet), SIGKILL a
    worker the scheduler lists as processing a task (one thread each: the task is running there)."""
    pids = client.run(os.getpid)  # worker address -> pid
    while not done.is_set():
        media = work / "media"
        if media.is_dir() and any(media.iterdir()) and not (work / "biomarkers.parquet").exists():
            for addr, keys in client.processing().items():
                if keys and pids.get(addr) in workers:
                    os.kill(pids[addr], signal.SIGKILL)
                    killed.append({"pid": pids[addr], "tasks": [str(k) for k in keys]})
                    return
        time.sleep(0.1)


def test_build_on_a_cluster_survives_a_killed_worker(cluster, tmp_path):
    reference = run_build(BuildConfig.model_validate(_config(tmp_path / "plain")), demo_key=True)
    fingerprint = next(r for r in reference if r.stage == "publish").details["fingerprint"]

    cfg = tmp_path / "dask.yaml"
    cfg.write_text(yaml.safe_dump(_config(tmp_path / "dask", runner={"kind": "dask",
                                                                       "dask_address": cluster["address"]})))
    work = tmp_path / "dask" / "build"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    done, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_a_worker_mid_shard, daemon=True,
                              args=(cluster["client"], cluster["workers"], work, done, killed))
    killer.start()
    try:
        proc = subprocess.run([sys.executable, "-m", "grok", "build", str(cfg), "--json"], capture_output=True,
                              text=True, env=env, cwd=ROOT, timeout=1500)
    finally:
        done.set()
        killer.join(timeout=10)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert killed, "no measure shard was seen running on a worker"
    assert cluster["workers"][killed[0]["pid"]].wait(timeout=10) == -signal.SIGKILL
    survivor = next(pid for pid in cluster["workers"] if pid != killed[0]["pid"])
    servers = [c for c in psutil.Process(survivor).children(recursive=True) if "prefect.server" in " ".join(c.cmdline())]
    assert not servers  # the workers report to the flow's Prefect API; none started a server of its own
    res = json.loads(proc.stdout)
    assert res["fingerprint"] == fingerprint
    info = json.loads((work / "build.json").read_text())
    assert info["complete"] is True
    assert info["dask"]["scheduler"] == cluster["address"]
    assert info["dask"]["dashboard"] == cluster["dashboard"]
    assert info["dask"]["workers"] == 2 and info["dask"]["threads"] == 2
    measure = next(s for s in res["stages"] if s["stage"] == "measure")
    assert measure["n_out"] + measure["n_quarantined"] == measure["n_in"] == 6
