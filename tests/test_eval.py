"""grok eval: a perfect predictor scores macro F1 1.0 and full marks, a label-shuffled one scores at chance,
numbers perturbed by 20 % lose the quantitative marks and nothing else, bad input is counted (never dropped),
the reader's verdicts are the verifier's, compare's paired bootstrap, the report renders in Chromium."""

from __future__ import annotations

import json
import logging
import random
import re
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import grok.eval.score as score_mod
from grok.cli import app
from grok.eval.compare import compare, load_scores
from grok.eval.data import (
    EvalInputError,
    Predictions,
    benchmark_from_records,
    likely_not_english,
    load_predictions,
)
from grok.eval.reader import AnswerReader
from grok.eval.score import (
    class_columns,
    class_index,
    classification,
    evaluate,
    iter_items,
    macro_f1_accuracy,
    reference_readings,
    resample_weights,
    write_scores,
)
from grok.eval.text import lcs_length, rouge_l
from grok.instruct.samples import sample_records
from grok.knowledge import load_knowledge_base
from grok.knowledge.lexicon import build_lexicon
from grok.stages.config import BuildConfig
from grok.stages.runner import run_build
from grok.verify.scan import _NUMBER_RE, mask
from grok.verify.verifier import VerifyConfig
from tests.browser import chromium_page
from tests.llm_server import Faults, LocalLLMServer
from tests.test_build import small_config

MARKS = ("correct", "coverage", "findings_agreement", "invented", "wrong_eye")
_BOX = re.compile(r"<\|box_start\|>.*?<\|box_end\|>")


@pytest.fixture(autouse=True)
def _eval_cache(tmp_path, monkeypatch):
    """The command's reference-reading cache goes to the test's folder, not the user's."""
    monkeypatch.setenv("GROK_EVAL_CACHE", str(tmp_path / "eval-cache"))


@pytest.fixture(scope="module")
def kb():
    return load_knowledge_base()


@pytest.fixture(scope="module")
def reader(kb):
    return AnswerReader(build_lexicon(kb))


