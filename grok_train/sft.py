"""LoRA supervised fine-tuning of Qwen2-VL / Qwen2.5-VL on a pinned instruction dataset.

Run as: python -m grok_train sft --config sft_cpu_smoke.yaml --dataset-path DIR   (or grok-train sft ...)

One process per GPU; several GPUs through ``torchrun --nproc_per_node N -m grok_train sft ...`` (plain
DDP: each rank takes every N-th length-bucketed micro-batch, gradients are averaged). Every input row
is validated and tokenised before the first step: a bad row stops the job with its id and the fix.
"""

from __future__ import annotations

import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grok_train._compat import resolve_device, rng_state, seed_everything, set_rng_state
from grok_train.config import SFTConfig, config_to_dict
from grok_train.data import DatasetPin, load_split, resolve_dataset
from grok_train.errors import CheckpointNotFoundError, ConfigError
from grok_train.losses import AnswerTokenLoss
from grok_train.model_card import read_evaluation, write_model_card
from grok_train.modeling import (
    VISION_TOWER_FILE,
    apply_lora,
    build_model,
    build_processor,
    load_adapter,
    load_pretrained,
    load_vision_init,
    parameter_groups,
)
from grok_train.runs import (
    ADAPTER_DIR,
    BASE_DIR,
    CHECKPOINTS_DIR,
    FINAL_DIR,
    META_FILE,
    RUN_FILE,
    TRAINER_STATE,
    checkpoint_name,
    now_iso,
    read_json,
    resolve_resume,
    write_json,
)
from grok_train.sft_data import ChatEncoder, EncodedRow, count_target_tokens, epoch_batches

log = logging.getLogger("grok_train.sft")


@dataclass
class DistInfo:
    """torch.distributed layout from torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> DistInfo:
        return cls(int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")),
                   int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(dist_info: DistInfo, device: Any) -> None:
    """Start the process group under torchrun (NCCL on CUDA, Gloo on CPU); no-op for one process."""
    import torch.distributed as dist

    if dist_info.world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def enable_activation_checkpointing(model: Any) -> None:
    """Non-reentrant activation (gradient) checkpointing; transformers 5 renamed the method."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # transformers 4.x
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if hasattr(model.config, "text_config"):
        model.config.text_config.use_cache = False


def resolve_dtype(precision: str, device: Any) -> Any:
    """``auto`` -> bf16 on a CUDA device with bf16 support, else fp32."""
    import torch

    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp32":
        return torch.float32
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def lr_multiplier(step: int, total: int, warmup: int, kind: str) -> float:
    """LR factor at optimizer step ``step`` (0-based): linear warm-up, then cosine/linear decay to 0."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class TrainState:
    """Position in the run; saved in every checkpoint."""

    step: int = 0
    """Optimizer steps done."""
    epoch: int = 0
    batch_in_epoch: int = 0
    """Micro-batches of the current epoch already consumed (on this rank)."""
    tokens: int = 0
    """Supervised target tokens seen (this rank)."""
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class SFTResult:
    """What ``run_sft`` did."""

    output_dir: str
    final_dir: str | None
    steps: int
    losses: list[float]
    dataset: dict[str, Any]
    train_rows: int
    seconds: float
    resumed_from: str | None
    val_loss: float | None = None
    """Mean answer-token loss on ``data.val_split`` after training (None without a validation split)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "output_dir": self.output_dir,
            "final_dir": self.final_dir,
            "steps": self.steps,
            "first_loss": self.losses[0] if self.losses else None,
            "last_loss": self.losses[-1] if self.losses else None,
            "losses": self.losses,
            "dataset": self.dataset,
            "train_rows": self.train_rows,
            "seconds": round(self.seconds, 3),
            "resumed_from": self.resumed_from,
            "val_loss": self.val_loss,
        }


