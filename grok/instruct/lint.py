"""Style rules and variety measures of instruction text (``grok lint-text``; a contract of the build).

Run as: grok lint-text BUILD_OR_DIR/instructions.parquet [--json]
        python -c "from grok.instruct.lint import lint_rows; help(lint_rows)"

The verifier decides whether a row is *true* to its record; this module decides whether it reads like
a specialist's note. Each rule has a reason code (:data:`RULES`) and looks at the assistant turns only
(questions are the user's words), sentence by sentence:

=====================  ==========================================================================
code                   what it flags
=====================  ==========================================================================
``nested_parens``      a parenthesis inside a parenthesis
``repeated_term``      the same finding, biomarker or disease name twice in one sentence
``long_sentence``      a sentence of more than :data:`MAX_SENTENCE_WORDS` words (boxes not counted)
``differential_size``  more than :data:`MAX_ALTERNATIVES` alternatives named besides the label
``unsupported_rule``   "X is less likely given Y" where no sourced opposing rule of the knowledge
                       base ties finding Y to X
``label_reveal``       wording that gives away a label, an answer key or provided material
=====================  ==========================================================================

Variety, per family (:func:`variety`): the answer and question *skeletons* (the text with every number
masked), how many distinct ones there are, the share of rows the most common one takes, and distinct-2
(distinct word bigrams over all bigrams of the answers). Targets of issue 21: no violation, the most
common answer skeleton in at most 30 % of a family's rows and the most common question skeleton in at
most 25 %.
"""

from __future__ import annotations

import re
from array import array
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np

from grok.instruct.boxes import strip_boxes
from grok.instruct.phrasing import MAX_ALTERNATIVES
from grok.instruct.records import lower_first, short_term
from grok.knowledge.lexicon import DISEASE_SYNONYMS, DISPLAY_NAMES, PRESENCE_ENTITIES, _lead_trie

RULES: dict[str, str] = {
    "nested_parens": "a parenthesis inside a parenthesis",
    "repeated_term": "the same finding, biomarker or disease name twice in one sentence",
    "long_sentence": "a sentence too long to follow",
    "differential_size": f"more than {MAX_ALTERNATIVES} alternatives named besides the label",
    "unsupported_rule": "a rule-out stated without a sourced knowledge-base rule behind it",
    "label_reveal": "wording that reveals a label, an answer key or provided material",
}
MAX_SENTENCE_WORDS = 45
#: Share of a family's rows the most common skeleton may take (answers, questions): issue 21's targets.
MAX_ANSWER_SKELETON_SHARE = 0.30
MAX_QUESTION_SKELETON_SHARE = 0.25

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z<])|\n+")
_WORD = re.compile(r"[\w'’-]+")
_RULE_CUE = re.compile(r"\b(?:less likely|unlikely|ruled out|excluded|not supported)\s+(?:given|because of|in the presence "
                       r"of|owing to|due to)\s+(?P<why>[^.;]+)", re.IGNORECASE)
_REVEAL = re.compile(r"\b(?:label(?:led|ed|s)?|ground[- ]truth|answer key|annotat\w+|provided|data ?sheet|dataset|"
                     r"metadata|json|the record|as stated|we were told|you told me)\b", re.IGNORECASE)


_NESTED = re.compile(r"\([^()]*\(")


def _alternation(terms: Iterable[str]) -> re.Pattern:
    """Whole-word matches of any of ``terms`` in lower-case text, the longest first (a prefix trie: fast)."""
    return re.compile(_lead_trie({t.lower() for t in terms if t}) + r"(?![\w-])")


