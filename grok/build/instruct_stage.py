"""Instruct stage of a build: study records -> verified instruction rows (sharded, resumable).

Records are cut into shards (``instruct.shard_size``); each shard runs
:func:`grok.instruct.generate.build_instructions` into ``BUILD/instruct/shard-<name>/`` and marks
itself done with a ``DONE`` file holding the content key of its inputs (:mod:`grok.build.keys`), so a
restarted build skips finished shards and a changed record, setting or template regenerates its shard (LLM calls of an
unfinished shard are replayed from the SQLite request cache, never repeated). :func:`merge` writes
``BUILD/instructions.parquet`` and ``BUILD/instructions_quarantine.parquet``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from grok import __version__
from grok.build.config import BuildConfig
from grok.build.keys import content_key, files_digest, shard_name
from grok.build.pipeline import StageReport, _check_yield, _kb, _update_build_json, build_id, work


def plan(cfg: BuildConfig) -> list[dict[str, Any]]:
    """The instruct shards, ``[{"ids": [...], "key": content key}]``: a shard's key covers its study records,
    the instruct settings, the build id, the knowledge-base snapshot, every template file and the code."""
    from grok.build.records import read_records
    from grok.instruct.templating import templates_dir

    records = {r["study_id"]: r for r in read_records(work(cfg))}
    ids = sorted(records)
    n = cfg.instruct.shard_size
    settings = cfg.instruct.model_dump(mode="json", exclude={"shard_size"})
    common = {"stage": "instruct", "code": __version__, "config": settings, "build_id": build_id(cfg),
              "kb": _kb(cfg).snapshot_id, "templates": files_digest(cfg.instruct.templates_dir or templates_dir())}
    return [{"ids": ids[i:i + n], "key": content_key({**common, "records": [records[s] for s in ids[i:i + n]]})}
            for i in range(0, len(ids), n)]


def shard_dir(cfg: BuildConfig, ids: list[str]) -> Path:
    return work(cfg) / "instruct" / f"shard-{shard_name(ids)}"


def finished_shard(cfg: BuildConfig, shard: dict[str, Any]) -> Path | None:
    """The shard's folder when it finished from the same inputs (its ``DONE`` file holds the same key)."""
    done = shard_dir(cfg, shard["ids"]) / "DONE"
    return done.parent if done.exists() and done.read_text().strip() == shard["key"] else None


def _instruct_config(cfg: BuildConfig):
    from grok.instruct.generate import InstructConfig

    s = cfg.instruct
    llm = None
    if s.mode == "llm":
        from grok.instruct.llm import LLMConfig

        l = s.llm
        # the key is read from the environment by the client, never copied into config or rows
        llm = LLMConfig(base_url=l.base_url, model=l.model, api_key_env=l.api_key_env,
                        concurrency=l.concurrency, requests_per_second=l.requests_per_second, timeout_s=l.timeout_s,
                        max_attempts=l.max_attempts, temperature=l.temperature, max_tokens=l.max_tokens,
                        send_images=l.send_images, image_root=str(work(cfg)))
    kw: dict[str, Any] = dict(mode=s.mode, seed=s.seed, build_id=build_id(cfg), llm=llm,
                              templates_dir=s.templates_dir)
    if s.tasks:
        kw["tasks"] = tuple(s.tasks)
    return InstructConfig(**kw)


def run_shard(cfg: BuildConfig, shard: dict[str, Any]) -> str:
    """Generate and verify one shard (``{"ids", "key"}`` from :func:`plan`); a shard finished from the same
    inputs is returned as is. Outputs from other inputs are removed first; the LLM request cache is kept
    (a request that did not change is replayed from it, never sent again)."""
    from grok.build.records import read_records
    from grok.instruct.generate import build_instructions

    done = finished_shard(cfg, shard)
    if done is not None:
        return str(done)
    out = shard_dir(cfg, shard["ids"])
    if out.exists():
        for p in out.iterdir():
            if not p.name.startswith("llm_cache.sqlite"):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    want = set(shard["ids"])
    records = [r for r in read_records(work(cfg)) if r["study_id"] in want]
    build_instructions(records, out, _instruct_config(cfg), kb=_kb(cfg))
    (out / "DONE").write_text(shard["key"] + "\n")
    return str(out)


def merge(cfg: BuildConfig, shard_dirs: list[str], seconds: float = 0.0) -> StageReport:
    tables, qtables = [], []
    summaries = []
    for d in sorted(shard_dirs):
        p = Path(d)
        tables.append(pq.read_table(p / "instructions.parquet"))
        if (p / "quarantine.parquet").exists():
            qtables.append(pq.read_table(p / "quarantine.parquet"))
        if (p / "summary.json").exists():
            summaries.append(json.loads((p / "summary.json").read_text()))
    ins = pa.concat_tables(tables) if tables else None
    if ins is not None:
        ins = ins.sort_by("id")
        pq.write_table(ins, work(cfg) / "instructions.parquet", compression="zstd")
    q = pa.concat_tables(qtables) if qtables else None
    if q is not None:
        pq.write_table(q, work(cfg) / "instructions_quarantine.parquet", compression="zstd")
    n_out = ins.num_rows if ins is not None else 0
    n_q = q.num_rows if q is not None else 0
    rep = StageReport("instruct", n_in=n_out + n_q, n_out=n_out, n_quarantined=n_q, seconds=seconds,
                      outputs={"instructions": str(work(cfg) / "instructions.parquet"),
                               "quarantine": str(work(cfg) / "instructions_quarantine.parquet")},
                      details={"shards": len(shard_dirs),
                               "usage": [s.get("usage") for s in summaries if s.get("usage")]})
    _update_build_json(cfg, last_stage="instruct")
    return _check_yield(rep, cfg)


def stage_instruct(cfg: BuildConfig) -> StageReport:
    t0 = time.perf_counter()
    dirs = [run_shard(cfg, shard) for shard in plan(cfg)]
    return merge(cfg, dirs, seconds=time.perf_counter() - t0)
