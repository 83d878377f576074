"""Rewrite mode (instruct.mode: rewrite): an OpenAI-compatible model rewrites the verified template answer;
a rewrite is kept only when it passes the verifier on the same record, else retried, else the draft is kept
and its provenance records the fallback. Against the fault-injecting local server of the LLM-mode tests."""

from __future__ import annotations

import json

import pytest

from grok.instruct.export import read_rows
from grok.instruct.families import FAMILIES
from grok.instruct.generate import InstructConfig, build_instructions
from grok.instruct.llm import LLMConfig
from grok.instruct.samples import sample_records
from grok.knowledge import load_knowledge_base
from tests.llm_server import Faults, LocalLLMServer

REWRITTEN = tuple(f for f, fam in FAMILIES.items() if fam.llm)


@pytest.fixture(scope="module")
def kb():
    return load_knowledge_base()


@pytest.fixture(scope="module")
def records(kb):
    return sample_records(8, seed=6, kb=kb)


@pytest.fixture(scope="module")
def drafts(records, kb, tmp_path_factory):
    """The template build of the same records: what rewrite mode starts from and falls back to."""
    out = tmp_path_factory.mktemp("drafts")
    build_instructions(records, out, InstructConfig(), kb=kb)
    return {r["id"]: r for r in read_rows(out / "instructions.parquet")}


def _cfg(url: str, **kw) -> LLMConfig:
    base = dict(base_url=url, model="grok-test", timeout_s=0.4, max_retries=12, backoff_base_s=0.005,
                requests_per_second=0, send_images=False, backoff_max_s=0.02, max_attempts=3, concurrency=8)
    base.update(kw)
    return LLMConfig(**base)


def _rewrite(records, out, url, kb, **kw):
    summary = build_instructions(records, out, InstructConfig(mode="rewrite", llm=_cfg(url, **kw)), kb=kb)
    return summary, {r["id"]: r for r in read_rows(out / "instructions.parquet")}


def test_rewrites_that_verify_replace_the_draft(tmp_path, records, kb, drafts):
    with LocalLLMServer(Faults(), seed=1) as srv:
        summary, rows = _rewrite(records, tmp_path, srv.url, kb)
    assert set(rows) == set(drafts)  # same rows: one per (study, family), nothing lost or added
    rewritten = [r for r in rows.values() if r["mode"] == "rewrite"]
    assert {r["task"] for r in rewritten} == set(REWRITTEN)
    for r in rewritten:
        prov = json.loads(r["provenance"])
        assert r["verifier_passed"] and prov["llm"]["rewrite"]["fallback"] is False
        assert prov["template_id"] == "llm/rewrite_prompt.j2"
        assert r["messages"][:-1] == drafts[r["id"]]["messages"][:-1]  # the question is the template's
        assert r["messages"][-1]["content"] != drafts[r["id"]]["messages"][-1]["content"]
    for r in rows.values():
        if r["task"] not in REWRITTEN:
            assert r["mode"] == "template" and r["messages"] == drafts[r["id"]]["messages"]
    assert summary["rows_per_mode"]["rewrite"] == len(rewritten)
    assert summary["quarantined"] == 0 and summary["llm"]["rewrite_fallbacks"] == 0


def test_rewrites_that_never_verify_keep_the_draft_and_say_so(tmp_path, records, kb, drafts):
    with LocalLLMServer(Faults(p_wrong_number=1.0), seed=2) as srv:
        summary, rows = _rewrite(records, tmp_path, srv.url, kb, max_attempts=2)
    assert set(rows) == set(drafts) and summary["quarantined"] == 0
    fallbacks = [r for r in rows.values() if r["task"] in REWRITTEN]
    assert fallbacks and summary["llm"]["rewrite_fallbacks"] == len(fallbacks)
    for r in fallbacks:
        assert r["mode"] == "template" and r["messages"] == drafts[r["id"]]["messages"] and r["attempts"] == 2
        rw = json.loads(r["provenance"])["rewrite"]
        assert rw["fallback"] is True and rw["attempts"] == 2
        assert any("wrong_number" in x for x in rw["last_reasons"])
    fails = read_rows(tmp_path / "failures.parquet")
    assert sum(f["kind"] == "verification" for f in fails) == 2 * len(fallbacks)


def test_no_row_is_lost_under_faults(tmp_path, records, kb, drafts):
    faults = Faults(p429=0.05, p500=0.05, p_truncated=0.05, p_malformed=0.05, p_wrong_number=0.3)
    with LocalLLMServer(faults, seed=3) as srv:
        summary, rows = _rewrite(records, tmp_path, srv.url, kb, max_attempts=2)
    assert set(rows) == set(drafts) and summary["quarantined"] == 0
    modes = {r["mode"] for r in rows.values() if r["task"] in REWRITTEN}
    assert modes <= {"rewrite", "template"} and "rewrite" in modes
    assert all(r["verifier_passed"] for r in rows.values())


def test_a_rewrite_that_cannot_be_asked_keeps_the_draft(tmp_path, records, kb, drafts):
    """Images the prompt would send are missing (bad input for the request): the draft needs none, so it is kept."""
    with LocalLLMServer(Faults(), seed=4) as srv:
        summary, rows = _rewrite(records, tmp_path, srv.url, kb, send_images=True, image_root=str(tmp_path / "none"))
    assert set(rows) == set(drafts) and summary["quarantined"] == 0 and summary["llm"]["calls"] == 0
    kept = [r for r in rows.values() if r["task"] in REWRITTEN]
    assert kept and all(json.loads(r["provenance"])["rewrite"]["last_reasons"][0].startswith("bad_input") for r in kept)
