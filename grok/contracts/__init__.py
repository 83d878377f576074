"""Data contracts: pyarrow schemas + Great Expectations 1.x suites from ``data_contracts/*.yaml``.

Run as: grok validate TABLE --contract NAME [--deny-list FILE] [--docs DIR] [--json]

A contract is data (YAML, see ``data_contracts/README.md``); this module turns it into a
``pyarrow.Schema`` and a ``gx.ExpectationSuite``, adds the derived columns that GROK's own checks
need (identifier scans over serialised nested columns, splits per patient, answer lengths), runs
a Great Expectations checkpoint on a pandas batch, writes the data docs (HTML) and returns a
:class:`ContractResult` that names every failing expectation with example rows.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from grok.childproc import ChildProcess
from grok.ids import CATEGORIES
from grok.parquet_io import iter_batches, map_arrow, open_parquet
from grok.privacy.denylist import DenyList
from grok.resources import bundled_dir

CONTRACTS_ENV = "GROK_DATA_CONTRACTS"

_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "list<string>": pa.list_(pa.string()),
    "list<float64>": pa.list_(pa.float64()),
    "messages": pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])),
    "image": pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
}
_GROK_CHECKS = {"no_identifiers", "split_disjoint_by", "min_mean", "report_distribution", "plausible_bounds"}


class ContractError(ValueError):
    """A contract file or its parameters are invalid; the message names the file, key and fix."""


def contracts_dir() -> Path:
    """``$GROK_DATA_CONTRACTS``, else the bundled ``data_contracts/`` folder (see grok.resources)."""
    env = os.environ.get(CONTRACTS_ENV)
    if env:
        return Path(env)
    return bundled_dir("data_contracts")


@dataclass
class Contract:
    name: str
    description: str
    columns: list[dict[str, Any]]
    expectations: list[Any]
    date_columns: list[str] = field(default_factory=list)
    plausible_bounds: dict[str, list[float]] = field(default_factory=dict)
    path: str = ""

    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c["name"], _TYPES[c["type"]], nullable=c.get("nullable", True))
                          for c in self.columns])


def load_contract(name_or_path: str | os.PathLike) -> Contract:
    """Load ``data_contracts/<name>.yaml`` (or a path) and check its structure."""
    p = Path(name_or_path)
    if not p.suffix:
        p = contracts_dir() / f"{name_or_path}.yaml"
    if not p.is_file():
        known = sorted(x.stem for x in contracts_dir().glob("*.yaml") if x.stem != "identifier_patterns")
        raise ContractError(f"no contract {str(name_or_path)!r}; known contracts: {', '.join(known)}")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ContractError(f"{p}: not valid YAML ({exc})") from exc
    for key in ("table", "columns", "expectations"):
        if key not in raw:
            raise ContractError(f"{p}: missing key {key!r}")
    for i, col in enumerate(raw["columns"]):
        if col.get("type") not in _TYPES:
            raise ContractError(f"{p}: columns[{i}] ({col.get('name')}) has type {col.get('type')!r}; "
                                f"use one of {', '.join(_TYPES)}")
    for i, exp in enumerate(raw["expectations"]):
        kind = exp if isinstance(exp, str) else (exp.get("type") or next(iter(exp)))
        if not isinstance(exp, str) and "type" not in exp and kind not in _GROK_CHECKS:
            raise ContractError(f"{p}: expectations[{i}] {kind!r} is neither a GE expectation (needs 'type') nor "
                                f"a GROK check ({', '.join(sorted(_GROK_CHECKS))})")
    return Contract(name=raw["table"], description=str(raw.get("description", "")).strip(), columns=raw["columns"],
                    expectations=raw["expectations"], date_columns=list(raw.get("date_columns", [])),
                    plausible_bounds=dict(raw.get("plausible_bounds", {})), path=str(p))


def identifier_patterns() -> tuple[list[dict[str, str]], dict[str, str]]:
    raw = yaml.safe_load((contracts_dir() / "identifier_patterns.yaml").read_text())
    return raw["patterns"], raw["date_pattern"]


@dataclass
class ExpectationOutcome:
    expectation: str
    column: str | None
    success: bool
    unexpected_count: int | None = None
    observed: Any = None
    examples: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ContractResult:
    contract: str
    success: bool
    n_rows: int
    schema_problems: list[str]
    outcomes: list[ExpectationOutcome]
    distributions: dict[str, dict[str, int]]
    docs_index: str | None
    elapsed_s: float

    @property
    def failed(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failed"] = [asdict(o) for o in self.failed]
        return d

    def summary(self) -> str:
        if self.success:
            return f"contract {self.contract}: passed ({len(self.outcomes)} expectations, {self.n_rows} rows)"
        lines = [f"contract {self.contract}: FAILED"]
        lines += [f"  schema: {p}" for p in self.schema_problems]
        for o in self.failed:
            lines.append(f"  {o.expectation}({o.column or ''}): {o.unexpected_count} unexpected"
                         + (f", observed {o.observed}" if o.observed is not None else ""))
            for ex in o.examples[:3]:
                lines.append(f"    e.g. {json.dumps(ex, default=str)[:300]}")
        return "\n".join(lines)


def check_schema(table: pa.Table | pd.DataFrame, contract: Contract) -> list[str]:
    """Columns missing, of the wrong type, or null where the contract forbids nulls."""
    problems = []
    names = table.column_names if isinstance(table, pa.Table) else list(table.columns)
    for col in contract.columns:
        if col["name"] not in names:
            problems.append(f"column {col['name']!r} is missing")
            continue
        if isinstance(table, pa.Table):
            actual = table.schema.field(col["name"]).type
            want = _TYPES[col["type"]]
            if not _compatible(actual, want):
                problems.append(f"column {col['name']!r} has type {actual}, contract says {want}")
            nulls = table.column(col["name"]).null_count
        else:
            nulls = int(table[col["name"]].isna().sum()) if table[col["name"]].dtype != object else int(
                table[col["name"]].map(lambda v: v is None).sum())
        if not col.get("nullable", True) and nulls:
            problems.append(f"column {col['name']!r} has {nulls} nulls but is not nullable")
    return problems


def _compatible(actual: pa.DataType, want: pa.DataType) -> bool:
    if actual == want:
        return True
    if pa.types.is_large_string(actual) and pa.types.is_string(want):
        return True
    if pa.types.is_floating(actual) and pa.types.is_floating(want):
        return True
    if pa.types.is_integer(actual) and pa.types.is_integer(want):
        return True
    if pa.types.is_list(actual) and pa.types.is_list(want):
        return _compatible(actual.value_type, want.value_type)
    if pa.types.is_large_list(actual) and pa.types.is_list(want):
        return _compatible(actual.value_type, want.value_type)
    if pa.types.is_struct(actual) and pa.types.is_struct(want):
        return {f.name for f in want} <= {f.name for f in actual}
    return False


def _subst(value: Any, params: dict[str, Any], where: str) -> Any:
    if isinstance(value, str):
        m = re.fullmatch(r"\$\{(\w+)\}", value)
        if m:
            if m.group(1) not in params:
                raise ContractError(f"{where}: parameter {m.group(1)!r} is not set; pass it in params "
                                    f"(e.g. --param {m.group(1)}=...)")
            return params[m.group(1)]
    if isinstance(value, list):
        return [_subst(v, params, where) for v in value]
    if isinstance(value, dict):
        return {k: _subst(v, params, where) for k, v in value.items()}
    return value


def _snake_to_class(name: str) -> str:
    return "".join(p.capitalize() for p in name.split("_"))


def _class_to_snake(name: str) -> str:
    """``ExpectColumnValuesToBeInSet`` -> ``expect_column_values_to_be_in_set`` (:func:`_snake_to_class` reversed)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _textify(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, float) and v != v:
        return None
    if isinstance(v, (bytes, bytearray)):
        return None
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, dict) and "bytes" in v:  # an image struct: only its path is text
        return str(v.get("path") or "")
    return v if isinstance(v, str) else json.dumps(v, default=str)


