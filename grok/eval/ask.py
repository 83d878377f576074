"""Ask any OpenAI-compatible (multimodal) server the benchmark's questions and write a predictions file.

Run as: grok eval --model-url http://gpu-host:8000/v1 --model Qwen/Qwen2-VL-7B-Instruct --dataset NAME@VERSION --out DIR

Each benchmark row is sent as it was published, up to its last assistant turn (the one to answer):
earlier turns as they are, user turns with their ``<image>`` tokens replaced, in order, by the
row's images as base64 data URLs (``send_images: false`` drops them for text-only models). The
reply is read as plain text (a ``{"answer": ...}`` object is unwrapped; :func:`grok.instruct.llm.parse_answer`).
Calls go through LLM mode's client, request cache (``DIR/ask_cache.sqlite``), rate limiter and
retries. A row whose call or reply fails is written with an empty ``prediction`` and its ``error``,
so ``grok eval`` counts it as an empty answer: every benchmark row gets a line. The file has the
fields ``grok-train predict`` writes (``id``, ``task``, ``label``, ``prediction``, ``reference``,
``finish_reason``, token counts, ``dataset``) plus ``model`` and ``error``; a baseline and a
fine-tuned model are so compared on exactly the same items.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from grok.eval.data import EvalInputError
from grok.eval.judge import run_with_client
from grok.eval.report import data_uri
from grok.instruct.llm import (
    ChatRequest,
    LLMCallError,
    LLMConfig,
    ParseError,
    RateLimiter,
    RequestCache,
    call_with_retries,
    parse_answer,
)
from grok.registry import RegistryError, load

IMAGE_TOKEN = "<image>"


def question_messages(row: dict[str, Any], send_images: bool) -> list[dict[str, Any]]:
    """The row's messages before its last assistant turn, images attached to the user turns in order."""
    msgs = list(row.get("messages") or [])
    last = max((i for i, m in enumerate(msgs) if m.get("role") == "assistant"), default=len(msgs))
    images = [im.get("bytes") for im in row.get("images") or [] if im]
    k = 0
    out: list[dict[str, Any]] = []
    for m in msgs[:last]:
        content = str(m.get("content") or "")
        if m.get("role") != "user" or IMAGE_TOKEN not in content:
            out.append({"role": m["role"], "content": content})
            continue
        pieces = content.split(IMAGE_TOKEN)
        if not send_images:
            out.append({"role": "user", "content": " ".join(p.strip() for p in pieces if p.strip())})
            continue
        parts: list[dict[str, Any]] = []
        for j, piece in enumerate(pieces):
            if j > 0 and k < len(images) and images[k]:
                parts.append({"type": "image_url", "image_url": {"url": data_uri(images[k])}})
                k += 1
            if piece.strip():
                parts.append({"type": "text", "text": piece.strip()})
        out.append({"role": "user", "content": parts})
    return out


def ask_benchmark(cfg: LLMConfig, spec: str, out_path: str | Path, registry: str | None = None,
                  config: str = "benchmark", split: str = "test", cache_path: str | Path | None = None,
                  client=None) -> dict[str, Any]:
    """Answer every row of ``spec``'s ``config``/``split`` with the model of ``cfg``; write ``out_path``
    (JSONL, one line per row, in the split's order). Returns counts, token usage and failures by kind."""
    import datasets


    try:
        ds = load(spec, config, split, registry=registry)
    except RegistryError as exc:
        raise EvalInputError(str(exc)) from exc
    ds = ds.cast_column("images", datasets.List(datasets.Image(decode=False)))
    pin = json.loads(ds.info.description or "{}").get("dataset", spec)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sampling = {**cfg.sampling(), "temperature": 0.0}
    counts: dict[str, Any] = {"rows": len(ds), "answered": 0, "failed": 0, "prompt_tokens": 0,
                              "completion_tokens": 0, "calls": 0, "cached": 0, "failures": {}}
    lines: list[str | None] = [None] * len(ds)

    def failed(_i: int, exc: LLMCallError) -> None:
        counts["failures"][exc.kind] = counts["failures"].get(exc.kind, 0) + 1

    async def main(cl, cache: RequestCache) -> None:
        limiter = RateLimiter(cfg.requests_per_second)
        sem = asyncio.Semaphore(cfg.concurrency)

        async def one(i: int) -> None:
            async with sem:
                row = ds[i]
                rec = {"id": row["id"], "task": row.get("task"), "label": row.get("label"), "prediction": "",
                       "finish_reason": None, "prompt_tokens": None, "generated_tokens": None, "dataset": pin,
                       "model": cfg.model, "error": None}
                req = ChatRequest(cfg.model, question_messages(row, cfg.send_images), sampling, None, "ask",
                                  cfg.timeout_s)
                resp = cache.get(req.key)
                try:
                    if resp is None:
                        resp = await call_with_retries(cl, req, cfg, limiter, failed)
                        cache.put(req.key, resp)
                        counts["calls"] += 1
                    else:
                        counts["cached"] += 1
                    rec.update(finish_reason=resp.finish_reason, prompt_tokens=resp.prompt_tokens,
                               generated_tokens=resp.completion_tokens)
                    counts["prompt_tokens"] += resp.prompt_tokens or 0
                    counts["completion_tokens"] += resp.completion_tokens or 0
                    rec["prediction"] = parse_answer(resp.content, resp.finish_reason)
                    counts["answered"] += 1
                except (LLMCallError, ParseError) as exc:
                    kind = exc.kind if isinstance(exc, LLMCallError) else "unparsable"
                    rec["error"] = f"{kind}: {str(exc)[:200]}"
                    counts["failed"] += 1
                    if kind == "unparsable":
                        counts["failures"]["unparsable"] = counts["failures"].get("unparsable", 0) + 1
                lines[i] = json.dumps(rec, ensure_ascii=False)

        await asyncio.gather(*(one(i) for i in range(len(ds))))

    run_with_client(cfg, cache_path or out_path.parent / "ask_cache.sqlite", client, main)
    tmp = out_path.with_suffix(out_path.suffix + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines if line is not None), encoding="utf-8")
    tmp.replace(out_path)
    return {"path": str(out_path), "dataset": pin, "model": cfg.public(), **counts}
