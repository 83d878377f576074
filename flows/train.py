"""Training flows for the GPU work pool: alignment and LoRA SFT on a pinned dataset version, then the
SFT model scored on the benchmark split.

Run as: prefect deploy --all   (deployments train-align/gpu and train-sft/gpu in prefect.yaml)

The flows run ``grok_train`` (which imports neither Prefect nor Great Expectations) in a subprocess,
the same command the build's inline training runs (:mod:`grok.stages.train`), so a CUDA crash cannot
take the worker down, and record the run folder and metrics as artifacts.

After SFT, :func:`evaluate_run` answers the benchmark split with the new adapter (``grok-train
predict``, a subprocess too) and scores the answers (:func:`grok.eval.score.evaluate`):
``RUN/eval/predictions.jsonl``, ``RUN/eval/eval.json`` (where the model card looks,
:data:`grok_train.model_card.EVAL_FILE`), ``RUN/eval/index.html`` and a Prefect artifact with the
headline table. A model whose training version holds patients of the benchmark split is refused
before anything is generated, unless ``allow_overlap`` (recorded in ``eval.json``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from grok.eval.data import load_benchmark, require_no_overlap
from grok.eval.report import write_report
from grok.eval.score import MEAN_METRICS, default_cache_dir, evaluate, write_scores
from grok.stages.train import run_train_job, train_command
from grok_train.model_card import EVAL_FILE, refresh_model_card

#: Generation budget per benchmark answer by training profile (the CPU smoke model writes noise).
EVAL_MAX_NEW_TOKENS = {"gpu": 512, "cpu_smoke": 24}


def _run(job: str, dataset: str, registry: str | None, profile: str, overrides: list[str] | None,
         output_root: str) -> dict[str, Any]:
    logger = get_run_logger()
    out = Path(output_root) / job / dataset.replace("@", "-")
    cmd = train_command(job, dataset, profile=profile, output_dir=out, registry=registry, overrides=overrides)
    logger.info("running %s", " ".join(cmd))
    result = run_train_job(cmd)
    create_markdown_artifact(key=f"grok-train-{job}", description=f"{job} on {dataset}", markdown="\n".join([
        f"# {job} on {dataset}", "", f"- run folder: `{out}`", "", "```json",
        json.dumps(result, indent=1, default=str)[:6000], "```"]))
    return {"job": job, "dataset": dataset, "run_dir": str(out), "result": result}


def predict_command(run_dir: str | Path, benchmark: str, output: str | Path, *, registry: str | None = None,
                    config: str = "benchmark", split: str = "test", max_new_tokens: int = 512,
                    overrides: list[str] | None = None) -> list[str]:
    """``python -m grok_train predict --checkpoint RUN --dataset NAME@VERSION ...`` (JSON result on stdout)."""
    cmd = [sys.executable, "-m", "grok_train", "predict", "--checkpoint", str(run_dir), "--dataset", benchmark,
           "--dataset-config", config, "--split", split, "--output", str(output), "--max-new-tokens",
           str(max_new_tokens), "--json", "--quiet"]
    if registry:
        cmd += ["--registry", registry]
    for ov in overrides or []:
        cmd += ["--set", ov]
    return cmd


def _ci(ci: list[float] | None) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def headline_markdown(res: dict[str, Any], run_dir: str | Path) -> str:
    """The artifact: the overall scores with their 95 % intervals, the answers' counts and input problems."""
    o = res["overall"]
    c = o["classification"]
    rows = [("macro F1 (diagnosis)", c.get("macro_f1"), c.get("macro_f1_ci95")),
            ("accuracy (diagnosis)", c.get("accuracy"), c.get("accuracy_ci95"))]
    rows += [(m.replace("_", " "), o[m]["mean"], o[m]["ci95"]) for m in MEAN_METRICS]
    if o.get("bleu"):
        rows.append(("BLEU", o["bleu"]["score"], o["bleu"]["ci95"]))
    lines = [f"# grok eval: `{res['dataset']}` {res['config']}/{res['split']}", "",
             f"{res['counts']['scored_answers']} of {res['counts']['benchmark_items']} items answered "
             f"({c['abstained']} of {c['n']} diagnoses abstained); model run `{run_dir}`", "",
             "| metric | value | 95 % interval |", "|---|---|---|"]
    lines += [f"| {name} | {'n/a' if v is None else f'{v:.3f}'} | {_ci(ci)} |" for name, v, ci in rows]
    ov = res.get("training_overlap")
    if ov:
        lines += ["", f"Training version `{ov['trained_on']}`: {ov['patients_shared']} of {ov['benchmark_patients']} "
                      f"benchmark patients shared" + (" (scored anyway: --allow-overlap)" if ov["allowed"] else "")]
    if res["problems"]:
        lines += ["", "Input problems: " + ", ".join(f"{k} {v}" for k, v in sorted(res["problems"].items()))]
    return "\n".join(lines)


