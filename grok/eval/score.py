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

Groups: overall, per task and per category (the study's label). Means and macro F1 carry 95 %
percentile bootstrap intervals (items resampled, ``bootstrap`` resamples, fixed ``seed``).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from grok.eval.data import MAX_LISTED, Benchmark, Item, Predictions, likely_not_english
from grok.eval.reader import AnswerReader
from grok.eval.text import SACREBLEU_INSTALL, bleu_from_stats, bleu_segment_stats, rouge_l
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


@dataclass
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
    reasons: list[str]

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in _ITEM_FIELDS}
        d["reasons"] = list(self.reasons)
        return d


_ITEM_FIELDS = tuple(f.name for f in fields(ItemScore))


def _share(n: int, d: int) -> float | None:
    return None if d == 0 else n / d


def score_item(item: Item, answer: str | None, reader: AnswerReader, ref_cache: dict[str, Any]) -> ItemScore:
    """Score one answer (``None``: no prediction for this id) against its item."""
    base = {"id": item.id, "study_id": item.study_id, "task": item.task, "category": item.label}
    if item.facts is None:
        return ItemScore(**base, status="unscorable", classified=False, predicted=None, correct=None,
                         quantitative=None, numbers_checked=0, numbers_wrong=0, reference_numbers_checked=0,
                         reference_numbers_wrong=0, coverage=None, findings_agree=0,
                         findings_disagree=0, findings_agreement=None, invented=0.0, wrong_eye=0.0, rouge_l=None,
                         not_english=False, reasons=[f"unscorable: study {item.study_id}: {item.facts_error}"])
    ref = ref_cache.get(item.id)
    if ref is None:
        ref = ref_cache[item.id] = reader.read(item.question, item.reference, item.facts, item.images)
    classified = ref.diagnosis is not None
    status = "missing" if answer is None else ("empty" if not answer.strip() else "answered")
    if status != "answered":
        quant = 0.0 if ref.numbers_checked else None
        cov = 0.0 if ref.biomarkers_named else None
        return ItemScore(**base, status=status, classified=classified, predicted=None,
                         correct=0.0 if classified else None, quantitative=quant, numbers_checked=0, numbers_wrong=0,
                         reference_numbers_checked=0, reference_numbers_wrong=0, coverage=cov, findings_agree=0, findings_disagree=0, findings_agreement=None, invented=0.0,
                         wrong_eye=0.0, rouge_l=0.0 if item.reference else None, not_english=False, reasons=[])
    got = reader.read(item.question, answer, item.facts, item.images)
    if ref.numbers_checked:
        quant = (got.numbers_checked - got.numbers_wrong) / got.numbers_checked if got.numbers_checked else 0.0
    else:
        quant = None
    cov = _share(len(got.biomarkers_named & ref.biomarkers_named), len(ref.biomarkers_named))
    return ItemScore(
        **base, status=status, classified=classified, predicted=got.diagnosis,
        correct=float(got.diagnosis == item.label) if classified else None, quantitative=quant,
        numbers_checked=got.numbers_checked, numbers_wrong=got.numbers_wrong,
        reference_numbers_checked=got.reference_numbers_checked, reference_numbers_wrong=got.reference_numbers_wrong,
        coverage=cov,
        findings_agree=got.findings_agree, findings_disagree=got.findings_disagree,
        findings_agreement=_share(got.findings_agree, got.findings_agree + got.findings_disagree),
        invented=float(got.invented), wrong_eye=float(got.wrong_eye),
        rouge_l=rouge_l(answer, item.reference) if item.reference else None,
        not_english=likely_not_english(answer), reasons=got.reasons)


# -- aggregation ---------------------------------------------------------------------------------
def _ci(samples: np.ndarray) -> list[float] | None:
    s = samples[np.isfinite(samples)]
    if s.size == 0:
        return None
    return [round(float(np.percentile(s, 2.5)), 4), round(float(np.percentile(s, 97.5)), 4)]


def _mean_with_ci(values: list[float | None], idx: np.ndarray) -> dict[str, Any]:
    v = np.array([np.nan if x is None else float(x) for x in values])
    ok = np.isfinite(v)
    if not ok.any():
        return {"mean": None, "n": 0, "ci95": None}
    w = np.where(ok, v, 0.0)
    sums = w[idx].sum(axis=1)
    cnt = ok[idx].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = np.where(cnt > 0, sums / np.maximum(cnt, 1), np.nan)
    return {"mean": round(float(v[ok].mean()), 4), "n": int(ok.sum()), "ci95": _ci(boot)}


def _f1_from_counts(tp: np.ndarray, pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(pred > 0, tp / np.maximum(pred, 1), 0.0)
        r = np.where(true > 0, tp / np.maximum(true, 1), 0.0)
        return np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)


