"""Reasoner: one eye's biomarker record -> graded findings and a differential, every step explained.

Run as: grok reason RECORD.json --json

A record is a mapping::

    {"biomarkers": {"macular_thickness_central_um": 342.0, "srf_volume_nl": 0.0, ...},
     "device": "spectralis" | "cirrus" | "topcon" | "generic" | free text (matched against aliases),
     "sex": "F" | "M", "age_years": 63.0, "laterality": "OD" | "OS",
     "lesions": [{"type": "drusen", "diameter_um": 140.0}, ...],          # optional
     "lesion_types_assessed": ["av_nicking", ...],                        # optional
     "engine_measured": true}                                             # optional

``device`` is the scanner (its name as DICOM writes it is fine). Ranges of that device come first,
then device-independent ones; a device text the knowledge base does not know gets only the latter
(never a silent generic range). ``engine_measured: true`` (set by the records stage) says the values
were measured by this engine's own segmentation (ILM -> BM), not exported by the scanner: after the
scanner's and the device-independent ranges, the engine-convention (``generic``) ranges apply, and
the finding's explanation says so.

Rules (all data in the knowledge base, none here):

* A value that is absent, ``None`` or NaN is *missing*: it is listed, never imputed, and no finding
  is made from it (the finding is "not evaluable" with the reason).
* A normative range is chosen by device (exact device, else a device-independent ``any`` range;
  an unknown device resolves to ``generic``), then sex (exact, else ``any``), then age band (a band
  containing the age is preferred to an unbanded range). No range -> "not evaluable", with why.
* Deviation findings compare the value with the range's percentile cut-offs (reported, or
  mean + z * SD under the documented normal approximation); threshold findings with absolute cuts.
  A value further from normal never gets a milder grade (cuts are validated to be monotone).
* Laterality is carried through but never changes a result (OD and OS are graded identically).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from statistics import NormalDist
from typing import Any

import numpy as np

from grok import ids as canonical
from grok.knowledge.loader import UNRECOGNISED_DEVICE, KnowledgeBase, absent_when_order, load_knowledge_base
from grok.knowledge.models import (
    DeviationFinding,
    Disease,
    Expr,
    FindingRef,
    LesionFinding,
    NormativeRange,
    Staging,
    ThresholdFinding,
    ThresholdSet,
)

_STD_NORMAL = NormalDist()

PRESENT, ABSENT, NOT_EVALUABLE = "present", "absent", "not_evaluable"


# ------------------------------------------------------------------------------------------------
# statistics of a normative range
# ------------------------------------------------------------------------------------------------


def value_at_percentile(rng: NormativeRange, percentile: float) -> tuple[float | None, str]:
    """Value of ``rng`` at ``percentile`` (0-100) and how it was obtained.

    Reported percentiles win; otherwise ``mean + z_p * sd`` (normal approximation); otherwise linear
    interpolation between reported percentiles that bracket ``percentile``. ``(None, why)`` if none applies.
    """
    if percentile in rng.percentiles:
        return float(rng.percentiles[percentile]), "reported"
    if rng.mean is not None and rng.sd is not None:
        z = _STD_NORMAL.inv_cdf(percentile / 100.0)
        return rng.mean + z * rng.sd, "normal_approximation"
    keys = sorted(rng.percentiles)
    for lo, hi in pairwise(keys):
        if lo <= percentile <= hi:
            t = (percentile - lo) / (hi - lo)
            return rng.percentiles[lo] + t * (rng.percentiles[hi] - rng.percentiles[lo]), "interpolated"
    return None, f"range {rng.id} has no mean/SD and its reported percentiles do not bracket {percentile:g}"


def deviation_of(rng: NormativeRange, value: float) -> dict[str, Any]:
    """z-score and percentile of ``value`` in ``rng`` (``None`` where the range cannot give them)."""
    z = pct = None
    method = None
    if rng.mean is not None and rng.sd is not None:
        z = (value - rng.mean) / rng.sd
        pct = 100.0 * _STD_NORMAL.cdf(z)
        method = "normal_approximation"
    elif rng.percentiles:
        keys = sorted(rng.percentiles)
        vals = [rng.percentiles[k] for k in keys]
        if vals[0] <= value <= vals[-1]:
            for (k0, v0), (k1, v1) in zip(zip(keys, vals), zip(keys[1:], vals[1:])):
                if v0 <= value <= v1:
                    pct = k0 + (value - v0) / (v1 - v0) * (k1 - k0)
                    break
            method = "interpolated"
        else:
            method = f"beyond reported percentiles ({'<' if value < vals[0] else '>'}p{keys[0] if value < vals[0] else keys[-1]:g})"
    return {"z": z, "percentile": pct, "method": method}


# ------------------------------------------------------------------------------------------------
# result records
# ------------------------------------------------------------------------------------------------


@dataclass
class RangeUsed:
    """The normative range a value was compared with."""

    id: str
    device_matched: str
    sex: str
    age_band_years: list[float] | None
    mean: float | None
    sd: float | None
    p5: float | None
    p95: float | None
    derivation: str
    population: str
    source: str
    derived: str = ""

    @classmethod
    def of(cls, rng: NormativeRange, device_matched: str) -> RangeUsed:
        p5, _ = value_at_percentile(rng, 5.0)
        p95, _ = value_at_percentile(rng, 95.0)
        band = [rng.age_band.min_years, rng.age_band.max_years] if rng.age_band else None
        return cls(
            rng.id,
            device_matched,
            rng.sex,
            band,
            rng.mean,
            rng.sd,
            p5,
            p95,
            rng.derivation,
            rng.population,
            rng.source,
            rng.derived,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.derived:  # the source's own figures: records keep their former shape
            del d["derived"]
        return d


@dataclass
class Measurement:
    """One biomarker value with its deviation from the chosen normative range (if any)."""

    biomarker: str
    value: Any
    unit: str
    normal_range: RangeUsed | None
    z: float | None
    percentile: float | None
    within_normal: bool | None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["normal_range"] = self.normal_range.to_dict() if self.normal_range else None
        return d


@dataclass
class Finding:
    """A finding that is present, with its evidence."""

    id: str
    name: str
    term: str
    grade: int
    abnormal: bool
    kind: str
    biomarker: str | None
    value: Any
    unit: str | None
    normal_range: RangeUsed | None
    deviation: dict[str, Any] | None
    threshold: dict[str, Any] | None
    lesions: list[dict[str, Any]] | None
    sources: list[str]
    explanation: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["normal_range"] = self.normal_range.to_dict() if self.normal_range else None
        return d


@dataclass
class _State:
    state: str  # PRESENT | ABSENT | NOT_EVALUABLE
    grade: int = 0
    reason: str = ""
    finding: Finding | None = None


@dataclass
class StageResult:
    system: str
    stage: str | None
    name: str | None
    source: str
    not_assessable_above: list[str] = field(default_factory=list)
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DiseaseAssessment:
    """A category of the differential: its status, the findings for and against, and stages."""

    id: str
    name: str
    status: str  # supported | ruled_out | indeterminate
    reason: str
    supporting: list[dict[str, Any]]
    opposing: list[dict[str, Any]]
    unevaluated: list[str]
    staging: list[StageResult]
    icd10: list[str]
    sources: list[str]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["staging"] = [s.to_dict() for s in self.staging]
        return d


@dataclass
class Reasoning:
    """The reasoner's full output for one record. ``to_dict()`` is JSON-ready."""

    kb_snapshot_id: str
    laterality: str | None
    device: str
    sex: str | None
    age_years: float | None
    measurements: list[Measurement]
    findings: list[Finding]
    absent: list[str]
    not_evaluable: list[dict[str, str]]
    missing: list[str]
    differential: list[DiseaseAssessment]
    notes: list[str]
    #: finding id -> why it is absent, where the knowledge base says (``absent_when``: "by definition: no
    #: medium or large drusen"; ``absent_text``: the basis and limits of an absent result)
    absent_reasons: dict[str, str] = field(default_factory=dict)

    def finding(self, finding_id: str) -> Finding | None:
        return next((f for f in self.findings if f.id == finding_id), None)

    def status(self, disease_id: str) -> str | None:
        return next((d.status for d in self.differential if d.id == disease_id), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kb_snapshot_id": self.kb_snapshot_id,
            "laterality": self.laterality,
            "device": self.device,
            "sex": self.sex,
            "age_years": self.age_years,
            "findings": [f.to_dict() for f in self.findings],
            "absent": self.absent,
            "absent_reasons": self.absent_reasons,
            "not_evaluable": self.not_evaluable,
            "missing": self.missing,
            "differential": [d.to_dict() for d in self.differential],
            "measurements": [m.to_dict() for m in self.measurements],
            "notes": self.notes,
        }


