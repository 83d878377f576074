"""Model FLOPs of one LoRA SFT step on Qwen2-VL (for MFU), counted from the actual modules.

Convention (documented in docs/training.md; a multiply-add = 2 FLOPs; recomputation by gradient
checkpointing is *not* model FLOPs, it is reported separately as hardware FLOPs):

* language-model linear layers, frozen base weight W (P params), per token: forward 2P + input-gradient 2P
  = **4P** (no weight gradient: W is frozen). The usual 6N would overstate LoRA work.
* LoRA adapters (R params), per token: forward 2R + input-gradient 2R + weight-gradient 2R = **6R**.
* causal self-attention scores, per layer and sequence of S tokens with width d = heads x head_dim:
  forward QK^T + AV on the causal half = 2 S^2 d, backward twice that -> **6 S^2 d**.
* ``lm_head`` (V x d) runs only on supervised positions (``AnswerTokenLoss``): **4 V d** per target.
* vision tower (frozen, no trainable parameter upstream, so forward only): **2 P_vis** per patch plus
  bidirectional attention **4 N^2 e** per block and image of N patches (width e); the projector
  (``merger``, trained) costs forward + weight-gradient = **4 P_merger** per merged token.
* embeddings: 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Dense bf16 peak FLOP/s by device-name fragment (first match wins), from the vendors' datasheets.
PEAK_BF16_FLOPS = (
    ("H200", 989.4e12),
    ("H100 PCIe", 756.0e12),
    ("H100", 989.4e12),  # SXM / HBM3 parts
    ("A100", 312.0e12),
    ("L40S", 362.1e12),
)


def peak_bf16_flops(device_name: str) -> float | None:
    """Datasheet dense bf16 peak for a CUDA device name, or None when unknown (then MFU is not reported)."""
    for fragment, peak in PEAK_BF16_FLOPS:
        if fragment.lower() in device_name.lower():
            return peak
    return None


@dataclass
class StepFlops:
    """FLOPs of one optimizer step (one micro-batch) split by component."""

    llm_linear: float
    lora: float
    attention: float
    lm_head: float
    vision: float
    projector: float
    recompute: float
    """Extra forward work of gradient checkpointing (hardware FLOPs only)."""

    @property
    def model_flops(self) -> float:
        return self.llm_linear + self.lora + self.attention + self.lm_head + self.vision + self.projector

    @property
    def hardware_flops(self) -> float:
        return self.model_flops + self.recompute

    def to_dict(self) -> dict[str, float]:
        d = dict(self.__dict__)
        d["model_flops"] = self.model_flops
        d["hardware_flops"] = self.hardware_flops
        return d


def count_parameters(model: Any) -> dict[str, int]:
    """Parameter counts by role: frozen LLM linear weights, LoRA weights, vision linear/conv weights,
    projector weights, lm_head (V x d), and the language model's layer count, width and vocabulary."""
    from torch import nn

    counts = {"llm_linear": 0, "lora": 0, "vision": 0, "projector": 0, "lm_head": 0}
    seen: set[int] = set()
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv3d)) or id(module.weight) in seen:
            continue
        seen.add(id(module.weight))
        n = module.weight.numel()
        if ".lora_A." in name or ".lora_B." in name:
            counts["lora"] += n
        elif "lm_head" in name:
            counts["lm_head"] += n
        elif ".merger." in name:
            if "original_module" not in name:  # peft keeps a frozen copy next to the trained one
                counts["projector"] += n
        elif ".visual." in name:
            counts["vision"] += n
        elif "language_model" in name:
            counts["llm_linear"] += n
    return counts


def sft_step_flops(model: Any, batch: dict[str, Any], n_targets: int, *, gradient_checkpointing: bool,
                   merge_size: int = 2) -> StepFlops:
    """FLOPs of one forward+backward on ``batch`` (see the module docstring for the convention)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    text = base.config.text_config
    vis = base.config.vision_config
    counts = count_parameters(model)
    mask = batch["attention_mask"]
    tokens = int(mask.sum())
    seq_lens = mask.sum(-1).tolist()
    d = text.num_attention_heads * (text.hidden_size // text.num_attention_heads)
    attn_fwd = sum(2.0 * s * s * d for s in seq_lens) * text.num_hidden_layers  # causal half
    llm_linear = 4.0 * counts["llm_linear"] * tokens
    lora = 6.0 * counts["lora"] * tokens
    attention = 3.0 * attn_fwd
    lm_head = 4.0 * counts["lm_head"] * n_targets
    vision = projector = 0.0
    grid = batch.get("image_grid_thw")
    if grid is not None:
        patches = grid.prod(-1).tolist()
        width = getattr(vis, "embed_dim", None) or vis.hidden_size
        depth = vis.depth
        vision = 2.0 * counts["vision"] * sum(patches) + sum(4.0 * n * n * width for n in patches) * depth
        projector = 4.0 * counts["projector"] * sum(patches) / merge_size**2
    recompute = (2.0 * (counts["llm_linear"] + counts["lora"]) * tokens + attn_fwd) if gradient_checkpointing else 0.0
    return StepFlops(llm_linear, lora, attention, lm_head, vision, projector, recompute)
