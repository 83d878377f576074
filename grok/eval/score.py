"""Deterministic scores of benchmark answers: classification, grounded report quality, text overlap.

Run as: grok eval PREDICTIONS.jsonl --dataset NAME@VERSION [--config benchmark --split test] [--json]

Every answer is read by the grounding verifier (:class:`grok.eval.reader.AnswerReader`) against the
study's facts, and so is its reference answer. Per answer:

* **classification** (items whose reference answer states a diagnosis: the diagnosis, report and
  chain-of-thought questions): the answer's stated diagnosis against the study's category;
  an answer stating none (or missing, or empty) is an abstention, which counts against recall.
* **quantitative** (items whose reference writes numbers the verifier checks): the share of the
  answer's checked numbers within the tolerance (±10 %) of the study's biomarkers or reference
  values; 0 when it writes none (GROK's rubric: "0 if no numbers").
* **coverage** (items whose reference names biomarkers): the share of those biomarkers the answer names.
* **findings**: qualitative claims that agree / disagree with the reasoner; **invented** lesions
  (claimed present, shown by no measurement); **wrong eye** named.
* **ROUGE-L** F1 with the reference answer (:mod:`grok.eval.text`); BLEU per group (corpus BLEU).

Groups: overall, per task and per category (the study's label). Means, macro F1, accuracy and BLEU
carry 95 % percentile bootstrap intervals: one resampling of the whole benchmark's items
(``bootstrap`` resamples, fixed ``seed``) serves every group, each resample a row of item weights
(how often each item was drawn), so every group statistic of every resample is one matrix product
of those weights with the per-item columns (marks, classification counts, BLEU statistics).

Speed and memory: what the reference answers give (the verifier's reading, ROUGE-L bit masks, the BLEU
table of their n-grams) is computed once per benchmark and reader settings (:func:`reference_readings`,
kept on the :class:`~grok.eval.data.Benchmark`); the predictions are streamed
(:class:`~grok.eval.data.PredictionStream`) and each answer is reduced to its marks as it is read,
so no answer text is kept but the few worst ones the report shows.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import marshal
import math
import os
import struct
import time
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from grok.eval.data import (
    MAX_LISTED,
    Benchmark,
    Item,
    Predictions,
    likely_not_english,
    likely_not_english_words,
    not_english_word,
    open_predictions,
)
from grok.eval.reader import AnswerReader
from grok.eval.text import AnswerWords, BleuRow, BleuTable, RougeRef, bleu_from_stats, rouge_l_with, tokens
from grok.ids import CATEGORIES
from grok.knowledge import load_knowledge_base
from grok.knowledge.lexicon import build_lexicon
from grok.verify.scan import count_rows as _count_rows
from grok.verify.verifier import VerifyConfig

#: Column of the confusion matrix for answers that state no diagnosis.
ABSTAIN = "abstained"
#: Per-answer metrics averaged per group (``None`` values are not applicable and left out).
MEAN_METRICS = ("correct", "quantitative", "coverage", "findings_agreement", "invented", "wrong_eye", "rouge_l")
#: Schema version of the scores JSON (``grok eval compare`` refuses other versions).
SCHEMA = "grok-eval/1"
#: Bootstrap weights are drawn in blocks of at most this many cells (resamples x items), so memory stays
#: bounded whatever the number of answers.
BOOTSTRAP_BLOCK_CELLS = 1 << 18
#: BLEU statistics are computed for the answers of about this many 13a tokens together
#: (:meth:`~grok.eval.text.BleuTable.stats`; memory about 100 bytes a token while they are).
BLEU_BATCH_TOKENS = 1 << 14


#: Counts kept per item (eval.json's per-item rows hold them with the marks).
COUNT_FIELDS = ("numbers_checked", "numbers_wrong", "reference_numbers_checked", "reference_numbers_wrong",
                "findings_agree", "findings_disagree")
#: An item's status: answered, an empty answer, no answer, or a study whose evidence cannot be read.
STATUSES = ("missing", "answered", "empty", "unscorable")
_MISSING, _ANSWERED, _EMPTY, _UNSCORABLE = range(4)
#: The marks of every benchmark item while scoring, one record an item in benchmark order (about 110
#: bytes; NaN: not applicable; ``predicted``: index of the stated diagnosis among the names seen, -1 none).
MARKS_DTYPE = np.dtype([("status", np.int8), ("classified", np.bool_), ("not_english", np.bool_),
                        ("predicted", np.int16), *[(m, np.float64) for m in MEAN_METRICS],
                        *[(c, np.int32) for c in COUNT_FIELDS]])
#: The fields of an eval.json per-item row, in order.
ITEM_FIELDS = ("id", "study_id", "task", "category", "status", "classified", "predicted", "correct", "quantitative",
               "numbers_checked", "numbers_wrong", "reference_numbers_checked", "reference_numbers_wrong", "coverage",
               "findings_agree", "findings_disagree", "findings_agreement", "invented", "wrong_eye", "rouge_l",
               "not_english")
_NAN = math.nan
#: The cache file's first 8 bytes: the length of its marshal header.
_HEADER_SIZE = struct.Struct("<Q")


def _aligned(at: int) -> int:
    return (at + 7) & ~7

#: JSON text of a string as ``json.dumps(..., ensure_ascii=False)`` writes it.
_ENCODE_STR = json.encoder.encode_basestring


@dataclass(slots=True)
class RefReading:
    """What scoring needs from one reference answer, read once: whether it states a diagnosis, whether it
    writes numbers the verifier checks, the biomarkers it names, and its ROUGE-L and BLEU forms."""

    classified: bool
    checks_numbers: bool
    biomarkers: frozenset[str]
    rouge: RougeRef | None
    bleu: BleuRow | None


class ReferenceReadings(dict):
    """:class:`RefReading` by item id, with what scoring shares across the answers: the references' BLEU
    n-grams (``table``, :class:`~grok.eval.text.BleuTable`) and the answers' words seen (``words``,
    :class:`~grok.eval.text.AnswerWords`)."""

    def __init__(self, readings: dict[str, RefReading], table: BleuTable):
        super().__init__(readings)
        self.table = table
        self.words = AnswerWords(table, not_english_word)


def _share(n: int, d: int) -> float:
    return _NAN if d == 0 else n / d


# -- the reference readings, kept per process and cached on disk -----------------------------------
#: Version of the on-disk format of :func:`reference_readings`' cache: the length of a ``marshal`` header (8 bytes,
#: little-endian), the header ``(key, readings, BLEU vocabulary, [(dtype, bytes of the array)], ROUGE-L vocabulary)``
#: (a reading: whether it states a diagnosis and checks numbers, its biomarkers, its ROUGE-L token ids and bit rows as
#: bytes, its tokens, its BLEU row), then the BLEU table's arrays, raw (loaded without a copy: ``np.frombuffer`` over
#: the file's bytes, each at a multiple of 8).
REF_CACHE_FORMAT = 3
#: Sources whose code decides a reference reading (the verifier, the facts it reads, the text forms):
#: a change to any of them makes a new cache key.
_READING_SOURCES = ("grok/verify/*.py", "grok/knowledge/lexicon.py", "grok/instruct/records.py",
                    "grok/instruct/evidence.py", "grok/instruct/boxes.py", "grok/instruct/phrasing.py",
                    "grok/eval/reader.py", "grok/eval/text.py", "grok/eval/score.py")


@lru_cache(maxsize=1)
def reading_source_digest() -> str:
    """SHA-256 of the source files that decide how an answer is read (:data:`_READING_SOURCES`)."""
    root = Path(__file__).resolve().parents[2]
    h = hashlib.sha256()
    for pattern in _READING_SOURCES:
        for f in sorted(root.glob(pattern)):
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def _lexicon_digest(lex) -> str:
    tables = {k: getattr(lex, k) for k in ("biomarker_alias", "disease_alias", "disease_names", "presence_alias",
                                            "biomarker_units", "biomarker_names")}
    return hashlib.sha256(json.dumps(tables, sort_keys=True, default=list).encode()).hexdigest()


def reference_cache_key(bench: Benchmark, reader: AnswerReader) -> str | None:
    """The key of ``bench``'s reference readings on disk: the version (name, fingerprint, config, split),
    the knowledge-base snapshot, the reader's settings (the tolerance) and lexicon, and the digest of the
    code that reads (:func:`reading_source_digest`). None for a benchmark without a fingerprint."""
    if not bench.fingerprint:
        return None
    lex_digest = reader.__dict__.get("_lexicon_digest")
    if lex_digest is None:
        lex_digest = reader.__dict__["_lexicon_digest"] = _lexicon_digest(reader.lex)
    parts = {"format": REF_CACHE_FORMAT, "dataset": bench.dataset, "fingerprint": bench.fingerprint,
             "config": bench.config, "split": bench.split, "kb_snapshot": bench.kb_snapshot,
             "reader": type(reader).__qualname__, "settings": reader.config.model_dump(mode="json"),
             "lexicon": lex_digest, "source": reading_source_digest()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _read_references(bench: Benchmark, reader: AnswerReader) -> ReferenceReadings:
    refs = {}
    texts: list[str | None] = []  # the BLEU table's rows: one per benchmark item, None without a reference
    vocab: dict[str, int] = {}  # the ROUGE-L tokens' ids, shared by the references
    for rid, item in bench.items.items():
        if item.facts is None:
            texts.append(None)
            continue
        texts.append(item.reference or None)
        r = reader.read(item.question, item.reference, item.facts, item.images)
        refs[rid] = RefReading(r.diagnosis is not None, r.numbers_checked > 0, r.biomarkers_named,
                               RougeRef(tokens(item.reference), vocab) if item.reference else None,
                               len(texts) - 1 if item.reference else None)
    table = BleuTable(texts)
    for r in refs.values():
        if r.bleu is not None:
            r.bleu = BleuRow(table, r.bleu)
    return ReferenceReadings(refs, table)


def _load_refs(path: Path, key: str) -> ReferenceReadings | None:
    try:
        buf = path.read_bytes()
        (size,) = _HEADER_SIZE.unpack_from(buf)
        data = marshal.loads(memoryview(buf)[_HEADER_SIZE.size:_HEADER_SIZE.size + size])
        if not isinstance(data, tuple) or len(data) != 5 or data[0] != key:
            return None
        vocab = {w: i for i, w in enumerate(data[4])}  # the references' ROUGE-L tokens
        arrays, at = [], _aligned(_HEADER_SIZE.size + size)
        for dt, nbytes in data[3]:
            dtype = np.dtype(dt)
            if nbytes % dtype.itemsize or at + nbytes > len(buf):
                return None
            arrays.append(np.frombuffer(buf, dtype=dtype, count=nbytes // dtype.itemsize, offset=at))
            at = _aligned(at + nbytes)
        table = BleuTable.from_arrays(data[2], arrays)
    except (OSError, EOFError, ValueError, TypeError, struct.error):
        return None
    return ReferenceReadings({
        rid: RefReading(c, q, frozenset(bms), None if ids is None else RougeRef.from_arrays(vocab, ids, bits, n),
                        None if row < 0 else BleuRow(table, row))
        for rid, (c, q, bms, ids, bits, n, row) in data[1].items()}, table)


def _save_refs(path: Path, key: str, refs: ReferenceReadings) -> None:
    # one object per distinct word and biomarker id, so marshal writes each once and the others as references
    # (a smaller file, and loading makes one string per word instead of one per reference using it)
    one: dict[str, str] = {}
    vocab: dict[str, int] = {}  # the ROUGE-L token ids of the references (one vocabulary, or each one's renumbered)
    rouge: dict[str, tuple[bytes, bytes]] = {}
    for rid, r in refs.items():
        if r.rouge is not None:
            if not vocab:
                vocab = r.rouge.vocab
            rouge[rid] = (r.rouge.ids, r.rouge.bits) if r.rouge.vocab is vocab else _renumbered(r.rouge, vocab)
    data = {rid: (r.classified, r.checks_numbers, tuple(one.setdefault(b, b) for b in sorted(r.biomarkers)),
                  *rouge.get(rid, (None, None)), 0 if r.rouge is None else r.rouge.n,
                  -1 if r.bleu is None else r.bleu.row)
            for rid, r in refs.items()}
    words, arrays = refs.table.arrays()
    header = marshal.dumps((key, data, words, [(a.dtype.str, a.nbytes) for a in arrays], list(vocab)))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with tmp.open("wb") as fh:  # each array at a multiple of 8 bytes (aligned in the buffer it is read into)
            at = fh.write(_HEADER_SIZE.pack(len(header))) + fh.write(header)
            for a in arrays:
                at += fh.write(b"\0" * (_aligned(at) - at))
                at += fh.write(np.ascontiguousarray(a).data)
        tmp.replace(path)
    except OSError:
        pass  # a cache that cannot be written is only slower next time


def _renumbered(ref: RougeRef, vocab: dict[str, int]) -> tuple[bytes, bytes]:
    """The :attr:`~grok.eval.text.RougeRef.ids` and ``bits`` of ``ref`` over ``vocab`` (its tokens added to it): a
    reference read with another vocabulary, saved with the others."""
    masks = {vocab.setdefault(t, len(vocab)): m for t, m in ref.masks.items()}
    size = 8 * ((ref.n + 63) // 64)
    order = sorted(masks)
    return array("i", order).tobytes(), b"".join([masks[t].to_bytes(size, "little") for t in order])


def default_cache_dir() -> Path:
    """Where ``grok eval`` keeps reference readings: ``$GROK_EVAL_CACHE``, else ``$XDG_CACHE_HOME/grok/eval``
    (``~/.cache/grok/eval``)."""
    env = os.environ.get("GROK_EVAL_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "grok" / "eval"


def reference_readings(bench: Benchmark, reader: AnswerReader,
                       cache_dir: str | Path | None = None) -> ReferenceReadings:
    """The :class:`RefReading` of every scorable item, computed on first use per reader settings and kept
    on ``bench`` (a second model scored on the same benchmark reads no reference again).

    ``cache_dir``: also keep them on disk (one file per :func:`reference_cache_key`, written with
    ``marshal``), so a new process scoring a model on the same version, knowledge base, tolerance and
    reading code loads them instead of reading the references again. Benchmarks without a fingerprint
    are not cached on disk."""
    key = (type(reader).__qualname__, reader.config.tolerance)
    refs = bench.readings.get(key)
    if refs is not None:
        return refs
    disk_key = reference_cache_key(bench, reader) if cache_dir is not None else None
    path = Path(cache_dir) / f"refs-{disk_key[:40]}.marshal" if disk_key else None
    refs = _load_refs(path, disk_key) if path is not None and path.is_file() else None
    if refs is None:
        refs = _read_references(bench, reader)
        if path is not None:
            _save_refs(path, disk_key, refs)
    bench.readings[key] = refs
    return refs


# -- one answer --------------------------------------------------------------------------------------
def unanswered(ref: RefReading | None, status: int = _MISSING) -> tuple:
    """The marks (a :data:`MARKS_DTYPE` record) of an item without an answer (``_MISSING``, ``_EMPTY``) or
    without usable facts (``ref`` None: unscorable)."""
    if ref is None:
        return (_UNSCORABLE, False, False, -1, _NAN, _NAN, _NAN, _NAN, 0.0, 0.0, _NAN, 0, 0, 0, 0, 0, 0)
    return (status, ref.classified, False, -1, 0.0 if ref.classified else _NAN, 0.0 if ref.checks_numbers else _NAN,
            0.0 if ref.biomarkers else _NAN, _NAN, 0.0, 0.0, 0.0 if ref.rouge is not None else _NAN, 0, 0, 0, 0, 0, 0)


def score_answer(item: Item, answer: str, reader: AnswerReader, ref: RefReading, rouge_tokens: list[str] | None = None,
                 not_english: bool | None = None) -> tuple[tuple, str | None]:
    """The marks (a :data:`MARKS_DTYPE` record, ``predicted`` left -1) of one non-empty answer to a scorable
    item, and the diagnosis it states (None: an abstention). ``rouge_tokens`` (:func:`~grok.eval.text.tokens`
    of the answer) and ``not_english`` (:func:`~grok.eval.data.likely_not_english`): computed when not given."""
    got = reader.read(item.question, answer, item.facts, item.images)
    if not_english is None:
        not_english = likely_not_english(answer)
    nc = got.numbers_checked
    if ref.checks_numbers:
        quant = (nc - got.numbers_wrong) / nc if nc else 0.0
    else:
        quant = _NAN
    agree, disagree = got.findings_agree, got.findings_disagree
    return ((_ANSWERED, ref.classified, not_english, -1,
             float(got.diagnosis == item.label) if ref.classified else _NAN, quant,
             _share(len(got.biomarkers_named & ref.biomarkers), len(ref.biomarkers)),
             _share(agree, agree + disagree), float(got.invented), float(got.wrong_eye),
             rouge_l_with(tokens(answer) if rouge_tokens is None else rouge_tokens, ref.rouge)
             if ref.rouge is not None else _NAN,
             nc, got.numbers_wrong, got.reference_numbers_checked, got.reference_numbers_wrong, agree, disagree),
            got.diagnosis)


def _none(x: float) -> float | None:
    return None if x != x else x


def item_rows(items, marks: np.ndarray, names: list[str], chunk: int = 4096) -> Iterator[dict[str, Any]]:
    """eval.json's per-item rows (:data:`ITEM_FIELDS`) of ``items`` (benchmark :class:`Item` objects, in the
    order of their ``marks``), ``chunk`` records converted at a time."""
    it = iter(items)
    for a in range(0, len(marks), chunk):
        for (st, cls, ne, pred, *fl, c0, c1, c2, c3, c4, c5) in marks[a:a + chunk].tolist():
            item = next(it)
            correct, quant, cov, fa, inv, eye, rouge = fl
            yield {"id": item.id, "study_id": item.study_id, "task": item.task, "category": item.label,
                   "status": STATUSES[st], "classified": cls, "predicted": names[pred] if pred >= 0 else None,
                   "correct": _none(correct), "quantitative": _none(quant), "numbers_checked": c0,
                   "numbers_wrong": c1, "reference_numbers_checked": c2, "reference_numbers_wrong": c3,
                   "coverage": _none(cov), "findings_agree": c4, "findings_disagree": c5,
                   "findings_agreement": _none(fa), "invented": inv, "wrong_eye": eye, "rouge_l": _none(rouge),
                   "not_english": ne}


def item_lines(items, marks: np.ndarray, names: list[str], chunk: int = 4096) -> Iterator[str]:
    """The JSON lines of :func:`item_rows` (``json.JSONEncoder(ensure_ascii=False)``'s text of each row, with
    its newline), formatted directly: the same text without a dict and an encoder call per item."""
    enc = _ENCODE_STR
    status = [enc(x) for x in STATUSES]
    predicted = [enc(x) for x in names]
    flag = {True: "true", False: "false"}

    def num(x: float) -> str:
        return "null" if x != x else repr(x)

    it = iter(items)
    for a in range(0, len(marks), chunk):
        for (st, cls, ne, pred, correct, quant, cov, fa, inv, eye, rouge, c0, c1, c2, c3, c4, c5) \
                in marks[a:a + chunk].tolist():
            item = next(it)
            yield (f'{{"id": {enc(item.id)}, "study_id": {enc(item.study_id)}, "task": {enc(item.task)}, '
                   f'"category": {enc(item.label)}, "status": {status[st]}, "classified": {flag[cls]}, '
                   f'"predicted": {predicted[pred] if pred >= 0 else "null"}, "correct": {num(correct)}, '
                   f'"quantitative": {num(quant)}, "numbers_checked": {c0}, "numbers_wrong": {c1}, '
                   f'"reference_numbers_checked": {c2}, "reference_numbers_wrong": {c3}, "coverage": {num(cov)}, '
                   f'"findings_agree": {c4}, "findings_disagree": {c5}, "findings_agreement": {num(fa)}, '
                   f'"invented": {inv!r}, "wrong_eye": {eye!r}, "rouge_l": {num(rouge)}, '
                   f'"not_english": {flag[ne]}}}\n')


def write_item_lines(lines, path: str | Path) -> Path:
    """Write JSON lines (:func:`item_lines`) to ``path``, atomically; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.writelines(lines)
    tmp.replace(p)
    return p