@pytest.fixture(scope="module")
def synthetic(kb):
    """Every family's verified template row for 70 synthetic studies over all categories (420 items)."""
    return benchmark_from_records(sample_records(70, 0, kb), kb=kb)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A small published version (the small phantom of tests/test_build.py, about a minute)."""
    tmp = tmp_path_factory.mktemp("eval_build")
    cfg = BuildConfig.model_validate(small_config(tmp))
    rep = {r.stage: r for r in run_build(cfg)}
    return tmp, str(tmp / "registry"), rep["publish"].outputs


def _perfect(bench) -> Predictions:
    return Predictions("perfect", {k: it.reference for k, it in bench.items.items()})


def _bump(x: str) -> str:
    d = len(x.split(".")[1]) if "." in x else 0
    out = f"{float(x) * 1.2:.{d}f}"
    return out if out != x else f"{float(x) + 1:.{d}f}"


def perturb_numbers(text: str) -> str:
    """Every number the verifier reads as a number (its own mask and pattern), times 1.2; boxes untouched."""
    low = text.lower()
    assert len(low) == len(text)
    boxes = [m.span() for m in _BOX.finditer(text)]
    edits = []
    for m in _NUMBER_RE.finditer(mask(low)):
        if any(a <= m.start() < b for a, b in boxes):
            continue
        edits += [m.span(g) for g in ("a", "b") if m.group(g)]
    for a, b in sorted(edits, reverse=True):
        text = text[:a] + _bump(text[a:b]) + text[b:]
    return text


def _means(res) -> dict:
    return {m: res["overall"][m]["mean"] for m in (*MARKS, "quantitative", "rouge_l")}


# -- the three scoring invariants of the issue ----------------------------------------------------
def test_perfect_predictor_scores_full_marks(synthetic):
    res = evaluate(synthetic, _perfect(synthetic), resamples=200, bleu=False)
    cls = res["overall"]["classification"]
    assert cls["n"] == 3 * 70  # diagnosis, report and chain-of-thought items state a diagnosis
    assert cls["macro_f1"] == 1.0 and cls["abstained"] == 0 and len(cls["per_class"]) >= 7
    m = _means(res)
    assert m == {"correct": 1.0, "coverage": 1.0, "findings_agreement": 1.0, "invented": 0.0, "wrong_eye": 0.0,
                 "quantitative": 1.0, "rouge_l": 1.0}
    assert res["overall"]["numbers_checked"] > 500 and res["overall"]["numbers_wrong"] == 0
    assert res["problems"] == {}


def test_label_shuffled_predictor_scores_at_chance(synthetic):
    ids = list(synthetic.items)
    refs = [synthetic.items[i].reference for i in ids]
    random.Random(0).shuffle(refs)
    res = evaluate(synthetic, Predictions("shuffled", dict(zip(ids, refs))), resamples=500, bleu=False)
    cls = res["overall"]["classification"]
    n_classes = len(cls["per_class"])
    chance = 1 / n_classes
    assert n_classes >= 7
    assert abs(cls["macro_f1"] - chance) < 0.08, (cls["macro_f1"], chance)
    lo, hi = cls["macro_f1_ci95"]
    assert lo < chance + 0.05 and hi < 0.35


def test_numbers_off_by_20_percent_lose_only_the_quantitative_marks(synthetic):
    perfect = evaluate(synthetic, _perfect(synthetic), resamples=0, bleu=False)
    bumped = {k: perturb_numbers(it.reference) for k, it in synthetic.items.items()}
    assert sum(bumped[k] != it.reference for k, it in synthetic.items.items()) > 200
    res = evaluate(synthetic, Predictions("bumped", bumped), resamples=0, bleu=False)
    before, after = _means(perfect), _means(res)
    assert after["quantitative"] == 0.0 and before["quantitative"] == 1.0
    assert res["overall"]["numbers_checked"] == perfect["overall"]["numbers_checked"]
    assert {m: after[m] for m in MARKS} == {m: before[m] for m in MARKS}
    assert res["overall"]["classification"]["macro_f1"] == 1.0
    # text overlap drops only by the number tokens
    assert 0.85 < after["rouge_l"] < 1.0


# -- the reader (Verifier.read against the hooked reading it replaced: tests/test_eval_reader.py) ----------
def test_reader_reads_diagnosis_abstention_wrong_eye_and_invented_lesion(synthetic, reader):
    it = next(i for i in synthetic.items.values() if i.task == "diagnosis" and i.label == "glaucoma")
    assert reader.read(it.question, it.reference, it.facts).diagnosis == "glaucoma"
    assert reader.read(it.question, "I cannot tell from these images.", it.facts).diagnosis is None
    other = "left" if it.eye == "OD" else "right"
    r = reader.read(it.question, f"The {other} eye shows a macular hole. Diagnosis: glaucoma.", it.facts)
    assert r.wrong_eye and r.invented == 1 and r.diagnosis == "glaucoma"
    assert reader.read(it.question, "Normal.", it.facts).diagnosis == "normal"


def test_repeated_wrong_number_counts_twice(synthetic, reader):
    it = next(i for i in synthetic.items.values() if i.task == "report")
    bm = next(b for b in it.facts.biomarkers.values() if b.unit in ("µm", "um") and b.value > 50)
    wrong = f"{bm.value * 1.5:.1f} µm"
    text = f"The {bm.name.lower()} is {wrong}. Again, the {bm.name.lower()} is {wrong}."
    r = reader.read(it.question, text, it.facts)
    assert r.numbers_checked == 2 and r.numbers_wrong == 2


# -- metrics ----------------------------------------------------------------------------------------
def test_lcs_is_the_dynamic_programme():
    rng = random.Random(0)

    def table(a, b):
        t = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                t[i + 1][j + 1] = t[i][j] + 1 if x == y else max(t[i][j + 1], t[i + 1][j])
        return t[-1][-1]

    for _ in range(500):
        a = [rng.choice("abcdef") for _ in range(rng.randint(0, 40))]
        b = [rng.choice("abcdef") for _ in range(rng.randint(0, 40))]
        assert lcs_length(a, b) == table(a, b)
    assert rouge_l("the cup is enlarged", "the cup is enlarged") == 1.0
    assert rouge_l("", "x") == 0.0
    assert rouge_l("a b c d", "a c d e") == pytest.approx(0.75)


def test_classification_counts_abstentions_against_recall():
    r = classification(["amd", "amd", "glaucoma", "normal"], ["amd", None, "glaucoma", "amd"])
    assert r["abstained"] == 1 and r["per_class"]["amd"]["recall"] == 0.5
    assert r["per_class"]["amd"]["precision"] == 0.5 and r["per_class"]["normal"]["f1"] == 0.0
    assert r["macro_f1"] == pytest.approx((0.5 + 1.0 + 0.0) / 3, abs=1e-4)
    assert r["confusion"]["columns"][-1] == "abstained"


def test_bootstrap_columns_reproduce_the_point_estimates(monkeypatch):
    """The bootstrap's linear columns give, under weights of one per item, exactly the macro F1 and accuracy
    of classification(); every resample draws n items."""
    rng = random.Random(3)
    cats = ["amd", "glaucoma", "normal", "dr", "rvo"]
    true = [rng.choice(cats) for _ in range(300)]
    pred = [None if rng.random() < 0.1 else (t if rng.random() < 0.6 else rng.choice(cats)) for t in true]
    classes, t, p = class_index(true, pred)
    cols = class_columns(t, p, len(classes))
    macro, acc = macro_f1_accuracy(np.ones((1, len(t)), dtype=np.float32) @ cols, len(classes))
    ref = classification(true, pred)
    assert round(float(macro[0]), 4) == ref["macro_f1"] and round(float(acc[0]), 4) == ref["accuracy"]
    blocks = list(resample_weights(len(t), 250, seed=0))
    w = np.vstack(blocks)
    assert w.shape == (250, 300) and (w.sum(axis=1) == 300).all()
    assert np.array_equal(w, np.vstack(list(resample_weights(len(t), 250, seed=0))))  # seeded
    gen = np.random.default_rng(0)  # each row counts one block's row of draws (the blocks in order)
    draws = np.vstack([gen.integers(0, len(t), size=(len(b), len(t)), dtype=np.int32) for b in blocks])
    assert np.array_equal(w, np.stack([np.bincount(d, minlength=len(t)) for d in draws]).astype(np.float32))
    monkeypatch.setattr(score_mod, "BOOTSTRAP_BLOCK_CELLS", 3000)  # memory bound: blocks of 10 resamples
    small = list(resample_weights(len(t), 250, seed=0))
    assert len(small) == 25 and all(b.shape == (10, 300) for b in small)


def test_bootstrap_weights_counted_in_c_are_numpys(monkeypatch):
    """``resample_weights`` counts each row's draws in C (``grok.verify._cscan.count_rows``) where it is built, else
    with numpy's ``bincount``: the same weights, block by block (blocks of several sizes, one item, a last short block)."""
    if score_mod._count_rows is None:
        pytest.skip("grok.verify._cscan is not built (or GROK_NO_CEXT=1)")
    monkeypatch.setattr(score_mod, "BOOTSTRAP_BLOCK_CELLS", 5000)
    cases = [(1, 7), (3, 50), (300, 1000), (977, 41)]
    fast = [list(resample_weights(n, r, seed=n)) for n, r in cases]
    monkeypatch.setattr(score_mod, "_count_rows", None)
    slow = [list(resample_weights(n, r, seed=n)) for n, r in cases]
    for f, s in zip(fast, slow, strict=True):
        assert len(f) == len(s) and all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(f, s, strict=True))


