"""The build configuration: one YAML file, validated before anything runs.

Run as: grok build CONFIG.yaml   (see configs/phantom_demo.yaml for a complete example)

Every field is documented here; unknown keys are errors (a typo never silently falls back to a
default). Relative paths are resolved against the config file's folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PhantomSource(_M):
    """Generate the source archive with the phantom (demos, tests, benchmarks)."""

    subjects: int = Field(7, ge=1, description="Phantom subjects (both eyes each).")
    seed: int = Field(0, description="Phantom seed.")
    oct_shape: tuple[int, int, int] = Field((49, 496, 512), description="B-scans, rows, columns.")
    oct_spacing_um: tuple[float, float, float] = Field((3.87, 11.7, 120.0), description="Axial, lateral, slice um.")
    cfp_size: int = Field(1024, ge=128, description="Fundus photograph side (px).")
    circle_scans: bool = Field(False, description="Also write peripapillary circle scans.")
    noise: float = Field(1.0, gt=0, description="OCT speckle level.")


class SourceConfig(_M):
    archive: str | None = Field(None, description="Folder, .zip, .tar(.gz) or fsspec URL of the clinic archive.")
    cohort: str | None = Field(None, description="Cohort table (CSV/parquet) with the knowledge base's fields.")
    phantom: PhantomSource | None = Field(None, description="Generate a phantom archive instead of reading one.")

    @model_validator(mode="after")
    def _one_source(self) -> SourceConfig:
        if not self.archive and self.phantom is None:
            raise ValueError("source: set source.archive (a folder, archive or URL) or source.phantom")
        return self


class DeidSettings(_M):
    date_mode: Literal["shift", "year"] = Field("shift", description="Shift dates per patient, or keep the year.")
    allow_burned_in: bool = Field(False, description="Ingest BurnedInAnnotation=YES images instead of quarantining.")
    key_env: str = Field("GROK_PSEUDONYM_KEY", description="Environment variable holding the pseudonym secret.")


class MeasureSettings(_M):
    shard_size: int = Field(8, ge=1, description="Studies per measure task (a shard).")
    overlays: bool = Field(True, description="Write overlay PNGs for curators.")


class LlmSettings(_M):
    base_url: str = Field("http://127.0.0.1:8000/v1", description="OpenAI-compatible endpoint (vLLM, a hosted API).")
    model: str = Field("Qwen/Qwen2-VL-7B-Instruct", description="Model name the server expects.")
    api_key_env: str = Field("GROK_LLM_API_KEY", description="Environment variable holding the API key (never stored).")
    concurrency: int = Field(16, ge=1, description="Requests in flight per worker.")
    requests_per_second: float = Field(10.0, gt=0, description="Global rate limit across the build.")
    timeout_s: float = Field(120.0, gt=0, description="Per-request timeout.")
    max_attempts: int = Field(3, ge=1, description="Generations per row until one passes the verifier.")
    temperature: float = Field(0.7, ge=0, le=2)
    max_tokens: int = Field(800, ge=16)
    send_images: bool = Field(True, description="Attach the images when the model takes images.")


class InstructSettings(_M):
    mode: Literal["template", "llm"] = Field("template", description="Template mode needs no network.")
    tasks: list[str] | None = Field(None, description="Task families to generate (default: all).")
    seed: int = Field(0, description="Seed for phrasing choices.")
    shard_size: int = Field(64, ge=1, description="Study records per instruct task.")
    templates_dir: str | None = Field(None, description="Your own templates folder (default: the bundled templates/).")
    llm: LlmSettings = Field(default_factory=LlmSettings)


class PublishSettings(_M):
    name: str = Field(..., description="Registry dataset name.")
    version: str | None = Field(None, description="Explicit X.Y.Z; default: bump the latest.")
    bump: Literal["major", "minor", "patch"] = Field("minor")
    registry: str | None = Field(None, description="Registry root (folder or fsspec URL); default $GROK_REGISTRY.")
    split_ratios: tuple[float, float, float] = Field((0.8, 0.1, 0.1), description="Train, validation, test.")
    split_seed: int = Field(0)
    verifier_pass_rate: float = Field(0.9, ge=0, le=1, description="Contract: minimum verified share.")
    near_dup_threshold: float = Field(0.9, gt=0, le=1, description="Jaccard threshold for near duplicates.")
    deny_list: str | None = Field(None, description="JSON list of identifier strings that must appear nowhere.")
    hub_repo: str | None = Field(None, description="Also push to this Hugging Face Hub dataset repo.")
    license: str = Field("other")

    @field_validator("split_ratios")
    @classmethod
    def _ratios(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if abs(sum(v) - 1.0) > 1e-6 or min(v) < 0:
            raise ValueError("publish.split_ratios must be three non-negative numbers summing to 1")
        return v


class TrainSettings(_M):
    jobs: list[Literal["align", "sft"]] = Field(default_factory=list, description="Training jobs to trigger.")
    profile: Literal["cpu_smoke", "gpu"] = Field("cpu_smoke", description="Which shipped configs the jobs use.")
    via: Literal["deployment", "inline"] = Field(
        "inline", description="deployment: run_deployment on the GPU pool; inline: run here (demo, CI smoke).")
    overrides: dict[str, list[str]] = Field(
        default_factory=dict, description="Extra --set KEY=VALUE per job, e.g. {align: [batch_size=8]}.")
    deployments: dict[str, str] = Field(
        default_factory=lambda: {"align": "train-align/gpu", "sft": "train-sft/gpu"},
        description="Deployment name per job (flow-name/deployment-name).")


class RunnerSettings(_M):
    kind: Literal["default", "dask"] = Field("default", description="Task runner for measure and instruct.")
    threads: int | None = Field(None, ge=1, description="Threads of the default runner (None: one per CPU core).")
    dask_address: str | None = Field(None, description="Existing Dask scheduler (tcp://host:8786); None = local cluster.")
    n_workers: int = Field(2, ge=1, description="Local Dask workers when no address is given.")


class BuildConfig(_M):
    """A whole build: source -> ingest -> measure -> label/reason -> instruct -> verify -> publish -> train."""

    work_dir: str = Field(..., description="Build folder (all intermediate tables and media).")
    source: SourceConfig
    knowledge_base: list[str] | None = Field(None, description="KB folders, later ones overlaid (default: ours).")
    deid: DeidSettings = Field(default_factory=DeidSettings)
    measure: MeasureSettings = Field(default_factory=MeasureSettings)
    instruct: InstructSettings = Field(default_factory=InstructSettings)
    publish: PublishSettings
    train: TrainSettings = Field(default_factory=TrainSettings)
    runner: RunnerSettings = Field(default_factory=RunnerSettings)
    min_output_fraction: float = Field(0.01, ge=0, le=1, description=(
        "A stage whose output is below this share of its input stops the build with a report "
        "(e.g. everything quarantined) instead of publishing an empty dataset."))


class ConfigError(ValueError):
    """A config that cannot run; the message names the file, the field and the fix."""


def _resolve(base: Path, p: str | None) -> str | None:
    if p is None or "://" in p or os.path.isabs(p):
        return p
    return str((base / p).resolve())


def load_config(path: str | os.PathLike, overrides: dict | None = None) -> BuildConfig:
    """Read and validate a build config; errors name the field and the fix."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such config file")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from exc
    if overrides:
        raw = _merge(raw, overrides)
    try:
        cfg = BuildConfig.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for e in exc.errors():
            loc = ".".join(str(x) for x in e["loc"])
            fix = "remove it (unknown key; check the spelling)" if e["type"] == "extra_forbidden" else e["msg"]
            lines.append(f"{p}: {loc}: {fix}")
        raise ConfigError("\n".join(lines)) from exc
    base = p.parent
    cfg.work_dir = _resolve(base, cfg.work_dir)
    cfg.source.archive = _resolve(base, cfg.source.archive)
    cfg.source.cohort = _resolve(base, cfg.source.cohort)
    cfg.publish.registry = _resolve(base, cfg.publish.registry)
    cfg.publish.deny_list = _resolve(base, cfg.publish.deny_list)
    cfg.instruct.templates_dir = _resolve(base, cfg.instruct.templates_dir)
    if cfg.knowledge_base:
        cfg.knowledge_base = [_resolve(base, k) for k in cfg.knowledge_base]
    return cfg


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
