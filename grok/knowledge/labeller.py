"""Cohort labelling: a participant table (UK Biobank-style fields) -> eye-level multi-labels.

Run as: grok label COHORT.csv --out labels.parquet [--json]

All rules live in the knowledge base (``cohort``, ``cohort_labels``, ``cohort_checks`` sections);
column names are mapped there too, so another cohort needs YAML, not code. For each row:

* each label fires when any of its evidence rules holds (ICD-10 prefixes, self-report codes, eye
  problem codes, diagnosis ages, a doctor's diagnosis, medication, mean blood pressure);
* a label with a laterality field goes to the eye(s) that field codes; unknown laterality puts it on
  both eyes and lists the field in ``missing_fields``; labels without laterality apply to both eyes;
* consistency checks report contradictions in ``conflicts`` (positive evidence still labels; nothing
  is silently fixed or guessed);
* ``normal`` is given only when no label fired and there is no conflict; ``primary_label`` is the
  first label in ``cohort.priority`` (``None`` when nothing fired but conflicts exist).

Output: one row per participant visit x eye (OD, OS) with ``patient_id`` (pseudonymised), ``visit``,
``eye``, ``labels``, ``primary_label``, ``rules`` (which rule fired, on which field and value),
``conflicts``, ``missing_fields``, ``label_<id>`` flags and ``kb_snapshot_id``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from grok.knowledge.loader import KnowledgeBase, load_knowledge_base
from grok.knowledge.models import CohortCheck, CohortLabel, CohortSettings, Evidence
from grok.knowledge.reasoner import finite_float
from grok.privacy.pseudonyms import pseudonymise_patient_id

EYES = ("OD", "OS")
_MISSING_COLUMN = object()


def default_pseudonymise(original: str) -> str:
    """Keyed pseudonym of a patient id, identical to the ingest's (HMAC-SHA256 with the secret in
    ``GROK_PSEUDONYM_KEY``, :mod:`grok.privacy.pseudonyms`), so labels join the manifest on ``patient_id``."""
    return pseudonymise_patient_id(original)


# ------------------------------------------------------------------------------------------------
# value normalisation
# ------------------------------------------------------------------------------------------------


def _empty(v: Any) -> bool:
    if v is None or v is _MISSING_COLUMN:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    try:
        if pd.isna(v) is True:
            return True
    except (TypeError, ValueError):
        pass
    return isinstance(v, str) and v.strip() == ""


def _text(v: Any) -> str:
    """A code as text: 5.0 -> '5', ' H35.3 ' -> 'H35.3'."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    s = str(v).strip()
    try:
        f = float(s)
        if f.is_integer() and "." in s and not any(c.isalpha() for c in s):
            return str(int(f))
    except ValueError:
        pass
    return s


def _icd(code: str) -> str:
    return code.upper().replace(".", "").replace(" ", "")


class _Row:
    def __init__(self, raw: dict[str, Any], settings: CohortSettings, columns: set[str]):
        self.raw, self.s, self.columns = raw, settings, columns
        self.missing: list[str] = []

    def column(self, field: str) -> str:
        return self.s.fields[field]

    def get(self, field: str) -> Any:
        col = self.column(field)
        if col not in self.columns:
            self._miss(col)
            return _MISSING_COLUMN
        return self.raw.get(col)

    def codes(self, field: str) -> list[str] | None:
        v = self.get(field)
        if v is _MISSING_COLUMN:
            return None
        if _empty(v):
            return []
        if isinstance(v, (list, tuple)):
            parts = [_text(x) for x in v if not _empty(x)]
        else:
            parts = [_text(p) for p in str(v).split(self.s.list_separator)]
        return [p for p in parts if p]

    def _miss(self, name: str) -> None:
        if name not in self.missing:
            self.missing.append(name)


# ------------------------------------------------------------------------------------------------
# evidence and checks
# ------------------------------------------------------------------------------------------------


def _blood_pressure(row: _Row) -> dict[str, Any]:
    bp = row.s.blood_pressure

    def readings(fields: list[str]) -> list[float | None]:
        out = []
        for f in fields:
            v = row.get(f)
            n = None if v is _MISSING_COLUMN else finite_float(v)
            out.append(n if n is not None and n > 0 else None)
        return out

    sys_r, dia_r = readings(bp.systolic_fields), readings(bp.diastolic_fields)
    sys_v = [x for x in sys_r if x is not None]
    dia_v = [x for x in dia_r if x is not None]
    return {
        "systolic": sys_r,
        "diastolic": dia_r,
        "mean_systolic": sum(sys_v) / len(sys_v) if sys_v else None,
        "mean_diastolic": sum(dia_v) / len(dia_v) if dia_v else None,
        "n_systolic": len(sys_v),
        "n_diastolic": len(dia_v),
    }


