"""Read one free-text answer with the grounding verifier: the diagnosis it states and its claims.

Run as: python -c "from grok.eval.reader import AnswerReader; help(AnswerReader)"

Scoring uses the verifier's own reading of a text (:class:`grok.verify.verifier.Verifier`), so a
benchmark answer and a training row are read by one implementation: the diagnoses it states
(``Diagnosis: X``, "consistent with X", a bare "Normal."), its numbers checked against the
study's biomarkers within the tolerance, its present/absent and thinned/thickened claims checked
against the reasoner, invented lesions and the wrong eye. :class:`AnswerReader` adds only
bookkeeping around four of the verifier's steps (the claims it collected, the biomarkers it saw
named, how many number and finding checks passed and failed); every verdict is the verifier's.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from grok.verify.verifier import HARD_CODES, Verifier, VerifyConfig, _LazyCue

#: Verifier reason codes that mark a number as wrong (not within the tolerance of its biomarker).
NUMBER_CODES = frozenset({"wrong_number", "hallucinated_number", "wrong_unit"})


@dataclass
class AnswerReading:
    """What one answer says, as the verifier read it.

    stated:
        Diseases (category ids, ``normal`` included) the answer puts forward, in order.
    diagnosis:
        The answer's diagnosis: the disease it states most often (the last one on a tie), or
        ``None`` when it states none (an abstention).
    numbers_checked / numbers_wrong:
        Measured values the verifier checked (numbers tied to a biomarker of the study), and how many
        of them are not within the tolerance (``wrong_number``, ``hallucinated_number``, ``wrong_unit``).
    reference_numbers_checked / reference_numbers_wrong:
        The same for numbers after a reference cue ("normal range 240 to 316 µm", "at least
        0.03 mm³"), which may match any knowledge-base reference value; kept apart from the
        quantitative mark.
    biomarkers_named:
        Biomarker ids of the study named in the answer.
    findings_agree / findings_disagree:
        Qualitative claims (present/absent, thinned/thickened/within normal limits) that agree
        with the reasoner, and those it contradicts.
    invented:
        Lesions claimed present that no measurement of the study shows (``invented_finding``).
    wrong_eye:
        The other eye is named (``laterality``).
    reasons:
        The verifier's reasons, ``code: detail``.
    """

    stated: list[str]
    diagnosis: str | None
    numbers_checked: int
    numbers_wrong: int
    reference_numbers_checked: int
    reference_numbers_wrong: int
    biomarkers_named: frozenset[str]
    findings_agree: int
    findings_disagree: int
    invented: int
    wrong_eye: bool
    reasons: list[str] = field(default_factory=list)


def _diagnosis(stated: list[str]) -> str | None:
    if not stated:
        return None
    counts = Counter(stated)
    top = max(counts.values())
    return next(d for d in reversed(stated) if counts[d] == top)


class AnswerReader(Verifier):
    """The verifier, keeping what it read. Not thread-safe (one reader per thread)."""

    def __init__(self, lexicon, config: VerifyConfig | None = None, families: dict | None = None):
        super().__init__(lexicon, config, families)
        self._reset()

    def _reset(self) -> None:
        self._stated: list[str] = []
        self._named: set[str] = set()
        self._num = [0, 0, 0, 0]  # measured: checked, wrong; reference values: checked, wrong
        self._find = [0, 0]  # agree, disagree

    # -- bookkeeping around the verifier's own steps ---------------------------------------------
    def _mentions(self, matches, off: int):
        out = super()._mentions(matches, off)
        for _s, _e, ids in out:
            self._named.update(ids)
        return out

    @staticmethod
    def _isolated(t, call) -> list[str]:
        """Run ``call()`` with the tally's reason list emptied and return the reasons it added, repeats
        included (the tally keeps a repeated reason once, so a number written wrong twice with the same
        text would otherwise look right the second time). The tally ends as the verifier leaves it."""
        saved = t.reasons
        t.reasons = []
        try:
            call()
        finally:
            new, t.reasons = t.reasons, saved
            for r in new:
                if r in saved:  # the verifier would not have counted it again
                    if r.split(":", 1)[0] in HARD_CODES:
                        t.hard -= 1
                    else:
                        t.soft -= 1
                else:
                    saved.append(r)
        return new

    def _check_numbers(self, clause, matches, off, mentions, facts, t, carried) -> None:
        # one match at a time, so each number's verdict is known; a number after a reference cue
        # ("normal range 240 to 316 µm", "at least 0.03 mm³") is a reference value, not a measurement
        sup = super()._check_numbers
        for m in matches:
            c0 = t.checks
            new = self._isolated(t, lambda m=m: sup(clause, (m,), off, mentions, facts, t, carried))
            wrong = sum(1 for r in new if r.split(":", 1)[0] in NUMBER_CODES)
            ms = m.start() - off
            subj = self._subject_before(mentions, ms)
            if subj is None and not mentions and carried is not None:
                subj = carried
            k = 2 if _LazyCue(clause, subj[1] if subj else 0, ms) else 0
            self._num[k] += t.checks - c0
            self._num[k + 1] += wrong

    def _tally_findings(self, t, checks: int, new: list[str]) -> None:
        self._find[0] += max(0, checks - len(new))
        self._find[1] += sum(1 for r in new if r.startswith("contradiction:"))

    def _check_terms(self, clause, matches, off, mentions, facts, t, carried, inside=()) -> None:
        c0 = t.checks
        new = self._isolated(t, lambda: super(AnswerReader, self)._check_terms(
            clause, matches, off, mentions, facts, t, carried, inside))
        self._tally_findings(t, t.checks - c0, new)

    def _check_presence(self, clause, ms, me, entity, fids, facts, t, rc) -> None:
        c0 = t.checks
        new = self._isolated(t, lambda: super(AnswerReader, self)._check_presence(
            clause, ms, me, entity, fids, facts, t, rc))
        self._tally_findings(t, t.checks - c0, new)

    def _row_claims(self, rc, facts, t) -> None:
        self._stated = list(rc.stated)
        super()._row_claims(rc, facts, t)

    # -- public ------------------------------------------------------------------------------------
    def read(self, question: str, answer: str, facts, images: list[str] | None = None) -> AnswerReading:
        """Read ``answer`` (one assistant turn) given the ``question`` it answers and the study's facts.

        The question turn is kept only so the verifier sees the exchange as it was asked; claims are
        read from the answer alone. ``images``: the row's image paths (boxes are matched on them).
        """
        self._reset()
        row = {"task": None, "eye": facts.eye, "images": list(images or []),
               "messages": [{"role": "user", "content": question or "?"}, {"role": "assistant", "content": answer}]}
        res = self.verify(row, facts)
        facts_bm = facts.biomarkers
        codes = [r.split(":", 1)[0] for r in res.reasons]
        return AnswerReading(
            stated=self._stated, diagnosis=_diagnosis(self._stated), numbers_checked=self._num[0],
            numbers_wrong=self._num[1], reference_numbers_checked=self._num[2],
            reference_numbers_wrong=self._num[3], biomarkers_named=frozenset(b for b in self._named if b in facts_bm),
            findings_agree=self._find[0], findings_disagree=self._find[1],
            invented=codes.count("invented_finding"), wrong_eye="laterality" in codes,
            reasons=[r for r in res.reasons if not r.startswith("format: unknown task")])
