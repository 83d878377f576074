"""``grok eval``: score a model's benchmark answers, or compare two score files.

Run as: grok eval PREDICTIONS.jsonl --dataset NAME@VERSION [--out eval] [--json]
        grok eval compare A.json B.json [--json]
"""

from __future__ import annotations

from pathlib import Path

import typer

from grok.cli._common import ExitCode, console, fail, print_json


def _fmt(m: dict | None, digits: int = 3) -> str:
    if not m or m.get("mean") is None:
        return "n/a"
    ci = m.get("ci95")
    return f"{m['mean']:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")


def _print_summary(res: dict) -> None:
    o = res["overall"]
    c = o["classification"]
    console.print(f"{res['dataset']} {res['config']}/{res['split']}: {res['counts']['scored_answers']} of "
                  f"{res['counts']['benchmark_items']} items answered ({res['seconds']} s)", highlight=False)
    if c["n"]:
        ci = c.get("macro_f1_ci95")
        console.print(f"  classification: macro F1 {c['macro_f1']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
                      + f", accuracy {c['accuracy']:.3f}, {c['abstained']} abstained of {c['n']}", highlight=False)
    for m in ("quantitative", "coverage", "findings_agreement", "invented", "wrong_eye", "rouge_l"):
        console.print(f"  {m}: {_fmt(o[m])}", highlight=False)
    if o.get("bleu"):
        console.print(f"  bleu: {o['bleu']['score']} {o['bleu']['ci95'] or ''}", highlight=False)
    elif res.get("bleu_note"):
        console.print(f"  {res['bleu_note']}", highlight=False)
    for task, g in res["per_task"].items():
        f1 = g["classification"]["macro_f1"]
        console.print(f"  task {task}: n {g['n']}, macro F1 {'n/a' if f1 is None else f'{f1:.3f}'}, "
                      f"quantitative {_fmt(g['quantitative'], 2)}, ROUGE-L {_fmt(g['rouge_l'], 2)}", highlight=False)
    for prob, n in sorted(res["problems"].items()):
        ex = ", ".join(res["problem_examples"].get(prob, [])[:5])
        console.print(f"[yellow]warning:[/] {prob}: {n} ({ex})", highlight=False)


