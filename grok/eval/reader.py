"""Read one free-text answer with the grounding verifier: the diagnosis it states and its claims.

Run as: python -c "from grok.eval.reader import AnswerReader; help(AnswerReader)"

Scoring uses the verifier's own reading of a text (:meth:`grok.verify.verifier.Verifier.read`), so a
benchmark answer and a training row are read by one implementation: the diagnoses it states
(``Diagnosis: X``, "consistent with X", a bare "Normal."), its numbers checked against the
study's biomarkers within the tolerance, its present/absent and thinned/thickened claims checked
against the reasoner, invented lesions and the wrong eye. :class:`AnswerReader` only puts the answer
in a row and turns the verifier's :class:`~grok.verify.verifier.Reading` into marks' inputs; every
verdict is the verifier's. The verifier's reasons (``verify``) are made only when asked
(:meth:`AnswerReader.reasons`: the report's worst answers), as they cost a second pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from grok.verify.verifier import NUMBER_CODES, Verifier, clean_text

__all__ = ["NUMBER_CODES", "AnswerReader", "AnswerReading"]


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
        Empty (the verifier's reasons cost a second pass: :meth:`AnswerReader.reasons`), but the
        ``unreadable`` reason of an answer the checks cannot read.
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
    if len(stated) < 2:  # (a Counter of a few names costs more than the rest of this)
        return stated[0] if stated else None
    counts: dict[str, int] = {}
    for d in stated:
        counts[d] = counts.get(d, 0) + 1
    top = max(counts.values())
    return next(d for d in reversed(stated) if counts[d] == top)


class AnswerReader(Verifier):
    """The verifier, reading benchmark answers (:meth:`read`) and giving its reasons on request (:meth:`reasons`)."""

    @staticmethod
    def _row(question: str, answer: str, facts, images) -> dict:
        # the question turn is kept so the verifier sees the exchange as it was asked
        return {"task": None, "eye": facts.eye, "images": list(images or []),
                "messages": [{"role": "user", "content": question or "?"}, {"role": "assistant", "content": answer}]}

    def read(self, question: str, answer: str, facts, images: list[str] | None = None) -> AnswerReading:
        """Read ``answer`` (one assistant turn) given the ``question`` it answers and the study's facts.

        Claims are read from the answer alone; the question only for the eye it names. ``images``: the
        row's image paths. ``reasons`` is left empty (see :meth:`reasons`), but for an answer the checks
        cannot read (its ``unreadable`` reason)."""
        q = question or "?"
        if clean_text(q) and clean_text(answer):  # the row's turns as Verifier.read takes them from its messages
            r = self.read_turns((("user", q), ("assistant", answer)), facts)
        else:
            r = Verifier.read(self, self._row(question, answer, facts, images), facts)
        facts_bm = facts.biomarkers
        return AnswerReading(
            stated=r.stated, diagnosis=_diagnosis(r.stated), numbers_checked=r.numbers_checked,
            numbers_wrong=r.numbers_wrong, reference_numbers_checked=r.reference_numbers_checked,
            reference_numbers_wrong=r.reference_numbers_wrong,
            biomarkers_named=r.named.intersection(facts_bm),
            findings_agree=r.findings_agree, findings_disagree=r.findings_disagree, invented=r.invented,
            wrong_eye=r.wrong_eye, reasons=[r.unreadable] if r.unreadable else [])

    def reasons(self, question: str, answer: str, facts, images: list[str] | None = None) -> list[str]:
        """The verifier's reasons for ``answer`` (``code: detail``; the row has no task, so the format
        reason that says so is left out)."""
        res = self.verify(self._row(question, answer, facts, images), facts)
        return [r for r in res.reasons if not r.startswith("format: unknown task")]
