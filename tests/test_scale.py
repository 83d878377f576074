"""The measure stage at scale: shard sizes from the work and the workers (never shaping the data nor the
build id), a study that hangs is quarantined with its reason while the build goes on, a corrupt shard
file is measured again, and rerunning the same command resumes."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from grok.stages import measure_stage
from grok.stages.config import BuildConfig
from grok.stages.folder import BuildFolder
from grok.stages.measure_stage import (
    AUTO_MAX,
    AUTO_WAVES,
    TAPER_LEVELS,
    auto_shard_size,
    shard_path,
    shard_sizes,
)
from grok.stages.runner import STAGE_BY_NAME, run_stage
from tests import test_build_shards
from tests.test_build_shards import tiny_config

MEASURE = STAGE_BY_NAME["measure"]
#: fixtures: the tiny phantom (two studies) ingested once, and a copy of its build folder per test
ingested, tiny_copy = test_build_shards.ingested, test_build_shards.copy


def _table(tmp: Path) -> str:
    """biomarkers.parquet as JSON text (NaN compares equal to NaN there)."""
    return json.dumps(pq.read_table(tmp / "build" / "biomarkers.parquet").to_pylist(), default=str)


def test_auto_shards_fill_the_workers_within_bounds():
    for n, workers in [(1, 1), (40, 2), (5000, 2), (5000, 100), (170_000, 64)]:
        size = auto_shard_size(n, workers)
        shards = -(-n // size)
        assert 1 <= size <= AUTO_MAX
        assert shards >= min(n, workers * AUTO_WAVES) or size == AUTO_MAX


def test_last_shards_taper_so_the_workers_finish_together():
    sizes = shard_sizes(2500, 64, taper_workers=2)
    assert sizes == [64] * 37 + [20] + [32, 32, 16, 16, 8, 8]  # a half, a quarter, an eighth per worker, last
    assert shard_sizes(2500, 64) == [64] * 39 + [4]  # a size set by hand is kept as is
    assert shard_sizes(10, 4, taper_workers=2) == [4, 4, 2]  # a tail over half the studies is dropped
    assert shard_sizes(2, 1, taper_workers=2) == [1, 1]
    for n, workers in [(1, 1), (40, 2), (500, 2), (5000, 2), (5000, 100), (170_000, 64)]:
        size = auto_shard_size(n, workers)
        got = shard_sizes(n, size, taper_workers=workers)
        assert sum(got) == n and all(1 <= s <= size for s in got)
        tail = got[-workers * TAPER_LEVELS:]
        assert tail == sorted(tail, reverse=True) and tail[-1] <= max(1, size // 8), (n, workers)


def test_shard_size_changes_neither_the_build_id_nor_the_data(tiny_copy, tmp_path):
    ids = {BuildFolder(tiny_config(tiny_copy, measure=m)).build_id()
           for m in ({}, {"shard_size": "auto"}, {"shard_size": 8}, {"study_timeout_s": 5})}
    assert len(ids) == 1  # auto keys as the old default 8; the time limit is operational
    assert BuildFolder(tiny_config(tiny_copy, measure={"shard_size": 1})).build_id() not in ids  # as before: ids stay
    whole = tiny_config(tiny_copy, measure={"shard_size": 8})
    run_stage(whole, "measure")
    one_shard = _table(tiny_copy)
    shutil.rmtree(tiny_copy / "build" / "measure")
    run_stage(tiny_config(tiny_copy, measure={"shard_size": 1}), "measure")
    assert _table(tiny_copy) == one_shard  # merged from two shards, streamed in order


def test_the_plan_keeps_no_ingest_table(tiny_copy):
    """The driver plans the measure stage and lives for the whole build: the plan reads the ingest tables for
    itself, never into the per-process cache the workers keep (it grows with the archive)."""
    measure_stage._TABLES.clear()
    cfg = tiny_config(tiny_copy)
    assert MEASURE.plan(BuildFolder(cfg, workers=2))
    assert measure_stage._TABLES == {}
    measure_stage.ingest_rows(tiny_copy / "build", "studies")  # a worker's read is kept
    assert len(measure_stage._TABLES) == 1


def test_executors_plan_in_a_process_of_their_own(tiny_copy, monkeypatch):
    """Both executors call ``run_plan``: the plan runs in a child (what it allocates goes with it), the shards
    that come back are the plan's, and what it records in build.json (the auto size) is there for the driver."""
    folder = BuildFolder(tiny_config(tiny_copy), workers=2)
    called = []
    monkeypatch.setattr(measure_stage, "plan_shards", lambda *a, **k: called.append(a))  # not the child's module
    shards = MEASURE.run_plan(folder)
    assert called == []  # the driver's (patched) plan_shards never ran
    assert [len(s["ids"]) for s in shards] == [1, 1] and all(len(s["key"]) == 32 for s in shards)
    assert folder.info()["measure_shard_size"] == 1  # written by the child, read here
    monkeypatch.undo()
    assert MEASURE.plan(folder) == shards
    (tiny_copy / "build" / "ingest" / "studies.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="studies.parquet"):  # the child's error, raised here as it was
        MEASURE.run_plan(folder)


def test_auto_size_is_recorded_and_reused_on_other_workers(tiny_copy):
    cfg = tiny_config(tiny_copy)  # shard_size: auto
    folder = BuildFolder(cfg, workers=2)
    shards = MEASURE.plan(folder)
    assert [len(s["ids"]) for s in shards] == [1, 1]  # two studies on two workers: one study per shard
    assert folder.info()["measure_shard_size"] == 1 and folder.info()["measure_shard_taper"] == 2
    assert MEASURE.plan(BuildFolder(cfg, workers=16)) == shards  # the rerun keeps the finished shards' plan


def test_hanging_study_is_quarantined_and_the_build_goes_on(tiny_copy, monkeypatch):
    real = measure_stage.measure_study
    studies = sorted(pq.read_table(tiny_copy / "build" / "ingest" / "studies.parquet").column("study_id").to_pylist())
    victim = studies[0]
    measured = {}

    def records(study, *a, **kw):
        measured[study["study_id"]] = real(study, *a, **kw)
        return measured[study["study_id"]]

    def hangs(study, *a, **kw):
        if study["study_id"] == victim:
            while True:  # a study stuck in a loop
                time.sleep(0.01)
        # the other study gives its earlier result at once: its time, which this machine's load can stretch
        # several-fold, never comes near the limit (a real measurement under a tight limit failed in CI)
        return measured[study["study_id"]]

    monkeypatch.setattr(measure_stage, "measure_study", records)
    run_stage(tiny_config(tiny_copy, measure={"shard_size": 8}), "measure")
    assert sorted(measured) == studies and all(r.row is not None for r in measured.values())
    shutil.rmtree(tiny_copy / "build" / "measure")
    monkeypatch.setattr(measure_stage, "measure_study", hangs)
    limit = 2
    cfg = tiny_config(tiny_copy, measure={"shard_size": 8, "study_timeout_s": limit})
    rep = run_stage(cfg, "measure")
    time.sleep(limit + 0.5)  # the other study's deadline was cancelled: nothing is raised later in this thread
    q = pq.read_table(tiny_copy / "build" / "measure_quarantine.parquet").to_pylist()
    assert [(r["study_id"], r["error_class"]) for r in q] == [(victim, "study_timeout")]
    assert f"measure.study_timeout_s = {limit} s" in q[0]["reason"]
    assert rep.n_in == len(studies) and rep.n_out == len(studies) - 1 and rep.n_quarantined == 1
    assert limit <= rep.details["shards"]["study_seconds_max"] < limit + 5  # stopped soon after its limit
    # the same command again resumes: the shard is finished and not measured again
    out = shard_path(tiny_copy / "build", studies)
    mtime = out.stat().st_mtime_ns
    run_stage(cfg, "measure")
    assert out.stat().st_mtime_ns == mtime
    # a larger limit measures the study that ran out of time, for real
    monkeypatch.setattr(measure_stage, "measure_study", real)
    rep = run_stage(tiny_config(tiny_copy, measure={"shard_size": 8, "study_timeout_s": limit + 120}), "measure")
    assert rep.n_out == len(studies) and rep.n_quarantined == 0


def test_corrupt_shard_file_is_measured_again(tiny_copy):
    cfg = tiny_config(tiny_copy, measure={"shard_size": 1})
    run_stage(cfg, "measure")
    before = _table(tiny_copy)
    files = sorted((tiny_copy / "build" / "measure").glob("shard-*.parquet"))
    assert len(files) == 2
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) // 2])  # truncated, e.g. by a full disk or a killed tiny_copy
    timing = json.loads(pq.read_schema(files[1]).metadata[b"grok.timing"])
    rep = run_stage(cfg, "measure")
    assert pq.read_table(files[0]).num_rows == 1  # rewritten whole
    assert json.loads(pq.read_schema(files[1]).metadata[b"grok.timing"]) == timing  # the intact one was kept
    assert _table(tiny_copy) == before
    assert rep.details["shards"]["shards"] == 2 and rep.details["shards"]["reused"] == 1