# ------------------------------------------------------------------------------------------------
# record parsing
# ------------------------------------------------------------------------------------------------

_SEX = {"f": "F", "female": "F", "w": "F", "woman": "F", "m": "M", "male": "M", "man": "M"}
_EYE = {"od": "OD", "right": "OD", "r": "OD", "os": "OS", "left": "OS", "l": "OS"}


def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    if isinstance(v, str) and v.strip() == "":
        return True
    return isinstance(v, np.floating) and bool(np.isnan(v))  # numpy / pandas NA scalars


def finite_float(v: Any) -> float | None:
    """``v`` as a finite float, or None (booleans, None, NaN/NA, inf, text that is not a number)."""
    if isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


class _Context:
    def __init__(self, record: dict[str, Any], kb: KnowledgeBase):
        if not isinstance(record, dict):
            raise TypeError(
                "record must be a mapping with a 'biomarkers' mapping (see grok.knowledge.reasoner)"
            )
        self.kb = kb
        self.notes: list[str] = []
        raw = record.get("biomarkers") or {}
        if not isinstance(raw, dict):
            raise TypeError("record['biomarkers'] must be a mapping of biomarker id -> value")
        self.device_text = record.get("device")
        # values measured by this engine (ILM -> BM, its own boundaries), not exported by the scanner:
        # after the scanner's own and device-independent ranges, the engine-convention ('generic')
        # ranges apply, and the finding says so
        self.engine_measured = record.get("engine_measured") is True
        self.device, note = kb.resolve_device(self.device_text)
        self.device_note = note if self.device == UNRECOGNISED_DEVICE else None
        if note:
            self.notes.append(note)
        sex = record.get("sex")
        self.sex = None if _is_missing(sex) else _SEX.get(str(sex).strip().lower())
        if not _is_missing(sex) and self.sex is None:
            self.notes.append(f"sex {sex!r} not understood (use 'F' or 'M'); sex-specific ranges not used")
        age = record.get("age_years")
        self.age = None if _is_missing(age) else finite_float(age)
        if self.age is not None and self.age < 0:
            self.notes.append(f"age_years {age!r} is negative; ignored")
            self.age = None
        eye = record.get("laterality")
        self.laterality = None if _is_missing(eye) else _EYE.get(str(eye).strip().lower(), str(eye))
        self.values: dict[str, Any] = {}
        for key, v in raw.items():
            b = kb.biomarkers.get(key)
            if b is None:
                self.notes.append(f"biomarker {key!r} is not in the catalogue; ignored")
                continue
            if _is_missing(v):
                continue
            if b.value_kind == "position":
                if isinstance(v, (list, tuple)) and len(v) == 2 and all(finite_float(x) is not None for x in v):
                    self.values[key] = [float(v[0]), float(v[1])]
                else:
                    self.notes.append(f"{key}: expected an (x, y) pair, got {v!r}; treated as missing")
                continue
            f = finite_float(v)
            if f is None:
                self.notes.append(f"{key}: value {v!r} is not a finite number; treated as missing")
                continue
            if b.value_kind == "count" and (f < 0 or f != int(f)):
                self.notes.append(f"{key}: count {v!r} is not a non-negative integer; treated as missing")
                continue
            self.values[key] = f
        lesions = record.get("lesions") or []
        self.lesions: list[dict[str, Any]] = []
        for i, les in enumerate(lesions if isinstance(lesions, list) else []):
            if not isinstance(les, dict) or les.get("type") not in kb.lesion_types:
                self.notes.append(
                    f"lesions[{i}] has no known 'type' (one of {sorted(kb.lesion_types)}); ignored"
                )
                continue
            self.lesions.append(les)
        self.assessed_types = {str(t) for t in (record.get("lesion_types_assessed") or [])}
        self.missing: set[str] = set()

    def value(self, biomarker: str) -> Any:
        if biomarker not in self.values:
            self.missing.add(biomarker)
            return None
        return self.values[biomarker]

    # -- range choice --------------------------------------------------------------------------------
    def choose_range(self, biomarker: str) -> tuple[NormativeRange | None, str, str]:
        """``(range, device_matched, reason)``; reason explains a ``None``."""
        ranges = self.kb.ranges_for(biomarker)
        if not ranges:
            b = self.kb.biomarkers[biomarker]
            return (
                None,
                "",
                f"no normative range for {biomarker} ({b.no_normal_range_reason or 'none in the knowledge base'})",
            )
        # a value this engine measured is graded only against ranges of its own convention
        usable = [r for r in ranges if r.engine_comparable or not self.engine_measured]
        for dev in self._devices_to_try():
            pool = [r for r in usable if dev in r.devices]
            if not pool:
                continue
            pool = self._filter_sex_age(pool)
            if pool:
                return pool[0], dev, ""
        avail = "; ".join(
            f"{r.id} ({'/'.join(r.devices)}, sex {r.sex}"
            + (f", {r.age_band.min_years:g}-{r.age_band.max_years:g} y" if r.age_band else "")
            + ("" if r.engine_comparable or not self.engine_measured else ", another convention than this engine's")
            + ")"
            for r in ranges
        )
        if self.device_note:
            return None, "", f"{biomarker}: {self.device_note}; device-independent ranges: none"
        who = f"device {self.device}, sex {self.sex or 'unknown'}, age {'unknown' if self.age is None else f'{self.age:g}'}"
        files = sorted({self.kb.origins.get(f"normative_ranges:{r.id}", "<merged>") for r in ranges})
        return None, "", (
            f"no normative range of {biomarker} matches {who}; available: {avail}. Fix: add a sourced "
            f"normative_ranges entry that covers it (e.g. in an overlay folder; existing ones in {', '.join(files)})"
        )

    def _filter_sex_age(self, pool: list[NormativeRange]) -> list[NormativeRange]:
        def age_ok(r: NormativeRange) -> bool:
            return r.age_band is None or (self.age is not None and r.age_band.contains(self.age))

        for sex in [self.sex, "any"] if self.sex else ["any"]:
            cands = [r for r in pool if r.sex == sex and age_ok(r)]
            if cands:
                banded = [r for r in cands if r.age_band is not None]
                return sorted(banded or cands, key=lambda r: r.id)
        return []

    def _devices_to_try(self) -> tuple[str, ...]:
        # an unrecognised device only gets device-independent ranges and cut-offs
        if self.device == UNRECOGNISED_DEVICE:
            return ("any",)
        fallback = ("generic",) if self.engine_measured and self.device != "generic" else ()
        return (self.device, "any", *fallback)

    def fallback_note(self, device_matched: str, biomarker: str) -> str:
        """Text added to a finding evaluated with the engine-convention fallback."""
        if device_matched != "generic" or self.device == "generic":
            return ""
        if self.kb.biomarkers[biomarker].modality == "cfp":  # the record's device is its OCT's
            return "; this engine's own reference for its fundus-photograph measure ('generic') was used"
        return (
            f"; no {self.device} range or cut-off of this engine's convention covers this record, so this "
            "engine's own ILM -> BM reference ('generic') was used for its engine-measured value"
        )

    def choose_thresholds(self, f: ThresholdFinding) -> tuple[ThresholdSet | None, str]:
        for dev in self._devices_to_try():
            sets = [ts for ts in f.thresholds if dev in ts.devices]
            for sex in [self.sex, "any"] if self.sex else ["any"]:
                for ts in sets:
                    if ts.sex == sex:
                        return ts, ""
        avail = "; ".join(f"{'/'.join(ts.devices)} sex {ts.sex}" for ts in f.thresholds)
        if self.device_note:
            return None, f"{f.id}: {self.device_note} (cut-offs defined for: {avail})"
        return None, (
            f"{f.id}: no cut-offs for device {self.device}, sex {self.sex or 'unknown'} "
            f"(defined for: {avail})"
        )


