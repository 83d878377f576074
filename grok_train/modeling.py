"""Qwen2-VL / Qwen2.5-VL models, the offline processor, LoRA adapters and vision-tower initialisation.

Weights never come from a hub: a model is either loaded from a local folder (``model.path``) or built
with random weights from a tiny config (``model.tiny``), in which case the run saves that base model
next to its adapter so ``predict`` and ``merge`` can rebuild exactly the same network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grok_train._compat import guard_torchvision, require
from grok_train.config import ALL_LINEAR_LLM, LoraSettings, ModelConfig, TinyModelConfig
from grok_train.errors import CheckpointNotFoundError, ConfigError
from grok_train.tokenizer import CHAT_TEMPLATE, build_qwen2_tokenizer

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Regex (peft ``target_modules`` as a string is full-matched) for every linear layer of the LLM.
LLM_LINEAR_REGEX = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
#: Name of the vision->language projector in both Qwen2-VL and Qwen2.5-VL (``model.visual.merger``).
PROJECTOR_NAME = "merger"
#: Vision-tower weights written by an alignment run with ``encoder: qwen2vl``.
VISION_TOWER_FILE = "vision_tower.safetensors"


def _classes(family: str) -> tuple[Any, Any]:
    guard_torchvision()
    import transformers

    if family == "qwen2_vl":
        return transformers.Qwen2VLConfig, transformers.Qwen2VLForConditionalGeneration
    if family == "qwen2_5_vl":
        return transformers.Qwen2_5_VLConfig, transformers.Qwen2_5_VLForConditionalGeneration
    raise ConfigError(f"model.family {family!r} is not supported; use qwen2_vl or qwen2_5_vl")


def build_image_processor(model_cfg: ModelConfig) -> Any:
    """Qwen2-VL image processor with the configured pixel budget (torchvision backend if usable, else PIL)."""
    guard_torchvision()
    from transformers.utils import is_torchvision_available

    kwargs = {"min_pixels": model_cfg.image_min_pixels, "max_pixels": model_cfg.image_max_pixels}
    if is_torchvision_available():
        from transformers import Qwen2VLImageProcessor

        return Qwen2VLImageProcessor(**kwargs)
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(**kwargs)


class ProcessorBundle:
    """The Qwen2 tokenizer + the Qwen2-VL image processor + our chat template.

    ``transformers.Qwen2VLProcessor`` also needs a video processor, which requires a working
    torchvision; training only needs the two parts, so we hold them directly. :meth:`save_pretrained`
    writes the parts (``tokenizer.json``, ``preprocessor_config.json``, ``chat_template.jinja``) and,
    where torchvision works, a full ``Qwen2VLProcessor`` so ``AutoProcessor.from_pretrained`` loads it.
    """

    def __init__(self, tokenizer: Any, image_processor: Any, model_cfg: ModelConfig) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.model_cfg = model_cfg
        self.chat_template = CHAT_TEMPLATE

    def full_processor(self) -> Any:
        """A ``Qwen2VLProcessor`` (raises ImportError/TypeError where torchvision is unusable)."""
        from transformers import Qwen2VLProcessor, Qwen2VLVideoProcessor

        video = Qwen2VLVideoProcessor(min_pixels=self.model_cfg.image_min_pixels,
                                      max_pixels=self.model_cfg.image_max_pixels)
        return Qwen2VLProcessor(image_processor=self.image_processor, tokenizer=self.tokenizer,
                                video_processor=video, chat_template=self.chat_template)

    def save_pretrained(self, out_dir: str | Path) -> dict[str, Any]:
        """Write the processor files into ``out_dir``; returns what was written (for run.json)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        try:
            self.full_processor().save_pretrained(str(out))
            return {"format": "Qwen2VLProcessor", "path": str(out)}
        except Exception as exc:  # no usable torchvision -> no video processor -> save the parts
            self.tokenizer.save_pretrained(str(out))
            self.image_processor.save_pretrained(str(out))
            (out / "chat_template.jinja").write_text(self.chat_template, encoding="utf-8")
            return {"format": "parts", "path": str(out), "reason": f"{type(exc).__name__}: {str(exc)[:200]}"}


