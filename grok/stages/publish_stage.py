"""Publish stage: the finished build folder -> a validated, versioned dataset in the registry.

Run as: the publish stage of grok build (or grok publish BUILD_DIR for a finished folder)

Calls :func:`grok.publish.publish_build` (contracts, splits, dedup, card, curator report; atomic), in a process
of its own as every single-process stage (:class:`grok.stages.stage.SingleStage`). The build folder says
``ready_to_publish`` while it runs and ``complete: true`` only once the version exists, so a failed or killed
publication is never reported as done and a rerun publishes again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from grok.publish import PublishConfig, publish_build
from grok.stages.folder import BuildFolder, StageReport
from grok.stages.stage import SingleStage


class Publish(SingleStage):
    """Validate, split, dedup and publish ``publish.name`` at the next (or the given) version."""

    name = "publish"
    inputs: ClassVar[tuple[str, ...]] = ("records.jsonl", "biomarkers.parquet", "instructions.parquet",
                                         "labels.parquet", "media/")
    outputs: ClassVar[tuple[str, ...]] = ("contracts/",)

    def work(self, folder: BuildFolder) -> StageReport:
        deny_list = folder.source()["deny_list"]
        deny = json.loads(Path(deny_list).read_text()) if deny_list and Path(deny_list).is_file() else []
        p = folder.cfg.publish
        folder.update(complete=False, ready_to_publish=True)  # complete means published
        res = publish_build(folder.root, PublishConfig.model_validate(p.model_dump(exclude={"deny_list"})),
                            kb=folder.kb, deny_identifiers=deny, pseudonym_key=folder.deid().key,
                            synthetic=folder.cfg.source.phantom is not None)
        folder.update(complete=True, last_stage="publish", published=f"{res.name}@{res.version}",
                      fingerprint=res.fingerprint)
        n_pub = sum(sum(v.values()) for k, v in res.counts["published"].items() if k in ("instructions", "benchmark"))
        return StageReport("publish", n_in=res.counts["instructions_in"], n_out=n_pub,
                           n_quarantined=res.counts["failed_verification_excluded"] + res.counts["duplicates_removed"]
                           + res.counts.get("removed_by_review", 0),
                           outputs={"dataset": f"{res.name}@{res.version}", "path": res.path, "card": res.card,
                                    "report": res.report},
                           details={"fingerprint": res.fingerprint, "counts": res.counts})

    def merge(self, folder: BuildFolder, results: list[str], seconds: float) -> StageReport:
        (result,) = results  # published: no output-fraction check after the fact (the contracts gate it)
        return StageReport(**json.loads(result))
