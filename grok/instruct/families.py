"""The six instruction task families, one class each: context, template, LLM rules and format.

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

A family is a subclass of :class:`Family`; everything that makes and checks its rows is on it:

* **what it is:** ``id``, ``description``, ``variants`` (main phrasings) and ``template_id``
  (``templates/instruct/<id>.j2`` unless set);
* **its context:** :meth:`Family.fill` adds the family's own fields to the context every family
  gets (:meth:`Family.context`), chooses the images and raises :class:`Skip` when the family does
  not apply to a study; ``caps_to_try`` shortens a long answer until it fits ``max_words``;
* **its LLM rules:** ``llm_rules``, the line of the GROK prompt that says how to answer (``None``:
  LLM mode leaves the family a template row);
* **its format**, which the verifier checks: ``max_words``, ``states_diagnosis``,
  ``one_paragraph``, ``numbered_steps``, ``min_user_turns``, ``needs_box``, ``names_eye``.

Adding a family: a subclass here (added to :data:`FAMILIES`), its template
``templates/instruct/<id>.j2`` and a case in ``tests/test_families.py``. Rows are built from a
family's context by :mod:`grok.instruct.rows`, the same way in template and LLM mode.

Phrasings are chosen by a random generator seeded from ``(study_id, task, seed)``, so a row is
the same on every run and every machine. Templates only print values prepared here from
:class:`~grok.instruct.records.StudyFacts`; nothing mentions a label, a data sheet or a record.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, ClassVar

from grok import ids as canonical
from grok.instruct.boxes import format_box
from grok.instruct.phrasing import group_measurements, missing_notes, presence_lists, select_alternatives
from grok.instruct.records import CORE_BIOMARKERS, PRESENCE_BIOMARKERS, StudyFacts, disease_mid
from grok.knowledge.lexicon import DISPLAY_NAMES

ROLE_WORDS = {"cfp": "fundus photograph"}

#: How many (measured biomarkers, presence statements, alternatives) a long answer lists.
Caps = tuple[int, int, int]
DEFAULT_CAPS: Caps = (6, 6, 3)
#: Caps tried in turn until a narrative answer fits its family's ``max_words``.
NARRATIVE_CAPS: tuple[Caps, ...] = (DEFAULT_CAPS, (5, 4, 3), (4, 3, 2), (3, 2, 2), (2, 1, 1))
#: Absent findings a narrative answer lists (one negated list).
MAX_ABSENT = 4

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


def base_roles(facts: StudyFacts) -> list[str]:
    """Images shown with whole-eye questions: the photograph and the foveal B-scan, when usable."""
    return [r for r in ("cfp", "oct_foveal") if r in facts.images]


class Family:
    """One task family. Subclass it, set the class attributes and override :meth:`fill`.

    A family holds no state; :data:`FAMILIES` holds one instance of each.
    """

    id: ClassVar[str]
    """The ``task`` of its rows, a part of every row id."""
    description: ClassVar[str]
    template_id: ClassVar[str]
    """Its Jinja template under ``templates/`` (default ``instruct/<id>.j2``)."""
    variants: ClassVar[int] = 3
    """Main phrasings (``v`` in the template); the variant drawn is part of the row id."""
    caps_to_try: ClassVar[tuple[Caps, ...]] = (DEFAULT_CAPS,)
    """Caps of the long lists tried in turn until the assistant turns fit ``max_words`` (template mode)."""
    llm_rules: ClassVar[str | None] = None
    """How the LLM is told to answer (the GROK prompt's ``task_rules``); ``None``: always a template row."""

    # -- format: what the verifier checks on every row of the family ------------------------------
    max_words: ClassVar[int]
    """Upper bound on the words of all assistant turns together (boxes not counted)."""
    states_diagnosis: ClassVar[bool] = False
    """The answer states a diagnosis (so a label the reasoner rules out cannot be used: :class:`Skip`)."""
    one_paragraph: ClassVar[bool] = False
    """Exactly one assistant turn, one paragraph (no line break)."""
    numbered_steps: ClassVar[int] = 0
    """At least this many steps 'Step 1', 'Step 2', ... numbered from 1, in the last assistant turn (0: none)."""
    min_user_turns: ClassVar[int] = 1
    """At least this many user turns (the alternation check already ensures one)."""
    needs_box: ClassVar[bool] = False
    """Some assistant turn holds at least one parseable box."""
    names_eye: ClassVar[bool] = False
    """The answer or the question names the eye (right / left eye, OD / OS)."""

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "id" in cls.__dict__ and "template_id" not in cls.__dict__:
            cls.template_id = f"instruct/{cls.id}.j2"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r})"

    @property
    def llm(self) -> bool:
        """LLM mode may write this family's assistant turn (single-turn families with ``llm_rules``)."""
        return self.llm_rules is not None

    def context(self, facts: StudyFacts, lex, seed: int, *, caps: Caps = DEFAULT_CAPS
                ) -> tuple[dict[str, Any], list[str], int]:
        """``(template context, image roles in <image> order, variant)`` of this family for one study.

        ``caps`` = (measured biomarkers, presence statements, alternatives) to keep long answers short.
        Raises :class:`Skip` when the family does not apply to this study.
        """
        rng = random.Random(row_seed(facts.study_id, self.id, seed))
        variant = rng.randrange(self.variants)
        parts = _parts(facts)
        label = parts["label"]
        if self.states_diagnosis and label.get("status") == "ruled_out":
            raise Skip("label_contradicted_by_findings",
                       f"label {facts.label!r} is ruled out by the reasoner; a grounded {self.id} row cannot state it")
        roles = list(parts["roles"])
        ctx: dict[str, Any] = {
            "f": facts, "v": variant, "pick": rng.choice, "eye_words": facts.eye_words, "person": parts["person"],
            "a_person": parts["a_person"], "device_phrase": parts["device_phrase"], "label": label, "images": roles,
        }
        return ctx, self.fill(ctx, facts, lex, rng, caps), variant

    def fill(self, ctx: dict[str, Any], facts: StudyFacts, lex, rng: random.Random, caps: Caps) -> list[str]:
        """Add this family's fields to ``ctx`` and return the row's image roles in ``<image>`` order
        (default: ``ctx["images"]``, the photograph and the foveal B-scan). Draw phrasings only from
        ``rng``; raise :class:`Skip` when the family does not apply."""
        return ctx["images"]

    def llm_context(self, facts: StudyFacts, ctx: dict[str, Any], question: str) -> dict[str, Any]:
        """The GROK prompt's context (``templates/llm/grok_prompt.j2``) for this family's ``ctx``:
        the measurements (up to 12), findings and alternatives, this family's rules and the question."""
        parts = _parts(facts)
        pctx = dict(ctx)
        pctx.setdefault("measured", parts["measured"][:12])
        pctx["missing"] = [DISPLAY_NAMES[b] for b in parts["missing_ids"][:4]]
        pctx["presence"] = facts.presence()
        pctx["alternatives"] = list(parts["selected"])
        pctx.update({"task": self.id, "task_rules": self.llm_rules, "question": question})
        return pctx


