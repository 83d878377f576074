"""What a curator's decision is, and what a log of them says about a row, a family and a dataset.

Every decision is an append-only event: curator, time, row id, the row's content hash, the action, a reason
code for rejections, and the text before and after an edit. Nothing is ever updated or deleted; a row's
outcome is read from its events:

* each curator's decision on a row is that curator's latest event on the row's *current* content hash;
* a row whose events are all on another hash (the row changed in a rebuild) is ``stale``: its reviews no
  longer apply and it goes back to the queue;
* the row's outcome is the latest decision on its current hash (any curator); rows two curators decided
  differently are counted as disagreements (and enter Cohen's kappa).

A configurable share of rows is reviewed twice (:func:`double_review`, deterministic by row id and seed), and
agreement is reported per task family as Cohen's kappa over the rows two curators decided.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Decisions a curator can take. ``needs_review``: an edit that failed verification, saved for a clinician.
ACTIONS = ("accept", "reject", "edit", "needs_review", "flag")

#: Why a row is rejected (the code is stored; the label is shown).
REJECT_REASONS = {
    "wrong_number": "a number does not match the measurement",
    "wrong_diagnosis": "the diagnosis or stage is wrong",
    "unsupported_claim": "a claim is not supported by the images or biomarkers",
    "image_mismatch": "the text does not describe these images",
    "unsafe": "unsafe or harmful advice",
    "language": "unclear, ungrammatical or badly formatted",
    "duplicate": "duplicates another row",
    "other": "another reason (see the note)",
}


class ReviewError(ValueError):
    """A decision that cannot be recorded; the message says what to change."""


def content_hash(row: Mapping[str, Any]) -> str:
    """sha256 (first 32 hex digits) of what a curator judges: study, task, the messages and the image names.

    Image paths are reduced to their file names, so a row reads the same from its build folder (``media/S../
    cfp.jpg``) and from a published version (``cfp.jpg``); reviews survive a rebuild while this is unchanged."""
    msgs = row.get("messages")
    msgs = msgs.tolist() if hasattr(msgs, "tolist") else list(msgs if msgs is not None else [])
    imgs = row.get("images")
    imgs = imgs.tolist() if hasattr(imgs, "tolist") else list(imgs if imgs is not None else [])
    names = [str((im.get("path") if isinstance(im, Mapping) else im) or "").rsplit("/", 1)[-1] for im in imgs]
    doc = {"study_id": str(row.get("study_id") or ""), "task": str(row.get("task") or ""), "images": names,
           "messages": [{"role": str(m["role"]), "content": str(m["content"])} for m in msgs]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:32]


def double_review(row_id: str, share: float, seed: int = 0) -> bool:
    """Whether ``row_id`` is one of the ``share`` of rows every curator pair reviews twice (deterministic)."""
    if share <= 0:
        return False
    h = int(hashlib.sha256(f"{seed}:{row_id}".encode()).hexdigest()[:8], 16)
    return h < share * 0x100000000


def check_decision(action: str, reason: str | None) -> None:
    """Refuse an unknown action or a rejection without a known reason code."""
    if action not in ACTIONS:
        raise ReviewError(f"unknown action {action!r}; use one of {', '.join(ACTIONS)}")
    if action == "reject" and reason not in REJECT_REASONS:
        raise ReviewError(f"a rejection needs a reason code, one of {', '.join(REJECT_REASONS)} (got {reason!r})")


@dataclass
class RowOutcome:
    """What the events say about one row (on its current content hash)."""

    state: str  #: unreviewed | reviewed | stale
    action: str | None = None  #: the latest decision on the current hash
    reason: str | None = None
    after: str | None = None  #: the edited messages (JSON) of the latest edit
    by_curator: dict[str, str] = field(default_factory=dict)  #: curator -> their latest action
    last_event: int = 0


def apply_event(outs: dict[str, RowOutcome], ev: Mapping[str, Any], current_hash: str | None) -> RowOutcome | None:
    """Fold one event (``id``, ``row_id``, ``content_hash``, ``curator``, ``action``, ``reason_code``, ``after``)
    into ``outs`` (row id -> outcome), given the row's current content hash (None: not a row of this source).
    Events must come in id order. Returns the row's outcome, or None."""
    if current_hash is None:
        return None
    o = outs.setdefault(ev["row_id"], RowOutcome("stale"))
    if ev["content_hash"] != current_hash:
        return o
    o.state = "reviewed"
    o.action, o.reason, o.last_event = ev["action"], ev.get("reason_code"), ev["id"]
    if ev["action"] in ("edit", "needs_review"):
        o.after = ev.get("after")
    o.by_curator[ev["curator"]] = ev["action"]
    return o


