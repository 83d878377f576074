"""Parquet files read a row group at a time, so a reader's memory is one row group, not the file.

``pyarrow.parquet.ParquetFile`` pre-buffers by default: ``iter_batches`` over a whole file then keeps every row
group's column chunks it has read in Arrow's memory pool until the iteration ends, and the pool's allocator
(mimalloc) keeps freed pages. Measured on a 254 MB published shard of the 5,000-study build (17 row groups,
``iter_batches(batch_size=512)`` with every value turned into Python, pyarrow 26): the default held the whole
file (pool 265 MB, RSS +355 MB); without pre-buffering and with the pool's unused memory released after each
row group, RSS +84 MB at the peak and +29 MB after. Issue 22 (flat driver memory) found the privacy scan of a
version about to be published, the contracts and the publication's copy of the instruction rows reading files
this way.

Arrow's memory pool: mimalloc, Arrow's default, keeps pages it has freed even after ``release_unused()``. Importing
``grok`` before ``pyarrow`` makes it :data:`DRIVER_MEMORY_POOL` for the process (Linux); the plain runner, the
Prefect flow's driver and publication also ask for it (:func:`arrow_pool`) where ``pyarrow`` came first.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def open_parquet(source: Any) -> pq.ParquetFile:
    """``source`` (a path or a binary file object) opened without pre-buffering: a read holds the row group or
    column it reads, not every chunk read before."""
    return pq.ParquetFile(source, pre_buffer=False)


def iter_batches(source: Any | pq.ParquetFile, batch_size: int,
                 columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
    """The record batches of ``source`` (a path, a binary file object or a :func:`open_parquet` file), at most
    ``batch_size`` rows each (fewer at the end of a row group), one row group at a time; the Arrow pool's
    unused memory is given back after each row group."""
    pf = source if isinstance(source, pq.ParquetFile) else open_parquet(source)
    cols = list(columns) if columns is not None else None
    for g in range(pf.num_row_groups):
        yield from pf.iter_batches(batch_size=batch_size, row_groups=[g], columns=cols)
        pa.default_memory_pool().release_unused()


def _blank(schema: pa.Schema, row: dict[str, Any]) -> dict[str, Any]:
    return {name: row.get(name) for name in schema.names}


def map_arrow(path: str | Path) -> pa.Table:
    """An Arrow IPC file as a table memory-mapped from disk (zero-copy: its pages are the file's, not the heap's)."""
    return pa.ipc.open_file(pa.memory_map(str(path))).read_all()


class TableWriter:
    """Append rows to a table file in batches of ``batch_rows``: a writer holds at most that many rows as Python
    objects however many are written. A path ending in ``.arrow`` is an Arrow IPC file, which :meth:`read` maps back
    without decoding (the ingest stage's staged file records and manifest rows); any other path is parquet (the
    instruction tables)."""

    def __init__(self, path: str | Path, schema: pa.Schema, batch_rows: int = 2000):
        self.path = Path(path)
        self.schema = schema
        self.batch_rows = batch_rows
        self.ipc = self.path.suffix == ".arrow"
        self._buf: list[dict[str, Any]] = []
        self._writer: pq.ParquetWriter | pa.ipc.RecordBatchFileWriter | None = None
        self.rows = 0

    def write(self, row: dict[str, Any]) -> None:
        self._buf.append(_blank(self.schema, row))
        self.rows += 1
        if len(self._buf) >= self.batch_rows:
            self.flush()

    def _open(self) -> pq.ParquetWriter | pa.ipc.RecordBatchFileWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.ipc:
            return pa.ipc.new_file(str(self.path), self.schema)
        return pq.ParquetWriter(str(self.path), self.schema)

    def flush(self) -> None:
        if not self._buf:
            return
        if self._writer is None:
            self._writer = self._open()
        self._writer.write_table(pa.Table.from_pylist(self._buf, schema=self.schema))
        self._buf = []

    def close(self) -> None:
        self.flush()
        if self._writer is None:  # always leave a (possibly empty) table with the right schema
            self._writer = self._open()
        self._writer.close()
        self._writer = None

    def read(self) -> pa.Table:
        """The rows written, once the writer is closed: an Arrow IPC file memory-mapped (its pages are the file's,
        not the heap's: at 5,000 studies the ingest stage peaked 14 MB lower than with a parquet spool decoded
        back), a parquet file read whole."""
        self.close()
        if self.ipc:
            return map_arrow(self.path)
        return pq.read_table(self.path, memory_map=True)

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def sorted_batches(table: pa.Table, keys: Sequence[tuple[str, str]], batch_rows: int) -> Iterator[pa.Table]:
    """``table`` (e.g. memory-mapped from an Arrow IPC file) in the order of ``keys`` (``sort_indices``' stable
    sort), ``batch_rows`` rows at a time: what is in memory is the order (8 bytes a row) and one batch, not the
    sorted table. Each batch is taken chunk by chunk: Arrow's ``take`` on a table of many chunks concatenates a
    string column's chunks first (a 4,096-row take from 1.28M rows in 1,250 chunks allocated the whole 36 MB column
    and took 20 ms), which would make every batch cost the whole table."""
    order = pc.sort_indices(table, sort_keys=list(keys)).to_numpy().astype(np.int64)
    chunks = table.to_batches()
    starts = np.cumsum([0] + [b.num_rows for b in chunks], dtype=np.int64)
    for first in range(0, len(order), batch_rows):
        yield _take_by_chunk(chunks, starts, order[first:first + batch_rows], table.schema)


def take_rows(table: pa.Table, rows: np.ndarray) -> pa.Table:
    """``table.take(rows)`` gathered chunk by chunk: Arrow's ``take`` on a table of many chunks concatenates each
    string or list column's chunks first, so a few hundred rows taken from a memory-mapped table cost its whole
    columns (256 rows of the text columns of a 60,000-row table in 15 chunks: 61 MB of Arrow's pool and 143 ms);
    here only the rows taken are copied. The same rows in the same order as ``table.take``."""
    chunks = table.to_batches()
    starts = np.cumsum([0] + [b.num_rows for b in chunks], dtype=np.int64)
    return _take_by_chunk(chunks, starts, np.asarray(rows, dtype=np.int64), table.schema)


def _take_by_chunk(chunks: list[pa.RecordBatch], starts: np.ndarray, idx: np.ndarray, schema: pa.Schema) -> pa.Table:
    if not len(idx):
        return schema.empty_table()
    which = np.searchsorted(starts, idx, side="right") - 1
    by_chunk = np.argsort(which, kind="stable")
    groups = np.split(by_chunk, np.flatnonzero(np.diff(which[by_chunk])) + 1)
    pieces = [chunks[which[g[0]]].take(pa.array(idx[g] - starts[which[g[0]]])) for g in groups]
    back = np.empty_like(by_chunk)
    back[by_chunk] = np.arange(len(by_chunk))
    return pa.Table.from_batches(pieces, schema=schema).take(pa.array(back))


class ParquetSink:
    """A parquet file written a table (batch) at a time, zstd-compressed, to ``PATH.tmp`` and renamed to ``path``
    when the block ends without an error (a reader never sees half a file); every batch is cast to ``schema``. A
    file with no rows still has the schema."""

    def __init__(self, path: str | Path, schema: pa.Schema):
        self.path = Path(path)
        self.schema = schema
        self.rows = 0
        self._tmp = self.path.with_name(self.path.name + ".tmp")

    def __enter__(self) -> ParquetSink:
        self._writer = pq.ParquetWriter(str(self._tmp), self.schema, compression="zstd")
        return self

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self._writer.write_table(table.select(self.schema.names).cast(self.schema))
            self.rows += table.num_rows

    def __exit__(self, exc_type, *exc) -> None:
        self._writer.close()
        if exc_type is None:
            self._tmp.replace(self.path)
        else:
            self._tmp.unlink(missing_ok=True)


#: Arrow's memory pool in a build's driver process: ``grok`` sets it through ``ARROW_DEFAULT_MEMORY_POOL`` when it is
#: imported before ``pyarrow`` (``grok/__init__``), :func:`arrow_pool` where it is not. With mimalloc, Arrow's default,
#: merging the 5,000-study build's 157 instruction shards (26,372 rows) grew anonymous memory by 82-84 MB, with
#: jemalloc 32 MB and the system allocator 35 MB (same merged bytes, CPU 0.58-0.67 s each); publication's peak went
#: 412 -> 545 MB (mimalloc) and 379 -> 434 MB (jemalloc, set before ``pyarrow`` was imported) from 500 to 5,000
#: studies, the same published bytes and CPU (ad-hoc probes, one thread, issue 22).
DRIVER_MEMORY_POOL = "jemalloc"


def _pool(name: str) -> pa.MemoryPool | None:
    try:
        return getattr(pa, f"{name}_memory_pool")()
    except (AttributeError, NotImplementedError, pa.ArrowException):
        return None


def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc (Linux); absent elsewhere
    except (OSError, AttributeError):
        return None


#: glibc's ``malloc_trim``, or None where the C library has none.
_MALLOC_TRIM = _malloc_trim()


def release_memory() -> None:
    """Give the memory a finished step freed back to the system: the unused pages of Arrow's pool, then glibc's
    free heap pages (``malloc_trim(0)`` returns free pages anywhere in the heap, not only at its top; a no-op
    where the C library has no such call). Called between a driver's stages and publication's phases, whose
    large freed buffers (Arrow columns, numpy arrays, pandas frames) glibc otherwise keeps for the next one:
    publication's peak anonymous memory at 2,500 / 10,000 synthetic studies went 345 / 376 -> 336 / 366 MB
    (``benchmarks/publish.py --memory-curve 13750,55000``, issue 22)."""
    pa.default_memory_pool().release_unused()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


@contextmanager
def arrow_pool(name: str = DRIVER_MEMORY_POOL) -> Iterator[None]:
    """Arrow's default memory pool set to ``ARROW_DEFAULT_MEMORY_POOL``, else ``name`` (``jemalloc``, ``system`` or
    ``mimalloc``; the system allocator where this Arrow lacks it) inside the block, the pool before restored after
    (a buffer is freed by the pool that made it); nothing changes where that pool is already the default.

    A fallback: ``grok`` sets ``ARROW_DEFAULT_MEMORY_POOL`` when it is imported before ``pyarrow`` (``grok/__init__``),
    which also reaches the allocations Arrow's C++ makes without asking Python for a pool; this block reaches only
    those that do (publication's probe, 500 -> 5,000 studies: 410 -> 520 MB with the pool set here, 380 -> 441 MB
    with the variable set before ``pyarrow`` was imported)."""
    want = os.environ.get("ARROW_DEFAULT_MEMORY_POOL") or name
    before = pa.default_memory_pool()
    if before.backend_name == want:
        yield
        return
    pa.set_memory_pool(_pool(want) or pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(before)
