"""Calibration of this engine's vessel measures against the published ranges the knowledge base uses.

Run as: python -m benchmarks.cfp_calibration [--real DIR] [--groups h,dr,g] > cfp_calibration.json

The knowledge base grades this engine's AV ratio and arteriolar / venular fractal dimensions against
*derived* ranges (``knowledge_base/normative_ranges.yaml``, ids ``*_engine_ukb2024_hrf``): the published
population figures (UK Biobank, RMHAS software) moved onto this engine's scale by the difference between
the engine's mean on the healthy HRF photographs and the published mean (a mean-matching calibration:
the two methods never measured the same eyes). This benchmark measures those photographs with
``grok.cfp.measure_fundus`` (one thread) and prints, per diagnosis group, the mean, SD and n of each
measure, the knowledge base's range for it, and ``in_sync`` (the range's mean within ``--tolerance``
standard errors of the healthy mean measured now). When a change to the vessel code moves the healthy
means, this says so, and the ``suggested`` block gives the new figures for the YAML.

Data: HRF (Budai et al., Int. J. Biomed. Imaging 2013; images CC BY 4.0), read in place from
``../shared/real/cfp/hrf_av`` (see ``shared/real/README.md``); nothing is copied. The A/V labels are not
used here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

from benchmarks.cfp_real import DEFAULT_REAL, _hrf_photos, _measure  # noqa: E402

#: Measure -> (knowledge-base range id on the engine's scale, published mean, published SD, source id).
CALIBRATED = {
    "av_ratio": "av_ratio_engine_ukb2024_hrf",
    "arterial_fractal_dimension": "fd_arterial_engine_ukb2024_hrf",
    "venular_fractal_dimension": "fd_venular_engine_ukb2024_hrf",
}
#: The published UK Biobank figures (RMHAS; 10,151 healthy participants), as the abstract gives them.
#: AV ratio: the ratio of the mean CRAE and CRVE (152 / 233 µm); the abstract gives no AV-ratio SD.
PUBLISHED = {
    "av_ratio": {"mean": 152.0 / 233.0, "sd": None},
    "arterial_fractal_dimension": {"mean": 1.53, "sd": 0.039},
    "venular_fractal_dimension": {"mean": 1.56, "sd": 0.025},
}


def summarise(values: list[float]) -> dict:
    xs = [v for v in values if v is not None and math.isfinite(v)]
    if len(xs) < 2:
        return {"n": len(xs), "mean": xs[0] if xs else None, "sd": None}
    return {"n": len(xs), "mean": statistics.fmean(xs), "sd": statistics.stdev(xs)}


def measure_group_rows(folder: Path, groups: set[str]) -> list[dict]:
    rows = []
    for p, _lab, _fov in _hrf_photos(folder):
        group = p.stem.split("_")[-1]
        if group not in groups:
            continue
        _, m, sec, cpu = _measure(p)
        row = {"photo": p.stem, "group": group, "grade": m.quality["grade"], "cpu_seconds": round(cpu, 3)}
        for k in CALIBRATED:
            v = float(m.biomarkers.get(k, float("nan")))
            row[k] = v if math.isfinite(v) else None
        rows.append(row)
        print(f"{p.stem}: " + " ".join(f"{k} {row[k]}" for k in CALIBRATED) + f" ({cpu:.2f} CPU s)", file=sys.stderr)
    return rows


def calibration_report(rows: list[dict], tolerance_se: float = 2.0) -> dict:
    """Per group summaries, the knowledge base's engine-scale ranges and whether they match the healthy rows."""
    from grok.knowledge import load_knowledge_base

    kb = load_knowledge_base()
    groups = sorted({r["group"] for r in rows})
    out: dict = {"kb_snapshot_id": kb.snapshot_id, "groups": {}, "measures": {}}
    for g in groups:
        out["groups"][g] = {k: summarise([r[k] for r in rows if r["group"] == g]) for k in CALIBRATED}
    healthy = out["groups"].get("h", {})
    for k, rid in CALIBRATED.items():
        rng = kb.normative_ranges.get(rid)
        h = healthy.get(k, {"n": 0, "mean": None, "sd": None})
        pub = PUBLISHED[k]
        entry = {"kb_range": rid, "published": pub, "healthy": h}
        if rng is not None:
            entry["kb"] = {"mean": rng.mean, "sd": rng.sd}
        if h["mean"] is not None and h["sd"]:
            se = h["sd"] / math.sqrt(h["n"])
            sd = max(h["sd"], pub["sd"] or 0.0)
            entry["suggested"] = {"mean": round(h["mean"], 4), "sd": round(sd, 4),
                                  "offset_from_published": round(h["mean"] - pub["mean"], 4)}
            entry["in_sync"] = bool(rng is not None and abs(rng.mean - h["mean"]) <= tolerance_se * se
                                    and rng.sd >= (pub["sd"] or 0.0))
        else:
            entry["in_sync"] = False
        out["measures"][k] = entry
    out["in_sync"] = all(e["in_sync"] for e in out["measures"].values())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--real", type=Path, default=DEFAULT_REAL, help="folder with hrf_av/ (shared/real/cfp)")
    ap.add_argument("--groups", default="h,dr,g", help="HRF diagnosis groups to measure (h = healthy)")
    ap.add_argument("--tolerance", type=float, default=2.0, help="standard errors allowed between KB and measured mean")
    ap.add_argument("--rows", action="store_true", help="include per-photo rows")
    args = ap.parse_args(argv)
    folder = args.real / "hrf_av"
    if not folder.is_dir():
        print(f"error: {folder} not found; pass --real pointing at shared/real/cfp", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    rows = measure_group_rows(folder, set(args.groups.split(",")))
    rep = calibration_report(rows, args.tolerance)
    rep["conditions"] = {"photos": len(rows), "wall_s": round(time.perf_counter() - t0, 1),
                         "load_avg_1m": round(os.getloadavg()[0], 2), "threads": 1}
    if args.rows:
        rep["rows"] = rows
    json.dump(rep, sys.stdout, indent=1)
    print()
    return 0 if rep["in_sync"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