def test_likely_not_english():
    assert likely_not_english("Der Sehnerv zeigt eine vergrößerte Exkavation und wir vermuten ein Glaukom.")
    assert likely_not_english("视神经乳头凹陷扩大，考虑青光眼。")
    assert not likely_not_english("The optic disc shows an enlarged cup and glaucoma is likely in this eye.")
    assert not likely_not_english("- haemorrhage - optic disc - drusen - hard exudate")


# -- bad input -------------------------------------------------------------------------------------
def test_bad_predictions_are_counted_never_dropped(synthetic, tmp_path):
    ids = list(synthetic.items)
    lines = [json.dumps({"id": ids[0], "prediction": synthetic.items[ids[0]].reference}),
             json.dumps({"id": ids[0], "prediction": "a second answer"}),
             json.dumps({"id": "not-in-the-split", "prediction": "x"}),
             json.dumps({"id": ids[1], "answer": "   "}),
             json.dumps({"id": ids[2], "prediction": "Der Sehnerv zeigt eine Exkavation und wir vermuten ein Glaukom."}),
             "{broken json", json.dumps({"prediction": "no id"}), json.dumps({"id": ids[3]}), json.dumps([1, 2])]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    preds = load_predictions(path)
    assert preds.lines == 9
    assert preds.problems == {"duplicate_id": 1, "unreadable_line": 2, "no_id": 1, "no_answer_field": 1}
    res = evaluate(synthetic, preds, resamples=0, bleu=False)
    streamed = evaluate(synthetic, path, resamples=0, bleu=False)  # ids seen kept as bits per benchmark item
    assert streamed["problems"] == res["problems"] and streamed["items"] == res["items"]
    p = res["problems"]
    assert p["unknown_id"] == 1 and p["empty_answer"] == 1 and p["likely_not_english"] == 1
    assert p["missing_id"] == len(ids) - 3
    assert len(res["items"]) == len(ids)  # every benchmark item is in the scores
    assert res["overall"]["status"] == {"answered": 2, "empty": 1, "missing": len(ids) - 3}
    with pytest.raises(EvalInputError, match="not found"):
        load_predictions(tmp_path / "absent.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes('{"id": "x", "prediction": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(EvalInputError, match="UTF-8"):
        load_predictions(tmp_path / "latin1.jsonl")


def test_streamed_scoring_keeps_no_answer_text(synthetic, reader, tmp_path):
    """A predictions file is streamed: the scores equal those of the answers held in memory, and scoring
    memory does not grow with the answers' text (only the few worst answers are kept)."""
    ids = list(synthetic.items)
    refs = [synthetic.items[i].reference for i in ids]
    random.Random(2).shuffle(refs)
    short = _write(tmp_path / "short.jsonl", [{"id": k, "prediction": a} for k, a in zip(ids, refs)])
    in_memory = evaluate(synthetic, Predictions(str(short), dict(zip(ids, refs)), lines=len(ids)), resamples=50,
                         reader=reader)
    streamed = evaluate(synthetic, short, resamples=50, reader=reader)
    for key in ("overall", "per_task", "per_category", "items", "worst", "problems", "counts"):
        assert streamed[key] == in_memory[key], key
    filler = " ".join(["unremarkable"] * 200)  # ~2.6 KB more per answer, 1 MB in all
    long = _write(tmp_path / "long.jsonl", [{"id": k, "prediction": f"{a} {filler}"} for k, a in zip(ids, refs)])
    extra = long.stat().st_size - short.stat().st_size
    peaks = []
    for path in (short, long):
        tracemalloc.start()
        evaluate(synthetic, path, resamples=50, reader=reader, worst=3)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert extra > 1e6 and peaks[1] - peaks[0] < 0.2 * extra, (peaks, extra)


def test_items_file_rows_equal_the_in_memory_rows(synthetic, reader, tmp_path):
    """items_path: the per-item rows are written to a JSONL file, equal to the rows kept in memory; eval.json
    names the file relative to itself (the folder can move), and compare reads it."""
    import shutil

    ids = list(synthetic.items)
    answers = dict(zip(ids, [synthetic.items[i].reference for i in reversed(ids)]))
    for k in ids[::7]:
        answers[k] = ""  # empty answers
    for k in ids[3::11]:
        del answers[k]  # missing answers
    preds = Predictions("mixed", answers)
    in_memory = evaluate(synthetic, preds, resamples=30, reader=reader)
    streamed = evaluate(synthetic, preds, resamples=30, reader=reader, items_path=tmp_path / "run" / "items.jsonl")
    assert "items" not in streamed and "items" in in_memory
    rows = list(iter_items(streamed))
    assert rows == in_memory["items"] and len(rows) == len(ids)
    assert {r["status"] for r in rows} == {"answered", "empty", "missing"}
    assert {k: v for k, v in streamed.items() if k not in ("items_file", "seconds")} == \
        {k: v for k, v in in_memory.items() if k not in ("items", "seconds")}
    write_scores(streamed, tmp_path / "run" / "eval.json")
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["items_file"] == "items.jsonl"
    shutil.move(tmp_path / "run", tmp_path / "moved")
    moved = load_scores(tmp_path / "moved" / "eval.json")
    assert list(iter_items(moved)) == rows
    mem_path = write_scores(in_memory, tmp_path / "mem" / "eval.json")
    assert compare(moved, load_scores(mem_path), resamples=50)["differences"] == []
    (tmp_path / "moved" / "items.jsonl").unlink()
    with pytest.raises(EvalInputError, match="missing"):
        load_scores(tmp_path / "moved" / "eval.json")


def test_scoring_memory_does_not_grow_with_per_item_rows(kb, synthetic, reader, tmp_path, monkeypatch):
    """Peak traced memory of scoring N and 10 N answers (the benchmark's items repeated under new ids, loaded
    with their reference readings before): the rows go to the items file, so 9 N more answers cost only each
    item's marks as numbers (under 0.6 KB an item; the eval.json rows kept in memory as before fail this).
    The bootstrap's weight blocks are bounded (here 2^12 cells, so both runs reach the bound)."""
    import dataclasses

    from grok.eval.data import Benchmark

    monkeypatch.setattr(score_mod, "BOOTSTRAP_BLOCK_CELLS", 1 << 12)
    peaks = []
    for k in (1, 10):
        items = {f"{rid}#{r}": dataclasses.replace(it, id=f"{rid}#{r}") for r in range(k)
                 for rid, it in synthetic.items.items()}
        bench = Benchmark(synthetic.dataset, "", "benchmark", "test", synthetic.kb_snapshot, items)
        answers = [it.reference for it in items.values()]
        random.Random(k).shuffle(answers)
        path = _write(tmp_path / f"p{k}.jsonl", [{"id": i, "prediction": a} for i, a in zip(items, answers)])
        reference_readings(bench, reader)
        bench.positions()
        tracemalloc.start()
        evaluate(bench, path, resamples=100, reader=reader, worst=5, items_path=tmp_path / f"items{k}.jsonl")
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert sum(1 for _ in (tmp_path / f"items{k}.jsonl").open()) == len(items)
    per_item = (peaks[1] - peaks[0]) / (9 * len(synthetic.items))
    assert per_item < 600, (peaks, per_item)


def test_reference_readings_are_cached_on_disk_per_version_kb_and_tolerance(kb, synthetic, tmp_path):
    """A new process (a benchmark loaded afresh) reads the references from the disk cache; a different
    version fingerprint, knowledge-base snapshot or tolerance reads them again; the scores are the same."""
    import dataclasses

    class Counting(AnswerReader):
        reads = 0

        def read(self, *a, **kw):
            Counting.reads += 1
            return super().read(*a, **kw)

    lex = build_lexicon(kb)
    cache = tmp_path / "cache"
    n = sum(1 for it in synthetic.items.values() if it.facts is not None)

    def fresh(**changes):  # the same rows as a newly loaded benchmark: nothing kept in memory
        return dataclasses.replace(synthetic, readings={}, **changes)

    def reads(bench, tol=0.10):
        before = Counting.reads
        refs = reference_readings(bench, Counting(lex, VerifyConfig(tolerance=tol)), cache)
        return Counting.reads - before, refs

    first, refs = reads(fresh())
    assert first == n and len(list(cache.iterdir())) == 1
    again, cached = reads(fresh())
    assert again == 0  # loaded from disk
    for rid, r in refs.items():
        c = cached[rid]
        assert (c.classified, c.checks_numbers, c.biomarkers) == (r.classified, r.checks_numbers, r.biomarkers)
        assert (c.rouge.masks, c.rouge.n, c.rouge.full) == (r.rouge.masks, r.rouge.n, r.rouge.full)
        assert c.bleu.length == r.bleu.length and [dict(x) for x in c.bleu.counts] == [dict(x) for x in r.bleu.counts]
    assert reads(fresh(fingerprint=synthetic.fingerprint + "-v2"))[0] == n  # another version
    assert reads(fresh(kb_snapshot="another-snapshot"))[0] == n  # another knowledge base
    assert reads(fresh(), tol=0.05)[0] == n  # another tolerance
    assert reads(fresh(fingerprint=""))[0] == n  # no fingerprint: never cached on disk
    assert len(list(cache.iterdir())) == 4
    assert reads(fresh())[0] == 0 and reads(fresh(), tol=0.05)[0] == 0
    # a damaged cache file is read again (and rewritten), never trusted
    for f in cache.iterdir():
        f.write_bytes(b"not marshal")
    assert reads(fresh())[0] == n and reads(fresh())[0] == 0
    for f in cache.iterdir():  # the BLEU table's raw arrays cut short
        f.write_bytes(f.read_bytes()[:-12])
    assert reads(fresh())[0] == n and reads(fresh())[0] == 0
    # scores with cached readings are the scores with fresh ones
    ids = list(synthetic.items)
    preds = Predictions("shuffled", dict(zip(ids, [synthetic.items[i].reference for i in reversed(ids)])))
    a = evaluate(fresh(), preds, resamples=40, reader=AnswerReader(lex), cache_dir=cache)
    b = evaluate(fresh(), preds, resamples=40, reader=AnswerReader(lex))
    assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}


