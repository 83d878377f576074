"""A build folder made from sample records (:mod:`grok.instruct.samples`) without ingesting or measuring: what
publication reads, for the publication benchmark (``benchmarks/publish.py``) and the tests of publication at
scale. The values are invented (no patient data); the instructions are generated and verified as in a build.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from grok.instruct.generate import InstructConfig, build_instructions
from grok.stages.measure_stage import BIOMARKER_SCHEMA, POSITION_IDS, SCALAR_IDS


def write_sample_build(build: Path, records: list[dict[str, Any]], kb=None,
                       image: Callable[[int, str, Path], None] | None = None) -> dict[str, Any]:
    """A build folder that publication accepts, made from sample records without measuring: ``records.jsonl``,
    ``biomarkers.parquet``, every record's images (``image(i, key, path)`` writes one; by default a small
    noise image of its own, so no two are alike) and template-mode instructions, verified, in
    ``instructions.parquet`` (the generator's own tables under ``instruct/``). For the publication benchmark
    and tests. Returns the generator's summary."""
    build = Path(build)
    build.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, r in enumerate(records):
        for key, rel in r["images"].items():
            p = build / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            if image is not None:
                image(i, key, p)
            else:
                Image.fromarray(rng.integers(0, 256, (24, 32), dtype=np.uint8)).save(p)
    with open(build / "records.jsonl", "w") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    rows = []
    for r in records:
        row = {k: None for k in BIOMARKER_SCHEMA.names}
        row.update(study_id=r["study_id"], patient_id=r["patient_id"], eye=r["eye"], visit=r.get("visit"))
        for b in SCALAR_IDS:
            v = r["biomarkers"].get(b)
            row[b] = float(v) if isinstance(v, (int, float)) else math.nan
        for b in POSITION_IDS:
            row[b] = r["biomarkers"].get(b)
        rows.append(row)
    pq.write_table(pa.Table.from_pylist(rows, schema=BIOMARKER_SCHEMA), build / "biomarkers.parquet")
    summary = build_instructions(records, build / "instruct", InstructConfig(seed=0), kb=kb)
    shutil.copy(build / "instruct" / "instructions.parquet", build / "instructions.parquet")
    return summary
