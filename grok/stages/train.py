"""Training jobs on a published version: the one ``grok_train`` subprocess the build and the GPU flows run.

Run as: the train step of grok build (``train.via: inline``), or flows/train.py on the GPU pool

``grok_train`` imports neither Prefect nor Great Expectations and runs in a subprocess, so a CUDA crash
cannot take the build or the worker down. :func:`run_train_job` returns the job's JSON result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def train_command(job: str, dataset: str, *, profile: str, output_dir: str | Path, registry: str | None = None,
                  overrides: list[str] | None = None) -> list[str]:
    """``python -m grok_train JOB --config JOB_PROFILE.yaml --dataset NAME@VERSION ...``"""
    cmd = [sys.executable, "-m", "grok_train", job, "--config", f"{job}_{profile}.yaml", "--dataset", dataset,
           "--output-dir", str(output_dir), "--json", "--quiet"]
    if registry:
        cmd += ["--registry", registry]
    for ov in overrides or []:
        cmd += ["--set", ov]
    return cmd


def run_train_job(cmd: list[str]) -> dict[str, Any]:
    """Run a :func:`train_command`; its JSON result (raises RuntimeError with the job's stderr on failure)."""
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    if proc.returncode != 0:
        raise RuntimeError(f"training job {cmd[3]} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        return {"stdout": proc.stdout[-2000:]}
