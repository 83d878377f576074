"""Where the product's bundled data folders are, in a checkout and in an installed wheel.

``templates/`` (instruction, LLM, card, report and eval templates), ``knowledge_base/`` (the YAML knowledge
base) and ``data_contracts/`` (the contract YAML files) sit at the repository root, where curators and
clinicians edit them beside the code and where a checkout or an editable install reads them. A wheel built
from the repository carries copies of them inside the package, as ``grok/_bundled/<name>/`` (``setup.py``
copies them at build time), so ``pip install grok-data-engine`` can generate, validate and publish with
nothing but the installed package. The package copy wins when present; each area's own environment
variable (``GROK_TEMPLATES``, ``GROK_DATA_CONTRACTS``) or explicit folder argument still overrides both.
"""

from __future__ import annotations

from pathlib import Path

#: The data folders a wheel carries inside the package (``setup.py`` reads this list).
BUNDLED_DIRS = ("templates", "knowledge_base", "data_contracts")
#: The package subfolder that holds them in a wheel.
BUNDLED_PACKAGE_DIR = "_bundled"

_PACKAGE = Path(__file__).resolve().parent


def bundled_dir(name: str) -> Path:
    """The folder ``name`` (one of :data:`BUNDLED_DIRS`): the wheel's copy inside the package, else the
    checkout's folder at the repository root. Raises ``FileNotFoundError`` naming both places when neither
    exists (an installation that lost its data)."""
    if name not in BUNDLED_DIRS:
        raise ValueError(f"unknown bundled folder {name!r}; expected one of {', '.join(BUNDLED_DIRS)}")
    inside = _PACKAGE / BUNDLED_PACKAGE_DIR / name
    if inside.is_dir():
        return inside
    checkout = _PACKAGE.parent / name
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(
        f"the bundled folder {name}/ is missing: looked in {inside} (an installed wheel) and {checkout} "
        "(a checkout); reinstall the package (pip install --force-reinstall grok-data-engine) or run from a "
        "full checkout")


__all__ = ["BUNDLED_DIRS", "BUNDLED_PACKAGE_DIR", "bundled_dir"]