class TextLinter:
    """The rules over one knowledge base (its disease names and sourced opposing rules)."""

    def __init__(self, kb, lex):
        self.disease_of: dict[str, str] = {}
        for did, names in DISEASE_SYNONYMS.items():
            for n in names:
                self.disease_of[n.lower()] = did
        for did, name in lex.disease_names.items():
            self.disease_of[name.lower()] = did
        for n in ("normal eye", "normal retina", "normal fundus"):
            self.disease_of[n] = "normal"
        # "normal" alone is an adjective ("within normal limits"), not the category
        self.disease_of = {k: v for k, v in self.disease_of.items()
                           if k != "normal" and (len(k) > 3 or k in ("amd", "dme", "rvo", "csc"))}
        self._diseases = _alternation(self.disease_of)
        vocab = set(PRESENCE_ENTITIES) | {n.lower() for n in DISPLAY_NAMES.values()} | set(self.disease_of)
        vocab |= {short_term(lower_first(f.name)).lower() for f in kb.findings.values()}
        self._terms = _alternation(t for t in vocab if len(t) > 3)
        #: finding names that contain a disease's name ("central subfield thickening in the DME range")
        self._finding_names = _alternation(short_term(lower_first(f.name)) for f in kb.findings.values())
        #: disease id -> the phrases of its opposing findings that have a source (what may follow "given")
        self.sourced: dict[str, set[str]] = {}
        for did, d in kb.diseases.items():
            for r in d.differential.opposing:
                f = kb.findings.get(r.finding)
                if r.source is None or r.source not in kb.sources or f is None:
                    continue
                names = {short_term(lower_first(f.name)).lower()}
                names |= {short_term(g.term).lower() for ts in getattr(f, "thresholds", []) or [] for g in ts.grades}
                names |= {short_term(g.term).lower() for g in getattr(f, "grades", []) or []}
                if getattr(f, "term", None):
                    names.add(short_term(f.term).lower())
                self.sourced.setdefault(did, set()).update(names)

    def check_row(self, row: dict[str, Any]) -> list[tuple[str, str]]:
        """``[(code, detail), ...]`` for one row (``messages`` and ``label``); empty when it reads well."""
        out: list[tuple[str, str]] = []
        named: set[str] = set()
        label = row.get("label")
        for m in _messages(row):
            if m.get("role") != "assistant" or not isinstance(m.get("content"), str):
                continue
            text = strip_boxes(m["content"])
            low = text.lower()
            # sentences as spans; each pattern scans the message once and its matches go to their sentence
            starts, ends, pos = [], [], 0
            for sep in _SENTENCE_END.finditer(text):
                starts.append(pos)
                ends.append(sep.start())
                pos = sep.end()
            starts.append(pos)
            ends.append(len(text))
            terms: list[Counter[str]] = [Counter() for _ in starts]
            for x in self._terms.finditer(low):
                terms[bisect_right(starts, x.start()) - 1][x.group(0)] += 1
            plain = self._finding_names.sub(lambda x: "#" * len(x.group(0)), low)
            for x in self._diseases.finditer(plain):
                named.add(self.disease_of[x.group(0)])
            for i, (a, b) in enumerate(zip(starts, ends)):
                sent = text[a:b].strip()
                if sent:
                    out.extend(self._sentence(sent, terms[i]))
        extra = sorted(named - {label, None})
        if len(extra) > MAX_ALTERNATIVES:
            out.append(("differential_size", f"{len(extra)} alternatives named: {', '.join(extra)}"))
        return out

    def _sentence(self, sent: str, seen: Counter[str]) -> list[tuple[str, str]]:
        out = []
        if sent.count("(") > 1 and _NESTED.search(sent):
            out.append(("nested_parens", sent[:80]))
        rep = [t for t, n in seen.items() if n > 1]
        if rep:
            out.append(("repeated_term", f"{', '.join(sorted(rep))} twice in: {sent[:80]}"))
        n_words = len(_WORD.findall(sent))
        if n_words > MAX_SENTENCE_WORDS:
            out.append(("long_sentence", f"{n_words} words: {sent[:80]}"))
        for cue in _RULE_CUE.finditer(sent):
            head = sent[:cue.start()]
            ds = [self.disease_of[x.group(0)] for x in self._diseases.finditer(head.lower())]
            why = cue.group("why").lower()
            if not ds or not any(p in why for p in self.sourced.get(ds[-1], ())):
                out.append(("unsupported_rule", f"no sourced rule behind: {sent[:100]}"))
        if _REVEAL.search(sent):
            out.append(("label_reveal", sent[:80]))
        return out


def skeleton(text: str) -> str:
    """``text`` with every number masked (``#``): two rows share a skeleton when only numbers differ."""
    return _NUMBER.sub("#", text)


def _messages(row: dict[str, Any]) -> list[dict[str, Any]]:
    """A row's messages as a list (a parquet row read through pandas holds an array)."""
    msgs = row.get("messages")
    return [] if msgs is None else list(msgs)


def _turns(row: dict[str, Any], role: str) -> str:
    return "\n".join(m["content"] for m in _messages(row)
                     if m.get("role") == role and isinstance(m.get("content"), str))


