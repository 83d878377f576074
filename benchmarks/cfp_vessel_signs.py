"""Vessel signs of the CFP measure (AV nicking, ``grok.cfp.vessel_signs``) on the phantom and on real photographs; prints JSON.

Run as: python -m benchmarks.cfp_vessel_signs [--n 16] [--seed 0] [--size 1024] [--real DIR]
            [--sets chase_db1,hrf_av] [--limit N] [--no-phantom] [--rows] > cfp_vessel_signs.json

Phantom (``grok.phantom.cfp.synth_fundus``): ``--n`` photographs, even ones hypertensive at severity 0.5,
1.0, 1.5, 2.0 in turn (the phantom narrows each venule at an arteriole crossing with probability 0.5 x
severity), odd ones normal and diabetic retinopathy in turn (no nicking drawn), both eyes. The phantom
narrows a venule wherever an arteriole comes within half their summed radii (``av_nicking_xy_px``):
many of those lie on the disc (root vessels overlap there), at side-by-side touches or on venules
under 2 px. The truth is split: nicks more than 1 disc diameter from the disc centre (the extractor does
not assess nearer), and of those the *gradable* ones (``TRUTH_MIN_VENULE_PX``: true crossings of a
venule drawn >= 4 px wide). Reported:

* per photograph: sensitivity = share of photographs with a gradable nick that get a count of at least
  1; specificity = share of photographs with no nick drawn that get 0; a count of None (nothing
  assessable) is neither and is counted apart;
* per crossing: each assessed crossing (``extras["av_nicking"]["assessed"]``) lies at a drawn nick when
  within 12 px (at 1024 px) or 2.5 of its venule calibres of one (the graph's junction centre and the phantom's
  crossing point differ by a few px); sensitivity and specificity of the verdict over those;
* count agreement: Spearman rank correlation and mean absolute difference of the count and the number
  of gradable nicks (over photographs with a count), and the mean count per group.

Real photographs (``shared/real/cfp``; none is labelled hypertensive): CHASE_DB1 (28 photographs of
children) and HRF (15 healthy, 15 diabetic retinopathy, 15 glaucoma): the distribution of the count per
set and group; in healthy eyes every nicked crossing is taken as a false positive.

``cpu_s`` is the CPU time of the extractor's stage alone (``extras["timing_cpu_s"]["vessel_signs"]``,
one thread) per photograph; ``measure_cpu_s`` that of the whole ``measure_fundus``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np

from benchmarks.cfp_real import DEFAULT_REAL, _hrf_photos, _measure

SEVERITIES = (0.5, 1.0, 1.5, 2.0)
#: Truth nicks nearer the disc centre than this (DD) are not counted (the extractor's own rule).
TRUTH_MIN_DISC_DISTANCE_DD = 1.0
#: A drawn nick is gradable when it is a crossing (``av_nicking_is_crossing``: the arteriole crosses a
#: venule that goes on both sides, not a side-by-side touch or a venule's end) of a venule drawn at least
#: this wide (px at 1024 px; its half-maximum calibre then reads about 3 px, the extractor's
#: ``min_venule_px``), more than ``TRUTH_MIN_DISC_DISTANCE_DD`` from the disc centre.
TRUTH_MIN_VENULE_PX = 4.0


def _spearman(a: list[float], b: list[float]) -> float | None:
    if len(a) < 3:
        return None
    ra = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(float)
    rb = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(float)
    # average ranks for ties
    for r, x in ((ra, np.asarray(a, float)), (rb, np.asarray(b, float))):
        for v in np.unique(x):
            sel = x == v
            r[sel] = r[sel].mean()
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def run_phantom(n: int, seed: int, size: int) -> tuple[dict, list[dict]]:
    from grok.cfp import measure_fundus
    from grok.phantom.cfp import synth_fundus

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        if i % 2 == 0:
            cat, sev = "hypertension", SEVERITIES[(i // 2) % len(SEVERITIES)]
        else:
            cat, sev = ("normal" if i % 4 == 1 else "diabetic_retinopathy"), 1.0
        ph = synth_fundus(cat, ("OD", "OS")[(i // 2) % 2], rng, severity=sev, size=size)
        t = ph.truth
        c0 = time.process_time()
        m = measure_fundus(ph.image, laterality=ph.laterality)
        cpu = time.process_time() - c0
        disc, dd = np.asarray(t["disc_center_xy_px"]), float(t["disc_diameter_px"])
        away = [math.hypot(*(np.asarray(p) - disc)) > TRUTH_MIN_DISC_DISTANCE_DD * dd for p in t["av_nicking_xy_px"]]
        nicks = [np.asarray(p) for p, a in zip(t["av_nicking_xy_px"], away) if a]
        gradable = [np.asarray(p) for p, a, w, c in zip(t["av_nicking_xy_px"], away, t["av_nicking_venule_width_px"],
                                                         t["av_nicking_is_crossing"])
                    if a and c and w * 1024 / size >= TRUTH_MIN_VENULE_PX]
        ext = m.extras.get("av_nicking", {})
        cross = []
        for c in ext.get("assessed", []):
            xy = np.asarray(c["xy"])
            tol = max(12.0 * size / 1024, 2.5 * float(c["venule_px"]))
            near = any(math.hypot(*(xy - p)) < tol for p in nicks)
            cross.append({"at_drawn_nick": near, "nicked": c["nicked"]})
        count = m.biomarkers["av_nicking_count"]
        rows.append({"photo": i, "category": cat, "severity": sev, "drawn": int(t["av_nicking_count"]),
                     "drawn_outside_disc": len(nicks), "gradable": len(gradable), "count": count, "assessed": len(cross),
                     "crossings": cross, "cpu_s": round(m.extras["timing_cpu_s"].get("vessel_signs", float("nan")), 4),
                     "measure_cpu_s": round(cpu, 3),
                     "reasons": m.extras.get("reasons", {}).get("av_nicking", [])})
        print(f"phantom {i} {cat} sev {sev}: drawn {len(nicks)} (outside 1 DD), gradable {len(gradable)}, count {count}, "
              f"assessed {len(cross)}", file=sys.stderr)
    pos = [r for r in rows if r["gradable"] > 0]
    neg = [r for r in rows if r["drawn_outside_disc"] == 0]
    tp = sum(1 for r in pos if (r["count"] or 0) >= 1)
    tn = sum(1 for r in neg if r["count"] == 0)
    cr = [c for r in rows for c in r["crossings"]]
    c_pos = [c for c in cr if c["at_drawn_nick"]]
    c_neg = [c for c in cr if not c["at_drawn_nick"]]
    counted = [r for r in rows if r["count"] is not None]
    summary = {
        "photos": len(rows),
        "photo_sensitivity": tp / len(pos) if pos else None, "photos_with_gradable_nicks": len(pos),
        "photo_specificity": tn / len(neg) if neg else None, "photos_without_nicks": len(neg),
        "photos_count_none": sum(1 for r in rows if r["count"] is None),
        "crossing_sensitivity": (sum(c["nicked"] for c in c_pos) / len(c_pos)) if c_pos else None,
        "crossings_at_drawn_nicks": len(c_pos),
        "crossing_specificity": (sum(not c["nicked"] for c in c_neg) / len(c_neg)) if c_neg else None,
        "crossings_elsewhere": len(c_neg),
        "count_spearman_vs_gradable": _spearman([r["count"] for r in counted], [r["gradable"] for r in counted]),
        "count_mean_abs_error_vs_gradable": (float(np.mean([abs(r["count"] - r["gradable"]) for r in counted]))
                                             if counted else None),
        "mean_count_by_group": {
            g: (float(np.mean([r["count"] for r in counted if k(r)])) if any(k(r) for r in counted) else None)
            for g, k in (("hypertension", lambda r: r["category"] == "hypertension"),
                         ("no_nicking_drawn", lambda r: r["category"] != "hypertension"))},
        "mean_drawn_outside_disc_hypertension": float(np.mean([r["drawn_outside_disc"] for r in rows
                                                               if r["category"] == "hypertension"] or [0])),
        "mean_gradable_hypertension": float(np.mean([r["gradable"] for r in rows
                                                     if r["category"] == "hypertension"] or [0])),
        "cpu_s_median": float(np.median([r["cpu_s"] for r in rows])) if rows else None,
    }
    return summary, rows


def _real_row(name: str, m, cpu: float) -> dict:
    ext = m.extras.get("av_nicking", {})
    return {"photo": name, "count": m.biomarkers["av_nicking_count"], "assessed": len(ext.get("assessed", [])),
            "venule_crossings": ext.get("venule_crossings"), "not_assessed": ext.get("not_assessed"),
            "cpu_s": round(m.extras.get("timing_cpu_s", {}).get("vessel_signs", float("nan")), 4),
            "measure_cpu_s": round(cpu, 3), "reasons": m.extras.get("reasons", {}).get("av_nicking", [])}


def run_real(folder: Path, sets: list[str], limit: int | None) -> tuple[dict, list[dict]]:
    rows = []
    if "chase_db1" in sets:
        for p in sorted((folder / "chase_db1" / "images").glob("*.jpg"))[:limit]:
            _, m, _sec, cpu = _measure(p)
            rows.append({"set": "chase_db1", "group": "children", **_real_row(p.stem, m, cpu)})
            print(f"chase_db1 {p.stem}: count {rows[-1]['count']} assessed {rows[-1]['assessed']}", file=sys.stderr)
    if "hrf_av" in sets:
        for p, _lab, _fov in _hrf_photos(folder / "hrf_av")[:limit]:
            _, m, _sec, cpu = _measure(p)
            group = {"h": "healthy", "dr": "diabetic_retinopathy", "g": "glaucoma"}.get(p.stem.split("_")[-1], "?")
            rows.append({"set": "hrf_av", "group": group, **_real_row(p.stem, m, cpu)})
            print(f"hrf_av {p.stem}: count {rows[-1]['count']} assessed {rows[-1]['assessed']}", file=sys.stderr)
    summary = {}
    for key in sorted({(r["set"], r["group"]) for r in rows}):
        rs = [r for r in rows if (r["set"], r["group"]) == key]
        counts = [r["count"] for r in rs if r["count"] is not None]
        summary[f"{key[0]}/{key[1]}"] = {
            "photos": len(rs), "count_none": len(rs) - len(counts),
            "count_distribution": {str(k): counts.count(k) for k in sorted(set(counts))},
            "share_zero": counts.count(0) / len(counts) if counts else None,
            "nicked_crossings": int(sum(counts)), "assessed_crossings": int(sum(r["assessed"] for r in rs)),
            "cpu_s_median": float(np.median([r["cpu_s"] for r in rs])),
            "measure_cpu_s_median": float(np.median([r["measure_cpu_s"] for r in rs])),
        }
    return summary, rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--real", type=Path, default=DEFAULT_REAL)
    ap.add_argument("--sets", default="chase_db1,hrf_av", help="comma-separated; empty: no real photographs")
    ap.add_argument("--limit", type=int, default=None, help="at most this many photographs per real set")
    ap.add_argument("--no-phantom", action="store_true")
    ap.add_argument("--rows", action="store_true", help="add every photograph's row")
    args = ap.parse_args(argv)
    out: dict = {"load_average_1min_start": os.getloadavg()[0]}
    if not args.no_phantom:
        s, rows = run_phantom(args.n, args.seed, args.size)
        out["phantom"] = s
        if args.rows:
            out["phantom_rows"] = rows
    sets = [x for x in args.sets.split(",") if x]
    if sets:
        if not args.real.is_dir():
            print(f"cfp_vessel_signs: real folder {args.real} not found; pass --real DIR (shared/real/cfp) or "
                  "--sets ''", file=sys.stderr)
            return 2
        s, rows = run_real(args.real, sets, args.limit)
        out["real"] = s
        if args.rows:
            out["real_rows"] = rows
    out["load_average_1min_end"] = os.getloadavg()[0]
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
