"""grok eval's text overlap: BLEU statistics and scores identical to sacrebleu's (the reference
implementation) on benchmark texts and random strings; 13a tokens identical to sacrebleu's tokenizer."""

from __future__ import annotations

import random

import numpy as np
import pytest

from grok.eval.data import benchmark_from_records
from grok.eval.text import AnswerWords, BleuRef, BleuTable, bleu_from_stats, bleu_stats, tokens_13a
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


def test_number_chunks_are_tokenised_as_13a_rules_do():
    """Chunks shaped like numbers take a path without 13a's regular expressions: the same tokens as the
    rules (``_chunk_13a``) and sacrebleu on numbers, numbers with a mark after them, and near misses (marks
    doubled or first, dashes, letters, other scripts' digits, superscripts)."""
    from grok.eval import text as text_mod

    rng = random.Random(7)
    digits = "0123456789"
    chunks = ["1.", "1,", "1.5", "0.50,", "0.83.", "553,337", "1.2.3,", "1..2", ".5", "5.,", ",5", "1,,2", "3-4",
              "3.5-", "-3.5", "a3.5,", "3.5a,", "3.5µm", "١٢٣.٤", "١٢٣,", "²3.", "3²,", "12.", "1.2e5", "0x1."]
    for _ in range(3000):
        parts = ["".join(rng.choice(digits) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
        body = "".join(p + (rng.choice(".,") if i < len(parts) - 1 else "") for i, p in enumerate(parts))
        chunks.append(body + rng.choice(["", "", ".", ",", ".,", "-", "a", "'"]))
        chunks.append("".join(rng.choice("12.,-a٣") for _ in range(rng.randint(1, 6))))
    tok = Tokenizer13a()
    for c in chunks:
        assert text_mod._chunk_tokens(c) == text_mod._chunk_13a(c), repr(c)
    text_mod._CHUNK_CACHE.clear()  # tokens_13a takes the new path for chunks it has not seen
    for c in chunks:
        assert tokens_13a(c) == tok(c.rstrip()).split(), repr(c)
        assert tokens_13a(f"CST {c} µm") == tok(f"CST {c} µm").split(), repr(c)


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


def test_bleu_table_statistics_are_sacrebleus(texts):
    """Many answers at once (BleuTable.stats, in batches and in any order) give sacrebleu's statistics, and
    the table kept on disk (its state) gives the same; references without words included."""
    hyps, refs = texts
    refs = [None if i % 97 == 5 else r for i, r in enumerate(refs)]
    theirs = np.asarray(BLEU()._extract_corpus_statistics(hyps, [[r or "" for r in refs]]), dtype=np.int64)
    table = BleuTable(refs)
    words = AnswerWords(table)
    order = np.random.default_rng(0).permutation(len(hyps))
    for tab in (table, BleuTable.from_state(table.state())):
        got = np.zeros_like(theirs)
        for batch in np.array_split(order, 7):
            ids = [words(hyps[j])[0] for j in batch]
            got[batch] = tab.stats(batch, np.frombuffer(b"".join(ids), dtype=np.int64), [len(b) // 8 for b in ids])
        assert np.array_equal(got, theirs)
    for row in (0, 1, 5, len(refs) - 1):
        assert [dict(c) for c in table.counts_of(row)] == [dict(c) for c in BleuRef(refs[row] or "").counts]
    with pytest.raises(ValueError, match="one answer per reference"):
        table.stats([1, 1], [], [0, 0])


def test_answer_words_are_the_whole_answers_tokens_and_language_check(texts):
    """Word by word (cached) the answer's ROUGE-L tokens, 13a tokens and language check are those of the whole
    answer, on benchmark texts, random strings and answers in other languages."""
    from grok.eval.data import likely_not_english, likely_not_english_words, not_english_word
    from grok.eval.text import tokens

    others = ["Der Sehnerv zeigt eine vergrößerte Exkavation und wir vermuten ein Glaukom.", "视神经乳头凹陷扩大，考虑青光眼。",
              "La papille montre une excavation et il est probable que le glaucome", "OS la y os", "µm³ ΣΑΣ σ İi K"]
    rng = random.Random(11)  # words that are numbers (a fast path): with marks after them, in the references' vocabulary
    numbers = [" ".join(rng.choice(["0.50,", "12.", "381.7", "007", "1.", "3.5", "(0.41,", "265.5", "1,000", "2.0.",
                                    "١٢٣.٤", f"{rng.uniform(0, 500):.{rng.randint(0, 3)}f}{rng.choice(['', '.', ','])}"])
                         for _ in range(rng.randint(1, 12))) for _ in range(300)]
    digit_words = ["72-year-old", "(0.41,", "10²", "a1b22c", "1-2-3", "3.5-", "-3", "x0y", "0", "00,", "١2.5", "2nd", "5th",
                   "µm3", "6/12", "1..2", "1.2.3", "(1)", "[12]", "1e5", "v2.0-beta", "0.5-1.0", "12,", "-0.5,", "A1c.",
                   "der3und", "3die", "mm³2", "ЭТО7", "la1.5", "Der2"]  # a flag is its letters': the shape's
    boxes = [" ".join(f"<|object_ref_start|>{rng.choice(['drusen', 'optic disc', 'haemorrhage'])}<|object_ref_end|>"
                      f"<|box_start|>({rng.randint(0, 999)},{rng.randint(0, 999)}),({rng.randint(0, 999)},"
                      f"{rng.randint(0, 999)})<|box_end|>" for _ in range(rng.randint(1, 4))) for _ in range(100)]
    shaped = [" ".join(rng.choice(digit_words) for _ in range(rng.randint(1, 8))) for _ in range(200)]
    lines = texts[0] + texts[1] + others + numbers + boxes + shaped
    table = BleuTable(texts[1] + numbers[:50] + boxes[:20] + shaped[:50])
    words = AnswerWords(table, not_english_word, max_words=500)  # small: the cache is cleared on the way
    for line in lines + lines[:50]:
        ids, rouge, flags = words(line)
        assert rouge == tokens(line), repr(line)
        assert np.frombuffer(ids, dtype=np.int64).tolist() == table.ids(tokens_13a(line)), repr(line)
        assert likely_not_english_words(line, flags) == likely_not_english(line), repr(line)
        assert flags == [f for w in line.split() if (f := not_english_word(w))], repr(line)
    assert sum(likely_not_english(x) for x in others) >= 2


def test_int_index_finds_every_value_and_nothing_else():
    from grok.eval.text import IntIndex

    rng = np.random.default_rng(1)
    values = np.unique(rng.integers(0, 1 << 40, 5000))
    index = IntIndex(values)
    keys = np.concatenate([values, rng.integers(0, 1 << 40, 5000), values[:100] + 1])
    expected = np.array([int(np.searchsorted(values, k)) if k in set(values.tolist()) else -1 for k in keys.tolist()])
    assert np.array_equal(index.find(keys), expected)
    assert np.array_equal(IntIndex(values, index.slots).find(keys), expected)
    assert IntIndex(np.zeros(0, dtype=np.int64)).find(keys[:3]).tolist() == [-1, -1, -1]


def test_int_index_compiled_and_whole_array_probing_agree(monkeypatch):
    """``IntIndex.find`` in C (``grok.verify._cscan.index_find``) and with whole-array probing: the same positions, on
    keys that collide a lot (small and structured values, long probe runs) and on keys far apart."""
    from grok.eval import text as T

    if T._index_find is None:
        pytest.skip("grok.verify._cscan is not built (or GROK_NO_CEXT=1)")
    rng = np.random.default_rng(4)
    cases = []
    for n in (1, 7, 300, 4000):
        cases.append(np.unique(rng.integers(0, 1 << 40, n)))
        cases.append(np.arange(n, dtype=np.int64) * 1024)  # one stride: many equal hashes' neighbours
        cases.append(np.unique(rng.integers(0, 3 * n, n)))
    indexes = [T.IntIndex(v) for v in cases]
    keys = [np.concatenate([v, v + 1, rng.integers(0, 1 << 41, 2000), v[::-1]]) for v in cases]
    fast = [ix.find(k) for ix, k in zip(indexes, keys, strict=True)]
    monkeypatch.setattr(T, "_index_find", None)
    slow = [ix.find(k) for ix, k in zip(indexes, keys, strict=True)]
    for f, s, v, k in zip(fast, slow, cases, keys, strict=True):
        assert np.array_equal(f, s)
        assert np.array_equal(v[f[f >= 0]], k[f >= 0]) and (f >= 0).sum() >= 2 * len(v)
