"""Does Prefect hold a build's task count? Thousands of empty shards run through the build's own runner.

Run as: .venv/bin/python benchmarks/prefect_tasks.py [--tasks 100,2700] [--n-workers 2] [--kind dask|default]
        [--submit window|map|both] [--work /tmp/grok-bench-prefect-tasks]

With ``shard_size: auto`` the measure stage has about ``studies / 64`` shards past ``256 x workers`` studies, so
a 170,000-study archive is 2,657 measure tasks (and 333 instruct tasks on 2 workers). Building that many studies
to find out whether the Prefect server, the flow's driver and the workers hold that many task runs would take
days here, so this benchmark runs ``N`` shards that do nothing through the same machinery: the task runner of a
build config's ``runner`` section and, on Dask, the flow's own temporary API server handed to the workers
(``flows.build.on_runner``), a task declared like the build's shard task (persisted JSON result, a cache key that
misses, as an unfinished shard's does), submitted as the build submits a stage's shards
(``flows.build.run_windowed``: two per worker unfinished at a time; ``--submit map``: all in one ``.map``, as
the build did before session 28; ``both``: one after the other). Each ``N`` runs in a fresh driver process with
a fresh Prefect home (its own database), sampled every 0.2 s.

Prints JSON: per way of submitting and ``N`` the driver's wall time, the shards' seconds and milliseconds per
task, the task runs the API holds for the flow run (all completed?), the peak RSS and anonymous memory of the
driver, of the Prefect server and of the largest worker; then the growth per task between the smallest and the
largest ``N``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root for benchmarks.*

from benchmarks.memprobe import anon_kb, process_role  # noqa: E402


def run_one(n: int, kind: str, n_workers: int, work: Path, submit: str) -> dict:
    """One driver process mapping ``n`` shards; its JSON and the peak memory of it and its descendants."""
    home = work / f"prefect_home_{n}"
    shutil.rmtree(home, ignore_errors=True)
    env = dict(os.environ, PREFECT_HOME=str(home), OMP_NUM_THREADS="1")
    out = work / f"tasks_{n}.json"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--driver", str(n), "--kind", kind,
                             "--n-workers", str(n_workers), "--submit", submit, "--out", str(out)], env=env)
    driver = psutil.Process(proc.pid)
    peak: dict[str, list[int]] = {}  # role -> [rss bytes, anonymous kB]
    while proc.poll() is None:
        try:
            for p, role in [(driver, "driver"), *((c, process_role(c)) for c in driver.children(recursive=True))]:
                cur = peak.setdefault(role, [0, 0])
                cur[0], cur[1] = max(cur[0], p.memory_info().rss), max(cur[1], anon_kb(p.pid))
        except psutil.Error:
            pass
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"the driver for {n} tasks failed (exit {proc.returncode}); see its output above")
    res = json.loads(out.read_text())
    res["process_wall_s"] = round(wall, 1)
    res["peak_mb"] = {role: {"rss": round(r / 2**20, 1), "anon": round(a / 1024, 1)} for role, (r, a) in peak.items()}
    return res


#: how long the flow waits for the API to show every task run completed before it reports what it shows
SETTLE_S = 120.0


def _task_run_states(get_client, flow_run_filter) -> dict[str, int]:
    """Task runs of a flow run by state type, as the API holds them (read in pages of 200)."""
    states: dict[str, int] = {}
    with get_client(sync_client=True) as client:
        offset = 0
        while True:
            page = client.read_task_runs(flow_run_filter=flow_run_filter, limit=200, offset=offset)
            for tr in page:
                name = tr.state.type.value if tr.state else "NONE"
                states[name] = states.get(name, 0) + 1
            if len(page) < 200:
                return states
            offset += 200


def driver(n: int, kind: str, n_workers: int, out: Path, submit: str) -> None:
    """The flow's process: map ``n`` empty shards (as a stage's shards are mapped) and count the task runs."""
    from flows import prefect_env

    prefect_env()
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.runtime import flow_run

    from flows.build import on_runner, run_windowed, shard_window
    from grok.stages.config import RunnerSettings

    def pending_key(context, parameters) -> str:  # an unfinished shard's key: a cache miss, then a persisted result
        return f"bench-pending-{uuid.uuid4().hex}"

    @task(name="shard", cache_key_fn=pending_key, persist_result=True, result_serializer="json")
    def shard(i: int) -> str:
        return f"shard-{i:06d}.parquet"

    @flow(name="prefect-task-scale")
    def scale(n: int) -> dict:
        t0 = time.perf_counter()
        if submit == "map":  # every shard at once (the build before session 28)
            results = shard.map(i=list(range(n))).result()
        else:  # as the build submits a stage's shards
            results = run_windowed(shard.submit, list(range(n)), shard_window(n_workers))
        map_s = time.perf_counter() - t0
        run_id = flow_run.get_id()
        t1 = time.perf_counter()
        while True:  # task states reach the API through its event pipeline, a little after the results
            states = _task_run_states(get_client, FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
            if states.get("COMPLETED", 0) >= n or time.perf_counter() - t1 > SETTLE_S:
                break
            time.sleep(1.0)
        return {"tasks": n, "results": len(results), "results_in_order": results == [f"shard-{i:06d}.parquet"
                                                                                     for i in range(n)],
                "map_s": round(map_s, 1), "ms_per_task": round(1000 * map_s / max(n, 1), 1),
                "task_runs_by_state": states, "api_settled_s": round(time.perf_counter() - t1, 1)}

    t0 = time.perf_counter()
    res = {"submit": submit}
    res |= on_runner(scale, RunnerSettings(kind=kind, n_workers=n_workers))(n=n)
    res["driver_wall_s"] = round(time.perf_counter() - t0, 1)
    out.write_text(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="100,2700", help="comma-separated task counts, each its own driver")
    ap.add_argument("--kind", choices=("dask", "default"), default="dask", help="the build config's runner.kind")
    ap.add_argument("--n-workers", type=int, default=2, help="local Dask worker processes")
    ap.add_argument("--submit", choices=("window", "map", "both"), default="window",
                    help="window: as the build submits shards (flows.build.run_windowed); map: all at once; both")
    ap.add_argument("--work", type=Path, default=None, help="folder for the Prefect homes (default: a temporary one)")
    ap.add_argument("--driver", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.driver is not None:
        driver(args.driver, args.kind, args.n_workers, args.out, args.submit)
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="grok-bench-prefect-tasks-"))
    work.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    counts = sorted({int(x) for x in args.tasks.split(",") if x.strip()})
    report = {"kind": args.kind, "n_workers": args.n_workers}
    for submit in (("window", "map") if args.submit == "both" else (args.submit,)):
        runs = {str(n): run_one(n, args.kind, args.n_workers, work, submit) for n in counts}
        lo, hi = runs[str(counts[0])], runs[str(counts[-1])]
        growth = {}
        if counts[-1] > counts[0]:
            dn = counts[-1] - counts[0]
            for role in ("driver", "prefect_server", "worker"):
                if role in lo["peak_mb"] and role in hi["peak_mb"]:
                    growth[role] = {"anon_kb_per_task": round(1024 * (hi["peak_mb"][role]["anon"]
                                                                      - lo["peak_mb"][role]["anon"]) / dn, 2)}
        report[submit] = {"runs": runs, "growth_per_task": growth}
    report |= {"load_before": [round(x, 2) for x in load0], "load_after": [round(x, 2) for x in os.getloadavg()]}
    print(json.dumps(report, indent=1))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