def test_scoring_makes_no_reference_cycles_and_restores_the_collector(kb, synthetic):
    """``evaluate`` runs with the cyclic garbage collector off (``_cyclic_gc_paused``), which is sound because scoring
    leaves no garbage that only the collector could free: none is found after a scoring, odd answers included. The
    collector is on again after it, or still off when the caller had turned it off."""
    import gc

    ids = list(synthetic.items)
    answers = [synthetic.items[i].reference for i in reversed(ids)]
    answers[:6] = ["", "   ", "Die Antwort ist und der die das", "\udcff broken", "<skipped> &amp; x", "Step 1: 0.5"]
    preds = Predictions("odd", dict(zip(ids, answers)))
    reader = AnswerReader(build_lexicon(kb))
    evaluate(synthetic, preds, resamples=20, reader=reader)  # first use: lazy imports, caches filled
    gc.collect()
    gc.disable()
    try:
        evaluate(synthetic, preds, resamples=20, reader=reader)
        assert not gc.isenabled()  # left off, as the caller had it
        assert gc.collect() == 0
    finally:
        gc.enable()
    seen = []

    class Watching(AnswerReader):
        def read(self, *a, **kw):
            seen.append(gc.isenabled())
            return super().read(*a, **kw)

    evaluate(synthetic, preds, resamples=20, reader=Watching(build_lexicon(kb)))
    assert gc.isenabled() and seen and not any(seen)  # off while scoring, on again after

