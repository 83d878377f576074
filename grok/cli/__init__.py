"""The one ``grok`` command line.

Run as: grok --help

Each area of the library contributes its commands through a module in this package that
exposes ``register(app)``; this file only assembles them. Exit codes (documented in the
README and shared by every subcommand):

* 0 success
* 1 the work ran but its result is a failure (a contract failed, a verifier rejected rows,
  a knowledge base did not validate)
* 2 usage error (bad flag or argument; Typer's own code)
* 3 bad input (a file that cannot be found or read)
* 4 a missing optional dependency (the message names the ``pip install`` command)
"""

from __future__ import annotations

import importlib

import typer

from grok import __version__

app = typer.Typer(
    name="grok",
    help="GROK data engine: ophthalmic archives -> validated, knowledge-grounded instruction datasets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

#: Modules that register commands, in the order they appear in ``grok --help``.
_COMMAND_MODULES = (
    "grok.cli.core_cmd",  # demo, phantom, ingest
    "grok.cli.oct_cmd",  # oct segment | measure
    "grok.cli.cfp_cmd",  # cfp measure
    "grok.cli.kb_cmd",  # kb validate, reason, label
    "grok.cli.instruct_cmd",  # instruct, verify
    "grok.cli.lint_cmd",  # lint-text
    "grok.cli.contracts_cmd",  # validate
    "grok.cli.privacy_cmd",  # privacy-scan
    "grok.cli.build_cmd",  # build, publish
    "grok.cli.datasets_cmd",  # datasets list | show | pull
    "grok.cli.train_cmd",  # train align | sft | predict | merge (grok_train)
    "grok.cli.eval_cmd",  # eval PREDICTIONS --dataset, eval compare A B
    "grok.cli.review_cmd",  # review SOURCE | export | add-curator (the curator review app)
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"grok {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """GROK data engine."""


for _name in _COMMAND_MODULES:
    try:
        _mod = importlib.import_module(_name)
    except ModuleNotFoundError as exc:  # a command module that has not landed yet
        if exc.name != _name:
            raise
        continue
    _mod.register(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
