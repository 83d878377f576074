"""The verifier's whole-text word scans and clause split: compiled when ``grok.verify._cscan`` is built, else ``re``.

Run as: python -c "from grok.verify.scan import COMPILED; print(COMPILED)"

``WordScanner(words, hyphen=..., end=...)`` finds the words of a list in a text as ``re.finditer`` of
:func:`word_trie`'s pattern (plus an end test) finds them: ``[(start, end, word), ...]``, leftmost first, the
longest word at a position whose end passes the test, the next search from the match's end. A word starts only
where the character before it is not ``\\w`` (``hyphen``: nor ``-``). ``clause_spans(text)`` gives the clauses
of the verifier's split (white space after ``. ; ! ?`` and runs of line breaks are separators). ``mask(text)``
blanks the number spans that are no measurement (``_MASK_RE``) and ``numbers(text)`` gives each number of
``_NUMBER_RE`` as ``(start, end, whole, a, e, b, unit)``; the two regexes are defined here, and the compiled
scanner tries their alternatives, and every way they can backtrack, in the regexes' order.

The compiled scanner (``grok/verify/_cscan.c``, built by ``setup.py`` at install time) walks the same trie as
a transition table built here from the words, with Python's own character classes (``\\w``:
``str.isalnum()`` or ``_``; ``\\s``: ``str.isspace()``), so both paths give identical results
(``tests/test_verify_cscan.py`` compares them). Without a C compiler the package installs without it and the
``re`` path runs; ``GROK_NO_CEXT=1`` forces that path.
"""

from __future__ import annotations

import os
import re
from bisect import bisect_right

from grok.knowledge.lexicon import _WB, UNIT_ALIASES, prefix_tree

if os.environ.get("GROK_NO_CEXT", "") not in ("", "0"):
    _cscan = None
else:
    try:
        from grok.verify import _cscan
    except ImportError:  # not built (no compiler at install time): the re path
        _cscan = None

#: Whether the compiled scanner is in use.
COMPILED = _cscan is not None

#: End tests after a word: none, ``\b``, ``(?![\w-])``.
END_TESTS = {"": 0, r"\b": 1, r"(?![\w-])": 2}


def word_trie(words, not_before: str = r"\w") -> str:
    """An alternation of ``words`` factored by common prefixes (a word that continues is tried before the
    shorter word ending there, as ``grok.knowledge.lexicon._trie_pattern``) that matches a word only where
    the character before it is not ``not_before`` (``\\w``: a leading ``\\b``). That test is a look-behind at
    the end of each word (``(?<!\\w.{n})`` after its n characters, the character before the word), so the
    regex engine runs it only where a whole word matched; at a position inside another word the trie fails
    on a literal character first. Same matches as the test written before the word, cheaper."""
    trie = prefix_tree(words)

    def build(node: dict, depth: int) -> str:
        branches = [re.escape(ch) + build(child, depth + 1) for ch, child in sorted(node.items()) if ch != ""]
        if "" in node:
            branches.append(f"(?<!{not_before}.{{{depth}}})")
        return branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"

    return build(trie, 0)


