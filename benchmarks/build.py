"""Build benchmark: the Prefect flow vs the same stages called directly, the Dask runner's speed-up, and
what a build costs per study (the figures the README's sizing model rests on).

Run as: .venv/bin/python benchmarks/build.py [--studies 100] [--work /tmp/grok-bench-build]
        [--geometry default|small] [--runs direct,flow_1thread,flow_threads,flow_dask]
        [--shard-size auto|N] [--n-workers 2]

A phantom archive of STUDIES studies (STUDIES/2 subjects; ``--geometry small``: 8 x 128 x 128 OCT cubes
and 256-px photographs, the geometry of the thousands-of-studies runs) is generated once; then each
run builds from scratch on it, in a fresh work folder and registry: ``direct`` the stages as plain
library calls (``grok build --no-prefect``), ``flow_1thread`` the Prefect flow with a one-thread task
runner (the same order of work, so the difference is Prefect's overhead), ``flow_threads`` the flow
with one thread per core, ``flow_dask`` the flow on a local Dask cluster of ``--n-workers`` worker
processes. Every run is a separate ``grok build`` process with one thread per numeric library.

Prints JSON: per run the wall time, per-stage seconds, the peak resident memory of the driver (the
``grok build`` process) and of its largest child of each kind (worker processes, the Prefect server), the
measure stage's shards (sizes, seconds per study, busy seconds per worker process, when the first shard
started) and, on Dask, how long starting and warming the workers took; then Prefect's overhead share
((flow_1thread - direct) / flow_1thread; target <= 15 %), Prefect's overhead per study in the measure
stage, the speed-ups of threads and Dask (whole build and measure stage), the load average before and
after, and whether all builds published the same fingerprint.
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

import psutil
import yaml

#: ``--geometry small``: the thousands-of-studies phantom (8 x 128 x 128 cubes over 1.28 x 6 x 6 mm, 256-px photos)
SMALL = {"oct_shape": (8, 128, 128), "oct_spacing_um": (10.0, 46.875, 750.0), "cfp_size": 256}
RUNS = {
    "direct": (("--no-prefect",), {"kind": "default"}),  # the stages as plain calls, one after another
    "flow_1thread": ((), {"kind": "default", "threads": 1}),  # same work order under Prefect
    "flow_threads": ((), {"kind": "default"}),  # one thread per core
    "flow_dask": ((), {"kind": "dask"}),  # a local Dask cluster of --n-workers worker processes
}


def _config(work: Path, archive: Path, cohort: Path, name: str, runner: dict, shard_size: int | str,
            pass_rate: float) -> Path:
    cfg = {
        "work_dir": str(work / name / "build"),
        "source": {"archive": str(archive), "cohort": str(cohort)},
        "measure": {"shard_size": shard_size},
        "instruct": {"mode": "template", "shard_size": 32},
        "publish": {"name": "bench", "registry": str(work / name / "registry"), "deny_list": str(
            archive.parent / "truth" / "planted_identifiers.json"), "verifier_pass_rate": pass_rate},
        "runner": runner,
    }
    p = work / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _role(proc: psutil.Process) -> str:
    cmd = " ".join(proc.cmdline())
    return "prefect_server" if "prefect.server" in cmd else "worker" if "multiprocessing" in cmd else "other"


def _run(cfg: Path, *extra: str) -> tuple[float, dict, dict]:
    """One ``grok build``; its wall time, JSON result and peak RSS (MB) of the driver and of its largest
    descendant of each kind (the Prefect server, worker processes), sampled every 0.2 s."""
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", MKL_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1")
    out, err = cfg.with_suffix(".out"), cfg.with_suffix(".err")
    t0 = time.perf_counter()
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen([sys.executable, "-m", "grok", "build", str(cfg), "--json", "--demo-key", *extra],
                                stdout=fo, stderr=fe, env=env)
        driver, peak, others = psutil.Process(proc.pid), 0, {}
        while proc.poll() is None:
            try:
                peak = max(peak, driver.memory_info().rss)
                for child in driver.children(recursive=True):
                    role = _role(child)
                    others[role] = max(others.get(role, 0), child.memory_info().rss)
            except psutil.Error:
                pass
            time.sleep(0.2)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"build failed:\n{err.read_text()[-4000:]}")
    rss = {"driver_peak_rss_mb": round(peak / 2**20),
           **{f"{role}_peak_rss_mb": round(b / 2**20) for role, b in sorted(others.items())}}
    return wall, json.loads(out.read_text()), rss


def _stage(result: dict, name: str) -> dict:
    return next(s for s in result["stages"] if s["stage"] == name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=100)
    ap.add_argument("--work", type=Path, default=Path("/tmp/grok-bench-build"))
    ap.add_argument("--geometry", choices=("default", "small"), default="default")
    ap.add_argument("--runs", default=",".join(RUNS), help="comma-separated, of: " + ", ".join(RUNS))
    ap.add_argument("--shard-size", default="auto", help="measure.shard_size of every run: auto or a number")
    ap.add_argument("--n-workers", type=int, default=2, help="local Dask worker processes of flow_dask")
    ap.add_argument("--no-dask", action="store_true", help="leave out flow_dask")
    args = ap.parse_args()
    from grok.phantom.archive import PhantomConfig, write_phantom

    runs = [r for r in args.runs.split(",") if r and not (args.no_dask and r == "flow_dask")]
    if unknown := set(runs) - set(RUNS):
        raise SystemExit(f"--runs: unknown {sorted(unknown)}; choose from {', '.join(RUNS)}")
    shard_size = args.shard_size if args.shard_size == "auto" else int(args.shard_size)
    load_before = os.getloadavg()
    arch = args.work / f"phantom_{args.studies}_{args.geometry}"
    t0 = time.perf_counter()
    if not (arch / "truth" / "truth.jsonl").exists():
        shutil.rmtree(arch, ignore_errors=True)
        write_phantom(PhantomConfig(subjects=max(1, args.studies // 2), seed=7, exports=False, workers=2,
                                    **(SMALL if args.geometry == "small" else {})), arch)
    phantom_s = time.perf_counter() - t0
    results = {}
    for name in runs:
        extra, runner = RUNS[name]
        if runner["kind"] == "dask":
            runner = {**runner, "n_workers": args.n_workers}
        shutil.rmtree(args.work / name, ignore_errors=True)
        # 8 B-scans of 128 x 128 find false drusen in more normal eyes, whose rows the reasoner then skips
        cfg = _config(args.work, arch / "dicom", arch / "cohort.csv", name, runner, shard_size,
                      0.5 if args.geometry == "small" else 0.9)
        wall, res, rss = _run(cfg, *extra)
        measure = _stage(res, "measure")
        info = json.loads((args.work / name / "build" / "build.json").read_text())
        results[name] = {"wall_s": round(wall, 1), "stages_s": {s["stage"]: round(s["seconds"], 2)
                                                                 for s in res["stages"]},
                         "fingerprint": _stage(res, "publish")["details"]["fingerprint"], **rss,
                         "studies_in": measure["n_in"], "measure_shards": measure["details"].get("shards"),
                         "dask": info.get("dask"),
                         "published_bytes": sum(p.stat().st_size for p in (args.work / name / "registry").rglob("*")
                                                if p.is_file()),
                         "build_folder_bytes": sum(p.stat().st_size for p in (args.work / name / "build").rglob("*")
                                                   if p.is_file())}
    out = {
        "benchmark": "build",
        "studies": args.studies,
        "geometry": args.geometry,
        "shard_size": args.shard_size,
        "phantom_write_s": round(phantom_s, 1),
        "machine": {"cpus": os.cpu_count(), "load_avg_before": [round(x, 2) for x in load_before],
                    "load_avg_after": [round(x, 2) for x in os.getloadavg()]},
        "results": results,
        "same_fingerprint": len({r["fingerprint"] for r in results.values()}) == 1,
    }
    wall = {k: r["wall_s"] for k, r in results.items()}
    meas = {k: r["stages_s"]["measure"] for k, r in results.items()}
    if "direct" in wall and "flow_1thread" in wall:
        out["prefect_overhead_share"] = round((wall["flow_1thread"] - wall["direct"]) / wall["flow_1thread"], 3)
        out["target_overhead_share"] = 0.15
        out["prefect_measure_overhead_ms_per_study"] = round(
            1000 * (meas["flow_1thread"] - meas["direct"]) / args.studies, 1)
    for k in ("flow_threads", "flow_dask"):
        if k in wall and "flow_1thread" in wall:
            out[f"{k}_speedup_vs_1thread"] = {"build": round(wall["flow_1thread"] / wall[k], 2),
                                              "measure": round(meas["flow_1thread"] / meas[k], 2)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
