"""Deterministic grounding verifier: every number, claim, diagnosis and box checked against the record.

Run as: grok verify DIR/instructions.parquet [--studies DIR/studies.jsonl] [--json]

Rules (each failed rule adds a reason ``code: detail``; *hard* codes fail the row). Each assistant
turn is first lower-cased and normalised (:mod:`grok.verify.textnorm`: number words to digits,
HTML tags blanked, offsets kept), then read clause by clause:

* ``wrong_number`` / ``hallucinated_number`` (hard): a number must match, within ``tolerance``
  (default ±10 %, the tolerance GROK's judge used, and never tighter than the rounding of the
  written number), the value of the biomarker it is written about: the last biomarker named before
  it in the clause (or a count named just after it: "3 microaneurysms", "4 intraretinal
  haemorrhages"), with or without a unit (a bare number is read in the biomarker's own unit:
  "CST is 400"), in scientific notation ("2.62e2 µm", "2.62 × 10^2 µm") or in words ("about two
  hundred and sixty microns"). A number after a reference cue ("normal range", "percentile", "at
  least", "cut-off", ...) may instead match a reference value (5th/95th percentile, mean,
  threshold) of the knowledge base; "at least 2 microaneurysms" is a bound on the count. A range
  with no cue before it ("CST 255-265 µm") must contain the value (or be the normal range, ±2 %).
  A number with a unit tied to no biomarker must match some biomarker of the record with that unit,
  else it is hallucinated.
* ``wrong_unit`` (hard): the number is written in a unit of another quantity than its biomarker's
  ("CST 262 nl"), or is the biomarker's value in its unit but written in another ("CST 262 mm").
* ``diagnosis_mismatch`` (hard): a disease put forward anywhere, in any turn and however hedged
  ("Diagnosis: X", "suggests X", "consistent with X", "in keeping with X", "points to X", "we
  favour X", "likely X", "X is the leading diagnosis", a terse "X.") is not the study's category
  (a second disease the reasoner supports may be named as coexisting: "also", "coexisting").
  Negated ("no X", "X is unlikely / less likely / ruled out", "rather than X") and open ("cannot
  exclude X", "possible X", "X remains in the differential") mentions are not statements
  (:func:`grok.verify.claims.disease_polarity`); names inside parentheses are evidence lists.
* ``wrong_stage`` (hard): a stage of the category ("early AMD", "proliferative diabetic
  retinopathy", "malignant hypertensive retinopathy", "late-stage (neovascular) AMD") that is not
  the reasoner's stage (:data:`grok.verify.claims.STAGE_WORDS`, ``STAGE_MODIFIERS``).
* ``contradiction`` (hard): a qualitative claim about a biomarker (thinned / thickened / within
  normal limits) or a finding (present / absent, negated lists "no microaneurysms, haemorrhages or
  exudates" included) disagrees with the reasoner, or the category is negated.
  Words inside the reasoner's own stage name (e.g. "macular oedema signs without central
  subfield thickening") are its conclusion, not a claim about a biomarker named nearby.
* ``self_contradiction`` (hard): the row both states and negates the same disease, or says the same
  finding is present and absent.
* ``invented_finding`` (hard): a finding claimed present that the record does not show (the
  reasoner could not evaluate it), or a lesion the pipeline never measures claimed at all (a
  macular hole, an epiretinal membrane, a vitreous haemorrhage, ...; negated or hedged mentions
  are not claims).
* ``forbidden_phrase`` (hard): the text refers to a label, a provided report/list/data sheet or
  the measurements "you provided", ground truth, a dataset, annotations or an answer key, JSON,
  metadata or a record (things a model looking at the images could not know).
* ``laterality`` (hard): the wrong eye is named (right/left eye, macula, fundus, retina, disc in any
  case; OD / OS).
* ``format`` / ``length`` (hard): roles, ``<image>`` tokens (missing or extra images), empty turns,
  content that is not text or not UTF-8, and the format the row's family declares
  (``grok.instruct.families``: ``one_paragraph``, ``numbered_steps``, ``min_user_turns``,
  ``needs_box``, ``names_eye``, ``states_diagnosis``, ``max_words``).
* ``box`` (hard): a box that does not parse, lies outside [0, 1000), or matches no lesion of the
  row's images (IoU below ``iou_min``).
* ``unreadable`` (hard): anything else the checks cannot read; :meth:`Verifier.verify` never raises.
* ``unsupported_claim`` (soft): a claim the reasoner can neither confirm nor refute (no normal
  range, finding absent but not evaluable, a supported disease ruled out). Soft reasons lower the
  score but do not fail the row.

The score is the share of checks passed (a soft reason counts half).

:meth:`Verifier.read` runs the same checks of numbers, terms and names on a row's assistant turns and
returns what they read (:class:`Reading`: the diagnoses stated, the biomarkers named, each number's and
claim's verdict, invented lesions, the other eye) without judging the row: scoring model answers
(``grok.eval``) reads them with it.

Speed (a build verifies every row, so this runs thousands of times per second): each pattern
scans a message once and its matches are handed to the clauses they lie in (``by_clause``);
one scan finds every biomarker, finding, lesion, disease and stage name (``_scan``); the
patterns start with a literal character or digit so the regex engine can skip positions where
none can start; rare patterns (forbidden phrasing, the wrong eye, boxes, number words) run only
when a substring that every match contains is present; per-study lookups are kept in
``facts.memo``; the readings of the words around a disease or finding name are cached on those
words (generated rows repeat their sentences). Each rewritten pattern documents the plain form it
is equivalent to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any

from pydantic import Field, PositiveInt

from grok.config import Settings
from grok.instruct.boxes import BOX_START, box_spans, iou, parse_boxes, strip_boxes
from grok.instruct.families import FAMILIES
from grok.instruct.phrasing import americanise
from grok.knowledge.lexicon import _WB, UNIT_ALIASES, UNIT_BASE, Lexicon, _lead_trie
from grok.verify.claims import (
    COEXIST_RE,
    LESION_HEDGE_BEFORE,
    LESION_NEG_AFTER,
    LESION_NEG_BEFORE,
    STAGE_ALSO_ALLOWS,
    STAGE_WORDS,
    UNMEASURED_LESIONS,
    disease_polarity,
    stage_modifier,
)
from grok.verify.scan import WordScanner, by_clause, clause_spans, mask, numbers
from grok.verify.textnorm import normalise, word_trie

HARD_CODES = frozenset({"wrong_number", "wrong_unit", "hallucinated_number", "diagnosis_mismatch", "wrong_stage",
                        "contradiction", "self_contradiction", "invented_finding", "forbidden_phrase", "laterality",
                        "format", "length", "box", "unreadable"})

#: The clause split (``clause_spans``), the number scan (``_NUMBER_RE``) and the number mask (``_MASK_RE``) are
#: defined in ``grok.verify.scan`` (compiled there when built); ``_SUPERSCRIPT`` reads a power of ten written in
#: superscripts.
_SUPERSCRIPT = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺", "0123456789-+")


_LOW = (r"markedly thinned|thinned|thinning|thin|reduced|decreased|lowered|low|narrowed|narrowing|"
        r"below the normal range|below normal limits|below normal|below the 5th percentile|below the 1st percentile")
_HIGH = (r"markedly thickened|thickened|thickening|thick|increased|elevated|raised|high|enlarged|"
         r"above the normal range|above normal limits|above normal|above the 95th percentile|above the 99th percentile")
_NORMAL = (r"within the normal range|inside the normal range|within normal range|within normal limits|"
           r"(?:is|are|was|were|appears?|looks?|remains?) normal|unremarkable")
#: ``_NORMAL`` spelled out as words.
_NORMAL_WORDS = ["within the normal range", "inside the normal range", "within normal range", "within normal limits",
                 "unremarkable"] + [f"{v} normal" for v in ("is", "are", "was", "were", "appear", "appears", "look",
                                                            "looks", "remain", "remains")]
#: Qualitative term -> the claim it makes. No term of one class starts with the first word of a
#: term of another class, so one merged alternation finds the same spans as three ordered ones.
_TERM_CLASS: dict[str, str] = {**{w: "normal" for w in _NORMAL_WORDS}, **{w: "low" for w in _LOW.split("|")},
                               **{w: "high" for w in _HIGH.split("|")}}


_TERM_SCAN = WordScanner(_TERM_CLASS, end=r"\b")
#: A reference cue before a number: ``\b(?:range|percentile|limits?|cut-?offs?|thresholds?|normal|
#: reference|mean|average|expected|typical|above|below|under|over|exceed\w*|at least|at most|less than|
#: more than|greater than|beyond|between)\b|[<>≥≤]`` (only whether one occurs is used), written with
#: literal first characters (see :data:`_WB`).
_REF_CUE = re.compile(
    _lead_trie(("range", "percentile", "limit", "limits", "cut-off", "cut-offs", "cutoff", "cutoffs", "threshold",
                "thresholds", "normal", "reference", "mean", "average", "expected", "typical", "above", "below",
                "under", "over", "at least", "at most", "less than", "more than", "greater than", "beyond",
                "between")) + r"\b|e" + _WB + r"xceed\w*\b|<|>|≥|≤")
#: The windows before/after a term or finding (only whether they match is used); the leading
#: word lists are written with literal first characters (see :data:`_WB`).
_NEG_TERM_BEFORE = re.compile(_lead_trie(("not", "no", "without", "nor", "rather than")) + r"\s+(?:\w+\s+){0,2}$")
_NEG_BEFORE = re.compile(_lead_trie(("no", "without", "neither", "nor", "absence of", "free of", "lack of",
                                     "rather than"))
                         + r"\s+(?:[\w-]+\s+){0,2}$")
_NEG_AFTER = re.compile(r"^\s*[:–—-]?\s*(?:\w+\s+){0,3}?(?:is |are |was |were )?(?:absent|not (?:seen|detected|present|"
                        r"visible|identified|found|evident|observed)|none|ruled out)\b")
_POS_AFTER = re.compile(r"^\s*[:–—-]?\s*(?:\w+\s+){0,3}?(?:is |are |was |were )?(?:also )?(?:present|detected|seen|"
                        r"visible|identified|noted|observed|evident)\b")
_POS_BEFORE = re.compile(_lead_trie(("presence of", "show", "shows", "showing", "there is", "there are", "evidence of",
                                     "reveal", "reveals", "revealing", "demonstrate", "demonstrates", "with", "has",
                                     "have", "signs of", "area of", "areas of", "focus of", "foci of", "several",
                                     "multiple", "numerous", "a few", "scattered", "many", "some", "a single",
                                     "occasional", "isolated"))
                         + r"\s+(?:[\w-]+\s+){0,4}$")
#: "Diagnosis: normal", "the diagnosis is a normal eye" (a bare "normal" is read as a diagnosis only here;
#: elsewhere it describes a measurement).
_NORMAL_CONCL = re.compile(r"\b(?:diagnosis|answer|impression|conclusion)\s*(?:is\s*)?:?\s*(?:a\s+|an\s+)?normal\b"
                           r"(?!\s+(?:range|limits?|values?|thickness|variant|for|ageing|aging))|^\s*normal\s*[.!]?\s*$")
_FORBIDDEN_LIST = [(p, why) for p, why in (
    (r"\blabel(?:s|led|ed)?\b", "mentions a label"),
    (r"\bas (?:given|provided|stated|listed|indicated)\b", "refers to given information"),
    ((r"\b(?:provided|given|supplied|attached|accompanying) (?:report|data|list|table|labels?|diagnosis|biomarkers?|"
      r"json|values|measurements|sheet|information|findings)\b"), "refers to provided material"),
    (r"\bdata ?sheet\b|\bspreadsheet\b", "mentions a data sheet"),
    (r"\bground[- ]truth\b", "mentions ground truth"),
    (r"\bjson\b", "mentions JSON"),
    (r"\bmetadata\b", "mentions metadata"),
    (r"\b(?:the|this|your) (?:record|table|biomarker list|knowledge base)\b", "mentions a record or table"),
    (r"\b(?:i|we) (?:was|were) (?:told|given)\b", "says it was told"),
    (r"\baccording to the (?:table|report|list|data|record)\b", "cites a table or record"),
    (r"\breference (?:answer|diagnosis)\b", "mentions a reference answer"),
    ((r"\b(?:measurements|values|data|numbers|information|biomarkers|findings|details|figures) (?:that |which )?"
      r"(?:you|we were|i was|were|was) (?:provided|gave|given|supplied|shared|listed|sent)\b"),
     "refers to provided material"),
    (r"\b(?:the|this|your) (?:dataset|data set|annotations?|answer key|case notes|correct answer)\b|\bannotated as\b",
     "mentions a dataset, annotation or answer key"),
)]
_PROVIDED_FIRST = ("provided ", "given ", "supplied ", "attached ", "accompanying ")
_PROVIDED_SECOND = ("report", "data", "list", "table", "label", "diagnosis", "biomarker", "json", "values",
                    "measurements", "sheet", "information", "findings")


def _maybe_provided(low: str) -> bool:
    """Whether some "provided/given/... <material>" pair occurs (necessary for pattern 2 to match)."""
    for w in _PROVIDED_FIRST:
        i = low.find(w)
        while i >= 0:
            if low.startswith(_PROVIDED_SECOND, i + len(w)):
                return True
            i = low.find(w, i + 1)
    return False


_TOLD_NEEDLES = tuple(f" {w} {v}" for w in ("you", "was", "were")
                      for v in ("provided", "gave", "given", "supplied", "shared", "listed", "sent"))
#: Per forbidden pattern, substrings of which every match contains one (or a test of the same
#: kind): a pattern whose substrings are all absent cannot match, so it is left out of the scan.
_FORBIDDEN_NEEDLES: list = [
    ("label",),
    ("as given", "as provided", "as stated", "as listed", "as indicated"),
    _maybe_provided,
    ("datasheet", "data sheet", "spreadsheet"),
    ("ground-truth", "ground truth"),
    ("json",),
    ("metadata",),
    ("record", "table", "biomarker list", "knowledge base"),
    (" was told", " were told", " was given", " were given"),
    ("according to the ",),
    ("reference answer", "reference diagnosis"),
    lambda low: (" you " in low or " was " in low or " were " in low) and any(n in low for n in _TOLD_NEEDLES),
    ("dataset", "data set", "annotat", "answer key", "case notes", "correct answer"),
]
assert len(_FORBIDDEN_NEEDLES) == len(_FORBIDDEN_LIST)


@lru_cache(maxsize=256)
def _forbidden_re(which: tuple[int, ...]) -> re.Pattern:
    """The alternation of the forbidden patterns ``which`` (in list order; group ``f<i>`` = pattern i).
    Leaving out patterns that cannot match anywhere in a text does not change what the scan finds."""
    return re.compile("|".join(f"(?P<f{i}>{_FORBIDDEN_LIST[i][0]})" for i in which))


def _forbidden_hits(low: str):
    which = []
    for i, nd in enumerate(_FORBIDDEN_NEEDLES):
        if callable(nd):
            if nd(low):
                which.append(i)
            continue
        for n in nd:
            if n in low:
                which.append(i)
                break
    return _forbidden_re(tuple(which)).finditer(low) if which else ()
def _phrasing(content: str, low: str, eye: str) -> list[tuple[str, str]]:
    """``(code, detail)`` of the forbidden phrases and the wrong-eye names of one turn (``low``: its
    lower-case text with boxes removed)."""
    out = [("forbidden_phrase", f"{_FORBIDDEN_LIST[int(hit.lastgroup[1:])][1]} ({hit.group(0)!r})")
           for hit in _forbidden_hits(low)]
    bad = _wrong_eye(content, low, eye)
    if bad:
        out.append(("laterality", f"names {bad.group(0)!r}"))
    return out


def _wrong_eye(content: str, low: str, eye: str) -> re.Match | None:
    """The first name of the other eye in one turn (``low``: its lower-case text with boxes removed), or None."""
    words, abbrev = _WRONG_EYE[eye]
    needles = _WRONG_EYE_NEEDLES[eye]
    return (words.search(low) if needles[0] in low else None) or (abbrev.search(content) if needles[1] in content
                                                                  else None)


@lru_cache(maxsize=4096)
def _turn_phrasing(content: str, low: str, eye: str) -> tuple[tuple[str, str], ...]:
    """:func:`_phrasing` of a question turn, cached (generated rows ask the same questions)."""
    return tuple(_phrasing(content, low, eye))


_EYE_PARTS = r"(?:eye|retina|fundus|macula|optic disc|optic nerve|disc)"
#: The other eye named in words (searched in the lower-case text; "Left eye" at the start of a
#: sentence is the left eye too) or by its abbreviation (searched in the original text: "OS", not "os").
_WRONG_EYE = {
    "OD": (re.compile(rf"\bleft {_EYE_PARTS}\b"), re.compile(r"(?<![/\w])OS\b")),
    "OS": (re.compile(rf"\bright {_EYE_PARTS}\b"), re.compile(r"(?<![/\w])OD\b")),
}
#: Every match of ``_WRONG_EYE[eye]`` contains one of these substrings (in the lower-case / original text).
_WRONG_EYE_NEEDLES = {"OD": ("left ", "OS"), "OS": ("right ", "OD")}
_RIGHT_EYE = {
    "OD": re.compile(rf"\bright {_EYE_PARTS}\b|(?<![/\w])OD\b", re.IGNORECASE),
    "OS": re.compile(rf"\bleft {_EYE_PARTS}\b|(?<![/\w])OS\b", re.IGNORECASE),
}
#: ``\b(?:it|this value|which)\b``, written with literal first characters (see :data:`_WB`).
_ANAPHORA = re.compile(_lead_trie(("it", "this value", "which")) + r"\b")
_STEP_RE = re.compile(r"(?m)^Step (\d+)\b")
_IMAGE_TOKEN = "<image>"
_DIMENSIONLESS_UNITS = ("count", "ratio", "fraction", "dimensionless")


#: A relative tolerance for numbers (0.10 = +-10 %), the type every config that sets one uses.
Tolerance = Annotated[float, Field(gt=0, lt=1, description=(
    "Relative tolerance for numbers (0.10 = +-10 %); in (0, 1)."))]


class VerifyConfig(Settings):
    """Verifier settings (``grok verify --tolerance``; instruction generation's ``tolerance``)."""

    tolerance: Tolerance = 0.10
    iou_min: float = Field(0.5, gt=0, le=1, description=(
        "Smallest intersection-over-union for a box to count as grounded; in (0, 1]."))
    max_words: dict[str, PositiveInt] = Field(default_factory=dict, description=(
        "Per-task word limits of the assistant turns (default: each family's max_words)."))


@dataclass
class VerifyResult:
    """Outcome for one row: ``passed`` (no hard reason), ``score`` in [0, 1], ``reasons``.

    ``claims`` (only when asked, ``Verifier.verify(..., claims=True)``): every number, qualitative term and
    named finding or disease the checks read, as ``{"turn", "start", "end", "kind", "refs", "status",
    "reason"}``: ``turn`` is the index of the (readable) turn, ``start``/``end`` character offsets in that
    turn's content, ``kind`` ``number`` | ``term`` | ``name``, ``refs`` what it was checked against
    (``bm-<biomarker>``, ``finding-<id>``, ``dx-<disease>``), ``status`` ``matched`` or ``unmatched`` (then
    ``reason`` is the verifier's reason). Review tools link and flag the text from it."""

    passed: bool
    score: float
    reasons: list[str]
    checks: int
    claims: list[dict[str, Any]] | None = None

    @property
    def hard_reasons(self) -> list[str]:
        return [r for r in self.reasons if r.split(":", 1)[0] in HARD_CODES]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "score": self.score, "reasons": self.reasons, "checks": self.checks}


