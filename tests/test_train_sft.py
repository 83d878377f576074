"""LoRA SFT on a tiny random Qwen2-VL with the real Qwen2 tokenizer (CPU): learning, resume, adapters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from grok_train._compat import guard_torchvision

guard_torchvision()  # hide a broken torchvision before transformers / peft are imported
torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("transformers")

from grok_train.config import PredictConfig, SFTConfig, config_from_dict
from grok_train.errors import CheckpointNotFoundError, DatasetNotFoundError
from tests.train_fixtures import make_instruction_dataset, write_dataset_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(ds: Path, out: Path, **over) -> SFTConfig:
    raw = {
        "data": {"dataset_path": str(ds), "config": "instructions", "val_split": None},
        "model": {"tiny": {}, "image_max_pixels": 56 * 56},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.05},
        "output_dir": str(out),
        "max_steps": 3,
        "batch_size": 2,
        "grad_accum": 2,
        "lr": 5e-3,
        "max_length": 256,
        "precision": "fp32",
        "gradient_checkpointing": False,
        "device": "cpu",
    }
    for key, val in over.items():
        raw[key] = val
    return config_from_dict(SFTConfig, raw)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sft_ds")
    return write_dataset_folder(root, {
        "instructions": {"train": make_instruction_dataset(6, seed=3),
                         "validation": make_instruction_dataset(2, seed=5)},
        "benchmark": {"test": make_instruction_dataset(2, seed=4)},
    }, name="phantom-sft", version="0.3.1", fingerprint="fp-sft-031")


@pytest.fixture(scope="module")
def finished_run(dataset, tmp_path_factory):
    """A 3-step run that saves a resumable checkpoint after step 2 (gradient checkpointing on)."""
    from grok_train.sft import run_sft

    out = tmp_path_factory.mktemp("sft_run")
    data = {"dataset_path": str(dataset), "config": "instructions", "val_split": "validation"}
    result = run_sft(_cfg(dataset, out, save_every_steps=2, gradient_checkpointing=True, data=data))
    return out, result


def _fixed_batch(dataset, n_rows=2):
    from grok_train.data import load_split
    from grok_train.modeling import build_processor
    from grok_train.sft_data import ChatEncoder

    cfg = _cfg(dataset, Path("unused"))
    proc = build_processor(cfg.model)
    rows = load_split(None, "instructions", "train", dataset_path=dataset, max_rows=n_rows)
    enc = ChatEncoder(proc.tokenizer, proc.image_processor, 256, None)
    return cfg, proc, enc.collate(enc.encode_all(rows), [r["images"] for r in rows])


def test_answer_token_loss_equals_the_models_own_loss(dataset):
    from grok_train.losses import AnswerTokenLoss
    from grok_train.modeling import build_model

    cfg, proc, batch = _fixed_batch(dataset)
    model = build_model(cfg.model, proc.tokenizer, torch.float32).eval()
    with torch.no_grad():
        reference = model(**batch).loss  # full-vocabulary logits at every position, mean over targets
        ours = AnswerTokenLoss(model)(**batch)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_loss_goes_down_on_a_fixed_batch(dataset):
    from grok_train.losses import AnswerTokenLoss
    from grok_train.modeling import apply_lora, build_model

    cfg, proc, batch = _fixed_batch(dataset)
    torch.manual_seed(0)
    model = apply_lora(build_model(cfg.model, proc.tokenizer, torch.float32), cfg.lora)
    loss_fn = AnswerTokenLoss(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    losses = []
    model.train()
    for _ in range(6):
        loss = loss_fn(**batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # a random model starts near ln(vocab) and must fit the two answers quickly
    assert losses[0] == pytest.approx(float(torch.log(torch.tensor(float(model.config.text_config.vocab_size)))), abs=0.5)
    assert losses[-1] < losses[0] - 0.3, losses


def test_run_records_the_pinned_version_everywhere(finished_run, dataset):
    out, result = finished_run
    want = {"name": "phantom-sft", "version": "0.3.1", "fingerprint": "fp-sft-031"}
    files = [out / "run.json", out / "metrics.json", out / "final" / "meta.json",
             out / "checkpoints" / "step-000002" / "meta.json"]
    for f in files:
        got = json.loads(f.read_text())["dataset"]
        assert {k: got[k] for k in want} == want, f
        assert got["path"] == str(dataset.resolve())
    assert result.steps == 3 and len(result.losses) == 3
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val_rows"] == 2 and metrics["val_loss"] == result.val_loss
    assert 0 < result.val_loss < 1.1 * result.losses[0]
    assert (out / "final" / "adapter_model.safetensors").is_file()
    assert (out / "final" / "tokenizer.json").is_file() and (out / "final" / "chat_template.jinja").is_file()


def _assert_card(folder, out, kind: str) -> None:
    """A model card that names the pinned version, its fingerprint and the base, with no placeholder or path."""
    from huggingface_hub import ModelCard

    text = (folder / "README.md").read_text()
    assert "phantom-sft@0.3.1" in text and "fp-sft-031" in text and "not a medical device" in text
    assert "More Information Needed" not in text and str(out) not in text and "/tmp" not in text
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == ("peft" if kind == "adapter" else "transformers")
    assert card.data.datasets == ["phantom-sft"]


def test_every_adapter_has_a_model_card(finished_run):
    out, result = finished_run
    _assert_card(out / "final", out, "adapter")
    text = (out / "final" / "README.md").read_text()
    assert f"last {result.losses[-1]:.4f}" in text and f"{result.val_loss:.4f}" in text
    assert "Not evaluated yet" in text  # no eval/eval.json in this run
    _assert_card(out / "checkpoints" / "step-000002" / "adapter", out, "adapter")


def test_resume_gives_the_same_next_loss(finished_run, dataset, tmp_path):
    from grok_train.sft import run_sft

    src, uninterrupted = finished_run
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    resumed = run_sft(_cfg(dataset, out, save_every_steps=2, gradient_checkpointing=True,
                           resume_from=str(out / "checkpoints" / "step-000002")))
    assert resumed.steps == 3 and len(resumed.losses) == 1
    assert resumed.losses[0] == pytest.approx(uninterrupted.losses[2], rel=1e-5, abs=1e-6)
    # and the resumed run is not trivially equal to a fresh run's first loss
    assert resumed.losses[0] != pytest.approx(uninterrupted.losses[0], abs=1e-4)
    assert json.loads((out / "run.json").read_text())["resumed"]


def test_adapter_save_load_merge_round_trip(finished_run, dataset, tmp_path):
    from grok_train.data import load_split
    from grok_train.merge import run_merge
    from grok_train.modeling import load_pretrained
    from grok_train.predict import load_for_inference
    from grok_train.sft_data import ChatEncoder

    out, _ = finished_run
    adapter_model, proc, _ = load_for_inference(out, torch.float32, torch.device("cpu"))
    base = load_pretrained(out / "base_model", torch.float32)
    rows = load_split(None, "benchmark", "test", dataset_path=dataset)
    enc = ChatEncoder(proc.tokenizer, proc.image_processor, 256, None)
    batch = enc.collate(enc.encode_all(rows), [r["images"] for r in rows])
    batch.pop("labels")
    with torch.no_grad():
        with_adapter = adapter_model(**batch).logits
        base_logits = base.eval()(**batch).logits
    assert not torch.allclose(with_adapter, base_logits, atol=1e-4), "the adapter changed nothing"

    merged_dir = tmp_path / "merged"
    run_merge(out, merged_dir)
    merged = load_pretrained(merged_dir, torch.float32).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        merged_logits = merged(**batch).logits
    torch.testing.assert_close(merged_logits, with_adapter, atol=2e-4, rtol=1e-4)
    meta = json.loads((merged_dir / "grok_merge.json").read_text())
    assert meta["dataset"]["version"] == "0.3.1"
    _assert_card(merged_dir, out, "merged")


def test_predict_writes_jsonl_for_the_split(finished_run, dataset, tmp_path):
    from grok_train.predict import run_predict

    out, _ = finished_run
    cfg = config_from_dict(PredictConfig, {
        "checkpoint": str(out), "output": str(tmp_path / "p.jsonl"), "max_new_tokens": 3, "device": "cpu",
        "data": {"dataset_path": str(dataset), "config": "benchmark", "train_split": "test"}})
    res = run_predict(cfg)
    lines = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == ["r4-0000", "r4-0001"]
    assert res.finished_eos + res.hit_length_limit == 2
    for x in lines:
        assert x["dataset"] == "phantom-sft@0.3.1"
        assert x["reference"].startswith("The central subfield thickness")
        assert x["finish_reason"] in ("eos", "length")
        assert x["generated_tokens"] <= 3


def test_missing_inputs_fail_before_training(dataset, tmp_path):
    from grok_train.predict import run_predict
    from grok_train.sft import run_sft

    with pytest.raises(CheckpointNotFoundError, match="vision_init_from"):
        run_sft(_cfg(dataset, tmp_path / "a", vision_init_from=str(tmp_path / "no_align")))
    with pytest.raises(CheckpointNotFoundError, match="resume_from"):
        run_sft(_cfg(dataset, tmp_path / "b", resume_from=str(tmp_path / "nope")))
    with pytest.raises(CheckpointNotFoundError, match="config.json"):
        run_sft(_cfg(dataset, tmp_path / "c", model={"path": str(tmp_path / "no_model")}))
    with pytest.raises(DatasetNotFoundError, match="splits of 'instructions'"):
        run_sft(_cfg(dataset, tmp_path / "d", data={"dataset_path": str(dataset), "config": "instructions",
                                                      "train_split": "nope", "val_split": None}))
    with pytest.raises(CheckpointNotFoundError):
        run_predict(config_from_dict(PredictConfig, {"checkpoint": str(tmp_path / "none"),
                                                     "data": {"dataset_path": str(dataset)}}))
    assert not (tmp_path / "a" / "run.json").exists()


def test_vision_tower_initialised_from_qwen2vl_alignment(dataset, tmp_path):
    """encoder: qwen2vl alignment writes a vision tower that the SFT model then starts from."""
    from safetensors.torch import load_file

    from grok_train.align import run_align
    from grok_train.config import AlignConfig
    from grok_train.modeling import build_model, build_processor, load_vision_init, visual_module
    from tests.train_fixtures import make_alignment_dataset

    ds = write_dataset_folder(tmp_path / "ads", {"alignment": {"train": make_alignment_dataset(8, seed=5),
                                                               "validation": make_alignment_dataset(4, seed=6)}})
    model_cfg = {"tiny": {}, "image_max_pixels": 56 * 56}
    acfg = config_from_dict(AlignConfig, {"data": {"dataset_path": str(ds)}, "encoder": "qwen2vl",
                                          "encoder_model": model_cfg, "embed_dim": 16, "projector_hidden": 16,
                                          "batch_size": 4, "max_steps": 2, "lr": 1e-2,
                                          "output_dir": str(tmp_path / "align"), "device": "cpu"})
    run_align(acfg)
    aligned = load_file(str(tmp_path / "align" / "vision_tower.safetensors"))
    sft_model_cfg = _cfg(dataset, tmp_path).model
    proc = build_processor(sft_model_cfg)
    fresh = build_model(sft_model_cfg, proc.tokenizer, torch.float32)
    key = "blocks.0.attn.qkv.weight"
    assert not torch.equal(visual_module(fresh).state_dict()[key], aligned[key]), "alignment did not train the tower"
    info = load_vision_init(fresh, tmp_path / "align")
    assert info["n_tensors"] == len(aligned)
    torch.testing.assert_close(visual_module(fresh).state_dict()[key], aligned[key], atol=0, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_sft_step_on_gpu(dataset, tmp_path):
    from grok_train.sft import run_sft

    res = run_sft(_cfg(dataset, tmp_path / "gpu", precision="bf16", device="cuda", max_steps=4,
                       gradient_checkpointing=True))
    assert res.losses[-1] < res.losses[0]


def test_model_card_carries_the_evaluation_when_the_run_has_one(tmp_path):
    from grok_train.config import LoraSettings, ModelConfig, TinyModelConfig
    from grok_train.model_card import EVAL_FILE, model_card, read_evaluation

    (tmp_path / EVAL_FILE).parent.mkdir(parents=True)
    (tmp_path / EVAL_FILE).write_text(json.dumps({"dataset": "phantom-sft@0.3.1", "overall": {
        "n": 12, "classification": {"macro_f1": 0.4167, "accuracy": 0.5},
        "quantitative": {"mean": 0.75, "n": 10, "ci95": [0.6, 0.9]}}}))
    card = str(model_card(kind="adapter", model=ModelConfig(tiny=TinyModelConfig()), lora=LoraSettings(),
                          dataset={"name": "phantom-sft", "version": "0.3.1", "fingerprint": "fp"}, metrics={},
                          evaluation=read_evaluation(tmp_path)))
    assert "diagnosis macro f1: 0.417" in card and "quantitative (mean per answer): 0.750" in card
    assert "12 answers" in card and "Not evaluated yet" not in card
