"""The rubric judge through the fault-injecting local OpenAI-compatible server (tests/llm_server.py) and the real
openai client: every answer scored or reported unscored with its reason (never zero), cached, usage and cost
summed, agreement with the deterministic scores; the judge's reply parsed defensively."""

from __future__ import annotations

import json
import re

import pytest

from grok.eval.data import Predictions, benchmark_from_records
from grok.eval.judge import (
    RUBRIC_PARTS,
    RUBRIC_SCHEMA,
    JudgeParseError,
    parse_judgement,
    run_judge,
    summarise_judge,
)
from grok.eval.report import write_figures
from grok.eval.score import evaluate
from grok.instruct.llm import LLMConfig
from grok.instruct.samples import sample_records
from grok.knowledge import load_knowledge_base
from grok.knowledge.lexicon import build_lexicon
from tests import llm_server
from tests.llm_server import Faults, LocalLLMServer


@pytest.fixture(scope="module")
def names():
    lex = build_lexicon(load_knowledge_base())
    return {v: k for k, v in lex.disease_names.items()}


@pytest.fixture(scope="module")
def bench():
    return benchmark_from_records(sample_records(14, 3))


def _judgement(stated: str, quant: int = 18) -> dict:
    out = {k: {"score": hi if k != "quantitative_accuracy" else quant, "reason": "fine"}
           for k, (_lo, hi) in RUBRIC_PARTS.items()}
    out["stated_diagnosis"] = stated
    return out


@pytest.fixture
def judge_server(monkeypatch, names):
    """The test server's rule-based model, answering judge prompts with a rubric judgement (wrapped in its
    usual {"answer": ...}, which the judge's parser unwraps)."""
    original = llm_server.fake_answer

    def fake(messages, wrong_number=False):
        text = llm_server._prompt_text(messages)
        if "Answer to grade:" not in text:
            return original(messages, wrong_number)
        label = re.search(r"^True category: ([^(\n]+)", text, re.MULTILINE)[1].strip()
        answer = text.split("Answer to grade:", 1)[1].lower()
        stated = names.get(label, "none") if label.lower() in answer else "none"
        return json.dumps(_judgement(stated))

    monkeypatch.setattr(llm_server, "fake_answer", fake)

    def start(**faults):
        return LocalLLMServer(Faults(**faults), seed=1).start()

    return start


def _cfg(url: str, **over) -> LLMConfig:
    base = {"base_url": url, "model": "judge-test", "concurrency": 8, "requests_per_second": 0, "timeout_s": 5,
            "max_retries": 2, "backoff_base_s": 0.0, "backoff_max_s": 0.0, "max_attempts": 2,
            "prices": {"judge-test": {"input_per_1m_usd": 1.0, "output_per_1m_usd": 2.0}}}
    return LLMConfig.model_validate({**base, **over})


def _perfect(bench) -> dict[str, str]:
    return {k: it.reference for k, it in bench.items.items()}


def test_judge_scores_every_answer_and_caches(bench, judge_server, tmp_path):
    answers = _perfect(bench)
    det = evaluate(bench, Predictions("p", answers), resamples=0, bleu=False)
    server = judge_server()
    try:
        cfg = _cfg(server.url)
        run = run_judge(cfg, bench.items, answers, tmp_path / "cache.sqlite")
        n = sum(1 for it in bench.items.values() if it.task in ("report", "cot"))
        assert len(run.results) == n and all(r["status"] == "scored" for r in run.results.values())
        assert run.calls == n and run.prompt_tokens > 0 and run.cost_usd > 0
        summary = summarise_judge(run, det["items"], cfg)
        assert summary["scored"] == n and summary["unscored"] == 0
        assert summary["total_mean"] == 100 - 2  # every part full but quantitative 18 of 20
        agree = summary["agreement_with_deterministic"]
        assert agree["diagnosis_items"] == n and agree["diagnosis_agreement"] == 1.0
        figures = write_figures({**det, "judge": summary}, tmp_path / "fig")
        assert [f.name for f in figures] == ["f1.png", "confusion.png", "rubric.png"]
        # rerun: every answer from the cache, no call
        again = run_judge(cfg, bench.items, answers, tmp_path / "cache.sqlite")
        assert again.calls == 0 and again.cached == n and again.results == run.results
        assert server.stats["requests"] == n
    finally:
        server.stop()


