"""Study records (one per eye-visit) -> the facts that templates, prompts and the verifier share.

Run as: python -c "from grok.instruct.records import load_studies; print(len(load_studies('studies.jsonl')))"

A study record is the dict described in ``docs/instruct.md`` (study_id, patient_id, eye, label,
biomarkers, lesions, images, image_sizes, reasoning, provenance, ...). :class:`StudyFacts` turns one
into plain, template-ready values: every number already formatted with its unit, every qualitative
status taken from the reasoner, every lesion box already normalised. Templates only print these
values, which is what lets the verifier check every number and claim against the same record.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from grok.instruct.boxes import Box, normalise_box
from grok.knowledge import reason
from grok.knowledge.lexicon import Lexicon
from grok.knowledge.reasoner import finite_float

REQUIRED_FIELDS = ("study_id", "patient_id", "eye", "label", "biomarkers")
EYE_WORDS = {"OD": "right eye", "OS": "left eye"}
#: Biomarkers a report mentions first (when measured), in this order.
CORE_BIOMARKERS = (
    "macular_thickness_central_um", "macular_thickness_overall_um", "gcipl_thickness_um",
    "rnfl_peripapillary_mean_um", "cup_disc_ratio_vertical", "av_ratio", "drusen_volume_3mm_mm3",
    "srf_volume_nl", "irf_volume_nl", "ped_max_height_um", "subfoveal_choroidal_thickness_um",
)
#: Lesion types -> the words a row uses for them (CFP and OCT detector types).
LESION_WORDS = {
    "irf": "intraretinal fluid", "srf": "subretinal fluid", "ped": "pigment epithelial detachment",
    "drusen": "drusen", "hrf": "hyperreflective foci", "hemorrhage": "haemorrhage", "microaneurysm": "microaneurysm",
    "hard_exudate": "hard exudate", "cotton_wool_spot": "cotton-wool spot",
}


#: Biomarkers read as "present / absent" (volumes, heights, counts): biomarker -> (entity words, finding id).
PRESENCE_BIOMARKERS: dict[str, tuple[str, str]] = {
    "srf_volume_nl": ("subretinal fluid", "srf_present"),
    "irf_volume_nl": ("intraretinal fluid", "irf_present"),
    "ped_max_height_um": ("pigment epithelial detachment", "ped_present"),
    "drusen_volume_5mm_mm3": ("sub-RPE drusen", "drusen_present_oct"),
    "ez_disruption_fraction": ("ellipsoid zone disruption", "ez_disruption"),
    "hrf_count": ("hyperreflective foci", "hrf_present"),
    "microaneurysm_count": ("microaneurysms", "microaneurysms_present"),
    "hemorrhage_count": ("haemorrhages", "hemorrhages_present"),
    "hard_exudate_count": ("hard exudates", "hard_exudates_present"),
    "cotton_wool_spot_count": ("cotton-wool spots", "cotton_wool_spots_present"),
    "drusen_count": ("drusen on the photograph", "drusen_present_cfp"),
}


_PARENTHETICAL = re.compile(r"\s*\([^()]*\)")


def short_term(term: str) -> str:
    """A finding's term as a row names it: without the parenthetical glosses of the knowledge base
    ("drusen (sub-RPE deposits)" -> "drusen", "large drusen (over 125 µm)" -> "large drusen"), so that
    lists never nest parentheses; "(DME range)" becomes "in the DME range"."""
    term = term.replace(" (DME range)", " in the DME range")
    return _PARENTHETICAL.sub("", term).strip() if "(" in term else term


def distinct_terms(terms) -> list[str]:
    """``terms`` in order, each named once: a term another one already contains as whole words
    ("drusen" beside "large drusen") is dropped."""
    out: list[str] = []
    for t in dict.fromkeys(terms):
        padded = f" {t} "
        if any(padded in f" {o} " for o in terms if o != t and len(o) > len(t)):
            continue
        out.append(t)
    return out


def qualifier(term: str | None, name: str, cut_text: str | None) -> str | None:
    """What a finding's term adds to the biomarker it is about, without repeating its name:
    "markedly enlarged vertical cup-to-disc ratio" on the vertical cup-to-disc ratio -> "markedly
    enlarged"; a term that restates the biomarker ("drusen volume of at least 0.03 mm³ in the central
    3 mm") -> "at or above the 0.030 mm³ cut-off"."""
    if not term:
        return None
    t = short_term(term)
    core = _PARENTHETICAL.sub("", name).split(",")[0].strip().lower()
    if core and t.lower().endswith(core):
        return t[: len(t) - len(core)].strip(" ,") or None
    head = " ".join(core.split()[:2])
    if head and t.lower().startswith(head):
        return f"at or above the {cut_text} cut-off" if cut_text else None
    return t


