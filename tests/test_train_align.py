"""CLIP-style OCT <-> biomarker alignment: it learns (R@5 vs chance), normalisation, mask token, metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from grok.ids import OCT_GROK_BIOMARKERS
from grok_train.biomarkers import BiomarkerNormaliser, values_matrix
from grok_train.config import AlignConfig, config_from_dict
from grok_train.errors import BadInputError, MissingDependencyError
from tests.train_fixtures import make_alignment_dataset, write_dataset_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(ds, out, **over) -> AlignConfig:
    raw = {"data": {"dataset_path": str(ds)}, "image_size_px": 64, "cnn_width": 8, "embed_dim": 64,
           "projector_hidden": 128, "batch_size": 32, "epochs": 6, "lr": 2e-3, "output_dir": str(out),
           "device": "cpu", "seed": 0, "num_workers": 0}
    raw.update(over)
    return config_from_dict(AlignConfig, raw)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("align_ds")
    return write_dataset_folder(root, {"alignment": {"train": make_alignment_dataset(256, seed=1),
                                                     "validation": make_alignment_dataset(64, seed=2)}},
                                name="phantom-align", version="1.2.0")


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    from grok_train.align import run_align

    out = tmp_path_factory.mktemp("align_run")
    with pytest.warns(UserWarning, match="no normal range for 31 biomarker"):
        result = run_align(_cfg(dataset, out))
    return out, result


def test_alignment_learns_retrieval_well_above_chance(trained):
    out, result = trained
    chance = result.final.chance_r5
    assert chance == pytest.approx(5 / 64)
    assert result.initial.r5_image_to_biomarker < 3 * chance  # random init is near chance
    for r5 in (result.final.r5_image_to_biomarker, result.final.r5_biomarker_to_image):
        assert r5 >= 4 * chance, result.final
    assert result.final.r1_image_to_biomarker > result.final.chance_r1
    assert result.train_losses[-1] < result.train_losses[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"]["name"] == "phantom-align" and metrics["dataset"]["version"] == "1.2.0"
    assert metrics["final"]["r5_image_to_biomarker"] == result.final.r5_image_to_biomarker
    assert [h["epoch"] for h in metrics["history"]] == list(range(7))
    from safetensors import safe_open

    with safe_open(str(out / "align_model.safetensors"), "pt") as fh:
        assert fh.metadata()["dataset"] == "phantom-align@1.2.0"


def test_checkpoint_reloads_to_the_same_metrics(trained, dataset):
    from grok_train.align import _PairData, evaluate, load_align_model
    from grok_train.data import load_split

    out, result = trained
    model, normaliser, record = load_align_model(out)
    assert record["dataset"]["version"] == "1.2.0"
    val = load_split(None, "alignment", "validation", dataset_path=dataset)
    data = _PairData(val, normaliser, values_matrix(val["biomarker_values"], len(OCT_GROK_BIOMARKERS)))
    again = evaluate(model, data, 32, torch.device("cpu"))
    assert again.r5_image_to_biomarker == pytest.approx(result.final.r5_image_to_biomarker)
    assert again.r1_biomarker_to_image == pytest.approx(result.final.r1_biomarker_to_image)


def test_normaliser_uses_ranges_and_falls_back_with_a_warning():
    ids = ("a_um", "b_um", "c_um")
    values = np.array([[1.0, 10.0, np.nan], [3.0, np.nan, np.nan], [5.0, 30.0, np.nan]])
    with pytest.warns(UserWarning, match=r"\['b_um'\]"):
        norm = BiomarkerNormaliser.fit(ids, values, {"a_um": (2.0, 0.5), "c_um": (0.0, 0.0)})
    assert norm.source == ("ranges", "dataset", "unavailable")
    z = norm.transform(values)
    np.testing.assert_allclose(z[:, 0], [-2.0, 2.0, 6.0])
    np.testing.assert_allclose(z[[0, 2], 1], [-1.0, 1.0])
    assert np.isnan(z[1, 1]) and np.isnan(z[:, 2]).all()
    again = BiomarkerNormaliser.from_dict(json.loads(json.dumps(norm.to_dict())))
    np.testing.assert_allclose(again.transform(values), z)


def test_missing_values_use_the_learned_mask_token():
    from grok_train.align import build_align_model

    cfg = config_from_dict(AlignConfig, {"embed_dim": 8, "projector_hidden": 8, "cnn_width": 4, "image_size_px": 16})
    model = build_align_model(cfg, 31)
    z = torch.randn(4, 31)
    z[0, :5] = float("nan")
    emb = model.encode_biomarkers(z)
    assert torch.isfinite(emb).all()
    emb.sum().backward()
    grad = model.mask_token.grad
    assert grad[:5].abs().sum() > 0 and torch.count_nonzero(grad[5:]) == 0
    # a different mask token value changes the embedding of the row with missing values only
    model.eval()
    with torch.no_grad():
        before = model.encode_biomarkers(z)
        model.mask_token.add_(1.0)
        after = model.encode_biomarkers(z)
    assert not torch.allclose(before[0], after[0]) and torch.allclose(before[1:], after[1:])


def test_contrastive_loss_and_retrieval_metrics_on_known_embeddings():
    from grok_train.align import contrastive_loss, retrieval_metrics

    e = torch.nn.functional.normalize(torch.randn(16, 32), dim=-1)
    perfect = contrastive_loss(e, e, torch.tensor(100.0))
    shuffled = contrastive_loss(e, e[torch.randperm(16)], torch.tensor(100.0))
    assert perfect < 0.05 < shuffled
    assert contrastive_loss(e, e.flip(0), torch.tensor(2.0)) == pytest.approx(
        float(contrastive_loss(e.flip(0), e, torch.tensor(2.0))), rel=1e-6)
    m = retrieval_metrics(e, e)
    assert (m.r1_image_to_biomarker, m.r1_biomarker_to_image, m.chance_r5) == (1.0, 1.0, 5 / 16)
    # pair i with i+1: the true partner is never the nearest, so R@1 is 0 both ways
    m2 = retrieval_metrics(e, e.roll(1, 0))
    assert m2.r1_image_to_biomarker == 0.0 and m2.r1_biomarker_to_image == 0.0
    assert math.isnan(m2.loss)


def test_wrong_biomarker_ids_are_refused(tmp_path):
    from grok_train.align import run_align

    ds = make_alignment_dataset(8, seed=0)
    ds = ds.map(lambda r: {"biomarker_ids": list(reversed(r["biomarker_ids"]))})
    root = write_dataset_folder(tmp_path / "ds", {"alignment": {"train": ds, "validation": ds}})
    with pytest.raises(BadInputError, match="OCT_GROK_BIOMARKERS"):
        run_align(_cfg(root, tmp_path / "out", batch_size=4))
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_timm_encoder_builds_or_names_the_install_command():
    from grok_train._compat import guard_torchvision
    from grok_train.align import build_image_encoder

    guard_torchvision()
    cfg = config_from_dict(AlignConfig, {"encoder": "timm:resnet18", "image_size_px": 32})
    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependencyError, match="pip install timm"):
            build_image_encoder(cfg)
        return
    enc = build_image_encoder(cfg)
    from PIL import Image

    feats = enc(**enc.prepare([Image.new("L", (40, 30))] * 2))
    assert feats.shape == (2, enc.feat_dim)