# ------------------------------------------------------------------------------------------------
# findings
# ------------------------------------------------------------------------------------------------


def _fmt(v: float, decimals: int) -> str:
    return f"{v:.{decimals}f}"


def _ordinal(p: float) -> str:
    """``1st``, ``2nd``, ``5th``, ``95th``, ``2.5th`` (a percentile as prose writes it)."""
    n = f"{p:g}"
    if p != int(p) or 11 <= int(p) % 100 <= 13:
        return n + "th"
    return n + {1: "st", 2: "nd", 3: "rd"}.get(int(p) % 10, "th")


def _eval_deviation(f: DeviationFinding, ctx: _Context) -> _State:
    b = ctx.kb.biomarkers[f.biomarker]
    value = ctx.value(f.biomarker)
    if value is None:
        return _State(NOT_EVALUABLE, reason=f"{f.biomarker} missing")
    rng, dev, why = ctx.choose_range(f.biomarker)
    if rng is None:
        return _State(NOT_EVALUABLE, reason=why)
    grade, term, cut_used, cut_how = 0, None, None, None
    for g in f.grades:
        cut, how = value_at_percentile(rng, g.percentile)
        if cut is None:
            if grade == 0:
                return _State(NOT_EVALUABLE, reason=how)
            break
        reached = value < cut if f.direction == "low" else value > cut
        if not reached:
            break
        grade, term, cut_used, cut_how = g.grade, g.term, (g.percentile, cut), how
    if grade == 0:
        if not f.absent_text:
            return _State(ABSENT)
        first, _ = value_at_percentile(rng, f.grades[0].percentile)
        unit = ctx.kb.units[b.unit].symbol
        side = "not below" if f.direction == "low" else "not above"
        return _State(ABSENT, reason=(
            f"{f.absent_text}: {b.name} {_fmt(value, b.decimals)} {unit}".rstrip() + f" is {side} the "
            f"{_ordinal(f.grades[0].percentile)} percentile ({_fmt(first, b.decimals)} {unit}) of range "
            f"{rng.id} [{rng.population}]" + ctx.fallback_note(dev, f.biomarker)
        ))
    dev_info = deviation_of(rng, value)
    unit = ctx.kb.units[b.unit].symbol
    p, cut = cut_used
    side = "below" if f.direction == "low" else "above"
    expl = (
        f"{b.name} {_fmt(value, b.decimals)} {unit}".rstrip() + f" is {side} the {_ordinal(p)} percentile "
        f"({_fmt(cut, b.decimals)} {unit}; {cut_how.replace('_', ' ')}) of range {rng.id} "
        f"[{rng.population}]"
    )
    if dev_info["z"] is not None:
        expl += f"; z = {dev_info['z']:.2f}"
    if rng.derived:
        expl += f"; a derived range: {rng.derived}"
    expl += ctx.fallback_note(dev, f.biomarker)
    finding = Finding(
        f.id,
        f.name,
        term,
        grade,
        f.abnormal,
        "deviation",
        f.biomarker,
        value,
        b.unit,
        RangeUsed.of(rng, dev),
        dev_info,
        {"percentile": p, "value": cut, "method": cut_how},
        None,
        sorted({f.source, rng.source, *rng.derived_sources}),
        expl,
    )
    return _State(PRESENT, grade, finding=finding)