class WordScanner:
    """The words of ``words`` in a text (see the module docstring); :attr:`pattern` is the equivalent regex."""

    __slots__ = ("_compiled", "_flags", "_pattern", "_source")

    def __init__(self, words, *, hyphen: bool = False, end: str = ""):
        words = tuple(sorted(set(words)))
        if not words or any(not w or "\n" in w for w in words):
            raise ValueError("WordScanner: words must be non-empty and hold no line break")
        self._source = (words, r"[\w-]" if hyphen else r"\w", end)
        self._pattern = None
        self._flags = int(hyphen) | END_TESTS[end] << 1
        self._compiled = _cscan.compile(words) if _cscan is not None else None
        if self._compiled is None:
            self.pattern  # noqa: B018 - the re path compiles its regex now, as the verifier always did

    @property
    def pattern(self) -> re.Pattern:
        """The regex these words stand for (compiled on first use where the compiled scanner runs)."""
        if self._pattern is None:
            words, not_before, end = self._source
            self._pattern = re.compile(word_trie(words, not_before) + end)
        return self._pattern

    def findall(self, text: str) -> list[tuple[int, int, str]]:
        """``[(start, end, word), ...]`` of the words in ``text``."""
        if self._compiled is not None:
            return _cscan.words(self._compiled, text, self._flags)
        return [(m.start(), m.end(), m.group(0)) for m in self._pattern.finditer(text)]

    def search(self, text: str) -> bool:
        """Whether a word of the list occurs in ``text``."""
        if self._compiled is not None:
            return _cscan.words(self._compiled, text, self._flags | 8)
        return self._pattern.search(text) is not None


#: Clause separators: white space after . ; ! ? (group 1-4) and runs of line breaks (the whole
#: match); the same spans as ``(?<=[.;!?])\s+|\n+``, see :func:`clause_spans`.
_CLAUSE_SPLIT = re.compile(r"\.(\s+)|;(\s+)|!(\s+)|\?(\s+)|\n\n*")


def _clause_spans_re(text: str) -> list[tuple[int, int]]:
    spans = []
    start = 0
    for sep in _CLAUSE_SPLIT.finditer(text):
        g = sep.lastindex
        a, b = sep.span(g) if g else sep.span()
        spans.append((start, a))
        start = b
    spans.append((start, len(text)))
    return spans


#: ``[(start, end), ...]`` of the clauses of a text (separators excluded; clauses may be empty).
clause_spans = _cscan.clauses if _cscan is not None else _clause_spans_re


#: The units of ``_NUMBER_RE``'s alternation, in its order (longest first).
_UNITS = tuple(sorted(UNIT_ALIASES, key=len, reverse=True))
_UNIT_ALT = "|".join(re.escape(u) for u in _UNITS)
_NUM = r"\d+(?:\.\d+)?"
#: A number (or range) with an optional unit. The pattern starts with a digit so that the regex
#: engine skips straight from digit to digit; the look-behind after the first digit is the check
#: "not preceded by a word character or a dot" (the same as a leading ``(?<![\w.])``).
#: Group ``e``: a power of ten in scientific notation ("2.62e2", "2.62 × 10^2", "2.62×10²").
_NUMBER_PATTERN = (
    rf"(?P<a>\d(?<![\w.]\d)\d*(?:\.\d+)?)(?P<e>e[+-]?\d+|\s*[×x]\s*10(?:\^\s*[+\-−]?\d+|[⁻⁺]?[⁰¹²³⁴⁵⁶⁷⁸⁹]+))?"
    rf"(?:\s*(?:–|—|-|to|and)\s*(?P<b>{_NUM}))?(?:\s*(?P<unit>{_UNIT_ALT}))?"
    r"(?![\w³²])")
