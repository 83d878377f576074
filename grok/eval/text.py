"""Text overlap with the reference answer: ROUGE-L (LCS F-measure) and corpus BLEU.

Run as: python -c "from grok.eval.text import rouge_l; print(rouge_l('a b c d', 'a c d'))"

**ROUGE-L** is the F-measure of the longest common subsequence of word tokens (Lin 2004, the
``rougeL`` of Google's ``rouge-score`` with beta 1): tokens are runs of lower-case letters and
digits, as there. The LCS length is computed bit-parallel (Hyyrö 2004): the reference's token
positions are bits of a Python integer (:class:`RougeRef`, built once per reference), and one pass
over the candidate's tokens costs a few integer operations each instead of a table row. Checked
against the dynamic programme (tests/test_eval.py).

**BLEU** is sacrebleu's ``BLEU()`` (13a tokenisation, case-sensitive, 4-grams, ``exp`` smoothing,
corpus statistics summed over segments), computed here because sacrebleu's per-segment path
(three regex passes per line, n-gram tuples in Python) cost more than the verifier's reading of the
answer. The reference's n-gram counts are built once per item (:class:`BleuRef`); per answer, the
13a rules run as one character translation and three regex passes and the n-grams are counted by
``collections.Counter`` over ``zip`` (C loops). Sufficient statistics and scores are identical to
sacrebleu's on the benchmark's texts and on random strings (tests/test_eval_text.py, which uses
sacrebleu as the reference implementation). Corpus BLEU of many resamples at once:
:func:`bleu_from_stats` on an ``(n, 10)`` array.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

_TOKEN = re.compile(r"[a-z0-9]+")

#: Maximum n-gram order of BLEU.
MAX_ORDER = 4


def tokens(text: str) -> list[str]:
    """Lower-case word tokens (letters and digits; punctuation and markup dropped)."""
    return _TOKEN.findall(text.lower())


# -- ROUGE-L ---------------------------------------------------------------------------------------
class RougeRef:
    """A reference's tokens as bit masks for :func:`lcs_with`: build once, score many candidates."""

    __slots__ = ("full", "masks", "n")

    def __init__(self, toks: list[str]):
        masks: dict[str, int] = {}
        for i, tok in enumerate(toks):
            masks[tok] = masks.get(tok, 0) | (1 << i)
        self.masks, self.n, self.full = masks, len(toks), (1 << len(toks)) - 1

    @classmethod
    def from_masks(cls, masks: dict[str, int], n: int) -> RougeRef:
        """The reference of ``n`` tokens whose bit masks are ``masks`` (as :attr:`masks` holds them)."""
        ref = cls.__new__(cls)
        ref.masks, ref.n, ref.full = masks, n, (1 << n) - 1
        return ref


def lcs_with(candidate: list[str], ref: RougeRef) -> int:
    """Length of the longest common subsequence of ``candidate`` and the reference (bit-parallel)."""
    if not candidate or not ref.n:
        return 0
    masks, full = ref.masks, ref.full
    v = full
    for tok in candidate:
        m = masks.get(tok)
        if m is None:
            continue
        u = v & m
        v = ((v + u) | (v - u)) & full
    return ref.n - v.bit_count()


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of token lists ``a`` and ``b``."""
    if len(a) < len(b):
        a, b = b, a
    return lcs_with(a, RougeRef(b))


def rouge_l_with(candidate: list[str], ref: RougeRef) -> float:
    """ROUGE-L F1 of candidate tokens against a prepared reference (0 when either has no tokens)."""
    lcs = lcs_with(candidate, ref)
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(candidate), lcs / ref.n
    return 2 * p * rec / (p + rec)


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 of ``candidate`` against ``reference`` (0 when either has no tokens)."""
    return rouge_l_with(tokens(candidate), RougeRef(tokens(reference)))


# -- BLEU (sacrebleu's definition) -------------------------------------------------------------------
# mteval-v13a's first rule: every ASCII character of these ranges becomes a token of its own (the rule
# also pads spaces, which only adds white space); with the split on white space, one C-level findall
_13A_P = r"\{-\~\[-\`!-\&\(-\+\:-\@\/"
_13A_CHUNKS = re.compile(rf"[{_13A_P}]|[^\s{_13A_P}]+")
_13A_RULES = ((re.compile(r"([^0-9])([\.,])"), r"\1 \2 "), (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),
              (re.compile(r"([0-9])(-)"), r"\1 \2 "))