def _reached(g, value: float) -> bool:
    if g.at_least is not None:
        return value >= g.at_least
    if g.above is not None:
        return value > g.above
    if g.at_most is not None:
        return value <= g.at_most
    return value < g.below


def _eval_threshold(f: ThresholdFinding, ctx: _Context) -> _State:
    b = ctx.kb.biomarkers[f.biomarker]
    value = ctx.value(f.biomarker)
    if value is None:
        return _State(NOT_EVALUABLE, reason=f"{f.biomarker} missing")
    ts, why = ctx.choose_thresholds(f)
    if ts is None:
        return _State(NOT_EVALUABLE, reason=why)
    grade, hit = 0, None
    for g in ts.grades:
        if not _reached(g, value):
            break
        grade, hit = g.grade, g
    if grade == 0:
        return _State(ABSENT)
    op = {"at_least": ">=", "above": ">", "at_most": "<=", "below": "<"}
    key = next(k for k in op if getattr(hit, k) is not None)
    unit = ctx.kb.units[b.unit].symbol
    scope = "all devices" if ts.devices == ["any"] else "/".join(ts.devices)
    scope += "" if ts.sex == "any" else f", sex {ts.sex}"
    expl = (
        f"{b.name} {_fmt(value, b.decimals)} {unit}".rstrip()
        + f" {op[key]} {hit.cut:g} {unit}".rstrip()
        + f" (cut-off for {scope})"
    )
    if ctx.device not in ts.devices and "any" not in ts.devices:
        expl += ctx.fallback_note("generic", f.biomarker)
    dev_info = None
    rng_used = None
    rng, dev, _ = ctx.choose_range(f.biomarker) if ctx.kb.ranges_for(f.biomarker) else (None, "", "")
    if rng is not None:
        dev_info = deviation_of(rng, value)
        rng_used = RangeUsed.of(rng, dev)
    finding = Finding(
        f.id,
        f.name,
        hit.term,
        grade,
        f.abnormal,
        "threshold",
        f.biomarker,
        value,
        b.unit,
        rng_used,
        dev_info,
        {"operator": op[key], "value": hit.cut, "devices": ts.devices, "sex": ts.sex},
        None,
        sorted({f.source} | ({rng.source} if rng is not None else set())),
        expl,
    )
    return _State(PRESENT, grade, finding=finding)