def test_cached_rouge_references_keep_their_tokens_whatever_vocabulary_they_were_read_with(tmp_path):
    """The disk cache writes one ROUGE-L vocabulary: references read with other vocabularies (each its own here) are
    renumbered into it, and load with the same token positions and the same LCS against any candidate."""
    from grok.eval.text import BleuTable, RougeRef, lcs_with

    texts = ["a b c a", "c d e", "e e f a b", "x"]
    refs = score_mod.ReferenceReadings(
        {f"r{i}": score_mod.RefReading(True, False, frozenset(), RougeRef(t.split()), None) for i, t in enumerate(texts)},
        BleuTable(texts))
    path = tmp_path / "refs.marshal"
    score_mod._save_refs(path, "key", refs)
    loaded = score_mod._load_refs(path, "key")
    assert len({id(r.rouge.vocab) for r in loaded.values()}) == 1
    for rid, r in refs.items():
        assert loaded[rid].rouge.masks == r.rouge.masks and loaded[rid].rouge.n == r.rouge.n
        for cand in (["a", "b"], ["e", "a", "b", "x"], ["q"], texts[0].split()):
            assert lcs_with(cand, loaded[rid].rouge) == lcs_with(cand, r.rouge)

def test_reference_answers_are_read_once_per_benchmark(kb, synthetic):
    class Counting(AnswerReader):
        reads = 0

        def read(self, *a, **kw):
            Counting.reads += 1
            return super().read(*a, **kw)

    counting = Counting(build_lexicon(kb))
    preds = _perfect(synthetic)
    evaluate(synthetic, preds, resamples=0, reader=counting, bleu=False)
    first = Counting.reads
    evaluate(synthetic, preds, resamples=0, reader=counting, bleu=False)
    assert first == 2 * len(synthetic.items) and Counting.reads - first == len(synthetic.items)


