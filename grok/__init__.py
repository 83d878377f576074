"""GROK data engine: ophthalmic archives to knowledge-grounded instruction datasets.

The core library. It never imports Prefect; flows in ``flows/`` wire these functions together.

On Linux, importing ``grok`` before ``pyarrow`` makes jemalloc Arrow's memory pool for the process
(``ARROW_DEFAULT_MEMORY_POOL``, unless already set): Arrow reads that variable once, when ``pyarrow`` is
imported, and its default, mimalloc, keeps the pages it frees, so a build's driver grew with the archive
(``grok.parquet_io.DRIVER_MEMORY_POOL`` gives the figures; issue 22).
"""

from __future__ import annotations

import os
import sys

__version__ = "0.1.0"

if sys.platform.startswith("linux"):  # where pyarrow's wheels carry jemalloc
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