def _eval_lesion(f: LesionFinding, ctx: _Context) -> _State:
    lt = ctx.kb.lesion_types[f.lesion_type]
    of_type = [les for les in ctx.lesions if les.get("type") == f.lesion_type]

    def size(les: dict[str, Any]) -> float | None:
        return None if _is_missing(les.get("diameter_um")) else finite_float(les.get("diameter_um"))

    def fits(les: dict[str, Any]) -> bool:
        d = size(les)
        if d is None:
            return False
        lo_ok = f.min_diameter_um is None or d > f.min_diameter_um
        hi_ok = f.max_diameter_um is None or d <= f.max_diameter_um
        return lo_ok and hi_ok

    count_value = None
    if lt.count_biomarker is not None:
        count_value = ctx.values.get(lt.count_biomarker)
    matching = [les for les in of_type if fits(les)] if f.needs_size else of_type
    n = len(matching)
    if not f.needs_size and count_value is not None:
        n = max(n, int(count_value))
    if n >= f.min_count:
        sizes = [size(les) for les in matching if size(les) is not None]
        expl = f"{n} {lt.name.lower()} lesion(s)"
        if f.needs_size:
            lo = f"> {f.min_diameter_um:g}" if f.min_diameter_um is not None else ""
            hi = f"<= {f.max_diameter_um:g}" if f.max_diameter_um is not None else ""
            expl += f" with diameter {' and '.join(x for x in (lo, hi) if x)} µm"
            if sizes:
                expl += f" (largest {max(sizes):g} µm)"
        finding = Finding(
            f.id,
            f.name,
            f.term,
            1,
            f.abnormal,
            "lesion",
            lt.count_biomarker,
            n,
            "count",
            None,
            None,
            None,
            [dict(les) for les in matching],
            [f.source],
            expl,
        )
        return _State(PRESENT, 1, finding=finding)
    assessed = (count_value is not None) or (f.lesion_type in ctx.assessed_types) or bool(of_type)
    if not assessed:
        if lt.count_biomarker is not None:
            ctx.missing.add(lt.count_biomarker)
        return _State(
            NOT_EVALUABLE,
            reason=f"{f.lesion_type} not assessed (no {lt.count_biomarker or 'lesion list entry'}"
            f" and not in lesion_types_assessed)",
        )
    if f.needs_size:
        if count_value is not None and count_value == 0:
            return _State(ABSENT)
        unsized = [les for les in of_type if size(les) is None]
        if unsized:
            return _State(
                NOT_EVALUABLE, reason=f"{len(unsized)} {f.lesion_type} lesion(s) without diameter_um"
            )
        if count_value is not None and count_value > len(of_type):
            return _State(
                NOT_EVALUABLE,
                reason=(
                    f"{lt.count_biomarker} = {int(count_value)} but only {len(of_type)} "
                    f"{f.lesion_type} lesion(s) listed with sizes"
                ),
            )
    return _State(ABSENT)


