"""Grounding verifier for instruction rows (numbers, claims, diagnosis, phrasing, laterality, boxes).

Run as: grok verify DIR/instructions.parquet [--studies DIR/studies.jsonl] [--tolerance 0.1] [--json]

:func:`verify_table` re-checks every row of a table against the study records it was built from
(by default ``studies.jsonl`` next to the table, written by ``grok instruct``). The rules are in
:mod:`grok.verify.verifier`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from grok.instruct.export import read_rows
from grok.instruct.records import StudyError, build_facts, load_studies
from grok.knowledge import load_knowledge_base
from grok.knowledge.lexicon import Lexicon, build_lexicon
from grok.verify.verifier import HARD_CODES, Verifier, VerifyConfig, VerifyResult

__all__ = ["HARD_CODES", "Lexicon", "Verifier", "VerifyConfig", "VerifyResult", "build_lexicon", "verify_table"]


def verify_row(verifier: Verifier, row: dict[str, Any], records: dict[str, dict[str, Any]],
               facts_cache: dict[str, Any], kb, *, where: str, claims: bool = False) -> VerifyResult:
    """Verify ``row`` against the facts of its study in ``records`` (built once per study into
    ``facts_cache``); a study that is missing or unusable fails with a ``format`` reason naming ``where``.
    ``claims``: also return what every number, term and name was checked against (``VerifyResult.claims``)."""
    sid = str(row.get("study_id"))
    if sid not in facts_cache:
        rec = records.get(sid)
        try:
            facts_cache[sid] = build_facts(rec, kb, verifier.lex) if rec is not None else None
        except StudyError as exc:
            facts_cache[sid] = exc
    facts = facts_cache[sid]
    if facts is None:
        return VerifyResult(False, 0.0, [f"format: study {sid} not in {where}"], 1)
    if isinstance(facts, Exception):
        return VerifyResult(False, 0.0, [f"format: study {sid} not usable ({facts})"], 1)
    return verifier.verify(row, facts, claims=claims)


def verify_table(table: str | Path, studies: str | Path | None = None, config: VerifyConfig | None = None,
                 kb=None, max_listed: int = 200) -> dict[str, Any]:
    """Verify every row of ``table``; returns counts, mean score, reasons and the failing rows.

    Raises ``FileNotFoundError`` naming the missing table or studies file.
    """
    table = Path(table)
    rows = read_rows(table)
    studies_path = Path(studies) if studies else table.parent / "studies.jsonl"
    if not studies_path.exists():
        raise FileNotFoundError(f"{studies_path}: study records not found; pass --studies (the file given to "
                                "'grok instruct', or the studies.jsonl it wrote next to the table)")
    kb = kb or load_knowledge_base()
    lex = build_lexicon(kb)
    verifier = Verifier(lex, config or VerifyConfig())
    records = {str(r.get("study_id")): r for r in load_studies(studies_path) if isinstance(r, dict)}
    facts_cache: dict[str, Any] = {}
    reasons: Counter[str] = Counter()
    failed: list[dict[str, Any]] = []
    n_pass = 0
    score_sum = 0.0
    snapshots: Counter[str] = Counter()
    for row in rows:
        sid = str(row.get("study_id"))
        res = verify_row(verifier, row, records, facts_cache, kb, where=str(studies_path))
        snapshots[str(row.get("kb_snapshot"))] += 1
        score_sum += res.score
        if res.passed:
            n_pass += 1
        else:
            if len(failed) < max_listed:
                failed.append({"id": row.get("id"), "study_id": sid, "task": row.get("task"), "reasons": res.reasons})
        for r in res.reasons:
            reasons[r.split(":", 1)[0]] += 1
    return {
        "table": str(table), "studies": str(studies_path), "rows": len(rows), "passed": n_pass,
        "failed": len(rows) - n_pass, "mean_score": round(score_sum / len(rows), 4) if rows else None,
        "reasons_by_code": dict(sorted(reasons.items())), "kb_snapshot_of_rows": dict(snapshots),
        "kb_snapshot_now": kb.snapshot_id, "tolerance": verifier.config.tolerance, "failing_rows": failed,
    }
