"""A row's text as escaped HTML with every number and claim marked and linked to what it is about.

Names of biomarkers, findings and diseases are found with the knowledge base's own alias patterns (the
:class:`grok.knowledge.lexicon.Lexicon` the verifier reads with) and link to the biomarker table, the finding
or the differential of the row page. A number links to the biomarker named last before it in its sentence
(as the verifier ties numbers to biomarkers). Whether a number or a claim holds is not decided here: the
verifier's reasons for the row are, and every number or name a hard reason quotes is flagged as unmatched.
Everything else in the text is escaped (model output may hold HTML and script).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

from markupsafe import Markup

from grok.instruct.boxes import parse_boxes
from grok.knowledge.lexicon import Lexicon
from grok.verify import HARD_CODES

_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w])")
_SENTENCE_END = re.compile(r"[.;!?]\s|\n")
_NUMBER_CODES = ("wrong_number", "hallucinated_number", "wrong_unit")


@dataclass
class Mark:
    start: int
    end: int
    kind: str  #: bm | finding | dx | num
    ref: str | None  #: anchor on the row page (bm-<id>, finding-<id>, dx-<id>) or None
    flagged: bool
    title: str


def _flagged_words(reasons: list[str]) -> tuple[set[str], set[str]]:
    """(numbers, lower-case words) quoted by the row's hard reasons: ``wrong_number: 400 um for CST, ...``."""
    nums: set[str] = set()
    words: set[str] = set()
    for r in reasons:
        code, _, detail = r.partition(":")
        if code.strip() not in HARD_CODES:
            continue
        detail = detail.strip().lower()
        if code.strip() in _NUMBER_CODES:
            m = _NUMBER.match(detail) or re.match(r"(\d+(?:\.\d+)?)", detail)
            if m:
                nums.add(m.group(0))
        else:
            words.add(detail)
    return nums, words


def marks(text: str, lex: Lexicon, reasons: list[str], anchors: set[str] | None = None,
          claims: list[dict] | None = None) -> list[Mark]:
    """The marks of ``text`` (sorted, not overlapping). ``anchors``: the anchors the row page has
    (``bm-<id>``, ``finding-<id>``, ``dx-<id>``); a mark about anything else links nowhere.

    ``claims``: the verifier's claims for this turn (``VerifyResult.claims``, ``Verifier.verify(...,
    claims=True)``). With them every number, term and name links to what the verifier checked it against and
    is flagged exactly when the verifier did not accept it (with its reason); without them, a number links to
    the biomarker named before it in its sentence and flags come from the reasons' text."""
    if claims is not None:
        return _claim_marks(text, lex, claims, anchors)
    low = _lower(text)
    bad_nums, bad_words = _flagged_words(reasons)
    names = _name_marks(low, lex)
    for k in names:
        k.flagged = any(low[k.start:k.end] in w for w in bad_words)
    box_spans = []
    if "<|box_start|>" in text:
        pos = 0
        for _b in parse_boxes(text)[0]:
            s = text.find("<|box_start|>", pos)
            e = text.find("<|box_end|>", s)
            if s < 0 or e < 0:
                break
            box_spans.append((s, e + len("<|box_end|>")))
            pos = e
    nums: list[Mark] = []
    for m in _NUMBER.finditer(text):
        if any(s <= m.start() < e for s, e in box_spans):
            continue
        sent_start = max((x.end() for x in _SENTENCE_END.finditer(text, 0, m.start())), default=0)
        subject = next((k for k in reversed(names) if k.kind == "bm" and sent_start <= k.start and k.end <= m.start()),
                       None)
        flagged = m.group(0) in bad_nums
        title = ("the verifier did not accept this number" if flagged else
                 f"checked against {subject.title}" if subject else "no biomarker named before it in the sentence")
        nums.append(Mark(m.start(), m.end(), "num", subject.ref if subject else None, flagged, title))
    merged = sorted(names + [n for n in nums if not any(k.start <= n.start < k.end for k in names)],
                    key=lambda k: k.start)
    if anchors is not None:
        for k in merged:
            if k.ref not in anchors:
                k.ref = None
    return merged


