"""Ingestion throughput and memory on phantom DICOM archives of 100 and 400 studies.

Run as: .venv/bin/python benchmarks/ingest.py [--studies 100 400] [--work /tmp/grok-bench-ingest]
        [--compress none jpeg-lossless j2k rle] [--page-cache warm|cold] [--geometry default|small]

A study is one patient-eye-visit (CFP + OCT cube, default 49 x 496 x 512). Each ingest runs in a
fresh subprocess so its peak RSS is its own. Prints one JSON object: files/s, MB/s of decoded pixel
data, MB/s of source bytes, peak RSS, for every archive size. Targets (issue 2): >= 50 MB/s of
DICOM pixel data on this 2-core machine, and peak memory that does not grow with the archive.
``--geometry small`` generates the thousands-of-studies phantom of ``benchmarks/build.py`` (8 x 128 x 128
cubes, 256-px photos, seed 7: the same archive as its ``--geometry small`` runs), where the per-file costs
dominate; ``kb_per_study`` is the peak RSS growth per study between the smallest and largest archive,
``anon_kb_per_study`` the same for the peak anonymous memory (RSS also counts the memory-mapped spool files).

``--compress`` also re-encodes each archive losslessly, as clinics store it (JPEG Lossless process 14
with dcmtk's ``dcmcjpeg``, JPEG 2000 Lossless and RLE Lossless with pydicom's encoders), and ingests
those copies; decoded pixels are the same, so MB/s of pixel data compares like with like. With
``--page-cache cold`` every archive file is evicted from the page cache (``posix_fadvise
DONTNEED``) before each first ingest, so the figure includes reading from disk rather than memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root for benchmarks.*
from benchmarks.memprobe import child_code  # noqa: E402

_CHILD = r"""
import json, resource, sys, threading, time
import grok  # noqa: F401 - as the CLI does: sets Arrow's memory pool before pyarrow is imported
from grok.ingest.deid import DeidConfig
from grok.ingest.pipeline import IngestConfig, ingest

from benchmarks.memprobe import anon_mb

peak_anon, done = [anon_mb()], threading.Event()
def sample():  # RSS counts the memory-mapped spool files too; anonymous memory is what the stage holds
    while not done.wait(0.01):
        peak_anon[0] = max(peak_anon[0], anon_mb())
threading.Thread(target=sample, daemon=True).start()
t = time.perf_counter()
r = ingest(sys.argv[1], sys.argv[2], IngestConfig(deid=DeidConfig(key="bench")))
dt = time.perf_counter() - t
done.set()
peak_anon[0] = max(peak_anon[0], anon_mb())
print(json.dumps({"wall_s": dt, "files": r.files_seen, "images": r.images, "quarantined": r.files_quarantined,
                  "pixel_bytes": r.pixel_bytes, "source_bytes": r.source_bytes, "cached": r.files_cached,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak_anon_mb": peak_anon[0],
                  "cpu_s": sum(resource.getrusage(resource.RUSAGE_SELF)[:2])}))
"""


def _evict(root: Path) -> None:
    """Drop ``root``'s files from the page cache (clean pages only; the next read comes from disk)."""
    for p in root.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _compress(src: Path, dst: Path, codec: str) -> None:
    """A losslessly re-encoded copy of the DICOM archive ``src`` (same folders and names)."""
    import pydicom
    from pydicom.uid import JPEG2000Lossless, RLELossless

    for f in sorted(src.rglob("*.dcm")):
        out = dst / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        if codec == "jpeg-lossless":
            # dcmcjpeg's default: JPEG Lossless, first-order prediction (process 14, selection value 1)
            subprocess.run(["dcmcjpeg", str(f), str(out)], check=True, capture_output=True)
            continue
        ds = pydicom.dcmread(f)
        ds.compress(JPEG2000Lossless if codec == "j2k" else RLELossless)
        ds.save_as(out)


