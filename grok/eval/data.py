"""The benchmark's reference items and a predictions file, read with every problem counted.

Run as: python -c "from grok.eval.data import load_predictions; help(load_predictions)"

**Reference.** A published version's ``benchmark`` config (test split) holds the questions and the
reference answers; its ``records`` config holds, per study, the evidence the verifier checks text
against (:mod:`grok.instruct.evidence`), joined on ``study_id`` -- the same join
``grok verify --dataset`` replays (:mod:`grok.verify.replay`).

**Predictions** (JSONL, one object a line, as ``grok-train predict`` writes them): ``id`` (the
benchmark row's id) and the answer text in ``prediction`` (``grok-train predict``'s field) or
``answer``. Other fields (``task``, ``reference``, ``finish_reason``, ``dataset`` ...) are kept
only to report a file made for another dataset version (``dataset``) and answers cut by the
generation budget (``finish_reason: length``).

Nothing is dropped silently: unreadable lines, lines without an id or an answer field, ids not in
the split, duplicate ids (the first is scored), benchmark ids with no prediction (scored as
abstentions), empty answers (abstentions) and answers that are likely not in English (scored,
flagged) are each counted and listed in the report.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grok.instruct.evidence import record_from_evidence
from grok.instruct.families import FAMILIES, Skip
from grok.instruct.generate import TemplateGenerator, prepare
from grok.instruct.records import StudyError, build_facts
from grok.instruct.templating import TemplateLibrary
from grok.knowledge import load_knowledge_base
from grok.knowledge.lexicon import build_lexicon
from grok.registry import RegistryError, list_versions, load, resolve
from grok.verify.verifier import Verifier

#: Fields that may hold the answer text, in order of preference.
ANSWER_FIELDS = ("prediction", "answer")
#: How many ids each problem lists in the report (the counts are always complete).
MAX_LISTED = 20

_WORD = re.compile(r"[^\W\d_]+")
_LETTER = re.compile(r"[^\W\d_]")
_NON_LATIN = re.compile(r"[^\W\d_a-zA-Z\u00c0-\u024f]")
_EN_FUNCTION = frozenset((
    "the", "a", "an", "of", "and", "or", "is", "are", "was", "were", "in", "on", "with", "to",
    "for", "no", "not", "this", "that", "there", "by", "as", "at", "be", "which", "from", "it",
    "its", "than",
))


#: Function words of other European languages that are not English words.
_OTHER_FUNCTION = frozenset((
    "der", "die", "das", "und", "ist", "nicht", "ein", "eine", "mit", "bei", "wir", "den", "dem",
    "des", "zu", "von", "auf", "le", "la", "les", "et", "est", "une", "avec", "pour", "dans", "sur",
    "du", "il", "pas", "el", "los", "las", "es", "y", "una", "con", "por", "para", "del", "se",
    "que", "il", "della", "delle", "gli", "sono", "non", "con", "per", "che", "os", "um", "uma",
    "com", "para", "não", "são", "het", "een", "van", "en", "niet", "zijn", "met", "voor",
)) - _EN_FUNCTION


#: Every ASCII character that is not a letter, as a space (``likely_not_english``'s ASCII path).
_ASCII_NON_LETTERS = str.maketrans({chr(c): " " for c in range(128) if not chr(c).isalpha()})
_ASCII_NON_LETTER_BYTES = bytes(c for c in range(128) if not chr(c).isalpha())


class EvalInputError(ValueError):
    """A predictions file or dataset version that cannot be read (the message names it and the fix)."""


class TrainingOverlapError(ValueError):
    """The model trained on patients of the benchmark split (scoring refused; ``--allow-overlap`` overrides)."""


@dataclass
class Item:
    """One benchmark question: its reference answer and the study's facts (``facts_error`` when unusable)."""

    id: str
    study_id: str
    task: str
    label: str
    eye: str
    question: str
    reference: str
    images: list[str]
    facts: Any = None
    facts_error: str | None = None
    patient_id: str = ""


@dataclass
class Benchmark:
    dataset: str
    fingerprint: str
    config: str
    split: str
    kb_snapshot: str
    items: dict[str, Item]
    #: Where the rows came from (``None`` for a benchmark made in memory): the report reloads a few images.
    registry: str | None = None
    published: bool = False
    #: What scoring reads from each reference answer once (:func:`grok.eval.score.reference_readings`),
    #: by reader settings; kept for the next model scored in this process.
    readings: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)
    _positions: dict[str, int] | None = field(default=None, init=False, repr=False, compare=False)

    def positions(self) -> dict[str, int]:
        """Each item id's position in :attr:`items` (built once per benchmark)."""
        if self._positions is None or len(self._positions) != len(self.items):
            self._positions = {rid: i for i, rid in enumerate(self.items)}
        return self._positions


