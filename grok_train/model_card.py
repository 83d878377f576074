"""Model cards for what the training jobs save: every LoRA adapter (``final/``, ``checkpoints/step-N/``) and
every merged model gets a ``README.md`` in the Hugging Face model-card format.

Run as: written by ``grok-train sft`` and ``grok-train merge`` (:func:`write_model_card`)

peft's default card leaves "[More Information Needed]" in every field and names the base model by its
absolute local path. Ours says what a reader of a pushed model needs: the base model (by its folder name,
never a local path), the LoRA settings, the pinned dataset ``NAME@VERSION`` and its content fingerprint,
training figures, the ``grok eval`` results when the run has them (``eval/eval.json`` in the run folder),
and what the model is for and not for (research only; not a medical device).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from grok_train.config import LoraSettings, ModelConfig, config_from_dict
from grok_train.runs import RUN_FILE, TrainedModel, find_trained

EVAL_FILE = Path("eval") / "eval.json"


def base_model_name(model: ModelConfig) -> str:
    """The base model as a reader can look it up: the checkpoint folder's name (not its path), or the tiny
    random test model's description."""
    if model.path is not None:
        return Path(model.path).name
    return f"tiny random {model.family} (smoke tests only; no pretrained weights)"


def _metrics_lines(metrics: dict[str, Any]) -> list[str]:
    lines = [f"- optimizer steps: {metrics.get('steps', 'n/a')}"]
    losses = metrics.get("losses") or []
    if losses:
        lines.append(f"- training loss (answer tokens): first {losses[0]:.4f}, last {losses[-1]:.4f}")
    if metrics.get("val_loss") is not None:
        lines.append(f"- validation loss (answer tokens): {metrics['val_loss']:.4f} on {metrics.get('val_rows')} rows")
    if metrics.get("train_rows") is not None:
        lines.append(f"- training rows: {metrics['train_rows']}")
    return lines


def _eval_lines(evaluation: dict[str, Any] | None) -> list[str]:
    if not evaluation:
        return ["Not evaluated yet. Score it on the pinned version's held-out benchmark split with "
                "`grok-train predict` then `grok eval PREDICTIONS.jsonl --dataset NAME@VERSION --trained-on "
                "NAME@VERSION`; the results appear here when the run folder holds `eval/eval.json`."]
    overall = evaluation.get("overall") or {}
    lines = [f"From `grok eval` on `{evaluation.get('dataset', 'the benchmark split')}` "
             f"({overall.get('n', 'n/a')} answers; 95 % bootstrap intervals in its eval.json):"]
    cls = overall.get("classification") or {}
    for key in ("macro_f1", "accuracy"):
        if isinstance(cls.get(key), int | float):
            lines.append(f"- diagnosis {key.replace('_', ' ')}: {cls[key]:.3f}")
    for key, value in overall.items():
        if isinstance(value, dict) and isinstance(value.get("mean"), int | float):
            lines.append(f"- {key.replace('_', ' ')} (mean per answer): {value['mean']:.3f}")
    return lines if len(lines) > 1 else lines + ["- (eval.json holds no scores)"]


