"""Rewrite mode against a real OpenAI-compatible server no one here wrote: ``transformers serve`` with the tiny
random Qwen2 of the judge test (its ``served`` fixture). Random text never verifies, so every rewrite falls back
to its verified template draft, the fallback is in each row's provenance, and no row is lost."""

from __future__ import annotations

import json

from grok.instruct.export import read_rows
from grok.instruct.families import FAMILIES
from grok.instruct.generate import InstructConfig, build_instructions
from grok.instruct.llm import LLMConfig
from grok.instruct.samples import sample_records
from grok.knowledge import load_knowledge_base
from tests.test_eval_serve import served  # noqa: F401 - the fixture (starts transformers serve; skips without it)


def test_every_rewrite_of_a_random_model_falls_back_to_its_draft(served, tmp_path):  # noqa: F811
    url, model = served
    kb = load_knowledge_base()
    records = sample_records(2, seed=7, kb=kb)
    build_instructions(records, tmp_path / "draft", InstructConfig(), kb=kb)
    drafts = {r["id"]: r for r in read_rows(tmp_path / "draft" / "instructions.parquet")}
    cfg = LLMConfig(base_url=url, model=model, concurrency=2, requests_per_second=0, timeout_s=120, max_retries=1,
                    backoff_base_s=0.0, max_attempts=1, max_tokens=16, structured_output="none", send_images=False)
    summary = build_instructions(records, tmp_path / "rw", InstructConfig(mode="rewrite", llm=cfg), kb=kb)
    rows = {r["id"]: r for r in read_rows(tmp_path / "rw" / "instructions.parquet")}
    assert set(rows) == set(drafts) and summary["quarantined"] == 0
    rewritten = [r for r in rows.values() if FAMILIES[r["task"]].llm]
    assert rewritten and summary["llm"]["rewrite_fallbacks"] == len(rewritten) and summary["llm"]["calls"] > 0
    for r in rewritten:
        assert r["mode"] == "template" and r["messages"] == drafts[r["id"]]["messages"]
        assert json.loads(r["provenance"])["rewrite"]["fallback"] is True
