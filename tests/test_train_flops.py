"""FLOP accounting for the SFT benchmark's MFU: parameter roles counted from the modules match the config."""

from __future__ import annotations

import pytest

from grok_train._compat import guard_torchvision

guard_torchvision()  # hide a broken torchvision before transformers / peft are imported
torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from grok_train.config import LoraSettings, TinyModelConfig
from grok_train.flops import count_parameters, peak_bf16_flops, sft_step_flops
from grok_train.modeling import _classes, apply_lora, tiny_model_config


def test_parameter_roles_match_the_architecture():
    tiny = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=48,
                           vision_depth=1, vision_embed_dim=16, vision_heads=2)
    config = tiny_model_config("qwen2_vl", tiny, vocab_size=128)
    _, cls = _classes("qwen2_vl")
    torch.manual_seed(0)
    model = apply_lora(cls._from_config(config), LoraSettings(r=4, alpha=8))
    h, hd, kv, inter, layers = 32, 8, 2, 48, 2
    per_layer = h * h + 2 * h * kv * hd + h * h + 3 * h * inter
    lora_per_layer = 4 * ((h + h) + 2 * (h + kv * hd) + (h + h) + 2 * (h + inter) + (inter + h))
    counts = count_parameters(model)
    assert counts["llm_linear"] == layers * per_layer
    assert counts["lora"] == layers * lora_per_layer
    assert counts["lm_head"] == 128 * h
    merged = 16 * 4  # merger input: spatial_merge_size**2 * embed_dim
    assert counts["projector"] == merged * merged + merged * h

    mask = torch.ones(1, 10, dtype=torch.long)
    flops = sft_step_flops(model, {"attention_mask": mask}, n_targets=3, gradient_checkpointing=False)
    assert flops.llm_linear == 4 * counts["llm_linear"] * 10
    assert flops.lora == 6 * counts["lora"] * 10
    assert flops.attention == 3 * 2 * 10 * 10 * h * layers
    assert flops.lm_head == 4 * 128 * h * 3
    assert flops.vision == 0 and flops.recompute == 0
    with_ckpt = sft_step_flops(model, {"attention_mask": mask}, n_targets=3, gradient_checkpointing=True)
    assert with_ckpt.model_flops == flops.model_flops < with_ckpt.hardware_flops


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989.4e12), ("NVIDIA H100 PCIe", 756e12),
                                        ("NVIDIA H200", 989.4e12), ("NVIDIA GeForce RTX 3090", None)])
def test_peak_lookup(name, peak):
    assert peak_bf16_flops(name) == peak
