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

from grok.eval.data import Benchmark
from grok.eval.score import MEAN_METRICS

TEMPLATES = Path(__file__).resolve().parents[2] / "templates" / "eval"


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
    from grok.eval.judge import RUBRIC_PARTS

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

    from grok.registry import load

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
