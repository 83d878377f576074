"""LLM mode: an OpenAI-compatible model writes the assistant turns; every row verified, regenerated
up to N attempts, every failed request recorded.

Run as: grok instruct STUDIES --out DIR --mode llm --base-url http://127.0.0.1:8000/v1 --model NAME

Rewrite mode (``instruct.mode: rewrite``) starts from the family's verified template row instead: the
rewrite prompt (``templates/llm/rewrite_prompt.j2``) hands the model that draft answer to rewrite into
natural prose with the same facts; each rewrite is verified against the same record and retried like an
LLM row, and when no attempt passes the draft is kept (mode ``template``), its provenance saying
``rewrite.fallback: true`` with the last reasons. No row is lost either way.

Per (study, family) job: the family's template supplies the user turn (and the images); the GROK
prompt (``templates/llm/grok_prompt.j2``) gives the model the facts, the knowledge-base findings and
differential, and the diagnosis to reach; the answer comes back as JSON (schema-constrained where
the server supports it, parsed defensively where not), becomes the assistant turn and is verified.
A failed parse or verification triggers a new attempt with a new seed (a new request hash), up
to ``max_attempts``; a row that never passes goes to quarantine with its reasons. Jobs run on
``concurrency`` async workers fed by a bounded queue, so memory stays flat for any number of jobs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import mimetypes
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grok.instruct.families import FAMILIES, Family, Skip, row_id
from grok.instruct.llm import (
    ChatRequest,
    LLMCallError,
    LLMConfig,
    OpenAIChatClient,
    ParseError,
    RateLimiter,
    RequestCache,
    call_with_retries,
    cost_usd,
    parse_answer,
    response_format,
)
from grok.instruct.records import StudyFacts
from grok.instruct.rows import build_row, canonical_json, quarantine_row, row_header
from grok.instruct.templating import split_messages

#: The prompt of rewrite mode (the GROK prompt of LLM mode is ``LLMConfig.prompt_template``).
REWRITE_PROMPT = "llm/rewrite_prompt.j2"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _data_url(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "image/png"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


class LLMJobRunner:
    """Runs LLM jobs with a shared client, cache, rate limiter and counters."""

    def __init__(self, config: LLMConfig, gen, client, cache: RequestCache, build_id: str, seed: int,
                 image_root: Path | None, writers, log: Callable[[str], None] | None = None, mode: str = "llm"):
        self.cfg = config
        self.gen = gen
        self.client = client
        self.cache = cache
        self.build_id = build_id
        self.seed = seed
        self.image_root = image_root
        self.ok_w, self.q_w, self.f_w, self.s_w = writers
        self.log = log
        self.limiter = RateLimiter(config.requests_per_second)
        self.mode = mode
        #: rewrite mode: the model rewrites the verified template answer (REWRITE_PROMPT), else the GROK prompt
        self.prompt_tpl, self.prompt_info = gen.lib.get(REWRITE_PROMPT if mode == "rewrite" else config.prompt_template)
        self.rformat = response_format(config.structured_output)
        self.counts: Counter[str] = Counter()
        self.failure_kinds: Counter[str] = Counter()
        self.rows_per_task: Counter[str] = Counter()
        self.rows_per_mode: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.tokens = Counter()
        self.cost_run = 0.0
        self.cost_rows = 0.0
        self.cost_unknown = 0

    # -- one job ---------------------------------------------------------------------------------
    def _prompt(self, facts: StudyFacts, fam: Family, ctx: dict[str, Any], question: str, roles: list[str],
                draft: str | None = None):
        pctx = fam.llm_context(facts, ctx, question)
        if draft is not None:
            pctx["draft"] = draft
        msgs = split_messages(self.prompt_tpl.render(pctx), self.prompt_info.id, keep_lines=True)
        if self.cfg.send_images and roles:
            root = self.image_root or Path(".")
            parts: list[dict[str, Any]] = [{"type": "text", "text": msgs[-1]["content"]}]
            for r in roles:
                p = root / facts.images[r]
                if not p.exists():
                    raise FileNotFoundError(f"{p}: image {r!r} of study {facts.study_id} not found (set image_root)")
                parts.append({"type": "image_url", "image_url": {"url": _data_url(p)}})
            msgs[-1] = {"role": "user", "content": parts}
        return msgs

    def _fail(self, facts, task, rid, attempt, try_index, key, kind, message, final) -> None:
        self.failure_kinds[kind] += 1
        self.f_w.write({"study_id": facts.study_id, "task": task, "row_id": rid, "attempt": attempt,
                        "try_index": try_index, "request_hash": key, "kind": kind, "message": message[:500],
                        "final": final})

    async def run_job(self, facts: StudyFacts, task: str) -> None:
        fam = FAMILIES[task]
        try:
            ctx, roles, variant = fam.context(facts, self.gen.lex, self.seed)
        except Skip as exc:
            self.skipped[f"{task}: {exc.code}"] += 1
            self.s_w.write(exc.row(facts, task, self.mode))
            return
        draft_row = None
        if self.mode == "rewrite":  # the verified template row is the draft (and the fallback)
            draft_row = self.gen.verify(self.gen.render(facts, fam, self.seed, self.build_id), facts)
            if not draft_row["verifier_passed"]:
                self.q_w.write(quarantine_row(draft_row, "verification", draft_row["verifier_reasons"]))
                self.counts["quarantined"] += 1
                return
            tpl_messages = draft_row["messages"]
            tinfo = self.gen.lib.get(fam.template_id)[1]
        else:
            tpl_messages, tinfo = self.gen.messages(fam.template_id, ctx)
        user_msgs = tpl_messages[:-1]  # the template's question turn(s); the model writes the answer
        question = user_msgs[-1]["content"].replace("<image>", "").strip()
        rid = row_id(facts.study_id, task, variant, self.seed)
        try:
            prompt = self._prompt(facts, fam, ctx, question, roles,
                                  draft_row["messages"][-1]["content"] if draft_row is not None else None)
        except FileNotFoundError as exc:
            self._fail(facts, task, rid, 0, 0, "", "bad_input", str(exc), True)
            if draft_row is not None:  # rewrite mode: the verified draft needs no image
                self._keep_draft(draft_row, task, 0, [f"bad_input: {exc}"])
                return
            self.q_w.write({"source_key": rid, "reason": str(exc), "error_class": "bad_input", "id": rid,
                            "study_id": facts.study_id, "task": task})
            self.counts["quarantined"] += 1
            return
        last_reasons: list[str] = []
        last_row: dict[str, Any] | None = None
        for attempt in range(1, self.cfg.max_attempts + 1):
            sampling = {**self.cfg.sampling(), "seed": self.seed * 1000 + attempt}
            req = ChatRequest(self.cfg.model, prompt, sampling, self.rformat, self.prompt_info.sha256, self.cfg.timeout_s)
            cached = self.cache.get(req.key)
            if cached is not None:
                resp = cached
                self.counts["cache_hits"] += 1
            else:
                def on_failure(try_index: int, exc: LLMCallError, _a=attempt, _k=req.key) -> None:
                    self._fail(facts, task, rid, _a, try_index, _k, exc.kind, str(exc), False)

                try:
                    resp = await call_with_retries(self.client, req, self.cfg, self.limiter, on_failure)
                except LLMCallError as exc:
                    last_reasons = [f"request failed after retries: {exc.kind}: {exc}"]
                    self.counts["requests_given_up"] += 1
                    continue
                self.cache.put(req.key, resp)
                self.counts["calls"] += 1
                pt, ct = resp.prompt_tokens or 0, resp.completion_tokens or 0
                self.tokens["prompt_billed"] += pt
                self.tokens["completion_billed"] += ct
                c = cost_usd(self.cfg.prices, self.cfg.model, resp.prompt_tokens, resp.completion_tokens)
                if c is not None:
                    self.cost_run += c
            try:
                answer = parse_answer(resp.content, resp.finish_reason)
            except ParseError as exc:
                self._fail(facts, task, rid, attempt, -1, req.key, "parse_error", str(exc), False)
                last_reasons = [f"parse_error: {exc}"]
                continue
            row_cost = cost_usd(self.cfg.prices, self.cfg.model, resp.prompt_tokens, resp.completion_tokens)
            llm_prov = {"model": self.cfg.model, "served_model": resp.model,
                        "base_url_host": self.cfg.public()["base_url_host"], "sampling": sampling,
                        "structured_output": self.cfg.structured_output, "request_hash": req.key,
                        "usage": {"prompt_tokens": resp.prompt_tokens, "completion_tokens": resp.completion_tokens},
                        "cost_usd": row_cost, "cost_note": None if row_cost is not None else "no price for this model",
                        "cached": cached is not None, "prompt_template_id": self.prompt_info.id,
                        "prompt_template_sha256": self.prompt_info.sha256, "question_template_id": tinfo.id,
                        "question_template_sha256": tinfo.sha256, "attempt": attempt}
            if draft_row is not None:
                llm_prov["rewrite"] = {"fallback": False, "draft_sha256": _sha(draft_row["messages"][-1]["content"])}
            row = build_row(facts, task, variant=variant, seed=self.seed,
                            messages=user_msgs + [{"role": "assistant", "content": answer}], roles=roles,
                            mode=self.mode, template=self.prompt_info, build_id=self.build_id, attempts=attempt,
                            llm=llm_prov)
            self.gen.verify(row, facts)
            if row["verifier_passed"]:
                self.ok_w.write(row)
                self.rows_per_task[task] += 1
                self.rows_per_mode[self.mode] += 1
                self.counts["rows"] += 1
                if row_cost is not None:
                    self.cost_rows += row_cost
                else:
                    self.cost_unknown += 1
                return
            last_reasons = row["verifier_reasons"]
            last_row = row
            self._fail(facts, task, rid, attempt, -1, req.key, "verification", "; ".join(last_reasons), False)
        # every attempt failed: quarantine (with the last generated row when there is one)
        self._fail(facts, task, rid, self.cfg.max_attempts, -1, "", "gave_up", "; ".join(last_reasons), True)
        if draft_row is not None:  # rewrite mode: keep the verified draft, and say so in its provenance
            self._keep_draft(draft_row, task, self.cfg.max_attempts, last_reasons)
            return
        base = last_row or {**row_header(facts, task, rid), "mode": self.mode, "seed": self.seed,
                            "attempts": self.cfg.max_attempts}
        self.q_w.write(quarantine_row(base, "llm_generation" if last_row is None else "verification", last_reasons))
        self.counts["quarantined"] += 1

    def _keep_draft(self, draft_row: dict[str, Any], task: str, attempts: int, reasons: list[str]) -> None:
        """Rewrite mode: no rewrite passed, so the verified template row is written, its provenance recording
        the fallback (``rewrite.fallback``, attempts, the last reasons)."""
        prov = json.loads(draft_row["provenance"])
        prov["rewrite"] = {"fallback": True, "attempts": attempts, "model": self.cfg.model,
                           "prompt_template_sha256": self.prompt_info.sha256,
                           "last_reasons": [r[:200] for r in reasons[:3]]}
        draft_row["provenance"] = canonical_json(prov)
        draft_row["attempts"] = attempts
        self.ok_w.write(draft_row)
        self.rows_per_task[task] += 1
        self.rows_per_mode["template"] += 1
        self.counts["rows"] += 1
        self.counts["rewrite_fallbacks"] += 1

    # -- the pool ----------------------------------------------------------------------------------
    async def run(self, jobs) -> None:
        queue: asyncio.Queue = asyncio.Queue(maxsize=self.cfg.concurrency * 2)
        n_done = 0
        t0 = time.perf_counter()

        async def worker() -> None:
            nonlocal n_done
            while True:
                item = await queue.get()
                try:
                    if item is None:
                        return
                    await self.run_job(*item)
                    n_done += 1
                    if self.log and n_done % 1000 == 0:
                        self.log(f"llm: {n_done} jobs, {self.counts['calls']} calls, "
                                 f"{n_done / (time.perf_counter() - t0):.0f} jobs/s")
                finally:
                    queue.task_done()

        workers = [asyncio.create_task(worker()) for _ in range(self.cfg.concurrency)]
        try:
            for job in jobs:
                # a crashed worker must stop the run instead of leaving the producer waiting forever
                put = asyncio.create_task(queue.put(job))
                while not put.done():
                    done, _ = await asyncio.wait([put, *workers], return_when=asyncio.FIRST_COMPLETED)
                    for w in done:
                        if w is not put and w.exception() is not None:
                            put.cancel()
                            raise w.exception()
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                if not w.done():
                    w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    def summary(self) -> dict[str, Any]:
        return {
            "rows": self.counts["rows"], "quarantined": self.counts["quarantined"], "calls": self.counts["calls"],
            "cache_hits": self.counts["cache_hits"], "requests_given_up": self.counts["requests_given_up"],
            "failures_by_kind": dict(sorted(self.failure_kinds.items())),
            "tokens_billed_this_run": {"prompt": self.tokens["prompt_billed"],
                                       "completion": self.tokens["completion_billed"]},
            "cost_this_run_usd": round(self.cost_run, 9) if self.cfg.model in self.cfg.prices else None,
            "cost_of_rows_usd": round(self.cost_rows, 9) if self.cfg.model in self.cfg.prices else None,
            "rows_without_price": self.cost_unknown,
            "rows_per_task": dict(self.rows_per_task), "rows_per_mode": dict(self.rows_per_mode),
            "rewrite_fallbacks": self.counts["rewrite_fallbacks"], "skipped": dict(self.skipped),
            "config": self.cfg.public(), "prompt_template_sha256": self.prompt_info.sha256,
        }


def run_llm_build(facts_list: list[StudyFacts], tasks: list[str], config, gen, build_id: str, ok_w, q_w, f_w,
                  s_w, *, cache_path: Path, client=None, log=None) -> dict[str, Any]:
    """Run LLM jobs for ``facts_list`` x ``tasks`` (called by :func:`grok.instruct.generate.build_instructions`)."""
    cfg: LLMConfig = config.llm
    image_root = Path(cfg.image_root) if cfg.image_root else None
    cache = RequestCache(cache_path)

    async def main() -> dict[str, Any]:
        own = client is None
        cl = OpenAIChatClient(cfg) if own else client
        runner = LLMJobRunner(cfg, gen, cl, cache, build_id, config.seed, image_root, (ok_w, q_w, f_w, s_w), log,
                              mode=config.mode)
        try:
            await runner.run((f, t) for f in facts_list for t in tasks)
        finally:
            if own:
                await cl.aclose()
        return runner.summary()

    try:
        return asyncio.run(main())
    finally:
        cache.close()
