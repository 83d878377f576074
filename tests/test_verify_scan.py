"""The verifier's fast scans against the plain patterns they stand for, on generated and written texts.

The verifier writes its whole-text patterns for speed (``grok.verify.textnorm.word_trie``: words in a
prefix trie whose word-start test sits after each word; the number mask grouped by first letter, with
possessive digit runs) and reads benchmark answers through ``Verifier.read_turns``. Each is checked here
against the straightforward form: the same matches, the same masked text, the same reading.
"""

from __future__ import annotations

import dataclasses
import random
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from grok.eval.data import benchmark_from_records
from grok.eval.reader import AnswerReader
from grok.instruct.samples import sample_records
from grok.knowledge import load_knowledge_base
from grok.knowledge.lexicon import build_lexicon
from grok.verify import scan, textnorm
from grok.verify import verifier as V

#: The mask rule written plainly: a leading word boundary, the alternatives in order (``grok.verify.scan._MASK_RE``).
_MM = r"\s+\d(?:\.\d)?\s*mm\b(?!\s*[³3^])"
MASK_RULE = re.compile(
    rf"\b(?:central|inner|outer|within the|the central){_MM}|\baged?\s+\d+\b|\bstep\s+\d+\b"
    r"|\b(?:grade|stage|type|category)\s+\d+\b|\bp\d+\b|\bz(?:-score|\s+score)?\s*(?:of|is|was|=|:)?\s*[-−]?\d+(?:\.\d+)?"
    r"|\b\d(?:\.\d)?(?:\s*-\s*\d(?:\.\d)?)?\s*mm\s+(?:circle|ring|subfield|zone|area|cube|grid|diameter|radius)\b"
    r"|\b\d+(?:\.\d+)?(?:st|nd|rd|th)\b|\b\d+-year-old\b|\b\d+\s*(?:years?|y)\b(?!\w)"
    r"|\b\d+(?:\.\d+)?\s*(?:times|-?fold|sds?\b|standard deviations?|quadrants?|sectors?|clock hours?|o'clock|"
    r"disc diameters?|dd\b|months?|weeks?|days?|hours?|minutes?|mmhg|mg|ml|dioptres?|diopters?)\b"
    r"|\b\d+/\d+")

PIECES = ["central 3 mm", "the central 1.5 mm", "within the 3 mm", "inner 3mm", "outer 6 mm ³", "aged 67", "age 5",
          "step 2", "grade 3", "stage 4", "type 2", "category 3", "p95", "p", "z-score of -2.1", "z 1.5", "z = 2",
          "3 mm circle", "1-3 mm ring", "1.5 - 3.5 mm zone", "5th", "95th", "2.5th", "80-year-old", "3 years",
          "2 y", "2y", "1.3 times", "2-fold", "2fold", "2 sds", "3 quadrants", "4 clock hours", "1 disc diameter",
          "3 months", "24 mmhg", "-2.5 dioptres", "6/12", "262 µm", "0.42 mm³", "2.62e2", "٣٤", "١٢ years", "x3",
          "a3", "3.", ".5", "10", "1", "mm", "central", "the", "within", "thin", "thinned", "thickening", "normal",
          "is normal", "within normal limits", "below normal", "above the 95th percentile", "unremarkable",
          "low", "below", "raised", "high", "two", "twenty-one", "tension", "often", "height", "drusen",
          "pseudodrusen", "central subfield thickness", "macular hole", "glaucoma", "amd", "dr", "-", " ", ",", ".",
          "(", ")", "\n", "/", "_", "é", "µ", "’", "—"]


def _texts(n: int, seed: int):
    rng = random.Random(seed)
    for _ in range(n):
        parts = [rng.choice(PIECES) for _ in range(rng.randint(1, 25))]
        yield rng.choice([" ", "", " ", "  ", "-"]).join(parts)


@pytest.fixture(scope="module")
def setup():
    kb = load_knowledge_base()
    lex = build_lexicon(kb)
    return benchmark_from_records(sample_records(40, 9, kb), kb=kb, lexicon=lex), AnswerReader(lex)


def test_mask_is_the_plain_rule(setup):
    bench, _reader = setup
    refs = [textnorm.normalise(it.reference.lower()) for it in bench.items.values()]
    for text in [*refs, *_texts(4000, 1)]:
        assert scan.mask(text) == MASK_RULE.sub(lambda m: " " * len(m.group(0)), text), text


def _spans(rx: re.Pattern, text: str):
    return [(m.span(), m.group(0)) for m in rx.finditer(text)]


