"""Work run in a fresh interpreter of its own, so that what the work allocates goes back to the system when it ends.

Run as: python -m grok.childproc READ_FD WRITE_FD NAME   (started by :class:`ChildProcess`, never by hand)

A long-lived process (a build's driver, which holds the Prefect and Dask clients for the whole build) that runs a
big one-off job in itself keeps what the job left behind: CPython's small-object arenas stay fragmented after a
surge of Python objects and are not given back, so the process's level rises with the size of the job, even when
the job's data were streamed (issue 22: a publication's duplicate checks and lint left ~15 MB more arenas at 40,000
studies than at 2,500). Run in a child, the job's memory, fragmentation included, is returned when the child
exits. Publication's contracts run this way (:func:`grok.contracts.contracts_process`), and so do a build's
single-process stages and its merges (:class:`grok.stages.stage.SingleStage`, :meth:`grok.stages.stage.Stage.run_merge`).

Not ``multiprocessing``: its ``spawn`` and ``forkserver`` import the caller's main script again (a script without an
``if __name__ == "__main__"`` guard would run itself inside its own child), and ``fork`` copies the caller's
memory and threads. The child is ``python -m grok.childproc`` with the caller's ``sys.path``, talking over a pipe
pair of its own, so what it prints or logs reaches the caller's output as usual; its name is on its command line
(``ps`` shows which job a child runs). A request is a pickled ``(function, args, kwargs)`` of a module-level
function, a reply ``(True, value)`` or ``(False, exception)``, each framed by its length (:func:`send_message`).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from typing import Any


class ChildProcessFailed(RuntimeError):
    """A child's request failed in a way its own exception cannot say: the child ended (killed, e.g. for memory),
    or raised an exception that does not pickle."""


def send_message(f, data: bytes) -> None:
    """``data`` framed by its length (8 bytes, little-endian) on the pipe ``f``."""
    f.write(len(data).to_bytes(8, "little"))
    f.write(data)
    f.flush()


def receive_message(f) -> bytes:
    """One message framed by :func:`send_message`; ``EOFError`` at the end of the pipe."""
    head = f.read(8)
    if len(head) < 8:
        raise EOFError("pipe closed")
    n = int.from_bytes(head, "little")
    data = f.read(n)
    if len(data) < n:
        raise EOFError("pipe closed mid-message")
    return data


class ChildProcess:
    """A fresh interpreter that runs the functions its caller sends (:meth:`call`), one at a time, until
    :meth:`close`. ``name`` says what it is for (errors and its command line carry it); ``error`` is the
    exception class raised here when the child ends mid-request or its exception does not pickle."""

    def __init__(self, name: str = "child", error: type[Exception] = ChildProcessFailed) -> None:
        self.name, self.error = name, error
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(dict.fromkeys(p for p in sys.path if p)))
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "grok.childproc", str(to_child_r), str(from_child_w),
                                          name], pass_fds=(to_child_r, from_child_w), env=env,
                                         stdin=subprocess.DEVNULL)
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self._w, self._r = os.fdopen(self._to_child, "wb"), os.fdopen(self._from_child, "rb")

    def call(self, fn, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` in the child (``fn`` importable there by name); what it raises is raised here
        (as :attr:`error` naming it when the exception does not pickle)."""
        try:
            send_message(self._w, pickle.dumps((fn, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL))
            reply = receive_message(self._r)
        except (BrokenPipeError, EOFError) as exc:
            try:
                code = self.proc.wait(timeout=30)
            except Exception:  # noqa: BLE001 - still running: its pipe broke, its exit code is unknown
                code = None
            raise self.error(f"the {self.name} process ended while running {fn.__name__} (exit code {code}; "
                             "-9: killed, e.g. for memory): see the log above, then rerun") from exc
        except BaseException:  # interrupted while the child works (Ctrl-C, a cancelled task): stop it, now
            self.proc.kill()
            raise
        ok, value = pickle.loads(reply)
        if not ok:
            if isinstance(value, _Unpicklable):
                raise self.error(f"{value.function} failed in the {self.name} process: {value.text}")
            raise value
        return value

    def close(self) -> None:
        """End the child (it sees the end of its input and exits); one that does not exit is killed."""
        for f in (self._w, self._r):
            with contextlib.suppress(OSError):
                f.close()
        try:
            self.proc.wait(timeout=60)
        except Exception:  # noqa: BLE001 - a child that does not exit is killed, never left behind
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def child_process(name: str = "child", error: type[Exception] = ChildProcessFailed) -> Iterator[ChildProcess]:
    """A :class:`ChildProcess`, shut down when the block ends. Costs one interpreter start and the imports of what
    it runs (a few seconds)."""
    child = ChildProcess(name, error)
    try:
        yield child
    finally:
        child.close()


def run_in_child(name: str, fn, *args: Any, error: type[Exception] = ChildProcessFailed, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a child process of its own, which ends with it."""
    with child_process(name, error) as child:
        return child.call(fn, *args, **kwargs)


class _Unpicklable:
    """An exception that did not pickle, as its function's name and the exception's type and text."""

    def __init__(self, function: str, text: str) -> None:
        self.function, self.text = function, text


def serve(read_fd: int, write_fd: int) -> None:
    """The child's loop: answer each request ``(function, args, kwargs)`` with ``(True, value)``, or
    ``(False, exception)`` when the function raises, until the input pipe closes."""
    with os.fdopen(read_fd, "rb") as r, os.fdopen(write_fd, "wb") as w:
        while True:
            try:
                request = receive_message(r)
            except EOFError:
                return
            fn, args, kwargs = pickle.loads(request)
            del request
            try:
                reply = pickle.dumps((True, fn(*args, **kwargs)), protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:  # noqa: BLE001 - every failure goes back to the caller, which raises it
                try:
                    reply = pickle.dumps((False, exc), protocol=pickle.HIGHEST_PROTOCOL)
                except Exception:  # noqa: BLE001 - an exception that does not pickle: its type and text
                    reply = pickle.dumps((False, _Unpicklable(getattr(fn, "__name__", str(fn)),
                                                              f"{type(exc).__name__}: {exc}")))
            del args, kwargs
            send_message(w, reply)


if __name__ == "__main__":
    # by the module's own name, so what the child pickles (_Unpicklable) is grok.childproc's, not __main__'s
    from grok.childproc import serve as _serve

    _serve(int(sys.argv[1]), int(sys.argv[2]))
