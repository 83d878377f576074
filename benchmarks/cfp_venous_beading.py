"""Venous beading (``grok.cfp.vessel_signs.find_venous_beading``) on the phantom and on real photographs; prints JSON.

Run as: python -m benchmarks.cfp_venous_beading [--n 16] [--seed 2000] [--size 1024] [--real DIR]
            [--sets chase_db1,hrf_av] [--limit N] [--no-phantom] [--rows] > cfp_venous_beading.json

Phantom (``grok.phantom.cfp.synth_fundus``): ``--n`` seeds (``--seed`` .. ``--seed + n - 1``), each drawn
twice from the same seed: a diabetic-retinopathy eye with ``venous_beading=3`` (three vein stretches asked
for; fewer are drawn where no vein has room, ``venous_beading_count``), and an eye without beading (normal
and diabetic retinopathy in turn; the same anatomy when the category matches). Reported:

* per eye: sensitivity = share of eyes with a drawn stretch that get a beaded segment's box overlapping
  one; specificity = share of eyes drawn without beading that get a count of 0 (None: a failure, counted
  apart as well);
* per stretch: drawn stretches with an overlapping box; boxes elsewhere (false segments) per eye;
* count vs drawn: mean absolute difference over beaded eyes.

The detector's settings were chosen on seeds 100-111 (``--seed 100 --n 12``); report held-out seeds.

Real photographs (``shared/real/cfp``; none is labelled with venous beading): CHASE_DB1 (28 photographs of
children) and HRF (15 healthy, 15 diabetic retinopathy, 15 glaucoma): the count per photograph, per set and
group; in healthy eyes every beaded segment is taken as a false positive. HRF's diabetic eyes have no
reference grade: their counts are reported, not scored.

``cpu_s`` is the CPU time of the vessel-sign stage (``extras["timing_cpu_s"]["vessel_signs"]``: AV nicking
and venous beading, one thread) per photograph; ``bead_cpu_s`` the beading detector alone, timed on the
measured segments in the same process (``--paired``: median of alternating runs of the stage with and
without it).
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

import benchmarks.cfp_real as cfp_real
from benchmarks.cfp_real import DEFAULT_REAL, _hrf_photos, _measure

BEADED_STRETCHES = 3


def _overlap(a: list[float], b: list[float]) -> bool:
    return not (a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1])


def _boxes(m) -> list[list[float]]:
    """The beaded segments' boxes (``extras["venous_beading"]``; not in the lesion list, see docs/cfp.md)."""
    if m.biomarkers["venous_beading_count"] is None:
        return []
    return [b["box_xyxy_px"] for b in m.extras["venous_beading"]["assessed"] if b["beaded"]]


def _row(m, cpu: float) -> dict:
    ext = m.extras.get("venous_beading", {})
    return {"count": m.biomarkers["venous_beading_count"], "assessed": len(ext.get("assessed", [])),
            "vein_segments": ext.get("vein_segments"), "not_assessed": ext.get("not_assessed"),
            "cpu_s": round(m.extras.get("timing_cpu_s", {}).get("vessel_signs", float("nan")), 4),
            "measure_cpu_s": round(cpu, 3), "reasons": m.extras.get("reasons", {}).get("venous_beading", [])}