def _evidence(ev: Evidence, row: _Row, bp: dict[str, Any]) -> dict[str, Any] | None:
    """The rule record if ``ev`` holds for ``row``, else ``None``."""
    s = row.s
    if ev.kind == "blood_pressure":
        rule = s.blood_pressure
        if bp["n_systolic"] == 0 and bp["n_diastolic"] == 0:
            for f in rule.systolic_fields + rule.diastolic_fields:
                row._miss(row.column(f))
            return None
        parts, hit = [], False
        limits = (("systolic", rule.systolic_threshold_mmhg), ("diastolic", rule.diastolic_threshold_mmhg))
        for side, limit in limits:
            mean = bp[f"mean_{side}"]
            if mean is None:
                continue
            ok = mean >= limit
            hit |= ok
            parts.append(f"mean {side} {mean:.1f} mmHg of {bp[f'n_{side}']} reading(s) "
                         f"{'>=' if ok else '<'} {limit:g}")
        if not hit:
            return None
        value = (
            (f"{bp['mean_systolic']:.1f}" if bp["mean_systolic"] is not None else "NA")
            + "/"
            + (f"{bp['mean_diastolic']:.1f}" if bp["mean_diastolic"] is not None else "NA")
        )
        return {"rule": ev.id, "field": "blood_pressure", "value": value, "explanation": "; ".join(parts)}
    col = row.column(ev.field)
    if ev.kind in ("code_prefix", "code_equals"):
        codes = row.codes(ev.field)
        if not codes:
            return None
        if ev.kind == "code_prefix":
            wanted = [_icd(c) for c in ev.codes]
            hits = [c for c in codes if any(_icd(c).startswith(w) for w in wanted)]
        else:
            wanted = {_text(c) for c in ev.codes}
            hits = [c for c in codes if c in wanted]
        if not hits:
            return None
        return {
            "rule": ev.id,
            "field": col,
            "value": ";".join(hits),
            "explanation": f"{col} holds {', '.join(hits)}: {ev.description or ev.id}",
        }
    v = row.get(ev.field)
    if v is _MISSING_COLUMN:
        return None
    if ev.kind == "positive_number":
        n = finite_float(v)
        if n is None or n <= 0:
            return None
        return {
            "rule": ev.id,
            "field": col,
            "value": f"{n:g}",
            "explanation": f"{col} = {n:g}: {ev.description or ev.id}",
        }
    # equals: a yes/no question; empty means unknown
    if _empty(v):
        row._miss(col)
        return None
    if _text(v) != _text(ev.value):
        return None
    return {
        "rule": ev.id,
        "field": col,
        "value": _text(v),
        "explanation": f"{col} = {_text(v)}: {ev.description or ev.id}",
    }


def _laterality(lab: CohortLabel, row: _Row) -> tuple[set[str], str | None, str]:
    """Eyes a fired label applies to, the coded value (or None) and how it was decided."""
    if lab.laterality_field is None:
        return set(EYES), None, "no laterality field: both eyes"
    v = row.get(lab.laterality_field)
    col = row.column(lab.laterality_field)
    if v is _MISSING_COLUMN or _empty(v):
        row._miss(col)
        return set(EYES), None, f"{col} empty: laterality unknown, both eyes"
    code = _text(v)
    side = row.s.laterality_coding.get(code)
    if side is None:
        row._miss(col)
        return set(EYES), code, f"{col} = {code} is not a laterality code: laterality unknown, both eyes"
    eyes = set(EYES) if side == "both" else {side}
    return eyes, code, f"{col} = {code} ({side})"