def _evaluate(f, ctx: _Context) -> _State:
    if isinstance(f, DeviationFinding):
        return _eval_deviation(f, ctx)
    if isinstance(f, ThresholdFinding):
        return _eval_threshold(f, ctx)
    return _eval_lesion(f, ctx)


# ------------------------------------------------------------------------------------------------
# differential and staging
# ------------------------------------------------------------------------------------------------


def _truth(state: _State, min_grade: int = 1) -> bool | None:
    if state.state == NOT_EVALUABLE:
        return None
    return state.state == PRESENT and state.grade >= min_grade


def _eval_expr(expr: Expr, states: dict[str, _State]) -> bool | None:
    if expr.finding is not None:
        return _truth(states[expr.finding], expr.min_grade)
    if expr.not_ is not None:
        v = _eval_expr(expr.not_, states)
        return None if v is None else not v
    vals = [_eval_expr(e, states) for e in (expr.all or expr.any or [])]
    if expr.all is not None:
        if any(v is False for v in vals):
            return False
        return True if all(v is True for v in vals) else None
    if any(v is True for v in vals):
        return True
    return False if all(v is False for v in vals) else None


def _ref_holds(ref: FindingRef, states: dict[str, _State]) -> bool | None:
    t = _truth(states[ref.finding], ref.min_grade)
    if t is None:
        return None
    if ref.when == "present":
        return t
    return states[ref.finding].state == ABSENT


