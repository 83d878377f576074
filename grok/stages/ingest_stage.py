"""Source and ingest stages: the clinic archive (or a generated phantom) -> manifest, studies, quarantine.

Run as: the first two stages of grok build (see grok.stages.runner.STAGES)

``source`` writes the phantom archive when the config asks for one (once: a finished phantom is kept)
and says where the archive, cohort table and deny list are. ``ingest`` reads the archive with
:func:`grok.ingest.pipeline.ingest` into ``BUILD/ingest/`` (de-identified with the build's secret;
unchanged files are reused by sha256) and starts a fresh ``build.json`` progress record.
"""

from __future__ import annotations

from typing import ClassVar

from grok.ingest.pipeline import IngestConfig, ingest
from grok.phantom.archive import write_phantom
from grok.stages.folder import BuildFolder, StageReport
from grok.stages.stage import SingleStage


class Source(SingleStage):
    """Resolve the archive and cohort table (writing the phantom archive first when configured)."""

    name = "source"
    outputs: ClassVar[tuple[str, ...]] = ("phantom/",)

    def work(self, folder: BuildFolder) -> StageReport:
        rep = StageReport("source", outputs=folder.source())
        ph = folder.cfg.source.phantom
        if ph is not None:
            out = folder.path("phantom")
            if not (out / "truth" / "truth.jsonl").exists():
                write_phantom(ph, out)
            rep.n_in = rep.n_out = ph.subjects  # subjects generated
        return rep


class Ingest(SingleStage):
    """Read, de-identify and index the archive; a file that cannot be read is quarantined with its reason."""

    name = "ingest"
    outputs: ClassVar[tuple[str, ...]] = ("ingest/manifest.parquet", "ingest/studies.parquet",
                                          "ingest/quarantine.parquet", "ingest/images/")

    def retries(self, folder: BuildFolder) -> int:
        return 2  # I/O: the archive may be remote; unchanged files are reused, so a retry is cheap

    def work(self, folder: BuildFolder) -> StageReport:
        out = folder.ingest_dir
        res = ingest(folder.source()["archive"], out, IngestConfig(deid=folder.deid()))
        folder.update(complete=False, ready_to_publish=False, last_stage="ingest", build_id=folder.build_id())
        return StageReport("ingest", n_in=res.files_seen, n_out=res.files_ingested,
                           n_quarantined=res.files_quarantined, n_skipped=res.files_skipped,
                           outputs={"manifest": str(out / "manifest.parquet"),
                                    "studies": str(out / "studies.parquet"),
                                    "quarantine": str(out / "quarantine.parquet")},
                           details={"images": res.images, "studies": res.studies, "paired": res.paired_studies,
                                    "cached_files": res.files_cached, "quarantine_reasons": res.quarantine_reasons})
