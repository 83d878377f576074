"""Prefect flows: thin wiring over grok.stages (the library never imports Prefect)."""