class StudyError(ValueError):
    """A study record that cannot be used; the message names the field and the fix."""


def load_studies(path: str | Path) -> list[dict[str, Any]]:
    """Read study records from a ``.jsonl`` / ``.json`` (list) / ``.parquet`` file.

    Raises ``FileNotFoundError`` or ``StudyError`` naming the file and the fix.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: study records not found (pass the studies JSONL/parquet written by the "
                                "records stage)")
    if p.suffix == ".parquet":
        rows = pq.read_table(p).to_pylist()
        for r in rows:  # nested dicts may arrive JSON-encoded from other writers
            for k in ("biomarkers", "quality", "images", "image_sizes", "reasoning", "provenance"):
                if isinstance(r.get(k), str):
                    r[k] = json.loads(r[k])
            if isinstance(r.get("lesions"), str):
                r["lesions"] = json.loads(r["lesions"])
        return rows
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, list):
            raise StudyError(f"{p}: expected a JSON list of study records (or use .jsonl, one record per line)")
        return data
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise StudyError(f"{p}:{i}: not valid JSON ({exc.msg}); each line must be one study record") from exc
    return rows


def check_record(rec: Any, disease_ids) -> list[str]:
    """Problems that make ``rec`` unusable (empty when it can be used)."""
    if not isinstance(rec, dict):
        return [f"record is a {type(rec).__name__}, not a mapping"]
    out = [f"missing field {k!r}" for k in REQUIRED_FIELDS if rec.get(k) in (None, "")]
    if rec.get("eye") not in (None, "") and rec.get("eye") not in EYE_WORDS:
        out.append(f"eye {rec.get('eye')!r} must be 'OD' or 'OS'")
    if rec.get("label") not in (None, "") and rec.get("label") not in disease_ids:
        out.append(f"label {rec.get('label')!r} is not a disease of the knowledge base ({', '.join(sorted(disease_ids))})")
    if rec.get("biomarkers") is not None and not isinstance(rec.get("biomarkers"), dict):
        out.append("biomarkers must be a mapping of canonical id -> value")
    return out


def fmt_value(value: float, decimals: int) -> str:
    """``value`` with the knowledge base's number of decimals (no thousands separators)."""
    return f"{value:.{max(0, decimals)}f}"


def fmt_with_unit(value: float, decimals: int, symbol: str) -> str:
    return f"{fmt_value(value, decimals)} {symbol}".rstrip()


@dataclass
class BiomarkerFact:
    """One measured biomarker, ready to print: value text with unit, reasoner status, range."""

    id: str
    name: str
    value: float
    unit: str
    symbol: str
    text: str
    status: str | None  # "low" | "high" | "normal" | None (no range or rule decides it)
    term: str | None  # the reasoner's qualitative term when a finding is present
    low_text: str | None = None  # 5th percentile of the normative range, with unit
    high_text: str | None = None  # 95th percentile
    references: list[float] = field(default_factory=list)
    #: The knowledge-base cut the present finding applies (with unit), when it is an absolute one.
    cut_text: str | None = None

    @property
    def qual(self) -> str | None:
        """The qualitative reading as a row writes it after the name ("markedly enlarged"), never
        repeating the biomarker's name; None when there is no finding term."""
        return qualifier(self.term, self.name, self.cut_text)

    @property
    def has_range(self) -> bool:
        return self.low_text is not None and self.high_text is not None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("id", "name", "value", "unit", "symbol", "text", "status", "term",
                                               "low_text", "high_text", "has_range")}


