"""Fold a LoRA adapter (and the trained projector) into its base model and save a standalone model.

Run as: python -m grok_train merge --checkpoint RUN_DIR --output MERGED_DIR

The merged folder holds ``config.json`` + safetensors, the processor files and ``grok_merge.json``
(the SFT run's config, dataset pin and source adapter), and is accepted by ``predict --checkpoint``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from grok_train._compat import resolve_device
from grok_train.config import LoraSettings, config_from_dict
from grok_train.errors import ConfigError
from grok_train.model_card import read_evaluation, run_metrics, write_model_card
from grok_train.predict import load_for_inference
from grok_train.runs import MERGE_FILE, find_trained, now_iso, write_json
from grok_train.sft import resolve_dtype


def run_merge(checkpoint: str | Path, output: str | Path, precision: str = "auto", device: str = "cpu") -> dict[str, Any]:
    """Merge ``checkpoint``'s adapter into its base and write ``output``; returns a summary dict."""
    t0 = time.perf_counter()
    tm = find_trained(checkpoint)
    if tm.kind == "merged":
        raise ConfigError(f"{checkpoint} is already a merged model; pass an SFT run or checkpoint folder")
    out = Path(output)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"merge output {out} exists and is not empty; pass a new folder")
    dev = resolve_device(device)
    model, processor, tm = load_for_inference(checkpoint, resolve_dtype(precision, dev), dev)
    merged = model.merge_and_unload()
    merged.save_pretrained(str(out))
    processor_info = processor.save_pretrained(out)
    record = {
        "job": "merge",
        "created": now_iso(),
        "source_adapter": str(tm.model_dir.resolve()),
        "config": tm.run["config"],
        "dataset": tm.run.get("dataset"),
        "base_model": tm.run.get("base_model"),
        "processor": processor_info,
    }
    write_json(out / MERGE_FILE, record)
    run_dir = Path(tm.run["_run_dir"])
    write_model_card(out, kind="merged", model=tm.model_cfg,
                     lora=config_from_dict(LoraSettings, tm.run["config"].get("lora") or {}),
                     dataset=tm.run.get("dataset") or {}, metrics=run_metrics(run_dir),
                     evaluation=read_evaluation(run_dir))
    return {"output": str(out), "source_adapter": str(tm.model_dir), "dataset": tm.run.get("dataset"),
            "parameters": sum(p.numel() for p in merged.parameters()), "seconds": round(time.perf_counter() - t0, 3)}