class _Tally:
    __slots__ = ("base", "checks", "claims", "failures", "hard", "last", "reading", "reasons", "soft", "turn")

    def __init__(self, claims: bool = False) -> None:
        self.reading = False  # a _ReadTally: the checks also keep what they read (Verifier.read)
        self.checks = 0
        self.hard = 0
        self.soft = 0
        self.reasons: list[str] = []
        # claim recording (only when asked): every fail call, the last reason, where the clause starts
        self.claims: list[dict[str, Any]] | None = [] if claims else None
        self.failures = 0
        self.last = ""
        self.base = 0
        self.turn = 0

    def ok(self) -> None:
        self.checks += 1

    def mark(self) -> tuple[int, int]:
        return self.checks, self.failures

    def claim(self, before: tuple[int, int], start: int, end: int, kind: str, refs: list[str]) -> None:
        """Record what the checks since ``before`` decided about the text at clause offsets [start, end)."""
        if self.checks == before[0]:
            return  # nothing was checked: not a claim
        ok = self.failures == before[1]
        self.claims.append({"turn": self.turn, "start": self.base + start, "end": self.base + end, "kind": kind,
                            "refs": refs, "status": "matched" if ok else "unmatched",
                            "reason": None if ok else self.last})

    def fail(self, code: str, detail: str) -> None:
        self.checks += 1
        msg = f"{code}: {detail}"
        self.failures += 1
        self.last = msg
        if msg in self.reasons:
            return
        self.reasons.append(msg)
        if code in HARD_CODES:
            self.hard += 1
        else:
            self.soft += 1