class Diagnosis(Family):
    id = "diagnosis"
    description = "closed-set diagnosis question"
    variants = 6
    max_words = 80
    states_diagnosis = True
    llm_rules = "Answer with 'Answer: <one of the options>.' followed by at most one sentence naming the key evidence."

    def fill(self, ctx, facts, lex, rng, caps):
        ctx["options"] = _options(facts, lex)
        return ctx["images"]


class NarrativeFamily(Family):
    """A family whose answer walks through the measurements, findings and alternatives (cut to ``caps``)."""

    caps_to_try = NARRATIVE_CAPS

    def fill(self, ctx, facts, lex, rng, caps):
        parts = _parts(facts)
        n_bm, n_pres, n_alt = caps
        ctx["measured"] = parts["measured"][:n_bm]
        ctx["groups"] = group_measurements(ctx["measured"])
        present, absent = parts["present"], parts["absent"]
        ctx["present"] = present[:n_pres]
        ctx["absent"] = absent[:min(n_pres, MAX_ABSENT)]
        ctx["missing"] = [{**m, "name": DISPLAY_NAMES[m["id"]]} for m in missing_notes(facts, parts["missing_ids"][:2])]
        ctx["alternatives"] = parts["selected"][:n_alt]
        return ctx["images"]


class Report(NarrativeFamily):
    id = "report"
    description = "GROK-style single-paragraph report (variants 6 and 7: structured, under headings)"
    variants = 8
    max_words = 300
    states_diagnosis = True
    one_paragraph = True
    names_eye = True
    llm_rules = (f"Write one paragraph of at most {max_words} words: the key measurements with their values, the "
                 "findings, each alternative ruled out with its finding, and end with 'Diagnosis: <diagnosis>.'")


