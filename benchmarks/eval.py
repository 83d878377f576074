"""Benchmark deterministic scoring (grok eval): answers scored per second on one core.

Run as: OMP_NUM_THREADS=1 python benchmarks/eval.py [--studies 200] [--repeats 3] [--bootstrap 1000]

Prints one JSON object. A synthetic benchmark (every family's verified template row for ``--studies``
sample studies over all categories, :func:`grok.eval.data.benchmark_from_records`) is scored with a
label-shuffled predictor (other studies' reference answers: every answer read in full, wrong
diagnoses, wrong numbers). Figures, medians over the repeats, wall clock and per CPU-second of this
process:

* ``answers_per_s``: :func:`grok.eval.score.evaluate` end to end as ``grok eval`` runs it for a first
  model in a new process whose version was scored before: the reference readings loaded from the disk
  cache (``cache_dir``), every answer read, bootstrap intervals, BLEU, the per-item rows written to a
  JSONL file;
* ``answers_per_s_cold``: the same with an empty disk cache (the reference answers read too: the first
  scoring of a version, or after the reading code, knowledge base or tolerance changed);
* ``answers_per_s_distinct``: ``answers_per_s`` on answers that are all new to the process: the shuffled
  answers with every number (but step numbers) perturbed, with new numbers every repeat
  (:func:`perturb_numbers`), so no cache keyed on text (the per-word and 13a-chunk caches, the verifier's
  cached windows) has seen them; the figure the 5,000 answers/s target is judged on;
* ``answers_per_s_no_bleu``: ``answers_per_s`` with ``bleu=False``;
* ``answers_per_s_references_read``: ``answers_per_s`` with the reference readings already in memory (a
  further model scored on the same benchmark in one process);
* ``reads_per_s``: :meth:`grok.eval.reader.AnswerReader.read` alone (the verifier's reading).

``--against COMMIT`` also times this tree's ``grok/eval`` and verifier against ``COMMIT``'s, paired in one process:
that commit's ``grok/verify/verifier.py``, ``grok/eval/text.py``, ``reader.py`` and ``score.py`` (``git show``) are
loaded beside the current modules (:func:`old_eval`), and the two ``evaluate`` run alternately (the order swapped every repeat), twice
``--repeats`` times each, a first model each time (reference readings from the disk cache) on answers with
new numbers (a fresh :func:`perturb_numbers` per run) and on the shuffled answers; the per-repeat ratios
new / old are robust to the load drifting, which the separate-process figures are not.

``--parts`` also times the parts of scoring a first model's new answers alone, in CPU µs per answer
(:func:`bench_parts`): where the time of ``answers_per_cpu_s_distinct`` goes.

``--judge-requests N`` also times the rubric judge against the local latency server
(``tests/llm_server.py`` in its own process, ``--latency-ms``, ``--concurrency``): requests per
second against the ideal concurrency / latency. The server's rule-based model does not write
judgements, so every reply is unparsable and, with ``max_attempts`` 1, unscored: the figure is the
judge's request pipeline (prompt rendering, client, cache, rate limiter), not a judgement. The
knowledge base is loaded before the clock starts (``run_judge(kb=...)``), as one command loads it once.

``--memory-studies N`` (default 50, 0: skip) also measures peak memory (tracemalloc) of scoring a
predictions file of 6 N answers and of 60 N answers (the benchmark's items repeated under new ids;
the benchmark and its reference readings loaded first; the per-item rows written to a file, as the
command does): the predictions are streamed and the rows written as JSONL, so the peak grows only by
each item's marks as numbers (the bootstrap's columns), not by its text or its eval.json row.

The 1-minute load average is recorded. Nothing here is a test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import tempfile
import time
from pathlib import Path

TARGET_ANSWERS_PER_S = 5000
_NUMBER = re.compile(r"(?<![\w.])(\d+)(?:\.(\d+))?(?!\w)")


def perturb_numbers(answers: list[str], seed: int) -> list[str]:
    """``answers`` with every number but step numbers ("Step 2") moved by 0-30 % and a few units of its last
    digit, its decimals kept: wrong values read as a model's would be, and text no cache has seen."""
    rng = random.Random(seed)

    def one(m: re.Match) -> str:
        if m.string.endswith("Step ", 0, m.start()):
            return m.group(0)
        dec = len(m.group(2) or "")
        x = float(m.group(0))
        for _ in range(20):
            y = abs(x * rng.uniform(0.7, 1.3) + rng.uniform(-3, 3) * 10 ** -dec)
            s = f"{y:.{dec}f}"
            if s != m.group(0):
                return s
        return m.group(0)

    return [_NUMBER.sub(one, a) for a in answers]



