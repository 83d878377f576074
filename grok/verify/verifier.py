"""Deterministic grounding verifier: every number, claim, diagnosis and box checked against the record.

Run as: grok verify DIR/instructions.parquet [--studies DIR/studies.jsonl] [--json]

Rules (each failed rule adds a reason ``code: detail``; *hard* codes fail the row):

* ``wrong_number`` / ``hallucinated_number`` (hard): a number with a unit (µm, mm, mm³, nl, px, %)
  or a number tied to a ratio/count biomarker must match, within ``tolerance`` (default ±10 %, the
  tolerance GROK's judge used, and never tighter than the rounding of the written number), the
  value of the biomarker it is written about (the last biomarker named before it in the same
  clause). A number introduced by a reference cue ("normal range", "percentile", "at least",
  "cut-off", ...) may instead match a reference value (5th/95th percentile, mean, threshold) of
  the knowledge base for a biomarker with that unit. A number tied to no biomarker must match
  some biomarker of the record with that unit, else it is hallucinated.
* ``diagnosis_mismatch`` (hard): a concluding statement ("Diagnosis: X", "most consistent with
  X", "Answer: X") names a category other than the label.
* ``contradiction`` (hard): a qualitative claim about a biomarker (thinned / thickened / within
  normal limits / present / absent) disagrees with the reasoner, or the label is "ruled out".
* ``forbidden_phrase`` (hard): the text refers to a label, a provided report/list/data sheet,
  JSON, metadata or a record (things a model looking at the images could not know).
* ``laterality`` (hard): the wrong eye is named (right eye / OD for OS, and the reverse).
* ``format`` / ``length`` (hard): roles, ``<image>`` tokens, one paragraph and at most 300 words
  for reports, numbered steps for chains of thought, a conclusion where the task states one,
  word limits per task.
* ``box`` (hard): a box that does not parse, lies outside [0, 1000), or matches no lesion of the
  row's images (IoU below ``iou_min``).
* ``unsupported_claim`` (soft): a claim the reasoner can neither confirm nor refute (no normal
  range, finding not evaluable). Soft reasons lower the score but do not fail the row.

The score is the share of checks passed (a soft reason counts half).
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any

from grok.instruct.boxes import iou, parse_boxes, strip_boxes
from grok.verify.lexicon import UNIT_ALIASES, UNIT_BASE, Lexicon, _trie_pattern

HARD_CODES = frozenset({"wrong_number", "hallucinated_number", "diagnosis_mismatch", "contradiction",
                        "forbidden_phrase", "laterality", "format", "length", "box"})

_CLAUSE_SPLIT = re.compile(r"(?<=[.;!?])\s+|\n+")
_UNIT_ALT = "|".join(re.escape(u) for u in sorted(UNIT_ALIASES, key=len, reverse=True))
_NUM = r"\d+(?:\.\d+)?"
_NUMBER_RE = re.compile(
    rf"(?<![\w.])(?P<a>{_NUM})(?:\s*(?:–|—|-|to|and)\s*(?P<b>{_NUM}))?(?:\s*(?P<unit>{_UNIT_ALT}))?(?![\w³²])")
#: Spans that contain numbers but are not measurements: region names, ordinals, ages, step numbers.
_MASK_RE = re.compile(
    r"\b(?:central|inner|outer|within the|the central)\s+\d(?:\.\d)?\s*mm\b(?!\s*[³3^])"
    r"|\b\d(?:\.\d)?(?:\s*-\s*\d(?:\.\d)?)?\s*mm\s+(?:circle|ring|subfield|zone|area|cube|grid|diameter|radius)\b"
    r"|\b\d+(?:\.\d+)?(?:st|nd|rd|th)\b|\b\d+-year-old\b|\baged?\s+\d+\b|\bstep\s+\d+\b|\b\d+\s*(?:years?|y)\b(?!\w)"
    r"|\b(?:grade|stage|type|category)\s+\d+\b|\bp\d+\b")
_REF_CUE = re.compile(
    r"\b(?:range|percentile|limits?|cut-?offs?|thresholds?|normal|reference|mean|average|expected|typical|"
    r"above|below|under|over|exceed\w*|at least|at most|less than|more than|greater than|beyond|between)\b|[<>≥≤]",)
_LOW = (r"markedly thinned|thinned|thinning|thin|reduced|decreased|lowered|low|narrowed|narrowing|"
        r"below the normal range|below normal limits|below normal|below the 5th percentile|below the 1st percentile")
_HIGH = (r"markedly thickened|thickened|thickening|thick|increased|elevated|raised|high|enlarged|"
         r"above the normal range|above normal limits|above normal|above the 95th percentile|above the 99th percentile")
_NORMAL = (r"within the normal range|inside the normal range|within normal range|within normal limits|"
           r"(?:is|are|was|were|appears?|looks?|remains?) normal|unremarkable")
_TERM_RE = re.compile(rf"\b(?:(?P<normal>{_NORMAL})|(?P<low>{_trie_pattern(_LOW.split('|'))})|"
                      rf"(?P<high>{_trie_pattern(_HIGH.split('|'))}))\b")
_NEG_TERM_BEFORE = re.compile(r"\b(?:not|no|without|nor|rather than)\s+(?:\w+\s+){0,2}$")
_NEG_BEFORE = re.compile(r"\b(?:no|without|neither|nor|absence of|free of|lack of)\s+(?:[\w-]+\s+){0,2}$")
_NEG_AFTER = re.compile(r"^\s*(?:\w+\s+){0,2}?(?:is |are |was |were )?(?:absent|not (?:seen|detected|present|visible|"
                        r"identified|found)|none)\b")
_POS_AFTER = re.compile(r"^\s*(?:\w+\s+){0,2}?(?:is |are |was |were )?(?:present|detected|seen|visible|identified|noted)\b")
_POS_BEFORE = re.compile(r"\b(?:presence of|shows?|there (?:is|are)|evidence of|reveals?|demonstrates?|with)\s+"
                         r"(?:\w+\s+){0,2}$")
_CONCLUDE_RE = re.compile(
    r"\b(?:diagnosis|answer|impression|conclusion)\s*:|\b(?:the )?(?:most likely )?diagnosis is\b|"
    r"\bmost (?:consistent with|likely(?: diagnosis)?(?: is)?(?::)?)|\bin keeping with\b|\bconsistent with a diagnosis of\b|"
    r"\bbest (?:described as|fits)\b|\bthe answer is\b|\bpoints? to\b|\bindicative of\b",)
_RULEOUT_RE = re.compile(
    r"\b(?:unlikely|ruled out|rules? out|excluded|excludes?|not supported|less likely|argues? against|"
    r"no evidence (?:of|for))\b")
_FORBIDDEN_LIST = [(p, why) for p, why in (
    (r"\blabel(?:s|led|ed)?\b", "mentions a label"),
    (r"\bas (?:given|provided|stated|listed|indicated)\b", "refers to given information"),
    (r"\b(?:provided|given|supplied|attached|accompanying) (?:report|data|list|table|labels?|diagnosis|biomarkers?|"
     r"json|values|measurements|sheet|information|findings)\b", "refers to provided material"),
    (r"\bdata ?sheet\b|\bspreadsheet\b", "mentions a data sheet"),
    (r"\bground[- ]truth\b", "mentions ground truth"),
    (r"\bjson\b", "mentions JSON"),
    (r"\bmetadata\b", "mentions metadata"),
    (r"\b(?:the|this|your) (?:record|table|biomarker list|knowledge base)\b", "mentions a record or table"),
    (r"\b(?:i|we) (?:was|were) (?:told|given)\b", "says it was told"),
    (r"\baccording to the (?:table|report|list|data|record)\b", "cites a table or record"),
    (r"\breference (?:answer|diagnosis)\b", "mentions a reference answer"),
)]
#: Every forbidden pattern contains one of these substrings (a cheap test before the regex scan).
_FORBIDDEN_KEYS = ("label", "given", "provided", "stated", "listed", "indicated", "supplied", "attached", "accompanying",
                   "sheet", "truth", "json", "metadata", "record", "table", "biomarker list", "knowledge base", "told",
                   "according", "reference")
_FORBIDDEN_RE = re.compile("|".join(f"(?P<f{i}>{p})" for i, (p, _) in enumerate(_FORBIDDEN_LIST)))
_WRONG_EYE = {
    "OD": re.compile(r"\bleft eye\b|(?<![/\w])OS\b|\bleft (?:retina|fundus|macula)\b"),
    "OS": re.compile(r"\bright eye\b|(?<![/\w])OD\b|\bright (?:retina|fundus|macula)\b"),
}
_RIGHT_EYE = {
    "OD": re.compile(r"\bright eye\b|(?<![/\w])OD\b", re.IGNORECASE),
    "OS": re.compile(r"\bleft eye\b|(?<![/\w])OS\b", re.IGNORECASE),
}
_ANAPHORA = re.compile(r"\b(?:it|this value|which)\b")
_STEP_RE = re.compile(r"(?m)^Step (\d+)\b")
_IMAGE_TOKEN = "<image>"
_DIMENSIONLESS_UNITS = ("count", "ratio", "fraction", "dimensionless")


@dataclass
class VerifyConfig:
    """Verifier settings.

    tolerance:
        Relative tolerance for numbers (0.10 = ±10 %); must lie in (0, 1).
    iou_min:
        Smallest intersection-over-union for a box to count as grounded; in (0, 1].
    max_words:
        Per-task word limits of the assistant turns (defaults: each family's ``max_words``).
    """

    tolerance: float = 0.10
    iou_min: float = 0.5
    max_words: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 < float(self.tolerance) < 1.0:
            raise ValueError(f"tolerance={self.tolerance!r}: give a relative tolerance in (0, 1), e.g. 0.10 for ±10 %")
        if not 0.0 < float(self.iou_min) <= 1.0:
            raise ValueError(f"iou_min={self.iou_min!r}: give an IoU in (0, 1], e.g. 0.5")
        for k, v in self.max_words.items():
            if int(v) < 1:
                raise ValueError(f"max_words[{k!r}]={v!r}: word limits must be positive integers")


@dataclass
class VerifyResult:
    """Outcome for one row: ``passed`` (no hard reason), ``score`` in [0, 1], ``reasons``."""

    passed: bool
    score: float
    reasons: list[str]
    checks: int

    @property
    def hard_reasons(self) -> list[str]:
        return [r for r in self.reasons if r.split(":", 1)[0] in HARD_CODES]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "score": self.score, "reasons": self.reasons, "checks": self.checks}


class _Tally:
    __slots__ = ("checks", "hard", "reasons", "soft")

    def __init__(self) -> None:
        self.checks = 0
        self.hard = 0
        self.soft = 0
        self.reasons: list[str] = []

    def ok(self) -> None:
        self.checks += 1

    def fail(self, code: str, detail: str) -> None:
        self.checks += 1
        msg = f"{code}: {detail}"
        if msg in self.reasons:
            return
        self.reasons.append(msg)
        if code in HARD_CODES:
            self.hard += 1
        else:
            self.soft += 1


def _lower(text: str) -> str:
    """Lower-case ``text`` keeping every offset (the patterns here are written in lower case)."""
    low = text.lower()
    if len(low) == len(text):
        return low
    return "".join(c if len(c.lower()) != 1 else c.lower() for c in text)


def _blank(m: re.Match) -> str:
    return " " * len(m.group(0))


def _decimals(s: str) -> int:
    return len(s.split(".", 1)[1]) if "." in s else 0


class Verifier:
    """Checks rows against :class:`~grok.instruct.records.StudyFacts` of their study.

    Build once (``Verifier(lexicon, config, families)``) and call :meth:`verify` per row.
    """

    def __init__(self, lexicon: Lexicon, config: VerifyConfig | None = None, families: dict | None = None):
        from grok.instruct.families import FAMILIES

        self.lex = lexicon
        self.config = config or VerifyConfig()
        self.families = families or FAMILIES
        self._unit_quantity = {uid: UNIT_BASE[uid] for uid in UNIT_BASE}

    # -- helpers -----------------------------------------------------------------------------------
    def _close(self, written: float, decimals: int, truth: float) -> bool:
        slack = max(self.config.tolerance * abs(truth), 0.5 * 10 ** (-decimals) + 1e-12)
        return abs(written - truth) <= slack

    def _mentions(self, clause: str) -> list[tuple[int, int, tuple[str, ...]]]:
        return [(m.start(), m.end(), self.lex.biomarker_alias[m.group(0).lower()])
                for m in self.lex.biomarker_re.finditer(clause)]

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
    def _check_numbers(self, clause: str, masked: str, mentions, facts, t: _Tally, carried) -> None:
        for m in _NUMBER_RE.finditer(masked):
            unit_raw = m.group("unit")
            unit = (UNIT_ALIASES.get(unit_raw) or UNIT_ALIASES.get(unit_raw.lower())) if unit_raw else None
            nums = [m.group("a")] + ([m.group("b")] if m.group("b") else [])
            subj = self._subject_before(mentions, m.start())
            if subj is None and not mentions and carried is not None:
                subj = carried
            gap_start = subj[1] if subj else 0
            cue = bool(_REF_CUE.search(clause, gap_start, m.start())) or len(nums) == 2
            for k, s in enumerate(nums):
                x = float(s)
                dec = _decimals(s)
                if unit in UNIT_BASE:
                    self._check_unit_number(x, dec, unit, s, subj, cue or k == 1, facts, t)
                elif unit == "percent":
                    self._check_percent(x, dec, s, subj, facts, t)
                else:
                    self._check_bare_number(x, dec, s, m, clause, mentions, subj, cue, facts, t)

    def _candidates(self, ids, quantity: str, facts) -> list[str]:
        return [b for b in ids if UNIT_BASE.get(self.lex.biomarker_units.get(b, ""), ("",))[0] == quantity]

    def _check_unit_number(self, x, dec, unit, s, subj, cue, facts, t: _Tally) -> None:
        quantity, factor = UNIT_BASE[unit]
        written = f"{s} {unit}"
        cands = self._candidates(subj[2], quantity, facts) if subj else []

        def value_matches(bid: str) -> bool:
            b = facts.biomarkers.get(bid)
            if b is None:
                return False
            bf = UNIT_BASE[b.unit][1]
            return self._close(x, dec, b.value * bf / factor)

        def ref_matches(bid: str) -> bool:
            b = facts.biomarkers.get(bid)
            if b is None:
                return False
            bf = UNIT_BASE[b.unit][1]
            return any(self._close(x, dec, r * bf / factor) for r in b.references)

        same_q = [bid for bid, b in facts.biomarkers.items() if UNIT_BASE.get(b.unit, ("",))[0] == quantity]
        if quantity == "length" and not cands:  # lesion sizes and KB size classes, for numbers about no biomarker
            x_um = x * factor
            if any(self._close(x_um, dec, v) for v in facts.lesion_lengths_um):
                return t.ok()
            if cue and any(self._close(x_um, dec, v) for v in facts.kb_lengths_um):
                return t.ok()
        if cands:
            if any(value_matches(b) for b in cands):
                return t.ok()
            if cue and (any(ref_matches(b) for b in cands) or any(ref_matches(b) for b in same_q)):
                return t.ok()
            measured = [facts.biomarkers[b] for b in cands if b in facts.biomarkers]
            if measured:
                return t.fail("wrong_number", f"{written} for {measured[0].name}, which is {measured[0].text}")
            return t.fail("hallucinated_number", f"{written} for {self.lex.biomarker_names[cands[0]]}, which was not "
                                                 "measured")
        if any(value_matches(b) for b in same_q):
            return t.ok()
        if cue and any(ref_matches(b) for b in same_q):
            return t.ok()
        t.fail("hallucinated_number", f"{written} matches no {quantity} biomarker of this study")

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

    def _check_bare_number(self, x, dec, s, m, clause, mentions, subj, cue, facts, t: _Tally) -> None:
        target = None
        after = next(((st, e, ids) for st, e, ids in mentions if 0 <= st - m.end() <= 2), None)
        if after and any(self.lex.biomarker_units.get(b) == "count" for b in after[2]):
            target = after
        elif subj is not None and m.start() - subj[1] <= 40:
            target = subj
        if target is None:
            return
        cands = [b for b in target[2] if self.lex.biomarker_units.get(b) in _DIMENSIONLESS_UNITS]
        if not cands:
            return
        for bid in cands:
            b = facts.biomarkers.get(bid)
            if b is None:
                continue
            if self._close(x, dec, b.value) or (cue and any(self._close(x, dec, r) for r in b.references)):
                return t.ok()
        measured = [facts.biomarkers[b] for b in cands if b in facts.biomarkers]
        if measured:
            return t.fail("wrong_number", f"{s} for {measured[0].name}, which is {measured[0].text}")
        t.fail("hallucinated_number", f"{s} for {self.lex.biomarker_names[cands[0]]}, which was not measured")

    # -- qualitative claims ------------------------------------------------------------------------
    def _check_terms(self, clause: str, mentions, facts, t: _Tally, carried) -> None:
        for m in _TERM_RE.finditer(clause):
            claim = "normal" if m.group("normal") else "low" if m.group("low") else "high"
            subj = next(((s, e, ids) for s, e, ids in mentions if 0 <= s - m.end() <= 2), None)
            if subj is None:
                subj = self._subject_before(mentions, m.start())
            if subj is None:
                subj = next(((s, e, ids) for s, e, ids in mentions if 0 <= s - m.end() <= 30), None)
            if subj is None and not mentions:
                subj = carried
            if subj is None:
                continue
            negated = claim != "normal" and bool(_NEG_TERM_BEFORE.search(clause[max(0, m.start() - 40):m.start()]))
            ids = [b for b in subj[2] if b in facts.biomarkers]
            if not ids:
                continue
            statuses = {facts.biomarkers[b].status for b in ids}
            word = m.group(0)
            name = facts.biomarkers[ids[0]].name
            if statuses == {None}:
                t.fail("unsupported_claim", f"'{word}' about {name}: no normal range or rule decides it")
                continue
            if negated:
                bad = claim in statuses and len(statuses) == 1
                if bad:
                    t.fail("contradiction", f"says {name} is not {word}, but the reasoner finds it {claim}")
                else:
                    t.ok()
                continue
            if claim in statuses:
                t.ok()
            elif None in statuses:
                t.fail("unsupported_claim", f"'{word}' about {name}: no normal range or rule decides it")
            else:
                st = min(s for s in statuses if s)
                t.fail("contradiction", f"says {name} is {word}, but the reasoner finds it {st}")

    def _check_presence(self, clause: str, facts, t: _Tally) -> None:
        for m in self.lex.presence_re.finditer(clause):
            fids = self.lex.presence_alias[m.group(0).lower()]
            before = clause[max(0, m.start() - 40):m.start()]
            after = clause[m.end():m.end() + 40]
            if _NEG_BEFORE.search(before) or _NEG_AFTER.match(after):
                claim = "absent"
            elif _POS_AFTER.match(after) or _POS_BEFORE.search(before):
                claim = "present"
            else:
                continue
            states = [facts.finding_state.get(f) for f in fids]
            entity = m.group(0)
            if claim == "absent":
                if "present" in states:
                    t.fail("contradiction", f"says no {entity}, but the reasoner finds it present")
                elif "absent" in states:
                    t.ok()
                else:
                    t.fail("unsupported_claim", f"says no {entity}, but it was not evaluable")
            else:
                if "present" in states:
                    t.ok()
                elif "absent" in states:
                    t.fail("contradiction", f"says {entity} is present, but the reasoner finds it absent")
                else:
                    t.fail("unsupported_claim", f"says {entity} is present, but it was not evaluable")

    # -- diagnosis -------------------------------------------------------------------------------
    def _first_disease(self, clause: str, start: int, end: int | None = None) -> str | None:
        m = self.lex.disease_re.search(clause, start, end if end is not None else len(clause))
        return self.lex.disease_alias[m.group(0).lower()] if m else None

    def _check_diagnosis(self, clause: str, facts, t: _Tally, stated: list[str]) -> None:
        for m in _CONCLUDE_RE.finditer(clause):
            window_end = min(len(clause), m.end() + 80)
            did = self._first_disease(clause, m.end(), window_end)
            if did is None and re.match(r"\s*normal\b", clause[m.end():]):
                did = "normal"
            if did is None:
                continue
            stated.append(did)
            if did == facts.label:
                t.ok()
            else:
                t.fail("diagnosis_mismatch", f"concludes {self.lex.disease_names.get(did, did)}, but the study's "
                                             f"category is {facts.label_name}")
        if _RULEOUT_RE.search(clause):
            did = self._first_disease(clause, 0)
            if did is None:
                return
            if did == facts.label and not _CONCLUDE_RE.search(clause):
                t.fail("contradiction", f"rules out {facts.label_name}, the study's category")
                return
            status = next((d["status"] for d in facts.differential if d["id"] == did), None)
            if status == "supported" and did != facts.label:
                t.fail("unsupported_claim", f"rules out {self.lex.disease_names.get(did, did)}, which the reasoner supports")
            else:
                t.ok()

    # -- main ----------------------------------------------------------------------------------------
    def verify(self, row: dict[str, Any], facts) -> VerifyResult:
        """Check one instruction row (``task``, ``messages``, ``images``, ``eye``) against its study."""
        t = _Tally()
        task = row.get("task")
        fam = self.families.get(task)
        messages = list(row.get("messages") or [])
        images = list(row.get("images") or [])
        self._check_format(task, fam, messages, images, row, t)
        if facts.eye != row.get("eye", facts.eye):
            t.fail("format", f"row eye {row.get('eye')!r} differs from the study's {facts.eye!r}")
        wrong_eye = _WRONG_EYE[facts.eye]
        stated: list[str] = []
        assistant_texts = []
        for msg in messages:
            content = str(msg.get("content", ""))
            if msg.get("role") == "system":
                continue
            text = strip_boxes(content) if "<|box_start|>" in content else content
            low = _lower(text)
            for hit in (_FORBIDDEN_RE.finditer(low) if any(k in low for k in _FORBIDDEN_KEYS) else ()):
                why = _FORBIDDEN_LIST[int(hit.lastgroup[1:])][1]
                t.fail("forbidden_phrase", f"{why} ({hit.group(0)!r})")
            bad_eye = wrong_eye.search(content)
            if bad_eye:
                t.fail("laterality", f"names {bad_eye.group(0)!r} for the {facts.eye_words} ({facts.eye})")
            if msg.get("role") != "assistant":
                continue
            assistant_texts.append(content)
            self._check_boxes(content, images, row, facts, t)
            text = low
            masked_text = _MASK_RE.sub(_blank, text)
            carried = None
            spans = []
            start = 0
            for sep in [*_CLAUSE_SPLIT.finditer(text), None]:
                end = sep.start() if sep is not None else len(text)
                spans.append((start, end))
                start = sep.end() if sep is not None else end
            starts = [a for a, _ in spans]

            def hits(rx, src=text, starts=starts):  # clause indices with a match of rx (one scan per message)
                return {bisect_right(starts, m.start()) - 1 for m in rx.finditer(src)}

            h_num, h_term = hits(_NUMBER_RE, masked_text), hits(_TERM_RE)
            h_pres, h_dx = hits(self.lex.presence_re), hits(_CONCLUDE_RE) | hits(_RULEOUT_RE)
            h_bm = hits(self.lex.biomarker_re)
            for ci, (a, b) in enumerate(spans):
                clause = text[a:b]
                if not clause:
                    continue
                mentions = self._mentions(clause) if ci in h_bm else []
                if not mentions and carried is not None and not _ANAPHORA.search(clause):
                    carried = None
                if ci in h_num:
                    self._check_numbers(clause, masked_text[a:b], mentions, facts, t, carried)
                if ci in h_term:
                    self._check_terms(clause, mentions, facts, t, carried)
                if ci in h_pres:
                    self._check_presence(clause, facts, t)
                if ci in h_dx:
                    self._check_diagnosis(clause, facts, t, stated)
                if mentions:
                    carried = mentions[-1]
                elif not _ANAPHORA.search(clause):
                    carried = None
        all_text = "\n".join(assistant_texts)
        if fam is not None:
            words = len(strip_boxes(all_text).split())
            limit = int(self.config.max_words.get(task, fam.max_words))
            if words > limit:
                t.fail("length", f"{words} words in the answer(s), more than the {limit} allowed for {task}")
            else:
                t.ok()
            if fam.states_diagnosis and not stated:
                t.fail("format", f"a {task} row must state a diagnosis (e.g. 'Diagnosis: ...')")
            if task == "report" and not _RIGHT_EYE[facts.eye].search(all_text + " " + " ".join(
                    str(m.get("content", "")) for m in messages if m.get("role") == "user")):
                t.fail("format", "a report must name the eye it describes")
        score = 1.0 if t.checks == 0 else max(0.0, (t.checks - t.hard - 0.5 * t.soft) / t.checks)
        return VerifyResult(t.hard == 0, round(score, 4), t.reasons, t.checks)

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
        if task == "report":
            if len(assistant) != 1 or "\n" in assistant[0].strip():
                t.fail("format", "a report is one assistant turn of one paragraph")
            else:
                t.ok()
        elif task == "cot":
            steps = [int(s) for s in _STEP_RE.findall(assistant[-1] if assistant else "")]
            if len(steps) < 3 or steps != list(range(1, len(steps) + 1)):
                t.fail("format", f"a chain of thought needs numbered steps 'Step 1', 'Step 2', ... (found {steps})")
            else:
                t.ok()
        elif task == "multiturn":
            if sum(1 for r in roles if r == "user") < 2:
                t.fail("format", "a multi-turn row needs at least two user turns")
            else:
                t.ok()
        elif task == "localisation":
            if not any(parse_boxes(a)[0] for a in assistant):
                t.fail("format", "a localisation answer needs at least one box")
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
            best = max((iou(b, e) for e in expected if not b.label or e.label == b.label), default=0.0)
            if best >= self.config.iou_min:
                t.ok()
            else:
                t.fail("box", f"box {b.label or ''} ({b.x1:g},{b.y1:g}),({b.x2:g},{b.y2:g}) matches no lesion of the "
                              f"row's images (best IoU {best:.2f})")
