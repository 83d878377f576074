"""Publication's index of the instruction rows (grok.publish.InstructionRows): only the columns that select and
order rows are held for every row; the rest is read with the text, and every consumer sees the same values as
from the whole table (issue 22)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import grok.publish as pub
from grok.instruct.export import INSTRUCTIONS_SCHEMA


def _rows(n: int) -> list[dict]:
    rng = np.random.default_rng(n)
    out = []
    for i in range(n):
        k = int(rng.integers(0, 3))
        out.append({
            "id": f"row-{rng.permutation(n)[0]:04d}-{i:04d}", "study_id": f"S{i // 3:03d}", "patient_id": f"P{i // 6:03d}",
            "eye": ["OD", "OS"][i % 2], "task": ["report", "vqa", "cot"][k], "label": ["normal", "amd"][i % 2],
            "messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}],
            "images": [f"media/S{i // 3:03d}/oct_{j}.png" for j in range(k)] + ["media/shared/cfp.jpg"],
            "image_roles": ["oct"] * k + ["cfp"],
            "mode": "template", "template_id": None if i % 7 == 0 else f"t{k}",
            "template_sha256": None if i % 7 == 0 else f"sha{k}", "seed": i,
            "kb_snapshot": None if i % 5 == 0 else f"kb-{i % 2}", "verifier_passed": bool(i % 4),
            "verifier_score": float(i % 10) / 10, "verifier_reasons": [f"reason {i % 3}"] if i % 3 else [],
            "provenance": f'{{"row": {i}}}', "attempts": 1 + i % 2})
    return out


@pytest.fixture(params=[False, True], ids=["in_memory", "memory_mapped"])
def rows_and_table(tmp_path, request):
    table = pa.Table.from_pylist(_rows(60), schema=INSTRUCTIONS_SCHEMA)
    path = tmp_path / "instructions.parquet"
    pq.write_table(table, path)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    return pub.InstructionRows(path, scratch if request.param else None), table


def test_the_frame_holds_the_index_columns_only(rows_and_table):
    rows, table = rows_and_table
    assert list(rows.frame.columns) == [c for c in table.column_names if c in pub.INDEX_COLUMNS] + ["_pos"]
    assert not {"messages", "provenance", "images", "image_roles", "template_sha256"} & set(rows.frame.columns)
    assert rows.heavy_columns == [c for c in table.column_names if c not in pub.INDEX_COLUMNS]
    # no Python object per row: the verifier's reasons (a list per row) are read with the text
    assert "verifier_reasons" in rows.heavy_columns
    assert [c for c, t in rows.frame.dtypes.items() if t == object] == []
    # the id is read with the text; the frame is in id order, each row naming its place in the file
    assert "id" in rows.heavy_columns and "id" not in rows.frame.columns
    ids = table.column("id").to_pylist()
    assert ids != sorted(ids)  # the file is not in id order
    assert [ids[p] for p in rows.frame["_pos"]] == sorted(ids) == list(rows.ids(rows.frame))
    assert list(rows.frame["task"]) == [table.column("task")[p].as_py() for p in rows.frame["_pos"]]


def test_full_rows_are_the_table_rows_in_the_frames_order(rows_and_table):
    rows, table = rows_and_table
    want = {r["id"]: r for r in table.to_pylist()}
    sel = rows.frame[rows.frame["verifier_passed"]].sort_values("task", kind="stable").iloc[::2]
    got = list(rows.full(sel, batch=7))
    assert [r["id"] for r in got] == list(rows.ids(sel))
    for r in got:
        w = want[r["id"]]
        assert set(r) == set(w) | {"_pos"}
        for k, v in w.items():
            have = r[k].tolist() if hasattr(r[k], "tolist") else r[k]
            assert have == v, (k, have, v)
    # the frame's own values win (a split, an edited score); a curator's edit replaces the messages and reasons
    edited = sel.head(3).assign(verifier_score=9.5, split="test",
                                messages_edited=[[{"role": "assistant", "content": "edited"}], None, None],
                                verifier_reasons_edited=[None, ["edited reason"], None])
    first, second, third = list(rows.full(edited))
    assert first["verifier_score"] == 9.5 and first["split"] == "test" and first["messages"][0]["content"] == "edited"
    assert second["messages"] == want[second["id"]]["messages"]
    assert first["verifier_reasons"] == want[first["id"]]["verifier_reasons"]
    assert second["verifier_reasons"] == ["edited reason"]
    assert not {"messages_edited", "verifier_reasons_edited"} & set(third)


def test_contract_frames_have_every_column(rows_and_table):
    rows, table = rows_and_table
    # the held index codes its repeated text (a code a row); the contracts' batches get plain text back
    assert all(isinstance(rows.frame[c].dtype, pd.CategoricalDtype) for c in pub.CATEGORY_COLUMNS if c in rows.frame)
    frames = list(rows.frames(rows.frame, batch=16))
    assert [len(f) for f in frames] == [16, 16, 16, 12]
    assert not any(isinstance(f[c].dtype, pd.CategoricalDtype) for f in frames for c in f.columns)
    assert set(frames[0].columns) == set(table.column_names)
    in_order = table.take(rows.frame["_pos"].to_numpy())  # the frame's rows, in its (id) order
    assert [v for f in frames for v in f["id"]] == in_order.column("id").to_pylist()
    assert [list(v) for f in frames for v in f["verifier_reasons"]] == in_order.column("verifier_reasons").to_pylist()
    images = [list(v) for f in frames for v in f["images"]]
    assert images == in_order.column("images").to_pylist()


def test_the_contracts_process_gets_the_index_and_the_files_path_not_the_text(rows_and_table):
    """What run_contracts sends its child process: the rows' index and, for a memory-mapped copy, its path (the other
    process maps it again), so the frames there are the frames here; an in-memory table travels whole."""
    import pickle

    rows, table = rows_and_table
    sel = rows.frame[rows.frame["verifier_passed"]].iloc[::-1]
    rows.frame = None  # as prepare leaves it: the index is the selection's
    want = list(pub.InstructionFrames(rows, sel))
    assert len(want) >= 1
    for spill in (False, True):
        frames = pub.InstructionFrames(rows, sel)
        if spill:  # with a mapped copy, the index is written beside it and read there a part at a time
            frames.spill()
        sent = pickle.dumps(frames)
        assert (b"answer 17" in sent) == (rows.arrow is None)  # the text travels only without a mapped copy
        # the index travels (the categories of its study ids) unless it was spilled beside the mapped copy
        assert (str(sel["study_id"].iloc[3]).encode() in sent) == (not spill or rows.arrow is None)
        got = pickle.loads(sent)
        assert got.n_rows == len(sel)
        got = list(got)
        assert [len(f) for f in got] == [len(f) for f in want]
        for a, b in zip(got, want):
            pd.testing.assert_frame_equal(a, b)
        frames.close()
        assert frames.index_file is None or not frames.index_file.exists()


def test_split_rows_are_the_split_in_the_frames_order_scanned_in_parts(rows_and_table, monkeypatch):
    rows, table = rows_and_table
    frame = rows.frame.assign(
        split=pd.Categorical(["train", "validation", "test", "train", "train"] * 12))
    monkeypatch.setattr(pub, "SPLIT_SCAN_ROWS", 7)  # parts that cut the splits' runs anywhere
    for splits in (("train",), ("validation", "test"), ("test",)):
        want = pd.concat([frame[frame["split"] == s] for s in splits])
        got = list(pub.split_rows(rows, frame, *splits))
        assert [r["id"] for r in got] == list(rows.ids(want)) and len(got) == len(want) > 0
        assert {r["split"] for r in got} == set(splits)
        assert [r["messages"][0]["content"] for r in got] == [
            m[0]["content"] for m in rows.values(want, ["messages"]).column("messages").to_pylist()]
    assert list(pub.split_rows(rows, frame.iloc[:0], "train")) == []


def test_card_distributions_match_pandas_and_count_the_missing(tmp_path):
    rng = np.random.default_rng(3)
    central = rng.normal(270, 20, 41)
    central[[2, 9, 30]] = np.nan
    path = tmp_path / "biomarkers.parquet"
    pq.write_table(pa.table({"study_id": [f"S{i}" for i in range(41)], "macular_thickness_central_um": central,
                             "av_ratio": pa.array([None] * 41, pa.float64()),
                             "vessel_density": rng.uniform(0.05, 0.2, 41)}), path)
    got = {d["id"]: d for d in pub.biomarker_distributions(path)}
    assert set(got) == {"macular_thickness_central_um", "vessel_density"}  # never measured: not shown
    for name, missing in (("macular_thickness_central_um", 3), ("vessel_density", 0)):
        s = pd.read_parquet(path)[name].dropna()
        assert got[name]["n"] == len(s) == 41 - missing and got[name]["missing"] == missing
        assert got[name]["p5"] == pytest.approx(s.quantile(0.05), abs=1e-9)
        assert got[name]["median"] == pytest.approx(s.median(), abs=1e-9)
        assert got[name]["p95"] == pytest.approx(s.quantile(0.95), abs=1e-9)


def test_versions_and_media_inputs_read_the_heavy_columns(rows_and_table, tmp_path, monkeypatch):
    rows, table = rows_and_table
    kept = rows.frame[rows.frame["verifier_passed"]]
    whole = [table.slice(i, 1).to_pylist()[0] for i in kept["_pos"]]
    prep = {"instructions": kept, "rows": rows,
            "alignment": pa.table({"sample_id": ["S-al"], "image_path": ["media/al.png"]}), "records": {}}
    templates = sorted({f"{r['template_id']}:{r['template_sha256']}" for r in whole})
    assert "None:None" in templates and len(templates) == 4  # a row without a template id (hand-made input)
    v = pub._versions(tmp_path, prep)
    assert v["templates"] == templates
    assert v["kb_snapshots"] == sorted({r["kb_snapshot"] for r in whole} - {None}) == ["kb-0", "kb-1"]
    monkeypatch.setattr(pub, "SPLIT_SCAN_ROWS", 3)  # read in parts: the same versions
    assert pub._versions(tmp_path, prep) == v
    # without records every row's images are given (once per batch of rows), and the alignment's
    media = list(pub._media_inputs(prep))
    assert sorted(set(media)) == sorted({p for r in whole for p in r["images"]} | {"media/al.png"})
    # a path its own study's record lists comes from the record, once; one it does not list still comes
    records: dict = {}
    for r in whole:
        own = records.setdefault(r["study_id"], {"images": {}, "overlays": {"ov": f"media/{r['study_id']}/ov.png"}})
        own["images"].update({p: p for p in (r["images"][:-1] if r["id"] == whole[0]["id"] else r["images"])})
    stray = whole[0]["images"][-1]
    media = list(pub._media_inputs({**prep, "records": records}))
    listed = [p for rec in records.values() for p in dict.fromkeys(v for d in rec.values() for v in d.values())]
    assert media[:len(listed)] == listed  # each record's paths once (a file shared by studies: once a record)
    assert set(media[len(listed):]) == ({stray} - set(listed)) | {"media/al.png"}


def test_study_records_are_found_by_binary_search(tmp_path):
    """StudyRecords holds sorted ids and offsets, not a dict: the same lookups, order and duplicates rule as a
    dict read from the file (first place, last record), for ids of any length and non-ASCII ones."""
    recs = [{"study_id": sid, "patient_id": f"P-{sid}", "label": lab, "n": i}
            for i, (sid, lab) in enumerate([("b", "amd"), ("a", "normal"), ("é", "dr"), ("b", "glaucoma"),
                                            ("c", None), ("ab", "amd")])]
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n\n")
    want = {}
    for r in recs:
        want[r["study_id"]] = r
    got = pub.StudyRecords(path)
    assert list(got) == list(want) == ["b", "a", "é", "c", "ab"] and len(got) == 5
    assert {k: got[k] for k in got} == want and want["b"]["label"] == "glaucoma"
    assert list(got.patients()) == [(r["patient_id"], r["label"]) for r in want.values()]
    assert [r["study_id"] for r in got.sorted_values()] == sorted(want)
    for missing in ("", "aa", "abc", "zzzz", "éé", None):
        assert missing not in got and got.get(missing) is None
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    none = pub.StudyRecords(empty)
    assert len(none) == 0 and list(none) == [] and list(none.patients()) == [] and none.get("a") is None


def _published(r: dict, i: int) -> dict:
    """A row as build_datasets hands it to a split's writer: images as bytes (one row without any)."""
    imgs = [] if i == 4 else [{"bytes": bytes([i % 251]) * (100 + 37 * j), "path": p} for j, p in enumerate(r["images"])]
    return {"id": r["id"], "study_id": r["study_id"], "patient_id": r["patient_id"], "eye": r["eye"], "task": r["task"],
            "label": r["label"], "messages": r["messages"], "images": imgs, "image_roles": r["image_roles"],
            "verifier_score": r["verifier_score"], "verifier_reasons": r["verifier_reasons"],
            "template_id": r["template_id"] or "", "kb_snapshot": r["kb_snapshot"] or "", "provenance": r["provenance"]}


