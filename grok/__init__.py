"""GROK data engine: ophthalmic archives to knowledge-grounded instruction datasets.

The core library. It never imports Prefect; flows in ``flows/`` wire these functions together.
"""

from __future__ import annotations

__version__ = "0.1.0"
