"""Build hook: a wheel carries the repository's data folders inside the package.

The project's metadata lives in ``pyproject.toml``. ``templates/``, ``knowledge_base/`` and
``data_contracts/`` stay at the repository root (where they are edited and reviewed); a regular (non-editable)
build copies them into ``grok/_bundled/`` of the built package, where :func:`grok.resources.bundled_dir` finds
them. An editable install reads them from the checkout, so nothing is copied there.

It also builds ``grok.verify._cscan`` (``grok/verify/_cscan.c``: the verifier's word scans and clause split and
scoring's lookups (BLEU's n-gram index, ROUGE-L's LCS, the bootstrap's counts),
CPython C API, no dependency), optionally: where no C compiler is found the package installs without it and
``grok.verify.scan`` uses its ``re`` path, which gives the same results.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
#: Kept in step with grok.resources.BUNDLED_DIRS (tests/test_packaging.py checks both lists).
BUNDLED_DIRS = ("templates", "knowledge_base", "data_contracts")
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")


class BuildPyWithData(build_py):
    """``build_py`` that also copies the bundled data folders into ``grok/_bundled/`` of the build."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "grok" / "_bundled"
        for name in BUNDLED_DIRS:
            src = ROOT / name
            if not src.is_dir():
                raise SystemExit(f"setup.py: {src} is missing; build from a full checkout or an sdist of it")
            dst = target / name
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(src, dst, ignore=SKIP)


#: Optional: a failed compile leaves the pure-Python path (grok.verify.scan), never a failed install.
CSCAN = Extension("grok.verify._cscan", ["grok/verify/_cscan.c"], optional=True)

setup(cmdclass={"build_py": BuildPyWithData}, ext_modules=[CSCAN])