class SFTTrainer:
    """Holds the model, optimizer and data of one SFT run; :meth:`train` runs it (see :func:`run_sft`)."""

    def __init__(self, cfg: SFTConfig, *, dataset_pin: DatasetPin, rows: Any, val_rows: Any = None) -> None:
        import torch

        self.cfg = cfg
        self.pin = dataset_pin
        self.rows = rows
        self.val_rows = val_rows
        self.dist = DistInfo.from_env()
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        init_distributed(self.dist, self.device)
        self.dtype = resolve_dtype(cfg.precision, self.device)
        self.out = Path(cfg.output_dir)
        self.resume_dir = resolve_resume(cfg.resume_from, self.out)
        seed_everything(cfg.seed)

        self.processor = build_processor(cfg.model)
        self.encoder = ChatEncoder(self.processor.tokenizer, self.processor.image_processor, cfg.max_length,
                                   cfg.default_system_prompt)
        # Every row is validated and tokenised before anything is trained.
        self.encoded: list[EncodedRow] = self.encoder.encode_all(rows)
        self.lengths = [e.length for e in self.encoded]
        self.val_encoded: list[EncodedRow] = self.encoder.encode_all(val_rows) if val_rows is not None else []

        self.base_dir = self._prepare_base()
        if self.base_dir is not None:  # a tiny random base, saved once so predict/merge/resume rebuild it
            base = load_pretrained(self.base_dir, self.dtype, cfg.model.attn_implementation)
        else:
            base = build_model(cfg.model, self.processor.tokenizer, self.dtype)
        self.vision_init: dict[str, Any] | None = None
        if cfg.vision_init_from is not None:
            self.vision_init = load_vision_init(base, cfg.vision_init_from)
        base.config.use_cache = False
        if cfg.gradient_checkpointing:
            enable_activation_checkpointing(base)
        if self.resume_dir is not None:
            model = load_adapter(base, self.resume_dir / ADAPTER_DIR, trainable=True)
        else:
            model = apply_lora(base, cfg.lora)
        for p in model.parameters():  # trainable weights in fp32 even when the base is bf16
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
        self.model = model.to(self.device)
        self.trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.total_params = sum(p.numel() for p in self.model.parameters())

        self.loss_module = AnswerTokenLoss(self.model)
        self.ddp_model: Any = self.loss_module
        if self.dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            # rows without images leave the projector unused in some steps
            text_only = any(not e.image_token_counts for e in self.encoded)
            self.ddp_model = DistributedDataParallel(
                self.loss_module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=text_only and cfg.lora.train_projector,
            )

        groups = parameter_groups(self.model, cfg.lr, cfg.projector_lr, cfg.weight_decay)
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
        batches_per_epoch = len(self._batches(0))
        steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum)
        self.total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
        self.warmup_steps = math.ceil(cfg.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_multiplier(s, self.total_steps, self.warmup_steps, cfg.scheduler)
        )
        self.state = TrainState()
        if self.resume_dir is not None:
            self._load_trainer_state(self.resume_dir)
        if self.dist.is_main:
            self._write_run_json()

    # ------------------------------------------------------------------ setup helpers
    def _prepare_base(self) -> Path | None:
        """For a tiny random model, the folder that holds (or will hold) its weights; else None."""
        if self.cfg.model.tiny is None:
            return None
        base_dir = self.out / BASE_DIR
        if self.resume_dir is not None:
            if not (base_dir / "config.json").is_file():
                raise ConfigError(f"resume_from: {base_dir} is missing, so the random base model cannot be rebuilt")
            return base_dir
        if self.dist.is_main:
            model = build_model(self.cfg.model, self.processor.tokenizer, self._torch().float32)
            model.save_pretrained(str(base_dir))
            del model
        if self.dist.world_size > 1:
            import torch.distributed as dist

            dist.barrier()
        return base_dir

    @staticmethod
    def _torch() -> Any:
        import torch

        return torch

    def _base_record(self) -> dict[str, Any]:
        if self.base_dir is not None:
            path = BASE_DIR
        else:
            path = str(Path(self.cfg.model.path).resolve())  # type: ignore[arg-type]
        return {"path": path, "family": self.cfg.model.family,
                "vision_init_from": str(Path(self.cfg.vision_init_from).resolve()) if self.cfg.vision_init_from else None}

    def _write_run_json(self) -> None:
        run_file = self.out / RUN_FILE
        record = {
            "job": "sft",
            "created": now_iso(),
            "config": config_to_dict(self.cfg),
            "dataset": self.pin.to_dict(),
            "base_model": self._base_record(),
            "vision_init": self.vision_init,
            "trainable_parameters": self.trainable,
            "total_parameters": self.total_params,
            "train_rows": len(self.encoded),
            "world_size": self.dist.world_size,
        }
        if run_file.is_file() and self.resume_dir is not None:
            previous = read_json(run_file)
            if previous.get("dataset", {}).get("fingerprint") != self.pin.fingerprint:
                raise ConfigError(
                    f"resume_from: the run in {self.out} was trained on dataset "
                    f"{previous.get('dataset', {}).get('name')}@{previous.get('dataset', {}).get('version')} "
                    f"(fingerprint {previous.get('dataset', {}).get('fingerprint')}), not "
                    f"{self.pin.name}@{self.pin.version}; resume with the same pinned version"
                )
            record["created"] = previous.get("created", record["created"])
            record["resumed"] = [*previous.get("resumed", []), {"from": str(self.resume_dir), "at": now_iso()}]
        write_json(run_file, record)

    def _batches(self, epoch: int) -> list[list[int]]:
        return epoch_batches(self.lengths, self.cfg.batch_size, epoch, self.cfg.seed,
                             bucketing=self.cfg.length_bucketing, world_size=self.dist.world_size,
                             rank=self.dist.rank)

    def _autocast(self) -> Any:
        torch = self._torch()
        if self.dtype == torch.bfloat16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/step-N`` (adapter + optimizer + scheduler + RNG + data position)."""
        torch = self._torch()
        if not self.dist.is_main:
            return None
        ckpt = self.out / CHECKPOINTS_DIR / checkpoint_name(self.state.step)
        self.model.save_pretrained(str(ckpt / ADAPTER_DIR))
        self._card(ckpt / ADAPTER_DIR, [h["loss"] for h in self.state.history], None)
        torch.save({
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "state": self.state.__dict__,
        }, ckpt / TRAINER_STATE)
        write_json(ckpt / META_FILE, {"step": self.state.step, "dataset": self.pin.to_dict(),
                                        "total_steps": self.total_steps, "saved": now_iso()})
        return ckpt

    def _load_trainer_state(self, ckpt: Path) -> None:
        torch = self._torch()
        # Our own file (optimizer tensors + RNG states incl. NumPy's): not loadable with weights_only.
        blob = torch.load(ckpt / TRAINER_STATE, map_location=self.device, weights_only=False)
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
        self.state = TrainState(**blob["state"])
        set_rng_state(blob["rng"])
        log.info("resumed from %s at step %d", ckpt, self.state.step)

    # ------------------------------------------------------------------ training
    def _next_window(self) -> list[list[int]]:
        while True:
            batches = self._batches(self.state.epoch)
            if self.state.batch_in_epoch < len(batches):
                return batches[self.state.batch_in_epoch : self.state.batch_in_epoch + self.cfg.grad_accum]
            self.state.epoch += 1
            self.state.batch_in_epoch = 0

    def _collate(self, indices: list[int]) -> dict[str, Any]:
        encoded = [self.encoded[i] for i in indices]
        images = [list(self.rows[i].get("images") or []) for i in indices]
        return self.encoder.collate(encoded, images)

    def evaluate(self) -> float | None:
        """Mean answer-token loss over the validation rows (eval mode, no dropout); None without them."""
        torch = self._torch()
        if not self.val_encoded:
            return None
        self.model.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for s in range(0, len(self.val_encoded), self.cfg.batch_size):
                idx = list(range(s, min(len(self.val_encoded), s + self.cfg.batch_size)))
                batch = self.encoder.collate([self.val_encoded[i] for i in idx],
                                             [list(self.val_rows[i].get("images") or []) for i in idx])
                batch = {k: v.to(self.device) for k, v in batch.items()}
                if "pixel_values" in batch:
                    batch["pixel_values"] = batch["pixel_values"].to(self.dtype)
                with self._autocast():
                    # num_items_in_batch = 1 -> the summed token loss of this batch
                    total += float(self.loss_module(**batch, num_items_in_batch=torch.tensor(1.0, device=self.device)))
                n += count_target_tokens(batch["labels"])
        return total / max(n, 1)

    def train_step(self) -> float:
        """One optimizer step over ``grad_accum`` micro-batches; returns the token-weighted mean loss."""
        torch = self._torch()
        window = self._next_window()
        batches = [self._collate(ix) for ix in window]
        n_tokens = torch.tensor(sum(count_target_tokens(b["labels"]) for b in batches), device=self.device)
        if self.dist.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(n_tokens)
        n_tokens_f = n_tokens.clamp_min(1).float()
        self.ddp_model.train()
        total = torch.zeros((), device=self.device)
        for k, batch in enumerate(batches):
            batch = {key: v.to(self.device) for key, v in batch.items()}
            if "pixel_values" in batch:
                batch["pixel_values"] = batch["pixel_values"].to(self.dtype)
            last = k == len(batches) - 1
            sync = nullcontext() if (last or self.dist.world_size == 1) else self.ddp_model.no_sync()
            with sync, self._autocast():
                part = self.ddp_model(**batch, num_items_in_batch=n_tokens_f)
                # DDP averages gradients over ranks; the loss is already normalised by the global
                # token count, so scale by world_size to get the global token-mean gradient.
                loss = part * self.dist.world_size
            loss.backward()
            total += part.detach()
        if self.cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                           self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.dist.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(total)
        self.state.step += 1
        self.state.batch_in_epoch += len(window)
        self.state.tokens += int(n_tokens.item())
        return float(total.item())

    def train(self) -> SFTResult:
        """Run until ``max_steps`` / ``epochs``; checkpoint every ``save_every_steps``; save ``final/``."""
        t0 = time.perf_counter()
        losses: list[float] = []
        start_step = self.state.step
        log.info("sft: %d rows, %d trainable / %d parameters, %d steps (warm-up %d), device %s, dtype %s",
                 len(self.encoded), self.trainable, self.total_params, self.total_steps, self.warmup_steps,
                 self.device, self.dtype)
        while self.state.step < self.total_steps:
            ts = time.perf_counter()
            loss = self.train_step()
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {self.state.step}; lower lr or use fp32")
            losses.append(loss)
            self.state.history.append({"step": self.state.step, "loss": loss,
                                       "lr": self.scheduler.get_last_lr()[0],
                                       "seconds": time.perf_counter() - ts})
            if self.state.step % self.cfg.log_every_steps == 0:
                log.info("step %d/%d loss %.4f lr %.2e", self.state.step, self.total_steps, loss,
                         self.scheduler.get_last_lr()[0])
            if self.cfg.save_every_steps and self.state.step % self.cfg.save_every_steps == 0:
                self.save_checkpoint()
        final_dir = self._save_final() if self.dist.is_main else None
        val_loss = self.evaluate() if self.dist.is_main else None
        if final_dir is not None:
            self._card(final_dir, [h["loss"] for h in self.state.history], val_loss)
        if val_loss is not None:
            log.info("validation loss (answer tokens, %d rows) %.4f", len(self.val_encoded), val_loss)
        seconds = time.perf_counter() - t0
        if self.dist.is_main:
            write_json(self.out / "metrics.json", {
                "job": "sft",
                "dataset": self.pin.to_dict(),
                "steps": self.state.history,
                "total_steps": self.total_steps,
                "resumed_from_step": start_step if self.resume_dir is not None else None,
                "val_loss": val_loss,
                "val_rows": len(self.val_encoded),
                "target_tokens_seen_rank0": self.state.tokens,
                "seconds_this_process": seconds,
                "finished": now_iso(),
            })
        return SFTResult(str(self.out), str(final_dir) if final_dir else None, self.state.step, losses,
                         self.pin.to_dict(), len(self.encoded), seconds,
                         str(self.resume_dir) if self.resume_dir else None, val_loss)

    def _card(self, folder: Path, losses: list[float], val_loss: float | None) -> None:
        """The model card beside an adapter (replacing peft's placeholder card)."""
        write_model_card(folder, kind="adapter", model=self.cfg.model, lora=self.cfg.lora, dataset=self.pin.to_dict(),
                         metrics={"steps": self.state.step, "losses": losses, "val_loss": val_loss,
                                  "val_rows": len(self.val_encoded), "train_rows": len(self.encoded)},
                         evaluation=read_evaluation(self.out))

    def _save_final(self) -> Path:
        final = self.out / FINAL_DIR
        self.model.save_pretrained(str(final))
        processor_info = self.processor.save_pretrained(final)
        write_json(final / META_FILE, {"step": self.state.step, "dataset": self.pin.to_dict(),
                                         "processor": processor_info, "saved": now_iso()})
        return final


def _check_paths(cfg: SFTConfig) -> None:
    """Fail fast (before reading data or building models) on paths the config refers to."""

    if cfg.model.path is not None and not (Path(cfg.model.path) / "config.json").is_file():
        raise CheckpointNotFoundError(f"model.path {cfg.model.path}: no config.json there; fix model.path")
    if cfg.vision_init_from is not None and not (Path(cfg.vision_init_from) / VISION_TOWER_FILE).is_file():
        raise CheckpointNotFoundError(
            f"vision_init_from: {Path(cfg.vision_init_from) / VISION_TOWER_FILE} not found; run "
            "`grok-train align` with encoder: qwen2vl first, or drop vision_init_from"
        )
    resolve_resume(cfg.resume_from, cfg.output_dir)


def run_sft(cfg: SFTConfig) -> SFTResult:
    """Resolve the pinned dataset, validate every row, train, save. Errors come before the first step."""
    cfg.data.require_source()
    _check_paths(cfg)
    pin = resolve_dataset(cfg.data.dataset, cfg.data.registry, dataset_path=cfg.data.dataset_path)
    rows = load_split(cfg.data.dataset, cfg.data.config, cfg.data.train_split, cfg.data.registry,
                      dataset_path=cfg.data.dataset_path, max_rows=cfg.data.max_rows)
    val_rows = None
    if cfg.data.val_split:
        val_rows = load_split(cfg.data.dataset, cfg.data.config, cfg.data.val_split, cfg.data.registry,
                              dataset_path=cfg.data.dataset_path, max_rows=cfg.data.max_rows, allow_empty=True)
        if len(val_rows) == 0:
            log.warning("validation split %r is empty; no validation loss", cfg.data.val_split)
            val_rows = None
    trainer = SFTTrainer(cfg, dataset_pin=pin, rows=rows, val_rows=val_rows)
    return trainer.train()