@dataclass
class StudyFacts:
    """Everything a row may say about one study, derived from the record and its reasoning."""

    study_id: str
    patient_id: str
    eye: str
    eye_words: str
    age_years: float | None
    sex: str | None
    device: str
    label: str
    label_name: str
    label_status: str | None
    biomarkers: dict[str, BiomarkerFact]
    finding_state: dict[str, str]  # finding id -> present | absent | not_evaluable
    findings: list[dict[str, Any]]  # present findings (abnormal first)
    absent: list[str]
    differential: list[dict[str, Any]]
    stage: str | None
    images: dict[str, str]
    image_sizes: dict[str, list[float]]
    boxes: dict[str, list[Box]]  # image role -> normalised boxes (lesions + optic disc)
    kb_snapshot: str
    provenance: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    #: Lengths in µm the record measures outside ``biomarkers`` (lesion diameters): valid sources.
    lesion_lengths_um: list[float] = field(default_factory=list)
    #: Knowledge-base cut-offs in µm that finding terms quote (drusen size classes): valid references.
    kb_lengths_um: list[float] = field(default_factory=list)
    #: How the text names the acquisition device ("Spectralis"); empty for unknown / generic devices.
    device_name: str = ""
    #: Values derived from these facts once and reused for every row of the study (verifier lookups).
    memo: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def presence(self) -> list[dict[str, Any]]:
        """Present/absent statements the reasoner supports, in :data:`PRESENCE_BIOMARKERS` order."""
        out = []
        for bid, (entity, fid) in PRESENCE_BIOMARKERS.items():
            b = self.biomarkers.get(bid)
            st = self.finding_state.get(fid)
            if b is None or st not in ("present", "absent"):
                continue
            out.append({"biomarker": bid, "entity": entity, "state": st, "fact": b,
                        "is_count": b.unit == "count"})
        return out

    @property
    def age_text(self) -> str | None:
        return None if self.age_years is None else f"{int(round(self.age_years))}"

    @property
    def person(self) -> str:
        who = {"F": "woman", "M": "man"}.get(self.sex or "", "person")
        return f"{self.age_text}-year-old {who}" if self.age_text else who

    @property
    def a_person(self) -> str:
        """``person`` with its indefinite article ("an 80-year-old man", "a 63-year-old woman")."""
        age = None if self.age_text is None else int(self.age_text)
        an = age is not None and (age in (8, 11, 18) or 80 <= age <= 89)
        return ("an " if an else "a ") + self.person

    def to_dict(self) -> dict[str, Any]:
        return {"study_id": self.study_id, "eye": self.eye, "label": self.label,
                "biomarkers": {k: v.to_dict() for k, v in self.biomarkers.items()},
                "finding_state": self.finding_state, "findings": self.findings,
                "differential": self.differential, "stage": self.stage,
                "boxes": {k: [b.to_dict() for b in v] for k, v in self.boxes.items()}}


#: knowledge-base snapshot id -> (biomarker -> ids of the findings about it, biomarker -> its absolute
#: cut-offs, the lesion diameters the findings use as cut-offs)
_KB_INDEX: dict[str, tuple[dict[str, list[str]], dict[str, list[float]], list[float]]] = {}


def _kb_index(kb) -> tuple[dict[str, list[str]], dict[str, list[float]], list[float]]:
    """What study facts look up in the knowledge base's findings, built once per snapshot (not once per study
    and biomarker): the findings that read each biomarker, every absolute cut applied to it, and the lesion
    diameters used as cut-offs."""
    idx = _KB_INDEX.get(kb.snapshot_id) if kb.snapshot_id else None
    if idx is None:
        rules: dict[str, list[str]] = {}
        cuts: dict[str, list[float]] = {}
        lengths: set[float] = set()
        for fid, f in kb.findings.items():
            for attr in ("min_diameter_um", "max_diameter_um"):
                v = finite_float(getattr(f, attr, None))
                if v is not None:
                    lengths.add(v)
            bid = getattr(f, "biomarker", None)
            if bid is None:
                continue
            rules.setdefault(bid, []).append(fid)
            for ts in getattr(f, "thresholds", []) or []:
                cuts.setdefault(bid, []).extend(float(g.cut) for g in ts.grades)
        idx = (rules, cuts, sorted(lengths))
        if kb.snapshot_id:
            _KB_INDEX[kb.snapshot_id] = idx
    return idx


