"""The verifier's whole-text word scans and clause split: compiled when ``grok.verify._cscan`` is built, else ``re``.

Run as: python -c "from grok.verify.scan import COMPILED; print(COMPILED)"

``WordScanner(words, hyphen=..., end=...)`` finds the words of a list in a text as ``re.finditer`` of
:func:`word_trie`'s pattern (plus an end test) finds them: ``[(start, end, word), ...]``, leftmost first, the
longest word at a position whose end passes the test, the next search from the match's end. A word starts only
where the character before it is not ``\\w`` (``hyphen``: nor ``-``). ``clause_spans(text)`` gives the clauses
of the verifier's split (white space after ``. ; ! ?`` and runs of line breaks are separators).

The compiled scanner (``grok/verify/_cscan.c``, built by ``setup.py`` at install time) walks the same trie as
a transition table built here from the words, with Python's own character classes (``\\w``:
``str.isalnum()`` or ``_``; ``\\s``: ``str.isspace()``), so both paths give identical results
(``tests/test_verify_cscan.py`` compares them). Without a C compiler the package installs without it and the
``re`` path runs; ``GROK_NO_CEXT=1`` forces that path.
"""

from __future__ import annotations

import os
import re
from array import array

from grok.knowledge.lexicon import prefix_tree

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


def _table(words: list[str]) -> tuple[bytes, tuple[str, ...]]:
    """The trie of ``words`` as ``_cscan``'s int32 table (see ``_cscan.c``) and the words its nodes name."""
    trie = prefix_tree(words)
    nodes: list[dict] = [trie]
    paths = [""]
    term, first, count, cps, child = [], [], [], [], []
    named: list[str] = []
    i = 0
    while i < len(nodes):  # breadth first: children numbered after their parent
        node, path = nodes[i], paths[i]
        if "" in node:
            term.append(len(named))
            named.append(path)
        else:
            term.append(-1)
        kids = sorted(ch for ch in node if ch != "")
        first.append(len(cps))
        count.append(len(kids))
        for ch in kids:
            cps.append(ord(ch))
            child.append(len(nodes))
            nodes.append(node[ch])
            paths.append(path + ch)
        i += 1
    root_ascii = [-1] * 128
    for k in range(count[0]):
        if cps[k] < 128:
            root_ascii[cps[k]] = child[k]
    head = [_cscan.TABLE_MAGIC, len(nodes), len(cps)]
    return array("i", head + root_ascii + term + first + count + cps + child).tobytes(), tuple(named)


class WordScanner:
    """The words of ``words`` in a text (see the module docstring); ``pattern`` is the equivalent regex."""

    __slots__ = ("_compiled", "_flags", "pattern")

    def __init__(self, words, *, hyphen: bool = False, end: str = ""):
        words = sorted(set(words))
        if not words or any(not w or "\n" in w for w in words):
            raise ValueError("WordScanner: words must be non-empty and hold no line break")
        self.pattern = re.compile(word_trie(words, r"[\w-]" if hyphen else r"\w") + end)
        self._flags = int(hyphen) | END_TESTS[end] << 1
        self._compiled = _cscan.compile(*_table(words)) if _cscan is not None else None

    def findall(self, text: str) -> list[tuple[int, int, str]]:
        """``[(start, end, word), ...]`` of the words in ``text``."""
        if self._compiled is not None:
            return _cscan.words(self._compiled, text, self._flags)
        return [(m.start(), m.end(), m.group(0)) for m in self.pattern.finditer(text)]

    def search(self, text: str) -> bool:
        """Whether a word of the list occurs in ``text``."""
        if self._compiled is not None:
            return _cscan.words(self._compiled, text, self._flags | 8)
        return self.pattern.search(text) is not None


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
