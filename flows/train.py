"""Training flows for the GPU work pool: alignment and LoRA SFT on a pinned dataset version.

Run as: prefect deploy --all   (deployments train-align/gpu and train-sft/gpu in prefect.yaml)

The flows run ``grok_train`` (which imports neither Prefect nor Great Expectations) in a subprocess,
so a CUDA crash cannot take the worker down, and record the run folder and metrics as artifacts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact


def _run(job: str, dataset: str, registry: str | None, profile: str, overrides: list[str] | None,
         output_root: str) -> dict[str, Any]:
    logger = get_run_logger()
    name = dataset.replace("@", "-")
    out = Path(output_root) / job / name
    cmd = [sys.executable, "-m", "grok_train", job, "--config", f"{job}_{profile}.yaml", "--dataset", dataset,
           "--output-dir", str(out), "--json", "--quiet"]
    if registry:
        cmd += ["--registry", registry]
    for ov in overrides or []:
        cmd += ["--set", ov]
    logger.info("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    if proc.returncode != 0:
        raise RuntimeError(f"grok_train {job} failed (exit {proc.returncode}): {proc.stderr[-3000:]}")
    result = json.loads(proc.stdout)
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
