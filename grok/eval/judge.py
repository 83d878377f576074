"""The rubric judge: GROK's eight-part rubric scored by an LLM through any OpenAI-compatible server.

Run as: grok eval PREDICTIONS.jsonl --dataset NAME@VERSION --judge-config judge.yaml [--judge-tasks report,cot]

The judge's settings are :class:`grok.instruct.llm.LLMConfig` (the same file works for ``grok instruct
--llm-config``), and its calls go through LLM mode's client, request cache (SQLite, one commit per
response), rate limiter and retries with backoff (:mod:`grok.instruct.llm`). The prompt is
``templates/eval/judge_prompt.j2``; the reply is one JSON object under :data:`RUBRIC_SCHEMA`
(structured output; parsed defensively: code fences, text around the object). A reply that does not
parse, or scores a part outside its range, is asked again with a new seed up to ``max_attempts``;
an answer still without a valid judgement is **unscored** with the reason, never counted as zero.
Token usage and cost (from ``prices``) are summed. The judge's stated diagnosis and quantitative
part are compared with the deterministic scores (:func:`agreement`).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from grok.eval.data import Item
from grok.ids import CATEGORIES
from grok.instruct.llm import (
    ChatRequest,
    LLMCallError,
    LLMConfig,
    OpenAIChatClient,
    RateLimiter,
    RequestCache,
    call_with_retries,
    cost_usd,
)
from grok.instruct.templating import TemplateLibrary, split_messages
from grok.knowledge import load_knowledge_base

#: GROK's rubric: part -> (lowest, highest) score. Total 100 (the penalty lowers it).
RUBRIC_PARTS: dict[str, tuple[int, int]] = {
    "diagnosis_accuracy": (0, 20), "quantitative_accuracy": (0, 20), "qualitative_accuracy": (0, 15),
    "evidence_grounding": (0, 10), "reasoning_consistency": (0, 15), "coverage": (0, 10),
    "image_biomarker_alignment": (0, 10), "error_severity_penalty": (-15, 0),
}
PROMPT_TEMPLATE = "eval/judge_prompt.j2"
#: Tasks judged by default (the rubric grades reports and chains of thought).
DEFAULT_TASKS = ("report", "cot")


def _part_schema(lo: int, hi: int) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "required": ["score", "reason"],
            "properties": {"score": {"type": "integer", "minimum": lo, "maximum": hi}, "reason": {"type": "string"}}}


def rubric_schema(categories: tuple[str, ...] | list[str] = CATEGORIES) -> dict[str, Any]:
    """The JSON schema the judge answers under (OpenAI structured output, strict); ``stated_diagnosis`` is
    one of ``categories`` (the knowledge base's diseases and ``normal``) or ``none``."""
    return {
        "type": "object", "additionalProperties": False,
        "required": [*RUBRIC_PARTS, "stated_diagnosis"],
        "properties": {**{k: _part_schema(lo, hi) for k, (lo, hi) in RUBRIC_PARTS.items()},
                       "stated_diagnosis": {"type": "string", "enum": [*categories, "none"]}},
    }


#: The schema over GROK's six categories and normal.
RUBRIC_SCHEMA: dict[str, Any] = rubric_schema()


def kb_categories(kb=None) -> list[str]:
    """``normal`` and every disease of the knowledge base (GROK's categories first)."""
    kb = kb or load_knowledge_base()
    return [*CATEGORIES, *sorted(d for d in kb.diseases if d not in CATEGORIES)]


class Part(BaseModel):
    model_config = ConfigDict(extra="forbid")
    score: int
    reason: str = ""


class Judgement(BaseModel):
    """One parsed judgement: a :class:`Part` per rubric part and the stated diagnosis."""

    model_config = ConfigDict(extra="forbid")
    diagnosis_accuracy: Part
    quantitative_accuracy: Part
    qualitative_accuracy: Part
    evidence_grounding: Part
    reasoning_consistency: Part
    coverage: Part
    image_biomarker_alignment: Part
    error_severity_penalty: Part
    stated_diagnosis: str = Field(min_length=1)

    def total(self) -> int:
        return sum(getattr(self, k).score for k in RUBRIC_PARTS)


class JudgeParseError(ValueError):
    """The judge's reply is not a valid judgement (the message says why)."""


_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


def parse_judgement(content: str, finish_reason: str | None, categories=CATEGORIES) -> Judgement:
    """The :class:`Judgement` in a reply. Accepts the object alone, in a code fence, inside text, or
    wrapped in a one-key object (``{"answer": {...}}`` or ``{"answer": "{...}"}``, as a model asked for
    ``{"answer": ...}`` elsewhere writes it). Raises :class:`JudgeParseError` for truncated output,
    broken JSON, missing parts, extra keys and scores outside a part's range."""
    if finish_reason == "length":
        raise JudgeParseError("output truncated (finish_reason=length)")
    text = (content or "").strip()
    m = _FENCE.match(text)
    if m:
        text = m.group(1).strip()
    obj: Any = None
    for cand in (text, text[text.find("{"): text.rfind("}") + 1] if "{" in text else ""):
        try:
            obj = json.loads(cand)
            break
        except (json.JSONDecodeError, ValueError):
            continue
    if obj is None:
        raise JudgeParseError(f"malformed JSON ({text[:60]!r}...)")
    for _ in range(2):  # unwrap {"answer": ...}
        if isinstance(obj, dict) and len(obj) == 1 and not (set(obj) & set(RUBRIC_PARTS)):
            inner = next(iter(obj.values()))
            if isinstance(inner, str):
                try:
                    inner = json.loads(inner)
                except json.JSONDecodeError as exc:
                    raise JudgeParseError(f"wrapped reply is not JSON ({exc.msg})") from exc
            obj = inner
    if not isinstance(obj, dict):
        raise JudgeParseError(f"expected a JSON object, got {type(obj).__name__}")
    try:
        j = Judgement.model_validate(obj)
    except ValidationError as exc:
        raise JudgeParseError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())[:300]) from exc
    if j.stated_diagnosis not in (*categories, "none"):
        raise JudgeParseError(f"stated_diagnosis {j.stated_diagnosis!r} is not one of {', '.join(categories)} or none")
    for k, (lo, hi) in RUBRIC_PARTS.items():
        s = getattr(j, k).score
        if not lo <= s <= hi:
            raise JudgeParseError(f"{k}: score {s} outside {lo}..{hi}")
    return j


