"""The child process of :func:`grok.contracts.contracts_process`: runs the functions its parent sends (a table's
validation), one request at a time, until its input pipe closes.

Run as: python -m grok.contracts.child READ_FD WRITE_FD   (started by the parent, never by hand)
"""

from __future__ import annotations

import os
import pickle
import sys

from grok.contracts import ContractError, receive_message, send_message


def serve(read_fd: int, write_fd: int) -> None:
    """Answer each request ``(function, args, kwargs)`` with ``(True, value)``, or ``(False, exception)`` when the
    function raises (a :class:`ContractError` naming it when the exception does not pickle, e.g. one of Great
    Expectations' own)."""
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
                    reply = pickle.dumps((False, ContractError(
                        f"{getattr(fn, '__name__', fn)} failed in the contracts process: {type(exc).__name__}: {exc}")))
            del args, kwargs
            send_message(w, reply)


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
