"""Curators' decisions applied to the rows of the next version (``grok publish ... --reviews DB``).

For every verified row of the build, its outcome under the review log (:mod:`grok.review.decisions`, on the
row's current content hash):

* ``reject``: the row is not published (counted as removed, ``rejected_by_curator``);
* ``edit``: the edited text is verified again against the row's study record (the knowledge base may have
  changed since the edit); when it passes it replaces the row's messages, verifier score and reasons, when
  it fails the row is not published (``edit_failed_verification``): a curator said the original was wrong;
* ``accept``, ``needs_review`` (an edit that failed verification, waiting for a clinician) and ``flag``: the
  row is published as built, and counted;
* decisions on an older content hash (``stale``) do not apply.

The summary (coverage, acceptance by family, agreement and Cohen's kappa) goes into the card and
``manifest.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd

from grok.knowledge.lexicon import build_lexicon
from grok.review.decisions import content_hash, outcomes, summarise
from grok.review.store import Store
from grok.verify import Verifier, VerifyConfig, verify_row


def apply_reviews(ins: pd.DataFrame, records: dict[str, dict[str, Any]], db: str, kb,
                  config: VerifyConfig | None = None,
                  full_rows: Callable[[pd.DataFrame], Iterable[dict[str, Any]]] | None = None,
                  ids: pd.Series | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """``(kept rows, removed rows with a reason, summary)`` for the instruction rows ``ins`` (columns of the
    build's ``instructions.parquet``) under the review log at ``db``. ``records``: study id -> study record
    (what the verifier reads). ``full_rows(frame)``: the rows of ``frame`` with their text, in its order, for a
    frame that leaves the text out (publication reads it a batch at a time); an edit then goes into a
    ``messages_edited`` column (None where the row is not edited) instead of ``messages``, and its reasons into
    ``verifier_reasons_edited`` when the frame leaves the reasons out too (:data:`grok.publish.EDITED_COLUMNS`).
    ``ids``: the rows' ids, indexed as ``ins``, for a frame that leaves them out too (default ``ins["id"]``)."""
    store = Store(db)
    try:
        events = store.events()
    finally:
        store.close()
    if full_rows is None:
        def full_rows(frame: pd.DataFrame) -> Iterable[dict[str, Any]]:
            return frame.to_dict("records")
    # only rows a curator decided on are read and hashed: a hash and a family held for every row of the build was
    # about 250 bytes a row for the whole of publication (issue 22); every row still counts in its family's total
    ids = (ins["id"] if ids is None else ids).astype(str)  # as the events name them (the index is kept below)
    decided_ids = {str(ev["row_id"]) for ev in events}
    seen = ins[ids.isin(decided_ids).to_numpy()]
    rows = {str(r["id"]): (content_hash(r), str(r["task"])) for r in full_rows(seen)}
    del seen
    outs = outcomes(events, {rid: h for rid, (h, _f) in rows.items()})
    verifier = Verifier(build_lexicon(kb), config or VerifyConfig())
    facts: dict[str, Any] = {}
    drop: dict[str, str] = {}
    applied = {"rejected_removed": 0, "edits_applied": 0, "edits_failed_verification": 0, "accepted": 0,
               "needs_review": 0, "flagged": 0, "stale": 0}
    edited: dict[Any, tuple[list[dict[str, str]], float, list[str]]] = {}
    decided = ins[ids.isin(list(outs))]  # only rows with a decision are read again
    for i, r in zip(decided.index, full_rows(decided)):
        o = outs.get(str(r["id"]))
        if o is None:
            continue
        if o.state == "stale":
            applied["stale"] += 1
        elif o.action == "reject":
            drop[str(r["id"])] = "rejected_by_curator"
            applied["rejected_removed"] += 1
        elif o.action == "edit":
            msgs = json.loads(o.after)
            row = {k: v.tolist() if hasattr(v, "tolist") else v for k, v in r.items()}  # arrays from parquet
            res = verify_row(verifier, {**row, "messages": msgs}, records, facts, kb, where="the build's records")
            if not res.passed:
                drop[str(r["id"])] = "edit_failed_verification"
                applied["edits_failed_verification"] += 1
                continue
            edited[i] = ([{"role": m["role"], "content": m["content"]} for m in msgs], res.score, list(res.reasons))
            applied["edits_applied"] += 1
        else:
            applied[{"accept": "accepted", "needs_review": "needs_review", "flag": "flagged"}[o.action]] += 1
    ins = ins.copy()
    if edited and "messages" not in ins.columns:
        ins["messages_edited"] = [edited[i][0] if i in edited else None for i in ins.index]
    elif edited:
        ins["messages"] = [edited[i][0] if i in edited else m for i, m in zip(ins.index, ins["messages"])]
    if edited:
        ins["verifier_score"] = [edited[i][1] if i in edited else v for i, v in zip(ins.index, ins["verifier_score"])]
        if "verifier_reasons" in ins.columns:
            ins["verifier_reasons"] = [edited[i][2] if i in edited else v
                                       for i, v in zip(ins.index, ins["verifier_reasons"])]
        else:
            ins["verifier_reasons_edited"] = [edited[i][2] if i in edited else None for i in ins.index]
    gone = ids.isin(drop)
    removed = pd.DataFrame({"id": ids[gone], "duplicate_of": None, "reason": [drop[x] for x in ids[gone]]})
    family_rows = {str(k): int(v) for k, v in ins["task"].astype(str).value_counts().items()}
    summary = {**summarise(events, rows, family_rows=family_rows), "applied": applied}
    return ins[~gone], removed, summary