def judge_messages(library: TemplateLibrary, item: Item, answer: str, tolerance: float,
                   categories: list[str] | tuple[str, ...] = CATEGORIES) -> tuple[list[dict], str]:
    """The judge's chat messages for one answer, and the prompt template's sha256."""
    f = item.facts
    ctx = {
        "label_name": f.label_name, "stage": f.stage, "eye_words": f.eye_words, "tolerance_pct": round(tolerance * 100),
        "categories": list(categories), "question": item.question, "reference": item.reference, "answer": answer,
        "measured": [{"name": b.name, "text": b.text, "status": b.status, "low_text": b.low_text,
                      "high_text": b.high_text} for b in f.biomarkers.values()],
        "present": [str(x.get("term") or x.get("name") or x.get("id")) for x in f.findings],
        "absent": [str(a).replace("_", " ") for a in f.absent],
    }
    text, info = library.render_text(PROMPT_TEMPLATE, ctx)
    return split_messages(text, PROMPT_TEMPLATE, keep_lines=True), info.sha256


@dataclass
class JudgeRun:
    """Per item: ``{"status": "scored", "parts", "total", "stated_diagnosis", "attempts"}`` or
    ``{"status": "unscored", "reason", "attempts"}``; usage and cost summed; failed tries by kind."""

    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0
    calls: int = 0
    cached: int = 0
    failures: dict[str, int] = field(default_factory=dict)


async def _judge_all(cfg: LLMConfig, jobs: list[tuple[str, Item, str]], cache: RequestCache, client,
                     run: JudgeRun, categories: list[str], tolerance: float) -> None:
    library = TemplateLibrary()
    limiter = RateLimiter(cfg.requests_per_second)
    sem = asyncio.Semaphore(cfg.concurrency)
    schema = rubric_schema(categories)
    fmt = {"type": "json_schema", "json_schema": {"name": "grok_rubric", "schema": schema, "strict": True}} \
        if cfg.structured_output == "json_schema" else \
        ({"type": "json_object"} if cfg.structured_output == "json_object" else None)

    def failed(_i: int, exc: LLMCallError) -> None:
        run.failures[exc.kind] = run.failures.get(exc.kind, 0) + 1

    async def one(iid: str, item: Item, answer: str) -> None:
        async with sem:  # the prompt is rendered here, so requests start while later prompts wait
            messages, sha = judge_messages(library, item, answer, tolerance, categories)
            reasons = []
            for attempt in range(1, cfg.max_attempts + 1):
                sampling = {**cfg.sampling(), "temperature": 0.0 if attempt == 1 else cfg.temperature,
                            "seed": attempt}
                req = ChatRequest(cfg.model, messages, sampling, fmt, sha, cfg.timeout_s)
                resp = cache.get(req.key)
                if resp is None:
                    try:
                        resp = await call_with_retries(client, req, cfg, limiter, failed)
                    except LLMCallError as exc:
                        reasons.append(f"{exc.kind}: {str(exc)[:200]}")
                        continue
                    cache.put(req.key, resp)
                    run.calls += 1
                    run.prompt_tokens += resp.prompt_tokens or 0
                    run.completion_tokens += resp.completion_tokens or 0
                    c = cost_usd(cfg.prices, cfg.model, resp.prompt_tokens, resp.completion_tokens)
                    run.cost_usd = None if c is None or run.cost_usd is None else run.cost_usd + c
                else:
                    run.cached += 1
                try:
                    j = parse_judgement(resp.content, resp.finish_reason, categories)
                except JudgeParseError as exc:
                    reasons.append(f"unparsable: {exc}")
                    run.failures["unparsable"] = run.failures.get("unparsable", 0) + 1
                    continue
                run.results[iid] = {"status": "scored", "attempts": attempt, "total": j.total(),
                                    "stated_diagnosis": j.stated_diagnosis,
                                    "parts": {k: getattr(j, k).score for k in RUBRIC_PARTS},
                                    "reasons": {k: getattr(j, k).reason for k in RUBRIC_PARTS}}
                return
            run.results[iid] = {"status": "unscored", "attempts": cfg.max_attempts,
                                "reason": reasons[-1] if reasons else "no attempt", "all_reasons": reasons}

    await asyncio.gather(*(one(i, it, a) for i, it, a in jobs))


