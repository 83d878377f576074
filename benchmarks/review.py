"""Review app speed on a large synthetic table: queue pages under each filter, row pages, decision saves, memory.

Run as: OMP_NUM_THREADS=1 python benchmarks/review.py [--rows 100000] [--build BUILD_DIR] [--out FILE.json]

The table is a real phantom build's verified rows (``--build``, or a small phantom built through every stage but
publication into a temporary folder), each repeated under new row ids up to ``--rows`` rows, with the build's
records and media. The app is served by uvicorn in this process and driven over HTTP (httpx), so every figure
includes request parsing, the filter, rendering and the response. Targets (issue 17): the queue's first page
with any filter <= 300 ms, a row page <= 200 ms, a decision saved <= 50 ms, memory flat in the rows viewed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import uvicorn

from grok.review.app import create_app, wait_until_served
from grok.review.source import ReviewSource
from grok.review.store import Store

SMALL = {"subjects": 7, "seed": 1, "oct_shape": [5, 160, 128], "oct_spacing_um": [8.0, 46.875, 1500.0],
         "cfp_size": 384, "circle_scans": True}


def _small_build(tmp: Path) -> Path:
    """A phantom build through every stage but publication."""
    from grok.stages.config import BuildConfig
    from grok.stages.runner import STAGES, BuildFolder

    os.environ.setdefault("GROK_PSEUDONYM_KEY", "benchmark-only-key")
    cfg = BuildConfig.model_validate({"work_dir": str(tmp / "build"), "source": {"phantom": SMALL},
                                      "instruct": {"mode": "template", "seed": 0},
                                      "publish": {"name": "bench", "registry": str(tmp / "registry")}})
    folder = BuildFolder(cfg)
    for stage in STAGES:
        if stage.name == "publish":
            break
        stage.run(folder)
    return Path(cfg.work_dir)


def synthetic_build(src: Path, out: Path, rows: int) -> Path:
    """``out``: ``src``'s verified rows repeated under new ids up to ``rows``, with its records and media."""
    out.mkdir(parents=True)
    t = pq.read_table(src / "instructions.parquet")
    reps = -(-rows // t.num_rows)
    big = pa.concat_tables([t] * reps).slice(0, rows)
    ids = [f"{i:06d}-{x}" for i, x in enumerate(big.column("id").to_pylist())]
    big = big.set_column(big.schema.get_field_index("id"), "id", pa.array(ids))
    pq.write_table(big, out / "instructions.parquet", row_group_size=10000)
    shutil.copyfile(src / "records.jsonl", out / "records.jsonl")
    (out / "media").symlink_to((src / "media").resolve())
    return out


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _timed(client: httpx.Client, method: str, url: str, **kw) -> tuple[float, httpx.Response]:
    t = time.perf_counter()
    r = client.request(method, url, **kw)
    dt = (time.perf_counter() - t) * 1000
    r.raise_for_status()
    return dt, r


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--build", type=Path, help="A build folder whose verified rows to repeat (default: build one).")
    ap.add_argument("--repeat", type=int, default=5, help="Requests per queue filter (the median is reported).")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="grok-review-bench-"))
    try:
        src = args.build or _small_build(tmp)
        t0 = time.perf_counter()
        build = synthetic_build(src, tmp / "big", args.rows)
        make_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        source = ReviewSource(build)
        load_s = time.perf_counter() - t0
        store = Store(tmp / "reviews.sqlite")
        t0 = time.perf_counter()
        app = create_app(source, store, double_share=0.1)
        app_s = time.perf_counter() - t0
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        th = threading.Thread(target=server.run, daemon=True)
        th.start()
        base = f"http://127.0.0.1:{port}"
        wait_until_served(base + "/login")
        c = httpx.Client(base_url=base, timeout=30)
        c.post("/api/login", json={"name": "bench"}).raise_for_status()
        rows = source.rows
        some = rows.iloc[len(rows) // 2]
        reason = next((r.split(" ")[0] for r in rows["reasons"] if r), "")
        filters = {
            "none": {}, "family": {"family": some["task"]}, "category": {"category": some["label"]},
            "verdict": {"verdict": "passed"}, "reason": {"reason": reason} if reason else {"verdict": "failed"},
            "state_unreviewed": {"state": "unreviewed"}, "state_reviewed": {"state": "reviewed"},
            "my_open_rows": {"todo": "1"}, "curator": {"curator": "bench"},
            "text": {"q": "thickness"}, "text_rare": {"q": str(some["row_id"])[:6]},
            "combined": {"family": some["task"], "category": some["label"], "state": "unreviewed", "q": "the",
                         "sort": "-score"},
        }
        # decisions first, so the state and curator filters select something
        html = c.get(f"/row/{rows['row_id'].iat[0]}").text
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', html).group(1)
        save_ms = []
        step = max(1, len(rows) // 400)
        for k, i in enumerate(range(0, len(rows), step)):
            rid, h = rows["row_id"].iat[i], rows["hash"].iat[i]
            body = {"action": "accept", "content_hash": h} if k % 3 else \
                {"action": "reject", "reason_code": "other", "content_hash": h}
            dt, _ = _timed(c, "POST", f"/api/decision/{rid}", json=body, headers={"X-CSRF-Token": csrf})
            save_ms.append(dt)
        queue = {}
        for name, q in filters.items():
            times = []
            for _ in range(args.repeat):
                dt, r = _timed(c, "GET", "/", params=q)
                times.append(dt)
            n = re.search(r"<b>(\d+)</b> of", r.text)
            queue[name] = {"median_ms": round(statistics.median(times), 1), "max_ms": round(max(times), 1),
                           "rows_matching": int(n.group(1)) if n else None}
        next_ms = []
        for i in range(0, len(rows), max(1, len(rows) // 50)):
            dt, _ = _timed(c, "GET", f"/api/next/{rows['row_id'].iat[i]}",
                           params={"from": "state=unreviewed&family=" + str(some["task"])})
            next_ms.append(dt)
        row_ms = []
        rss = {}
        view = list(range(0, len(rows), max(1, len(rows) // 1000)))[:1000]
        for k, i in enumerate(view, 1):
            dt, _ = _timed(c, "GET", f"/row/{rows['row_id'].iat[i]}")
            row_ms.append(dt)
            if k in (100, 1000):
                rss[k] = round(_rss_mb(), 1)
        server.should_exit = True
        th.join(10)

        def pct(xs, p):
            xs = sorted(xs)
            return round(xs[min(len(xs) - 1, int(p * len(xs)))], 1)

        result = {
            "rows": len(rows), "source_rows": pq.read_metadata(src / "instructions.parquet").num_rows,
            "make_table_s": round(make_s, 2), "load_source_s": round(load_s, 2), "create_app_s": round(app_s, 2),
            "queue_first_page_ms": queue,
            "queue_worst_median_ms": max(v["median_ms"] for v in queue.values()),
            "row_page_ms": {"n": len(row_ms), "median": pct(row_ms, 0.5), "p95": pct(row_ms, 0.95),
                            "max": round(max(row_ms), 1)},
            "next_row_in_queue_ms": {"n": len(next_ms), "median": pct(next_ms, 0.5), "p95": pct(next_ms, 0.95)},
            "decision_save_ms": {"n": len(save_ms), "median": pct(save_ms, 0.5), "p95": pct(save_ms, 0.95),
                                 "max": round(max(save_ms), 1)},
            "rss_mb_after_rows_viewed": rss,
            "rss_growth_mb_100_to_1000_rows": round(rss[1000] - rss[100], 1) if 1000 in rss else None,
            "targets": {"queue_ms": 300, "row_ms": 200, "save_ms": 50},
            "load_average": os.getloadavg(), "python": sys.version.split()[0],
        }
        text = json.dumps(result, indent=2)
        print(text)
        if args.out:
            args.out.write_text(text + "\n")
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
