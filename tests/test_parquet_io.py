"""Parquet read a row group at a time (grok.parquet_io): a reader holds one row group, not the file (issue 22)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grok.parquet_io import (
    DRIVER_MEMORY_POOL,
    ParquetSink,
    TableWriter,
    arrow_pool,
    iter_batches,
    open_parquet,
    release_memory,
    sorted_batches,
    take_rows,
)


def _file(path, groups: int, rows: int, blob: int) -> pa.Table:
    """A parquet file of ``groups`` row groups of ``rows`` rows, each row an id and ``blob`` random bytes."""
    rng = np.random.default_rng(groups)
    table = pa.table({"id": [f"r{i:05d}" for i in range(groups * rows)],
                      "blob": [rng.bytes(blob) for _ in range(groups * rows)]})
    pq.write_table(table, path, row_group_size=rows)
    return table


def test_batches_are_the_file_in_order(tmp_path):
    table = _file(tmp_path / "t.parquet", groups=5, rows=30, blob=64)
    batches = list(iter_batches(tmp_path / "t.parquet", 8))
    assert pa.Table.from_batches(batches).equals(table)
    assert max(b.num_rows for b in batches) == 8 and len(batches) == 5 * 4  # 8+8+8+6 per row group
    ids = pa.Table.from_batches(list(iter_batches(open_parquet(tmp_path / "t.parquet"), 50, columns=["id"])))
    assert ids.column_names == ["id"] and ids.column("id").equals(table.column("id"))
    empty = tmp_path / "empty.parquet"
    pq.write_table(table.schema.empty_table(), empty)
    assert sum(b.num_rows for b in iter_batches(empty, 8)) == 0


def test_a_reader_holds_one_row_group_not_the_file(tmp_path):
    """20 row groups of ~1 MB incompressible bytes: Arrow's pool holds a few row groups' worth at most (one
    group's pages and its decoded batch), never the file (pyarrow's pre-buffered default held 23 MB for this
    21 MB file from the first batch on, pyarrow 26)."""
    _file(tmp_path / "big.parquet", groups=20, rows=16, blob=64 << 10)
    size = (tmp_path / "big.parquet").stat().st_size
    base = pa.total_allocated_bytes()
    held = []
    n = 0
    for batch in iter_batches(tmp_path / "big.parquet", 4):
        n += batch.num_rows
        held.append(pa.total_allocated_bytes() - base)
    assert n == 20 * 16
    assert max(held) < 0.25 * size, (max(held), size)


def test_the_driver_pool_is_set_inside_and_restored(monkeypatch):
    """A build's driver sets Arrow's pool to one that gives freed memory back (issue 22) and restores the one
    before; buffers made inside are freed by their own pool after the block; the user's
    ``ARROW_DEFAULT_MEMORY_POOL`` wins."""
    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    before = pa.default_memory_pool().backend_name
    with arrow_pool("system"):
        assert pa.default_memory_pool().backend_name == "system"
        made = pa.array(np.arange(100_000))
        assert made.buffers()[1].size >= 800_000
    assert pa.default_memory_pool().backend_name == before
    assert made.sum().as_py() == 100_000 * 99_999 // 2
    del made
    with arrow_pool():  # the default: jemalloc where this Arrow has it, else the system allocator
        assert pa.default_memory_pool().backend_name in {DRIVER_MEMORY_POOL, "system"}
    assert pa.default_memory_pool().backend_name == before
    with arrow_pool("no-such-allocator"):
        assert pa.default_memory_pool().backend_name == "system"
    monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", before)  # the user's (or grok's) choice, already in effect
    with arrow_pool("system"):
        assert pa.default_memory_pool().backend_name == before
    monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", "system")  # asked for, but pyarrow was imported before
    with arrow_pool():
        assert pa.default_memory_pool().backend_name == "system"
    assert pa.default_memory_pool().backend_name == before


def test_importing_grok_first_makes_jemalloc_arrows_pool():
    """In a fresh interpreter (Linux): grok, then pyarrow, gives jemalloc; a user's choice is kept."""
    code = "import grok, pyarrow as pa; print(pa.default_memory_pool().backend_name)"
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert run.stdout.strip() == ("jemalloc" if sys.platform.startswith("linux") else pa.default_memory_pool().backend_name)
    run = subprocess.run([sys.executable, "-c", code], env={**env, "ARROW_DEFAULT_MEMORY_POOL": "system"},
                         capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "system"


_HELD_HEAP = r"""
from grok.parquet_io import release_memory
def anon_mb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon"):
            return int(line.split()[1]) // 1024
blocks = [bytearray(64 * 1024) for _ in range(800)]  # 50 MB of heap blocks (under glibc's mmap threshold), written
keep = blocks[-1]  # the last one pins the heap's top, so freeing the rest leaves a hole glibc keeps
del blocks
held = anon_mb()
release_memory()
print(held, anon_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RssAnon and malloc_trim are Linux (glibc) facts")
def test_release_memory_gives_a_freed_heap_hole_back():
    """What a finished stage freed inside the heap stays the process's until ``release_memory`` (a fresh
    interpreter, so the heap is this script's alone)."""
    run = subprocess.run([sys.executable, "-c", _HELD_HEAP], capture_output=True, text=True, check=True)
    held, after = (int(x) for x in run.stdout.split())
    assert held - after >= 35, (held, after)
    release_memory()  # in this process too: harmless, and Arrow's pool answers it


def test_table_writer_round_trips_in_batches_in_both_formats(tmp_path):
    schema = pa.schema([("id", pa.string()), ("tags", pa.list_(pa.string())), ("x", pa.float64())])
    rows = [{"id": f"r{i}", "tags": [str(i)] * (i % 3), "x": float(i), "extra": "dropped"} for i in range(25)]
    for name in ("t.arrow", "t.parquet"):
        w = TableWriter(tmp_path / name, schema, batch_rows=10)
        for r in rows:
            w.write(r)
        assert len(w._buf) == 5 and w.rows == 25  # two batches of 10 written, 5 rows held
        table = w.read()
        assert table.schema.equals(schema) and table.num_rows == 25
        assert table.to_pylist() == [{k: r[k] for k in schema.names} for r in rows]
    # the IPC spool is an Arrow file (mapped back, not decoded); the other suffix is parquet
    assert pa.ipc.open_file(pa.memory_map(str(tmp_path / "t.arrow"))).num_record_batches == 3
    assert pq.ParquetFile(tmp_path / "t.parquet").num_row_groups == 3
    for name in ("e.arrow", "e.parquet"):  # nothing written: an empty table with the schema, not a missing file
        empty = TableWriter(tmp_path / name, schema).read()
        assert empty.num_rows == 0 and empty.schema.equals(schema)


def test_sorted_batches_are_the_sorted_table_a_batch_at_a_time(tmp_path):
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 20, 103)
    table = pa.table({"k": [f"s{k:02d}" for k in keys], "i": list(range(103))})
    parts = list(sorted_batches(table, [("k", "ascending")], 10))
    assert [p.num_rows for p in parts] == [10] * 10 + [3]
    whole = pa.concat_tables(parts).to_pylist()
    # the stable sort: equal keys keep the table's order
    assert whole == sorted(table.to_pylist(), key=lambda r: (r["k"], r["i"]))
    assert list(sorted_batches(table.slice(0, 0), [("k", "ascending")], 10)) == []


