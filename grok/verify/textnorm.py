"""Offset-keeping rewrites of answer text before the verifier reads it: number words, HTML tags.

Run as: python -c "from grok.verify.textnorm import normalise; print(normalise('about two hundred and sixty um'))"

Every rewrite keeps the length of the text and the position of every character it does not touch
(a replaced span is padded with spaces), so clause, biomarker and number positions found in the
rewritten text are positions in the original. The verifier reads lower-case text; so do these.

* Number words: "two hundred and sixty" -> "260", "nought point four two" -> "0.42",
  "thirty-one" -> "31". A lone "one" is left alone ("one of", "one paragraph" are not measurements).
* HTML tags (``<td>``, ``</tr>``, ``<br/>``) become spaces, so a table cell's number follows the
  cell that names it as it does in a Markdown table.
"""

from __future__ import annotations

import re

from grok.knowledge.lexicon import _lead_trie
from grok.verify.scan import WordScanner, word_trie  # noqa: F401 - word_trie: imported from here too

_UNITS = {"zero": 0, "nought": 0, "naught": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
          "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
          "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
         "ninety": 90}
_SCALES = {"hundred": 100, "thousand": 1000}
_WORD = "|".join(sorted([*_UNITS, *_TENS, *_SCALES], key=len, reverse=True))


#: A run of number words joined by spaces, hyphens or "and", with an optional "point d d ..." tail;
#: the first word starts with a literal character (see ``grok.knowledge.lexicon._WB``) so the scan skips fast.
_NUMBER_WORDS_RE = re.compile(
    rf"(?:a\s+(?:hundred|thousand)\b|{_lead_trie([*_UNITS, *_TENS, *_SCALES])}\b)"
    rf"(?:(?:\s+and\s+|[\s-]+)(?:{_WORD})\b)*(?:\s+point(?:\s+(?:{'|'.join(_UNITS)})\b)+)?")
#: Every run of number words but a lone "one" has a word starting with one of these (a cheap pre-test).
_FIRST_WORD = WordScanner([w for w in (*_UNITS, *_TENS, *_SCALES) if w != "one"])
_HTML_TAG_RE = re.compile(r"</?[a-z][a-z0-9]*(?:\s[^<>]{0,300})?/?>")


def words_to_number(words: str) -> str | None:
    """The digits of a run of number words (``"two hundred and sixty"`` -> ``"260"``), or None."""
    toks = [t for t in re.split(r"[\s-]+", words.strip()) if t and t != "and"]
    if toks and toks[0] == "a":
        toks = ["one", *toks[1:]]
    frac = ""
    if "point" in toks:
        i = toks.index("point")
        digits = toks[i + 1:]
        if not digits or any(d not in _UNITS or _UNITS[d] > 9 for d in digits):
            return None
        frac = "." + "".join(str(_UNITS[d]) for d in digits)
        toks = toks[:i]
    total = current = 0
    last = None  # kind of the previous token, to refuse "sixty twenty" or "five six"
    for t in toks:
        if t in _UNITS:
            if last in ("unit", "teen") or (last == "ten" and _UNITS[t] >= 10):
                return None
            current += _UNITS[t]
            last = "teen" if _UNITS[t] >= 10 else "unit"
        elif t in _TENS:
            if last in ("unit", "teen", "ten"):
                return None
            current += _TENS[t]
            last = "ten"
        elif t == "hundred":
            current = max(current, 1) * 100
            last = "hundred"
        elif t == "thousand":
            total += max(current, 1) * 1000
            current = 0
            last = "thousand"
        else:
            return None
    if last is None:
        return ("0" + frac) if frac else None
    return f"{total + current}{frac}"


def _replace_numbers(text: str) -> str:
    out = []
    last = 0
    for m in _NUMBER_WORDS_RE.finditer(text):
        words = m.group(0)
        if words == "one":
            continue  # "one of", "one paragraph" are not measurements
        digits = words_to_number(words)
        if digits is None or len(digits) > len(words):
            continue
        s, e = m.span()
        out.append(text[last:s])
        out.append(digits + " " * (len(words) - len(digits)))
        last = e
    if not out:
        return text
    out.append(text[last:])
    return "".join(out)


def _blank(rx: re.Pattern, text: str) -> str:
    return rx.sub(lambda m: " " * len(m.group(0)), text)


def normalise(low: str) -> str:
    """``low`` (lower-case text) with number words as digits and HTML tags blanked; same length."""
    if "<" in low:
        low = _blank(_HTML_TAG_RE, low)
    return _replace_numbers(low) if _FIRST_WORD.search(low) else low