def run_with_client(cfg: LLMConfig, cache_path: str | Path, client, work) -> None:
    """Run ``await work(client, cache)`` in a fresh event loop with LLM mode's client (``client`` when given,
    e.g. a test double; else an :class:`OpenAIChatClient`, closed afterwards) and request cache (closed)."""
    cache = RequestCache(cache_path)

    async def main() -> None:
        cl = client or OpenAIChatClient(cfg)
        try:
            await work(cl, cache)
        finally:
            if client is None:
                await cl.aclose()

    try:
        asyncio.run(main())
    finally:
        cache.close()


def run_judge(cfg: LLMConfig, items: dict[str, Item], answers: dict[str, str], cache_path: str | Path,
              tasks: tuple[str, ...] = DEFAULT_TASKS, tolerance: float = 0.10, client=None, kb=None) -> JudgeRun:
    """Judge every answered item of ``tasks`` (an item without an answer is not sent: it has no text to
    grade, and the deterministic scores already count it). ``kb``: the knowledge base already loaded
    (its categories are the schema's diagnoses; loaded here when not given)."""
    categories = kb_categories(kb)
    jobs = [(iid, it, answers[iid]) for iid, it in items.items()
            if it.task in tasks and it.facts is not None and (answers.get(iid) or "").strip()]
    run = JudgeRun()
    run_with_client(cfg, cache_path, client,
                    lambda cl, cache: _judge_all(cfg, jobs, cache, cl, run, categories, tolerance))
    if run.cost_usd is not None and cfg.model not in cfg.prices:
        run.cost_usd = None
    return run


def _pearson(x: list[float], y: list[float]) -> float | None:
    if len(x) < 3:
        return None
    a, b = np.asarray(x, float), np.asarray(y, float)
    if a.std() == 0 or b.std() == 0:
        return None
    return round(float(np.corrcoef(a, b)[0, 1]), 4)


def summarise_judge(run: JudgeRun, items_scores: Iterable[dict[str, Any]], cfg: LLMConfig) -> dict[str, Any]:
    """Rubric means (scored answers only; unscored ones are counted, never zero), usage, cost, and the
    judge's agreement with the deterministic scores on the parts they share. ``items_scores``: the
    per-item rows (``grok.eval.score.iter_items``, read once; only the judged ones are kept)."""
    scored = {k: v for k, v in run.results.items() if v["status"] == "scored"}
    unscored = {k: v["reason"] for k, v in run.results.items() if v["status"] != "scored"}
    det = {s["id"]: s for s in items_scores if s["id"] in scored}
    parts = {k: (round(sum(v["parts"][k] for v in scored.values()) / len(scored), 3) if scored else None)
             for k in RUBRIC_PARTS}
    by_task: dict[str, list[int]] = {}
    for k, v in scored.items():
        by_task.setdefault(det[k]["task"], []).append(v["total"])
    dx_pairs = [(v["stated_diagnosis"], det[k]["predicted"] or "none") for k, v in scored.items()
                if det[k].get("classified")]
    q_pairs = [(v["parts"]["quantitative_accuracy"] / 20.0, det[k]["quantitative"]) for k, v in scored.items()
               if det[k].get("quantitative") is not None]
    return {
        "model": cfg.public(), "prompt_template": PROMPT_TEMPLATE, "judged": len(run.results), "scored": len(scored),
        "unscored": len(unscored), "unscored_reasons": dict(list(unscored.items())[:20]),
        "total_mean": round(sum(v["total"] for v in scored.values()) / len(scored), 3) if scored else None,
        "parts_mean": parts, "total_mean_by_task": {k: round(sum(v) / len(v), 3) for k, v in sorted(by_task.items())},
        "usage": {"calls": run.calls, "cached": run.cached, "prompt_tokens": run.prompt_tokens,
                  "completion_tokens": run.completion_tokens,
                  "cost_usd": None if run.cost_usd is None else round(run.cost_usd, 6)},
        "failed_tries": dict(sorted(run.failures.items())),
        "agreement_with_deterministic": {
            "diagnosis_items": len(dx_pairs),
            "diagnosis_agreement": round(sum(a == b for a, b in dx_pairs) / len(dx_pairs), 4) if dx_pairs else None,
            "quantitative_items": len(q_pairs),
            "quantitative_pearson": _pearson([a for a, _ in q_pairs], [b for _, b in q_pairs]),
            "quantitative_mean_abs_diff": (round(sum(abs(a - b) for a, b in q_pairs) / len(q_pairs), 4)
                                           if q_pairs else None),
        },
        "items": run.results,
    }
