"""Benchmark instruction generation: template mode rows/s and LLM mode requests/s against the local server.

Run as: OMP_NUM_THREADS=1 python benchmarks/instruct.py [--studies 400] [--llm-requests 20000] [--latency-ms 100]
        [--concurrency 32] [--skip-llm] [--skip-template]

Prints one JSON object. Template mode: rows generated *and verified* per second on one core, over
all six families (study facts are prepared before the clock starts, as the records stage hands
them over; the JSON also reports the preparation rate). LLM mode: the local OpenAI-compatible
server (tests/llm_server.py, run in a separate process) answers every request after a fixed
latency; the real openai client runs at the given concurrency; the ideal rate is
concurrency / latency. Resident memory is sampled every 1,000 requests to show whether it stays
flat. Nothing here is a test: the figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def bench_template(n_studies: int, seed: int) -> dict:
    from grok.instruct.families import FAMILIES, Skip
    from grok.instruct.generate import TemplateGenerator, prepare
    from grok.instruct.samples import sample_records
    from grok.instruct.templating import TemplateLibrary
    from grok.knowledge import load_knowledge_base
    from grok.verify.lexicon import build_lexicon
    from grok.verify.verifier import Verifier

    kb = load_knowledge_base()
    lex = build_lexicon(kb)
    records = sample_records(n_studies, seed, kb)
    t = time.perf_counter()
    facts, _bad = prepare(records, kb, lex)
    prep_s = time.perf_counter() - t
    gen = TemplateGenerator(TemplateLibrary(), lex, Verifier(lex))
    for f in facts[:8]:  # warm-up: template compilation, regex caches
        for fam in FAMILIES.values():
            try:
                gen.verify(gen.render(f, fam, seed, "bench"), f)
            except Skip:
                pass
    per_family: dict[str, dict] = {}
    total_rows = passed = 0
    t_all = time.perf_counter()
    for fam in FAMILIES.values():
        n = ok = 0
        t = time.perf_counter()
        for f in facts:
            try:
                row = gen.verify(gen.render(f, fam, seed, "bench"), f)
            except Skip:
                continue
            n += 1
            ok += bool(row["verifier_passed"])
        dt = time.perf_counter() - t
        per_family[fam.id] = {"rows": n, "passed": ok, "rows_per_s": round(n / dt, 1)}
        total_rows += n
        passed += ok
    dt_all = time.perf_counter() - t_all
    return {"studies": len(facts), "rows": total_rows, "verified_rows": passed, "seconds": round(dt_all, 3),
            "verified_rows_per_s": round(passed / dt_all, 1), "target_rows_per_s": 2000,
            "facts_prepared_per_s": round(len(facts) / prep_s, 1), "per_family": per_family}


def bench_llm(n_requests: int, latency_ms: float, concurrency: int) -> dict:
    import asyncio

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
    try:
        url = proc.stdout.readline().strip()
        cfg = LLMConfig(base_url=url, model="bench", concurrency=concurrency, timeout_s=30, max_retries=3)
        tmp = tempfile.mkdtemp(prefix="grok-bench-")
        cache = RequestCache(Path(tmp) / "cache.sqlite")
        samples: list[tuple[int, float]] = []
        failures = []

        async def main() -> float:
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
                                                {"role": "user", "content": f"Task: diagnosis\nrequest {i}\n"
                                                                            "Diagnosis to reach: Glaucoma"}],
                                      cfg.sampling(), None, "bench", cfg.timeout_s)
                    if cache.get(req.key) is None:
                        resp = await call_with_retries(client, req, cfg, limiter, lambda k, e: failures.append(e.kind))
                        cache.put(req.key, resp)
                    done += 1
                    if done % 1000 == 0:
                        samples.append((done, round(_rss_mb(), 1)))

            workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
            t = time.perf_counter()
            for i in range(n_requests):
                await queue.put(i)
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)
            dt = time.perf_counter() - t
            await client.aclose()
            return dt

        dt = asyncio.run(main())
        cache.close()
    finally:
        proc.terminate()
        proc.wait(10)
    ideal = concurrency / (latency_ms / 1000.0)
    rate = n_requests / dt
    first = samples[len(samples) // 10][1] if samples else None
    last = samples[-1][1] if samples else None
    return {"requests": n_requests, "concurrency": concurrency, "latency_ms": latency_ms, "seconds": round(dt, 2),
            "requests_per_s": round(rate, 1), "ideal_requests_per_s": round(ideal, 1),
            "fraction_of_ideal": round(rate / ideal, 3), "target_fraction": 0.8, "failed_tries": len(failures),
            "rss_mb_at_10pct": first, "rss_mb_at_end": last, "rss_growth_mb_after_10pct":
                None if first is None else round(last - first, 1),
            "rss_samples_every_1000": [s[1] for s in samples]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--llm-requests", type=int, default=20000)
    ap.add_argument("--latency-ms", type=float, default=100.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--skip-llm", action="store_true")
    ap.add_argument("--skip-template", action="store_true")
    a = ap.parse_args(argv)
    out: dict = {"threads": os.environ.get("OMP_NUM_THREADS", "unset"), "cpu_count": os.cpu_count()}
    if not a.skip_template:
        out["template_mode"] = bench_template(a.studies, a.seed)
    if not a.skip_llm:
        out["llm_mode"] = bench_llm(a.llm_requests, a.latency_ms, a.concurrency)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
