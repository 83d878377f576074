"""Mount the training jobs' CLI (``grok_train.cli``) as ``grok train ...``.

The same app is installed as the ``grok-train`` console script for bare GPU workers.
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    try:
        from grok_train.cli import app as train_app
    except ImportError as exc:  # the train extra is not installed
        missing = exc.name or "a training dependency"

        @app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
        def train_missing() -> None:
            """Training jobs (needs the train extra)."""
            from grok.cli._common import ExitCode, fail

            fail(f"grok train needs {missing}: pip install torch==2.13.0 && pip install 'grok-data-engine[train]'",
                 ExitCode.MISSING_DEPENDENCY)

        return
    app.add_typer(train_app, name="train", help="Training jobs: align, sft, predict, merge.")