#: Derived columns of the identifier checks: a count per row, never the text itself.
KNOWN_PREFIX = "__known_identifiers__"
PATTERN_PREFIX = "__identifier_patterns__"


def _withheld(n_known: int, n_pattern: int) -> str:
    return f"<withheld: {n_known} known identifiers, {n_pattern} identifier-pattern matches>"


#: The identifier-count columns' type: one byte a row and text column, counts above 255 shown as 255 ("255 or
#: more"; the expectation is 0). They are kept for every row of a table until Great Expectations runs: as int64, on
#: the instruction rows' 14 text columns (two counts each) they were 224 bytes a row (issue 22).
COUNT_DTYPE = np.uint8


def _counts(n: pd.Series) -> pd.Series:
    """Identifier counts as :data:`COUNT_DTYPE`, saturated at its largest value."""
    return n.clip(upper=int(np.iinfo(COUNT_DTYPE).max)).astype(COUNT_DTYPE)


def _identifier_columns(df: pd.DataFrame, out: pd.DataFrame, contract: Contract, deny: DenyList | None,
                        ) -> list[tuple[str, dict]]:
    """Per text column (nested ones serialised): the count of known identifiers (keyed-hash deny list) and of
    identifier-pattern matches per row, as derived columns that must be 0. A cell with any hit is replaced by a
    placeholder in the batch Great Expectations sees, so no suite, result or data doc can hold an identifier."""
    patterns, date_pat = identifier_patterns()
    regs = [re.compile(p["regex"]) for p in patterns]
    date_re = re.compile(date_pat["regex"])
    extra: list[tuple[str, dict]] = []
    for col in df.columns:
        sample = next((v for v in df[col] if v is not None and not (isinstance(v, float) and v != v)), None)
        if sample is None or isinstance(sample, (int, float, bool, np.number, np.bool_, bytes)):
            continue
        # a plain object Series: with pandas 3 string dtypes, .map() would turn None back into NaN (a float)
        texts = pd.Series([_textify(v) for v in df[col]], index=df.index, dtype=object)
        use = regs if col in contract.date_columns else regs + [date_re]
        n_pat = texts.map(lambda t, use=use: sum(1 for r in use for _ in r.finditer(t)) if isinstance(t, str) and t
                          else 0)
        n_known = _counts(texts.map(lambda t: deny.count(t) if isinstance(t, str) and t else 0) if deny
                          else pd.Series(0, index=df.index))
        n_pat = _counts(n_pat)
        out[PATTERN_PREFIX + col] = n_pat
        extra.append(("ExpectColumnValuesToBeInSet", {"column": PATTERN_PREFIX + col, "value_set": [0]}))
        if deny:
            out[KNOWN_PREFIX + col] = n_known
            extra.append(("ExpectColumnValuesToBeInSet", {"column": KNOWN_PREFIX + col, "value_set": [0]}))
        bad = (n_pat > 0) | (n_known > 0)
        if bad.any():
            out[col] = out[col].astype(object)
            for i in np.flatnonzero(bad.to_numpy()):
                out.iat[i, out.columns.get_loc(col)] = _withheld(int(n_known.iat[i]), int(n_pat.iat[i]))
    return extra


#: Columns that name a row in failure examples, where a table has them.
ID_COLUMNS = ("id", "study_id", "image_id", "sample_id", "patient_id", "source_key")
#: Rows turned into derived columns at a time: a table's text (messages, provenance) is read a batch at a time and
#: only the columns the expectations read reach Great Expectations (:func:`_ge_columns`).
BATCH_ROWS = 4096


def _prepare_batch(df: pd.DataFrame, contract: Contract, deny: DenyList | None
                   ) -> tuple[pd.DataFrame, list[tuple[str, dict]]]:
    """One batch's derived columns (identifier counts, answer lengths; identifying cells withheld) and the
    expectations they compile to."""
    out = df.copy()
    extra: list[tuple[str, dict]] = []
    if "no_identifiers" in contract.expectations:
        extra += _identifier_columns(df, out, contract, deny)
    if contract.name == "instructions" and "messages" in df.columns:
        out["answer_words"] = df["messages"].map(
            lambda ms: sum(len(str(m["content"]).split()) for m in (ms.tolist() if hasattr(ms, "tolist") else ms)
                           if m["role"] == "assistant")).astype(np.int32)
    return out, extra


