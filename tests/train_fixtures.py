"""Tiny in-memory datasets with the published columns, for the training-job tests.

Run as: .venv/bin/python tests/train_fixtures.py OUT_DIR   (writes a local dataset folder that
``grok-train align|sft|predict --dataset-path OUT_DIR`` can read)

* ``alignment``: synthetic foveal B-scans whose layer bands are drawn with thicknesses set by a few
  latent factors; the 31 ``OCT_GROK_BIOMARKERS`` are noisy linear read-outs of the same factors (in
  micrometres, about 3.9 um per pixel), so images and biomarkers share real signal and alignment can
  demonstrably learn. One biomarker (``disc_diameter_vertical_mm``) is pure noise, ~10 % of the
  values are missing (None).
* ``instructions`` / ``benchmark``: chat rows with a CFP (``skimage.data.retina()``, downscaled) and one
  OCT B-scan, the user turn referencing them with ``<image>``, and a templated assistant answer.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from grok.ids import CATEGORIES, OCT_GROK_BIOMARKERS

UM_PER_PX = 3.9
N_LATENT = 5


def draw_bscan(latent: np.ndarray, rng: np.random.Generator, height: int = 64, width: int = 64) -> np.ndarray:
    """An 8-bit greyscale B-scan (H, W) whose bands' thicknesses (px) are set by ``latent`` (5,) in [0, 1]."""
    scale = height / 64.0
    thick = np.array([2 + 5 * latent[0], 3 + 5 * latent[1], 2 + 4 * latent[2], 5 + 8 * latent[3],
                      2 + 3 * latent[4]]) * scale  # RNFL, GCIPL, INL, OPL+ONL, RPE
    intensity = np.array([200, 120, 70, 150, 235], dtype=float)
    x = np.linspace(-1, 1, width)
    top = 0.22 * height + 0.06 * height * np.exp(-(x / 0.25) ** 2)  # foveal pit
    img = np.full((height, width), 25.0)
    rows = np.arange(height)[:, None]
    boundary = top[None, :].repeat(1, axis=0)
    for t, level in zip(thick, intensity):
        pit_thin = 1.0 - 0.5 * np.exp(-(x / 0.25) ** 2) if level != 235 else 1.0
        lower = boundary + t * pit_thin
        img = np.where((rows >= boundary) & (rows < lower), level, img)
        boundary = lower
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def biomarkers_from_latent(latent: np.ndarray, rng: np.random.Generator, missing_rate: float = 0.1) -> list[float | None]:
    """31 values in ``OCT_GROK_BIOMARKERS`` order: noisy linear read-outs of the latent factors."""
    thick_um = np.array([2 + 5 * latent[0], 3 + 5 * latent[1], 2 + 4 * latent[2], 5 + 8 * latent[3],
                         2 + 3 * latent[4]]) * UM_PER_PX * 4  # the 64-px phantom stands for ~250 px
    total = thick_um.sum()
    values: list[float | None] = []
    for k, bid in enumerate(OCT_GROK_BIOMARKERS):
        if bid.startswith("macular_thickness"):
            v = total * (0.9 + 0.02 * (k % 5)) + rng.normal(0, 2)
        elif bid.startswith("inl_elm"):
            v = thick_um[2] + thick_um[3] + rng.normal(0, 2)
        elif bid.startswith("elm_isos"):
            v = 0.2 * thick_um[3] + rng.normal(0, 1)
        elif bid.startswith("isos_rpe") or bid == "rpe_thickness_um":
            v = thick_um[4] + rng.normal(0, 1)
        elif bid.startswith("inl_rpe"):
            v = thick_um[2] + thick_um[3] + thick_um[4] + rng.normal(0, 2)
        elif bid == "rnfl_thickness_um":
            v = thick_um[0] + rng.normal(0, 1)
        elif bid == "gcipl_thickness_um":
            v = thick_um[1] + rng.normal(0, 1)
        elif bid == "inl_thickness_um":
            v = thick_um[2] + rng.normal(0, 1)
        else:  # disc_diameter_vertical_mm: unrelated to the B-scan
            v = rng.normal(1.8, 0.2)
        values.append(None if rng.random() < missing_rate else float(v))
    return values


