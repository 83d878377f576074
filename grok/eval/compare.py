"""Compare two ``grok eval`` score files on the same items: paired bootstrap differences and a verdict.

Run as: grok eval compare A.json B.json [--bootstrap 1000] [--seed 0] [--json]

Both files must score the same dataset version (fingerprint) and split. Items are paired by id;
one bootstrap resample draws the same items (weights) for A and B, so the interval of B - A reflects
how the two models differ on the same questions, not how the questions vary. Metrics: macro F1
and accuracy of the classification items, and every per-answer mean of :data:`grok.eval.score.MEAN_METRICS`.
A difference is called when its 95 % interval excludes 0; ``invented`` and ``wrong_eye`` are
better when lower.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from grok.eval.data import EvalInputError
from grok.eval.score import (
    MEAN_METRICS,
    SCHEMA,
    class_columns,
    class_index,
    classification,
    iter_items,
    resample_weights,
    resampled_metrics,
)

#: Metrics where a lower value is better.
LOWER_IS_BETTER = frozenset({"invented", "wrong_eye"})


def load_scores(path: str | Path) -> dict[str, Any]:
    """A scores JSON written by ``grok eval`` (raises :class:`EvalInputError` naming the file and the fix)."""
    p = Path(path)
    if not p.is_file():
        raise EvalInputError(f"{p}: scores file not found (write one with grok eval PREDICTIONS --dataset NAME@VERSION "
                             "--out DIR: DIR/eval.json)")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvalInputError(f"{p}: not a JSON file ({exc})") from exc
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not (
            isinstance(data.get("items"), list) or isinstance(data.get("items_file"), str)):
        raise EvalInputError(f"{p}: not a grok eval scores file (schema {SCHEMA!r} with per-item scores)")
    if "items" not in data:  # the per-item rows beside it (a path relative to the scores file), read when needed
        items = p.parent / data["items_file"]
        if not items.is_file():
            raise EvalInputError(f"{p}: its per-item scores {items} are missing (grok eval writes them beside "
                                 "eval.json; copy both)")
        data["items_file"] = str(items)
    return data


class _Items:
    """What compare needs of a scores file's per-item rows, read in one pass (the rows are not kept): ids,
    categories, stated diagnoses, whether classified, and the marks (NaN: not applicable)."""

    def __init__(self, scores: dict[str, Any]):
        self.ids: list[str] = []
        self.category: list[str] = []
        self.predicted: list[str | None] = []
        cls: list[bool] = []
        vals: list[float] = []
        for it in iter_items(scores):
            self.ids.append(it["id"])
            self.category.append(it["category"])
            self.predicted.append(it["predicted"])
            cls.append(bool(it.get("classified")))
            vals.extend(np.nan if it.get(m) is None else float(it[m]) for m in MEAN_METRICS)
        self.classified = np.array(cls, dtype=bool)
        self.vals = np.array(vals, dtype=np.float64).reshape(len(self.ids), len(MEAN_METRICS))
        self.pos = {rid: i for i, rid in enumerate(self.ids)}


def _columns(vals: np.ndarray, cls: np.ndarray, t: np.ndarray, p: np.ndarray, k: int) -> np.ndarray:
    """The per-item matrix [marks | marks present | classification counts]."""
    ok = np.isfinite(vals)
    return np.hstack([np.where(ok, vals, 0.0), ok, class_columns(t, p, k, cls)]).astype(np.float32)


def _interval(d: np.ndarray) -> list[float] | None:
    d = d[np.isfinite(d)]
    if d.size == 0:
        return None
    return [round(float(np.percentile(d, 2.5)), 4), round(float(np.percentile(d, 97.5)), 4)]


def compare(a: dict[str, Any], b: dict[str, Any], resamples: int = 1000, seed: int = 0, names: tuple[str, str] = ("A", "B")
            ) -> dict[str, Any]:
    """Paired bootstrap of B - A per metric (see the module docstring). Raises :class:`EvalInputError`
    when the two files score different dataset versions or splits."""
    for key in ("fingerprint", "dataset", "config", "split"):
        if a.get(key) != b.get(key):
            raise EvalInputError(f"the two score files differ in {key} ({a.get(key)!r} vs {b.get(key)!r}): "
                                 "compare models scored on the same dataset version and split")
    ia, ib = _Items(a), _Items(b)
    common = sorted(set(ia.pos) & set(ib.pos))
    n = len(common)
    A = np.array([ia.pos[i] for i in common], dtype=np.int64)
    B = np.array([ib.pos[i] for i in common], dtype=np.int64)
    cat = [ia.category[i] for i in A.tolist()] + [ib.category[i] for i in B.tolist()]
    classes, t, p = class_index(cat, [ia.predicted[i] for i in A.tolist()] + [ib.predicted[i] for i in B.tolist()])
    k = len(classes)
    va, vb = ia.vals[A], ib.vals[B]
    ca_mask, cb_mask = ia.classified[A], ib.classified[B]
    xa = _columns(va, ca_mask, t[:n], p[:n], k)
    xb = _columns(vb, cb_mask, t[n:], p[n:], k)
    diffs: list[np.ndarray] = []  # per resample: B - A of [macro F1, accuracy, means...]
    for w in resample_weights(n, resamples, seed):
        ma, fa, aa = resampled_metrics(w @ xa, k)
        mb, fb, ab = resampled_metrics(w @ xb, k)
        diffs.append(np.column_stack([fb - fa, ab - aa, mb - ma]))
    d = np.vstack(diffs) if diffs else np.zeros((0, 2 + len(MEAN_METRICS)))
    ca = classification([ia.category[i] for i in A[ca_mask].tolist()], [ia.predicted[i] for i in A[ca_mask].tolist()])
    cb = classification([ib.category[i] for i in B[cb_mask].tolist()], [ib.predicted[i] for i in B[cb_mask].tolist()])
    metrics: dict[str, Any] = {}
    for j, name in enumerate(("macro_f1", "accuracy")):
        xa_, xb_ = ca[name], cb[name]
        metrics[name] = {"a": xa_, "b": xb_, "diff": None if xa_ is None or xb_ is None else round(xb_ - xa_, 4),
                         "ci95": _interval(d[:, j]) if len(d) else None, "higher_is_better": True}
    for j, m in enumerate(MEAN_METRICS):
        ma_ = float(np.nanmean(va[:, j])) if np.isfinite(va[:, j]).any() else None
        mb_ = float(np.nanmean(vb[:, j])) if np.isfinite(vb[:, j]).any() else None
        metrics[m] = {"a": None if ma_ is None else round(ma_, 4), "b": None if mb_ is None else round(mb_, 4),
                      "diff": None if ma_ is None or mb_ is None else round(mb_ - ma_, 4),
                      "ci95": _interval(d[:, 2 + j]) if len(d) else None,
                      "higher_is_better": m not in LOWER_IS_BETTER}
    verdicts = []
    for m, r in metrics.items():
        ci = r["ci95"]
        if r["diff"] is None or ci is None:
            continue
        if ci[0] > 0 or ci[1] < 0:
            better = names[1] if (r["diff"] > 0) == r["higher_is_better"] else names[0]
            verdicts.append(f"{better} better on {m}: {names[1]} - {names[0]} = {r['diff']:+.3f} "
                            f"[{ci[0]:+.3f}, {ci[1]:+.3f}]")
    head = metrics["macro_f1"]
    if head["diff"] is None or head["ci95"] is None:
        headline = "macro F1: no classification items in common"
    elif head["ci95"][0] > 0 or head["ci95"][1] < 0:
        who = names[1] if head["diff"] > 0 else names[0]
        headline = (f"{who} better on macro F1 by {abs(head['diff']):.2f} "
                    f"[{min(abs(head['ci95'][0]), abs(head['ci95'][1])):.2f}, "
                    f"{max(abs(head['ci95'][0]), abs(head['ci95'][1])):.2f}]")
    else:
        headline = (f"no clear difference in macro F1: {names[1]} - {names[0]} = {head['diff']:+.2f} "
                    f"[{head['ci95'][0]:+.2f}, {head['ci95'][1]:+.2f}]")
    return {"dataset": a.get("dataset"), "fingerprint": a.get("fingerprint"), "a": names[0], "b": names[1],
            "paired_items": len(common), "only_in_a": len(set(ia.pos) - set(ib.pos)),
            "only_in_b": len(set(ib.pos) - set(ia.pos)),
            "bootstrap": {"resamples": resamples, "seed": seed, "paired": True}, "metrics": metrics,
            "verdict": headline, "differences": verdicts}
