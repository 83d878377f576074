"""Compare two ``grok eval`` score files on the same items: paired bootstrap differences and a verdict.

Run as: grok eval compare A.json B.json [--bootstrap 1000] [--seed 0] [--json]

Both files must score the same dataset version (fingerprint) and split. Items are paired by id;
one bootstrap resample draws the same item indices for A and B, so the interval of B - A reflects
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
from grok.eval.score import MEAN_METRICS, SCHEMA, classification

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
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("items"), list):
        raise EvalInputError(f"{p}: not a grok eval scores file (schema {SCHEMA!r} with per-item scores)")
    return data


def _vals(items: list[dict[str, Any]], metric: str) -> np.ndarray:
    return np.array([np.nan if it.get(metric) is None else float(it[metric]) for it in items])


def _boot_mean(v: np.ndarray, idx: np.ndarray) -> np.ndarray:
    ok = np.isfinite(v)
    w = np.where(ok, v, 0.0)
    cnt = ok[idx].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, w[idx].sum(axis=1) / np.maximum(cnt, 1), np.nan)


def _macro(items: list[dict[str, Any]], idx: np.ndarray) -> tuple[float | None, np.ndarray, float | None, np.ndarray]:
    """Macro F1 and accuracy of the classification items, on the items and per resample (``idx``)."""
    cls = [i for i, it in enumerate(items) if it.get("classified")]
    true = [items[i]["category"] for i in cls]
    pred = [items[i]["predicted"] for i in cls]
    full = classification(true, pred, None)
    pos = {i: k for k, i in enumerate(cls)}
    f1s, accs = [], []
    for row in idx:
        sel = [pos[i] for i in row if i in pos]
        r = classification([true[k] for k in sel], [pred[k] for k in sel], None)
        f1s.append(np.nan if r["macro_f1"] is None else r["macro_f1"])
        accs.append(np.nan if r["accuracy"] is None else r["accuracy"])
    return full["macro_f1"], np.array(f1s), full["accuracy"], np.array(accs)


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
    ia = {it["id"]: it for it in a["items"]}
    ib = {it["id"]: it for it in b["items"]}
    common = sorted(set(ia) & set(ib))
    A = [ia[i] for i in common]
    B = [ib[i] for i in common]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(common), size=(resamples, len(common))) if common and resamples > 0 else \
        np.zeros((0, len(common)), dtype=np.int64)
    metrics: dict[str, Any] = {}
    fa, fa_b, acc_a, acc_ab = _macro(A, idx)
    fb, fb_b, acc_b, acc_bb = _macro(B, idx)
    for name, va, vb, ba, bb in (("macro_f1", fa, fb, fa_b, fb_b), ("accuracy", acc_a, acc_b, acc_ab, acc_bb)):
        metrics[name] = {"a": va, "b": vb, "diff": None if va is None or vb is None else round(vb - va, 4),
                         "ci95": _interval(bb - ba), "higher_is_better": True}
    for m in MEAN_METRICS:
        va, vb = _vals(A, m), _vals(B, m)
        ma = float(np.nanmean(va)) if np.isfinite(va).any() else None
        mb = float(np.nanmean(vb)) if np.isfinite(vb).any() else None
        metrics[m] = {"a": None if ma is None else round(ma, 4), "b": None if mb is None else round(mb, 4),
                      "diff": None if ma is None or mb is None else round(mb - ma, 4),
                      "ci95": _interval(_boot_mean(vb, idx) - _boot_mean(va, idx)) if idx.size else None,
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
            "paired_items": len(common), "only_in_a": len(set(ia) - set(ib)), "only_in_b": len(set(ib) - set(ia)),
            "bootstrap": {"resamples": resamples, "seed": seed, "paired": True}, "metrics": metrics,
            "verdict": headline, "differences": verdicts}