class ChainOfThought(NarrativeFamily):
    id = "cot"
    description = "grounded chain of thought"
    variants = 6
    max_words = 500
    states_diagnosis = True
    numbered_steps = 3
    llm_rules = ("Reason in numbered steps on separate lines: 'Step 1 (measurements): ...', 'Step 2 (findings): ...', "
                 "'Step 3 (differential): ...', 'Step 4 (diagnosis): ... Diagnosis: <diagnosis>.'")


class BiomarkerQA(Family):
    id = "biomarker_qa"
    description = "biomarker interpretation question"
    variants = 5
    max_words = 120
    llm_rules = "Answer the question in at most three sentences, quoting the measurement and its normal range."

    def fill(self, ctx, facts, lex, rng, caps):
        ctx["qa"] = _qa(facts, rng)
        if ctx["qa"] is None:
            raise Skip("no_interpretable_biomarker")
        return ctx["images"]


class Localisation(Family):
    id = "localisation"
    description = "lesion boxes (Qwen2-VL)"
    variants = 6
    max_words = 250
    needs_box = True

    def fill(self, ctx, facts, lex, rng, caps):
        ctx["loc"] = _loc(facts, sorted(facts.images), rng)
        if ctx["loc"] is None:
            raise Skip("no_localisable_finding")
        return [ctx["loc"]["role"]]  # one image per row: the one whose boxes are asked for


class MultiTurn(NarrativeFamily):
    id = "multiturn"
    description = "multi-turn mix"
    variants = 1
    max_words = 500
    states_diagnosis = True
    min_user_turns = 2

    def fill(self, ctx, facts, lex, rng, caps):
        super().fill(ctx, facts, lex, rng, caps)
        ctx["qa"] = _qa(facts, rng)
        ctx["loc"] = _loc(facts, ctx["images"], rng)
        if not ctx["images"]:
            raise Skip("no_usable_image")
        return ctx["images"]


#: Every family by id, in the order rows are generated (the default ``tasks``).
FAMILIES: dict[str, Family] = {f.id: f for f in (
    Diagnosis(), Report(), ChainOfThought(), BiomarkerQA(), Localisation(), MultiTurn(),
)}


# -- what the families' contexts are made of ---------------------------------------------------------
def _device_phrase(device_name: str) -> str:
    return f" on a {device_name} scan" if device_name else ""


def _parts(facts: StudyFacts) -> dict[str, Any]:
    """What every family's context takes from a study, derived once per study (``facts.memo``).

    Callers get fresh lists (slices/copies) of these, never the cached objects themselves.
    """
    parts = facts.memo.get("families")
    if parts is not None:
        return parts
    chosen: list[str] = []
    for bid, b in facts.biomarkers.items():  # abnormal values first
        if b.status in ("low", "high") and bid not in PRESENCE_BIOMARKERS and b.unit != "count":
            chosen.append(bid)
    for bid in CORE_BIOMARKERS:
        if bid in facts.biomarkers and bid not in chosen and bid not in PRESENCE_BIOMARKERS:
            chosen.append(bid)
    pres = facts.presence()
    label = _label_entry(facts)
    present, absent = presence_lists(pres)
    parts = {
        "present": present, "absent": absent, "selected": select_alternatives(facts, label),
        "measured": [facts.biomarkers[b] for b in chosen],
        "missing_ids": [bid for bid in CORE_BIOMARKERS
                        if bid not in facts.biomarkers and bid not in PRESENCE_BIOMARKERS and bid in DISPLAY_NAMES],
        "presence": pres,
        "alternatives": [d for d in facts.differential if not d["is_label"]],
        "ranged": sorted((b for b in facts.biomarkers.values() if b.has_range and b.status is not None),
                         key=lambda b: b.id),
        "label": label, "person": facts.person, "a_person": facts.a_person,
        "device_phrase": _device_phrase(facts.device_name), "roles": base_roles(facts),
    }
    facts.memo["families"] = parts
    return parts


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
    return {"id": facts.label, "name": facts.label_name, "name_mid": disease_mid(facts.label_name), "status": None,
            "supporting": [], "opposing": [], "absent_support": [], "is_label": True}


def _options(facts: StudyFacts, lex) -> list[str]:
    names = []
    for c in canonical.CATEGORIES:
        if c in lex.disease_names:
            names.append("Normal" if c == "normal" else lex.disease_names[c])
    if facts.label not in canonical.CATEGORIES:
        names.append(facts.label_name)
    return names