def test_word_tries_are_the_plain_alternations(setup):
    _bench, reader = setup
    names = sorted({m for m in reader._name_of} | set(reader._bm_of))
    number_words = [w for w in (*textnorm._UNITS, *textnorm._TENS, *textnorm._SCALES) if w != "one"]
    cases = [  # (fast pattern, its plain form: the word-start test first, longer words first)
        (reader._scan.pattern, names, r"(?<![\w-])", r"(?![\w-])"),
        (V._TERM_SCAN.pattern, list(V._TERM_CLASS), r"\b", r"\b"),
        (textnorm._FIRST_WORD.pattern, number_words, r"\b", ""),
        (V._ANAPHORA, ["it", "this value", "which"], r"\b", r"\b"),
    ]
    rng = random.Random(2)
    for fast, words, before, after in cases:
        plain = re.compile(before + "(?:" + "|".join(map(re.escape, sorted(words, key=len, reverse=True))) + ")" + after)
        pool = [*words, *PIECES]
        texts = [*_texts(1500, 3)]
        for _ in range(1500):  # the words themselves, run together, cut, hyphenated, after letters
            parts = [rng.choice(pool) for _ in range(rng.randint(1, 8))]
            parts = [p[: rng.randint(1, len(p))] if p and rng.random() < 0.2 else p for p in parts]
            texts.append(rng.choice([" ", "", "-", "x", " a", ", "]).join(parts))
        for text in texts:
            assert _spans(fast, text) == _spans(plain, text), (fast.pattern[:60], text)


def test_read_turns_is_the_read_of_the_row(setup):
    """``AnswerReader.read`` reads clean text through ``read_turns``; anything else through ``read(row)``."""
    bench, reader = setup
    items = list(bench.items.values())
    rng = random.Random(4)
    for it in items[:120]:
        other = rng.choice(items)
        for question, answer in ((it.question, it.reference), (it.question, other.reference.upper()),
                                 ("", it.reference), (None, "Right eye. " + it.reference), (it.question, ""),
                                 (it.question + " Left eye? OS", other.reference),
                                 (it.question, it.reference + " \ud800 broken"), (it.question, b"CST 262 um"),
                                 ("\udcff question", it.reference)):
            got = reader.read(question, answer, it.facts, it.images)
            row = V.Verifier.read(reader, AnswerReader._row(question, answer, it.facts, it.images), it.facts)
            assert (got.stated, got.biomarkers_named, got.numbers_checked, got.numbers_wrong,
                    got.reference_numbers_checked, got.reference_numbers_wrong, got.findings_agree,
                    got.findings_disagree, got.invented, got.wrong_eye) == (
                row.stated, frozenset(b for b in row.named if b in it.facts.biomarkers), row.numbers_checked,
                row.numbers_wrong, row.reference_numbers_checked, row.reference_numbers_wrong, row.findings_agree,
                row.findings_disagree, row.invented, row.wrong_eye), (question, answer)


#: The verifier before the speed changes of issue 16's round 4 (read mode's reference-cue test made at once,
#: the anaphora pattern written with literal first characters, the reference lookup of a number with a unit
#: made once over the study's table): its readings and verdicts are what the current code must give.
BEFORE = "038d883"


def _committed_verifier(commit: str):
    """``grok/verify/verifier.py`` as of ``commit`` (``git show``), loaded as its own module beside the current one."""
    root = Path(__file__).resolve().parents[1]
    try:
        src = subprocess.run(["git", "show", f"{commit}:grok/verify/verifier.py"], cwd=root, check=True,
                             capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"the verifier of {commit} is not in this checkout's history ({exc})")
    mod = types.ModuleType(f"grok_verify_verifier_{commit}")
    mod.__file__ = V.__file__
    sys.modules[mod.__name__] = mod  # (its dataclasses look their module up)
    exec(compile(src, f"{commit}:grok/verify/verifier.py", "exec"), mod.__dict__)  # noqa: S102 - the repository's own code
    return mod


def _moved_numbers(text: str, rng: random.Random) -> str:
    """``text`` with its numbers moved by up to ±40 % (decimals kept): wrong values, right ones, reference values."""
    def one(m: re.Match) -> str:
        dec = len(m.group(2) or "")
        return f"{float(m.group(0)) * rng.uniform(0.6, 1.4):.{dec}f}"

    return re.sub(r"(?<![\w.])(\d+)(?:\.(\d+))?(?!\w)", one, text)


def test_reading_and_verdicts_are_those_of_the_verifier_before(setup):
    """``read_turns`` and ``verify`` (with its claims) give what the verifier of ``BEFORE`` gave, on the references,
    their numbers moved, other studies' answers and generated texts with reference cues, units and ranges."""
    bench, reader = setup
    old = _committed_verifier(BEFORE).Verifier(reader.lex)
    new = V.Verifier(reader.lex)
    items = list(bench.items.values())
    rng = random.Random(6)
    texts = [it.reference for it in items]
    texts += [_moved_numbers(t, rng) for t in texts]
    texts += [" ".join(_texts(1, k)) + " CST 262 µm, above the 95th percentile of 310 µm; it is thick."
              for k in range(300)]
    texts += list(_texts(600, 7))
    for k, text in enumerate(texts):
        it = items[k % len(items)] if k < 2 * len(items) else rng.choice(items)
        turns = (("user", it.question or "?"), ("assistant", text))
        assert dataclasses.astuple(new.read_turns(turns, it.facts)) == dataclasses.astuple(
            old.read_turns(turns, it.facts)), text
        row = {"task": it.task, "eye": it.facts.eye, "images": list(it.images or []),
               "messages": [{"role": "user", "content": it.question or "?"}, {"role": "assistant", "content": text}]}
        a, b = new.verify(row, it.facts, claims=True), old.verify(row, it.facts, claims=True)
        assert (a.passed, a.score, a.reasons, a.checks, a.claims) == (b.passed, b.score, b.reasons, b.checks,
                                                                       b.claims), text
