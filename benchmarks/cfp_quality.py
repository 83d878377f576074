"""CFP image-quality grading on degraded real photographs and on photographs that are not fundi (issue #14).

Run as: python -m benchmarks.cfp_quality [--real DIR] [--every N] > cfp_quality.json

Every N-th photograph of ``../shared/real/cfp`` (CHASE_DB1 and HRF, read in place; see
``benchmarks/cfp_real.py`` for sources and licences) is measured as it is and after each degradation a
clinic export can suffer: under-exposed (x 0.15, x 0.3), over-exposed (x 2.5, clipped), Gaussian blur of
2, 3 and 5 px x (FOV radius / 480), the central half cut out (no edge of the field visible), the green
channel alone as grey (red-free / monochrome) and grain (Gaussian noise of 40/255). scikit-image's
everyday colour photographs (astronaut, coffee, chelsea, rocket, immunohistochemistry, hubble) stand
for images that are not fundi. Per kind: the grades, how many give an AV ratio or a disc, and the AV
ratio's change against the same photograph undegraded. What we want: ungradable inputs graded
``reject`` (or the affected measures NaN with the reason), never a crash, never a confident number.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np
from scipy import ndimage as ndi

from benchmarks.cfp_real import DEFAULT_REAL, _hrf_photos

KINDS = ("original", "under_x0.15", "dark_x0.3", "over_x2.5", "blur_2", "blur_3", "blur_5", "crop_centre",
         "monochrome", "grain_40")
NON_FUNDUS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")


def degrade(rgb: np.ndarray, kind: str, sc: float) -> np.ndarray:
    """``rgb`` (H, W, 3) uint8 degraded by ``kind`` (one of ``KINDS``); ``sc`` = FOV radius / 480 in its pixels."""
    f = rgb.astype(np.float32)
    if kind == "original":
        return rgb
    if kind.startswith(("under_", "dark_", "over_")):
        return np.clip(f * float(kind.split("_x")[1]), 0, 255).astype(np.uint8)
    if kind.startswith("blur_"):
        s = float(kind.split("_")[1]) * sc
        return np.stack([ndi.gaussian_filter(f[..., c], s) for c in range(3)], axis=-1).astype(np.uint8)
    if kind == "crop_centre":
        h, w = rgb.shape[:2]
        return rgb[h // 4: 3 * h // 4, w // 4: 3 * w // 4]
    if kind == "monochrome":
        return np.repeat(rgb[..., 1:2], 3, axis=2)
    if kind == "grain_40":
        noise = np.random.default_rng(0).normal(0, 40, f.shape)
        return np.clip(f + noise, 0, 255).astype(np.uint8)
    raise ValueError(f"unknown degradation {kind!r}; use one of {KINDS}")


def _row(m) -> dict:
    avr = m.biomarkers["av_ratio"]
    return {"grade": m.quality["grade"], "reasons": list(m.quality["reasons"]),
            "av_ratio": round(float(avr), 4) if np.isfinite(avr) else None,
            "disc_found": m.biomarkers["disc_center_xy_px"] is not None,
            "vessel_density": (round(float(m.biomarkers["vessel_density"]), 4)
                               if np.isfinite(m.biomarkers["vessel_density"]) else None)}


def main(argv: list[str] | None = None) -> int:
    from grok.cfp import measure_fundus
    from grok.cfp.preprocess import REFERENCE_FOV_RADIUS_PX, find_fov, to_working
    from grok.ingest.readers import read_cfp

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", type=Path, default=DEFAULT_REAL, help="the shared/real/cfp folder")
    ap.add_argument("--every", type=int, default=7, help="take every N-th photograph of the 73")
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma-separated degradations (original always runs)")
    args = ap.parse_args(argv)
    if not args.real.is_dir():
        print(f"no real-data folder at {args.real}; pass --real", file=sys.stderr)
        return 3
    photos = sorted((args.real / "chase_db1" / "images").glob("*.jpg")) + [t[0] for t in _hrf_photos(args.real / "hrf_av")]
    kinds = ["original"] + [k for k in args.kinds.split(",") if k in KINDS and k != "original"]
    rows: dict[str, list[dict]] = {k: [] for k in kinds}
    for p in photos[:: args.every]:
        rgb = read_cfp(p).rgb
        wk = to_working(rgb)
        sc = find_fov(wk.rgb).radius / REFERENCE_FOV_RADIUS_PX / wk.scale
        base = None
        for kind in kinds:
            try:
                r = _row(measure_fundus(degrade(rgb, kind, sc)))
            except Exception as e:  # a crash is a finding, not a stop
                r = {"grade": "crash", "reasons": [f"{type(e).__name__}: {e}"], "av_ratio": None, "disc_found": False}
            r["photo"] = p.stem
            if kind == "original":
                base = r["av_ratio"]
            r["av_ratio_change"] = (round(r["av_ratio"] - base, 4)
                                    if r["av_ratio"] is not None and base is not None else None)
            rows[kind].append(r)
            print(f"{p.stem} {kind}: {r['grade']} AVR {r['av_ratio']} {'; '.join(r['reasons'])[:120]}", file=sys.stderr)
    from skimage import data

    rows["not_a_fundus"] = []
    for name in NON_FUNDUS:
        im = np.asarray(getattr(data, name)())[..., :3]
        r = _row(measure_fundus(im))
        r["photo"] = name
        rows["not_a_fundus"].append(r)
        print(f"{name}: {r['grade']} {'; '.join(r['reasons'])[:120]}", file=sys.stderr)
    summary = {}
    for kind, rs in rows.items():
        ch = [abs(r["av_ratio_change"]) for r in rs if r.get("av_ratio_change") is not None]
        summary[kind] = {"n": len(rs), **{g: sum(r["grade"] == g for r in rs) for g in ("good", "usable", "reject", "crash")},
                         "av_ratio_given": sum(r["av_ratio"] is not None for r in rs),
                         "disc_found": sum(r["disc_found"] for r in rs),
                         "av_ratio_abs_change_median": round(float(np.median(ch)), 4) if ch else None,
                         "av_ratio_abs_change_max": round(float(np.max(ch)), 4) if ch else None}
    print(json.dumps({"summary": summary, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
