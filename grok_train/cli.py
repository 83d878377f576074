"""The ``grok-train`` command line (mounted as ``grok train`` by the lead): align, sft, predict, merge, push.

Run as: python -m grok_train --help

Exit codes (as in the ``grok`` CLI): 0 ok, 1 the job ran but failed, 2 usage / invalid config,
3 bad input (missing dataset version, checkpoint, unusable rows), 4 a missing optional dependency.
Progress goes to stderr; ``--json`` prints the result as JSON on stdout.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Callable
from typing import Any

import typer

from grok_train.errors import BadInputError, ConfigError, GrokTrainError, MissingDependencyError

app = typer.Typer(
    name="grok-train",
    help="GROK training jobs: CLIP-style OCT-biomarker alignment, LoRA SFT of Qwen2-VL, predict, merge.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

EXIT_FAILED, EXIT_USAGE, EXIT_BAD_INPUT, EXIT_MISSING_DEP = 1, 2, 3, 4

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config (a path, or a shipped name such as sft_cpu_smoke.yaml).")
DatasetOpt = typer.Option(None, "--dataset", help="Pinned registry version NAME@VERSION.")
DatasetPathOpt = typer.Option(None, "--dataset-path", help="Local HF dataset folder (data/<config>/<split>-*.parquet).")
RegistryOpt = typer.Option(None, "--registry", help="Registry root or URL (default: grok.registry's).")
SetOpt = typer.Option(None, "--set", help="Override a config key, e.g. --set lora.r=8 (repeatable).")
JsonOpt = typer.Option(False, "--json", help="Print the result as JSON on stdout.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="Only warnings and errors on stderr.")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "to_dict"):
        return _jsonable(obj.to_dict())
    return obj


def _setup_logging(quiet: bool) -> None:
    root = logging.getLogger("grok_train")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(logging.WARNING if quiet else logging.INFO)


def _run(job: Callable[[], Any], as_json: bool) -> None:
    """Run ``job``, map our errors to exit codes, print the result."""
    try:
        result = job()
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except MissingDependencyError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_MISSING_DEP) from None
    except (BadInputError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except GrokTrainError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    payload = _jsonable(result)
    if as_json:
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    else:
        typer.echo(json.dumps(payload, indent=2), err=True)


def _given(**values: Any) -> list[str]:
    """``key=<JSON value>`` overrides for the options the user gave (None: not given)."""
    return [f"{k}={json.dumps(v)}" for k, v in values.items() if v is not None]


def _data_overrides(dataset: str | None, dataset_path: str | None, registry: str | None,
                    dataset_config: str | None = None, split: str | None = None) -> list[str]:
    return _given(**{"data.dataset": dataset, "data.dataset_path": dataset_path, "data.registry": registry,
                     "data.config": dataset_config, "data.train_split": split})


@app.command()
def align(
    config: str | None = ConfigOpt,
    dataset: str | None = DatasetOpt,
    dataset_path: str | None = DatasetPathOpt,
    registry: str | None = RegistryOpt,
    output_dir: str | None = typer.Option(None, "--output-dir", "-o", help="Where checkpoints and metrics go."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Stop after N optimizer steps."),
    overrides: list[str] | None = SetOpt,
    as_json: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """CLIP-style OCT B-scan <-> biomarker alignment; reports validation R@1/R@5 vs chance."""
    _setup_logging(quiet)

    def job() -> Any:
        from grok_train.align import run_align
        from grok_train.config import AlignConfig, load_config

        sets = _data_overrides(dataset, dataset_path, registry) + list(overrides or [])
        sets += _given(output_dir=output_dir, max_steps=max_steps)
        return run_align(load_config(AlignConfig, config, sets))

    _run(job, as_json)


@app.command()
def sft(
    config: str | None = ConfigOpt,
    dataset: str | None = DatasetOpt,
    dataset_path: str | None = DatasetPathOpt,
    registry: str | None = RegistryOpt,
    output_dir: str | None = typer.Option(None, "--output-dir", "-o", help="Where the run folder goes."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Stop after N optimizer steps."),
    resume: str | None = typer.Option(None, "--resume", help="A checkpoints/step-N folder, or `latest`."),
    vision_init: str | None = typer.Option(None, "--vision-init", help="Alignment run (encoder qwen2vl) to init the vision tower."),
    overrides: list[str] | None = SetOpt,
    as_json: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """LoRA fine-tuning of Qwen2-VL on instruction rows (assistant-only loss); saves adapter + processor."""
    _setup_logging(quiet)

    def job() -> Any:
        from grok_train.config import SFTConfig, load_config
        from grok_train.sft import run_sft

        sets = _data_overrides(dataset, dataset_path, registry) + list(overrides or [])
        sets += _given(output_dir=output_dir, resume_from=resume, vision_init_from=vision_init, max_steps=max_steps)
        return run_sft(load_config(SFTConfig, config, sets))

    _run(job, as_json)


@app.command()
def predict(
    checkpoint: str = typer.Option(..., "--checkpoint", help="SFT run folder, checkpoints/step-N, or merged model."),
    output: str = typer.Option("predictions.jsonl", "--output", "-o", help="JSONL file to write."),
    config: str | None = ConfigOpt,
    dataset: str | None = DatasetOpt,
    dataset_path: str | None = DatasetPathOpt,
    registry: str | None = RegistryOpt,
    dataset_config: str | None = typer.Option(None, "--dataset-config", help="Dataset config (default benchmark)."),
    split: str | None = typer.Option(None, "--split", help="Split to answer (default test)."),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", help="Generation budget per row."),
    overrides: list[str] | None = SetOpt,
    as_json: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Generate answers for a dataset split to JSONL (for the evaluation harness)."""
    _setup_logging(quiet)

    def job() -> Any:
        from grok_train.config import PredictConfig, load_config
        from grok_train.predict import run_predict

        sets = _data_overrides(dataset, dataset_path, registry, dataset_config, split) + list(overrides or [])
        sets += _given(checkpoint=checkpoint, output=output, max_new_tokens=max_new_tokens)
        return run_predict(load_config(PredictConfig, config, sets))

    _run(job, as_json)


