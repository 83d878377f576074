"""Text style and variety of instruction rows (``grok lint-text``, :mod:`grok.instruct.lint`), the
knowledge-base rules the rows' rule-out sentences rest on, and the spelling setting."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from typer.testing import CliRunner

from grok.cli import app
from grok.instruct.boxes import strip_boxes
from grok.instruct.families import FAMILIES, Skip
from grok.instruct.generate import InstructConfig, TemplateGenerator, build_instructions, prepare
from grok.instruct.lint import _WORD, RULES, HashTally, TextLinter, Variety, _turns, lint_rows, skeleton
from grok.instruct.phrasing import MAX_ALTERNATIVES, americanise
from grok.instruct.records import BiomarkerFact
from grok.instruct.samples import sample_records
from grok.instruct.templating import TemplateLibrary, sentence_groups
from grok.knowledge import load_knowledge_base
from grok.knowledge.lexicon import build_lexicon
from grok.verify.verifier import Verifier


@pytest.fixture(scope="module")
def kb():
    return load_knowledge_base()


@pytest.fixture(scope="module")
def lex(kb):
    return build_lexicon(kb)


def _perturbed(kb, n: int, seed: int) -> list[dict]:
    """Sample records with about half their values scaled (0.5 - 1.6 x) and reasoned about again: many more
    abnormal values, and combinations the sample generator never makes."""
    rng = random.Random(seed)
    out = []
    for r in sample_records(n, seed=seed, kb=kb):
        r = dict(r, study_id=f"{r['study_id']}p{seed}")
        r.pop("reasoning", None)
        r["biomarkers"] = {k: (v * rng.choice([0.5, 0.7, 1.3, 1.6]) if isinstance(v, float) and not k.startswith("disc_")
                               and rng.random() < 0.5 else v) for k, v in r["biomarkers"].items()}
        out.append(r)
    return out


def _rows(kb, lex, records, seed=0, spelling="british"):
    gen = TemplateGenerator(TemplateLibrary(), lex, Verifier(lex), spelling)
    facts, bad = prepare(records, kb, lex)
    assert not bad
    rows = []
    for f in facts:
        for fam in FAMILIES.values():
            try:
                rows.append(gen.verify(gen.render(f, fam, seed, "t"), f))
            except Skip:
                pass
    return rows


@pytest.fixture(scope="module")
def rows(kb, lex):
    return _rows(kb, lex, sample_records(200, seed=0, kb=kb) + _perturbed(kb, 60, 5))


def test_every_opposing_rule_has_a_source(kb):
    """Instruction text states an opposing rule as a clinical claim ("X is less likely given Y"): each
    one needs a source of the bibliography. The assertion lists every rule without one."""
    missing = [f"{did}: differential.opposing {r.finding} (when {r.when})"
               for did, d in kb.diseases.items() for r in d.differential.opposing
               if r.source is None or r.source not in kb.sources]
    assert not missing, "opposing rules without a source (add `source: <id>` from sources.yaml):\n" + "\n".join(missing)


def test_subretinal_fluid_does_not_argue_against_dme(kb):
    """Subretinal fluid occurs in diabetic macular oedema (serous detachment): no rule may say otherwise."""
    assert "srf_present" not in {r.finding for r in kb.diseases["dme"].differential.opposing}


def test_each_rule_catches_the_issues_examples(kb, lex):
    """The sentences issue 21 quotes from the old template text, one rule each."""
    linter = TextLinter(kb, lex)

    def codes(text, label="amd"):
        return {c for c, _ in linter.check_row({"label": label, "messages": [
            {"role": "user", "content": "<image> Report?"}, {"role": "assistant", "content": text}]})}

    assert codes("Central serous chorioretinopathy is less likely given drusen (sub-RPE deposits) and drusen.") \
        == {"repeated_term"}
    assert codes("Diabetic macular oedema is less likely given subretinal fluid.") == {"unsupported_rule"}
    assert codes("Central serous chorioretinopathy is less likely given drusen.") == set()  # sourced rule
    assert codes("The findings support age-related macular degeneration (medium drusen (63-125 µm), large "
                 "drusen).") == {"nested_parens"}
    assert codes("The label says age-related macular degeneration.") == {"label_reveal"}
    assert codes("Glaucoma is unlikely. Diabetic retinopathy is unlikely. Retinal vein occlusion is unlikely. "
                 "Central serous chorioretinopathy is unlikely.") == {"differential_size"}
    assert codes(" ".join(["The central subfield thickness is 300 µm"] + ["and more"] * 20) + ".") == {"long_sentence"}
    assert codes("Age-related macular degeneration with intermediate drusen; no subretinal fluid.") == set()
    assert set(RULES) == {"nested_parens", "repeated_term", "long_sentence", "differential_size", "unsupported_rule",
                          "label_reveal"}


def test_template_rows_verify_and_break_no_rule(rows, kb, lex):
    """Every template row, over 200 sample studies and 60 perturbed ones, passes the verifier and the lint."""
    assert rows and all(r["verifier_passed"] for r in rows), [r["verifier_reasons"] for r in rows
                                                             if not r["verifier_passed"]][:3]
    report = lint_rows(rows, kb, lex)
    assert report["violations_total"] == 0, report["examples"]
    assert report["violations_by_mode"] == {}


def test_variety_targets_per_family(rows, kb, lex):
    """Issue 21: the most common answer skeleton (numbers masked) in at most 30 % of a family's rows, the
    most common question skeleton in at most 25 %."""
    report = lint_rows(rows, kb, lex)
    for fam, v in report["per_family"].items():
        assert v["rows"] >= 100, fam
        assert v["answer_top_share"] <= 0.30, (fam, v)
        assert v["question_top_share"] <= 0.25, (fam, v)
        assert 0 < v["distinct_2"] <= 1
    assert report["targets_met"]


def test_variety_counts_hashes_as_the_texts_would_be_counted(rows, monkeypatch):
    """The variety tallies keep 64-bit hashes, not the skeletons and bigrams: the same distinct counts, top
    shares and distinct-2 as Counters of the texts, with merges forced every few keys."""
    monkeypatch.setattr(HashTally, "MIN_BUFFER", 7)
    for fam in sorted({r["task"] for r in rows}):
        fam_rows = [r for r in rows if r["task"] == fam]
        v = Variety()
        answers, questions, bigrams = Counter(), Counter(), Counter()
        for r in fam_rows:
            v.add(r)
            answer = _turns(r, "assistant")
            answers[skeleton(answer)] += 1
            questions[skeleton(_turns(r, "user"))] += 1
            words = _WORD.findall(strip_boxes(answer).lower())
            bigrams.update(zip(words, words[1:]))
        n = len(fam_rows)
        assert v.result() == {
            "rows": n, "answer_skeletons": len(answers),
            "answer_top_share": round(answers.most_common(1)[0][1] / n, 4),
            "question_skeletons": len(questions),
            "question_top_share": round(questions.most_common(1)[0][1] / n, 4),
            "distinct_2": round(len(bigrams) / sum(bigrams.values()), 4)}, fam
    t = HashTally()
    t.update(["a", "b", "a", "c", "a", "b"] * 5)
    assert (t.distinct(), t.top(), t.total) == (3, 15, 30)
    assert (HashTally().distinct(), HashTally().top()) == (0, 0)


def test_the_differential_names_at_most_three_alternatives_each_with_its_finding(kb, lex):
    gen = TemplateGenerator(TemplateLibrary(), lex, Verifier(lex))
    facts, _ = prepare(sample_records(40, seed=2, kb=kb), kb, lex)
    seen_kinds = set()
    for f in facts:
        for fid in ("report", "cot"):
            fam = FAMILIES[fid]
            try:
                for caps in fam.caps_to_try:  # as TemplateGenerator.render: the first caps whose answer fits
                    ctx, _, _ = fam.context(f, lex, 0, caps=caps)
                    answer = gen.messages(fam.template_id, ctx)[0][-1]["content"]
                    if len(answer.split()) <= fam.max_words:
                        break
            except Skip:
                continue
            alts = ctx["alternatives"]
            assert len(alts) <= MAX_ALTERNATIVES
            assert answer == gen.render(f, fam, 0, "t")["messages"][-1]["content"]
            for d in alts:
                seen_kinds.add(d["kind"])
                assert d["mid"].lower() in answer.lower() or d["name"] in answer
                if d["decider"]:
                    assert d["decider"] in answer, (d["decider"], answer)
    assert {"kept", "normal", "without"} <= seen_kinds


def test_skeletons_mask_numbers_only():
    assert skeleton("CST 262.4 µm (5th percentile 240.2 µm), 3 drusen") == "CST # µm (#th percentile # µm), # drusen"


def test_american_spelling_is_a_setting_that_keeps_old_build_ids(kb, lex):
    records = sample_records(30, seed=1, kb=kb)
    us = _rows(kb, lex, records, spelling="american")
    uk = _rows(kb, lex, records)
    assert all(r["verifier_passed"] for r in us), [r["verifier_reasons"] for r in us if not r["verifier_passed"]][:3]
    text_us = json.dumps([r["messages"] for r in us], ensure_ascii=False)
    text_uk = json.dumps([r["messages"] for r in uk], ensure_ascii=False)
    assert "hemorrhage" in text_us and "haemorrhage" not in text_us and "haemorrhage" in text_uk
    assert americanise("Haemorrhages and centre-involved oedema") == "Hemorrhages and center-involved edema"
    assert [r["id"] for r in us] == [r["id"] for r in uk]
    assert "spelling" not in InstructConfig().key_dump()  # KEY_IF_CHANGED: builds made before it keep their ids
    assert InstructConfig(spelling="american").key_dump()["spelling"] == "american"
    with pytest.raises(ValueError, match="spelling"):
        InstructConfig(spelling="canadian")


def test_phrasing_is_deterministic_per_row_and_seed(kb, lex):
    records = sample_records(20, seed=4, kb=kb)
    a, b, c = _rows(kb, lex, records, seed=3), _rows(kb, lex, records, seed=3), _rows(kb, lex, records, seed=4)
    assert [r["messages"] for r in a] == [r["messages"] for r in b]
    assert sum(x["messages"] != y["messages"] for x, y in zip(a, c)) > len(a) // 2


def test_lint_text_cli(tmp_path, kb):
    build_instructions(sample_records(12, seed=0, kb=kb), tmp_path / "out", InstructConfig(), kb=kb)
    runner = CliRunner()
    res = runner.invoke(app, ["lint-text", str(tmp_path / "out"), "--json", "--report-only"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["rows"] > 0 and report["violations_total"] == 0 and set(report["per_family"]) <= set(FAMILIES)
    assert runner.invoke(app, ["lint-text", str(tmp_path / "nothing")]).exit_code == 3


def _fact(name: str, text: str, low: str, high: str, term: str | None = None) -> BiomarkerFact:
    return BiomarkerFact(id=name.replace(" ", "_"), name=name, value=1.0, unit="um", symbol="µm", text=text,
                         status="high", term=term, low_text=low, high_text=high)


def test_report_lists_never_pair_abnormal_values_into_a_long_sentence():
    """A 49-word "In addition, there is a drusen volume, central 3 mm of ... and a ..." once refused a
    120-study publication (the lint gates template rows). Pairs are formed only when the longest way
    ``_common.j2`` can write them stays within the sentence budget: every phrasing of every group is
    rendered here and counted."""
    short = [_fact("CST", "330 µm", "230 µm", "310 µm"), _fact("AVR", "0.45", "0.52", "0.78")]
    long_ = [_fact("drusen volume, central 3 mm within the ETDRS grid", "0.210 mm³", "0.001 mm³", "0.030 mm³",
                   "at or above the 0.030 mm³ cut-off for large drusen"),
             _fact("subfoveal choroidal thickness under the fovea", "512 µm", "138.2 µm", "447.3 µm",
                   "markedly thickened beyond its normal range")]
    assert sentence_groups(short, first=1) == [short[:1], short[1:]]
    assert sentence_groups(short + short) == [short, short]  # short values still share a sentence
    assert sentence_groups(long_) == [long_[:1], long_[1:]]  # these two would not fit one sentence
    env = TemplateLibrary().env
    macro = env.from_string('{% import "instruct/_common.j2" as c %}In addition, there is '
                            '{{ c.abnormal_list(part, pick, "a ") }}.')
    for items in (short + long_, long_ + short, short + short + long_):
        for part in sentence_groups(items):
            for k in range(3):  # each of reading()'s three phrasings
                text = macro.render(part=part, pick=lambda xs, k=k: xs[k % len(xs)])
                assert len(text.split()) <= 45, text
