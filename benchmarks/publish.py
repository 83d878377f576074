"""Publishing benchmark: validate, publish and reload a ~20,000-row build with images.

Run as: .venv/bin/python benchmarks/publish.py [--rows 20000] [--work /tmp/grok-bench-publish]
        [--memory-curve 2750,27500]

The build folder is synthesised quickly, without the measure stage: study records come from
``grok.instruct.samples`` (plausible invented values, reasoning by the bundled knowledge base), each
study gets its own media files cut from phantom images (a 512 x 512 JPEG photograph and a 384 x 256
PNG B-scan, real phantom pixels), and template-mode instructions are generated and verified as in a
real build. Then it times: the contracts (validation), the whole publish (split, dedup, contracts,
Parquet with embedded images, card, report, atomic rename), and ``grok.registry.load`` of the pinned
version with a full pass over the rows. Prints JSON: rows/s for each, the share of validation in
publish, and the size on disk per 1,000 rows.

``--memory-curve 2750,27500`` instead synthesises a build of each size (kept under ``--work``, so a rerun
publishes the same folders again) and publishes each in a fresh process whose resident memory is sampled
every 0.1 s: publication's peak RSS and anonymous memory (RSS less mapped files) against the number of
rows (``memory_curve``: flat when publication streams; the process's own, and its child processes', i.e. the
contracts' Great Expectations process, in ``children_peak_anon_mb``, the two together at each sample in
``total_peak_anon_mb``), with its seconds and the published bytes, and the peak
anonymous memory of each of publication's phases (``phase_peak_anon_mb``, sampled inside the process; their growth
per 1,000 studies in ``phase_anon_mb_per_1000_studies``) to show which phase holds what grows, and the exact size
of the per-row frame publication holds (``held_frames``: the instruction rows' index;
``DataFrame.memory_usage(deep=True)``), which does not depend on when the allocators give freed pages back.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root for benchmarks.*
from benchmarks.memprobe import child_code  # noqa: E402


def _media(work: Path, records: list[dict], seed: int) -> None:
    from PIL import Image

    from grok.phantom.cfp import synth_fundus
    from grok.phantom.oct import OctGeometry, synth_oct_volume

    rng = np.random.default_rng(seed)
    cfp = synth_fundus("normal", "OD", rng, size=512).image
    vol = synth_oct_volume("amd", "OD", rng, geometry=OctGeometry(n_bscans=3, rows=384, cols=256, axial_um=3.87,
                                                                   lateral_um=23.4)).volume
    for i, r in enumerate(records):
        d = work / "media" / r["study_id"]
        d.mkdir(parents=True, exist_ok=True)
        # a per-study variation so no two images are byte-identical (as in a real archive)
        shift = i % 17
        for key, rel in r["images"].items():
            p = work / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            if key == "cfp":
                Image.fromarray(np.roll(cfp, shift, axis=1)).save(p.with_suffix(".jpg"), quality=92)
                if p.suffix != ".jpg":
                    os.replace(p.with_suffix(".jpg"), p)
            else:
                Image.fromarray(np.roll(vol[i % 3], shift, axis=1)).save(p)


def synthesize(build: Path, rows: int) -> int:
    """A build folder of about ``rows`` template instruction rows (see the module docstring); the number of
    rows made."""
    import pyarrow.parquet as pq

    from grok.instruct.samples import sample_records
    from grok.knowledge import load_knowledge_base
    from grok.stages.sample_build import write_sample_build

    shutil.rmtree(build, ignore_errors=True)
    kb = load_knowledge_base()
    per_study = 5.5  # template rows per study over the six families (measured on phantom builds)
    records = sample_records(int(math.ceil(rows / per_study)), seed=0, kb=kb)
    build.mkdir(parents=True)
    _media(build, records, 0)
    summary = write_sample_build(build, records, kb, image=lambda i, key, p: None)  # the media are written
    (build / "synthesized.json").write_text(json.dumps({
        "rows": rows, "studies": len(records),
        "instruct_summary": {k: summary.get(k) for k in ("studies", "studies_used", "rows", "quarantined")}}))
    return pq.read_metadata(build / "instructions.parquet").num_rows


#: The publication a memory curve runs in a fresh process: ``publish_build`` with its phases (the functions of
#: ``grok.publish`` it calls, and the registry's write) wrapped so that a thread sampling ``RssAnon`` every 0.05 s
#: charges each sample to the innermost phase running; prints the fingerprint and each phase's peak as JSON.
_PHASE_PROBE = r"""
import json, sys, threading, time
from pathlib import Path
import grok  # noqa: F401 - as the CLI does: sets Arrow's memory pool before pyarrow is imported
import grok.publish as P

