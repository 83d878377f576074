"""The vessel network (``grok.cfp.vessel_net``): shipped weights, NumPy forward pass equal to torch's,
input normalisation, and that ``measure_fundus`` stays torch-free."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from grok.cfp import vessel_net as vn


def test_shipped_weights_are_shippable_and_consistent():
    w = vn.load_weights()
    meta = w["meta"]
    # trained on CC BY 4.0 references only (CHASE_DB1 children 01-10; HRF's A/V labels are GPL-3.0)
    names = [str(n) for n in meta["trained_on"]]
    assert len(names) == 20 and all(n.startswith("chase_db1/Image_") and int(n[-3:-1]) <= 10 for n in names)
    assert tuple(int(a) for a in meta["arch"]) == vn.ARCH
    assert 0.2 < vn.threshold(w) < 0.8 and 5 < vn.calibre_target(w) < 20
    assert vn.WEIGHTS_PATH.stat().st_size < 1_000_000
    x = np.random.default_rng(0).normal(size=(37, 53)).astype(np.float32)
    p = vn.probability(x, w)
    assert p.shape == (37, 53) and np.all((p >= 0) & (p <= 1))


def test_numpy_forward_equals_torch(tmp_path):
    """The NumPy forward pass (im2col + BLAS) of exported weights equals the torch model's eval output."""
    torch = pytest.importorskip("torch")
    from grok.cfp.train_vessel_net import Net, export

    torch.manual_seed(1)
    net = Net()
    with torch.no_grad():  # non-trivial batch-norm statistics, so the folding is exercised
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    net.eval()
    np.savez(tmp_path / "w.npz", **export(net, 10.0, 0.5, ["chase_db1/Image_01L"]))
    w = vn.load_weights(str(tmp_path / "w.npz"))
    x = np.random.default_rng(2).normal(size=(45, 70)).astype(np.float32)  # not a multiple of 8: padding
    xp = np.zeros((48, 72), np.float32)  # the NumPy pass pads to a multiple of 8 with zeros
    xp[:45, :70] = x
    with torch.no_grad():
        ref = net(torch.from_numpy(xp)[None, None])[0].numpy()[:45, :70]
    got = vn.forward(x, w)
    assert np.abs(ref).max() > 0.1
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-4)


def test_calibre_and_input_normalisation():
    """Main-vessel calibre of a drawn mask; the input is the relative darkness over the mask's contrast."""
    m = np.zeros((200, 200), bool)
    m[50:60, 20:180] = True  # a 10-px wide vessel
    m[120:123, 20:180] = True  # a 3-px one
    assert 8.0 <= vn.calibre_px(m) <= 11.0
    assert np.isnan(vn.calibre_px(np.zeros((50, 50), bool)))
    green = np.full((200, 200), 0.5, np.float32)
    green[m] = 0.4  # darkness 0.2
    bg = np.full((100, 100), 0.5, np.float32)
    fov = np.ones((100, 100), bool)
    fov[:5] = False
    x, f = vn.net_input(green, bg, fov, 0.2, (200, 200))
    assert x.shape == (200, 200) and f.shape == (200, 200)
    np.testing.assert_allclose(x[55, 100], 1.0, atol=1e-5)
    assert x[90, 100] == 0 and np.all(x[:10] == 0)


def test_measure_fundus_does_not_import_torch():
    """``grok cfp measure`` runs the network without torch (NumPy forward pass)."""
    code = ("import sys, numpy as np; from grok.phantom.cfp import synth_fundus; from grok.cfp import measure_fundus; "
            "ph = synth_fundus('normal', 'OD', np.random.default_rng(0), size=384); m = measure_fundus(ph.image); "
            "assert m.extras['vessel_method'] == 'net', m.extras.get('vessel_method'); "
            "assert 'torch' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_fine_tune_starts_from_the_shipped_weights():
    """``--init``: a net without batch norm loads the folded layers of a weights file, exports them unchanged
    and computes what the NumPy pass computes, so fine-tuning starts from the shipped network itself."""
    torch = pytest.importorskip("torch")
    from grok.cfp.train_vessel_net import Net, export, init_from

    net = Net(bn=False)
    init_from(net, vn.WEIGHTS_PATH)
    net.eval()
    w = vn.load_weights()
    d = export(net, vn.calibre_target(w), vn.threshold(w), ["chase_db1/Image_01L"])
    with np.load(vn.WEIGHTS_PATH) as z:
        layers = [k for k in z.files if k.endswith((".w", ".b"))]
        assert len(layers) == 2 * (2 * len(vn.ARCH) + len(vn.ARCH) - 1 + 1)
        for k in layers:
            np.testing.assert_array_equal(d[k], z[k])
    x = np.random.default_rng(3).normal(size=(40, 56)).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)[None, None])[0].numpy()
    np.testing.assert_allclose(vn.forward(x, w), ref, atol=1e-5, rtol=1e-4)


def test_camera_augmentation_keeps_the_vessel_and_the_reference():
    """``--camera-aug``: every stage changes the input, keeps a 10-px vessel darker than its surround (a
    texture, blob, gradient, low resolution or JPEG block never erases it), leaves the reference alone, and
    the batch stays within the input clip and zero outside the field of view."""
    torch = pytest.importorskip("torch")
    from grok.cfp.train_vessel_net import PATCH, _batch, _camera_aug

    x0 = torch.zeros(4, PATCH, PATCH)
    x0[:, :, 90:100] = 1.0
    for stage in ("scene", "camera"):
        changed = 0
        for seed in range(12):
            x = _camera_aug(x0.clone(), np.random.default_rng(seed), torch, stage)
            assert x.shape == x0.shape and torch.isfinite(x).all()
            changed += int((x - x0).abs().max() > 0.02)
            vessel, side = x[:, :, 92:98].mean(), torch.cat([x[:, :, 60:80], x[:, :, 110:130]], 2).mean()
            assert vessel - side > 0.4, (stage, seed, float(vessel), float(side))
        assert changed >= 3, stage
    yy, xx = np.mgrid[:300, :300]
    ves = ((np.abs(xx - 150) < 5) | (np.abs(yy - 120) < 3)).astype(np.float32)
    fov = (yy - 150) ** 2 + (xx - 150) ** 2 < 140 ** 2
    item = {"grid": (300, 300), "x": ves, "y": ves, "netfov": fov}
    x, y, f = _batch([item], np.random.default_rng(0), torch, camera=True)
    assert x.shape == (8, 1, PATCH, PATCH) and y.shape == f.shape == (8, PATCH, PATCH)
    assert float(x.abs().max()) <= vn.CLIP and float(x[:, 0][~f].abs().max()) == 0
    assert float(y.min()) >= 0 and float(y.max()) <= 1 and float(y.max()) > 0.5


def test_training_refuses_a_missing_init_file(tmp_path, capsys):
    from grok.cfp.train_vessel_net import main

    assert main(["--init", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "w.npz")]) == 2
    assert "no weights file" in capsys.readouterr().err
