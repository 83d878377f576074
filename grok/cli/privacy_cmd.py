"""``grok privacy-scan DIR``: search every file of a build folder or a published version for identifiers."""

from __future__ import annotations

from pathlib import Path

import typer

from grok.cli._common import ExitCode, console, fail, print_json


def privacy_scan_cmd(
    directory: Path = typer.Argument(..., help="A build folder, a published version folder, or any folder/file."),
    identifiers: list[Path] = typer.Option(
        [], "--identifiers", "-i",
        help="Deny list: the hashed ingest/deny_list.json of the build (also for scanning its published "
             "versions), or a JSON list of identifier strings (hashed at once). Default: the ones DIR carries."),
    prefect_db: list[Path] = typer.Option([], "--prefect-db",
                                          help="Also scan this SQLite database (e.g. ~/.prefect/prefect.db)."),
    exclude: list[Path] = typer.Option([], "--exclude", help="A file or folder below DIR not to scan."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Report, by file, how many known identifiers of the source archive each file holds (never which).

    The hashes are keyed with GROK_PSEUDONYM_KEY: use the secret the build was ingested with.
    Exit 1 when any file other than an operator-only one (name containing 'operator-only') holds one.
    """
    from grok.privacy.scan import ScanError, scan

    if not directory.exists():
        fail(f"{directory}: no such file or folder", ExitCode.BAD_INPUT)
    for p in [*identifiers, *prefect_db]:
        if not p.is_file():
            fail(f"{p}: no such file", ExitCode.BAD_INPUT)
    try:
        report = scan(directory, identifiers=identifiers, extra_files=prefect_db, exclude=exclude)
    except ScanError as exc:
        fail(str(exc), ExitCode.BAD_INPUT)
    if as_json:
        print_json(report.to_dict())
    else:
        console.print(report.summary(), highlight=False, markup=False, soft_wrap=True)
    if not report.success:
        raise SystemExit(int(ExitCode.FAILED))


def register(app: typer.Typer) -> None:
    app.command("privacy-scan")(privacy_scan_cmd)
