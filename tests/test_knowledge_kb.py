"""Every knowledge-base YAML file is loaded and checked; broken copies fail with file, key and fix.

Run as: .venv/bin/python -m pytest tests/test_knowledge_kb.py -q
"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from grok import ids
from grok.knowledge import KnowledgeBaseError, bundled_knowledge_base_dir, load_knowledge_base
from grok.knowledge.loader import CANONICAL_BIOMARKERS, snapshot_id_of
from grok.knowledge.models import DeviationFinding, LesionFinding, ThresholdFinding

KB_DIR = bundled_knowledge_base_dir()
YAML_FILES = sorted(p.relative_to(KB_DIR).as_posix() for p in KB_DIR.rglob("*.yaml"))


@pytest.fixture(scope="module")
def kb():
    return load_knowledge_base()


def test_bundled_folder_has_yaml_files():
    assert len(YAML_FILES) >= 5


@pytest.mark.parametrize("rel", YAML_FILES)
def test_each_yaml_file_loads_and_its_entries_are_consistent(rel, kb):
    doc = yaml.safe_load((KB_DIR / rel).read_text(encoding="utf-8"))
    assert isinstance(doc, dict) and doc, f"{rel} is empty"
    for section, body in doc.items():
        if section in ("kb", "cohort"):
            continue
        assert isinstance(body, list) and body, f"{rel}: section {section} is empty"
        pool = getattr(kb, section)
        for raw in body:
            entry = pool[raw["id"]]  # validated and merged
            origin = kb.origins[f"{section}:{raw['id']}"]
            assert origin.endswith(rel), f"{raw['id']} came from {origin}, not {rel}"
            _check_entry(section, entry, kb)


def _check_entry(section, e, kb):
    """Independent re-check of the properties the issue lists (units, order, sources, references)."""
    if section == "biomarkers":
        assert e.unit in kb.units
        assert all(s in kb.sources for s in e.sources)
        assert kb.ranges_for(e.id) or e.no_normal_range_reason
    elif section == "normative_ranges":
        assert e.biomarker in kb.biomarkers and e.source in kb.sources
        assert all(d == "any" or d in kb.devices for d in e.devices)
        vals = [e.percentiles[k] for k in sorted(e.percentiles)]
        assert vals == sorted(vals)
        if e.age_band:
            assert e.age_band.min_years < e.age_band.max_years
        assert (e.mean is not None and e.sd and e.sd > 0) or len(e.percentiles) >= 2
    elif section == "findings":
        assert e.source in kb.sources
        if isinstance(e, DeviationFinding):
            ps = [g.percentile for g in e.grades]
            assert ps == (sorted(ps, reverse=True) if e.direction == "low" else sorted(ps))
        elif isinstance(e, ThresholdFinding):
            for ts in e.thresholds:
                cuts = [g.cut for g in ts.grades]
                assert cuts == (sorted(cuts) if e.direction == "high" else sorted(cuts, reverse=True))
        elif isinstance(e, LesionFinding):
            assert e.lesion_type in kb.lesion_types
        if not isinstance(e, LesionFinding):
            assert e.biomarker in kb.biomarkers
    elif section == "diseases":
        assert all(s in kb.sources for s in e.sources)
        refs = {r.finding for r in e.differential.supporting + e.differential.opposing}
        if e.differential.rule_out_if:
            refs |= e.differential.rule_out_if.finding_ids()
        for st in e.staging:
            assert st.source in kb.sources
            for stage in st.stages:
                refs |= stage.when.finding_ids()
        assert refs <= set(kb.findings)
    elif section == "cohort_labels":
        assert e.id in kb.diseases
        for ev in e.evidence:
            assert ev.source in kb.sources
            assert ev.field is None or ev.field in kb.cohort.fields
    elif section in ("sources", "units", "devices", "lesion_types", "cohort_checks"):
        assert e.id


@pytest.mark.parametrize("biomarker", CANONICAL_BIOMARKERS)
def test_catalogue_covers_every_canonical_id(biomarker, kb):
    b = kb.biomarkers[biomarker]
    if b.value_kind == "position":
        assert b.unit == "px" and b.no_normal_range_reason and not kb.ranges_for(biomarker)
    if biomarker.endswith("_count"):
        assert b.unit == "count"


def test_every_category_and_extra_diseases_present(kb):
    assert set(ids.CATEGORIES) <= set(kb.diseases)
    assert {"dme", "rvo", "csc"} <= set(kb.diseases)
    assert kb.diseases["normal"].differential.status_rule == "complement"


def test_every_number_has_a_source(kb):
    for r in kb.normative_ranges.values():
        assert kb.sources[r.source].title
    for f in kb.findings.values():
        assert kb.sources[f.source].title
    bp = kb.cohort.blood_pressure
    assert (bp.systolic_threshold_mmhg, bp.diastolic_threshold_mmhg) == (140, 90)
    assert kb.sources[bp.source].kind == "guideline"


def test_snapshot_id_shape_and_stability(kb):
    assert kb.snapshot_id.startswith("kb-") and len(kb.snapshot_id) == 19
    assert load_knowledge_base().snapshot_id == kb.snapshot_id
    assert snapshot_id_of(kb.to_canonical()) == kb.snapshot_id


def test_snapshot_ignores_file_layout_and_whitespace(tmp_path, kb):
    """Same content split into other files, reordered and re-indented -> same snapshot id."""
    merged: dict[str, list] = {}
    for rel in reversed(YAML_FILES):
        doc = yaml.safe_load((KB_DIR / rel).read_text(encoding="utf-8"))
        for section, body in doc.items():
            if isinstance(body, list):
                merged.setdefault(section, []).extend(reversed(body))
            else:
                merged.setdefault(section, {}).update(body)
    out = tmp_path / "flat"
    out.mkdir()
    for i, (section, body) in enumerate(sorted(merged.items(), reverse=True)):
        (out / f"{i:02d}_{section}.yml").write_text(
            yaml.safe_dump({section: body}, indent=4, sort_keys=True, allow_unicode=True), encoding="utf-8"
        )
    assert load_knowledge_base(out).snapshot_id == kb.snapshot_id


def test_snapshot_changes_when_a_value_changes(tmp_path, kb):
    work = tmp_path / "kb"
    shutil.copytree(KB_DIR, work)
    p = work / "normative_ranges.yaml"
    p.write_text(p.read_text(encoding="utf-8").replace("mean: 292.6", "mean: 292.7"), encoding="utf-8")
    assert load_knowledge_base(work).snapshot_id != kb.snapshot_id


OVERLAY = {
    "biomarkers": [
        {
            "id": "retinal_vessel_caliber_crae_um",
            "name": "Central retinal arteriolar equivalent",
            "unit": "um",
            "modality": "cfp",
            "region": "zone B around the disc",
            "description": "Knudtson CRAE.",
            "no_normal_range_reason": "tool-specific",
            "sources": ["knudtson2003"],
        }
    ],
    "sources": [
        {
            "id": "my_lab_norms_2024",
            "kind": "dataset",
            "authors": "My lab",
            "year": 2024,
            "title": "Local normative av_ratio sample",
        }
    ],
    "normative_ranges": [
        {
            "id": "av_ratio_local",
            "biomarker": "av_ratio",
            "devices": ["generic"],
            "mean": 0.7,
            "sd": 0.06,
            "derivation": "mean_sd_normal_approximation",
            "population": "local healthy sample",
            "source": "my_lab_norms_2024",
        }
    ],
    "findings": [
        {
            "id": "crae_narrow",
            "kind": "threshold",
            "name": "Narrow CRAE",
            "biomarker": "retinal_vessel_caliber_crae_um",
            "direction": "low",
            "thresholds": [{"grades": [{"grade": 1, "below": 120, "term": "narrow arterioles"}]}],
            "source": "my_lab_norms_2024",
        }
    ],
    "diseases": [
        {
            "id": "retinal_artery_disease",
            "name": "Arteriolar disease",
            "definition": "Test category.",
            "differential": {"supporting": [{"finding": "crae_narrow"}, {"finding": "arteriolar_narrowing"}]},
            "sources": ["my_lab_norms_2024"],
        }
    ],
}


def test_overlay_adds_and_overrides_by_id(tmp_path, kb):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "extra.yaml").write_text(yaml.safe_dump(OVERLAY), encoding="utf-8")
    over = {
        "normative_ranges": [
            dict(
                next(r for r in yaml.safe_load((KB_DIR / "normative_ranges.yaml").read_text())["normative_ranges"]
                     if r["id"] == "sfct_kong2018"),
                mean=300.0,
            )
        ]
    }
    (theirs / "override.yaml").write_text(yaml.safe_dump(over), encoding="utf-8")
    both = load_knowledge_base([KB_DIR, theirs])
    assert "retinal_artery_disease" in both.diseases and "retinal_vessel_caliber_crae_um" in both.biomarkers
    assert both.normative_ranges["sfct_kong2018"].mean == 300.0
    assert any(o["id"] == "sfct_kong2018" for o in both.overrides)
    assert both.snapshot_id != kb.snapshot_id
    # a second av_ratio range beside the bundled engine-scale one: the finding stays evaluable
    assert not any(w.key.startswith("findings[id=arteriolar_narrowing]") for w in both.warnings)
    assert {r.id for r in both.ranges_for("av_ratio")} == {"av_ratio_local", "av_ratio_engine_ukb2024_hrf"}


def test_overlay_alone_fails_with_coverage_errors(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "extra.yaml").write_text(yaml.safe_dump(OVERLAY), encoding="utf-8")
    with pytest.raises(KnowledgeBaseError) as err:
        load_knowledge_base(theirs)
    text = str(err.value)
    assert "required section missing" in text and "canonical biomarker id" in text


# -- broken copies: (file, old text, new text, expected key fragment, expected message fragment) ----------
BREAKS = [
    (
        "biomarkers/oct_extra.yaml",
        "    unit: mm3\n",
        "    unit: cubic_mm\n",
        "biomarkers[id=macular_volume_mm3].unit",
        "not a known unit",
    ),
    (
        "normative_ranges.yaml",
        "    source: kong2018",
        "    source: kong2019",
        "normative_ranges[id=sfct_kong2018].source",
        "not a known source",
    ),
    (
        "findings/oct.yaml",
        "{grade: 2, percentile: 1, term: markedly thinned}",
        "{grade: 2, percentile: 10, term: markedly thinned}",
        "findings[id=central_subfield_thinning]",
        "percentiles must fall",
    ),
    (
        "findings/oct.yaml",
        "grades: [{grade: 1, at_least: 305,",
        "grades: [{grade: 1, at_most: 305,",
        "findings[id=cst_dme_threshold]",
        "direction",
    ),
    (
        "normative_ranges.yaml",
        "    sd: 94.0\n",
        "    sd: -94.0\n",
        "normative_ranges[id=sfct_kong2018].sd",
        "greater than 0",
    ),
    (
        "normative_ranges.yaml",
        "age_band: {min_years: 20, max_years: 91}",
        "age_band: {min_years: 91, max_years: 20}",
        "normative_ranges[id=cst_cirrus_hu2010].age_band",
        "must be below",
    ),
    (
        "diseases/csc.yaml",
        "{finding: choroid_thickened}",
        "{finding: choroid_thick}",
        "diseases[id=csc].differential.supporting[1].finding",
        "not a known finding",
    ),
    (
        "biomarkers/cfp.yaml",
        "    region: optic disc\n    value_kind: position",
        "    regoin: optic disc\n    value_kind: position",
        "biomarkers[id=disc_center_xy_px]",
        "regoin",
    ),
    (
        "cohort/ukbiobank.yaml",
        'field: eye_problem_codes, codes: ["5"]',
        'field: eye_problem_code, codes: ["5"]',
        "cohort_labels[id=amd].evidence[2].field",
        "not in cohort.fields",
    ),
    (
        "sources.yaml",
        "    doi: 10.1136/bjo.86.2.238",
        "    doi: bjo.86.2.238",
        "sources[id=foster2002].doi",
        "pattern",
    ),
    ("kb.yaml", "  schema_version: 1", "  schema_version: 7", "kb.schema_version", "not supported"),
    ("diseases/amd.yaml", "icd10: [H35.3]", "icd10: [H35-3]", "diseases[id=amd].icd10", "ICD-10"),
]


@pytest.mark.parametrize("rel,old,new,key,msg", BREAKS, ids=[b[3] for b in BREAKS])
def test_broken_copy_fails_naming_file_key_and_fix(tmp_path, rel, old, new, key, msg):
    work = tmp_path / "kb"
    shutil.copytree(KB_DIR, work)
    p = work / rel
    text = p.read_text(encoding="utf-8")
    assert old in text, f"test setup: {old!r} not in {rel}"
    p.write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(KnowledgeBaseError) as err:
        load_knowledge_base(work)
    hits = [
        i for i in err.value.issues if i.key.startswith(key) and msg.lower() in (i.message + i.fix).lower()
    ]
    assert hits, "\n".join(map(str, err.value.issues))
    assert all(i.fix for i in err.value.issues)
    assert hits[0].file.endswith(rel.split("/")[-1]) or " + " in hits[0].file


def test_duplicate_id_in_one_folder_is_an_error(tmp_path):
    work = tmp_path / "kb"
    shutil.copytree(KB_DIR, work)
    (work / "dup.yaml").write_text("units:\n  - {id: um, symbol: u, quantity: length}\n", encoding="utf-8")
    with pytest.raises(KnowledgeBaseError, match="duplicate id"):
        load_knowledge_base(work)


def test_invalid_yaml_syntax_names_the_line(tmp_path):
    work = tmp_path / "kb"
    shutil.copytree(KB_DIR, work)
    (work / "bad.yaml").write_text("units:\n  - {id: x, symbol: [\n", encoding="utf-8")
    with pytest.raises(KnowledgeBaseError) as err:
        load_knowledge_base(work)
    assert any(i.file.endswith("bad.yaml") and "line" in i.key for i in err.value.issues)


def test_env_var_selects_the_folder(tmp_path, monkeypatch, kb):
    work = tmp_path / "kb"
    shutil.copytree(KB_DIR, work)
    p = work / "kb.yaml"
    p.write_text(
        p.read_text(encoding="utf-8").replace('version: "0.1.0"', 'version: "9.9.9"'), encoding="utf-8"
    )
    monkeypatch.setenv("GROK_KNOWLEDGE_BASE", str(work))
    mine = load_knowledge_base()
    assert mine.info.version == "9.9.9" and mine.snapshot_id != kb.snapshot_id


def test_cli_kb_validate_ok_and_broken(tmp_path):
    from grok.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["kb", "validate", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["ok"] and out["snapshot_id"].startswith("kb-") and not out["errors"]

    work = tmp_path / "kb"
    shutil.copytree(KB_DIR, work)
    p = work / "normative_ranges.yaml"
    p.write_text(
        p.read_text(encoding="utf-8").replace("source: kong2018", "source: nobody2020"), encoding="utf-8"
    )
    res = runner.invoke(app, ["kb", "validate", str(work)])
    assert res.exit_code == 1
    assert "normative_ranges.yaml" in res.output and "sfct_kong2018" in res.output and "fix:" in res.output

    res = runner.invoke(app, ["kb", "validate", str(tmp_path / "nowhere")])
    assert res.exit_code == 3


def test_docs_overlay_examples_validate(tmp_path, kb):
    """The 'extending without code' examples of docs/knowledge.md load on top of the bundled KB."""
    import re

    doc = (KB_DIR.parent / "docs" / "knowledge.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", doc, flags=re.DOTALL) if b.startswith("# my_kb/")]
    assert len(blocks) >= 2
    mine = tmp_path / "my_kb"
    mine.mkdir()
    for i, b in enumerate(blocks):
        (mine / f"ex{i}.yaml").write_text(b, encoding="utf-8")
    both = load_knowledge_base([KB_DIR, mine])
    assert {"crae_um"} <= set(both.biomarkers) and "mactel" in both.diseases
    from grok.knowledge import reason

    r = reason(
        {
            "biomarkers": {
                "crae_um": 100.0,
                "ez_disruption_fraction": 0.2,
                "macular_thickness_central_um": 200.0,
            },
            "sex": "F",
        },
        both,
    )
    assert r.finding("crae_narrowing").grade == 2 and r.status("mactel") == "supported"


_EXTRA_RANGE = {
    "id": "cst_cirrus_overlapping",
    "biomarker": "macular_thickness_central_um",
    "devices": ["cirrus"],
    "sex": "any",
    "age_band": {"min_years": 60, "max_years": 80},
    "mean": 250.0,
    "sd": 20.0,
    "derivation": "mean_sd_normal_approximation",
    "population": "test",
    "source": "hu2010",
}


@pytest.mark.parametrize(
    "change, key, msg",
    [
        ({}, "normative_ranges[id=cst_cirrus_overlapping].age_band", "overlaps range cst_cirrus_hu2010"),
        ({"source": None}, "normative_ranges[id=cst_cirrus_overlapping]", "source"),
        ({"source": "nobody2099", "age_band": None}, "normative_ranges[id=cst_cirrus_overlapping].source",
         "not a known source"),
        ({"age_band": None, "derived": "shifted by an offset", "derived_sources": ["nobody2099"]},
         "normative_ranges[id=cst_cirrus_overlapping].derived_sources[0]", "not a known source"),
        ({"age_band": None, "derived_sources": ["chalam2012"]}, "normative_ranges[id=cst_cirrus_overlapping]",
         "without 'derived'"),
    ],
    ids=["overlapping_bands", "missing_source", "unknown_source", "unknown_derived_source",
         "derived_sources_without_derived"],
)
def test_bad_range_file_names_file_and_fix(tmp_path, change, key, msg):
    work = tmp_path / "kb"
    shutil.copytree(KB_DIR, work)
    entry = {k: v for k, v in {**_EXTRA_RANGE, **change}.items() if v is not None}
    (work / "my_ranges.yaml").write_text(yaml.safe_dump({"normative_ranges": [entry]}), encoding="utf-8")
    with pytest.raises(KnowledgeBaseError) as err:
        load_knowledge_base(work)
    hits = [i for i in err.value.issues if i.key.startswith(key) and msg.lower() in (i.message + i.fix).lower()]
    assert hits, "\n".join(map(str, err.value.issues))
    assert hits[0].file.endswith("my_ranges.yaml") and hits[0].fix


def test_adjacent_bands_do_not_overlap(tmp_path):
    work = tmp_path / "kb"
    shutil.copytree(KB_DIR, work)
    entry = dict(_EXTRA_RANGE, age_band={"min_years": 91, "max_years": 101})  # hu2010 is [20, 91)
    (work / "my_ranges.yaml").write_text(yaml.safe_dump({"normative_ranges": [entry]}), encoding="utf-8")
    assert "cst_cirrus_overlapping" in load_knowledge_base(work).normative_ranges


def test_every_device_alias_resolves_to_its_own_device(kb):
    for dev_id, dev in kb.devices.items():
        for alias in dev.aliases:
            assert kb.resolve_device(alias) == (dev_id, None), alias
