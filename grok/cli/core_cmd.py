"""Core commands: ``grok phantom``, ``grok ingest``, ``grok demo``."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from grok.cli._common import ExitCode, console, fail, print_json


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


def phantom(
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the phantom archive into."),
    subjects: int = typer.Option(14, "--subjects", "-n", help="Number of subjects (both eyes each)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the archive is a deterministic function of it."),
    oct_shape: tuple[int, int, int] = typer.Option((49, 496, 512), "--oct-shape",
                                                   help="B-scans, rows, columns of each macular cube."),
    oct_spacing_um: tuple[float, float, float] = typer.Option(
        (3.87, 11.7, 120.0), "--oct-spacing-um", help="Axial, lateral and between-B-scan spacing in micrometres."),
    cfp_size: int = typer.Option(1024, "--cfp-size", help="Fundus photograph side in pixels."),
    noise: float = typer.Option(1.0, "--noise", help="OCT speckle level: 0.5 easy, 1 typical, 2 hard."),
    circle_scans: bool = typer.Option(False, "--circle-scans", help="Also write peripapillary circle scans."),
    exports: bool = typer.Option(True, "--exports/--no-exports", help="Also write the PNG + sidecar export layout."),
    workers: int = typer.Option(1, "--workers", help="Processes used to synthesise subjects."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Write a synthetic clinic archive (DICOM OPT/OP, exports, cohort table, ground truth)."""
    from grok.phantom.archive import PhantomConfig, write_phantom

    try:
        cfg = PhantomConfig.parse({"subjects": subjects, "seed": seed, "oct_shape": oct_shape,
                                   "oct_spacing_um": oct_spacing_um, "cfp_size": cfp_size, "noise": noise,
                                   "circle_scans": circle_scans, "exports": exports, "workers": workers},
                                  where="options: ")
    except ValueError as exc:
        fail(str(exc), ExitCode.USAGE)
    with _progress() as prog:
        task = prog.add_task("phantom subjects", total=subjects)
        summary = write_phantom(cfg, out, progress=lambda i: prog.update(task, completed=i))
    if as_json:
        print_json(summary)
    else:
        console.print(f"[green]phantom:[/] {summary['subjects']} subjects, {summary['images']} images -> {out}")


def ingest_cmd(
    source: str = typer.Argument(..., help="Folder, .zip, .tar(.gz) or fsspec URL (file://, memory://, s3://...)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (manifest, studies, quarantine, images)."),
    date_mode: str = typer.Option("shift", "--date-mode", help="'shift' dates per patient or keep only the 'year'."),
    allow_burned_in: bool = typer.Option(False, "--allow-burned-in",
                                         help="Ingest images flagged BurnedInAnnotation=YES, and image exports "
                                              "showing possible burned-in text, with a flag instead of quarantining."),
    plain_quarantine_paths: bool = typer.Option(False, "--plain-quarantine-paths",
                                                help="Store source paths in quarantine.parquet (only if they hold "
                                                     "no identifiers)."),
    locate_quarantined: bool = typer.Option(False, "--locate",
                                            help="Do not ingest: print the source path of each quarantined file "
                                                 "of a previous run in OUT (operator use; stdout only)."),
    as_json: bool = typer.Option(False, "--json", help="Print the run summary as JSON on stdout."),
) -> None:
    """Ingest an archive: read, de-identify, normalise, quarantine bad files, pair studies.

    The pseudonym secret comes from the GROK_PSEUDONYM_KEY environment variable.
    Exit code 0 when every file was accounted for (quarantined files do not fail the run).
    """
    from grok.ingest.deid import DeidConfig
    from grok.ingest.pipeline import IngestConfig, ingest, locate
    from grok.ingest.source import SourceError

    try:
        cfg = IngestConfig(deid=DeidConfig(date_mode=date_mode, allow_burned_in=allow_burned_in),
                           quarantine_paths="plain" if plain_quarantine_paths else "redacted")
    except ValueError as exc:
        fail(str(exc), ExitCode.USAGE)
    if locate_quarantined:
        if not (out / "quarantine.parquet").exists():
            fail(f"{out}: no quarantine.parquet; run grok ingest first", ExitCode.BAD_INPUT)
        found = locate(source, out, cfg)
        print_json(found) if as_json else [typer.echo(f"{k}\t{v}") for k, v in sorted(found.items())]
        return
    if cfg.deid.demo_key_used:
        console.print("[yellow]warning:[/] GROK_PSEUDONYM_KEY is not set; using the public demo key. Pseudonyms are "
                      "then reproducible by anyone: set a secret for real data.")
    try:
        with _progress() as prog:
            task = prog.add_task("ingest files", total=None)
            result = ingest(source, out, cfg, progress=lambda i, _s: prog.update(task, completed=i))
    except SourceError as exc:
        fail(str(exc), ExitCode.BAD_INPUT)
    if as_json:
        print_json(result.to_dict())
        return
    t = Table(title=f"ingest -> {out}", show_header=False)
    for k in ("files_seen", "files_ingested", "files_quarantined", "files_skipped", "files_cached", "images",
              "studies", "paired_studies", "elapsed_s"):
        t.add_row(k, str(getattr(result, k)))
    console.print(t)
    for k, v in result.quarantine_reasons.items():
        console.print(f"  quarantined [red]{k}[/]: {v}")


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Folder for everything the demo writes."),
    subjects: int = typer.Option(7, "--subjects", "-n", help="Phantom subjects (7 covers every category)."),
    seed: int = typer.Option(0, "--seed"),
    train: bool = typer.Option(True, "--train/--no-train", help="Run the CPU smoke training jobs at the end."),
    fresh: bool = typer.Option(False, "--fresh", help="Delete OUT first."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Run every stage that exists end to end on a small phantom archive (no data, no network needed)."""
    from flows.demo import run_demo

    if fresh and out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    summary = run_demo(out, subjects=subjects, seed=seed, train=train, log=lambda m: console.print(m, highlight=False))
    summary["elapsed_s"] = round(time.perf_counter() - t0, 1)
    if as_json:
        print_json(summary)
    else:
        console.print_json(json.dumps(summary))
    if summary.get("failed_stages"):
        raise SystemExit(int(ExitCode.FAILED))


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
    app.command("phantom")(phantom)
    app.command("ingest")(ingest_cmd)