@pytest.mark.parametrize("encode_rows", [1, 3, 10])
def test_a_split_file_is_the_same_however_many_rows_are_encoded_at_once(tmp_path, monkeypatch, encode_rows):
    """_SplitWriter encodes a batch a part at a time (its memory) and joins the parts into the batch's one record
    batch: the Arrow file is byte-for-byte the one that encoding each whole batch at once writes."""
    instr, _ = pub._features()
    rows = [_published(r, i) for i, r in enumerate(_rows(25))]
    monkeypatch.setattr(pub, "DATASET_BATCH_ROWS", 10)
    files = {}
    for n in (10, encode_rows):  # 10: the whole batch in one from_dict, as before the parts
        monkeypatch.setattr(pub, "DATASET_ENCODE_ROWS", n)
        (tmp_path / str(n)).mkdir(exist_ok=True)
        w = pub._SplitWriter(tmp_path / str(n), "split", instr)
        for r in rows:
            w.add(r)
        ds = w.dataset()
        files[n] = (tmp_path / str(n) / "split.arrow").read_bytes()
        assert [b.num_rows for b in ds.data.table.to_batches()] == [10, 10, 5]
        assert ds.data.table.equals(pa.Table.from_pylist(rows, schema=ds.data.table.schema))
    assert files[encode_rows] == files[10]


