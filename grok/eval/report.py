"""The static evaluation report: ``eval/index.html`` (opens from ``file://``; no script, no network).

Run as: grok eval PREDICTIONS.jsonl --dataset NAME@VERSION --out eval   (writes eval/index.html)

Per-class F1 as inline SVG bars (with the class's support), the overall table with 95 % intervals,
the confusion matrix (stated diagnosis against category, abstentions in their own column), the per
task and per category tables, and the worst-scored answers beside the question, the reference, the
verifier's reasons, the study's biomarkers and its images (embedded as data URIs). Template:
``templates/eval/report.html.j2``.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from grok.eval.data import Benchmark
from grok.eval.judge import RUBRIC_PARTS
from grok.eval.score import MEAN_METRICS
from grok.registry import load
from grok.resources import bundled_dir

TEMPLATES = bundled_dir("templates") / "eval"


def _fmt(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _ci(v: Any, digits: int = 3) -> str:
    return "" if not v else f"[{v[0]:.{digits}f}, {v[1]:.{digits}f}]"


def _shade(v: int, total: int) -> str:
    return "0" if not total else f"{0.08 + 0.7 * v / total:.2f}" if v else "0"


def f1_bars_svg(per_class: dict[str, dict[str, Any]], width: int = 640) -> str:
    """Horizontal bars of each class's F1 (0 to 1) as an inline SVG element."""
    rows = list(per_class.items())
    bar_h, gap, left, right = 18, 6, 170, 90
    height = max(1, len(rows)) * (bar_h + gap) + 24
    span = width - left - right
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
              'aria-label="per-class F1">')]
    for k in (0.0, 0.5, 1.0):
        x = left + k * span
        parts.append(f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height - 18}" stroke="#ccd"/>'
                     f'<text x="{x:.1f}" y="{height - 4}" text-anchor="middle">{k:.1f}</text>')
    for i, (name, v) in enumerate(rows):
        y = i * (bar_h + gap) + 2
        f1 = float(v.get("f1") or 0.0)
        parts.append(f'<text x="{left - 6}" y="{y + 13}" text-anchor="end">{html.escape(name)}</text>'
                     f'<rect class="bar" x="{left}" y="{y}" width="{f1 * span:.1f}" height="{bar_h}" fill="#3b6fd0">'
                     f'<title>{html.escape(name)}: F1 {f1:.3f}</title></rect>'
                     f'<text x="{left + f1 * span + 4:.1f}" y="{y + 13}">{f1:.2f} (n {v.get("support", 0)})</text>')
    parts.append("</svg>")
    return "".join(parts)


def rubric_svg(parts_mean: dict[str, float | None], width: int = 640) -> str:
    """The judge's mean score per rubric part as a share of the part's range (inline SVG bars)."""
    rows = {}
    for k, (lo, hi) in RUBRIC_PARTS.items():
        v = parts_mean.get(k)
        if v is not None:
            # the penalty (-15..0) is drawn as the share of its range kept (0 = no penalty = full bar)
            rows[k.replace("_", " ")] = {"f1": (v - lo) / (hi - lo), "support": f"{v:g} of {hi if hi else lo}"}
    return f1_bars_svg(rows, width).replace('aria-label="per-class F1"', 'aria-label="rubric profile"').replace(
        " (n ", " (")


def data_uri(data: bytes) -> str:
    kind = "png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "jpeg" if data[:2] == b"\xff\xd8" else "octet-stream"
    return f"data:image/{kind};base64,{base64.b64encode(data).decode('ascii')}"


def _images(bench: Benchmark | None, ids: set[str]) -> dict[str, list[str]]:
    """Data URIs of the images of the benchmark rows ``ids`` (a published benchmark only)."""
    if bench is None or not bench.published or not ids:
        return {}
    import datasets

    ds = load(bench.dataset, bench.config, bench.split, registry=bench.registry)
    ds = ds.cast_column("images", datasets.List(datasets.Image(decode=False)))
    keep = [i for i, rid in enumerate(ds["id"]) if rid in ids]
    out = {}
    for row in ds.select(keep):
        out[row["id"]] = [data_uri(im["bytes"]) for im in row["images"] or [] if im and im.get("bytes")]
    return out