def _last_turns(messages: list[dict[str, Any]]) -> tuple[str, str]:
    """(the last user turn, the last assistant turn) of a chat row."""
    q = a = ""
    last_a = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    if last_a is not None:
        a = str(messages[last_a].get("content") or "")
        q = next((str(m.get("content") or "") for m in reversed(messages[:last_a]) if m.get("role") == "user"), "")
    return q, a


def load_benchmark(spec: str, registry: str | None = None, config: str = "benchmark", split: str = "test",
                   kb=None, lexicon=None) -> Benchmark:
    """The reference items of ``spec`` (``NAME@VERSION``), each with its study's verifier facts.

    Raises :class:`EvalInputError` naming the version, config or split that does not exist, or a
    version published before the ``records`` config.
    """
    import datasets  # slow to import

    try:
        info = resolve(spec, registry)
    except RegistryError as exc:
        name = spec.split("@", 1)[0]
        try:
            known = list_versions(name, registry)
        except Exception:  # noqa: BLE001 - only to enrich the message
            known = []
        hint = ("" if "versions" in str(exc) else f"; versions of {name}: {', '.join(known)}" if known
                else " (grok datasets list shows what exists)")
        raise EvalInputError(f"{exc}{hint}") from exc
    counts = info["manifest"]["counts"]
    if "records" not in counts:
        raise EvalInputError(f"{info['name']}@{info['version']} has no records config (published before the evidence "
                             "was carried in the dataset), so its answers cannot be checked; republish it")
    kb = kb or load_knowledge_base()
    lex = lexicon or build_lexicon(kb)

    def rows(cfg: str, sp: str) -> list[dict[str, Any]]:
        ds = load(spec, cfg, sp, registry=registry)
        if "images" in ds.features:
            ds = ds.cast_column("images", datasets.List(datasets.Image(decode=False)))
        return ds.to_list()

    try:
        bench_rows = rows(config, split)
    except RegistryError as exc:
        raise EvalInputError(str(exc)) from exc
    records: dict[str, dict[str, Any]] = {}
    for sp in counts["records"]:
        for r in rows("records", sp):
            records[r["study_id"]] = record_from_evidence(r["evidence"])
    facts: dict[str, Any] = {}
    items: dict[str, Item] = {}
    for r in bench_rows:
        sid = str(r["study_id"])
        if sid not in facts:
            rec = records.get(sid)
            try:
                facts[sid] = build_facts(rec, kb, lex) if rec is not None else "not in the records config"
            except StudyError as exc:
                facts[sid] = f"unusable record: {exc}"
        q, a = _last_turns(list(r.get("messages") or []))
        f = facts[sid]
        items[str(r["id"])] = Item(
            id=str(r["id"]), study_id=sid, task=str(r.get("task")), label=str(r.get("label")), eye=str(r.get("eye")),
            question=q, reference=a, images=[(im or {}).get("path") or "" for im in r.get("images") or []],
            facts=None if isinstance(f, str) else f, facts_error=f if isinstance(f, str) else None,
            patient_id=str(r.get("patient_id") or ""))
    return Benchmark(f"{info['name']}@{info['version']}", info["fingerprint"], config, split, kb.snapshot_id, items,
                     registry=registry, published=True)


def likely_not_english(text: str) -> bool:
    """True for an answer mostly outside the Latin script, or one whose common function words are more
    often those of another European language (German, French, Spanish, Italian, Portuguese, Dutch)
    than English ones. Lists and box answers without function words are not flagged."""
    if not text.isascii():
        non_latin = len(_NON_LATIN.findall(text))  # all letters are counted only when the ASCII ones are too few
        if non_latin and non_latin > 0.3 * len(text.encode("ascii", "ignore").translate(None, _ASCII_NON_LETTER_BYTES)) \
                and non_latin > 0.3 * len(_LETTER.findall(text)):
            return True
        words = _WORD.findall(text.lower())
    else:  # the same words: in ASCII the letters are a-z, and every other character separates them
        words = text.lower().translate(_ASCII_NON_LETTERS).split()
    if len(words) < 5 or _OTHER_FUNCTION.isdisjoint(words):
        return False
    other = sum(map(_OTHER_FUNCTION.__contains__, words))
    return other >= 3 and other > sum(map(_EN_FUNCTION.__contains__, words))


def not_english_word(word: str) -> tuple[int, int] | None:
    """What one white-space-separated word adds to :func:`likely_not_english`'s counts: its letters outside
    the Latin script and its function words of another language (None when both are 0)."""
    if word.isascii():  # no letter outside the Latin script; the words are the runs of a-z
        non_latin, words = 0, word.lower().translate(_ASCII_NON_LETTERS).split()
    else:
        non_latin, words = len(_NON_LATIN.findall(word)), _WORD.findall(word.lower())
    other = sum(map(_OTHER_FUNCTION.__contains__, words))
    return (non_latin, other) if non_latin or other else None


