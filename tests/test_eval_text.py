"""grok eval's text overlap: BLEU statistics and scores identical to sacrebleu's (the reference
implementation) on benchmark texts and random strings; 13a tokens identical to sacrebleu's tokenizer."""

from __future__ import annotations

import random

import numpy as np
import pytest

from grok.eval.data import benchmark_from_records
from grok.eval.text import BleuRef, bleu_from_stats, bleu_stats, tokens_13a
from grok.instruct.samples import sample_records
from grok.knowledge import load_knowledge_base

sacrebleu = pytest.importorskip("sacrebleu")
from sacrebleu.metrics import BLEU  # noqa: E402
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a  # noqa: E402

#: Characters that exercise every 13a rule: digits next to periods, commas and dashes, ASCII punctuation,
#: markup entities, line breaks, other white space and non-ASCII letters.
ALPHABET = "ab1.,-9 0&;:<>'\"/\n\t\x1c()[]{}~`^_|\\@#$%*+=!?éß中µ³ "


def _random_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = ["&amp;", "&quot;", "<skipped>", "-\n", "3.5", "1,000", "2-3", "a..5", "µm", "e.g."]
    return ["".join(rng.choice(ALPHABET) if rng.random() < 0.8 else rng.choice(words)
                    for _ in range(rng.randint(0, 50))) for _ in range(n)]


@pytest.fixture(scope="module")
def texts():
    kb = load_knowledge_base()
    refs = [it.reference for it in benchmark_from_records(sample_records(40, 0, kb), kb=kb).items.values()]
    hyps = refs[:]
    random.Random(0).shuffle(hyps)
    return hyps + _random_texts(2000, 1), refs + _random_texts(2000, 2)


def test_tokens_are_sacrebleus_13a(texts):
    tok = Tokenizer13a()
    for line in texts[0] + texts[1]:
        assert tokens_13a(line) == tok(line.rstrip()).split(), repr(line)


def test_segment_statistics_and_corpus_bleu_are_sacrebleus(texts):
    hyps, refs = texts
    theirs = np.asarray(BLEU()._extract_corpus_statistics(hyps, [refs]), dtype=np.int64)
    ours = np.array([bleu_stats(h, BleuRef(r)) for h, r in zip(hyps, refs)], dtype=np.int64)
    assert np.array_equal(ours, theirs)
    n_bench = 240
    assert float(bleu_from_stats(ours[:n_bench].sum(axis=0))) == pytest.approx(
        BLEU().corpus_score(hyps[:n_bench], [refs[:n_bench]]).score, abs=1e-9)
    # many corpora at once (bootstrap resamples), segments alone, and edge cases (no match, no reference words)
    idx = np.random.default_rng(0).integers(0, len(ours), size=(300, 30))
    sums = np.vstack([ours[idx].sum(axis=1), ours])
    expected = np.array([BLEU.compute_bleu([int(x) for x in r[2:6]], [int(x) for x in r[6:10]], int(r[0]), int(r[1]),
                                           smooth_method="exp").score if r[1] else np.nan for r in sums])
    got = bleu_from_stats(sums)
    assert np.array_equal(np.isnan(got), np.isnan(expected))
    assert np.nanmax(np.abs(got - expected)) < 1e-9
    assert (expected == 0).sum() > 10  # the edge cases were exercised