def _ref_dict(ref: FindingRef, kb: KnowledgeBase, states: dict[str, _State]) -> dict[str, Any]:
    st = states[ref.finding]
    f = kb.findings[ref.finding]
    label = st.finding.term if st.finding else f.name
    return {
        "finding": ref.finding,
        "when": ref.when,
        "term": label if ref.when == "present" else f"no {f.name.lower()}",
        "grade": st.grade or None,
    }


def _stage(st: Staging, states: dict[str, _State]) -> StageResult:
    unknown: list[str] = []
    for stage in st.stages:
        v = _eval_expr(stage.when, states)
        if v is True:
            return StageResult(st.system, stage.id, stage.name, st.source, unknown, stage.note or None)
        if v is None:
            unknown.append(stage.id)
    return StageResult(
        st.system,
        None,
        None,
        st.source,
        unknown,
        "no stage could be assigned" + (" (findings not evaluable)" if unknown else ""),
    )


def _assess(d: Disease, kb: KnowledgeBase, states: dict[str, _State]) -> DiseaseAssessment:
    diff = d.differential
    sup = [r for r in diff.supporting if _ref_holds(r, states) is True]
    opp = [r for r in diff.opposing if _ref_holds(r, states) is True]
    unev = sorted({r.finding for r in diff.supporting + diff.opposing if _ref_holds(r, states) is None})
    rule_out = _eval_expr(diff.rule_out_if, states) if diff.rule_out_if is not None else None
    if len(sup) >= diff.min_supporting and not opp:
        status = "supported"
        reason = f"{len(sup)} supporting finding(s), none opposing (needs {diff.min_supporting})"
    elif not sup and rule_out is True:
        status = "ruled_out"
        reason = "no supporting finding and the rule-out criterion holds"
    else:
        status = "indeterminate"
        parts = [
            f"{len(sup)} supporting vs {len(opp)} opposing (needs {diff.min_supporting} and none opposing)"
        ]
        if diff.rule_out_if is None:
            parts.append("this category is never ruled out from imaging")
        elif rule_out is None:
            parts.append("rule-out criterion unknown (findings not evaluable)")
        if unev:
            parts.append(f"not evaluable: {', '.join(unev)}")
        reason = "; ".join(parts)
    return DiseaseAssessment(
        d.id,
        d.name,
        status,
        reason,
        [_ref_dict(r, kb, states) for r in sup],
        [_ref_dict(r, kb, states) for r in opp],
        unev,
        [_stage(st, states) for st in d.staging],
        list(d.icd10),
        list(d.sources),
    )


def _complete_absent_when(kb: KnowledgeBase, states: dict[str, _State]) -> None:
    """Findings left not evaluable by their own rule but absent by definition or inference (``absent_when``): in
    dependency order, the condition is evaluated over the other findings' states (three-valued); true
    makes the finding absent with the definition's reason, false or unknown keeps it not evaluable and
    says why the definition did not apply. A present or absent result of the rule is never changed."""
    for fid in absent_when_order(kb.findings)[0]:
        st = states[fid]
        if st.state != NOT_EVALUABLE:
            continue
        aw = kb.findings[fid].absent_when
        holds = _eval_expr(aw.condition, states)
        if holds is True:
            states[fid] = _State(ABSENT, reason=aw.reason)
            continue
        reads = ", ".join(
            f"{c} {states[c].state.replace('_', ' ')}" for c in sorted(aw.condition.finding_ids()) if c in states
        )
        states[fid] = _State(
            NOT_EVALUABLE,
            reason=f"{st.reason}; the absence by {aw.basis} ({aw.source}) does not apply: its condition is "
            f"{'false' if holds is False else 'unknown'} ({reads})",
        )


def _disease_order(kb: KnowledgeBase) -> list[str]:
    first = [c for c in canonical.CATEGORIES if c in kb.diseases]
    return first + sorted(set(kb.diseases) - set(first))


# ------------------------------------------------------------------------------------------------
# entry point
# ------------------------------------------------------------------------------------------------

_DEFAULT_KB: KnowledgeBase | None = None


def _default_kb() -> KnowledgeBase:
    global _DEFAULT_KB
    if _DEFAULT_KB is None:
        _DEFAULT_KB = load_knowledge_base()
    return _DEFAULT_KB


