"""Pydantic models of the knowledge base's YAML sections (schema version 1).

Every YAML file under a knowledge-base folder is a mapping whose top-level keys are section names.
List sections hold entries with an ``id``; the loader merges them across files (a duplicate id in one
folder is an error) and across folders (a later folder overrides an earlier one by id). The
``cohort`` section is a mapping merged key by key. Sections:

``kb``                 name, version and description of the knowledge base (one per folder stack)
``sources``            the bibliography every number points to (:class:`Source`)
``units``              the units biomarkers may use (:class:`Unit`)
``devices``            OCT/fundus devices ranges can be specific to (:class:`Device`)
``lesion_types``       fundus lesion / sign types a record's ``lesions`` list may carry (:class:`LesionType`)
``biomarkers``         the catalogue of canonical biomarker ids (:class:`Biomarker`)
``normative_ranges``   normal distributions by device, sex and age band (:class:`NormativeRange`)
``findings``           rules from a value (or lesions) to a graded qualitative finding (:class:`FindingRule`)
``diseases``           categories with ICD-10 codes, differential and staging (:class:`Disease`)
``cohort_labels``      cohort-table labelling rules per category (:class:`CohortLabel`)
``cohort_checks``      consistency checks that report conflicts in a cohort row (:class:`CohortCheck`)
``cohort``             field-name mapping and settings of the cohort labeller (:class:`CohortSettings`)

Models forbid unknown keys, so a misspelt key is an error that names the allowed ones.
"""

from __future__ import annotations

import re
from itertools import pairwise
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

SCHEMA_VERSION = 1

_ID = r"^[a-z][a-z0-9_]*$"
_DOTTED_ID = r"^[a-z][a-z0-9_.]*$"
Id = Annotated[str, Field(pattern=_ID, description="snake_case identifier")]
DottedId = Annotated[str, Field(pattern=_DOTTED_ID, description="snake_case identifier, dots allowed")]

