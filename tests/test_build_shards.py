"""Measure and instruct shards are reused only while their real inputs are unchanged: a replaced image,
a changed setting or a changed cohort table never serves stale biomarkers, media or instructions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.uid import generate_uid

from grok.stages.config import BuildConfig
from grok.stages.runner import run_stage

TINY_PHANTOM = {"subjects": 1, "seed": 3, "oct_shape": [5, 160, 128], "oct_spacing_um": [8.0, 46.875, 1500.0],
                "cfp_size": 256, "circle_scans": True}


def tiny_config(tmp: Path, **over) -> BuildConfig:
    cfg = {"work_dir": str(tmp / "build"), "source": {"phantom": TINY_PHANTOM},
           "instruct": {"mode": "template", "seed": 0},
           "publish": {"name": "tiny", "registry": str(tmp / "registry"), "split_ratios": [0.6, 0.2, 0.2]}}
    for k, v in over.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    return BuildConfig.model_validate(cfg)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory) -> Path:
    """A tiny phantom (one subject, two eyes) written and ingested once; tests copy it."""
    tmp = tmp_path_factory.mktemp("tiny")
    cfg = tiny_config(tmp)
    run_stage(cfg, "source")
    run_stage(cfg, "ingest")
    return tmp


@pytest.fixture
def copy(ingested, tmp_path) -> Path:
    shutil.copytree(ingested / "build", tmp_path / "build")
    return tmp_path


def _measure(cfg: BuildConfig) -> dict[str, dict]:
    run_stage(cfg, "measure")
    return {r["study_id"]: r for r in pq.read_table(Path(cfg.work_dir) / "biomarkers.parquet").to_pylist()}


def _dicoms(tmp: Path, modality: str = "OP", description: str | None = None) -> list[Path]:
    """The phantom's DICOM files of one modality (and series description)."""
    out = []
    for p in sorted((tmp / "build" / "phantom" / "dicom").rglob("*")):
        ds = pydicom.dcmread(p, stop_before_pixels=True) if p.is_file() else None
        if ds is not None and ds.Modality == modality and description in (None, ds.get("SeriesDescription")):
            out.append(p)
    return out


def _reingest(cfg: BuildConfig) -> None:
    run_stage(cfg, "ingest")


def _rewrite_image(src: Path, dst: Path, *, scale: float, new_uid: bool) -> None:
    """Write ``src`` with its pixels scaled to ``dst`` (a re-export, or with ``new_uid`` another image)."""
    ds = pydicom.dcmread(src)
    arr = ds.pixel_array
    arr = (arr.astype(np.float64) * scale).clip(0, np.iinfo(arr.dtype).max).astype(arr.dtype)
    ds.PixelData = arr.tobytes()
    if new_uid:
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(dst)


def test_replaced_photograph_is_measured_again(copy):
    cfg = tiny_config(copy)
    before = _measure(cfg)
    photo = _dicoms(copy)[0]
    _rewrite_image(photo, photo, scale=0.8, new_uid=False)  # the clinic re-exported the same photograph
    _reingest(cfg)
    after = _measure(cfg)
    manifest = pq.read_table(copy / "build" / "ingest" / "manifest.parquet").to_pylist()
    cfp_ids = {r["image_id"] for r in manifest if r["modality"] == "cfp"}
    changed = [s for s in after if after[s]["cfp_image_id"] != before[s]["cfp_image_id"]]
    assert len(changed) == 1  # exactly the study whose photograph was replaced
    assert after[changed[0]]["cfp_image_id"] in cfp_ids
    assert {r["cfp_image_id"] for r in after.values()} <= cfp_ids  # nothing refers to the replaced image


def test_changed_overlay_setting_is_measured_again(copy):
    with_overlays = _measure(tiny_config(copy))
    assert all(json.loads(r["overlays"]) for r in with_overlays.values())
    without = _measure(tiny_config(copy, measure={"overlays": False}))
    assert all(json.loads(r["overlays"]) == {} for r in without.values())
    media = copy / "build" / "media"
    assert not list(media.rglob("*_overlay.png")) and not list(media.rglob("thickness_map.png"))


def test_unchanged_inputs_reuse_the_shard(copy):
    cfg = tiny_config(copy)
    _measure(cfg)
    shards = sorted((copy / "build" / "measure").glob("shard-*.parquet"))
    mtimes = [p.stat().st_mtime_ns for p in shards]
    _reingest(cfg)  # nothing changed in the archive
    _measure(cfg)
    assert [p.stat().st_mtime_ns for p in sorted((copy / "build" / "measure").glob("shard-*.parquet"))] == mtimes


def test_changed_cohort_table_regenerates_instructions(copy):
    cfg = tiny_config(copy)
    _measure(cfg)
    cohort = copy / "build" / "phantom" / "cohort.csv"
    run_stage(cfg, "records")
    run_stage(cfg, "instruct")
    labels_before = set(pq.read_table(copy / "build" / "instructions.parquet").column("label").to_pylist())
    import pandas as pd

    df = pd.read_csv(cohort, dtype=str, keep_default_na=False)
    new = "glaucoma" if "glaucoma" not in labels_before else "amd"
    df["icd10_codes"] = "H40.1" if new == "glaucoma" else "H35.3"
    df["glaucoma_laterality" if new == "glaucoma" else "amd_laterality"] = "3"
    df.to_csv(cohort, index=False)  # the same path, new content
    run_stage(cfg, "records")
    records = {json.loads(line)["study_id"]: json.loads(line)["label"]
               for line in (copy / "build" / "records.jsonl").read_text().splitlines()}
    assert set(records.values()) == {new}
    run_stage(cfg, "instruct")
    rows = pq.read_table(copy / "build" / "instructions.parquet").to_pylist()
    assert rows and all(r["label"] == records[r["study_id"]] for r in rows)


def test_code_changes_change_the_key(tmp_path, monkeypatch):
    from grok.stages.keys import source_digest

    pkg = tmp_path / "extractor_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "thickness.py").write_text("def um(px):\n    return px * 3.87\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = source_digest("extractor_pkg")
    assert source_digest("extractor_pkg") == before
    (pkg / "thickness.py").write_text("def um(px):\n    return px * 3.9\n")  # an edited extractor
    assert source_digest("extractor_pkg") != before


def test_only_generation_templates_key_instruction_shards(tmp_path):
    """An edited card, report or evaluation template leaves the instruct shards' key alone; an edited task
    family template changes it."""
    from grok.instruct.templating import templates_dir
    from grok.stages.instruct_stage import _generation_templates

    mine = tmp_path / "templates"
    shutil.copytree(templates_dir(), mine)
    before = _generation_templates(str(mine))
    assert before and all(k.split("/")[0] in ("instruct", "llm") for k in before)
    for other in ("report/card.md.j2", "eval/judge_prompt.j2"):
        (mine / other).write_text((mine / other).read_text() + "\n{# edited #}\n")
    assert _generation_templates(str(mine)) == before
    diag = mine / "instruct" / "diagnosis.j2"
    diag.write_text(diag.read_text() + "\n{# edited #}\n")
    assert _generation_templates(str(mine)) != before