def make_alignment_dataset(n: int, seed: int = 0, size_px: int = 64) -> Any:
    """``datasets.Dataset`` with the ``alignment`` config's columns (n rows)."""
    import datasets

    rng = np.random.default_rng(seed)
    latents = rng.random((n, N_LATENT))
    feats = datasets.Features({
        "sample_id": datasets.Value("string"),
        "patient_id": datasets.Value("string"),
        "eye": datasets.Value("string"),
        "label": datasets.Value("string"),
        "image": datasets.Image(),
        "biomarker_ids": datasets.List(datasets.Value("string")),
        "biomarker_values": datasets.List(datasets.Value("float64")),
    })
    return datasets.Dataset.from_dict({
        "sample_id": [f"s{seed}-{i:04d}" for i in range(n)],
        "patient_id": [f"p{seed}-{i // 2:04d}" for i in range(n)],
        "eye": ["OD" if i % 2 == 0 else "OS" for i in range(n)],
        "label": [CATEGORIES[i % len(CATEGORIES)] for i in range(n)],
        "image": [Image.fromarray(draw_bscan(z, rng, size_px, size_px)) for z in latents],
        "biomarker_ids": [list(OCT_GROK_BIOMARKERS)] * n,
        "biomarker_values": [biomarkers_from_latent(z, rng) for z in latents],
    }, features=feats)


def _cfp(size_px: int) -> Image.Image:
    from skimage import data

    return Image.fromarray(data.retina()).resize((size_px, size_px), Image.BILINEAR)


def make_instruction_dataset(n: int, seed: int = 0, cfp_px: int = 56, oct_px: int = 56,
                             n_oct: int = 1) -> Any:
    """``datasets.Dataset`` with the ``instructions``/``benchmark`` columns (n rows, 1 CFP + n_oct OCT)."""
    import datasets

    rng = np.random.default_rng(seed)
    cfp = _cfp(cfp_px)
    rows: dict[str, list[Any]] = {k: [] for k in ("id", "patient_id", "eye", "task", "label", "messages", "images")}
    for i in range(n):
        label = CATEGORIES[i % len(CATEGORIES)]
        z = rng.random(N_LATENT)
        cst = int(220 + 100 * z[3])
        octs = [Image.fromarray(draw_bscan(z, rng, oct_px, oct_px)) for _ in range(n_oct)]
        user = "Colour fundus photograph: <image>\n" + "".join("OCT B-scan: <image>\n" for _ in octs)
        user += "Describe the findings and give the most likely diagnosis."
        answer = (f"The central subfield thickness is about {cst} um. "
                  f"The findings are most consistent with {label.replace('_', ' ')}.")
        rows["id"].append(f"r{seed}-{i:04d}")
        rows["patient_id"].append(f"p{seed}-{i:04d}")
        rows["eye"].append("OD" if i % 2 == 0 else "OS")
        rows["task"].append("diagnosis_report")
        rows["label"].append(label)
        rows["messages"].append([{"role": "system", "content": "You are a retina specialist."},
                                 {"role": "user", "content": user},
                                 {"role": "assistant", "content": answer}])
        rows["images"].append([cfp, *octs])
    feats = datasets.Features({
        "id": datasets.Value("string"),
        "patient_id": datasets.Value("string"),
        "eye": datasets.Value("string"),
        "task": datasets.Value("string"),
        "label": datasets.Value("string"),
        "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
        "images": datasets.List(datasets.Image()),
    })
    return datasets.Dataset.from_dict(rows, features=feats)


def write_dataset_folder(root: str | Path, splits: dict[str, dict[str, Any]], name: str = "phantom-fixture",
                         version: str = "0.0.1", fingerprint: str | None = None) -> Path:
    """Write ``{config: {split: Dataset}}`` as ``root/data/<config>/<split>-00000-of-00001.parquet`` plus a
    ``manifest.json`` (name, version and, when given, fingerprint)."""
    root = Path(root)
    for config, by_split in splits.items():
        for split, ds in by_split.items():
            out = root / "data" / config / f"{split}-00000-of-00001.parquet"
            out.parent.mkdir(parents=True, exist_ok=True)
            ds.to_parquet(str(out))
    manifest: dict[str, Any] = {"name": name, "version": version}
    if fingerprint is not None:
        manifest["fingerprint"] = fingerprint
    (root / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return root


def write_default_folder(root: str | Path) -> Path:
    """The folder the CLI examples in docs/training.md use."""
    return write_dataset_folder(root, {
        "alignment": {"train": make_alignment_dataset(256, seed=1), "validation": make_alignment_dataset(64, seed=2)},
        "instructions": {"train": make_instruction_dataset(8, seed=3)},
        "benchmark": {"test": make_instruction_dataset(3, seed=4)},
    })


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/train_fixtures.py OUT_DIR")
    print(write_default_folder(sys.argv[1]))
