"""``grok validate TABLE --contract NAME``: run a data contract and write the Great Expectations data docs."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from grok.cli._common import ExitCode, console, fail, print_json


def validate_cmd(
    table: Path = typer.Argument(..., help="A parquet table (manifest, studies, biomarkers, labels, instructions ...)."),
    contract: str = typer.Option(..., "--contract", "-c", help="Contract name in data_contracts/ (or a YAML path)."),
    deny_list: Path = typer.Option(None, "--deny-list",
                                   help="JSON list of identifier strings that must not appear anywhere, or a "
                                        "build's hashed ingest/deny_list.json (needs the same GROK_PSEUDONYM_KEY)."),
    docs: Path = typer.Option(None, "--docs", help="Folder for the GE project and data docs (default next to TABLE)."),
    param: list[str] = typer.Option([], "--param", help="Contract parameter NAME=VALUE (e.g. verifier_pass_rate=0.95)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Validate TABLE against a contract. Exit 1 and name the failing expectations when it fails."""
    from grok.contracts import ContractError, validate

    if not table.is_file():
        fail(f"{table}: no such table; run the stage that writes it first", ExitCode.BAD_INPUT)
    params = {}
    for p in param:
        k, sep, v = p.partition("=")
        if not sep:
            fail(f"--param {p!r} must be NAME=VALUE", ExitCode.USAGE)
        try:
            params[k] = json.loads(v)
        except json.JSONDecodeError:
            params[k] = v
    deny = json.loads(deny_list.read_text()) if deny_list else []
    try:
        result = validate(table, contract, params=params, deny_list=deny, docs_dir=docs)
    except ContractError as exc:
        fail(str(exc), ExitCode.USAGE)
    if as_json:
        print_json(result.to_dict())
    else:
        console.print(result.summary(), highlight=False)
        if result.docs_index:
            console.print(f"data docs: {result.docs_index}")
    if not result.success:
        raise SystemExit(int(ExitCode.FAILED))


def register(app: typer.Typer) -> None:
    app.command("validate")(validate_cmd)