# -- compare ---------------------------------------------------------------------------------------
def test_compare_paired_bootstrap_names_the_better_model(synthetic, tmp_path):
    from grok.eval.score import write_scores

    ids = list(synthetic.items)
    refs = [synthetic.items[i].reference for i in ids]
    random.Random(0).shuffle(refs)
    good = evaluate(synthetic, _perfect(synthetic), resamples=0, bleu=False)
    bad = evaluate(synthetic, Predictions("shuffled", dict(zip(ids, refs))), resamples=0, bleu=False)
    a, b = write_scores(bad, tmp_path / "a" / "eval.json"), write_scores(good, tmp_path / "b" / "eval.json")
    res = compare(load_scores(a), load_scores(b), resamples=300, names=("a", "b"))
    f1 = res["metrics"]["macro_f1"]
    assert f1["diff"] > 0.7 and f1["ci95"][0] > 0.6
    assert res["verdict"].startswith("b better on macro F1 by 0.")
    same = compare(load_scores(b), load_scores(b), resamples=100)
    assert same["verdict"].startswith("no clear difference") and same["differences"] == []
    other = json.loads(Path(b).read_text())
    other["fingerprint"] = "else"
    (tmp_path / "c.json").write_text(json.dumps(other))
    with pytest.raises(EvalInputError, match="fingerprint"):
        compare(load_scores(a), load_scores(tmp_path / "c.json"))


