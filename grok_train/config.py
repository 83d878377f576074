"""Typed job configurations (alignment, SFT, predict) loaded from YAML plus ``--set key=value`` overrides.

Run as: a library module (grok-train align|sft|predict --config FILE --set KEY=VALUE)

The models are :class:`grok.config.Settings` (pydantic), like every config of the project: every field
is documented where it is declared, unknown keys are errors, and a bad value raises the one
:class:`~grok.config.ConfigError` naming the field (as spelled in YAML / ``--set``) and the fix. The GROK
defaults (arXiv 2510.04281) are the model defaults; the shipped YAML files in ``grok_train/configs/``
only override what differs (CPU smoke sizes, output folders). A partial nested mapping overrides its
field's default key by key (SFT's ``data`` keeps ``config: instructions`` when only ``data.dataset`` is
given).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import Field, field_validator, model_validator

from grok.config import ConfigError, Settings, apply_overrides, read_yaml_mapping

#: Folder of the shipped YAML configs (``align_cpu_smoke.yaml`` ...).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"

MODEL_FAMILIES = ("qwen2_vl", "qwen2_5_vl")
PRECISIONS = ("auto", "bf16", "fp32")
SCHEDULERS = ("cosine", "linear", "constant")
#: LoRA target shorthand: every linear layer of the language model (attention and MLP), not the
#: vision tower and not ``lm_head`` -- GROK's "all linear layers" of the LLM.
ALL_LINEAR_LLM = "all-linear-llm"

Precision = Literal["auto", "bf16", "fp32"]
T = TypeVar("T", bound=Settings)


class DataConfig(Settings):
    """Where a job reads its rows: a pinned registry version or a local Hugging Face dataset folder."""

    dataset: str | None = None
    """``NAME@VERSION`` in the registry (``grok.registry``); the version is recorded in every output."""
    dataset_path: str | None = None
    """A local HF dataset folder holding ``data/<config>/<split>-*.parquet`` (tests, offline runs)."""
    registry: str | None = None
    """Registry root or URL passed to ``grok.registry``; None = its default (the local folder registry)."""
    config: str = "alignment"
    """Dataset config (``alignment``, ``instructions``, ``benchmark``)."""
    train_split: str = "train"
    """Split used for training."""
    val_split: str | None = "validation"
    """Split used for validation metrics; None = no validation."""
    max_rows: int | None = Field(None, gt=0)
    """Keep only the first N rows of each split (smoke runs); None = all rows."""

    @field_validator("dataset")
    @classmethod
    def _pinned(cls, v: str | None) -> str | None:
        if v is not None and "@" not in v:
            raise ValueError(f"must be NAME@VERSION (a pinned version), got {v!r}; pass e.g. "
                             "--dataset grok-phantom@0.1.0")
        return v

    def require_source(self) -> None:
        """Raise unless exactly one of ``dataset`` / ``dataset_path`` is set."""
        if self.dataset is None and self.dataset_path is None:
            raise ConfigError(
                "no dataset given: pass --dataset NAME@VERSION (registry) or --dataset-path DIR (local folder)"
            )
        if self.dataset is not None and self.dataset_path is not None:
            raise ConfigError("give only one of --dataset NAME@VERSION and --dataset-path DIR, not both")


class TinyModelConfig(Settings):
    """A randomly initialised Qwen2-VL-shaped model (CPU tests, smoke runs, benchmarks)."""

    hidden_size: int = Field(64, gt=0)
    """Language-model hidden size."""
    num_layers: int = Field(2, gt=0)
    """Language-model decoder layers."""
    num_heads: int = Field(4, gt=0)
    """Attention heads (head_dim = hidden_size / num_heads, must be even for M-RoPE)."""
    num_kv_heads: int = Field(2, gt=0)
    """Key/value heads (grouped-query attention)."""
    intermediate_size: int = Field(128, gt=0)
    """MLP width of the language model."""
    vision_depth: int = Field(2, gt=0)
    """Vision-tower blocks."""
    vision_embed_dim: int = Field(32, gt=0)
    """Vision-tower width."""
    vision_heads: int = Field(2, gt=0)
    """Vision-tower attention heads."""
    vision_mlp_ratio: int = Field(2, gt=0)
    """Vision MLP width / vision_embed_dim (Qwen2-VL) or the vision intermediate size factor (Qwen2.5-VL)."""
    seed: int = 0
    """Seed of the random initialisation."""

    @model_validator(mode="after")
    def _shapes(self) -> TinyModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError("{here}hidden_size must be divisible by {here}num_heads")
        if (self.hidden_size // self.num_heads) % 2 or self.hidden_size // self.num_heads < 6:
            raise ValueError("head_dim = {here}hidden_size / {here}num_heads must be even and >= 6 (M-RoPE)")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("{here}num_heads must be a multiple of {here}num_kv_heads")
        if self.vision_embed_dim % self.vision_heads:
            raise ValueError("{here}vision_embed_dim must be divisible by {here}vision_heads")
        return self


class ModelConfig(Settings):
    """Which Qwen2-VL / Qwen2.5-VL to build: a local checkpoint folder or a tiny random one."""

    EXCLUSIVE: ClassVar[tuple[tuple[str, ...], ...]] = (("path", "tiny"),)

    family: Literal["qwen2_vl", "qwen2_5_vl"] = "qwen2_vl"
    """``qwen2_vl`` or ``qwen2_5_vl`` (used for tiny models; a ``path`` brings its own config)."""
    path: str | None = None
    """Local folder with ``config.json`` + safetensors (never a hub id: weights never come from a hub)."""
    tiny: TinyModelConfig | None = None
    """Build a random model of this shape instead of loading ``path``."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    """``sdpa`` (default), ``eager`` or ``flash_attention_2`` (GPU, needs flash-attn)."""
    image_min_pixels: int = Field(56 * 56, gt=0)
    """Qwen2-VL image processor: images smaller than this many pixels are upscaled."""
    image_max_pixels: int = 28 * 28 * 1280
    """Qwen2-VL image processor: images larger than this many pixels are downscaled (bounds image tokens)."""

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if (self.path is None) == (self.tiny is None):
            raise ValueError("set exactly one of {here}path (a local Qwen2-VL folder) and {here}tiny "
                             "(a random model shape, e.g. `tiny: {}`)")
        if self.image_max_pixels < self.image_min_pixels:
            raise ValueError("{here}image_max_pixels must be >= {here}image_min_pixels")
        return self


class LoraSettings(Settings):
    """LoRA adapter settings (GROK: r 128, alpha 256, dropout 0.05, all linear layers)."""

    r: int = Field(128, gt=0)
    """Adapter rank."""
    alpha: int = Field(256, gt=0)
    """LoRA alpha (scale = alpha / r)."""
    dropout: float = Field(0.05, ge=0, lt=1)
    """Dropout on the adapter input."""
    target_modules: str | list[str] = ALL_LINEAR_LLM
    """``all-linear-llm`` (every linear layer of the language model), peft's ``all-linear``, a regex,
    or a list of module-name suffixes."""
    train_projector: bool = True
    """Train the vision->language projector (the Qwen2-VL ``merger``) fully, at ``projector_lr``."""

    @field_validator("target_modules")
    @classmethod
    def _some(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not v:
            raise ValueError("must not be an empty list")
        return v


class AlignConfig(Settings):
    """CLIP-style alignment of an OCT B-scan encoder with a biomarker encoder (GROK section 3)."""

    data: DataConfig = Field(default_factory=DataConfig)
    """Dataset (config ``alignment``: columns image, biomarker_ids, biomarker_values)."""
    encoder: str = "cnn"
    """Image encoder: ``cnn`` (small, CPU), ``timm:<name>`` (e.g. ``timm:vit_large_patch16_224``;
    needs timm) or ``qwen2vl`` (the vision tower of ``encoder_model``; its weights can then
    initialise the SFT model's vision tower)."""
    encoder_model: ModelConfig | None = None
    """For ``encoder: qwen2vl``: the model whose vision tower is aligned (same shape as the SFT model)."""
    encoder_checkpoint: str | None = None
    """Optional local weights file for a timm encoder (e.g. RETFound); never downloaded."""
    cnn_width: int = Field(32, gt=0)
    """Channels of the first block of the ``cnn`` encoder (doubles per block, 4 blocks)."""
    image_size_px: int = Field(224, gt=0)
    """B-scans are resized to image_size_px x image_size_px (``cnn``/``timm`` encoders)."""
    embed_dim: int = Field(1024, gt=0)
    """Shared embedding size d."""
    biomarker_hidden: int = Field(128, gt=0)
    """Hidden width of the biomarker MLP (31 -> 128 -> d)."""
    projector_hidden: int = Field(1024, gt=0)
    """Hidden width of the image projector (2 layers with batch norm -> d)."""
    temperature: float = Field(0.5, gt=0)
    """NT-Xent temperature (initial value when learnable)."""
    learnable_temperature: bool = False
    """Learn the temperature (CLIP's logit scale, clamped to <= 100)."""
    lr: float = Field(1e-4, gt=0)
    """AdamW learning rate."""
    weight_decay: float = Field(0.01, ge=0)
    """AdamW weight decay."""
    batch_size: int = 32
    """Pairs per step (in-batch negatives = batch_size - 1); at least 2."""
    epochs: int = Field(50, gt=0)
    """Passes over the training split (ignored once max_steps is reached)."""
    max_steps: int | None = Field(None, gt=0)
    """Stop after this many optimizer steps; None = epochs only."""
    normal_ranges_file: str | None = None
    """YAML/JSON mapping biomarker id -> [mean, sd] (from the knowledge base); missing ids fall back
    to training-split statistics with a warning."""
    output_dir: str = "runs/align"
    """Where checkpoints and metrics.json go."""
    eval_every_epochs: int = Field(1, gt=0)
    """Validation (R@1/R@5 both ways) every N epochs and at the end."""
    num_workers: int = Field(0, ge=0)
    """DataLoader worker processes."""
    seed: int = 0
    """Seed for initialisation and data order."""
    device: str = "auto"
    """``auto`` (CUDA if available), ``cpu``, ``cuda`` ..."""

    @field_validator("encoder")
    @classmethod
    def _encoder(cls, v: str) -> str:
        if not (v in ("cnn", "qwen2vl") or v.startswith("timm:")):
            raise ValueError(f"encoder must be 'cnn', 'qwen2vl' or 'timm:<model name>', got {v!r}")
        return v

    @field_validator("batch_size")
    @classmethod
    def _negatives(cls, v: int) -> int:
        if v < 2:
            raise ValueError(f"batch_size must be >= 2 (contrastive loss needs in-batch negatives), got {v}")
        return v

    @model_validator(mode="after")
    def _encoder_model(self) -> AlignConfig:
        if self.encoder == "qwen2vl" and self.encoder_model is None:
            raise ValueError("encoder: qwen2vl needs encoder_model (model.path or model.tiny) in the config")
        return self


class SFTConfig(Settings):
    """LoRA supervised fine-tuning of Qwen2-VL on instruction rows (GROK section 4 defaults)."""

    data: DataConfig = Field(default_factory=lambda: DataConfig(config="instructions", val_split=None))
    """Dataset (config ``instructions``: columns id, messages, images ...)."""
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(tiny=TinyModelConfig()))
    """Base model."""
    lora: LoraSettings = Field(default_factory=LoraSettings)
    """Adapter settings."""
    output_dir: str = "runs/sft"
    """Where checkpoints, the final adapter, the processor and metrics.json go."""
    lr: float = Field(2e-4, gt=0)
    """Learning rate of the LoRA parameters."""
    projector_lr: float = Field(2e-5, gt=0)
    """Learning rate of the projector (``merger``) when lora.train_projector."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """``cosine``, ``linear`` or ``constant`` (all after linear warm-up)."""
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    """Fraction of optimizer steps spent in linear warm-up."""
    epochs: int = Field(4, gt=0)
    """Passes over the training split."""
    max_steps: int | None = Field(None, gt=0)
    """Stop after this many optimizer steps (overrides epochs); None = epochs."""
    batch_size: int = Field(8, gt=0)
    """Rows per micro-batch (per process)."""
    grad_accum: int = Field(4, gt=0)
    """Micro-batches per optimizer step."""
    max_length: int = Field(2048, gt=0)
    """Longest allowed sequence (text + image tokens); longer rows are an error, never truncated."""
    precision: Precision = "auto"
    """``auto`` (bf16 on CUDA, fp32 on CPU), ``bf16`` or ``fp32``."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass (less memory, ~30 % more compute)."""
    length_bucketing: bool = True
    """Group rows of similar length into micro-batches (less padding)."""
    max_grad_norm: float = Field(1.0, ge=0)
    """Gradient clipping (0 = off)."""
    save_every_steps: int | None = Field(None, gt=0)
    """Save a resumable checkpoint every N optimizer steps (None = only at the end)."""
    resume_from: str | None = None
    """A checkpoint folder (``<output_dir>/checkpoints/step-000010``) or ``latest``."""
    vision_init_from: str | None = None
    """An alignment run folder (encoder ``qwen2vl``) whose vision tower initialises the model's."""
    default_system_prompt: str | None = "You are a helpful assistant."
    """Inserted when a row has no system message (Qwen2-VL's template behaviour); None = none."""
    log_every_steps: int = Field(1, gt=0)
    """Log the loss every N optimizer steps."""
    seed: int = 0
    """Seed for LoRA init, dropout and data order."""
    device: str = "auto"
    """``auto`` (CUDA if available), ``cpu``, ``cuda`` ..."""


