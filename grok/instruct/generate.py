"""Template mode and the build driver: study records -> verified instruction rows + quarantine.

Run as: grok instruct STUDIES --out DIR [--mode template|llm] [--tasks report,cot] [--seed N] [--json]

Writes into ``DIR``: ``instructions.parquet`` (rows that passed the verifier), ``quarantine.parquet``
(records that could not be used and rows that failed verification, each with its reasons),
``failures.parquet`` (LLM mode: every failed request), ``studies.jsonl`` (the records used, with
their reasoning, so ``grok verify`` can re-check the table alone) and ``summary.json``.
Template mode needs no network and is deterministic: the same inputs and seed give the same
table, byte for byte in content.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator
from pydantic.json_schema import SkipJsonSchema

from grok import __version__
from grok.config import Settings
from grok.instruct.export import (
    FAILURES_SCHEMA,
    INSTRUCTIONS_SCHEMA,
    QUARANTINE_SCHEMA,
    SKIPPED_SCHEMA,
)
from grok.instruct.families import FAMILIES, Family, Skip
from grok.instruct.llm import LLMConfig
from grok.instruct.llm_mode import run_llm_build
from grok.instruct.phrasing import spell
from grok.instruct.records import StudyError, StudyFacts, build_facts, load_studies
from grok.instruct.rows import build_row, canonical_json, quarantine_row
from grok.instruct.templating import TemplateLibrary, library
from grok.knowledge import load_knowledge_base, reason
from grok.knowledge.lexicon import build_lexicon
from grok.parquet_io import TableWriter
from grok.verify.verifier import Tolerance, Verifier, VerifyConfig


class InstructConfig(Settings):
    """Settings of instruction generation (``grok instruct``); the build's ``instruct`` section is this
    model plus its sharding (:class:`grok.stages.config.InstructSettings`)."""

    # added to the build's section when the two instruct configs became one: hashed only when changed
    KEY_IF_CHANGED: ClassVar[frozenset[str]] = frozenset({"tolerance", "spelling"})

    mode: Literal["template", "llm", "rewrite"] = "template"
    """``template`` (no network), ``llm`` (an OpenAI-compatible server writes the assistant turns of the
    single-turn families; the others stay template rows) or ``rewrite`` (the server rewrites the verified
    template answer of those families into natural prose with the same facts; a rewrite that fails the
    verifier is retried, then the template answer is kept and its provenance says so)."""
    tasks: tuple[str, ...] = tuple(FAMILIES)
    """Family ids (see :data:`grok.instruct.families.FAMILIES`); default (or null): all six."""
    seed: int = Field(0, ge=0)
    """Chooses phrasings; part of every row id."""
    spelling: Literal["british", "american"] = "british"
    """How rows spell ("haemorrhage, oedema, centre" or "hemorrhage, edema, center"); the verifier reads both.
    Hashed into build keys only when changed, so builds made before it keep their ids."""
    tolerance: Tolerance = 0.10
    """Verifier tolerance for numbers (0.10 = +-10 %)."""
    templates_dir: str | None = None
    """Your own templates folder (default: the bundled ``templates/``)."""
    llm: LLMConfig = Field(default_factory=LLMConfig)
    """The LLM client (``mode: llm``)."""
    build_id: SkipJsonSchema[str | None] = Field(None, exclude=True)
    """Recorded in every row's provenance; default: a hash of inputs, seed, tasks and templates (a build
    sets its own; never part of a config file)."""

    @field_validator("tasks", mode="before")
    @classmethod
    def _families(cls, v: Any) -> Any:
        if v is None:
            return tuple(FAMILIES)
        tasks = tuple(v) if isinstance(v, (list, tuple)) else v
        if not isinstance(tasks, tuple) or not tasks or any(t not in FAMILIES for t in tasks):
            raise ValueError(f"{v!r}: choose from {', '.join(FAMILIES)} (--tasks)")
        return tuple(dict.fromkeys(tasks))


class TemplateGenerator:
    """Renders rows of any family from :class:`StudyFacts`; deterministic given the seed."""

    def __init__(self, library: TemplateLibrary, lexicon, verifier: Verifier, spelling: str = "british"):
        self.lib = library
        self.lex = lexicon
        self.verifier = verifier
        self.spelling = spelling

    def messages(self, template_id: str, ctx: dict[str, Any]):
        """``(messages, TemplateInfo)`` of a family template for ``ctx``, in the configured spelling."""
        messages, info = self.lib.render_messages(template_id, ctx)
        return spell(messages, self.spelling), info

    def render(self, facts: StudyFacts, family: Family, seed: int, build_id: str) -> dict[str, Any]:
        """One unverified row; raises :class:`Skip` when the family does not apply.

        The family's caps are tried in turn until the assistant turns fit its ``max_words``."""
        for caps in family.caps_to_try:
            ctx, roles, variant = family.context(facts, self.lex, seed, caps=caps)
            messages, info = self.messages(family.template_id, ctx)
            words = sum(len(m["content"].split()) for m in messages if m["role"] == "assistant")
            if words <= family.max_words:
                break
        return build_row(facts, family.id, variant=variant, seed=seed, messages=messages, roles=roles,
                         mode="template", template=info, build_id=build_id)

    def verify(self, row: dict[str, Any], facts: StudyFacts) -> dict[str, Any]:
        res = self.verifier.verify(row, facts)
        row["verifier_passed"] = res.passed
        row["verifier_score"] = res.score
        row["verifier_reasons"] = res.reasons
        return row