def run_phantom(n: int, seed: int, size: int) -> tuple[dict, list[dict]]:
    from grok.cfp import measure_fundus
    from grok.phantom.cfp import synth_fundus

    rows = []
    for i in range(n):
        sd = seed + i
        eye = ("OD", "OS")[i % 2]
        for beaded in (True, False):
            cat = "diabetic_retinopathy" if beaded or i % 2 else "normal"
            ph = synth_fundus(cat, eye, np.random.default_rng(sd), severity=1.0, size=size,
                              venous_beading=BEADED_STRETCHES if beaded else 0)
            c0 = time.process_time()
            m = measure_fundus(ph.image, laterality=ph.laterality, venous_beading=True)
            cpu = time.process_time() - c0
            drawn = [t["box_xyxy_px"] for t in ph.truth["venous_beading"]]
            boxes = _boxes(m)
            hit_stretches = sum(any(_overlap(b, d) for b in boxes) for d in drawn)
            false_boxes = sum(not any(_overlap(b, d) for d in drawn) for b in boxes)
            rows.append({"seed": sd, "category": cat, "beading_asked": BEADED_STRETCHES if beaded else 0,
                         "drawn": len(drawn), "stretches_found": hit_stretches, "false_segments": false_boxes,
                         **_row(m, cpu)})
            print(f"phantom {sd} {cat} asked {rows[-1]['beading_asked']}: drawn {len(drawn)}, count {rows[-1]['count']}, "
                  f"found {hit_stretches}, false {false_boxes}", file=sys.stderr)
    pos = [r for r in rows if r["drawn"] > 0]
    neg = [r for r in rows if r["beading_asked"] == 0]
    counted = [r for r in pos if r["count"] is not None]
    summary = {
        "eyes": len(rows),
        "eye_sensitivity": sum(r["stretches_found"] >= 1 for r in pos) / len(pos) if pos else None,
        "eyes_with_beading_drawn": len(pos),
        "eyes_beading_asked_none_drawn": sum(1 for r in rows if r["beading_asked"] and not r["drawn"]),
        "eye_specificity": sum(r["count"] == 0 for r in neg) / len(neg) if neg else None,
        "eyes_without_beading": len(neg),
        "eyes_count_none": sum(1 for r in rows if r["count"] is None),
        "stretch_sensitivity": (sum(r["stretches_found"] for r in pos) / sum(r["drawn"] for r in pos)) if pos else None,
        "stretches_drawn": int(sum(r["drawn"] for r in pos)),
        "false_segments_per_eye_beaded": float(np.mean([r["false_segments"] for r in pos])) if pos else None,
        "false_segments_per_eye_without": float(np.mean([r["false_segments"] for r in neg])) if neg else None,
        "count_mean_abs_error_vs_drawn": (float(np.mean([abs(r["count"] - r["drawn"]) for r in counted]))
                                          if counted else None),
        "assessed_segments_median": float(np.median([r["assessed"] for r in rows])) if rows else None,
        "cpu_s_median": float(np.median([r["cpu_s"] for r in rows])) if rows else None,
    }
    return summary, rows


def run_real(folder: Path, sets: list[str], limit: int | None) -> tuple[dict, list[dict]]:
    rows = []
    photos = []
    if "chase_db1" in sets:
        photos += [("chase_db1", "children", p) for p in sorted((folder / "chase_db1" / "images").glob("*.jpg"))[:limit]]
    if "hrf_av" in sets:
        for p, _lab, _fov in _hrf_photos(folder / "hrf_av")[:limit]:
            group = {"h": "healthy", "dr": "diabetic_retinopathy", "g": "glaucoma"}.get(p.stem.split("_")[-1], "?")
            photos.append(("hrf_av", group, p))
    for name, group, p in photos:
        _, m, _sec, cpu = _measure(p)
        rows.append({"set": name, "group": group, "photo": p.stem, **_row(m, cpu)})
        print(f"{name} {p.stem}: count {rows[-1]['count']} assessed {rows[-1]['assessed']}", file=sys.stderr)
    summary = {}
    for key in sorted({(r["set"], r["group"]) for r in rows}):
        rs = [r for r in rows if (r["set"], r["group"]) == key]
        counts = [r["count"] for r in rs if r["count"] is not None]
        summary[f"{key[0]}/{key[1]}"] = {
            "photos": len(rs), "count_none": len(rs) - len(counts),
            "photos_with_beading": sum(1 for c in counts if c >= 1),
            "photos_beaded_list": [r["photo"] for r in rs if (r["count"] or 0) >= 1],
            "count_distribution": {str(k): counts.count(k) for k in sorted(set(counts))},
            "beaded_segments": int(sum(counts)), "assessed_segments": int(sum(r["assessed"] for r in rs)),
            "cpu_s_median": float(np.median([r["cpu_s"] for r in rs])),
            "measure_cpu_s_median": float(np.median([r["measure_cpu_s"] for r in rs])),
        }
    healthy = [r for r in rows if r["group"] in ("children", "healthy")]
    if healthy:
        summary["healthy_all"] = {"photos": len(healthy),
                                  "count_none": sum(1 for r in healthy if r["count"] is None),
                                  "photos_with_beading": sum(1 for r in healthy if (r["count"] or 0) >= 1)}
    return summary, rows


