"""The dataset build flow: the build's list of stages run by Prefect, then announce and train.

Run as: grok build CONFIG.yaml   (or: prefect deploy --all, then run the `build-dataset/cpu` deployment)

The flow walks :data:`grok.stages.runner.STAGES` (source, ingest, measure, records, instruct,
publish), exactly the list the plain runner (``grok build --no-prefect``) walks; per stage it maps one
task over the stage's shards and one task merges them. Prefect adds only what an orchestrator is for:
shards are cached on their content key (:mod:`grok.stages.keys`: image sha256s, the config sections
that shape them, code, knowledge-base and template versions) with results persisted as JSON (never
pickles), so a build killed at any point and started again skips finished shards; the stages that do
I/O or call an LLM retry (``Stage.retries``); LLM shards hold a global concurrency limit
(``Stage.limit``); each stage leaves a table artifact with its counts and timings and the publish
stage a markdown artifact linking the dataset card, the curator report and the contract data docs.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import time
import uuid
from collections.abc import Callable, Sequence
from functools import lru_cache, partial
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext
from prefect.deployments import run_deployment
from prefect.events import emit_event
from prefect.runtime import flow_run
from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings
from prefect.task_runners import ThreadPoolTaskRunner

from grok.parquet_io import arrow_pool, release_memory
from grok.stages.config import BuildConfig, RunnerSettings, load_config
from grok.stages.runner import STAGE_BY_NAME, STAGES, BuildFolder, StageReport, train_inline

PUBLISHED_EVENT = "grok.dataset.published"


#: Numeric libraries use one thread per worker process (a shard is the unit of parallelism: more threads
#: inside a shard only oversubscribe the cores the other workers use).
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                  "NUMBA_NUM_THREADS": "1"}


@lru_cache(maxsize=4)
def _folder_of(config_json: str) -> BuildFolder:
    return BuildFolder(BuildConfig.model_validate_json(config_json))


def _folder(config: dict[str, Any]) -> BuildFolder:
    """The build folder of ``config``, one per process and config: a worker loads the knowledge base
    (``BuildFolder.kb``) once, not once per shard."""
    return _folder_of(json.dumps(config, sort_keys=True))


def warm_worker() -> int:
    """Ready a worker process for shards (run on every Dask worker when the flow starts, and again by each
    shard, where it costs nothing after the first): one thread for numeric libraries that read the
    environment late, and the stage modules imported (importing this module imported them). Returns the pid."""
    for k, v in ONE_THREAD_ENV.items():
        os.environ.setdefault(k, v)
    return os.getpid()


def without_malloc_trim() -> dict[str, Any]:
    """Start Dask workers without the ``MALLOC_TRIM_THRESHOLD_=65536`` that Dask's nanny puts in their
    environment by default (``distributed.nanny.pre-spawn-environ``); returns the environment it leaves.

    With it, glibc hands every freed block over 64 KiB back to the kernel, so a measure study, which
    allocates and frees full-cube arrays dozens of times, pays for fresh zeroed pages each time: on this
    2-core machine a default-geometry study took 7.7-8.5 s with the variable against 4.9-5.1 s without it,
    in one plain process (``benchmarks/build.py``'s Dask workers had shown 8.7-9.4 s per study against
    5.1 s in the one-thread flow). The setting applies to the local clusters this flow starts; a team's
    own workers take it from their Dask config (see the README)."""
    import dask  # the dask extra

    env = {k: v for k, v in (dask.config.get("distributed.nanny.pre-spawn-environ", None) or {}).items()
           if k != "MALLOC_TRIM_THRESHOLD_"}
    dask.config.set({"distributed.nanny.pre-spawn-environ": env})
    return env


#: Entries each Dask comm and worker keeps in its debugging logs (``distributed.admin.low-level-log-length``;
#: Dask's default 1,000): none, see :func:`short_dask_logs`.
DASK_LOG_LENGTH = 0


def short_dask_logs(length: int = DASK_LOG_LENGTH) -> int:
    """Keep ``length`` entries (default none), not Dask's 1,000, in the debugging logs of the flow's Dask client,
    of a local cluster's scheduler (which runs in the flow's process) and of its workers (their nannies pass the
    setting on); returns it.

    Each comm logs its last ``distributed.admin.low-level-log-length`` payloads under 1 MB, and each worker its
    last compute requests, and a Prefect task's request carries the whole flow-run context (the flow, its task
    runner, the settings): about 100 kB. With the default the flow's process held up to 1,000 payloads per
    worker plus the client's own: measured with ``benchmarks/prefect_tasks.py`` (2 local workers), the driver's
    anonymous memory grew 83 kB per task, 261 MB after 100 empty tasks and 472 MB after 2,700, each worker's 109
    to 304 MB (a 170,000-study build maps 2,657 measure shards). A payload is a batch of messages, so even 4
    entries kept about a third of 300 tasks' requests (an ad-hoc probe); the logs serve only to debug Dask itself.
    A team's own scheduler and workers take the setting from their Dask config (see the README)."""
    import dask  # the dask extra

    dask.config.set({"distributed.admin.low-level-log-length": length})
    return length


