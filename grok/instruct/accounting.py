"""Where every generated instruction row went: passed, quarantined (by reason) or skipped (by reason).

Run as: python -c "from grok.instruct.accounting import account; help(account)"

A build generates one row per (study, task family). Each one ends in exactly one of three tables:
``instructions.parquet`` (verified), ``instructions_quarantine.parquet`` (failed verification, bad input
or the LLM gave up; the reason codes are the verifier's, e.g. ``number``, ``diagnosis``) or
``instructions_skipped.parquet`` (the family made no row; codes in
:data:`grok.instruct.families.SKIP_REASONS`, e.g. ``label_contradicted_by_findings``). :func:`account`
counts them per family and in total; the instruct stage stores the result in its report (and so in
``build.json``), publication gates on it (:func:`pass_rate`) and the dataset card prints it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

#: The family of rows quarantined before any family ran (a study record that could not be used).
NO_FAMILY = "(study record)"


def _codes(row: Mapping[str, Any]) -> list[str]:
    """The reason codes of one quarantined row: the verifier's codes, else its error class."""
    reasons = row.get("verifier_reasons")
    codes = sorted({str(r).split(":", 1)[0] for r in (list(reasons) if reasons is not None else [])})
    return codes or [str(row.get("error_class") or "unknown")]


def account(passed: Iterable[Mapping[str, Any]], quarantined: Iterable[Mapping[str, Any]],
            skipped: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts of generated / passed / quarantined / skipped rows, per family and in total.

    Each argument is an iterable of row dicts (``task`` and, for quarantined rows, ``verifier_reasons``
    or ``error_class``; for skipped rows ``reason_code``). A quarantined row with several reasons counts
    once in ``quarantined`` and once under each of its codes in ``quarantined_by_reason``.
    """
    fams: dict[str, dict[str, Any]] = {}

    def fam(task: Any) -> dict[str, Any]:
        key = str(task) if task else NO_FAMILY
        return fams.setdefault(key, {"generated": 0, "passed": 0, "quarantined": 0, "skipped": 0,
                                     "quarantined_by_reason": Counter(), "skipped_by_reason": Counter()})

    for r in passed:
        f = fam(r.get("task"))
        f["passed"] += 1
    for r in quarantined:
        f = fam(r.get("task"))
        f["quarantined"] += 1
        f["quarantined_by_reason"].update(_codes(r))
    for r in skipped:
        f = fam(r.get("task"))
        f["skipped"] += 1
        f["skipped_by_reason"][str(r.get("reason_code") or "unknown")] += 1
    total = {"generated": 0, "passed": 0, "quarantined": 0, "skipped": 0,
             "quarantined_by_reason": Counter(), "skipped_by_reason": Counter()}
    for f in fams.values():
        f["generated"] = f["passed"] + f["quarantined"] + f["skipped"]
        for k in ("generated", "passed", "quarantined", "skipped"):
            total[k] += f[k]
        total["quarantined_by_reason"].update(f["quarantined_by_reason"])
        total["skipped_by_reason"].update(f["skipped_by_reason"])

    def plain(d: dict[str, Any]) -> dict[str, Any]:
        return {k: dict(sorted(v.items())) if isinstance(v, Counter) else v for k, v in d.items()}

    return {"total": plain(total), "per_family": {k: plain(v) for k, v in sorted(fams.items())}}


def pass_rate(acc: Mapping[str, Any]) -> float | None:
    """Verified rows over every generated row (passed + quarantined + skipped); None when nothing was generated."""
    t = acc["total"]
    return t["passed"] / t["generated"] if t["generated"] else None


def describe(acc: Mapping[str, Any]) -> str:
    """One line per reason, for error messages and logs (counts only, never row text)."""
    t = acc["total"]
    lines = [(f"{t['generated']} rows generated: {t['passed']} passed verification, {t['quarantined']} "
              f"quarantined, {t['skipped']} skipped")]
    lines += [f"  quarantined {code}: {n}" for code, n in t["quarantined_by_reason"].items()]
    lines += [f"  skipped {code}: {n}" for code, n in t["skipped_by_reason"].items()]
    return "\n".join(lines)
