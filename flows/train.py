"""Training flows for the GPU work pool: alignment and LoRA SFT on a pinned dataset version.

Run as: prefect deploy --all   (deployments train-align/gpu and train-sft/gpu in prefect.yaml)

The flows run ``grok_train`` (which imports neither Prefect nor Great Expectations) in a subprocess,
the same command the build's inline training runs (:mod:`grok.stages.train`), so a CUDA crash cannot
take the worker down, and record the run folder and metrics as artifacts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from grok.stages.train import run_train_job, train_command


def _run(job: str, dataset: str, registry: str | None, profile: str, overrides: list[str] | None,
         output_root: str) -> dict[str, Any]:
    logger = get_run_logger()
    out = Path(output_root) / job / dataset.replace("@", "-")
    cmd = train_command(job, dataset, profile=profile, output_dir=out, registry=registry, overrides=overrides)
    logger.info("running %s", " ".join(cmd))
    result = run_train_job(cmd)
    create_markdown_artifact(key=f"grok-train-{job}", description=f"{job} on {dataset}", markdown="\n".join([
        f"# {job} on {dataset}", "", f"- run folder: `{out}`", "", "```json",
        json.dumps(result, indent=1, default=str)[:6000], "```"]))
    return {"job": job, "dataset": dataset, "run_dir": str(out), "result": result}


@flow(name="train-align")
def train_align(dataset: str, registry: str | None = None, profile: str = "gpu", overrides: list[str] | None = None,
                output_root: str = "runs/train") -> dict[str, Any]:
    """CLIP-style OCT-biomarker alignment on ``dataset`` (NAME@VERSION)."""
    return _run("align", dataset, registry, profile, overrides, output_root)


@flow(name="train-sft")
def train_sft(dataset: str, registry: str | None = None, profile: str = "gpu", overrides: list[str] | None = None,
              output_root: str = "runs/train") -> dict[str, Any]:
    """LoRA SFT of a Qwen2-VL model on ``dataset`` (NAME@VERSION)."""
    return _run("sft", dataset, registry, profile, overrides, output_root)
