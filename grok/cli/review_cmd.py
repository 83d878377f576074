"""``grok review SOURCE`` (the curator review app), ``grok review export``, ``grok review add-curator NAME``."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import click
import typer
from typer.core import TyperGroup

from grok.cli._common import ExitCode, console, fail, print_json


class _DefaultServe(TyperGroup):
    """``grok review SOURCE ...`` means ``grok review serve SOURCE ...`` (SOURCE is not a subcommand name)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["serve", *args]
        return super().parse_args(ctx, args)


review_app = typer.Typer(cls=_DefaultServe, no_args_is_help=True, help=(
    "Curator review: grok review SOURCE serves the app over a published version (NAME@VERSION or its folder) or "
    "a build folder; export writes the decisions as parquet; add-curator prints a token."))
_DB = typer.Option(None, "--db", help=(
    "Review database: a SQLAlchemy URL (postgresql+psycopg://user@host/db) or a SQLite file; default "
    "reviews.sqlite beside the dataset (the registry's NAME folder, or the build folder)."))
_REG = typer.Option(None, "--registry", help="Registry root; default $GROK_REGISTRY or ./registry.")


def _store(db: str | None, source: str | None, registry: str | None):
    try:
        from grok.review.source import SourceError, db_folder
        from grok.review.store import Store, default_url
    except ImportError as exc:
        fail(f"{exc}; install the review extra: pip install -e '.[review]'", ExitCode.MISSING_DEPENDENCY)
    from grok.review.decisions import ReviewError

    if db is None and source is None:
        fail("pass --db URL or --source SOURCE (whose default database to use)", ExitCode.USAGE)
    try:
        return Store(db if db is not None else default_url(db_folder(source, registry)))
    except (SourceError, ReviewError) as exc:
        fail(str(exc), ExitCode.BAD_INPUT)


@review_app.command("serve")
def serve_cmd(
    source: str = typer.Argument(..., help="NAME@VERSION, a published version folder or a build folder."),
    db: str = _DB,
    host: str = typer.Option("127.0.0.1", "--host", help=(
        "Address to bind; anything but loopback makes every request need a curator token.")),
    port: int = typer.Option(8080, "--port"),
    registry: str = _REG,
    build: Path = typer.Option(None, "--build", help="The build folder a version came from (every row's overlays)."),
    double_share: float = typer.Option(0.1, "--double-share", min=0.0, max=1.0, help=(
        "Share of rows reviewed by two curators (agreement, Cohen's kappa per family).")),
    seed: int = typer.Option(0, "--seed", help="Seed of the double-review sample."),
) -> None:
    """Serve the review app over SOURCE (the default command: grok review SOURCE)."""
    try:
        import uvicorn

        from grok.review.app import create_app
        from grok.review.source import ReviewSource, SourceError
        from grok.review.store import default_url
    except ImportError as exc:
        fail(f"{exc}; install the review extra: pip install -e '.[review]'", ExitCode.MISSING_DEPENDENCY)
    try:
        src = ReviewSource(source, registry=registry, build=build)
    except (SourceError, FileNotFoundError) as exc:
        fail(str(exc), ExitCode.BAD_INPUT)
    store = _store(db or default_url(src.db_folder), None, None)
    loopback = _is_loopback(host)
    if not loopback and not store.curator_names():
        fail(f"--host {host} is reachable from other machines, so every request needs a curator token, and the "
             "database has no curator: run grok review add-curator NAME first", ExitCode.USAGE)
    app = create_app(src, store, require_token=not loopback, double_share=double_share, seed=seed)
    console.print(f"reviewing {src.label}: {len(src.rows)} rows; decisions in "
                  f"{store.engine.url.render_as_string(hide_password=True)}\n  open http://{host}:{port}/"
                  + ("" if loopback else "  (curator tokens required)"))
    uvicorn.run(app, host=host, port=port, log_level="warning")


@review_app.command("export")
def export_cmd(
    out: Path = typer.Option(..., "--out", help="Parquet file to write (one row per decision event)."),
    db: str = _DB,
    source: str = typer.Option(None, "--source", help="Use the default database of this source."),
    registry: str = _REG,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Write every decision event (curator, time, row id, content hash, action, before/after) as parquet."""
    store = _store(db, source, registry)
    n = store.export(out)
    print_json({"events": n, "out": str(out)}) if as_json else console.print(f"{n} decisions -> {out}")


@review_app.command("add-curator")
def add_curator_cmd(
    name: str = typer.Argument(..., help="Curator name (letters, digits, '.', '_', '-')."),
    db: str = _DB,
    source: str = typer.Option(None, "--source", help="Use the default database of this source."),
    registry: str = _REG,
) -> None:
    """Register NAME (or replace its token) and print the token once; only its sha256 is stored."""
    from grok.review.decisions import ReviewError

    store = _store(db, source, registry)
    try:
        token = store.add_curator(name)
    except ReviewError as exc:
        fail(str(exc), ExitCode.USAGE)
    console.print(f"curator {name}: keep this token, it is not stored and cannot be shown again")
    typer.echo(token)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def register(app: typer.Typer) -> None:
    app.add_typer(review_app, name="review")
