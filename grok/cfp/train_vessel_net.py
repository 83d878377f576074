"""Train the compact vessel U-Net (``grok.cfp.vessel_net``) and write its weights (package data).

Run as: python -m grok.cfp.train_vessel_net [--real ../shared/real/cfp] [--minutes 40 | --steps N] [--threads 1]
        [--init WEIGHTS.npz] [--camera-aug] [--out grok/cfp/vessel_net_weights.npz]

The shipped weights are two stages (``docs/cfp.md``, "Vessel network card"): stage 1 from scratch,
``--minutes 42`` (1,598 steps; the weights of commit 6feed43), then stage 2 fine-tuned from them with the
camera augmentation::

    git show 6feed43:grok/cfp/vessel_net_weights.npz > /tmp/stage1.npz
    OMP_NUM_THREADS=1 python -m grok.cfp.train_vessel_net --init /tmp/stage1.npz --camera-aug --steps 4000 --threads 1

Data (read in place, never copied; ``shared/real/README.md``): CHASE_DB1 (Fraz et al. 2012, CC BY 4.0)
children 01-10 only (20 photographs, 1st observer's masks). CHASE_DB1 children 11-14 and every HRF
photograph are held out (HRF's artery/vein labels are GPL-3.0: nothing shipped is fitted to them), and
nothing held out is read here, not even for the threshold.

Each training photograph goes through the product's own steps (working copy, field of view, relative
channels, the classical ridge mask of ``grok.cfp.vessels.segment_vessels``); the main-vessel calibre
of that mask fixes the net's grid (``vessel_net.calibre_px``: the median over the training photographs
becomes the target, ``meta.calibre_px``), and ``vessel_net.net_input`` gives the normalised input. The
reference is resampled to the same grid (soft target).

Training (torch, CPU, ``--threads`` threads, seed 0): 192 x 192 patches, batch 8, drawn with a random
rotation, flip and scale jitter (x 0.7-1.4) around random field-of-view points; photometric
augmentation on the normalised input: contrast x 0.6-1.65, a sign-preserving gamma 0.74-1.35, an offset
and a smooth additive field (uneven background), Gaussian blur (sigma 0-1.6 px, half the batches),
white and coarse noise; loss = binary cross-entropy + soft Dice over the field of view; Adam, learning
rate 3e-3 with a cosine decay over the time budget. Then batch normalisation is folded into the
convolutions, the NumPy forward pass is run on the 20 training photographs at full size, and the
threshold that maximises their mean F1 (against the 1st observer at the photograph's own resolution,
over the lit field) is stored with the weights (``meta.threshold``).

Fine-tuning (``--init``): the folded layers of a weights file are loaded into the same net without batch
normalisation (``Net(bn=False)``, conv + bias), which keeps the calibre target of those weights; the
learning rate then defaults to 5e-4 decaying to 2e-5 (``--lr``, ``--lr-min``). ``--camera-aug`` adds what
other cameras and fundi show and CHASE_DB1's children do not (``_camera_aug``): background texture,
dark and bright blobs that are not vessels, illumination gradients, low resolution, JPEG blocks, and a
wider scale jitter (x 0.6-1.6: error of the calibre estimate). ``--steps`` fixes the number of steps and
the learning-rate schedule whatever the machine's speed, where ``--minutes`` depends on it (torch's CPU
kernels may still round differently on another processor; a rerun was not compared bit for bit).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from grok.cfp import vessel_net as vn
from grok.cfp.measure import _green_at_full
from grok.cfp.preprocess import REFERENCE_FOV_RADIUS_PX, find_fov, lit_fov, relative_channels, to_working
from grok.cfp.train_vessel_model import CHASE_TRAIN_CHILDREN
from grok.cfp.vessels import segment_vessels
from grok.ingest.readers import read_cfp

DEFAULT_REAL = Path(__file__).resolve().parents[2].parent / "shared" / "real" / "cfp"
PATCH, BATCH = 192, 8


def training_photos(real: Path) -> list[tuple[str, Path, Path]]:
    """(name, photo, 1st-observer mask) of CHASE_DB1 children 01-10."""
    out = []
    for p in sorted((real / "chase_db1" / "images").glob("*.jpg")):
        if int(p.stem.split("_")[1][:2]) in CHASE_TRAIN_CHILDREN:
            out.append((f"chase_db1/{p.stem}", p, real / "chase_db1" / "manual" / f"{p.stem}_1stHO.png"))
    return out


def classical(rgb: np.ndarray):
    """(working, fov, classical VesselMaps, main-vessel calibre in working px, contrast) of a photograph."""
    wk = to_working(rgb)
    fov = find_fov(wk.rgb)
    sc = fov.radius / REFERENCE_FOV_RADIUS_PX
    rel = relative_channels(wk.rgb, fov.mask, sc)
    vm = segment_vessels(wk.rgb, fov.mask, sc, rel, learned=False)
    return wk, fov, vm, vn.calibre_px(vm.mask), vn.contrast_of(vm.darkness, vm.mask)


def _read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        a = np.asarray(im)
    return (a[..., :3].max(-1) if a.ndim == 3 else a) > 0


def prepare(real: Path, target: float | None = None) -> tuple[list[dict], float]:
    items = []
    for name, photo, ref in training_photos(real):
        rgb = read_cfp(photo).rgb
        wk, fov, vm, cal, con = classical(rgb)
        items.append({"name": name, "rgb": rgb, "wk": wk, "fov": fov, "vm": vm, "calibre": cal, "contrast": con,
                      "ref": _read_mask(ref)})
        print(f"{name}: calibre {cal:.2f} px, contrast {con:.4f}", file=sys.stderr)
    if target is None:  # the median training calibre (an --init net keeps the calibre it was trained at)
        target = float(np.median([it["calibre"] for it in items]))
    for it in items:
        grid = vn.net_grid(it["rgb"].shape[:2], it["wk"].scale, target / it["calibre"])
        green = _green_at_full(it["rgb"])
        x, fov = vn.net_input(green, it["vm"].green_background, it["fov"].mask, it["contrast"], grid)
        it["x"], it["netfov"] = x, fov
        it["y"] = vn._resample(it["ref"].astype(np.float32), grid)
        it["grid"] = grid
    return items, target


class Net:
    """The torch twin of ``vessel_net.forward`` (conv + batch norm + ReLU blocks; ``bn=False``: conv + bias +
    ReLU, the folded layers of a weights file, which ``init_from`` loads for fine-tuning)."""

    def __new__(cls, bn: bool = True):
        import torch
        from torch import nn

        def block(ci, co):
            if not bn:  # conv + bias + ReLU: the exported (folded) layers themselves, for fine-tuning
                return nn.Sequential(nn.Conv2d(ci, co, 3, padding=1, bias=True), nn.ReLU(inplace=True))
            return nn.Sequential(nn.Conv2d(ci, co, 3, padding=1, bias=False), nn.BatchNorm2d(co), nn.ReLU(inplace=True))

        class UNet(nn.Module):
            def __init__(self):
                super().__init__()
                A = vn.ARCH
                self.enc = nn.ModuleList()
                ci = 1
                for c in A:
                    self.enc.append(nn.Sequential(block(ci, c), block(c, c)))
                    ci = c
                self.dec = nn.ModuleList([block(A[lvl + 1] + A[lvl], A[lvl]) for lvl in range(len(A) - 1)])
                self.out = nn.Conv2d(A[0], 1, 1)

            def forward(self, x):
                skips = []
                for lvl, e in enumerate(self.enc):
                    if lvl:
                        x = torch.nn.functional.max_pool2d(x, 2)
                    x = e(x)
                    skips.append(x)
                for lvl in range(len(self.dec) - 1, -1, -1):
                    x = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
                    x = self.dec[lvl](torch.cat([x, skips[lvl]], 1))
                return self.out(x)[:, 0]

        return UNet()


def export(net, target: float, thr: float, names: list[str]) -> dict:
    """Folded float32 arrays for ``vessel_net.load_weights`` (npz keys)."""
    import torch

    def fold(seq):
        conv, bn = seq[0], seq[1]
        if not isinstance(bn, torch.nn.BatchNorm2d):  # already folded (a net built with bn=False)
            return (conv.weight.detach().numpy().astype(np.float32), conv.bias.detach().numpy().astype(np.float32))
        g = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
        w = conv.weight.detach() * g[:, None, None, None]
        b = (bn.bias - bn.running_mean * g).detach()
        return w.numpy().astype(np.float32), b.numpy().astype(np.float32)

    d = {}
    for lvl, e in enumerate(net.enc):
        d[f"enc{lvl}a.w"], d[f"enc{lvl}a.b"] = fold(e[0])
        d[f"enc{lvl}b.w"], d[f"enc{lvl}b.b"] = fold(e[1])
    for lvl, blk in enumerate(net.dec):
        d[f"dec{lvl}.w"], d[f"dec{lvl}.b"] = fold(blk)
    d["out.w"] = net.out.weight.detach().numpy().astype(np.float32)
    d["out.b"] = net.out.bias.detach().numpy().astype(np.float32)
    d["meta.calibre_px"] = np.float64(target)
    d["meta.threshold"] = np.float64(thr)
    d["meta.arch"] = np.asarray(vn.ARCH)
    d["meta.trained_on"] = np.asarray(names)
    d["meta.licence"] = np.asarray("trained on CHASE_DB1 (Fraz et al. 2012, CC BY 4.0) children 01-10, 1st observer")
    return d


def init_from(net, path: Path) -> None:
    """Load a weights file (folded layers, ``export``'s keys) into a net built with ``Net(bn=False)``."""
    import torch

    with np.load(path, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    if tuple(int(a) for a in d["meta.arch"]) != vn.ARCH:
        raise ValueError(f"{path}: weights of architecture {d['meta.arch']} cannot initialise {vn.ARCH}")
    convs = [(f"enc{lvl}{ab}", e[i][0]) for lvl, e in enumerate(net.enc) for i, ab in ((0, "a"), (1, "b"))]
    convs += [(f"dec{lvl}", blk[0]) for lvl, blk in enumerate(net.dec)] + [("out", net.out)]
    with torch.no_grad():
        for name, conv in convs:
            conv.weight.copy_(torch.from_numpy(d[name + ".w"]))
            conv.bias.copy_(torch.from_numpy(d[name + ".b"]))


_DCT8 = np.array([[math.sqrt((1 if u == 0 else 2) / 8.0) * math.cos((2 * i + 1) * u * math.pi / 16) for i in range(8)]
                  for u in range(8)], np.float32)


def _camera_aug(x, rng, torch, stage: str):
    """Augmentation that mimics other cameras and fundi, on a batch x (B, P, P) of normalised inputs.

    ``stage="scene"`` (before the photometric augmentation): background texture (band-passed noise at
    4, 8 and 16 px, choroidal and nerve-fibre texture), dark and bright blobs that are not vessels
    (haemorrhages, exudates, pigment; the reference is unchanged), a smooth illumination gradient of
    gain and offset. ``stage="camera"`` (after the blur): low resolution (area-downsampled x 1.5-3 and
    bilinearly upsampled), then JPEG-like blockiness (8 x 8 DCT coefficients quantised).
    """
    F = torch.nn.functional
    B, P, _ = x.shape
    if stage == "scene":
        if rng.random() < 0.5:
            for s in (4, 8, 16):
                n = torch.randn(B, 1, P // s + 1, P // s + 1) * torch.empty(B, 1, 1, 1).uniform_(0, 0.2)
                x = x + F.interpolate(n, size=(P, P), mode="bicubic", align_corners=False)[:, 0]
        if rng.random() < 0.5:
            yy, xx = torch.meshgrid(torch.arange(P, dtype=torch.float32), torch.arange(P, dtype=torch.float32),
                                    indexing="ij")
            for b in range(B):
                for _ in range(int(rng.integers(1, 7))):
                    cy, cx = rng.uniform(0, P, 2)
                    sig = math.exp(rng.uniform(math.log(1.5), math.log(8.0)))
                    amp = rng.uniform(0.3, 1.2) if rng.random() < 0.6 else -rng.uniform(0.3, 1.5)
                    x[b] += amp * torch.exp(-0.5 * ((yy - cy) ** 2 + (xx - cx) ** 2) / sig ** 2)
        if rng.random() < 0.5:
            r = torch.linspace(-1, 1, P)
            a = torch.empty(B, 2, 1, 1).uniform_(-1, 1)
            ramp = a[:, 0] * r[None, :, None] + a[:, 1] * r[None, None, :]
            x = x * (1 + torch.empty(B, 1, 1).uniform_(0, 0.35) * ramp) + torch.empty(B, 1, 1).uniform_(0, 0.2) * ramp
        return x
    if rng.random() < 0.3:
        f = rng.uniform(1.5, 3.0)
        m = max(int(round(P / f)), 8)
        lo = F.interpolate(x[:, None], size=(m, m), mode="area")
        x = F.interpolate(lo, size=(P, P), mode="bilinear", align_corners=False)[:, 0]
    if rng.random() < 0.3:
        D = torch.from_numpy(_DCT8)
        blk = x.reshape(B, P // 8, 8, P // 8, 8).permute(0, 1, 3, 2, 4)
        c = D @ blk @ D.T
        uv = torch.arange(8, dtype=torch.float32)
        q = rng.uniform(0.05, 0.3) * (1 + 0.5 * (uv[:, None] + uv[None, :]))
        c = torch.round(c / q) * q
        x = (D.T @ c @ D).permute(0, 1, 3, 2, 4).reshape(B, P, P)
    return x


def _batch(items, rng, torch, camera: bool = False):
    """A batch of augmented patches: (x (B,1,P,P), y (B,P,P), fov (B,P,P)) tensors. ``camera``: the scale
    jitter widens to x 0.6-1.6 (calibre-estimate error) and ``_camera_aug`` is applied."""
    F = torch.nn.functional
    xs, ys, fs = [], [], []
    P = PATCH
    u = (np.arange(P) - (P - 1) / 2.0)
    uu, vv = np.meshgrid(u, u)
    for _ in range(BATCH):
        it = items[rng.integers(len(items))]
        h, w = it["grid"]
        fy, fx = np.nonzero(it["netfov"][::8, ::8])
        k = rng.integers(fy.size)
        cy, cx = fy[k] * 8.0, fx[k] * 8.0
        ang = rng.uniform(0, 2 * math.pi)
        s = math.exp(rng.uniform(math.log(0.6), math.log(1.6))) if camera else math.exp(rng.uniform(math.log(0.7), math.log(1.4)))
        ca, sa = math.cos(ang) * s, math.sin(ang) * s
        fl = -1.0 if rng.random() < 0.5 else 1.0
        sx = cx + ca * uu * fl - sa * vv
        sy = cy + sa * uu * fl + ca * vv
        grid = np.stack([(2 * sx + 1) / w - 1, (2 * sy + 1) / h - 1], -1)[None].astype(np.float32)
        g = torch.from_numpy(grid)
        src = torch.from_numpy(np.stack([it["x"], it["y"], it["netfov"].astype(np.float32)])[None])
        out = F.grid_sample(src, g, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
        xs.append(out[0])
        ys.append(out[1])
        fs.append(out[2] > 0.5)
    x, y, f = torch.stack(xs), torch.stack(ys).clamp(0, 1), torch.stack(fs)
    B = x.shape[0]
    if camera:
        x = _camera_aug(x, rng, torch, "scene")
    # photometric augmentation of the normalised input
    k = torch.exp(torch.empty(B, 1, 1).uniform_(math.log(0.6), math.log(1.65)))
    gam = torch.exp(torch.empty(B, 1, 1).uniform_(-0.3, 0.3))
    x = torch.sign(x) * x.abs().clamp_min(1e-6) ** gam * k
    x = x + torch.empty(B, 1, 1).uniform_(-0.15, 0.15)
    coarse = torch.randn(B, 1, 4, 4) * torch.empty(B, 1, 1, 1).uniform_(0, 0.25)
    x = x + F.interpolate(coarse, size=(P, P), mode="bicubic", align_corners=False)[:, 0]
    if rng.random() < 0.5:
        sig = rng.uniform(0.3, 1.6)
        r = int(math.ceil(3 * sig))
        t = np.exp(-0.5 * (np.arange(-r, r + 1) / sig) ** 2)
        t = torch.from_numpy((t / t.sum()).astype(np.float32))
        x = F.conv2d(x[:, None], t.view(1, 1, 1, -1), padding=(0, r))
        x = F.conv2d(x, t.view(1, 1, -1, 1), padding=(r, 0))[:, 0]
    if camera:
        x = _camera_aug(x, rng, torch, "camera")
    x = x + torch.randn(B, P, P) * torch.empty(B, 1, 1).uniform_(0, 0.3)
    noise2 = torch.randn(B, 1, P // 2, P // 2) * torch.empty(B, 1, 1, 1).uniform_(0, 0.2)
    x = x + F.interpolate(noise2, size=(P, P), mode="bilinear", align_corners=False)[:, 0]
    x = x.clamp(-vn.CLIP, vn.CLIP) * f
    return x[:, None], y, f


def loss_fn(logits, y, f, torch):
    F = torch.nn.functional
    fw = f.float()
    bce = (F.binary_cross_entropy_with_logits(logits, y, reduction="none") * fw).sum() / fw.sum().clamp_min(1)
    p = torch.sigmoid(logits) * fw
    dice = 1 - (2 * (p * y).sum() + 1) / (p.sum() + (y * fw).sum() + 1)
    return bce + dice


def choose_threshold(items, weights) -> tuple[float, float]:
    """(threshold, mean F1) maximising the mean F1 of the training photographs at their own resolution."""
    grid_t = np.round(np.arange(0.30, 0.71, 0.025), 3)
    f1s = np.zeros(grid_t.size)
    for it in items:
        p = vn.probability(it["x"], weights)
        H, W = it["rgb"].shape[:2]
        p = vn._resample(p, (H, W)) if p.shape != (H, W) else p
        fov = lit_fov(it["rgb"])
        ref = it["ref"][fov]
        pv = p[fov]
        for i, t in enumerate(grid_t):
            m = pv >= t
            tp = np.count_nonzero(m & ref)
            f1s[i] += 2 * tp / max(m.sum() + ref.sum(), 1)
    f1s /= len(items)
    i = int(np.argmax(f1s))
    return float(grid_t[i]), float(f1s[i])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", type=Path, default=DEFAULT_REAL)
    ap.add_argument("--out", type=Path, default=vn.WEIGHTS_PATH)
    ap.add_argument("--minutes", type=float, default=40.0, help="training time budget (CPU)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--checkpoint-every", type=float, default=10.0, help="minutes between interim exports")
    ap.add_argument("--checkpoint", type=Path, default=Path("/tmp/vessel_net_ck.npz"), help="interim exports")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (3e-3; 5e-4 with --init)")
    ap.add_argument("--lr-min", type=float, default=None, help="final learning rate (1e-4; 2e-5 with --init)")
    ap.add_argument("--init", type=Path, default=None,
                    help="fine-tune from these weights (a vessel_net .npz; folded layers, trained without batch norm)")
    ap.add_argument("--camera-aug", action="store_true",
                    help="augmentation that mimics other cameras (background texture, blobs, illumination "
                         "gradients, low resolution, JPEG blocks; scale jitter x 0.6-1.6)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None,
                    help="train for this many steps (the learning-rate schedule over them) instead of --minutes")
    args = ap.parse_args(argv)
    if args.init is not None and not args.init.is_file():
        print(f"--init: no weights file at {args.init}; pass a vessel_net .npz "
              f"(e.g. {vn.WEIGHTS_PATH})", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    init_target = None
    if args.init is not None:
        with np.load(args.init, allow_pickle=False) as z:
            init_target = float(z["meta.calibre_px"])
    items, target = prepare(args.real, init_target)
    names = [it["name"] for it in items]
    print(f"prepared {len(items)} photographs, target calibre {target:.2f} px ({time.perf_counter() - t0:.0f} s)",
          file=sys.stderr)
    net = Net(bn=args.init is None)
    if args.init is not None:
        init_from(net, args.init)
    lr0 = args.lr or (5e-4 if args.init is not None else 3e-3)
    lr1 = args.lr_min or (2e-5 if args.init is not None else 1e-4)
    opt = torch.optim.Adam(net.parameters(), lr=lr0)
    budget = args.minutes * 60.0
    t_start = time.perf_counter()
    last_ck = t_start
    step, run = 0, 0.0
    while True:
        el = time.perf_counter() - t_start
        frac = step / args.steps if args.steps else el / budget
        if frac >= 1:
            break
        lr = lr1 + 0.5 * (lr0 - lr1) * (1 + math.cos(math.pi * frac))
        for gr in opt.param_groups:
            gr["lr"] = lr
        x, y, f = _batch(items, rng, torch, camera=args.camera_aug)
        net.train()
        loss = loss_fn(net(x), y, f, torch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        lv = float(loss.detach())
        run = 0.98 * run + 0.02 * lv if step else lv
        step += 1
        if step % 50 == 0:
            print(f"step {step} {el / 60:.1f} min lr {lr:.2e} loss {run:.4f}", file=sys.stderr, flush=True)
        if time.perf_counter() - last_ck > args.checkpoint_every * 60:
            last_ck = time.perf_counter()
            net.eval()
            ck = args.checkpoint
            np.savez(ck, **export(net, target, 0.5, names))
            print(f"checkpoint {ck}", file=sys.stderr, flush=True)
    net.eval()
    d = export(net, target, 0.5, names)
    tmp = args.checkpoint.with_name(args.checkpoint.stem + "_unthresholded.npz")
    np.savez(tmp, **d)
    thr, f1 = choose_threshold(items, vn.load_weights(str(tmp)))
    d["meta.threshold"] = np.float64(thr)
    np.savez_compressed(args.out, **d)
    print(f"{step} steps; threshold {thr:.3f} (training-photo mean F1 {f1:.4f}); wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
