"""Knowledge-guided instruction generation: study records -> verified chat rows (template or LLM mode).

Run as: grok instruct STUDIES --out DIR [--mode template|llm] [--tasks ...] [--seed N] [--json]

* :mod:`grok.instruct.records` — study records -> :class:`StudyFacts` (numbers with units, reasoner
  statuses, normalised boxes).
* :mod:`grok.instruct.families` — the six task families and their template contexts.
* :mod:`grok.instruct.templating` — Jinja (StrictUndefined) templates -> chat messages, with hashes.
* :mod:`grok.instruct.generate` — template mode and the build driver (tables, quarantine, summary).
* :mod:`grok.instruct.llm`, :mod:`grok.instruct.llm_mode` — OpenAI-compatible generation with
  cache, retries, rate limit, cost and regeneration; :mod:`grok.instruct.http1` — the lean
  keep-alive HTTP/1.1 transport the openai client uses for ``http://`` servers.
* :mod:`grok.instruct.export` — parquet schema and OpenAI / ShareGPT exports.
* :mod:`grok.instruct.boxes` — the Qwen2-VL box convention.
"""

from __future__ import annotations

__all__ = ["FAMILIES", "InstructConfig", "build_instructions"]


def __getattr__(name: str):
    if name == "FAMILIES":
        from grok.instruct.families import FAMILIES

        return FAMILIES
    if name in ("InstructConfig", "build_instructions"):
        from grok.instruct import generate

        return getattr(generate, name)
    raise AttributeError(f"module 'grok.instruct' has no attribute {name!r}")
