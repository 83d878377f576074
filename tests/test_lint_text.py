"""Text style and variety of instruction rows (``grok lint-text``, :mod:`grok.instruct.lint`), and the
knowledge-base rules the rows' rule-out sentences rest on."""

from __future__ import annotations

from grok.knowledge import load_knowledge_base


def test_every_opposing_rule_has_a_source():
    """Instruction text states an opposing rule as a clinical claim ("X is less likely given Y"): each
    one needs a source of the bibliography. The assertion lists every rule without one."""
    kb = load_knowledge_base()
    missing = [f"{did}: differential.opposing {r.finding} (when {r.when})"
               for did, d in kb.diseases.items() for r in d.differential.opposing
               if r.source is None or r.source not in kb.sources]
    assert not missing, "opposing rules without a source (add `source: <id>` from sources.yaml):\n" + "\n".join(missing)


def test_subretinal_fluid_does_not_argue_against_dme():
    """Subretinal fluid occurs in diabetic macular oedema (serous detachment): no rule may say otherwise."""
    kb = load_knowledge_base()
    assert "srf_present" not in {r.finding for r in kb.diseases["dme"].differential.opposing}
