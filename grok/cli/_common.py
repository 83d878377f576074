"""Helpers shared by the CLI modules: JSON output, error exits, console."""

from __future__ import annotations

import json
import math
import sys
from enum import IntEnum
from typing import Any, NoReturn

import numpy as np
from rich.console import Console

#: Human-facing output goes to stderr so ``--json`` on stdout stays machine-readable.
console = Console(stderr=True)


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    BAD_INPUT = 3
    MISSING_DEPENDENCY = 4


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return None if math.isnan(f) or math.isinf(f) else f
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if hasattr(obj, "to_dict"):
        return _jsonable(obj.to_dict())
    return obj


def print_json(obj: Any) -> None:
    """Print ``obj`` as JSON on stdout; NaN/inf become ``null``, numpy types become Python ones."""
    sys.stdout.write(json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def fail(message: str, code: ExitCode = ExitCode.FAILED) -> NoReturn:
    """Print ``message`` (it should name the file and the fix) and exit with ``code``."""
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise SystemExit(int(code))
