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

Speed and memory: what the reference answers give (the verifier's reading, ROUGE-L bit masks, BLEU
n-gram counts) is computed once per benchmark and reader settings (:func:`reference_readings`,
kept on the :class:`~grok.eval.data.Benchmark`); the predictions are streamed
(:class:`~grok.eval.data.PredictionStream`) and each answer is reduced to its marks as it is read,
so no answer text is kept but the few worst ones the report shows.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from grok.eval.data import MAX_LISTED, Benchmark, Item, Predictions, likely_not_english, open_predictions
from grok.eval.reader import AnswerReader
from grok.eval.text import BleuRef, RougeRef, bleu_from_stats, bleu_stats, rouge_l_with, tokens
from grok.ids import CATEGORIES
from grok.knowledge import load_knowledge_base
from grok.knowledge.lexicon import build_lexicon
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


@dataclass(slots=True)
class ItemScore:
    """The deterministic marks of one answer (``None``: not applicable to this item)."""

    id: str
    study_id: str
    task: str
    category: str
    status: str  # answered | empty | missing | unscorable
    classified: bool
    predicted: str | None
    correct: float | None
    quantitative: float | None
    numbers_checked: int
    numbers_wrong: int
    reference_numbers_checked: int
    reference_numbers_wrong: int
    coverage: float | None
    findings_agree: int
    findings_disagree: int
    findings_agreement: float | None
    invented: float
    wrong_eye: float
    rouge_l: float | None
    not_english: bool

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _ITEM_FIELDS}


_ITEM_FIELDS = tuple(f.name for f in fields(ItemScore))


@dataclass(slots=True)
class RefReading:
    """What scoring needs from one reference answer, read once: whether it states a diagnosis, whether it
    writes numbers the verifier checks, the biomarkers it names, and its ROUGE-L and BLEU forms."""

    classified: bool
    checks_numbers: bool
    biomarkers: frozenset[str]
    rouge: RougeRef | None
    bleu: BleuRef | None


def _share(n: int, d: int) -> float | None:
    return None if d == 0 else n / d


def reference_readings(bench: Benchmark, reader: AnswerReader) -> dict[str, RefReading]:
    """The :class:`RefReading` of every scorable item, computed on first use per reader settings and kept
    on ``bench`` (a second model scored on the same benchmark reads no reference again)."""
    key = (type(reader).__qualname__, reader.config.tolerance)
    refs = bench.readings.get(key)
    if refs is None:
        refs = {}
        for rid, item in bench.items.items():
            if item.facts is None:
                continue
            r = reader.read(item.question, item.reference, item.facts, item.images)
            refs[rid] = RefReading(r.diagnosis is not None, r.numbers_checked > 0, r.biomarkers_named,
                                   RougeRef(tokens(item.reference)) if item.reference else None,
                                   BleuRef(item.reference) if item.reference else None)
        bench.readings[key] = refs
    return refs


def _base(item: Item) -> dict[str, Any]:
    return {"id": item.id, "study_id": item.study_id, "task": item.task, "category": item.label}


def unanswered(item: Item, ref: RefReading | None, status: str) -> ItemScore:
    """The marks of an item without an answer (``missing``, ``empty``) or without usable facts (``unscorable``)."""
    if ref is None:
        return ItemScore(**_base(item), status="unscorable", classified=False, predicted=None, correct=None,
                         quantitative=None, numbers_checked=0, numbers_wrong=0, reference_numbers_checked=0,
                         reference_numbers_wrong=0, coverage=None, findings_agree=0, findings_disagree=0,
                         findings_agreement=None, invented=0.0, wrong_eye=0.0, rouge_l=None, not_english=False)
    return ItemScore(**_base(item), status=status, classified=ref.classified, predicted=None,
                     correct=0.0 if ref.classified else None, quantitative=0.0 if ref.checks_numbers else None,
                     numbers_checked=0, numbers_wrong=0, reference_numbers_checked=0, reference_numbers_wrong=0,
                     coverage=0.0 if ref.biomarkers else None, findings_agree=0, findings_disagree=0,
                     findings_agreement=None, invented=0.0, wrong_eye=0.0,
                     rouge_l=0.0 if ref.rouge is not None else None, not_english=False)