#: Reason codes of a number that is not within the tolerance of its biomarker.
NUMBER_CODES = frozenset({"wrong_number", "hallucinated_number", "wrong_unit"})


@dataclass(slots=True)
class Reading:
    """What :meth:`Verifier.read` read in a row's assistant turns (the checks ran, the row is not judged).

    stated:
        Diseases (category ids, ``normal`` included) the answers put forward, in order.
    named:
        Biomarker ids (of the lexicon) the answers name.
    numbers_checked / numbers_wrong:
        Measured values checked (numbers tied to a biomarker) and how many of them failed
        (``wrong_number``, ``hallucinated_number``, ``wrong_unit``).
    reference_numbers_checked / reference_numbers_wrong:
        The same for numbers after a reference cue ("normal range 240 to 316 µm", "at least 0.03 mm³").
    findings_agree / findings_disagree:
        Qualitative claims (thinned / thickened / within normal limits, present / absent) the reasoner
        confirms, and those it contradicts.
    invented:
        Distinct ``invented_finding`` reasons (lesions claimed present that no measurement shows).
    wrong_eye:
        A turn names the other eye (``laterality``).
    unreadable:
        Why the checks could not read the row (``verify`` would give this ``unreadable`` reason), else None.

    A failed check counts once per number, per clause's qualitative terms and per finding name (a
    reason repeated inside one of those counts once, as in ``verify``'s reasons; repeated across them,
    once each)."""

    stated: list[str]
    named: frozenset[str]
    numbers_checked: int
    numbers_wrong: int
    reference_numbers_checked: int
    reference_numbers_wrong: int
    findings_agree: int
    findings_disagree: int
    invented: int
    wrong_eye: bool
    unreadable: str | None = None


class _ReadTally(_Tally):
    """A tally for :meth:`Verifier.read`: counts checks and failures per scope (one number, one clause's
    terms, one finding name) instead of collecting the row's reasons."""

    __slots__ = ("findings", "invented", "named", "numbers", "scope", "wrong_eye")

    def __init__(self) -> None:
        super().__init__(False)
        self.reading = True
        self.named: set[str] = set()
        self.numbers = [0, 0, 0, 0]  # measured: checked, wrong; after a reference cue: checked, wrong
        self.findings = [0, 0]  # agree, disagree
        self.invented: set[str] = set()
        self.scope: dict[str, str] | None = None  # the failures of the open scope, reason -> code
        self.wrong_eye = False

    def fail(self, code: str, detail: str) -> None:
        self.checks += 1
        self.failures += 1
        msg = f"{code}: {detail}"
        if self.scope is not None:
            self.scope[msg] = code
        if code == "invented_finding":
            self.invented.add(msg)

    def open(self) -> int:
        self.scope = {}
        return self.checks

    def close_number(self, c0: int, cue) -> None:
        k = 2 if cue else 0
        self.numbers[k] += self.checks - c0
        if self.scope:
            self.numbers[k + 1] += sum(1 for c in self.scope.values() if c in NUMBER_CODES)
        self.scope = None

    def close_findings(self, c0: int) -> None:
        new = self.scope
        if new:
            self.findings[0] += max(0, self.checks - c0 - len(new))
            self.findings[1] += sum(1 for c in new.values() if c == "contradiction")
        elif self.checks > c0:
            self.findings[0] += self.checks - c0
        self.scope = None


def _lower(text: str) -> str:
    """Lower-case ``text`` keeping every offset (the patterns here are written in lower case)."""
    low = text.lower()
    if len(low) == len(text):
        return low
    return "".join(c if len(c.lower()) != 1 else c.lower() for c in text)


def _decimals(s: str) -> int:
    return len(s.split(".", 1)[1]) if "." in s else 0


def _number_value(a: str, e: str | None) -> tuple[float, int]:
    """The value and the written decimals of a number with an optional power of ten (group ``e`` of
    ``_NUMBER_RE``): ``("2.62", "e2")`` -> ``(262.0, 0)``."""
    dec = _decimals(a)
    if not e:
        return float(a), dec
    p = e.translate(_SUPERSCRIPT).replace("−", "-")
    p = p[1:] if p[0] == "e" else p.split("10", 1)[1].lstrip("^ ")
    exp = int(p)
    return float(a) * 10.0 ** exp, max(0, dec - exp)


#: What may stand between a count and the lesion it counts: white space and at most two words
#: ("4 intraretinal haemorrhages", "8 small microaneurysms").
_COUNT_GAP = re.compile(r"\s*(?:[a-z-]+\s+){0,2}$")
#: "at least / more than / over / >" (group ``ge``) or "fewer than / less than / under / <" before a count.
_COUNT_BOUND = re.compile(r"(?:(?P<ge>at least|more than|greater than|over|above|≥|>)|fewer than|less than|under|"
                          r"below|<)\s*$")




@lru_cache(maxsize=32)
def _name_regex_cached(words: tuple[str, ...]) -> re.Pattern:
    return re.compile(word_trie(words, not_before=r"[\w-]") + r"(?![\w-])")


def _name_regex(words) -> re.Pattern:
    """Whole-word (hyphen-aware) alternation of ``words`` (lower case), longest first (:func:`word_trie`: the
    character before a word is neither a word character nor a hyphen)."""
    return _name_regex_cached(tuple(sorted({w.lower() for w in words})))


#: A negator and a list of findings ending just before this one: "no microaneurysms, haemorrhages or
#: exudates" negates all three ("and" is left out: "no fluid and drusen" is ambiguous).
_NEG_LIST = re.compile(_lead_trie(("no", "without", "neither", "nor", "absence of", "free of", "lack of"))
                       + r"\s+[\w\s,'-]{1,60}?(?:,\s*|\s+or\s+|\s+nor\s+)(?:[\w-]+\s+){0,2}$")
