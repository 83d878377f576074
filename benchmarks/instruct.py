"""Benchmark instruction generation: template mode rows/s and LLM mode requests/s against the local server.

Run as: OMP_NUM_THREADS=1 python benchmarks/instruct.py [--studies 400] [--repeats 5] [--llm-requests 20000]
        [--llm-repeats 1] [--latency-ms 100] [--concurrency 32] [--http-transport auto|sdk] [--skip-llm]
        [--skip-template] [--llm-build BUILD_DIR [--llm-build-copies 20]]

Prints one JSON object. Template mode: rows generated *and verified* per second on one core, over
all six families (study facts are prepared before the clock starts, as the records stage hands
them over; the JSON also reports the preparation rate and the end-to-end rate that includes it,
``verified_rows_per_s_with_preparation``). Each repeat renders and verifies every
row once; the figures are medians over the repeats, as wall-clock rows/s and as rows per CPU
second of this process (the latter moves less when other jobs share the machine). LLM mode: the
local OpenAI-compatible server (tests/llm_server.py, asyncio, run in a separate process) answers
every request after a fixed latency; the real openai client (grok.instruct.llm.OpenAIChatClient)
runs at the given concurrency with the request cache and the retry policy of LLM mode; the ideal
rate is concurrency / latency. Resident memory is sampled every 1,000 requests to show whether it
stays flat; the client's and the server's CPU time per request are reported. The 1-minute load
average is recorded before and after each part. Nothing here is a test: the figures depend on the
machine and its load.

``--llm-build BUILD_DIR`` adds ``llm_mode_build``: the build's own LLM path
(:func:`grok.instruct.generate.build_instructions` in LLM mode) over the study records of a finished
build folder (``records.jsonl`` and ``media/``, e.g. the demo's), with the real generation prompt and
the study's images sent as data URLs, each verified, against the same local server; the records are
repeated ``--llm-build-copies`` times under new study ids so there is enough work to fill the
concurrency. It reports rows and requests per second, the ideal, the request bodies' mean size and
the images per request: the figure that belongs next to a build's LLM settings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _median(xs):
    return statistics.median(xs) if xs else None


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def bench_template(n_studies: int, seed: int, repeats: int = 5) -> dict:
    from grok.instruct.families import FAMILIES, Skip
    from grok.instruct.generate import TemplateGenerator, prepare
    from grok.instruct.samples import sample_records
    from grok.instruct.templating import TemplateLibrary
    from grok.knowledge import load_knowledge_base
    from grok.knowledge.lexicon import build_lexicon
    from grok.verify.verifier import Verifier

    kb = load_knowledge_base()
    lex = build_lexicon(kb)
    records = sample_records(n_studies, seed, kb)
    t, c = time.perf_counter(), time.process_time()
    facts, _bad = prepare(records, kb, lex)
    prep_s, prep_cpu_s = time.perf_counter() - t, time.process_time() - c
    gen = TemplateGenerator(TemplateLibrary(), lex, Verifier(lex))
    for f in facts[:8]:  # warm-up: template compilation, regex caches
        for fam in FAMILIES.values():
            try:
                gen.verify(gen.render(f, fam, seed, "bench"), f)
            except Skip:
                pass
    load_before = _load()
    from grok.instruct.lint import lint_rows

    lint_input = []
    for f in facts:
        for fam in FAMILIES.values():
            try:
                lint_input.append(gen.render(f, fam, seed, "bench"))
            except Skip:
                pass
    c = time.process_time()
    lint = lint_rows(lint_input, kb, lex)
    lint_cpu_s = time.process_time() - c
    runs = []
    for _ in range(max(1, repeats)):
        per_family: dict[str, dict] = {}
        total_rows = passed = 0
        t_all, c_all = time.perf_counter(), time.process_time()
        for fam in FAMILIES.values():
            n = ok = 0
            t, c = time.perf_counter(), time.process_time()
            for f in facts:
                try:
                    row = gen.verify(gen.render(f, fam, seed, "bench"), f)
                except Skip:
                    continue
                n += 1
                ok += bool(row["verifier_passed"])
            per_family[fam.id] = {"rows": n, "passed": ok, "s": time.perf_counter() - t, "cpu_s": time.process_time() - c}
            total_rows += n
            passed += ok
        runs.append({"rows": total_rows, "passed": passed, "s": time.perf_counter() - t_all,
                     "cpu_s": time.process_time() - c_all, "per_family": per_family})
    passed = runs[0]["passed"]
    fam_out = {}
    for fid in FAMILIES:
        r0 = runs[0]["per_family"][fid]
        fam_out[fid] = {"rows": r0["rows"], "passed": r0["passed"],
                        "rows_per_s": round(_median([r0["rows"] / r["per_family"][fid]["s"] for r in runs]), 1),
                        "rows_per_cpu_s": round(_median([r0["rows"] / r["per_family"][fid]["cpu_s"] for r in runs]), 1)}
    rates = [r["passed"] / r["s"] for r in runs]
    cpu_rates = [r["passed"] / r["cpu_s"] for r in runs]
    return {"studies": len(facts), "rows": runs[0]["rows"], "verified_rows": passed, "repeats": len(runs),
            "seconds_median": round(_median([r["s"] for r in runs]), 3),
            "verified_rows_per_s": round(_median(rates), 1),
            "verified_rows_per_s_each_repeat": [round(x, 1) for x in rates],
            "verified_rows_per_cpu_s": round(_median(cpu_rates), 1), "target_rows_per_s": 2000,
            # the build prepares every study's facts once, so the end-to-end rate counts that time too
            "verified_rows_per_s_with_preparation": round(passed / (_median([r["s"] for r in runs]) + prep_s), 1),
            # the same per CPU-second of this process (steadier than wall time on a shared machine)
            "verified_rows_per_cpu_s_with_preparation": round(passed / (_median([r["cpu_s"] for r in runs])
                                                                        + prep_cpu_s), 1),
            "facts_prepared_per_s": round(len(facts) / prep_s, 1),
            "facts_prepared_per_cpu_s": round(len(facts) / prep_cpu_s, 1), "load_avg_1min_before": load_before,
            # grok lint-text over the same rows (the build's text contract): rows per CPU-second, violations
            "lint_rows_per_cpu_s": round(len(lint_input) / lint_cpu_s, 1),
            "lint_violations": lint["violations_total"], "lint_targets_met": lint["targets_met"],
            "load_avg_1min_after": _load(), "per_family": fam_out}


def bench_llm(n_requests: int, latency_ms: float, concurrency: int, repeats: int = 1,
              http_transport: str = "auto") -> dict:
    import asyncio

    import psutil

    from grok.instruct.llm import (
        ChatRequest,
        LLMConfig,
        OpenAIChatClient,
        RateLimiter,
        RequestCache,
        call_with_retries,
    )

    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "llm_server.py"), "--port", "0", "--latency-ms",
                             str(latency_ms)], stdout=subprocess.PIPE, text=True)
    runs = []
    try:
        url = proc.stdout.readline().strip()
        server = psutil.Process(proc.pid)
        cfg = LLMConfig(base_url=url, model="bench", concurrency=concurrency, timeout_s=30, max_retries=3,
                        http_transport=http_transport)
        for rep in range(max(1, repeats)):
            tmp = tempfile.mkdtemp(prefix="grok-bench-")
            cache = RequestCache(Path(tmp) / "cache.sqlite")
            samples: list[tuple[int, float]] = []
            failures: list[str] = []

            async def main(rep=rep, cache=cache, samples=samples, failures=failures) -> dict:
                client = OpenAIChatClient(cfg)
                limiter = RateLimiter(0)
                queue: asyncio.Queue = asyncio.Queue(maxsize=concurrency * 2)
                done = 0

                async def worker() -> None:
                    nonlocal done
                    while True:
                        i = await queue.get()
                        if i is None:
                            return
                        req = ChatRequest("bench", [{"role": "system", "content": "Task: diagnosis"},
                                                    {"role": "user", "content": f"Task: diagnosis\nrequest {rep}-{i}\n"
                                                                                "Diagnosis to reach: Glaucoma"}],
                                          cfg.sampling(), None, "bench", cfg.timeout_s)
                        if cache.get(req.key) is None:
                            resp = await call_with_retries(client, req, cfg, limiter,
                                                           lambda k, e: failures.append(e.kind))
                            cache.put(req.key, resp)
                        done += 1
                        if done % 1000 == 0:
                            samples.append((done, round(_rss_mb(), 1)))

                workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
                load_before = _load()
                srv0 = sum(server.cpu_times()[:2])
                t, c = time.perf_counter(), time.process_time()
                for i in range(n_requests):
                    await queue.put(i)
                for _ in workers:
                    await queue.put(None)
                await asyncio.gather(*workers)
                out = {"s": time.perf_counter() - t, "cpu_s": time.process_time() - c,
                       "server_cpu_s": sum(server.cpu_times()[:2]) - srv0, "load_before": load_before,
                       "load_after": _load()}
                await client.aclose()
                return out

            r = asyncio.run(main())
            cache.close()
            r.update(samples=samples, failed=len(failures))
            runs.append(r)
    finally:
        proc.terminate()
        proc.wait(10)
    ideal = concurrency / (latency_ms / 1000.0)
    rates = [n_requests / r["s"] for r in runs]
    rate = _median(rates)
    samples = runs[0]["samples"]
    first = samples[len(samples) // 10][1] if samples else None
    last = samples[-1][1] if samples else None
    return {"requests": n_requests, "concurrency": concurrency, "latency_ms": latency_ms, "repeats": len(runs),
            "http_transport": http_transport,
            "seconds_median": round(_median([r["s"] for r in runs]), 2),
            "requests_per_s": round(rate, 1), "requests_per_s_each_repeat": [round(x, 1) for x in rates],
            "ideal_requests_per_s": round(ideal, 1), "fraction_of_ideal": round(rate / ideal, 3),
            "target_fraction": 0.8, "failed_tries": sum(r["failed"] for r in runs),
            "client_cpu_ms_per_request": round(_median([r["cpu_s"] for r in runs]) / n_requests * 1000, 3),
            "server_cpu_ms_per_request": round(_median([r["server_cpu_s"] for r in runs]) / n_requests * 1000, 3),
            "load_avg_1min_before": [r["load_before"] for r in runs],
            "load_avg_1min_after": [r["load_after"] for r in runs],
            "rss_mb_at_10pct": first, "rss_mb_at_end": last, "rss_growth_mb_after_10pct":
                None if first is None else round(last - first, 1),
            "rss_samples_every_1000": [s[1] for s in samples]}


def _copy_record(rec: dict, k: int) -> dict:
    """Copy ``k`` of a study record: a new study id and every measurement scaled by 1 + k/1000 (so its prompt,
    and the request's cache key, differ from the other copies'; the findings stay the record's own)."""
    bio = {b: v * (1 + k / 1000) if isinstance(v, float) else v for b, v in (rec.get("biomarkers") or {}).items()}
    return {**rec, "study_id": f"{rec['study_id']}-{k}", "biomarkers": bio}


def bench_llm_build(build: Path, copies: int, latency_ms: float, concurrency: int) -> dict:
    """LLM mode through the build's own path: real prompts, real images, every answer verified."""
    import psutil

    from grok.instruct.generate import InstructConfig, build_instructions
    from grok.instruct.llm import LLMConfig
    from grok.instruct.records import load_studies
    from grok.knowledge import load_knowledge_base

    base = load_studies(build / "records.jsonl")
    records = [_copy_record(r, k) for k in range(copies) for r in base]
    kb = load_knowledge_base()
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "llm_server.py"), "--port", "0", "--latency-ms",
                             str(latency_ms)], stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        server = psutil.Process(proc.pid)
        llm = LLMConfig(base_url=url, model="bench", concurrency=concurrency, requests_per_second=0, timeout_s=60,
                        image_root=str(build), send_images=True)
        out = Path(tempfile.mkdtemp(prefix="grok-bench-build-"))
        load_before = _load()
        srv0 = sum(server.cpu_times()[:2])
        t, c = time.perf_counter(), time.process_time()
        summary = build_instructions(records, out, InstructConfig(mode="llm", llm=llm), kb=kb)
        secs, cpu = time.perf_counter() - t, time.process_time() - c
        server_cpu = sum(server.cpu_times()[:2]) - srv0
    finally:
        proc.terminate()
        proc.wait(10)
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "instructions.parquet", columns=["mode", "images"]).to_pylist()
    llm_rows = [r for r in rows if r["mode"] == "llm"]
    calls = summary["llm"]["calls"]
    ideal = concurrency / (latency_ms / 1000.0)
    return {"build": str(build), "studies": len(records), "copies": copies, "concurrency": concurrency,
            "latency_ms": latency_ms, "seconds": round(secs, 2), "rows_written": summary["rows"],
            "llm_rows": len(llm_rows), "quarantined": summary["quarantined"], "skipped": summary["rows_skipped"],
            "llm_calls": calls, "requests_per_s": round(calls / secs, 1), "ideal_requests_per_s": round(ideal, 1),
            "fraction_of_ideal": round(calls / secs / ideal, 3),
            "images_per_llm_row": round(sum(len(r["images"] or []) for r in llm_rows) / max(1, len(llm_rows)), 2),
            "client_cpu_ms_per_request": round(cpu / max(1, calls) * 1000, 2),
            "server_cpu_ms_per_request": round(server_cpu / max(1, calls) * 1000, 2),
            "load_avg_1min_before": load_before, "load_avg_1min_after": _load(),
            "tokens_billed": summary["llm"].get("tokens_billed_this_run")}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=5, help="template-mode repeats (median reported)")
    ap.add_argument("--llm-repeats", type=int, default=1, help="LLM-mode repeats (median reported)")
    ap.add_argument("--llm-requests", type=int, default=20000)
    ap.add_argument("--latency-ms", type=float, default=100.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--http-transport", choices=("auto", "sdk"), default="auto",
                    help="LLMConfig.http_transport (auto: lean transport for the http:// test server)")
    ap.add_argument("--skip-llm", action="store_true")
    ap.add_argument("--skip-template", action="store_true")
    ap.add_argument("--llm-build", type=Path, default=None,
                    help="a finished build folder: also run LLM mode through the build's path on its records")
    ap.add_argument("--llm-build-copies", type=int, default=20)
    a = ap.parse_args(argv)
    out: dict = {"threads": os.environ.get("OMP_NUM_THREADS", "unset"), "cpu_count": os.cpu_count()}
    if not a.skip_template:
        out["template_mode"] = bench_template(a.studies, a.seed, a.repeats)
    if not a.skip_llm:
        out["llm_mode"] = bench_llm(a.llm_requests, a.latency_ms, a.concurrency, a.llm_repeats, a.http_transport)
    if a.llm_build is not None:
        out["llm_mode_build"] = bench_llm_build(a.llm_build, a.llm_build_copies, a.latency_ms, a.concurrency)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