def eval_command(
    args: list[str] = typer.Argument(None, help="PREDICTIONS.jsonl, or: compare A.json B.json (none with --model-url)"),
    dataset: str = typer.Option(None, "--dataset", help="The reference version, NAME@VERSION (or NAME@latest)."),
    config: str = typer.Option("benchmark", "--config", help="Config of the reference rows."),
    split: str = typer.Option("test", "--split", help="Split of the reference rows."),
    registry: str = typer.Option(None, "--registry", help="Registry (default $GROK_REGISTRY or ./registry)."),
    out: Path = typer.Option(Path("eval"), "--out", help="Folder for eval.json and index.html."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the 95 % intervals (0: none)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap resamples."),
    tolerance: float = typer.Option(0.10, "--tolerance", help="Relative tolerance for numbers (0.10 = ±10 %)."),
    no_bleu: bool = typer.Option(False, "--no-bleu", help="Skip BLEU (its tokeniser is the slowest part)."),
    worst: int = typer.Option(20, "--worst", help="How many worst-scored answers the report shows."),
    model_url: str = typer.Option(None, "--model-url", help="Ask this OpenAI-compatible server the benchmark's "
                                  "questions (with their images) and score its answers (OUT/predictions.jsonl)."),
    model: str = typer.Option(None, "--model", help="The model name for --model-url."),
    model_config: Path = typer.Option(None, "--model-config", help="LLMConfig file for --model-url (concurrency, "
                                      "timeouts, send_images, ...); --model-url and --model override it."),
    trained_on: str = typer.Option(None, "--trained-on", help="The version (NAME@VERSION) the model was trained on: "
                                   "scoring is refused when it trained on any benchmark patient."),
    allow_overlap: bool = typer.Option(False, "--allow-overlap", help="Score despite shared patients (recorded)."),
    judge_config: Path = typer.Option(None, "--judge-config", help="Score the rubric with an LLM judge: a YAML/JSON "
                                      "file of grok.instruct.llm.LLMConfig fields (as grok instruct --llm-config)."),
    judge_url: str = typer.Option(None, "--judge-url", help="Judge's OpenAI-compatible base URL (overrides the file)."),
    judge_model: str = typer.Option(None, "--judge-model", help="Judge's model name (overrides the file)."),
    judge_tasks: str = typer.Option("report,cot", "--judge-tasks", help="Comma-separated tasks the judge grades."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Score benchmark answers against a published version (classification, grounded report quality,
    text overlap; per task, per category and overall, with 95 % bootstrap intervals), or compare two
    score files (paired bootstrap). Writes OUT/eval.json and OUT/index.html."""
    from grok.eval.data import EvalInputError

    args = list(args or [])
    if args and args[0] == "compare":
        if len(args) != 3:
            fail("usage: grok eval compare A.json B.json", ExitCode.USAGE)
        from grok.eval.compare import compare, load_scores

        if bootstrap < 0:
            fail("--bootstrap must be >= 0", ExitCode.USAGE)
        try:
            a, b = load_scores(args[1]), load_scores(args[2])
            res = compare(a, b, bootstrap, seed, names=(Path(args[1]).parent.name or args[1],
                                                        Path(args[2]).parent.name or args[2]))
        except EvalInputError as exc:
            fail(str(exc), ExitCode.BAD_INPUT)
        if as_json:
            print_json(res)
        else:
            console.print(res["verdict"], highlight=False)
            for line in res["differences"]:
                console.print(f"  {line}", highlight=False)
        return
    asking = bool(model_url or model_config)
    if asking and args:
        fail("give either PREDICTIONS.jsonl or --model-url URL --model NAME, not both", ExitCode.USAGE)
    if not asking and len(args) != 1:
        fail("give one PREDICTIONS.jsonl, or --model-url URL --model NAME (or: grok eval compare A.json B.json)",
             ExitCode.USAGE)
    if not dataset:
        fail("--dataset NAME@VERSION is required: the published version whose benchmark the answers are for",
             ExitCode.USAGE)
    if bootstrap < 0:
        fail("--bootstrap must be >= 0", ExitCode.USAGE)
    if not 0.0 < tolerance < 1.0:
        fail(f"--tolerance {tolerance}: give a relative tolerance in (0, 1), e.g. 0.10", ExitCode.USAGE)
    from grok.eval.data import (
        TrainingOverlapError,
        load_benchmark,
        load_predictions,
        open_predictions,
        require_no_overlap,
    )
    from grok.eval.report import write_figures, write_report
    from grok.eval.score import default_cache_dir, evaluate, iter_items, write_scores

    judge_cfg = _llm_settings("judge", judge_config, judge_url, judge_model) if (
        judge_config is not None or judge_url or judge_model) else None
    if asking:
        from grok.eval.ask import ask_benchmark

        ask_cfg = _llm_settings("model", model_config, model_url, model)
        try:
            asked = ask_benchmark(ask_cfg, dataset, out / "predictions.jsonl", registry, config, split)
        except EvalInputError as exc:
            fail(str(exc), ExitCode.BAD_INPUT)
        console.print(f"asked {ask_cfg.model}: {asked['answered']} of {asked['rows']} rows answered, {asked['failed']} "
                      f"failed ({asked['failures'] or 'no failed tries'}); {asked['path']}", highlight=False)
        args = [asked["path"]]
    try:
        preds = open_predictions(args[0])  # streamed while scoring: no answer text is kept
        bench = load_benchmark(dataset, registry, config, split)
    except EvalInputError as exc:
        fail(str(exc), ExitCode.BAD_INPUT)
    overlap = None
    if trained_on:
        try:
            overlap = require_no_overlap(bench, trained_on, registry, allow_overlap)
        except EvalInputError as exc:
            fail(str(exc), ExitCode.BAD_INPUT)
        except TrainingOverlapError as exc:
            fail(str(exc), ExitCode.FAILED)
    try:
        res = evaluate(bench, preds, bootstrap, seed, tolerance=tolerance, worst=worst, bleu=not no_bleu,
                       items_path=out / "items.jsonl", cache_dir=default_cache_dir())
    except EvalInputError as exc:
        fail(str(exc), ExitCode.BAD_INPUT)
    res["training_overlap"] = overlap
    if asking:
        res["asked"] = asked
    if judge_cfg is not None:
        from grok.eval.judge import run_judge, summarise_judge

        tasks = tuple(t.strip() for t in judge_tasks.split(",") if t.strip())
        judged = load_predictions(args[0], ids={k for k, it in bench.items.items() if it.task in tasks})
        run = run_judge(judge_cfg, bench.items, judged.answers, out / "judge_cache.sqlite", tasks, tolerance)
        res["judge"] = summarise_judge(run, iter_items(res), judge_cfg)
        for w in res["worst"]:
            w["judge"] = res["judge"]["items"].get(w["id"])
    scores_path = write_scores(res, out / "eval.json")
    report = write_report(res, out / "index.html", bench)
    figures = write_figures(res, out / "figures")
    res_out = {**res, "scores_path": str(scores_path), "report_path": str(report),
               "figures": [str(f) for f in figures]}
    if as_json:
        print_json(res_out)
    else:
        _print_summary(res)
        j = res.get("judge")
        if j:
            console.print(f"  rubric (LLM judge {j['model']['model']}): total {j['total_mean']} over {j['scored']} "
                          f"answers; {j['unscored']} unscored (never counted as zero); usage {j['usage']}",
                          highlight=False)
        console.print(f"scores: {scores_path}\nreport: {report}\nfigures: {', '.join(str(f) for f in figures)}",
                      highlight=False)
    if res["counts"]["scored_answers"] == 0:
        raise SystemExit(int(ExitCode.FAILED))


def _llm_settings(what: str, path: Path | None, url: str | None, name: str | None):
    """LLMConfig from a file and/or flags (``what``: judge or model); exits 3 / 2 naming the problem."""
    from grok.config import ConfigError
    from grok.instruct.llm import LLMConfig

    try:
        return (LLMConfig.from_file(path, base_url=url, model=name) if path is not None
                else LLMConfig.from_env(base_url=url, model=name))
    except FileNotFoundError as exc:
        fail(str(exc), ExitCode.BAD_INPUT)
    except (ConfigError, ValueError) as exc:
        fail(f"{what} settings: {exc}", ExitCode.USAGE)


def register(app: typer.Typer) -> None:
    """Add ``eval`` to the ``grok`` app."""
    app.command("eval")(eval_command)
