"""GROK data engine: ophthalmic archives to knowledge-grounded instruction datasets.

The core library. It never imports Prefect; flows in ``flows/`` wire these functions together.

On Linux, importing ``grok`` before ``pyarrow`` makes jemalloc Arrow's memory pool for the process
(``ARROW_DEFAULT_MEMORY_POOL``, unless already set): Arrow reads that variable once, when ``pyarrow`` is
imported, and its default, mimalloc, keeps the pages it frees, so a build's driver grew with the archive
(``grok.parquet_io.DRIVER_MEMORY_POOL`` gives the figures; issue 22).

It also turns off NumPy's transparent-huge-page hint for large arrays (``NUMPY_MADVISE_HUGEPAGE=0``, unless
set): with the kernel's default THP ``defrag=madvise`` every fresh hinted array is faulted in as 2 MB pages
with direct compaction, and the measurement stages allocate hundreds of MB of short-lived arrays per image,
so the kernel's time (counted in the process's CPU) was about a tenth of a fundus photograph's measure
(``docs/cfp.md``, Speed). Child processes (Dask workers) inherit the setting.
"""

from __future__ import annotations

import os
import sys

__version__ = "0.1.0"

if sys.platform.startswith("linux"):  # where pyarrow's wheels carry jemalloc
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
    if "NUMPY_MADVISE_HUGEPAGE" not in os.environ:
        os.environ["NUMPY_MADVISE_HUGEPAGE"] = "0"  # read by numpy when it is imported
        if "numpy" in sys.modules:  # imported before grok: switch the hint off in this process too
            try:
                from numpy._core.multiarray import _set_madvise_hugepage
            except ImportError:  # a NumPy without the switch keeps its default
                pass
            else:
                _set_madvise_hugepage(False)
