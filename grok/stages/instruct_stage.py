"""Instruct stage of a build: study records -> verified instruction rows (sharded, resumable).

Run as: the instruct stage of grok build (see grok.stages.runner.STAGES)

Records are cut into shards (``instruct.shard_size``); each shard runs
:func:`grok.instruct.generate.build_instructions` into ``BUILD/instruct/shard-<name>/`` and marks
itself done with a ``DONE`` file holding the content key of its inputs (:mod:`grok.stages.keys`), so a
restarted build skips finished shards and a changed record, setting or template regenerates its
shard (LLM calls of an unfinished shard are replayed from the shard's SQLite request cache, never
repeated). :meth:`Instruct.merge` writes ``BUILD/instructions.parquet``,
``BUILD/instructions_quarantine.parquet`` and ``BUILD/instructions_skipped.parquet`` (a family that made
no row for a study, with the reason code) and accounts for every generated row in its report.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pyarrow.parquet as pq

from grok import __version__
from grok.instruct.accounting import account
from grok.instruct.export import INSTRUCTIONS_SCHEMA, QUARANTINE_SCHEMA, SKIPPED_SCHEMA
from grok.instruct.generate import InstructConfig, build_instructions
from grok.instruct.templating import GENERATION_TEMPLATES, templates_dir
from grok.stages.folder import BuildFolder, StageReport
from grok.stages.keys import content_key, files_digest, shard_name, source_digest
from grok.stages.records_stage import read_records
from grok.stages.stage import Shard, Stage

#: The build's instruction tables -> (the shard file each is merged from, its schema).
MERGED = {"instructions": ("instructions.parquet", INSTRUCTIONS_SCHEMA),
          "instructions_quarantine": ("quarantine.parquet", QUARANTINE_SCHEMA),
          "instructions_skipped": ("skipped.parquet", SKIPPED_SCHEMA)}


def instruct_config(folder: BuildFolder, shards: int = 1) -> InstructConfig:
    """The :class:`grok.instruct.generate.InstructConfig` of one shard of this build (``shards``: how many
    shards the stage has). The build's ``instruct`` section is that model plus sharding; the shard adds the
    build id and the build folder as the image root, and its client gets an equal share of
    ``llm.requests_per_second`` among the LLM shards that may run at once."""
    s = folder.cfg.instruct
    at_once = min(s.llm_parallel_shards, max(1, shards)) if s.mode != "template" else 1
    llm = s.llm.shared_by(at_once).model_copy(update={"image_root": str(folder.root)})
    return InstructConfig.parse({**s.model_dump(round_trip=True, exclude={"shard_size", "llm_parallel_shards", "llm"}),
                                 "llm": llm, "build_id": folder.build_id()})


def _generation_templates(configured: str | None) -> dict[str, str]:
    """Digest of the templates instruction rows come from (``instruct/`` and ``llm/``), so an edited card,
    report or evaluation template does not regenerate instruction shards."""
    root = Path(configured) if configured else templates_dir()
    return {f"{sub}/{k}": v for sub in GENERATION_TEMPLATES if (root / sub).is_dir()
            for k, v in files_digest(root / sub).items()}


class Instruct(Stage):
    """Generate and verify instruction rows (template or LLM mode), sharded by study records."""

    name = "instruct"
    inputs: ClassVar[tuple[str, ...]] = ("records.jsonl", "media/")
    outputs: ClassVar[tuple[str, ...]] = ("instructions.parquet", "instructions_quarantine.parquet",
                                          "instructions_skipped.parquet", "instruct/")

    def retries(self, folder: BuildFolder) -> int:
        # LLM calls (a retried shard replays its finished requests from the cache); templates never fail
        # in a way a retry fixes
        return 2 if folder.cfg.instruct.mode != "template" else 0

    def plan(self, folder: BuildFolder) -> list[Shard]:
        """A shard's key covers its study records, the instruct settings, the build id, the knowledge-base
        snapshot, every template file and the code version."""
        cfg = folder.cfg
        records = {r["study_id"]: r for r in read_records(folder.root)}
        ids = sorted(records)
        n = cfg.instruct.shard_size
        code = {"grok": __version__, "source": source_digest("grok.instruct", "grok.verify", "grok.knowledge", __name__)}
        common = {"stage": "instruct", "code": code, "build_id": folder.build_id(),
                  "config": {k: v for k, v in cfg.instruct.key_dump().items() if k != "shard_size"},
                  "kb": folder.kb.snapshot_id, "templates": _generation_templates(cfg.instruct.templates_dir)}
        return [Shard(ids=ids[i:i + n], key=content_key({**common, "records": [records[s] for s in ids[i:i + n]]}))
                for i in range(0, len(ids), n)]

    @staticmethod
    def shard_dir(folder: BuildFolder, ids: list[str]) -> Path:
        return folder.path("instruct", f"shard-{shard_name(ids)}")

    def finished(self, folder: BuildFolder, shard: Shard) -> Path | None:
        """The shard's folder when it finished from the same inputs (its ``DONE`` file holds the same key)."""
        done = self.shard_dir(folder, shard["ids"]) / "DONE"
        return done.parent if done.exists() and done.read_text().strip() == shard["key"] else None

    def limit(self, folder: BuildFolder) -> tuple[str, int] | None:
        # at most `instruct.llm_parallel_shards` LLM shards at once across every worker, each with its
        # share of the request rate (instruct_config)
        s = folder.cfg.instruct
        return ("grok-llm", s.llm_parallel_shards) if s.mode != "template" else None

    def run_shard(self, folder: BuildFolder, shard: Shard) -> str:
        """Generate and verify one shard; a shard finished from the same inputs is returned as is. Outputs
        from other inputs are removed first; the LLM request cache is kept (a request that did not change
        is replayed from it, never sent again)."""
        done = self.finished(folder, shard)
        if done is not None:
            return str(done)
        out = self.shard_dir(folder, shard["ids"])
        if out.exists():
            for p in out.iterdir():
                if not p.name.startswith("llm_cache.sqlite"):
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        want = set(shard["ids"])
        everything = read_records(folder.root)
        records = [r for r in everything if r["study_id"] in want]
        shards = -(-len(everything) // folder.cfg.instruct.shard_size)
        build_instructions(records, out, instruct_config(folder, shards), kb=folder.kb)
        (out / "DONE").write_text(shard["key"] + "\n")
        return str(out)

    def merge(self, folder: BuildFolder, results: list[str], seconds: float) -> StageReport:
        """Concatenate the shards' verified, quarantined and skipped rows into the build's three tables;
        the report accounts for every generated row (:func:`grok.instruct.accounting.account`)."""
        merged: dict[str, list[pa.Table]] = {name: [] for name in MERGED}
        summaries = []
        for d in sorted(results):
            p = Path(d)
            for name, (shard_file, _) in MERGED.items():
                if (p / shard_file).exists():
                    merged[name].append(pq.read_table(p / shard_file))
            if (p / "summary.json").exists():
                summaries.append(json.loads((p / "summary.json").read_text()))
        tables: dict[str, pa.Table] = {}
        for name, (_, schema) in MERGED.items():
            t = pa.concat_tables(merged[name]) if merged[name] else schema.empty_table()
            if name == "instructions":
                t = t.sort_by("id")
            tables[name] = t
            pq.write_table(t, folder.path(name + ".parquet"), compression="zstd")
        acc = account(tables["instructions"].select(["task"]).to_pylist(),
                      tables["instructions_quarantine"].select(["task", "verifier_reasons", "error_class"]).to_pylist(),
                      tables["instructions_skipped"].select(["task", "reason_code"]).to_pylist())
        n_out, n_q, n_s = (tables[n].num_rows for n in MERGED)
        return folder.finish(StageReport(
            "instruct", n_in=n_out + n_q + n_s, n_out=n_out, n_quarantined=n_q, n_skipped=n_s, seconds=seconds,
            outputs={n: str(folder.path(n + ".parquet")) for n in MERGED},
            details={"shards": len(results), "accounting": acc,
                     "usage": [s.get("usage") for s in summaries if s.get("usage")]}))
