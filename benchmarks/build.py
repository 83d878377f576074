"""Build benchmark: the Prefect flow vs the same stages called directly, the Dask runner's speed-up, and
what a build costs per study (the figures the README's sizing model rests on).

Run as: .venv/bin/python benchmarks/build.py [--studies 100] [--work /tmp/grok-bench-build]
        [--geometry default|small] [--runs direct,flow_1thread,flow_threads,flow_dask]
        [--shard-size auto|N] [--n-workers 2] [--memory-curve 250,500] [--resume]

A phantom archive of STUDIES studies (STUDIES/2 subjects; ``--geometry small``: 8 x 128 x 128 OCT cubes
and 256-px photographs, the geometry of the thousands-of-studies runs) is generated once; then each
run builds from scratch on it, in a fresh work folder and registry: ``direct`` the stages as plain
library calls (``grok build --no-prefect``), ``flow_1thread`` the Prefect flow with a one-thread task
runner (the same order of work, so the difference is Prefect's overhead), ``flow_threads`` the flow
with one thread per core, ``flow_dask`` the flow on a local Dask cluster of ``--n-workers`` worker
processes. Every run is a separate ``grok build`` process with one thread per numeric library.

Prints JSON: per run the wall time, per-stage seconds, the peak resident memory of the driver (the
``grok build`` process) and of its largest child of each kind (worker processes, the Prefect server, grok's own
child processes by name: each single-process stage's (``source``, ``ingest``, ``records``, ``publish``), each
merge's (``measure-merge``, ``instruct-merge``) and the ``contracts``'; RSS and anonymous memory), the
measure stage's shards (sizes, seconds per study, busy seconds per worker process, when the first shard
started) and, on Dask, how long starting and warming the workers took; then Prefect's overhead share
((flow_1thread - direct) / flow_1thread; target <= 15 %), Prefect's overhead per study in the measure
stage, the speed-ups of threads and Dask (whole build and measure stage), the load average before and
after, and whether all builds published the same fingerprint.

Per run also: the driver's peak RSS in each stage (``driver_peak_rss_mb_by_stage``, from the flow's
"<stage>: N in" log lines; anonymous memory beside it, ``driver_peak_anon_mb`` and by stage
``driver_peak_anon_mb_by_stage``, since memory-mapped files count in RSS too), the number of Prefect task
runs, the published parquet files and their sizes, whether ``datasets.load_dataset`` maps the published train
split from disk (and the RSS it adds), and on Dask the orchestration time per study ((worker threads x measure
stage - worker busy time) / studies).
``--resume`` keeps each run's work folder and registry: the build resumes (finished measure shards are reused,
a stage whose code changed runs again) and publishes the next version, e.g. to measure a change to publication
on a large build without measuring it again. ``--memory-curve 250,500`` first builds phantoms of those sizes with the same runs and reports the driver's
peak RSS against the number of studies (``memory_curve``): flat when the stages stream their tables.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root for benchmarks.*
from benchmarks.memprobe import anon_kb, process_role  # noqa: E402

#: ``--geometry small``: the thousands-of-studies phantom (8 x 128 x 128 cubes over 1.28 x 6 x 6 mm, 256-px photos)
SMALL = {"oct_shape": (8, 128, 128), "oct_spacing_um": (10.0, 46.875, 750.0), "cfp_size": 256}
RUNS = {
    "direct": (("--no-prefect",), {"kind": "default"}),  # the stages as plain calls, one after another
    "flow_1thread": ((), {"kind": "default", "threads": 1}),  # same work order under Prefect
    "flow_threads": ((), {"kind": "default"}),  # one thread per core
    "flow_dask": ((), {"kind": "dask"}),  # a local Dask cluster of --n-workers worker processes
}


def _config(work: Path, archive: Path, cohort: Path, name: str, runner: dict, shard_size: int | str,
            pass_rate: float, instruct_shard_size: int | str = "auto") -> Path:
    cfg = {
        "work_dir": str(work / name / "build"),
        "source": {"archive": str(archive), "cohort": str(cohort)},
        "measure": {"shard_size": shard_size},
        "instruct": {"mode": "template", "shard_size": instruct_shard_size},
        "publish": {"name": "bench", "registry": str(work / name / "registry"), "deny_list": str(
            archive.parent / "truth" / "planted_identifiers.json"), "verifier_pass_rate": pass_rate},
        "runner": runner,
    }
    p = work / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


#: a stage's end in the flow's log: "HH:MM:SS.mmm | INFO    | Flow run 'x' - records: 60 in, ..."
STAGE_END = re.compile(r"^(\d\d:\d\d:\d\d\.\d+) \| INFO .* - (\w+): \d+ in, ")
TASK_DONE = re.compile(r"Task run '[^']+' - Finished in state ")


def _run(cfg: Path, *extra: str) -> tuple[float, dict, dict]:
    """One ``grok build``; its wall time, JSON result and peak RSS (MB) of the driver and of its largest
    descendant of each kind (the Prefect server, worker processes), sampled every 0.2 s; the driver's peak per
    stage (stages end where the flow logs their counts) and the number of Prefect task runs."""
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", MKL_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1")
    out, err = cfg.with_suffix(".out"), cfg.with_suffix(".err")
    t0 = time.perf_counter()
    samples: list[tuple[float, int, int]] = []  # (wall-clock time, driver RSS bytes, driver anonymous kB)
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen([sys.executable, "-m", "grok", "build", str(cfg), "--json", "--demo-key", *extra],
                                stdout=fo, stderr=fe, env=env)
        driver, peak, anon, others, others_anon = psutil.Process(proc.pid), 0, 0, {}, {}
        while proc.poll() is None:
            try:
                rss = driver.memory_info().rss
                peak = max(peak, rss)
                a = anon_kb(proc.pid)
                anon = max(anon, a)
                samples.append((time.time(), rss, a))
                for child in driver.children(recursive=True):
                    role = process_role(child)
                    others[role] = max(others.get(role, 0), child.memory_info().rss)
                    others_anon[role] = max(others_anon.get(role, 0), anon_kb(child.pid))
            except psutil.Error:
                pass
            time.sleep(0.2)
    wall = time.perf_counter() - t0
    log = err.read_text(errors="replace").splitlines()
    failed = None
    if proc.returncode != 0:  # what it measured up to the failure is still reported, with the error
        failed = next((line for line in reversed(log) if "Error: " in line), log[-1] if log else "")[-600:]
    by_stage, anon_by_stage, start = {}, {}, samples[0][0] if samples else 0.0
    day = dt.datetime.fromtimestamp(start).date()
    for line in log:
        m = STAGE_END.match(line)
        if not m:
            continue
        end = dt.datetime.combine(day, dt.time.fromisoformat(m.group(1))).timestamp()
        inside = [(r, a) for t, r, a in samples if start <= t <= end + 0.2]
        by_stage[m.group(2)] = round(max(r for r, _ in inside) / 2**20) if inside else None
        anon_by_stage[m.group(2)] = round(max(a for _, a in inside) / 1024) if inside else None
        start = end
    rss = {"driver_peak_rss_mb": round(peak / 2**20), "driver_peak_anon_mb": round(anon / 1024),
           **{f"{role}_peak_rss_mb": round(b / 2**20) for role, b in sorted(others.items())},
           **{f"{role}_peak_anon_mb": round(kb / 1024) for role, kb in sorted(others_anon.items())},
           "driver_peak_rss_mb_by_stage": by_stage or None, "driver_peak_anon_mb_by_stage": anon_by_stage or None,
           "prefect_task_runs": sum(1 for line in log if TASK_DONE.search(line)) or None}
    if failed is not None:
        rss["failed"] = failed
        return wall, {"stages": []}, rss
    return wall, json.loads(out.read_text()), rss


def _published(registry: Path) -> dict:
    """The published parquet files and their sizes; whether ``datasets.load_dataset`` maps the instructions'
    train split from disk (cache files, RSS added by loading it against the split's bytes)."""
    import datasets

    datasets.disable_progress_bars()
    versions = sorted((p for p in registry.glob("*/[0-9]*") if p.is_dir()),
                      key=lambda p: tuple(int(x) for x in p.name.split(".")))
    version = versions[-1] if versions else None  # the newest (a --resume run publishes the next one)
    files = sorted(p for p in version.rglob("*.parquet") if "/data/" in str(p)) if version else []
    out = {"parquet_files": len(files), "parquet_mb": {str(p.relative_to(version)): round(p.stat().st_size / 2**20, 2)
                                                      for p in files} if files else {},
           "largest_parquet_mb": round(max((p.stat().st_size for p in files), default=0) / 2**20, 2),
           "version": version.name if version else None,
           "version_bytes": sum(p.stat().st_size for p in version.rglob("*") if p.is_file()) if version else 0}
    if version is not None:
        before = psutil.Process().memory_info().rss
        ds = datasets.load_dataset(str(version), "instructions", split="train")
        out["load_dataset"] = {"rows": len(ds), "memory_mapped": bool(ds.cache_files),
                               "arrow_mb": round(ds.data.nbytes / 2**20, 1),
                               "rss_added_mb": round((psutil.Process().memory_info().rss - before) / 2**20, 1)}
    return out


def _stage(result: dict, name: str) -> dict:
    return next(s for s in result["stages"] if s["stage"] == name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=100)
    ap.add_argument("--work", type=Path, default=Path("/tmp/grok-bench-build"))
    ap.add_argument("--geometry", choices=("default", "small"), default="default")
    ap.add_argument("--runs", default=",".join(RUNS), help="comma-separated, of: " + ", ".join(RUNS))
    ap.add_argument("--shard-size", default="auto", help="measure.shard_size of every run: auto or a number")
    ap.add_argument("--instruct-shard-size", default="auto",
                    help="instruct.shard_size of every run: auto or a number (32 before session 27)")
    ap.add_argument("--n-workers", type=int, default=2, help="local Dask worker processes of flow_dask")
    ap.add_argument("--no-dask", action="store_true", help="leave out flow_dask")
    ap.add_argument("--resume", action="store_true", help="keep each run's folder: resume it, publish a new version")
    ap.add_argument("--memory-curve", default="", help="also build phantoms of these sizes (comma-separated) "
                    "with the same runs, first, and report the driver's peak RSS against the number of studies")
    args = ap.parse_args()
    curve = sorted({int(x) for x in args.memory_curve.split(",") if x.strip()} - {args.studies})
    points = {}
    for n in curve:  # the smaller builds of the curve, each a whole benchmark of its own
        res = subprocess.run([sys.executable, __file__, "--studies", str(n), "--work", str(args.work / f"curve_{n}"),
                              "--geometry", args.geometry, "--runs", args.runs, "--shard-size", args.shard_size,
                              "--instruct-shard-size", args.instruct_shard_size, "--n-workers", str(args.n_workers), *(["--no-dask"] if args.no_dask else [])],
                             check=True, capture_output=True, text=True)
        points[n] = json.loads(res.stdout)
        (args.work / f"curve_{n}.json").write_text(res.stdout)  # kept as each point finishes
        shutil.rmtree(args.work / f"curve_{n}", ignore_errors=True)
    from grok.phantom.archive import PhantomConfig, write_phantom

    runs = [r for r in args.runs.split(",") if r and not (args.no_dask and r == "flow_dask")]
    if unknown := set(runs) - set(RUNS):
        raise SystemExit(f"--runs: unknown {sorted(unknown)}; choose from {', '.join(RUNS)}")
    shard_size = args.shard_size if args.shard_size == "auto" else int(args.shard_size)
    instruct_size = args.instruct_shard_size if args.instruct_shard_size == "auto" else int(args.instruct_shard_size)
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
        if not args.resume:
            shutil.rmtree(args.work / name, ignore_errors=True)
        # 8 B-scans of 128 x 128 find false drusen in more normal eyes, whose rows the reasoner then skips
        cfg = _config(args.work, arch / "dicom", arch / "cohort.csv", name, runner, shard_size,
                      0.5 if args.geometry == "small" else 0.9, instruct_size)
        wall, res, rss = _run(cfg, *extra)
        if "failed" in rss:
            results[name] = {"wall_s": round(wall, 1), **rss}
            continue
        measure = _stage(res, "measure")
        info = json.loads((args.work / name / "build" / "build.json").read_text())
        shards = measure["details"].get("shards") or {}
        dask = info.get("dask") or {}
        if dask.get("threads") and shards.get("worker_busy_s"):
            # worker time outside the shards' studies (Prefect and Dask work, the last shard's tail) per study
            rss["orchestration_ms_per_study"] = round(1000 * (dask["threads"] * measure["seconds"]
                                                              - sum(shards["worker_busy_s"])) / measure["n_in"], 1)
        rss["published"] = _published(args.work / name / "registry")
        results[name] = {"wall_s": round(wall, 1), "stages_s": {s["stage"]: round(s["seconds"], 2)
                                                                 for s in res["stages"]},
                         "fingerprint": _stage(res, "publish")["details"]["fingerprint"], **rss,
                         "studies_in": measure["n_in"], "measure_shards": measure["details"].get("shards"),
                         "instruct_shards": _stage(res, "instruct")["details"].get("shards"),
                         "dask": info.get("dask"),
                         "published_bytes": rss["published"].pop("version_bytes"),
                         "build_folder_bytes": sum(p.stat().st_size for p in (args.work / name / "build").rglob("*")
                                                   if p.is_file())}
    out = {
        "benchmark": "build",
        "studies": args.studies,
        "geometry": args.geometry,
        "shard_size": args.shard_size,
        "instruct_shard_size": args.instruct_shard_size,
        "phantom_write_s": round(phantom_s, 1),
        "machine": {"cpus": os.cpu_count(), "load_avg_before": [round(x, 2) for x in load_before],
                    "load_avg_after": [round(x, 2) for x in os.getloadavg()]},
        "results": results,
        "same_fingerprint": len({r.get("fingerprint") for r in results.values()}) == 1,
    }
    if points:
        out["memory_curve"] = {run: {str(n): {k: v for k, v in p["results"][run].items() if k in (
            "driver_peak_rss_mb", "driver_peak_anon_mb", "driver_peak_rss_mb_by_stage", "driver_peak_anon_mb_by_stage",
            "wall_s") or k.endswith("_peak_anon_mb")}
            for n, p in sorted({**points, args.studies: out}.items())} for run in results}
        out["memory_curve_load_avg"] = {str(n): p["machine"] for n, p in sorted(points.items())}
    results_ok = {k: r for k, r in results.items() if "failed" not in r}
    wall = {k: r["wall_s"] for k, r in results_ok.items()}
    meas = {k: r["stages_s"]["measure"] for k, r in results_ok.items()}
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