def _table_checks(df: pd.DataFrame, contract: Contract, identifier_checks: list[tuple[str, dict]], *,
                  split_disjoint: bool = True, plausible_bounds: bool = True) -> list[tuple[str, dict]]:
    """The expectations GROK's checks compile to, in the contract's order: ``identifier_checks`` (made per batch)
    where ``no_identifiers`` stands, a patient's rows in one split (``split_disjoint``; it needs the whole table)
    and the plausible bounds (``df``: the columns Great Expectations sees; derived columns are added to it)."""
    extra: list[tuple[str, dict]] = []
    for exp in contract.expectations:
        if exp == "no_identifiers":
            extra += identifier_checks
        elif isinstance(exp, dict) and "split_disjoint_by" in exp and split_disjoint:
            key = exp["split_disjoint_by"]
            if "split" in df.columns and key in df.columns:
                derived = f"{SPLITS_PREFIX}{key}"
                df[derived] = df.groupby(key)["split"].transform("nunique")
                extra.append(("ExpectColumnValuesToBeInSet", {"column": derived, "value_set": [1]}))
        elif exp == "plausible_bounds" and plausible_bounds:
            for bid, (lo, hi) in contract.plausible_bounds.items():
                if bid in df.columns:
                    extra.append(("ExpectColumnValuesToBeBetween", {"column": bid, "min_value": lo, "max_value": hi}))
    return extra


def _ge_columns(contract: Contract, id_cols: list[str]) -> set[str]:
    """Columns an expectation reads (besides the derived ones): ids, expectation columns, grouping keys, bounds."""
    cols = set(id_cols)
    for exp in contract.expectations:
        if not isinstance(exp, dict):
            continue
        cols.update(_read_columns(exp))
        if "min_mean" in exp and isinstance(exp["min_mean"], dict):
            cols.add(str(exp["min_mean"].get("column")))
        if "split_disjoint_by" in exp:
            cols.update({exp["split_disjoint_by"], "split"})
    # (a report_distribution column is counted batch by batch in validate, not handed to Great Expectations)
    return cols | set(contract.plausible_bounds)


def _frames(data: Any, rows: int):
    """A table as ``(Arrow batch or None, pandas batch)`` pairs of ``rows`` rows: a DataFrame sliced, an Arrow
    table sliced, a parquet file read a batch at a time, or an iterable of DataFrames as given."""
    if isinstance(data, pd.DataFrame):
        for start in range(0, max(len(data), 1), rows):
            yield None, data.iloc[start:start + rows]
    elif isinstance(data, pa.Table):
        for start in range(0, max(data.num_rows, 1), rows):
            part = data.slice(start, rows)
            yield part, part.to_pandas()
    elif isinstance(data, pq.ParquetFile):
        n = 0
        for batch in iter_batches(data, rows):
            n += 1
            yield batch, batch.to_pandas()
        if not n:
            empty = data.schema_arrow.empty_table()
            yield empty, empty.to_pandas()
    else:
        for df in data:
            yield None, df


#: A text column reaches Great Expectations as a pandas categorical (a small integer code a row, each distinct value
#: once) when it has at most this share of distinct values among its rows: ids of studies and patients, eyes,
#: labels and splits repeat, a row's own id does not. On 10,000 synthetic studies the instruction rows' frame was
#: 7.43 MB with Arrow strings (139 bytes a row; ad-hoc probe, issue 22).
CODED_MAX_DISTINCT_SHARE = 0.5


