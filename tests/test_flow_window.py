"""The flow submits a stage's shards a window at a time (flows.build.run_windowed): never more than the window
unfinished, every result in the shards' order, a failed shard's error raised as ``.map(...).result()`` raised it."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from flows.build import run_windowed, shard_window


def test_at_most_a_window_in_flight_and_results_in_order():
    lock, running, peak = threading.Lock(), [0], [0]

    def work(i: int) -> str:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.002 * (i % 5))  # shards finish out of order
        with lock:
            running[0] -= 1
        return f"shard-{i}"

    with ThreadPoolExecutor(max_workers=16) as pool:  # more threads than the window: the window is the limit
        submitted = []

        def submit(i):
            submitted.append(i)
            return pool.submit(work, i)

        got = run_windowed(submit, list(range(60)), 4)
    assert got == [f"shard-{i}" for i in range(60)]
    assert submitted == list(range(60))
    assert 2 <= peak[0] <= 4
    assert run_windowed(submit, [], 4) == []


def test_a_failed_shard_raises_its_error():
    def work(i: int) -> int:
        if i == 7:
            raise ValueError("shard 7: corrupt input")
        return i

    with ThreadPoolExecutor(max_workers=2) as pool, pytest.raises(ValueError, match="shard 7"):
        run_windowed(lambda i: pool.submit(work, i), list(range(20)), 3)


def test_the_window_grows_with_the_workers():
    assert shard_window(1) == 2 and shard_window(2) == 4 and shard_window(64) == 128
