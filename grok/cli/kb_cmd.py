"""CLI for the knowledge base: ``grok kb validate``, ``grok reason`` and ``grok label``.

Run as: grok kb validate [DIR ...] [--overlay] [--json]
        grok kb coverage [--device D] [--age A] [--sex S] [--engine-measured] [--kb DIR] [--overlay] [--json]
        grok reason RECORD.json [--kb DIR] [--overlay] [--json]
        grok label COHORT.csv --out labels.parquet [--kb DIR] [--overlay] [--json]

``--kb DIR`` (repeatable) uses your knowledge-base folder(s) instead of the bundled one;
``--overlay`` stacks them on top of the bundled one (later folders override entries by id).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer

from grok.cli._common import ExitCode, console, fail, print_json

kb_app = typer.Typer(help="Knowledge base: validate, inspect.", no_args_is_help=True)

DirsArg = Annotated[
    list[Path] | None,
    typer.Argument(help="Knowledge-base folder(s); default: the bundled one (or GROK_KNOWLEDGE_BASE)."),
]
KbOpt = Annotated[list[Path] | None, typer.Option("--kb", help="Knowledge-base folder (repeatable).")]
OverlayOpt = Annotated[
    bool, typer.Option("--overlay", help="Stack the given folder(s) on the bundled knowledge base.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]


def _dirs(kb_dirs: list[Path] | None, overlay: bool) -> list[Path] | None:
    from grok.knowledge import bundled_knowledge_base_dir

    dirs = list(kb_dirs or [])
    for d in dirs:
        if not d.is_dir():
            fail(
                f"{d}: knowledge-base folder not found (pass an existing folder to --kb / DIR)",
                ExitCode.BAD_INPUT,
            )
    if overlay:
        return [bundled_knowledge_base_dir(), *dirs]
    return dirs or None


def _load(kb_dirs: list[Path] | None, overlay: bool):
    from grok.knowledge import KnowledgeBaseError, load_knowledge_base

    try:
        return load_knowledge_base(_dirs(kb_dirs, overlay))
    except KnowledgeBaseError as exc:
        for issue in exc.issues:
            console.print(f"error: {issue}", highlight=False, markup=False, soft_wrap=True)
        fail(
            f"the knowledge base did not validate ({len(exc.issues)} problem(s)); run 'grok kb validate' "
            "for details",
            ExitCode.FAILED,
        )


@kb_app.command("validate")
def validate(
    dirs: DirsArg = None,
    overlay: OverlayOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Validate a knowledge base: schema, units, ordered ranges, sources and references.

    Exit 0 when valid (warnings allowed), 1 when not (every problem names file, key and fix).
    """
    from grok.knowledge import validate_knowledge_base

    kb, errors, warnings = validate_knowledge_base(_dirs(dirs, overlay))
    if as_json:
        print_json(
            {
                "ok": kb is not None,
                "snapshot_id": kb.snapshot_id if kb else None,
                "summary": kb.summary() if kb else None,
                "errors": [e.to_dict() for e in errors],
                "warnings": [w.to_dict() for w in warnings],
            }
        )
    else:
        for w in warnings:
            console.print(f"warning: {w}", highlight=False, markup=False, soft_wrap=True)
        for e in errors:
            console.print(f"error: {e}", highlight=False, markup=False, soft_wrap=True)
        if kb is not None:
            counts = ", ".join(f"{n} {s}" for s, n in kb.summary()["counts"].items())
            console.print(
                f"OK {kb.info.name} {kb.info.version} {kb.snapshot_id}: {counts}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
    if kb is None:
        if not as_json:
            console.print(f"INVALID: {len(errors)} problem(s)", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(int(ExitCode.FAILED))


@kb_app.command("snapshot")
def snapshot(
    dirs: DirsArg = None,
    overlay: OverlayOpt = False,
) -> None:
    """Print the snapshot id (``kb-`` + 16 hex digits) of a valid knowledge base on stdout."""
    kb = _load(dirs, overlay)
    typer.echo(kb.snapshot_id)


@kb_app.command("coverage")
def coverage_cmd(
    device: Annotated[
        list[str] | None,
        typer.Option("--device", help="Device id, alias or 'manufacturer model' text (repeatable); "
                     "default: spectralis, cirrus and topcon."),
    ] = None,
    age: Annotated[
        list[float] | None, typer.Option("--age", help="Age in years (repeatable); default 40, 50, ... 90.")
    ] = None,
    sex: Annotated[list[str] | None, typer.Option("--sex", help="F or M (repeatable); default both.")] = None,
    engine_measured: Annotated[
        bool, typer.Option("--engine-measured", help="As for a build's records: values measured by this engine, "
                           "so its own ILM -> BM ranges are the last fallback.")
    ] = False,
    kb_dirs: KbOpt = None,
    overlay: OverlayOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Per category, which findings the knowledge base can evaluate for a device, age and sex, and why not.

    Exit 0; exit 1 when a device is not in the knowledge base (the message names the file to fix).
    """
    from grok.knowledge.coverage import ABSENT_BY_RULE, kb_coverage

    kb = _load(kb_dirs, overlay)
    for s in sex or []:
        if s.strip().upper() not in ("F", "M"):
            fail(f"--sex {s!r}: use F or M", ExitCode.BAD_INPUT)
    for a in age or []:
        if not 0 <= a <= 120:
            fail(f"--age {a:g}: give an age in years between 0 and 120", ExitCode.BAD_INPUT)
    grid = [
        kb_coverage(kb, device=d, age_years=a, sex=s, engine_measured=engine_measured)
        for d in (device or ["spectralis", "cirrus", "topcon"])
        for a in (age or [40.0, 50.0, 60.0, 70.0, 80.0, 90.0])
        for s in (sex or ["F", "M"])
    ]
    unknown = [g for g in grid if g["device_note"]]
    if as_json:
        print_json(grid if len(grid) > 1 else grid[0])
    else:
        for g in grid:
            console.print(
                f"device={g['device']} age={g['age_years']:g} sex={g['sex']}  ({g['kb_snapshot_id']})",
                highlight=False, markup=False, soft_wrap=True,
            )
            for c in g["categories"]:
                if not c["findings"]:
                    continue
                console.print(
                    f"  {c['category']:22s} key evaluable {len(c['key_evaluable'])}/{len(c['key_findings'])}: "
                    + (", ".join(c["key_evaluable"]) or "none"),
                    highlight=False, markup=False, soft_wrap=True,
                )
                for f in c["findings"]:
                    if f["status"] in ABSENT_BY_RULE:
                        console.print(f"      {f['status'].replace('_', ' ')} {f['finding']}: {f['reason']}",
                                      highlight=False, markup=False, soft_wrap=True)
                    elif f["status"] != "evaluable":
                        console.print(f"      not {f['finding']} ({f['status']}): {f['reason']}",
                                      highlight=False, markup=False, soft_wrap=True)
    if unknown:
        console.print(f"error: {unknown[0]['device_note']}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(int(ExitCode.FAILED))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        fail(f"{path}: file not found", ExitCode.BAD_INPUT)
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"{path}: cannot read ({exc})", ExitCode.BAD_INPUT)
    except json.JSONDecodeError as exc:
        fail(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); fix the file", ExitCode.BAD_INPUT)


def _print_reasoning(r) -> None:
    head = f"{r.laterality or '?'} device={r.device} sex={r.sex or '?'} age={r.age_years if r.age_years is not None else '?'}"
    console.print(head, highlight=False, markup=False, soft_wrap=True)
    for f in r.findings:
        console.print(
            f"  finding  {f.id} (grade {f.grade}): {f.term} - {f.explanation}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    for d in r.differential:
        stages = "; ".join(f"{s.system}: {s.name}" for s in d.staging if s.stage)
        console.print(
            f"  {d.status:13s} {d.id}: {d.reason}" + (f" [{stages}]" if stages else ""),
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    if r.missing:
        console.print(f"  missing: {', '.join(r.missing)}", highlight=False, markup=False, soft_wrap=True)


def reason_cmd(
    record: Annotated[Path, typer.Argument(help="JSON file: one record or a list of records.")],
    kb_dirs: KbOpt = None,
    overlay: OverlayOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Findings and differential for a biomarker record (device, sex, age, laterality, biomarkers)."""
    from grok.knowledge import reason

    data = _read_json(record)
    records = data if isinstance(data, list) else [data]
    if not records or not all(
        isinstance(r, dict) and isinstance(r.get("biomarkers", {}), dict) for r in records
    ):
        fail(
            f"{record}: expected an object with a 'biomarkers' mapping (or a list of them)",
            ExitCode.BAD_INPUT,
        )
    kb = _load(kb_dirs, overlay)
    results = [reason(r, kb) for r in records]
    if as_json:
        out = [r.to_dict() for r in results]
        print_json(out if isinstance(data, list) else out[0])
    else:
        for r in results:
            _print_reasoning(r)


def label_cmd(
    cohort: Annotated[Path, typer.Argument(help="Cohort table (.csv or .parquet).")],
    out: Annotated[
        Path, typer.Option("--out", help="Labels table to write (.parquet, or .csv with JSON lists).")
    ],
    kb_dirs: KbOpt = None,
    overlay: OverlayOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Eye-level multi-labels from a cohort table, with the rule that fired, conflicts and missing fields."""
    import pandas as pd
    from pyarrow import ArrowException

    from grok.knowledge.labeller import label_cohort, read_cohort, write_labels

    if not cohort.is_file():
        fail(f"{cohort}: file not found", ExitCode.BAD_INPUT)
    try:
        df = read_cohort(cohort)
    except ValueError as exc:
        fail(str(exc), ExitCode.BAD_INPUT)
    except (
        OSError,
        UnicodeDecodeError,
        pd.errors.ParserError,
        pd.errors.EmptyDataError,
        ArrowException,
    ) as exc:
        fail(f"{cohort}: cannot read the table ({type(exc).__name__}: {exc})", ExitCode.BAD_INPUT)
    kb = _load(kb_dirs, overlay)
    labels = label_cohort(df, kb)
    write_labels(labels, out)
    counts = Counter(lab for labs in labels["labels"] for lab in labs)
    summary = {
        "input_rows": len(df),
        "label_rows": len(labels),
        "out": str(out),
        "kb_snapshot_id": kb.snapshot_id,
        "label_counts_eyes": dict(sorted(counts.items())),
        "primary_label_counts_eyes": {
            str(k): int(v)
            for k, v in labels["primary_label"].fillna("none (conflict)").value_counts().sort_index().items()
        },
        "rows_with_conflicts": int(sum(1 for c in labels["conflicts"] if c)),
        "rows_with_missing_fields": int(sum(1 for m in labels["missing_fields"] if m)),
    }
    if as_json:
        print_json(summary)
    else:
        console.print(
            f"wrote {summary['label_rows']} eye rows from {summary['input_rows']} cohort rows to {out} "
            f"({kb.snapshot_id})",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        for k, v in summary["label_counts_eyes"].items():
            console.print(f"  {k}: {v} eyes", highlight=False, markup=False, soft_wrap=True)
        console.print(
            f"  rows with conflicts: {summary['rows_with_conflicts']}; with missing fields: "
            f"{summary['rows_with_missing_fields']}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


def register(app: typer.Typer) -> None:
    """Add ``kb`` (validate, snapshot) and the top-level ``reason`` and ``label`` commands."""
    app.add_typer(kb_app, name="kb")
    app.command("reason")(reason_cmd)
    app.command("label")(label_cmd)
