"""Instruction rows: the one row builder and the one provenance builder, for template and LLM mode.

Run as: python -c "from grok.instruct.rows import build_row; help(build_row)"

A row (the contract of ``docs/instruct.md``, :data:`grok.instruct.export.INSTRUCTIONS_SCHEMA`) is
the messages of one (study, family) with who it is about, which images it shows, how it was made
(mode, template and its hash, seed, attempts) and its provenance JSON. Template mode
(:mod:`grok.instruct.generate`) and LLM mode (:mod:`grok.instruct.llm_mode`) differ only in where
the assistant turns come from and in the ``llm`` part of the provenance.
"""

from __future__ import annotations

import json
from typing import Any

from grok import __version__
from grok.instruct.families import row_id
from grok.instruct.records import StudyFacts
from grok.instruct.templating import TemplateInfo


def canonical_json(obj: Any) -> str:
    """Compact JSON with sorted keys (provenance, build ids, ``studies.jsonl``)."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def provenance_of(facts: StudyFacts, *, template: TemplateInfo, mode: str, seed: int, variant: int,
                  build_id: str, llm: dict[str, Any] | None = None) -> str:
    """The provenance JSON of a row (DESIGN.md: sources, extractors, KB, template, code, LLM, build)."""
    up = facts.provenance
    return canonical_json({
        "source_sha256s": list(up.get("source_sha256s") or []),
        "extractors": dict(up.get("extractors") or {}),
        "kb_snapshot": facts.kb_snapshot,
        "template_id": template.id,
        "template_sha256": template.sha256,
        "code_version": __version__,
        "generator": f"grok.instruct@{__version__}",
        "mode": mode,
        "seed": seed,
        "variant": variant,
        "build_id": build_id,
        "upstream_build_id": up.get("build_id"),
        "llm": llm,
    })


def row_header(facts: StudyFacts, task: str, rid: str) -> dict[str, Any]:
    """Which row of which study and eye: the columns every row and quarantine entry starts with."""
    return {"id": rid, "study_id": facts.study_id, "patient_id": facts.patient_id, "eye": facts.eye,
            "task": task, "label": facts.label}


def build_row(facts: StudyFacts, task: str, *, variant: int, seed: int, messages: list[dict[str, Any]],
              roles: list[str], mode: str, template: TemplateInfo, build_id: str, attempts: int = 1,
              llm: dict[str, Any] | None = None) -> dict[str, Any]:
    """One unverified row of family ``task`` for ``facts``.

    ``roles`` are the image roles in ``<image>`` order; ``template`` is what wrote the assistant
    turns (the family template in template mode, the GROK prompt in LLM mode, with ``llm`` the
    model, sampling, request hash, usage, cost and attempt).
    """
    return {
        **row_header(facts, task, row_id(facts.study_id, task, variant, seed)),
        "messages": messages, "images": [facts.images[r] for r in roles], "image_roles": roles,
        "mode": mode, "template_id": template.id, "template_sha256": template.sha256, "seed": seed,
        "kb_snapshot": facts.kb_snapshot, "attempts": attempts,
        "provenance": provenance_of(facts, template=template, mode=mode, seed=seed, variant=variant,
                                    build_id=build_id, llm=llm),
    }


def quarantine_row(row: dict[str, Any], error_class: str, reasons: list[str]) -> dict[str, Any]:
    """``row`` as a quarantine entry (:data:`grok.instruct.export.QUARANTINE_SCHEMA`) with its reasons."""
    out = dict(row)
    out["source_key"] = row.get("id") or row.get("study_id")
    out["reason"] = "; ".join(reasons) or error_class
    out["error_class"] = error_class
    return out
