"""End-to-end build on a small phantom: every stage accounts for its rows, publishing is versioned,
immutable and gated by the contracts, and the published version loads three ways."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

from grok.stages.config import BuildConfig, ConfigError, load_config
from grok.stages.runner import run_build
from tests.browser import chromium_page

SMALL_PHANTOM = {"subjects": 7, "seed": 1, "oct_shape": [5, 160, 128], "oct_spacing_um": [8.0, 46.875, 1500.0],
                 "cfp_size": 384, "circle_scans": True}


def small_config(tmp: Path, **over) -> dict:
    cfg = {
        "work_dir": str(tmp / "build"),
        "source": {"phantom": SMALL_PHANTOM},
        "measure": {"shard_size": 5},
        "instruct": {"mode": "template", "seed": 0, "shard_size": 6},
        # 5 low-resolution B-scans per eye: false drusen on 3 normal eyes (of 14 studies) make the reasoner rule out their
        # label, so 12 of 84 rows are skipped (83 % pass); test_pass_rate_gate_counts_every_generated_row
        # checks that the default 90 % refuses this build
        "publish": {"name": "small", "registry": str(tmp / "registry"), "split_ratios": [0.6, 0.2, 0.2],
                    "verifier_pass_rate": 0.8},
    }
    for k, v in over.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    return cfg


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("build")
    cfg = BuildConfig.model_validate(small_config(tmp))
    reports = {r.stage: r for r in run_build(cfg)}
    return tmp, cfg, reports


def _tree_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def test_every_stage_accounts_for_its_rows(built):
    tmp, cfg, rep = built
    assert rep["ingest"].n_in == rep["ingest"].n_out + rep["ingest"].n_quarantined + rep["ingest"].n_skipped
    assert rep["measure"].n_in == 14 and rep["measure"].n_out + rep["measure"].n_quarantined == 14
    assert rep["records"].n_in == rep["records"].n_out + rep["records"].n_quarantined
    ins = pq.read_table(Path(cfg.work_dir) / "instructions.parquet").num_rows
    q = pq.read_table(Path(cfg.work_dir) / "instructions_quarantine.parquet").num_rows
    assert rep["instruct"].n_out == ins and rep["instruct"].n_quarantined == q and ins > 0
    pub = rep["publish"]
    counts = pub.details["counts"]
    published = sum(n for c in ("instructions", "benchmark") for n in counts["published"][c].values())
    assert counts["instructions_in"] == published + counts["duplicates_removed"] + counts["failed_verification_excluded"]


def test_every_stage_reads_and_writes_what_it_declares(built):
    """The stage list is the build's one description: what each stage declares is really there."""
    from grok.stages.runner import STAGES

    tmp, cfg, rep = built
    assert [s.name for s in STAGES] == [r for r in rep if not r.startswith("train_")]
    work = Path(cfg.work_dir)
    written: set[str] = set()
    for stage in STAGES:
        for path in stage.inputs:
            assert path in written, f"{stage.name} reads {path}, which no earlier stage writes"
        for path in stage.outputs:
            assert (work / path).exists(), f"{stage.name} declares {path} but did not write it"
        written |= set(stage.outputs)