def classification(true: list[str], pred: list[str | None], idx: np.ndarray | None) -> dict[str, Any]:
    """Per-class precision/recall/F1, macro F1 over the classes that occur in ``true``, the confusion
    matrix (rows: true, columns: predicted + ``abstained``), abstentions; bootstrap CI of macro F1 and
    accuracy over ``idx`` (resample x item indices)."""
    classes = list(CATEGORIES)
    extra = sorted({c for c in true if c not in classes} | {p for p in pred if p is not None and p not in classes})
    classes += extra
    k = len(classes)
    col = {c: i for i, c in enumerate(classes)}
    t = np.array([col[c] for c in true], dtype=np.int64)
    p = np.array([k if x is None else col[x] for x in pred], dtype=np.int64)
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
    out = {"n": n, "macro_f1": round(float(f1[present].mean()), 4), "accuracy": round(float(tp.sum() / n), 4),
           "abstained": int((p == k).sum()), "per_class": per_class,
           "confusion": {"classes": [c for c in classes], "columns": classes + [ABSTAIN],
                         "matrix": conf.tolist()}}
    if idx is not None and idx.size:
        b = idx.shape[0]
        bt, bp = t[idx], p[idx]
        off = (np.arange(b)[:, None] * (k * (k + 1)))
        cb = np.bincount((off + bt * (k + 1) + bp).ravel(), minlength=b * k * (k + 1)).reshape(b, k, k + 1)
        tpb = np.diagonal(cb[:, :, :k], axis1=1, axis2=2).astype(float)
        predb = cb[:, :, :k].sum(axis=1).astype(float)
        trueb = cb.sum(axis=2).astype(float)
        f1b = _f1_from_counts(tpb, predb, trueb)
        presb = trueb > 0
        macro = (f1b * presb).sum(axis=1) / np.maximum(presb.sum(axis=1), 1)
        out["macro_f1_ci95"] = _ci(macro)
        out["accuracy_ci95"] = _ci(tpb.sum(axis=1) / n)
    return out


def _bootstrap_idx(n: int, resamples: int, seed: int) -> np.ndarray:
    if n == 0 or resamples <= 0:
        return np.zeros((0, n), dtype=np.int64)
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _bleu(stats: np.ndarray | None, idx: np.ndarray) -> dict[str, Any] | None:
    if stats is None or stats.shape[0] == 0:
        return None
    total = stats.sum(axis=0)
    out = {"score": None if (b := bleu_from_stats(total)) is None else round(b, 2), "n": int(stats.shape[0]),
           "ci95": None}
    if idx.size and out["score"] is not None:
        boot = stats[idx].sum(axis=1)  # (resamples, 10)
        out["ci95"] = _ci(np.array([bleu_from_stats(r) if r[1] else np.nan for r in boot], dtype=float))
    return out


def summarise(scores: list[ItemScore], stats: dict[str, np.ndarray] | None, resamples: int = 1000,
              seed: int = 0) -> dict[str, Any]:
    """Group metrics (see the module docstring) for a list of item scores; ``stats``: each item's BLEU
    statistics by id (``None`` without sacrebleu)."""
    idx = _bootstrap_idx(len(scores), resamples, seed)
    out: dict[str, Any] = {"n": len(scores), "status": dict(Counter(s.status for s in scores))}
    for m in MEAN_METRICS:
        out[m] = _mean_with_ci([getattr(s, m) for s in scores], idx)
    cls = [s for s in scores if s.classified]
    cidx = _bootstrap_idx(len(cls), resamples, seed + 1)
    out["classification"] = classification([s.category for s in cls], [s.predicted for s in cls], cidx)
    with_ref = [s.id for s in scores if stats is not None and s.id in stats]
    bidx = _bootstrap_idx(len(with_ref), min(resamples, 200), seed + 2)
    out["bleu"] = _bleu(np.array([stats[i] for i in with_ref]).reshape(-1, 10) if stats is not None else None, bidx)
    out["findings_agree"] = int(sum(s.findings_agree for s in scores))
    out["findings_disagree"] = int(sum(s.findings_disagree for s in scores))
    out["numbers_checked"] = int(sum(s.numbers_checked for s in scores))
    out["numbers_wrong"] = int(sum(s.numbers_wrong for s in scores))
    out["reference_numbers_checked"] = int(sum(s.reference_numbers_checked for s in scores))
    out["reference_numbers_wrong"] = int(sum(s.reference_numbers_wrong for s in scores))
    return out