def likely_not_english_words(text: str, flags: list[tuple[int, int]]) -> bool:
    """:func:`likely_not_english` of ``text`` given the :func:`not_english_word` of its words that are not
    None (in any order): it needs 3 function words of another language, or more non-Latin letters than 30 %
    of the ASCII letters, so only such a text is checked in full."""
    if not flags:
        return False
    non_latin = sum(f[0] for f in flags)
    if sum(f[1] for f in flags) >= 3:
        return likely_not_english(text)
    # the ASCII letters of the first 256 characters are at most the text's, and 0.3 x is monotonic: enough of them
    # there decide it without counting the whole text
    if not non_latin or non_latin <= 0.3 * _ascii_letters(text[:256]) or non_latin <= 0.3 * _ascii_letters(text):
        return False
    return likely_not_english(text)


def _ascii_letters(text: str) -> int:
    return len(text.encode("ascii", "ignore").translate(None, _ASCII_NON_LETTER_BYTES))


@dataclass
class Predictions:
    """Answers by benchmark id, and every problem the file had (counts complete, ids listed up to 20).

    In memory (``answers``); :func:`open_predictions` streams a file instead (:class:`PredictionStream`).
    Scoring reads either through :meth:`pairs`."""

    path: str
    answers: dict[str, str]
    lines: int = 0
    problems: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    datasets_named: dict[str, int] = field(default_factory=dict)
    cut_by_length: int = 0

    def note(self, problem: str, example: str) -> None:
        self.problems[problem] = self.problems.get(problem, 0) + 1
        ex = self.examples.setdefault(problem, [])
        if len(ex) < MAX_LISTED:
            ex.append(example)

    def pairs(self, index: dict[str, int] | None = None) -> Iterator[tuple[str, str]]:
        """``(id, answer)`` of every usable prediction, each id once. ``index``: the benchmark's ids and
        positions (:meth:`Benchmark.positions`), which a stream uses to remember the ids seen compactly."""
        yield from self.answers.items()


class _Seen:
    """The ids read so far: a bit per benchmark position for the ids of ``index``, a set for any other."""

    def __init__(self, index: dict[str, int] | None):
        self.index = index or {}
        self.bits = bytearray(len(self.index))
        self.other: set[str] = set()

    def __contains__(self, rid: str) -> bool:
        i = self.index.get(rid)
        return rid in self.other if i is None else bool(self.bits[i])

    def add(self, rid: str) -> None:
        i = self.index.get(rid)
        if i is None:
            self.other.add(rid)
        else:
            self.bits[i] = 1


class PredictionStream(Predictions):
    """A predictions JSONL file read line by line (:meth:`pairs`): only the ids seen are kept, never the
    answers, so scoring memory does not grow with the answers' text. The counts fill as it is read."""

    def __init__(self, path: str | Path):
        super().__init__(str(path), {})

    def pairs(self, index: dict[str, int] | None = None) -> Iterator[tuple[str, str]]:
        p = Path(self.path)
        seen = _Seen(index)
        named: Counter[str] = Counter(self.datasets_named)
        try:
            with p.open("r", encoding="utf-8", errors="strict") as fh:
                for n, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    self.lines += 1
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as exc:
                        self.note("unreadable_line", f"line {n}: {exc.msg}")
                        continue
                    if not isinstance(obj, dict):
                        self.note("unreadable_line", f"line {n}: not a JSON object")
                        continue
                    rid = obj.get("id")
                    if rid is None or str(rid) == "":
                        self.note("no_id", f"line {n}")
                        continue
                    rid = str(rid)
                    field_name = next((f for f in ANSWER_FIELDS if f in obj), None)
                    if field_name is None:
                        self.note("no_answer_field", f"line {n} ({rid}): no 'prediction' or 'answer'")
                        continue
                    if rid in seen:
                        self.note("duplicate_id", f"line {n}: {rid} (the first answer is scored)")
                        continue
                    seen.add(rid)
                    if obj.get("dataset"):
                        named[str(obj["dataset"])] += 1
                    if obj.get("finish_reason") == "length":
                        self.cut_by_length += 1
                    ans = obj[field_name]
                    yield rid, ans if isinstance(ans, str) else ("" if ans is None else json.dumps(ans))
        except UnicodeDecodeError as exc:
            raise EvalInputError(f"{p}: not UTF-8 text ({exc}); write the predictions as UTF-8 JSONL") from exc
        finally:
            self.datasets_named = dict(named)