def _timed(fn) -> tuple[float, float]:
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--judge-requests", type=int, default=0)
    ap.add_argument("--latency-ms", type=float, default=100.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--against", default=None,
                    help="a commit whose grok/eval and verifier to time against, paired in one process")
    ap.add_argument("--parts", action="store_true",
                    help="also time the parts of scoring a first model's new answers (µs per answer)")
    ap.add_argument("--memory-studies", type=int, default=50,
                    help="studies of the memory check (N answers, then 10 N: the benchmark's items repeated)")
    args = ap.parse_args(argv)

    from grok.eval.data import Predictions, benchmark_from_records
    from grok.eval.reader import AnswerReader
    from grok.eval.score import evaluate
    from grok.instruct.samples import sample_records
    from grok.knowledge import load_knowledge_base
    from grok.knowledge.lexicon import build_lexicon
    from grok.verify.scan import COMPILED

    kb = load_knowledge_base()
    lex = build_lexicon(kb)
    bench = benchmark_from_records(sample_records(args.studies, args.seed, kb), kb=kb, lexicon=lex)
    ids = list(bench.items)
    refs = [bench.items[i].reference for i in ids]
    random.Random(args.seed).shuffle(refs)
    preds = Predictions("shuffled", dict(zip(ids, refs)))
    reader = AnswerReader(lex)
    n = len(ids)
    work = Path(tempfile.mkdtemp(prefix="grok-eval-bench-"))
    cache, items_file, cold_cache = work / "cache", work / "items.jsonl", work / "cold"
    evaluate(bench, Predictions("warm-up", {ids[0]: refs[0]}), resamples=10, reader=reader,  # regex caches,
             cache_dir=cache)  # and the version's reference readings on disk, as an earlier run leaves them
    load_before = round(os.getloadavg()[0], 2)
    all_items = tuple(bench.items.values())
    out: dict[str, list[tuple[float, float]]] = {"full": [], "distinct": [], "cold": [], "no_bleu": [], "refs_read": [],
                                                 "reads": []}

    def run(**kw):
        return evaluate(bench, preds, args.bootstrap, reader=reader, items_path=items_file, **kw)

    for rep in range(max(1, args.repeats)):
        bench.readings.clear()  # a first model in a new process: the reference readings come from the disk cache
        out["full"].append(_timed(lambda: run(cache_dir=cache)))
        fresh = Predictions("distinct", dict(zip(ids, perturb_numbers(refs, args.seed + 1 + rep))))
        bench.readings.clear()  # ... whose answers no cache has seen
        out["distinct"].append(_timed(lambda: evaluate(bench, fresh, args.bootstrap, reader=reader,  # noqa: B023
                                                       items_path=items_file, cache_dir=cache)))
        bench.readings.clear()  # ... or, the cache empty, are read
        for f in cold_cache.glob("*"):
            f.unlink()
        out["cold"].append(_timed(lambda: run(cache_dir=cold_cache)))
        bench.readings.clear()
        out["no_bleu"].append(_timed(lambda: run(cache_dir=cache, bleu=False)))
        # a further model scored on the same benchmark in one process: the reference readings are kept
        out["refs_read"].append(_timed(lambda: run(cache_dir=cache)))

        def reads():
            for it, ans in zip(all_items, refs, strict=True):
                reader.read(it.question, ans, it.facts, it.images)

        out["reads"].append(_timed(reads))

    def rate(key: str, k: int) -> float:
        return round(statistics.median(n / r[k] for r in out[key]), 1)

    res = {
        "studies": args.studies, "answers": n, "repeats": args.repeats, "bootstrap": args.bootstrap,
        "tasks": dict(sorted({it.task: sum(1 for x in bench.items.values() if x.task == it.task)
                              for it in bench.items.values()}.items())),
        "answers_per_s": rate("full", 0), "answers_per_cpu_s": rate("full", 1),
        "answers_per_s_distinct": rate("distinct", 0), "answers_per_cpu_s_distinct": rate("distinct", 1),
        "answers_per_s_cold": rate("cold", 0), "answers_per_cpu_s_cold": rate("cold", 1),
        "answers_per_s_no_bleu": rate("no_bleu", 0), "answers_per_cpu_s_no_bleu": rate("no_bleu", 1),
        "answers_per_s_references_read": rate("refs_read", 0),
        "answers_per_cpu_s_references_read": rate("refs_read", 1),
        "reads_per_s": rate("reads", 0), "reads_per_cpu_s": rate("reads", 1),
        "target_answers_per_s": TARGET_ANSWERS_PER_S,
        "compiled_scans": COMPILED,  # grok.verify._cscan in use (GROK_NO_CEXT=1: the re path)
        "load_avg_1min_before": load_before, "load_avg_1min_after": round(os.getloadavg()[0], 2),
    }
    if args.parts:
        res["parts_us_per_answer"] = bench_parts(bench, ids, refs, reader, cache, items_file, args.bootstrap,
                                                 max(1, args.repeats), args.seed)
    if args.against:
        res["against"] = bench_against(args.against, bench, preds, ids, refs, reader, lex, cache, items_file,
                                       args.bootstrap, 2 * max(1, args.repeats), args.seed)
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    if args.memory_studies:
        res["memory"] = bench_memory(args.memory_studies, args.seed, kb, lex, reader, args.bootstrap)
    if args.judge_requests:
        res["judge"] = bench_judge(bench, args.judge_requests, args.latency_ms, args.concurrency, kb)
    print(json.dumps(res, indent=1))
    return res


