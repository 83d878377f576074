"""Run folders: what a training run writes, and how predict/merge find the model it trained.

Layout of an SFT run (``output_dir``)::

    run.json                  config, dataset pin, base-model recipe, processor settings
    metrics.json              loss per optimizer step, throughput, dataset pin
    base_model/               only for a tiny random model: its weights (safetensors)
    checkpoints/step-000010/  adapter/ + trainer_state.pt + meta.json  (resumable)
    final/                    adapter (adapter_config.json, adapter_model.safetensors), processor files,
                              meta.json

A merged model folder (``grok-train merge``) holds ``config.json`` + safetensors + processor files +
``grok_merge.json``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grok_train.config import ModelConfig, config_from_dict
from grok_train.errors import CheckpointNotFoundError

RUN_FILE = "run.json"
MERGE_FILE = "grok_merge.json"
BASE_DIR = "base_model"
FINAL_DIR = "final"
CHECKPOINTS_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
TRAINER_STATE = "trainer_state.pt"
#: Beside every saved adapter (``final/``, ``checkpoints/step-N/``): step, dataset pin, processor format.
META_FILE = "meta.json"


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (NaN -> null is the caller's job)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(p)


def read_json(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise CheckpointNotFoundError(f"{p} not found; pass the folder of a finished run")
    return json.loads(p.read_text(encoding="utf-8"))


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The highest ``checkpoints/step-N`` folder that has a trainer state, or None."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    done = sorted(p for p in root.glob("step-*") if (p / TRAINER_STATE).is_file()) if root.is_dir() else []
    return done[-1] if done else None


def resolve_resume(resume_from: str | None, output_dir: str | Path) -> Path | None:
    """``None`` -> None; ``latest`` -> newest checkpoint in output_dir (None when there is none yet);
    a folder -> that folder, which must hold ``trainer_state.pt`` and ``adapter/``."""
    if resume_from is None:
        return None
    if resume_from == "latest":
        return latest_checkpoint(output_dir)
    p = Path(resume_from)
    if not (p / TRAINER_STATE).is_file() or not (p / ADAPTER_DIR).is_dir():
        raise CheckpointNotFoundError(
            f"resume_from: {p} is not a checkpoint (needs {TRAINER_STATE} and {ADAPTER_DIR}/); "
            f"use a folder under {Path(output_dir) / CHECKPOINTS_DIR} or `latest`"
        )
    return p


@dataclass
class TrainedModel:
    """Where a trained model lives, as predict/merge need it."""

    kind: str
    """``adapter`` (base + LoRA adapter) or ``merged`` (a self-contained model folder)."""
    model_dir: Path
    """Adapter folder, or the merged model folder."""
    run: dict[str, Any]
    """run.json (adapter) or grok_merge.json (merged) contents."""

    @property
    def model_cfg(self) -> ModelConfig:
        raw = dict(self.run["config"]["model"])
        return config_from_dict(ModelConfig, raw)

    @property
    def dataset(self) -> dict[str, Any] | None:
        return self.run.get("dataset")

    def base_source(self) -> tuple[Path, str | None]:
        """(base model folder, alignment folder whose vision tower was loaded or None)."""
        base = self.run["base_model"]
        path = Path(base["path"])
        if not path.is_absolute():
            path = Path(self.run["_run_dir"]) / path
        if not path.is_dir():
            raise CheckpointNotFoundError(f"base model {path} (recorded in run.json) is missing; was it moved?")
        return path, base.get("vision_init_from")


def find_trained(checkpoint: str | Path) -> TrainedModel:
    """Accept a run folder, its ``final/``, a ``checkpoints/step-N`` folder, or a merged folder."""
    p = Path(checkpoint)
    if not p.exists():
        raise CheckpointNotFoundError(f"checkpoint {p} does not exist; pass an SFT run folder or a merged model")
    if (p / MERGE_FILE).is_file():
        return TrainedModel("merged", p, read_json(p / MERGE_FILE))
    candidates = [p / FINAL_DIR, p / ADAPTER_DIR, p]
    adapter = next((c for c in candidates if (c / "adapter_config.json").is_file()), None)
    if adapter is None:
        raise CheckpointNotFoundError(
            f"{p}: no adapter found (looked for adapter_config.json in {[str(c) for c in candidates]}); "
            "did the run finish? Pass the run folder or a checkpoints/step-N folder"
        )
    run_dir = next((q for q in (adapter, *adapter.parents[:3]) if (q / RUN_FILE).is_file()), None)
    if run_dir is None:
        raise CheckpointNotFoundError(f"{adapter}: no {RUN_FILE} in it or its parents; not an SFT run folder")
    run = read_json(run_dir / RUN_FILE)
    run["_run_dir"] = str(run_dir)
    return TrainedModel("adapter", adapter, run)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
