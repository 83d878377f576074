"""Timed LoRA SFT steps on a randomly initialised Qwen2-VL; prints one JSON object.

Run as: python benchmarks/train_gpu.py                      # 7B-shaped, bf16, on a CUDA GPU
        python benchmarks/train_gpu.py --preset tiny --steps 3   # CPU check with the tiny model

A realistic GROK row: one CFP (skimage.data.retina(), 1411 x 1411 RGB), two OCT B-scans (496 x 512
greyscale phantoms) and a 300-word report as the assistant answer, tokenised with the real Qwen2
vocabulary and the Qwen2-VL image processor (images capped at ``--image-max-pixels``). Each timed step
is forward + backward + AdamW on one micro-batch with LoRA r 128 / alpha 256 on every language-model
linear layer, the projector trained, gradient checkpointing on (``--no-grad-ckpt`` to disable).

Output: ``tokens_per_s`` (non-pad LLM tokens, image tokens included, per second), ``step_time_s``
(median of the timed steps), ``peak_memory_gib`` (``torch.cuda.max_memory_allocated``; on the CPU the
process peak RSS instead), ``mfu`` = model FLOPs per step / step time / peak bf16 FLOP/s, with the
FLOP convention of ``grok_train/flops.py`` (LoRA-aware: 4P per token for frozen weights, 6R for
adapters, causal attention, lm_head on answer tokens only, frozen vision tower forward only; the
gradient-checkpointing recompute is excluded from model FLOPs and included in ``hfu``). MFU is null on
the CPU or an unknown GPU unless ``--peak-tflops`` is given.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grok_train._compat import guard_torchvision

guard_torchvision()  # hide a broken torchvision before transformers / peft are imported

import torch

from grok_train.config import LoraSettings, ModelConfig, TinyModelConfig
from grok_train.flops import peak_bf16_flops, sft_step_flops
from grok_train.losses import AnswerTokenLoss
from grok_train.modeling import _classes, apply_lora, build_image_processor, build_model, mrope_section
from grok_train.sft import enable_activation_checkpointing
from grok_train.sft_data import ChatEncoder, count_target_tokens
from grok_train.tokenizer import build_qwen2_tokenizer

WORDS = ["retina", "macula", "fovea", "thickness", "drusen", "pigment", "epithelium", "ganglion", "layer", "nerve", "fibre", "cup", "disc", "ratio", "vessel", "calibre", "arteriole", "venule", "haemorrhage", "exudate", "oedema", "fluid", "subretinal", "intraretinal", "normal", "thinning", "thickening", "central", "subfield", "micrometres", "estimated", "approximately", "consistent", "with", "suggests", "glaucoma", "degeneration", "diabetic", "hypertensive", "changes", "mild", "moderate", "severe", "bilateral"]


def qwen2_vl_7b_config(vocab_size: int = 152064):
    """Qwen2-VL-7B-Instruct's shapes (random weights)."""
    config_cls, _ = _classes("qwen2_vl")
    return config_cls(
        text_config=dict(vocab_size=vocab_size, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                         num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                          "mrope_section": mrope_section(128)}),
        vision_config=dict(depth=32, embed_dim=1280, hidden_size=3584, num_heads=16, mlp_ratio=4),
        tie_word_embeddings=False,
    )