def old_eval(commit: str) -> dict:
    """The verifier (``grok.verify.verifier``) and ``grok.eval``'s ``text``, ``reader`` and ``score`` modules as of
    ``commit``, loaded (``git show``) beside the current ones, the old ``reader`` reading with the old verifier and the
    old ``score`` importing the old ``text`` and ``reader``: the old side of a paired timing."""
    import subprocess
    import sys
    import types

    import grok.eval.score  # noqa: F401 - the current modules, put back after the old ones are loaded

    root = Path(__file__).resolve().parents[1]
    modules = {"verifier": "grok.verify.verifier", "text": "grok.eval.text", "reader": "grok.eval.reader",
               "score": None}
    saved = {k: sys.modules[k] for k in modules.values() if k}
    mods = {}
    try:
        for name, module in modules.items():
            path = f"{(module or 'grok.eval.score').replace('.', '/')}.py"
            src = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=root, check=True, capture_output=True,
                                 text=True).stdout
            mod = types.ModuleType(f"grok_{name}_{commit}")
            mod.__file__ = str(root / path)  # the reading-source digest (the disk cache's key) finds the root by it
            sys.modules[mod.__name__] = mod
            exec(compile(src, f"{commit}:{path}", "exec"), mod.__dict__)  # noqa: S102 - the repository's own code
            mods[name] = mod
            if module:
                sys.modules[module] = mod
    finally:
        sys.modules.update(saved)
    return mods


def bench_against(commit: str, bench, shuffled, ids, refs, reader, lex, cache, items_file, resamples: int,
                  repeats: int, seed: int) -> dict:
    """Answers per CPU-second of this tree's ``evaluate`` and ``commit``'s, alternating in one process (see the
    module docstring): medians and the median of the per-repeat ratios new / old."""
    from grok.eval.data import Predictions
    from grok.eval.score import evaluate

    old = old_eval(commit)
    sides = {"old": (old["score"].evaluate, old["reader"].AnswerReader(lex)), "new": (evaluate, reader)}
    sides["old"][0](bench, Predictions("warm-up", {ids[0]: refs[0]}), 10, reader=sides["old"][1], cache_dir=cache)
    out: dict[str, list[float]] = {f"{s}_{k}": [] for s in sides for k in ("distinct", "shuffled")}
    loads = [os.getloadavg()[0]]
    for rep in range(repeats):
        for j, side in enumerate(("old", "new") if rep % 2 == 0 else ("new", "old")):
            fn, rd = sides[side]
            fresh = Predictions("distinct", dict(zip(ids, perturb_numbers(refs, seed + 10_000 + 2 * rep + j))))
            for kind, preds in (("distinct", fresh), ("shuffled", shuffled)):
                bench.readings.clear()
                c = time.process_time()
                fn(bench, preds, resamples, reader=rd, items_path=items_file, cache_dir=cache)
                out[f"{side}_{kind}"].append(len(ids) / (time.process_time() - c))
        loads.append(os.getloadavg()[0])
    res: dict = {"commit": commit, "repeats": repeats}
    for k, v in out.items():
        res[f"{k}_answers_per_cpu_s"] = round(statistics.median(v), 1)
    for kind in ("distinct", "shuffled"):
        res[f"ratio_{kind}"] = round(statistics.median(n / o for n, o in zip(out[f"new_{kind}"], out[f"old_{kind}"])), 3)
    res["load_avg_1min"] = [round(min(loads), 2), round(max(loads), 2)]
    return res


