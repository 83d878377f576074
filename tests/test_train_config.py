"""Every shipped training config loads; validation names the field to fix; overrides work."""

from __future__ import annotations

import pytest

from grok_train.config import CONFIG_DIR, AlignConfig, SFTConfig, config_from_dict, load_config
from grok_train.errors import ConfigError

SHIPPED = sorted(CONFIG_DIR.glob("*.yaml"))


def _cls(path):
    return AlignConfig if path.name.startswith("align") else SFTConfig


def test_the_four_configs_are_shipped():
    assert {p.name for p in SHIPPED} >= {"align_cpu_smoke.yaml", "align_gpu.yaml", "sft_cpu_smoke.yaml",
                                         "sft_gpu.yaml"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_loads(path):
    cfg = load_config(_cls(path), path)
    assert cfg.output_dir.startswith("runs/")
    assert load_config(_cls(path), path.name) == cfg  # bare names resolve to the shipped folder


def test_gpu_configs_carry_the_grok_recipe():
    sft = load_config(SFTConfig, CONFIG_DIR / "sft_gpu.yaml")
    assert (sft.lora.r, sft.lora.alpha, sft.lora.dropout, sft.lora.target_modules) == (128, 256, 0.05, "all-linear-llm")
    assert (sft.lr, sft.projector_lr, sft.scheduler, sft.warmup_ratio) == (2e-4, 2e-5, "cosine", 0.03)
    assert (sft.precision, sft.max_length, sft.batch_size, sft.grad_accum, sft.epochs) == ("bf16", 2048, 8, 4, 4)
    align = load_config(AlignConfig, CONFIG_DIR / "align_gpu.yaml")
    assert (align.temperature, align.lr, align.batch_size, align.image_size_px, align.embed_dim) == (
        0.5, 1e-4, 32, 224, 1024)
    assert (align.biomarker_hidden, align.epochs) == (128, 50)
    # the dataclass defaults are the same recipe
    assert SFTConfig().lora == sft.lora and AlignConfig().temperature == 0.5


def test_overrides_are_parsed_as_yaml_and_typed():
    cfg = load_config(SFTConfig, "sft_cpu_smoke.yaml", ["lora.r=16", "lr=3e-4", "data.dataset=ph@1.0",
                                                        "model.tiny.num_layers=3", "resume_from=null"])
    assert cfg.lora.r == 16 and cfg.lr == pytest.approx(3e-4) and isinstance(cfg.lr, float)
    assert cfg.data.dataset == "ph@1.0" and cfg.model.tiny.num_layers == 3 and cfg.resume_from is None


@pytest.mark.parametrize("override, field", [
    ("lora.r=0", "lora.r"),
    ("lora.dropout=1.5", "lora.dropout"),
    ("scheduler=step", "scheduler"),
    ("precision=fp8", "precision"),
    ("max_length=-1", "max_length"),
    ("model.tiny.num_heads=3", "model.tiny.hidden_size"),
    ("data.dataset=no-version", "data.dataset"),
    ("batch_size=two", "batch_size"),
    ("lora.rank=8", "lora.r"),  # unknown key: the message lists the valid ones
])
def test_invalid_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(SFTConfig, "sft_cpu_smoke.yaml", [override])


def test_model_needs_exactly_one_source():
    with pytest.raises(ConfigError, match="exactly one of model.path"):
        config_from_dict(SFTConfig, {"model": {"path": "/m", "tiny": {}}})
    from grok_train.config import ModelConfig

    with pytest.raises(ConfigError, match="exactly one of path"):  # the fields are named where they are
        config_from_dict(ModelConfig, {"family": "qwen2_vl"})
    with pytest.raises(ConfigError, match=r"encoder_model\.tiny\.hidden_size must be divisible"):
        config_from_dict(AlignConfig, {"encoder": "qwen2vl", "encoder_model": {"tiny": {"num_heads": 3}}})


def test_align_encoder_choices_are_checked():
    with pytest.raises(ConfigError, match="encoder must be"):
        config_from_dict(AlignConfig, {"encoder": "resnet"})
    with pytest.raises(ConfigError, match="encoder_model"):
        config_from_dict(AlignConfig, {"encoder": "qwen2vl"})
    with pytest.raises(ConfigError, match="batch_size must be >= 2"):
        config_from_dict(AlignConfig, {"batch_size": 1})


def test_missing_config_file_lists_the_shipped_ones(tmp_path):
    with pytest.raises(ConfigError, match="sft_cpu_smoke.yaml"):
        load_config(SFTConfig, tmp_path / "nope.yaml")


def test_partial_nested_overrides_keep_the_jobs_own_defaults():
    from grok_train.config import PredictConfig

    pred = config_from_dict(PredictConfig, {"data": {"dataset_path": "/d"}})
    assert (pred.data.config, pred.data.train_split, pred.data.dataset_path) == ("benchmark", "test", "/d")
    sft = config_from_dict(SFTConfig, {}, ["data.dataset_path=/d", "model.image_max_pixels=3136"])
    assert sft.data.config == "instructions" and sft.model.tiny is not None
    local = config_from_dict(SFTConfig, {"model": {"path": "/models/q"}})
    assert local.model.tiny is None and local.model.path == "/models/q"
