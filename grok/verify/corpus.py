"""Score the verifier on a corpus of right and wrong answers (recall per error type, false rejection per style).

Run as: python -m benchmarks.verifier [--cases tests/data/verifier_cases.jsonl] [--records tests/data/verifier_records.jsonl]

A corpus is a JSONL file of instruction rows, each with ``kind`` (``right`` or ``wrong``), ``type``
(the planted error type, or the writing style of a right answer) and ``study_id``; the records file
holds the study records they were written about (``scripts/make_verifier_cases.py`` writes both).
A wrong answer counts as caught when the verifier fails it for a reason about its content (a hard
reason other than ``format`` and ``length``: a row failed only for its layout was not caught for
its planted error); a right answer is falsely rejected when the verifier fails it for any reason. Targets (issue 15): recall >= 0.98 on every error type and false rejection
<= 2 % on every style.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from grok.instruct.records import build_facts
from grok.knowledge import load_knowledge_base
from grok.knowledge.lexicon import build_lexicon
from grok.verify.verifier import Verifier

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CASES = ROOT / "tests" / "data" / "verifier_cases.jsonl"
DEFAULT_RECORDS = ROOT / "tests" / "data" / "verifier_records.jsonl"
RECALL_TARGET = 0.98
FALSE_REJECTION_TARGET = 0.02
#: Reasons about a row's layout, not its content: they do not count as catching a planted error.
LAYOUT_CODES = frozenset({"format", "length"})


def chat_row(facts, task: str, answer: str | list[tuple[str, str]], question: str) -> dict[str, Any]:
    """An instruction row about the study of ``facts`` (its photograph and foveal B-scan as images):
    ``answer`` is one assistant turn, or ``[(user, assistant), ...]`` turns whose first user text is
    ``question`` (the first pair's user text is not used)."""
    roles = [r for r in ("cfp", "oct_foveal") if r in facts.images]
    turns = [("", answer)] if isinstance(answer, str) else list(answer)
    messages = []
    for i, (user, assistant) in enumerate(turns):
        messages.append({"role": "user", "content": "<image>\n" * len(roles) + question if i == 0 else user})
        messages.append({"role": "assistant", "content": assistant})
    return {"task": task, "eye": facts.eye, "images": [facts.images[r] for r in roles], "image_roles": roles,
            "messages": messages}


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def score_corpus(cases: str | Path = DEFAULT_CASES, records: str | Path = DEFAULT_RECORDS, verifier=None,
                 kb=None) -> dict[str, Any]:
    """Verify every case against its study; per type: cases, failed, rate, misses (ids with reasons)."""

    kb = kb or load_knowledge_base()
    lex = build_lexicon(kb)
    verifier = verifier or Verifier(lex)
    facts = {}
    for rec in read_jsonl(records):
        f = build_facts(rec, kb, lex)
        facts[f.study_id] = f
    rows = read_jsonl(cases)
    per: dict[tuple[str, str], dict[str, Any]] = {}
    codes: dict[str, Counter] = {}
    t0 = time.process_time()
    for row in rows:
        res = verifier.verify(row, facts[row["study_id"]])
        key = (row["kind"], row["type"])
        s = per.setdefault(key, {"cases": 0, "failed": 0, "misses": []})
        s["cases"] += 1
        hard = {r.split(":", 1)[0] for r in res.hard_reasons}
        failed = bool(hard - LAYOUT_CODES) if row["kind"] == "wrong" else not res.passed
        s["failed"] += failed
        codes.setdefault(row["type"], Counter()).update(hard)
        if (row["kind"] == "wrong") != failed:  # a wrong answer not caught, or a right one rejected
            s["misses"].append({"id": row["id"], "reasons": res.reasons})
    cpu = time.process_time() - t0
    wrong = {t: {"cases": s["cases"], "caught": s["failed"], "recall": round(s["failed"] / s["cases"], 4),
                 "reason_codes": dict(codes[t].most_common()), "missed": s["misses"]}
             for (k, t), s in sorted(per.items()) if k == "wrong"}
    right = {t: {"cases": s["cases"], "rejected": s["failed"],
                 "false_rejection": round(s["failed"] / s["cases"], 4), "rejected_rows": s["misses"]}
             for (k, t), s in sorted(per.items()) if k == "right"}
    n_wrong = sum(v["cases"] for v in wrong.values())
    n_right = sum(v["cases"] for v in right.values())
    return {
        "cases": len(rows), "wrong_cases": n_wrong, "right_cases": n_right,
        "recall_overall": round(sum(v["caught"] for v in wrong.values()) / max(1, n_wrong), 4),
        "false_rejection_overall": round(sum(v["rejected"] for v in right.values()) / max(1, n_right), 4),
        "min_recall_per_type": min((v["recall"] for v in wrong.values()), default=None),
        "max_false_rejection_per_style": max((v["false_rejection"] for v in right.values()), default=None),
        "targets": {"recall_per_type": RECALL_TARGET, "false_rejection_per_style": FALSE_REJECTION_TARGET},
        "targets_met": all(v["recall"] >= RECALL_TARGET for v in wrong.values())
        and all(v["false_rejection"] <= FALSE_REJECTION_TARGET for v in right.values()),
        "rows_verified_per_cpu_s": round(len(rows) / cpu, 1) if cpu > 0 else None,
        "wrong": wrong, "right": right,
    }