#: Spans that contain numbers but are not measurements: region names, ordinals, ages, step numbers,
#: multiples and deviations ("1.3 times", "2-fold", "2 SD", "z-score of 2.1"), counts of places rather
#: than lesions ("2 quadrants", "3 clock hours", "1 disc diameter"), intervals ("in 3 months"), other
#: quantities ("IOP 24 mmHg", "-2.5 dioptres") and fractions (visual acuity "6/12"). The rule is the
#: alternation (leftmost match, then the next from its end; ``tests/test_verify_scan.py`` holds it)
#: ``\b(?:central|inner|outer|within the|the central)\s+\d(?:\.\d)?\s*mm\b(?!\s*[³3^]) | \baged?\s+\d+\b
#: | \bstep\s+\d+\b | \b(?:grade|stage|type|category)\s+\d+\b | \bp\d+\b | \bz(?:-score|\s+score)?\s*(?:of|is|
#: was|=|:)?\s*[-−]?\d+(?:\.\d+)? | \b\d(?:\.\d)?(?:\s*-\s*\d(?:\.\d)?)?\s*mm\s+(?:circle|ring|...)\b
#: | \b\d+(?:\.\d+)?(?:st|nd|rd|th)\b | ...``, written as one pattern whose
#: alternatives start with a literal letter or a digit, those of one first letter grouped behind it (a
#: position starts at most one group, so one scan finds the same matches as the alternation in its
#: written order), and the word-start test after the literal word (see :func:`word_trie`).
_MM = r"\s+\d(?:\.\d)?\s*mm\b(?!\s*[³3^])"
_AGE, _SPACE_INT, _INT = r"d?\s+\d+\b", r"\s+\d+\b", r"\d+\b"
_Z = r"(?:-score|\s+score)?\s*(?:of|is|was|=|:)?\s*[-−]?\d+(?:\.\d+)?"
_MASK_WORDS = (  # (literal word, what follows it): in the rule's order
    ("central", _MM), ("inner", _MM), ("outer", _MM), ("within the", _MM), ("the central", _MM),
    ("age", _AGE), ("step", _SPACE_INT), ("grade", _SPACE_INT), ("stage", _SPACE_INT),
    ("type", _SPACE_INT), ("category", _SPACE_INT), ("p", _INT), ("z", _Z))
#: What follows a word of the mask, as ``_cscan.mask`` knows it (its ``F_*`` codes).
_MASK_KINDS = {_MM: 1, _AGE: 2, _SPACE_INT: 3, _INT: 4, _Z: 5}
#: What follows the first digit of a masked number span: in the rule, ``(?:\.\d)?(?:\s*-\s*\d(?:\.\d)?)?\s*mm\s+
#: (?:circle|...)\b | \d*(?:\.\d+)?(?:st|nd|rd|th)\b | \d*-year-old\b | \d*\s*(?:years?|y)\b(?!\w) |
#: \d*(?:\.\d+)?\s*(?:times|...)\b | \d*/\d+``. In every alternative but the first, what follows ``\d*``
#: and ``\.\d+`` cannot start with a digit, and what follows ``(?:\.\d+)?`` cannot start with a period, so
#: giving any of them back never lets the rest match: they are possessive here (``\d*+``, no backtracking)
#: and the shared ``\d*+`` is written once; the alternatives keep their order.
#: (``mask_digit`` in ``_cscan.c`` is this rule written out; ``tests/test_verify_cscan.py`` compares the two.)
_MASK_AFTER_DIGIT = (
    r"(?:\.\d)?(?:\s*-\s*\d(?:\.\d)?)?\s*mm\s+(?:circle|ring|subfield|zone|area|cube|grid|diameter|radius)\b"
    r"|\d*+(?:(?:\.\d++)?+(?:st|nd|rd|th)\b|-year-old\b|\s*+(?:years?|y)\b(?!\w)"
    r"|(?:\.\d++)?+\s*+(?:times|-?fold|sds?\b|standard deviations?|quadrants?|sectors?|clock hours?|o'clock|"
    r"disc diameters?|dd\b|months?|weeks?|days?|hours?|minutes?|mmhg|mg|ml|dioptres?|diopters?)\b"
    r"|/\d+)")


def _mask_pattern() -> str:
    firsts: dict[str, list[str]] = {}
    for word, rest in _MASK_WORDS:
        firsts.setdefault(word[0], []).append(f"{re.escape(word[1:])}(?<!\\w.{{{len(word)}}}){rest}")
    alts = [f"{c}(?:{'|'.join(rests)})" for c, rests in firsts.items()]
    return "|".join([*alts, rf"\d{_WB}(?:{_MASK_AFTER_DIGIT})"])


