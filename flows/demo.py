"""``grok demo``: the whole product end to end on a small phantom archive.

Run as: grok demo [--out runs/demo] [--fresh]

It lives with the flows (not in the ``grok`` library, which never imports Prefect or the flows) because it
runs the Prefect build flow.

Phantom archive (7 subjects: every category, both eyes, DICOM OPT/OP with planted identifiers) ->
the Prefect build flow (ingest, measure, label/reason, instruct/verify, contracts, publish) ->
CPU smoke runs of the alignment and LoRA SFT jobs on the published version -> ``grok-train predict``
and ``grok eval`` of the SFT smoke model on the benchmark split (:func:`flows.train.evaluate_run`).
Needs no data and no network; prints where the dataset, its card, the curator report and the
evaluation are.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from flows import prefect_env
from grok.stages.config import BuildConfig
from grok.stages.runner import BuildFolder


def demo_config(out: Path, *, subjects: int = 7, seed: int = 0, train: bool = True) -> dict[str, Any]:
    out = Path(out).resolve()
    return {
        "work_dir": str(out / "build"),
        "source": {"phantom": {"subjects": subjects, "seed": seed, "circle_scans": True}},
        "measure": {"shard_size": 4},
        "instruct": {"mode": "template", "seed": seed},
        "publish": {"name": "grok-phantom", "registry": str(out / "registry"), "bump": "minor",
                    "split_ratios": [0.6, 0.2, 0.2]},
        "train": {"jobs": ["align", "sft"] if train else [], "profile": "cpu_smoke", "via": "inline",
                  "overrides": {"align": ["batch_size=8"], "sft": ["max_length=2048"]}},
    }


def run_demo(out: Path, *, subjects: int = 7, seed: int = 0, train: bool = True,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the build flow on a phantom archive; returns a JSON-able summary."""
    prefect_env()
    with_training = train
    from flows import build, train  # after prefect_env(): Prefect reads its settings when imported

    cfg = BuildConfig.model_validate(demo_config(out, subjects=subjects, seed=seed, train=with_training))
    log(f"[bold]grok demo[/]: phantom ({subjects} subjects) -> ingest -> measure -> label/reason -> instruct/verify "
        f"-> contracts -> publish{' -> train (CPU smoke) -> eval' if with_training else ''}; work folder {cfg.work_dir}")
    if BuildFolder(cfg).require_pseudonym_key(demo_key=True):
        log(f"[yellow]grok demo[/]: ${cfg.deid.key_env} is not set, so the build runs with --demo-key (the public "
            "demo pseudonym key): fine for the phantom, never for real data.")
    res = build.build_dataset(config=cfg.model_dump(mode="json"), demo_key=True)
    stages = {s["stage"]: {k: s[k] for k in ("n_in", "n_out", "n_quarantined", "n_skipped")}
              | {"seconds": round(s["seconds"], 1)}
              for s in res["stages"]}
    training = {}
    for t in res.get("training", []):
        d = t.get("details", {})
        training[t["stage"]] = {"run_dir": t["outputs"].get("run_dir"), "seconds": round(t["seconds"], 1),
                                **{k: d[k] for k in ("first_train_loss", "last_train_loss", "chance_r5") if k in d}}
        if "final" in d:
            training[t["stage"]]["validation"] = d["final"]
        metrics = Path(t["outputs"].get("run_dir", "")) / "metrics.json"
        if t["stage"] == "train_sft" and metrics.is_file():
            import json

            steps = json.loads(metrics.read_text()).get("steps", [])
            if steps:
                training[t["stage"]].update(steps=len(steps), first_loss=steps[0]["loss"], last_loss=steps[-1]["loss"])
    registry = str(Path(out).resolve() / "registry")
    evaluation = None
    sft_run = (training.get("train_sft") or {}).get("run_dir")
    if sft_run:
        log("[bold]grok demo[/]: grok-train predict + grok eval of the SFT smoke model on the benchmark split "
            "(a tiny random model: scores near chance are expected; the plumbing is the point)")
        ev = train.eval_sft(run_dir=sft_run, trained_on=res["dataset"], registry=registry,
                            max_new_tokens=train.EVAL_MAX_NEW_TOKENS["cpu_smoke"], bootstrap=200)
        evaluation = {k: v for k, v in ev.items() if k != "headline"}
    return {"dataset": res["dataset"], "fingerprint": res["fingerprint"], "registry": registry,
            "card": res["outputs"]["card"], "curator_report": res["outputs"]["report"], "stages": stages,
            "training": training, "evaluation": evaluation, "failed_stages": []}
