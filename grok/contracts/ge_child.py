"""The child process of :func:`grok.contracts.great_expectations_process`: runs Great Expectations checkpoints for
the process that started it, one request at a time, until its input pipe closes.

Run as: python -m grok.contracts.ge_child READ_FD WRITE_FD   (started by the parent, never by hand)
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

from grok.contracts import ContractError, _GreatExpectations, receive_message, send_message


def serve(read_fd: int, write_fd: int) -> None:
    """Answer each request (see ``grok.contracts._GreatExpectationsChild``) with ``(True, outcomes)``, or with
    ``(False, ContractError)`` naming the validation when Great Expectations raises (its own exceptions need not
    pickle); a project per data-docs folder, made on its first validation there."""
    projects: dict[str, _GreatExpectations] = {}
    with os.fdopen(read_fd, "rb") as r, os.fdopen(write_fd, "wb") as w:
        while True:
            try:
                request = receive_message(r)
            except EOFError:
                return
            docs_dir, name, frame, items, id_cols, max_examples = pickle.loads(request)
            del request
            try:
                ge = projects.get(docs_dir)
                if ge is None:
                    ge = projects[docs_dir] = _GreatExpectations(Path(docs_dir))
                reply = (True, ge.run(name, frame, items, id_cols, max_examples))
            except ContractError as exc:
                reply = (False, exc)
            except Exception as exc:  # noqa: BLE001 - sent back as one picklable error with its cause's text
                reply = (False, ContractError(f"Great Expectations failed on {name!r} ({docs_dir}): "
                                              f"{type(exc).__name__}: {exc}"))
            del frame
            send_message(w, pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