def _lower(text: str) -> str:
    """``text`` lower-cased at the same offsets (a character whose lower case is longer stays as it is)."""
    low = text.lower()
    return low if len(low) == len(text) else "".join(c if len(c.lower()) != 1 else c.lower() for c in text)


def _name_marks(low: str, lex: Lexicon) -> list[Mark]:
    """Biomarker, finding and disease names (the knowledge base's alias patterns), longest first, no overlaps."""
    out: list[Mark] = []
    for rx, alias, kind in ((lex.biomarker_re, lex.biomarker_alias, "bm"), (lex.presence_re, lex.presence_alias, "finding")):
        for m in rx.finditer(low):
            ids = alias.get(m.group(0), ())
            if ids:
                title = lex.biomarker_names.get(ids[0], ids[0]) if kind == "bm" else f"finding {ids[0]}"
                out.append(Mark(m.start(), m.end(), kind, f"{kind}-{ids[0]}", False, title))
    for m in lex.disease_re.finditer(low):
        did = lex.disease_alias.get(m.group(0))
        if did:
            out.append(Mark(m.start(), m.end(), "dx", f"dx-{did}", False, lex.disease_names.get(did, did)))
    return _no_overlap(out)


def _no_overlap(found: list[Mark]) -> list[Mark]:
    """``found`` sorted by position, the longest first where several start together, overlaps dropped."""
    found.sort(key=lambda k: (k.start, -(k.end - k.start)))
    kept: list[Mark] = []
    for k in found:
        if kept and k.start < kept[-1].end:
            continue
        kept.append(k)
    return kept


def _claim_marks(text: str, lex: Lexicon, claims: list[dict], anchors: set[str] | None) -> list[Mark]:
    """Marks from the verifier's own claims (see :func:`marks`)."""
    low = _lower(text)
    out: list[Mark] = []
    for c in claims:
        refs = [r for r in c.get("refs") or [] if anchors is None or r in anchors]
        bad = c.get("status") == "unmatched"
        title = (c.get("reason") or "not accepted by the verifier") if bad else (
            f"checked against {', '.join(c.get('refs') or []) or 'this study'}: matches")
        kind = {"number": "num", "term": "term"}.get(c.get("kind"), "claim")
        out.append(Mark(int(c["start"]), int(c["end"]), kind, refs[0] if refs else None, bad, title))
    for k in _name_marks(low, lex):  # names the verifier read as no claim still link to their table row
        if anchors is not None and k.ref not in anchors:
            k.ref = None
        hit = [c for c in out if c.start < k.end and k.start < c.end]
        if not hit:
            out.append(k)
        elif all(c.kind == "claim" for c in hit):  # a name claim: keep the name's own kind (bm/finding/dx)
            for c in hit:
                c.kind = k.kind
                c.ref = c.ref or k.ref
    for m in _NUMBER.finditer(text):  # every number is shown; those the verifier did not read link nowhere
        if not any(c.start <= m.start() < c.end for c in out):
            out.append(Mark(m.start(), m.end(), "num", None, False, "not read as a measurement by the verifier"))
    return _no_overlap(out)


def render(text: str, lex: Lexicon, reasons: list[str], anchors: set[str] | None = None,
           claims: list[dict] | None = None) -> Markup:
    """``text`` as HTML: escaped, with a ``<a class="hl ...">`` (or ``<span>`` when it links nowhere) per mark."""
    parts: list[str] = []
    pos = 0
    for k in marks(text, lex, reasons, anchors, claims):
        parts.append(html.escape(text[pos:k.start]))
        cls = f"hl {k.kind}" + (" bad" if k.flagged else "")
        inner = html.escape(text[k.start:k.end])
        title = html.escape(k.title)
        if k.ref:
            parts.append(f'<a class="{cls}" href="#{html.escape(k.ref)}" data-ref="{html.escape(k.ref)}" '
                         f'title="{title}">{inner}</a>')
        else:
            parts.append(f'<span class="{cls}" title="{title}">{inner}</span>')
        pos = k.end
    parts.append(html.escape(text[pos:]))
    return Markup("".join(parts))