@app.command()
def merge(
    checkpoint: str = typer.Option(..., "--checkpoint", help="SFT run folder or checkpoints/step-N folder."),
    output: str = typer.Option(..., "--output", "-o", help="New folder for the merged model."),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 on CUDA), bf16 or fp32."),
    device: str = typer.Option("cpu", "--device", help="Device used for merging (cpu, cuda ...)."),
    as_json: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Fold the LoRA adapter (and trained projector) into the base model; save a standalone model."""
    _setup_logging(quiet)

    def job() -> Any:
        from grok_train.merge import run_merge

        if precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"--precision must be auto, bf16 or fp32, got {precision!r}")
        return run_merge(checkpoint, output, precision=precision, device=device)

    _run(job, as_json)


@app.command()
def push(
    checkpoint: str = typer.Option(..., "--checkpoint", help="SFT run folder, its final/, checkpoints/step-N, or a "
                                   "merged model folder."),
    hub_repo: str = typer.Option(..., "--hub-repo", help="Hub model repo ORG/NAME."),
    to_folder: str | None = typer.Option(None, "--to-folder", help="Write the repo's files to DIR/ORG/NAME/ instead "
                                         "of uploading (air-gapped sites, mirrors, tests)."),
    tag: str | None = typer.Option(None, "--tag", help="Tag the pushed commit (e.g. the dataset version)."),
    private: bool = typer.Option(False, "--private", help="Create the Hub repo private."),
    as_json: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Push a trained model with a fresh model card (and its grok eval results) to the Hugging Face Hub."""
    _setup_logging(quiet)

    def job() -> Any:
        from grok_train.push import push_model

        return push_model(checkpoint, hub_repo, to_folder=to_folder, tag=tag, private=private).to_dict()

    _run(job, as_json)


def register(parent: typer.Typer) -> None:
    """Mount these commands as ``grok train ...`` on the lead's ``grok`` app."""
    parent.add_typer(app, name="train")


def main() -> None:
    """Console-script entry point (``grok-train``)."""
    app()


if __name__ == "__main__":
    main()