_LIST_BREAK = re.compile(r"\b(?:but|however|although|though|yet|while|whereas|except)\b")


def _negated_list(before: str) -> bool:
    m = _NEG_LIST.search(before)
    return m is not None and not _LIST_BREAK.search(before, m.start())


@lru_cache(maxsize=1 << 16)
def _presence_claim(before: str, after: str) -> str | None:
    """``"absent"``, ``"present"`` or None (no claim, or kept open: "cannot exclude subretinal fluid",
    "possible drusen") for a finding named between the windows ``before`` and ``after`` (cached:
    generated rows repeat their sentences)."""
    if _NEG_BEFORE.search(before) or _NEG_AFTER.match(after) or _negated_list(before):
        claim = "absent"
    elif _POS_AFTER.match(after) or _POS_BEFORE.search(before):
        claim = "present"
    else:
        return None
    return None if LESION_HEDGE_BEFORE.search(before) else claim


def _longest_part(word: str, table) -> tuple[str, int] | None:
    """The longest key of ``table`` made of whole words of ``word`` and its offset in ``word``
    (``("drusen", 0)`` for "drusen on the photograph", ``("haemorrhages", 8)`` for "retinal haemorrhages")."""
    toks = word.split(" ")
    n = len(toks)
    for size in range(n - 1, 0, -1):
        for i in range(n - size + 1):
            p = " ".join(toks[i:i + size])
            if p in table:
                return p, len(" ".join(toks[:i])) + (1 if i else 0)
    return None


def _near_value(table: dict, x: float, factor: float, tol: float, half: float) -> bool:
    """Whether ``x`` (in a unit ``factor`` times the base unit) is within the tolerance of a value of ``table``
    (:meth:`Verifier._quantity_table`): ``abs(x - truth) <= max(tol * abs(truth), half)``, ``half`` the written
    rounding."""
    for value, _refs in table.values():
        truth = value / factor
        if abs(x - truth) <= max(tol * abs(truth), half):
            return True
    return False


def _near_reference(table: dict, x: float, factor: float, tol: float, half: float) -> bool:
    """:func:`_near_value` of the reference values (percentiles, means, thresholds) of ``table``."""
    for _value, refs in table.values():
        for r in refs:
            truth = r / factor
            if abs(x - truth) <= max(tol * abs(truth), half):
                return True
    return False