from benchmarks.memprobe import anon_mb

stack, peaks = ["imports"], {}

def charge():
    peaks[stack[-1]] = max(peaks.get(stack[-1], 0.0), anon_mb())

def sample():
    while True:
        charge()
        time.sleep(0.05)

def wrap(owner, name, label):
    f = getattr(owner, name)
    def g(*a, **k):
        charge()
        stack.append(label)
        try:
            return f(*a, **k)
        finally:
            charge()
            stack.pop()
    setattr(owner, name, g)

# what the held index costs a row, exactly (not sampled): the instruction rows' frame that publication keeps (the
# frames Great Expectations validates are made in the contracts' child process, whose memory is sampled outside)
held = {}
prepare = P.prepare
def prepare_sized(*a, **k):
    prep = prepare(*a, **k)
    ins = prep["instructions"]
    held["instruction_index"] = {"rows": len(ins), "mb": round(ins.memory_usage(deep=True).sum() / 1e6, 2)}
    return prep
P.prepare = prepare_sized
for name in ("prepare", "apply_reviews", "run_contracts", "privacy_check", "build_datasets", "_versions", "_card_body",
             "write_curator_report"):
    wrap(P, name, name)
wrap(P.registry, "publish", "registry.publish")
threading.Thread(target=sample, daemon=True).start()
charge()
stack[0] = "publish_build (between phases)"
r = P.publish_build(Path(sys.argv[1]), P.PublishConfig(name="bench", registry=sys.argv[2]))
charge()
for v in held.values():
    v["bytes_per_row"] = round(v["mb"] * 1e6 / max(v["rows"], 1))
print(json.dumps({"fingerprint": r.fingerprint, "phase_peak_anon_mb": {k: round(v, 1) for k, v in peaks.items()},
                  "held_frames": held}))