def test_published_version_loads_three_ways(built):
    tmp, cfg, rep = built
    from grok.registry import load, resolve

    spec = rep["publish"].outputs["dataset"]
    assert spec == "small@0.1.0"
    info = resolve(spec, cfg.publish.registry)
    ds = load(spec, "instructions", "train", registry=cfg.publish.registry)
    assert len(ds) > 0 and ds[0]["images"] and ds[0]["messages"][-1]["role"] == "assistant"
    assert ds[0]["messages"][0]["content"].count("<image>") == len(ds[0]["images"])
    plain = datasets.load_dataset(info["path"], "benchmark", split="test")
    assert len(plain) > 0
    al = datasets.load_dataset(info["path"], "alignment", split="train")
    assert len(al[0]["biomarker_values"]) == 31
    out = subprocess.run([sys.executable, "-m", "grok", "datasets", "pull", spec, "--registry",
                          cfg.publish.registry, "--out", str(tmp / "pulled"), "--json"],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["fingerprint"] == info["fingerprint"]
    assert len(datasets.load_dataset(str(tmp / "pulled"), "instructions", split="validation")) >= 0
    # patients never cross splits
    pids = {s: set(load(spec, c, s, registry=cfg.publish.registry)["patient_id"])
            for c, s in (("instructions", "train"), ("instructions", "validation"), ("benchmark", "test"))}
    assert not (pids["train"] & pids["test"]) and not (pids["train"] & pids["validation"])


def test_card_and_report(built):
    tmp, cfg, rep = built
    path = Path(rep["publish"].outputs["path"])
    card = (path / "README.md").read_text()
    assert card.startswith("---\n") and "configs:" in card and "## Data contracts" in card
    # the text lint and variety figures of the version (grok lint-text): template rows break no rule
    lint = card.split("## Text style and variety", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"`grok lint-text` over the (\d+) verified rows: (\d+) style violations", lint)
    assert m and int(m.group(1)) > 0 and m.group(2) == "0", lint[:400]
    tasks = set(pq.read_table(Path(cfg.work_dir) / "instructions.parquet", columns=["task"]).column("task").to_pylist())
    assert tasks and all(f"| {task} |" in lint for task in tasks)
    report = (path / "report" / "index.html").read_text()
    assert report.count('class="row"') >= 6
    for src in __import__("re").findall(r'src="([^"]+)"', report):
        assert (path / "report" / src).is_file()
    planted = json.loads((Path(cfg.work_dir) / "phantom" / "truth" / "planted_identifiers.json").read_text())
    for f in path.rglob("*"):
        if f.is_file() and f.suffix in (".md", ".html", ".json"):
            text = f.read_text()
            assert not any(p in text for p in planted), f


def test_changed_template_publishes_new_version_old_untouched(built, tmp_path):
    tmp, cfg, rep = built
    from grok.instruct.templating import templates_dir
    from grok.stages.runner import run_stage

    v1 = Path(rep["publish"].outputs["path"])
    before = _tree_digest(v1)
    mine = tmp_path / "templates"
    shutil.copytree(templates_dir(), mine)
    diag = mine / "instruct" / "diagnosis.j2"
    diag.write_text(diag.read_text() + "\n{# local edit: a changed template #}\n")
    cfg2 = BuildConfig.model_validate({**cfg.model_dump(mode="json"),
                                       "instruct": {**cfg.instruct.model_dump(mode="json"), "templates_dir": str(mine)}})
    run_stage(cfg2, "instruct")
    pub = run_stage(cfg2, "publish")
    assert pub.outputs["dataset"] == "small@0.2.0"
    assert pub.details["fingerprint"] != rep["publish"].details["fingerprint"]
    assert _tree_digest(v1) == before


def test_publication_runs_in_a_process_of_its_own(built, tmp_path, monkeypatch):
    """The build's driver only waits for publication (issue 22): :func:`grok.publish.publish_build` runs in a child
    process that ends with it (grok.childproc), so what publication allocates goes back to the system. A
    ``publish_build`` patched to fail in this process is never called; the child publishes the same content."""
    import grok.stages.publish_stage as ps
    from grok.stages.runner import run_stage

    tmp, cfg, rep = built
    work = tmp_path / "b"
    shutil.copytree(cfg.work_dir, work, ignore=shutil.ignore_patterns("phantom", "contracts"))
    # the folder's last publication (an earlier test may have published edited rows from it since the fixture)
    last = json.loads((work / "build.json").read_text())["fingerprint"]
    cfg2 = BuildConfig.model_validate({**cfg.model_dump(mode="json"), "work_dir": str(work), "publish": {
        **cfg.publish.model_dump(mode="json"), "registry": str(tmp_path / "registry")}})
    monkeypatch.setattr(ps, "publish_build", lambda *a, **k: pytest.fail("publish_build ran in the driver"))
    pub = run_stage(cfg2, "publish")
    assert pub.outputs["dataset"] == "small@0.1.0" and str(tmp_path / "registry") in pub.outputs["path"]
    assert pub.details["fingerprint"] == last
    assert json.loads((work / "build.json").read_text())["complete"] is True


def test_planted_identifier_blocks_publication(built, tmp_path):
    tmp, cfg, rep = built
    from grok.publish import PublishConfig, PublishError, publish_build

    work = tmp_path / "b"
    shutil.copytree(cfg.work_dir, work, ignore=shutil.ignore_patterns("phantom", "contracts"))
    planted = json.loads((Path(cfg.work_dir) / "phantom" / "truth" / "planted_identifiers.json").read_text())
    t = pq.read_table(work / "instructions.parquet").to_pandas()
    msgs = list(t.loc[0, "messages"])
    msgs[-1] = {"role": "assistant", "content": msgs[-1]["content"] + f" Seen by {planted[0]}."}
    t.at[0, "messages"] = msgs
    t.to_parquet(work / "instructions.parquet")
    with pytest.raises(PublishError, match="contracts failed"):
        publish_build(work, PublishConfig(name="small", registry=str(tmp_path / "reg")), deny_identifiers=planted)
    assert not (tmp_path / "reg" / "small").exists() or not any((tmp_path / "reg" / "small").glob("[0-9]*"))


def test_overlapping_patient_blocks_publication(built, tmp_path, monkeypatch):
    tmp, cfg, rep = built
    import grok.publish as pub

    real = pub.prepare

    def leaky(build_dir, c, kb=None, tmp=None):
        prep = real(build_dir, c, kb, tmp)
        ins = prep["instructions"]
        pid = ins[ins.split == "train"].patient_id.iloc[0]
        ins.loc[ins.index[(ins.patient_id == pid).to_numpy()][:1], "split"] = "test"
        return prep

    monkeypatch.setattr(pub, "prepare", leaky)
    with pytest.raises(pub.PublishError, match="splits_per_patient_id"):
        pub.publish_build(Path(cfg.work_dir), pub.PublishConfig(name="small", registry=str(tmp_path / "reg")))


def test_half_written_build_refused(built, tmp_path):
    tmp, cfg, rep = built
    from grok.publish import PublishConfig, PublishError, publish_build

    work = tmp_path / "half"
    shutil.copytree(cfg.work_dir, work, ignore=shutil.ignore_patterns("phantom", "contracts", "media"))
    (work / "build.json").write_text(json.dumps({"complete": False, "last_stage": "measure"}))
    with pytest.raises(PublishError, match="not complete"):
        publish_build(work, PublishConfig(name="small", registry=str(tmp_path / "reg")))
    (work / "build.json").unlink()
    (work / "instructions.parquet").unlink()
    with pytest.raises(PublishError, match="missing instructions.parquet"):
        publish_build(work, PublishConfig(name="small", registry=str(tmp_path / "reg")))


def test_broken_config_names_field(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("work_dir: x\nsource: {phantom: {subjects: 0}}\npublish: {name: n, split_ratio: [1, 0, 0]}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "source.phantom.subjects" in msg and "publish.split_ratio" in msg and "unknown key" in msg


def test_everything_quarantined_stops_before_publish(tmp_path):
    from grok.stages.runner import StageFailed

    src = tmp_path / "junk"
    src.mkdir()
    for i in range(3):
        (src / f"f{i}.dcm").write_bytes(b"not dicom at all" * 10)
    cfg = BuildConfig.model_validate(small_config(tmp_path, source={"archive": str(src), "phantom": None}))
    with pytest.raises(StageFailed, match="stage ingest"):
        run_build(cfg)
    assert json.loads((Path(cfg.work_dir) / "build.json").read_text())["complete"] is False
    assert not (tmp_path / "registry").exists()


def test_curator_report_renders_in_chromium(built):
    """Headless Chromium (Debian's, driven by Playwright): the page renders, every image loads, no console errors."""
    tmp, cfg, rep = built
    report = Path(rep["publish"].outputs["path"]) / "report" / "index.html"
    with chromium_page(report) as (page, errors):
        n_images = page.evaluate("document.images.length")
        broken = page.evaluate("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
                               ".map(i => i.src)")
        rows = page.locator("section.row").count()
        title = page.title()
        page.screenshot(path=str(tmp / "report.png"), full_page=False)
    assert errors == []
    assert n_images >= 10 and broken == []
    assert rows >= 6 and title.startswith("Curator report")


def test_every_generated_row_is_accounted_for(built):
    """Verified + quarantined + skipped = generated, per family, in the tables, the report, build.json and the card."""
    from grok.instruct.families import SKIP_REASONS

    tmp, cfg, rep = built
    work = Path(cfg.work_dir)
    tables = {n: pq.read_table(work / f"{n}.parquet").to_pandas()
              for n in ("instructions", "instructions_quarantine", "instructions_skipped")}
    r = rep["instruct"]
    assert (r.n_out, r.n_quarantined, r.n_skipped) == tuple(len(t) for t in tables.values())
    assert r.n_in == r.n_out + r.n_quarantined + r.n_skipped
    skipped = tables["instructions_skipped"]
    assert len(skipped) > 0 and set(skipped.reason_code) <= set(SKIP_REASONS)
    acc = json.loads((work / "build.json").read_text())["stages"]["instruct"]["accounting"]
    for task, f in acc["per_family"].items():
        assert f["passed"] == int((tables["instructions"].task == task).sum())
        assert f["quarantined"] == int((tables["instructions_quarantine"].task == task).sum())
        assert f["skipped"] == int((skipped.task == task).sum())
        assert f["generated"] == f["passed"] + f["quarantined"] + f["skipped"]
    card = (Path(rep["publish"].outputs["path"]) / "README.md").read_text()
    t = acc["total"]
    assert f"{t['generated']} rows were generated" in card and f"{t['skipped']} skipped" in card
    for code in t["skipped_by_reason"]:
        assert f"{code} " in card
    # the studies whose label the findings contradict are a group of their own in the curator report
    report = (Path(rep["publish"].outputs["path"]) / "report" / "index.html").read_text()
    contradicted = set(skipped[skipped.reason_code == "label_contradicted_by_findings"].study_id)
    assert contradicted and 'id="label-contradicted"' in report
    assert all(sid in report for sid in contradicted)
    listed = (Path(rep["publish"].outputs["path"]) / "report" / "contradicted_studies.csv").read_text().splitlines()
    assert sorted(line.split(",")[0] for line in listed[1:]) == sorted(contradicted)  # every one, beside the page
    assert f"Label contradicted by the findings: {len(contradicted)} studies" in report
    for stage in json.loads((work / "build.json").read_text())["stages"].values():
        assert stage["n_in"] == stage["n_out"] + stage["n_quarantined"] + stage["n_skipped"]


def test_a_report_that_loses_rows_cannot_be_made():
    from grok.stages.folder import StageReport

    with pytest.raises(ValueError, match="every item must be accounted for"):
        StageReport("instruct", n_in=10, n_out=7, n_quarantined=1, n_skipped=1)


def test_pass_rate_gate_counts_every_generated_row(built, tmp_path):
    """The gate divides by every generated row: the build's 90 % default refuses this build, naming the reasons."""
    from grok.publish import PublishConfig, PublishError, publish_build

    tmp, cfg, rep = built
    acc = json.loads((Path(cfg.work_dir) / "build.json").read_text())["stages"]["instruct"]["accounting"]["total"]
    rate = acc["passed"] / acc["generated"]
    assert rate < 0.9 and acc["passed"] / (acc["passed"] + acc["quarantined"]) >= 0.9  # skips decide it
    reg = tmp_path / "reg"
    with pytest.raises(PublishError, match=rf"only {100 * rate:.1f}% of the generated") as err:
        publish_build(Path(cfg.work_dir), PublishConfig(name="small", registry=str(reg), verifier_pass_rate=0.9))
    for code, n in acc["skipped_by_reason"].items():
        assert f"skipped {code}: {n}" in str(err.value)
    assert not reg.exists() or not any(reg.rglob("manifest.json"))


def test_records_config_carries_the_evidence_and_replays_the_verdicts(built, tmp_path):
    """Every row joins a records row; `grok verify --dataset` re-checks the version alone and agrees with the
    build; a tampered answer in a copy of the version is caught."""
    from grok.registry import load, resolve

    tmp, cfg, rep = built
    spec, reg = rep["publish"].outputs["dataset"], cfg.publish.registry
    recs = {s: load(spec, "records", s, registry=reg) for s in ("train", "validation", "test")}
    by_id = {r["study_id"]: (s, r) for s, ds in recs.items() for r in ds}
    for config, split in (("instructions", "train"), ("instructions", "validation"), ("benchmark", "test")):
        for sid in set(load(spec, config, split, registry=reg)["study_id"]):
            assert by_id[sid][0] == split  # same patient split
    r = next(r for _, r in by_id.values() if any(f["normal_range_source"] for f in r["findings"]))
    assert r["age_band"] and all(b["unit"] for b in r["biomarkers"]) and r["differential"]
    ranged = next(f for f in r["findings"] if f["normal_range_source"])
    assert ranged["normal_p5"] < ranged["normal_p95"] and ranged["biomarker"]
    assert "age_years" not in r["evidence"] and '"visit"' not in r["evidence"]

    def verify(registry: str) -> tuple[int, dict]:
        out = subprocess.run([sys.executable, "-m", "grok", "verify", "--dataset", spec, "--registry", registry,
                              "--json"], check=False, capture_output=True, text=True)
        return out.returncode, json.loads(out.stdout)

    code, res = verify(reg)
    assert code == 0 and res["rows"] > 0 and res["same_verdict_as_build"] == res["rows"] == res["passed"]
    # tamper with one CST in a copy of the version: the replay must see it
    info = resolve(spec, reg)
    copy = tmp_path / "reg"
    shutil.copytree(Path(info["path"]).parent, copy / "small")
    f = copy / "small" / info["version"] / "data" / "instructions" / "train-00000-of-00001.parquet"
    t = pq.read_table(f).to_pandas()
    import re
    for i, msgs in enumerate(t["messages"]):
        last = msgs[-1]["content"]
        m = re.search(r"central subfield thickness(?: \(CST\))?(?: is| of)? (\d+(?:\.\d+)?) µm", last, re.IGNORECASE)
        if m:
            new = list(msgs)
            wrong = last[:m.start(1)] + f"{float(m.group(1)) + 90:.0f}" + last[m.end(1):]
            new[-1] = {"role": "assistant", "content": wrong}
            t.at[i, "messages"] = new
            break
    else:
        pytest.fail("no train row states a central subfield thickness")
    t.to_parquet(f)
    code, res = verify(str(copy))
    assert code == 1 and res["different_verdict"] == 1
    assert res["reasons_by_code"] == {"wrong_number": 1}
