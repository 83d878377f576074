"""``grok instruct`` / ``grok verify`` end to end: phantom studies, both modes, exit codes."""

from __future__ import annotations

import json
from collections import defaultdict

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from grok.cli import app
from grok.instruct.export import read_rows
from grok.knowledge import load_knowledge_base
from tests.llm_server import Faults, LocalLLMServer

runner = CliRunner()


@pytest.fixture(scope="module")
def phantom_studies(phantom_archive, tmp_path_factory):
    """Study records (contract shape) from the phantom's ground truth, reasoning left to ``grok instruct``."""
    kb = load_knowledge_base()
    groups: dict[tuple, dict] = defaultdict(lambda: {"biomarkers": {}})
    for line in (phantom_archive / "truth" / "truth.jsonl").read_text().splitlines():
        d = json.loads(line)
        g = groups[(d["subject"], d["eye"])]
        g.update(study_id=f"S{d['subject']:05d}{d['eye']}", patient_id=f"P{d['subject']:016x}", eye=d["eye"],
                 age_years=d["age_years"], sex=d["sex"], label=d["label"], labels=[d["label"]], device="generic")
        truth = d["truth"]
        values = truth.get("biomarkers", truth) if d["modality"] == "oct" else truth
        g["biomarkers"].update({k: v for k, v in values.items() if k in kb.biomarkers})
        if d["modality"] == "cfp":
            g["images"] = {"cfp": f"media/{g['study_id']}/cfp.png", "oct_foveal": f"media/{g['study_id']}/oct.png"}
            g["image_sizes"] = {"cfp": [truth["size_px"], truth["size_px"]], "oct_foveal": [128, 160]}
    path = tmp_path_factory.mktemp("phantom_studies") / "studies.jsonl"
    path.write_text("\n".join(json.dumps(g) for g in groups.values()) + "\n")
    return path, len(groups)


def test_template_mode_from_phantom_studies_then_verify(phantom_studies, tmp_path):
    path, n = phantom_studies
    res = runner.invoke(app, ["instruct", str(path), "--out", str(tmp_path), "--seed", "3", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["studies_used"] == n and summary["rows"] > 0
    rows = read_rows(tmp_path / "instructions.parquet")
    assert {r["task"] for r in rows} >= {"diagnosis", "biomarker_qa", "localisation"}
    res = runner.invoke(app, ["verify", str(tmp_path / "instructions.parquet"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["failed"] == 0 and out["passed"] == len(rows)

    # plant a defect in one row: verify must fail with exit 1 and name it
    table = pq.read_table(tmp_path / "instructions.parquet").to_pylist()
    victim = next(r for r in table if r["task"] == "biomarker_qa" and "µm" in r["messages"][-1]["content"])
    victim["messages"][-1]["content"] += " The left eye and right eye were both imaged; the label says so."
    bad = tmp_path / "bad" / "instructions.parquet"
    bad.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(table, schema=pq.read_schema(tmp_path / "instructions.parquet")), bad)
    res = runner.invoke(app, ["verify", str(bad), "--studies", str(tmp_path / "studies.jsonl"), "--json"])
    assert res.exit_code == 1
    out = json.loads(res.stdout)
    assert out["failed"] == 1
    assert {"laterality", "forbidden_phrase"} <= set(out["reasons_by_code"])


def test_llm_mode_from_phantom_studies(phantom_studies, tmp_path):
    path, _ = phantom_studies
    with LocalLLMServer(Faults(p500=0.1, p429=0.1), seed=9) as srv:
        res = runner.invoke(app, ["instruct", str(path), "--out", str(tmp_path), "--mode", "llm", "--tasks",
                                  "report,diagnosis,localisation", "--base-url", srv.url, "--model", "tiny",
                                  "--concurrency", "4", "--no-images", "--json"])  # the records carry no media
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["rows_per_mode"].get("llm", 0) > 0 and summary["rows_per_mode"].get("template", 0) > 0
    rows = read_rows(tmp_path / "instructions.parquet")
    assert {r["mode"] for r in rows if r["task"] == "localisation"} == {"template"}
    res = runner.invoke(app, ["verify", str(tmp_path / "instructions.parquet")])
    assert res.exit_code == 0, res.output


def test_exit_codes(tmp_path):
    assert runner.invoke(app, ["instruct", str(tmp_path / "none.jsonl"), "--out", str(tmp_path)]).exit_code == 3
    studies = tmp_path / "s.jsonl"
    studies.write_text("")
    assert runner.invoke(app, ["instruct", str(studies), "--out", str(tmp_path), "--tasks", "poems"]).exit_code == 2
    assert runner.invoke(app, ["instruct", str(studies), "--out", str(tmp_path), "--mode", "llm",
                               "--base-url", "nonsense", "--model", "m"]).exit_code == 2
    assert runner.invoke(app, ["instruct", str(studies), "--out", str(tmp_path)]).exit_code == 1  # nothing to write
    assert runner.invoke(app, ["verify", str(tmp_path / "missing.parquet")]).exit_code == 3