def score_answer(item: Item, answer: str, reader: AnswerReader, ref: RefReading) -> tuple[ItemScore, list[str]]:
    """The marks of one non-empty answer to a scorable item, and the verifier's reasons."""
    got = reader.read(item.question, answer, item.facts, item.images)
    if ref.checks_numbers:
        quant = (got.numbers_checked - got.numbers_wrong) / got.numbers_checked if got.numbers_checked else 0.0
    else:
        quant = None
    s = ItemScore(
        **_base(item), status="answered", classified=ref.classified, predicted=got.diagnosis,
        correct=float(got.diagnosis == item.label) if ref.classified else None, quantitative=quant,
        numbers_checked=got.numbers_checked, numbers_wrong=got.numbers_wrong,
        reference_numbers_checked=got.reference_numbers_checked, reference_numbers_wrong=got.reference_numbers_wrong,
        coverage=_share(len(got.biomarkers_named & ref.biomarkers), len(ref.biomarkers)),
        findings_agree=got.findings_agree, findings_disagree=got.findings_disagree,
        findings_agreement=_share(got.findings_agree, got.findings_agree + got.findings_disagree),
        invented=float(got.invented), wrong_eye=float(got.wrong_eye),
        rouge_l=rouge_l_with(tokens(answer), ref.rouge) if ref.rouge is not None else None,
        not_english=likely_not_english(answer))
    return s, got.reasons


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
        draws += (np.arange(b, dtype=np.int32) * n)[:, None]
        yield np.bincount(draws.ravel(), minlength=b * n).reshape(b, n).astype(np.float32)
        done += b


def _ci_columns(samples: np.ndarray) -> list[list[float] | None]:
    """95 % percentile interval of each column (non-finite resamples left out; ``None`` if none is left)."""
    out = []
    for col in samples.T:
        c = col[np.isfinite(col)]
        out.append(None if c.size == 0 else [round(float(np.percentile(c, 2.5)), 4),
                                             round(float(np.percentile(c, 97.5)), 4)])
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


