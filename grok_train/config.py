"""Typed job configurations (alignment, SFT, predict) loaded from YAML plus ``--set key=value`` overrides.

Every field is documented where it is declared; ``__post_init__`` validates at the edge and raises
:class:`grok_train.errors.ConfigError` naming the field (as spelled in YAML / ``--set``) and the fix.
The GROK defaults (arXiv 2510.04281) are the dataclass defaults; the shipped YAML files in
``grok_train/configs/`` only override what differs (CPU smoke sizes, output folders).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from grok_train.errors import ConfigError

#: Folder of the shipped YAML configs (``align_cpu_smoke.yaml`` ...).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"

MODEL_FAMILIES = ("qwen2_vl", "qwen2_5_vl")
PRECISIONS = ("auto", "bf16", "fp32")
SCHEDULERS = ("cosine", "linear", "constant")
#: LoRA target shorthand: every linear layer of the language model (attention and MLP), not the
#: vision tower and not ``lm_head`` -- GROK's "all linear layers" of the LLM.
ALL_LINEAR_LLM = "all-linear-llm"


def _positive(name: str, value: float | None, *, allow_none: bool = False, allow_zero: bool = False) -> None:
    if value is None:
        if allow_none:
            return
        raise ConfigError(f"{name} is required (got null); set it in the YAML or with --set {name}=...")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be {bound}, got {value!r}; fix it with --set {name}=...")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}; fix it with --set {name}=...")


@dataclass
class DataConfig:
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
    max_rows: int | None = None
    """Keep only the first N rows of each split (smoke runs); None = all rows."""

    def __post_init__(self) -> None:
        if self.dataset is not None and "@" not in self.dataset:
            raise ConfigError(
                f"data.dataset must be NAME@VERSION (a pinned version), got {self.dataset!r}; "
                "pass e.g. --dataset grok-phantom@0.1.0"
            )
        _positive("data.max_rows", self.max_rows, allow_none=True)

    def require_source(self) -> None:
        """Raise unless exactly one of ``dataset`` / ``dataset_path`` is set."""
        if self.dataset is None and self.dataset_path is None:
            raise ConfigError(
                "no dataset given: pass --dataset NAME@VERSION (registry) or --dataset-path DIR (local folder)"
            )
        if self.dataset is not None and self.dataset_path is not None:
            raise ConfigError("give only one of --dataset NAME@VERSION and --dataset-path DIR, not both")


@dataclass
class TinyModelConfig:
    """A randomly initialised Qwen2-VL-shaped model (CPU tests, smoke runs, benchmarks)."""

    hidden_size: int = 64
    """Language-model hidden size."""
    num_layers: int = 2
    """Language-model decoder layers."""
    num_heads: int = 4
    """Attention heads (head_dim = hidden_size / num_heads, must be even for M-RoPE)."""
    num_kv_heads: int = 2
    """Key/value heads (grouped-query attention)."""
    intermediate_size: int = 128
    """MLP width of the language model."""
    vision_depth: int = 2
    """Vision-tower blocks."""
    vision_embed_dim: int = 32
    """Vision-tower width."""
    vision_heads: int = 2
    """Vision-tower attention heads."""
    vision_mlp_ratio: int = 2
    """Vision MLP width / vision_embed_dim (Qwen2-VL) or the vision intermediate size factor (Qwen2.5-VL)."""
    seed: int = 0
    """Seed of the random initialisation."""

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
                     "vision_depth", "vision_embed_dim", "vision_heads", "vision_mlp_ratio"):
            _positive(f"model.tiny.{name}", getattr(self, name))
        if self.hidden_size % self.num_heads:
            raise ConfigError("model.tiny.hidden_size must be divisible by model.tiny.num_heads")
        if (self.hidden_size // self.num_heads) % 2 or self.hidden_size // self.num_heads < 6:
            raise ConfigError("model.tiny: head_dim = hidden_size / num_heads must be even and >= 6 (M-RoPE)")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError("model.tiny.num_heads must be a multiple of model.tiny.num_kv_heads")
        if self.vision_embed_dim % self.vision_heads:
            raise ConfigError("model.tiny.vision_embed_dim must be divisible by model.tiny.vision_heads")


@dataclass
class ModelConfig:
    """Which Qwen2-VL / Qwen2.5-VL to build: a local checkpoint folder or a tiny random one."""

    _exclusive: typing.ClassVar[tuple[tuple[str, ...], ...]] = (("path", "tiny"),)

    family: str = "qwen2_vl"
    """``qwen2_vl`` or ``qwen2_5_vl`` (used for tiny models; a ``path`` brings its own config)."""
    path: str | None = None
    """Local folder with ``config.json`` + safetensors (never a hub id: weights never come from a hub)."""
    tiny: TinyModelConfig | None = None
    """Build a random model of this shape instead of loading ``path``."""
    attn_implementation: str = "sdpa"
    """``sdpa`` (default), ``eager`` or ``flash_attention_2`` (GPU, needs flash-attn)."""
    image_min_pixels: int = 56 * 56
    """Qwen2-VL image processor: images smaller than this many pixels are upscaled."""
    image_max_pixels: int = 28 * 28 * 1280
    """Qwen2-VL image processor: images larger than this many pixels are downscaled (bounds image tokens)."""

    def __post_init__(self) -> None:
        _choice("model.family", self.family, MODEL_FAMILIES)
        if (self.path is None) == (self.tiny is None):
            raise ConfigError(
                "model: set exactly one of model.path (a local Qwen2-VL folder) and model.tiny "
                "(a random model shape, e.g. `tiny: {}`)"
            )
        _choice("model.attn_implementation", self.attn_implementation, ("sdpa", "eager", "flash_attention_2"))
        _positive("model.image_min_pixels", self.image_min_pixels)
        if self.image_max_pixels < self.image_min_pixels:
            raise ConfigError("model.image_max_pixels must be >= model.image_min_pixels")


@dataclass
class LoraSettings:
    """LoRA adapter settings (GROK: r 128, alpha 256, dropout 0.05, all linear layers)."""

    r: int = 128
    """Adapter rank."""
    alpha: int = 256
    """LoRA alpha (scale = alpha / r)."""
    dropout: float = 0.05
    """Dropout on the adapter input."""
    target_modules: str | list[str] = ALL_LINEAR_LLM
    """``all-linear-llm`` (every linear layer of the language model), peft's ``all-linear``, a regex,
    or a list of module-name suffixes."""
    train_projector: bool = True
    """Train the vision->language projector (the Qwen2-VL ``merger``) fully, at ``projector_lr``."""

    def __post_init__(self) -> None:
        _positive("lora.r", self.r)
        _positive("lora.alpha", self.alpha)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ConfigError("lora.target_modules must not be an empty list")


@dataclass
class AlignConfig:
    """CLIP-style alignment of an OCT B-scan encoder with a biomarker encoder (GROK section 3)."""

    data: DataConfig = field(default_factory=DataConfig)
    """Dataset (config ``alignment``: columns image, biomarker_ids, biomarker_values)."""
    encoder: str = "cnn"
    """Image encoder: ``cnn`` (small, CPU), ``timm:<name>`` (e.g. ``timm:vit_large_patch16_224``;
    needs timm) or ``qwen2vl`` (the vision tower of ``encoder_model``; its weights can then
    initialise the SFT model's vision tower)."""
    encoder_model: ModelConfig | None = None
    """For ``encoder: qwen2vl``: the model whose vision tower is aligned (same shape as the SFT model)."""
    encoder_checkpoint: str | None = None
    """Optional local weights file for a timm encoder (e.g. RETFound); never downloaded."""
    cnn_width: int = 32
    """Channels of the first block of the ``cnn`` encoder (doubles per block, 4 blocks)."""
    image_size_px: int = 224
    """B-scans are resized to image_size_px x image_size_px (``cnn``/``timm`` encoders)."""
    embed_dim: int = 1024
    """Shared embedding size d."""
    biomarker_hidden: int = 128
    """Hidden width of the biomarker MLP (31 -> 128 -> d)."""
    projector_hidden: int = 1024
    """Hidden width of the image projector (2 layers with batch norm -> d)."""
    temperature: float = 0.5
    """NT-Xent temperature (initial value when learnable)."""
    learnable_temperature: bool = False
    """Learn the temperature (CLIP's logit scale, clamped to <= 100)."""
    lr: float = 1e-4
    """AdamW learning rate."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    batch_size: int = 32
    """Pairs per step (in-batch negatives = batch_size - 1)."""
    epochs: int = 50
    """Passes over the training split (ignored once max_steps is reached)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps; None = epochs only."""
    normal_ranges_file: str | None = None
    """YAML/JSON mapping biomarker id -> [mean, sd] (from the knowledge base); missing ids fall back
    to training-split statistics with a warning."""
    output_dir: str = "runs/align"
    """Where checkpoints and metrics.json go."""
    eval_every_epochs: int = 1
    """Validation (R@1/R@5 both ways) every N epochs and at the end."""
    num_workers: int = 0
    """DataLoader worker processes."""
    seed: int = 0
    """Seed for initialisation and data order."""
    device: str = "auto"
    """``auto`` (CUDA if available), ``cpu``, ``cuda`` ..."""

    def __post_init__(self) -> None:
        if not (self.encoder in ("cnn", "qwen2vl") or self.encoder.startswith("timm:")):
            raise ConfigError(
                f"encoder must be 'cnn', 'qwen2vl' or 'timm:<model name>', got {self.encoder!r}; "
                "fix it with --set encoder=cnn"
            )
        if self.encoder == "qwen2vl" and self.encoder_model is None:
            raise ConfigError("encoder: qwen2vl needs encoder_model (model.path or model.tiny) in the config")
        for name in ("cnn_width", "image_size_px", "embed_dim", "biomarker_hidden", "projector_hidden",
                     "temperature", "lr", "batch_size", "epochs", "eval_every_epochs"):
            _positive(name, getattr(self, name))
        _positive("weight_decay", self.weight_decay, allow_zero=True)
        _positive("max_steps", self.max_steps, allow_none=True)
        _positive("num_workers", self.num_workers, allow_zero=True)
        if self.batch_size < 2:
            raise ConfigError("batch_size must be >= 2 (contrastive loss needs in-batch negatives)")


@dataclass
class SFTConfig:
    """LoRA supervised fine-tuning of Qwen2-VL on instruction rows (GROK section 4 defaults)."""

    data: DataConfig = field(default_factory=lambda: DataConfig(config="instructions", val_split=None))
    """Dataset (config ``instructions``: columns id, messages, images ...)."""
    model: ModelConfig = field(default_factory=lambda: ModelConfig(tiny=TinyModelConfig()))
    """Base model."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """Adapter settings."""
    output_dir: str = "runs/sft"
    """Where checkpoints, the final adapter, the processor and metrics.json go."""
    lr: float = 2e-4
    """Learning rate of the LoRA parameters."""
    projector_lr: float = 2e-5
    """Learning rate of the projector (``merger``) when lora.train_projector."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    scheduler: str = "cosine"
    """``cosine``, ``linear`` or ``constant`` (all after linear warm-up)."""
    warmup_ratio: float = 0.03
    """Fraction of optimizer steps spent in linear warm-up."""
    epochs: int = 4
    """Passes over the training split."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides epochs); None = epochs."""
    batch_size: int = 8
    """Rows per micro-batch (per process)."""
    grad_accum: int = 4
    """Micro-batches per optimizer step."""
    max_length: int = 2048
    """Longest allowed sequence (text + image tokens); longer rows are an error, never truncated."""
    precision: str = "auto"
    """``auto`` (bf16 on CUDA, fp32 on CPU), ``bf16`` or ``fp32``."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass (less memory, ~30 % more compute)."""
    length_bucketing: bool = True
    """Group rows of similar length into micro-batches (less padding)."""
    max_grad_norm: float = 1.0
    """Gradient clipping (0 = off)."""
    save_every_steps: int | None = None
    """Save a resumable checkpoint every N optimizer steps (None = only at the end)."""
    resume_from: str | None = None
    """A checkpoint folder (``<output_dir>/checkpoints/step-000010``) or ``latest``."""
    vision_init_from: str | None = None
    """An alignment run folder (encoder ``qwen2vl``) whose vision tower initialises the model's."""
    default_system_prompt: str | None = "You are a helpful assistant."
    """Inserted when a row has no system message (Qwen2-VL's template behaviour); None = none."""
    log_every_steps: int = 1
    """Log the loss every N optimizer steps."""
    seed: int = 0
    """Seed for LoRA init, dropout and data order."""
    device: str = "auto"
    """``auto`` (CUDA if available), ``cpu``, ``cuda`` ..."""

    def __post_init__(self) -> None:
        for name in ("lr", "projector_lr", "epochs", "batch_size", "grad_accum", "max_length", "log_every_steps"):
            _positive(name, getattr(self, name))
        _positive("weight_decay", self.weight_decay, allow_zero=True)
        _positive("max_grad_norm", self.max_grad_norm, allow_zero=True)
        _positive("max_steps", self.max_steps, allow_none=True)
        _positive("save_every_steps", self.save_every_steps, allow_none=True)
        _choice("scheduler", self.scheduler, SCHEDULERS)
        _choice("precision", self.precision, PRECISIONS)
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")


@dataclass
class PredictConfig:
    """Generate answers for a dataset split with a trained adapter (or a merged model) to JSONL."""

    checkpoint: str = ""
    """An SFT run folder, its ``final`` folder, a ``checkpoints/step-N`` folder or a merged model folder."""
    data: DataConfig = field(default_factory=lambda: DataConfig(config="benchmark", train_split="test",
                                                                val_split=None))
    """Dataset; rows are read from ``data.train_split`` (named ``split`` on the CLI)."""
    output: str = "predictions.jsonl"
    """JSONL file written (one object per row)."""
    max_new_tokens: int = 512
    """Generation budget per row; rows that hit it are flagged ``finish_reason: length``."""
    max_length: int = 2048
    """Prompts longer than this are an error (checked before generating)."""
    device: str = "auto"
    """``auto`` (CUDA if available), ``cpu`` ..."""
    precision: str = "auto"
    """``auto`` (bf16 on CUDA, fp32 on CPU), ``bf16`` or ``fp32``."""

    def __post_init__(self) -> None:
        _positive("max_new_tokens", self.max_new_tokens)
        _positive("max_length", self.max_length)
        _choice("precision", self.precision, PRECISIONS)


# --------------------------------------------------------------------------------------------------
# YAML <-> dataclass
# --------------------------------------------------------------------------------------------------
T = TypeVar("T")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Coerce a YAML value to the annotated type ``tp`` (nested dataclasses, Optional, lists, numbers)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: cannot convert {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(tp, type) and isinstance(value, tp):
            return value
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {type(value).__name__}")
        return _build(tp, value, where + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        (inner, *_) = typing.get_args(tp) or (Any,)
        return [_convert(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        try:
            as_float = float(value)
        except ValueError:
            raise ConfigError(f"{where} must be an integer, got {value!r}") from None
        if not as_float.is_integer():
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return int(as_float)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        try:
            return float(value)  # YAML 1.1 reads "2e-4" as a string
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value


def _merge_into_default(default: Any, given: dict[str, Any]) -> dict[str, Any]:
    """The default nested config as a dict, updated with ``given`` (keys in an ``_exclusive`` group of the
    default's class replace each other: setting ``model.path`` clears a default ``model.tiny``)."""
    merged = dataclasses.asdict(default)
    for group in getattr(type(default), "_exclusive", ()):
        if any(given.get(k) is not None for k in group):
            for k in group:
                merged[k] = None
    for key, val in given.items():
        sub = getattr(default, key, None)
        if isinstance(val, dict) and dataclasses.is_dataclass(sub):
            merged[key] = _merge_into_default(sub, val)
        else:
            merged[key] = val
    return merged


def _build(cls: type[T], raw: dict[str, Any], prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    names = list(fields)
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {[prefix + u for u in unknown]}; valid keys here: {[prefix + n for n in names]}"
        )
    raw = dict(raw)
    for name, val in raw.items():  # a partial nested mapping overrides that field's default, key by key
        f = fields[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if isinstance(val, dict) and dataclasses.is_dataclass(default) and not isinstance(default, type):
            raw[name] = _merge_into_default(default, val)
    kwargs = {k: _convert(v, hints[k], prefix + k) for k, v in raw.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from exc


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set expects KEY=VALUE (e.g. --set lora.r=8), got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
    return key.split("."), yaml.safe_load(raw) if raw.strip() else None


def config_from_dict(cls: type[T], raw: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Build ``cls`` from a nested dict after applying ``a.b=value`` overrides (values parsed as YAML)."""
    merged: dict[str, Any] = yaml.safe_load(yaml.safe_dump(raw)) if raw else {}
    for item in overrides:
        path, value = _parse_override(item)
        node = merged
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {} if node.get(part) is None else node[part]
                if not isinstance(node[part], dict):
                    raise ConfigError(f"--set {item}: {part!r} is not a mapping")
            node = node[part]
        node[path[-1]] = value
    return _build(cls, merged)


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Read a YAML file (``None`` = dataclass defaults) and apply overrides.

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
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML ({exc}); fix the file") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of config keys")
        raw = loaded
    try:
        return config_from_dict(cls, raw, overrides)
    except ConfigError as exc:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{exc}") from exc


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (for run.json / metrics files)."""
    return dataclasses.asdict(cfg)
