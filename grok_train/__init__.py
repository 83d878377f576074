"""GROK training jobs: CLIP-style OCT-biomarker alignment, LoRA SFT of Qwen2-VL, prediction, merge.

Run as: python -m grok_train --help   (the same commands as ``grok train ...`` / ``grok-train``)

This package runs on bare GPU workers: it imports neither Prefect nor Great Expectations nor the
``grok`` CLI. Heavy dependencies (torch, transformers, peft, datasets, timm) are imported lazily
inside the functions that need them, so ``import grok_train`` stays cheap.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