def outcomes(events: Iterable[Mapping[str, Any]], current: Mapping[str, str]) -> dict[str, RowOutcome]:
    """Per row id of ``current`` (row id -> content hash): its outcome under ``events`` (any order). Rows
    without events are absent (unreviewed)."""
    out: dict[str, RowOutcome] = {}
    for ev in sorted(events, key=lambda e: e["id"]):
        apply_event(out, ev, current.get(ev["row_id"]))
    return out


def cohen_kappa(pairs: list[tuple[str, str]]) -> float | None:
    """Cohen's kappa of two raters' labels ``[(a, b), ...]``; None for no pairs, 1.0 when both raters used
    one and the same label throughout (perfect agreement, chance agreement 1)."""
    n = len(pairs)
    if not n:
        return None
    po = sum(a == b for a, b in pairs) / n
    ca, cb = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    pe = sum(ca[k] * cb.get(k, 0) for k in ca) / (n * n)
    if pe >= 1.0:
        return 1.0
    return (po - pe) / (1.0 - pe)


def summarise(events: Iterable[Mapping[str, Any]], rows: Mapping[str, tuple[str, str]], *,
              family_rows: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Review coverage, acceptance by family and agreement for ``rows`` (row id -> (content hash, family)).
    ``family_rows``: the number of rows of each family, where ``rows`` holds only the rows with events (a
    caller that does not read every row); by default counted from ``rows``.

    ``acceptance`` per family: the share of reviewed rows whose outcome is accept or an accepted edit.
    ``agreement`` per family: rows with decisions of two or more curators, the share where the first two
    (by curator name) agree, and Cohen's kappa over those pairs."""
    current = {rid: h for rid, (h, _f) in rows.items()}
    outs = outcomes(events, current)
    fam_rows: Mapping[str, int] = (Counter(f for _h, f in rows.values()) if family_rows is None
                                   else Counter(family_rows))
    fam: dict[str, Counter] = defaultdict(Counter)
    pairs: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for rid, o in outs.items():
        f = rows[rid][1]
        fam[f][o.state] += 1
        if o.state != "reviewed":
            continue
        fam[f][o.action] += 1
        if len(o.by_curator) >= 2:
            a, b = (o.by_curator[c] for c in sorted(o.by_curator)[:2])
            pairs[f].append((a, b))
    per_family = {}
    for f in sorted(fam_rows):
        c = fam[f]
        reviewed = c["reviewed"]
        kappa = cohen_kappa(pairs[f])
        per_family[f] = {
            "rows": fam_rows[f], "reviewed": reviewed, "stale": c["stale"],
            **{a: c[a] for a in ACTIONS},
            "acceptance": round((c["accept"] + c["edit"]) / reviewed, 4) if reviewed else None,
            "double_reviewed": len(pairs[f]),
            "agreement": round(sum(a == b for a, b in pairs[f]) / len(pairs[f]), 4) if pairs[f] else None,
            "kappa": round(kappa, 4) if kappa is not None else None,
        }
    all_pairs = [p for ps in pairs.values() for p in ps]
    kappa = cohen_kappa(all_pairs)
    total = sum(fam_rows.values())
    reviewed = sum(c["reviewed"] for c in fam.values())
    return {"rows": total, "reviewed": reviewed, "coverage": round(reviewed / total, 4) if total else None,
            "stale": sum(c["stale"] for c in fam.values()),
            **{a: sum(c[a] for c in fam.values()) for a in ACTIONS},
            "double_reviewed": len(all_pairs), "kappa": round(kappa, 4) if kappa is not None else None,
            "per_family": per_family}
