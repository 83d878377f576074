"""Train the learned vessel classifier (``grok.cfp.vessel_model``) and write its weights module.

Run as: python -m grok.cfp.train_vessel_model [--real ../shared/real/cfp] [--out grok/cfp/vessel_model_weights.py]

Data (read in place, never copied; see ``shared/real/README.md``): the TRAINING split only --
CHASE_DB1 (Fraz et al. 2012, CC BY 4.0) children 01-10 (20 photographs, 1st observer). The HRF
artery/vein labels in ``shared/real/cfp/hrf_av`` (Hemelings et al. 2019) are distributed under GPL-3.0:
weights fitted to them would be a derived work that this Apache-2.0 package could not ship, so HRF is
not trained on by default and every HRF photograph is held out (``--include-gpl-labels`` adds its
``training/`` folder for experiments whose weights are not shipped). CHASE_DB1 children 11-14 and all of
HRF are reported separately by ``benchmarks/cfp_real.py`` (``heldout``), and the docs quote those figures.

Each photograph goes through the product's own preprocessing (working resolution, field of view,
relative channels, the multi-scale maps of ``grok.cfp.vessels``); the reference is area-resampled to the
working resolution (a soft target: the share of the working pixel that is vessel). 60,000 random
field-of-view pixels per photograph; an MLP (features -> 32 -> 16 -> 1, ReLU) is fitted with binary
cross-entropy (Adam, 10 epochs, batch 4096, seed 0) in torch on the CPU (about a minute); inference is
NumPy (``grok.cfp.vessel_model.predict``). The weights are written as a Python module so that they ship
with the package without package-data configuration.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from grok.cfp.preprocess import REFERENCE_FOV_RADIUS_PX, find_fov, relative_channels, to_working
from grok.cfp.vessel_model import FEATURES, vessel_features
from grok.cfp.vessels import _vessel_inputs
from grok.ingest.readers import read_cfp

DEFAULT_REAL = Path(__file__).resolve().parents[2].parent / "shared" / "real" / "cfp"
DEFAULT_OUT = Path(__file__).resolve().parent / "vessel_model_weights.py"
SAMPLES_PER_PHOTO = 60_000
CHASE_TRAIN_CHILDREN = range(1, 11)


def training_photos(real: Path, include_gpl_labels: bool = False) -> list[tuple[str, Path, Path]]:
    """(name, photo, reference) of the training split (HRF's GPL-3.0 labels only when asked for)."""
    out = []
    for p in sorted((real / "chase_db1" / "images").glob("*.jpg")):
        child = int(p.stem.split("_")[1][:2])
        if child in CHASE_TRAIN_CHILDREN:
            out.append((f"chase_db1/{p.stem}", p, real / "chase_db1" / "manual" / f"{p.stem}_1stHO.png"))
    for p in sorted((real / "hrf_av" / "training" / "images").iterdir()) if include_gpl_labels else []:
        out.append((f"hrf_av/{p.stem}", p, real / "hrf_av" / "training" / "1st_manual" / f"{p.stem}_AVmanual.png"))
    return out


def is_training_photo(set_name: str, stem: str) -> bool:
    """Whether a photograph of ``shared/real/cfp`` was in the training split."""
    if set_name == "chase_db1":
        return int(stem.split("_")[1][:2]) in CHASE_TRAIN_CHILDREN
    return False  # HRF (GPL-3.0 labels) is never in the shipped model's training split


def photo_samples(photo: Path, ref_path: Path, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(features (n, F), soft targets (n,)) sampled from one photograph at the working resolution."""
    from skimage.transform import resize


    rgb = read_cfp(photo).rgb
    wk = to_working(rgb)
    img = wk.rgb
    fov = find_fov(img)
    sc = fov.radius / REFERENCE_FOV_RADIUS_PX
    rel = relative_channels(img, fov.mask, sc)
    inp = _vessel_inputs(img, fov.mask, sc, rel)
    f = vessel_features(inp["ds"], inp["eig_z"], inp["zmax"], rel, inp["inner"], sc, inp["hp"])
    with Image.open(ref_path) as im:
        ref = np.asarray(im)
    ref = (ref[..., :3].max(-1) if ref.ndim == 3 else ref) > 0
    h, w = fov.mask.shape
    t = ref.astype(np.float32) if ref.shape == (h, w) else resize(ref.astype(np.float32), (h, w), order=1,
                                                                    anti_aliasing=True)
    ys, xs = np.nonzero(fov.mask)
    k = rng.choice(ys.size, size=min(SAMPLES_PER_PHOTO, ys.size), replace=False)
    return f[:, ys[k], xs[k]].T, np.clip(t[ys[k], xs[k]], 0, 1)


def train(x: np.ndarray, y: np.ndarray, epochs: int = 10, seed: int = 0) -> dict:
    import torch

    torch.manual_seed(seed)
    mean, std = x.mean(0), x.std(0) + 1e-6
    xt = torch.from_numpy(((x - mean) / std).astype(np.float32))
    yt = torch.from_numpy(y.astype(np.float32))
    nf = x.shape[1]
    net = torch.nn.Sequential(torch.nn.Linear(nf, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16), torch.nn.ReLU(),
                              torch.nn.Linear(16, 1))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    g = torch.Generator().manual_seed(seed)
    for ep in range(epochs):
        perm = torch.randperm(xt.shape[0], generator=g)
        tot = 0.0
        for i in range(0, xt.shape[0], 4096):
            idx = perm[i:i + 4096]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(xt[idx])[:, 0], yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * idx.numel()
        sched.step()
        print(f"epoch {ep + 1}: loss {tot / xt.shape[0]:.4f}", file=sys.stderr)
    layers = [(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy())
              for m in net if isinstance(m, torch.nn.Linear)]
    return {"mean": mean, "std": std, "layers": layers}


def _fmt(a: np.ndarray) -> str:
    if a.ndim == 1:
        return "[" + ", ".join(f"{float(v):.6g}" for v in a) + "]"
    return "[\n        " + ",\n        ".join(_fmt(r) for r in a) + "]"


def write_weights(model: dict, names: list[str], out: Path) -> None:
    lines = [
        '"""Weights of the learned vessel classifier (``grok.cfp.vessel_model``). GENERATED: do not edit.',
        "",
        "Written by: python -m grok.cfp.train_vessel_model (its docstring and docs/cfp.md, \"Vessel model",
        "card\", give the data, split, licences and held-out figures). Trained on CC BY 4.0 photographs and",
        "observer masks of CHASE_DB1 (Fraz et al. 2012): the TRAINING split listed in TRAINED_ON. No GPL-3.0",
        'labels (HRF A/V, Hemelings et al. 2019) are used for shipped weights."""',
        "",
        f"FEATURES = {list(FEATURES)!r}",
        f"TRAINED_ON = {names!r}",
        f"MEAN = {_fmt(model['mean'])}",
        f"STD = {_fmt(model['std'])}",
        "LAYERS = [",
    ]
    for W, b in model["layers"]:
        lines.append(f"    ({_fmt(W)},\n     {_fmt(b)}),")
    lines.append("]")
    out.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", type=Path, default=DEFAULT_REAL)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--include-gpl-labels", action="store_true",
                    help="also train on HRF's GPL-3.0 A/V labels (experiments only: such weights are not shippable)")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    xs, ys, names = [], [], []
    t0 = time.perf_counter()
    for name, photo, ref in training_photos(args.real, args.include_gpl_labels):
        x, y = photo_samples(photo, ref, rng)
        xs.append(x)
        ys.append(y)
        names.append(name)
        print(f"{name}: {len(y)} samples, vessel share {y.mean():.3f} ({time.perf_counter() - t0:.0f} s)",
              file=sys.stderr)
    model = train(np.concatenate(xs), np.concatenate(ys), epochs=args.epochs)
    write_weights(model, names, args.out)
    print(f"wrote {args.out} ({len(names)} photographs)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
