"""Environment guards shared by the heavy modules (torchvision, devices, seeding)."""

from __future__ import annotations

import importlib
import os
import random
import sys
import warnings
from typing import Any

import numpy as np

from grok_train.errors import MissingDependencyError

_TORCHVISION_CHECKED = False
TORCHVISION_BROKEN_REASON: str | None = None


def guard_torchvision() -> None:
    """Hide a torchvision build that cannot be imported so transformers falls back to its PIL paths.

    A torchvision wheel built for another torch (e.g. ``0.28.0+cu130`` next to ``torch 2.13.0+cpu``)
    raises ``RuntimeError: operator torchvision::nms does not exist`` on import, which breaks every
    ``transformers`` image processor. When that happens we remove the half-imported module and put
    ``None`` in ``sys.modules`` (``importlib.util.find_spec`` then reports it as absent), and warn
    with the fix. A healthy torchvision is left alone. Idempotent. Call it before importing
    transformers / peft / timm (grok_train's own modules do).
    """
    global _TORCHVISION_CHECKED, TORCHVISION_BROKEN_REASON
    if _TORCHVISION_CHECKED:
        return
    _TORCHVISION_CHECKED = True
    if "torchvision" in sys.modules and sys.modules["torchvision"] is None:
        return
    try:
        importlib.import_module("torchvision")
    except ModuleNotFoundError:
        return
    except Exception as exc:  # a broken build: RuntimeError / OSError / ImportError from its C ops
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision"] = None  # type: ignore[assignment]
        TORCHVISION_BROKEN_REASON = f"{type(exc).__name__}: {exc}"
        iu = sys.modules.get("transformers.utils.import_utils")
        for name in ("is_torchvision_available", "is_torchvision_v2_available"):
            fn = getattr(iu, name, None) if iu is not None else None
            if fn is not None and hasattr(fn, "cache_clear"):
                fn.cache_clear()  # transformers was imported first: forget its answer
        warnings.warn(
            "torchvision is installed but cannot be imported "
            f"({TORCHVISION_BROKEN_REASON}); hiding it so transformers uses its PIL image processors. "
            "Fix: install the torchvision build that matches torch, e.g. "
            "`pip install torchvision --index-url https://download.pytorch.org/whl/cpu` on a CPU torch.",
            RuntimeWarning,
            stacklevel=2,
        )


def require(module: str, pip_name: str | None = None, purpose: str = "") -> Any:
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``pip install <pip_name>``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pip_name = pip_name or module
        extra = f" for {purpose}" if purpose else ""
        hint = ""
        if TORCHVISION_BROKEN_REASON and "torchvision" in str(exc):
            hint = (f" It needs torchvision, whose installed build is broken ({TORCHVISION_BROKEN_REASON}); "
                    "install the torchvision build matching torch.")
        raise MissingDependencyError(
            f"`{module}` is needed{extra} but cannot be imported ({exc}). "
            f"Install it with `pip install {pip_name}` (or `pip install -e '.[train]'`).{hint}"
        ) from exc


def resolve_device(device: str) -> Any:
    """``"auto"`` -> the local CUDA device when there is one, else CPU; anything else is passed to torch."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            return torch.device("cuda", local_rank)
        return torch.device("cpu")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG state a resumed run needs to replay the next step exactly."""
    import torch

    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
