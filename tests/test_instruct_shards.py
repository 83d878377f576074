"""The instruct stage's shards at scale (issue 22): ``instruct.shard_size: auto`` sizes them from the records and
the workers within bounds (so the number of Prefect tasks stops growing with the archive), keeps the old
default's build id, is recorded once per build folder, and never changes the rows."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from grok.stages import instruct_stage
from grok.stages.folder import BuildFolder
from grok.stages.instruct_stage import AUTO_LLM, AUTO_MAX, AUTO_MIN, AUTO_WAVES, auto_shard_size
from grok.stages.runner import STAGE_BY_NAME
from tests.test_build_shards import tiny_config
from tests.test_scale_memory import _peak, ingested, measured, synthetic_records  # noqa: F401 - fixtures

INSTRUCT = STAGE_BY_NAME["instruct"]


def test_auto_size_bounds_the_task_count():
    for n, workers in [(1, 1), (40, 2), (2000, 2), (5000, 2), (170_000, 2), (170_000, 64), (10**6, 256)]:
        size = auto_shard_size(n, workers)
        shards = -(-n // size)
        assert AUTO_MIN <= size <= AUTO_MAX
        assert shards >= min(-(-n // AUTO_MIN), workers * AUTO_WAVES) or size == AUTO_MAX  # the workers are fed
        assert shards <= max(workers * AUTO_WAVES + 1, -(-n // AUTO_MAX))  # no more tasks than that needs
    assert -(-170_000 // auto_shard_size(170_000, 2)) == 333  # 2,657 at the old fixed 64
    assert auto_shard_size(10**6, 2, mode="llm") == AUTO_LLM


def test_auto_keys_as_the_old_default(tmp_path):
    ids = {BuildFolder(tiny_config(tmp_path, instruct=i)).build_id()
           for i in ({}, {"shard_size": "auto"}, {"shard_size": 64})}
    assert len(ids) == 1
    assert BuildFolder(tiny_config(tmp_path, instruct={"shard_size": 4})).build_id() not in ids  # as before


def _tables(root: Path) -> dict[str, list[dict]]:
    return {name: sorted(pq.read_table(root / "build" / f"{name}.parquet").to_pylist(), key=repr)
            for name in instruct_stage.MERGED}


def _run(folder: BuildFolder) -> list[dict]:
    """Plan, shards and merge in this process (a build runs the merge in a child, out of the monkeypatch's reach)."""
    shards = INSTRUCT.plan(folder)
    INSTRUCT.merge(folder, [INSTRUCT.run_shard(folder, sh) for sh in shards], 0.0)
    return shards


def test_auto_size_is_recorded_reused_and_never_changes_the_rows(measured, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(instruct_stage, "AUTO_MIN", 1)  # 80 records on 2 workers: shards of 10 (64 at least, else)
    auto = synthetic_records(measured, 80, tmp_path / "auto")
    folder = BuildFolder(tiny_config(auto), workers=2)
    shards = _run(folder)
    assert [len(s["ids"]) for s in shards] == [10] * 8
    assert folder.info()["instruct_shard_size"] == 10
    assert INSTRUCT.plan(BuildFolder(tiny_config(auto), workers=16)) == shards  # a rerun keeps the plan

    fixed = synthetic_records(measured, 80, tmp_path / "fixed")
    folder64 = BuildFolder(tiny_config(fixed, instruct={"shard_size": 64}))
    assert folder64.build_id() == folder.build_id()
    assert [len(s["ids"]) for s in _run(folder64)] == [64, 16]
    assert "instruct_shard_size" not in folder64.info()
    got, want = _tables(auto), _tables(fixed)
    assert len(got["instructions"]) > 0 and got == want  # the same rows from 8 shards and from 2


def test_llm_mode_keeps_small_shards_unrecorded(measured, tmp_path):  # noqa: F811
    root = synthetic_records(measured, 80, tmp_path / "llm")
    folder = BuildFolder(tiny_config(root, instruct={"mode": "llm"}), workers=2)
    assert instruct_stage.shard_size(folder) == AUTO_LLM
    assert "instruct_shard_size" not in folder.info()


def test_plan_holds_one_record_at_a_time(measured, tmp_path):  # noqa: F811
    """The plan keys a shard as it reads its lines: planning 80 records in one shard holds no more than planning
    them in shards of 4 (keying a shard's parsed records at once held the whole shard: 98 MB in the driver for
    shards of 625 records at 5,000 studies)."""
    root = synthetic_records(measured, 80, tmp_path / "plan")
    record_bytes = (root / "build" / "records.jsonl").stat().st_size / 80
    peaks = {}
    for size in (4, 80):
        folder = BuildFolder(tiny_config(root, instruct={"shard_size": size}))
        folder.kb  # noqa: B018 - loaded before measuring
        folder.build_id()
        peaks[size] = _peak(lambda folder=folder: INSTRUCT.plan(folder))
    assert peaks[80] - peaks[4] < 4 * record_bytes, (peaks, record_bytes)
