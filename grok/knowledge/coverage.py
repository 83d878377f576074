"""Knowledge-base coverage: which findings of each category can be evaluated for a device, age and sex.

Run as: grok kb coverage [--device spectralis --age 67 --sex F] [--json]

A finding is *evaluable* for a (device, age, sex) when the knowledge base holds what it needs to turn
a value into a grade: a normative range that matches (deviation findings), cut-offs that apply
(threshold findings), or, for lesion findings, a lesion type some extractor counts (a
``count_biomarker``). A finding its own rule cannot evaluate but whose ``absent_when`` condition reads
only evaluable findings is *absent by definition* where the condition holds (AMD pigmentary
abnormalities without medium or large drusen), or *absent by inference* when the rule's ``basis`` says
so (diabetic retinopathy's venous beading, IRMA and new vessels without any of its lower signs): listed as
``absent_by_definition`` / ``absent_by_inference``, not as evaluable, since it can be concluded absent but
never found present from images. Whether a record actually carries the value is a different question (the
reasoner answers it per record); this one is about the knowledge, so a gap here is a gap for every
record of that kind. The same range choice as the reasoner is used (``_Context.choose_range``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from grok import ids as canonical
from grok.knowledge.loader import KnowledgeBase
from grok.knowledge.models import DeviationFinding, LesionFinding, ThresholdFinding
from grok.knowledge.reasoner import _Context

EVALUABLE, NO_RANGE, NO_EXTRACTOR = "evaluable", "no_range", "no_extractor"
BY_DEFINITION, BY_INFERENCE = "absent_by_definition", "absent_by_inference"
ABSENT_BY_RULE = (BY_DEFINITION, BY_INFERENCE)


@dataclass
class FindingCoverage:
    finding: str
    kind: str
    biomarker: str | None
    status: str  # evaluable | no_range | no_extractor | absent_by_definition | absent_by_inference
    range_id: str | None
    source: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CategoryCoverage:
    category: str
    name: str
    findings: list[FindingCoverage] = field(default_factory=list)

    @property
    def evaluable(self) -> list[str]:
        return [f.finding for f in self.findings if f.status == EVALUABLE]

    @property
    def key_findings(self) -> list[str]:
        """The category's supporting findings that an extractor could feed (lesion types nobody
        counts are listed but are not *key*: no build can evaluate them from images alone, and one
        absent by definition or inference can never support the category from images)."""
        return [f.finding for f in self.findings if f.status not in (NO_EXTRACTOR, *ABSENT_BY_RULE)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "name": self.name,
            "evaluable": self.evaluable,
            "not_evaluable": [f.finding for f in self.findings if f.status not in (EVALUABLE, *ABSENT_BY_RULE)],
            "absent_by_definition": [f.finding for f in self.findings if f.status == BY_DEFINITION],
            "absent_by_inference": [f.finding for f in self.findings if f.status == BY_INFERENCE],
            "key_findings": self.key_findings,
            "key_evaluable": [f for f in self.key_findings if f in self.evaluable],
            "findings": [f.to_dict() for f in self.findings],
        }


def _finding_coverage(fid: str, kb: KnowledgeBase, ctx, memo: dict[str, FindingCoverage] | None = None
                      ) -> FindingCoverage:
    memo = {} if memo is None else memo
    if fid not in memo:
        own = _own_coverage(fid, kb, ctx)
        aw = kb.findings[fid].absent_when
        if own.status != EVALUABLE and aw is not None:  # the loader rejects absent_when cycles
            reads = {c: _finding_coverage(c, kb, ctx, memo) for c in sorted(aw.condition.finding_ids())}
            listed = ", ".join(f"{c} ({cov.status})" for c, cov in reads.items())
            if all(cov.status in (EVALUABLE, *ABSENT_BY_RULE) for cov in reads.values()):
                own = FindingCoverage(
                    fid, own.kind, own.biomarker, BY_INFERENCE if aw.basis == "inference" else BY_DEFINITION,
                    None, aw.source,
                    f"{own.reason}; absent by {aw.basis} where its condition holds ({aw.reason}), which reads "
                    f"{listed}; where the condition does not hold, not evaluable",
                )
            else:
                own.reason += (f"; its absence by {aw.basis} cannot be decided here either: the condition reads "
                               f"{listed}")
        memo[fid] = own
    return memo[fid]


def _own_coverage(fid: str, kb: KnowledgeBase, ctx) -> FindingCoverage:
    f = kb.findings[fid]
    if isinstance(f, DeviationFinding):
        rng, _dev, why = ctx.choose_range(f.biomarker)
        if rng is None:
            return FindingCoverage(fid, f.kind, f.biomarker, NO_RANGE, None, None, why)
        return FindingCoverage(fid, f.kind, f.biomarker, EVALUABLE, rng.id, rng.source,
                               f"range {rng.id} ({rng.population})")
    if isinstance(f, ThresholdFinding):
        ts, why = ctx.choose_thresholds(f)
        if ts is None:
            return FindingCoverage(fid, f.kind, f.biomarker, NO_RANGE, None, None, why)
        scope = "all devices" if ts.devices == ["any"] else "/".join(ts.devices)
        return FindingCoverage(fid, f.kind, f.biomarker, EVALUABLE, None, f.source,
                               f"cut-offs for {scope}, sex {ts.sex}")
    assert isinstance(f, LesionFinding)
    lt = kb.lesion_types[f.lesion_type]
    if lt.count_biomarker is None:
        return FindingCoverage(fid, f.kind, None, NO_EXTRACTOR, None, f.source,
                               f"lesion type {f.lesion_type!r} has no count_biomarker: no extractor assesses it; "
                               "it is evaluable only when a record lists it (lesions / lesion_types_assessed)")
    return FindingCoverage(fid, f.kind, lt.count_biomarker, EVALUABLE, None, f.source,
                           f"counted by {lt.count_biomarker}")


def kb_coverage(
    kb: KnowledgeBase,
    *,
    device: str | None = None,
    age_years: float | None = None,
    sex: str | None = None,
    engine_measured: bool = False,
) -> dict[str, Any]:
    """Per category (disease), which supporting findings are evaluable for ``device``/``age``/``sex``.

    Returns a JSON-ready mapping: ``device`` (resolved id), ``device_note`` (set when the device text
    matched no device), ``age_years``, ``sex``, ``categories`` (one entry per disease with
    ``evaluable``, ``not_evaluable``, ``key_findings``, ``key_evaluable`` and per-finding reasons).
    ``engine_measured`` evaluates as for a build's records (values measured by this engine, so the
    engine-convention ranges are the last fallback); the default is for values exported by the scanner.
    """
    ctx = _Context({"biomarkers": {}, "device": device, "sex": sex, "age_years": age_years,
                    "engine_measured": engine_measured}, kb)
    cats: list[CategoryCoverage] = []
    memo: dict[str, FindingCoverage] = {}
    first = [c for c in canonical.CATEGORIES if c in kb.diseases]
    for did in first + sorted(set(kb.diseases) - set(first)):
        d = kb.diseases[did]
        refs = [r.finding for r in d.differential.supporting]
        seen: list[str] = []
        for r in refs:
            if r not in seen:
                seen.append(r)
        cats.append(CategoryCoverage(did, d.name, [_finding_coverage(fid, kb, ctx, memo) for fid in seen]))
    return {
        "kb_snapshot_id": kb.snapshot_id,
        "device": ctx.device,
        "device_note": ctx.device_note,
        "engine_measured": engine_measured,
        "age_years": ctx.age,
        "sex": ctx.sex,
        "categories": [c.to_dict() for c in cats],
    }


__all__ = ["ABSENT_BY_RULE", "BY_DEFINITION", "BY_INFERENCE", "EVALUABLE", "NO_EXTRACTOR", "NO_RANGE", "kb_coverage"]
