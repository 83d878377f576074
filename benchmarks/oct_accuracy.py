"""OCT accuracy against phantom truth: boundaries, CST, ETDRS, fluid / drusen volumes, lesion presence.

Run as: python -m benchmarks.oct_accuracy [--seeds 2] [--pathology-seeds 6] [--noise 0.5,1,2] [--workers 2]
        [--method auto|layered|classic] [--appearance standard|device] > oct_accuracy.json

Every category x noise level x seed is one default 49 x 496 x 512 cube (Spectralis-like spacing, random
laterality, severity 1). The script prints one JSON object: per-target figures with their targets and a
``met`` flag, and per-category / per-noise breakdowns. Definitions:

* boundary MAE: mean |measured - true| row over every A-scan of every B-scan (pixels), NaN skipped (the
  fraction of NaN is reported as ``nan_fraction``).
* CST / ETDRS errors: absolute error in um of ``macular_thickness_*`` against the phantom's truth
  (computed from the true boundaries at the true fovea with the same code).
* volume relative error: |measured - true| / true for IRF, SRF and drusen (5 mm) on the cubes whose true
  volume is at least ``--min-volume-nl`` (tiny truth volumes make relative errors meaningless).
* presence F1 per lesion type over cubes: truth present = true volume >= the minimum (PED: true height
  >= 40 um); measured present = measured value above the same threshold.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np

from grok.ids import BOUNDARIES, CATEGORIES

ETDRS = ["macular_thickness_central_um"] + [
    f"macular_thickness_{r}_{q}_um" for r in ("inner", "outer") for q in ("superior", "nasal", "inferior", "temporal")
]
TARGETS = {"outer_boundary_mae_px": 1.0, "inner_boundary_mae_px": 2.0, "cst_abs_err_um": 5.0,
           "etdrs_mae_um": 5.0, "volume_rel_err": 0.20, "presence_f1": 0.9}
OUTER = ("ILM", "EZ", "RPE", "BM")


def _one(args: tuple[str, float, int, float, float, str, str]) -> dict:
    category, noise, seed, _, _, method, appearance = args
    from grok.oct import measure_volume
    from grok.phantom.oct import synth_oct_volume

    rng = np.random.default_rng([seed, CATEGORIES.index(category), int(noise * 10)])
    lat = "OD" if rng.random() < 0.5 else "OS"
    ph = synth_oct_volume(category, lat, rng, severity=1.0 if category != "normal" else 0.0, noise=noise,
                          appearance=appearance)
    t = time.perf_counter()
    m = measure_volume(ph.volume, ph.geometry.spacing_mm, lat, method=method)
    dt = time.perf_counter() - t
    err = np.abs(m.segmentation.astype(np.float64) - ph.boundaries)
    tb, mb = ph.biomarkers, m.biomarkers
    out = {
        "category": category, "noise": noise, "seed": seed, "laterality": lat, "seconds": dt,
        "boundary_mae_px": {b: float(np.nanmean(err[:, k])) for k, b in enumerate(BOUNDARIES)},
        "nan_fraction": float(np.isnan(m.segmentation).mean()),
        "fovea_err_mm": float(math.hypot((m.fovea[0] - ph.fovea[0]) * 0.12, (m.fovea[1] - ph.fovea[1]) * 0.0117))
        if m.fovea else None,
        "etdrs_abs_err_um": {k: abs(mb[k] - tb[k]) for k in ETDRS},
        "truth": {k: tb[k] for k in ("irf_volume_nl", "srf_volume_nl", "drusen_volume_5mm_mm3", "ped_max_height_um",
                                     "hrf_count", "subfoveal_choroidal_thickness_um", "ez_disruption_fraction",
                                     "macular_thickness_central_um")},
        "measured": {k: mb[k] for k in ("irf_volume_nl", "srf_volume_nl", "drusen_volume_5mm_mm3",
                                        "ped_max_height_um", "hrf_count", "subfoveal_choroidal_thickness_um",
                                        "ez_disruption_fraction", "macular_thickness_central_um")},
    }
    return out


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")


def summarise(rows: list[dict], min_nl: float, min_drusen_mm3: float) -> dict:
    def mean(xs):
        xs = [x for x in xs if x is not None and math.isfinite(x)]
        return float(np.mean(xs)) if xs else float("nan")

    mae = {b: mean([r["boundary_mae_px"][b] for r in rows]) for b in BOUNDARIES}
    etdrs_all = [v for r in rows for v in r["etdrs_abs_err_um"].values()]
    cst = [r["etdrs_abs_err_um"]["macular_thickness_central_um"] for r in rows]
    vol = {}
    for key, thr in (("irf_volume_nl", min_nl), ("srf_volume_nl", min_nl), ("drusen_volume_5mm_mm3", min_drusen_mm3)):
        rel = [abs(r["measured"][key] - r["truth"][key]) / r["truth"][key] for r in rows if r["truth"][key] >= thr]
        vol[key] = {"mean_rel_err": mean(rel), "n_cubes": len(rel)}
    pres = {}
    for kind, key, thr in (("irf", "irf_volume_nl", min_nl), ("srf", "srf_volume_nl", min_nl),
                           ("drusen", "drusen_volume_5mm_mm3", min_drusen_mm3), ("ped", "ped_max_height_um", 40.0)):
        tp = sum(1 for r in rows if r["truth"][key] >= thr and r["measured"][key] >= thr)
        fp = sum(1 for r in rows if r["truth"][key] < thr and r["measured"][key] >= thr)
        fn = sum(1 for r in rows if r["truth"][key] >= thr and r["measured"][key] < thr)
        pres[kind] = {"f1": _f1(tp, fp, fn), "tp": tp, "fp": fp, "fn": fn}
    hrf = [abs(r["measured"]["hrf_count"] - r["truth"]["hrf_count"]) for r in rows]
    chor = [abs(r["measured"]["subfoveal_choroidal_thickness_um"] - r["truth"]["subfoveal_choroidal_thickness_um"])
            for r in rows]
    ez = [abs(r["measured"]["ez_disruption_fraction"] - r["truth"]["ez_disruption_fraction"]) for r in rows]
    outer = max(mae[b] for b in OUTER)
    inner = max(mae[b] for b in BOUNDARIES if b not in OUTER)
    summary = {
        "boundary_mae_px": mae,
        "outer_boundary_mae_px": {"value": outer, "target": TARGETS["outer_boundary_mae_px"],
                                  "met": outer <= TARGETS["outer_boundary_mae_px"], "boundaries": list(OUTER)},
        "inner_boundary_mae_px": {"value": inner, "target": TARGETS["inner_boundary_mae_px"],
                                  "met": inner <= TARGETS["inner_boundary_mae_px"]},
        "cst_abs_err_um": {"mean": mean(cst), "max": max(cst), "target": TARGETS["cst_abs_err_um"],
                           "met": mean(cst) <= TARGETS["cst_abs_err_um"]},
        "etdrs_mae_um": {"value": mean(etdrs_all), "target": TARGETS["etdrs_mae_um"],
                         "met": mean(etdrs_all) <= TARGETS["etdrs_mae_um"]},
        "volume_rel_err": {**vol, "target": TARGETS["volume_rel_err"],
                           "met": all(v["mean_rel_err"] <= TARGETS["volume_rel_err"] for v in vol.values()
                                      if v["n_cubes"])},
        "presence_f1": {**pres, "target": TARGETS["presence_f1"],
                        "met": all(p["f1"] >= TARGETS["presence_f1"] for p in pres.values() if p["tp"] + p["fn"])},
        "hrf_count_mae": mean(hrf),
        "subfoveal_choroid_mae_um": mean(chor),
        "ez_disruption_fraction_mae": mean(ez),
        "fovea_err_mm_mean": mean([r["fovea_err_mm"] for r in rows]),
        "nan_fraction_mean": mean([r["nan_fraction"] for r in rows]),
        "seconds_per_cube_mean": mean([r["seconds"] for r in rows]),
    }
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=2, help="cubes per category and noise level")
    ap.add_argument("--noise", default="0.5,1,2", help="comma-separated noise levels (0.5 easy, 1 typical, 2 hard)")
    ap.add_argument("--categories", default=",".join(CATEGORIES))
    ap.add_argument("--pathology-seeds", type=int, default=0,
                    help="cubes per noise level for amd and diabetic_retinopathy (default: --seeds); more cubes "
                         "with fluid, drusen and PED make the volume and presence figures less noisy")
    ap.add_argument("--workers", type=int, default=1, help="processes (each single-threaded)")
    ap.add_argument("--min-volume-nl", type=float, default=5.0, help="smallest true fluid volume scored (nl)")
    ap.add_argument("--min-drusen-mm3", type=float, default=0.003, help="smallest true drusen volume scored")
    ap.add_argument("--method", default="auto", choices=("auto", "layered", "classic"),
                    help="segmentation method (grok.oct.segment.segment_bscan)")
    ap.add_argument("--appearance", default="standard", choices=("standard", "device"),
                    help="phantom look: standard, or device (per-eye random reflectivities, contrast and PSF)")
    ap.add_argument("--rows", action="store_true", help="include every cube's figures in the output")
    args = ap.parse_args(argv)
    noises = [float(x) for x in args.noise.split(",")]
    cats = [c for c in args.categories.split(",") if c]
    def n_seeds(c: str) -> int:
        return max(args.seeds, args.pathology_seeds) if c in ("amd", "diabetic_retinopathy") else args.seeds

    jobs = [(c, nz, s, args.min_volume_nl, args.min_drusen_mm3, args.method, args.appearance) for c in cats
            for nz in noises
            for s in range(n_seeds(c))]
    t0 = time.perf_counter()
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as ex:
            rows = list(ex.map(_one, jobs))
    else:
        rows = [_one(j) for j in jobs]
    out = {
        "benchmark": "oct_accuracy",
        "method": args.method,
        "appearance": args.appearance,
        "cubes": len(rows),
        "geometry": "49 x 496 x 512, 3.87 x 11.7 x 120 um",
        "noise_levels": noises,
        "categories": cats,
        "overall": summarise(rows, args.min_volume_nl, args.min_drusen_mm3),
        "by_noise": {str(nz): summarise([r for r in rows if r["noise"] == nz], args.min_volume_nl,
                                        args.min_drusen_mm3)["boundary_mae_px"] for nz in noises},
        "by_category": {c: {
            "boundary_mae_px": summarise([r for r in rows if r["category"] == c], args.min_volume_nl,
                                         args.min_drusen_mm3)["boundary_mae_px"],
            "etdrs_mae_um": float(np.mean([v for r in rows if r["category"] == c
                                           for v in r["etdrs_abs_err_um"].values()])),
        } for c in cats},
        "wall_seconds": time.perf_counter() - t0,
    }
    if args.rows:
        out["rows"] = rows
    json.dump(out, sys.stdout, indent=2, default=lambda o: None)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
