"""Text overlap with the reference answer: ROUGE-L (LCS F-measure) and corpus BLEU.

Run as: python -c "from grok.eval.text import rouge_l; print(rouge_l('a b c d', 'a c d'))"

ROUGE-L is the F-measure of the longest common subsequence of word tokens (Lin 2004, the
``rougeL`` of Google's ``rouge-score`` with beta 1): tokens are runs of lower-case letters and
digits, as there. The LCS length is computed bit-parallel (Hyyrö 2004): one pass over the
candidate's tokens with the reference's positions as bits of a Python integer, so a 300-word pair
costs a few hundred integer operations instead of 90,000 table cells. ``rouge-score`` (last release
2022, pure-Python table LCS) is not a dependency. BLEU comes from ``sacrebleu`` (maintained,
offline) when it is installed; otherwise it is reported as unavailable with the install command.
"""

from __future__ import annotations

import re

import numpy as np

_TOKEN = re.compile(r"[a-z0-9]+")

#: Install command named when ``sacrebleu`` is missing.
SACREBLEU_INSTALL = "pip install sacrebleu"


def tokens(text: str) -> list[str]:
    """Lower-case word tokens (letters and digits; punctuation and markup dropped)."""
    return _TOKEN.findall(text.lower())


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of token lists ``a`` and ``b`` (bit-parallel)."""
    if not a or not b:
        return 0
    if len(a) < len(b):
        a, b = b, a
    masks: dict[str, int] = {}
    for i, tok in enumerate(b):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << len(b)) - 1
    v = full
    for tok in a:
        m = masks.get(tok)
        if m is None:
            continue
        u = v & m
        v = ((v + u) | (v - u)) & full
    return len(b) - v.bit_count()


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 of ``candidate`` against ``reference`` (0 when either has no tokens)."""
    c, r = tokens(candidate), tokens(reference)
    lcs = lcs_length(c, r)
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(c), lcs / len(r)
    return 2 * p * rec / (p + rec)


def bleu_segment_stats(candidates: list[str], references: list[str]):
    """Per-pair BLEU sufficient statistics, an ``(n, 10)`` int array (candidate length, reference
    length, matching 1- to 4-grams, candidate 1- to 4-grams), as sacrebleu's ``BLEU`` (13a tokenizer)
    counts them; ``None`` without sacrebleu. Summed over any subset they give that subset's corpus
    BLEU (:func:`bleu_from_stats`), so groups and bootstrap resamples cost no re-tokenising."""
    try:
        from sacrebleu.metrics import BLEU
    except ImportError:
        return None
    if not candidates:
        return np.zeros((0, 10), dtype=np.int64)
    stats = BLEU()._extract_corpus_statistics(list(candidates), [list(references)])
    return np.asarray(stats, dtype=np.int64).reshape(len(candidates), 10)


def bleu_from_stats(total) -> float | None:
    """Corpus BLEU (0-100) from summed :func:`bleu_segment_stats` (``None`` for no reference words)."""
    from sacrebleu.metrics import BLEU

    t = [int(x) for x in total]
    if t[1] == 0:
        return None
    return float(BLEU.compute_bleu(t[2:6], t[6:10], t[0], t[1]).score)


def bleu_available() -> bool:
    """Whether ``sacrebleu`` can be imported."""
    try:
        import sacrebleu  # noqa: F401
    except ImportError:
        return False
    return True