def reason(record: dict[str, Any], kb: KnowledgeBase | None = None) -> Reasoning:
    """Findings and differential for one eye's record (see the module docstring for its shape).

    Parameters
    ----------
    record : dict
        ``{"biomarkers": {id: value | None}, "device", "sex", "age_years", "laterality",
        optional "lesions", "lesion_types_assessed"}``.
    kb : KnowledgeBase, optional
        Default: the knowledge base of :func:`grok.knowledge.load_knowledge_base` with no argument.

    Returns
    -------
    Reasoning
        ``findings`` (present ones, with evidence), ``absent`` finding ids (``absent_reasons`` for those
        absent by a rule other than their own measurement), ``not_evaluable`` finding ids with reasons,
        ``missing`` biomarker ids that a rule needed, ``differential`` per category, ``measurements``.
    """
    kb = kb or _default_kb()
    ctx = _Context(record, kb)
    states = {fid: _evaluate(f, ctx) for fid, f in sorted(kb.findings.items())}
    _complete_absent_when(kb, states)

    measurements: list[Measurement] = []
    for bid in sorted(ctx.values):
        b = kb.biomarkers[bid]
        v = ctx.values[bid]
        if b.value_kind == "position":
            measurements.append(
                Measurement(bid, v, b.unit, None, None, None, None, "position: no normal range")
            )
            continue
        rng, dev, why = ctx.choose_range(bid)
        if rng is None:
            measurements.append(Measurement(bid, v, b.unit, None, None, None, None, why))
            continue
        dv = deviation_of(rng, v)
        pct = dv["percentile"]
        measurements.append(
            Measurement(
                bid,
                v,
                b.unit,
                RangeUsed.of(rng, dev),
                dv["z"],
                pct,
                None if pct is None else bool(5.0 <= pct <= 95.0),
                None,
            )
        )

    findings = [s.finding for _, s in sorted(states.items()) if s.state == PRESENT and s.finding is not None]
    findings.sort(key=lambda f: (not f.abnormal, -f.grade, f.id))
    absent = sorted(fid for fid, s in states.items() if s.state == ABSENT)
    absent_reasons = {
        fid: s.reason or kb.findings[fid].absent_text
        for fid, s in sorted(states.items())
        if s.state == ABSENT and (s.reason or kb.findings[fid].absent_text)
    }
    not_eval = [
        {"finding": fid, "reason": s.reason} for fid, s in sorted(states.items()) if s.state == NOT_EVALUABLE
    ]

    assessments: dict[str, DiseaseAssessment] = {}
    complement: list[Disease] = []
    for did in _disease_order(kb):
        d = kb.diseases[did]
        if d.differential.status_rule == "complement":
            complement.append(d)
            continue
        assessments[did] = _assess(d, kb, states)
    abnormal_present = [f for f in findings if f.abnormal]
    for d in complement:
        supported = sorted(k for k, a in assessments.items() if a.status == "supported")
        if supported:
            status, why = "ruled_out", f"supported: {', '.join(supported)}"
        elif abnormal_present:
            status = "indeterminate"
            why = "abnormal finding(s) present without a supported category: " + ", ".join(
                f.id for f in abnormal_present
            )
        elif not any(s.state != NOT_EVALUABLE for s in states.values()):
            status, why = "indeterminate", "no finding could be evaluated"
        else:
            n_eval = sum(1 for st in states.values() if st.state != NOT_EVALUABLE)
            status = "supported"
            why = (
                f"no abnormal finding among the {n_eval} evaluated ({len(states) - n_eval} not evaluable) "
                "and no category supported"
            )
        assessments[d.id] = DiseaseAssessment(
            d.id, d.name, status, why, [], [], [], [], list(d.icd10), list(d.sources)
        )
    differential = [assessments[d] for d in _disease_order(kb)]

    return Reasoning(
        kb_snapshot_id=kb.snapshot_id,
        laterality=ctx.laterality,
        device=ctx.device,
        sex=ctx.sex,
        age_years=ctx.age,
        measurements=measurements,
        findings=findings,
        absent=absent,
        not_evaluable=not_eval,
        missing=sorted(ctx.missing),
        differential=differential,
        notes=ctx.notes,
        absent_reasons=absent_reasons,
    )


__all__ = [
    "DiseaseAssessment",
    "Finding",
    "Measurement",
    "Reasoning",
    "deviation_of",
    "reason",
    "value_at_percentile",
]
