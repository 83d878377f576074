"""The build folder: where every stage reads and writes, its progress file and its accounting.

A :class:`BuildFolder` is made from a :class:`~grok.stages.config.BuildConfig` and owns

* the paths (``ingest/``, ``biomarkers.parquet``, ``records.jsonl``, ``instructions.parquet``, ``media/`` ...);
* ``build.json``: progress (``last_stage``), the build id, ``ready_to_publish`` once every stage before
  publication finished, ``complete: true`` only once the version is published, the flow-run id;
* the accounting: :meth:`BuildFolder.finish` records a stage's :class:`StageReport` and stops the build
  (:class:`StageFailed`) when its output is below ``min_output_fraction`` of its input;
* what every stage shares: the build id, the knowledge base, the de-identification settings and the
  resolved source (archive, cohort table, deny list).

The build id is a content hash of the config sections that shape the data and the ingested manifest
(not a run id), so a resumed build and an uninterrupted one write identical rows and publish the same
fingerprint; the Prefect flow-run id is recorded separately in ``build.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from grok.ingest.deid import DeidConfig
from grok.knowledge import load_knowledge_base
from grok.stages.config import BuildConfig, ConfigError

#: Config sections that change the generated rows (publishing and training settings do not).
DATA_SECTIONS = ("source", "knowledge_base", "deid", "measure", "instruct")


@dataclass
class StageReport:
    """What a stage did: counts in / out / quarantined / skipped (in = out + quarantined + skipped), seconds,
    output paths. Skipped items are rows in a table of their own with a reason (e.g. an instruction family
    that does not apply to a study), never dropped without a trace."""

    stage: str
    n_in: int = 0
    n_out: int = 0
    n_quarantined: int = 0
    n_skipped: int = 0
    seconds: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_in != self.n_out + self.n_quarantined + self.n_skipped:
            raise ValueError(f"stage {self.stage}: {self.n_in} in but {self.n_out} out + {self.n_quarantined} "
                             f"quarantined + {self.n_skipped} skipped; every item must be accounted for")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class StageFailed(RuntimeError):
    """A stage produced (almost) nothing; the build stops before publishing an empty dataset."""


class PseudonymKeyMissing(ConfigError):
    """No pseudonym secret in the environment and the public demo key was not asked for."""


class BuildFolder:
    """Paths, ``build.json`` and accounting of one build (``cfg.work_dir``)."""

    def __init__(self, cfg: BuildConfig, *, workers: int = 1):
        self.cfg = cfg
        self.root = Path(cfg.work_dir)
        #: processes (or threads) the executor runs shards on: what ``shard_size: auto`` sizes shards for
        self.workers = workers

    # -------------------------------------------------------------------------------------------- paths
    def path(self, *parts: str) -> Path:
        """``work_dir/<parts>`` (the build folder is created on first use)."""
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root.joinpath(*parts)

    @property
    def ingest_dir(self) -> Path:
        return self.path("ingest")

    def source(self) -> dict[str, str]:
        """The archive, cohort table and deny list this build reads (the phantom's when it generates one)."""
        if self.cfg.source.phantom is not None:
            out = self.path("phantom")
            return {"archive": str(out / "dicom"), "cohort": str(out / "cohort.csv"),
                    "deny_list": str(out / "truth" / "planted_identifiers.json")}
        return {"archive": self.cfg.source.archive or "", "cohort": self.cfg.source.cohort or "",
                "deny_list": self.cfg.publish.deny_list or ""}

    # ---------------------------------------------------------------------------------------- build.json
    def info(self) -> dict[str, Any]:
        p = self.root / "build.json"
        return json.loads(p.read_text()) if p.exists() else {}

    def update(self, **kw: Any) -> dict[str, Any]:
        """Merge ``kw`` into ``build.json`` (written atomically)."""
        data = self.info()
        data.update(kw)
        p = self.path("build.json")
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
        tmp.replace(p)
        return data

    def finish(self, report: StageReport) -> StageReport:
        """Record a finished stage; stop the build when it quarantined (almost) everything it could work on
        (skipped items, which a stage does not apply to, are left out of that fraction)."""
        base = report.n_in - report.n_skipped
        if base and report.n_out < max(1, self.cfg.min_output_fraction * base):
            self.update(complete=False, ready_to_publish=False, last_stage=report.stage,
                        failed_stage=report.to_dict())
            raise StageFailed(f"stage {report.stage}: {report.n_out} of {base} items came out "
                              f"({report.n_quarantined} quarantined, {report.n_skipped} skipped); stopping instead "
                              "of publishing an empty "
                              f"dataset. See the quarantine tables in {self.root}")
        counts = {k: getattr(report, k) for k in ("n_in", "n_out", "n_quarantined", "n_skipped")}
        if "accounting" in report.details:  # the instruct stage: every generated row by family and reason
            counts["accounting"] = report.details["accounting"]
        self.update(last_stage=report.stage, stages={**self.info().get("stages", {}), report.stage: counts})
        return report

    # -------------------------------------------------------------------------------- shared by stages
    def build_id(self) -> str:
        """Content hash of the data-shaping config sections and the ingested manifest (stable across resumes).

        The sections are hashed as :meth:`grok.config.Settings.key_dump` gives them: fields added since
        builds were first keyed enter only when changed, so the same settings keep the same id."""
        dump = self.cfg.key_dump()
        h = hashlib.sha256(json.dumps({k: dump[k] for k in DATA_SECTIONS}, sort_keys=True).encode())
        m = self.root / "ingest" / "manifest.parquet"
        if m.exists():
            h.update(m.read_bytes())
        return h.hexdigest()[:16]

    @cached_property
    def kb(self):
        """The knowledge base of this build (``knowledge_base`` folders, or the bundled one)."""
        return load_knowledge_base(self.cfg.knowledge_base) if self.cfg.knowledge_base else load_knowledge_base()

    def pseudonym_key(self) -> str | None:
        return os.environ.get(self.cfg.deid.key_env) or None

    def deid(self):
        """The de-identification settings of ingestion (key from the environment, date mode from the config)."""
        d = self.cfg.deid
        return DeidConfig(key=self.pseudonym_key(), **d.model_dump(exclude={"key_env"}))

    def require_pseudonym_key(self, *, demo_key: bool = False) -> bool:
        """Refuse to build without a pseudonym secret unless ``demo_key``; True when the demo key will be used.

        The demo key is in this source code: anyone can reverse its pseudonyms by trying record numbers, so
        a build never falls back to it silently (``grok build --demo-key`` and ``grok demo`` ask for it).
        """
        if self.pseudonym_key():
            return False
        if demo_key:
            return True
        env = self.cfg.deid.key_env
        raise PseudonymKeyMissing(
            f"${env} is not set: the build would pseudonymise patients with the public demo key, which anyone "
            f"can reverse. Set it to a secret kept outside the data (e.g. export {env}=\"$(openssl rand -hex 32)\", "
            "the same for every build of one archive), or pass --demo-key for phantom and demo data only.")
