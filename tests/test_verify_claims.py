"""The verifier's claims (``Verifier.verify(..., claims=True)``): what each number, term and name of an answer
was checked against, at the turn's own character offsets, and whether it held. Review tools link and flag the
text from them (grok review's row page), so they must agree with the verdict exactly."""

from __future__ import annotations

import re

import pytest

from grok.instruct.records import build_facts
from grok.knowledge import load_knowledge_base
from grok.knowledge.lexicon import build_lexicon
from grok.review.highlight import render
from grok.verify.corpus import DEFAULT_CASES, DEFAULT_RECORDS, read_jsonl
from grok.verify.verifier import Verifier, VerifyConfig

NUMBER_ERRORS = ("unitless_wrong_number", "off_by_more_than_10pct", "wrong_unit", "other_eye_number")


@pytest.fixture(scope="module")
def corpus():
    kb = load_knowledge_base()
    lex = build_lexicon(kb)
    records = {str(r["study_id"]): r for r in read_jsonl(DEFAULT_RECORDS)}
    facts = {sid: build_facts(r, kb, lex) for sid, r in records.items()}
    return Verifier(lex, VerifyConfig()), lex, read_jsonl(DEFAULT_CASES), facts


def test_claims_do_not_change_the_verdict_and_explain_it(corpus):
    verifier, _lex, cases, facts = corpus
    for case in cases:
        plain = verifier.verify(case, facts[case["study_id"]])
        full = verifier.verify(case, facts[case["study_id"]], claims=True)
        assert plain.claims is None and full.claims is not None
        assert (plain.passed, plain.score, plain.reasons, plain.checks) == \
               (full.passed, full.score, full.reasons, full.checks), case["id"]
        unmatched = {c["reason"] for c in full.claims if c["status"] == "unmatched"}
        assert unmatched <= set(full.reasons), case["id"]
        for c in full.claims:
            text = case["messages"][c["turn"]]["content"][c["start"]:c["end"]]
            assert text.strip() == text and text, (case["id"], c)
            if c["kind"] == "number":
                assert re.search(r"\d|[a-z]", text.lower()), (case["id"], text)


def test_every_planted_wrong_number_is_an_unmatched_number_claim_on_its_biomarker(corpus):
    verifier, _lex, cases, facts = corpus
    planted = [c for c in cases if c["kind"] == "wrong" and c["type"] in NUMBER_ERRORS]
    assert len(planted) == 4 * 28
    for case in planted:
        res = verifier.verify(case, facts[case["study_id"]], claims=True)
        bad = [c for c in res.claims if c["kind"] == "number" and c["status"] == "unmatched"]
        assert bad, case["id"]
        biomarker = case["why"].split(" ", 1)[0]  # "<biomarker id> written as ..."
        if case["type"] != "other_eye_number" and re.fullmatch(r"[a-z0-9_]+", biomarker):
            assert any(f"bm-{biomarker}" in c["refs"] for c in bad), (case["id"], bad)


def test_offsets_are_the_turns_own_when_the_answer_holds_boxes(corpus):
    verifier, _lex, cases, facts = corpus
    case = next(c for c in cases if c["kind"] == "wrong" and c["type"] == "unitless_wrong_number")
    turn = next(i for i, m in enumerate(case["messages"]) if m["role"] == "assistant")
    box = "<|object_ref_start|>drusen<|object_ref_end|><|box_start|>(100,200),(300,400)<|box_end|> "
    boxed = {**case, "messages": [dict(m) for m in case["messages"]]}
    boxed["messages"][turn]["content"] = box + case["messages"][turn]["content"]
    plain = [c for c in verifier.verify(case, facts[case["study_id"]], claims=True).claims if c["turn"] == turn]
    moved = [c for c in verifier.verify(boxed, facts[case["study_id"]], claims=True).claims if c["turn"] == turn]
    assert plain and [(c["kind"], c["status"]) for c in moved] == [(c["kind"], c["status"]) for c in plain]
    for a, b in zip(plain, moved):
        assert (b["start"], b["end"]) == (a["start"] + len(box), a["end"] + len(box))


def test_the_row_page_text_links_and_flags_what_the_verifier_read(corpus):
    verifier, lex, cases, facts = corpus
    case = next(c for c in cases if c["kind"] == "wrong" and c["type"] == "unitless_wrong_number")
    res = verifier.verify(case, facts[case["study_id"]], claims=True)
    bad = next(c for c in res.claims if c["kind"] == "number" and c["status"] == "unmatched")
    turn = case["messages"][bad["turn"]]["content"]
    written = turn[bad["start"]:bad["end"]]
    html = str(render(turn, lex, res.reasons, None, [c for c in res.claims if c["turn"] == bad["turn"]]))
    flagged = re.findall(r'<a class="hl num bad" href="#([^"]+)"[^>]*title="([^"]+)">([^<]+)</a>', html)
    assert (bad["refs"][0], bad["reason"].replace("'", "&#x27;"), written) in [
        (ref, title, text) for ref, title, text in flagged]
    # a number the verifier accepted is linked, not flagged
    good = [c for c in res.claims if c["kind"] == "number" and c["status"] == "matched" and c["turn"] == bad["turn"]]
    for c in good:
        assert f'>{turn[c["start"]:c["end"]]}</' in html
    assert html.count("hl num bad") == sum(1 for c in res.claims if c["turn"] == bad["turn"]
                                           and c["kind"] == "number" and c["status"] == "unmatched")