def _check(
    chk: CohortCheck,
    row: _Row,
    fired: dict[str, list[dict[str, Any]]],
    kb: KnowledgeBase,
    bp: dict[str, Any],
    age: float | None,
) -> list[str]:
    out: list[str] = []
    if chk.kind == "exclusive_code":
        codes = row.codes(chk.field) or []
        if _text(chk.code) in codes and len(codes) > 1:
            out.append(
                f"{chk.id}: {row.column(chk.field)} = '{';'.join(codes)}' has {chk.code} with other codes"
            )
    elif chk.kind == "negates_labels":
        hit = False
        if chk.code is not None:
            hit = _text(chk.code) in (row.codes(chk.field) or [])
        else:
            v = row.get(chk.field)
            hit = v is not _MISSING_COLUMN and not _empty(v) and _text(v) == _text(chk.value)
        contradicted = [lab for lab in chk.labels if lab in fired]
        if hit and contradicted:
            shown = chk.code if chk.code is not None else chk.value
            out.append(f"{chk.id}: {row.column(chk.field)} = {shown} contradicts {', '.join(contradicted)}")
    elif chk.kind == "age_not_after":
        if age is not None:
            for f in chk.fields:
                v = row.get(f)
                n = None if v is _MISSING_COLUMN else finite_float(v)
                if n is not None and n > 0 and n > age:
                    out.append(f"{chk.id}: {row.column(f)} = {n:g} is after age_years = {age:g}")
    elif chk.kind == "laterality_without_label":
        for lid, lab in sorted(kb.cohort_labels.items()):
            if lab.laterality_field is None or lid in fired:
                continue
            v = row.get(lab.laterality_field)
            if v is _MISSING_COLUMN or _empty(v):
                continue
            if _text(v) in row.s.laterality_coding:
                out.append(f"{chk.id}: {row.column(lab.laterality_field)} = {_text(v)} but no {lid} evidence")
    elif chk.kind == "diastolic_below_systolic":
        for s_val, d_val, s_f, d_f in zip(
            bp["systolic"],
            bp["diastolic"],
            row.s.blood_pressure.systolic_fields,
            row.s.blood_pressure.diastolic_fields,
        ):
            if s_val is not None and d_val is not None and d_val >= s_val:
                out.append(
                    f"{chk.id}: {row.column(d_f)} = {d_val:g} is not below {row.column(s_f)} = {s_val:g}"
                )
    return out


# ------------------------------------------------------------------------------------------------
# entry points
# ------------------------------------------------------------------------------------------------


def read_cohort(path: str | os.PathLike) -> pd.DataFrame:
    """Read a cohort table (``.csv`` as text columns, empty cells as ``""``; ``.parquet``)."""
    p = Path(path)
    if p.suffix.lower() == ".parquet":
        return pd.read_parquet(p)
    if p.suffix.lower() in (".csv", ".txt", ".tsv"):
        return pd.read_csv(
            p, dtype=str, keep_default_na=False, sep="\t" if p.suffix.lower() == ".tsv" else ","
        )
    raise ValueError(f"{p}: cohort tables must be .csv, .tsv or .parquet")