def bench_parts(bench, ids, refs, reader, cache, items_file, resamples: int, repeats: int, seed: int) -> dict:
    """CPU µs per answer (medians over ``repeats``) of the parts of scoring a first model's answers with every number
    new (:func:`perturb_numbers`, a fresh set for each timing, so no cache keyed on text has seen them): ``evaluate``
    end to end, and alone the verifier's reading (``AnswerReader.read``) and its whole-text scans (the number-word
    pre-test and rewrite, the number mask, the clause split, the scans of numbers, qualitative terms and names), the
    answers' words (``AnswerWords``, a fresh cache as in a new process), ROUGE-L, BLEU's statistics, loading the
    reference readings from the disk cache, and the bootstrap (``evaluate`` with and without its resamples)."""
    import numpy as np

    from grok.eval.data import Predictions, not_english_word
    from grok.eval.score import evaluate, reference_readings
    from grok.eval.text import AnswerWords, rouge_l_with
    from grok.verify import scan
    from grok.verify import verifier as V
    from grok.verify.textnorm import normalise

    items = [bench.items[i] for i in ids]
    n = len(ids)
    k = iter(range(seed + 20_000, seed + 40_000))

    def new() -> list[str]:
        return perturb_numbers(refs, next(k))

    def us(fn) -> float:
        c = time.process_time()
        fn()
        return (time.process_time() - c) / n * 1e6

    def scored(m: int) -> float:
        fresh = Predictions("distinct", dict(zip(ids, new())))
        bench.readings.clear()
        return us(lambda: evaluate(bench, fresh, m, reader=reader, items_path=items_file, cache_dir=cache))

    out: dict[str, list[float]] = {}
    for _ in range(repeats):
        r: dict[str, float] = {"evaluate": scored(resamples)}
        r["bootstrap"] = r["evaluate"] - scored(0)
        ans = new()
        r["reading"] = us(lambda: [reader.read(it.question, a, it.facts, it.images)  # noqa: B023
                                   for it, a in zip(items, ans, strict=True)])
        lows = [V._lower(a) for a in new()]
        r["reading: number words"] = us(lambda: [normalise(x) for x in lows])  # noqa: B023
        norm = [normalise(x) for x in lows]
        r["reading: number mask"] = us(lambda: [scan.mask(x) for x in norm])  # noqa: B023
        masked = [scan.mask(x) for x in norm]
        r["reading: clause split"] = us(lambda: [scan.clause_spans(x) for x in norm])  # noqa: B023
        for name, find, texts in (("numbers", scan.numbers, masked), ("terms", V._TERM_SCAN.findall, norm),
                                  ("names", reader._scan.findall, norm)):
            r[f"reading: {name} scan"] = us(lambda find=find, texts=texts: [list(find(x)) for x in texts])
        bench.readings.clear()
        r["reference readings from the disk cache"] = us(lambda: reference_readings(bench, reader, cache))
        refs_read = reference_readings(bench, reader, cache)
        words = AnswerWords(refs_read.table, not_english_word)
        ans = new()
        got: list = []
        r["answer words (AnswerWords)"] = us(lambda: got.extend(words(a) for a in ans))  # noqa: B023
        rows = [refs_read[i] for i in ids]
        r["ROUGE-L"] = us(lambda: [rouge_l_with(w[1], x.rouge) for x, w in zip(rows, got, strict=True)])  # noqa: B023
        flat = np.frombuffer(b"".join(w[0] for w in got), dtype=np.int64)
        r["BLEU statistics"] = us(lambda: refs_read.table.stats([x.bleu.row for x in rows], flat,  # noqa: B023
                                                                [len(w[0]) // 8 for w in got]))  # noqa: B023
        for key, v in r.items():
            out.setdefault(key, []).append(v)
    return {key: round(statistics.median(v), 1) for key, v in out.items()}


def bench_memory(studies: int, seed: int, kb, lex, reader, resamples: int, factor: int = 10) -> dict:
    """Peak memory (tracemalloc) of :func:`grok.eval.score.evaluate` over a predictions file of N answers and
    of ``factor`` N answers (the benchmark's items repeated under new ids, answers shuffled references):
    the benchmark and its reference readings are loaded before the measurement, so the peak is what
    scoring the answers costs."""
    import dataclasses
    import random
    import tracemalloc

    from grok.eval.data import Benchmark, benchmark_from_records
    from grok.eval.score import evaluate, reference_readings
    from grok.instruct.samples import sample_records

    base = benchmark_from_records(sample_records(studies, seed, kb), kb=kb, lexicon=lex)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in (1, factor):
            items = {f"{rid}#{r}": dataclasses.replace(it, id=f"{rid}#{r}") for r in range(k)
                     for rid, it in base.items.items()}
            bench = Benchmark(base.dataset, "", "benchmark", "test", base.kb_snapshot, items)
            answers = [it.reference for it in items.values()]
            random.Random(seed).shuffle(answers)
            path = Path(tmp) / f"preds{k}.jsonl"
            with path.open("w", encoding="utf-8") as fh:
                for rid, ans in zip(items, answers):
                    fh.write(json.dumps({"id": rid, "prediction": ans}) + "\n")
            reference_readings(bench, reader)
            bench.positions()
            tracemalloc.start()
            evaluate(bench, path, resamples, reader=reader, items_path=Path(tmp) / f"items{k}.jsonl")
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            out.append({"answers": len(items), "predictions_file_mb": round(path.stat().st_size / 1e6, 2),
                        "peak_mb": round(peak / 1e6, 2), "peak_bytes_per_answer": round(peak / len(items))})
    return {"runs": out, "peak_ratio": round(out[1]["peak_mb"] / out[0]["peak_mb"], 2),
            "answers_ratio": factor}


def bench_judge(bench, n_requests: int, latency_ms: float, concurrency: int, kb) -> dict:
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from grok.eval.judge import run_judge
    from grok.instruct.llm import LLMConfig

    root = Path(__file__).resolve().parents[1]
    base = [it for it in bench.items.values() if it.task in ("report", "cot")]
    items, answers = {}, {}
    for k in range(n_requests):  # distinct answers, so every request is a new cache key
        it = base[k % len(base)]
        iid = f"{it.id}-{k}"
        items[iid] = it
        answers[iid] = f"{it.reference} ({k})"
    proc = subprocess.Popen([sys.executable, str(root / "tests" / "llm_server.py"), "--port", "0", "--latency-ms",
                             str(latency_ms)], stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        cfg = LLMConfig(base_url=url, model="bench", concurrency=concurrency, requests_per_second=0, timeout_s=60,
                        max_retries=3, max_attempts=1)
        with tempfile.TemporaryDirectory() as tmp:
            t, c = time.perf_counter(), time.process_time()
            run = run_judge(cfg, items, answers, Path(tmp) / "cache.sqlite", kb=kb)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
    finally:
        proc.terminate()
        proc.wait()
    ideal = concurrency / (latency_ms / 1000.0)
    return {"requests": run.calls, "unscored": sum(r["status"] != "scored" for r in run.results.values()),
            "latency_ms": latency_ms, "concurrency": concurrency, "requests_per_s": round(run.calls / wall, 1),
            "ideal_requests_per_s": ideal, "share_of_ideal": round(run.calls / wall / ideal, 3),
            "client_cpu_ms_per_request": round(1000 * cpu / max(1, run.calls), 3)}


if __name__ == "__main__":
    main()
