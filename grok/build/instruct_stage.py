"""Instruct stage of a build: study records -> verified instruction rows (sharded, resumable).

Records are cut into shards (``instruct.shard_size``); each shard runs
:func:`grok.instruct.generate.build_instructions` into ``BUILD/instruct/shard-<key>/`` and marks
itself done with a ``DONE`` file, so a restarted build skips finished shards (LLM calls of an
unfinished shard are replayed from the SQLite request cache, never repeated). :func:`merge` writes
``BUILD/instructions.parquet`` and ``BUILD/instructions_quarantine.parquet``.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from grok.build.config import BuildConfig
from grok.build.pipeline import StageReport, _check_yield, _kb, _update_build_json, build_id, work


def plan(cfg: BuildConfig) -> list[list[str]]:
    from grok.build.records import read_records

    ids = sorted(r["study_id"] for r in read_records(work(cfg)))
    n = cfg.instruct.shard_size
    return [ids[i:i + n] for i in range(0, len(ids), n)]


def _shard_key(cfg: BuildConfig, ids: list[str]) -> str:
    h = hashlib.sha256(json.dumps(cfg.instruct.model_dump(mode="json"), sort_keys=True).encode())
    h.update(build_id(cfg).encode())
    for i in ids:
        h.update(i.encode() + b"\n")
    return h.hexdigest()[:16]


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


def run_shard(cfg: BuildConfig, ids: list[str]) -> str:
    """Generate and verify one shard; idempotent (a finished shard is returned as is)."""
    from grok.build.records import read_records
    from grok.instruct.generate import build_instructions

    out = work(cfg) / "instruct" / f"shard-{_shard_key(cfg, ids)}"
    if (out / "DONE").exists():
        return str(out)
    want = set(ids)
    records = [r for r in read_records(work(cfg)) if r["study_id"] in want]
    build_instructions(records, out, _instruct_config(cfg), kb=_kb(cfg))
    (out / "DONE").write_text("ok\n")
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
    dirs = [run_shard(cfg, ids) for ids in plan(cfg)]
    return merge(cfg, dirs, seconds=time.perf_counter() - t0)
