"""Knowledge base, reasoner and cohort labeller: the "knowledge-guided" part of GROK.

Run as: grok kb validate | grok reason RECORD.json --json | grok label COHORT.csv --out labels.parquet

* :func:`load_knowledge_base` reads the YAML folder(s) under ``knowledge_base/`` (or yours, or yours
  overlaid on ours), validates them and fingerprints them (``kb.snapshot_id``).
* :func:`reason` turns one eye's biomarker record into graded findings and a differential.
* :func:`label_cohort` turns a cohort table (UK Biobank-style fields) into eye-level labels.
"""

from __future__ import annotations

from grok.knowledge.loader import (
    KB_ENV,
    KBIssue,
    KnowledgeBase,
    KnowledgeBaseError,
    bundled_knowledge_base_dir,
    load_knowledge_base,
    validate_knowledge_base,
)

__all__ = [
    "KB_ENV",
    "KBIssue",
    "KnowledgeBase",
    "KnowledgeBaseError",
    "Reasoning",
    "bundled_knowledge_base_dir",
    "label_cohort",
    "load_knowledge_base",
    "reason",
    "validate_knowledge_base",
]


def __getattr__(name: str):
    # The reasoner and labeller import pandas/numpy-heavy code lazily.
    if name in ("reason", "Reasoning"):
        from grok.knowledge import reasoner

        return getattr(reasoner, name)
    if name in ("label_cohort", "read_cohort", "write_labels"):
        from grok.knowledge import labeller

        return getattr(labeller, name)
    raise AttributeError(f"module 'grok.knowledge' has no attribute {name!r}")