_MASK_PATTERN = _mask_pattern()
#: The two regexes (the specification and the re path), compiled at import for the re path, else on first use.
_LAZY = {"_NUMBER_RE": _NUMBER_PATTERN, "_MASK_RE": _MASK_PATTERN}
if _cscan is None:
    _NUMBER_RE, _MASK_RE = re.compile(_NUMBER_PATTERN), re.compile(_MASK_PATTERN)


def __getattr__(name: str):
    if name in _LAZY:
        rx = globals()[name] = re.compile(_LAZY[name])
        return rx
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")






def _blank_match(m: re.Match) -> str:
    return " " * (m.end() - m.start())


_MASK_ARGS = (tuple(w for w, _ in _MASK_WORDS), tuple(_MASK_KINDS[r] for _, r in _MASK_WORDS))


def mask(text: str) -> str:
    """``text`` with every non-measurement number span (``_MASK_RE``) blanked, offsets kept."""
    if _cscan is not None:
        return _cscan.mask(text, *_MASK_ARGS)
    return _MASK_RE.sub(_blank_match, text)


def numbers(text: str) -> list[tuple]:
    """``[(start, end, whole, a, e, b, unit), ...]``: each match of ``_NUMBER_RE`` in ``text`` (its span, its text,
    its groups)."""
    if _cscan is not None:
        return _cscan.numbers(text, _UNITS)
    return [(*m.span(), m.group(0), *m.groups()) for m in _NUMBER_RE.finditer(text)]


_NO_END = 1 << 62


def _by_clause_py(found: list, spans: list[tuple[int, int]]) -> tuple[list, set[int]]:
    per: list[list | None] = [None] * len(spans)
    dirty: set[int] = set()
    starts = [a for a, _ in spans]
    n = len(spans)
    ci = 0
    nxt = starts[1] if n > 1 else _NO_END
    end = spans[0][1]
    lst = None
    for m in found:
        s, e = m[0], m[1]
        if s >= nxt:  # matches come in order: move to the clause of s
            ci = bisect_right(starts, s, ci + 1) - 1
            nxt = starts[ci + 1] if ci + 1 < n else _NO_END
            end = spans[ci][1]
            lst = None
        if lst is None:
            lst = per[ci]
            if lst is None:
                lst = per[ci] = []
        if e <= end:
            lst.append(m)
        else:
            k = ci if s <= end else ci + 1
            while k < n and spans[k][0] <= e:
                dirty.add(k)
                k += 1
    return per, dirty


#: ``(per, dirty)``: ``matches`` (tuples whose first two items are their span, in order) handed to the clauses
#: (``spans``, as :func:`clause_spans` gives them) they start in: ``per[ci]`` is None where no match starts in
#: clause ``ci``, else the matches lying inside it; ``dirty`` holds the clauses a match crosses into or out of.
by_clause = _cscan.by_clause if _cscan is not None else _by_clause_py


#: ``gather(cache, words)``: the cached entries ``(bytes, list)`` of ``words`` joined, ``(bytes, list)``, or the
#: list of the words without an entry (``grok.eval.text.AnswerWords``); None where the extension is not built.
gather = _cscan.gather if _cscan is not None else None
#: ``index_find(slots, values, keys, bits, out)``: :class:`grok.eval.text.IntIndex`'s lookup of many keys at once,
#: compiled (None on the ``re`` path, where ``IntIndex.find`` probes with whole-array operations).
index_find = _cscan.index_find if _cscan is not None else None
#: ``lcs(candidate, vocab, ids, bits, n)``: :func:`grok.eval.text.lcs_with` over a reference's token ids and bit
#: rows (:class:`grok.eval.text.RougeRef`), compiled (None on the ``re`` path).
lcs = _cscan.lcs if _cscan is not None else None
#: ``count_rows(draws, out)``: ``out[r, v] += `` how often ``v`` occurs in ``draws[r]`` (int32 draws, float32 out),
#: compiled (None on the ``re`` path): :func:`grok.eval.score.resample_weights`' counting.
count_rows = _cscan.count_rows if _cscan is not None else None
