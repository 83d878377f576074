"""One abstraction for a build step, run by interchangeable executors.

A :class:`Stage` declares its name, the build-folder files it reads and writes, how its work splits
into shards (each with the content key of its real inputs, :mod:`grok.stages.keys`), how one shard is
run and how the shards' outputs are merged into the stage's tables and :class:`StageReport`. The
plain runner (:func:`grok.stages.runner.run_build`) and the Prefect flow (``flows/build.py``) walk the
same list of stages, :data:`grok.stages.runner.STAGES`; Prefect adds only caching (on the shard key),
retries (:meth:`Stage.retries`), a concurrency limit (:meth:`Stage.limit`), artifacts and scheduling.

To add a stage: subclass :class:`Stage` (or :class:`SingleStage` for work that does not split), say
what it reads and writes, and put an instance in ``STAGES``; both executors then run it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import ClassVar, TypedDict

from grok.childproc import run_in_child
from grok.stages.config import BuildConfig
from grok.stages.folder import BuildFolder, StageFailed, StageReport


class Shard(TypedDict):
    """A unit of a stage's work: the study ids it covers and the content key of its inputs."""

    ids: list[str]
    key: str


def auto_size(n: int, workers: int, lo: int, hi: int, waves: int = 4) -> int:
    """Items per shard for ``n`` items on ``workers`` (a stage's ``shard_size: auto``): about ``waves`` shards
    per worker, so that a slow shard leaves the others about a ``1 / waves`` of a worker's share to take over,
    between ``lo`` and ``hi`` items (many small shards cost orchestration each; large ones cost memory and
    leave workers idle at the end)."""
    return max(lo, min(hi, n // max(1, workers * waves)))


class Stage:
    """A step of the build (see the module docstring). Subclasses set the class attributes and methods."""

    #: Name in reports, ``build.json``, Prefect task names and artifacts.
    name: ClassVar[str]
    #: Build-folder paths the stage reads (documentation and checks; the source archive is outside).
    inputs: ClassVar[tuple[str, ...]] = ()
    #: Build-folder paths the stage writes.
    outputs: ClassVar[tuple[str, ...]] = ()
    #: Whether the work splits into several shards (a :class:`SingleStage` runs as one).
    sharded: ClassVar[bool] = True

    def plan(self, folder: BuildFolder) -> list[Shard]:
        """The shards, each with its content key."""
        raise NotImplementedError

    def run_shard(self, folder: BuildFolder, shard: Shard) -> str:
        """Do one shard's work (idempotent: a shard finished from the same inputs is not redone); returns
        where its output is (a JSON-able string, so executors can persist and cache it)."""
        raise NotImplementedError

    def merge(self, folder: BuildFolder, results: list[str], seconds: float) -> StageReport:
        """Combine the shards' outputs; returns the report (``folder.finish`` checks the output fraction)."""
        raise NotImplementedError

    def finished(self, folder: BuildFolder, shard: Shard) -> Path | None:
        """The shard's output when it exists and was written from the same inputs (executors' caches use it)."""
        return None

    def retries(self, folder: BuildFolder) -> int:
        """Retries an executor may give one shard: I/O and LLM calls only (a measurement is not retried)."""
        return 0

    def limit(self, folder: BuildFolder) -> tuple[str, int] | None:
        """A global concurrency limit the shards must hold (e.g. an LLM server's): its name and how many
        shards may hold it at once (an executor sets the limit to that), or None."""
        return None

    def run_plan(self, folder: BuildFolder) -> list[Shard]:
        """:meth:`plan` as both executors call it: in a process of its own that ends with it, named
        ``<stage>-plan``, like :meth:`run_merge`. A plan reads the stage's whole input (every study row and the
        manifest row of every image, or every record line) to key its shards; run in the driver, what that
        allocated and freed kept the driver's level higher for the rest of the build, more with each size of
        archive (issue 22: the measure stage raised it 24 MB at 5,000 studies, 2 at 500). Only the shards (ids
        and keys) come back. What the plan records in ``build.json`` (an ``auto`` shard size) is on disk."""
        return run_in_child(f"{self.name}-plan", _plan, self, folder.cfg.model_dump_json(), folder.workers,
                            error=StageFailed)

    def run_merge(self, folder: BuildFolder, results: list[str], seconds: float) -> StageReport:
        """:meth:`merge` as both executors call it: in a process of its own that ends with it
        (:mod:`grok.childproc`; see :class:`SingleStage` for why), named ``<stage>-merge``. The merges stream and
        bound what they hold, but what a merge allocates and frees in the driver left its level higher for the
        rest of the build, a little more with each size of archive (issue 22)."""
        return run_in_child(f"{self.name}-merge", _merge, self, folder.cfg.model_dump_json(), folder.workers,
                            results, seconds, time.time(), error=StageFailed)

    def run(self, folder: BuildFolder) -> StageReport:
        """The whole stage, shard after shard, from this process (what the plain runner calls)."""
        t0 = time.perf_counter()
        results = [self.run_shard(folder, shard) for shard in self.run_plan(folder)]
        return self.run_merge(folder, results, time.perf_counter() - t0)


class SingleStage(Stage):
    """A stage whose work does not split: one shard, and :meth:`work` returns the report.

    The one shard runs :meth:`work` in a process of its own that ends with it (:mod:`grok.childproc`), whichever
    executor runs the build: the driver (the Prefect flow's process, or ``grok build --no-prefect``) lives for the
    whole build and only waits here, so what the work allocates, and the fragmentation its Python objects leave
    in the small-object arenas (which CPython does not give back while one object in an arena lives), goes back
    to the system when the stage ends. Run in the driver, they raised its level stage after stage with the size
    of the archive (issue 22: the driver's anonymous peak was 390 MB at 500 studies and 430 MB at 2,000, set
    by publication, each stage's level above the last). Costs an interpreter start and the stage's imports (a
    few seconds). An exception the work raises is raised here as it was; a process that dies (killed for memory,
    say) is a :class:`StageFailed` with its exit code."""

    sharded = False

    def work(self, folder: BuildFolder) -> StageReport:
        raise NotImplementedError

    def plan(self, folder: BuildFolder) -> list[Shard]:
        return [Shard(ids=[], key="")]

    def run_plan(self, folder: BuildFolder) -> list[Shard]:
        return self.plan(folder)  # nothing read: no process of its own

    def run_shard(self, folder: BuildFolder, shard: Shard) -> str:
        t0 = time.perf_counter()
        report = run_in_child(self.name, _work, self, folder.cfg.model_dump_json(), folder.workers,
                              error=StageFailed)
        report.seconds = time.perf_counter() - t0
        return json.dumps(report.to_dict(), default=str)

    def merge(self, folder: BuildFolder, results: list[str], seconds: float) -> StageReport:
        (result,) = results
        return folder.finish(StageReport(**json.loads(result)))

    def run_merge(self, folder: BuildFolder, results: list[str], seconds: float) -> StageReport:
        return self.merge(folder, results, seconds)  # the work's report, read back: nothing to keep apart


def _plan(stage: Stage, config_json: str, workers: int) -> list[Shard]:
    """``stage.plan`` on the build folder of ``config_json``, in the plan's own process (:meth:`Stage.run_plan`)."""
    return stage.plan(_folder(config_json, workers))


def _merge(stage: Stage, config_json: str, workers: int, results: list[str], seconds: float,
           asked_at: float) -> StageReport:
    """``stage.merge`` on the build folder of ``config_json``, in the merge's own process (:meth:`Stage.run_merge`).
    ``seconds`` grows by the time since the caller asked (``asked_at``, its clock), i.e. this process's start: a
    merge that dates the stage's start as ``time.time() - seconds`` (the measure stage tells reused shards from
    those measured now that way) finds the caller's start, not one a few seconds later."""
    seconds += time.time() - asked_at
    return stage.merge(_folder(config_json, workers), results, seconds)


def _work(stage: SingleStage, config_json: str, workers: int) -> StageReport:
    """``stage.work`` on the build folder of ``config_json``, in the stage's own process (:meth:`SingleStage.run_shard`)."""
    return stage.work(_folder(config_json, workers))


def _folder(config_json: str, workers: int) -> BuildFolder:
    """The caller's build folder, made again in a child process from its config (as sent: JSON)."""
    return BuildFolder(BuildConfig.model_validate_json(config_json), workers=workers)
