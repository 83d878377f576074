"""The build's stages as plain functions over a build folder (Prefect-free; ``flows/`` wires them).

Each stage reads and writes files under ``cfg.work_dir`` and returns a :class:`StageReport` (counts
in / out / quarantined, seconds, output paths). :func:`run_build` calls them in order without any
orchestrator: it is what ``benchmarks/build.py`` compares the Prefect flow against, and what tests
use. ``BUILD/build.json`` records progress: ``ready_to_publish: true`` once every stage before
publication finished (``grok publish BUILD`` accepts the folder), ``complete: true`` only once the version
is published, so a killed build is never published half-written nor reported as done.

The build id is a content hash of the config and the ingested manifest (not a run id), so a resumed
build and an uninterrupted one write identical rows and publish the same fingerprint; the Prefect
flow-run id is recorded separately in ``build.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from grok.build.config import BuildConfig, ConfigError


@dataclass
class StageReport:
    stage: str
    n_in: int = 0
    n_out: int = 0
    n_quarantined: int = 0
    seconds: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class StageFailed(RuntimeError):
    """A stage produced (almost) nothing; the build stops before publishing an empty dataset."""


def work(cfg: BuildConfig) -> Path:
    p = Path(cfg.work_dir)
    p.mkdir(parents=True, exist_ok=True)
    return p


def _update_build_json(cfg: BuildConfig, **kw: Any) -> dict[str, Any]:
    p = work(cfg) / "build.json"
    data = json.loads(p.read_text()) if p.exists() else {}
    data.update(kw)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    tmp.replace(p)
    return data


def _check_yield(report: StageReport, cfg: BuildConfig) -> StageReport:
    if report.n_in and report.n_out < max(1, cfg.min_output_fraction * report.n_in):
        _update_build_json(cfg, complete=False, ready_to_publish=False, last_stage=report.stage,
                           failed_stage=report.to_dict())
        raise StageFailed(f"stage {report.stage}: {report.n_out} of {report.n_in} items came out "
                          f"({report.n_quarantined} quarantined); stopping instead of publishing an empty dataset. "
                          f"See the quarantine tables in {cfg.work_dir}")
    return report


def pseudonym_key(cfg: BuildConfig) -> str | None:
    return os.environ.get(cfg.deid.key_env) or None


class PseudonymKeyMissing(ConfigError):
    """No pseudonym secret in the environment and the public demo key was not asked for."""


def require_pseudonym_key(cfg: BuildConfig, *, demo_key: bool = False) -> bool:
    """Refuse to build without a pseudonym secret unless ``demo_key``; True when the demo key will be used.

    The demo key is in this source code: anyone can reverse its pseudonyms by trying record numbers, so a
    build never falls back to it silently (``grok build --demo-key`` and ``grok demo`` ask for it).
    """
    if pseudonym_key(cfg):
        return False
    if demo_key:
        return True
    raise PseudonymKeyMissing(
        f"${cfg.deid.key_env} is not set: the build would pseudonymise patients with the public demo key, which "
        f"anyone can reverse. Set it to a secret kept outside the data (e.g. export {cfg.deid.key_env}="
        "\"$(openssl rand -hex 32)\", the same for every build of one archive), or pass --demo-key for phantom "
        "and demo data only.")


# ------------------------------------------------------------------------------------------------ stages
def stage_source(cfg: BuildConfig) -> StageReport:
    """Resolve the archive and cohort table (writing the phantom archive first when configured)."""
    t0 = time.perf_counter()
    rep = StageReport("source")
    if cfg.source.phantom is not None:
        from grok.phantom.archive import PhantomConfig, write_phantom

        ph = cfg.source.phantom
        out = work(cfg) / "phantom"
        if not (out / "truth" / "truth.jsonl").exists():
            write_phantom(PhantomConfig(subjects=ph.subjects, seed=ph.seed, oct_shape=tuple(ph.oct_shape),
                                        oct_spacing_um=tuple(ph.oct_spacing_um), cfp_size=ph.cfp_size,
                                        circle_scans=ph.circle_scans, noise=ph.noise, exports=False,
                                        workers=min(2, os.cpu_count() or 1)), out)
        rep.outputs = {"archive": str(out / "dicom"), "cohort": str(out / "cohort.csv"),
                       "deny_list": str(out / "truth" / "planted_identifiers.json")}
        rep.n_out = ph.subjects
    else:
        rep.outputs = {"archive": cfg.source.archive or "", "cohort": cfg.source.cohort or "",
                       "deny_list": cfg.publish.deny_list or ""}
    rep.seconds = time.perf_counter() - t0
    return rep


def stage_ingest(cfg: BuildConfig, archive: str) -> StageReport:
    from grok.ingest.deid import DeidConfig
    from grok.ingest.pipeline import IngestConfig, ingest

    t0 = time.perf_counter()
    out = work(cfg) / "ingest"
    res = ingest(archive, out, IngestConfig(deid=DeidConfig(key=pseudonym_key(cfg), date_mode=cfg.deid.date_mode,
                                                            allow_burned_in=cfg.deid.allow_burned_in)))
    rep = StageReport("ingest", n_in=res.files_seen, n_out=res.files_ingested + res.files_skipped,
                      n_quarantined=res.files_quarantined, seconds=time.perf_counter() - t0,
                      outputs={"manifest": str(out / "manifest.parquet"), "studies": str(out / "studies.parquet"),
                               "quarantine": str(out / "quarantine.parquet")},
                      details={"images": res.images, "studies": res.studies, "paired": res.paired_studies,
                               "cached_files": res.files_cached, "quarantine_reasons": res.quarantine_reasons})
    _update_build_json(cfg, complete=False, ready_to_publish=False, last_stage="ingest", build_id=build_id(cfg))
    return _check_yield(rep, cfg)


#: Config sections that change the generated rows (publishing and training settings do not).
DATA_SECTIONS = ("source", "knowledge_base", "deid", "measure", "instruct")


def build_id(cfg: BuildConfig) -> str:
    """Content hash of the data-shaping config sections and the ingested manifest (stable across resumes)."""
    dump = cfg.model_dump(mode="json")
    h = hashlib.sha256(json.dumps({k: dump[k] for k in DATA_SECTIONS}, sort_keys=True).encode())
    m = work(cfg) / "ingest" / "manifest.parquet"
    if m.exists():
        h.update(m.read_bytes())
    return h.hexdigest()[:16]


def measure_plan(cfg: BuildConfig) -> list[dict[str, Any]]:
    """The measure shards, ``[{"ids": [...], "key": content key}]``."""
    from grok.build.measure import plan_shards

    return plan_shards(work(cfg), cfg.measure.shard_size, overlays=cfg.measure.overlays)


def stage_measure_shard(cfg: BuildConfig, shard: dict[str, Any]) -> str:
    from grok.build.measure import measure_shard

    return str(measure_shard(work(cfg), shard, overlays=cfg.measure.overlays))


def stage_measure_merge(cfg: BuildConfig, shard_paths: list[str], seconds: float = 0.0) -> StageReport:
    from grok.build.measure import merge_shards

    res = merge_shards(work(cfg), [Path(p) for p in shard_paths])
    n_in = res["studies_measured"] + res["studies_quarantined"]
    rep = StageReport("measure", n_in=n_in, n_out=res["studies_measured"], n_quarantined=res["studies_quarantined"],
                      seconds=seconds, outputs={"biomarkers": str(work(cfg) / "biomarkers.parquet"),
                                                "quarantine": str(work(cfg) / "measure_quarantine.parquet")})
    _update_build_json(cfg, last_stage="measure")
    return _check_yield(rep, cfg)


def _kb(cfg: BuildConfig):
    from grok.knowledge import load_knowledge_base

    return load_knowledge_base(cfg.knowledge_base) if cfg.knowledge_base else load_knowledge_base()


def stage_records(cfg: BuildConfig, cohort: str | None) -> StageReport:
    from grok.build.records import build_records
    from grok.ingest.deid import DeidConfig

    t0 = time.perf_counter()
    # the same key and date mode as ingestion: cohort ids and visit dates map onto the studies' own
    deid = DeidConfig(key=pseudonym_key(cfg), date_mode=cfg.deid.date_mode)
    res = build_records(work(cfg), cohort=cohort or None, kb=_kb(cfg), deid=deid, build_id=build_id(cfg))
    rep = StageReport("records", n_in=res["studies_in"], n_out=res["records"], n_quarantined=res["quarantined"],
                      seconds=time.perf_counter() - t0,
                      outputs={"records": str(work(cfg) / "records.jsonl"),
                               "quarantine": str(work(cfg) / "records_quarantine.parquet")})
    _update_build_json(cfg, last_stage="records")
    return _check_yield(rep, cfg)


def stage_publish(cfg: BuildConfig, deny_list: str | None, flow_run_id: str | None = None) -> StageReport:
    from grok.publish import PublishConfig, publish_build

    t0 = time.perf_counter()
    deny = json.loads(Path(deny_list).read_text()) if deny_list and Path(deny_list).is_file() else []
    p = cfg.publish
    # complete means published: a publication that fails leaves complete false (rerun to publish again)
    _update_build_json(cfg, complete=False, ready_to_publish=True, flow_run_id=flow_run_id)
    res = publish_build(work(cfg), PublishConfig(
        name=p.name, version=p.version, bump=p.bump, registry=p.registry, split_ratios=tuple(p.split_ratios),
        seed=p.split_seed, verifier_pass_rate=p.verifier_pass_rate, near_dup_threshold=p.near_dup_threshold,
        deny_list=deny, hub_repo=p.hub_repo, license=p.license, synthetic=cfg.source.phantom is not None))
    n_pub = sum(sum(v.values()) for k, v in res.counts["published"].items() if k != "alignment")
    rep = StageReport("publish", n_in=res.counts["instructions_in"], n_out=n_pub,
                      n_quarantined=res.counts["failed_verification_excluded"] + res.counts["duplicates_removed"],
                      seconds=time.perf_counter() - t0,
                      outputs={"dataset": f"{res.name}@{res.version}", "path": res.path, "card": res.card,
                               "report": res.report},
                      details={"fingerprint": res.fingerprint, "counts": res.counts})
    _update_build_json(cfg, complete=True, last_stage="publish", published=f"{res.name}@{res.version}",
                       fingerprint=res.fingerprint)
    return rep


def stage_train(cfg: BuildConfig, job: str, dataset: str) -> StageReport:
    """Run one training job inline (CPU smoke in the demo and CI) on the pinned published version."""
    import subprocess
    import sys

    t0 = time.perf_counter()
    out = work(cfg) / "train" / job
    cfg_name = f"{job}_{cfg.train.profile}.yaml"
    cmd = [sys.executable, "-m", "grok_train", job, "--config", cfg_name, "--dataset", dataset,
           "--output-dir", str(out), "--json", "--quiet"]
    if cfg.publish.registry:
        cmd += ["--registry", cfg.publish.registry]
    for ov in cfg.train.overrides.get(job, []):
        cmd += ["--set", ov]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    if proc.returncode != 0:
        raise RuntimeError(f"training job {job} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError:
        result = {"stdout": proc.stdout[-2000:]}
    return StageReport(f"train_{job}", n_in=1, n_out=1, seconds=time.perf_counter() - t0,
                       outputs={"run_dir": str(out)}, details=result)


def run_build(cfg: BuildConfig, *, demo_key: bool = False) -> list[StageReport]:
    """All stages in order, no orchestrator (the baseline for benchmarks and the library API).

    ``demo_key`` allows the public demo pseudonym key when the secret is not set (phantom data only).
    """
    from grok.build.instruct_stage import stage_instruct

    require_pseudonym_key(cfg, demo_key=demo_key)
    reports = [stage_source(cfg)]
    src = reports[0].outputs
    reports.append(stage_ingest(cfg, src["archive"]))
    t0 = time.perf_counter()
    paths = [stage_measure_shard(cfg, s) for s in measure_plan(cfg)]
    reports.append(stage_measure_merge(cfg, paths, seconds=time.perf_counter() - t0))
    reports.append(stage_records(cfg, src.get("cohort")))
    reports.append(stage_instruct(cfg))
    pub = stage_publish(cfg, src.get("deny_list"))
    reports.append(pub)
    for job in cfg.train.jobs:
        reports.append(stage_train(cfg, job, pub.outputs["dataset"]))
    return reports
