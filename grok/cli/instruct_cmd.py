"""CLI: ``grok instruct`` (study records -> verified instruction rows) and ``grok verify`` (re-check a table).

Run as: grok instruct STUDIES --out DIR [--mode template|llm|rewrite] [--tasks report,cot] [--seed N] [--json]
        grok verify DIR/instructions.parquet [--studies FILE] [--tolerance 0.1] [--json]
        grok verify --dataset NAME@VERSION [--registry DIR] [--json]

LLM mode reads its server from ``--llm-config FILE`` (YAML fields of ``grok.instruct.llm.LLMConfig``, the
same model as a build config's ``instruct.llm`` section, with the same defaults) and/or ``--base-url`` /
``--model`` / ``--concurrency`` / ``--rps`` (or ``GROK_LLM_BASE_URL``, ``GROK_LLM_MODEL``, ...); the key
from the variable named by ``api_key_env`` (default ``GROK_LLM_API_KEY``).
"""

from __future__ import annotations

from pathlib import Path

import typer

from grok.cli._common import ExitCode, console, fail, print_json


def _tasks(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(t.strip() for t in value.split(",") if t.strip())


def instruct(
    studies: Path = typer.Argument(..., help="Study records (.jsonl, .json or .parquet), one per eye-visit."),
    out: Path = typer.Option(..., "--out", help="Output folder (instructions.parquet, quarantine.parquet, ...)."),
    mode: str = typer.Option(None, "--mode", help="template (default; no network), llm (an OpenAI-compatible server writes "
                                                "answers) or rewrite (it rewrites the verified template answers)."),
    tasks: str = typer.Option(None, "--tasks", help="Comma-separated families: diagnosis, report, cot, "
                                                    "biomarker_qa, localisation, multiturn (default: all)."),
    seed: int = typer.Option(None, "--seed", help="Seed for phrasings (part of every row id; default 0)."),
    tolerance: float = typer.Option(None, "--tolerance", help="Verifier tolerance for numbers (default 0.10 = ±10 %)."),
    llm_config: Path = typer.Option(None, "--llm-config", help="YAML with LLMConfig fields (LLM mode)."),
    base_url: str = typer.Option(None, "--base-url", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1."),
    model: str = typer.Option(None, "--model", help="Model name served at --base-url."),
    concurrency: int = typer.Option(None, "--concurrency", help="Requests in flight (LLM mode)."),
    rps: float = typer.Option(None, "--rps", help="Global requests-per-second limit (LLM mode; 0 = none)."),
    max_attempts: int = typer.Option(None, "--max-attempts", help="Generations per row before quarantine (LLM mode)."),
    images: bool = typer.Option(None, "--images/--no-images", help=(
        "Send the row's images to the model (LLM mode; default: the config's send_images, true).")),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Generate knowledge-grounded instruction rows and verify each one.

    Exit 0 when verified rows were written (quarantined rows are accounted for in the summary),
    1 when none were, 2 for a bad option, 3 for an unreadable STUDIES file, 4 when LLM mode lacks openai.
    """
    from grok.config import ConfigError
    from grok.instruct.generate import InstructConfig, build_instructions
    from grok.instruct.llm import LLMConfig
    from grok.instruct.records import StudyError

    if not studies.exists():
        fail(f"{studies}: study records not found (pass the JSONL/parquet written by the records stage)",
             ExitCode.BAD_INPUT)
    try:
        llm = LLMConfig()
        if mode in ("llm", "rewrite"):  # template mode reads no LLM settings (a stale GROK_LLM_* variable cannot break it)
            overrides = {"base_url": base_url, "model": model, "concurrency": concurrency,
                         "requests_per_second": rps, "max_attempts": max_attempts, "send_images": images}
            llm = LLMConfig.from_file(llm_config, **overrides) if llm_config else LLMConfig.from_env(**overrides)
            if llm.image_root is None:
                llm = llm.model_copy(update={"image_root": str(studies.resolve().parent)})
        given = {"mode": mode, "tasks": _tasks(tasks), "seed": seed, "tolerance": tolerance}  # None: the model's default
        cfg = InstructConfig.parse({**{k: v for k, v in given.items() if v is not None}, "llm": llm}, where="options: ")
    except FileNotFoundError as exc:
        fail(str(exc), ExitCode.BAD_INPUT)
    except ConfigError as exc:
        fail(str(exc), ExitCode.USAGE)
    try:
        summary = build_instructions(studies, out, cfg, log=lambda m: console.print(m, highlight=False))
    except ImportError as exc:
        fail(str(exc), ExitCode.MISSING_DEPENDENCY)
    except (StudyError, FileNotFoundError) as exc:
        fail(str(exc), ExitCode.BAD_INPUT)
    if as_json:
        print_json(summary)
    if summary["rows"] == 0:
        fail(f"no verified rows were written; see {out / 'quarantine.parquet'} and summary.json", ExitCode.FAILED)


def verify(
    table: Path = typer.Argument(None, help="instructions.parquet (or a quarantine table) to re-check."),
    studies: Path = typer.Option(None, "--studies", help="Study records; default: studies.jsonl next to TABLE."),
    dataset: str = typer.Option(None, "--dataset", help="Re-check a published version (NAME@VERSION) from its own "
                                "records config instead of a table."),
    registry: str = typer.Option(None, "--registry", help="Registry of --dataset (default $GROK_REGISTRY or ./registry)."),
    tolerance: float = typer.Option(0.10, "--tolerance", help="Relative tolerance for numbers (0.10 = ±10 %)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Verify every row of TABLE against its study records, or every row of a published version (--dataset)
    against the evidence it carries. Exit 1 when any row fails (or, for --dataset, its verdict differs from
    the build's)."""
    from grok.registry import RegistryError
    from grok.verify import VerifyConfig, verify_table
    from grok.verify.replay import verify_dataset

    if (table is None) == (dataset is None):
        fail("give either TABLE or --dataset NAME@VERSION", ExitCode.USAGE)
    if table is not None and not table.exists():
        fail(f"{table}: table not found (run 'grok instruct STUDIES --out DIR' first)", ExitCode.BAD_INPUT)
    try:
        cfg = VerifyConfig(tolerance=tolerance)
    except ValueError as exc:
        fail(str(exc), ExitCode.USAGE)
    try:
        res = verify_dataset(dataset, registry, cfg) if dataset else verify_table(table, studies, cfg)
    except (FileNotFoundError, RegistryError) as exc:
        fail(str(exc), ExitCode.BAD_INPUT)
    if as_json:
        print_json(res)
    else:
        console.print(f"{res['passed']}/{res['rows']} rows pass; reasons: {res['reasons_by_code'] or 'none'}",
                      highlight=False)
        if dataset:
            console.print(f"{res['same_verdict_as_build']}/{res['rows']} verdicts as at build time "
                          f"({res['dataset']}, kb {res['kb_snapshot_now']} now; rows: {res['kb_snapshot_of_rows']})",
                          highlight=False)
        for f in (res.get("differing_rows") or res.get("failing_rows") or [])[:10]:
            why = f["now"]["reasons"] if "now" in f else f["reasons"]
            console.print(f"  {f['id']} ({f['task']}): {'; '.join(why)[:300]}", highlight=False, markup=False)
    if res["failed"] or res.get("different_verdict"):
        raise SystemExit(int(ExitCode.FAILED))


def register(app: typer.Typer) -> None:
    """Add ``instruct`` and ``verify`` to the ``grok`` app."""
    app.command("instruct")(instruct)
    app.command("verify")(verify)