def _spans_of(text: str, needle: str) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` of every occurrence of ``needle`` in ``text``."""
    out = []
    i = text.find(needle)
    while i >= 0:
        out.append((i, i + len(needle)))
        i = text.find(needle, i + 1)
    return out


def _turn_text(content: Any) -> tuple[str, str | None]:
    """The text of one turn's content and, when it is not plain UTF-8 text, why."""
    if content is None:
        return "", None
    if isinstance(content, str):
        try:
            content.encode("utf-8")
        except UnicodeEncodeError:
            return content.encode("utf-8", "replace").decode("utf-8"), "is not valid UTF-8 text"
        return content, None
    if isinstance(content, (bytes, bytearray)):
        try:
            return bytes(content).decode("utf-8"), None
        except UnicodeDecodeError:
            return bytes(content).decode("utf-8", "replace"), "is not valid UTF-8 text"
    if isinstance(content, (list, tuple)):
        texts = [p.get("text") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return "\n".join(texts), "is a list of parts, not text"
    return str(content), f"is a {type(content).__name__}, not text"


def _unstrip_offsets(content: str, claims: list[dict[str, Any]]) -> None:
    """Move ``claims``' offsets in ``strip_boxes(content)`` (each box became one space) to ``content``."""
    shifts = []  # (position in the stripped text after which a box was, characters it took less)
    removed = 0
    for s, e in box_spans(content):
        shifts.append((s - removed, e - s - 1))
        removed += e - s - 1
    for c in claims:
        for key in ("start", "end"):
            c[key] += sum(n for at, n in shifts if at < c[key])


def _clean_messages(messages: Any, t) -> list[dict[str, str]]:
    """``[{role, content}]`` with text contents; each unreadable or empty turn is a ``format`` reason."""
    if messages is None or isinstance(messages, (str, bytes, dict)):
        if messages:
            t.fail("format", f"messages must be a list of {{role, content}} turns, got {type(messages).__name__}")
        return []
    out = []
    for i, msg in enumerate(messages):
        if type(msg) is not dict and not isinstance(msg, dict):
            t.fail("format", f"turn {i} is a {type(msg).__name__}, not a {{role, content}} mapping")
            continue
        role = msg.get("role")
        text = msg.get("content")
        if type(text) is not str or not (text.isascii() or _utf8(text)):
            text, why = _turn_text(text)
            if why:
                t.fail("format", f"turn {i} ({role}) {why}")
        if (not text or text.isspace()) and role in ("user", "assistant"):
            t.fail("format", f"turn {i} ({role}) is empty")
        out.append({"role": role if type(role) is str else str(role), "content": text})
    return out


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def clean_text(text: Any) -> bool:
    """Whether ``text`` is a ``str`` that is valid UTF-8 (a turn :func:`_clean_messages` keeps as it is)."""
    return type(text) is str and (text.isascii() or _utf8(text))


def _names_other_eye(content: str, eye: str) -> bool:
    """Whether a turn names the other eye (its ``laterality`` reason, :func:`_phrasing`)."""
    return _wrong_eye(content, _lower(strip_boxes(content) if BOX_START in content else content), eye) is not None


_question_names_other_eye = lru_cache(maxsize=4096)(_names_other_eye)


def _unreadable(t, exc: Exception) -> Reading:
    """The reading of a row the checks could not read (what ``verify`` gives as its only reason)."""
    why = f"unreadable: the row could not be read ({type(exc).__name__}: {str(exc)[:200]})"
    return Reading([], frozenset(t.named), *t.numbers, *t.findings, 0, False, why)


class _RowClaims:
    """What one row claims across all its assistant turns: diseases (id -> polarities), the
    diagnoses it states, and present/absent claims per finding (entity -> claims)."""

    __slots__ = ("diseases", "entities", "stated")

    def __init__(self, stated: list[str]) -> None:
        self.diseases: dict[str, set[str]] = {}
        self.entities: dict[str, set[str]] = {}
        self.stated = stated


class _LazyCue:
    """Truthy when a reference cue (``_REF_CUE``) occurs in ``clause[start:end]``; searched on first use."""

    __slots__ = ("clause", "end", "start", "value")

    def __init__(self, clause: str, start: int, end: int):
        self.clause, self.start, self.end, self.value = clause, start, end, None

    def __bool__(self) -> bool:
        if self.value is None:
            self.value = _REF_CUE.search(self.clause, self.start, self.end) is not None
        return self.value


class Verifier:
    """Checks rows against :class:`~grok.instruct.records.StudyFacts` of their study.

    Build once (``Verifier(lexicon, config, families)``) and call :meth:`verify` per row.
    """

    def __init__(self, lexicon: Lexicon, config: VerifyConfig | None = None, families: dict | None = None):
        self.lex = lexicon
        self.config = config or VerifyConfig()
        self.families = families or FAMILIES
        self._unit_quantity = {uid: UNIT_BASE[uid] for uid in UNIT_BASE}
        # one scan finds every finding, unmeasured lesion, disease and stage name
        self._unmeasured = frozenset(UNMEASURED_LESIONS)
        self._names_stage = {w: (d, c) for d, cls in STAGE_WORDS.items() for c, ws in cls.items() for w in ws}
        self._stage_rx = {d: _name_regex({w for ws in cls.values() for w in ws}) for d, cls in STAGE_WORDS.items()}
        self._names_disease = dict(lexicon.disease_alias)
        for w, (d, _c) in self._names_stage.items():  # "late amd", "mild hypertensive" also name their disease
            if d in lexicon.disease_names and any(re.search(rf"(?<![\w-]){re.escape(a)}(?![\w-])", w)
                                                  for a, x in lexicon.disease_alias.items() if x == d):
                self._names_disease.setdefault(w, d)
        names = {*lexicon.presence_alias, *self._unmeasured, *self._names_disease, *self._names_stage}
        balias = lexicon.biomarker_alias
        # One scan finds biomarker names and the names above. A word of one table that contains a
        # word of the other also stands for that shorter word ("drusen on the photograph" names the
        # drusen count, "retinal haemorrhages" the haemorrhage finding), as a separate scan of each
        # table would have found it: word -> (biomarker ids, start, end) / (names word, start).
        self._bm_of: dict[str, tuple[tuple[str, ...], int, int]] = {}
        self._name_of: dict[str, tuple[str, int]] = {}
        for w in set(balias) | names:
            b = (w, 0) if w in balias else _longest_part(w, balias)
            if b is not None:
                self._bm_of[w] = (balias[b[0]], b[1], b[1] + len(b[0]))
            n = (w, 0) if w in names else _longest_part(w, names)
            if n is not None:
                self._name_of[w] = n
        self._scan = WordScanner({w.lower() for w in set(balias) | names}, hyphen=True, end=r"(?![\w-])")
        # lexicon lookups per biomarker-id tuple (candidates of a quantity, of a bare number, has a count)
        self._memo: dict[Any, Any] = {}

    # -- helpers -----------------------------------------------------------------------------------
    def _close(self, written: float, decimals: int, truth: float) -> bool:
        slack = max(self.config.tolerance * abs(truth), 0.5 * 10 ** (-decimals) + 1e-12)
        return abs(written - truth) <= slack

    def _mentions(self, matches, off: int) -> list[tuple[int, int, tuple[str, ...]]]:
        """``(start, end, biomarker ids)`` of the biomarker names among ``matches`` (clause positions)."""
        bm_of = self._bm_of
        out = []
        for m in matches:  # (start, end, word)
            bm = bm_of.get(m[2])
            if bm is not None:
                s = m[0] - off
                out.append((s + bm[1], s + bm[2], bm[0]))
        return out

    @staticmethod
    def _subject_before(mentions, pos: int):
        best = None
        for s, e, ids in mentions:
            if e <= pos:
                best = (s, e, ids)
            else:
                break
        return best

    # -- numbers ---------------------------------------------------------------------------------
    def _check_numbers(self, clause: str, matches, off: int, mentions, facts, t: _Tally, carried) -> None:
        reading, recording = t.reading, t.claims is not None
        for m in matches:  # (start, end, whole, a, e, b, unit)
            ms = m[0] - off
            a, e, b_raw, unit_raw = m[3:]
            unit = (UNIT_ALIASES.get(unit_raw) or UNIT_ALIASES.get(unit_raw.lower())) if unit_raw else None
            subj = None  # _subject_before(mentions, ms), inline
            for mention in mentions:
                if mention[1] <= ms:
                    subj = mention
                else:
                    break
            if subj is None and not mentions and carried is not None:
                subj = carried
            if reading:  # one number's verdict; after a reference cue it is a reference value (always asked)
                cue = _REF_CUE.search(clause, subj[1] if subj else 0, ms) is not None
                c0 = t.open()
                self._check_number(clause, m, ms, off, a, e, b_raw, unit, subj, mentions, facts, t, cue)
                t.close_number(c0, cue)
                continue
            cue = _LazyCue(clause, subj[1] if subj else 0, ms)
            if not recording:
                self._check_number(clause, m, ms, off, a, e, b_raw, unit, subj, mentions, facts, t, cue)
            else:
                before = t.mark()
                self._check_number(clause, m, ms, off, a, e, b_raw, unit, subj, mentions, facts, t, cue)
                t.claim(before, ms, m[1] - off, "number", [f"bm-{b}" for b in subj[2]] if subj else [])

    def _check_number(self, clause: str, m, ms: int, off: int, a, e, b_raw, unit, subj, mentions, facts,
                      t: _Tally, cue: _LazyCue) -> None:
        """One number (or range) of a clause, tied to ``subj`` (the biomarker mention before it); ``cue``: whether
        a reference cue stands between that mention and the number."""
        if e:
            a_val, a_dec = _number_value(a, e)
        else:
            a_val, a_dec = float(a), (len(a) - a.index(".") - 1 if "." in a else 0)
        if ms and clause[ms - 1] in "-−" and (ms < 2 or not clause[ms - 2].isalnum()):
            a_val = -a_val  # a sign, not a range dash ("-73.4 µm")
        if b_raw and subj is not None and not cue and self._check_range(
                a_val, float(b_raw), _decimals(b_raw), unit, m[2].strip(), subj, facts, t):
            return
        # a range after a reference cue is two reference values
        a_text = a + e.strip() if e else a
        nums = ((a_val, a_dec, a_text), (float(b_raw), _decimals(b_raw), b_raw)) if b_raw else ((a_val, a_dec, a_text),)
        for k, (x, dec, s) in enumerate(nums):
            if unit in UNIT_BASE:
                self._check_unit_number(x, dec, unit, s, subj, True if (k == 1 or b_raw) else cue, facts, t,
                                        subj is not None and ms - subj[1] <= 20)
            elif unit == "percent":
                self._check_percent(x, dec, s, subj, facts, t)
            else:
                self._check_bare_number(clause, x, dec, s, ms, m[1] - off, mentions, subj,
                                        True if b_raw else cue, facts, t)

    def _check_range(self, lo, hi, dec, unit, written, subj, facts, t: _Tally) -> bool:
        """A measurement written as a range ("CST 255-265 µm", no reference cue before it): it must
        contain the biomarker's value (within the tolerance). Returns False when the subject is no
        biomarker of this unit's quantity (the range is then read as two reference values)."""
        if unit not in UNIT_BASE and unit is not None:
            return False
        factor = UNIT_BASE[unit][1] if unit in UNIT_BASE else None
        for bid in subj[2]:
            b = facts.biomarkers.get(bid)
            if b is None:
                continue
            if factor is not None:
                if UNIT_BASE.get(b.unit, ("",))[0] != UNIT_BASE[unit][0]:
                    continue
                v = b.value * UNIT_BASE[b.unit][1] / factor
            else:
                v = b.value
            lo_, hi_ = min(lo, hi), max(lo, hi)
            slack = max(self.config.tolerance * abs(v), 0.5 * 10 ** (-dec) + 1e-12)
            if lo_ - slack <= v <= hi_ + slack:
                t.ok()
                return True
            if b.has_range:  # the normal range written without a cue word ("CST 262 µm (240-316 µm)"), to ±2 %
                scale = UNIT_BASE[b.unit][1] / factor if factor else 1.0
                p5, p95 = (float(x.split()[0]) * scale for x in (b.low_text, b.high_text))
                if all(abs(x - r) <= max(0.02 * abs(r), 0.5 * 10 ** (-dec) + 1e-12) for x, r in ((lo_, p5), (hi_, p95))):
                    t.ok()
                    return True
            t.fail("wrong_number", f"range {written} for {b.name}, which is {b.text}")
            return True
        return False

    def _candidates(self, ids, quantity: str, facts) -> list[str]:
        """The biomarkers of ``ids`` measured in ``quantity`` (kept per ids and quantity: they come from the lexicon)."""
        key = (ids, quantity)
        out = self._memo.get(key)
        if out is None:
            units = self.lex.biomarker_units
            out = self._memo[key] = [b for b in ids if UNIT_BASE.get(units.get(b, ""), ("",))[0] == quantity]
        return out

    @staticmethod
    def _quantity_table(facts, quantity: str) -> dict[str, tuple[float, list[float]]]:
        """``{biomarker: (value, references)}`` in the base unit of ``quantity`` (µm, nl, px) for the
        biomarkers of ``facts`` measured in it; cached per study."""
        memo = facts.memo
        key = ("quantity", quantity)
        table = memo.get(key)
        if table is None:
            table = memo[key] = {}
            for bid, b in facts.biomarkers.items():
                if UNIT_BASE.get(b.unit, ("",))[0] == quantity:
                    bf = UNIT_BASE[b.unit][1]
                    table[bid] = (b.value * bf, [r * bf for r in b.references])
        return table

    def _check_unit_number(self, x, dec, unit, s, subj, cue, facts, t: _Tally, near_subject: bool = True) -> None:
        """``near_subject``: the subject is named close before the number (a unit of another quantity
        is then a wrong unit; otherwise the number may be about something else and is looked up)."""
        quantity, factor = UNIT_BASE[unit]
        cands = self._candidates(subj[2], quantity, facts) if subj else []
        table = self._quantity_table(facts, quantity)
        tol = self.config.tolerance
        half = 0.5 * 10 ** (-dec) + 1e-12  # the written rounding (as in _close)
        if quantity == "length" and not cands:  # lesion sizes and KB size classes, for numbers about no biomarker
            x_um = x * factor
            if any(self._close(x_um, dec, v) for v in facts.lesion_lengths_um):
                return t.ok()
            if cue and any(self._close(x_um, dec, v) for v in facts.kb_lengths_um):
                return t.ok()
        if cands:
            for b in cands:  # any(value_matches(b) for b in cands)
                v = table.get(b)
                if v is not None:
                    truth = v[0] / factor
                    if abs(x - truth) <= max(tol * abs(truth), half):
                        return t.ok()
            if cue and _near_reference(table, x, factor, tol, half):  # (the candidates with a value are in the table)
                return t.ok()
            written = f"{s} {unit}"
            biomarkers = facts.biomarkers
            for c in cands:  # the first candidate measured
                b = biomarkers.get(c)
                if b is not None:
                    if unit != b.unit and self._close(x, dec, b.value):
                        return t.fail("wrong_unit", f"{written} for {b.name}, which is {b.text}")
                    return t.fail("wrong_number", f"{written} for {b.name}, which is {b.text}")
            return t.fail("hallucinated_number", f"{written} for {self.lex.biomarker_names[cands[0]]}, which was not "
                                                 "measured")
        if subj is not None and near_subject:  # a far subject may not be what the number is about
            other = [facts.biomarkers[b] for b in subj[2]
                     if b in facts.biomarkers and facts.biomarkers[b].unit in UNIT_BASE]
            if other:
                return t.fail("wrong_unit", f"{s} {unit} for {other[0].name}, which is measured in "
                                            f"{other[0].symbol} ({other[0].text})")
        if _near_value(table, x, factor, tol, half):
            return t.ok()
        if cue and _near_reference(table, x, factor, tol, half):
            return t.ok()
        t.fail("hallucinated_number", f"{s} {unit} matches no {quantity} biomarker of this study")

    def _check_percent(self, x, dec, s, subj, facts, t: _Tally) -> None:
        cands = [b for b in (subj[2] if subj else ()) if self.lex.biomarker_units.get(b) in ("fraction", "ratio")]
        if not cands:
            return  # a percentage about no biomarker (e.g. a percentile) is not a measurement claim
        for bid in cands:
            b = facts.biomarkers.get(bid)
            if b is not None and self._close(x / 100.0, dec + 2, b.value):
                return t.ok()
        b = next((facts.biomarkers[c] for c in cands if c in facts.biomarkers), None)
        if b is None:
            return t.fail("hallucinated_number", f"{s} % for {self.lex.biomarker_names[cands[0]]}, which was not measured")
        t.fail("wrong_number", f"{s} % for {b.name}, which is {b.text}")

    def _check_bare_number(self, clause, x, dec, s, ms, me, mentions, subj, cue, facts, t: _Tally) -> None:
        """A number without a unit at ``[ms, me)`` of its clause, tied to the biomarker named just
        before it (or to a count named just after it: "3 microaneurysms"): it must match that
        biomarker's value in its own unit (or, after a reference cue, a reference value)."""
        target = None
        after = None
        for mention in mentions:
            st = mention[0]
            if 0 <= st - me and (st - me <= 2 or _COUNT_GAP.match(clause, me, st)):
                after = mention
                break
        if after and self._bare_kinds(after[2])[1]:
            target = after
        elif subj is not None and ms - subj[1] <= 40:
            target = subj
        if target is None:
            return
        cands = self._bare_kinds(target[2])[0]
        if not cands:
            return
        bound = False  # _COUNT_BOUND's match before the number, searched when a count needs it
        tol = self.config.tolerance
        half = 0.5 * 10 ** (-dec) + 1e-12  # the written rounding (as in _close)
        biomarkers = facts.biomarkers
        for bid in cands:
            b = biomarkers.get(bid)
            if b is None:
                continue
            v = b.value
            if abs(x - v) <= max(tol * abs(v), half) or (cue and any(self._close(x, dec, r) for r in b.references)):
                return t.ok()
            if b.unit == "count":
                if bound is False:
                    bound = _COUNT_BOUND.search(clause, max(0, ms - 24), ms)
                if bound and (b.value >= x if bound.group("ge") else b.value < x):
                    return t.ok()  # "at least 2 microaneurysms", "fewer than 5 haemorrhages"
        for c in cands:  # the first candidate measured
            b = biomarkers.get(c)
            if b is not None:
                return t.fail("wrong_number", f"{s} for {b.name}, which is {b.text}")
        t.fail("hallucinated_number", f"{s} for {self.lex.biomarker_names[cands[0]]}, which was not measured")

    def _bare_kinds(self, ids) -> tuple[list[str], bool]:
        """(the biomarkers of ``ids`` a bare number can be about: dimensionless or with a known unit, whether
        one of ``ids`` is a count); kept per ids (they come from the lexicon)."""
        key = ("kinds", ids)
        out = self._memo.get(key)
        if out is None:
            units = self.lex.biomarker_units
            cands = [b for b in ids if units.get(b) in _DIMENSIONLESS_UNITS or units.get(b) in UNIT_BASE]
            out = self._memo[key] = (cands, any(units.get(b) == "count" for b in ids))
        return out

    # -- qualitative claims ------------------------------------------------------------------------
    def _check_terms(self, clause: str, matches, off: int, mentions, facts, t: _Tally, carried,
                     inside=()) -> None:
        """``inside``: the spans of the reasoner's stage name in the clause. Its words ("... without central
        subfield thickening") are the reasoner's own conclusion, not a claim about a biomarker named nearby."""
        if t.reading:
            c0 = t.open()
            for m in matches:
                self._check_term(clause, m, off, mentions, facts, t, carried, inside)
            t.close_findings(c0)
            return
        for m in matches:
            if t.claims is None:
                self._check_term(clause, m, off, mentions, facts, t, carried, inside)
            else:
                before = t.mark()
                subj = self._check_term(clause, m, off, mentions, facts, t, carried, inside)
                t.claim(before, m[0] - off, m[1] - off, "term", [f"bm-{b}" for b in subj[2]] if subj else [])

    def _check_term(self, clause: str, m, off: int, mentions, facts, t: _Tally, carried, inside):
        """One qualitative term ("thickened", "normal") about the biomarker named next to it; returns that
        mention (or None)."""
        ms, me, word = m[0] - off, m[1] - off, m[2]
        if inside and any(a <= ms and me <= b for a, b in inside):
            return None
        claim = _TERM_CLASS[word]
        subj = next(((s, e, ids) for s, e, ids in mentions if 0 <= s - me <= 2), None)
        if subj is None:
            subj = self._subject_before(mentions, ms)
        if subj is None:
            subj = next(((s, e, ids) for s, e, ids in mentions if 0 <= s - me <= 30), None)
        if subj is None and not mentions:
            subj = carried
        if subj is None:
            return subj
        negated = claim != "normal" and bool(_NEG_TERM_BEFORE.search(clause[max(0, ms - 40):ms]))
        ids = [b for b in subj[2] if b in facts.biomarkers]
        if not ids:
            return subj
        statuses = {facts.biomarkers[b].status for b in ids}
        name = facts.biomarkers[ids[0]].name
        if statuses == {None}:
            t.fail("unsupported_claim", f"'{word}' about {name}: no normal range or rule decides it")
            return subj
        if negated:
            bad = claim in statuses and len(statuses) == 1
            if bad:
                t.fail("contradiction", f"says {name} is not {word}, but the reasoner finds it {claim}")
            else:
                t.ok()
            return subj
        if claim in statuses:
            t.ok()
        elif None in statuses:
            t.fail("unsupported_claim", f"'{word}' about {name}: no normal range or rule decides it")
        else:
            st = min(s for s in statuses if s)
            t.fail("contradiction", f"says {name} is {word}, but the reasoner finds it {st}")
        return subj

    # -- named things: findings, unmeasured lesions, diseases, stages ----------------------------------
    def _check_names(self, clause: str, matches, off: int, facts, t: _Tally, rc: _RowClaims, inside) -> None:
        """Every finding, lesion, disease and stage name of the clause (one scan finds them all; the
        name's tables say which it is)."""
        name_of = self._name_of
        for m in matches:  # (start, end, word)
            part = name_of.get(m[2])
            if part is None:
                continue  # a biomarker name only
            if t.claims is None:
                self._check_name(clause, m, part, off, facts, t, rc, inside)
            else:
                before = t.mark()
                ms, me, fids, did = self._check_name(clause, m, part, off, facts, t, rc, inside)
                t.claim(before, ms, me, "name", [f"finding-{f}" for f in fids or ()] + ([f"dx-{did}"] if did else []))

    def _check_name(self, clause: str, m, part, off: int, facts, t: _Tally, rc: _RowClaims, inside):
        """One finding, lesion, disease or stage name; returns its clause span and what it names (finding ids,
        disease id)."""
        word = part[0]
        ms = m[0] - off + part[1]
        me = ms + len(word)
        fids = self.lex.presence_alias.get(word)
        did = self._names_disease.get(word)
        span = (ms, me, fids, did)
        if fids is not None:
            if t.reading:
                c0 = t.open()
                self._check_presence(clause, ms, me, word, fids, facts, t, rc)
                t.close_findings(c0)
            else:
                self._check_presence(clause, ms, me, word, fids, facts, t, rc)
        elif word in self._unmeasured:
            self._check_unmeasured(clause, ms, me, word, t)
        if did is None:
            stage = self._names_stage.get(word)
            if stage is not None and stage[0] == facts.label:
                self._check_stage(clause, ms, me, word, stage[1], None, facts, t, inside)
            return span
        in_stage = bool(inside) and any(a <= ms and me <= b for a, b in inside)
        if not in_stage and "(" in clause and clause.count("(", 0, ms) > clause.count(")", 0, ms):
            return span  # evidence listed in parentheses, e.g. "(central subfield thickening (DME range))"
        pol = disease_polarity(clause[:ms], clause[me:])
        if in_stage:  # the reasoner's own stage name ("Intermediate AMD."): what it claims, no stage check
            if pol is not None and did == facts.label:
                self._check_disease(clause, word, did, pol, facts, t, rc)
            return span
        stage = self._names_stage.get(word)
        if stage is not None and stage[0] == facts.label:
            self._check_stage(clause, ms, me, word, stage[1], pol, facts, t, inside)
        elif did == facts.label and facts.stage:
            cls = stage_modifier(did, clause[:ms])
            if cls is not None:
                self._check_stage(clause, ms, me, word, cls, pol, facts, t, inside)
        if pol is not None:
            self._check_disease(clause, word, did, pol, facts, t, rc)
        return span

    def _check_presence(self, clause: str, ms: int, me: int, entity: str, fids, facts, t: _Tally,
                        rc: _RowClaims) -> None:
        claim = _presence_claim(clause[max(0, ms - 40):ms], clause[me:me + 40])
        if claim is None:
            return
        states = tuple(map(facts.finding_state.get, fids))
        rc.entities.setdefault(entity, set()).add(claim)
        if claim == "absent":
            if "present" in states:
                t.fail("contradiction", f"says no {entity}, but the reasoner finds it present")
            elif "absent" in states:
                t.ok()
            else:
                t.fail("unsupported_claim", f"says no {entity}, but it was not evaluable")
        elif "present" in states:
            t.ok()
        elif "absent" in states:
            t.fail("contradiction", f"says {entity} is present, but the reasoner finds it absent")
        else:
            t.fail("invented_finding", f"says {entity} is present, but no measurement of this study shows it")

    @staticmethod
    def _check_unmeasured(clause: str, ms: int, me: int, word: str, t: _Tally) -> None:
        """A lesion the pipeline never measures (a macular hole, an epiretinal membrane, ...) claimed
        present: no record can support it. Negated, hedged or asked about, it is no claim."""
        before = clause[max(0, ms - 60):ms]
        if LESION_NEG_BEFORE.search(before) or LESION_HEDGE_BEFORE.search(before) or \
                LESION_NEG_AFTER.match(clause, me) or clause.startswith("?", me):
            return t.ok()
        t.fail("invented_finding", f"says {word!r}, which no measurement of this study shows")

    def _check_disease(self, clause: str, word: str, did: str, pol: str, facts, t: _Tally, rc: _RowClaims) -> None:
        """A stated diagnosis must be the study's category (a second one only as a coexisting disease
        the reasoner supports); a negated category is decided per row in :meth:`_row_claims`."""
        rc.diseases.setdefault(did, set()).add(pol)
        if pol == "stated":
            rc.stated.append(did)
            if did == facts.label or (self._status(facts, did) == "supported" and COEXIST_RE.search(clause)):
                t.ok()
            else:
                t.fail("diagnosis_mismatch", f"states {self.lex.disease_names.get(did, did)} ({word!r}), but the "
                                             f"study's category is {facts.label_name}")
        elif pol == "negated" and did != facts.label and self._status(facts, did) == "supported":
            t.fail("unsupported_claim", f"rules out {self.lex.disease_names.get(did, did)}, which the reasoner supports")
        elif did != facts.label or pol == "possible":
            t.ok()

    def _check_normal(self, clause: str, facts, t: _Tally, rc: _RowClaims) -> None:
        """"Diagnosis: normal" (a bare "normal" elsewhere describes a measurement, not the eye)."""
        for m in _NORMAL_CONCL.finditer(clause):
            self._check_disease(clause, m.group(0), "normal", "stated", facts, t, rc)

    @staticmethod
    def _status(facts, did: str) -> str | None:
        table = facts.memo.get("status")
        if table is None:
            table = facts.memo["status"] = {d["id"]: d["status"] for d in facts.differential}
        return table.get(did)

    def _check_stage(self, clause: str, ms: int, me: int, word: str, claimed: str, pol: str | None, facts,
                     t: _Tally, inside) -> None:
        """A stage of the study's category must be the reasoner's stage (``pol``: the polarity of the
        phrase when it also names the disease; a negated or hedged stage is no claim)."""
        if not facts.stage or (inside and any(a <= ms and me <= b for a, b in inside)):
            return
        if pol in ("negated", "possible") or clause.endswith(("non-", "non "), 0, ms):
            return
        before = clause[max(0, ms - 60):ms]
        if pol is None and (LESION_NEG_BEFORE.search(before) or LESION_HEDGE_BEFORE.search(before)):
            return
        own = facts.memo.get(("stage_class", facts.label), False)
        if own is False:
            m = self._stage_rx.get(facts.label).search(_lower(facts.stage))
            own = facts.memo[("stage_class", facts.label)] = self._names_stage[m.group(0)][1] if m else None
        if own is None:
            return
        if claimed == own or claimed in STAGE_ALSO_ALLOWS.get((facts.label, own), ()):
            t.ok()
        else:
            t.fail("wrong_stage", f"names {word!r}, but the reasoner stages {facts.label_name} as {facts.stage}")

    def _row_claims(self, rc: _RowClaims, facts, t: _Tally) -> None:
        """Row-level verdicts: a disease both stated and negated, a finding both present and absent,
        and the study's category negated."""
        for did, pols in rc.diseases.items():
            name = self.lex.disease_names.get(did, did)
            if "stated" in pols and "negated" in pols:
                t.fail("self_contradiction", f"both states and rules out {name}")
            elif did == facts.label and "negated" in pols:
                t.fail("contradiction", f"rules out {facts.label_name}, the study's category")
        for entity, claims in rc.entities.items():
            if len(claims) > 1:
                t.fail("self_contradiction", f"says {entity} is both present and absent")

    # -- main ----------------------------------------------------------------------------------------
    def verify(self, row: dict[str, Any], facts, *, claims: bool = False) -> VerifyResult:
        """Check one instruction row (``task``, ``messages``, ``images``, ``eye``) against its study.

        ``claims``: also return what each number, term and name of the answers was checked against
        (:attr:`VerifyResult.claims`; review tools use it; a little slower). Never raises on a malformed
        row: unreadable turns (not text, not UTF-8, empty) are ``format`` reasons, and anything else the
        checks cannot read is an ``unreadable`` reason."""
        try:
            return self._verify(row, facts, claims)
        except Exception as exc:  # noqa: BLE001 - a row the checks cannot read fails with its reason, never crashes
            why = f"unreadable: the row could not be read ({type(exc).__name__}: {str(exc)[:200]})"
            return VerifyResult(False, 0.0, [why], 1)

    def read(self, row: dict[str, Any], facts) -> Reading:
        """What the checks read in ``row``'s assistant turns (:class:`Reading`): the diagnoses stated, the
        biomarkers named, each number's and each qualitative claim's verdict, invented lesions and the
        other eye named; the numbers, terms and names are checked exactly as :meth:`verify` checks them.

        Nothing else is checked (format, forbidden phrasing, boxes, length, row-level contradictions):
        those only make reasons, which :meth:`verify` gives. Scoring answers (``grok.eval``) reads them
        with this. Never raises: a row the checks cannot read has ``unreadable`` set (and no stated
        diagnosis, invented lesion or wrong eye, as ``verify`` would keep only that reason)."""
        try:
            turns = [(msg["role"], msg["content"]) for msg in _clean_messages(row.get("messages"), _ReadTally())]
        except Exception as exc:  # noqa: BLE001 - as verify: a row the checks cannot read is said so, never a crash
            return _unreadable(_ReadTally(), exc)
        return self.read_turns(turns, facts)

    def read_turns(self, turns, facts) -> Reading:
        """:meth:`read` of a row's turns given as ``(role, text)`` pairs whose texts are ``str`` and valid UTF-8
        (:func:`clean_text`; as :meth:`read` takes them from the row's messages)."""
        t = _ReadTally()
        rc = _RowClaims([])
        try:
            eye = facts.eye
            for role, content in turns:
                if role == "system":
                    continue
                if role != "assistant":
                    if not t.wrong_eye:  # the questions of a benchmark repeat: cached
                        t.wrong_eye = (_question_names_other_eye if len(content) < 600 else _names_other_eye)(
                            content, eye)
                    continue
                low = _lower(strip_boxes(content) if BOX_START in content else content)
                if not t.wrong_eye:
                    t.wrong_eye = _wrong_eye(content, low, eye) is not None
                self._check_claims(normalise(low), facts, t, rc)
        except Exception as exc:  # noqa: BLE001 - as verify: a row the checks cannot read is said so, never a crash
            return _unreadable(t, exc)
        return Reading(rc.stated, frozenset(t.named), *t.numbers, *t.findings, len(t.invented), t.wrong_eye)

    def _verify(self, row: dict[str, Any], facts, claims: bool = False) -> VerifyResult:
        t = _Tally(claims)
        if not isinstance(row, dict):
            t.fail("format", f"a row is a mapping with task and messages, got {type(row).__name__}")
            return VerifyResult(False, 0.0, t.reasons, t.checks)
        task = row.get("task")
        fam = self.families.get(task)
        messages = _clean_messages(row.get("messages"), t)
        images = row.get("images")
        images = [images] if isinstance(images, str) else list(images if images is not None else [])
        self._check_format(task, fam, messages, images, row, t)
        if facts.eye != row.get("eye", facts.eye):
            t.fail("format", f"row eye {row.get('eye')!r} differs from the study's {facts.eye!r}")
        rc = _RowClaims([])
        assistant_texts = []
        for turn, msg in enumerate(messages):
            content = msg["content"]
            if msg["role"] == "system":
                continue
            has_box = BOX_START in content
            text = strip_boxes(content) if has_box else content
            low = _lower(text)
            if msg["role"] != "assistant" and len(content) < 600:  # question turns repeat: cached
                for code, detail in _turn_phrasing(content, low, facts.eye):
                    t.fail(code, detail if code == "forbidden_phrase" else f"{detail} for the {facts.eye_words} "
                                                                         f"({facts.eye})")
                continue
            for code, detail in _phrasing(content, low, facts.eye):
                t.fail(code, detail if code == "forbidden_phrase" else f"{detail} for the {facts.eye_words} "
                                                                     f"({facts.eye})")
            if msg["role"] != "assistant":
                continue
            assistant_texts.append(content)
            if has_box:
                self._check_boxes(content, images, row, facts, t)
            if t.claims is None:
                self._check_claims(normalise(low), facts, t, rc)
            else:
                t.turn, first = turn, len(t.claims)
                self._check_claims(normalise(low), facts, t, rc)
                if has_box:  # offsets of the text without boxes -> offsets of the turn's content
                    _unstrip_offsets(content, t.claims[first:])
        self._row_claims(rc, facts, t)
        all_text = "\n".join(assistant_texts)
        if fam is not None:
            words = len((strip_boxes(all_text) if BOX_START in all_text else all_text).split())
            limit = int(self.config.max_words.get(task, fam.max_words))
            if words > limit:
                t.fail("length", f"{words} words in the answer(s), more than the {limit} allowed for {task}")
            else:
                t.ok()
            if fam.states_diagnosis and not rc.stated:
                t.fail("format", f"a {task} row must state a diagnosis (e.g. 'Diagnosis: ...')")
            if getattr(fam, "names_eye", task == "report") and not _RIGHT_EYE[facts.eye].search(
                    all_text + " " + " ".join(m["content"] for m in messages if m["role"] == "user")):
                t.fail("format", f"a {task} row must name the eye it describes")
        score = 1.0 if t.checks == 0 else max(0.0, (t.checks - t.hard - 0.5 * t.soft) / t.checks)
        return VerifyResult(t.hard == 0, round(score, 4), t.reasons, t.checks,
                            sorted(t.claims, key=lambda c: (c["turn"], c["start"])) if claims else None)

    def _check_claims(self, text: str, facts, t: _Tally, rc: _RowClaims) -> None:
        """Numbers, qualitative terms, presence claims, diagnoses and stages of one (lower-cased,
        :func:`~grok.verify.textnorm.normalise`-d) assistant text.

        The text is read clause by clause. Each pattern scans the whole text once and its matches are
        handed to the clause that contains them; a clause that a match crosses into or out of (which
        only unusual layouts produce) is scanned again on its own, so every clause sees exactly the
        matches a scan of the clause alone would give.
        """
        masked_text = mask(text)
        spans = clause_spans(text)
        stage = _lower(facts.stage) if facts.stage else None
        if stage is not None and stage not in text:
            stage = None
        # each scan's matches handed to the clauses they lie in (``by_clause``): ``per[ci]`` is None when no match
        # starts in clause ``ci`` (the per-message "hit" test the checks have always used), else the matches lying
        # inside it; a clause a match crosses into or out of is ``dirty`` and scanned again on its own. Clauses start
        # after white space and end before it, and every pattern used here treats white space like the start or end
        # of the text, so a clause no match crosses gets exactly the matches of a scan of the clause alone.
        find_terms, find_names = _TERM_SCAN.findall, self._scan.findall
        p_num, d_num = by_clause(numbers(masked_text), spans)
        p_term, d_term = by_clause(find_terms(text), spans)
        p_names, d_names = by_clause(find_names(text), spans)
        named = t.named if t.reading else None
        carried = None
        for ci, (a, b) in enumerate(spans):
            clause = text[a:b]
            if not clause:
                continue
            names = p_names[ci]
            if names is not None:
                names, names_off = (find_names(clause), 0) if ci in d_names else (names, a)
                mentions = self._mentions(names, names_off)
                if named is not None:
                    for _s, _e, ids in mentions:
                        named.update(ids)
            else:
                mentions = []
            if not mentions and carried is not None and not _ANAPHORA.search(clause):
                carried = None  # (so a clause without mentions keeps ``carried`` only after an anaphora)
            inside = _spans_of(clause, stage) if stage and stage in clause else ()
            t.base = a  # claims are recorded at text offsets
            found = p_num[ci]
            if found is not None:
                found, off = (numbers(masked_text[a:b]), 0) if ci in d_num else (found, a)
                self._check_numbers(clause, found, off, mentions, facts, t, carried)
            found = p_term[ci]
            if found is not None:
                found, off = (find_terms(clause), 0) if ci in d_term else (found, a)
                self._check_terms(clause, found, off, mentions, facts, t, carried, inside)
            if names is not None:
                self._check_names(clause, names, names_off, facts, t, rc, inside)
            if "normal" in clause and ("diagnos" in clause or "answer" in clause or "impression" in clause
                                       or "conclusion" in clause or len(clause) < 12):
                self._check_normal(clause, facts, t, rc)
            if mentions:
                carried = mentions[-1]

    def _check_format(self, task, fam, messages, images, row, t: _Tally) -> None:
        if fam is None:
            t.fail("format", f"unknown task {task!r} (expected one of {sorted(self.families)})")
            return
        roles = [m.get("role") for m in messages]
        body = roles[1:] if roles[:1] == ["system"] else roles
        if not body or body[0] != "user" or body[-1] != "assistant" or any(
                body[i] == body[i + 1] for i in range(len(body) - 1)) or "system" in body:
            t.fail("format", f"messages must alternate user/assistant after an optional system message, got {roles}")
        else:
            t.ok()
        n_tokens = sum(str(m.get("content", "")).count(_IMAGE_TOKEN) for m in messages if m.get("role") == "user")
        n_asst = sum(str(m.get("content", "")).count(_IMAGE_TOKEN) for m in messages if m.get("role") != "user")
        roles_img = list(row.get("image_roles") or images)
        if n_tokens != len(images) or n_asst or len(roles_img) != len(images):
            t.fail("format", f"{n_tokens} <image> token(s) in user turns for {len(images)} image(s)"
                             + (f" and {n_asst} outside user turns" if n_asst else ""))
        else:
            t.ok()
        assistant = [str(m.get("content", "")) for m in messages if m.get("role") == "assistant"]
        # the family's declared format (grok.instruct.families.Family attributes; the defaults are the
        # formats of the built-in families, for family objects that do not declare them)
        if getattr(fam, "one_paragraph", task == "report"):
            if len(assistant) != 1 or "\n" in assistant[0].strip():
                t.fail("format", f"a {task} row is one assistant turn of one paragraph")
            else:
                t.ok()
        n_steps = int(getattr(fam, "numbered_steps", 3 if task == "cot" else 0) or 0)
        if n_steps:
            steps = [int(s) for s in _STEP_RE.findall(assistant[-1] if assistant else "")]
            if len(steps) < n_steps or steps != list(range(1, len(steps) + 1)):
                t.fail("format", f"a {task} row needs at least {n_steps} numbered steps 'Step 1', 'Step 2', ... "
                                 f"(found {steps})")
            else:
                t.ok()
        min_user = int(getattr(fam, "min_user_turns", 2 if task == "multiturn" else 1) or 1)
        if min_user > 1:
            if sum(1 for r in roles if r == "user") < min_user:
                t.fail("format", f"a {task} row needs at least {min_user} user turns")
            else:
                t.ok()
        if getattr(fam, "needs_box", task == "localisation"):
            if not any(parse_boxes(a)[0] for a in assistant):
                t.fail("format", f"a {task} answer needs at least one box")
            else:
                t.ok()

    def _check_boxes(self, content: str, images, row, facts, t: _Tally) -> None:
        boxes, unparsed = parse_boxes(content)
        if unparsed:
            t.fail("box", f"{unparsed} box(es) do not parse as <|box_start|>(x1,y1),(x2,y2)<|box_end|>")
        if not boxes:
            return
        roles = list(row.get("image_roles") or [])
        expected = [b for r in roles for b in facts.boxes.get(r, [])]
        for b in boxes:
            probs = b.problems()
            if probs:
                t.fail("box", f"box {b.label or ''} ({b.x1:g},{b.y1:g}),({b.x2:g},{b.y2:g}): {'; '.join(probs)}")
                continue
            label = americanise(b.label) if b.label else b.label  # either spelling names the lesion
            best = max((iou(b, e) for e in expected if not label or americanise(e.label) == label), default=0.0)
            if best >= self.config.iou_min:
                t.ok()
            else:
                t.fail("box", f"box {b.label or ''} ({b.x1:g},{b.y1:g}),({b.x2:g},{b.y2:g}) matches no lesion of the "
                              f"row's images (best IoU {best:.2f})")