def prepare(records: list[dict[str, Any]], kb, lex) -> tuple[list[StudyFacts], list[dict[str, Any]]]:
    """Facts for every usable record, and a quarantine entry (with the reason) for every other one."""
    facts, bad = [], []
    seen: set[str] = set()
    for i, rec in enumerate(records):
        key = str(rec.get("study_id")) if isinstance(rec, dict) and rec.get("study_id") else f"record[{i}]"
        if key in seen:
            bad.append({"source_key": key, "reason": f"duplicate study_id {key!r}; the first record is used",
                        "error_class": "bad_record", "study_id": key})
            continue
        try:
            facts.append(build_facts(rec, kb, lex))
            seen.add(key)
        except (StudyError, TypeError, KeyError, ValueError) as exc:
            bad.append({"source_key": key, "reason": str(exc), "error_class": "bad_record",
                        "study_id": rec.get("study_id") if isinstance(rec, dict) else None,
                        "patient_id": rec.get("patient_id") if isinstance(rec, dict) else None})
    return facts, bad


def default_build_id(records_digest: str, config: InstructConfig, library: TemplateLibrary) -> str:
    h = hashlib.sha256()
    h.update(records_digest.encode())
    spelling = {"spelling": config.spelling} if config.spelling != "british" else {}  # old ids unchanged
    h.update(canonical_json({"mode": config.mode, "tasks": config.tasks, "seed": config.seed, "v": __version__,
                             **spelling}).encode())
    for t in sorted(FAMILIES[x].template_id for x in config.tasks):
        h.update(library.get(t)[1].sha256.encode())
    return "build-" + h.hexdigest()[:16]


