"""CLIP-style alignment of an OCT B-scan encoder with a biomarker encoder (GROK's first stage).

Run as: python -m grok_train align --config align_cpu_smoke.yaml --dataset-path DIR   (or grok-train align ...)

* image side: a pluggable encoder (``cnn`` small CNN; ``timm:<name>``; ``qwen2vl`` = the vision tower
  of a Qwen2-VL, whose aligned weights can initialise the SFT model) -> mean-pooled features -> a
  2-layer projector with batch norm -> d;
* biomarker side: the 31 canonical values, z-scored with normal ranges, missing values replaced by a
  learned mask token -> MLP 31 -> 128 -> d with batch norm;
* symmetric InfoNCE / NT-Xent over in-batch negatives at temperature T (fixed 0.5, or learnable);
* validation: recall@1 and recall@5, image->biomarker and biomarker->image, against chance k/N.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from grok.ids import OCT_GROK_BIOMARKERS
from grok_train._compat import guard_torchvision, require, resolve_device, seed_everything
from grok_train.biomarkers import BiomarkerNormaliser, load_normal_ranges, values_matrix
from grok_train.config import AlignConfig, config_from_dict, config_to_dict
from grok_train.data import DatasetPin, load_split, resolve_dataset
from grok_train.errors import BadInputError, CheckpointNotFoundError, ConfigError
from grok_train.modeling import VISION_TOWER_FILE, build_image_processor, build_vision_tower
from grok_train.runs import now_iso, read_json, write_json

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger("grok_train.align")

ALIGN_RUN_FILE = "align_run.json"
ALIGN_MODEL_FILE = "align_model.safetensors"


def _nn() -> Any:
    from torch import nn

    return nn


# --------------------------------------------------------------------------------------------------
# encoders
# --------------------------------------------------------------------------------------------------
def _grey_batch(images: Sequence[Any], size_px: int) -> torch.Tensor:
    """PIL images -> (B, 1, size_px, size_px) float32, intensities scaled to mean ~0, sd ~1."""
    import torch

    arrs = [np.asarray(im.convert("L").resize((size_px, size_px), Image.BILINEAR), dtype=np.float32) for im in images]
    x = torch.from_numpy(np.stack(arrs))[:, None] / 255.0
    return (x - 0.5) / 0.25


def build_image_encoder(cfg: AlignConfig) -> Any:
    """The configured image encoder: a module with ``feat_dim`` and ``prepare(images) -> dict``."""
    nn = _nn()
    import torch

    class SmallCNN(nn.Module):
        """Four conv blocks (3x3 conv-BN-ReLU x2, stride-2 pooling), global average pool: (B, 1, S, S) -> (B, 8w)."""

        def __init__(self, width: int, size_px: int) -> None:
            super().__init__()
            layers: list[Any] = []
            c_in = 1
            for i in range(4):
                c_out = width * 2**i
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                           nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                           nn.MaxPool2d(2)]
                c_in = c_out
            self.body = nn.Sequential(*layers)
            self.feat_dim = c_in
            self.size_px = size_px

        def prepare(self, images: Sequence[Any]) -> dict[str, torch.Tensor]:
            return {"pixels": _grey_batch(images, self.size_px)}

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.body(pixels).mean(dim=(2, 3))

    class TimmEncoder(nn.Module):
        """A timm backbone (``num_classes=0``: pooled features) on the grey B-scan repeated to 3 channels,
        random or local weights (``encoder_checkpoint``, e.g. RETFound's ``{"model": state_dict}``)."""

        def __init__(self, name: str, size_px: int, checkpoint: str | None) -> None:
            super().__init__()
            guard_torchvision()
            timm = require("timm", "timm", f"the encoder timm:{name}")
            # 3 input channels (the grey B-scan repeated) so RGB-pretrained weights such as RETFound load
            kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0, "in_chans": 3}
            if "vit" in name or "deit" in name:
                kwargs["img_size"] = size_px
            try:
                self.body = timm.create_model(name, **kwargs)
            except RuntimeError as exc:
                raise ConfigError(f"encoder timm:{name}: {exc}; pick a model from timm.list_models()") from exc
            if checkpoint is not None:
                p = Path(checkpoint)
                if not p.is_file():
                    raise CheckpointNotFoundError(f"encoder_checkpoint {p} not found; fix the path or drop it")
                state = torch.load(p, map_location="cpu", weights_only=True)
                state = state.get("model", state) if isinstance(state, dict) else state
                missing, unexpected = self.body.load_state_dict(state, strict=False)
                log.info("encoder_checkpoint %s: %d missing, %d unexpected keys", p, len(missing), len(unexpected))
            self.feat_dim = int(self.body.num_features)
            self.size_px = size_px

        def prepare(self, images: Sequence[Any]) -> dict[str, torch.Tensor]:
            return {"pixels": _grey_batch(images, self.size_px).expand(-1, 3, -1, -1).contiguous()}

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.body(pixels)

    class Qwen2VLVisionEncoder(nn.Module):
        """The vision tower of a Qwen2-VL model; features = mean of its merged (LLM-facing) tokens per image."""

        def __init__(self, model_cfg: Any) -> None:
            super().__init__()

            self.visual = build_vision_tower(model_cfg, torch.float32)
            self.image_processor = build_image_processor(model_cfg)
            self.merge = int(self.image_processor.merge_size)
            self.feat_dim = int(self.visual.merger.mlp[-1].out_features)

        def prepare(self, images: Sequence[Any]) -> dict[str, torch.Tensor]:
            out = self.image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
            return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}

        def forward(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
            out = self.visual(pixel_values, grid_thw=image_grid_thw)
            tokens = out.pooler_output if hasattr(out, "pooler_output") else out
            sizes = (image_grid_thw.prod(-1) // self.merge**2).tolist()
            return torch.stack([t.mean(0) for t in torch.split(tokens, sizes)])

    if cfg.encoder == "cnn":
        return SmallCNN(cfg.cnn_width, cfg.image_size_px)
    if cfg.encoder.startswith("timm:"):
        return TimmEncoder(cfg.encoder.split(":", 1)[1], cfg.image_size_px, cfg.encoder_checkpoint)
    return Qwen2VLVisionEncoder(cfg.encoder_model)


def _mlp(nn: Any, d_in: int, d_hidden: int, d_out: int) -> Any:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.BatchNorm1d(d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out))


def build_align_model(cfg: AlignConfig, n_biomarkers: int) -> Any:
    """Image encoder + projector, biomarker encoder with a learned mask token, temperature."""
    nn = _nn()
    import torch

    class AlignModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.image_encoder = build_image_encoder(cfg)
            self.image_projector = _mlp(nn, self.image_encoder.feat_dim, cfg.projector_hidden, cfg.embed_dim)
            self.mask_token = nn.Parameter(torch.zeros(n_biomarkers))
            self.biomarker_encoder = _mlp(nn, n_biomarkers, cfg.biomarker_hidden, cfg.embed_dim)
            log_scale = torch.tensor(math.log(1.0 / cfg.temperature))
            if cfg.learnable_temperature:
                self.log_scale = nn.Parameter(log_scale)
            else:
                self.register_buffer("log_scale", log_scale)

        def encode_image(self, **inputs: torch.Tensor) -> torch.Tensor:
            """(B, d) unit-norm image embeddings."""
            return nn.functional.normalize(self.image_projector(self.image_encoder(**inputs)), dim=-1)

        def encode_biomarkers(self, z: torch.Tensor) -> torch.Tensor:
            """(B, K) z-scores with NaN for missing -> (B, d) unit-norm embeddings (NaN -> mask token)."""
            missing = torch.isnan(z)
            x = torch.where(missing, self.mask_token.expand_as(z), z)
            return nn.functional.normalize(self.biomarker_encoder(x), dim=-1)

        def scale(self) -> torch.Tensor:
            """1 / temperature (clamped to <= 100 like CLIP)."""
            return self.log_scale.exp().clamp(max=100.0)

    return AlignModel()


def contrastive_loss(img: torch.Tensor, bio: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (NT-Xent with in-batch negatives): mean of image->biomarker and biomarker->image CE.

    img, bio : (B, d) unit-norm embeddings of matching pairs (row i of each is a pair).
    """
    import torch
    import torch.nn.functional as F

    logits = scale * img @ bio.T
    target = torch.arange(img.shape[0], device=img.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


@dataclass
class RetrievalMetrics:
    """Recall@k of exact-pair retrieval over a split of ``n`` pairs (chance level = k / n)."""

    n: int
    r1_image_to_biomarker: float
    r5_image_to_biomarker: float
    r1_biomarker_to_image: float
    r5_biomarker_to_image: float
    chance_r1: float
    chance_r5: float
    loss: float
    """Mean contrastive loss over the split's batches (batch size as in training)."""

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def retrieval_metrics(img: torch.Tensor, bio: torch.Tensor, loss: float = float("nan")) -> RetrievalMetrics:
    """R@1 / R@5 both ways from (N, d) unit-norm embeddings where row i of each is a pair."""
    sims = (img @ bio.T).float()
    n = sims.shape[0]
    diag = sims.diagonal()
    rank_i2b = (sims > diag[:, None]).sum(1)  # candidates beating the true biomarker vector
    rank_b2i = (sims > diag[None, :]).sum(0)

    def recall(rank: torch.Tensor, k: int) -> float:
        return float((rank < k).float().mean())

    return RetrievalMetrics(n, recall(rank_i2b, 1), recall(rank_i2b, 5), recall(rank_b2i, 1), recall(rank_b2i, 5),
                            min(1.0, 1 / n), min(1.0, 5 / n), loss)


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------
def _expected_ids(ds: Any, split: str) -> tuple[str, ...]:
    for col in ("image", "biomarker_ids", "biomarker_values"):
        if col not in ds.column_names:
            raise BadInputError(f"split {split!r} has no column {col!r} (columns: {ds.column_names}); "
                                "use the dataset's `alignment` config")
    ids = tuple(ds[0]["biomarker_ids"])
    if ids != tuple(OCT_GROK_BIOMARKERS):
        raise BadInputError(
            f"split {split!r}: biomarker_ids differ from grok.ids.OCT_GROK_BIOMARKERS (31 ids, fixed order); "
            f"first row has {len(ids)} ids starting {list(ids[:3])}; republish with the canonical ids"
        )
    return ids


class _PairData:
    """(image, z-scored biomarker vector) pairs of one split."""

    def __init__(self, ds: Any, normaliser: BiomarkerNormaliser, raw: np.ndarray) -> None:
        self.ds = ds
        self.z = normaliser.transform(raw)

    def __len__(self) -> int:
        return len(self.ds)

    def images(self, idx: Sequence[int]) -> list[Any]:
        return [self.ds[int(i)]["image"] for i in idx]


class _Collate:
    """Decode + preprocess a batch of rows (runs in DataLoader workers when num_workers > 0)."""

    def __init__(self, data: _PairData, prepare: Any) -> None:
        self.data, self.prepare = data, prepare

    def __call__(self, idx: list[int]) -> tuple[dict[str, Any], Any]:
        import torch

        return self.prepare(self.data.images(idx)), torch.from_numpy(self.data.z[idx])


def _loader(data: _PairData, batches: list[list[int]], prepare: Any, num_workers: int) -> Any:
    """Iterate ``(encoder inputs, z-scores (B, K))`` over ``batches`` of row indices, in order."""
    from torch.utils.data import DataLoader

    collate = _Collate(data, prepare)
    return DataLoader(batches, batch_size=None, shuffle=False, collate_fn=collate, num_workers=num_workers,
                      persistent_workers=False)


def _raw_values(ds: Any, n_ids: int) -> np.ndarray:
    return values_matrix(ds["biomarker_values"], n_ids)


# --------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------
@dataclass
class AlignResult:
    """What ``run_align`` did: validation retrieval before and after training."""

    output_dir: str
    steps: int
    initial: RetrievalMetrics | None
    final: RetrievalMetrics | None
    train_losses: list[float]
    dataset: dict[str, Any]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"output_dir": self.output_dir, "steps": self.steps,
                "initial": self.initial.to_dict() if self.initial else None,
                "final": self.final.to_dict() if self.final else None,
                "first_train_loss": self.train_losses[0] if self.train_losses else None,
                "last_train_loss": self.train_losses[-1] if self.train_losses else None,
                "dataset": self.dataset, "seconds": round(self.seconds, 3)}


def _embed(model: Any, data: _PairData, batch_size: int, device: Any) -> tuple[torch.Tensor, torch.Tensor, float]:
    import torch

    model.eval()
    imgs, bios, losses = [], [], []
    with torch.no_grad():
        for s in range(0, len(data), batch_size):
            idx = list(range(s, min(len(data), s + batch_size)))
            inputs = {k: v.to(device) for k, v in model.image_encoder.prepare(data.images(idx)).items()}
            zi = model.encode_image(**inputs)
            zb = model.encode_biomarkers(torch.from_numpy(data.z[idx]).to(device))
            if len(idx) > 1:
                losses.append(float(contrastive_loss(zi, zb, model.scale())))
            imgs.append(zi)
            bios.append(zb)
    return torch.cat(imgs), torch.cat(bios), float(np.mean(losses)) if losses else float("nan")


def evaluate(model: Any, data: _PairData, batch_size: int, device: Any) -> RetrievalMetrics:
    """Retrieval metrics of ``model`` on a split (eval mode: batch-norm running statistics)."""
    img, bio, loss = _embed(model, data, batch_size, device)
    return retrieval_metrics(img, bio, loss)


def run_align(cfg: AlignConfig, normal_ranges: Mapping[str, tuple[float, float]] | None = None) -> AlignResult:
    """Train the alignment model on the pinned dataset; write checkpoints and metrics.json.

    ``normal_ranges`` (id -> (mean, sd), from the knowledge base) wins over ``cfg.normal_ranges_file``;
    ids with neither fall back to training-split statistics (with a warning).
    """
    import torch

    cfg.data.require_source()
    t0 = time.perf_counter()
    pin: DatasetPin = resolve_dataset(cfg.data.dataset, cfg.data.registry, dataset_path=cfg.data.dataset_path)
    if normal_ranges is None and cfg.normal_ranges_file is not None:
        normal_ranges = load_normal_ranges(cfg.normal_ranges_file)
    load = dict(registry=cfg.data.registry, dataset_path=cfg.data.dataset_path, max_rows=cfg.data.max_rows)
    train_ds = load_split(cfg.data.dataset, cfg.data.config, cfg.data.train_split, **load)
    val_ds = None
    if cfg.data.val_split:
        val_ds = load_split(cfg.data.dataset, cfg.data.config, cfg.data.val_split, allow_empty=True, **load)
        if len(val_ds) < 2:
            warnings.warn(f"validation split {cfg.data.val_split!r} has {len(val_ds)} row(s); no retrieval "
                          "metrics (they need >= 2 pairs)", UserWarning, stacklevel=2)
            val_ds = None
    ids = _expected_ids(train_ds, cfg.data.train_split)
    if val_ds is not None:
        _expected_ids(val_ds, cfg.data.val_split or "")
    batch_size = cfg.batch_size
    if len(train_ds) < batch_size:
        if len(train_ds) < 2:
            raise BadInputError(f"split {cfg.data.train_split!r} has {len(train_ds)} row(s); contrastive "
                                "training needs at least 2")
        warnings.warn(f"batch_size {batch_size} > {len(train_ds)} training rows; using batch_size "
                      f"{len(train_ds)}", UserWarning, stacklevel=2)
        batch_size = len(train_ds)

    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    train_raw = _raw_values(train_ds, len(ids))
    normaliser = BiomarkerNormaliser.fit(ids, train_raw, normal_ranges)
    train = _PairData(train_ds, normaliser, train_raw)
    val = _PairData(val_ds, normaliser, _raw_values(val_ds, len(ids))) if val_ds is not None else None

    model = build_align_model(cfg, len(ids)).to(device)
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                              weight_decay=cfg.weight_decay)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_record = {"job": "align", "created": now_iso(), "config": config_to_dict(cfg), "dataset": pin.to_dict(),
                  "batch_size_used": batch_size,
                  "biomarker_ids": list(ids), "normaliser": normaliser.to_dict(), "encoder": cfg.encoder,
                  "train_rows": len(train), "val_rows": len(val) if val else 0}
    write_json(out / ALIGN_RUN_FILE, run_record)

    history: list[dict[str, Any]] = []
    initial = evaluate(model, val, batch_size, device) if val is not None else None
    if initial is not None:
        history.append({"epoch": 0, "step": 0, "val": initial.to_dict()})
        log.info("align: before training R@5 i->b %.3f b->i %.3f (chance %.3f)", initial.r5_image_to_biomarker,
                 initial.r5_biomarker_to_image, initial.chance_r5)
    rng = np.random.default_rng(cfg.seed)
    steps, losses = 0, []
    final = initial
    steps_per_epoch = len(train) // batch_size
    total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
    epoch = 0
    while steps < total_steps:
        epoch += 1
        model.train()
        order = rng.permutation(len(train))
        batches = [order[b * batch_size : (b + 1) * batch_size].tolist() for b in range(steps_per_epoch)]
        epoch_losses = []
        for inputs, zb in _loader(train, batches, model.image_encoder.prepare, cfg.num_workers):
            inputs = {k: v.to(device) for k, v in inputs.items()}
            zb = zb.to(device)
            loss = contrastive_loss(model.encode_image(**inputs), model.encode_biomarkers(zb), model.scale())
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            steps += 1
            epoch_losses.append(loss.item())
            if steps >= total_steps:
                break
        losses.extend(epoch_losses)
        entry: dict[str, Any] = {"epoch": epoch, "step": steps, "train_loss": float(np.mean(epoch_losses)),
                                 "temperature": float(1.0 / model.scale())}
        if val is not None and (epoch % cfg.eval_every_epochs == 0 or steps >= total_steps):
            final = evaluate(model, val, batch_size, device)
            entry["val"] = final.to_dict()
            log.info("epoch %d step %d loss %.4f val R@1 %.3f/%.3f R@5 %.3f/%.3f (chance %.3f)", epoch, steps,
                     entry["train_loss"], final.r1_image_to_biomarker, final.r1_biomarker_to_image,
                     final.r5_image_to_biomarker, final.r5_biomarker_to_image, final.chance_r5)
        else:
            log.info("epoch %d step %d loss %.4f", epoch, steps, entry["train_loss"])
        history.append(entry)
        save_align_checkpoint(model, cfg, out, pin)
        write_json(out / "metrics.json", {"job": "align", "dataset": pin.to_dict(), "history": history,
                                          "initial": initial.to_dict() if initial else None,
                                          "final": final.to_dict() if final else None, "updated": now_iso()})
    return AlignResult(str(out), steps, initial, final, losses, pin.to_dict(), time.perf_counter() - t0)


