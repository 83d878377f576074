"""One config system: the build config, its sections and the models it nests; the hashed content of a build.

The build id (and so every row's provenance and the published fingerprint) hashes the config sections
that shape the data. These tests pin that hashed content for the phantom demo, so a refactor of the
config models cannot change the demo's published fingerprint unnoticed.
"""

from __future__ import annotations

from pathlib import Path

from grok.demo import demo_config
from grok.stages.config import BuildConfig, load_config
from grok.stages.folder import BuildFolder

ROOT = Path(__file__).resolve().parents[1]

#: build id before ingestion (config sections only) of configs/phantom_demo.yaml and of grok demo's config,
#: as computed before the config models were unified (commit acc3142)
DEMO_CONFIG_BUILD_ID = "2e049dc59b696c94"


def test_demo_build_id_is_unchanged(tmp_path):
    from_file = load_config(ROOT / "configs" / "phantom_demo.yaml")
    from_file.work_dir = str(tmp_path / "a")  # no manifest there: the id hashes the config sections alone
    assert BuildFolder(from_file).build_id() == DEMO_CONFIG_BUILD_ID
    demo = BuildConfig.model_validate(demo_config(tmp_path / "b"))
    assert BuildFolder(demo).build_id() == DEMO_CONFIG_BUILD_ID