_PUNCT_RULES = frozenset(".,-")
#: 13a tokens of the white-space-separated chunks seen, reused across answers (bounded).
_CHUNK_CACHE: dict[str, list[str]] = {}
_CHUNK_CACHE_MAX = 50_000


def _chunk_13a(chunk: str) -> list[str]:
    # rules 2-4 of 13a look one character either side, and white space (never removed, never a digit,
    # a period, a comma or a dash) ends every match, so a chunk between spaces is tokenised on its own
    line = f" {chunk} "
    for rx, repl in _13A_RULES:
        line = rx.sub(repl, line)
    return line.split()


def tokens_13a(line: str) -> list[str]:
    """sacrebleu's ``13a`` tokens of one segment (after its ``rstrip``), case kept."""
    line = line.rstrip().replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    out: list[str] = []
    cache = _CHUNK_CACHE
    get = cache.get
    for chunk in _13A_CHUNKS.findall(line):
        toks = get(chunk)
        if toks is None:
            if len(cache) >= _CHUNK_CACHE_MAX:
                cache.clear()
            toks = cache[chunk] = [chunk] if _PUNCT_RULES.isdisjoint(chunk) else _chunk_13a(chunk)
        out += toks
    return out


def _ngram_counts(toks: list[str]) -> tuple[Counter, ...]:
    return (Counter(toks), Counter(zip(toks, toks[1:])), Counter(zip(toks, toks[1:], toks[2:])),
            Counter(zip(toks, toks[1:], toks[2:], toks[3:])))


class BleuRef:
    """A reference's 13a length and 1- to 4-gram counts, for :func:`bleu_stats`: build once per item."""

    __slots__ = ("counts", "length")

    def __init__(self, reference: str):
        toks = tokens_13a(reference)
        self.length = len(toks)
        self.counts = _ngram_counts(toks)

    @classmethod
    def from_counts(cls, length: int, counts) -> BleuRef:
        """The reference of ``length`` tokens with these 1- to 4-gram counts (mappings, as :attr:`counts`)."""
        ref = cls.__new__(cls)
        ref.length, ref.counts = length, tuple(counts)
        return ref


def bleu_stats(hypothesis: str, ref: BleuRef) -> list[int]:
    """BLEU sufficient statistics of one segment, as sacrebleu counts them: hypothesis length, reference
    length, matching 1- to 4-grams (clipped by the reference's counts), hypothesis 1- to 4-grams."""
    toks = tokens_13a(hypothesis)
    n = len(toks)
    correct = []
    for hc, rc in zip(_ngram_counts(toks), ref.counts):
        common = hc.keys() & rc.keys()
        correct.append(sum(map(min, map(hc.__getitem__, common), map(rc.__getitem__, common))))
    return [n, ref.length, *correct, *(max(0, n - k) for k in range(MAX_ORDER))]


def bleu_from_stats(stats) -> np.ndarray:
    """Corpus BLEU (0-100) of summed statistics, one per row of an ``(m, 10)`` array (a ``(10,)`` row gives
    a 0-d array): sacrebleu's ``compute_bleu`` with ``exp`` smoothing (an n-gram order without a match
    counts as 1 / (2^k x its total), k-th such order), vectorised. NaN where the reference has no words."""
    s = np.asarray(stats, dtype=np.float64)
    sys_len, ref_len, correct, total = s[..., 0], s[..., 1], s[..., 2:6], s[..., 6:10]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        bp = np.where(sys_len >= ref_len, 1.0, np.where(sys_len > 0, np.exp(1.0 - ref_len / sys_len), 0.0))
        zero = correct == 0
        halvings = np.cumsum(zero, axis=-1)
        prec = np.where(zero, 100.0 / (2.0 ** halvings * total), 100.0 * correct / total)
        score = bp * np.exp(np.log(prec).mean(axis=-1))
    # no match at all, or an order the hypotheses never reach: sacrebleu's score is 0
    score = np.where(~zero.all(axis=-1) & (total > 0).all(axis=-1), score, 0.0)
    return np.where(ref_len > 0, score, np.nan)