def evaluate(bench: Benchmark, preds: Predictions, resamples: int = 1000, seed: int = 0, reader: AnswerReader | None = None,
             tolerance: float = 0.10, worst: int = 20, bleu: bool = True) -> dict[str, Any]:
    """Score ``preds`` against ``bench``: the scores JSON ``grok eval`` writes (``schema`` ``grok-eval/1``).

    ``bleu=False`` skips BLEU (sacrebleu's tokeniser costs more than the rest of the scoring)."""

    t0 = time.perf_counter()
    if reader is None:
        reader = AnswerReader(build_lexicon(load_knowledge_base()), VerifyConfig(tolerance=tolerance))
    problems = dict(preds.problems)
    examples = {k: list(v) for k, v in preds.examples.items()}

    def note(problem: str, example: str) -> None:
        problems[problem] = problems.get(problem, 0) + 1
        ex = examples.setdefault(problem, [])
        if len(ex) < MAX_LISTED:
            ex.append(example)

    for rid in preds.answers:
        if rid not in bench.items:
            note("unknown_id", rid)
    ref_cache: dict[str, Any] = {}
    scores: list[ItemScore] = []
    for rid, item in bench.items.items():
        ans = preds.answers.get(rid)
        s = score_item(item, ans, reader, ref_cache)
        if s.status == "missing":
            note("missing_id", rid)
        elif s.status == "empty":
            note("empty_answer", rid)
        elif s.status == "unscorable":
            note("unscorable_item", f"{rid}: {item.facts_error}")
        if s.not_english:
            note("likely_not_english", rid)
        scores.append(s)
    # BLEU statistics of every item with a reference (a missing or empty answer is an empty hypothesis)
    ref_ids = [rid for rid, it in bench.items.items() if it.reference and it.facts is not None]
    seg = bleu_segment_stats([preds.answers.get(rid) or "" for rid in ref_ids],
                             [bench.items[rid].reference for rid in ref_ids]) if bleu else None
    stats = None if seg is None else dict(zip(ref_ids, seg))
    groups: dict[str, dict[str, list[ItemScore]]] = {"task": {}, "category": {}}
    for s in scores:
        groups["task"].setdefault(s.task, []).append(s)
        groups["category"].setdefault(s.category, []).append(s)
    result = {
        "schema": SCHEMA,
        "dataset": bench.dataset, "fingerprint": bench.fingerprint, "config": bench.config, "split": bench.split,
        "kb_snapshot": bench.kb_snapshot, "predictions": preds.path, "tolerance": reader.config.tolerance,
        "bootstrap": {"resamples": resamples, "seed": seed, "interval": "95 % percentile"},
        "counts": {"benchmark_items": len(bench.items), "prediction_lines": preds.lines,
                   "scored_answers": sum(1 for s in scores if s.status == "answered"),
                   "cut_by_generation_budget": preds.cut_by_length},
        "problems": problems, "problem_examples": examples,
        "predictions_name_dataset": preds.datasets_named,
        "bleu_note": ("BLEU not computed (--no-bleu)" if not bleu else
                      f"BLEU not computed: sacrebleu is not installed ({SACREBLEU_INSTALL})" if stats is None else
                      "corpus BLEU (sacrebleu, 13a tokens) over each group's items with a reference"),
        "overall": summarise(scores, stats, resamples, seed),
        "per_task": {k: summarise(v, stats, resamples, seed) for k, v in sorted(groups["task"].items())},
        "per_category": {k: summarise(v, stats, resamples, seed) for k, v in sorted(groups["category"].items())},
        "items": [s.to_dict() for s in scores],
    }
    other = [d for d in preds.datasets_named if d != bench.dataset]
    if other:
        problems["predictions_for_another_version"] = sum(preds.datasets_named[d] for d in other)
        examples["predictions_for_another_version"] = other[:MAX_LISTED]
    result["worst"] = [{**w, "answer": preds.answers.get(w["id"], "")} for w in worst_items(scores, worst)]
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return result


def item_total(s: dict[str, Any]) -> float:
    """One number per answer for ranking the worst: the mean of its applicable marks (lower is worse)."""
    marks = [s[m] for m in ("correct", "quantitative", "coverage", "findings_agreement", "rouge_l") if s.get(m) is not None]
    marks += [1.0 - min(1.0, s["invented"]), 1.0 - s["wrong_eye"]]
    return sum(marks) / len(marks)


def worst_items(scores: list[ItemScore], n: int) -> list[dict[str, Any]]:
    """The ``n`` answered items with the lowest :func:`item_total`, worst first (ties by id)."""
    rows = [s.to_dict() for s in scores if s.status == "answered"]
    rows.sort(key=lambda d: (item_total(d), d["id"]))
    return [{**d, "total": round(item_total(d), 4)} for d in rows[:n]]


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