def save_align_checkpoint(model: Any, cfg: AlignConfig, out: Path, pin: DatasetPin) -> None:
    """``align_model.safetensors`` (whole model) and, for ``encoder: qwen2vl``, ``vision_tower.safetensors``;
    both carry the dataset pin in their safetensors metadata."""
    from safetensors.torch import save_file

    meta = {"dataset": f"{pin.name}@{pin.version}", "dataset_fingerprint": pin.fingerprint, "encoder": cfg.encoder}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / ALIGN_MODEL_FILE), metadata=meta)
    if cfg.encoder == "qwen2vl":
        vis = {k: v.detach().cpu().contiguous() for k, v in model.image_encoder.visual.state_dict().items()}
        save_file(vis, str(out / VISION_TOWER_FILE), metadata=meta)


def load_align_model(run_dir: str | Path) -> tuple[Any, BiomarkerNormaliser, dict[str, Any]]:
    """Rebuild a trained alignment model (eval mode) with its normaliser and run record."""
    from safetensors.torch import load_file


    p = Path(run_dir)
    if not (p / ALIGN_MODEL_FILE).is_file():
        raise CheckpointNotFoundError(f"{p / ALIGN_MODEL_FILE} not found; pass the output_dir of `grok-train align`")
    record = read_json(p / ALIGN_RUN_FILE)
    cfg = config_from_dict(AlignConfig, record["config"])
    model = build_align_model(cfg, len(record["biomarker_ids"]))
    model.load_state_dict(load_file(str(p / ALIGN_MODEL_FILE)))
    model.eval()
    return model, BiomarkerNormaliser.from_dict(record["normaliser"]), record
