"""Memory of a long table's validation (issue 22): ``grok.contracts.validate`` on a build folder's table and on
copies of it made k times longer (every id made distinct per copy, the values kept), each validated in a fresh
process (as a publication's contracts child does) with its anonymous memory (``RssAnon``) sampled every 0.05 s.
Prints JSON: rows, peak and final anonymous memory, seconds and outcome per length, and the growth per 100,000
rows from the shortest to the longest.

Run as::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/contracts.py BUILD_DIR --table instructions --times 1,2,4

``BUILD_DIR`` holds the table (``instructions.parquet``, ``biomarkers.parquet``); the copies are written to ``--work``
(default: a temporary folder next to the build, removed afterwards), the instruction rows with the ``split`` column
publication adds (by patient, 8 : 1 : 1), so the whole-table checks are a publication's.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from benchmarks.memprobe import anon_kb, child_code  # noqa: E402

#: Text id columns made distinct per copy by a suffix; ``patient_id`` keeps its contract's form (P + 16 hex digits).
SUFFIXED = ("id", "study_id", "sample_id", "image_id", "source_key")
#: A patient's split by the last hex digits of its id: train, validation, test as 8 : 1 : 1.
SPLITS = ["train"] * 8 + ["validation", "test"]

#: The validation a fresh process runs: the table's file read a batch at a time, as a publication's child reads it.
CODE = """
import json, sys, tempfile, time
from pathlib import Path
import grok
from grok.contracts import validate
t = time.perf_counter()
r = validate(Path(sys.argv[1]), sys.argv[2], docs_dir=Path(tempfile.mkdtemp(dir=sys.argv[3])))
print(json.dumps({"s": round(time.perf_counter() - t, 1), "success": r.success, "rows": r.n_rows,
                  "failed": [o.expectation + "(" + str(o.column) + ")" for o in r.failed] + r.schema_problems}))
"""


def _copy(batch: pa.RecordBatch, k: int, split: bool) -> pa.RecordBatch:
    """Copy ``k`` of a batch: text ids suffixed ``-c<k>`` (copy 0 as it is), patient ids offset in their hex
    digits; with ``split``, a ``split`` column by patient (8 : 1 : 1), as publication adds it before the contracts."""
    cols = {}
    for name in batch.schema.names:
        col = batch.column(name)
        text = pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
        if k and name in SUFFIXED and text:
            col = pc.binary_join_element_wise(col, pa.scalar(f"-c{k}", col.type), pa.scalar("", col.type))
        elif k and name == "patient_id" and text:
            col = pa.array([None if v is None else "P" + format((int(v[1:], 16) + k * 0x9E3779B97F4A7C15) % 2**64,
                                                                 "016x") for v in col.to_pylist()], col.type)
        cols[name] = col
    if split:
        cols["split"] = pa.array([SPLITS[int(p[-4:], 16) % 10] for p in cols["patient_id"].to_pylist()], pa.string())
    return pa.RecordBatch.from_pydict(cols)


def longer(src: Path, dst: Path, times: int, split: bool) -> int:
    """``src`` written ``times`` over into ``dst`` (copy k's ids distinct); its rows."""
    f = pq.ParquetFile(src)
    rows = 0
    writer = None
    try:
        for k in range(times):
            for batch in f.iter_batches(batch_size=4096):
                out = _copy(batch, k, split)
                writer = writer or pq.ParquetWriter(dst, out.schema)
                writer.write_batch(out)
                rows += batch.num_rows
    finally:
        if writer is not None:
            writer.close()
    return rows


def measure(path: Path, table: str, work: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.Popen([sys.executable, "-c", child_code(CODE), str(path), table, str(work)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = last = 0
    while proc.poll() is None:
        last = anon_kb(proc.pid) or last
        peak = max(peak, last)
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"validating {path} failed:\n{err[-3000:]}")
    res = json.loads(out.strip().splitlines()[-1])
    return {**res, "peak_anon_mb": round(peak / 1024, 1), "last_anon_mb": round(last / 1024, 1)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("build", type=Path)
    ap.add_argument("--table", default="instructions", choices=["instructions", "biomarkers"])
    ap.add_argument("--times", default="1,2,4", help="lengths, as multiples of the build's table")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args(argv)
    src = args.build / f"{args.table}.parquet"
    if not src.exists():
        raise SystemExit(f"{src} not found: give a build folder with {args.table}.parquet (grok build's output)")
    work = args.work or Path(tempfile.mkdtemp(dir=args.build, prefix=".contracts-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    points = {}
    try:
        for k in sorted({int(x) for x in args.times.split(",")}):
            path = work / f"{args.table}-x{k}.parquet"
            split = args.table == "instructions" and "split" not in pq.read_schema(src).names
            rows = longer(src, path, k, split)
            points[k] = {"rows": rows, **measure(path, args.table, work)}
            path.unlink()
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    ks = sorted(points)
    out = {"benchmark": "contracts_memory", "table": args.table, "build": args.build.name,
           "machine": {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)},
           "points": {str(k): points[k] for k in ks}}
    if len(ks) > 1:
        a, b = points[ks[0]], points[ks[-1]]
        out["peak_anon_mb_per_100000_rows"] = round(1e5 * (b["peak_anon_mb"] - a["peak_anon_mb"])
                                                    / (b["rows"] - a["rows"]), 2)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
