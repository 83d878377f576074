"""The six instruction task families and the context each one's template receives.

Run as: python -c "from grok.instruct.families import FAMILIES; print(list(FAMILIES))"

=================  ===========================================================================
family             what a row teaches
=================  ===========================================================================
``diagnosis``      closed-set classification over the disease categories
``report``         a GROK-style single paragraph (at most 300 words): findings with numbers,
                   alternatives ruled out one at a time (each tied to a finding), diagnosis
``cot``            grounded chain of thought: measurements -> findings -> differential -> diagnosis
``biomarker_qa``   is this value abnormal for this person on this device (or: is X present)?
``localisation``   lesion (and optic disc) boxes in the Qwen2-VL convention
``multiturn``      a conversation mixing the above
=================  ===========================================================================

Phrasings are chosen by a random generator seeded from ``(study_id, task, seed)``, so a row is
the same on every run and every machine. Templates only print values prepared here from
:class:`~grok.instruct.records.StudyFacts`; nothing mentions a label, a data sheet or a record.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any

from grok import ids as canonical
from grok.instruct.boxes import format_box
from grok.instruct.records import CORE_BIOMARKERS, PRESENCE_BIOMARKERS, StudyFacts

ROLE_WORDS = {"cfp": "fundus photograph"}


@dataclass(frozen=True)
class Family:
    """One task family: its template, how many main phrasings it has and its rules."""

    id: str
    template_id: str
    variants: int
    #: The assistant states a diagnosis (so a label the reasoner rules out cannot be used).
    states_diagnosis: bool
    #: Upper bound on the words of all assistant turns together.
    max_words: int
    #: LLM mode may write the assistant turn of this family (single-turn families only).
    llm: bool
    description: str


FAMILIES: dict[str, Family] = {f.id: f for f in (
    Family("diagnosis", "instruct/diagnosis.j2", 3, True, 80, True, "closed-set diagnosis question"),
    Family("report", "instruct/report.j2", 3, True, 300, True, "GROK-style single-paragraph report"),
    Family("cot", "instruct/cot.j2", 3, True, 500, True, "grounded chain of thought"),
    Family("biomarker_qa", "instruct/biomarker_qa.j2", 3, False, 120, True, "biomarker interpretation question"),
    Family("localisation", "instruct/localisation.j2", 3, False, 250, False, "lesion boxes (Qwen2-VL)"),
    Family("multiturn", "instruct/multiturn.j2", 1, True, 500, False, "multi-turn mix"),
)}


#: Why a family produced no row for a study (``Skip.code``) -> what it means. A skipped row is a row of
#: ``instructions_skipped.parquet`` with its code, counted in the stage report, the card and build.json.
SKIP_REASONS: dict[str, str] = {
    "label_contradicted_by_findings": "the reasoner rules out the study's label, so a row that states it "
                                      "cannot be grounded (label and biomarkers disagree: review the study)",
    "no_interpretable_biomarker": "no biomarker with a normative range and no present/absent finding to ask about",
    "no_localisable_finding": "no lesion box and no optic disc position on a usable image",
    "no_usable_image": "no usable image for a conversation",
}


class Skip(Exception):
    """A family does not apply to a study; ``code`` is a key of :data:`SKIP_REASONS`, the message says why."""

    def __init__(self, code: str, message: str | None = None):
        if code not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {code!r}; add it to SKIP_REASONS")
        super().__init__(message or SKIP_REASONS[code])
        self.code = code

    def row(self, facts: StudyFacts, task: str, mode: str) -> dict[str, Any]:
        """This skip as a row of ``skipped.parquet`` (:data:`grok.instruct.export.SKIPPED_SCHEMA`)."""
        return {"study_id": facts.study_id, "patient_id": facts.patient_id, "eye": facts.eye, "label": facts.label,
                "task": task, "mode": mode, "reason_code": self.code, "reason": str(self)}


def row_seed(study_id: str, task: str, seed: int) -> int:
    """A 64-bit seed from ``(study_id, task, seed)``, the same on every platform."""
    h = hashlib.sha256(f"{study_id}\x1f{task}\x1f{seed}".encode()).digest()
    return int.from_bytes(h[:8], "big")


def row_id(study_id: str, task: str, variant: int, seed: int) -> str:
    """Deterministic row id: hash of study id, task, phrasing variant and seed."""
    return hashlib.sha256(f"{study_id}\x1f{task}\x1f{variant}\x1f{seed}".encode()).hexdigest()[:24]


def image_words(role: str) -> str:
    return ROLE_WORDS.get(role, "OCT B-scan")


def _device_phrase(device_name: str) -> str:
    return f" on a {device_name} scan" if device_name else ""


def _parts(facts: StudyFacts) -> dict[str, Any]:
    """What every family's context takes from a study, derived once per study (``facts.memo``).

    Callers get fresh lists (slices/copies) of these, never the cached objects themselves.
    """
    parts = facts.memo.get("families")
    if parts is not None:
        return parts
    from grok.verify.lexicon import DISPLAY_NAMES

    chosen: list[str] = []
    for bid, b in facts.biomarkers.items():  # abnormal values first
        if b.status in ("low", "high") and bid not in PRESENCE_BIOMARKERS and b.unit != "count":
            chosen.append(bid)
    for bid in CORE_BIOMARKERS:
        if bid in facts.biomarkers and bid not in chosen and bid not in PRESENCE_BIOMARKERS:
            chosen.append(bid)
    pres = facts.presence()
    parts = {
        "measured": [facts.biomarkers[b] for b in chosen],
        "missing": [DISPLAY_NAMES[bid] for bid in CORE_BIOMARKERS
                    if bid not in facts.biomarkers and bid not in PRESENCE_BIOMARKERS and bid in DISPLAY_NAMES],
        "presence": pres,
        "presence_ordered": [p for p in pres if p["state"] == "present"] + [p for p in pres if p["state"] == "absent"],
        "alternatives": [d for d in facts.differential if not d["is_label"]],
        "ranged": sorted((b for b in facts.biomarkers.values() if b.has_range and b.status is not None),
                         key=lambda b: b.id),
        "label": _label_entry(facts), "person": facts.person, "a_person": facts.a_person,
        "device_phrase": _device_phrase(facts.device_name), "roles": base_roles(facts),
    }
    facts.memo["families"] = parts
    return parts


def _measured(facts: StudyFacts, cap: int) -> list:
    return _parts(facts)["measured"][:cap]


def _missing(facts: StudyFacts, cap: int) -> list[str]:
    return _parts(facts)["missing"][:cap]


def _qa(facts: StudyFacts, rng: random.Random) -> dict[str, Any] | None:
    ranged = _parts(facts)["ranged"]
    if ranged:
        return {"kind": "range", "fact": rng.choice(ranged)}
    pres = _parts(facts)["presence"]
    if pres:
        p = rng.choice(pres)
        return {"kind": "presence", **p}
    return None


def _loc(facts: StudyFacts, roles: list[str], rng: random.Random) -> dict[str, Any] | None:
    usable = [r for r in roles if facts.boxes.get(r)]
    if not usable:
        return None
    lesion_roles = [r for r in usable if any(b.label != "optic disc" for b in facts.boxes[r])]
    role = rng.choice(lesion_roles or usable)
    boxes = sorted(facts.boxes[role], key=lambda b: (b.label, b.y1, b.x1, b.x2, b.y2))
    kinds = sorted({b.label for b in boxes})
    return {"role": role, "image_words": image_words(role), "kinds": kinds,
            "boxes": [format_box(b) for b in boxes], "raw": boxes}


def _label_entry(facts: StudyFacts) -> dict[str, Any]:
    for d in facts.differential:
        if d["is_label"]:
            return d
    from grok.instruct.records import disease_mid

    return {"id": facts.label, "name": facts.label_name, "name_mid": disease_mid(facts.label_name), "status": None, "supporting": [], "opposing": [],
            "absent_support": [], "is_label": True}


def _options(facts: StudyFacts, lex) -> list[str]:
    names = []
    for c in canonical.CATEGORIES:
        if c in lex.disease_names:
            names.append("Normal" if c == "normal" else lex.disease_names[c])
    if facts.label not in canonical.CATEGORIES:
        names.append(facts.label_name)
    return names


def base_roles(facts: StudyFacts) -> list[str]:
    """Images shown with whole-eye questions: the photograph and the foveal B-scan, when usable."""
    return [r for r in ("cfp", "oct_foveal") if r in facts.images]


def build_context(family: Family, facts: StudyFacts, lex, seed: int, *, caps: tuple[int, int, int] = (6, 4, 10)
                  ) -> tuple[dict[str, Any], list[str], int]:
    """``(template context, image roles in <image> order, variant)`` for one family and study.

    ``caps`` = (measured biomarkers, presence statements, alternatives) to keep reports short.
    Raises :class:`Skip` when the family does not apply to this study.
    """
    rng = random.Random(row_seed(facts.study_id, family.id, seed))
    variant = rng.randrange(family.variants)
    parts = _parts(facts)
    label = parts["label"]
    if family.states_diagnosis and label.get("status") == "ruled_out":
        raise Skip("label_contradicted_by_findings",
                   f"label {facts.label!r} is ruled out by the reasoner; a grounded {family.id} row cannot state it")
    roles = list(parts["roles"])
    ctx: dict[str, Any] = {
        "f": facts, "v": variant, "pick": rng.choice, "eye_words": facts.eye_words, "person": parts["person"],
        "a_person": parts["a_person"],
        "device_phrase": parts["device_phrase"], "label": label, "images": roles,
    }
    if family.id in ("report", "cot", "multiturn"):
        n_bm, n_pres, n_alt = caps
        ctx["measured"] = parts["measured"][:n_bm]
        ctx["presence"] = parts["presence_ordered"][:n_pres]
        ctx["missing"] = parts["missing"][:2]
        ctx["alternatives"] = parts["alternatives"][:n_alt]
    if family.id == "diagnosis":
        ctx["options"] = _options(facts, lex)
    if family.id in ("biomarker_qa", "multiturn"):
        ctx["qa"] = _qa(facts, rng)
        if ctx["qa"] is None and family.id == "biomarker_qa":
            raise Skip("no_interpretable_biomarker")
    if family.id in ("localisation", "multiturn"):
        all_roles = roles if family.id == "multiturn" else sorted(facts.images)
        ctx["loc"] = _loc(facts, all_roles, rng)
        if ctx["loc"] is None and family.id == "localisation":
            raise Skip("no_localisable_finding")
        if family.id == "localisation":
            roles = [ctx["loc"]["role"]]
    if family.id == "multiturn" and not roles:
        raise Skip("no_usable_image")
    return ctx, roles, variant
