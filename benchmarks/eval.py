"""Benchmark deterministic scoring (grok eval): answers scored per second on one core.

Run as: OMP_NUM_THREADS=1 python benchmarks/eval.py [--studies 200] [--repeats 3] [--bootstrap 1000]

Prints one JSON object. A synthetic benchmark (every family's verified template row for ``--studies``
sample studies over all categories, :func:`grok.eval.data.benchmark_from_records`) is scored with a
label-shuffled predictor (other studies' reference answers: every answer read in full, wrong
diagnoses, wrong numbers). Figures, medians over the repeats, wall clock and per CPU-second of this
process:

* ``answers_per_s``: :func:`grok.eval.score.evaluate` end to end (reference answers read too,
  bootstrap intervals, BLEU);
* ``answers_per_s_no_bleu``: the same with ``bleu=False``;
* ``answers_per_s_references_read``: the same, no BLEU, the reference readings already cached (a
  second model scored on the same benchmark in one process);
* ``reads_per_s``: :meth:`grok.eval.reader.AnswerReader.read` alone (the verifier's reading).

``--judge-requests N`` also times the rubric judge against the local latency server
(``tests/llm_server.py`` in its own process, ``--latency-ms``, ``--concurrency``): requests per
second against the ideal concurrency / latency. The server's rule-based model does not write
judgements, so every reply is unparsable and, with ``max_attempts`` 1, unscored: the figure is the
judge's request pipeline (prompt rendering, client, cache, rate limiter), not a judgement.

The 1-minute load average is recorded. Nothing here is a test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time

TARGET_ANSWERS_PER_S = 5000


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
    args = ap.parse_args(argv)

    from grok.eval.data import Predictions, benchmark_from_records
    from grok.eval.reader import AnswerReader
    from grok.eval.score import evaluate, score_item
    from grok.instruct.samples import sample_records
    from grok.knowledge import load_knowledge_base
    from grok.knowledge.lexicon import build_lexicon

    kb = load_knowledge_base()
    lex = build_lexicon(kb)
    bench = benchmark_from_records(sample_records(args.studies, args.seed, kb), kb=kb, lexicon=lex)
    ids = list(bench.items)
    refs = [bench.items[i].reference for i in ids]
    random.Random(args.seed).shuffle(refs)
    preds = Predictions("shuffled", dict(zip(ids, refs)))
    reader = AnswerReader(lex)
    n = len(ids)
    evaluate(bench, Predictions("warm-up", {ids[0]: refs[0]}), resamples=10, reader=reader)  # regex caches
    load_before = round(os.getloadavg()[0], 2)
    all_items = tuple(bench.items.values())
    out: dict[str, list[tuple[float, float]]] = {"full": [], "no_bleu": [], "refs_read": [], "reads": []}
    for _ in range(max(1, args.repeats)):
        out["full"].append(_timed(lambda: evaluate(bench, preds, args.bootstrap, reader=reader)))
        out["no_bleu"].append(_timed(lambda: evaluate(bench, preds, args.bootstrap, reader=reader, bleu=False)))
        cache: dict = {}
        for it in bench.items.values():  # the references read once, as a second model in one process would
            score_item(it, None, reader, cache)

        def scored_with_cache(cache=cache):
            for it, ans in zip(bench.items.values(), refs, strict=True):
                score_item(it, ans, reader, cache)

        out["refs_read"].append(_timed(scored_with_cache))

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
        "answers_per_s_no_bleu": rate("no_bleu", 0), "answers_per_cpu_s_no_bleu": rate("no_bleu", 1),
        "answers_per_s_references_read": rate("refs_read", 0),
        "answers_per_cpu_s_references_read": rate("refs_read", 1),
        "reads_per_s": rate("reads", 0), "reads_per_cpu_s": rate("reads", 1),
        "target_answers_per_s": TARGET_ANSWERS_PER_S,
        "load_avg_1min_before": load_before, "load_avg_1min_after": round(os.getloadavg()[0], 2),
    }
    if args.judge_requests:
        res["judge"] = bench_judge(bench, args.judge_requests, args.latency_ms, args.concurrency)
    print(json.dumps(res, indent=1))
    return res


def bench_judge(bench, n_requests: int, latency_ms: float, concurrency: int) -> dict:
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
            run = run_judge(cfg, items, answers, Path(tmp) / "cache.sqlite")
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
