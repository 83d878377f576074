"""``grok datasets list | show NAME | pull NAME@VERSION``: browse and fetch published versions."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer

from grok.cli._common import ExitCode, console, fail, print_json

datasets_app = typer.Typer(help="List, inspect and pull published dataset versions.", no_args_is_help=True)
_REG = typer.Option(None, "--registry", help="Registry root (folder or fsspec URL); default $GROK_REGISTRY or ./registry.")


@datasets_app.command("list")
def list_cmd(registry: str = _REG, as_json: bool = typer.Option(False, "--json")) -> None:
    """Every dataset name with its published versions."""
    from grok.registry import list_datasets

    found = list_datasets(registry)
    if as_json:
        print_json(found)
        return
    if not found:
        console.print("no published datasets")
    for name, versions in found.items():
        console.print(f"{name}: {', '.join(versions)}")


@datasets_app.command("show")
def show_cmd(spec: str = typer.Argument(..., help="NAME, NAME@VERSION or NAME@latest."), registry: str = _REG,
             as_json: bool = typer.Option(False, "--json")) -> None:
    """The manifest of one version (latest when no version is given)."""
    from grok.registry import RegistryError, resolve

    try:
        info = resolve(spec, registry)
    except RegistryError as exc:
        fail(str(exc), ExitCode.BAD_INPUT)
    if as_json:
        print_json(info)
    else:
        console.print_json(data=info)


@datasets_app.command("pull")
def pull_cmd(spec: str = typer.Argument(..., help="NAME@VERSION or NAME@latest."), registry: str = _REG,
             out: Path = typer.Option(None, "--out", help="Copy the version folder here (default: print its path)."),
             as_json: bool = typer.Option(False, "--json")) -> None:
    """Resolve a pinned version; with --out, copy its folder (loadable by datasets.load_dataset)."""
    from grok.registry import RegistryError, resolve

    try:
        info = resolve(spec, registry)
    except RegistryError as exc:
        fail(str(exc), ExitCode.BAD_INPUT)
    path = info["path"]
    if out is not None:
        import fsspec

        fs, src = fsspec.core.url_to_fs(path)
        if out.exists():
            fail(f"{out} exists; choose an empty --out", ExitCode.USAGE)
        if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
            shutil.copytree(src, out)
        else:
            fs.get(src, str(out), recursive=True)
        path = str(out)
    result = {"name": info["name"], "version": info["version"], "fingerprint": info["fingerprint"], "path": path}
    print_json(result) if as_json else console.print(f"{info['name']}@{info['version']} -> {path}")


def register(app: typer.Typer) -> None:
    app.add_typer(datasets_app, name="datasets")