def write_items(rows, path: str | Path) -> Path:
    """Write per-item rows as JSONL (one row a line, streamed), atomically; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode
    with tmp.open("w", encoding="utf-8") as fh:
        fh.writelines(dumps(r) + "\n" for r in rows)
    tmp.replace(p)
    return p


def iter_items(res: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The per-item rows of a scores dict: its ``items`` list, or its ``items_file`` (JSONL) read line by line."""
    if isinstance(res.get("items"), list):
        yield from res["items"]
        return
    with Path(res["items_file"]).open("r", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


# -- aggregation ---------------------------------------------------------------------------------
def resample_weights(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Bootstrap resamples of ``n`` items as weights (how often each item is drawn), ``(block, n)`` float32
    blocks of at most :data:`BOOTSTRAP_BLOCK_CELLS` cells, ``resamples`` rows in all, from ``seed``."""
    if n == 0 or resamples <= 0:
        return
    rng = np.random.default_rng(seed)
    block = max(1, min(resamples, BOOTSTRAP_BLOCK_CELLS // n))
    done = 0
    while done < resamples:
        b = min(block, resamples - done)
        draws = rng.integers(0, n, size=(b, n), dtype=np.int32)
        if _count_rows is not None:  # compiled (grok.verify._cscan): each row's counts added in place
            w = np.zeros((b, n), dtype=np.float32)
            _count_rows(draws, w)
            yield w
        else:
            draws = draws.astype(np.intp)  # bincount counts intp
            draws += (np.arange(b, dtype=np.intp) * n)[:, None]
            yield np.bincount(draws.ravel(), minlength=b * n).reshape(b, n).astype(np.float32)
        done += b


def _ci_columns(samples: np.ndarray) -> list[list[float] | None]:
    """95 % percentile interval of each column (non-finite resamples left out; ``None`` if none is left).
    The columns without a non-finite value are done in one call (numpy's per-column arithmetic is the same)."""
    finite = np.isfinite(samples)
    whole = finite.all(axis=0)
    if whole.any():
        lo_hi = np.percentile(samples[:, whole], [2.5, 97.5], axis=0)
    out: list[list[float] | None] = []
    j = 0
    for i, col in enumerate(samples.T):
        if whole[i]:
            out.append([round(float(lo_hi[0, j]), 4), round(float(lo_hi[1, j]), 4)])
            j += 1
            continue
        c = col[finite[:, i]]
        out.append(None if c.size == 0 else [round(float(v), 4) for v in np.percentile(c, [2.5, 97.5])])
    return out


def _f1_from_counts(tp: np.ndarray, pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(pred > 0, tp / np.maximum(pred, 1), 0.0)
        r = np.where(true > 0, tp / np.maximum(true, 1), 0.0)
        return np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)


def class_index(true: list[str], pred: list[str | None]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(classes: the knowledge-base categories then any other label seen, true index, predicted index with
    ``len(classes)`` for an abstention)."""
    classes = list(CATEGORIES)
    classes += sorted({c for c in true if c not in classes} | {p for p in pred if p is not None and p not in classes})
    col = {c: i for i, c in enumerate(classes)}
    k = len(classes)
    return (classes, np.array([col[c] for c in true], dtype=np.int64),
            np.array([k if x is None else col[x] for x in pred], dtype=np.int64))


def class_columns(t: np.ndarray, p: np.ndarray, k: int, mask: np.ndarray | None = None,
                  out: np.ndarray | None = None) -> np.ndarray:
    """Per item, ``3k`` indicator columns (true positive of class c, predicted c, truly c; zero rows where
    ``mask`` is false): summed with bootstrap weights they give each resample's per-class counts. ``out``: a
    zeroed ``(n, 3k)`` array (or view) to write them to."""
    n = len(t)
    cols = np.zeros((n, 3 * k), dtype=np.float32) if out is None else out
    keep = np.ones(n, dtype=bool) if mask is None else mask
    rows = np.flatnonzero(keep)
    hit = rows[t[rows] == p[rows]]
    cols[hit, t[hit]] = 1.0
    said = rows[p[rows] < k]
    cols[said, k + p[said]] = 1.0
    cols[rows, 2 * k + t[rows]] = 1.0
    return cols


def macro_f1_accuracy(sums: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Macro F1 (over the classes present) and accuracy per row of summed :func:`class_columns`."""
    tp, pred, true = sums[:, :k].astype(float), sums[:, k:2 * k].astype(float), sums[:, 2 * k:].astype(float)
    f1 = _f1_from_counts(tp, pred, true)
    present = true > 0
    n = true.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        macro = np.where(present.any(axis=1), (f1 * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1), np.nan)
        acc = np.where(n > 0, tp.sum(axis=1) / np.maximum(n, 1), np.nan)
    return macro, acc


def resampled_metrics(sums: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean of each of :data:`MEAN_METRICS`, macro F1, accuracy) per resample, from weighted sums of the
    per-item columns [marks | marks present | :func:`class_columns`] (columns after those are ignored)."""
    m = len(MEAN_METRICS)
    s = np.asarray(sums, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(s[:, m:2 * m] > 0, s[:, :m] / np.maximum(s[:, m:2 * m], 1e-12), np.nan)
    macro, acc = macro_f1_accuracy(s[:, 2 * m:2 * m + 3 * k], k)
    return means, macro, acc


def classification(true: list[str], pred: list[str | None]) -> dict[str, Any]:
    """Per-class precision/recall/F1, macro F1 over the classes that occur in ``true``, the confusion
    matrix (rows: true, columns: predicted + ``abstained``), abstentions."""
    classes, t, p = class_index(true, pred)
    k = len(classes)
    n = len(t)
    if n == 0:
        return {"n": 0, "macro_f1": None, "accuracy": None, "abstained": 0, "per_class": {}, "confusion": None}
    conf = np.bincount(t * (k + 1) + p, minlength=k * (k + 1)).reshape(k, k + 1)
    tp = np.diag(conf[:, :k]).astype(float)
    pred_n = conf[:, :k].sum(axis=0).astype(float)
    true_n = conf.sum(axis=1).astype(float)
    f1 = _f1_from_counts(tp, pred_n, true_n)
    present = true_n > 0
    per_class = {}
    for i, c in enumerate(classes):
        if true_n[i] == 0 and pred_n[i] == 0:
            continue
        per_class[c] = {"precision": round(float(tp[i] / pred_n[i]), 4) if pred_n[i] else None,
                        "recall": round(float(tp[i] / true_n[i]), 4) if true_n[i] else None,
                        "f1": round(float(f1[i]), 4), "support": int(true_n[i]), "predicted": int(pred_n[i])}
    return {"n": n, "macro_f1": round(float(f1[present].mean()), 4), "accuracy": round(float(tp.sum() / n), 4),
            "abstained": int((p == k).sum()), "per_class": per_class,
            "confusion": {"classes": list(classes), "columns": classes + [ABSTAIN], "matrix": conf.tolist()}}


class _Table:
    """Every item's marks as columns, in benchmark order: what the groups and the bootstrap read."""

    def __init__(self, marks: np.ndarray, categories: list[str], predicted: list[str | None],
                 stats: np.ndarray | None):
        self.marks = marks
        self.n = n = len(marks)
        m = len(MEAN_METRICS)
        self.categories, self.predicted = categories, predicted
        self.classes, t, p = class_index(categories, predicted)
        self.k = k = len(self.classes)
        self.stats = stats  # (n, 10) BLEU statistics, zero rows for items without a reference; None: no BLEU
        self.has_ref = None if stats is None else stats[:, 1] > 0
        # one matrix per item: [marks | marks present | classification counts | BLEU statistics], filled in place
        self.x = x = np.zeros((n, 2 * m + 3 * k + (0 if stats is None else stats.shape[1])), dtype=np.float32)
        for j, metric in enumerate(MEAN_METRICS):
            col = marks[metric]
            ok = np.isfinite(col)
            x[:, j] = np.where(ok, col, 0.0)
            x[:, m + j] = ok
        class_columns(t, p, k, marks["classified"], out=x[:, 2 * m:2 * m + 3 * k])
        if stats is not None:
            x[:, 2 * m + 3 * k:] = stats

    def bootstrap(self, groups: dict[str, np.ndarray], resamples: int, seed: int) -> dict[str, dict[str, Any]]:
        """Per group (item index arrays), the 95 % intervals of the means, macro F1, accuracy and BLEU."""
        k, m = self.k, len(MEAN_METRICS)
        acc: dict[str, list[np.ndarray]] = {g: [] for g in groups}
        x = self.x
        for w in resample_weights(self.n, resamples, seed):
            for g, idx in groups.items():
                acc[g].append(w[:, idx] @ x[idx] if len(idx) < self.n else w @ x)
        out: dict[str, dict[str, Any]] = {}
        for g, blocks in acc.items():
            if not blocks:
                out[g] = {}
                continue
            sums = np.vstack(blocks)
            means, macro, accuracy = resampled_metrics(sums, k)
            columns = [means, macro[:, None], accuracy[:, None]]
            if self.stats is not None:
                columns.append(bleu_from_stats(sums[:, 2 * m + 3 * k:])[:, None])
            cis = _ci_columns(np.hstack(columns))  # one call: each column's interval is its own
            res = {"means": dict(zip(MEAN_METRICS, cis[:m])), "macro_f1": cis[m], "accuracy": cis[m + 1]}
            if self.stats is not None:
                res["bleu"] = cis[m + 2]
            out[g] = res
        return out

    def summary(self, idx: np.ndarray, boot: dict[str, Any]) -> dict[str, Any]:
        """Group metrics (see the module docstring) of the items ``idx``."""
        mk = self.marks[idx]
        out: dict[str, Any] = {"n": len(idx), "status": dict(Counter(STATUSES[s] for s in mk["status"].tolist()))}
        for metric in MEAN_METRICS:
            col = mk[metric]
            ok = np.isfinite(col)
            n = int(ok.sum())
            out[metric] = {"mean": round(float(col[ok].mean()), 4) if n else None, "n": n,
                           "ci95": (boot.get("means") or {}).get(metric) if n else None}
        cls = idx[mk["classified"]].tolist()
        c = classification([self.categories[i] for i in cls], [self.predicted[i] for i in cls])
        if c["n"] and boot:
            c["macro_f1_ci95"], c["accuracy_ci95"] = boot["macro_f1"], boot["accuracy"]
        out["classification"] = c
        if self.stats is None:
            out["bleu"] = None
        else:
            rows = self.stats[idx][self.has_ref[idx]]
            score = float(bleu_from_stats(rows.sum(axis=0, dtype=np.int64))) if len(rows) else math.nan
            out["bleu"] = None if not len(rows) else {
                "score": None if math.isnan(score) else round(score, 2), "n": int(len(rows)),
                "ci95": boot.get("bleu") if boot and not math.isnan(score) else None}
        for key in ("findings_agree", "findings_disagree", "numbers_checked", "numbers_wrong",
                    "reference_numbers_checked", "reference_numbers_wrong"):
            out[key] = int(mk[key].sum(dtype=np.int64))
        return out


def _total(correct, quantitative, coverage, findings_agreement, rouge_l, invented, wrong_eye) -> float:
    marks = [m for m in (correct, quantitative, coverage, findings_agreement, rouge_l) if m is not None and m == m]
    marks += [1.0 - min(1.0, invented), 1.0 - wrong_eye]
    return sum(marks) / len(marks)


def _row_total(row: tuple) -> float:
    """:func:`_total` of an answer's marks (a :data:`MARKS_DTYPE` record as :func:`score_answer` gives it: floats,
    NaN where not applicable), the same sum in the same order without the calls."""
    correct, quantitative, coverage, agreement, invented, wrong_eye, rouge_l = row[4:11]
    marks = [m for m in (correct, quantitative, coverage, agreement, rouge_l) if m == m]
    marks.append(1.0 - (invented if invented < 1.0 else 1.0))
    marks.append(1.0 - wrong_eye)
    return sum(marks) / len(marks)


def item_total(s: dict[str, Any]) -> float:
    """One number per answer for ranking the worst: the mean of its applicable marks (lower is worse)."""
    return _total(s.get("correct"), s.get("quantitative"), s.get("coverage"), s.get("findings_agreement"),
                  s.get("rouge_l"), s["invented"], s["wrong_eye"])


class _Worst:
    """The ``n`` answered items with the lowest :func:`item_total` (ties by id) and their answers: the only
    answer texts scoring keeps. The verifier's reasons are made for the ``n`` kept at the end."""

    def __init__(self, n: int):
        self.n = n
        self.rows: list[tuple[float, str, int, str]] = []

    def offer(self, total: float, rid: str, i: int, answer: str) -> None:
        if self.n <= 0:
            return
        if len(self.rows) >= self.n and (total, rid) >= self.rows[-1][:2]:
            return
        self.rows.append((total, rid, i, answer))
        if len(self.rows) >= 4 * self.n:
            self._trim()

    def _trim(self) -> None:
        self.rows.sort(key=lambda r: r[:2])
        del self.rows[self.n:]

    def result(self, bench: Benchmark, marks: np.ndarray, names: list[str], reader: AnswerReader) -> list[dict]:
        self._trim()
        items = bench.items
        out = []
        for total, rid, i, answer in self.rows:
            item = items[rid]
            row = next(item_rows((item,), marks[i:i + 1], names))
            reasons = reader.reasons(item.question, answer, item.facts, item.images)
            out.append({**row, "reasons": reasons, "answer": answer, "total": round(total, 4)})
        return out


def _cyclic_gc_paused(fn):
    """``fn`` run with Python's cyclic garbage collector off (and on again after, if it was): scoring makes no
    reference cycles (none is left to collect after a scoring of 1,200 answers), so the collector's passes, which
    walk the benchmark, the knowledge base and the growing per-word caches, would find nothing; reference counting
    frees everything as before."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        if not gc.isenabled():
            return fn(*args, **kwargs)
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            gc.enable()

    return run


@_cyclic_gc_paused
def evaluate(bench: Benchmark, preds: Predictions | str | Path, resamples: int = 1000, seed: int = 0,
             reader: AnswerReader | None = None, tolerance: float = 0.10, worst: int = 20,
             bleu: bool = True, items_path: str | Path | None = None,
             cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Score ``preds`` (in memory, a :class:`~grok.eval.data.PredictionStream` or a JSONL path, streamed)
    against ``bench``: the scores JSON ``grok eval`` writes (``schema`` ``grok-eval/1``).

    ``bleu=False`` skips BLEU. ``items_path``: write the per-item rows there (JSONL, streamed from the
    marks; the result names it as ``items_file``) instead of returning them as ``items``. ``cache_dir``:
    keep the reference readings on disk there (:func:`reference_readings`)."""

    t0 = time.perf_counter()
    if reader is None:
        reader = AnswerReader(build_lexicon(load_knowledge_base()), VerifyConfig(tolerance=tolerance))
    if isinstance(preds, (str, Path)):
        preds = open_predictions(preds)
    refs = reference_readings(bench, reader, cache_dir)
    problems: dict[str, int] = {}
    examples: dict[str, list[str]] = {}

    def note(problem: str, example: str) -> None:
        problems[problem] = problems.get(problem, 0) + 1
        ex = examples.setdefault(problem, [])
        if len(ex) < MAX_LISTED:
            ex.append(example)

    items = bench.items
    n = len(items)
    pos = bench.positions()
    item_list = list(items.values())
    marks = np.zeros(n, dtype=MARKS_DTYPE)
    scored = np.zeros(n, dtype=bool)
    stats = np.zeros((n, 10), dtype=np.int32) if bleu else None
    names: list[str] = []  # the diagnoses stated, in order of first appearance (MARKS_DTYPE's ``predicted``)
    name_ix: dict[str, int] = {}
    worst_rows = _Worst(worst)
    words, bleu_table = refs.words, refs.table
    # BLEU statistics are computed for BLEU_BATCH_TOKENS tokens of answers at a time: their positions, reference
    # rows, numbers of tokens and token ids
    at: list[int] = []
    pending = 0
    rows: list[int] = []
    lengths: list[int] = []
    ids: list[bytes] = []

    def flush() -> None:
        nonlocal pending
        pending = 0
        if at:
            stats[at] = bleu_table.stats(rows, np.frombuffer(b"".join(ids), dtype=np.int64), lengths)
            for buf in (at, rows, lengths, ids):
                buf.clear()

    for rid, ans in preds.pairs(pos):
        i = pos.get(rid)
        if i is None:
            note("unknown_id", rid)
            continue
        ref = refs.get(rid)
        if ref is None:
            continue  # unscorable: counted below with the items no one answered
        scored[i] = True
        if not ans or ans.isspace():  # (what strip() would leave empty, without the copy)
            marks[i] = unanswered(ref, _EMPTY)
            if stats is not None and ref.bleu is not None:
                stats[i, 1] = ref.bleu.length
            continue
        bleu_ids, rouge_tokens, flags = words(ans)
        row, dx = score_answer(item_list[i], ans, reader, ref, rouge_tokens,
                               likely_not_english_words(ans, flags))
        if dx is not None:
            j = name_ix.get(dx)
            if j is None:
                j = name_ix[dx] = len(names)
                names.append(dx)
            row = (*row[:3], j, *row[4:])
        marks[i] = row
        if stats is not None and ref.bleu is not None:
            at.append(i)
            rows.append(ref.bleu.row)
            lengths.append(len(bleu_ids) // 8)
            ids.append(bleu_ids)
            pending += len(bleu_ids)
            if pending >= 8 * BLEU_BATCH_TOKENS:
                flush()
        worst_rows.offer(_row_total(row), rid, i, ans)
    if stats is not None:
        flush()
    # every benchmark item, in benchmark order; no answer is an abstention, an empty answer too
    for i in np.flatnonzero(~scored).tolist():
        ref = refs.get(item_list[i].id)
        marks[i] = unanswered(ref, _MISSING)
        if stats is not None and ref is not None and ref.bleu is not None:
            stats[i, 1] = ref.bleu.length
    del scored
    for item, st, ne in zip(item_list, marks["status"].tolist(), marks["not_english"].tolist(), strict=True):
        if st == _MISSING:
            note("missing_id", item.id)
        elif st == _EMPTY:
            note("empty_answer", item.id)
        elif st == _UNSCORABLE:
            note("unscorable_item", f"{item.id}: {item.facts_error}")
        if ne:
            note("likely_not_english", item.id)
    # the file's own problems (counted while it was read) first
    problems = {**preds.problems, **problems}
    examples = {**{k: list(v) for k, v in preds.examples.items()}, **examples}
    table = _Table(marks, [it.label for it in item_list],
                   [names[p] if p >= 0 else None for p in marks["predicted"].tolist()], stats)
    groups: dict[str, np.ndarray] = {"overall": np.arange(n)}
    by: dict[str, dict[str, list[int]]] = {"task": {}, "category": {}}
    for i, it in enumerate(item_list):
        by["task"].setdefault(it.task, []).append(i)
        by["category"].setdefault(it.label, []).append(i)
    for kind, gs in by.items():
        for g, idx in gs.items():
            groups[f"{kind}:{g}"] = np.array(idx, dtype=np.int64)
    boot = table.bootstrap(groups, resamples, seed)
    result = {
        "schema": SCHEMA,
        "dataset": bench.dataset, "fingerprint": bench.fingerprint, "config": bench.config, "split": bench.split,
        "kb_snapshot": bench.kb_snapshot, "predictions": preds.path, "tolerance": reader.config.tolerance,
        "bootstrap": {"resamples": resamples, "seed": seed, "interval": "95 % percentile",
                      "scheme": "benchmark items resampled once for all groups"},
        "counts": {"benchmark_items": n, "prediction_lines": preds.lines,
                   "scored_answers": int((marks["status"] == _ANSWERED).sum()),
                   "cut_by_generation_budget": preds.cut_by_length},
        "problems": problems, "problem_examples": examples,
        "predictions_name_dataset": preds.datasets_named,
        "bleu_note": ("BLEU not computed (--no-bleu)" if not bleu else
                      "corpus BLEU (sacrebleu's definition: 13a tokens, 4-grams, exp smoothing) over each group's "
                      "items with a reference"),
        "overall": table.summary(groups["overall"], boot.get("overall", {})),
        "per_task": {g: table.summary(groups[f"task:{g}"], boot.get(f"task:{g}", {})) for g in sorted(by["task"])},
        "per_category": {g: table.summary(groups[f"category:{g}"], boot.get(f"category:{g}", {}))
                         for g in sorted(by["category"])},
    }
    del table, by, groups
    if items_path is not None:
        result["items_file"] = str(write_item_lines(item_lines(item_list, marks, names), items_path))
    else:
        result["items"] = list(item_rows(item_list, marks, names))
    other = [d for d in preds.datasets_named if d != bench.dataset]
    if other:
        problems["predictions_for_another_version"] = sum(preds.datasets_named[d] for d in other)
        examples["predictions_for_another_version"] = other[:MAX_LISTED]
    result["worst"] = worst_rows.result(bench, marks, names, reader)
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return result


def write_scores(result: dict[str, Any], path: str | Path) -> Path:
    """Write the scores JSON (NaN as null) to ``path`` (parents created); returns the path. An ``items_file``
    is written relative to the scores file's folder."""
    def clean(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        if isinstance(o, (np.floating, np.integer)):
            return clean(o.item())
        return o

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if result.get("items_file"):  # named relative to the scores file, so the folder can move
        result = {**result, "items_file": os.path.relpath(Path(result["items_file"]).resolve(), p.parent.resolve())}
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(clean(result), indent=1, ensure_ascii=False), encoding="utf-8")
    tmp.replace(p)
    return p
