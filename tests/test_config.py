"""One config system: the build config, its sections and the models it nests; the hashed content of a build.

The build id (and so every row's provenance and the published fingerprint) hashes the config sections
that shape the data. These tests pin that hashed content for the phantom demo, so a refactor of the
config models cannot change the demo's published fingerprint unnoticed.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import yaml

from flows.demo import demo_config
from grok.config import ConfigError
from grok.instruct.generate import InstructConfig
from grok.instruct.llm import LLMConfig, RateLimiter
from grok.stages.config import BuildConfig, json_schema, load_config
from grok.stages.folder import BuildFolder
from grok.stages.instruct_stage import Instruct, instruct_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))

#: build id before ingestion (config sections only) of configs/phantom_demo.yaml and of grok demo's config,
#: as computed before the config models were unified (commit acc3142)
DEMO_CONFIG_BUILD_ID = "2e049dc59b696c94"


def test_demo_build_id_is_unchanged(tmp_path):
    from_file = load_config(ROOT / "configs" / "phantom_demo.yaml")
    from_file.work_dir = str(tmp_path / "a")  # no manifest there: the id hashes the config sections alone
    assert BuildFolder(from_file).build_id() == DEMO_CONFIG_BUILD_ID
    demo = BuildConfig.model_validate(demo_config(tmp_path / "b"))
    assert BuildFolder(demo).build_id() == DEMO_CONFIG_BUILD_ID
    # through the flow's JSON round trip (build_dataset takes the config as a JSON parameter)
    again = BuildConfig.model_validate(json.loads(json.dumps(demo.model_dump(mode="json"))))
    assert BuildFolder(again).build_id() == DEMO_CONFIG_BUILD_ID


def test_settings_added_later_change_the_build_id_only_when_used(tmp_path):
    base = demo_config(tmp_path)
    ids = set()
    for instruct in ({}, {"tolerance": 0.2}, {"llm": {"top_p": 0.9}}, {"tasks": ["report"]}, {"llm_parallel_shards": 3}):
        cfg = BuildConfig.model_validate({**base, "instruct": {**base["instruct"], **instruct}})
        ids.add(BuildFolder(cfg).build_id())
    assert len(ids) == 4  # tolerance, top_p and tasks shape rows; how many LLM shards run at once does not


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_build_configs_load_and_match_the_schema(path):
    load_config(path)
    schema = json.loads((ROOT / "configs" / "build.schema.json").read_text())
    jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    assert path.read_text().startswith("# yaml-language-server: $schema=build.schema.json")


def test_schema_file_is_up_to_date():
    committed = (ROOT / "configs" / "build.schema.json").read_text()
    assert committed == json_schema(), "regenerate it: grok build --schema > configs/build.schema.json"


def test_schema_catches_what_the_loader_refuses(tmp_path):
    schema = json.loads(json_schema())
    raw = yaml.safe_load((ROOT / "configs" / "phantom_demo.yaml").read_text())
    raw["instruct"]["llm"] = {"temprature": 0.3}
    with pytest.raises(jsonschema.ValidationError, match="temprature"):
        jsonschema.validate(raw, schema)
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"instruct\.llm\.temprature: unknown key .*valid keys here: .*temperature"):
        load_config(p)


def test_cli_schema_command():
    out = subprocess.run([sys.executable, "-m", "grok", "build", "--schema"], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert out == json_schema()


def test_one_llm_settings_model_with_one_set_of_defaults(tmp_path):
    cfg = BuildConfig.model_validate(demo_config(tmp_path))
    assert isinstance(cfg.instruct, InstructConfig) and type(cfg.instruct.llm) is LLMConfig
    assert cfg.instruct.llm == LLMConfig() == InstructConfig().llm
    # the same YAML mapping gives the same settings to `grok instruct --llm-config` and to a build
    llm = {"base_url": "http://gpu:8000/v1", "model": "m", "temperature": 0.3, "send_images": False}
    (tmp_path / "llm.yaml").write_text(yaml.safe_dump(llm))
    build = BuildConfig.model_validate({**demo_config(tmp_path), "instruct": {"mode": "llm", "llm": llm}})
    assert LLMConfig.from_file(tmp_path / "llm.yaml") == build.instruct.llm


def test_one_config_error():
    import grok.stages.config
    import grok_train.errors

    assert grok_train.errors.ConfigError is grok.stages.config.ConfigError is ConfigError
    with pytest.raises(ConfigError, match="concurrency"):
        LLMConfig.parse({"concurrency": 0})
    with pytest.raises(ConfigError, match="tasks"):
        InstructConfig.parse({"tasks": ["poems"]})


def test_build_refuses_what_it_sets_itself(tmp_path):
    with pytest.raises(ConfigError, match=r"instruct\.llm: .*remove instruct\.llm\.image_root"):
        BuildConfig.parse({**demo_config(tmp_path), "instruct": {"llm": {"image_root": "/x"}}})
    with pytest.raises(ConfigError, match=r"instruct\.build_id: .*remove instruct\.build_id"):
        BuildConfig.parse({**demo_config(tmp_path), "instruct": {"build_id": "mine"}})


def _llm_folder(tmp_path, rps: float, parallel: int) -> BuildFolder:
    cfg = BuildConfig.model_validate({**demo_config(tmp_path), "instruct": {
        "mode": "llm", "shard_size": 2, "llm_parallel_shards": parallel, "llm": {"requests_per_second": rps}}})
    return BuildFolder(cfg)


def test_llm_shards_share_the_build_rate(tmp_path):
    folder = _llm_folder(tmp_path, rps=8.0, parallel=4)
    assert Instruct().limit(folder) == ("grok-llm", 4)
    assert instruct_config(folder, shards=10).llm.requests_per_second == 2.0   # 4 run at once
    assert instruct_config(folder, shards=2).llm.requests_per_second == 4.0    # only 2 exist
    one = instruct_config(folder, shards=1)
    assert one.llm.requests_per_second == 8.0 and one.llm.image_root == str(folder.root)
    assert one.build_id == folder.build_id() and folder.cfg.instruct.llm.requests_per_second == 8.0
    unlimited = instruct_config(_llm_folder(tmp_path / "u", rps=0, parallel=4), shards=10)
    assert unlimited.llm.requests_per_second == 0


def test_parallel_llm_shards_stay_under_the_global_rate(tmp_path):
    rps, parallel, per_shard = 20.0, 4, 5
    folder = _llm_folder(tmp_path, rps=rps, parallel=parallel)
    limiters = [RateLimiter(instruct_config(folder, shards=parallel).llm.requests_per_second) for _ in range(parallel)]

    async def shard(lim: RateLimiter) -> None:
        for _ in range(per_shard):
            await lim.acquire()

    async def run() -> float:
        t0 = time.monotonic()
        await asyncio.gather(*(shard(lim) for lim in limiters))
        return time.monotonic() - t0

    elapsed = asyncio.run(run())
    # every shard starts at once, then the requests are spaced: the steady rate is what counts
    assert (parallel * per_shard - parallel) / elapsed <= rps * 1.1


def test_train_configs_import_no_orchestration():
    code = ("import sys, grok_train.config, grok_train.errors; "
            "bad = [m for m in ('prefect', 'great_expectations') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_flow_sets_the_llm_shard_limit_from_the_config(tmp_path):
    """The Prefect flow creates (or updates) the grok-llm global concurrency limit to the config's
    llm_parallel_shards before the shards start, so the rate split above holds across workers."""
    code = f"""
import json
from flows import prefect_env
prefect_env()
from prefect import flow
from prefect.client.orchestration import get_client
from flows.build import set_concurrency_limit
from flows.demo import demo_config
from grok.stages.config import BuildConfig
from grok.stages.folder import BuildFolder
from grok.stages.instruct_stage import Instruct

@flow
def check():
    out = []
    for parallel in (3, 2):
        cfg = BuildConfig.model_validate({{**demo_config({str(tmp_path)!r}), "instruct": {{
            "mode": "llm", "llm_parallel_shards": parallel}}}})
        set_concurrency_limit(*Instruct().limit(BuildFolder(cfg)))
        with get_client(sync_client=True) as client:
            out.append(client.read_global_concurrency_limit_by_name("grok-llm").limit)
    return out

print(json.dumps(check()))
"""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, check=False,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [3, 2]
