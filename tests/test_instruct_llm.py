"""LLM mode against a real local OpenAI-compatible HTTP server (tests/llm_server.py) and the real openai client."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import pytest

from grok.instruct.export import read_rows
from grok.instruct.generate import InstructConfig, build_instructions
from grok.instruct.llm import (
    ChatRequest,
    LLMCallError,
    LLMConfig,
    OpenAIChatClient,
    ParseError,
    RateLimiter,
    RequestCache,
    backoff_delay,
    base_url_host,
    cost_usd,
    parse_answer,
    parse_completion,
    response_format,
)
from grok.instruct.samples import sample_records
from grok.knowledge import load_knowledge_base
from tests.llm_server import Faults, LocalLLMServer

LLM_TASKS = ("diagnosis", "report", "cot", "biomarker_qa")


@pytest.fixture(scope="module")
def kb():
    return load_knowledge_base()


@pytest.fixture(scope="module")
def records(kb):
    return sample_records(12, seed=5, kb=kb)


def _cfg(url: str, **kw) -> LLMConfig:
    base = dict(base_url=url, model="grok-test", timeout_s=0.4, max_retries=12, backoff_base_s=0.005,
                requests_per_second=0, send_images=False,
                backoff_max_s=0.02, max_attempts=6, concurrency=8,
                prices={"grok-test": {"input_per_1m_usd": 0.5, "output_per_1m_usd": 1.5}})
    base.update(kw)
    return LLMConfig(**base)


def _build(records, out, cfg, kb, client=None):
    return build_instructions(records, out, InstructConfig(mode="llm", llm=cfg, tasks=LLM_TASKS), kb=kb,
                              llm_client=client)


def _jobs(out):
    rows = read_rows(out / "instructions.parquet")
    q = [r for r in read_rows(out / "quarantine.parquet") if r.get("task")]
    return rows, q


FAULTS_20 = Faults(p429=0.04, p500=0.04, p_timeout=0.03, p_truncated=0.03, p_malformed=0.03, p_bad_body=0.03,
                   timeout_hold_s=0.8)


@pytest.mark.parametrize("transport", ["auto", "sdk"])  # lean http/1.1 transport, and the SDK's own
def test_no_row_lost_or_duplicated_under_20_percent_faults_and_rerun_makes_no_call(tmp_path, records, kb, transport):
    with LocalLLMServer(FAULTS_20, seed=1) as srv:
        summary = _build(records, tmp_path, _cfg(srv.url, http_transport=transport), kb)
        rows, quarantined = _jobs(tmp_path)
        expected = {(r["study_id"], t) for r in records for t in LLM_TASKS}
        got = [(r["study_id"], r["task"]) for r in rows] + [(r["study_id"], r["task"]) for r in quarantined]
        assert sorted(got) == sorted(expected)  # every job exactly once: none lost, none duplicated
        assert not quarantined
        assert len({r["id"] for r in rows}) == len(rows)
        assert all(r["mode"] == "llm" and r["verifier_passed"] for r in rows)
        injected = sum(srv.stats[k] for k in ("p429", "p500", "p_timeout", "p_truncated", "p_malformed", "p_bad_body"))
        assert injected >= 0.1 * srv.stats["requests"]  # the faults really happened
        failures = read_rows(tmp_path / "failures.parquet")
        kinds = Counter(f["kind"] for f in failures)
        assert kinds["http_429"] == srv.stats["p429"] and kinds["http_5xx"] == srv.stats["p500"]
        assert kinds["timeout"] == srv.stats["p_timeout"]
        assert kinds["parse_error"] == srv.stats["p_truncated"] + srv.stats["p_malformed"]
        assert summary["llm"]["calls"] == srv.stats["ok"]
        # usage and cost per row and per build, from the price table
        prov = [json.loads(r["provenance"])["llm"] for r in rows]
        assert all(p["usage"]["prompt_tokens"] > 0 and p["cost_usd"] > 0 for p in prov)
        assert summary["llm"]["cost_this_run_usd"] == pytest.approx(
            cost_usd({"grok-test": {"input_per_1m_usd": 0.5, "output_per_1m_usd": 1.5}}, "grok-test",
                     summary["llm"]["tokens_billed_this_run"]["prompt"],
                     summary["llm"]["tokens_billed_this_run"]["completion"]), abs=1e-8)
        assert {p["base_url_host"] for p in prov} == {f"127.0.0.1:{srv.port}"}

        before = srv.stats["requests"]
        again = _build(records, tmp_path, _cfg(srv.url, http_transport=transport), kb)
        assert srv.stats["requests"] == before  # the rerun makes zero calls
        assert again["llm"]["calls"] == 0 and again["llm"]["cache_hits"] >= len(expected)
        rows2, _ = _jobs(tmp_path)
        strip = lambda rs: sorted((r["id"], json.dumps(r["messages"])) for r in rs)
        assert strip(rows2) == strip(rows)


class _CrashAfter:
    """Wraps the real client; raises (like a killed process) once ``n`` calls have been started.

    Counting started calls (not finished ones) bounds what can finish before the crash at ``n`` whatever
    the concurrency: counting finished ones let calls already in flight finish past ``n`` (a flaky bound).
    """

    def __init__(self, inner, n: int):
        self.inner, self.n, self.started, self.keys = inner, n, 0, []

    async def complete(self, request):
        if self.n is not None and self.started >= self.n:
            raise KeyboardInterrupt("simulated crash")
        self.started += 1
        self.keys.append(request.key)
        return await self.inner.complete(request)

    async def aclose(self):
        await self.inner.aclose()


def test_crash_mid_run_resumes_without_repeating_finished_calls(tmp_path, records, kb):
    with LocalLLMServer(Faults(p500=0.05), seed=2) as srv:
        cfg = _cfg(srv.url)

        async def make():
            return OpenAIChatClient(cfg)

        crash = _CrashAfter(asyncio.run(make()), 17)
        with pytest.raises(KeyboardInterrupt):
            _build(records, tmp_path, cfg, kb, client=crash)
        cache = RequestCache(tmp_path / "llm_cache.sqlite")
        finished = cache.keys()
        cache.close()
        assert 0 < len(finished) <= 17
        resume = _CrashAfter(asyncio.run(make()), None)
        _build(records, tmp_path, cfg, kb, client=resume)
        assert not finished & set(resume.keys)  # nothing finished before the crash was asked again
        rows, q = _jobs(tmp_path)
        assert len(rows) + len(q) == len(records) * len(LLM_TASKS) and not q


def test_rows_failing_verification_are_regenerated(tmp_path, records, kb):
    with LocalLLMServer(Faults(p_wrong_number=0.4), seed=3) as srv:
        summary = _build(records[:6], tmp_path, _cfg(srv.url, max_attempts=8), kb)
    rows, q = _jobs(tmp_path)
    assert not q and len(rows) == 6 * len(LLM_TASKS)
    assert max(r["attempts"] for r in rows) > 1
    fails = read_rows(tmp_path / "failures.parquet")
    verif = [f for f in fails if f["kind"] == "verification"]
    assert verif and all("wrong_number" in f["message"] for f in verif)
    assert summary["llm"]["failures_by_kind"]["verification"] == len(verif)
    for r in rows:
        assert json.loads(r["provenance"])["llm"]["attempt"] == r["attempts"]


def test_rows_that_never_verify_go_to_quarantine_with_reasons(tmp_path, records, kb):
    with LocalLLMServer(Faults(p_wrong_number=1.0), seed=4) as srv:
        summary = _build(records[:2], tmp_path, _cfg(srv.url, max_attempts=2), kb)
    rows, q = _jobs(tmp_path)
    assert summary["rows"] == len(rows)
    wrong = [r for r in q if "wrong_number" in r["reason"]]
    assert wrong and all(r["attempts"] == 2 for r in wrong)
    finals = [f for f in read_rows(tmp_path / "failures.parquet") if f["final"]]
    assert len(finals) == len(q)


def test_api_key_never_reaches_outputs_and_images_are_sent(tmp_path, records, kb, monkeypatch):
    secret = "sk-test-DO-NOT-STORE-1234567890"
    monkeypatch.setenv("GROK_LLM_API_KEY", secret)
    media = tmp_path / "media"
    recs = records[:2]
    from PIL import Image

    for r in recs:
        for rel in r["images"].values():
            p = tmp_path / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (120, 40, 20)).save(p)
    with LocalLLMServer(Faults(), seed=5) as srv:
        cfg = _cfg(srv.url, send_images=True, image_root=str(tmp_path))
        build_instructions(recs, tmp_path / "out", InstructConfig(mode="llm", llm=cfg, tasks=("report",)), kb=kb)
        assert srv.stats["image_parts"] == 2 * len(recs)
    assert media.exists()
    for f in (tmp_path / "out").iterdir():
        assert secret.encode() not in f.read_bytes(), f.name
    assert secret not in repr(cfg) and secret not in json.dumps(cfg.public())


def test_parse_answer_is_defensive():
    assert parse_answer('{"answer": "Diagnosis: glaucoma."}', "stop") == "Diagnosis: glaucoma."
    assert parse_answer('```json\n{"answer": "x"}\n```', "stop") == "x"
    assert parse_answer('Sure! {"answer": "y"} Hope this helps.', "stop") == "y"
    assert parse_answer("Plain text answer.", "stop") == "Plain text answer."
    for bad, fin in [('{"answer": "trunc', "length"), ("{'answer': 'single quotes'", "stop"), ('{"text": "x"}', "stop"),
                     ('{"answer": ""}', "stop"), ("", "stop"), ("[1, 2]", "stop")]:
        with pytest.raises(ParseError):
            parse_answer(bad, fin)


def test_config_validation_and_key_handling(tmp_path):
    with pytest.raises(ValueError, match="base_url"):
        LLMConfig(base_url="localhost:8000", model="m")
    with pytest.raises(ValueError, match="concurrency"):
        LLMConfig(base_url="http://x/v1", model="m", concurrency=0)
    with pytest.raises(ValueError, match="structured_output"):
        LLMConfig(base_url="http://x/v1", model="m", structured_output="xml")
    with pytest.raises(ValueError, match="http_transport"):
        LLMConfig(base_url="http://x/v1", model="m", http_transport="curl")
    p = tmp_path / "llm.yaml"
    p.write_text("base_url: http://x/v1\nmodel: m\napi_key: sk-123\n")
    with pytest.raises(ValueError, match="API key"):
        LLMConfig.from_file(p)
    p.write_text("base_url: http://user:pw@gpu-box:8000/v1\nmodel: m\nconcurrency: 4\n")
    cfg = LLMConfig.from_file(p)
    assert cfg.concurrency == 4 and cfg.public()["base_url_host"] == "gpu-box:8000"
    assert base_url_host("https://api.example.com/v1?x=1") == "api.example.com"
    assert cost_usd({}, "m", 10, 10) is None
    assert cost_usd({"m": {"input_per_1m_usd": 1.0, "output_per_1m_usd": 3.0}}, "m", 1_000_000, 500_000) == 2.5


def test_rate_limiter_and_backoff():
    async def go():
        lim = RateLimiter(50.0)
        t = time.monotonic()
        await asyncio.gather(*(lim.acquire() for _ in range(6)))
        return time.monotonic() - t

    assert asyncio.run(go()) >= 5 / 50.0 * 0.9
    for k in range(6):
        d = backoff_delay(k, 0.5, 4.0, None)
        assert 0.0 <= d <= min(4.0, 0.5 * 2**k)
    assert backoff_delay(3, 0.5, 4.0, 1.5) == 1.5
    assert backoff_delay(3, 0.5, 4.0, 100.0) == 4.0


def test_client_sends_what_chat_completions_create_sends():
    """The client posts its own body (see OpenAIChatClient): it must equal what the SDK's typed
    ``chat.completions.create`` sends for the same request, and read the same answer back."""
    import openai

    messages = [{"role": "system", "content": "Task: diagnosis"},
                {"role": "user", "content": [{"type": "text", "text": "Task: diagnosis\nEye: right eye\n"
                                                                      "Diagnosis to reach: Glaucoma"},
                                             {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]
    with LocalLLMServer() as srv:
        srv.state.keep_requests = True
        cfg = _cfg(srv.url)
        req = ChatRequest(cfg.model, messages, {**cfg.sampling(), "seed": 7}, response_format("json_schema"), "t",
                          cfg.timeout_s)

        async def go():
            ours = OpenAIChatClient(cfg)
            ref = openai.AsyncOpenAI(base_url=srv.url, api_key="EMPTY", max_retries=0)
            try:
                mine = await ours.complete(req)
                theirs = await ref.chat.completions.create(model=req.model, messages=req.messages,
                                                           response_format=req.response_format,
                                                           timeout=req.timeout_s, **req.sampling)
            finally:
                await ours.aclose()
                await ref.close()
            return mine, theirs

        mine, theirs = asyncio.run(go())
        sent_mine, sent_theirs = srv.state.requests
    assert sent_mine == sent_theirs
    assert sent_mine["seed"] == 7 and sent_mine["response_format"]["type"] == "json_schema"
    assert mine.content == theirs.choices[0].message.content and "Glaucoma" in mine.content
    assert mine.finish_reason == theirs.choices[0].finish_reason == "stop"
    assert (mine.prompt_tokens, mine.completion_tokens) == (theirs.usage.prompt_tokens, theirs.usage.completion_tokens)
    assert mine.model == theirs.model


@pytest.mark.parametrize("body", [b'{"id": "x", "choices": [ {"message": ', b"not json", b'{"choices": []}',
                                  b'{"choices": [{"message": {"content": ["a"]}}]}', b"[1, 2]", b"\xff\xfe"])
def test_unreadable_completion_bodies_are_retryable_malformed_responses(body):
    with pytest.raises(LLMCallError) as info:
        parse_completion(body)
    assert info.value.kind == "malformed_response" and info.value.retryable