def _artifact(report: StageReport) -> None:
    key = f"grok-{report.stage.replace('_', '-')}"
    create_table_artifact(key=key, table=[{
        "stage": report.stage, "in": report.n_in, "out": report.n_out, "quarantined": report.n_quarantined,
        "seconds": round(report.seconds, 2), **{f"output:{k}": v for k, v in report.outputs.items()}}],
        description=f"GROK {report.stage}: counts in/out/quarantined and timing")


def _shard_cache_key(_ctx, params: dict[str, Any]) -> str:
    """A finished shard's content key; a shard not finished from its current inputs is never a cache hit."""
    folder = _folder(params["config"])
    stage, shard = STAGE_BY_NAME[params["stage"]], params["shard"]
    # the cached value is a path inside this build folder, so the folder is part of the key
    where = hashlib.sha256(str(folder.root.resolve()).encode()).hexdigest()[:12]
    if shard["key"] and stage.finished(folder, shard) is not None:
        return f"grok-{stage.name}-{where}-{shard['key']}"
    return f"grok-{stage.name}-{where}-pending-{uuid.uuid4().hex}"


@task(name="shard", cache_key_fn=_shard_cache_key, persist_result=True, result_serializer="json")
def shard_task(config: dict[str, Any], stage: str, shard: dict[str, Any]) -> str:
    warm_worker()
    folder, st = _folder(config), STAGE_BY_NAME[stage]
    limit = st.limit(folder)
    if limit is None:
        return st.run_shard(folder, shard)
    with concurrency(limit[0], occupy=1):  # the flow set the limit from the config before mapping shards
        return st.run_shard(folder, shard)


def set_concurrency_limit(name: str, slots: int) -> None:
    """Create the global concurrency limit ``name`` with ``slots``, or set an existing one to it (the
    build config owns the value; each shard's LLM client gets its share of the request rate from it)."""
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, slots)


@task(name="merge", cache_policy=NO_CACHE)
def merge_task(config: dict[str, Any], stage: str, results: list[str], seconds: float) -> dict[str, Any]:
    rep = STAGE_BY_NAME[stage].run_merge(_folder(config), results, seconds)
    _artifact(rep)
    return rep.to_dict()


def _publish_artifact(folder: BuildFolder, pub: dict[str, Any]) -> None:
    out = pub["outputs"]
    create_markdown_artifact(key="grok-dataset", description="Published dataset version", markdown="\n".join([
        f"# {out['dataset']}", "", f"- fingerprint: `{pub['details']['fingerprint']}`",
        f"- version folder: `{out['path']}`", f"- dataset card: `{out['card']}`",
        f"- curator report: `{out['report']}` (open in a browser)",
        f"- contract data docs: `{folder.root / 'contracts'}/*/gx/uncommitted/data_docs/local_site/index.html`",
        "", "```json", json.dumps(pub["details"]["counts"], indent=1), "```"]))


@task(name="announce", cache_policy=NO_CACHE)
def announce_task(dataset: str, fingerprint: str) -> None:
    """Emit ``grok.dataset.published`` (automations can react to it) for the new version."""
    name, version = dataset.split("@")
    emit_event(event=PUBLISHED_EVENT, resource={"prefect.resource.id": f"grok.dataset.{name}"},
               payload={"dataset": dataset, "version": version, "fingerprint": fingerprint})


