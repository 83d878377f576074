"""The build: one list of stages (:data:`STAGES`) and the plain runner that walks it (Prefect-free).

Run as: grok build CONFIG --no-prefect   (the same list runs as a Prefect flow: flows/build.py)

source -> ingest -> measure -> records -> instruct -> publish, then the training jobs on the published
version. Each stage (:class:`grok.stages.stage.Stage`) reads and writes files in the build folder
(:class:`grok.stages.folder.BuildFolder`, which owns ``build.json`` and the accounting) and returns a
:class:`StageReport`. :func:`run_build` calls them in order without any orchestrator: it is what
``benchmarks/build.py`` compares the Prefect flow against, and what tests use. ``build.json`` says
``complete: true`` only after publication, so a killed build is never published half-written nor
reported as done.
"""

from __future__ import annotations

import time

from grok.parquet_io import arrow_pool, release_memory
from grok.stages.config import BuildConfig
from grok.stages.folder import BuildFolder, StageFailed, StageReport
from grok.stages.ingest_stage import Ingest, Source
from grok.stages.instruct_stage import Instruct
from grok.stages.measure_stage import Measure
from grok.stages.publish_stage import Publish
from grok.stages.records_stage import Records
from grok.stages.stage import Stage
from grok.stages.train import run_train_job, train_command

#: The build, in order. Both executors (run_build here, build_dataset in flows/build.py) walk this list.
STAGES: tuple[Stage, ...] = (Source(), Ingest(), Measure(), Records(), Instruct(), Publish())
STAGE_BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}

__all__ = ["STAGES", "STAGE_BY_NAME", "BuildFolder", "StageFailed", "StageReport", "run_build", "run_stage",
           "train_inline"]


def run_stage(cfg: BuildConfig, name: str) -> StageReport:
    """One stage of the build, in this process."""
    return STAGE_BY_NAME[name].run(BuildFolder(cfg))


def train_inline(cfg: BuildConfig, job: str, dataset: str) -> StageReport:
    """Run one training job here (CPU smoke in the demo and CI) on the pinned published version."""
    t0 = time.perf_counter()
    out = BuildFolder(cfg).path("train", job)
    result = run_train_job(train_command(job, dataset, profile=cfg.train.profile, output_dir=out,
                                         registry=cfg.publish.registry, overrides=cfg.train.overrides.get(job, [])))
    return StageReport(f"train_{job}", n_in=1, n_out=1, seconds=time.perf_counter() - t0,
                       outputs={"run_dir": str(out)}, details=result)


def run_build(cfg: BuildConfig, *, demo_key: bool = False) -> list[StageReport]:
    """All stages in order, no orchestrator (the baseline for benchmarks and the library API).

    ``demo_key`` allows the public demo pseudonym key when the secret is not set (phantom data only).
    """
    folder = BuildFolder(cfg)
    folder.require_pseudonym_key(demo_key=demo_key)
    with arrow_pool():  # the driver's Arrow memory given back as it is freed (grok.parquet_io.DRIVER_MEMORY_POOL)
        reports = []
        for stage in STAGES:
            reports.append(stage.run(folder))
            release_memory()  # what the stage freed, given back before the next one builds on it
    dataset = reports[-1].outputs["dataset"]
    return reports + [train_inline(cfg, job, dataset) for job in cfg.train.jobs]