def _concat_coded(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """The batches' frames as one, text columns with repeated values (:data:`CODED_MAX_DISTINCT_SHARE`) as
    categoricals over the values of every batch. Each batch is converted in place before the frames are joined,
    so the table's text is not held twice."""
    if not parts:
        return pd.DataFrame()
    n = sum(len(p) for p in parts)

    def repeats(c: str) -> bool:  # a text column in every batch with few distinct values (stops counting past them)
        if not all(c in p.columns and (p[c].dtype == object or isinstance(p[c].dtype, (pd.StringDtype,
                                                                                        pd.CategoricalDtype)))
                   for p in parts):
            return False
        seen: set[Any] = set()
        try:
            for p in parts:
                seen.update(p[c].dropna().unique())
                if len(seen) > CODED_MAX_DISTINCT_SHARE * n:
                    return False
        except TypeError:  # unhashable cells
            return False
        return True

    coded = [c for c in parts[0].columns if repeats(c)]
    for c in coded:
        for p in parts:
            p[c] = p[c].astype("category")
        values = pd.api.types.union_categoricals([p[c] for p in parts], ignore_order=True).categories
        for p in parts:
            p[c] = p[c].cat.set_categories(values)
    return pd.concat(parts, ignore_index=True)


def _nulls(arrow, df: pd.DataFrame, name: str) -> int:
    """Missing values of a column in a batch: Arrow nulls when the batch came from Arrow (a float NaN is a value
    there), else None in an object column or NaN in a typed one."""
    if arrow is not None:
        return arrow.column(name).null_count
    v = df[name]
    return int(v.map(lambda x: x is None).sum()) if v.dtype == object else int(v.isna().sum())


def validate(
    data: pd.DataFrame | pa.Table | str | os.PathLike,
    contract: Contract | str,
    *,
    params: dict[str, Any] | None = None,
    deny_list: DenyList | list[str] | dict | None = None,
    docs_dir: str | os.PathLike | None = None,
    max_examples: int = 3,
    batch_rows: int | None = None,
    chunk_rows: int | None = None,
) -> ContractResult:
    """Validate a table against a contract; see the module docstring.

    ``data``: a DataFrame, an Arrow table, a parquet file's path (read a batch at a time), an Arrow IPC file's
    path (``.arrow``, memory-mapped), or an iterable of DataFrames (batches as given). ``batch_rows`` and
    ``chunk_rows``: rows read at a time and validated by Great Expectations at once (:data:`BATCH_ROWS`,
    :data:`GE_CHUNK_ROWS`).

    ``params`` fills ``${...}`` placeholders (e.g. ``verifier_pass_rate``, ``label_set``);
    ``deny_list`` (a :class:`~grok.privacy.denylist.DenyList`, identifier strings that are hashed at once
    under the pseudonym secret, or a parsed hashed deny-list file) adds known identifiers to the identifier checks, which count them per row
    and never pass them to Great Expectations; ``docs_dir`` (default: a
    ``contracts/`` folder next to a table file, else a temporary folder) receives the GE project and
    its data docs.
    """
    t0 = time.perf_counter()
    c = contract if isinstance(contract, Contract) else load_contract(contract)
    params = dict(params or {})
    params.setdefault("label_set", _default_label_set())
    params.setdefault("verifier_pass_rate", 0.9)
    table_path = None
    batch_rows, chunk_rows = batch_rows or BATCH_ROWS, chunk_rows or GE_CHUNK_ROWS
    if isinstance(data, (str, os.PathLike)):
        table_path = Path(data)
        if table_path.suffix == ".arrow":  # pages from the file, not the heap
            data = map_arrow(table_path)
        else:
            data = open_parquet(table_path)  # read a batch at a time below
    deny = deny_list if isinstance(deny_list, DenyList) or deny_list is None else DenyList.from_json(deny_list)
    schema_problems: list[str] = []
    if isinstance(data, (pa.Table, pq.ParquetFile)):  # types and nulls from Arrow; nulls counted per batch below
        schema = data.schema if isinstance(data, pa.Table) else data.schema_arrow
        schema_problems = [p for p in check_schema(schema.empty_table(), c) if "nulls but" not in p]
    # Per batch: derived columns (identifier counts, answer lengths), then only what the expectations read is
    # kept for Great Expectations, so a table's text is never whole in memory. Past GE_CHUNK_ROWS rows the kept
    # batches are validated a chunk at a time (row-wise expectations) and only the whole-table expectations'
    # columns are kept for the rest (issue 22).
    if docs_dir is None:
        docs_dir = (table_path.parent / "contracts" / c.name) if table_path else Path(
            os.environ.get("TMPDIR", "/tmp")) / f"grok-contracts-{os.getpid()}" / c.name
    docs_dir = Path(docs_dir)
    pending, extra, names, nulls, dist = [], {}, None, {}, {}
    pending_rows, chunk_outcomes, chunk_columns, ge = 0, [], set(), None
    mean_weights: list[dict[str, int]] = []  # per chunk, the values each mean expectation's column had
    mean_bounds: dict[str, dict] = {}  # each mean expectation's arguments, by column
    table: _WholeTableChecks | None = None
    report = [e["report_distribution"] for e in c.expectations if isinstance(e, dict) and "report_distribution" in e]
    n_rows = 0

    def validate_chunk() -> None:  # the rows kept so far, row by row; the whole-table checks' columns set aside
        nonlocal pending, pending_rows, ge, table
        ge = ge or _GreatExpectations(docs_dir)
        chunk = _with_counts(_concat_coded(pending), extra)
        pending, pending_rows = [], 0
        id_cols = [x for x in ID_COLUMNS if x in names]
        if table is None:  # the whole-table checks of the first chunk's columns (an empty frame gives their order)
            shape = pd.DataFrame(columns=list(chunk.columns))
            whole_items, _ = _suite(c, params, shape.columns, _table_checks(shape, c, [], plausible_bounds=False))
            whole_items = [(n, k) for n, k in whole_items if n not in ROW_WISE and n not in MEANS
                           or _split_key(k) is not None]
            table = _WholeTableChecks(whole_items, id_cols, docs_dir, _partition_bits(expected_rows, chunk_rows))
        table.add(chunk)
        chunk_columns.update(chunk.columns)
        items, _ = _suite(c, params, chunk.columns, _table_checks(chunk, c, list(extra.values()),
                                                                  split_disjoint=False))
        items = [(n, k) for n, k in items if n in ROW_WISE or n in MEANS]
        mean_weights.append({k["column"]: int(chunk[k["column"]].notna().sum()) for n, k in items if n in MEANS})
        mean_bounds.update({k["column"]: k for n, k in items if n in MEANS})
        chunk_outcomes.append(ge.run(c.name, chunk, items, id_cols, max_examples))

    expected_rows = _expected_rows(data)
    for arrow, df in _frames(data, batch_rows):
        if names is None:
            names = list(df.columns)
            keep = _ge_columns(c, [x for x in ID_COLUMNS if x in names])
        n_rows += len(df)
        for col in c.columns:
            if col["name"] in df.columns:
                nulls[col["name"]] = nulls.get(col["name"], 0) + _nulls(arrow, df, col["name"])
        for col in report:
            if col in df.columns:
                dist.setdefault(col, {})
                for k, n in df[col].astype(str).value_counts().items():
                    dist.setdefault(col, {})[str(k)] = dist.get(col, {}).get(str(k), 0) + int(n)
        prepared_part, more = _prepare_batch(df, c, deny)
        for cls_name, kwargs in more:
            extra.setdefault((cls_name, kwargs["column"]), (cls_name, kwargs))
        pending.append(prepared_part[[x for x in prepared_part.columns if x in keep or x.startswith("__")
                                      or x == "answer_words"]])
        pending_rows += len(prepared_part)
        del prepared_part
        if pending_rows >= chunk_rows:
            validate_chunk()
    names = names or []
    id_cols = [x for x in ID_COLUMNS if x in names]
    if not isinstance(data, (pa.Table, pq.ParquetFile)):
        schema_problems = [f"column {col['name']!r} is missing" for col in c.columns if col["name"] not in names]
    for col in c.columns:
        if not col.get("nullable", True) and nulls.get(col["name"]):
            schema_problems.append(f"column {col['name']!r} has {nulls[col['name']]} nulls but is not nullable")
    ge = ge or _GreatExpectations(docs_dir)
    if not chunk_outcomes:  # the whole table in one validation
        prepared = _with_counts(_concat_coded(pending), extra)
        del pending
        items, problems = _suite(c, params, prepared.columns, _table_checks(prepared, c, list(extra.values())))
        outcomes = ge.run(c.name, prepared, items, id_cols, max_examples)
    else:
        if pending:
            validate_chunk()
        assert table is not None
        try:
            table_outcomes = table.run(ge, f"{c.name}-table", chunk_rows, max_examples)
        finally:
            table.close()
        means = _merged_means(chunk_outcomes, mean_weights, mean_bounds)
        # the outcomes in the order one validation of the whole table gives them (an empty frame of every column
        # gives GROK's checks in the contract's order)
        every = pd.DataFrame(columns=sorted(chunk_columns))
        order, problems = _suite(c, params, every.columns, _table_checks(every, c, list(extra.values())))
        outcomes = _merged(order, [*table_outcomes, means, *chunk_outcomes], max_examples)
    schema_problems += problems
    distributions = {col: dict(sorted(dist[col].items())) for col in report if col in dist}
    index = docs_dir / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
    success = all(o.success for o in outcomes) and not schema_problems
    return ContractResult(contract=c.name, success=success, n_rows=n_rows, schema_problems=schema_problems,
                          outcomes=outcomes, distributions=distributions,
                          docs_index=str(index) if index.exists() else None,
                          elapsed_s=round(time.perf_counter() - t0, 3))


#: Rows Great Expectations validates at once (issue 22). A longer table is validated in chunks: the expectations
#: that judge one row at a time (:data:`ROW_WISE`) run on each chunk of about this many rows, and those that need
#: the whole table (unique ids, a mean, a patient in one split only) run once, on a frame of only the columns they
#: read and the ids; the outcomes are merged (unexpected counts summed, the first examples kept), as one validation
#: of the whole table gives them. On the biomarker table the frame was 552 bytes a study (its 62 bounds columns),
#: whole in memory while Great Expectations ran.
GE_CHUNK_ROWS = 32768
#: Great Expectations' expectations whose outcome on a table is the sum of their outcomes on its parts.
ROW_WISE = frozenset({
    "ExpectColumnValuesToBeInSet", "ExpectColumnValuesToNotBeInSet", "ExpectColumnValuesToBeBetween",
    "ExpectColumnValuesToMatchRegex", "ExpectColumnValuesToNotMatchRegex", "ExpectColumnValuesToMatchRegexList",
    "ExpectColumnValuesToNotMatchRegexList", "ExpectColumnValuesToNotBeNull", "ExpectColumnValuesToBeNull",
    "ExpectColumnValueLengthsToBeBetween", "ExpectColumnValueLengthsToEqual", "ExpectColumnValuesToBeOfType",
    "ExpectColumnValuesToBeInTypeList", "ExpectColumnValuesToMatchStrftimeFormat",
    "ExpectColumnValuesToBeDateutilParseable", "ExpectColumnValuesToBeJsonParseable"})
#: Whole-table expectations validated on partitions of a long table by a 64-bit hash of their key columns (issue
#: 22): rows with equal keys share a partition, so such an expectation holds on the table exactly where it holds on
#: every partition, and its unexpected rows are the partitions' unexpected rows. A patient in one split only
#: (``split_disjoint_by``) is partitioned by the patient. Rows whose key is missing in every key column are not
#: written: Great Expectations ignores them for these expectations.
PARTITIONED = {"ExpectColumnValuesToBeUnique": lambda kw: (kw["column"],),
               "ExpectCompoundColumnsToBeUnique": lambda kw: tuple(kw["column_list"])}
#: Whole-table expectations on a column's mean: run on every chunk, the chunks' means weighted by their values give
#: the table's (:func:`_merged_means`).
MEANS = frozenset({"ExpectColumnMeanToBeBetween"})
#: The derived column of a ``split_disjoint_by`` check: splits per key value (:func:`_table_checks`).
SPLITS_PREFIX = "__splits_per_"
#: A partition of more than this many times the chunk's rows is split again by the hash's next bits.
PARTITION_SLACK = 2
#: Hash bits a partition is split by again; at most this many bits (2 ** n files) at the first level.
PARTITION_SPLIT_BITS, PARTITION_MAX_BITS = 4, 8


def _expected_rows(data: Any) -> int | None:
    """Rows of a table before it is read, where that is known: a frame's or Arrow table's length, a parquet
    file's metadata, an iterable's ``n_rows`` (e.g. :class:`grok.publish.InstructionFrames`)."""
    if isinstance(data, pd.DataFrame):
        return len(data)
    if isinstance(data, pa.Table):
        return data.num_rows
    if isinstance(data, pq.ParquetFile):
        return data.metadata.num_rows
    n = getattr(data, "n_rows", None)
    return int(n) if n is not None else None


def _partition_bits(rows: int | None, chunk_rows: int) -> int:
    """Hash bits of the first partitioning: partitions of about ``chunk_rows`` rows (16 partitions when the
    table's length is not known beforehand)."""
    if rows is None:
        return PARTITION_SPLIT_BITS
    return int(np.clip(np.ceil(np.log2(max(rows, 1) / chunk_rows)), 1, PARTITION_MAX_BITS))


def _arrow_frame(df: pd.DataFrame) -> pa.Table:
    """A frame's columns as Arrow: text (object, string or categorical) as plain strings, whatever its pandas
    dtype in this chunk, so every chunk of a partition file has the same schema."""
    arrays = {}
    for name in df.columns:
        s = df[name]
        if s.dtype == object or isinstance(s.dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(s.dtype):
            try:
                arrays[name] = pa.array(s.astype(object), type=pa.string(), from_pandas=True)
                continue
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                pass
        arrays[name] = pa.Array.from_pandas(s)
    return pa.table(arrays)


class _Partitions:
    """Rows written to ``2 ** bits`` Arrow IPC stream files by bits ``shift`` to ``shift + bits`` of a 64-bit
    hash of their ``key`` columns (``__hash``, kept in the files with ``__row``, a row's place in the table), then
    read back one partition at a time (:meth:`frames`); a partition too long is split again by the next bits."""

    def __init__(self, folder: Path, key: tuple[str, ...], bits: int, shift: int = 0):
        self.folder, self.key, self.bits, self.shift = folder, key, bits, shift
        self.writers: dict[int, Any] = {}
        self.rows: dict[int, int] = {}
        self.hash_range: dict[int, tuple[int, int]] = {}  # a partition's smallest and largest hash
        self.schema: pa.Schema | None = None  # the first piece's: every file's
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, frame: pd.DataFrame) -> None:
        """Rows with ``__row`` and, at the first level, without ``__hash`` (made here from the key)."""
        if "__hash" not in frame.columns:
            keyed = frame[list(self.key)]
            present = keyed.notna().any(axis=1).to_numpy()
            frame = frame[present].assign(__hash=pd.util.hash_pandas_object(keyed[present], index=False).to_numpy())
        hashes = frame["__hash"].to_numpy(dtype=np.uint64)
        part = ((hashes >> np.uint64(self.shift)) & np.uint64(2 ** self.bits - 1)).astype(np.int64)
        order = np.argsort(part, kind="stable")  # a partition's rows stay in the table's order
        part, hashes = part[order], hashes[order]
        bounds = np.searchsorted(part, np.arange(2 ** self.bits + 1))
        table = _arrow_frame(frame.iloc[order])
        for i in np.flatnonzero(np.diff(bounds)):
            lo, hi = int(bounds[i]), int(bounds[i + 1])
            piece = table.slice(lo, hi - lo)
            writer = self.writers.get(i)
            if writer is None:
                self.schema = self.schema or piece.schema
                writer = self.writers[i] = pa.ipc.new_stream(str(self.folder / f"{i}.arrows"), self.schema)
            if piece.schema != self.schema:
                try:
                    piece = piece.cast(self.schema)
                except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                    raise ContractError(f"the columns {', '.join(piece.column_names)} change type between a "
                                        f"table's batches ({piece.schema} after {self.schema}); write the "
                                        "table with one type per column") from exc
            writer.write_table(piece)
            self.rows[i] = self.rows.get(i, 0) + hi - lo
            first, last = self.hash_range.get(i, (hashes[lo], hashes[lo]))
            self.hash_range[i] = (min(first, hashes[lo:hi].min()), max(last, hashes[lo:hi].max()))

    def close(self) -> None:
        for w in self.writers.values():
            with contextlib.suppress(Exception):
                w.close()

    def frames(self, limit: int) -> Iterator[pd.DataFrame]:
        """Each partition as a frame (``__row`` kept, ``__hash`` dropped), in partition order; one of more than
        ``limit`` rows with more than one hash is split again by the next bits of the hash first."""
        self.close()
        for i in sorted(self.writers):
            path = self.folder / f"{i}.arrows"
            shift = self.shift + self.bits
            if self.rows[i] > limit and self.hash_range[i][0] != self.hash_range[i][1] and shift < 64:
                sub = _Partitions(self.folder / f"{i}", self.key, min(PARTITION_SPLIT_BITS, 64 - shift), shift)
                with pa.memory_map(str(path)) as src:
                    for batch in pa.ipc.open_stream(src):
                        sub.add(batch.to_pandas())
                path.unlink()
                yield from sub.frames(limit)
                continue
            with pa.memory_map(str(path)) as src:
                frame = pa.ipc.open_stream(src).read_all().to_pandas()
            path.unlink()
            yield _concat_coded([frame.drop(columns="__hash")])


class _WholeTableChecks:
    """The whole-table expectations of a long table (those not in :data:`ROW_WISE` or :data:`MEANS`), fed a
    chunk at a time (:meth:`add`) and validated at the end (:meth:`run`): those keyed by columns
    (:data:`PARTITIONED`, a patient in one split) a partition at a time, each partition on disk until it is read
    (under ``docs_dir``), so what is held does not grow with the table; any other (a contract may name any Great
    Expectations expectation) once on a frame of its columns and the ids."""

    def __init__(self, items: list[tuple[str, dict]], id_cols: list[str], docs_dir: Path, bits: int):
        self.id_cols = id_cols
        docs_dir.mkdir(parents=True, exist_ok=True)
        self.folder = tempfile.TemporaryDirectory(prefix="partitions-", dir=docs_dir)
        groups: dict[tuple[str, ...], list[tuple[str, dict]]] = {}
        self.rest: list[tuple[str, dict]] = []
        for cls_name, kwargs in items:
            if cls_name in PARTITIONED:
                groups.setdefault(PARTITIONED[cls_name](kwargs), []).append((cls_name, kwargs))
            elif (split_key := _split_key(kwargs)) is not None:
                groups.setdefault((split_key,), []).append((cls_name, kwargs))
            else:
                self.rest.append((cls_name, kwargs))
        self.groups = []
        for n, (key, group) in enumerate(groups.items()):
            splits = any(_split_key(k) is not None for _, k in group)
            read = {k["column"] for _, k in group if "column" in k and _split_key(k) is None}
            cols = list(dict.fromkeys([*key, *id_cols, *sorted(read), *(["split"] if splits else [])]))
            self.groups.append((group, cols, _Partitions(Path(self.folder.name) / str(n), key, bits)))
        self.rest_cols = list(dict.fromkeys([*id_cols, *sorted(c for _, k in self.rest for c in _read_columns(k))]))
        self.rest_parts: list[pd.DataFrame] = []
        self.rows = 0

    def add(self, chunk: pd.DataFrame) -> None:
        rows = np.arange(self.rows, self.rows + len(chunk), dtype=np.int64)
        self.rows += len(chunk)
        for _group, cols, parts in self.groups:
            parts.add(chunk[[c for c in cols if c in chunk.columns]].assign(__row=rows))
        if self.rest:
            self.rest_parts.append(chunk[[c for c in self.rest_cols if c in chunk.columns]].copy())

    def run(self, ge: _GreatExpectations, name: str, chunk_rows: int, max_examples: int
            ) -> list[list[ExpectationOutcome]]:
        """One list of outcomes per validation: each partition of each key, then the rest's frame."""
        runs = []
        for group, _cols, parts in self.groups:
            for frame in parts.frames(PARTITION_SLACK * chunk_rows):
                for _, kwargs in group:
                    if (split_key := _split_key(kwargs)) is not None:  # every row of a key value is in this partition
                        frame[kwargs["column"]] = frame.groupby(split_key)["split"].transform("nunique")
                runs.append(ge.run(name, frame, group, [*self.id_cols, "__row"], max_examples))
                del frame
        if self.rest:
            whole = _concat_coded(self.rest_parts)
            self.rest_parts = []
            runs.append(ge.run(name, whole, self.rest, self.id_cols, max_examples))
        return runs

    def close(self) -> None:
        for _group, _cols, parts in self.groups:
            parts.close()
        self.folder.cleanup()


def _split_key(kwargs: dict) -> str | None:
    """The key of a ``split_disjoint_by`` check (its derived column :data:`SPLITS_PREFIX` + key), else None."""
    column = kwargs.get("column")
    return column[len(SPLITS_PREFIX):] if isinstance(column, str) and column.startswith(SPLITS_PREFIX) else None


def _read_columns(kwargs: dict) -> list[str]:
    """The columns an expectation's arguments name."""
    out: list[str] = []
    for k, v in kwargs.items():
        if "column" in k:
            out += [v] if isinstance(v, str) else [x for x in v if isinstance(x, str)]
    return out


def _merged_means(chunk_outcomes: list[list[ExpectationOutcome]], weights: list[dict[str, int]],
                  bounds: dict[str, dict]) -> list[ExpectationOutcome]:
    """The table's outcome of each :data:`MEANS` expectation (``bounds``: its arguments by column) from its
    chunks' (taken out of ``chunk_outcomes``): the chunks' observed means weighted by the values each had, judged
    by the expectation's bounds as Great Expectations judges them (``min_value``/``max_value``, ``strict_min``/
    ``strict_max``; a column without values fails)."""
    name = _class_to_snake(next(iter(MEANS)))
    sums: dict[str, tuple[float, int]] = {col: (0.0, 0) for col in bounds}
    for outcomes, w in zip(chunk_outcomes, weights):
        for o in [o for o in outcomes if o.expectation == name]:
            outcomes.remove(o)
            n = w.get(o.column or "", 0)
            total, count = sums.get(o.column or "", (0.0, 0))
            if n and o.observed is not None:
                sums[o.column or ""] = (total + float(o.observed) * n, count + n)
    out = []
    for col, (total, count) in sums.items():
        mean, kw = (total / count if count else None), bounds[col]
        lo, hi = kw.get("min_value"), kw.get("max_value")
        ok = mean is not None and (lo is None or (mean > lo if kw.get("strict_min") else mean >= lo)) and (
            hi is None or (mean < hi if kw.get("strict_max") else mean <= hi))
        out.append(ExpectationOutcome(expectation=name, column=col, success=bool(ok), observed=mean))
    return out


def _with_counts(frame: pd.DataFrame, extra: dict) -> pd.DataFrame:
    """Every identifier-count column the table's batches made, as :data:`COUNT_DTYPE`: 0 where a batch had no text
    in the column (a column whose batches were all empty counts no identifier)."""
    for _cls_name, kwargs in extra.values():
        if kwargs["column"] in frame.columns:
            frame[kwargs["column"]] = frame[kwargs["column"]].fillna(0).astype(COUNT_DTYPE)
        else:
            frame[kwargs["column"]] = np.zeros(len(frame), dtype=COUNT_DTYPE)
    return frame


def _suite(contract: Contract, params: dict[str, Any], columns, extra: list[tuple[str, dict]]
           ) -> tuple[list[tuple[str, dict]], list[str]]:
    """The expectations of a validation as ``(class name, kwargs)`` in the suite's order: the contract's Great
    Expectations entries and its ``min_mean`` (those on a column not in ``columns`` left out and named in the
    problems returned), then ``extra`` (GROK's checks, as given). Whether Great Expectations knows each class is checked where its suite is
    built (:meth:`_GreatExpectations.run`), so a process that runs it elsewhere never imports it."""
    items: list[tuple[str, dict]] = []
    problems: list[str] = []
    for exp in contract.expectations:
        if not (isinstance(exp, dict) and "type" in exp):
            continue
        kwargs = {k: _subst(v, params, f"{contract.path}: expectations {exp['type']}")
                  for k, v in exp.items() if k != "type"}
        cls_name = _snake_to_class(exp["type"])
        if "column" in kwargs and kwargs["column"] not in columns:
            problems.append(f"expectation {exp['type']} refers to missing column {kwargs['column']!r}")
            continue
        items.append((cls_name, kwargs))
    for e in contract.expectations:
        if isinstance(e, dict) and "min_mean" in e:
            mm = _subst(e["min_mean"], params, f"{contract.path}: min_mean")
            if mm["column"] in columns:
                items.append(("ExpectColumnMeanToBeBetween", {"column": mm["column"], "min_value": float(mm["value"])}))
            else:
                problems.append(f"min_mean refers to missing column {mm['column']!r}")
    return items + extra, problems


def _merged(order: list[tuple[str, dict]], runs: list[list[ExpectationOutcome]],
            max_examples: int) -> list[ExpectationOutcome]:
    """One outcome per expectation of ``order`` from the validations of a table's chunks and of its whole-table
    columns (``runs``): it succeeds where every run that had it did, unexpected rows counted over all of them,
    the first ``max_examples`` examples; an identifier count no chunk had text for is a success with none."""
    by_key: dict[tuple[str, str | None], list[ExpectationOutcome]] = {}
    for run in runs:
        for o in run:
            by_key.setdefault((o.expectation, o.column), []).append(o)
    out = []
    for cls_name, kwargs in order:
        key = (_class_to_snake(cls_name), kwargs.get("column"))
        got = by_key.get(key, [])
        counts = [o.unexpected_count for o in got if o.unexpected_count is not None]
        out.append(ExpectationOutcome(
            expectation=key[0], column=key[1], success=all(o.success for o in got),
            unexpected_count=sum(counts) if counts else (0 if not got else None),
            observed=next((o.observed for o in got if o.observed is not None), None),
            examples=_first_examples([e for o in got for e in o.examples], max_examples)))
    return out


def _first_examples(examples: list[dict[str, Any]], max_examples: int) -> list[dict[str, Any]]:
    """The first ``max_examples`` examples, by their row's place in the table where they carry it (``__row``, from
    partitions, which is dropped), else as given (chunks come in the table's order)."""
    if examples and all("__row" in e for e in examples):
        examples = sorted(examples, key=lambda e: e["__row"])
    return [{k: v for k, v in e.items() if k != "__row"} for e in examples[:max_examples]]


class _GreatExpectations:
    """A file-mode Great Expectations project in ``docs_dir`` (its data docs there) that runs suites on frames."""

    def __init__(self, docs_dir: Path):
        import great_expectations as gx

        logging.getLogger("great_expectations").setLevel(logging.ERROR)
        docs_dir.mkdir(parents=True, exist_ok=True)
        self.ctx = gx.get_context(mode="file", project_root_dir=str(docs_dir))
        try:
            from great_expectations.data_context.types.base import ProgressBarsConfig

            self.ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        except Exception:  # noqa: BLE001 - progress bars are cosmetic
            pass
        self.source = self.ctx.data_sources.add_or_update_pandas("grok")

    def release(self) -> None:
        """Let go of the frames validated: the pandas data source's execution engine caches each batch's data
        (``BatchManager``), and Great Expectations keeps the project's context in a module-level project
        manager, so the last frame a validation handed it stayed alive after ``validate`` returned, through the
        rest of a publication (the biomarker table's frame, 552 bytes a study; issue 22)."""
        manager = self.source.get_execution_engine().batch_manager
        manager.reset_batch_cache()
        manager.batch_data_cache.clear()

    def run(self, name: str, frame: pd.DataFrame, items: list[tuple[str, dict]], id_cols: list[str],
            max_examples: int) -> list[ExpectationOutcome]:
        """Validate ``frame`` against ``items`` (suite, validation definition and checkpoint ``name``; the data
        docs updated); failing rows are named by their ids (from the batch GE sees, where identifying cells
        are withheld), or by the failing value where the table has no id column."""
        import great_expectations as gx

        ctx = self.ctx
        try:
            asset = self.source.get_asset(name)
        except LookupError:
            asset = self.source.add_dataframe_asset(name=name)
        try:
            batch_def = asset.get_batch_definition("whole")
        except (KeyError, LookupError):
            batch_def = asset.add_batch_definition_whole_dataframe("whole")
        suite = gx.ExpectationSuite(name=name)
        for cls_name, kwargs in items:
            cls = getattr(gx.expectations, cls_name, None)
            if cls is None:
                raise ContractError(f"contract {name!r}: unknown Great Expectations expectation "
                                    f"{_class_to_snake(cls_name)!r}; see data_contracts/README.md for the names")
            suite.add_expectation(cls(**kwargs))
        suite = ctx.suites.add_or_update(suite)
        vd = ctx.validation_definitions.add_or_update(gx.ValidationDefinition(name=name, data=batch_def, suite=suite))
        result_format: dict[str, Any] = {"result_format": "COMPLETE", "partial_unexpected_count": max_examples}
        if id_cols:
            result_format["unexpected_index_column_names"] = id_cols
        cp = ctx.checkpoints.add_or_update(gx.Checkpoint(
            name=name, validation_definitions=[vd], actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
            result_format=result_format))
        run = cp.run(batch_parameters={"dataframe": frame})
        self.release()
        outcomes: list[ExpectationOutcome] = []
        for vr in run.run_results.values():
            for r in vr.results:
                cfg = r.expectation_config
                col = cfg.kwargs.get("column")
                res = r.result or {}
                examples = []
                if not r.success:
                    for idx in (res.get("unexpected_index_list") or [])[:max_examples]:
                        # GE names a failing row by its ids (a dict) or, without id columns, by its position
                        row = dict(idx) if isinstance(idx, dict) else {k: None for k in id_cols}
                        if isinstance(idx, int) and col is not None and col in frame.columns:
                            val = frame.iloc[idx][col]
                            row[col] = str(val)[:200] if val is not None else None
                        elif isinstance(row.get(col), str):
                            row[col] = row[col][:200]
                        examples.append(row)
                outcomes.append(ExpectationOutcome(
                    expectation=cfg.type, column=col, success=bool(r.success),
                    unexpected_count=res.get("unexpected_count"), observed=res.get("observed_value"),
                    examples=examples))
        return outcomes


@contextlib.contextmanager
def contracts_process() -> Iterator[ContractsProcess]:
    """A child process that validates tables for the caller (:meth:`ContractsProcess.validate`), shut down when the
    block ends. A publication runs its contracts there (issue 22): the caller sends where each table is (a parquet
    or memory-mapped Arrow file's path, a small frame, or a picklable iterable of frames that reads a mapped file
    itself) and receives the :class:`ContractResult`; the reading, the identifier counts, Great Expectations'
    import (about 120 MB on its own) and its object churn over a long table's chunks (which left the caller's
    small-object arenas fragmented) all stay in the child, whose memory goes back when the block ends. Costs one
    interpreter start and the imports (a few seconds); see :mod:`grok.childproc`."""
    child = ContractsProcess()
    try:
        yield child
    finally:
        child.close()


class ContractsProcess(ChildProcess):
    """The contracts' :class:`grok.childproc.ChildProcess`: its failures are :class:`ContractError`."""

    def __init__(self) -> None:
        super().__init__("contracts", ContractError)

    def validate(self, data: Any, contract: Contract | str, **kwargs: Any) -> ContractResult:
        """:func:`validate` in the child; ``data`` must pickle (see :func:`contracts_process`)."""
        return self.call(validate, data, contract, **kwargs)


def _default_label_set() -> list[str]:
    try:
        from grok.knowledge import load_knowledge_base

        kb = load_knowledge_base()
        diseases = getattr(kb, "diseases", None)
        ids = list(diseases.keys()) if isinstance(diseases, dict) else [d.id for d in diseases or []]
        if ids:
            return sorted(set(ids) | {"normal"})
    except Exception:  # noqa: BLE001 - fall back to the canonical categories
        pass

    return list(CATEGORIES)
