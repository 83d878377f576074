"""Score any model on the published benchmark: ``grok eval``.

Run as: grok eval PREDICTIONS.jsonl --dataset NAME@VERSION [--json]

:mod:`grok.eval.data` reads the reference items and a predictions file, :mod:`grok.eval.reader`
reads an answer with the grounding verifier, :mod:`grok.eval.score` computes the deterministic
scores with bootstrap intervals, :mod:`grok.eval.compare` compares two score files and
:mod:`grok.eval.report` writes the static HTML report. See docs/eval.md.
"""