class HashTally:
    """Counts of keys held as their 64-bit hashes in two sorted arrays (16 bytes a distinct key, however long
    the key), so a family's distinct answer skeletons and bigrams are counted without keeping them: a set or
    Counter of the texts themselves grows with the archive (a skeleton is a whole answer, 0.5-1.4 thousand
    characters on average by family, and nearly every chain-of-thought one is distinct). Hashes arrive in a
    buffer of 8-byte integers, merged into the arrays when it reaches the arrays' size or :attr:`MIN_BUFFER`
    (amortised n log n). Two distinct keys count as one only when their hashes collide (about n^2 / 2^64:
    none expected below billions of keys)."""

    MIN_BUFFER = 16_384

    def __init__(self):
        self.keys = np.empty(0, np.int64)
        self.counts = np.empty(0, np.int64)
        self.total = 0
        self._buf = array("q")

    def add(self, key: Any) -> None:
        self._buf.append(hash(key))
        self._check()

    def update(self, keys: Iterable[Any]) -> None:
        self._buf.extend(map(hash, keys))
        self._check()

    def _check(self) -> None:
        if len(self._buf) >= max(self.MIN_BUFFER, len(self.keys)):
            self._merge()

    def _merge(self) -> None:
        if not self._buf:
            return
        new = np.frombuffer(self._buf, np.int64)
        self._buf = array("q")
        self.total += len(new)
        keys, inverse = np.unique(np.concatenate([self.keys, new]), return_inverse=True)
        weights = np.concatenate([self.counts, np.ones(len(new), np.int64)])
        self.counts = np.bincount(inverse.ravel(), weights=weights, minlength=len(keys)).astype(np.int64)
        self.keys = keys

    def distinct(self) -> int:
        self._merge()
        return len(self.keys)

    def top(self) -> int:
        """The count of the most common key (0 when there is none)."""
        self._merge()
        return int(self.counts.max()) if len(self.counts) else 0


class Variety:
    """:func:`variety` of rows added one at a time: it keeps tallies of the skeletons' and bigrams' hashes
    (:class:`HashTally`), not the rows or their texts."""

    def __init__(self):
        self.n = 0
        self.answers = HashTally()
        self.questions = HashTally()
        self.bigrams = HashTally()

    def add(self, row: dict[str, Any]) -> None:
        self.n += 1
        answer = _turns(row, "assistant")
        self.answers.add(skeleton(answer))
        self.questions.add(skeleton(_turns(row, "user")))
        words = _WORD.findall(strip_boxes(answer).lower())
        self.bigrams.update(zip(words, words[1:]))

    def result(self) -> dict[str, Any]:
        n, bigrams = self.n, self.bigrams.distinct()
        return {
            "rows": n,
            "answer_skeletons": self.answers.distinct(),
            "answer_top_share": round(self.answers.top() / n, 4) if n else 0.0,
            "question_skeletons": self.questions.distinct(),
            "question_top_share": round(self.questions.top() / n, 4) if n else 0.0,
            "distinct_2": round(bigrams / self.bigrams.total, 4) if bigrams else 0.0,
        }


def variety(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Variety of one family's rows: distinct answer/question skeletons, the share the most common one
    takes, and distinct-2 of the answers."""
    v = Variety()
    for r in rows:
        v.add(r)
    return v.result()


def lint_rows(rows: Iterable[dict[str, Any]], kb, lex, examples: int = 3) -> dict[str, Any]:
    """Lint every row; returns the report: ``violations`` (count per code), ``examples`` (a few per code,
    with row id and task), ``per_family`` (rows, violations and :func:`variety`) and ``targets_met``."""
    linter = TextLinter(kb, lex)
    by_family: dict[str, Variety] = {}  # rows are counted, not kept: a build's rows may not fit in memory
    counts: Counter[str] = Counter()
    by_mode: Counter[str] = Counter()
    fam_counts: dict[str, Counter[str]] = {}
    shown: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        task = str(row.get("task"))
        by_family.setdefault(task, Variety()).add(row)
        for code, detail in linter.check_row(row):
            counts[code] += 1
            by_mode[str(row.get("mode") or "template")] += 1
            fam_counts.setdefault(task, Counter())[code] += 1
            if len(shown.setdefault(code, [])) < examples:
                shown[code].append({"id": str(row.get("id")), "task": task, "detail": detail})
    per_family = {}
    met = not counts
    for task, fam in sorted(by_family.items()):
        v = fam.result()
        v["violations"] = dict(sorted(fam_counts.get(task, Counter()).items()))
        v["answer_target_met"] = v["answer_top_share"] <= MAX_ANSWER_SKELETON_SHARE
        v["question_target_met"] = v["question_top_share"] <= MAX_QUESTION_SKELETON_SHARE
        met = met and v["answer_target_met"] and v["question_target_met"]
        per_family[task] = v
    return {"rows": sum(v.n for v in by_family.values()), "violations": dict(sorted(counts.items())),
            "violations_total": sum(counts.values()), "violations_by_mode": dict(sorted(by_mode.items())),
            "examples": shown, "per_family": per_family,
            "targets": {"violations": 0, "answer_top_share": MAX_ANSWER_SKELETON_SHARE,
                        "question_top_share": MAX_QUESTION_SKELETON_SHARE},
            "targets_met": met}
