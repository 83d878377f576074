"""Publishing benchmark: validate, publish and reload a ~20,000-row build with images.

Run as: .venv/bin/python benchmarks/publish.py [--rows 20000] [--work /tmp/grok-bench-publish]

The build folder is synthesised quickly, without the measure stage: study records come from
``grok.instruct.samples`` (plausible invented values, reasoning by the bundled knowledge base), each
study gets its own media files cut from phantom images (a 512 x 512 JPEG photograph and a 384 x 256
PNG B-scan, real phantom pixels), and template-mode instructions are generated and verified as in a
real build. Then it times: the contracts (validation), the whole publish (split, dedup, contracts,
Parquet with embedded images, card, report, atomic rename), and ``grok.registry.load`` of the pinned
version with a full pass over the rows. Prints JSON: rows/s for each, the share of validation in
publish, and the size on disk per 1,000 rows.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/grok-bench-publish"))
    args = ap.parse_args()
    import pyarrow as pa
    import pyarrow.parquet as pq

    from grok.instruct.generate import InstructConfig, build_instructions
    from grok.instruct.samples import sample_records
    from grok.knowledge import load_knowledge_base
    from grok.stages.measure_stage import BIOMARKER_SCHEMA, POSITION_IDS, SCALAR_IDS

    shutil.rmtree(args.work, ignore_errors=True)
    build = args.work / "build"
    build.mkdir(parents=True)
    kb = load_knowledge_base()
    t = time.perf_counter()
    per_study = 5.5  # template rows per study over the six families (measured on phantom builds)
    records = sample_records(int(math.ceil(args.rows / per_study)), seed=0, kb=kb)
    _media(build, records, 0)
    with open(build / "records.jsonl", "w") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    bio_rows = []
    for r in records:
        row = {k: None for k in BIOMARKER_SCHEMA.names}
        row.update(study_id=r["study_id"], patient_id=r["patient_id"], eye=r["eye"], visit=r.get("visit"))
        for b in SCALAR_IDS:
            v = r["biomarkers"].get(b)
            row[b] = float(v) if isinstance(v, (int, float)) else math.nan
        for b in POSITION_IDS:
            row[b] = r["biomarkers"].get(b)
        bio_rows.append(row)
    pq.write_table(pa.Table.from_pylist(bio_rows, schema=BIOMARKER_SCHEMA), build / "biomarkers.parquet")
    summary = build_instructions(records, build / "instruct", InstructConfig(seed=0), kb=kb)
    shutil.copy(build / "instruct" / "instructions.parquet", build / "instructions.parquet")
    n_rows = pq.read_metadata(build / "instructions.parquet").num_rows
    prep_s = time.perf_counter() - t

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
        "rows_generated": n_rows, "rows_published": published, "studies": len(records),
        "synthesis_s": round(prep_s, 1),
        "validation_s": round(validate_s, 1), "validation_rows_per_s": round(n_rows / validate_s, 1),
        "publish_s": round(publish_s, 1), "publish_rows_per_s": round(n_rows / publish_s, 1),
        "validation_share_of_publish": round(validate_s / publish_s, 3),
        "split_dedup_s": round(prep_publish_s, 1),
        "load_rows_per_s": round(loaded / load_s, 1), "load_s": round(load_s, 1),
        "decode_500_rows_with_images_s": round(decode_s, 2), "images_decoded": n_img,
        "size_mb_per_1000_rows": round(size / 1e6 / published * 1000, 2),
        "contracts": {k: v.success for k, v in contracts.items()},
        "instruct_summary": {k: summary.get(k) for k in ("studies", "studies_used", "rows", "quarantined")},
    }, indent=2))


if __name__ == "__main__":
    main()
