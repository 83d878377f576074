"""``grok-train`` CLI: align / sft / predict / merge end to end on a local dataset folder, and exit codes."""

from __future__ import annotations

import json

import pytest

from grok_train._compat import guard_torchvision

guard_torchvision()  # hide a broken torchvision before transformers / peft are imported
pytest.importorskip("torch")
pytest.importorskip("peft")
import typer
from typer.testing import CliRunner

from grok_train.cli import app, register
from tests.train_fixtures import make_alignment_dataset, make_instruction_dataset, write_dataset_folder

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset_folder(tmp_path_factory.mktemp("cli_ds"), {
        "alignment": {"train": make_alignment_dataset(64, seed=1, size_px=32),
                      "validation": make_alignment_dataset(16, seed=2, size_px=32)},
        "instructions": {"train": make_instruction_dataset(4, seed=3)},
        "benchmark": {"test": make_instruction_dataset(2, seed=4)},
    }, name="phantom-cli", version="0.9.0")


def _json(result):
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_align_smoke_config_runs_from_the_cli(dataset, tmp_path):
    res = runner.invoke(app, ["align", "--config", "align_cpu_smoke.yaml", "--dataset-path", str(dataset),
                              "-o", str(tmp_path / "align"), "--max-steps", "4", "--set", "image_size_px=32",
                              "--json", "-q"])
    out = _json(res)
    assert out["steps"] == 4 and out["dataset"]["version"] == "0.9.0"
    assert out["final"]["chance_r5"] == pytest.approx(5 / 16)
    assert (tmp_path / "align" / "metrics.json").is_file()


def test_sft_then_predict_then_merge_from_the_cli(dataset, tmp_path):
    run = tmp_path / "sft"
    out = _json(runner.invoke(app, ["sft", "--config", "sft_cpu_smoke.yaml", "--dataset-path", str(dataset),
                                    "-o", str(run), "--max-steps", "2", "--set", "batch_size=2",
                                    "--set", "model.image_max_pixels=3136", "--json", "-q"]))
    assert out["steps"] == 2 and out["dataset"]["name"] == "phantom-cli"
    preds = tmp_path / "preds.jsonl"
    res = _json(runner.invoke(app, ["predict", "--checkpoint", str(run), "--dataset-path", str(dataset),
                                    "--output", str(preds), "--max-new-tokens", "2", "--json", "-q"]))
    assert res["rows"] == 2 and len(preds.read_text().splitlines()) == 2
    merged = _json(runner.invoke(app, ["merge", "--checkpoint", str(run), "--output", str(tmp_path / "m"),
                                       "--json", "-q"]))
    assert merged["dataset"]["version"] == "0.9.0" and (tmp_path / "m" / "config.json").is_file()


@pytest.mark.parametrize("argv, code, message", [
    (["sft", "--config", "sft_cpu_smoke.yaml", "--set", "lora.r=0"], 2, "lora.r"),
    (["sft", "--config", "sft_cpu_smoke.yaml"], 2, "--dataset NAME@VERSION"),
    (["align", "--config", "align_cpu_smoke.yaml", "--dataset-path", "/nonexistent/ds"], 3, "not a dataset folder"),
    (["sft", "--config", "sft_cpu_smoke.yaml", "--dataset-path", "{ds}", "--resume", "/no/ckpt"], 3, "resume_from"),
    (["predict", "--checkpoint", "/no/run", "--dataset-path", "{ds}"], 3, "does not exist"),
    (["merge", "--checkpoint", "/no/run", "--output", "/tmp/x"], 3, "does not exist"),
    (["sft", "--config", "/no/such.yaml"], 2, "not found"),
])
def test_bad_input_exit_codes(dataset, argv, code, message):
    res = runner.invoke(app, [a.replace("{ds}", str(dataset)) for a in argv] + ["-q"])
    assert res.exit_code == code, (res.stdout, res.stderr)
    assert message in res.stderr
    assert res.stdout == ""


def test_register_mounts_the_commands_as_grok_train():
    parent = typer.Typer()

    @parent.command()
    def other() -> None:  # a second command so Typer keeps sub-command routing
        """placeholder"""

    register(parent)
    res = runner.invoke(parent, ["train", "--help"])
    assert res.exit_code == 0
    for cmd in ("align", "sft", "predict", "merge"):
        assert cmd in res.stdout


def test_align_pulls_a_version_published_with_grok_registry(tmp_path):
    registry = pytest.importorskip("grok.registry")
    reg = str(tmp_path / "registry")
    info = registry.publish({"alignment": {"train": make_alignment_dataset(16, seed=1, size_px=32),
                                           "validation": make_alignment_dataset(8, seed=2, size_px=32)}},
                            "phantom-train", version="0.1.0", registry=reg)
    common = ["align", "-c", "align_cpu_smoke.yaml", "--registry", reg, "-o", str(tmp_path / "out"),
              "--max-steps", "2", "--set", "image_size_px=32", "--set", "batch_size=8", "-q"]
    out = _json(runner.invoke(app, [*common, "--dataset", "phantom-train@0.1.0", "--json"]))
    assert (out["dataset"]["name"], out["dataset"]["version"]) == ("phantom-train", "0.1.0")
    assert out["dataset"]["fingerprint"] == info["fingerprint"] and out["dataset"]["source"] == "registry"
    missing = runner.invoke(app, [*common, "--dataset", "phantom-train@0.2.0"])
    assert missing.exit_code == 3 and "0.2.0" in missing.stderr and "0.1.0" in missing.stderr
