"""Template mode: every family renders, rows are deterministic, grounded, verified and exportable."""

from __future__ import annotations

import json

import jinja2
import pytest

from grok.instruct.boxes import NORM, Box, format_box, normalise_box, parse_boxes
from grok.instruct.export import INSTRUCTIONS_SCHEMA, read_rows, to_openai, to_sharegpt
from grok.instruct.families import FAMILIES, Skip, _device_phrase
from grok.instruct.generate import InstructConfig, TemplateGenerator, build_instructions, prepare
from grok.instruct.records import _device_name, build_facts
from grok.instruct.samples import sample_record, sample_records
from grok.instruct.templating import TemplateLibrary, split_messages
from grok.knowledge import load_knowledge_base
from grok.knowledge.lexicon import (
    BIOMARKER_SYNONYMS,
    DISEASE_SYNONYMS,
    DISPLAY_NAMES,
    PRESENCE_ENTITIES,
    build_lexicon,
)
from grok.verify.verifier import Verifier


@pytest.fixture(scope="module")
def kb():
    return load_knowledge_base()


@pytest.fixture(scope="module")
def lex(kb):
    return build_lexicon(kb)


@pytest.fixture(scope="module")
def records(kb):
    return sample_records(16, seed=3, kb=kb)


@pytest.fixture(scope="module")
def gen(lex):
    return TemplateGenerator(TemplateLibrary(), lex, Verifier(lex))


def test_lexicon_names_only_canonical_ids(kb):
    for bid in [*BIOMARKER_SYNONYMS, *DISPLAY_NAMES]:
        assert bid in kb.biomarkers, bid
    for did in DISEASE_SYNONYMS:
        assert did in kb.diseases, did
    for fids in PRESENCE_ENTITIES.values():
        for fid in fids:
            assert fid in kb.findings, fid


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_renders_and_passes_the_verifier(family, records, kb, lex, gen):
    facts, bad = prepare(records, kb, lex)
    assert not bad
    produced = 0
    for f in facts:
        try:
            row = gen.verify(gen.render(f, FAMILIES[family], 0, "t"), f)
        except Skip:
            continue
        produced += 1
        assert row["verifier_passed"], (row["verifier_reasons"], row["messages"])
        assert row["messages"][-1]["role"] == "assistant"
        n_tok = sum(m["content"].count("<image>") for m in row["messages"])
        assert n_tok == len(row["images"]) == len(row["image_roles"])
        text = " ".join(m["content"] for m in row["messages"]).lower()
        for leak in ("label", "data sheet", "json", "provided", "as given"):
            assert leak not in text
    assert produced >= len(facts) // 2


def test_report_is_one_paragraph_within_300_words(records, kb, lex, gen):
    facts, _ = prepare(records, kb, lex)
    for f in facts:
        try:
            row = gen.render(f, FAMILIES["report"], 0, "t")
        except Skip:
            continue
        text = row["messages"][-1]["content"]
        assert "\n" not in text
        assert len(text.split()) <= 300


def test_rendering_is_deterministic_and_seed_dependent(records, kb, lex, gen):
    facts, _ = prepare(records, kb, lex)
    a = [gen.render(f, FAMILIES["report"], 5, "t") for f in facts if f.label_status != "ruled_out"]
    b = [gen.render(f, FAMILIES["report"], 5, "t") for f in facts if f.label_status != "ruled_out"]
    assert [r["messages"] for r in a] == [r["messages"] for r in b]
    assert [r["id"] for r in a] == [r["id"] for r in b]
    c = [gen.render(f, FAMILIES["report"], 6, "t") for f in facts if f.label_status != "ruled_out"]
    assert [r["messages"] for r in a] != [r["messages"] for r in c]  # some phrasing differs with the seed
    assert len({r["id"] for r in a + c}) == len(a) + len(c)


def test_strict_undefined_refuses_missing_values(records, kb, lex):
    lib = TemplateLibrary()
    facts = build_facts(records[0], kb, lex)
    ctx, _, _ = FAMILIES["report"].context(facts, lex, 0)
    del ctx["groups"]
    with pytest.raises(jinja2.UndefinedError):
        lib.render_messages("instruct/report.j2", ctx)


def test_split_messages_layout_errors():
    with pytest.raises(ValueError, match="before the first"):
        split_messages("hello\n@@ user\nhi", "x.j2")
    with pytest.raises(ValueError, match="empty assistant"):
        split_messages("@@ user\nhi\n@@ assistant\n   \n", "x.j2")
    msgs = split_messages("@@ user\n<image>\nline one\nline two\n@@ assistant\nStep 1 a\nStep 2 b", "x.j2")
    assert msgs == [{"role": "user", "content": "<image>\nline one line two"},
                    {"role": "assistant", "content": "Step 1 a\nStep 2 b"}]