def write_report(res: dict[str, Any], path: str | Path, bench: Benchmark | None = None,
                 answers: dict[str, str] | None = None) -> Path:
    """Render the report for a scores dict (``grok.eval.score.evaluate``'s result) to ``path``."""
    worst = [dict(w) for w in res.get("worst") or []]
    imgs = _images(bench, {w["id"] for w in worst})
    for w in worst:
        item = bench.items.get(w["id"]) if bench is not None else None
        w.setdefault("answer", (answers or {}).get(w["id"], ""))
        w["question"] = item.question if item else ""
        w["reference"] = item.reference if item else ""
        w["images"] = imgs.get(w["id"], [])
        w["biomarkers"] = ([{"name": b.name, "text": b.text, "status": b.status}
                            for b in item.facts.biomarkers.values()] if item is not None and item.facts else [])
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    page = env.get_template("report.html.j2").render(
        res=res, worst=worst, metrics=MEAN_METRICS, fmt=_fmt, ci=_ci, shade=_shade,
        f1_svg=f1_bars_svg(res["overall"]["classification"].get("per_class") or {}),
        rubric_svg=rubric_svg(res["judge"]["parts_mean"]) if res.get("judge") else "")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(page, encoding="utf-8")
    return p


def write_figures(res: dict[str, Any], folder: str | Path) -> list[Path]:
    """The report's figures as PNG for papers (150 dpi): ``f1.png`` (per-class F1 with support),
    ``confusion.png`` (rows: category, columns: stated diagnosis and abstentions) and, when a judge ran,
    ``rubric.png`` (mean score per part). matplotlib is imported here, with the Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    cls = res["overall"]["classification"]
    per = cls.get("per_class") or {}
    if per:
        names = list(per)
        fig, ax = plt.subplots(figsize=(6, 0.35 * len(names) + 1))
        ax.barh(names, [per[n]["f1"] for n in names], color="#3b6fd0")
        for i, n in enumerate(names):
            ax.text(per[n]["f1"] + 0.01, i, f"{per[n]['f1']:.2f} (n {per[n]['support']})", va="center", fontsize=8)
        ax.set_xlim(0, 1.15)
        ax.invert_yaxis()
        ax.set_xlabel("F1")
        ax.set_title(f"Per-class F1 ({res['dataset']}), macro {cls['macro_f1']:.3f}", fontsize=9)
        fig.tight_layout()
        written.append(out / "f1.png")
        fig.savefig(written[-1], dpi=150)
        plt.close(fig)
    conf = cls.get("confusion")
    if conf:
        m = np.array(conf["matrix"], dtype=float)
        keep = m.sum(axis=1) > 0
        rows = [c for c, k in zip(conf["classes"], keep, strict=True) if k]
        m = m[keep]
        fig, ax = plt.subplots(figsize=(0.6 * len(conf["columns"]) + 2, 0.5 * len(rows) + 1.5))
        share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto")
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(conf["columns"])), conf["columns"], rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.set_xlabel("stated diagnosis")
        ax.set_ylabel("category")
        fig.tight_layout()
        written.append(out / "confusion.png")
        fig.savefig(written[-1], dpi=150)
        plt.close(fig)
    judge = res.get("judge")
    if judge and judge.get("scored"):
        parts = [k for k in RUBRIC_PARTS if judge["parts_mean"].get(k) is not None]
        fig, ax = plt.subplots(figsize=(6, 0.35 * len(parts) + 1))
        ax.barh(parts, [judge["parts_mean"][k] for k in parts], color="#d07a3b")
        ax.barh(parts, [RUBRIC_PARTS[k][1] or RUBRIC_PARTS[k][0] for k in parts], fill=False, edgecolor="#888")
        ax.invert_yaxis()
        ax.set_title(f"Rubric (judge {judge['model']['model']}): total {judge['total_mean']:.1f} of 100", fontsize=9)
        fig.tight_layout()
        written.append(out / "rubric.png")
        fig.savefig(written[-1], dpi=150)
        plt.close(fig)
    return written
