"""Generate answers for a dataset split with a trained adapter (or a merged model) to JSONL.

Run as: python -m grok_train predict --checkpoint RUN_DIR --dataset-path DIR --split test --output preds.jsonl

Each output line: ``id``, ``task``, ``label``, ``prediction``, ``reference`` (the held-out assistant
answer when the row has one), ``finish_reason`` (``eos`` or ``length``: the generation budget ran out,
so the prediction is cut -- flagged, never silent), token counts, the dataset pin and the checkpoint.
Every row is validated and its prompt length checked before the first generation.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grok_train._compat import resolve_device
from grok_train.config import PredictConfig
from grok_train.data import load_split, resolve_dataset
from grok_train.errors import SequenceTooLongError
from grok_train.modeling import build_processor, load_adapter, load_pretrained, load_vision_init
from grok_train.runs import TrainedModel, find_trained
from grok_train.sft import resolve_dtype
from grok_train.sft_data import ChatEncoder
from grok_train.tokenizer import ENDOFTEXT, IM_END

log = logging.getLogger("grok_train.predict")


def load_for_inference(checkpoint: str | Path, dtype: Any, device: Any) -> tuple[Any, Any, TrainedModel]:
    """(model in eval mode on ``device``, processor bundle, run record) for a run / checkpoint / merged folder."""
    tm = find_trained(checkpoint)
    model_cfg = tm.model_cfg
    processor = build_processor(model_cfg)
    if tm.kind == "merged":
        model = load_pretrained(tm.model_dir, dtype, model_cfg.attn_implementation)
    else:
        base_path, vision_from = tm.base_source()
        base = load_pretrained(base_path, dtype, model_cfg.attn_implementation)
        if vision_from:
            load_vision_init(base, vision_from)
        model = load_adapter(base, tm.model_dir, trainable=False)
    model.eval()
    return model.to(device), processor, tm


@dataclass
class PredictResult:
    output: str
    rows: int
    finished_eos: int
    hit_length_limit: int
    dataset: dict[str, Any]
    checkpoint: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run_predict(cfg: PredictConfig) -> PredictResult:
    """Generate greedily (one row at a time) for ``cfg.data.train_split`` and write ``cfg.output``."""
    import torch

    cfg.data.require_source()
    t0 = time.perf_counter()
    tm = find_trained(cfg.checkpoint)  # fail on a missing checkpoint before reading any data
    pin = resolve_dataset(cfg.data.dataset, cfg.data.registry, dataset_path=cfg.data.dataset_path)
    rows = load_split(cfg.data.dataset, cfg.data.config, cfg.data.train_split, cfg.data.registry,
                      dataset_path=cfg.data.dataset_path, max_rows=cfg.data.max_rows)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.precision, device)
    model, processor, tm = load_for_inference(cfg.checkpoint, dtype, device)
    system = tm.run.get("config", {}).get("default_system_prompt")
    encoder = ChatEncoder(processor.tokenizer, processor.image_processor, cfg.max_length, system)
    encoded = encoder.encode_all(rows, for_generation=True)
    too_long = [e.row_id for e in encoded if e.length >= cfg.max_length]
    if too_long:
        raise SequenceTooLongError(f"prompts of rows {too_long[:10]} leave no room to answer within max_length "
                                   f"{cfg.max_length}; raise max_length")
    tok = processor.tokenizer
    stop_ids = [tok.convert_tokens_to_ids(IM_END), tok.convert_tokens_to_ids(ENDOFTEXT)]
    out_path = Path(cfg.output)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    n_eos = n_len = 0
    with out_path.open("w", encoding="utf-8") as fh:
        for i, enc in enumerate(encoded):
            batch = encoder.collate([enc], [list(rows[i].get("images") or [])])
            batch.pop("labels")
            batch = {k: v.to(device) for k, v in batch.items()}
            if "pixel_values" in batch:
                batch["pixel_values"] = batch["pixel_values"].to(dtype)
            budget = min(cfg.max_new_tokens, cfg.max_length - enc.length)
            with torch.no_grad():
                gen = model.generate(**batch, max_new_tokens=budget, do_sample=False, eos_token_id=stop_ids,
                                     pad_token_id=tok.pad_token_id)
            new = gen[0, enc.length :].tolist()
            stopped = any(t in stop_ids for t in new)
            if stopped:
                new = new[: next(k for k, t in enumerate(new) if t in stop_ids)]
                n_eos += 1
            else:
                n_len += 1
            record = {
                "id": enc.row_id,
                **enc.meta,
                "prediction": tok.decode(new, skip_special_tokens=True),
                "reference": enc.reference,
                "finish_reason": "eos" if stopped else "length",
                "prompt_tokens": enc.length,
                "generated_tokens": len(new),
                "dataset": f"{pin.name}@{pin.version}",
                "dataset_fingerprint": pin.fingerprint,
                "checkpoint": str(Path(cfg.checkpoint).resolve()),
            }
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    if n_len:
        log.warning("%d of %d rows hit the generation budget (finish_reason=length)", n_len, len(encoded))
    return PredictResult(str(out_path), len(encoded), n_eos, n_len, pin.to_dict(), str(cfg.checkpoint),
                         time.perf_counter() - t0)