def paired_cpu(folder: Path, n_photos: int, repeats: int) -> dict:
    """CPU of ``find_venous_beading`` alone on real photographs' measured vessel graphs: the measure is run
    once per photograph with the detector's inputs captured, then the detector and an empty call alternate
    ``repeats`` times (one thread); the median per photograph."""
    import grok.cfp.measure as measure_mod

    captured: dict = {}
    real_fn = measure_mod.find_venous_beading

    def capture(*a, **k):
        captured["args"], captured["kwargs"] = a, k
        return real_fn(*a, **k)

    paths = sorted((folder / "chase_db1" / "images").glob("*.jpg"))[:n_photos]
    paths += [p for p, _l, _f in _hrf_photos(folder / "hrf_av")][:n_photos]
    out = []
    measure_mod.find_venous_beading = capture
    try:
        for p in paths:
            _measure(p)
            a, k = captured["args"], captured["kwargs"]
            with_t, without_t = [], []
            for _ in range(repeats):
                c0 = time.process_time()
                real_fn(*a, **k)
                with_t.append(time.process_time() - c0)
                c0 = time.process_time()
                without_t.append(time.process_time() - c0)
            out.append({"photo": p.stem, "bead_cpu_s": float(np.median(with_t) - np.median(without_t))})
    finally:
        measure_mod.find_venous_beading = real_fn
    return {"photos": out, "median_s": float(np.median([r["bead_cpu_s"] for r in out])) if out else None,
            "max_s": float(np.max([r["bead_cpu_s"] for r in out])) if out else None}


def main(argv: list[str] | None = None) -> int:
    cfp_real.MEASURE_OPTIONS["venous_beading"] = True  # off by default in measure_fundus (not validated)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--seed", type=int, default=2000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--real", type=Path, default=DEFAULT_REAL)
    ap.add_argument("--sets", default="chase_db1,hrf_av", help="comma-separated; empty: no real photographs")
    ap.add_argument("--limit", type=int, default=None, help="at most this many photographs per real set")
    ap.add_argument("--no-phantom", action="store_true")
    ap.add_argument("--paired", type=int, default=0, metavar="N",
                    help="also time the detector alone on N photographs of each real set (alternating runs)")
    ap.add_argument("--rows", action="store_true", help="add every photograph's row")
    args = ap.parse_args(argv)
    out: dict = {"load_average_1min_start": os.getloadavg()[0]}
    if not args.no_phantom:
        s, rows = run_phantom(args.n, args.seed, args.size)
        out["phantom"] = s
        if args.rows:
            out["phantom_rows"] = rows
    sets = [x for x in args.sets.split(",") if x]
    if sets or args.paired:
        if not args.real.is_dir():
            print(f"cfp_venous_beading: real folder {args.real} not found; pass --real DIR (shared/real/cfp) or "
                  "--sets ''", file=sys.stderr)
            return 2
    if sets:
        s, rows = run_real(args.real, sets, args.limit)
        out["real"] = s
        if args.rows:
            out["real_rows"] = rows
    if args.paired:
        out["detector_cpu"] = paired_cpu(args.real, args.paired, 7)
    out["load_average_1min_end"] = os.getloadavg()[0]
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