def build_processor(model_cfg: ModelConfig) -> ProcessorBundle:
    """The offline Qwen2 tokenizer (shared, cached) + the image processor with the configured pixel budget."""
    tokenizer = build_qwen2_tokenizer()
    return ProcessorBundle(tokenizer, build_image_processor(model_cfg), model_cfg)


def mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies into (temporal, height, width) like Qwen2-VL's [16, 24, 24]."""
    half = head_dim // 2
    hw = (half * 3) // 8
    return [half - 2 * hw, hw, hw]


def tiny_model_config(family: str, tiny: TinyModelConfig, vocab_size: int) -> Any:
    """A small Qwen2-VL / Qwen2.5-VL config (random weights; tests and smoke runs)."""
    config_cls, _ = _classes(family)
    head_dim = tiny.hidden_size // tiny.num_heads
    text = dict(
        vocab_size=vocab_size,
        hidden_size=tiny.hidden_size,
        intermediate_size=tiny.intermediate_size,
        num_hidden_layers=tiny.num_layers,
        num_attention_heads=tiny.num_heads,
        num_key_value_heads=tiny.num_kv_heads,
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope_section(head_dim)},
    )
    if family == "qwen2_vl":
        vision = dict(depth=tiny.vision_depth, embed_dim=tiny.vision_embed_dim, hidden_size=tiny.hidden_size,
                      num_heads=tiny.vision_heads, mlp_ratio=tiny.vision_mlp_ratio)
    else:
        vision = dict(depth=tiny.vision_depth, hidden_size=tiny.vision_embed_dim,
                      intermediate_size=tiny.vision_embed_dim * tiny.vision_mlp_ratio,
                      out_hidden_size=tiny.hidden_size, num_heads=tiny.vision_heads,
                      fullatt_block_indexes=[tiny.vision_depth - 1], window_size=112)
    return config_cls(text_config=text, vision_config=vision, tie_word_embeddings=True)


