"""``grok-train push``: a trained adapter (or checkpoint) goes to a Hub repo with a fresh model card, safetensors
weights and provenance, and nothing from the training machine (paths, pickles, run records). Tested against the
local folder target (no network)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from grok_train._compat import guard_torchvision

guard_torchvision()
pytest.importorskip("torch")
pytest.importorskip("peft")
from huggingface_hub import ModelCard
from typer.testing import CliRunner

from grok_train.cli import app
from grok_train.config import SFTConfig, config_from_dict
from grok_train.errors import BadInputError, CheckpointNotFoundError, ConfigError
from grok_train.model_card import EVAL_FILE
from grok_train.push import PROVENANCE_FILE, check_repo_id, push_model
from tests.train_fixtures import make_instruction_dataset, write_dataset_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from grok_train.sft import run_sft

    root = tmp_path_factory.mktemp("push")
    ds = write_dataset_folder(root / "ds", {"instructions": {"train": make_instruction_dataset(4, seed=3)},
                                            "benchmark": {"test": make_instruction_dataset(2, seed=4)}},
                              name="phantom-push", version="0.4.2", fingerprint="fp-push-042")
    cfg = config_from_dict(SFTConfig, {
        "data": {"dataset_path": str(ds), "config": "instructions", "val_split": None},
        "model": {"tiny": {}, "image_max_pixels": 56 * 56}, "lora": {"r": 4, "alpha": 8, "dropout": 0.05},
        "output_dir": str(root / "run"), "max_steps": 2, "batch_size": 2, "grad_accum": 1, "lr": 5e-3,
        "max_length": 256, "precision": "fp32", "gradient_checkpointing": False, "device": "cpu",
        "save_every_steps": 1})
    run_sft(cfg)
    return root / "run"


def _texts(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text(errors="replace") for p in folder.iterdir() if p.suffix != ".safetensors"}


def test_push_writes_the_repo_a_hub_reader_needs(run, tmp_path):
    res = push_model(run, "my-lab/grok-qwen2vl-lora", to_folder=tmp_path / "hub", tag="phantom-push-0.4.2")
    repo = tmp_path / "hub" / "my-lab" / "grok-qwen2vl-lora"
    assert res.target == "folder" and Path(res.location) == repo and res.kind == "adapter"
    pushed = sorted(p.name for p in repo.iterdir())
    assert pushed == sorted(res.files)
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors", PROVENANCE_FILE} <= set(pushed)
    # the weights are the run's, byte for byte
    assert (repo / "adapter_model.safetensors").read_bytes() == (run / "final" / "adapter_model.safetensors").read_bytes()
    # nothing from the training machine: no run folder, dataset folder or temp path in any pushed file
    for name, text in _texts(repo).items():
        assert str(run) not in text and str(run.parent) not in text, name
    assert not Path(json.loads((repo / "adapter_config.json").read_text())["base_model_name_or_path"]).is_absolute()
    assert "meta.json" in res.excluded and "meta.json" not in pushed
    prov = json.loads((repo / PROVENANCE_FILE).read_text())
    assert prov["dataset"] == {"name": "phantom-push", "version": "0.4.2", "fingerprint": "fp-push-042"}
    assert prov["step"] == 2 and "path" not in json.dumps(prov)
    card = ModelCard.load(repo / "README.md")
    assert "phantom-push@0.4.2" in card.text and "fp-push-042" in card.text
    assert "[More Information Needed]" not in card.content and "not a medical device" in card.text
    assert "Not evaluated yet" in card.text
    log = [json.loads(line) for line in (repo.parent / "grok-qwen2vl-lora.pushes.jsonl").read_text().splitlines()]
    assert log[-1]["tag"] == "phantom-push-0.4.2" and "phantom-push@0.4.2" in log[-1]["message"]


def test_a_later_push_carries_the_evaluation_and_replaces_the_files(run, tmp_path):
    hub = tmp_path / "hub"
    push_model(run, "my-lab/m", to_folder=hub)
    stale = hub / "my-lab" / "m" / "stale.json"
    stale.write_text("{}")
    (run / EVAL_FILE).parent.mkdir(exist_ok=True)
    (run / EVAL_FILE).write_text(json.dumps({"dataset": "phantom-push@0.4.2", "overall": {
        "n": 2, "classification": {"macro_f1": 0.25, "accuracy": 0.5}, "quantitative": {"mean": 0.4}}}))
    try:
        push_model(run, "my-lab/m", to_folder=hub)
    finally:
        (run / EVAL_FILE).unlink()
    card = (hub / "my-lab" / "m" / "README.md").read_text()
    assert "diagnosis macro f1: 0.250" in card and "Not evaluated yet" not in card
    assert not stale.exists()  # the folder is the repo after the new commit, not a union
    assert len((hub / "my-lab" / "m.pushes.jsonl").read_text().splitlines()) == 2


def test_a_checkpoint_pushes_its_adapter_with_its_step(run, tmp_path):
    res = push_model(run / "checkpoints" / "step-000001", "my-lab/ck", to_folder=tmp_path)
    prov = json.loads((tmp_path / "my-lab" / "ck" / PROVENANCE_FILE).read_text())
    assert prov["step"] == 1 and "adapter_model.safetensors" in res.files


def test_bad_input_is_refused_before_anything_is_written(run, tmp_path):
    for bad in ("no-slash", "a/b/c", "../etc", "org/name.git", ""):
        with pytest.raises(ConfigError, match="--hub-repo"):
            check_repo_id(bad)
    with pytest.raises(CheckpointNotFoundError):
        push_model(tmp_path / "nothing", "my-lab/m", to_folder=tmp_path / "hub")
    # a pickled weight file in the adapter folder stops the push, naming the file
    poisoned = tmp_path / "poisoned"
    shutil.copytree(run, poisoned, ignore=shutil.ignore_patterns("checkpoints", "base_model"))
    (poisoned / "final" / "extra_weights.bin").write_bytes(b"\x80\x04.")
    with pytest.raises(BadInputError, match="extra_weights.bin"):
        push_model(poisoned, "my-lab/m", to_folder=tmp_path / "hub")
    # a local path left in a config file stops it too (and names the file)
    (poisoned / "final" / "extra_weights.bin").unlink()
    cfg = poisoned / "final" / "preprocessor_config.json"
    data = json.loads(cfg.read_text())
    data["processor_source"] = str(tmp_path / "somewhere" / "else")
    cfg.write_text(json.dumps(data))
    with pytest.raises(BadInputError, match="preprocessor_config.json"):
        push_model(poisoned, "my-lab/m", to_folder=tmp_path / "hub")
    assert not (tmp_path / "hub").exists()


def test_cli_push_to_folder_json_and_exit_codes(run, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["push", "--checkpoint", str(run), "--hub-repo", "my-lab/cli", "--to-folder",
                              str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["repo"] == "my-lab/cli" and (tmp_path / "my-lab" / "cli" / "README.md").is_file()
    bad = runner.invoke(app, ["push", "--checkpoint", str(run), "--hub-repo", "not a repo", "--to-folder",
                              str(tmp_path)])
    assert bad.exit_code == 2 and "--hub-repo" in bad.output
    missing = runner.invoke(app, ["push", "--checkpoint", str(tmp_path / "none"), "--hub-repo", "my-lab/x",
                                  "--to-folder", str(tmp_path)])
    assert missing.exit_code == 3
