"""Verifier.read (what grok eval reads in an answer) against the reading the eval took before it existed:
the verifier run with bookkeeping hooked around its private steps (kept here as the oracle). Both must
agree on every count, diagnosis, biomarker and flag, on references, perturbed numbers, other studies'
answers, the wrong eye and repeated claims; and AnswerReader.reasons is verify's reasons."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

import pytest

from grok.eval.data import benchmark_from_records
from grok.eval.reader import AnswerReader, _diagnosis
from grok.instruct.samples import sample_records
from grok.knowledge import load_knowledge_base
from grok.knowledge.lexicon import build_lexicon
from grok.verify.verifier import HARD_CODES, NUMBER_CODES, Verifier, _LazyCue
from tests.test_eval import perturb_numbers


class HookedReader(Verifier):
    """The eval's reader before ``Verifier.read``: the verifier's verdicts, counted around its steps."""

    def _reset(self):
        self._stated, self._named, self._num, self._find = [], set(), [0, 0, 0, 0], [0, 0]

    def _mentions(self, matches, off):
        out = super()._mentions(matches, off)
        for _s, _e, ids in out:
            self._named.update(ids)
        return out

    @staticmethod
    def _isolated(t, call):
        saved, t.reasons = t.reasons, []
        try:
            call()
        finally:
            new, t.reasons = t.reasons, saved
            for r in new:
                if r in saved:
                    if r.split(":", 1)[0] in HARD_CODES:
                        t.hard -= 1
                    else:
                        t.soft -= 1
                else:
                    saved.append(r)
        return new

    def _check_numbers(self, clause, matches, off, mentions, facts, t, carried):
        sup = super()._check_numbers
        for m in matches:
            c0 = t.checks
            new = self._isolated(t, lambda m=m: sup(clause, (m,), off, mentions, facts, t, carried))
            ms = m[0] - off  # (start, end, whole, a, e, b, unit): grok.verify.scan.numbers
            subj = self._subject_before(mentions, ms)
            if subj is None and not mentions and carried is not None:
                subj = carried
            k = 2 if _LazyCue(clause, subj[1] if subj else 0, ms) else 0
            self._num[k] += t.checks - c0
            self._num[k + 1] += sum(1 for r in new if r.split(":", 1)[0] in NUMBER_CODES)

    def _tally(self, t, checks, new):
        self._find[0] += max(0, checks - len(new))
        self._find[1] += sum(1 for r in new if r.startswith("contradiction:"))

    def _check_terms(self, clause, matches, off, mentions, facts, t, carried, inside=()):
        c0 = t.checks
        new = self._isolated(t, lambda: super(HookedReader, self)._check_terms(
            clause, matches, off, mentions, facts, t, carried, inside))
        self._tally(t, t.checks - c0, new)

    def _check_presence(self, clause, ms, me, entity, fids, facts, t, rc):
        c0 = t.checks
        new = self._isolated(t, lambda: super(HookedReader, self)._check_presence(
            clause, ms, me, entity, fids, facts, t, rc))
        self._tally(t, t.checks - c0, new)

    def _row_claims(self, rc, facts, t):
        self._stated = list(rc.stated)
        super()._row_claims(rc, facts, t)

    def reading(self, question, answer, facts, images):
        self._reset()
        res = self.verify(AnswerReader._row(question, answer, facts, images), facts)
        codes = Counter(r.split(":", 1)[0] for r in res.reasons)
        return {"stated": self._stated, "named": frozenset(b for b in self._named if b in facts.biomarkers),
                "numbers": self._num, "findings": self._find, "invented": codes["invented_finding"],
                "wrong_eye": codes["laterality"] > 0,
                "reasons": [r for r in res.reasons if not r.startswith("format: unknown task")]}


@pytest.fixture(scope="module")
def setup():
    kb = load_knowledge_base()
    lex = build_lexicon(kb)
    return benchmark_from_records(sample_records(60, 3, kb), kb=kb, lexicon=lex), AnswerReader(lex), HookedReader(lex)


def _texts(it, items, rng):
    other_eye = ("left", "Left", "OS") if it.eye == "OD" else ("right", "Right", "OD")
    bm = next(iter(it.facts.biomarkers.values()))
    yield it.reference
    yield perturb_numbers(it.reference)
    yield rng.choice(items).reference
    yield rng.choice(items).reference.upper()
    yield f"{it.reference} The {other_eye[0]} eye is affected ({other_eye[2]})."
    yield f"The {bm.name} is {bm.value * 1.5:.1f} {bm.unit}. The {bm.name} is {bm.value * 1.5:.1f} {bm.unit}."
    yield "No drusen and no drusen. Drusen are present. The central subfield is thickened, thickened. Normal."
    yield "Diagnosis: glaucoma. A macular hole and an epiretinal membrane. Normal range 240 to 316 µm, at least 3."
    yield ""


def test_verifier_read_equals_the_hooked_reading(setup):
    bench, reader, hooked = setup
    rng = random.Random(5)
    items = list(bench.items.values())
    seen = Counter()
    for it in items:
        for text in _texts(it, items, rng):
            new = reader.read(it.question, text, it.facts, it.images)
            old = hooked.reading(it.question, text, it.facts, it.images)
            got = {"stated": new.stated, "named": new.biomarkers_named,
                   "numbers": [new.numbers_checked, new.numbers_wrong, new.reference_numbers_checked,
                               new.reference_numbers_wrong],
                   "findings": [new.findings_agree, new.findings_disagree], "invented": new.invented,
                   "wrong_eye": new.wrong_eye, "reasons": reader.reasons(it.question, text, it.facts, it.images)}
            assert got == old, (it.id, text)
            assert new.reasons == []
            seen.update(k for k, v in (("wrong", new.numbers_wrong), ("ref", new.reference_numbers_checked),
                                       ("disagree", new.findings_disagree), ("invented", new.invented),
                                       ("eye", new.wrong_eye), ("stated", new.stated)) if v)
    # the texts exercised every kind of verdict, so the equality above says something about each
    assert all(seen[k] > 20 for k in ("wrong", "ref", "disagree", "invented", "eye", "stated")), seen


def test_diagnosis_is_the_disease_stated_most_often_the_last_on_a_tie():
    """The answer's diagnosis against the Counter it was computed with before (lists of 0 to 7 statements)."""
    def oracle(stated):
        if not stated:
            return None
        counts = Counter(stated)
        top = max(counts.values())
        return next(d for d in reversed(stated) if counts[d] == top)

    rng = random.Random(3)
    lists = [[rng.choice(["amd", "glaucoma", "normal", "dme"]) for _ in range(rng.randint(0, 7))] for _ in range(3000)]
    assert all(_diagnosis(x) == oracle(x) for x in lists)
    assert _diagnosis(["amd", "glaucoma"]) == "glaucoma" and _diagnosis(["amd", "glaucoma", "amd"]) == "amd"


def test_read_never_raises_and_says_why(setup):
    bench, reader, _hooked = setup
    it = next(i for i in bench.items.values() if i.task == "report")
    broken = dataclasses.replace(it.facts, biomarkers=7)  # the checks cannot read this study's numbers
    r = Verifier.read(reader, AnswerReader._row(it.question, it.reference, broken, it.images), broken)
    assert r.unreadable and r.unreadable.startswith("unreadable:") and r.stated == [] and not r.wrong_eye
    assert reader.verify(AnswerReader._row(it.question, it.reference, broken, it.images), broken).reasons[0] \
        .startswith("unreadable:")
