"""What a clinician's note says about one study, prepared for the templates: which alternatives matter,
the finding that decides each, grouped measurements, findings named once, and the spelling.

Run as: python -c "from grok.instruct.phrasing import americanise; print(americanise('haemorrhage'))"

Templates print these values and choose among phrasings with the row's seeded generator (``pick``), so
every row stays deterministic per (study, task, seed) and every number still comes from
:class:`~grok.instruct.records.StudyFacts`. Nothing here invents a claim: each alternative's sentence is
built from the reasoner's own supporting, opposing or absent findings for it, and an opposing finding
comes from a knowledge-base rule with a source (``tests/test_lint_text.py`` lists any without one).
"""

from __future__ import annotations

import re
from typing import Any

from grok.instruct.records import StudyFacts, distinct_terms

#: At most this many alternatives besides the label in a differential (GROK: those that matter).
MAX_ALTERNATIVES = 3

#: A missing biomarker -> measured ones that let a reader judge it indirectly (semi-quantitative).
PROXIES: dict[str, tuple[str, ...]] = {
    "rnfl_peripapillary_mean_um": ("cup_disc_ratio_vertical", "gcipl_thickness_um"),
    "gcipl_thickness_um": ("rnfl_peripapillary_mean_um", "macular_thickness_overall_um"),
    "cup_disc_ratio_vertical": ("rnfl_peripapillary_mean_um",),
    "macular_thickness_central_um": ("macular_thickness_overall_um",),
    "macular_thickness_overall_um": ("macular_thickness_central_um",),
    "subfoveal_choroidal_thickness_um": (),
    "av_ratio": (),
    "drusen_volume_3mm_mm3": ("drusen_volume_5mm_mm3",),
}

#: British -> American spellings of the words rows use (whole words; case kept for a capital first letter).
AMERICAN: dict[str, str] = {
    "haemorrhage": "hemorrhage", "haemorrhages": "hemorrhages", "oedema": "edema", "centre": "center",
    "centre-involved": "center-involved", "non-centre-involved": "non-center-involved", "colour": "color",
    "neovascularisation": "neovascularization", "localisation": "localization", "generalised": "generalized",
    "fibre": "fiber", "favour": "favor", "favours": "favors", "ageing": "aging", "grey": "gray",
    "analyse": "analyze", "characterised": "characterized", "summarise": "summarize", "recognised": "recognized",
    "visualised": "visualized", "organised": "organized", "millimetres": "millimeters", "micrometres": "micrometers",
    "behaviour": "behavior", "judgement": "judgment", "hypertrophied": "hypertrophied",
}
_AMERICAN_RE = re.compile(r"\b(" + "|".join(sorted({w for k in AMERICAN for w in (k, k.capitalize())},
                                                     key=len, reverse=True)) + r")\b")
SPELLINGS = ("british", "american")


def americanise(text: str) -> str:
    """``text`` in American spelling (only the words of :data:`AMERICAN`, whole words)."""
    def sub(m: re.Match) -> str:
        w = m.group(0)
        low = AMERICAN.get(w) or AMERICAN[w.lower()]
        return low[:1].upper() + low[1:] if w[:1].isupper() else low
    return _AMERICAN_RE.sub(sub, text)


def spell(messages: list[dict[str, Any]], spelling: str) -> list[dict[str, Any]]:
    """The messages in the configured spelling (rows are written British; ``american`` converts them)."""
    if spelling == "british":
        return messages
    if spelling != "american":
        raise ValueError(f"spelling {spelling!r}: choose one of {', '.join(SPELLINGS)}")
    return [{**m, "content": americanise(m["content"])} if isinstance(m.get("content"), str) else m
            for m in messages]


# -- the differential --------------------------------------------------------------------------------
def _priority(d: dict[str, Any], considered: list[str]) -> tuple[int, int] | None:
    """Sort key of an alternative (lower first), or None when nothing decides it (it is left out)."""
    rank = considered.index(d["id"]) if d["id"] in considered else len(considered)
    if d["status"] == "supported":
        return (0, rank)  # kept: has its own supporting findings
    decided = bool(d["opposing"] or d["absent_support"]) or d["id"] == "normal" and d["status"] == "ruled_out"
    if not decided:
        return None
    if d["id"] in considered:
        return (1, rank)  # commonly confused with the label
    if d["opposing"]:
        return (2, rank)  # a present finding argues against it
    return (3 if d["status"] == "ruled_out" else 4, rank)


