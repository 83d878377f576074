"""Anonymous resident memory, as the memory benchmarks read it: a process's RSS without its memory-mapped files
(``RssAnon`` in ``/proc/PID/status``), i.e. what the process itself holds, not the page cache of the files it
maps (Arrow tables, parquet). Linux only: 0 where the file cannot be read (another system, a process gone).

Imported by the benchmarks and by the child processes some of them start (``python -c``), which put the
repository root on ``sys.path`` first (:data:`ROOT`)."""

from __future__ import annotations

from pathlib import Path

#: The repository root: what a benchmark run as a script, or its child, puts on ``sys.path`` for ``benchmarks.*``.
ROOT = Path(__file__).resolve().parents[1]


def anon_kb(pid: int | str = "self") -> int:
    """Anonymous resident memory of process ``pid`` (default: this one), in kB."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next((int(line.split()[1]) for line in fh if line.startswith("RssAnon:")), 0)
    except OSError:
        return 0


def anon_mb(pid: int | str = "self") -> float:
    """:func:`anon_kb` in MiB."""
    return anon_kb(pid) / 1024


def child_code(code: str) -> str:
    """``code`` for ``python -c`` in a child process, with the repository root first on its ``sys.path`` (so it
    imports ``benchmarks.memprobe`` whatever its working directory)."""
    return f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n" + code


def process_role(proc) -> str:
    """What a descendant of a benchmark's driver (a ``psutil.Process``) is: the Prefect server, a worker process,
    one of grok's own child processes by the name on its command line (grok.childproc: a stage's, e.g. ``publish``,
    a merge's, e.g. ``instruct_merge``, a plan's, e.g. ``measure_plan``, or ``contracts``), or ``other``."""
    cmd = proc.cmdline()
    if "grok.childproc" in cmd:
        return cmd[-1].replace("-", "_")
    cmd = " ".join(cmd)
    return "prefect_server" if "prefect.server" in cmd else "worker" if "multiprocessing" in cmd else "other"
