"""Moved to :mod:`grok.knowledge.lexicon` (the vocabulary is built from the knowledge base and is read by
study facts below the verifier); this name re-exports it for callers not yet updated."""

from grok.knowledge.lexicon import Lexicon, build_lexicon  # noqa: F401