# -- the command on a published version -----------------------------------------------------------
def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_cli_scores_a_published_version(published, tmp_path):
    from grok.eval.data import load_benchmark

    _tmp, registry, out = published
    spec = out["dataset"]
    bench = load_benchmark(spec, registry)
    assert bench.items and all(it.facts is not None for it in bench.items.values())
    preds = _write(tmp_path / "perfect.jsonl", [{"id": k, "prediction": it.reference, "dataset": spec}
                                                for k, it in bench.items.items()])
    runner = CliRunner()
    r = runner.invoke(app, ["eval", str(preds), "--dataset", spec, "--registry", registry, "--out",
                            str(tmp_path / "eval"), "--bootstrap", "100", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["overall"]["classification"]["macro_f1"] == 1.0
    assert res["overall"]["quantitative"]["mean"] == 1.0 and res["overall"]["rouge_l"]["mean"] == 1.0
    assert res["problems"] == {}
    assert (tmp_path / "eval" / "eval.json").exists() and (tmp_path / "eval" / "index.html").exists()
    for name in ("f1.png", "confusion.png"):  # the figures for papers
        assert (tmp_path / "eval" / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a version that does not exist, a missing file, a missing flag: clear messages and exit codes
    r = runner.invoke(app, ["eval", str(preds), "--dataset", "small@9.9.9", "--registry", registry])
    assert r.exit_code == 3 and "9.9.9" in r.output and spec.split("@")[1] in r.output
    r = runner.invoke(app, ["eval", str(tmp_path / "none.jsonl"), "--dataset", spec, "--registry", registry])
    assert r.exit_code == 3 and "not found" in r.output
    r = runner.invoke(app, ["eval", str(preds)])
    assert r.exit_code == 2 and "--dataset" in r.output
    r = runner.invoke(app, ["eval", "compare", str(tmp_path / "eval" / "eval.json"), str(tmp_path / "eval" / "eval.json")])
    assert r.exit_code == 0 and "no clear difference" in r.output


def test_report_renders_in_chromium(published, tmp_path):
    """Headless Chromium: the report opens from file://, F1 bars and the confusion matrix render, images load,
    no console errors."""
    _tmp, registry, out = published
    spec = out["dataset"]
    from grok.eval.data import load_benchmark

    bench = load_benchmark(spec, registry)
    ids = list(bench.items)
    refs = [bench.items[i].reference for i in ids]
    preds = _write(tmp_path / "rot.jsonl", [{"id": k, "prediction": refs[(i + 1) % len(refs)]}
                                            for i, k in enumerate(ids)])
    # a judge whose replies never parse (the test server answers {"answer": ...}): every judged answer is
    # unscored with its reason, none counted as zero, and the report still renders
    with LocalLLMServer(Faults(), seed=0) as server:
        r = CliRunner().invoke(app, ["eval", str(preds), "--dataset", spec, "--registry", registry, "--out",
                                     str(tmp_path / "eval"), "--bootstrap", "50", "--worst", "4",
                                     "--judge-url", server.url, "--judge-model", "judge-test", "--json"])
    assert r.exit_code == 0, r.output
    judge = json.loads(r.stdout)["judge"]
    n_judged = sum(1 for it in bench.items.values() if it.task in ("report", "cot"))
    assert judge["judged"] == judge["unscored"] == n_judged and judge["scored"] == 0
    assert judge["total_mean"] is None and all(v.startswith("unparsable") for v in judge["unscored_reasons"].values())
    with chromium_page(tmp_path / "eval" / "index.html") as (page, errors):
        bars = page.locator("#per-class svg rect.bar").count()
        confusion_rows = page.locator("#confusion tr").count()
        worst = page.locator("#worst .item").count()
        n_images = page.evaluate("document.images.length")
        broken = page.evaluate("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length")
        title = page.title()
        rubric = page.locator("#rubric").inner_text()
    assert errors == []
    assert bars >= 1 and confusion_rows >= 2 and worst == 4
    assert n_images >= 1 and broken == 0
    assert title.startswith("Evaluation")
    assert f"{n_judged} answer(s) unscored" in rubric


def test_cli_asks_a_model_server_and_scores_it(published, tmp_path):
    """--model-url: every benchmark row asked (images as data URLs), answers scored; a reply that fails or does
    not parse is an empty answer with its error, counted, never dropped."""
    _tmp, registry, out = published
    spec = out["dataset"]
    with LocalLLMServer(Faults(p_malformed=0.25, p500=0.1), seed=3) as server:
        r = CliRunner().invoke(app, ["eval", "--model-url", server.url, "--model", "baseline", "--dataset", spec,
                                     "--registry", registry, "--out", str(tmp_path / "ask"), "--bootstrap", "20",
                                     "--json"])
        image_parts = server.stats["image_parts"]
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    asked = res["asked"]
    lines = [json.loads(x) for x in (tmp_path / "ask" / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == asked["rows"] == res["counts"]["benchmark_items"]
    assert image_parts > 0 and asked["calls"] > 0
    failed = [x for x in lines if x["error"]]
    assert asked["failed"] == len(failed) > 0 and all(x["prediction"] == "" for x in failed)
    assert res["problems"].get("empty_answer", 0) == len(failed)
    assert res["counts"]["scored_answers"] == asked["answered"]


def test_training_overlap_is_refused_unless_allowed(published, tmp_path, monkeypatch):
    import grok.eval.data as eval_data
    from grok.eval.data import Benchmark, Item, load_benchmark, training_overlap
    from grok.registry import load

    _tmp, registry, out = published
    spec = out["dataset"]
    bench = load_benchmark(spec, registry)
    clean = training_overlap(bench, spec, registry)  # the version's own test split: no patient trained on
    assert clean["patients_shared"] == 0 and clean["benchmark_patients"] >= 1
    train_patients = sorted(set(load(spec, "instructions", "train", registry=registry)["patient_id"]))
    leaky = Benchmark(spec, "", "benchmark", "test", "", {
        "x": Item("x", "s", "report", "amd", "OD", "q", "r", [], patient_id=train_patients[0])})
    assert training_overlap(leaky, spec, registry)["patients_shared"] == 1
    with pytest.raises(EvalInputError, match="9.9.9"):
        training_overlap(bench, "small@9.9.9", registry)
    # the command refuses a leaky training version, and records an allowed one
    preds = _write(tmp_path / "p.jsonl", [{"id": k, "prediction": it.reference} for k, it in bench.items.items()])
    monkeypatch.setattr(eval_data, "training_overlap",
                        lambda b, t, r: {"trained_on": t, "benchmark_patients": 2, "patients_shared": 1,
                                         "examples": ["p1"]})
    args = ["eval", str(preds), "--dataset", spec, "--registry", registry, "--out", str(tmp_path / "o"),
            "--bootstrap", "0", "--trained-on", spec]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1 and "--allow-overlap" in r.output and not (tmp_path / "o" / "eval.json").exists()
    r = CliRunner().invoke(app, [*args, "--allow-overlap", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["training_overlap"] == {"trained_on": spec, "benchmark_patients": 2,
                                                         "patients_shared": 1, "examples": ["p1"], "allowed": True}


# -- the training loop -------------------------------------------------------------------------------
@pytest.mark.slow
def test_training_flow_scores_the_sft_model_and_refuses_overlap(published, tmp_path, monkeypatch):
    """flows.train: SFT (CPU smoke, one step) -> grok-train predict on the benchmark split -> grok eval: eval.json
    where the model card reads it, the report, a Prefect artifact with the headline table; a benchmark whose
    patients the model trained on is refused before anything is generated (--allow-overlap and its record:
    require_no_overlap, shared with the command, tested in test_training_overlap_is_refused_unless_allowed)."""
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    pytest.importorskip("prefect")
    import flows.train as train_flow
    from grok.eval.data import TrainingOverlapError
    from grok_train.model_card import read_evaluation

    _tmp, registry, out = published
    spec = out["dataset"]
    artifacts: list[dict] = []
    monkeypatch.setattr(train_flow, "create_markdown_artifact", lambda **kw: artifacts.append(kw))
    monkeypatch.setattr(train_flow, "get_run_logger", lambda: logging.getLogger("test"))
    res = train_flow.train_sft.fn(spec, registry, profile="cpu_smoke", overrides=["max_steps=1", "batch_size=2"],
                                  output_root=str(tmp_path / "runs"), eval_max_new_tokens=8)
    run = Path(res["run_dir"])
    scores = read_evaluation(run)  # the path the model card reads
    assert scores is not None and scores["dataset"] == spec and res["evaluation"]["eval_json"] == str(run / "eval" / "eval.json")
    lines = (run / "eval" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == scores["counts"]["benchmark_items"] == len(list(iter_items(load_scores(
        run / "eval" / "eval.json")))) > 0
    assert "unknown_id" not in scores["problems"] and "missing_id" not in scores["problems"]
    assert scores["training_overlap"]["patients_shared"] == 0 and scores["training_overlap"]["allowed"] is False
    assert (run / "eval" / "index.html").is_file()
    card = (run / "final" / "README.md").read_text()  # the adapter's card, refreshed after the eval
    assert f"From `grok eval` on `{spec}`" in card and "Not evaluated yet" not in card
    assert "training rows:" in card
    assert [a["key"] for a in artifacts] == ["grok-train-sft", "grok-eval"]
    table = artifacts[-1]["markdown"]
    assert "| macro F1 (diagnosis) |" in table and "| rouge l |" in table and spec in table
    # the version's own training split: every patient was trained on
    before = (run / "eval" / "predictions.jsonl").stat().st_mtime_ns
    with pytest.raises(TrainingOverlapError, match="--allow-overlap"):
        train_flow.evaluate_run(run, registry=registry, config="instructions", split="train", artifact=False)
    assert (run / "eval" / "predictions.jsonl").stat().st_mtime_ns == before  # refused before generating