def evaluate_run(run_dir: str | Path, trained_on: str | None = None, registry: str | None = None, *,
                 benchmark: str | None = None, config: str = "benchmark", split: str = "test",
                 allow_overlap: bool = False, max_new_tokens: int = 512, bootstrap: int = 1000,
                 predict_overrides: list[str] | None = None, artifact: bool = True) -> dict[str, Any]:
    """Answer ``benchmark`` (default: the version the run trained on) with the run's adapter and score it.

    ``trained_on`` defaults to the run's pinned version (``run.json``). Raises
    :class:`grok.eval.data.TrainingOverlapError` before generating when that version trained on patients
    of the benchmark split and ``allow_overlap`` is false. Returns a summary with the paths written."""
    run = Path(run_dir)
    if trained_on is None:
        pin = json.loads((run / "run.json").read_text(encoding="utf-8"))["dataset"]
        trained_on = f"{pin['name']}@{pin['version']}"
    benchmark = benchmark or trained_on
    out = run / EVAL_FILE.parent
    bench = load_benchmark(benchmark, registry, config, split)
    overlap = require_no_overlap(bench, trained_on, registry, allow_overlap)
    preds = out / "predictions.jsonl"
    predicted = run_train_job(predict_command(run, benchmark, preds, registry=registry, config=config, split=split,
                                              max_new_tokens=max_new_tokens, overrides=predict_overrides))
    res = evaluate(bench, preds, bootstrap, items_path=out / "items.jsonl", cache_dir=default_cache_dir())
    res["training_overlap"] = overlap
    res["predict"] = {k: predicted.get(k) for k in ("rows", "finished_eos", "hit_length_limit", "seconds")}
    scores = write_scores(res, run / EVAL_FILE)
    refresh_model_card(run)  # the final adapter's card, written before this eval existed, now shows it
    report = write_report(res, out / "index.html", bench)
    markdown = headline_markdown(res, run)
    if artifact:
        create_markdown_artifact(key="grok-eval", description=f"grok eval of {run.name} on {benchmark}",
                                 markdown=markdown)
    o = res["overall"]
    return {"benchmark": bench.dataset, "trained_on": trained_on, "eval_json": str(scores), "report": str(report),
            "predictions": str(preds), "answered": res["counts"]["scored_answers"],
            "items": res["counts"]["benchmark_items"], "macro_f1": o["classification"]["macro_f1"],
            "quantitative": o["quantitative"]["mean"], "rouge_l": o["rouge_l"]["mean"],
            "training_overlap": overlap, "headline": markdown}


@flow(name="train-align")
def train_align(dataset: str, registry: str | None = None, profile: str = "gpu", overrides: list[str] | None = None,
                output_root: str = "runs/train") -> dict[str, Any]:
    """CLIP-style OCT-biomarker alignment on ``dataset`` (NAME@VERSION)."""
    return _run("align", dataset, registry, profile, overrides, output_root)


@flow(name="train-sft")
def train_sft(dataset: str, registry: str | None = None, profile: str = "gpu", overrides: list[str] | None = None,
              output_root: str = "runs/train", evaluate_after: bool = True, allow_overlap: bool = False,
              eval_max_new_tokens: int | None = None) -> dict[str, Any]:
    """LoRA SFT of a Qwen2-VL model on ``dataset`` (NAME@VERSION), then :func:`evaluate_run` on its
    benchmark split (``evaluate_after``; ``allow_overlap`` scores despite shared patients, recorded)."""
    res = _run("sft", dataset, registry, profile, overrides, output_root)
    if evaluate_after:
        budget = eval_max_new_tokens or EVAL_MAX_NEW_TOKENS.get(profile, 512)
        res["evaluation"] = evaluate_run(res["run_dir"], dataset, registry, allow_overlap=allow_overlap,
                                         max_new_tokens=budget)
        get_run_logger().info("grok eval: %s", res["evaluation"]["eval_json"])
    return res


@flow(name="eval-sft")
def eval_sft(run_dir: str, trained_on: str | None = None, registry: str | None = None,
             benchmark: str | None = None, allow_overlap: bool = False, max_new_tokens: int = 512,
             bootstrap: int = 1000) -> dict[str, Any]:
    """Score a finished SFT run on a benchmark split (:func:`evaluate_run`): eval.json, report, artifact."""
    return evaluate_run(run_dir, trained_on, registry, benchmark=benchmark, allow_overlap=allow_overlap,
                        max_new_tokens=max_new_tokens, bootstrap=bootstrap)
