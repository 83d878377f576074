"""grok.childproc: work run in a fresh interpreter that ends with it (a publication, its contracts; issue 22)."""

from __future__ import annotations

import os

import pytest

from grok.childproc import ChildProcessFailed, child_process, run_in_child


class _Unpicklable(Exception):
    """An exception whose pickle fails (it holds a lambda)."""

    def __init__(self) -> None:
        super().__init__("holds a lambda")
        self.fn = lambda: None


def _raise_unpicklable() -> None:
    raise _Unpicklable()


def _pid_and_sum(*xs: int, offset: int = 0) -> tuple[int, int]:
    return os.getpid(), sum(xs) + offset


class _Mine(RuntimeError):
    pass


def test_a_call_runs_in_the_child_and_returns_its_value():
    """The function runs in another process (not this one), the same one for every call of a block, and its
    value comes back; the child's name is on its command line; it is gone when the block ends."""
    with child_process("summing") as child:
        pid, total = child.call(_pid_and_sum, 1, 2, 3, offset=10)
        again, _ = child.call(_pid_and_sum)
        assert child.proc.args[-1] == "summing" and child.proc.pid == pid
    assert pid != os.getpid() and again == pid and total == 16
    assert child.proc.returncode == 0
    assert run_in_child("once", _pid_and_sum, 5)[1] == 5


def test_the_functions_own_exception_comes_back_as_it_was_raised():
    with child_process() as child, pytest.raises(ValueError, match="invalid literal for int"):
        child.call(int, "not a number")


def test_an_exception_that_does_not_pickle_is_named_in_the_callers_error_class():
    with pytest.raises(_Mine, match=r"_raise_unpicklable failed in the lambdas process: _Unpicklable: holds a lambda"):
        run_in_child("lambdas", _raise_unpicklable, error=_Mine)


def test_a_child_that_dies_mid_call_is_a_clear_error_not_a_hang():
    with child_process("dying") as child, pytest.raises(ChildProcessFailed, match=r"the dying process ended while "
                                                        r"running _exit \(exit code 7"):
        child.call(os._exit, 7)
    assert child.proc.returncode == 7


def test_a_caller_interrupted_mid_call_stops_the_child_at_once():
    """Ctrl-C (or a cancelled task) while the child works: the child is killed, not left running its job until
    it finishes; the interrupt reaches the caller."""
    import signal
    import threading
    import time

    with child_process("sleeping") as child:
        timer = threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT))
        timer.start()
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            child.call(time.sleep, 60)
    assert time.monotonic() - t0 < 30 and child.proc.returncode == -signal.SIGKILL