@task(name="trigger-training", retries=2, retry_delay_seconds=10, cache_policy=NO_CACHE)
def trigger_task(config: dict[str, Any], job: str, dataset: str) -> dict[str, Any]:
    cfg = BuildConfig.model_validate(config)
    if cfg.train.via == "deployment":
        run = run_deployment(name=cfg.train.deployments[job], timeout=0,
                             parameters={"dataset": dataset, "registry": cfg.publish.registry,
                                         "profile": cfg.train.profile,
                                         "overrides": cfg.train.overrides.get(job, [])})
        return {"job": job, "flow_run_id": str(run.id), "deployment": cfg.train.deployments[job]}
    rep = train_inline(cfg, job, dataset)
    _artifact(rep)
    return rep.to_dict()


@flow(name="build-dataset")
def build_dataset(config: dict[str, Any] | None = None, config_path: str | None = None,
                  demo_key: bool = False) -> dict[str, Any]:
    """Build, validate and publish a dataset version, then trigger the training jobs on it.

    ``demo_key`` allows the public demo pseudonym key when $GROK_PSEUDONYM_KEY is unset (phantom data only).
    """
    if config is None:
        if config_path is None:
            raise ValueError("build_dataset needs config or config_path")
        config = load_config(config_path).model_dump(mode="json")
    folder = _folder(config)
    folder.require_pseudonym_key(demo_key=demo_key)
    logger = get_run_logger()
    folder.update(flow_run_id=str(flow_run.get_id() or ""))
    folder.workers = _start_workers(folder)
    reports = []
    with arrow_pool():  # the driver's Arrow memory given back as it is freed (grok.parquet_io.DRIVER_MEMORY_POOL)
        for stage in STAGES:
            t0 = time.perf_counter()
            shards = stage.run_plan(folder)  # in a process of its own, like the merges
            if (limit := stage.limit(folder)) is not None:
                set_concurrency_limit(*limit)
            run = shard_task.with_options(name=f"{stage.name}-shard" if stage.sharded else stage.name,
                                          retries=stage.retries(folder), retry_delay_seconds=10)
            if stage.sharded:  # shards fan out on the task runner (threads, or Dask workers), a window at a time
                results = run_windowed(partial(run.submit, config, stage.name), shards, shard_window(folder.workers))
            else:  # from the flow's process, like the merges: the work in a process of its own (SingleStage)
                results = [run(config, stage.name, shard) for shard in shards]
            merge = merge_task.with_options(name=f"{stage.name}-merge" if stage.sharded else f"{stage.name}-report")
            rep = merge(config, stage.name, results, time.perf_counter() - t0)
            logger.info("%s: %s in, %s out, %s quarantined (%d shards)", stage.name, rep["n_in"], rep["n_out"],
                        rep["n_quarantined"], len(shards))
            reports.append(rep)
            release_memory()  # what the stage freed in this process, given back before the next one builds on it
    pub = reports[-1]
    _publish_artifact(folder, pub)
    dataset, fingerprint = pub["outputs"]["dataset"], pub["details"]["fingerprint"]
    announce_task(dataset, fingerprint)
    trained = [trigger_task(config, job, dataset) for job in folder.cfg.train.jobs]
    return {"dataset": dataset, "fingerprint": fingerprint, "outputs": pub["outputs"], "stages": reports,
            "training": trained}


#: Shards a stage keeps submitted and unfinished per worker thread (:func:`run_windowed`): one running, one
#: waiting, so no worker waits for the flow between shards.
SHARDS_IN_FLIGHT_PER_WORKER = 2


def shard_window(workers: int) -> int:
    """How many shards a stage keeps submitted at once on ``workers`` worker threads."""
    return max(2, SHARDS_IN_FLIGHT_PER_WORKER * workers)


