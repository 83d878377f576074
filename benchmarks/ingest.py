"""Ingestion throughput and memory on phantom DICOM archives of 100 and 400 studies.

Run as: .venv/bin/python benchmarks/ingest.py [--studies 100 400] [--work /tmp/grok-bench-ingest]

A study is one patient-eye-visit (CFP + OCT cube, default 49 x 496 x 512). Each ingest runs in a
fresh subprocess so its peak RSS is its own. Prints one JSON object: files/s, MB/s of decoded pixel
data, MB/s of source bytes, peak RSS, for every archive size. Targets (issue 2): >= 50 MB/s of
DICOM pixel data on this 2-core machine, and peak memory that does not grow with the archive.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

_CHILD = r"""
import json, resource, sys, time
from grok.ingest.deid import DeidConfig
from grok.ingest.pipeline import IngestConfig, ingest
t = time.perf_counter()
r = ingest(sys.argv[1], sys.argv[2], IngestConfig(deid=DeidConfig(key="bench")))
dt = time.perf_counter() - t
print(json.dumps({"wall_s": dt, "files": r.files_seen, "images": r.images, "quarantined": r.files_quarantined,
                  "pixel_bytes": r.pixel_bytes, "source_bytes": r.source_bytes, "cached": r.files_cached,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _ingest(src: Path, out: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(src), str(out)], capture_output=True, text=True,
                          check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, nargs="+", default=[100, 400])
    ap.add_argument("--work", type=Path, default=Path("/tmp/grok-bench-ingest"))
    ap.add_argument("--workers", type=int, default=2, help="processes used to generate the phantom")
    args = ap.parse_args()
    from grok.phantom.archive import PhantomConfig, write_phantom

    results = []
    for n_studies in args.studies:
        subjects = max(1, n_studies // 2)
        arch = args.work / f"phantom_{n_studies}"
        if not (arch / "truth" / "truth.jsonl").exists():
            shutil.rmtree(arch, ignore_errors=True)
            t = time.perf_counter()
            write_phantom(PhantomConfig(subjects=subjects, seed=123, exports=False, workers=args.workers), arch)
            gen_s = time.perf_counter() - t
        else:
            gen_s = None
        out = args.work / f"ingest_{n_studies}"
        shutil.rmtree(out, ignore_errors=True)
        cold = _ingest(arch / "dicom", out)
        warm = _ingest(arch / "dicom", out)  # re-ingest: everything cached
        shutil.rmtree(out, ignore_errors=True)
        results.append({
            "studies": n_studies,
            "subjects": subjects,
            "phantom_generation_s": None if gen_s is None else round(gen_s, 1),
            "files": cold["files"],
            "images": cold["images"],
            "quarantined": cold["quarantined"],
            "wall_s": round(cold["wall_s"], 2),
            "files_per_s": round(cold["files"] / cold["wall_s"], 1),
            "pixel_mb_per_s": round(cold["pixel_bytes"] / 1e6 / cold["wall_s"], 1),
            "source_mb_per_s": round(cold["source_bytes"] / 1e6 / cold["wall_s"], 1),
            "pixel_gb": round(cold["pixel_bytes"] / 1e9, 2),
            "peak_rss_mb": round(cold["peak_rss_mb"], 1),
            "reingest_wall_s": round(warm["wall_s"], 2),
            "reingest_cached_files": warm["cached"],
        })
    print(json.dumps({
        "benchmark": "ingest",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "targets": {"pixel_mb_per_s": ">= 50", "peak_rss": "flat in archive size"},
        "results": results,
        "rss_growth_ratio": (round(results[-1]["peak_rss_mb"] / results[0]["peak_rss_mb"], 2)
                             if len(results) > 1 else None),
    }, indent=2))


if __name__ == "__main__":
    main()