def oct_phantom(rng: np.random.Generator, height: int = 496, width: int = 512):
    """A 496 x 512 greyscale B-scan: bright/dark bands with a foveal dip, speckle noise."""
    from PIL import Image

    x = np.linspace(-1, 1, width)
    top = 0.3 * height + 0.05 * height * np.exp(-(x / 0.2) ** 2)
    img = np.full((height, width), 20.0)
    rows = np.arange(height)[:, None]
    b = top[None, :]
    for t, level in zip((18, 30, 22, 60, 12), (200, 110, 70, 150, 240)):
        img = np.where((rows >= b) & (rows < b + t), level, img)
        b = b + t
    img += rng.normal(0, 15, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def make_rows(n: int, words: int, seed: int = 0) -> list[dict]:
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(seed)
    cfp = Image.fromarray(data.retina())
    rows = []
    for i in range(n):
        report = " ".join(rng.choice(WORDS, size=words)).capitalize() + "."
        rows.append({
            "id": f"bench-{i}",
            "images": [cfp, oct_phantom(rng), oct_phantom(rng)],
            "messages": [
                {"role": "system", "content": "You are a retina specialist."},
                {"role": "user", "content": "Colour fundus photograph: <image>\nOCT B-scans: <image> <image>\n"
                                            "Write the report with the most likely diagnosis."},
                {"role": "assistant", "content": report},
            ],
        })
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=("auto", "7b", "tiny"), default="auto",
                    help="auto = 7b on CUDA, tiny on the CPU")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 10 on GPU, 3 on CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2 on GPU, 1 on CPU)")
    ap.add_argument("--batch-size", type=int, default=None, help="rows per step (default 8 on GPU, 2 on CPU)")
    ap.add_argument("--words", type=int, default=300, help="words in each report (the assistant answer)")
    ap.add_argument("--lora-r", type=int, default=128)
    ap.add_argument("--lora-alpha", type=int, default=256)
    ap.add_argument("--image-max-pixels", type=int, default=None,
                    help="image processor budget (default 301056 = <= 384 tokens per image; 12544 on CPU)")
    ap.add_argument("--no-grad-ckpt", action="store_true", help="disable gradient checkpointing")
    ap.add_argument("--attn", default="sdpa", choices=("sdpa", "eager", "flash_attention_2"))
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the device's peak bf16 TFLOP/s")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (CPU runs are single-threaded by default)")
    args = ap.parse_args(argv)

    cuda = torch.cuda.is_available()
    preset = ("7b" if cuda else "tiny") if args.preset == "auto" else args.preset
    device = torch.device("cuda") if cuda else torch.device("cpu")
    if not cuda:
        torch.set_num_threads(args.threads)
    steps = args.steps or (10 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (2 if cuda else 1)
    batch_size = args.batch_size or (8 if cuda else 2)
    max_pixels = args.image_max_pixels or (301056 if preset == "7b" else 12544)
    dtype = torch.bfloat16 if cuda else torch.float32
    grad_ckpt = not args.no_grad_ckpt

    tok = build_qwen2_tokenizer()
    model_cfg = ModelConfig(tiny=TinyModelConfig(), image_min_pixels=3136, image_max_pixels=max_pixels,
                            attn_implementation=args.attn)
    image_processor = build_image_processor(model_cfg)
    t_build = time.perf_counter()
    torch.manual_seed(0)
    if preset == "7b":
        _, model_cls = _classes("qwen2_vl")
        with torch.device(device):
            base = model_cls._from_config(qwen2_vl_7b_config(), attn_implementation=args.attn, dtype=dtype)
    else:
        base = build_model(model_cfg, tok, dtype).to(device)
    base.config.use_cache = False
    if grad_ckpt:
        enable_activation_checkpointing(base)
    model = apply_lora(base, LoraSettings(r=args.lora_r, alpha=args.lora_alpha, dropout=0.05))
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    model.to(device).train()
    build_s = time.perf_counter() - t_build

    enc = ChatEncoder(tok, image_processor, max_length=32768)
    rows = make_rows(batch_size, args.words)
    encoded = enc.encode_all(rows)
    batch = enc.collate(encoded, [r["images"] for r in rows])
    batch = {k: v.to(device) for k, v in batch.items()}
    batch["pixel_values"] = batch["pixel_values"].to(dtype)
    n_targets = count_target_tokens(batch["labels"])
    loss_fn = AnswerTokenLoss(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)

    def step() -> float:
        with autocast:
            loss = loss_fn(**batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for i in range(warmup + steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        losses.append(step())
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)

    step_s = statistics.median(times)
    tokens = int(batch["attention_mask"].sum())
    image_tokens = int(batch["mm_token_type_ids"].sum())
    flops = sft_step_flops(model, batch, n_targets, gradient_checkpointing=grad_ckpt,
                           merge_size=int(image_processor.merge_size))
    device_name = torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu"
    peak = args.peak_tflops * 1e12 if args.peak_tflops else (peak_bf16_flops(device_name) if cuda else None)
    result = {
        "preset": preset,
        "device": device_name,
        "dtype": str(dtype).replace("torch.", ""),
        "threads": None if cuda else torch.get_num_threads(),
        "batch_size": batch_size,
        "tokens_per_step": tokens,
        "image_tokens_per_step": image_tokens,
        "target_tokens_per_step": n_targets,
        "seq_len_max": int(batch["input_ids"].shape[1]),
        "lora_r": args.lora_r,
        "gradient_checkpointing": grad_ckpt,
        "parameters_total": sum(p.numel() for p in model.parameters()),
        "parameters_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "build_s": round(build_s, 3),
        "warmup_steps": warmup,
        "timed_steps": steps,
        "step_time_s": round(step_s, 4),
        "step_time_s_all": [round(t, 4) for t in times],
        "tokens_per_s": round(tokens / step_s, 1),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if cuda else None,
        "peak_rss_gib": None if cuda else round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "model_flops_per_step": flops.model_flops,
        "hardware_flops_per_step": flops.hardware_flops,
        "flops_breakdown": flops.to_dict(),
        "achieved_tflops": round(flops.model_flops / step_s / 1e12, 3),
        "peak_bf16_tflops": peak / 1e12 if peak else None,
        "mfu": round(flops.model_flops / step_s / peak, 4) if peak else None,
        "hfu": round(flops.hardware_flops / step_s / peak, 4) if peak else None,
        "mfu_reason": None if peak else "peak FLOP/s unknown for this device (CPU or unlisted GPU); pass --peak-tflops",
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
