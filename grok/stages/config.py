"""The build configuration: one YAML file, validated before anything runs.

Run as: grok build CONFIG.yaml   (see configs/phantom_demo.yaml; JSON schema: grok build --schema)

Every field is documented here or on the model it nests (``instruct`` is
:class:`grok.instruct.generate.InstructConfig` plus sharding, ``instruct.llm`` is
:class:`grok.instruct.llm.LLMConfig`: the same models ``grok instruct`` uses, so there is one set of
defaults). Unknown keys are errors (a typo never silently falls back to a default). Relative paths are
resolved against the config file's folder. ``configs/build.schema.json`` is this model's JSON schema
(``grok build --schema``; a test keeps it up to date), so editors validate and complete build configs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from grok.config import ConfigError, Settings, deep_merge, read_yaml_mapping
from grok.ingest.deid import DeidPolicy
from grok.instruct.families import FAMILIES
from grok.instruct.generate import InstructConfig
from grok.phantom.archive import PhantomConfig
from grok.publish import PublishConfig

__all__ = ["BuildConfig", "ConfigError", "InstructSettings", "json_schema", "load_config"]


class PhantomSource(PhantomConfig):
    """Generate the source archive with the phantom (demos, tests, benchmarks): :class:`PhantomConfig` with
    the build's defaults (7 subjects, no export layout, two worker processes)."""

    # fields the section gained when it became PhantomConfig: hashed only when changed (same build ids)
    KEY_IF_CHANGED: ClassVar[frozenset[str]] = frozenset({"exports", "single_frame_fraction", "categories"})
    KEY_EXCLUDE: ClassVar[frozenset[str]] = frozenset({"workers"})

    subjects: int = Field(7, ge=1, description="Phantom subjects (both eyes each).")
    exports: bool = Field(False, description="Also write the image-export layout (the build ingests the DICOM).")
    workers: int = Field(2, ge=1, description="Processes used to synthesise subjects (never part of the build id).")


class SourceConfig(Settings):
    archive: str | None = Field(None, description="Folder, .zip, .tar(.gz) or fsspec URL of the clinic archive.")
    cohort: str | None = Field(None, description="Cohort table (CSV/parquet) with the knowledge base's fields.")
    phantom: PhantomSource | None = Field(None, description="Generate a phantom archive instead of reading one.")

    @model_validator(mode="after")
    def _one_source(self) -> SourceConfig:
        if not self.archive and self.phantom is None:
            raise ValueError("source: set source.archive (a folder, archive or URL) or source.phantom")
        return self


class DeidSettings(DeidPolicy):
    """The build's ``deid`` section: :class:`grok.ingest.deid.DeidPolicy` plus where the secret is (never the
    secret itself)."""

    KEY_IF_CHANGED: ClassVar[frozenset[str]] = frozenset({"max_shift_days"})  # added later: same build ids

    key_env: str = Field("GROK_PSEUDONYM_KEY", description="Environment variable holding the pseudonym secret.")


class MeasureSettings(Settings):
    """The measure stage: shard sizes, overlays and the per-study time limit."""

    #: how long a study may take is an operational limit, like the workers a shard runs on (never hashed)
    KEY_EXCLUDE: ClassVar[frozenset[str]] = frozenset({"study_timeout_s"})
    #: ``shard_size: auto`` enters the build id as the old default 8, so builds keep their ids
    KEY_AUTO: ClassVar[dict[str, Any]] = {"shard_size": 8}

    shard_size: Annotated[int, Field(ge=1)] | Literal["auto"] = Field("auto", description=(
        "Studies per measure task (a shard), or auto: about four shards per worker (so a slow shard does not "
        "leave the other workers idle), 1 to 64 studies each, the last ones a half, a quarter and an eighth "
        "of that (one of each per worker, so the workers finish together), chosen once per build folder "
        "(build.json measure_shard_size, measure_shard_taper) so a rerun on another number of workers reuses "
        "the finished shards. The size never changes the data."))
    overlays: bool = Field(True, description="Write overlay PNGs for curators.")
    study_timeout_s: float | None = Field(600.0, gt=0, description=(
        "Seconds one study may take to measure; a study over it is quarantined (error_class study_timeout) "
        "and the shard goes on. None: no limit. A rerun with a larger limit measures those shards again."))


