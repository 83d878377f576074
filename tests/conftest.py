"""Shared fixtures: a small phantom archive built once per test session (per xdist worker)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# Prefect on 2 cores: a generous server start-up timeout, no telemetry, no services tests do not need.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_API_SERVICES_SCHEDULER_ENABLED", "false")
os.environ.setdefault("PREFECT_API_SERVICES_LATE_RUNS_ENABLED", "false")
os.environ.setdefault("PREFECT_API_SERVICES_FOREMAN_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GROK_PSEUDONYM_KEY", "test-secret-key")
# grok eval caches reference readings on disk: one throwaway folder per test session, never the
# user's ~/.cache (a stale or shared cache must not decide a test)
# (removed when the session's process ends, so runs leave no folders in /tmp)
if "GROK_EVAL_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["GROK_EVAL_CACHE"] = tempfile.mkdtemp(prefix="grok-eval-cache-")
    atexit.register(shutil.rmtree, os.environ["GROK_EVAL_CACHE"], True)

#: Small but complete geometry so tests stay fast on 2 cores.
SMALL_OCT = (7, 160, 128)
SMALL_OCT_SPACING_UM = (8.0, 46.875, 1000.0)  # 1.28 mm deep, 6 x 6 mm cube like the default
SMALL_CFP = 256


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: intra-op threading only adds overhead on a shared 2-core machine. Used by the training
    test modules (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``); restored after each."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def phantom_archive(tmp_path_factory) -> Path:
    """4 subjects (both eyes, CFP + OCT + circle scans, DICOM + exports), seed 7."""
    from grok.phantom.archive import PhantomConfig, write_phantom

    out = tmp_path_factory.mktemp("phantom")
    write_phantom(PhantomConfig(subjects=4, seed=7, oct_shape=SMALL_OCT, oct_spacing_um=SMALL_OCT_SPACING_UM,
                                cfp_size=SMALL_CFP, circle_scans=True,
                                single_frame_fraction=0.5), out)
    return out


@pytest.fixture(scope="session")
def planted(phantom_archive) -> list[str]:
    return json.loads((phantom_archive / "truth" / "planted_identifiers.json").read_text())
