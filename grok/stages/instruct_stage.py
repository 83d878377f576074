"""Instruct stage of a build: study records -> verified instruction rows (sharded, resumable).

Run as: the instruct stage of grok build (see grok.stages.runner.STAGES)

Records are cut into shards (``instruct.shard_size``, or :func:`auto_shard_size`); each shard runs
:func:`grok.instruct.generate.build_instructions` into ``BUILD/instruct/shard-<name>/`` and marks
itself done with a ``DONE`` file holding the content key of its inputs (:mod:`grok.stages.keys`), so a
restarted build skips finished shards and a changed record, setting or template regenerates its
shard (LLM calls of an unfinished shard are replayed from the shard's SQLite request cache, never
repeated). :meth:`Instruct.merge` writes ``BUILD/instructions.parquet``,
``BUILD/instructions_quarantine.parquet`` and ``BUILD/instructions_skipped.parquet`` (a family that made
no row for a study, with the reason code) and accounts for every generated row in its report.

Nothing here holds the archive: the plan keys shards while it reads ``records.jsonl`` (one shard's records at
a time) and gives each shard the byte range of its records, which the shard reads alone; the merge writes the
quarantined and skipped rows shard after shard and the verified rows sorted by id, :data:`MERGE_ROWS` at a time.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from bisect import bisect_left
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq

from grok import __version__
from grok.instruct.accounting import account
from grok.instruct.export import INSTRUCTIONS_SCHEMA, QUARANTINE_SCHEMA, SKIPPED_SCHEMA
from grok.instruct.generate import InstructConfig, build_instructions
from grok.instruct.templating import GENERATION_TEMPLATES, templates_dir
from grok.parquet_io import iter_batches
from grok.stages.folder import BuildFolder, StageReport
from grok.stages.keys import StreamKey, content_key, files_digest, shard_name, source_digest
from grok.stages.records_stage import read_records
from grok.stages.stage import Shard, Stage, auto_size

#: Instruction rows sorted in memory at a time when the shards are merged into ``instructions.parquet``
#: (sorted by row id): more rows than this are dealt to ranges of ids and each range is sorted in turn, so the
#: merge's memory does not grow with the archive. Merging the 5,000-study build's 26,372 rows: anonymous
#: memory +193 MB with 50,000 (all rows at once), +73 MB with 5,000 (issue 22).
MERGE_ROWS = 10_000
#: Range files open at once while the shard files are dealt (more ranges take another pass over the shards).
MERGE_OPEN_FILES = 256


#: ``instruct.shard_size: auto`` in template mode: about :data:`AUTO_WAVES` shards per worker, each of
#: :data:`AUTO_MIN` to :data:`AUTO_MAX` records. Template shards are cheap (the 2,000-study benchmark build's
#: instruct stage: 13.9 s for 63 shards of 32 records), so small ones buy nothing, and at a fixed size the task
#: count grows with the archive (~5,300 tasks at 170,000 studies). LLM mode keeps :data:`AUTO_LLM`.
AUTO_WAVES, AUTO_MIN, AUTO_MAX, AUTO_LLM = 4, 64, 512, 64


def auto_shard_size(n_records: int, workers: int, mode: str = "template") -> int:
    """Records per instruct shard for ``n_records`` on ``workers``: in template mode about :data:`AUTO_WAVES`
    shards per worker within [:data:`AUTO_MIN`, :data:`AUTO_MAX`]; in LLM mode :data:`AUTO_LLM` (the request
    rate and ``llm_parallel_shards``, not the workers, set how fast an LLM build goes, and a retried shard
    redoes less)."""
    if mode != "template":
        return AUTO_LLM
    return auto_size(n_records, workers, AUTO_MIN, AUTO_MAX, AUTO_WAVES)


def shard_size(folder: BuildFolder) -> int:
    """Records per instruct shard of this build: ``instruct.shard_size`` as set; for ``auto`` in template mode
    what this build folder recorded (``build.json`` ``instruct_shard_size``), else :func:`auto_shard_size` for its
    records on ``folder.workers``, recorded so that a rerun on other workers keeps the plan."""
    s = folder.cfg.instruct
    if s.shard_size != "auto":
        return s.shard_size
    if s.mode != "template":
        return AUTO_LLM
    recorded = folder.info().get("instruct_shard_size")
    if recorded:
        return int(recorded)
    with open(folder.path("records.jsonl"), "rb") as fh:
        n = sum(1 for line in fh if line.strip())
    size = auto_shard_size(n, folder.workers, s.mode)
    folder.update(instruct_shard_size=size)
    return size


class InstructShard(Shard, total=False):
    """An instruct shard as :meth:`Instruct.plan` makes it: also where its records are in ``records.jsonl``
    (``at``: start and end byte) and how many shards the stage has (``of``), so a shard reads its own records,
    not the whole file. Shards without them (made elsewhere) read the file."""

    at: list[int]
    of: int


def _record_lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """``records.jsonl`` one non-blank line at a time: (start byte, end byte, the line without its newline)."""
    with open(path, "rb") as fh:
        pos = 0
        for line in fh:
            end = pos + len(line)
            if line.strip():
                yield pos, end, line.strip()
            pos = end


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
        n = shard_size(folder)
        code = {"grok": __version__, "source": source_digest("grok.instruct", "grok.verify", "grok.knowledge", __name__)}
        common = {"stage": "instruct", "code": code, "build_id": folder.build_id(),
                  "config": {k: v for k, v in cfg.instruct.key_dump().items() if k != "shard_size"},
                  "kb": folder.kb.snapshot_id, "templates": _generation_templates(cfg.instruct.templates_dir)}
        # streamed: records.jsonl is in study-id order (the records stage writes biomarkers' sorted rows), so
        # shards are runs of n consecutive records, keyed as their lines are read (the key hashes each line's
        # bytes, which the records stage writes deterministically): one record in memory at a time. Keying the
        # parsed records of a shard at once held them all: 98 MB more in the driver for shards of 625 records at
        # 5,000 studies (issue 22)
        shards: list[InstructShard] = []
        ids: list[str] = []
        key = StreamKey(common)
        start = end = 0
        last = None
        for begin, end, line in _record_lines(folder.path("records.jsonl")):
            sid = json.loads(line)["study_id"]
            if last is not None and sid <= last:
                return self._plan_in_memory(folder, common, n)  # not sorted (written elsewhere): sort in memory
            last = sid
            if not ids:
                start, key = begin, StreamKey(common)
            ids.append(sid)
            key.add(line)
            if len(ids) == n:
                shards.append(InstructShard(ids=ids, key=key.key(), at=[start, end]))
                ids = []
        if ids:
            shards.append(InstructShard(ids=ids, key=key.key(), at=[start, end]))
        for sh in shards:
            sh["of"] = len(shards)
        return list(shards)

    @staticmethod
    def _plan_in_memory(folder: BuildFolder, common: dict[str, Any], n: int) -> list[Shard]:
        records = {r["study_id"]: r for r in read_records(folder.root)}
        ids = sorted(records)
        return [Shard(ids=ids[i:i + n], key=content_key({**common, "records": [records[s] for s in ids[i:i + n]]}))
                for i in range(0, len(ids), n)]

    @staticmethod
    def _shard_records(folder: BuildFolder, shard: Shard) -> tuple[list[dict[str, Any]], int]:
        """The shard's study records and the number of shards of the stage: read at the shard's byte range when
        the plan gave one and it holds exactly the shard's ids, else from the whole file."""
        path = folder.path("records.jsonl")
        at, of = shard.get("at"), shard.get("of")
        if at and of:
            with open(path, "rb") as fh:
                fh.seek(at[0])
                blob = fh.read(at[1] - at[0])
            records = [json.loads(line) for line in blob.splitlines() if line.strip()]
            if [r["study_id"] for r in records] == list(shard["ids"]):
                return records, of
        want, records, total = set(shard["ids"]), [], 0
        for _, _, line in _record_lines(path):
            total += 1
            r = json.loads(line)
            if r["study_id"] in want:
                records.append(r)
        return records, -(-total // shard_size(folder))

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
        records, shards = self._shard_records(folder, shard)
        build_instructions(records, out, instruct_config(folder, shards), kb=folder.kb)
        (out / "DONE").write_text(shard["key"] + "\n")
        return str(out)

    def merge(self, folder: BuildFolder, results: list[str], seconds: float) -> StageReport:
        """Concatenate the shards' verified, quarantined and skipped rows into the build's three tables;
        the report accounts for every generated row (:func:`grok.instruct.accounting.account`)."""
        dirs = [Path(d) for d in sorted(results)]
        files = {name: [p / shard_file for p in dirs if (p / shard_file).exists()]
                 for name, (shard_file, _) in MERGED.items()}
        summaries = [json.loads((p / "summary.json").read_text()) for p in dirs if (p / "summary.json").exists()]
        counts = {}
        for name, (_, schema) in MERGED.items():
            out = folder.path(name + ".parquet")
            if name == "instructions":
                counts[name] = _merge_sorted(files[name], out, schema)
            else:
                counts[name] = _concat(files[name], out, schema)
        acc = account(_rows(files["instructions"], ["task"]),
                      _rows(files["instructions_quarantine"], ["task", "verifier_reasons", "error_class"]),
                      _rows(files["instructions_skipped"], ["task", "reason_code"]))
        n_out, n_q, n_s = (counts[n] for n in MERGED)
        return folder.finish(StageReport(
            "instruct", n_in=n_out + n_q + n_s, n_out=n_out, n_quarantined=n_q, n_skipped=n_s, seconds=seconds,
            outputs={n: str(folder.path(n + ".parquet")) for n in MERGED},
            details={"shards": len(results), "accounting": acc,
                     "usage": [s.get("usage") for s in summaries if s.get("usage")]}))


def _rows(files: list[Path], columns: list[str]) -> Iterator[dict[str, Any]]:
    """The rows of ``files`` (only ``columns``), one file's batch at a time."""
    for f in files:
        for batch in iter_batches(f, 4096, columns=columns):
            yield from batch.to_pylist()


def _schema(files: list[Path], default: pa.Schema) -> pa.Schema:
    return pq.read_schema(files[0]) if files else default


def _concat(files: list[Path], out: Path, default: pa.Schema) -> int:
    """The shard tables one after another into ``out``, one shard in memory at a time; returns the rows."""
    n = 0
    with pq.ParquetWriter(out, _schema(files, default), compression="zstd") as writer:
        for f in files:
            t = pq.read_table(f)
            if t.num_rows:
                writer.write_table(t)
                n += t.num_rows
    return n


def _merge_sorted(files: list[Path], out: Path, default: pa.Schema) -> int:
    """The shard tables into ``out`` sorted by ``id`` (what one concatenation and sort gives), about
    :data:`MERGE_ROWS` rows in memory at a time: the id space is cut into as many ranges as the row count asks
    for (row ids are sha256 hex digests, so even ranges of the hex space hold about equal shares; any other
    ids still land in exactly one range). One pass over the shard files deals each file's rows to one Arrow
    file per range (next to ``out``, removed afterwards); then each range is read from its file, sorted and
    written in turn. A shard file is read once for every :data:`MERGE_OPEN_FILES` ranges (once up to 2.5
    million rows), not once per range as before (quadratic: at 1,000,000 studies, ~5 million rows, 100 passes
    over every shard file with 50,000 rows a range). Returns the rows."""
    schema = _schema(files, default)
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    parts = max(1, -(-rows // MERGE_ROWS))
    n = 0
    with pq.ParquetWriter(out, schema, compression="zstd") as writer:
        if parts == 1:
            chunks = [t for t in (pq.read_table(f) for f in files) if t.num_rows]
            if chunks:
                t = pa.concat_tables(chunks).sort_by("id")
                writer.write_table(t)
                n += t.num_rows
            return n
        bounds = [None] + [format(i * 16**8 // parts, "08x") for i in range(1, parts)] + [None]
        ranges = list(zip(bounds, bounds[1:]))
        for first in range(0, parts, MERGE_OPEN_FILES):  # at most MERGE_OPEN_FILES range files open at once
            n += _merge_ranges(files, ranges[first:first + MERGE_OPEN_FILES], out.parent, writer)
    return n


def _merge_ranges(files: list[Path], ranges: list[tuple[str | None, str | None]], where: Path,
                  writer: pq.ParquetWriter) -> int:
    """One pass of :func:`_merge_sorted`: each shard file's rows in ``ranges`` dealt to one Arrow file per range
    (in a temporary folder under ``where``), then each range sorted by id and written in order. Returns the
    rows written."""
    n = 0
    with tempfile.TemporaryDirectory(dir=where, prefix=".merge-") as tmp:
        paths = [Path(tmp) / f"range-{i:05d}.arrow" for i in range(len(ranges))]
        sinks: dict[int, tuple[Any, Any]] = {}
        try:
            for f in files:  # one shard file in memory at a time, sorted so that each range is one slice of it
                t = pq.read_table(f).sort_by("id")
                ids = t.column("id").to_pylist()
                valid = len(ids) - t.column("id").null_count  # null ids sort last; they belong to the last range
                for i, (lo, hi) in enumerate(ranges):
                    start = 0 if lo is None else bisect_left(ids, lo, 0, valid)
                    end = len(ids) if hi is None else bisect_left(ids, hi, 0, valid)
                    if end <= start:
                        continue
                    part = t.slice(start, end - start)
                    if i not in sinks:
                        sink = pa.OSFile(str(paths[i]), "wb")
                        sinks[i] = (sink, pa.ipc.new_file(sink, part.schema))
                    sinks[i][1].write_table(part)
        finally:
            for sink, w in sinks.values():
                w.close()
                sink.close()
        for i in sorted(sinks):
            with pa.memory_map(str(paths[i])) as src:
                t = pa.ipc.open_file(src).read_all().sort_by("id")
            writer.write_table(t)
            n += t.num_rows
            del t
    return n
