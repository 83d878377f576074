"""Build benchmark: the Prefect flow vs the same stages called directly, and the Dask runner's speed-up.

Run as: .venv/bin/python benchmarks/build.py [--studies 100] [--work /tmp/grok-bench-build]

A phantom archive of STUDIES studies (STUDIES/2 subjects, default geometry) is generated once; then
four builds run from scratch on it, each in a fresh work folder and registry: (1) the stages as
plain library calls, one after another (``grok build --no-prefect``), (2) the Prefect flow with a
one-thread task runner (the same order of work, so the difference is Prefect's overhead), (3) the
flow with Prefect's default thread pool, (4) the flow on a local Dask cluster of two worker
processes. Prints JSON: wall times, per-stage timings, Prefect's overhead share
((flow_1thread - direct) / flow_1thread; target <= 15 %), the speed-ups of threads and Dask, and
whether all builds published the same fingerprint.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml


def _config(work: Path, archive: Path, cohort: Path, name: str, runner: dict) -> Path:
    cfg = {
        "work_dir": str(work / name / "build"),
        "source": {"archive": str(archive), "cohort": str(cohort)},
        "measure": {"shard_size": 8},
        "instruct": {"mode": "template", "shard_size": 32},
        "publish": {"name": "bench", "registry": str(work / name / "registry"), "deny_list": str(
            archive.parent / "truth" / "planted_identifiers.json")},
        "runner": runner,
    }
    p = work / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _run(cfg: Path, *extra: str) -> tuple[float, dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "grok", "build", str(cfg), "--json", "--demo-key", *extra],
                          capture_output=True,
                          text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"build failed:\n{proc.stderr[-4000:]}")
    return wall, json.loads(proc.stdout)


def _stages(result: dict) -> dict[str, float]:
    return {s["stage"]: round(s["seconds"], 2) for s in result["stages"]}


def _fp(result: dict) -> str:
    return next(s for s in result["stages"] if s["stage"] == "publish")["details"]["fingerprint"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=100)
    ap.add_argument("--work", type=Path, default=Path("/tmp/grok-bench-build"))
    ap.add_argument("--no-dask", action="store_true")
    args = ap.parse_args()
    from grok.phantom.archive import PhantomConfig, write_phantom

    arch = args.work / f"phantom_{args.studies}"
    if not (arch / "truth" / "truth.jsonl").exists():
        shutil.rmtree(arch, ignore_errors=True)
        write_phantom(PhantomConfig(subjects=max(1, args.studies // 2), seed=7, exports=False, workers=2), arch)
    results = {}
    runs = (
        ("direct", ("--no-prefect",), {"kind": "default"}),  # the stages as plain calls, one after another
        ("flow_1thread", (), {"kind": "default", "threads": 1}),  # same work order under Prefect
        ("flow_threads", (), {"kind": "default"}),  # Prefect's default thread pool
        ("flow_dask", (), {"kind": "dask", "n_workers": 2}),  # a local Dask cluster, 2 worker processes
    )
    for name, extra, runner in runs:
        if runner["kind"] == "dask" and args.no_dask:
            continue
        shutil.rmtree(args.work / name, ignore_errors=True)
        cfg = _config(args.work, arch / "dicom", arch / "cohort.csv", name, runner)
        wall, res = _run(cfg, *extra)
        results[name] = {"wall_s": round(wall, 1), "stages_s": _stages(res), "fingerprint": _fp(res)}
    d, f = results["direct"]["wall_s"], results["flow_1thread"]["wall_s"]
    out = {
        "benchmark": "build",
        "studies": args.studies,
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]},
        "results": results,
        "prefect_overhead_share": round((f - d) / f, 3),
        "target_overhead_share": 0.15,
        "same_fingerprint": len({r["fingerprint"] for r in results.values()}) == 1,
    }
    out["threads_speedup_vs_1thread"] = round(f / results["flow_threads"]["wall_s"], 2)
    if "flow_dask" in results:
        out["dask_speedup_vs_1thread"] = round(f / results["flow_dask"]["wall_s"], 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