def test_malformed_truncated_and_failing_replies_are_unscored_never_zero(bench, judge_server, tmp_path):
    answers = _perfect(bench)
    det = evaluate(bench, Predictions("p", answers), resamples=0, bleu=False)
    server = judge_server(p_malformed=0.3, p_truncated=0.15, p429=0.1, p500=0.1)
    try:
        cfg = _cfg(server.url, max_attempts=1, max_retries=1)
        run = run_judge(cfg, bench.items, answers, tmp_path / "c.sqlite")
    finally:
        server.stop()
    summary = summarise_judge(run, det["items"], cfg)
    assert summary["unscored"] > 0 and summary["scored"] > 0
    assert summary["scored"] + summary["unscored"] == summary["judged"]
    reasons = " ".join(summary["unscored_reasons"].values())
    assert "unparsable" in reasons
    scored = [r["total"] for r in run.results.values() if r["status"] == "scored"]
    assert summary["total_mean"] == pytest.approx(sum(scored) / len(scored), abs=1e-3)  # unscored are not zeros
    assert summary["failed_tries"].get("unparsable", 0) >= summary["unscored"] - summary["failed_tries"].get(
        "http_429", 0) - summary["failed_tries"].get("http_5xx", 0)


def test_judge_that_times_out_is_reported(bench, judge_server, tmp_path):
    answers = _perfect(bench)
    server = judge_server(p_timeout=1.0, timeout_hold_s=3.0)
    try:
        cfg = _cfg(server.url, timeout_s=0.5, max_retries=0, max_attempts=1)
        items = {k: it for k, it in list(bench.items.items()) if it.task == "report"}
        items = dict(list(items.items())[:3])
        run = run_judge(cfg, items, answers, tmp_path / "t.sqlite")
    finally:
        server.stop()
    assert len(run.results) == 3
    assert all(r["status"] == "unscored" and r["reason"].startswith("timeout") for r in run.results.values())


def test_parse_judgement_defensively():
    good = _judgement("amd", quant=20)
    assert parse_judgement(json.dumps(good), "stop").total() == 100
    assert parse_judgement("```json\n" + json.dumps(good) + "\n```", "stop").stated_diagnosis == "amd"
    assert parse_judgement("Here it is: " + json.dumps(good) + " done", "stop").total() == 100
    assert parse_judgement(json.dumps({"answer": json.dumps(good)}), "stop").total() == 100
    bad = _judgement("amd")
    bad["coverage"]["score"] = 11
    with pytest.raises(JudgeParseError, match="coverage"):
        parse_judgement(json.dumps(bad), "stop")
    with pytest.raises(JudgeParseError, match="truncated"):
        parse_judgement(json.dumps(good), "length")
    with pytest.raises(JudgeParseError):
        parse_judgement("{'diagnosis_accuracy': ", "stop")
    missing = dict(good)
    missing.pop("coverage")
    with pytest.raises(JudgeParseError, match="coverage"):
        parse_judgement(json.dumps(missing), "stop")
    with pytest.raises(JudgeParseError):
        parse_judgement(json.dumps({**good, "stated_diagnosis": "cataract"}), "stop")


def test_rubric_schema_is_grok_eight_parts():
    assert list(RUBRIC_PARTS) == ["diagnosis_accuracy", "quantitative_accuracy", "qualitative_accuracy",
                                  "evidence_grounding", "reasoning_consistency", "coverage",
                                  "image_biomarker_alignment", "error_severity_penalty"]
    assert sum(hi for _lo, hi in RUBRIC_PARTS.values()) == 100 and RUBRIC_PARTS["error_severity_penalty"] == (-15, 0)
    props = RUBRIC_SCHEMA["properties"]
    assert props["quantitative_accuracy"]["properties"]["score"]["maximum"] == 20
    assert RUBRIC_SCHEMA["additionalProperties"] is False and set(RUBRIC_SCHEMA["required"]) == set(props)