def _biomarker_facts(rec: dict, reasoning: dict, kb, lex: Lexicon) -> dict[str, BiomarkerFact]:
    meas = {m["biomarker"]: m for m in reasoning.get("measurements", [])}
    by_bm: dict[str, list[dict]] = {}
    for f in reasoning.get("findings", []):
        if f.get("biomarker"):
            by_bm.setdefault(f["biomarker"], []).append(f)
    absent = set(reasoning.get("absent", []))
    rules_of, cuts_of, _ = _kb_index(kb)
    out: dict[str, BiomarkerFact] = {}
    for bid, raw in (rec.get("biomarkers") or {}).items():
        b = kb.biomarkers.get(bid)
        if b is None or b.value_kind == "position":
            continue
        v = finite_float(raw)
        if v is None:
            continue
        sym = lex.unit_symbols.get(b.unit, "")
        status, term = None, None
        present = [f for f in by_bm.get(bid, []) if f.get("abnormal", True)]
        kb_dirs = {getattr(kb.findings[f["id"]], "direction", None) for f in present if f["id"] in kb.findings}
        m = meas.get(bid)
        rng = (m or {}).get("normal_range") or None
        if present:
            status = "low" if kb_dirs == {"low"} else "high" if kb_dirs == {"high"} else None
            term = present[0].get("term")
        elif m is not None and m.get("within_normal") is True:
            status = "normal"
        elif m is not None and m.get("within_normal") is False and m.get("percentile") is not None:
            status = "low" if m["percentile"] < 5 else "high"
        else:
            rules = rules_of.get(bid, [])
            if rules and all(fid in absent for fid in rules):
                status = "normal"
        refs: list[float] = []
        low_text = high_text = cut_text = None
        if present and "percentile" not in (present[0].get("threshold") or {}):
            cut = finite_float((present[0].get("threshold") or {}).get("value"))
            if cut is not None:
                cut_text = fmt_with_unit(cut, b.decimals, sym)
        if rng:
            for key in ("p5", "p95", "mean"):
                if finite_float(rng.get(key)) is not None:
                    refs.append(float(rng[key]))
            if finite_float(rng.get("p5")) is not None and finite_float(rng.get("p95")) is not None:
                low_text = fmt_with_unit(rng["p5"], b.decimals, sym)
                high_text = fmt_with_unit(rng["p95"], b.decimals, sym)
        for f in by_bm.get(bid, []):
            th = f.get("threshold") or {}
            if finite_float(th.get("value")) is not None:
                refs.append(float(th["value"]))
        refs.extend(cuts_of.get(bid, ()))  # every absolute cut the knowledge base applies to this biomarker
        out[bid] = BiomarkerFact(bid, lex.display_name(bid), v, b.unit, sym, fmt_with_unit(v, b.decimals, sym),
                                 status, term, low_text, high_text, sorted(set(refs)), cut_text)
    return out


def _boxes(rec: dict, problems: list[str]) -> dict[str, list[Box]]:
    sizes = rec.get("image_sizes") or {}
    out: dict[str, list[Box]] = {}
    for i, les in enumerate(rec.get("lesions") or []):
        role = les.get("image")
        if role not in sizes:
            problems.append(f"lesions[{i}] refers to image {role!r} without an image_sizes entry; box not used")
            continue
        word = LESION_WORDS.get(les.get("type"), str(les.get("type", "lesion")).replace("_", " "))
        try:
            out.setdefault(role, []).append(normalise_box(les.get("box_xyxy_px") or [], sizes[role], word))
        except ValueError as exc:
            problems.append(f"lesions[{i}]: {exc}; box not used")
    bm = rec.get("biomarkers") or {}
    c, d = bm.get("disc_center_xy_px"), finite_float(bm.get("disc_diameter_px"))
    if "cfp" in sizes and isinstance(c, (list, tuple)) and len(c) == 2 and d and all(finite_float(x) is not None for x in c):
        x, y = float(c[0]), float(c[1])
        try:
            out.setdefault("cfp", []).append(normalise_box([x - d / 2, y - d / 2, x + d / 2, y + d / 2], sizes["cfp"],
                                                           "optic disc"))
        except ValueError as exc:
            problems.append(f"optic disc box: {exc}")
    return out


def _usable_images(rec: dict) -> dict[str, str]:
    images = dict(rec.get("images") or {})
    grade = (((rec.get("quality") or {}).get("cfp") or {}).get("grade"))
    if grade == "reject":
        images.pop("cfp", None)
    return {k: str(v) for k, v in images.items() if v}


def lower_first(text: str) -> str:
    """Lower-case the first letter unless the first word is an acronym (``OCT``, ``GCIPL``)."""
    first = text.split(" ", 1)[0]
    if len(first) > 1 and first[:2].isupper():
        return text
    return text[:1].lower() + text[1:]


def disease_mid(name: str) -> str:
    """A disease name as written mid-sentence: lower-case first letter except for eponyms."""
    return name if name.startswith(("Alzheimer", "Parkinson")) else lower_first(name)


