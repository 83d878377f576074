"""Geographic atrophy (cRORA) on OCT cubes: the real normal line scan, then phantom cubes with and without it.

Run as: OMP_NUM_THREADS=1 python -m benchmarks.oct_atrophy [--seeds 3] [--noise 1,2] [--real DIR] > oct_atrophy.json

* **Real** (``../shared/real/oct/spectralis_linescan``, a normal macula read from its ``.vol`` file by the
  product's reader): regions of atrophy found (a normal eye must show none). No real scan with atrophy is
  shared, so sensitivity on real scans is not measured here.
* **Phantom**: per appearance (``standard``, ``device``), seed and noise level, an AMD cube drawn with
  geographic atrophy (``synth_oct_volume(..., atrophy=True)``, severity 1.0 and 1.5) and, as negatives, the
  same seed's AMD cube without it (drusen, PEDs, fluid), a normal and a diabetic-retinopathy cube. Per cube:
  true and found regions (8-connected on the en-face grid) and area, and the en-face map's precision and
  recall. Summary: cube-level sensitivity (any region found in a cube with atrophy), specificity (none in a
  cube without), region count agreement and the area error on the cubes with atrophy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np

from benchmarks.oct_real import DEFAULT_REAL, load_linescan
from grok.oct.atrophy import atrophy_regions
from grok.oct.volume import measure_volume
from grok.phantom.oct import atrophy_truth, synth_oct_volume

#: (category, severity, atrophy) drawn per seed and noise level.
CASES = (("amd", 1.0, True), ("amd", 1.5, True), ("amd", 1.5, False), ("normal", 0.0, False),
         ("diabetic_retinopathy", 1.5, False))


def _cube(category: str, severity: float, atrophy: bool, seed: int, noise: float, appearance: str) -> dict:
    ph = synth_oct_volume(category, "OD", np.random.default_rng([seed, 41]), severity=severity, atrophy=atrophy,
                          noise=noise, appearance=appearance)
    g = ph.geometry
    t0 = time.process_time()
    m = measure_volume(ph.volume, g.spacing_mm, "OD")
    cpu = time.process_time() - t0
    n, area, _ = atrophy_regions(m.atrophy, g.lateral_um, g.bscan_spacing_um)
    truth = atrophy_truth(ph.atrophy, g) if atrophy else {"regions": 0, "area_mm2": 0.0}
    row = {"category": category, "severity": severity, "atrophy": atrophy, "seed": seed, "noise": noise,
           "appearance": appearance, "true_regions": truth["regions"], "found_regions": n,
           "true_area_mm2": round(truth["area_mm2"], 3), "found_area_mm2": round(area, 3),
           "measure_cpu_s": round(cpu, 2)}
    if atrophy:
        tp = int((ph.atrophy & m.atrophy).sum())
        row["precision"] = round(tp / max(int(m.atrophy.sum()), 1), 3)
        row["recall"] = round(tp / max(int(ph.atrophy.sum()), 1), 3)
    return row


def summarise(rows: list[dict]) -> dict:
    pos = [r for r in rows if r["atrophy"]]
    neg = [r for r in rows if not r["atrophy"]]
    return {
        "cubes_with_atrophy": len(pos), "cubes_without": len(neg),
        "sensitivity": round(sum(r["found_regions"] > 0 for r in pos) / max(len(pos), 1), 3),
        "specificity": round(sum(r["found_regions"] == 0 for r in neg) / max(len(neg), 1), 3),
        "false_positive_cubes": [f"{r['appearance']} {r['category']} seed {r['seed']} noise {r['noise']}"
                                 for r in neg if r["found_regions"] > 0],
        "region_count_exact": round(sum(r["found_regions"] == r["true_regions"] for r in pos) / max(len(pos), 1), 3),
        "area_mean_abs_error_mm2": round(float(np.mean([abs(r["found_area_mm2"] - r["true_area_mm2"]) for r in pos])), 3)
        if pos else None,
        "area_mean_true_mm2": round(float(np.mean([r["true_area_mm2"] for r in pos])), 3) if pos else None,
        "enface_precision_mean": round(float(np.mean([r["precision"] for r in pos])), 3) if pos else None,
        "enface_recall_mean": round(float(np.mean([r["recall"] for r in pos])), 3) if pos else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--noise", default="1,2")
    ap.add_argument("--appearances", default="standard,device")
    ap.add_argument("--real", type=Path, default=DEFAULT_REAL)
    ap.add_argument("--rows", action="store_true", help="print every cube's row")
    args = ap.parse_args(argv)
    out: dict = {"benchmark": "oct_atrophy", "load_avg_before": [round(x, 2) for x in os.getloadavg()]}
    line = args.real / "spectralis_linescan"
    if (line / "Linescan_1.vol").exists():
        case = load_linescan(line)
        scan = case["scan"]
        m = measure_volume(scan.volume, scan.spacing_mm, scan.laterality)
        n, area, _ = atrophy_regions(m.atrophy, scan.spacing_mm[1] * 1000.0, scan.spacing_mm[2] * 1000.0)
        out["real"] = {"spectralis_linescan (normal macula)": {
            "found_regions": n, "found_area_mm2": round(area, 3) if np.isfinite(area) else None}}
    else:
        out["real"] = {"missing": f"{line} not found: pass --real (the shared/real/oct folder)"}
    rows = []
    for app in args.appearances.split(","):
        for seed in range(args.seeds):
            for noise in (float(x) for x in args.noise.split(",")):
                for cat, sev, ga in CASES:
                    rows.append(_cube(cat, sev, ga, seed, noise, app))
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    out["phantom"] = {app: summarise([r for r in rows if r["appearance"] == app]) for app in args.appearances.split(",")}
    out["phantom"]["all"] = summarise(rows)
    out["measure_cpu_s_mean"] = round(float(np.mean([r["measure_cpu_s"] for r in rows])), 2) if rows else None
    out["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    if args.rows:
        out["rows"] = rows
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