def run_windowed(submit: Callable[[Any], Any], items: Sequence[Any], window: int) -> list[Any]:
    """``submit(item)`` for every item, at most ``window`` of the returned futures unfinished at any time (the
    next is submitted as one finishes); their results in the items' order. A failed item's exception is raised
    when its future is read, as ``.map(...).result()`` raised it.

    Why not one ``.map`` of all shards: every submitted Prefect task carries the whole flow-run context (about
    70 kB), which the Dask scheduler holds until the task has run, and a local cluster's scheduler lives in the
    flow's process. Mapping all of a stage's shards at once made the driver hold all of them: measured with
    ``benchmarks/prefect_tasks.py`` (2 local workers, Dask's logs off), its anonymous memory grew 76 kB per
    mapped task (259 MB at 100 empty tasks, 452 MB at 2,700; a 170,000-study build maps 2,657 measure
    shards)."""
    finished: queue.SimpleQueue[int] = queue.SimpleQueue()
    results: list[Any] = [None] * len(items)
    pending: dict[int, Any] = {}

    def collect_one() -> None:
        i = finished.get()
        results[i] = pending.pop(i).result()

    for i, item in enumerate(items):
        while len(pending) >= max(1, window):
            collect_one()
        future = submit(item)
        pending[i] = future
        future.add_done_callback(lambda _f, i=i: finished.put(i))
    while pending:
        collect_one()
    return results


def _start_workers(folder: BuildFolder) -> int:
    """How many shards run at once (what ``shard_size: auto`` sizes shards for). On Dask: connect now (a local
    cluster starts here, not inside the first stage that maps shards), warm every worker (:func:`warm_worker`)
    and record the scheduler, its dashboard and its worker threads in ``build.json`` (``dask``)."""
    ctx = FlowRunContext.get()
    runner = ctx.task_runner if ctx is not None else None
    if type(runner).__name__ != "DaskTaskRunner":
        folder.update(dask=None)
        return max(1, min(getattr(runner, "_max_workers", None) or 1, os.cpu_count() or 1))
    t0 = time.perf_counter()
    client = runner.client
    pids = client.run(warm_worker)
    threads = sum(client.nthreads().values())
    folder.update(dask={"scheduler": client.scheduler.address, "dashboard": client.dashboard_link,
                        "workers": len(pids), "threads": threads, "start_s": round(time.perf_counter() - t0, 2)})
    return threads


def _one_api(flow_):
    """Run ``flow_`` so that Dask workers report to the flow's Prefect API. Without ``PREFECT_API_URL`` Prefect
    starts a temporary API server in every process that runs a task: each Dask worker would start its own
    (measured: the first shard on each worker waited 25-30 s for it, and its task runs, caches and the LLM
    concurrency limit were not the flow's). Here the flow's temporary server is started first and its URL
    put in the settings that travel with every task to the workers."""

    def run(**kw: Any) -> dict[str, Any]:
        if get_current_settings().api.url or not get_current_settings().server.ephemeral.enabled:
            return flow_(**kw)
        from prefect.server.api.server import SubprocessASGIServer  # the server extra, started on demand

        server = SubprocessASGIServer()
        server.start(timeout=get_current_settings().server.ephemeral.startup_timeout_seconds)
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            return flow_(**kw)

    return run


def with_runner(cfg: BuildConfig):
    """The flow with the task runner the config asks for (Dask for scale-out); call it with the flow's
    parameters."""
    return on_runner(build_dataset, cfg.runner)


def on_runner(flow_, runner_cfg: RunnerSettings):
    """``flow_`` with the task runner of ``runner_cfg`` (a build config's ``runner``) and, on Dask, the flow's
    own API handed to the workers (:func:`_one_api`): what :func:`with_runner` does for the build, for any flow
    (``benchmarks/prefect_tasks.py`` maps thousands of empty shards through it)."""
    if runner_cfg.kind == "dask":
        from prefect_dask import DaskTaskRunner  # the dask extra

        without_malloc_trim()
        short_dask_logs()
        if runner_cfg.dask_address:
            runner = DaskTaskRunner(address=runner_cfg.dask_address)
        else:
            runner = DaskTaskRunner(cluster_kwargs={"n_workers": runner_cfg.n_workers, "threads_per_worker": 1,
                                                    "processes": True, "dashboard_address": None,
                                                    "env": ONE_THREAD_ENV})
        return _one_api(flow_.with_options(task_runner=runner))
    # Prefect's default thread pool is effectively unbounded: dozens of shards measuring at once only
    # multiply memory (each holds a cube and its masks) without more cores. Default: one per core.
    threads = runner_cfg.threads or os.cpu_count() or 1
    return flow_.with_options(task_runner=ThreadPoolTaskRunner(max_workers=threads))
