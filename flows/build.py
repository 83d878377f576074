"""The dataset build flow: ingest -> measure -> label/reason -> instruct/verify -> validate/publish -> train.

Run as: grok build CONFIG.yaml   (or: prefect deploy --all, then run the `build-dataset/cpu` deployment)

Every task calls one plain function of ``grok.build`` over files in the build folder. Work is sharded
(batches of studies), shards are cached on their content key (:mod:`grok.build.keys`: image sha256s,
the config sections that shape them, code, knowledge-base and template versions), results are persisted as JSON (never pickles), so a
build killed at any point and started again skips finished shards. Only I/O tasks (ingest,
training triggers) and LLM tasks retry. Each stage publishes a Prefect table artifact with its
counts and timings; the publish stage links the dataset card, the curator report and the contract
data docs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from grok.build import instruct_stage, measure, pipeline
from grok.build.config import BuildConfig, load_config

PUBLISHED_EVENT = "grok.dataset.published"


def _artifact(report: pipeline.StageReport) -> None:
    key = f"grok-{report.stage.replace('_', '-')}"
    create_table_artifact(key=key, table=[{
        "stage": report.stage, "in": report.n_in, "out": report.n_out, "quarantined": report.n_quarantined,
        "seconds": round(report.seconds, 2), **{f"output:{k}": v for k, v in report.outputs.items()}}],
        description=f"GROK {report.stage}: counts in/out/quarantined and timing")


def _cfg(config: dict[str, Any]) -> BuildConfig:
    return BuildConfig.model_validate(config)


def _shard_cache_key(prefix: str):
    def key(_ctx, params: dict[str, Any]) -> str:
        import hashlib
        import uuid

        cfg = _cfg(params["config"])
        shard = params["shard"]
        # the cached value is a path inside this build folder, so the folder is part of the key
        where = hashlib.sha256(str(Path(cfg.work_dir).resolve()).encode()).hexdigest()[:12]
        stage = measure if prefix == "measure" else instruct_stage
        done = stage.finished_shard(cfg.work_dir if prefix == "measure" else cfg, shard)
        # A cached value is only valid while the output it names exists and was written from the same
        # inputs: a deleted or rebuilt build folder is never answered from the cache.
        if done is not None:
            return f"grok-{prefix}-{where}-{shard['key']}"
        return f"grok-{prefix}-{where}-pending-{uuid.uuid4().hex}"

    return key


@task(name="source", cache_policy=NO_CACHE)
def source_task(config: dict[str, Any]) -> dict[str, Any]:
    rep = pipeline.stage_source(_cfg(config))
    _artifact(rep)
    return rep.to_dict()


@task(name="ingest", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def ingest_task(config: dict[str, Any], archive: str) -> dict[str, Any]:
    # ingestion caches per file (sha256) inside the build folder, so a retry or rerun is cheap
    rep = pipeline.stage_ingest(_cfg(config), archive)
    _artifact(rep)
    return rep.to_dict()


@task(name="measure-shard", cache_key_fn=_shard_cache_key("measure"), persist_result=True,
      result_serializer="json")
def measure_shard_task(config: dict[str, Any], shard: dict[str, Any]) -> str:
    return pipeline.stage_measure_shard(_cfg(config), shard)


@task(name="measure-merge", cache_policy=NO_CACHE)
def measure_merge_task(config: dict[str, Any], paths: list[str], seconds: float) -> dict[str, Any]:
    rep = pipeline.stage_measure_merge(_cfg(config), paths, seconds)
    _artifact(rep)
    return rep.to_dict()


@task(name="label-reason", cache_policy=NO_CACHE)
def records_task(config: dict[str, Any], cohort: str | None) -> dict[str, Any]:
    rep = pipeline.stage_records(_cfg(config), cohort)
    _artifact(rep)
    return rep.to_dict()


@task(name="instruct-shard", cache_key_fn=_shard_cache_key("instruct"), persist_result=True,
      result_serializer="json", retries=2, retry_delay_seconds=10)
def instruct_shard_task(config: dict[str, Any], shard: dict[str, Any]) -> str:
    cfg = _cfg(config)
    if cfg.instruct.mode == "llm":
        # A global limit across every worker of the build: at most `concurrency` LLM shards at once;
        # each shard's client also rate-limits its own requests (requests_per_second / slots).
        from prefect.concurrency.sync import concurrency

        with concurrency("grok-llm", occupy=1, create_if_missing=True):
            return instruct_stage.run_shard(cfg, shard)
    return instruct_stage.run_shard(cfg, shard)


@task(name="instruct-merge", cache_policy=NO_CACHE)
def instruct_merge_task(config: dict[str, Any], dirs: list[str], seconds: float) -> dict[str, Any]:
    rep = instruct_stage.merge(_cfg(config), dirs, seconds)
    _artifact(rep)
    return rep.to_dict()


@task(name="validate-publish", cache_policy=NO_CACHE)
def publish_task(config: dict[str, Any], deny_list: str | None, flow_run_id: str | None) -> dict[str, Any]:
    rep = pipeline.stage_publish(_cfg(config), deny_list, flow_run_id)
    _artifact(rep)
    out = rep.outputs
    contracts = Path(_cfg(config).work_dir) / "contracts"
    create_markdown_artifact(key="grok-dataset", description="Published dataset version", markdown="\n".join([
        f"# {out['dataset']}", "", f"- fingerprint: `{rep.details['fingerprint']}`",
        f"- version folder: `{out['path']}`", f"- dataset card: `{out['card']}`",
        f"- curator report: `{out['report']}` (open in a browser)",
        f"- contract data docs: `{contracts}/*/gx/uncommitted/data_docs/local_site/index.html`",
        "", "```json", json.dumps(rep.details["counts"], indent=1), "```"]))
    return rep.to_dict()


@task(name="announce", cache_policy=NO_CACHE)
def announce_task(dataset: str, fingerprint: str) -> None:
    """Emit ``grok.dataset.published`` (automations can react to it) for the new version."""
    from prefect.events import emit_event

    name, version = dataset.split("@")
    emit_event(event=PUBLISHED_EVENT, resource={"prefect.resource.id": f"grok.dataset.{name}"},
               payload={"dataset": dataset, "version": version, "fingerprint": fingerprint})


@task(name="trigger-training", retries=2, retry_delay_seconds=10, cache_policy=NO_CACHE)
def trigger_task(config: dict[str, Any], job: str, dataset: str) -> dict[str, Any]:
    cfg = _cfg(config)
    if cfg.train.via == "deployment":
        from prefect.deployments import run_deployment

        run = run_deployment(name=cfg.train.deployments[job], timeout=0,
                             parameters={"dataset": dataset, "registry": cfg.publish.registry,
                                         "profile": cfg.train.profile,
                                         "overrides": cfg.train.overrides.get(job, [])})
        return {"job": job, "flow_run_id": str(run.id), "deployment": cfg.train.deployments[job]}
    rep = pipeline.stage_train(cfg, job, dataset)
    _artifact(rep)
    return rep.to_dict()


@flow(name="build-dataset")
def build_dataset(config: dict[str, Any] | None = None, config_path: str | None = None,
                  demo_key: bool = False) -> dict[str, Any]:
    """Build, validate and publish a dataset version, then trigger the training jobs on it.

    ``demo_key`` allows the public demo pseudonym key when $GROK_PSEUDONYM_KEY is unset (phantom data only).
    """
    from prefect.runtime import flow_run

    if config is None:
        if config_path is None:
            raise ValueError("build_dataset needs config or config_path")
        config = load_config(config_path).model_dump(mode="json")
    cfg = _cfg(config)
    pipeline.require_pseudonym_key(cfg, demo_key=demo_key)
    logger = get_run_logger()
    src = source_task(config)
    ing = ingest_task(config, src["outputs"]["archive"])
    logger.info("ingest: %s files -> %s images, %s quarantined", ing["n_in"], ing["details"]["images"],
                ing["n_quarantined"])
    t0 = time.perf_counter()
    shards = pipeline.measure_plan(cfg)
    paths = measure_shard_task.map(config=unmapped(config), shard=shards).result()
    meas = measure_merge_task(config, paths, time.perf_counter() - t0)
    logger.info("measure: %s/%s studies in %d shards", meas["n_out"], meas["n_in"], len(shards))
    rec = records_task(config, src["outputs"].get("cohort"))
    t0 = time.perf_counter()
    ishards = instruct_stage.plan(cfg)
    dirs = instruct_shard_task.map(config=unmapped(config), shard=ishards).result()
    ins = instruct_merge_task(config, dirs, time.perf_counter() - t0)
    logger.info("instruct: %s rows verified, %s quarantined", ins["n_out"], ins["n_quarantined"])
    pub = publish_task(config, src["outputs"].get("deny_list"), str(flow_run.get_id() or ""))
    dataset = pub["outputs"]["dataset"]
    announce_task(dataset, pub["details"]["fingerprint"])
    trained = [trigger_task(config, job, dataset) for job in cfg.train.jobs]
    return {"dataset": dataset, "fingerprint": pub["details"]["fingerprint"], "outputs": pub["outputs"],
            "stages": [src, ing, meas, rec, ins, pub], "training": trained}


def with_runner(cfg: BuildConfig):
    """The flow with the task runner the config asks for (Dask for scale-out)."""
    if cfg.runner.kind == "dask":
        from prefect_dask import DaskTaskRunner

        if cfg.runner.dask_address:
            runner = DaskTaskRunner(address=cfg.runner.dask_address)
        else:
            runner = DaskTaskRunner(cluster_kwargs={"n_workers": cfg.runner.n_workers, "threads_per_worker": 1,
                                                    "processes": True, "dashboard_address": None})
        return build_dataset.with_options(task_runner=runner)
    # Prefect's default thread pool is effectively unbounded: dozens of shards measuring at once only
    # multiply memory (each holds a cube and its masks) without more cores. Default: one per core.
    import os

    from prefect.task_runners import ThreadPoolTaskRunner

    threads = cfg.runner.threads or os.cpu_count() or 1
    return build_dataset.with_options(task_runner=ThreadPoolTaskRunner(max_workers=threads))
