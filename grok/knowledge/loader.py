"""Load, merge, validate and fingerprint a knowledge base (YAML folders -> :class:`KnowledgeBase`).

Run as: grok kb validate [DIR ...]   (the library entry point is :func:`load_knowledge_base`)

A knowledge base is one folder, or a stack of folders where each later folder overrides or adds
entries by id (``load_knowledge_base([ours, theirs])``). Every problem found is collected, each
naming the file, the key and the fix, and raised together as :class:`KnowledgeBaseError`.

The snapshot id (``kb-`` + 16 hex digits) is the SHA-256 of the canonical JSON (sorted keys, entries
sorted by id) of the merged, validated content: it does not change when files are renamed, split,
reordered or re-indented, and it changes whenever any value does.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from grok import ids as canonical
from grok.knowledge.models import (
    ALL_SECTIONS,
    LIST_SECTIONS,
    MAPPING_SECTIONS,
    SCHEMA_VERSION,
    Biomarker,
    CohortCheck,
    CohortLabel,
    CohortSettings,
    DeviationFinding,
    Device,
    Disease,
    Expr,
    KBInfo,
    LesionFinding,
    LesionType,
    NormativeRange,
    Source,
    ThresholdFinding,
    Unit,
)
from grok.resources import bundled_dir

#: Environment variable naming the knowledge-base folder(s) to use when none is passed
#: (several folders separated by ``os.pathsep``, later ones overlaying earlier ones).
KB_ENV = "GROK_KNOWLEDGE_BASE"

#: Every id the measurement code writes; the catalogue must describe each.
CANONICAL_BIOMARKERS: tuple[str, ...] = (
    *canonical.OCT_GROK_BIOMARKERS,
    *canonical.OCT_EXTRA_BIOMARKERS,
    *canonical.OCT_PERIPAPILLARY_BIOMARKERS,
    *canonical.CFP_BIOMARKERS,
)

_REQUIRED_SECTIONS = ("kb", "sources", "units", "devices", "biomarkers", "findings", "diseases")
_SCHEMA_HINT = "see the schema in grok/knowledge/models.py and docs/knowledge.md"


def bundled_knowledge_base_dir() -> Path:
    """The bundled ``knowledge_base/`` folder (the checkout's, or the installed wheel's copy; see grok.resources)."""
    return bundled_dir("knowledge_base")


@dataclass(frozen=True)
class KBIssue:
    """One validation problem: where it is (file, key) and how to fix it."""

    file: str
    key: str
    message: str
    fix: str
    severity: str = "error"  # "error" | "warning"

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}" if self.key else self.file
        return f"{where}: {self.message} (fix: {self.fix})"

    def to_dict(self) -> dict[str, str]:
        return {
            "file": self.file,
            "key": self.key,
            "message": self.message,
            "fix": self.fix,
            "severity": self.severity,
        }


class KnowledgeBaseError(ValueError):
    """Raised when a knowledge base does not load or validate; ``issues`` lists every problem."""

    def __init__(self, issues: Sequence[KBIssue], warnings: Sequence[KBIssue] = ()):
        self.issues = list(issues)
        self.warnings = list(warnings)
        head = f"knowledge base invalid: {len(self.issues)} problem(s)"
        super().__init__(head + "\n" + "\n".join(f"  - {i}" for i in self.issues))


@dataclass
class _Entry:
    section: str
    id: str
    raw: dict[str, Any]
    file: str
    index: int
    folder: int


@dataclass
class KnowledgeBase:
    """A merged, validated knowledge base. Look-ups by id; ``snapshot_id`` fingerprints the content."""

    info: KBInfo
    sources: dict[str, Source]
    units: dict[str, Unit]
    devices: dict[str, Device]
    lesion_types: dict[str, LesionType]
    biomarkers: dict[str, Biomarker]
    normative_ranges: dict[str, NormativeRange]
    findings: dict[str, DeviationFinding | ThresholdFinding | LesionFinding]
    diseases: dict[str, Disease]
    cohort_labels: dict[str, CohortLabel]
    cohort_checks: dict[str, CohortCheck]
    cohort: CohortSettings | None
    folders: list[str]
    snapshot_id: str = ""
    origins: dict[str, str] = field(default_factory=dict)  # "section:id" -> file
    overrides: list[dict[str, str]] = field(default_factory=list)
    warnings: list[KBIssue] = field(default_factory=list)

    # -- look-ups ---------------------------------------------------------------------------------
    def ranges_for(self, biomarker: str) -> list[NormativeRange]:
        """Normative ranges of ``biomarker``, sorted by id."""
        return [r for _, r in sorted(self.normative_ranges.items()) if r.biomarker == biomarker]

    def resolve_device(self, name: str | None) -> tuple[str, str | None]:
        """Map a record's device text to a device id; returns ``(device_id, note)``.

        The text may be an id, an alias, or a manufacturer and model as DICOM writes them
        ("Heidelberg Engineering Spectralis", "Carl Zeiss Meditec Cirrus HD-OCT 5000"): exact ids and
        aliases first, then the longest alias (4 characters or more) contained in the text.
        A missing device resolves to ``generic`` with a note. Text that matches no device resolves to
        :data:`UNRECOGNISED_DEVICE`, with a note naming the file to fix: device-specific ranges are
        then never used (never a silent generic range).
        """
        if name is None or str(name).strip() == "":
            return "generic", "device not given; generic ranges used"
        text = " ".join(str(name).strip().lower().split())
        for dev_id, dev in sorted(self.devices.items()):
            if text == dev_id or text in (a.lower() for a in dev.aliases):
                return dev_id, None
        hits = [
            (len(a), dev_id)
            for dev_id, dev in sorted(self.devices.items())
            for a in dev.aliases
            if len(a) >= 4 and a.lower() in text
        ]
        if hits:
            return max(hits)[1], None
        where = self.origins.get("devices:generic", "kb.yaml")
        return UNRECOGNISED_DEVICE, (
            f"device {str(name)!r} is not in the knowledge base's devices; device-specific ranges are not "
            f"used. Fix: add it to the aliases of its device in {where} (devices[].aliases), or pass "
            "device 'generic' for values measured with this engine's own segmentation"
        )

    def to_canonical(self) -> dict[str, Any]:
        """The content the snapshot id hashes: sorted, validated, JSON-ready."""
        out: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "kb": self.info.model_dump(mode="json", by_alias=True),
        }
        for section in LIST_SECTIONS:
            entries = getattr(self, section)
            out[section] = [entries[k].model_dump(mode="json", by_alias=True) for k in sorted(entries)]
        out["cohort"] = self.cohort.model_dump(mode="json", by_alias=True) if self.cohort else None
        return out

    def summary(self) -> dict[str, Any]:
        """Counts and identity, for ``grok kb validate --json`` and logs."""
        return {
            "name": self.info.name,
            "version": self.info.version,
            "snapshot_id": self.snapshot_id,
            "folders": self.folders,
            "counts": {s: len(getattr(self, s)) for s in LIST_SECTIONS},
            "biomarkers_without_range": sorted(b for b in self.biomarkers if not self.ranges_for(b)),
            "overrides": self.overrides,
            "warnings": [w.to_dict() for w in self.warnings],
        }


#: Device id of a record whose device text matched no device of the knowledge base.
UNRECOGNISED_DEVICE = "unrecognised"


def absent_when_order(
    findings: dict[str, DeviationFinding | ThresholdFinding | LesionFinding],
) -> tuple[list[str], list[list[str]]]:
    """The ids of the findings that have ``absent_when``, each after every such finding its condition
    reads (the order the reasoner completes them in), and the cycles found (each as a path that ends
    where it starts, e.g. ``[a, b, a]``; the loader rejects a knowledge base with any)."""
    deps = {
        fid: sorted(i for i in f.absent_when.condition.finding_ids() if i in findings and findings[i].absent_when)
        for fid, f in sorted(findings.items())
        if f.absent_when is not None
    }
    order: list[str] = []
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(fid: str, path: list[str]) -> None:
        if state.get(fid) == 2:
            return
        if state.get(fid) == 1:
            cycles.append([*path[path.index(fid):], fid])
            return
        state[fid] = 1
        for dep in deps[fid]:
            visit(dep, [*path, fid])
        state[fid] = 2
        order.append(fid)

    for fid in deps:
        visit(fid, [])
    return order, cycles


def snapshot_id_of(canonical_content: dict[str, Any]) -> str:
    """``kb-`` + the first 16 hex digits of SHA-256 over sorted-key compact JSON of the content."""
    blob = json.dumps(canonical_content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "kb-" + hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------


def _resolve_dirs(path_or_paths: str | os.PathLike | Iterable[str | os.PathLike] | None) -> list[Path]:
    if path_or_paths is None:
        env = os.environ.get(KB_ENV, "").strip()
        if env:
            return [Path(p).expanduser() for p in env.split(os.pathsep) if p.strip()]
        return [bundled_knowledge_base_dir()]
    if isinstance(path_or_paths, (str, os.PathLike)):
        return [Path(path_or_paths).expanduser()]
    dirs = [Path(p).expanduser() for p in path_or_paths]
    if not dirs:
        raise ValueError(
            "load_knowledge_base: an empty list of folders was given; pass None for the bundled one"
        )
    return dirs


def _yaml_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml"))


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _read_folders(
    dirs: list[Path], issues: list[KBIssue]
) -> tuple[list[_Entry], dict[str, list[tuple[dict, str]]]]:
    entries: list[_Entry] = []
    mappings: dict[str, list[tuple[dict, str]]] = {s: [] for s in MAPPING_SECTIONS}
    for fi, folder in enumerate(dirs):
        shown = _display(folder)
        if not folder.is_dir():
            issues.append(
                KBIssue(
                    shown,
                    "",
                    "knowledge-base folder not found",
                    "pass an existing folder (or unset GROK_KNOWLEDGE_BASE)",
                )
            )
            continue
        files = _yaml_files(folder)
        if not files:
            issues.append(
                KBIssue(
                    shown,
                    "",
                    "no .yaml files in this folder",
                    "point at a folder holding knowledge-base YAML files",
                )
            )
        for path in files:
            fname = _display(path)
            try:
                doc = yaml.safe_load(path.read_text(encoding="utf-8"))
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
                issues.append(
                    KBIssue(
                        fname,
                        where,
                        f"not valid YAML: {getattr(exc, 'problem', exc)}",
                        "fix the YAML syntax (indentation, a missing colon or quote)",
                    )
                )
                continue
            except (OSError, UnicodeDecodeError) as exc:
                issues.append(
                    KBIssue(fname, "", f"cannot read the file: {exc}", "make it readable UTF-8 text")
                )
                continue
            if doc is None:
                continue
            if not isinstance(doc, dict):
                issues.append(
                    KBIssue(
                        fname,
                        "",
                        "top level is not a mapping of section names",
                        f"start the file with one of the sections: {', '.join(ALL_SECTIONS)}",
                    )
                )
                continue
            for section, body in doc.items():
                if section not in ALL_SECTIONS:
                    issues.append(
                        KBIssue(
                            fname, str(section), "unknown section", f"use one of: {', '.join(ALL_SECTIONS)}"
                        )
                    )
                    continue
                if section in MAPPING_SECTIONS:
                    if not isinstance(body, dict):
                        issues.append(
                            KBIssue(
                                fname,
                                section,
                                "must be a mapping of keys to values",
                                f"write '{section}:' followed by indented 'key: value' lines",
                            )
                        )
                        continue
                    mappings[section].append((body, fname))
                    continue
                if not isinstance(body, list):
                    issues.append(
                        KBIssue(
                            fname,
                            section,
                            "must be a list of entries",
                            f"write each entry of '{section}' as '- id: ...'",
                        )
                    )
                    continue
                for i, raw in enumerate(body):
                    if not isinstance(raw, dict) or not isinstance(raw.get("id"), str) or not raw.get("id"):
                        issues.append(
                            KBIssue(
                                fname,
                                f"{section}[{i}]",
                                "entry without a string 'id'",
                                "give every entry an 'id: snake_case_name'",
                            )
                        )
                        continue
                    entries.append(_Entry(section, raw["id"], raw, fname, i, fi))
    return entries, mappings


def _loc_to_key(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _fix_for(err: dict[str, Any], model: Any) -> str:
    kind = err.get("type", "")
    loc = err.get("loc", ())
    last = str(loc[-1]) if loc else ""
    if kind == "missing":
        return f"add the key '{last}'"
    if kind == "extra_forbidden":
        allowed = ""
        fields = getattr(model, "model_fields", None)
        if fields and len(loc) == 1:
            allowed = "; allowed keys: " + ", ".join((f.alias or name) for name, f in fields.items())
        return f"remove '{last}' or correct its spelling{allowed}"
    if kind in ("literal_error", "enum"):
        return "use one of the values the message lists"
    if kind == "string_pattern_mismatch":
        return "ids are snake_case: lowercase letters, digits and underscores, starting with a letter"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return "set 'kind' to one of: deviation, threshold, lesion"
    if kind.startswith(("float", "int", "bool")):
        return "give a number" if not kind.startswith("bool") else "give true or false"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return "give a value inside the stated bound"
    if kind == "too_short":
        return "give at least one item"
    if kind == "value_error":
        return "correct the value as the message says"
    return _SCHEMA_HINT


def _validation_issues(exc: ValidationError, file: str, prefix: str, model: Any) -> list[KBIssue]:
    out = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        if loc and loc[0] in ("deviation", "threshold", "lesion"):  # discriminated-union tag in loc
            loc = loc[1:]
        key = prefix + ("." + _loc_to_key(loc) if loc else "")
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        out.append(KBIssue(file, key, msg, _fix_for(err, model)))
    return out


# ------------------------------------------------------------------------------------------------
# cross-reference checks
# ------------------------------------------------------------------------------------------------


class _Checker:
    def __init__(
        self,
        kb: KnowledgeBase,
        issues: list[KBIssue],
        warnings: list[KBIssue],
        invalid: set[tuple[str, str]] = frozenset(),
    ):
        self.kb, self.issues, self.warnings = kb, issues, warnings
        self.invalid = invalid  # (section, id) pairs already reported as schema errors

    def where(self, section: str, id_: str) -> str:
        return self.kb.origins.get(f"{section}:{id_}", "<merged>")

    def err(self, section: str, id_: str, key: str, msg: str, fix: str) -> None:
        self.issues.append(
            KBIssue(self.where(section, id_), f"{section}[id={id_}]{('.' + key) if key else ''}", msg, fix)
        )


    def _not_a_position(self, kb, section: str, item: str, biomarker: str, why: str, fix: str) -> None:
        """Report ``item`` of ``section`` when it refers to a position-valued biomarker (``why`` it cannot)."""
        b = kb.biomarkers.get(biomarker)
        if b is not None and b.value_kind == "position":
            self.err(section, item, "biomarker", f"{biomarker!r} is a position; {why}", fix)
    def warn(self, section: str, id_: str, key: str, msg: str, fix: str) -> None:
        self.warnings.append(
            KBIssue(
                self.where(section, id_),
                f"{section}[id={id_}]{('.' + key) if key else ''}",
                msg,
                fix,
                severity="warning",
            )
        )

    def ref(self, section: str, id_: str, key: str, value: str | None, target: str) -> None:
        if value is None:
            return
        pool = getattr(self.kb, target)
        if value not in pool and (target, value) not in self.invalid:
            similar = sorted(k for k in pool if k[:3] == value[:3]) or sorted(pool)
            hint = ", ".join(similar[:6])
            self.err(
                section,
                id_,
                key,
                f"{value!r} is not a known {target[:-1].replace('_', ' ')} id",
                f"use an id defined under '{target}:' (e.g. {hint}) or add one",
            )

    def _overlapping_bands(self) -> None:
        """Two ranges of one biomarker for the same device and sex must not have overlapping age
        bands: the reasoner could not tell which one applies."""
        by_key: dict[tuple[str, str, str], list] = {}
        for rid, r in sorted(self.kb.normative_ranges.items()):
            if r.age_band is None:
                continue
            for d in r.devices:
                by_key.setdefault((r.biomarker, d, r.sex), []).append(r)
        reported: set[tuple[str, str]] = set()
        for (bio, dev, sex), rs in sorted(by_key.items()):
            rs = sorted(rs, key=lambda r: (r.age_band.min_years, r.id))
            for a, b in pairwise(rs):
                if b.age_band.min_years < a.age_band.max_years and (a.id, b.id) not in reported:
                    reported.add((a.id, b.id))
                    self.err(
                        "normative_ranges",
                        b.id,
                        "age_band",
                        f"age band {b.age_band.min_years:g}-{b.age_band.max_years:g} y overlaps range {a.id} "
                        f"({a.age_band.min_years:g}-{a.age_band.max_years:g} y) for {bio}, device {dev}, sex {sex} "
                        f"(defined in {self.where('normative_ranges', a.id)})",
                        "make the bands meet without overlap (bands are [min_years, max_years)), or give the "
                        "ranges different devices or sexes",
                    )

    def run(self) -> None:
        kb = self.kb
        for bid, b in kb.biomarkers.items():
            self.ref("biomarkers", bid, "unit", b.unit, "units")
            for i, s in enumerate(b.sources):
                self.ref("biomarkers", bid, f"sources[{i}]", s, "sources")
        for lid, lt in kb.lesion_types.items():
            self.ref("lesion_types", lid, "count_biomarker", lt.count_biomarker, "biomarkers")
            self.ref("lesion_types", lid, "source", lt.source, "sources")
        with_range: set[str] = set()
        for rid, r in kb.normative_ranges.items():
            self.ref("normative_ranges", rid, "biomarker", r.biomarker, "biomarkers")
            self.ref("normative_ranges", rid, "source", r.source, "sources")
            for i, sid in enumerate(r.derived_sources):
                self.ref("normative_ranges", rid, f"derived_sources[{i}]", sid, "sources")
            for i, d in enumerate(r.devices):
                if d != "any":
                    self.ref("normative_ranges", rid, f"devices[{i}]", d, "devices")
            self._not_a_position(kb, "normative_ranges", rid, r.biomarker, "it has no normal range",
                                 "remove this range")
            with_range.add(r.biomarker)
        self._overlapping_bands()
        for bid, b in kb.biomarkers.items():
            if bid not in with_range and not b.no_normal_range_reason:
                self.err(
                    "biomarkers",
                    bid,
                    "no_normal_range_reason",
                    "biomarker has no normative range and does not say why",
                    "add a normative_ranges entry with its source, or set no_normal_range_reason",
                )
            elif bid in with_range and b.no_normal_range_reason:
                self.warn(
                    "biomarkers",
                    bid,
                    "no_normal_range_reason",
                    "biomarker has a normative range but still says why it has none (a stale reason)",
                    "remove no_normal_range_reason (or set it to null where a YAML anchor supplies it)",
                )
        for cid in CANONICAL_BIOMARKERS:
            if cid not in kb.biomarkers:
                self.issues.append(
                    KBIssue(
                        "<catalogue>",
                        f"biomarkers[id={cid}]",
                        "canonical biomarker id (grok.ids) missing from the catalogue",
                        "add a biomarkers entry with this id (or overlay on the bundled knowledge base)",
                    )
                )
        for fid, f in kb.findings.items():
            self.ref("findings", fid, "source", f.source, "sources")
            if f.absent_when is not None:
                self._expr("findings", fid, "absent_when.condition", f.absent_when.condition)
                self.ref("findings", fid, "absent_when.source", f.absent_when.source, "sources")
            if isinstance(f, LesionFinding):
                self.ref("findings", fid, "lesion_type", f.lesion_type, "lesion_types")
                continue
            self.ref("findings", fid, "biomarker", f.biomarker, "biomarkers")
            self._not_a_position(kb, "findings", fid, f.biomarker, "it cannot be graded",
                                 "point the finding at a scalar or count biomarker")
            if isinstance(f, ThresholdFinding):
                for ti, ts in enumerate(f.thresholds):
                    for di, d in enumerate(ts.devices):
                        if d != "any":
                            self.ref("findings", fid, f"thresholds[{ti}].devices[{di}]", d, "devices")
            if (
                isinstance(f, DeviationFinding)
                and f.biomarker in kb.biomarkers
                and f.biomarker not in with_range
            ):
                self.warn(
                    "findings",
                    fid,
                    "biomarker",
                    f"deviation finding on {f.biomarker!r}, which has no normative range: it is never "
                    "evaluated (reported as not evaluable)",
                    "add a normative_ranges entry for it (e.g. in an overlay folder)",
                )
        for cycle in absent_when_order(kb.findings)[1]:
            self.err(
                "findings",
                cycle[0],
                "absent_when.condition",
                f"absent_when conditions form a cycle: {' -> '.join(cycle)} (none of them could ever be decided)",
                "make the condition read findings decided by their own rules (a measurement, a count), not "
                "one that is itself absent only by a condition that reads this one",
            )
        for did, d in kb.diseases.items():
            for i, s in enumerate(d.sources):
                self.ref("diseases", did, f"sources[{i}]", s, "sources")
            for i, other in enumerate(d.rule_out):
                self.ref("diseases", did, f"rule_out[{i}]", other, "diseases")
            for part in ("supporting", "opposing"):
                for i, r in enumerate(getattr(d.differential, part)):
                    self._finding_ref("diseases", did, f"differential.{part}[{i}]", r.finding, r.min_grade)
                    if r.source is not None:
                        self.ref("diseases", did, f"differential.{part}[{i}].source", r.source, "sources")
            if d.differential.rule_out_if is not None:
                self._expr("diseases", did, "differential.rule_out_if", d.differential.rule_out_if)
            for si, st in enumerate(d.staging):
                self.ref("diseases", did, f"staging[{si}].source", st.source, "sources")
                for gi, stage in enumerate(st.stages):
                    self._expr("diseases", did, f"staging[{si}].stages[{gi}].when", stage.when)
            if d.differential.status_rule == "evidence" and not d.differential.supporting:
                self.err(
                    "diseases",
                    did,
                    "differential.supporting",
                    "no supporting findings",
                    "list the findings that support this category (or use status_rule: complement)",
                )
        for cat in canonical.CATEGORIES:
            if cat not in kb.diseases:
                self.issues.append(
                    KBIssue(
                        "<catalogue>",
                        f"diseases[id={cat}]",
                        "category of grok.ids.CATEGORIES missing",
                        "add a diseases entry for it",
                    )
                )
        self._cohort()

    def _finding_ref(self, section: str, id_: str, key: str, fid: str, min_grade: int) -> None:
        f = self.kb.findings.get(fid)
        if f is None:
            self.ref(section, id_, key + ".finding", fid, "findings")
            return
        top = _max_grade(f)
        if min_grade > top:
            self.err(
                section,
                id_,
                key + ".min_grade",
                f"finding {fid!r} has no grade {min_grade} (highest {top})",
                f"use a min_grade between 1 and {top}",
            )

    def _expr(self, section: str, id_: str, key: str, expr: Expr) -> None:
        if expr.finding is not None:
            self._finding_ref(section, id_, key, expr.finding, expr.min_grade)
        for i, sub in enumerate(expr.all or []):
            self._expr(section, id_, f"{key}.all[{i}]", sub)
        for i, sub in enumerate(expr.any or []):
            self._expr(section, id_, f"{key}.any[{i}]", sub)
        if expr.not_ is not None:
            self._expr(section, id_, f"{key}.not", expr.not_)

    def _cohort(self) -> None:
        kb = self.kb
        if not kb.cohort_labels and not kb.cohort_checks:
            return
        if kb.cohort is None:
            self.issues.append(
                KBIssue(
                    "<merged>",
                    "cohort",
                    "cohort_labels given but no 'cohort:' settings",
                    "add a 'cohort:' mapping (fields, laterality_coding, blood_pressure, priority)",
                )
            )
            return
        c = kb.cohort
        cfile = kb.origins.get("cohort", "<merged>")
        fields = set(c.fields)

        def need_field(section: str, id_: str, key: str, name: str | None) -> None:
            if name is not None and name not in fields:
                self.err(
                    section,
                    id_,
                    key,
                    f"logical field {name!r} is not in cohort.fields",
                    f"map it to a column under cohort.fields (known: {', '.join(sorted(fields))})",
                )

        for lid, lab in kb.cohort_labels.items():
            self.ref("cohort_labels", lid, "id", lid, "diseases")
            need_field("cohort_labels", lid, "laterality_field", lab.laterality_field)
            for i, ev in enumerate(lab.evidence):
                need_field("cohort_labels", lid, f"evidence[{i}].field", ev.field)
                self.ref("cohort_labels", lid, f"evidence[{i}].source", ev.source, "sources")
        for cid, chk in kb.cohort_checks.items():
            need_field("cohort_checks", cid, "field", chk.field)
            for i, f in enumerate(chk.fields):
                need_field("cohort_checks", cid, f"fields[{i}]", f)
            for i, lab in enumerate(chk.labels):
                self.ref("cohort_checks", cid, f"labels[{i}]", lab, "diseases")
            self.ref("cohort_checks", cid, "source", chk.source, "sources")
        for key, name in (
            ("laterality_source", c.laterality_source),
            ("source", c.source),
            ("blood_pressure.source", c.blood_pressure.source),
        ):
            if name not in kb.sources:
                self.issues.append(
                    KBIssue(
                        cfile,
                        f"cohort.{key}",
                        f"{name!r} is not a known source id",
                        "add it under 'sources:' or use an existing id",
                    )
                )
        for i, f in enumerate(c.blood_pressure.systolic_fields + c.blood_pressure.diastolic_fields):
            if f not in fields:
                self.issues.append(
                    KBIssue(
                        cfile,
                        f"cohort.blood_pressure[{i}]",
                        f"field {f!r} not in cohort.fields",
                        "map it under cohort.fields",
                    )
                )
        for i, p in enumerate(c.priority):
            if p not in kb.diseases:
                self.issues.append(
                    KBIssue(
                        cfile, f"cohort.priority[{i}]", f"{p!r} is not a disease id", "list disease ids only"
                    )
                )
        missing = sorted(set(kb.cohort_labels) - set(c.priority))
        if missing:
            self.issues.append(
                KBIssue(
                    cfile,
                    "cohort.priority",
                    f"labels missing from the priority order: {missing}",
                    "add every cohort label id to cohort.priority",
                )
            )
        if c.normal_label not in kb.diseases:
            self.issues.append(
                KBIssue(
                    cfile,
                    "cohort.normal_label",
                    f"{c.normal_label!r} is not a disease id",
                    "use the id of the normal category",
                )
            )
        codes = set(c.laterality_coding.values())
        if not {"OD", "OS"} <= codes:
            self.issues.append(
                KBIssue(
                    cfile,
                    "cohort.laterality_coding",
                    "must map codes to both OD and OS",
                    "e.g. {'1': OS, '2': OD, '3': both}",
                )
            )


def _max_grade(f: DeviationFinding | ThresholdFinding | LesionFinding) -> int:
    if isinstance(f, DeviationFinding):
        return len(f.grades)
    if isinstance(f, ThresholdFinding):
        return max(len(ts.grades) for ts in f.thresholds)
    return 1


# ------------------------------------------------------------------------------------------------
# public entry points
# ------------------------------------------------------------------------------------------------

_ADAPTERS = {s: TypeAdapter(m) for s, m in LIST_SECTIONS.items()}


def load_knowledge_base(
    path_or_paths: str | os.PathLike | Iterable[str | os.PathLike] | None = None,
) -> KnowledgeBase:
    """Load, merge and validate a knowledge base.

    Parameters
    ----------
    path_or_paths : str, Path, list of them, or None
        One folder, or folders to stack (later ones override/add entries by id). ``None`` uses the
        ``GROK_KNOWLEDGE_BASE`` environment variable (folders separated by ``os.pathsep``) if set,
        else the bundled ``knowledge_base/`` folder. To overlay your folder on ours, pass
        ``[bundled_knowledge_base_dir(), "my_kb"]``.

    Returns
    -------
    KnowledgeBase
        With ``snapshot_id`` set and non-fatal ``warnings`` listed.

    Raises
    ------
    KnowledgeBaseError
        Listing every problem, each naming the file, the key and the fix.
    """
    dirs = _resolve_dirs(path_or_paths)
    issues: list[KBIssue] = []
    warnings: list[KBIssue] = []
    entries, mappings = _read_folders(dirs, issues)

    chosen: dict[tuple[str, str], _Entry] = {}
    overrides: list[dict[str, str]] = []
    for e in entries:
        key = (e.section, e.id)
        prev = chosen.get(key)
        if prev is not None and prev.folder == e.folder:
            issues.append(
                KBIssue(
                    e.file,
                    f"{e.section}[id={e.id}]",
                    f"duplicate id (also defined in {prev.file}, {e.section}[{prev.index}])",
                    "rename one, or move the override to a later overlay folder",
                )
            )
            continue
        if prev is not None:
            overrides.append({"section": e.section, "id": e.id, "from": prev.file, "to": e.file})
        chosen[key] = e

    parsed: dict[str, dict[str, Any]] = {s: {} for s in LIST_SECTIONS}
    origins: dict[str, str] = {}
    invalid: set[tuple[str, str]] = set()
    for (section, id_), e in sorted(chosen.items()):
        try:
            parsed[section][id_] = _ADAPTERS[section].validate_python(e.raw)
        except ValidationError as exc:
            model = LIST_SECTIONS[section] if isinstance(LIST_SECTIONS[section], type) else None
            issues.extend(_validation_issues(exc, e.file, f"{section}[id={id_}]", model))
            invalid.add((section, id_))
            continue
        origins[f"{section}:{id_}"] = e.file

    mapped: dict[str, Any] = {}
    for section, model in MAPPING_SECTIONS.items():
        parts = mappings[section]
        if not parts:
            continue
        merged: dict[str, Any] = {}
        files = []
        for body, fname in parts:
            merged.update(body)
            files.append(fname)
        origins[section] = files[-1]
        try:
            mapped[section] = model.model_validate(merged)
        except ValidationError as exc:
            issues.extend(_validation_issues(exc, " + ".join(dict.fromkeys(files)), section, model))

    for section in _REQUIRED_SECTIONS:
        present = (
            mappings.get(section)
            if section in MAPPING_SECTIONS
            else any(e.section == section for e in entries)
        )
        if not present:
            issues.append(
                KBIssue(
                    ", ".join(_display(d) for d in dirs),
                    section,
                    "required section missing",
                    f"add a '{section}:' section to one of the YAML files",
                )
            )

    if (
        "kb" not in mapped and not issues
    ):  # pragma: no cover - a missing/invalid kb section is always an issue
        issues.append(KBIssue("<merged>", "kb", "invalid", _SCHEMA_HINT))

    kb = KnowledgeBase(
        info=mapped.get("kb") or KBInfo(name="<missing>", version="0"),
        cohort=mapped.get("cohort"),
        folders=[str(d) for d in dirs],
        origins=origins,
        overrides=overrides,
        **{s: parsed[s] for s in LIST_SECTIONS},
    )
    _Checker(kb, issues, warnings, invalid).run()
    if issues:
        raise KnowledgeBaseError(issues, warnings)
    kb.warnings = warnings
    kb.snapshot_id = snapshot_id_of(kb.to_canonical())
    return kb


def validate_knowledge_base(
    path_or_paths: str | os.PathLike | Iterable[str | os.PathLike] | None = None,
) -> tuple[KnowledgeBase | None, list[KBIssue], list[KBIssue]]:
    """Like :func:`load_knowledge_base` but returns ``(kb or None, errors, warnings)`` instead of raising."""
    try:
        kb = load_knowledge_base(path_or_paths)
    except KnowledgeBaseError as exc:
        return None, exc.issues, exc.warnings
    return kb, [], kb.warnings


__all__ = [
    "CANONICAL_BIOMARKERS",
    "KB_ENV",
    "Biomarker",
    "Device",
    "Disease",
    "KBIssue",
    "KnowledgeBase",
    "KnowledgeBaseError",
    "LesionType",
    "NormativeRange",
    "Unit",
    "absent_when_order",
    "bundled_knowledge_base_dir",
    "load_knowledge_base",
    "snapshot_id_of",
    "validate_knowledge_base",
]
