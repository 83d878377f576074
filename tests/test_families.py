"""Task families: each class's template, context, skips, LLM rules and declared format, and how a new
family is added (one class, one template, one test: add a case here)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil

import pytest

from grok.instruct.boxes import parse_boxes, strip_boxes
from grok.instruct.families import FAMILIES, SKIP_REASONS, Family, Skip
from grok.instruct.generate import TemplateGenerator, prepare
from grok.instruct.records import build_facts
from grok.instruct.rows import build_row
from grok.instruct.samples import sample_record, sample_records
from grok.instruct.templating import TemplateLibrary, templates_dir
from grok.knowledge import load_knowledge_base
from grok.knowledge.lexicon import build_lexicon
from grok.verify.verifier import Verifier

_STEP = re.compile(r"(?m)^Step (\d+)\b")
_EYE = {"OD": re.compile(r"\bright eye\b|\bOD\b", re.IGNORECASE), "OS": re.compile(r"\bleft eye\b|\bOS\b", re.IGNORECASE)}


@pytest.fixture(scope="module")
def kb():
    return load_knowledge_base()


@pytest.fixture(scope="module")
def lex(kb):
    return build_lexicon(kb)


@pytest.fixture(scope="module")
def gen(lex):
    return TemplateGenerator(TemplateLibrary(), lex, Verifier(lex))


@pytest.fixture(scope="module")
def facts(kb, lex):
    facts, bad = prepare(sample_records(24, seed=3, kb=kb), kb, lex)
    assert not bad
    return facts


def _studies(kb, lex, **change):
    """Facts of one sample study per category, each record changed by ``change`` (a value or a function
    of the record) and reasoned about again."""
    out = []
    for rec in sample_records(9, seed=4, kb=kb):
        for k, v in change.items():
            rec[k] = v(rec) if callable(v) else v
        rec.pop("reasoning")
        out.append(build_facts(rec, kb, lex))
    return out


def test_families_are_registered_by_id_with_their_templates():
    lib = TemplateLibrary()
    assert list(FAMILIES) == ["diagnosis", "report", "cot", "biomarker_qa", "localisation", "multiturn"]
    for fid, fam in FAMILIES.items():
        assert isinstance(fam, Family) and fam.id == fid
        assert fam.template_id == f"instruct/{fid}.j2" and fam.template_id in lib.ids()
        assert fam.variants >= 1 and fam.max_words >= 1 and fam.description
        assert fam.caps_to_try and all(len(c) == 3 for c in fam.caps_to_try)
        assert fam.llm == (fam.llm_rules is not None)
        if fam.llm:  # the model writes one assistant turn: single-turn families without boxes
            assert fam.min_user_turns == 1 and not fam.needs_box


@pytest.mark.parametrize("fid", list(FAMILIES))
def test_rows_keep_the_format_their_family_declares(fid, facts, gen):
    """What a family declares (and the verifier reads) holds for every row its template writes."""
    fam = FAMILIES[fid]
    made = 0
    for f in facts:
        try:
            row = gen.verify(gen.render(f, fam, 0, "t"), f)
        except Skip as exc:
            assert exc.code in SKIP_REASONS
            continue
        made += 1
        assert row["verifier_passed"], row["verifier_reasons"]
        assert row["task"] == fid and row["template_id"] == fam.template_id
        msgs = row["messages"]
        answers = [m["content"] for m in msgs if m["role"] == "assistant"]
        users = [m["content"] for m in msgs if m["role"] == "user"]
        assert sum(len(a.split()) for a in answers) <= fam.max_words
        assert len(users) >= fam.min_user_turns
        if fam.llm:
            assert len(answers) == 1
        if fam.one_paragraph:
            assert len(answers) == 1 and "\n" not in answers[0].strip()
        if fam.numbered_steps:
            steps = [int(s) for s in _STEP.findall(answers[-1])]
            assert len(steps) >= fam.numbered_steps and steps == list(range(1, len(steps) + 1))
        if fam.needs_box:
            assert any(parse_boxes(a)[0] for a in answers)
        if fam.names_eye:
            assert _EYE[f.eye].search(" ".join(answers + users))
        # states_diagnosis: the verifier's own diagnosis reader passed the row above
    assert made >= len(facts) // 2


def _mutate(row, how):
    """``row`` with one format property broken (or left alone where the row does not have it)."""
    msgs = [dict(m) for m in row["messages"]]
    answers = [m for m in msgs if m["role"] == "assistant"]
    if how == "line_break":
        answers[-1]["content"] = answers[-1]["content"].replace(", ", ",\n", 1)
    elif how == "no_steps":
        for m in answers:
            m["content"] = m["content"].replace("Step ", "Stage ")
    elif how == "no_boxes":
        for m in answers:
            m["content"] = strip_boxes(m["content"])
    elif how == "one_turn":
        msgs = [msgs[0], {"role": "assistant", "content": " ".join(m["content"] for m in answers)}]
    elif how == "no_eye":
        for m in msgs:
            m["content"] = re.sub(r"\b(right|left) eye\b", "eye", m["content"])
    return {**row, "messages": msgs}


#: Which format attribute each mutation breaks: the verifier must report ``format`` exactly when it is set.
_BREAKS = {"line_break": lambda fam: fam.one_paragraph, "no_steps": lambda fam: bool(fam.numbered_steps),
           "no_boxes": lambda fam: fam.needs_box, "one_turn": lambda fam: fam.min_user_turns > 1,
           "no_eye": lambda fam: fam.names_eye}


@pytest.mark.parametrize("how", list(_BREAKS))
@pytest.mark.parametrize("fid", list(FAMILIES))
def test_verifier_format_checks_follow_the_family_attributes(fid, how, facts, gen):
    """The verifier's format checks fail a row exactly where its family's attributes say they apply (the
    contract for reading them from the family instead of branching on the family id)."""
    fam = FAMILIES[fid]
    checked = 0
    for f in facts[:8]:
        try:
            row = gen.render(f, fam, 0, "t")
        except Skip:
            continue
        assert gen.verifier.verify(row, f).passed
        bad = _mutate(row, how)
        if bad["messages"] == row["messages"]:
            continue
        checked += 1
        reasons = gen.verifier.verify(bad, f).reasons
        assert any(r.startswith("format:") for r in reasons) == _BREAKS[how](fam), (how, reasons)
    assert checked or not _BREAKS[how](fam)


@pytest.mark.parametrize("fid", list(FAMILIES))
def test_context_is_deterministic_and_names_its_images(fid, facts, lex):
    fam = FAMILIES[fid]
    for f in facts[:6]:
        try:
            a, roles_a, va = fam.context(f, lex, 7)
        except Skip:
            continue
        b, roles_b, vb = fam.context(f, lex, 7)
        assert (roles_a, va) == (roles_b, vb) and 0 <= va < fam.variants
        assert {k: v for k, v in a.items() if k != "pick"} == {k: v for k, v in b.items() if k != "pick"}
        assert roles_a and all(r in f.images for r in roles_a)


def test_a_ruled_out_label_skips_exactly_the_families_that_state_a_diagnosis(kb, lex):
    rec = sample_record(0, "normal", kb=kb)
    rec["label"] = "diabetic_retinopathy"  # no microaneurysm, haemorrhage or exudate: ruled out
    rec.pop("reasoning")
    f = build_facts(rec, kb, lex)
    for fam in FAMILIES.values():
        if fam.states_diagnosis:
            with pytest.raises(Skip) as exc:
                fam.context(f, lex, 0)
            assert exc.value.code == "label_contradicted_by_findings"
        else:
            fam.context(f, lex, 0)


def test_each_skip_reason_comes_from_the_family_that_needs_the_input(kb, lex):
    no_boxes = _studies(kb, lex, lesions=[], biomarkers=lambda r: {
        k: v for k, v in r["biomarkers"].items() if k != "disc_center_xy_px"})
    for f in no_boxes:
        with pytest.raises(Skip, match="no lesion box") as exc:
            FAMILIES["localisation"].context(f, lex, 0)
        assert exc.value.code == "no_localisable_finding"
    for f in _studies(kb, lex, images={}, image_sizes={}, lesions=[]):
        with pytest.raises(Skip) as exc:
            FAMILIES["multiturn"].context(f, lex, 0)
        assert exc.value.code in ("no_usable_image", "label_contradicted_by_findings")
    bare = _studies(kb, lex, biomarkers={})
    for f in bare:
        with pytest.raises(Skip) as exc:
            FAMILIES["biomarker_qa"].context(f, lex, 0)
        assert exc.value.code == "no_interpretable_biomarker"
    with pytest.raises(ValueError, match="add it to SKIP_REASONS"):
        Skip("no_such_reason")


@pytest.mark.parametrize("fid", [f for f, fam in FAMILIES.items() if fam.llm])
def test_llm_prompt_carries_the_family_rules_and_every_measurement(fid, facts, lex):
    fam = FAMILIES[fid]
    lib = TemplateLibrary()
    tpl, _ = lib.get("llm/grok_prompt.j2")
    f = next(x for x in facts if x.label_status != "ruled_out")
    ctx, _, _ = fam.context(f, lex, 0)
    pctx = fam.llm_context(f, ctx, "What is it?")
    assert pctx["task"] == fid and pctx["task_rules"] == fam.llm_rules
    assert len(pctx["measured"]) >= len(ctx.get("measured", []))
    text = tpl.render(pctx)
    assert fam.llm_rules in text and "What is it?" in text
    if fam.one_paragraph:
        assert f"at most {fam.max_words} words" in fam.llm_rules


def test_template_rows_are_unchanged(facts, gen):
    """Refactors must not change a row: ids, messages, images and variants of every family on the sample
    studies are pinned. If you changed a template, a phrasing or the facts on purpose, update the digest
    and say so in the commit (the phantom demo's published fingerprint changes with it)."""
    h = hashlib.sha256()
    for f in facts:
        for fam in FAMILIES.values():
            try:
                row = gen.render(f, fam, 0, "t")
            except Skip as exc:
                h.update(f"{f.study_id}/{fam.id}: {exc.code}\n".encode())
                continue
            variant = json.loads(row["provenance"])["variant"]
            h.update(json.dumps([row["id"], row["messages"], row["images"], row["image_roles"], variant,
                                 row["template_sha256"]], sort_keys=True).encode())
    assert h.hexdigest()[:16] == "0301979ee4bf4090"


@pytest.mark.parametrize("arteriolar,venular", [(1.10, 1.30), (1.25, 1.23), (1.30, 1.10)],
                         ids=["arteriolar-low", "both-normal", "venular-low"])
def test_template_rows_pass_the_verifier_at_every_fractal_dimension_grade(arteriolar, venular, kb, lex, gen):
    """The sample records carry no fractal dimensions; real builds do. A reduced dimension is written
    "reduced arteriolar branching complexity (normal range 1.182 to 1.310)", which the verifier read as the
    AV ratio (the bare alias "arteriolar") and quarantined as a wrong number: a phantom demo build failed
    its publication gate on it."""
    studies = _studies(kb, lex, biomarkers=lambda rec: {**rec["biomarkers"], "arterial_fractal_dimension": arteriolar,
                                                        "venular_fractal_dimension": venular})
    low = {"arterial_fractal_dimension_reduced": arteriolar < 1.2, "venular_fractal_dimension_reduced": venular < 1.2}
    for f in studies:  # the grades the rows must then state (range 1.182-1.310 / 1.185-1.271 on the engine's scale)
        assert {k: f.finding_state.get(k) == "present" for k in low} == low, (f.study_id, f.finding_state)
    failed, rows = [], 0
    for f in studies:
        for fam in FAMILIES.values():
            try:
                row = gen.verify(gen.render(f, fam, 0, "t"), f)
            except Skip:
                continue
            rows += 1
            if not row["verifier_passed"]:
                failed.append((f.study_id, fam.id, row["verifier_reasons"][:2]))
    assert rows > 50 and not failed, failed[:3]


class EyeQuestion(Family):
    """A family written for this test: which eye is shown?"""

    id = "eye_question"
    description = "which eye is this?"
    variants = 2
    max_words = 12

    def fill(self, ctx, facts, lex, rng, caps):
        ctx["answer_eye"] = facts.eye_words
        ctx["images"] = ctx["images"][:1]
        return ctx["images"]


def test_a_new_family_is_one_class_and_one_template(tmp_path, facts, lex):
    root = tmp_path / "templates"
    shutil.copytree(templates_dir(), root)
    (root / "instruct" / "eye_question.j2").write_text(
        "@@ user\n{% for _ in images %}<image>\n{% endfor %}\n"
        "{{ ['Which eye is this?', 'Which eye does this image show?'][v] }}\n"
        "@@ assistant\nThis is the {{ answer_eye }}.\n")
    fam = EyeQuestion()
    assert fam.template_id == "instruct/eye_question.j2" and not fam.llm
    gen = TemplateGenerator(TemplateLibrary(root), lex, Verifier(lex, families={**FAMILIES, fam.id: fam}))
    f = facts[0]
    row = gen.verify(gen.render(f, fam, 0, "t"), f)
    assert row["verifier_passed"], row["verifier_reasons"]
    assert row["task"] == "eye_question" and row["messages"][-1]["content"] == f"This is the {f.eye_words}."
    assert row["image_roles"] == ["cfp"] and row["images"] == [f.images["cfp"]]
    variant = json.loads(row["provenance"])["variant"]
    _, roles, _ = fam.context(f, lex, 0)
    again = build_row(f, fam.id, variant=variant, seed=0, messages=row["messages"], roles=roles, mode="template",
                      template=gen.lib.get(fam.template_id)[1], build_id="t")
    assert again == {k: v for k, v in row.items() if not k.startswith("verifier_")}
