"""Publication gates on every generated row: a build whose LLM answers mostly fail verification is
refused with the counts per reason, whatever the verified remainder looks like."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from grok.instruct.accounting import account, pass_rate
from grok.publish import PublishError
from grok.stages.runner import run_stage
from tests.llm_server import Faults, LocalLLMServer
from tests.test_build_shards import copy, ingested, tiny_config  # noqa: F401 (fixtures)


def test_accounting_counts_each_row_once_and_every_reason():
    acc = account([{"task": "report"}] * 3,
                  [{"task": "report", "verifier_reasons": ["wrong_number: CST 400", "diagnosis: says glaucoma"]},
                   {"task": None, "error_class": "bad_input"}],
                  [{"task": "cot", "reason_code": "label_contradicted_by_findings"}])
    t = acc["total"]
    assert (t["generated"], t["passed"], t["quarantined"], t["skipped"]) == (6, 3, 2, 1)
    assert t["quarantined_by_reason"] == {"bad_input": 1, "diagnosis": 1, "wrong_number": 1}
    assert acc["per_family"]["report"]["generated"] == 4 and acc["per_family"]["(study record)"]["quarantined"] == 1
    assert pass_rate(acc) == 0.5
    assert pass_rate(account([], [], [])) is None


def test_a_build_whose_llm_fails_verification_is_refused_at_publication(copy):  # noqa: F811
    """LLM answers with a wrong number 80 % of the time and one attempt each: the verified rows alone would
    pass any contract, but against every generated row the build is far under 90 % and is refused."""
    with LocalLLMServer(Faults(p_wrong_number=0.8), seed=11) as srv:
        cfg = tiny_config(copy, instruct={"mode": "llm", "llm": {
            "base_url": srv.url, "model": "grok-test", "max_attempts": 1, "requests_per_second": 0,
            "send_images": False, "timeout_s": 5}})
        for stage in ("measure", "records", "instruct"):
            run_stage(cfg, stage)
    work = copy / "build"
    q = pq.read_table(work / "instructions_quarantine.parquet").to_pandas()
    wrong = int(sum(any(r.startswith("wrong_number") for r in rs) for rs in q["verifier_reasons"]))
    assert wrong >= 3  # the server's wrong answers were caught by the verifier
    ins = pq.read_table(work / "instructions.parquet").to_pandas()
    assert ins["verifier_passed"].all()  # what a contract over the published rows alone would see: 100 %
    with pytest.raises(PublishError, match=r"passed verification, under publish.verifier_pass_rate = 90%") as err:
        run_stage(cfg, "publish")
    assert f"quarantined wrong_number: {wrong}" in str(err.value)
    assert not (copy / "registry" / "tiny").exists() or not any((copy / "registry" / "tiny").rglob("manifest.json"))
