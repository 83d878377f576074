"""``grok build CONFIG`` (the Prefect flow) and ``grok publish BUILD_DIR`` (publication alone)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from grok.cli._common import ExitCode, console, fail, print_json


def build_cmd(
    config: Path = typer.Argument(None, help="Build config YAML (see configs/phantom_demo.yaml).", show_default=False),
    dask: bool = typer.Option(False, "--dask", help="Run measure/instruct on a Dask cluster (runner.* settings)."),
    dask_address: str = typer.Option(None, "--dask-address", help="Existing Dask scheduler, e.g. tcp://host:8786."),
    no_prefect: bool = typer.Option(False, "--no-prefect", help="Call the stages directly, without Prefect."),
    demo_key: bool = typer.Option(False, "--demo-key", help=(
        "Allow the public demo pseudonym key when $GROK_PSEUDONYM_KEY is unset (phantom and demo data only: "
        "anyone can reverse its pseudonyms).")),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    schema: bool = typer.Option(False, "--schema", help=(
        "Print the build config's JSON schema and exit (editors validate configs with it; the repository "
        "keeps it as configs/build.schema.json).")),
) -> None:
    """Build, validate and publish a dataset (and trigger training) from CONFIG.

    The config is validated before anything runs; a broken one exits 2 naming the field and the fix, and
    so does a missing $GROK_PSEUDONYM_KEY (unless --demo-key).
    """
    from grok.stages.config import ConfigError, json_schema, load_config
    from grok.stages.runner import BuildFolder, StageFailed

    if schema:
        sys.stdout.write(json_schema())
        return
    if config is None:
        fail("missing argument CONFIG: pass a build config YAML (e.g. configs/phantom_demo.yaml)", ExitCode.USAGE)
    try:
        overrides = {}
        if dask or dask_address:
            overrides["runner"] = {"kind": "dask", **({"dask_address": dask_address} if dask_address else {})}
        cfg = load_config(config, overrides)
        if BuildFolder(cfg).require_pseudonym_key(demo_key=demo_key):
            console.print(f"[yellow]warning:[/] ${cfg.deid.key_env} is not set; --demo-key: using the public demo "
                          "key. Pseudonyms in this build are reversible by anyone; use it for phantom data only.")
    except ConfigError as exc:
        fail(str(exc), ExitCode.USAGE)
    from grok.publish import PublishError

    try:
        if no_prefect:
            from grok.stages.runner import run_build

            reports = run_build(cfg, demo_key=demo_key)
            result = {"stages": [r.to_dict() for r in reports]}
            pub = next(r for r in reports if r.stage == "publish")
            result.update(dataset=pub.outputs["dataset"], outputs=pub.outputs)
        else:
            from flows import prefect_env

            prefect_env()
            from flows.build import with_runner

            result = with_runner(cfg)(config=cfg.model_dump(mode="json"), demo_key=demo_key)
    except (StageFailed, PublishError) as exc:
        fail(str(exc), ExitCode.FAILED)
    if as_json:
        print_json(result)
    else:
        out = result["outputs"]
        console.print(f"[green]published[/] {result['dataset']}\n  folder: {out['path']}\n  card:   {out['card']}\n"
                      f"  report: {out['report']}")


def publish_cmd(
    build_dir: Path = typer.Argument(..., help="A finished build folder."),
    name: str = typer.Option(..., "--name", help="Dataset name in the registry."),
    version: str = typer.Option(None, "--version", help="Explicit X.Y.Z (default: bump the latest)."),
    bump: str = typer.Option("minor", "--bump", help="major | minor | patch."),
    registry: str = typer.Option(None, "--registry", help="Registry root (folder or fsspec URL)."),
    deny_list: Path = typer.Option(None, "--deny-list", help="JSON list of identifier strings that must not appear."),
    hub_repo: str = typer.Option(None, "--hub-repo", help="Also push to this Hugging Face Hub dataset repo."),
    reviews: str = typer.Option(None, "--reviews", help=(
        "Apply curators' decisions from this review database (grok review; SQLAlchemy URL or SQLite file).")),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Validate the contracts, split, dedup and publish BUILD_DIR as NAME@VERSION (atomic)."""
    from grok.publish import PublishConfig, PublishError, publish_build
    from grok.registry import RegistryError

    deny = json.loads(deny_list.read_text()) if deny_list else []
    try:
        cfg = PublishConfig.parse({"name": name, "version": version, "bump": bump, "registry": registry,
                                   "hub_repo": hub_repo, "reviews": reviews}, where="options: ")
        res = publish_build(build_dir, cfg, deny_identifiers=deny)
    except ValueError as exc:
        if isinstance(exc, RegistryError):
            fail(str(exc), ExitCode.FAILED)
        fail(str(exc), ExitCode.USAGE)
    except PublishError as exc:
        fail(str(exc), ExitCode.FAILED)
    if as_json:
        print_json(res.to_dict())
    else:
        console.print(f"[green]published[/] {res.name}@{res.version} ({res.fingerprint[:12]}) -> {res.path}")


def register(app: typer.Typer) -> None:
    app.command("build")(build_cmd)
    app.command("publish")(publish_cmd)