def open_predictions(path: str | Path) -> PredictionStream:
    """A predictions JSONL file (see the module docstring) to be streamed by scoring. Raises
    :class:`EvalInputError` when the file does not exist; a bad line is counted (``unreadable_line``,
    ``no_id``, ``no_answer_field``, ``duplicate_id``) and the rest are read."""
    p = Path(path)
    if not p.is_file():
        raise EvalInputError(f"{p}: predictions file not found (JSONL with 'id' and 'prediction' per line, as "
                             "'grok-train predict' writes)")
    return PredictionStream(p)


def load_predictions(path: str | Path, ids: set[str] | None = None) -> Predictions:
    """A predictions JSONL file read into memory (the answers of ``ids`` only, when given), with the
    counts of :func:`open_predictions`. Raises :class:`EvalInputError` when the file cannot be read."""
    stream = open_predictions(path)
    answers = {rid: ans for rid, ans in stream.pairs() if ids is None or rid in ids}
    return Predictions(stream.path, answers, stream.lines, stream.problems, stream.examples, stream.datasets_named,
                       stream.cut_by_length)


def benchmark_from_records(records: list[dict[str, Any]], seed: int = 0, kb=None, lexicon=None,
                           name: str = "synthetic@0.0.0") -> Benchmark:
    """A benchmark made in memory from study records: every family's verified template row per study.

    For tests and ``benchmarks/eval.py`` (hundreds of items over all seven categories without a
    build); a published version is read with :func:`load_benchmark`. Its fingerprint is a digest of the
    records, the seed, the name and the rows made.
    """

    kb = kb or load_knowledge_base()
    lex = lexicon or build_lexicon(kb)
    facts, _bad = prepare(records, kb, lex)
    gen = TemplateGenerator(TemplateLibrary(), lex, Verifier(lex))
    items: dict[str, Item] = {}
    for f in facts:
        for fam in FAMILIES.values():
            try:
                row = gen.verify(gen.render(f, fam, seed, "eval"), f)
            except Skip:
                continue
            if not row["verifier_passed"]:
                continue
            q, a = _last_turns(list(row["messages"]))
            items[str(row["id"])] = Item(id=str(row["id"]), study_id=f.study_id, task=str(row["task"]), label=f.label,
                                         eye=f.eye, question=q, reference=a, images=list(row.get("images") or []),
                                         facts=f, patient_id=f.patient_id)
    # the version fingerprint of a benchmark made in memory: its records, seed and name, and its rows
    h = hashlib.sha256(json.dumps([name, seed, records], sort_keys=True, default=repr).encode())
    for it in items.values():
        h.update(json.dumps([it.id, it.study_id, it.task, it.label, it.eye, it.question, it.reference, it.images],
                            ensure_ascii=False).encode())
    return Benchmark(name, f"sha256:{h.hexdigest()}", "benchmark", "test", kb.snapshot_id, items)


def training_overlap(bench: Benchmark, trained_on: str, registry: str | None = None) -> dict[str, Any]:
    """Patients of the benchmark that the version ``trained_on`` (``NAME@VERSION``) trained on (its
    ``instructions`` train and validation splits). Patient ids are the build's keyed pseudonyms, the same
    for one patient in every version built with one secret. Raises :class:`EvalInputError` when the
    version does not exist."""

    try:
        info = resolve(trained_on, registry)
    except RegistryError as exc:
        raise EvalInputError(f"--trained-on: {exc}") from exc
    seen: set[str] = set()
    for split in ("train", "validation"):
        if split in info["manifest"]["counts"].get("instructions", {}):
            seen.update(str(p) for p in load(trained_on, "instructions", split, registry=registry)["patient_id"])
    bench_patients = {it.patient_id for it in bench.items.values() if it.patient_id}
    shared = sorted(bench_patients & seen)
    return {"trained_on": f"{info['name']}@{info['version']}", "benchmark_patients": len(bench_patients),
            "patients_shared": len(shared), "examples": shared[:MAX_LISTED]}


def require_no_overlap(bench: Benchmark, trained_on: str, registry: str | None = None,
                       allow: bool = False) -> dict[str, Any]:
    """:func:`training_overlap` with ``allowed`` recorded; raises :class:`TrainingOverlapError` when the
    version shares patients with the benchmark and ``allow`` is false (:class:`EvalInputError` when the
    version does not exist)."""
    overlap = training_overlap(bench, trained_on, registry)
    overlap["allowed"] = bool(allow)
    if overlap["patients_shared"] and not allow:
        raise TrainingOverlapError(
            f"{overlap['trained_on']} trained on {overlap['patients_shared']} of the {overlap['benchmark_patients']} "
            f"patients of {bench.dataset}'s {bench.config}/{bench.split} (e.g. {', '.join(overlap['examples'][:3])}): "
            "its scores would not measure generalisation. Score a model trained on a version without them, or "
            "pass --allow-overlap (recorded in eval.json)")
    return overlap