def test_image_bytes_reads_the_file_and_names_a_missing_one(tmp_path):
    (tmp_path / "media" / "S1").mkdir(parents=True)
    (tmp_path / "media" / "S1" / "oct_0.png").write_bytes(b"\x89PNG-bytes")
    assert pub._image_bytes(tmp_path, "media/S1/oct_0.png") == {"bytes": b"\x89PNG-bytes", "path": "oct_0.png"}
    with pytest.raises(pub.PublishError, match=r"image media/S2/oct_0.png referenced by a row is missing; rerun"):
        pub._image_bytes(tmp_path, "media/S2/oct_0.png")


def test_contradicted_studies_page_shows_the_first_and_the_csv_holds_every_one(tmp_path):
    """The curator report lists the first studies whose label the findings contradict, by study id, and writes every
    one to a CSV beside the page (the page listed them all: about 12 % of a build's studies, issue 22)."""
    import csv

    sids = [f"S{i:03d}" for i in (7, 3, 11, 5, 1)]
    skipped = pd.DataFrame({"study_id": [s for s in sids for _ in range(2)] + ["S900"],  # 2 rows each; one unrelated
                            "task": ["cot", "report"] * 5 + ["cot"],
                            "reason_code": ["label_contradicted_by_findings"] * 10 + ["no_usable_image"]})
    records = {s: {"patient_id": "P" + s, "eye": "OD", "label": "amd",
                   "reasoning": {"differential": [{"id": "amd", "status": "ruled_out", "reason": "no drusen"},
                                                  {"id": "normal", "status": "supported"}],
                                 "findings": [{"id": "cup", "abnormal": True, "explanation": "large cup"}]}}
               for s in sids if s != "S011"}  # one study without a record: skipped, not counted
    prep = {"skipped": skipped, "records": records, "split_of": {"PS001": "train"}}
    shown, n, rows = pub._contradicted(prep, tmp_path / "c.csv", shown=2)
    assert [c["study_id"] for c in shown] == ["S001", "S003"] and n == 4 and rows == 10
    assert shown[0]["split"] == "train" and shown[1]["split"] == "" and shown[0]["supported"] == ["normal"]
    with open(tmp_path / "c.csv", newline="") as fh:
        got = list(csv.DictReader(fh))
    assert [r["study_id"] for r in got] == ["S001", "S003", "S005", "S007"]
    assert got[0]["reason"] == "no drusen" and got[0]["abnormal"] == "large cup" and got[0]["supported"] == "normal"
    assert pub._contradicted({**prep, "skipped": skipped.iloc[10:]}, tmp_path / "none.csv") == ([], 0, 0)
    assert not (tmp_path / "none.csv").exists()