class InstructSettings(InstructConfig):
    """Instruction generation in a build: :class:`grok.instruct.generate.InstructConfig` (mode, tasks,
    seed, tolerance, templates, ``llm``) plus how the stage shards its work."""

    KEY_EXCLUDE: ClassVar[frozenset[str]] = frozenset({"llm_parallel_shards"})
    #: ``shard_size: auto`` enters the build id as the old default 64, so builds keep their ids
    KEY_AUTO: ClassVar[dict[str, Any]] = {"shard_size": 64}

    shard_size: Annotated[int, Field(ge=1)] | Literal["auto"] = Field("auto", description=(
        "Study records per instruct task (a shard), or auto: in template mode about four shards per worker, "
        "64 to 512 records each (so the number of tasks grows an eighth as fast as with the old fixed 64), "
        "chosen once per build folder (build.json instruct_shard_size) so a rerun on another number of workers "
        "reuses the finished shards; in LLM mode 64 (the request rate, not the workers, bounds an LLM build, "
        "and a small shard loses little when it is retried). The size never changes the rows."))
    llm_parallel_shards: int = Field(1, ge=1, description=(
        "LLM mode: shards that call the model at once across all workers (the Prefect flow sets the "
        "grok-llm global concurrency limit to it; the plain runner runs one). llm.requests_per_second is "
        "split evenly over them, so the whole build stays under it."))

    @field_validator("build_id")
    @classmethod
    def _no_build_id(cls, v: str | None) -> str | None:
        if v is not None:
            raise ValueError("the build sets its own id (a hash of its data-shaping config and manifest); remove "
                             "instruct.build_id")
        return v

    @field_validator("llm")
    @classmethod
    def _no_image_root(cls, v: Any) -> Any:
        if v.image_root is not None:
            raise ValueError("image_root is set by the build (its build folder holds the images); remove "
                             "instruct.llm.image_root")
        return v

    def key_dump(self) -> dict[str, Any]:
        out = super().key_dump()
        if tuple(self.tasks) == tuple(FAMILIES):
            out["tasks"] = None  # builds have always keyed "every family" as null
        return out


class PublishSettings(PublishConfig):
    """The build's ``publish`` section: :class:`grok.publish.PublishConfig` plus the archive's deny list."""

    deny_list: str | None = Field(None, description=(
        "JSON file listing identifier strings of the source archive that must appear nowhere (hashed at once)."))


class TrainSettings(Settings):
    jobs: list[Literal["align", "sft"]] = Field(default_factory=list, description="Training jobs to trigger.")
    profile: Literal["cpu_smoke", "gpu"] = Field("cpu_smoke", description="Which shipped configs the jobs use.")
    via: Literal["deployment", "inline"] = Field(
        "inline", description="deployment: run_deployment on the GPU pool; inline: run here (demo, CI smoke).")
    overrides: dict[str, list[str]] = Field(
        default_factory=dict, description="Extra --set KEY=VALUE per job, e.g. {align: [batch_size=8]}.")
    deployments: dict[str, str] = Field(
        default_factory=lambda: {"align": "train-align/gpu", "sft": "train-sft/gpu"},
        description="Deployment name per job (flow-name/deployment-name).")


class RunnerSettings(Settings):
    kind: Literal["default", "dask"] = Field("default", description="Task runner for measure and instruct.")
    threads: int | None = Field(None, ge=1, description="Threads of the default runner (None: one per CPU core).")
    dask_address: str | None = Field(None, description=(
        "Existing Dask scheduler (tcp://host:8786); None = local cluster. Start its workers with one thread "
        "each (dask worker ADDRESS --nworkers N --nthreads 1); numeric libraries run one thread per task."))
    n_workers: int = Field(2, ge=1, description="Local Dask workers when no address is given.")


class BuildConfig(Settings):
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


def _resolve(base: Path, p: str | None) -> str | None:
    if p is None or "://" in p or os.path.isabs(p):
        return p
    return str((base / p).resolve())


def load_config(path: str | os.PathLike, overrides: dict | None = None) -> BuildConfig:
    """Read and validate a build config; errors name the file, the field and the fix."""
    p = Path(path)
    raw = read_yaml_mapping(p)
    cfg = BuildConfig.parse(deep_merge(raw, overrides) if overrides else raw, where=f"{p}: ")
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


def json_schema() -> str:
    """The build config's JSON schema (what ``grok build --schema`` prints and configs/build.schema.json holds)."""
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "build.schema.json",
              **BuildConfig.model_json_schema()}
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