def _ingest(src: Path, out: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", child_code(_CHILD), str(src), str(out)], capture_output=True, text=True,
                          check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, nargs="+", default=[100, 400])
    ap.add_argument("--work", type=Path, default=Path("/tmp/grok-bench-ingest"))
    ap.add_argument("--workers", type=int, default=2, help="processes used to generate the phantom")
    ap.add_argument("--compress", nargs="+", default=["none"], choices=["none", "jpeg-lossless", "j2k", "rle"])
    ap.add_argument("--page-cache", choices=["warm", "cold"], default="warm")
    ap.add_argument("--geometry", choices=["default", "small"], default="default")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root for benchmarks.*
    from benchmarks.build import SMALL
    from grok.phantom.archive import PhantomConfig, write_phantom

    small = args.geometry == "small"

    results = []
    for n_studies in args.studies:
        subjects = max(1, n_studies // 2)
        arch = args.work / (f"phantom_{n_studies}_small" if small else f"phantom_{n_studies}")
        if not (arch / "truth" / "truth.jsonl").exists():
            shutil.rmtree(arch, ignore_errors=True)
            t = time.perf_counter()
            write_phantom(PhantomConfig(subjects=subjects, seed=7 if small else 123, exports=False,
                                        workers=args.workers, **(SMALL if small else {})), arch)
            gen_s = time.perf_counter() - t
        else:
            gen_s = None
        for codec in args.compress:
            src = arch / "dicom"
            if codec != "none":
                src = args.work / f"phantom_{n_studies}_{codec}"
                if not src.exists():
                    _compress(arch / "dicom", src, codec)
            out = args.work / f"ingest_{n_studies}_{codec}"
            shutil.rmtree(out, ignore_errors=True)
            if args.page_cache == "cold":
                _evict(src)
            first = _ingest(src, out)
            again = _ingest(src, out)  # re-ingest: everything cached
            shutil.rmtree(out, ignore_errors=True)
            results.append({
                "studies": n_studies,
                "subjects": subjects,
                "geometry": args.geometry,
                "compression": codec,
                "page_cache": args.page_cache,
                "phantom_generation_s": None if gen_s is None else round(gen_s, 1),
                "files": first["files"],
                "images": first["images"],
                "quarantined": first["quarantined"],
                "wall_s": round(first["wall_s"], 2),
                "cpu_s": round(first["cpu_s"], 1),
                "files_per_s": round(first["files"] / first["wall_s"], 1),
                "pixel_mb_per_s": round(first["pixel_bytes"] / 1e6 / first["wall_s"], 1),
                "source_mb_per_s": round(first["source_bytes"] / 1e6 / first["wall_s"], 1),
                "pixel_gb": round(first["pixel_bytes"] / 1e9, 2),
                "source_gb": round(first["source_bytes"] / 1e9, 2),
                "peak_rss_mb": round(first["peak_rss_mb"], 1),
                "peak_anon_mb": round(first["peak_anon_mb"], 1),
                "reingest_wall_s": round(again["wall_s"], 2),
                "reingest_cached_files": again["cached"],
                "load_avg_1min": round(os.getloadavg()[0], 2),
            })
    print(json.dumps({
        "benchmark": "ingest",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "targets": {"pixel_mb_per_s": ">= 50", "peak_rss": "flat in archive size"},
        "results": results,
        "rss_growth_ratio": (round(results[-1]["peak_rss_mb"] / results[0]["peak_rss_mb"], 2)
                             if len(results) > 1 else None),
        **{name: (round(1024 * (results[-1][key] - results[0][key]) / (results[-1]["studies"] - results[0]["studies"]), 1)
                  if len(results) > 1 and results[-1]["studies"] != results[0]["studies"] else None)
           for name, key in (("kb_per_study", "peak_rss_mb"), ("anon_kb_per_study", "peak_anon_mb"))},
    }, indent=2))


if __name__ == "__main__":
    main()
