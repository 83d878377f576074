"""Process-wide settings that importing ``grok`` makes (``grok/__init__.py``): NumPy's huge-page hint off.

With the kernel's THP ``defrag=madvise`` (this machine's default) every fresh hinted NumPy array is faulted in
as 2 MB pages with direct compaction; the fundus measures spent a tenth to a third of their CPU in the kernel
(docs/cfp.md, Speed). The switch must hold whichever of numpy and grok is imported first, reach child
processes through the environment, and leave a user's explicit ``NUMPY_MADVISE_HUGEPAGE`` alone.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the setting is made on Linux only")

# _set_madvise_hugepage returns the state before the call: the hint as the process had it
PROBE = ("from numpy._core.multiarray import _set_madvise_hugepage as s; import os; "
         "print(int(s(False)), os.environ.get('NUMPY_MADVISE_HUGEPAGE'))")


def _run(code: str, **env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


@pytest.mark.parametrize("first", ["import grok, numpy", "import numpy, grok"])
def test_importing_grok_turns_numpys_huge_page_hint_off(first):
    assert _run(f"{first}; {PROBE}") == "0 0"


def test_child_processes_inherit_the_setting():
    child = f"import subprocess, sys; print(subprocess.run([sys.executable, '-c', {PROBE!r}], capture_output=True, text=True).stdout.strip())"
    assert _run(f"import grok; {child}") == "0 0"


def test_a_users_choice_is_kept():
    assert _run(f"import grok, numpy; {PROBE}", NUMPY_MADVISE_HUGEPAGE="1") == "1 1"
    assert _run(f"import numpy, grok; {PROBE}", NUMPY_MADVISE_HUGEPAGE="1") == "1 1"