def test_label_ruled_out_by_reasoner_is_not_stated(kb, lex, gen):
    rec = sample_record(0, "normal", kb=kb)
    rec["label"] = "diabetic_retinopathy"  # no microaneurysm, haemorrhage or exudate: ruled out
    rec.pop("reasoning")
    facts = build_facts(rec, kb, lex)
    assert facts.label_status == "ruled_out"
    with pytest.raises(Skip, match="ruled out"):
        gen.render(facts, FAMILIES["report"], 0, "t")
    row = gen.verify(gen.render(facts, FAMILIES["biomarker_qa"], 0, "t"), facts)  # no diagnosis stated: allowed
    assert row["verifier_passed"]


def test_build_writes_tables_and_quarantines_bad_records(tmp_path, records, kb):
    bad = {"study_id": "Sbad", "patient_id": "P0000000000000000", "eye": "XX", "label": "amd", "biomarkers": {}}
    unknown = dict(records[0], study_id="Sunknown", label="not_a_disease")
    summary = build_instructions([*records, bad, unknown], tmp_path, InstructConfig(seed=1), kb=kb)
    rows = read_rows(tmp_path / "instructions.parquet")
    q = read_rows(tmp_path / "quarantine.parquet")
    assert summary["rows"] == len(rows) > 0
    assert {r["source_key"] for r in q if r["error_class"] == "bad_record"} == {"Sbad", "Sunknown"}
    assert any("must be 'OD' or 'OS'" in r["reason"] for r in q)
    assert len({r["id"] for r in rows}) == len(rows)
    assert set(rows[0]) == set(INSTRUCTIONS_SCHEMA.names)
    prov = json.loads(rows[0]["provenance"])
    for key in ("source_sha256s", "extractors", "kb_snapshot", "template_id", "template_sha256", "code_version",
                "build_id"):
        assert prov[key], key
    # same inputs and seed -> same table content
    build_instructions([*records, bad, unknown], tmp_path / "again", InstructConfig(seed=1), kb=kb)
    assert read_rows(tmp_path / "again" / "instructions.parquet") == rows


def test_exports(records, kb, lex, gen):
    facts = build_facts(records[1], kb, lex)
    row = gen.render(facts, FAMILIES["multiturn"], 0, "t")
    sg = to_sharegpt(row)
    assert [c["from"] for c in sg["conversations"]][:2] == ["human", "gpt"]
    assert sum(c["value"].count("<image>") for c in sg["conversations"]) == len(sg.get("images", [sg.get("image")]))
    oa = to_openai(row)
    parts = oa["messages"][0]["content"]
    assert [p["type"] for p in parts].count("image_url") == len(row["images"])
    assert [p["image_url"]["url"] for p in parts if p["type"] == "image_url"] == row["images"]


def test_box_convention():
    b = normalise_box([0, 0, 512, 256], [512, 256], "drusen")
    assert (b.x1, b.y1, b.x2, b.y2) == (0, 0, NORM - 1, NORM - 1)
    b = normalise_box([128, 64, 256, 192], [512, 256])
    assert (b.x1, b.y1, b.x2, b.y2) == (250, 250, 500, 750)
    text = format_box(b, "subretinal fluid")
    assert text == "<|object_ref_start|>subretinal fluid<|object_ref_end|><|box_start|>(250,250),(500,750)<|box_end|>"
    parsed, bad = parse_boxes(text + " and <|box_start|>(1,2)<|box_end|>")
    assert parsed == [Box(250, 250, 500, 750, "subretinal fluid")] and bad == 1
    with pytest.raises(ValueError, match="four finite"):
        normalise_box([1, 2, 3], [10, 10])
    with pytest.raises(ValueError, match="width, height"):
        normalise_box([1, 2, 3, 4], [0, 10])


def test_device_is_named_by_its_short_name_and_never_by_an_id():
    """A Spectralis record's text says "on a Spectralis scan"; unknown / unrecognised / generic devices
    are not named at all (never "on a unrecognised scan" or a lower-case id)."""
    kb = load_knowledge_base()
    assert _device_phrase(_device_name("spectralis", kb)) == " on a Spectralis scan"
    assert _device_phrase(_device_name("cirrus", kb)) == " on a Cirrus HD-OCT scan"
    for dev in ("generic", "unrecognised", "unknown", "", None):
        assert _device_phrase(_device_name(dev, kb)) == ""