def test_parquet_sink_writes_the_schema_and_renames_only_when_done(tmp_path):
    schema = pa.schema([("id", pa.string()), ("x", pa.float64())])
    path = tmp_path / "t.parquet"
    with ParquetSink(path, schema) as sink:
        sink.write(pa.table({"x": [1, 2], "id": ["a", "b"], "extra": [0, 0]}))  # cast, columns in the schema's order
        sink.write(pa.table({"id": pa.array([], pa.string()), "x": pa.array([], pa.float64())}))
        assert not path.exists()
    assert pq.read_table(path).to_pylist() == [{"id": "a", "x": 1.0}, {"id": "b", "x": 2.0}] and sink.rows == 2
    with pytest.raises(RuntimeError), ParquetSink(tmp_path / "bad.parquet", schema) as sink:
        sink.write(pa.table({"id": ["a"], "x": [1.0]}))
        raise RuntimeError("a failed build")
    assert not list(tmp_path.glob("bad.parquet*"))  # neither the file nor its temporary copy
    with ParquetSink(tmp_path / "e.parquet", schema):
        pass
    assert pq.read_table(tmp_path / "e.parquet").schema.equals(schema)


def test_take_rows_is_arrows_take_gathered_chunk_by_chunk():
    """take_rows returns table.take's rows and order (repeats, across chunks, none) without joining the chunks."""
    rows = [{"id": f"r{i}", "text": "x" * (i % 7), "tags": [str(j) for j in range(i % 3)], "v": float(i)}
            for i in range(50)]
    table = pa.Table.from_batches(pa.Table.from_pylist(rows).to_batches(max_chunksize=7))
    assert table.column("text").num_chunks == 8
    rng = np.random.default_rng(3)
    for idx in (rng.permutation(50)[:20], np.array([49, 0, 7, 7, 6, 13]), np.array([], dtype=np.int64),
                np.arange(50)):
        got = take_rows(table, idx)
        assert got.schema == table.schema
        assert got.to_pylist() == table.take(pa.array(idx, type=pa.int64())).to_pylist()


def test_ingest_rows_subset_reads_rows_of_a_table_of_many_row_groups():
    """The measure stage's per-shard lookup (``IngestRows.subset``) gathers chunk by chunk (``take_rows``): the same
    dicts as Arrow's take, in the order asked, unknown and repeated keys left out, on a table of several chunks."""
    from grok.stages.measure_stage import IngestRows

    batches = [pa.record_batch({"study_id": [f"S{i}" for i in range(j, j + 4)], "v": [str(i) * 3 for i in range(j, j + 4)]})
               for j in (0, 4, 8)]
    table = pa.Table.from_batches(batches)
    rows = IngestRows(table, "study_id")
    got = rows.subset(["S9", "S1", "nope", "S9", "S5"])
    assert list(got) == ["S9", "S1", "S5"]
    assert got == {k: table.take(pa.array([int(k[1:])])).to_pylist()[0] for k in ("S9", "S1", "S5")}
    assert rows.subset([]) == {} and rows.subset(["nope"]) == {}