def select_alternatives(facts: StudyFacts, label: dict[str, Any], k: int = MAX_ALTERNATIVES) -> list[dict[str, Any]]:
    """The alternatives that matter for this eye, at most ``k``: those with supporting evidence, then those
    the knowledge base lists as commonly confused with the label, then those a present finding argues
    against; an alternative nothing decides is left out. Each is returned with its deciding phrase."""
    considered = list(label.get("considers") or [])
    keyed = []
    for i, d in enumerate(facts.differential):
        if d["is_label"]:
            continue
        p = _priority(d, considered)
        if p is not None:
            keyed.append((p, i, d))
    keyed.sort(key=lambda t: (t[0], t[1]))
    return [_with_decider(d, label) for _, _, d in keyed[:k]]


def _with_decider(d: dict[str, Any], label: dict[str, Any]) -> dict[str, Any]:
    """``d`` with ``kind`` (kept / normal / against / without) and ``decider``: the findings that decide it,
    at most two, each named once."""
    out = dict(d)
    out["mid"] = "a normal eye" if d["id"] == "normal" else d["name_mid"]
    if d["status"] == "supported" and d["id"] == "normal":
        out["kind"], out["decider"] = "kept_normal", ""
    elif d["status"] == "supported":
        out["kind"], out["decider"] = "kept", _and(distinct_terms(d["supporting"])[:2])
    elif d["id"] == "normal":
        out["kind"], out["decider"] = "normal", _and(distinct_terms(label.get("supporting") or [])[:1])
    elif d["opposing"]:
        opp = distinct_terms(d["opposing"])[:2]
        absent = all(o.startswith("no ") for o in opp)
        out["kind"] = "without" if absent else "against"
        out["decider"] = _nor([o[3:] for o in opp]) if absent else _and(opp)
    else:
        out["kind"], out["decider"] = "without", _nor([s[:1].lower() + s[1:] for s in d["absent_support"][:2]])
    out["ruled_out"] = d["status"] == "ruled_out"
    return out


def _and(items: list[str]) -> str:
    return " and ".join(items) if len(items) <= 2 else ", ".join(items[:-1]) + " and " + items[-1]


_ON = re.compile(r"^(?P<head>.+?) (?P<where>on .+)$")


def _nor(items: list[str]) -> str:
    """``a and no b`` after a "no" (the verifier reads each negation); one finding seen in two places is
    named once ("drusen on OCT or on the photograph")."""
    if len(items) == 2:
        a, b = _ON.match(items[0]), _ON.match(items[1])
        if a and b and a["head"] == b["head"]:
            return f"{a['head']} {a['where']} or {b['where']}"
    return " and no ".join(items)


# -- measurements, findings, missing values -----------------------------------------------------------
#: At most this many values in the one clause that calls them normal (a longer list is hard to follow).
MAX_NORMAL_LISTED = 4


def group_measurements(measured: list) -> dict[str, list]:
    """Measured biomarkers by what a note does with them: ``abnormal`` (each with its reading and range),
    ``normal`` (one clause for all, at most :data:`MAX_NORMAL_LISTED`) and ``plain`` (listed with their
    values only: no reading, or normal ones beyond the clause's length)."""
    out: dict[str, list] = {"abnormal": [], "normal": [], "plain": []}
    for b in measured:
        if b.status in ("low", "high") or b.qual:
            out["abnormal"].append(b)
        elif b.status == "normal" and len(out["normal"]) < MAX_NORMAL_LISTED:
            out["normal"].append(b)
        else:
            out["plain"].append(b)
    return out


def presence_lists(presence: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """(present findings with their evidence, absent entities): drusen on OCT and on the photograph are one
    finding seen twice, so they are named once."""
    present = [p for p in presence if p["state"] == "present"]
    absent = [p["entity"] for p in presence if p["state"] == "absent"]
    oct_ = next((p for p in present if p["biomarker"] == "drusen_volume_5mm_mm3"), None)
    cfp = next((p for p in present if p["biomarker"] == "drusen_count"), None)
    if oct_ and cfp:
        present = [p for p in present if p is not cfp]
        present[present.index(oct_)] = {**oct_, "entity": "drusen", "also_cfp": cfp}
    if "sub-RPE drusen" in absent and "drusen on the photograph" in absent:
        absent = [a for a in absent if a != "drusen on the photograph"]
        absent[absent.index("sub-RPE drusen")] = "drusen"
    return present, absent


def missing_notes(facts: StudyFacts, missing_ids: list[str]) -> list[dict[str, Any]]:
    """Each biomarker that could not be measured, with the measured one that speaks to it indirectly
    (``proxy``, or None): a note then estimates it semi-quantitatively instead of giving a value."""
    out = []
    for bid in missing_ids:
        proxy = next((facts.biomarkers[p] for p in PROXIES.get(bid, ()) if p in facts.biomarkers), None)
        out.append({"id": bid, "proxy": proxy})
    return out