def label_cohort(
    df: pd.DataFrame,
    kb: KnowledgeBase | None = None,
    *,
    pseudonymise: Callable[[str], str] | None = None,
) -> pd.DataFrame:
    """Eye-level labels for every row of a cohort table.

    Parameters
    ----------
    df : pandas.DataFrame
        One row per participant visit; columns named as in the knowledge base's ``cohort.fields``.
        Missing columns are reported per row in ``missing_fields``, never guessed.
    kb : KnowledgeBase, optional
        Default: :func:`grok.knowledge.load_knowledge_base` with no argument.
    pseudonymise : callable, optional
        Original patient id -> pseudonym. Default :func:`default_pseudonymise` (the ingest's keyed HMAC).

    Returns
    -------
    pandas.DataFrame
        Two rows (OD, OS) per input row; columns described in the module docstring.
    """
    kb = kb or load_knowledge_base()
    if kb.cohort is None or not kb.cohort_labels:
        raise ValueError("the knowledge base has no cohort rules ('cohort:' and 'cohort_labels:' sections)")
    settings = kb.cohort
    pseudo = pseudonymise or default_pseudonymise
    columns = set(map(str, df.columns))
    label_ids = list(settings.priority)
    flag_ids = label_ids + [settings.normal_label]
    out_rows: list[dict[str, Any]] = []

    for raw in df.to_dict("records"):
        raw = {str(k): v for k, v in raw.items()}
        row = _Row(raw, settings, columns)
        pid_raw = row.get("patient_id")
        conflicts: list[str] = []
        if pid_raw is _MISSING_COLUMN or _empty(pid_raw):
            pid = None
            conflicts.append(
                f"patient_id: {settings.fields['patient_id']} is empty; row cannot be pseudonymised"
            )
        else:
            pid = pseudo(_text(pid_raw))
        visit_v = row.get("visit")
        visit = None if visit_v is _MISSING_COLUMN else finite_float(visit_v)
        for f in ("sex", "age_years"):
            v = row.get(f)
            if v is not _MISSING_COLUMN and _empty(v):
                row._miss(settings.fields[f])
        age_v = row.get("age_years")
        age = None if age_v is _MISSING_COLUMN else finite_float(age_v)

        bp = _blood_pressure(row)
        fired: dict[str, list[dict[str, Any]]] = {}
        for lid in label_ids:
            lab = kb.cohort_labels.get(lid)
            if lab is None:
                continue
            hits = [h for ev in lab.evidence if (h := _evidence(ev, row, bp)) is not None]
            if hits:
                fired[lid] = hits
        eyes_of: dict[str, tuple[set[str], str]] = {}
        for lid in fired:
            eyes, _, how = _laterality(kb.cohort_labels[lid], row)
            eyes_of[lid] = (eyes, how)
        for _, chk in sorted(kb.cohort_checks.items()):
            conflicts.extend(_check(chk, row, fired, kb, bp, age))

        for eye in EYES:
            labels = [lid for lid in label_ids if lid in fired and eye in eyes_of[lid][0]]
            rules: list[dict[str, Any]] = []
            for lid in labels:
                for h in fired[lid]:
                    rules.append(
                        {
                            "label": lid,
                            "rule": h["rule"],
                            "field": h["field"],
                            "value": h["value"],
                            "explanation": f"{h['explanation']} [{eyes_of[lid][1]}]",
                        }
                    )
            if labels:
                primary = labels[0]
            elif not conflicts:
                labels = [settings.normal_label]
                primary = settings.normal_label
                rules.append(
                    {
                        "label": settings.normal_label,
                        "rule": "normal",
                        "field": None,
                        "value": None,
                        "explanation": "no category rule fired for this eye and no conflict",
                    }
                )
            else:
                primary = None
            rec = {
                "patient_id": pid,
                "visit": None if visit is None else int(visit),
                "eye": eye,
                "labels": labels,
                "primary_label": primary,
                "rules": rules,
                "conflicts": list(conflicts),
                "missing_fields": sorted(row.missing),
                "kb_snapshot_id": kb.snapshot_id,
            }
            for lid in flag_ids:
                rec[f"label_{lid}"] = lid in labels
            out_rows.append(rec)

    cols = [
        "patient_id",
        "visit",
        "eye",
        "labels",
        "primary_label",
        "rules",
        "conflicts",
        "missing_fields",
        *[f"label_{lid}" for lid in flag_ids],
        "kb_snapshot_id",
    ]
    # object columns keep None as None (pandas' inferred string dtype would turn it into NaN)
    out = pd.DataFrame({c: pd.Series([r[c] for r in out_rows], dtype=object) for c in cols})
    out["visit"] = out["visit"].astype("Int64")
    for lid in flag_ids:
        out[f"label_{lid}"] = out[f"label_{lid}"].astype(bool)
    return out


def write_labels(labels: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a labels table to parquet (list and struct columns kept) or CSV (JSON-encoded lists)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix.lower() == ".csv":
        import json

        flat = labels.copy()
        for c in ("labels", "rules", "conflicts", "missing_fields"):
            flat[c] = flat[c].map(lambda v: json.dumps(v, ensure_ascii=False))
        flat.to_csv(p, index=False)
    else:

        rule_t = pa.struct(
            [
                ("label", pa.string()),
                ("rule", pa.string()),
                ("field", pa.string()),
                ("value", pa.string()),
                ("explanation", pa.string()),
            ]
        )
        fields = [
            pa.field("patient_id", pa.string()),
            pa.field("visit", pa.int64()),
            pa.field("eye", pa.string()),
            pa.field("labels", pa.list_(pa.string())),
            pa.field("primary_label", pa.string()),
            pa.field("rules", pa.list_(rule_t)),
            pa.field("conflicts", pa.list_(pa.string())),
            pa.field("missing_fields", pa.list_(pa.string())),
            *[pa.field(c, pa.bool_()) for c in labels.columns if c.startswith("label_")],
            pa.field("kb_snapshot_id", pa.string()),
        ]
        schema = pa.schema(fields)
        data = {c: labels[c].tolist() for c in schema.names}
        data["visit"] = [None if pd.isna(v) else int(v) for v in labels["visit"]]
        pq.write_table(pa.Table.from_pydict(data, schema=schema), p)
    return p


__all__ = ["EYES", "default_pseudonymise", "label_cohort", "read_cohort", "write_labels"]