class PredictConfig(Settings):
    """Generate answers for a dataset split with a trained adapter (or a merged model) to JSONL."""

    checkpoint: str = ""
    """An SFT run folder, its ``final`` folder, a ``checkpoints/step-N`` folder or a merged model folder."""
    data: DataConfig = Field(default_factory=lambda: DataConfig(config="benchmark", train_split="test",
                                                                val_split=None))
    """Dataset; rows are read from ``data.train_split`` (named ``split`` on the CLI)."""
    output: str = "predictions.jsonl"
    """JSONL file written (one object per row)."""
    max_new_tokens: int = Field(512, gt=0)
    """Generation budget per row; rows that hit it are flagged ``finish_reason: length``."""
    max_length: int = Field(2048, gt=0)
    """Prompts longer than this are an error (checked before generating)."""
    device: str = "auto"
    """``auto`` (CUDA if available), ``cpu`` ..."""
    precision: Precision = "auto"
    """``auto`` (bf16 on CUDA, fp32 on CPU), ``bf16`` or ``fp32``."""


# --------------------------------------------------------------------------------------------------
# YAML -> model
# --------------------------------------------------------------------------------------------------
def _set_hint(name: str) -> str:
    return f"fix it in the YAML or with --set {name}=..."


def config_from_dict(cls: type[T], raw: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Build ``cls`` from a nested dict after applying ``a.b=value`` overrides (values parsed as YAML)."""
    return cls.parse(apply_overrides(raw or {}, overrides), hint=_set_hint)


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Read a YAML file (``None`` = the model defaults) and apply overrides.

    A bare name such as ``sft_cpu_smoke.yaml`` that does not exist relative to the working directory is
    looked up in the shipped ``grok_train/configs/``.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists() and (CONFIG_DIR / p.name).exists() and p.parent == Path("."):
            p = CONFIG_DIR / p.name
        if not p.exists():
            shipped = sorted(q.name for q in CONFIG_DIR.glob("*.yaml"))
            raise ConfigError(f"config file {str(path)!r} not found; pass a YAML path or one of {shipped}")
        raw = read_yaml_mapping(p)
    try:
        return config_from_dict(cls, raw, overrides)
    except ConfigError as exc:
        where = f"{path}: " if path is not None else ""
        raise ConfigError("\n".join(where + line for line in str(exc).splitlines())) from exc


def config_to_dict(cfg: Settings) -> dict[str, Any]:
    """Plain nested dict of a config (for run.json / metrics files)."""
    return cfg.model_dump(mode="json")