def test_config_refuses_a_bad_shard_size(tmp_path):
    from grok.config import ConfigError

    for bad in (0, "many"):
        with pytest.raises(ConfigError, match="measure.shard_size"):
            BuildConfig.parse({**tiny_config(tmp_path).model_dump(mode="json"), "measure": {"shard_size": bad}})


def test_local_dask_workers_start_without_malloc_trimming(tmp_path):
    """Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in every worker it spawns; with it a measure study ran
    ~1.6x slower (freed cube-sized arrays go back to the kernel and come back as fresh zeroed pages)."""
    dask = pytest.importorskip("dask")
    pytest.importorskip("prefect_dask")
    from flows.build import with_runner

    key = "distributed.nanny.pre-spawn-environ"
    before = dict(dask.config.get(key, None) or {})
    try:
        cfg = BuildConfig.parse({**tiny_config(tmp_path).model_dump(mode="json"), "runner": {"kind": "dask"}})
        with_runner(cfg)
        env = dask.config.get(key)
        assert "MALLOC_TRIM_THRESHOLD_" not in env
        # the rest of Dask's worker environment is kept (one thread for numeric libraries)
        assert {k: v for k, v in before.items() if k != "MALLOC_TRIM_THRESHOLD_"} == env
    finally:
        dask.config.set({key: before})


def test_templates_compile_once_per_process_and_again_when_edited(tmp_path):
    from grok.instruct.templating import library, templates_dir

    root = tmp_path / "templates"
    shutil.copytree(templates_dir(), root)
    lib = library(root)
    assert library(root) is lib  # a worker's second shard reuses the compiled environment
    tid = lib.ids()[0]
    lib.get(tid)
    edited = root / tid
    edited.write_text(edited.read_text() + "\n")
    again = library(root)
    assert again is not lib and again.get(tid)[1].sha256 != lib.get(tid)[1].sha256  # an edit is seen
