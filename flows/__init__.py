"""Prefect flows: the build's list of stages (grok.stages) and the training jobs, run by Prefect.

The library never imports Prefect; the CLI (``grok build``, ``grok demo``) and deployments import these.
"""

from __future__ import annotations

import os

#: Quiet, patient Prefect defaults for small machines (the user's environment wins).
PREFECT_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_API_SERVICES_SCHEDULER_ENABLED": "false",
    "PREFECT_API_SERVICES_LATE_RUNS_ENABLED": "false",
    "PREFECT_API_SERVICES_FOREMAN_ENABLED": "false",
    "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
}


def prefect_env() -> None:
    """Set :data:`PREFECT_DEFAULTS` where the environment does not say otherwise (call before running a flow)."""
    for k, v in PREFECT_DEFAULTS.items():
        os.environ.setdefault(k, v)
