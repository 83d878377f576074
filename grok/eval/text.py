"""Text overlap with the reference answer: ROUGE-L (LCS F-measure) and corpus BLEU.

Run as: python -c "from grok.eval.text import rouge_l; print(rouge_l('a b c d', 'a c d'))"

**ROUGE-L** is the F-measure of the longest common subsequence of word tokens (Lin 2004, the
``rougeL`` of Google's ``rouge-score`` with beta 1): tokens are runs of lower-case letters and
digits, as there. The LCS length is computed bit-parallel (Hyyrö 2004): the reference's token
positions are bits (:class:`RougeRef`, built once per reference, as bytes of 64-bit words), and one pass
over the candidate's tokens costs a few word operations each instead of a table row: in the optional C
extension (``grok.verify._cscan.lcs``), else with Python integers. Checked against the dynamic programme
(tests/test_eval.py) and each path against the other (tests/test_verify_cscan.py).

**BLEU** is sacrebleu's ``BLEU()`` (13a tokenisation, case-sensitive, 4-grams, ``exp`` smoothing,
corpus statistics summed over segments), computed here because sacrebleu's per-segment path
(three regex passes per line, n-gram tuples in Python) cost more than the verifier's reading of the
answer. Scoring numbers the references' n-grams once per benchmark (:class:`BleuTable`) and counts
the n-grams of many answers at once over integer keys (:meth:`BleuTable.stats`); an answer's 13a
tokens come word by word from a cache (:class:`AnswerWords`). :func:`bleu_stats` with a
:class:`BleuRef` does one answer with ``collections.Counter``. Sufficient statistics and scores are
identical to sacrebleu's on the benchmark's texts and on random strings, both ways
(tests/test_eval_text.py, which uses sacrebleu as the reference implementation). Corpus BLEU of many
resamples at once: :func:`bleu_from_stats` on an ``(n, 10)`` array.
"""

from __future__ import annotations

import re
import struct
from array import array
from collections import Counter
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np

from grok.verify.scan import gather as _gather
from grok.verify.scan import index_find as _index_find
from grok.verify.scan import lcs as _lcs

_TOKEN = re.compile(r"[a-z0-9]+")

#: Maximum n-gram order of BLEU.
MAX_ORDER = 4


def tokens(text: str) -> list[str]:
    """Lower-case word tokens (letters and digits; punctuation and markup dropped)."""
    return _TOKEN.findall(text.lower())