def class_columns(t: np.ndarray, p: np.ndarray, k: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Per item, ``3k`` indicator columns (true positive of class c, predicted c, truly c; zero rows where
    ``mask`` is false): summed with bootstrap weights they give each resample's per-class counts."""
    n = len(t)
    cols = np.zeros((n, 3 * k), dtype=np.float32)
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

    def __init__(self, scores: list[ItemScore], stats: np.ndarray | None):
        m = len(MEAN_METRICS)
        self.scores = scores
        vals = np.array([[np.nan if (x := getattr(s, k)) is None else float(x) for k in MEAN_METRICS]
                         for s in scores], dtype=np.float64).reshape(len(scores), m)
        self.ok = np.isfinite(vals)
        self.vals = np.where(self.ok, vals, 0.0)
        cls = np.array([s.classified for s in scores], dtype=bool)
        self.classes, t, p = class_index([s.category for s in scores], [s.predicted for s in scores])
        self.k = len(self.classes)
        self.cls = cls
        self.stats = stats  # (n, 10) BLEU statistics, zero rows for items without a reference; None: no BLEU
        self.has_ref = None if stats is None else stats[:, 1] > 0
        # one matrix per item: [marks | marks present | classification counts | BLEU statistics]
        parts = [self.vals, self.ok.astype(np.float64), class_columns(t, p, self.k, cls)]
        if stats is not None:
            parts.append(stats.astype(np.float64))
        self.x = np.hstack(parts).astype(np.float32)

    def bootstrap(self, groups: dict[str, np.ndarray], resamples: int, seed: int) -> dict[str, dict[str, Any]]:
        """Per group (item index arrays), the 95 % intervals of the means, macro F1, accuracy and BLEU."""
        k = self.k
        acc: dict[str, list[np.ndarray]] = {g: [] for g in groups}
        x = self.x
        for w in resample_weights(len(self.scores), resamples, seed):
            for g, idx in groups.items():
                acc[g].append(w[:, idx] @ x[idx] if len(idx) < len(self.scores) else w @ x)
        out: dict[str, dict[str, Any]] = {}
        for g, blocks in acc.items():
            if not blocks:
                out[g] = {}
                continue
            sums = np.vstack(blocks)
            means, macro, accuracy = resampled_metrics(sums, k)
            cis = _ci_columns(means)
            res = {"means": dict(zip(MEAN_METRICS, cis)), "macro_f1": _ci_columns(macro[:, None])[0],
                   "accuracy": _ci_columns(accuracy[:, None])[0]}
            if self.stats is not None:
                res["bleu"] = _ci_columns(bleu_from_stats(sums[:, 2 * len(MEAN_METRICS) + 3 * k:])[:, None])[0]
            out[g] = res
        return out

    def summary(self, idx: np.ndarray, boot: dict[str, Any]) -> dict[str, Any]:
        """Group metrics (see the module docstring) of the items ``idx``."""
        sc = [self.scores[i] for i in idx]
        out: dict[str, Any] = {"n": len(sc), "status": dict(Counter(s.status for s in sc))}
        for j, metric in enumerate(MEAN_METRICS):
            ok = self.ok[idx, j]
            n = int(ok.sum())
            out[metric] = {"mean": round(float(self.vals[idx, j][ok].mean()), 4) if n else None, "n": n,
                           "ci95": (boot.get("means") or {}).get(metric) if n else None}
        cls = [s for s in sc if s.classified]
        c = classification([s.category for s in cls], [s.predicted for s in cls])
        if c["n"] and boot:
            c["macro_f1_ci95"], c["accuracy_ci95"] = boot["macro_f1"], boot["accuracy"]
        out["classification"] = c
        if self.stats is None:
            out["bleu"] = None
        else:
            rows = self.stats[idx][self.has_ref[idx]]
            score = float(bleu_from_stats(rows.sum(axis=0))) if len(rows) else math.nan
            out["bleu"] = None if not len(rows) else {
                "score": None if math.isnan(score) else round(score, 2), "n": int(len(rows)),
                "ci95": boot.get("bleu") if boot and not math.isnan(score) else None}
        for key in ("findings_agree", "findings_disagree", "numbers_checked", "numbers_wrong",
                    "reference_numbers_checked", "reference_numbers_wrong"):
            out[key] = int(sum(getattr(s, key) for s in sc))
        return out


def item_total(s: dict[str, Any]) -> float:
    """One number per answer for ranking the worst: the mean of its applicable marks (lower is worse)."""
    marks = [s[m] for m in ("correct", "quantitative", "coverage", "findings_agreement", "rouge_l") if s.get(m) is not None]
    marks += [1.0 - min(1.0, s["invented"]), 1.0 - s["wrong_eye"]]
    return sum(marks) / len(marks)


class _Worst:
    """The ``n`` answered items with the lowest :func:`item_total` (ties by id), with their answers and the
    verifier's reasons: the only answer texts scoring keeps."""

    def __init__(self, n: int):
        self.n = n
        self.rows: list[tuple[float, str, dict[str, Any]]] = []

    def offer(self, s: ItemScore, reasons: list[str], answer: str) -> None:
        if self.n <= 0:
            return
        d = s.to_dict()
        total = item_total(d)
        if len(self.rows) >= self.n and (total, s.id) >= self.rows[-1][:2]:
            return
        self.rows.append((total, s.id, {**d, "reasons": list(reasons), "answer": answer}))
        if len(self.rows) >= 4 * self.n:
            self._trim()

    def _trim(self) -> None:
        self.rows.sort(key=lambda r: r[:2])
        del self.rows[self.n:]

    def result(self) -> list[dict[str, Any]]:
        self._trim()
        return [{**d, "total": round(t, 4)} for t, _i, d in self.rows]


def evaluate(bench: Benchmark, preds: Predictions | str | Path, resamples: int = 1000, seed: int = 0,
             reader: AnswerReader | None = None, tolerance: float = 0.10, worst: int = 20,
             bleu: bool = True) -> dict[str, Any]:
    """Score ``preds`` (in memory, a :class:`~grok.eval.data.PredictionStream` or a JSONL path, streamed)
    against ``bench``: the scores JSON ``grok eval`` writes (``schema`` ``grok-eval/1``).

    ``bleu=False`` skips BLEU."""

    t0 = time.perf_counter()
    if reader is None:
        reader = AnswerReader(build_lexicon(load_knowledge_base()), VerifyConfig(tolerance=tolerance))
    if isinstance(preds, (str, Path)):
        preds = open_predictions(preds)
    refs = reference_readings(bench, reader)
    problems: dict[str, int] = {}
    examples: dict[str, list[str]] = {}

    def note(problem: str, example: str) -> None:
        problems[problem] = problems.get(problem, 0) + 1
        ex = examples.setdefault(problem, [])
        if len(ex) < MAX_LISTED:
            ex.append(example)

    items = bench.items
    got: dict[str, tuple[ItemScore, list[int] | None]] = {}
    worst_rows = _Worst(worst)
    for rid, ans in preds.pairs():
        item = items.get(rid)
        if item is None:
            note("unknown_id", rid)
            continue
        ref = refs.get(rid)
        if ref is None:
            continue  # unscorable: counted below with the items no one answered
        if not ans.strip():
            got[rid] = (unanswered(item, ref, "empty"), None)
            continue
        s, reasons = score_answer(item, ans, reader, ref)
        got[rid] = (s, bleu_stats(ans, ref.bleu) if bleu and ref.bleu is not None else None)
        worst_rows.offer(s, reasons, ans)
    # every benchmark item, in benchmark order; no answer is an abstention, an empty answer too
    scores: list[ItemScore] = []
    stats = np.zeros((len(items), 10), dtype=np.int64) if bleu else None
    for i, (rid, item) in enumerate(items.items()):
        ref = refs.get(rid)
        s, row = got.get(rid) or (unanswered(item, ref, "missing"), None)
        if s.status == "missing":
            note("missing_id", rid)
        elif s.status == "empty":
            note("empty_answer", rid)
        elif s.status == "unscorable":
            note("unscorable_item", f"{rid}: {item.facts_error}")
        if s.not_english:
            note("likely_not_english", rid)
        if stats is not None and ref is not None and ref.bleu is not None:
            stats[i] = row if row is not None else (0, ref.bleu.length, 0, 0, 0, 0, 0, 0, 0, 0)
        scores.append(s)
    del got
    # the file's own problems (counted while it was read) first
    problems = {**preds.problems, **problems}
    examples = {**{k: list(v) for k, v in preds.examples.items()}, **examples}
    table = _Table(scores, stats)
    groups: dict[str, np.ndarray] = {"overall": np.arange(len(scores))}
    by: dict[str, dict[str, list[int]]] = {"task": {}, "category": {}}
    for i, s in enumerate(scores):
        by["task"].setdefault(s.task, []).append(i)
        by["category"].setdefault(s.category, []).append(i)
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
        "counts": {"benchmark_items": len(items), "prediction_lines": preds.lines,
                   "scored_answers": sum(1 for s in scores if s.status == "answered"),
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
    for i, sc in enumerate(scores):  # each item's marks as a row of eval.json, replacing its ItemScore
        scores[i] = sc.to_dict()
    result["items"] = scores
    other = [d for d in preds.datasets_named if d != bench.dataset]
    if other:
        problems["predictions_for_another_version"] = sum(preds.datasets_named[d] for d in other)
        examples["predictions_for_another_version"] = other[:MAX_LISTED]
    result["worst"] = worst_rows.result()
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return result


def write_scores(result: dict[str, Any], path: str | Path) -> Path:
    """Write the scores JSON (NaN as null) to ``path`` (parents created); returns the path."""
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
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(clean(result), indent=1, ensure_ascii=False), encoding="utf-8")
    tmp.replace(p)
    return p
