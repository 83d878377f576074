"""Prefect flows: thin wiring over grok.build (the library never imports Prefect)."""