def model_card(*, kind: str, model: ModelConfig, lora: LoraSettings, dataset: dict[str, Any],
               metrics: dict[str, Any], evaluation: dict[str, Any] | None = None) -> ModelCard:
    """The card for a LoRA adapter (``kind="adapter"``) or a merged model (``kind="merged"``)."""
    spec = f"{dataset.get('name')}@{dataset.get('version')}"
    data = ModelCardData(
        library_name="peft" if kind == "adapter" else "transformers",
        license="other",
        datasets=[str(dataset.get("name"))],
        tags=["grok", "ophthalmology", "oct", "fundus", "qwen2-vl", "lora" if kind == "adapter" else "merged-lora",
              "research-only"],
        pipeline_tag="image-text-to-text",
    )
    what = ("a LoRA adapter (load it on the base model with peft)" if kind == "adapter"
            else "the base model with the LoRA adapter merged in (loads with transformers alone)")
    body = [
        f"# GROK ophthalmic instruction model: {spec}",
        "",
        f"This is {what}, fine-tuned by the GROK data engine's `grok-train sft` on knowledge-guided, "
        "verifier-checked ophthalmic instruction data: colour fundus photographs and OCT B-scans with "
        "conversations that reason from measured biomarkers to a diagnosis.",
        "",
        "## Base model",
        "",
        f"- {base_model_name(model)} ({model.family})",
        f"- image budget: {model.image_min_pixels} to {model.image_max_pixels} pixels per image",
        "",
        "## Training data",
        "",
        f"- dataset: `{spec}` (pull exactly this version: `grok datasets pull {spec}`)",
        f"- content fingerprint: `{dataset.get('fingerprint')}`",
        "- configs: `instructions` (train; validation for the loss below); the `benchmark` test split holds "
        "patients never seen in training",
        "",
        "## LoRA settings",
        "",
        f"- rank {lora.r}, alpha {lora.alpha}, dropout {lora.dropout}",
        f"- target modules: {lora.target_modules if isinstance(lora.target_modules, str) else ', '.join(lora.target_modules)}",
        f"- vision-language projector trained fully: {'yes' if lora.train_projector else 'no'}",
        "",
        "## Training figures",
        "",
        *_metrics_lines(metrics),
        "",
        "## Evaluation",
        "",
        *_eval_lines(evaluation),
        "",
        "## Intended use and limitations",
        "",
        "- For research on grounded ophthalmic report generation only. It is **not a medical device**: do not "
        "use it to diagnose, screen or treat anyone.",
        "- Its answers are only as good as the measurements and labels of the training version; the "
        "dataset card lists their known limits (segmentation and vessel accuracy on real devices, "
        "label-contradicted studies).",
        "- The licence is the base model's; the training data's licence is on the dataset card.",
        "",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))


def run_metrics(run_dir: Path) -> dict[str, Any]:
    """The training figures a card shows, from the run folder's ``metrics.json`` (empty when it has none)."""
    p = Path(run_dir) / "metrics.json"
    metrics = json.loads(p.read_text()) if p.is_file() else {}
    return {"steps": metrics.get("total_steps"), "val_loss": metrics.get("val_loss"),
            "val_rows": metrics.get("val_rows"), "losses": [h["loss"] for h in metrics.get("steps", [])]}


def read_evaluation(run_dir: Path) -> dict[str, Any] | None:
    """``eval/eval.json`` of a run folder, when ``grok eval`` wrote one."""
    p = Path(run_dir) / EVAL_FILE
    return json.loads(p.read_text()) if p.is_file() else None


def write_model_card(folder: str | Path, **kw: Any) -> Path:
    """Write :func:`model_card` as ``folder/README.md`` (over peft's placeholder card); returns its path."""
    path = Path(folder) / "README.md"
    model_card(**kw).save(path)
    return path


def trained_run_dir(tm: TrainedModel) -> Path | None:
    """The SFT run folder a trained model came from (its metrics and eval), when it is still there."""
    if tm.kind == "adapter":
        return Path(tm.run["_run_dir"])
    source = tm.run.get("source_adapter")
    if not source:
        return None
    src = Path(source)
    return next((q for q in (src, *src.parents[:3]) if (q / RUN_FILE).is_file()), None)


def model_card_for(tm: TrainedModel) -> ModelCard:
    """The card of a trained adapter or merged model as its run stands now (metrics, and the evaluation when
    ``eval/eval.json`` exists: an eval that ran after training reaches the card)."""
    run_dir = trained_run_dir(tm)
    return model_card(kind=tm.kind, model=tm.model_cfg,
                      lora=config_from_dict(LoraSettings, tm.run["config"].get("lora") or {}),
                      dataset=tm.dataset or {},
                      metrics={**run_metrics(run_dir), "train_rows": tm.run.get("train_rows")} if run_dir else {},
                      evaluation=read_evaluation(run_dir) if run_dir else None)


def refresh_model_card(checkpoint: str | Path) -> Path:
    """Rewrite the ``README.md`` of a run's final adapter (or of a checkpoint or merged model) from the run as
    it stands now; the training flow calls it after ``grok eval`` so the card shows the evaluation."""
    tm = find_trained(checkpoint)
    path = tm.model_dir / "README.md"
    model_card_for(tm).save(path)
    return path