#: ICD-10 (WHO) code or code prefix, with or without the dot: "H35.3", "H40", "E11.3".
ICD10_RE = re.compile(r"^[A-Z][0-9]{2}(\.?[0-9A-Z]{1,4})?$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --------------------------------------------------------------------------------------------------
# metadata, sources, units, devices, lesion types
# --------------------------------------------------------------------------------------------------


class KBInfo(_Model):
    """``kb:`` section: what this knowledge base is."""

    name: str
    version: str
    schema_version: int = SCHEMA_VERSION
    description: str = ""

    @field_validator("schema_version")
    @classmethod
    def _schema(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {v} is not supported; this code reads schema_version {SCHEMA_VERSION}"
            )
        return v


class Source(_Model):
    """A bibliography entry. ``kind: convention`` marks a documented engineering convention, not literature."""

    id: Id
    kind: Literal[
        "article", "abstract", "review", "guideline", "classification", "dataset", "website", "convention"
    ]
    authors: str
    year: int = Field(ge=1900, le=2100)
    title: str
    journal: str | None = None
    volume_pages: str | None = None
    doi: str | None = Field(default=None, pattern=r"^10\.\d{4,9}/\S+$")
    url: str | None = None
    note: str = ""


class Unit(_Model):
    """A unit a biomarker may use. ``symbol`` is what reports print."""

    id: Id
    symbol: str
    quantity: str
    description: str = ""


class Device(_Model):
    """An acquisition device family. ``aliases`` are matched case-insensitively against a record's device."""

    id: Id
    name: str
    modality: list[Literal["oct", "cfp"]]
    aliases: list[str] = []
    description: str = ""
    #: how generated text names the device ("on a Spectralis scan"); ``name`` when empty
    short_name: str = ""


class LesionType(_Model):
    """A fundus lesion or sign that a record's ``lesions`` list may carry (``{"type": id, ...}``).

    ``count_biomarker`` names the biomarker that counts it, when the measurement pipeline detects it;
    a record with that count present counts as *assessed* for this lesion type.
    """

    id: Id
    name: str
    description: str
    count_biomarker: Id | None = None
    source: Id | None = None


# --------------------------------------------------------------------------------------------------
# biomarkers and normative ranges
# --------------------------------------------------------------------------------------------------


class Biomarker(_Model):
    """A catalogue entry for one canonical biomarker id (see ``grok.ids``).

    ``value_kind``: ``scalar`` (a float), ``count`` (a non-negative integer) or ``position`` (an (x, y)
    pair, never compared with a range). Biomarkers without a normative range must say why in
    ``no_normal_range_reason`` (for example a pixel position, or no attributable population data).
    """

    id: Id
    name: str
    unit: Id
    modality: Literal["oct", "cfp"]
    region: str
    value_kind: Literal["scalar", "count", "position"] = "scalar"
    description: str
    convention: str = ""
    typical_value_note: str = ""
    no_normal_range_reason: str | None = None
    sources: list[Id] = []
    decimals: int = Field(default=1, ge=0, le=6)


class AgeBand(_Model):
    """Half-open age band ``[min_years, max_years)`` in years."""

    min_years: float = Field(ge=0)
    max_years: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> AgeBand:
        if not self.min_years < self.max_years:
            raise ValueError(
                f"age band min_years ({self.min_years}) must be below max_years ({self.max_years})"
            )
        return self

    def contains(self, age_years: float) -> bool:
        return self.min_years <= age_years < self.max_years


class NormativeRange(_Model):
    """The normal distribution of one biomarker in one population.

    Give ``mean`` and ``sd`` (percentiles then follow from a normal approximation, ``derivation:
    mean_sd_normal_approximation``), or reported ``percentiles`` (``{5: 230.0, 95: 310.0}``, derivation
    ``reported_percentiles``), or both (``mean_sd_and_percentiles``: reported percentiles win where given).
    ``devices`` lists the device ids it applies to (``generic`` = device unknown or this engine's own
    segmentation; ``any`` = device-independent, e.g. manual calipers); ``sex`` is ``F``, ``M`` or ``any``; ``age_band`` null = the source's whole sample.
    """

    id: Id
    biomarker: Id
    devices: list[Id] = Field(min_length=1)
    sex: Literal["F", "M", "any"] = "any"
    age_band: AgeBand | None = None
    mean: float | None = None
    sd: float | None = Field(default=None, gt=0)
    percentiles: dict[float, float] = {}
    n: int | None = Field(default=None, ge=1)
    derivation: Literal["mean_sd_normal_approximation", "reported_percentiles", "mean_sd_and_percentiles"]
    population: str
    convention: str = ""
    source: Id
    note: str = ""
    derived: str = ""
    """How figures the source does not state were obtained (e.g. another device's range shifted by a
    published same-eye inter-device offset, or ring means area-weighted into a 6 mm mean); empty when
    every figure is the source's own. A finding graded against a derived range says so in its text."""
    derived_sources: list[Id] = []
    """The further sources a derived range rests on (the offset's, for instance)."""
    engine_comparable: bool = True
    """False when the range's convention differs from how this engine measures the biomarker (another
    region, e.g. the Cirrus 6 x 6 mm cube or GC-IPL annulus, or another boundary, e.g. ILM -> RPE), so a
    value this engine measured (``engine_measured``) is never graded against it; scanner-exported values
    still are."""

    @model_validator(mode="after")
    def _derived_has_sources(self) -> NormativeRange:
        if self.derived_sources and not self.derived:
            raise ValueError("derived_sources given without 'derived' (say how the figures were derived)")
        return self

    @field_validator("percentiles")
    @classmethod
    def _percentiles_ordered(cls, v: dict[float, float]) -> dict[float, float]:
        keys = sorted(v)
        for k in keys:
            if not 0 < k < 100:
                raise ValueError(f"percentile key {k} must lie strictly between 0 and 100")
        values = [v[k] for k in keys]
        if any(b <= a for a, b in pairwise(values)):
            raise ValueError(
                "percentile values must increase with the percentile "
                f"(got {dict(zip(keys, values))}); check for a swapped pair"
            )
        return dict(zip(keys, values))

    @model_validator(mode="after")
    def _enough_statistics(self) -> NormativeRange:
        has_ms = self.mean is not None and self.sd is not None
        if self.derivation in ("mean_sd_normal_approximation", "mean_sd_and_percentiles") and not has_ms:
            raise ValueError(f"derivation {self.derivation!r} needs both mean and sd")
        if (
            self.derivation in ("reported_percentiles", "mean_sd_and_percentiles")
            and len(self.percentiles) < 2
        ):
            raise ValueError(f"derivation {self.derivation!r} needs at least two reported percentiles")
        if self.derivation == "mean_sd_normal_approximation" and self.percentiles:
            raise ValueError(
                "percentiles are given but derivation is 'mean_sd_normal_approximation'; "
                "use 'mean_sd_and_percentiles'"
            )
        if (self.mean is None) != (self.sd is None):
            raise ValueError("give mean and sd together (or neither)")
        if has_ms and self.percentiles:
            lo, hi = min(self.percentiles.values()), max(self.percentiles.values())
            if (
                not lo <= self.mean <= hi
                and len(self.percentiles) >= 2
                and min(self.percentiles) < 50 < max(self.percentiles)
            ):
                raise ValueError(f"mean {self.mean} lies outside the reported percentile span [{lo}, {hi}]")
        return self


# --------------------------------------------------------------------------------------------------
# findings
# --------------------------------------------------------------------------------------------------


class PercentileGrade(_Model):
    """A grade reached when the value lies beyond ``percentile`` in the finding's direction."""

    grade: int = Field(ge=1)
    percentile: float = Field(gt=0, lt=100)
    term: str


class ValueGrade(_Model):
    """A grade reached at an absolute cut: ``value >= at_least`` (direction high), ``value > above``,
    ``value <= at_most`` or ``value < below`` (direction low). Give exactly one of the four."""

    grade: int = Field(ge=1)
    term: str
    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    below: float | None = None

    @model_validator(mode="after")
    def _one_cut(self) -> ValueGrade:
        given = [k for k in ("at_least", "above", "at_most", "below") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of at_least / above / at_most / below (got {given or 'none'})"
            )
        return self

    @property
    def cut(self) -> float:
        for k in ("at_least", "above", "at_most", "below"):
            v = getattr(self, k)
            if v is not None:
                return float(v)
        raise AssertionError("unreachable")

    @property
    def inclusive(self) -> bool:
        return self.at_least is not None or self.at_most is not None

    @property
    def cut_direction(self) -> str:
        return "high" if (self.at_least is not None or self.above is not None) else "low"


class ThresholdSet(_Model):
    """Absolute cuts valid for some devices (``any`` = every device, the default) and one sex
    (``any`` = both)."""

    devices: list[Id] = Field(default=["any"], min_length=1)
    sex: Literal["F", "M", "any"] = "any"
    grades: list[ValueGrade] = Field(min_length=1)


class AbsentWhen(_Model):
    """When a finding is *absent by definition* or *by inference*: ``condition`` is an expression over other
    findings (the ``all`` / ``any`` / ``not`` / ``finding`` of :class:`Expr`, three-valued), ``reason`` the
    text an absent result states ("by definition: no medium or large drusen"), ``source`` where the
    definition or the inference comes from, ``basis`` which of the two it is: ``definition`` (the finding
    cannot exist without the condition's findings, as AMD pigmentary abnormalities are defined by their
    drusen) or ``inference`` (a clinical inference the source supports but does not define, such as
    diabetic retinopathy's severe signs not arising without its lower ones: the reason must say so).

    It only completes what the finding's own rule leaves *not evaluable* (a lesion type no extractor
    assesses, say): a present or absent result of the rule is never overridden. When the condition is
    false or unknown the finding stays not evaluable, and its reason names the condition's findings and
    their states. The loader rejects unknown finding ids and cycles (a finding whose condition reaches,
    through other ``absent_when`` conditions, back to itself)."""

    condition: Expr
    reason: str = Field(min_length=1)
    source: Id
    basis: Literal["definition", "inference"] = "definition"

    @model_serializer(mode="wrap")
    def _omit_default_basis(self, handler):
        # a rule without ``basis`` dumps as before the key existed, so its knowledge base keeps its snapshot id
        out = handler(self)
        if isinstance(out, dict) and out.get("basis") == "definition":
            out.pop("basis")
        return out


class _Finding(_Model):
    """What every finding kind has besides its rule: ``absent_when`` (see :class:`AbsentWhen`) and
    ``absent_text``, what an absent result states: its basis and its limits ("no peripapillary RNFL
    thickening on OCT ...; mild swelling can be missed"), reported in the reasoning's ``absent_reasons``
    (a deviation finding adds the value and the percentile it did not pass)."""

    absent_when: AbsentWhen | None = None
    absent_text: str = ""

    @model_serializer(mode="wrap")
    def _omit_unset_keys(self, handler):
        # a finding without these keys dumps as before they existed, so a knowledge base whose content
        # did not change keeps its snapshot id
        out = handler(self)
        if isinstance(out, dict):
            if out.get("absent_when") is None:
                out.pop("absent_when", None)
            if not out.get("absent_text"):
                out.pop("absent_text", None)
        return out


def _check_grades_ordered(grades: list[int]) -> None:
    if grades != list(range(1, len(grades) + 1)):
        raise ValueError(f"grades must be 1, 2, ... in order of severity (got {grades})")


class DeviationFinding(_Finding):
    """A finding graded by how far a value lies beyond a percentile of its normative range."""

    kind: Literal["deviation"]
    id: Id
    name: str
    biomarker: Id
    direction: Literal["low", "high"]
    grades: list[PercentileGrade] = Field(min_length=1)
    abnormal: bool = True
    source: Id
    description: str = ""

    @model_validator(mode="after")
    def _monotone(self) -> DeviationFinding:
        _check_grades_ordered([g.grade for g in self.grades])
        ps = [g.percentile for g in self.grades]
        pairs = list(pairwise(ps))
        if self.direction == "low" and any(b >= a for a, b in pairs):
            raise ValueError(
                f"direction 'low': percentiles must fall as the grade rises (got {ps}); e.g. 5 then 1"
            )
        if self.direction == "high" and any(b <= a for a, b in pairs):
            raise ValueError(
                f"direction 'high': percentiles must rise as the grade rises (got {ps}); e.g. 95 then 99"
            )
        if self.direction == "low" and ps[0] >= 50 or self.direction == "high" and ps[0] <= 50:
            raise ValueError(
                f"direction {self.direction!r} with first percentile {ps[0]} is on the wrong side of 50"
            )
        return self


class ThresholdFinding(_Finding):
    """A finding graded by absolute cuts on a value (presence rules are ``above: 0``)."""

    kind: Literal["threshold"]
    id: Id
    name: str
    biomarker: Id
    direction: Literal["low", "high"]
    thresholds: list[ThresholdSet] = Field(min_length=1)
    abnormal: bool = True
    source: Id
    description: str = ""

    @model_validator(mode="after")
    def _monotone(self) -> ThresholdFinding:
        for ts in self.thresholds:
            _check_grades_ordered([g.grade for g in ts.grades])
            for g in ts.grades:
                if g.cut_direction != self.direction:
                    raise ValueError(
                        f"grade {g.grade} uses a {g.cut_direction!r} cut but the finding's direction is "
                        f"{self.direction!r}; use at_least/above for 'high', at_most/below for 'low'"
                    )
            cuts = [g.cut for g in ts.grades]
            pairs = list(pairwise(cuts))
            if self.direction == "high" and any(b < a for a, b in pairs):
                raise ValueError(f"direction 'high': cuts must not fall as the grade rises (got {cuts})")
            if self.direction == "low" and any(b > a for a, b in pairs):
                raise ValueError(f"direction 'low': cuts must not rise as the grade rises (got {cuts})")
        keys = [(tuple(sorted(ts.devices)), ts.sex) for ts in self.thresholds]
        seen: set[tuple[str, str]] = set()
        for devs, sex in keys:
            for d in devs:
                if (d, sex) in seen:
                    raise ValueError(f"two threshold sets cover device {d!r} and sex {sex!r}; merge them")
                seen.add((d, sex))
        return self


class LesionFinding(_Finding):
    """A finding present when the record's ``lesions`` hold at least ``min_count`` lesions of
    ``lesion_type`` whose ``diameter_um`` lies in ``(min_diameter_um, max_diameter_um]``."""

    kind: Literal["lesion"]
    id: Id
    name: str
    lesion_type: Id
    term: str
    min_count: int = Field(default=1, ge=1)
    min_diameter_um: float | None = Field(default=None, ge=0)
    max_diameter_um: float | None = Field(default=None, gt=0)
    abnormal: bool = True
    source: Id
    description: str = ""

    @model_validator(mode="after")
    def _sizes(self) -> LesionFinding:
        if (
            self.min_diameter_um is not None
            and self.max_diameter_um is not None
            and not self.min_diameter_um < self.max_diameter_um
        ):
            raise ValueError("min_diameter_um must be below max_diameter_um")
        return self

    @property
    def needs_size(self) -> bool:
        return self.min_diameter_um is not None or self.max_diameter_um is not None


FindingRule = Annotated[DeviationFinding | ThresholdFinding | LesionFinding, Field(discriminator="kind")]


# --------------------------------------------------------------------------------------------------
# diseases: differential and staging
# --------------------------------------------------------------------------------------------------


class FindingRef(_Model):
    """A reference to a finding in a differential: satisfied when the finding is ``present`` (at
    ``min_grade`` or more) or, with ``when: absent``, when it was evaluated and is absent."""

    finding: Id
    when: Literal["present", "absent"] = "present"
    min_grade: int = Field(default=1, ge=1)
    source: Id | None = None
    """Where the rule comes from (an id under ``sources:``); every ``opposing`` rule needs one, since
    instruction text states it as a clinical claim ("X is less likely given Y")."""


class Expr(_Model):
    """A boolean expression over findings, evaluated with three-valued (Kleene) logic: a finding that
    could not be evaluated is *unknown*. Exactly one of ``all`` / ``any`` / ``not`` / ``finding``."""

    all: list[Expr] | None = None
    any: list[Expr] | None = None
    not_: Expr | None = Field(default=None, alias="not")
    finding: Id | None = None
    min_grade: int = Field(default=1, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):  # a bare finding id
            return {"finding": data}
        return data

    @model_validator(mode="after")
    def _one_operator(self) -> Expr:
        given = [
            k
            for k, v in (("all", self.all), ("any", self.any), ("not", self.not_), ("finding", self.finding))
            if v is not None
        ]
        if len(given) != 1:
            raise ValueError(
                f"an expression needs exactly one of all / any / not / finding (got {given or 'none'})"
            )
        if self.all is not None and not self.all or self.any is not None and not self.any:
            raise ValueError("'all' and 'any' need at least one operand")
        return self

    def finding_ids(self) -> set[str]:
        if self.finding is not None:
            return {self.finding}
        out: set[str] = set()
        for sub in (self.all or []) + (self.any or []) + ([self.not_] if self.not_ else []):
            out |= sub.finding_ids()
        return out


AbsentWhen.model_rebuild()
_Finding.model_rebuild()
DeviationFinding.model_rebuild()
ThresholdFinding.model_rebuild()
LesionFinding.model_rebuild()


class Stage(_Model):
    id: Id
    name: str
    when: Expr
    note: str = ""


class Staging(_Model):
    """A staging system: stages listed from the most severe down; the first whose ``when`` holds wins."""

    system: str
    source: Id
    stages: list[Stage] = Field(min_length=1)
    note: str = ""


class Differential(_Model):
    """How a disease's status is decided from findings.

    * ``supported``: at least ``min_supporting`` supporting refs hold and no opposing ref holds
      (conflicting evidence leaves the category indeterminate).
    * ``ruled_out``: no supporting ref holds and ``rule_out_if`` evaluates to true (an unknown
      finding makes it unknown, so a disease is never ruled out on missing data).
    * otherwise ``indeterminate``.
    ``status_rule: complement`` (the ``normal`` category) is supported when no other category is
    supported and no abnormal finding is present, and ruled out when another category is supported.
    """

    status_rule: Literal["evidence", "complement"] = "evidence"
    supporting: list[FindingRef] = []
    opposing: list[FindingRef] = []
    min_supporting: int = Field(default=1, ge=1)
    rule_out_if: Expr | None = None
    note: str = ""


class Disease(_Model):
    id: Id
    name: str
    definition: str
    icd10: list[str] = []
    icd10_note: str = ""
    differential: Differential
    rule_out: list[Id] = Field(
        default=[], description="other categories to consider (the differential to rule out)"
    )
    staging: list[Staging] = []
    sources: list[Id] = Field(min_length=1)

    @field_validator("icd10")
    @classmethod
    def _icd10(cls, v: list[str]) -> list[str]:
        for code in v:
            if not ICD10_RE.match(code):
                raise ValueError(f"{code!r} is not an ICD-10 code or prefix like 'H35.3' or 'E11'")
        return v


# --------------------------------------------------------------------------------------------------
# cohort labelling
# --------------------------------------------------------------------------------------------------


class Evidence(_Model):
    """One way a cohort row supports a label.

    kinds: ``code_prefix`` (a ``;``-list field holds a code starting with one of ``codes``; ICD-10 dots
    are ignored), ``code_equals`` (holds one of ``codes`` exactly), ``positive_number`` (a number
    > 0, e.g. an age at diagnosis; UK Biobank's negative "do not know"/"prefer not to answer" codes do
    not count), ``equals`` (the field equals ``value``), ``blood_pressure`` (mean of the readings in
    ``cohort.blood_pressure`` at or above the thresholds there).
    """

    id: DottedId
    kind: Literal["code_prefix", "code_equals", "positive_number", "equals", "blood_pressure"]
    field: Id | None = None
    codes: list[str] = []
    value: str | None = None
    description: str = ""
    source: Id

    @model_validator(mode="after")
    def _needs(self) -> Evidence:
        if self.kind != "blood_pressure" and self.field is None:
            raise ValueError(f"evidence kind {self.kind!r} needs 'field' (a logical field of cohort.fields)")
        if self.kind in ("code_prefix", "code_equals") and not self.codes:
            raise ValueError(f"evidence kind {self.kind!r} needs a non-empty 'codes' list")
        if self.kind == "equals" and self.value is None:
            raise ValueError("evidence kind 'equals' needs 'value'")
        return self


class CohortLabel(_Model):
    """Labelling rule for one category: any evidence fires it; ``laterality_field`` (coded per
    ``cohort.laterality_coding``) restricts it to one eye, else it applies to both eyes."""

    id: Id
    evidence: list[Evidence] = Field(min_length=1)
    laterality_field: Id | None = None
    note: str = ""


class CohortCheck(_Model):
    """A consistency check whose failure is reported in the row's ``conflicts`` (never silently fixed).

    kinds: ``exclusive_code`` (``code`` must not appear with other codes in ``field``),
    ``negates_labels`` (``field`` holding ``code`` or equal to ``value`` contradicts ``labels``),
    ``age_not_after`` (each of ``fields`` must not exceed the row's age), ``laterality_without_label``
    (a laterality field set while its label did not fire), ``diastolic_below_systolic``.
    """

    id: DottedId
    kind: Literal[
        "exclusive_code",
        "negates_labels",
        "age_not_after",
        "laterality_without_label",
        "diastolic_below_systolic",
    ]
    field: Id | None = None
    fields: list[Id] = []
    code: str | None = None
    value: str | None = None
    labels: list[Id] = []
    description: str = ""
    source: Id | None = None

    @model_validator(mode="after")
    def _needs(self) -> CohortCheck:
        if self.kind == "exclusive_code" and (self.field is None or self.code is None):
            raise ValueError("check kind 'exclusive_code' needs 'field' and 'code'")
        if self.kind == "negates_labels" and (
            self.field is None or (self.code is None) == (self.value is None) or not self.labels
        ):
            raise ValueError(
                "check kind 'negates_labels' needs 'field', 'labels' and one of 'code' / 'value'"
            )
        if self.kind == "age_not_after" and not self.fields:
            raise ValueError("check kind 'age_not_after' needs 'fields'")
        return self


class BloodPressureRule(_Model):
    """Hypertension by measurement: mean systolic >= ``systolic_threshold_mmhg`` or mean diastolic >=
    ``diastolic_threshold_mmhg`` over the available readings (automated and manual together)."""

    systolic_fields: list[Id] = Field(min_length=1)
    diastolic_fields: list[Id] = Field(min_length=1)
    systolic_threshold_mmhg: float = Field(gt=0)
    diastolic_threshold_mmhg: float = Field(gt=0)
    source: Id


class CohortSettings(_Model):
    """``cohort:`` mapping: logical field -> column name, codings, blood pressure and priority."""

    name: str
    description: str = ""
    fields: dict[Id, str]
    list_separator: str = ";"
    laterality_coding: dict[str, Literal["OD", "OS", "both"]]
    laterality_source: Id
    laterality_note: str = ""
    blood_pressure: BloodPressureRule
    priority: list[Id] = Field(min_length=1)
    priority_note: str = ""
    normal_label: Id = "normal"
    source: Id

    @field_validator("fields")
    @classmethod
    def _required_fields(cls, v: dict[str, str]) -> dict[str, str]:
        for need in ("patient_id", "visit", "sex", "age_years"):
            if need not in v:
                raise ValueError(
                    f"cohort.fields needs the logical field {need!r} (map it to your column name)"
                )
        return v


#: Section name -> entry model, for list sections merged by id.
LIST_SECTIONS: dict[str, Any] = {
    "sources": Source,
    "units": Unit,
    "devices": Device,
    "lesion_types": LesionType,
    "biomarkers": Biomarker,
    "normative_ranges": NormativeRange,
    "findings": FindingRule,
    "diseases": Disease,
    "cohort_labels": CohortLabel,
    "cohort_checks": CohortCheck,
}
#: Mapping sections merged key by key.
MAPPING_SECTIONS: dict[str, Any] = {"kb": KBInfo, "cohort": CohortSettings}
ALL_SECTIONS = tuple(LIST_SECTIONS) + tuple(MAPPING_SECTIONS)