def _records_digest(records: list[dict[str, Any]]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(canonical_json(r).encode() if isinstance(r, dict) else repr(r).encode())
    return h.hexdigest()


def build_instructions(studies: str | Path | list[dict[str, Any]], out: str | Path, config: InstructConfig,
                       kb=None, log: Callable[[str], None] | None = None, llm_client=None) -> dict[str, Any]:
    """Generate, verify and write the instruction tables for ``studies``; returns the summary dict."""
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = load_studies(studies) if not isinstance(studies, list) else studies
    kb = kb or load_knowledge_base()
    lex = build_lexicon(kb)
    lib = library(config.templates_dir)  # compiled once per process (a worker reuses it across shards)
    verifier = Verifier(lex, VerifyConfig(tolerance=config.tolerance))
    gen = TemplateGenerator(lib, lex, verifier, config.spelling)
    build_id = config.build_id or default_build_id(_records_digest(records), config, lib)
    facts_list, bad = prepare(records, kb, lex)
    skipped: Counter[str] = Counter()
    per_task: Counter[str] = Counter()
    per_mode: Counter[str] = Counter()
    n_quarantined = len(bad)
    summary: dict[str, Any] = {"out": str(out), "build_id": build_id, "mode": config.mode, "seed": config.seed,
                               "tasks": list(config.tasks), "studies": len(records), "studies_used": len(facts_list),
                               "studies_quarantined": len(bad)}
    with open(out / "studies.jsonl", "w", encoding="utf-8") as fh:
        used = {f.study_id for f in facts_list}
        for rec in records:
            if isinstance(rec, dict) and str(rec.get("study_id")) in used:
                r = dict(rec)
                if not isinstance(r.get("reasoning"), dict) or "findings" not in r["reasoning"]:
                    r["reasoning"] = reason({**r, "laterality": r["eye"]}, kb).to_dict()
                fh.write(canonical_json(r) + "\n")
                used.discard(str(rec.get("study_id")))
    llm_tasks = [t for t in config.tasks if config.mode in ("llm", "rewrite") and FAMILIES[t].llm]
    tpl_tasks = [t for t in config.tasks if t not in llm_tasks]
    with TableWriter(out / "instructions.parquet", INSTRUCTIONS_SCHEMA) as ok_w, \
            TableWriter(out / "quarantine.parquet", QUARANTINE_SCHEMA) as q_w, \
            TableWriter(out / "skipped.parquet", SKIPPED_SCHEMA) as s_w:
        for b in bad:
            q_w.write(b)
        for facts in facts_list:
            for task in tpl_tasks:
                fam = FAMILIES[task]
                try:
                    row = gen.verify(gen.render(facts, fam, config.seed, build_id), facts)
                except Skip as exc:
                    skipped[f"{task}: {exc.code}"] += 1
                    s_w.write(exc.row(facts, task, "template"))
                    continue
                if row["verifier_passed"]:
                    ok_w.write(row)
                    per_task[task] += 1
                    per_mode["template"] += 1
                else:
                    q_w.write(quarantine_row(row, "verification", row["verifier_reasons"]))
                    n_quarantined += 1
        if llm_tasks:
            with TableWriter(out / "failures.parquet", FAILURES_SCHEMA, batch_rows=500) as f_w:
                llm_summary = run_llm_build(facts_list, llm_tasks, config, gen, build_id, ok_w, q_w, f_w, s_w,
                                            cache_path=out / "llm_cache.sqlite", client=llm_client, log=log)
            for task, n in llm_summary.pop("rows_per_task").items():
                per_task[task] += n
            for m, n in llm_summary.pop("rows_per_mode").items():
                per_mode[m] += n
            n_quarantined += llm_summary["quarantined"]
            for k, n in llm_summary.pop("skipped").items():
                skipped[k] += n
            summary["llm"] = llm_summary
        rows_written = ok_w.rows
        n_skipped = s_w.rows
    elapsed = time.perf_counter() - t0
    summary.update({
        "rows": rows_written, "rows_per_task": dict(sorted(per_task.items())), "rows_per_mode": dict(per_mode),
        "quarantined": n_quarantined, "skipped": dict(sorted(skipped.items())), "rows_skipped": n_skipped,
        "elapsed_s": round(elapsed, 3),
        "instructions": str(out / "instructions.parquet"), "quarantine": str(out / "quarantine.parquet"),
    })
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    if log:
        log(f"{rows_written} verified rows, {n_quarantined} quarantined, {n_skipped} skipped "
            f"({elapsed:.1f} s) -> {out}")
    return summary