def padded_vocab_size(tokenizer: Any, multiple: int = 64) -> int:
    """len(tokenizer) rounded up to a multiple (tensor-core friendly embedding shapes)."""
    n = len(tokenizer)
    return ((n + multiple - 1) // multiple) * multiple


def _read_family(path: Path) -> str:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointNotFoundError(
            f"model.path {path}: no config.json; point model.path at a local Qwen2-VL folder "
            "(weights are never downloaded)"
        )
    model_type = json.loads(cfg_file.read_text(encoding="utf-8")).get("model_type")
    if model_type not in ("qwen2_vl", "qwen2_5_vl"):
        raise ConfigError(f"{cfg_file}: model_type {model_type!r} is not qwen2_vl or qwen2_5_vl")
    return str(model_type)


def load_pretrained(path: str | Path, dtype: torch.dtype, attn_implementation: str = "sdpa") -> Any:
    """Load a Qwen2-VL / Qwen2.5-VL from a local folder (``local_files_only``)."""
    p = Path(path)
    if not p.is_dir():
        raise CheckpointNotFoundError(f"model folder {p} does not exist; fix model.path or the --checkpoint")
    _, model_cls = _classes(_read_family(p))
    return model_cls.from_pretrained(str(p), dtype=dtype, attn_implementation=attn_implementation,
                                     local_files_only=True)


def build_model(model_cfg: ModelConfig, tokenizer: Any, dtype: torch.dtype) -> Any:
    """The base model: ``model.path`` loaded locally, or ``model.tiny`` randomly initialised (seeded)."""
    import torch

    if model_cfg.path is not None:
        return load_pretrained(model_cfg.path, dtype, model_cfg.attn_implementation)
    assert model_cfg.tiny is not None
    config = tiny_model_config(model_cfg.family, model_cfg.tiny, padded_vocab_size(tokenizer))
    _, model_cls = _classes(model_cfg.family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(model_cfg.tiny.seed)
        model = model_cls._from_config(config, attn_implementation=model_cfg.attn_implementation, dtype=dtype)
    return model


def build_vision_tower(model_cfg: ModelConfig, dtype: torch.dtype) -> Any:
    """Only the vision tower: built from ``model.tiny`` (random, seeded) or taken from ``model.path``."""
    import torch

    if model_cfg.path is not None:
        return visual_module(load_pretrained(model_cfg.path, dtype, model_cfg.attn_implementation))
    assert model_cfg.tiny is not None
    config = tiny_model_config(model_cfg.family, model_cfg.tiny, vocab_size=64)
    if model_cfg.family == "qwen2_vl":
        from transformers.models.qwen2_vl.modeling_qwen2_vl import (
            Qwen2VisionTransformerPretrainedModel as cls,
        )
    else:
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
            Qwen2_5_VisionTransformerPretrainedModel as cls,
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(model_cfg.tiny.seed)
        return cls._from_config(config.vision_config, dtype=dtype)


def visual_module(model: Any) -> Any:
    """The vision tower (``Qwen2VisionTransformerPretrainedModel``) of a Qwen2-VL model, peft-wrapped or not."""
    names = [name for name, _ in model.named_modules() if name.rsplit(".", 1)[-1] == "visual"]
    if not names:
        raise AttributeError(f"{type(model).__name__} has no vision tower (`.visual`)")
    return model.get_submodule(min(names, key=len))


def load_vision_init(model: Any, align_dir: str | Path) -> dict[str, Any]:
    """Copy the aligned vision tower (``<align_dir>/vision_tower.safetensors``) into ``model``.

    Raises :class:`CheckpointNotFoundError` if the file is missing and :class:`ConfigError` if the shapes
    differ (align with ``encoder: qwen2vl`` and the same ``encoder_model`` as the SFT ``model``).
    """
    from safetensors.torch import load_file

    path = Path(align_dir) / VISION_TOWER_FILE
    if not path.is_file():
        raise CheckpointNotFoundError(
            f"vision_init_from: {path} not found; run `grok-train align` with encoder: qwen2vl "
            "(only that encoder produces a Qwen2-VL vision tower) or drop vision_init_from"
        )
    state = load_file(str(path))
    visual = visual_module(model)
    try:
        visual.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ConfigError(
            f"vision_init_from: {path} does not fit this model's vision tower ({str(exc)[:300]}); align "
            "with the same encoder_model shape as the SFT model"
        ) from exc
    meta_file = Path(align_dir) / "align_run.json"
    meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
    return {"path": str(path), "dataset": meta.get("dataset"), "n_tensors": len(state)}


def lora_config(settings: LoraSettings) -> Any:
    """peft ``LoraConfig`` from our settings (``all-linear-llm`` -> the LLM's q/k/v/o/gate/up/down)."""
    peft = require("peft", "peft", "LoRA fine-tuning")
    target: str | list[str] = settings.target_modules
    if target == ALL_LINEAR_LLM:
        target = LLM_LINEAR_REGEX
    return peft.LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=target,
        modules_to_save=[PROJECTOR_NAME] if settings.train_projector else None,
        bias="none",
    )


def apply_lora(model: Any, settings: LoraSettings) -> Any:
    """Wrap ``model`` with fresh LoRA adapters (and a trainable projector copy); returns a ``PeftModel``."""
    peft = require("peft", "peft", "LoRA fine-tuning")
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        return peft.get_peft_model(model, lora_config(settings))
    except ValueError as exc:
        raise ConfigError(f"lora.target_modules {settings.target_modules!r} matched nothing usable: {exc}") from exc


def load_adapter(model: Any, adapter_dir: str | Path, trainable: bool = False) -> Any:
    """Attach a saved adapter (``adapter_config.json`` + ``adapter_model.safetensors``) to ``model``."""
    peft = require("peft", "peft", "LoRA adapters")
    p = Path(adapter_dir)
    if not (p / "adapter_config.json").is_file():
        raise CheckpointNotFoundError(f"{p}: no adapter_config.json; pass an SFT run, final or checkpoint folder")
    return peft.PeftModel.from_pretrained(model, str(p), is_trainable=trainable)


def parameter_groups(peft_model: Any, lr: float, projector_lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """Optimizer groups: LoRA weights at ``lr``; the projector copy (``modules_to_save``) at ``projector_lr``."""
    lora, projector = [], []
    for name, p in peft_model.named_parameters():
        if not p.requires_grad:
            continue
        (projector if f"{PROJECTOR_NAME}.modules_to_save" in name else lora).append(p)
    groups = [{"params": lora, "lr": lr, "weight_decay": weight_decay, "name": "lora"}]
    if projector:
        groups.append({"params": projector, "lr": projector_lr, "weight_decay": weight_decay, "name": "projector"})
    return groups
