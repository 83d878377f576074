"""``grok demo``: every stage that exists, end to end, on a small phantom archive.

Run as: grok demo [--out runs/demo] [--fresh]

Needs no data and no network. Each stage writes under ``OUT`` and the summary says where.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def run_demo(out: Path, *, subjects: int = 7, seed: int = 0, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Phantom archive -> ingest (-> later stages as they land); returns a JSON-able summary."""
    from grok.ingest.deid import DeidConfig
    from grok.ingest.pipeline import IngestConfig, ingest
    from grok.phantom.archive import PhantomConfig, write_phantom

    out = Path(out)
    summary: dict[str, Any] = {"out": str(out), "stages": {}, "failed_stages": []}
    timings: dict[str, float] = {}

    t = time.perf_counter()
    archive = out / "phantom"
    if not (archive / "truth" / "truth.jsonl").exists():
        log(f"[bold]1/2 phantom[/]: {subjects} subjects -> {archive}")
        ph = write_phantom(PhantomConfig(subjects=subjects, seed=seed, workers=2), archive)
    else:
        log(f"[bold]1/2 phantom[/]: reusing {archive}")
        ph = {"out": str(archive), "reused": True}
    timings["phantom"] = time.perf_counter() - t
    summary["stages"]["phantom"] = {"archive": str(archive / "dicom"), "cohort": str(archive / "cohort.csv"),
                                    "subjects": ph.get("subjects")}

    t = time.perf_counter()
    log(f"[bold]2/2 ingest[/]: {archive / 'dicom'} -> {out / 'ingest'}")
    res = ingest(str(archive / "dicom"), out / "ingest", IngestConfig(deid=DeidConfig(key="grok-demo")))
    timings["ingest"] = time.perf_counter() - t
    summary["stages"]["ingest"] = {
        "manifest": str(out / "ingest" / "manifest.parquet"),
        "studies": str(out / "ingest" / "studies.parquet"),
        "quarantine": str(out / "ingest" / "quarantine.parquet"),
        "files_seen": res.files_seen, "files_ingested": res.files_ingested,
        "files_quarantined": res.files_quarantined, "files_skipped": res.files_skipped,
        "images": res.images, "studies": res.studies, "paired_studies": res.paired_studies,
    }
    if res.images == 0:
        summary["failed_stages"].append("ingest")
    summary["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    return summary