# -- ROUGE-L ---------------------------------------------------------------------------------------
class RougeRef:
    """A reference's tokens as bit masks for :func:`lcs_with`: build once, score many candidates.

    Its distinct tokens are ids of a vocabulary (``vocab``: token -> id, shared by the references of a benchmark, so
    the disk cache keeps each token once); ``ids``: those ids, sorted, as int32 bytes; ``bits``: row j holds the
    positions of token ``ids[j]`` as bits (bit i: token i), little-endian bytes of 8 x ceil(n / 64) a row. The
    compiled :func:`lcs_with` reads them as they are; the Python path turns the rows into integers at each call
    (:meth:`ints`; kept, they would grow scoring's memory by a few KB a reference)."""

    __slots__ = ("bits", "ids", "n", "vocab")

    def __init__(self, toks: list[str], vocab: dict[str, int] | None = None):
        vocab = {} if vocab is None else vocab
        ints: dict[int, int] = {}
        for i, tok in enumerate(toks):
            t = vocab.setdefault(tok, len(vocab))
            ints[t] = ints.get(t, 0) | (1 << i)
        size = 8 * ((len(toks) + 63) // 64)
        order = sorted(ints)
        self.vocab, self.n = vocab, len(toks)
        self.ids = array("i", order).tobytes()
        self.bits = b"".join([ints[t].to_bytes(size, "little") for t in order])

    @classmethod
    def from_arrays(cls, vocab: dict[str, int], ids: bytes, bits: bytes, n: int) -> RougeRef:
        """The reference of ``n`` tokens whose :attr:`ids` and :attr:`bits` these are, over ``vocab``."""
        ref = cls.__new__(cls)
        ref.vocab, ref.ids, ref.bits, ref.n = vocab, ids, bits, n
        return ref

    @property
    def full(self) -> int:
        """The n low bits set."""
        return (1 << self.n) - 1

    @property
    def masks(self) -> dict[str, int]:
        """Each distinct token's positions as an integer (bit i: token i), for tests and inspection."""
        word = {i: t for t, i in self.vocab.items()}
        return {word[i]: m for i, m in self.ints().items()}

    def ints(self) -> dict[int, int]:
        """Each distinct token id's row of :attr:`bits` as an integer."""
        size = 8 * ((self.n + 63) // 64)
        ids, bits = array("i"), self.bits
        ids.frombytes(self.ids)
        return {t: int.from_bytes(bits[j * size:(j + 1) * size], "little") for j, t in enumerate(ids)}


def lcs_with(candidate: list[str], ref: RougeRef) -> int:
    """Length of the longest common subsequence of ``candidate`` and the reference (bit-parallel)."""
    if not candidate or not ref.n:
        return 0
    if _lcs is not None:  # compiled (grok.verify._cscan): the same recurrence over 64-bit words
        return _lcs(candidate, ref.vocab, ref.ids, ref.bits, ref.n)
    # Hyyrö's bit-vector recurrence v = ((v + u) | (v - u)) & full, u = v & m, for each candidate token with a
    # mask m (tokens absent from the reference leave v as it is). Carries only move up, so the bits above the
    # reference's n never reach the low n bits: v is masked once at the end instead of at every token; and as
    # u holds only set bits of v, v - u is v ^ u.
    full = v = ref.full
    for m in filter(None, map(ref.ints().get, map(ref.vocab.get, candidate))):  # masks are never 0
        u = v & m
        v = (v + u) | (v ^ u)
    return ref.n - (v & full).bit_count()


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
#: A chunk that is a number, digit runs joined by single periods or commas ("381.7", "553,337"), and at most
#: one period or comma after it: every period and comma inside has a digit on both sides and the chunk has
#: no dash, so of 13a's rules 2-4 only the second applies, to the last mark (followed by white space), which it
#: splits off ("0.50," -> "0.50", ","). Answers' numbers are the chunks most often seen for the first time.
_13A_NUMBER = re.compile(r"([0-9]+(?:[.,][0-9]+)*)([.,]?)")
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


def _chunk_tokens(chunk: str) -> list[str]:
    """:func:`_chunk_13a` of one chunk, numbers without its regular expressions."""
    if _PUNCT_RULES.isdisjoint(chunk):
        return [chunk]
    m = _13A_NUMBER.fullmatch(chunk)
    if m is None:
        return _chunk_13a(chunk)
    num, mark = m.groups()
    return [num, mark] if mark else [num]


def tokens_13a(line: str) -> list[str]:
    """sacrebleu's ``13a`` tokens of one segment (after its ``rstrip``), case kept."""
    line = line.rstrip().replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    out: list[str] = []
    get = _CHUNK_CACHE.get
    for chunk in _13A_CHUNKS.findall(line):
        out += get(chunk) or _chunk_cached(chunk)
    return out


def _chunk_cached(chunk: str) -> list[str]:
    """:func:`_chunk_tokens` of ``chunk``, kept in ``_CHUNK_CACHE`` (cleared when full)."""
    toks = _CHUNK_CACHE.get(chunk)
    if toks is None:
        if len(_CHUNK_CACHE) >= _CHUNK_CACHE_MAX:
            _CHUNK_CACHE.clear()
        toks = _CHUNK_CACHE[chunk] = _chunk_tokens(chunk)
    return toks


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


# -- many answers at once: integer token ids ---------------------------------------------------------
def _segments(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(segment of each token, position of each token in its segment) of segments of ``lengths`` tokens."""
    n = int(lengths.sum())
    seg = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    starts = np.cumsum(lengths) - lengths
    return seg, np.arange(n, dtype=np.int64) - starts[seg]


_HASH_MUL = np.uint64(0x9E3779B97F4A7C15)


class IntIndex:
    """Where each of some distinct non-negative int64 ``values`` is (:meth:`find`), by open addressing:
    a multiplicative hash and linear probing in a table of at least twice as many slots, built and
    searched with whole-array operations (a sorted search of unsorted keys costs several times more)."""

    __slots__ = ("bits", "slots", "values")

    def __init__(self, values: np.ndarray, slots: np.ndarray | None = None):
        self.values = values = np.asarray(values, dtype=np.int64)
        self.bits = bits = max(4, (2 * len(values)).bit_length())
        if slots is not None:
            self.slots = slots
            return
        self.slots = slots = np.full(1 << bits, -1, dtype=np.int32)
        pending = np.arange(len(values), dtype=np.int32)
        h = self._hash(values)
        mask = (1 << bits) - 1
        while len(pending):  # each value takes its slot, or the next one when that is taken (linear probing)
            hp = h[pending]
            free = slots[hp] == -1
            cand, hc = pending[free], hp[free]
            slots[hc] = cand  # of several values wanting one slot, one (the last written) gets it
            lost = slots[hc] != cand
            moved = np.concatenate([pending[~free], cand[lost]])
            h[moved] = (h[moved] + 1) & mask
            pending = moved

    def _hash(self, keys: np.ndarray) -> np.ndarray:
        h = keys.view(np.uint64) * _HASH_MUL
        h >>= np.uint64(64 - self.bits)
        return h.view(np.int64)

    def find(self, keys: np.ndarray) -> np.ndarray:
        """The position of each of ``keys`` (non-negative int64) in ``values``, -1 where it is not one of them."""
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        if not len(self.values) or not len(keys):
            return np.full(len(keys), -1, dtype=np.int64)
        if _index_find is not None:  # compiled (grok.verify._cscan): the same probing, key by key
            out = np.empty(len(keys), dtype=np.int64)
            _index_find(self.slots, self.values, keys, self.bits, out)
            return out
        mask = (1 << self.bits) - 1
        slots, values = self.slots, self.values
        h = self._hash(keys)
        out = slots[h].astype(np.int64)  # -1: an empty slot, the key is not there
        todo = np.flatnonzero((values[out] != keys) & (out >= 0))  # a slot taken by another value
        out[todo] = -1
        h = h[todo]
        while len(todo):  # probe the next slot
            h = (h + 1) & mask
            s = slots[h].astype(np.int64)
            found = (s >= 0) & (values[s] == keys[todo])
            out[todo[found]] = s[found]
            go_on = (s >= 0) & ~found
            todo, h = todo[go_on], h[go_on]
        return out


class BleuTable:
    """The 13a n-grams of every reference answer of a benchmark, numbered, so that the BLEU statistics of
    many answers are a few whole-array operations (:meth:`stats`) instead of four ``Counter`` objects
    an answer. Equal to :func:`bleu_stats` (tests/test_eval_text.py).

    Tokens are ids (``vocab``, 1 up; 0 for a token no reference has). Reference ``row``'s distinct
    k-grams are entries of order k, numbered through their prefix: an entry of order 1 has the key
    ``row x (V + 1) + id(token)``, one of order k the key ``entry(its first k-1 tokens) x (V + 1) +
    id(last token)``, so a key names the reference as well as the n-gram and never overflows.
    ``keys[k]`` (sorted), ``counts[k]`` (how often the n-gram occurs in the reference), ``rows[k]``
    (the reference) per entry; ``index[k]`` finds keys (:class:`IntIndex`)."""

    __slots__ = ("counts", "index", "keys", "lengths", "rows", "vocab")

    def __init__(self, references: list[str | None]):
        vocab: dict[str, int] = {}
        ids: list[int] = []
        lengths = np.zeros(len(references), dtype=np.int64)
        setdefault = vocab.setdefault
        for r, text in enumerate(references):
            if text:
                toks = tokens_13a(text)
                lengths[r] = len(toks)
                ids += [setdefault(t, len(vocab) + 1) for t in toks]
        self.vocab, self.lengths = vocab, lengths
        a = np.asarray(ids, dtype=np.int64)
        seg, pos = _segments(lengths)
        v1 = len(vocab) + 1
        self.keys, self.counts, self.rows, self.index = [], [], [], []
        e = seg  # entry of the n-gram before (order 0: the reference)
        for k in range(1, MAX_ORDER + 1):
            n = len(a) - k + 1
            if n <= 0:
                key = np.zeros(0, dtype=np.int64)
                valid = np.zeros(0, dtype=bool)
            else:
                key = e[:n] * v1 + a[k - 1:]
                valid = pos[:n] <= lengths[seg[:n]] - k
            keys, counts = np.unique(key[valid], return_counts=True)
            rows = keys // v1 if k == 1 else self.rows[-1][keys // v1]
            self.keys.append(keys)
            self.counts.append(counts.astype(np.int32))
            self.rows.append(rows.astype(np.int32))
            self.index.append(IntIndex(keys))
            e = np.where(valid, np.searchsorted(keys, key), -1)

    def ids(self, toks: list[str]) -> list[int]:
        """The token ids of ``toks`` (0 for tokens no reference has)."""
        get = self.vocab.get
        return [get(t, 0) for t in toks]

    def arrays(self) -> tuple[list[str], list[np.ndarray]]:
        """(the vocabulary in id order, the table's arrays): what :meth:`from_arrays` needs."""
        return list(self.vocab), [self.lengths, *self.keys, *self.counts, *self.rows, *(i.slots for i in self.index)]

    def state(self) -> tuple:
        """What :meth:`from_state` needs (plain types and bytes: cheap to ``marshal``)."""
        words, arrays = self.arrays()
        return (words, [(x.dtype.str, x.tobytes()) for x in arrays])

    @classmethod
    def from_state(cls, state) -> BleuTable:
        words, arrays = state
        return cls.from_arrays(words, [np.frombuffer(b, dtype=np.dtype(dt)) for dt, b in arrays])

    @classmethod
    def from_arrays(cls, words: list[str], xs: list[np.ndarray]) -> BleuTable:
        """The table of :meth:`arrays` (kept as given, not copied: arrays over a file's bytes serve as they are)."""
        m = MAX_ORDER
        if len(xs) != 1 + 4 * m:
            raise ValueError(f"BleuTable.from_arrays: {1 + 4 * m} arrays, got {len(xs)}")
        table = cls.__new__(cls)
        table.vocab = {w: i for i, w in enumerate(words, 1)}
        table.lengths = xs[0]
        table.keys, table.counts, table.rows = xs[1:1 + m], xs[1 + m:1 + 2 * m], xs[1 + 2 * m:1 + 3 * m]
        table.index = [IntIndex(k, s) for k, s in zip(table.keys, xs[1 + 3 * m:1 + 4 * m], strict=True)]
        return table

    def counts_of(self, row: int) -> tuple[Counter, ...]:
        """The 1- to 4-gram counts of reference ``row`` as :class:`BleuRef` keeps them (unigrams as tokens,
        longer n-grams as token tuples): for tests and inspection, not used in scoring."""
        words = ["", *self.vocab]
        v1 = len(words)
        out = []
        grams: list[tuple[str, ...]] = []
        for k in range(MAX_ORDER):
            keys = self.keys[k].tolist()
            grams = [(words[c % v1],) if k == 0 else grams[c // v1] + (words[c % v1],) for c in keys]
            sel = np.flatnonzero(self.rows[k] == row).tolist()
            out.append(Counter({(grams[i][0] if k == 0 else grams[i]): int(self.counts[k][i]) for i in sel}))
        return tuple(out)

    def stats(self, rows, ids, lengths) -> np.ndarray:
        """BLEU sufficient statistics (as :func:`bleu_stats`, an ``(m, 10)`` int64 array) of ``m`` answers
        to distinct references: answer j is ``lengths[j]`` token ids (:meth:`ids`) of the flat ``ids``,
        scored against reference ``rows[j]``. Raises ``ValueError`` when a reference repeats."""
        rows = np.asarray(rows, dtype=np.int64)
        lengths = np.asarray(lengths, dtype=np.int64)
        a = np.asarray(ids, dtype=np.int64)
        m = len(rows)
        order = np.argsort(rows)
        if m > 1 and (np.diff(rows[order]) == 0).any():
            raise ValueError("BleuTable.stats: one answer per reference")
        out = np.zeros((m, 10), dtype=np.int64)
        out[:, 0] = lengths
        out[:, 1] = self.lengths[rows]
        for k in range(MAX_ORDER):
            out[:, 6 + k] = np.maximum(0, lengths - k)
        if not len(a):
            return out
        seg, pos = _segments(lengths)
        left = lengths[seg] - pos  # tokens from each one to the end of its answer
        v1 = len(self.vocab) + 1
        known = a > 0
        # order 1: positions of known tokens; then the positions whose n-gram one order shorter was found
        at = np.flatnonzero(known)
        e = rows[seg[at]]  # the entry of order 0: the reference
        for k in range(1, MAX_ORDER + 1):
            if k > 1:
                more = left[at] >= k
                at, e = at[more], e[more]
                more = known[at + (k - 1)]
                at, e = at[more], e[more]
            if not len(at):
                break
            e = self.index[k - 1].find(e * v1 + a[at + (k - 1)])
            found = e >= 0
            at, e = at[found], e[found]
            if not len(e):
                break
            hits = np.sort(e)
            first = np.flatnonzero(np.concatenate(([True], hits[1:] != hits[:-1])))
            entries = hits[first]
            times = np.diff(np.append(first, len(hits)))
            matched = np.minimum(times, self.counts[k - 1][entries])
            slot = order[np.searchsorted(rows, self.rows[k - 1][entries], sorter=order)]
            out[:, 1 + k] = np.bincount(slot, weights=matched, minlength=m).astype(np.int64)
        return out


class BleuRow:
    """One reference of a :class:`BleuTable` (what :class:`BleuRef` is for one reference alone)."""

    __slots__ = ("row", "table")

    def __init__(self, table: BleuTable, row: int):
        self.table, self.row = table, row

    @property
    def length(self) -> int:
        """The reference's 13a tokens."""
        return int(self.table.lengths[self.row])

    @property
    def counts(self) -> tuple[Counter, ...]:
        """Its 1- to 4-gram counts (:meth:`BleuTable.counts_of`)."""
        return self.table.counts_of(self.row)


_FIRST, _SECOND = itemgetter(0), itemgetter(1)
#: A word that is a number with at most one period or comma after it ("381.7", "0.50,", "12."): its 13a tokens
#: are the number and the mark (``_13A_NUMBER``), its ROUGE-L tokens the digit runs.
_PLAIN_NUMBER = re.compile(r"([0-9]+)(?:\.([0-9]+))?([.,]?)")
_PACK_Q, _PACK_2Q = struct.Struct("@q").pack, struct.Struct("@2q").pack  # = array("q", ...).tobytes()
_DIGIT_RUNS = re.compile(r"([0-9]+)")


def _fill(pieces: list[str], runs) -> str:
    """``pieces`` (a token split at its digit runs' places) joined with the next of ``runs``."""
    out = pieces[0]
    for p in pieces[1:]:
        out += next(runs) + p
    return out


class AnswerWords:
    """An answer's tokens for ROUGE-L and BLEU and its words' flags, from one ``str.split`` and a cache of the
    words seen (at most ``max_words``, then cleared): each white-space-separated word's 13a token ids (of
    ``table``, as int64 bytes), its :func:`tokens` and ``flag(word)`` are computed once.

    Equal to :func:`tokens` and :func:`tokens_13a` of the whole answer: neither kind of token crosses
    white space (``str.split`` and the patterns' ``\\s`` are the same white space), lower-casing is per
    character, and 13a's rules look one character either side; an answer 13a would change first
    (``<skipped>``, ``-`` before a line break, ``&`` entities) gets its 13a tokens from :func:`tokens_13a`.

    ``flag`` looks at a word's letters only (as :func:`~grok.eval.data.not_english_word` does: ASCII digits are no
    letters and separate words), so a plain number has no flag and is not asked, and a word with digits takes its
    shape's flag (asked once per shape)."""

    __slots__ = ("cache", "chunks", "flag", "flagged", "max_words", "shapes", "table")

    def __init__(self, table: BleuTable | None, flag=None, max_words: int = 50_000):
        self.table, self.flag, self.max_words = table, flag, max_words
        self.cache: dict[str, tuple[bytes, list[str]]] = {}
        self.flagged: dict[str, Any] = {}
        self.chunks: dict[str, bytes] = {}  # a 13a chunk's token ids
        self.shapes: dict[str, tuple[list, list]] = {}  # a word's tokens with its digit runs left out

    def _ids(self, text: str) -> bytes:
        if self.table is None:
            return b""
        return array("q", self.table.ids(tokens_13a(text))).tobytes()

    def _word_ids(self, w: str) -> bytes:
        """:meth:`_ids` of one word (no white space): its 13a chunks' ids, each chunk's computed once (a word
        seen for the first time, a number or a box, is mostly chunks seen before). Without ``&`` or
        ``<skipped>`` (which 13a replaces first) a word's 13a tokens are its chunks' tokens in order."""
        if self.table is None:
            return b""
        if "&" in w or "<skipped>" in w:
            return self._ids(w)
        parts = _13A_CHUNKS.findall(w)
        chunks = self.chunks
        got = list(map(chunks.get, parts))
        if None in got:
            for c in set(parts).difference(chunks):
                self._chunk(c)
            got = list(map(chunks.__getitem__, parts))
        return b"".join(got)

    def _chunk(self, c: str) -> bytes:
        out = self.chunks[c] = array("q", self.table.ids(_chunk_cached(c))).tobytes()
        return out

    def _shape(self, shape: str) -> tuple[list, list, Any]:
        """The tokens of a word whose ASCII digit runs are each written ``0`` (its shape): 13a token ids where a
        token has no ``0`` and ROUGE-L tokens likewise, the other tokens split at their ``0``s (holes); and the
        shape's flag, which is its words' (see the class docstring)."""
        toks: list[str] = []
        for c in _13A_CHUNKS.findall(shape):
            toks += _chunk_cached(c)
        get = self.table.vocab.get
        bleu: list = []
        fixed: list[int] = []
        for t in toks:
            if "0" in t:
                if fixed:
                    bleu.append(array("q", fixed).tobytes())
                    fixed = []
                bleu.append(t.split("0"))
            else:
                fixed.append(get(t, 0))
        if fixed:
            bleu.append(array("q", fixed).tobytes())
        out = self.shapes[shape] = (bleu, [t.split("0") if "0" in t else t for t in _TOKEN.findall(shape.lower())],
                                    None if self.flag is None else self.flag(shape))
        return out

    def _by_shape(self, parts: list[str]) -> tuple[bytes, list[str], Any]:
        """A word's BLEU ids, ROUGE-L tokens and flag from its shape's (``parts``: the word split around its ASCII
        digit runs, ``_DIGIT_RUNS.split``): each hole takes the next digit run. 13a's rules and chunks treat every
        ASCII digit alike and never split a run of them or look inside it, and lower-casing leaves digits
        alone, so a word's tokens are its shape's with the runs put back in order."""
        shape = "0".join(parts[0::2])
        bleu, rouge, flag = self.shapes.get(shape) or self._shape(shape)
        get = self.table.vocab.get
        runs = iter(parts[1::2])
        ids = b"".join([p if p.__class__ is bytes else _PACK_Q(get(_fill(p, runs), 0)) for p in bleu])
        runs = iter(parts[1::2])
        return ids, [t if t.__class__ is str else _fill(t, runs) for t in rouge], flag

    def _word(self, w: str) -> tuple[bytes, list[str]]:
        m = _PLAIN_NUMBER.fullmatch(w)
        if m is None:
            parts = _DIGIT_RUNS.split(w) if self.table is not None and "&" not in w and "<skipped>" not in w else ()
            if len(parts) > 1:  # a word with digits: a box, "(0.41,", "72-year-old" share their shape
                ids, toks, f = self._by_shape(parts)
                entry = self.cache[w] = (ids, toks)
            else:
                entry = self.cache[w] = (self._word_ids(w), _TOKEN.findall(w.lower()))
                f = None if self.flag is None else self.flag(w)
        else:  # a number, perhaps with a period or comma after it: one chunk (see _13A_NUMBER); no letter, no flag
            f = None
            whole, frac, mark = m.groups()
            get = self.table.vocab.get if self.table is not None else None
            if get is None:
                ids = b""
            elif mark:
                ids = _PACK_2Q(get(w[:-1], 0), get(mark, 0))
            else:
                ids = _PACK_Q(get(w, 0))
            entry = self.cache[w] = (ids, [whole, frac] if frac else [whole])
        if f:
            self.flagged[w] = f
        return entry

    def __call__(self, answer: str) -> tuple[bytes, list[str], list]:
        """(the 13a token ids as int64 bytes, the ROUGE-L tokens, the flags of the answer's flagged words in
        order: ``flag(word)`` where it is truthy)."""
        words = answer.split()
        if len(self.cache) + len(words) > self.max_words:
            self.cache.clear()
            self.flagged.clear()
            self.chunks.clear()
            self.shapes.clear()
        if _gather is not None:  # compiled (grok.verify._cscan): the same joins without the per-word loops
            got = _gather(self.cache, words)
            if got.__class__ is list:  # the words not seen before
                cache = self.cache
                for w in got:
                    if w not in cache:
                        self._word(w)
                got = _gather(cache, words)
            bleu, rouge = got
        else:
            entries = list(map(self.cache.get, words))  # the loops here run in C
            if None in entries:
                entries = [self.cache.get(w) or self._word(w) for w in words]
            bleu = b"".join(map(_FIRST, entries))
            rouge = list(chain.from_iterable(map(_SECOND, entries)))
        if "&" in answer or "<skipped>" in answer or "-\n" in answer:  # the per-word ids do not hold here
            bleu = self._ids(answer)
        flagged = self.flagged
        flags = [] if not flagged or flagged.keys().isdisjoint(words) else list(map(flagged.__getitem__,
                                                                     filter(flagged.__contains__, words)))
        return bleu, rouge, flags
