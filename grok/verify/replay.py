"""Re-verify a published dataset version from the version alone (no build folder).

Run as: grok verify --dataset NAME@VERSION [--registry DIR] [--json]

Every published version carries a ``records`` config: per study, the evidence its rows' text was
checked against (:mod:`grok.instruct.evidence`). :func:`verify_dataset` rebuilds each study's facts
from it, re-runs the verifier over every ``instructions`` and ``benchmark`` row and compares the
verdict with the one stored in the row at build time (passed, score, reasons). A row whose verdict
differs is listed; a version built with another knowledge-base snapshot than the installed one is
reported (its verdicts may then legitimately differ).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import datasets

from grok.instruct.evidence import record_from_evidence
from grok.knowledge import load_knowledge_base
from grok.knowledge.lexicon import build_lexicon
from grok.registry import RegistryError, load, resolve
from grok.verify import verify_row
from grok.verify.verifier import Verifier, VerifyConfig

#: Configs and splits whose rows are verified (``records`` and ``alignment`` hold no text).
ROW_CONFIGS = (("instructions", "train"), ("instructions", "validation"), ("benchmark", "test"))


def _rows(spec: str, config: str, split: str, registry: str | None) -> list[dict[str, Any]]:
    """The rows of one split with their images left undecoded (only their number matters here)."""
    try:
        ds = load(spec, config, split, registry=registry)
    except RegistryError:
        return []  # a version without this config or split (e.g. no validation patients)
    if "images" in ds.features:
        ds = ds.cast_column("images", datasets.List(datasets.Image(decode=False)))
    return ds.to_list()


def verify_dataset(spec: str, registry: str | None = None, config=None, kb=None, max_listed: int = 200
                   ) -> dict[str, Any]:
    """Re-check every text row of ``spec`` against the version's own ``records`` config.

    Returns counts, reasons by code, the rows whose verdict differs from the stored one and the
    knowledge-base snapshots. Raises :class:`grok.registry.RegistryError` when the version does not
    exist or predates the ``records`` config.
    """
    info = resolve(spec, registry)
    if "records" not in info["manifest"]["counts"]:
        raise RegistryError(f"{info['name']}@{info['version']} has no records config (published before the "
                            "evidence was carried in the dataset); re-check it from its build folder with "
                            "grok verify BUILD/instructions.parquet --studies BUILD/records.jsonl")
    kb = kb or load_knowledge_base()
    lex = build_lexicon(kb)
    verifier = Verifier(lex, config or VerifyConfig())
    records = {}
    for split in ("train", "validation", "test"):
        for r in _rows(spec, "records", split, registry):
            records[r["study_id"]] = record_from_evidence(r["evidence"])
    facts: dict[str, Any] = {}
    reasons: Counter[str] = Counter()
    snapshots: Counter[str] = Counter()
    differing: list[dict[str, Any]] = []
    n = n_pass = n_same = 0
    for config_name, split in ROW_CONFIGS:
        for row in _rows(spec, config_name, split, registry):
            n += 1
            sid = row["study_id"]
            res = verify_row(verifier, {**row, "images": [im.get("path") or "" for im in row["images"] or []]},
                             records, facts, kb, where="the records config")
            got = {"passed": res.passed, "score": res.score, "reasons": list(res.reasons)}
            snapshots[str(row.get("kb_snapshot"))] += 1
            n_pass += got["passed"]
            reasons.update(r.split(":", 1)[0] for r in got["reasons"])
            # published rows passed at build time; the stored score is float32
            same = (got["passed"] and math.isclose(got["score"], float(row.get("verifier_score") or 0.0), abs_tol=1e-4)
                    and got["reasons"] == list(row.get("verifier_reasons") or []))
            n_same += same
            if not same and len(differing) < max_listed:
                differing.append({"id": row["id"], "study_id": sid, "config": config_name, "split": split,
                                  "task": row.get("task"), "now": got,
                                  "at_build": {"passed": True, "score": row.get("verifier_score"),
                                               "reasons": list(row.get("verifier_reasons") or [])}})
    return {"dataset": f"{info['name']}@{info['version']}", "fingerprint": info["fingerprint"], "rows": n,
            "passed": n_pass, "failed": n - n_pass, "same_verdict_as_build": n_same,
            "different_verdict": n - n_same, "reasons_by_code": dict(sorted(reasons.items())),
            "kb_snapshot_of_rows": dict(snapshots), "kb_snapshot_now": kb.snapshot_id,
            "tolerance": verifier.config.tolerance, "differing_rows": differing}
