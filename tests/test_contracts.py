"""Data contracts: every contract file loads; GE suites catch what they must and name the failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from grok.contracts import ContractError, contracts_dir, identifier_patterns, load_contract, validate
from grok.ingest.deid import DeidConfig
from grok.ingest.pipeline import IngestConfig, ingest

CONTRACT_FILES = sorted(p for p in contracts_dir().glob("*.yaml") if p.stem != "identifier_patterns")


@pytest.mark.parametrize("path", CONTRACT_FILES, ids=lambda p: p.stem)
def test_every_contract_loads(path):
    c = load_contract(path)
    schema = c.arrow_schema()
    assert len(schema) == len(c.columns) > 0
    assert c.name == path.stem


def test_identifier_patterns_compile_and_catch():
    import re

    pats, date_pat = identifier_patterns()
    regs = [re.compile(p["regex"]) for p in pats] + [re.compile(date_pat["regex"])]
    for bad in ("DOE^JANE", "MRN1234567", "born on 3 May", "jane@clinic.org", "485 777 3456", "1960-03-04"):
        assert any(r.search(bad) for r in regs), bad
    for ok in ("Pe2e8a26163733d50", "img-7df6e81acda25bdbef02", "central subfield thickness 312 um", "OD"):
        assert not any(r.search(ok) for r in regs), ok


def test_biomarker_bounds_use_known_ids():
    from grok.ids import (
        CFP_BIOMARKERS,
        OCT_EXTRA_BIOMARKERS,
        OCT_GROK_BIOMARKERS,
        OCT_PERIPAPILLARY_BIOMARKERS,
    )

    known = set(OCT_GROK_BIOMARKERS) | set(OCT_EXTRA_BIOMARKERS) | set(OCT_PERIPAPILLARY_BIOMARKERS) | set(CFP_BIOMARKERS)
    bounds = load_contract("biomarkers").plausible_bounds
    assert set(bounds) <= known
    scalar = {b for b in known if not b.endswith("_xy_px")}
    assert scalar <= set(bounds), scalar - set(bounds)
    assert all(lo < hi for lo, hi in bounds.values())


@pytest.fixture(scope="module")
def manifest(phantom_archive, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ing")
    ingest(str(phantom_archive / "dicom"), out, IngestConfig(deid=DeidConfig(key="k")))
    return out


def test_ingest_outputs_pass_their_contracts(manifest, planted, tmp_path):
    for name in ("manifest", "studies", "quarantine"):
        r = validate(manifest / f"{name}.parquet", name, deny_list=planted, docs_dir=tmp_path / name)
        assert r.success, r.summary()
        assert r.docs_index and Path(r.docs_index).is_file()


def test_planted_identifier_fails_and_is_not_echoed(manifest, planted, tmp_path):
    df = pd.read_parquet(manifest / "manifest.parquet")
    df.loc[0, "model"] = f"scanned for {planted[0].title()}"
    df.loc[1, "image_id"] = df.loc[0, "image_id"]
    df.loc[2, "manufacturer"] = "operator DOE^JANE"  # no known identifier, but an identifier pattern
    r = validate(df, "manifest", deny_list=planted, docs_dir=tmp_path / "m")
    assert not r.success
    failed = {(o.expectation, o.column): o for o in r.failed}
    assert set(failed) == {("expect_column_values_to_be_in_set", "__known_identifiers__model"),
                           ("expect_column_values_to_be_in_set", "__identifier_patterns__manufacturer"),
                           ("expect_column_values_to_be_unique", "image_id")}
    known = failed[("expect_column_values_to_be_in_set", "__known_identifiers__model")]
    assert known.unexpected_count == 1
    # the failing row is named by its ids, with the count of identifiers, not the text
    assert known.examples[0]["image_id"] == df.loc[0, "image_id"]
    assert int(known.examples[0]["__known_identifiers__model"]) == 1
    assert planted[0].lower() not in json.dumps(r.to_dict(), default=str).lower()
    assert planted[0].lower() not in r.summary().lower()
    # nor do the Great Expectations suite, validation results and data docs hold it (or the pattern match)
    written = [p for p in (tmp_path / "m").rglob("*") if p.is_file() and p.suffix in (".json", ".html", ".yml")]
    assert len(written) >= 4
    for p in written:
        text = p.read_text().lower()
        assert "doe^jane" not in text and not any(x.lower() in text for x in planted), p


def test_identifier_checks_count_per_row_and_keep_no_deny_string(manifest, planted, tmp_path):
    from grok.privacy.denylist import DenyList

    df = pd.read_parquet(manifest / "manifest.parquet")
    r = validate(df, "manifest", deny_list=DenyList.from_identifiers(planted), docs_dir=tmp_path / "ok")
    assert r.success, r.summary()
    cols = {o.column for o in r.outcomes}
    assert "__known_identifiers__patient_id" in cols and "__identifier_patterns__patient_id" in cols
    suite = next((tmp_path / "ok").rglob("expectations/manifest.json")).read_text()
    assert "regex_list" not in suite and not any(x.lower() in suite.lower() for x in planted)


def _instructions(n: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        pid = f"P{i // 2:016x}"
        rows.append({
            "id": f"i{i}", "study_id": f"S{i}", "patient_id": pid, "eye": "OD" if i % 2 else "OS",
            "task": "report", "label": ["normal", "amd", "glaucoma"][i % 3],
            "messages": [{"role": "user", "content": "<image> Describe the scan."},
                         {"role": "assistant", "content": "Central subfield thickness is about 270 um."}],
            "images": ["media/x.png"], "verifier_passed": bool(rng.random() < 0.95) or i > 0,
            "split": ["train", "validation", "test"][(i // 2) % 3],
        })
    return pd.DataFrame(rows)


def test_split_disjointness_and_pass_rate(tmp_path):
    df = _instructions()
    ok = validate(df, "instructions", docs_dir=tmp_path / "a")
    assert ok.success, ok.summary()
    assert ok.distributions["label"] == {"amd": 4, "glaucoma": 4, "normal": 4}
    leak = df.copy()
    leak.loc[1, "split"] = "test" if leak.loc[0, "split"] != "test" else "train"  # patient 0 in two splits
    r = validate(leak, "instructions", docs_dir=tmp_path / "b")
    assert not r.success
    assert any(o.column == "__splits_per_patient_id" for o in r.failed)
    low = df.copy()
    low["verifier_passed"] = [True] * 6 + [False] * 6
    r = validate(low, "instructions", params={"verifier_pass_rate": 0.9}, docs_dir=tmp_path / "c")
    assert [o.expectation for o in r.failed] == ["expect_column_mean_to_be_between"]


def test_schema_problems_reported(tmp_path):
    df = _instructions().drop(columns=["task"])
    r = validate(df, "instructions", docs_dir=tmp_path / "d")
    assert not r.success and any("task" in p for p in r.schema_problems)


def test_unknown_contract_names_known_ones():
    with pytest.raises(ContractError, match="known contracts: .*manifest"):
        load_contract("nope")


def test_identifier_checks_read_missing_text_of_any_string_dtype(manifest, planted, tmp_path):
    """A 400-study build stopped in the contracts with "expected string or bytes-like object, got 'float'":
    a text column of pandas' string dtype with a missing value. Missing text counts no identifier; a
    planted one in the same column is still found."""
    df = pd.read_parquet(manifest / "manifest.parquet")
    for dtype in ("str", "string", object):
        d = df.copy()
        d["model"] = d["model"].astype(dtype)
        d.loc[0, "model"] = None
        assert d["model"].isna().iloc[0]
        assert validate(d, "manifest", deny_list=planted, docs_dir=tmp_path / f"ok-{dtype}").success
        d.loc[1, "model"] = f"scanned for {planted[0].title()}"
        bad = validate(d, "manifest", deny_list=planted, docs_dir=tmp_path / f"bad-{dtype}")
        assert {o.column for o in bad.failed} == {"__known_identifiers__model"}, dtype


def test_repeated_text_reaches_great_expectations_coded_with_the_same_outcomes(tmp_path, monkeypatch):
    """Batches of 5 rows (so each batch's categories differ): repeated text columns reach Great Expectations as
    categoricals over every batch's values and a row's own id stays text, and the checks still see the whole
    table: an id repeated in another batch, a label outside the set, a malformed patient id, a patient in two
    splits, each named by the failing row's id; the same table validated in one batch gives the same outcomes."""
    import grok.contracts as gc

    seen = {}
    checks = gc._table_checks
    monkeypatch.setattr(gc, "_table_checks", lambda df, c, extra: (seen.update(df.dtypes.astype(str).to_dict()),
                                                                   checks(df, c, extra))[1])
    df = _instructions(40)
    df["study_id"] = [f"S{i // 2}" for i in range(40)]  # two rows a study, four a patient
    df["patient_id"] = [f"P{i // 4:016x}" for i in range(40)]
    df["split"] = [["train", "validation", "test"][(i // 4) % 3] for i in range(40)]
    df.loc[33, "id"] = "i2"  # the id of a row of the first batch
    df.loc[17, "label"] = "not-a-label"
    df.loc[26, "patient_id"] = "Pnot-hex"
    df.loc[8, "split"] = "test" if df.loc[9, "split"] != "test" else "train"  # patient 2 in two splits
    monkeypatch.setattr(gc, "BATCH_ROWS", 5)
    small = validate(df, "instructions", docs_dir=tmp_path / "small")
    assert {seen[c] for c in ("study_id", "patient_id", "eye", "label", "split")} == {"category"}
    assert seen["id"] == "str" and seen["__identifier_patterns__messages"] == "uint8"
    monkeypatch.setattr(gc, "BATCH_ROWS", 4096)
    whole = validate(df, "instructions", docs_dir=tmp_path / "whole")
    failed = {(o.expectation, o.column): o for o in small.failed}
    assert set(failed) == {(o.expectation, o.column) for o in whole.failed} == {
        ("expect_column_values_to_be_unique", "id"), ("expect_column_values_to_be_in_set", "label"),
        ("expect_column_values_to_match_regex", "patient_id"),
        ("expect_column_values_to_be_in_set", "__splits_per_patient_id")}
    assert {e["id"] for e in failed[("expect_column_values_to_be_unique", "id")].examples} == {"i2"}
    assert [e["id"] for e in failed[("expect_column_values_to_be_in_set", "label")].examples] == ["i17"]
    assert [e["id"] for e in failed[("expect_column_values_to_match_regex", "patient_id")].examples] == ["i26"]
    leak = failed[("expect_column_values_to_be_in_set", "__splits_per_patient_id")]
    assert leak.unexpected_count == 4 and {e["id"] for e in leak.examples} <= {"i8", "i9", "i10", "i11"}
    assert [o.unexpected_count for o in small.outcomes] == [o.unexpected_count for o in whole.outcomes]
def test_great_expectations_keeps_no_validated_frame_after_validate(tmp_path):
    """Great Expectations keeps its project's context in a module-level manager, and the pandas execution engine
    caches each batch's data: without releasing it, the last frame validated stayed alive after validate returned
    (through the rest of a publication, issue 22)."""
    import gc

    def batch_data():
        gc.collect()
        return [o for o in gc.get_objects() if type(o).__name__ == "PandasBatchData"]

    r = validate(_instructions(30), "instructions", docs_dir=tmp_path / "a")
    assert r.success and r.n_rows == 30
    assert batch_data() == []


def test_a_long_table_is_validated_in_chunks_with_the_whole_tables_outcomes(tmp_path, monkeypatch):
    """Past GE_CHUNK_ROWS rows, row-wise expectations run a chunk at a time and the whole-table ones (unique ids,
    the pass rate's mean, a patient in two splits) once on their columns: every outcome equals one validation of
    the whole table's: an id repeated in another chunk, a patient whose rows span two chunks in two splits, a
    label and a patient id in the wrong form, an e-mail address in a late chunk's text, a pass rate too low."""
    import grok.contracts as gc

    frames = []
    run = gc._GreatExpectations.run
    monkeypatch.setattr(gc._GreatExpectations, "run", lambda self, name, frame, *a: (
        frames.append((name, len(frame), set(frame.columns))), run(self, name, frame, *a))[1])
    df = _instructions(40)
    df["study_id"] = [f"S{i // 2}" for i in range(40)]
    df["patient_id"] = [f"P{i // 4:016x}" for i in range(40)]
    df["split"] = [["train", "validation", "test"][(i // 4) % 3] for i in range(40)]
    df.loc[33, "id"] = "i2"  # the id of a row of the first chunk
    df.loc[17, "label"] = "not-a-label"
    df.loc[26, "patient_id"] = "Pnot-hex"
    df.loc[9, "split"] = "test" if df.loc[8, "split"] != "test" else "train"  # patient 2: rows 8-11, two chunks
    df.loc[37, "messages"] = [{"role": "user", "content": "<image> Scan of jane.doe@example.org"},
                              {"role": "assistant", "content": "Normal."}]
    df["verifier_passed"] = [i % 4 != 0 for i in range(40)]  # 75 %, under the 90 % asked for
    monkeypatch.setattr(gc, "BATCH_ROWS", 5)
    monkeypatch.setattr(gc, "GE_CHUNK_ROWS", 10)
    chunked = validate(df, "instructions", docs_dir=tmp_path / "chunked")
    assert [(n, rows) for n, rows, _ in frames[:4]] == [("instructions", 10)] * 4
    # the whole-table checks: a partition of the rows at a time by the hash of each key (the id; the patient,
    # with the split), never a frame of every row; only what they read, and each row once per key
    parts = frames[4:]
    assert parts and {n for n, _, _ in parts} == {"instructions-table"}
    assert all(rows <= gc.PARTITION_SLACK * 10 for _, rows, _ in parts)
    assert all("messages" not in cols and "label" not in cols and "verifier_passed" not in cols
               for _, _, cols in parts)
    by_patient = [rows for _, rows, cols in parts if "__splits_per_patient_id" in cols]
    assert len(by_patient) > 1 and sum(by_patient) == 40
    assert sum(rows for _, rows, cols in parts if "__splits_per_patient_id" not in cols) == 40
    assert not list((tmp_path / "chunked").glob("partitions-*"))  # the partition files are removed
    frames.clear()
    monkeypatch.setattr(gc, "GE_CHUNK_ROWS", 4096)
    whole = validate(df, "instructions", docs_dir=tmp_path / "whole")
    assert [(n, rows) for n, rows, _ in frames] == [("instructions", 40)]
    assert not chunked.success and not whole.success
    key = {(o.expectation, o.column): (o.success, o.unexpected_count) for o in whole.outcomes}
    assert {(o.expectation, o.column): (o.success, o.unexpected_count) for o in chunked.outcomes} == key
    assert len(chunked.outcomes) == len(whole.outcomes) == len(key)
    failed = {(o.expectation, o.column): o for o in chunked.failed}
    assert set(failed) == {
        ("expect_column_values_to_be_unique", "id"), ("expect_column_values_to_be_in_set", "label"),
        ("expect_column_values_to_match_regex", "patient_id"), ("expect_column_mean_to_be_between", "verifier_passed"),
        ("expect_column_values_to_be_in_set", "__splits_per_patient_id"),
        ("expect_column_values_to_be_in_set", "__identifier_patterns__messages")}
    assert {e["id"] for e in failed[("expect_column_values_to_be_unique", "id")].examples} == {"i2"}
    assert [e["id"] for e in failed[("expect_column_values_to_be_in_set", "label")].examples] == ["i17"]
    assert [e["id"] for e in failed[("expect_column_values_to_be_in_set", "__identifier_patterns__messages")]
            .examples] == ["i37"]
    assert failed[("expect_column_mean_to_be_between", "verifier_passed")].observed == pytest.approx(0.75)
    assert failed[("expect_column_values_to_be_in_set", "__splits_per_patient_id")].unexpected_count == 4
    assert "jane.doe" not in json.dumps(chunked.to_dict(), default=str)


def test_a_compound_key_is_unique_over_every_chunk_as_over_the_whole_table(tmp_path, monkeypatch):
    """A labels table validated in chunks: a (patient, eye) pair repeated three chunks apart and a pair whose
    key is missing in both columns (ignored, as Great Expectations ignores it) give the outcomes, counts and first
    examples of one validation of the whole table."""
    import grok.contracts as gc

    n = 60
    df = pd.DataFrame({"patient_id": [f"P{i // 2:016x}" for i in range(n)],
                       "eye": ["OD" if i % 2 else "OS" for i in range(n)],
                       "primary_label": ["normal"] * n})
    df.loc[47, ["patient_id", "eye"]] = [df.loc[3, "patient_id"], df.loc[3, "eye"]]  # the pair of row 3
    df.loc[20, ["patient_id", "eye"]] = [None, None]
    df.loc[21, "eye"] = "left"
    whole = validate(df, "labels", docs_dir=tmp_path / "whole")
    monkeypatch.setattr(gc, "BATCH_ROWS", 7)
    chunked = validate(df, "labels", docs_dir=tmp_path / "chunked", chunk_rows=12)
    assert not whole.success and not chunked.success
    assert [(o.expectation, o.column, o.success, o.unexpected_count, o.examples) for o in chunked.outcomes] == [
        (o.expectation, o.column, o.success, o.unexpected_count, o.examples) for o in whole.outcomes]
    unique = next(o for o in chunked.outcomes if o.expectation == "expect_compound_columns_to_be_unique")
    assert unique.unexpected_count == 2 and not unique.success


def test_partitions_keep_equal_keys_together_and_split_a_long_partition_again(tmp_path):
    """Rows land in the partition of their key's hash; a partition longer than the limit is split by the next
    bits of the hash, except one that holds a single key (it cannot be split); every row comes back once."""
    import grok.contracts as gc

    keys = [f"k{i}" for i in range(200)] + ["same"] * 50
    frame = pd.DataFrame({"key": keys, "__row": np.arange(len(keys))})
    parts = gc._Partitions(tmp_path / "p", ("key",), bits=1)
    parts.add(frame.iloc[:100])
    parts.add(frame.iloc[100:])
    got = list(parts.frames(limit=30))
    rows = np.concatenate([f["__row"].to_numpy() for f in got])
    assert sorted(rows.tolist()) == list(range(len(keys)))
    assert len(got) > 2  # split again past the first bit
    for f in got:
        assert list(f["__row"]) == sorted(f["__row"])  # the table's order within a partition
        if len(f) > 30:
            assert set(f["key"]) == {"same"}
    assert sum("same" in set(f["key"]) for f in got) == 1
    assert not list((tmp_path / "p").rglob("*.arrows"))


def _failing_chunked_table() -> pd.DataFrame:
    df = _instructions(24)
    df.loc[20, "id"] = "i3"  # repeated in another chunk
    df.loc[7, "label"] = "not-a-label"
    return df


def test_a_table_validated_in_the_contracts_process_gives_the_same_result(tmp_path, monkeypatch):
    """``contracts_process`` validates in the child what this process would (a long table in chunks, its whole-table
    checks once): this process's own Great Expectations runner is made to fail, and the outcomes, their examples,
    the counts and the data docs are those of the same validation run here; the same child validates again, and it
    is gone with the block (issue 22)."""
    from dataclasses import asdict

    import grok.contracts as gc

    df = _failing_chunked_table()
    here = validate(df, "instructions", docs_dir=tmp_path / "here", batch_rows=5, chunk_rows=10)

    def not_here(self, *a, **k):
        raise AssertionError("Great Expectations ran in the calling process")

    monkeypatch.setattr(gc._GreatExpectations, "run", not_here)
    with gc.contracts_process() as child:
        there = child.validate(df, "instructions", docs_dir=tmp_path / "there", batch_rows=5, chunk_rows=10)
        again = child.validate(_instructions(8), "instructions", docs_dir=tmp_path / "again")
    assert child.proc.returncode == 0
    assert not there.success and again.success and there.n_rows == 24
    assert [asdict(o) for o in there.outcomes] == [asdict(o) for o in here.outcomes]
    assert {(o.expectation, o.column) for o in there.failed} == {
        ("expect_column_values_to_be_unique", "id"), ("expect_column_values_to_be_in_set", "label")}
    assert there.docs_index and Path(there.docs_index).exists()
    assert (tmp_path / "there" / "gx" / "expectations" / "instructions-table.json").exists()  # chunked there too


def test_an_unknown_expectation_is_named_wherever_it_is_validated(tmp_path):
    """A contract naming an expectation Great Expectations does not have fails with the name, in this process and
    in the contracts process (the error comes back as it was raised)."""
    import grok.contracts as gc

    c = load_contract("instructions")
    c.expectations.append({"type": "expect_column_values_to_be_purple", "column": "id"})
    with pytest.raises(ContractError, match="expect_column_values_to_be_purple"):
        validate(_instructions(4), c, docs_dir=tmp_path / "here")
    with gc.contracts_process() as child, pytest.raises(ContractError, match="expect_column_values_to_be_purple"):
        child.validate(_instructions(4), c, docs_dir=tmp_path / "there")


def test_validating_in_the_contracts_process_never_imports_great_expectations_here(tmp_path):
    """What a publication's driver gains (issue 22): Great Expectations' import (about 120 MB) and its churn stay in
    the child. Checked in a fresh interpreter, since this one has imported Great Expectations already, running a
    script without an ``if __name__ == "__main__"`` guard: the child must not run the caller's script again (as
    ``multiprocessing``'s spawn would), so the script's line is printed once."""
    import os
    import subprocess
    import sys

    script = tmp_path / "no_guard.py"
    script.write_text("import sys, grok.contracts as gc\n"
                      "from tests.test_contracts import _instructions\n"
                      "with gc.contracts_process() as child:\n"
                      f"    r = child.validate(_instructions(6), 'instructions', docs_dir={str(tmp_path / 'docs')!r})\n"
                      "print('validated', r.success, r.n_rows, 'great_expectations' in sys.modules)\n")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["validated", "True", "6", "False"]


def test_a_contracts_process_that_dies_is_a_clear_error(tmp_path):
    """A child that ends mid-request (killed for memory, say) fails the call with its exit code, never hangs; the
    block still closes."""
    import os

    import grok.contracts as gc

    class ExitsWhenRead:
        def __reduce__(self):
            return (os._exit, (3,))

    with gc.contracts_process() as child:
        with pytest.raises(ContractError, match="exit code 3"):
            child.validate(pd.DataFrame({"a": [ExitsWhenRead()]}), "instructions", docs_dir=tmp_path)
    assert child.proc.returncode == 3


def test_the_contracts_benchmark_makes_longer_tables_that_keep_the_contract(tmp_path):
    """benchmarks/contracts.py writes a table k times over: every id distinct per copy, patient ids still in the
    contract's form, one split per patient (as publication adds it), so the longer table validates as the short
    one does and its whole-table checks have real work."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from benchmarks.contracts import longer

    df = _instructions(12).drop(columns=["split"])
    src, dst = tmp_path / "instructions.parquet", tmp_path / "x3.parquet"
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), src)
    assert longer(src, dst, 3, split=True) == 36
    out = pq.read_table(dst).to_pandas()
    assert out["id"].is_unique and out["study_id"].is_unique and len(out) == 36
    assert out["patient_id"].str.fullmatch(r"P[0-9a-f]{16}").all() and out["patient_id"].nunique() == 18
    assert (out.groupby("patient_id")["split"].nunique() == 1).all()
    assert validate(out, "instructions", docs_dir=tmp_path / "docs").success