def _device_name(device: Any, kb) -> str:
    """The knowledge base's short name of a resolved device id; empty when the device is unknown,
    unrecognised or generic (text then names no device rather than an id)."""
    d = kb.devices.get(str(device or ""))
    if d is None or d.id == "generic":
        return ""
    return d.short_name or d.name


def _ref_phrase(ref: dict, kb) -> str:
    """How a supporting finding is named: the finding's name for deviations (the grade term alone,
    e.g. "thickened", would not say what is thickened), else the reasoner's term."""
    f = kb.findings.get(ref.get("finding"))
    if f is not None and ref.get("when") == "absent":
        return "no " + short_term(lower_first(f.name))
    if f is not None and (getattr(f, "kind", None) == "deviation" or any(ch.isdigit() for ch in ref["term"])):
        return short_term(lower_first(f.name))  # a grade word alone, or a restated cut-off, says too little or too much
    return short_term(ref["term"])


def build_facts(rec: dict[str, Any], kb, lex: Lexicon) -> StudyFacts:
    """:class:`StudyFacts` of one study record. Computes the reasoning when the record lacks it.

    Raises :class:`StudyError` when the record cannot be used (missing fields, unknown label).
    """
    problems = check_record(rec, kb.diseases)
    if problems:
        raise StudyError("; ".join(problems))
    reasoning = rec.get("reasoning")
    if not isinstance(reasoning, dict) or "findings" not in reasoning:
        reasoning = reason({**rec, "laterality": rec["eye"]}, kb).to_dict()
    notes: list[str] = []
    bms = _biomarker_facts(rec, reasoning, kb, lex)
    state: dict[str, str] = {f["id"]: "present" for f in reasoning.get("findings", [])}
    state.update({fid: "absent" for fid in reasoning.get("absent", [])})
    state.update({n["finding"]: "not_evaluable" for n in reasoning.get("not_evaluable", [])})
    diff = []
    stage = None
    for d in reasoning.get("differential", []):
        absent_support = []
        disease = kb.diseases.get(d["id"])
        if disease is not None:
            for ref in disease.differential.supporting:
                if ref.when == "present" and state.get(ref.finding) == "absent":
                    name = short_term(kb.findings[ref.finding].name)
                    if name not in absent_support:
                        absent_support.append(name)
        dname = lex.disease_names.get(d["id"], d.get("name", d["id"]))
        entry = {"id": d["id"], "name": dname, "name_mid": disease_mid(dname),
                 "status": d.get("status"),
                 "supporting": distinct_terms([_ref_phrase(s, kb) for s in d.get("supporting", [])]),
                 "opposing": distinct_terms([_ref_phrase(s, kb) for s in d.get("opposing", [])]),
                 "absent_support": absent_support, "is_label": d["id"] == rec["label"],
                 "considers": list(disease.rule_out) if disease is not None else []}
        diff.append(entry)
        if d["id"] == rec["label"]:
            for st in d.get("staging", []):
                if st.get("name"):
                    stage = st["name"]
                    break
    label_status = next((d["status"] for d in diff if d["is_label"]), None)
    sex = rec.get("sex") if rec.get("sex") in ("F", "M") else None
    return StudyFacts(
        study_id=str(rec["study_id"]), patient_id=str(rec["patient_id"]), eye=rec["eye"],
        eye_words=EYE_WORDS[rec["eye"]], age_years=finite_float(rec.get("age_years")), sex=sex,
        device=str(rec.get("device") or "generic"), device_name=_device_name(rec.get("device"), kb), label=rec["label"],
        label_name=lex.disease_names.get(rec["label"], rec["label"]), label_status=label_status,
        biomarkers=bms, finding_state=state,
        findings=[{"id": f["id"], "name": f["name"], "term": f["term"], "biomarker": f.get("biomarker"),
                   "abnormal": f.get("abnormal", True)} for f in reasoning.get("findings", [])],
        absent=sorted(reasoning.get("absent", [])), differential=diff, stage=stage,
        images=_usable_images(rec), image_sizes={k: list(v) for k, v in (rec.get("image_sizes") or {}).items()},
        boxes=_boxes(rec, notes), kb_snapshot=str(reasoning.get("kb_snapshot_id") or kb.snapshot_id),
        provenance=dict(rec.get("provenance") or {}), problems=notes,
        lesion_lengths_um=sorted({float(d) for les in rec.get("lesions") or [] if isinstance(les, dict)
                                  for d in [finite_float(les.get("diameter_um"))] if d is not None}),
        kb_lengths_um=list(_kb_index(kb)[2]),
    )
