"""CLI: ``grok lint-text`` (style rules and variety of instruction text; a contract of the build).

Run as: grok lint-text TABLE_OR_FOLDER [--examples 3] [--json] [--report-only]

TABLE_OR_FOLDER is an ``instructions.parquet`` (of ``grok instruct`` or a build) or a folder holding one.
Prints violations per reason code (grok.instruct.lint.RULES) with examples, and per family the
variety measures (distinct answer and question skeletons with numbers masked, the share of rows the
most common one takes, distinct-2). Exit 0 when there is no violation and every family meets the variety
targets (issue 21: most common answer skeleton <= 30 % of a family's rows, question skeleton <= 25 %),
1 otherwise (0 with --report-only), 3 for a missing or unreadable table.
"""

from __future__ import annotations

from pathlib import Path

import typer

from grok.cli._common import ExitCode, console, fail, print_json


def lint_text(
    source: Path = typer.Argument(..., help="instructions.parquet, or a folder holding one (a build or grok instruct --out)."),
    examples: int = typer.Option(3, "--examples", min=0, help="Examples shown per reason code."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
    report_only: bool = typer.Option(False, "--report-only", help="Exit 0 even when rules or targets fail."),
) -> None:
    """Lint the text of instruction rows: style rules with reason codes, variety per task family."""
    import pyarrow.parquet as pq

    from grok.instruct.lint import RULES, lint_rows
    from grok.knowledge import load_knowledge_base
    from grok.knowledge.lexicon import build_lexicon

    table = source / "instructions.parquet" if source.is_dir() else source
    if not table.is_file():
        fail(f"{table}: no instruction table (pass instructions.parquet or the folder of a build / grok instruct "
             "--out)", ExitCode.BAD_INPUT)
    try:
        rows = pq.read_table(table, columns=["id", "task", "label", "mode", "messages"]).to_pylist()
    except Exception as exc:  # noqa: BLE001 - any unreadable file is bad input, named with its cause
        fail(f"{table}: not a readable instruction table ({exc})", ExitCode.BAD_INPUT)
    kb = load_knowledge_base()
    report = lint_rows(rows, kb, build_lexicon(kb), examples=examples)
    if as_json:
        print_json(report)
    else:
        console.print(f"{report['rows']} rows, {report['violations_total']} violations", highlight=False)
        for code, n in report["violations"].items():
            console.print(f"  {code} ({RULES[code]}): {n}", highlight=False)
            for ex in report["examples"].get(code, []):
                console.print(f"    {ex['task']} {ex['id']}: {ex['detail']}", highlight=False, markup=False)
        console.print("family        rows  answer skeletons (top share)  question top share  distinct-2", highlight=False)
        for fam, v in report["per_family"].items():
            flag = "" if v["answer_target_met"] and v["question_target_met"] else "  <- over target"
            console.print(f"{fam:<13} {v['rows']:>5}  {v['answer_skeletons']:>6} ({v['answer_top_share']:.0%})"
                          f"{'':>14}{v['question_top_share']:>6.0%}{v['distinct_2']:>16.3f}{flag}", highlight=False)
    if not report["targets_met"] and not report_only:
        raise typer.Exit(ExitCode.FAILED)


def register(app: typer.Typer) -> None:
    """Add ``lint-text`` to the ``grok`` app."""
    app.command("lint-text")(lint_text)