"""


def memory_curve(work: Path, sizes: list[int]) -> dict:
    """Publish a synthesised build of each size in a fresh process; its peak RSS, anonymous memory, seconds."""
    import subprocess

    import psutil
    import pyarrow.parquet as pq

    points = {}
    for rows in sizes:
        build = work / f"build_{rows}"
        meta = build / "synthesized.json"
        t = time.perf_counter()
        if not meta.exists() or json.loads(meta.read_text()).get("rows") != rows:
            synthesize(build, rows)
        synth_s = time.perf_counter() - t
        registry = work / f"registry_{rows}"
        shutil.rmtree(registry, ignore_errors=True)
        code = child_code(_PHASE_PROBE)
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", code, str(build), str(registry)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        me, peak, anon, child_anon, total_anon = psutil.Process(proc.pid), 0, 0, 0, 0
        while proc.poll() is None:
            try:
                mem = me.memory_info()  # Linux: rss = anonymous + file-backed + shared; shared = the last two
                peak, anon = max(peak, mem.rss), max(anon, mem.rss - mem.shared)
                kids = 0  # publication's child processes (the contracts' Great Expectations process)
                for kid in me.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        k = kid.memory_info()
                        kids += k.rss - k.shared
                child_anon, total_anon = max(child_anon, kids), max(total_anon, mem.rss - mem.shared + kids)
            except psutil.Error:
                pass
            time.sleep(0.1)
        out, err = proc.communicate()
        wall = time.perf_counter() - t
        if proc.returncode:
            raise SystemExit(f"publishing {build} failed:\n{err[-3000:]}")
        info = json.loads(meta.read_text())
        probe = json.loads(out.strip().splitlines()[-1])
        files = [p for p in registry.rglob("*") if p.is_file()]
        points[rows] = {"rows": pq.read_metadata(build / "instructions.parquet").num_rows, "studies": info["studies"],
                        "publish_s": round(wall, 1), "peak_rss_mb": round(peak / 2**20),
                        "peak_anon_mb": round(anon / 2**20), "children_peak_anon_mb": round(child_anon / 2**20),
                        "total_peak_anon_mb": round(total_anon / 2**20), "published_mb": round(sum(p.stat().st_size for p in files)
                                                                                 / 2**20, 1),
                        "fingerprint": probe["fingerprint"], "synthesis_s": round(synth_s, 1),
                        "phase_peak_anon_mb": probe["phase_peak_anon_mb"], "held_frames": probe["held_frames"]}
        shutil.rmtree(registry, ignore_errors=True)  # measured: the next, larger point needs the disk (22 GB at 40,000)
    ns = sorted(points)
    out = {"benchmark": "publish_memory", "machine": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]},
           "memory_curve": {str(n): points[n] for n in ns}}
    if len(ns) > 1:
        a, b = points[ns[0]], points[ns[-1]]
        out["rss_mb_per_1000_studies"] = round(1000 * (b["peak_rss_mb"] - a["peak_rss_mb"]) / (b["studies"] - a["studies"]), 1)
        out["anon_mb_per_1000_studies"] = round(1000 * (b["peak_anon_mb"] - a["peak_anon_mb"])
                                                / (b["studies"] - a["studies"]), 1)
        out["phase_anon_mb_per_1000_studies"] = {
            k: round(1000 * (b["phase_peak_anon_mb"][k] - a["phase_peak_anon_mb"][k]) / (b["studies"] - a["studies"]), 2)
            for k in b["phase_peak_anon_mb"] if k in a["phase_peak_anon_mb"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/grok-bench-publish"))
    ap.add_argument("--memory-curve", default="", help="comma-separated row counts: publish a build of each size in "
                    "a fresh process and report its peak memory (see the module docstring)")
    args = ap.parse_args()
    if args.memory_curve:
        print(json.dumps(memory_curve(args.work, sorted({int(x) for x in args.memory_curve.split(",") if x.strip()})),
                         indent=2))
        return
    shutil.rmtree(args.work, ignore_errors=True)
    build = args.work / "build"
    t = time.perf_counter()
    n_rows = synthesize(build, args.rows)
    prep_s = time.perf_counter() - t
    summary = json.loads((build / "synthesized.json").read_text())

    from grok.publish import PublishConfig, prepare, publish_build, run_contracts

    cfg = PublishConfig(name="bench", registry=str(args.work / "registry"))
    t = time.perf_counter()
    prep = prepare(build, cfg)
    prep_publish_s = time.perf_counter() - t
    t = time.perf_counter()
    contracts = run_contracts(build, prep, cfg)
    validate_s = time.perf_counter() - t
    t = time.perf_counter()
    res = publish_build(build, cfg)
    publish_s = time.perf_counter() - t
    from grok.registry import load

    t = time.perf_counter()
    loaded = 0
    for config, split in (("instructions", "train"), ("instructions", "validation"), ("benchmark", "test")):
        ds = load("bench@0.1.0", config, split, registry=cfg.registry)
        for row in ds.select_columns(["id", "messages"]):
            loaded += 1
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    ds = load("bench@0.1.0", "instructions", "train", registry=cfg.registry)
    n_img = sum(len(r["images"]) for r in ds.select(range(min(500, len(ds)))))
    decode_s = time.perf_counter() - t
    size = sum(p.stat().st_size for p in Path(res.path).rglob("*") if p.is_file())
    published = sum(sum(v.values()) for k, v in res.counts["published"].items() if k != "alignment")
    print(json.dumps({
        "benchmark": "publish",
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]},
        "rows_generated": n_rows, "rows_published": published, "studies": summary["studies"],
        "synthesis_s": round(prep_s, 1),
        "validation_s": round(validate_s, 1), "validation_rows_per_s": round(n_rows / validate_s, 1),
        "publish_s": round(publish_s, 1), "publish_rows_per_s": round(n_rows / publish_s, 1),
        "validation_share_of_publish": round(validate_s / publish_s, 3),
        "split_dedup_s": round(prep_publish_s, 1),
        "load_rows_per_s": round(loaded / load_s, 1), "load_s": round(load_s, 1),
        "decode_500_rows_with_images_s": round(decode_s, 2), "images_decoded": n_img,
        "size_mb_per_1000_rows": round(size / 1e6 / published * 1000, 2),
        "contracts": {k: v.success for k, v in contracts.items()},
        "instruct_summary": summary["instruct_summary"],
    }, indent=2))


if __name__ == "__main__":
    main()
