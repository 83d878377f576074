"""Benchmark the grounding verifier on its adversarial corpus: recall per error type, false rejection per style.

Run as: .venv/bin/python -m benchmarks.verifier [--cases tests/data/verifier_cases.jsonl]
        [--records tests/data/verifier_records.jsonl] [--show-misses] [--against REV]

Prints one JSON object: per error type of the wrong answers the cases, how many the verifier caught
(failed for a reason about content) and the recall, with the reason codes it gave; per writing style
of the right answers the cases, how many it rejected and the false-rejection rate; the overall
figures, the targets of issue 15 (recall >= 0.98 per type, false rejection <= 2 % per style) and
whether they hold; and rows verified per CPU second. The corpus is written by
``scripts/make_verifier_cases.py`` over real records of the project's pipeline (see its docstring).
``--show-misses`` lists every missed or falsely rejected case with the verifier's reasons.
``--against REV`` also scores the verifier of git revision REV on the same corpus and times both on
template-mode rows (400 sample studies, every family, rendered once): alternating, five rounds, each
round starting with empty caches, best round reported, as verified rows per CPU second.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from grok.verify.corpus import DEFAULT_CASES, DEFAULT_RECORDS, ROOT, score_corpus


def verifier_at(rev: str):
    """The ``Verifier`` class of ``grok/verify/verifier.py`` at git revision ``rev``."""
    src = subprocess.run(["git", "show", f"{rev}:grok/verify/verifier.py"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "verifier_at_rev.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("verifier_at_rev", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["verifier_at_rev"] = mod
    spec.loader.exec_module(mod)
    return mod.Verifier


def _clear_caches() -> None:
    from grok.verify import claims, verifier

    for fn in (claims._polarity, claims._stage_modifier, verifier._presence_claim, verifier._turn_phrasing):
        fn.cache_clear()


def speed_against(other_cls, rounds: int = 5) -> dict:
    """Verified template rows per CPU second, this verifier and ``other_cls``, alternating."""
    from grok.instruct.families import FAMILIES, Skip
    from grok.instruct.generate import TemplateGenerator, prepare
    from grok.instruct.samples import sample_records
    from grok.instruct.templating import TemplateLibrary
    from grok.knowledge import load_knowledge_base
    from grok.knowledge.lexicon import build_lexicon
    from grok.verify.verifier import Verifier

    kb = load_knowledge_base()
    lex = build_lexicon(kb)
    facts, _ = prepare(sample_records(400, 0, kb), kb, lex)
    gen = TemplateGenerator(TemplateLibrary(), lex, Verifier(lex))
    rows = []
    for f in facts:
        for fam in FAMILIES.values():
            try:
                rows.append((gen.render(f, fam, 0, "bench"), f))
            except Skip:
                pass
    best = {"this": float("inf"), "against": float("inf")}
    for _ in range(rounds):
        for name, cls in (("against", other_cls), ("this", Verifier)):
            _clear_caches()
            for f in facts:
                f.memo.clear()
            v = cls(lex)
            t = time.process_time()
            for row, f in rows:
                v.verify(row, f)
            best[name] = min(best[name], time.process_time() - t)
    return {"rows": len(rows), "rounds": rounds,
            "rows_per_cpu_s": {k: round(len(rows) / s, 1) for k, s in best.items()}}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=str(DEFAULT_CASES))
    ap.add_argument("--records", default=str(DEFAULT_RECORDS))
    ap.add_argument("--show-misses", action="store_true", help="list missed and falsely rejected cases")
    ap.add_argument("--against", metavar="REV", help="also score and time the verifier of this git revision")
    args = ap.parse_args(argv)
    out = score_corpus(args.cases, args.records)
    if args.against:
        from grok.knowledge.lexicon import build_lexicon

        other = verifier_at(args.against)
        prev = score_corpus(args.cases, args.records, verifier=other(build_lexicon()))
        out["against"] = {"rev": args.against, **{k: v for k, v in prev.items() if k not in ("wrong", "right")},
                          "recall_per_type": {t: v["recall"] for t, v in prev["wrong"].items()},
                          "false_rejection_per_style": {t: v["false_rejection"] for t, v in prev["right"].items()},
                          "template_speed": speed_against(other)}
    if not args.show_misses:
        for v in out["wrong"].values():
            v["missed"] = [m["id"] for m in v["missed"]]
        for v in out["right"].values():
            v["rejected_rows"] = [m["id"] for m in v["rejected_rows"]]
    print(json.dumps(out, indent=2, ensure_ascii=False))
    return out


if __name__ == "__main__":
    main()
