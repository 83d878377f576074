"""Duplicate checks' index: on disk (``grok.splits``, a SQLite file) against datasketch's in-memory
``MinHashLSH`` (the code before 8157749, kept here as the reference): same results, CPU time, memory.

Run as: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dedup_index.py [--build DIR | --rows 30000]
        [--rounds 3] [--memory 6593,26372] [--tracemalloc] [--index-rows 1000000] [--work /tmp/grok-bench-dedup]

The workload is publication's: ``dedup_texts`` over every row in id order, then ``decontaminate_texts`` of
the train rows (patients whose hash is not 0 mod 5) against the others. Texts are a build folder's instruction
rows as publication compares them (``grok.publish._row_text`` of ``DIR/instructions.parquet``) or, without
``--build``, ``--rows`` generated report-like texts of about 1 KB (families of near duplicates).

* paired A/B: the reference and the on-disk index alternate in one process for ``--rounds`` rounds (CPU
  seconds, median) and must return identical results;
* ``--memory``: each implementation on the first K rows in a fresh process: peak anonymous memory (RssAnon,
  sampled every 5 ms) above its start (after ``malloc_trim``) and, with ``--tracemalloc``, the traced Python peak (a second pass);
* ``--index-rows N``: the index operations alone (random signatures, no MinHash) for N rows: CPU per
  100,000 rows, anonymous memory and the index file's size as it grows.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import pyarrow.parquet as pq
from datasketch import MinHashLSH

from grok import splits
from grok.publish import _row_text
from grok.splits import _minhash, normalise_text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root for benchmarks.*
from benchmarks.memprobe import anon_kb  # noqa: E402


def _h(text):
    return hashlib.sha256(normalise_text(text).encode()).hexdigest()


def ref_dedup_texts(items, *, threshold=0.9, num_perm=128, tmp=None, multi=None):
    """grok.splits.dedup_texts before the on-disk index (in memory). ``multi``: a list that receives the ids
    of rows that hit more than one kept row (so a test can see it exercised the choice of hit); ``tmp`` is ignored (the
    signature of grok.splits')."""
    seen_exact, kept, removed = {}, [], []
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    for rid, text in items:
        h = _h(text)
        if h in seen_exact:
            removed.append({"id": rid, "duplicate_of": seen_exact[h], "reason": "exact duplicate"})
            continue
        mh = _minhash(text, num_perm)
        hits = lsh.query(mh)
        if hits:
            if multi is not None and len(hits) > 1:
                multi.append(rid)
            removed.append({"id": rid, "duplicate_of": sorted(hits)[0],
                            "reason": f"near duplicate (Jaccard >= {threshold})"})
            continue
        seen_exact[h] = rid
        lsh.insert(rid, mh)
        kept.append(rid)
    return kept, removed


def ref_decontaminate_texts(train, held_out, *, threshold=0.9, num_perm=128, tmp=None, multi=None):
    """grok.splits.decontaminate_texts before the on-disk index (in memory)."""
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    exact = {}
    for rid, text in held_out:
        lsh.insert(rid, _minhash(text, num_perm))
        exact[_h(text)] = rid
    kept, removed = [], []
    for rid, text in train:
        h = _h(text)
        hits = [exact[h]] if h in exact else lsh.query(_minhash(text, num_perm))
        if multi is not None and len(hits) > 1:
            multi.append(rid)
        if hits:
            removed.append({"id": rid, "duplicate_of": sorted(hits)[0], "reason": "contaminates a held-out split"})
        else:
            kept.append(rid)
    return kept, removed


IMPLS = {"memory": (ref_dedup_texts, ref_decontaminate_texts), "disk": (splits.dedup_texts, splits.decontaminate_texts)}

_WORDS = ("the central subfield thickness is um within normal limits for age thickened thinned intraretinal "
          "subretinal fluid present absent in the inner outer ring drusen volume mm3 retinal nerve fibre layer "
          "superior inferior nasal temporal sector cup-to-disc ratio vertical optic disc macula fovea ellipsoid "
          "zone intact disrupted geographic atrophy area vessel density arteriovenous ratio left right eye").split()


def load_texts(build: Path | None, rows: int) -> list[tuple[str, str, str]]:
    """(id, patient id, text) in id order."""
    if build is not None:
        path = build / "instructions.parquet"
        if not path.is_file():
            sys.exit(f"{path} not found: give --build a build folder with instructions.parquet (or --rows N)")
        t = pq.read_table(path, columns=["id", "patient_id", "messages", "images"]).to_pylist()
        return [(r["id"], r["patient_id"], _row_text(r)) for r in sorted(t, key=lambda r: r["id"])]
    rng = random.Random(0)
    out = []
    while len(out) < rows:
        base = [rng.choice(_WORDS) if rng.random() > 0.15 else f"{rng.uniform(0, 400):.1f}" for _ in range(170)]
        for _ in range(rng.choice([1, 1, 1, 2, 3])):  # a family: the text and variants with a few words changed
            v = list(base)
            for _ in range(rng.choice([0, 1, 2, 5, 10])):
                v[rng.randrange(len(v))] = rng.choice(_WORDS)
            out.append((f"instr-{len(out):08d}", f"P{rng.randrange(rows // 6 + 1):07d}", " ".join(v)))
    return sorted(out[:rows])


def work(impl: str, items, tmp: Path):
    dedup, decon = IMPLS[impl]
    d = dedup(((i, t) for i, _, t in items), tmp=tmp)
    held = [p for p in items if int(hashlib.sha256(p[1].encode()).hexdigest(), 16) % 5 == 0]
    train = [p for p in items if int(hashlib.sha256(p[1].encode()).hexdigest(), 16) % 5 != 0]
    c = decon(((i, t) for i, _, t in train), ((i, t) for i, _, t in held), tmp=tmp)
    return d, c


def rss_anon() -> int:
    return anon_kb() * 1024


def child(args, items) -> dict:
    impl, n = args.child.split(":")
    part = items[: int(n)]
    work(impl, part[:200], args.work)  # warm: imports, first-use caches
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # loading the texts freed memory that malloc would reuse unseen
    base, peak, stop = rss_anon(), [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_anon())
            time.sleep(0.005)

    th = threading.Thread(target=sample)
    th.start()
    t = time.process_time()
    out = work(impl, part, args.work)
    cpu = time.process_time() - t
    stop.set()
    th.join()
    res = {"impl": impl, "rows": len(part), "cpu_s": round(cpu, 2), "rss_anon_peak_growth_mb": round((peak[0] - base) / 2**20, 1)}
    del out
    gc.collect()
    if args.tracemalloc:
        tracemalloc.start()
        work(impl, part, args.work)
        res["tracemalloc_peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
        tracemalloc.stop()
    return res


def index_scale(n: int, work_dir: Path) -> list[dict]:
    """The on-disk index's operations for ``n`` rows of random signatures (every row new: dedup's worst case)."""
    rng, out = random.Random(0), []
    base = rss_anon()
    with splits._DiskLSH(0.9, 128, work_dir) as ix:
        width = ix.ranges[-1][1] * 4
        t = time.process_time()
        for i in range(n):
            raw, sha = rng.randbytes(width), rng.randbytes(32)
            sig = (raw, [splits._h64(hashlib.blake2b(raw[a * 4:b * 4], digest_size=8).digest()) for a, b in ix.ranges])
            if ix.exact(sha) is None and not ix.query(sig):
                ix.insert(f"instr-{i:09d}-abcdefgh", sig, sha, fresh=True)
            if (i + 1) % 100_000 == 0 or i + 1 == n:
                size = os.path.getsize(Path(ix._dir.name) / "index.sqlite")
                out.append({"rows": i + 1, "cpu_us_per_row_last_block": round((time.process_time() - t) / ((i % 100_000) + 1) * 1e6, 1),
                            "rss_anon_growth_mb": round((rss_anon() - base) / 2**20, 1), "file_bytes_per_row": round(size / (i + 1))})
                print(json.dumps(out[-1]), flush=True)
                t = time.process_time()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", type=Path)
    ap.add_argument("--rows", type=int, default=30_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--memory", default="", help="comma-separated row counts, each implementation in a fresh process")
    ap.add_argument("--tracemalloc", action="store_true")
    ap.add_argument("--index-rows", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/grok-bench-dedup"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.index_rows:
        index_scale(args.index_rows, args.work)
        return
    items = load_texts(args.build, args.rows)
    if args.child:
        print(json.dumps(child(args, items)))
        return
    print(json.dumps({"rows": len(items), "mean_chars": round(sum(len(t) for *_, t in items) / len(items))}))
    times: dict[str, list[float]] = {"memory": [], "disk": []}
    res = {}
    for r in range(args.rounds):
        for impl in (("memory", "disk") if r % 2 == 0 else ("disk", "memory")):
            gc.collect()
            t = time.process_time()
            res[impl] = work(impl, items, args.work)
            times[impl].append(time.process_time() - t)
    if res and res["memory"] != res["disk"]:
        sys.exit("the on-disk index's results differ from datasketch's in-memory MinHashLSH")
    if res:
        (kept, removed), (ckept, cremoved) = res["disk"]
        med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        print(json.dumps({"dedup_kept": len(kept), "dedup_removed": len(removed),
                          "exact": sum(r["reason"] == "exact duplicate" for r in removed),
                          "decontaminate_kept": len(ckept), "decontaminate_removed": len(cremoved), "identical": True,
                          "cpu_s": {k: [round(x, 2) for x in v] for k, v in times.items()},
                          "disk_over_memory_median": round(med["disk"] / med["memory"], 3)}))
    for n in filter(None, args.memory.split(",")):
        for impl in ("memory", "disk"):
            cmd = [sys.executable, __file__, "--child", f"{impl}:{n}", "--work", str(args.work), "--rows", str(args.rows)]
            cmd += ["--build", str(args.build)] if args.build else []
            cmd += ["--tracemalloc"] if args.tracemalloc else []
            print(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
