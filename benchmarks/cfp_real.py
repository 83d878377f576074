"""CFP measures on the real photographs in ``../shared/real/cfp`` against their human references.

Run as: python -m benchmarks.cfp_real [--real DIR] [--sets chase_db1,hrf_av] [--limit N] [--rows] > cfp_real.json

Each photograph is read with ``grok.ingest.readers.read_cfp`` and measured with
``grok.cfp.measure_fundus`` exactly as ``grok cfp measure PHOTO --masks DIR`` does (masks at the
original size). Read ``shared/real/README.md`` for the sources and licences; nothing is copied into the
repository.

* ``chase_db1`` (CHASE_DB1, Fraz et al., IEEE TBME 2012; CC BY 4.0): 28 photographs 999 x 960, vessel
  masks by two observers. Vessel scores against the 1st observer; the 2nd observer's scores against the
  1st are reported beside them ("human reference"). Field of view: the photograph's lit area (max channel
  > 20 of 255, holes filled), since CHASE_DB1 ships no FOV masks.
* ``hrf_av`` (HRF, Budai et al., Int. J. Biomed. Imaging 2013, CC BY 4.0; artery/vein labels by
  Hemelings et al. 2019, GPL-3.0): 45 photographs 3504 x 2336 with FOV masks, labels 0 background,
  1 artery, 2 vein, 3 uncertain. Vessel reference = any label > 0. A/V accuracy = share of reference
  artery/vein pixels (labels 1, 2) that we label artery or vein whose label is right; ``av_share_labelled``
  = share of those reference pixels we label at all. AV ratio by diagnosis group (``_h``, ``_dr``, ``_g``).

The default vessel mask is the vessel network's (``grok.cfp.vessel_net``, a compact U-Net trained on
CHASE_DB1 children 01-10 only by ``grok.cfp.train_vessel_net``; HRF's labels are GPL-3.0 and never
trained on); ``--vessels classical`` scores the classical ridge path (no training). Each set's
``heldout`` block summarises the photographs the network never saw (CHASE_DB1 children 11-14, all of
HRF). Rows carry ``training_split``.

Scores are pixel scores over the field of view at the image's own resolution: F1 (= Dice), sensitivity,
precision, per photograph, then the mean over the set (``pooled_f1`` pools the pixel counts). ``seconds``
is the wall time of ``measure_fundus`` alone (one thread), ``cpu_seconds`` its CPU time
(``time.process_time``), ``stages_cpu_s`` the CPU time of each of its stages; ``load_average_1min`` is the
machine's load at the start and end of the run (2 cores shared: wall time includes waiting for one).
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

from grok.cfp.preprocess import lit_fov

#: Where ``shared/`` lies relative to the repository root (CI and sessions have it beside the clone).
DEFAULT_REAL = Path(__file__).resolve().parents[1].parent / "shared" / "real" / "cfp"
#: Targets of issue #14 (benchmark, not timed tests).
TARGETS = {"vessel_f1": 0.78, "av_accuracy": 0.90, "av_share_labelled": 0.85, "healthy_av_ratio_mean": [0.62, 0.78],
           "healthy_av_ratio_sd": 0.08, "disc_found_rate": 0.98, "seconds_1024": 2.0, "seconds_3504": 5.0}


def _load_mask(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        a = np.asarray(im)
    if a.ndim == 3:
        a = a[..., :3].max(axis=-1)
    return a


def pixel_scores(pred: np.ndarray, ref: np.ndarray, fov: np.ndarray) -> dict:
    """F1 (Dice), sensitivity, precision of ``pred`` against ``ref`` over ``fov`` (bool arrays, same shape)."""
    p, r = pred[fov], ref[fov]
    tp = int(np.count_nonzero(p & r))
    fp = int(np.count_nonzero(p & ~r))
    fn = int(np.count_nonzero(~p & r))
    sens = tp / max(tp + fn, 1)
    prec = tp / max(tp + fp, 1)
    f1 = 2 * tp / max(2 * tp + fp + fn, 1)
    return {"f1": f1, "sensitivity": sens, "precision": prec, "tp": tp, "fp": fp, "fn": fn}


#: Vessel method passed to ``measure_fundus`` (None: its default); set by ``--vessels``.
VESSELS: str | None = None
#: Further keywords of ``measure_fundus`` (benchmarks.cfp_venous_beading turns the beading detector on).
MEASURE_OPTIONS: dict = {}


def _measure(path: Path):
    from grok.cfp import measure_fundus
    from grok.ingest.readers import read_cfp

    img = read_cfp(path)
    t0, c0 = time.perf_counter(), time.process_time()
    m = measure_fundus(img.rgb, laterality=img.laterality, pixel_spacing_mm=img.pixel_spacing_mm, vessels=VESSELS,
                       **MEASURE_OPTIONS)
    return img.rgb, m, time.perf_counter() - t0, time.process_time() - c0


#: the lesion counts of the ICDR scale's lower steps: the knowledge base rules diabetic retinopathy out, and
#: takes its severe and proliferative signs as absent, only when every one of them is measured 0
DR_SIGN_COUNTS = ("microaneurysm_count", "hemorrhage_count", "hard_exudate_count", "cotton_wool_spot_count")


def _dr_signs(rows: list[dict]) -> dict:
    """How often the photographs show any of the lower DR signs: on eyes with diabetic retinopathy every photo
    should (else the knowledge base's inference 'no lower sign, so no venous beading, IRMA or new vessels' would
    call a diseased eye's severe signs absent); on other eyes, the share where that inference applies."""
    counts = [r["dr_sign_counts"] for r in rows]
    measured = [c for c in counts if all(c.get(k) is not None for k in DR_SIGN_COUNTS)]
    return {"n": len(rows), "n_measured": len(measured),
            "any_sign": sum(any(c[k] > 0 for k in DR_SIGN_COUNTS) for c in measured),
            "none_found": sum(all(c[k] == 0 for k in DR_SIGN_COUNTS) for c in measured),
            "by_type": {k: sum(c[k] > 0 for c in measured) for k in DR_SIGN_COUNTS}}


def _row_common(name: str, m, sec: float, cpu: float) -> dict:
    bm = m.biomarkers
    avr = bm["av_ratio"]
    return {
        "photo": name, "grade": m.quality["grade"], "disc_found": bm["disc_center_xy_px"] is not None,
        "fovea_found": bm["fovea_center_xy_px"] is not None, "laterality": m.laterality,
        "disc_centred": any("disc-centred" in r for r in m.extras.get("reasons", {}).get("fovea", [])),
        "av_ratio": None if not np.isfinite(avr) else round(float(avr), 4),
        "av_ratio_reasons": [] if np.isfinite(avr) else list(m.extras.get("reasons", {}).get("vessels", [])),
        "seconds": round(sec, 3), "cpu_seconds": round(cpu, 3), "vessel_method": m.extras.get("vessel_method"),
        # the counts the knowledge base's DR rule-out reads (None: not measured on this photograph)
        "dr_sign_counts": {k: bm.get(k) for k in DR_SIGN_COUNTS},
        "stages_cpu_s": dict(m.extras.get("timing_cpu_s", {})),
    }


def run_chase(folder: Path, limit: int | None) -> list[dict]:
    rows = []
    photos = sorted((folder / "images").glob("*.jpg"))[:limit]
    for p in photos:
        rgb, m, sec, cpu = _measure(p)
        ref1 = _load_mask(folder / "manual" / f"{p.stem}_1stHO.png") > 0
        ref2 = _load_mask(folder / "manual" / f"{p.stem}_2ndHO.png") > 0
        fov = lit_fov(rgb)
        row = _row_common(p.stem, m, sec, cpu)
        row["vessel"] = pixel_scores(m.masks["vessels"], ref1, fov)
        row["second_observer"] = pixel_scores(ref2, ref1, fov)
        row["laterality_truth"] = "OS" if p.stem.endswith("L") else "OD"  # CHASE_DB1 names: L = left eye
        rows.append(row)
        print(f"chase_db1 {p.stem}: F1 {row['vessel']['f1']:.3f} (2nd obs {row['second_observer']['f1']:.3f}) "
              f"disc {row['disc_found']} AVR {row['av_ratio']} {sec:.2f} s", file=sys.stderr)
    return rows


def _hrf_photos(folder: Path) -> list[tuple[Path, Path, Path]]:
    out = []
    for split in ("training", "test"):
        for p in sorted((folder / split / "images").iterdir()):
            stem = p.stem
            out.append((p, folder / split / "1st_manual" / f"{stem}_AVmanual.png", folder / split / "mask" / f"{stem}_mask.tif"))
    return sorted(out, key=lambda t: t[0].stem)


def run_hrf(folder: Path, limit: int | None) -> list[dict]:
    rows = []
    for p, lab_path, fov_path in _hrf_photos(folder)[:limit]:
        _, m, sec, cpu = _measure(p)
        lab = _load_mask(lab_path)
        fov = _load_mask(fov_path) > 0
        ref = lab > 0
        row = _row_common(p.stem, m, sec, cpu)
        row["group"] = p.stem.split("_")[-1]
        row["vessel"] = pixel_scores(m.masks["vessels"], ref, fov)
        art, vein = m.masks["arteries"] & fov, m.masks["veins"] & fov
        ref_av = (lab == 1) | (lab == 2)
        labelled = ref_av & (art | vein)
        correct = (art & (lab == 1)) | (vein & (lab == 2) & ~art)
        n_lab = int(labelled.sum())
        row["av"] = {"reference_px": int(ref_av.sum()), "labelled_px": n_lab,
                     "correct_px": int((correct & labelled).sum()),
                     "accuracy": float((correct & labelled).sum() / max(n_lab, 1)),
                     "share_labelled": float(n_lab / max(int(ref_av.sum()), 1))}
        rows.append(row)
        print(f"hrf_av {p.stem}: F1 {row['vessel']['f1']:.3f} A/V {row['av']['accuracy']:.3f} "
              f"({row['av']['share_labelled']:.2f}) disc {row['disc_found']} AVR {row['av_ratio']} {sec:.2f} s",
              file=sys.stderr)
    return rows


def _mean(xs) -> float | None:
    xs = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    return round(float(np.mean(xs)), 4) if xs else None


def _sd(xs) -> float | None:
    xs = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    return round(float(np.std(xs, ddof=1)), 4) if len(xs) > 1 else None


def summarise(rows: list[dict]) -> dict:
    v = [r["vessel"] for r in rows]
    tp, fp, fn = (sum(x[k] for x in v) for k in ("tp", "fp", "fn"))
    gradable = [r for r in rows if r["grade"] != "reject"]
    macula = [r for r in gradable if not r["disc_centred"]]
    out = {
        "n": len(rows), "n_gradable": len(gradable),
        "vessel_f1": _mean(x["f1"] for x in v), "vessel_sensitivity": _mean(x["sensitivity"] for x in v),
        "vessel_precision": _mean(x["precision"] for x in v), "vessel_f1_min": round(min(x["f1"] for x in v), 4),
        "pooled_f1": round(2 * tp / max(2 * tp + fp + fn, 1), 4),
        "disc_found_rate": round(sum(r["disc_found"] for r in gradable) / max(len(gradable), 1), 4),
        "n_disc_centred": sum(r["disc_centred"] for r in gradable),
        # the fovea is sought on macula-centred photographs only (a disc-centred one says why it has none)
        "fovea_found_rate": (round(sum(r["fovea_found"] for r in macula) / len(macula), 4) if macula else None),
        "av_ratio_mean": _mean(r["av_ratio"] for r in rows), "av_ratio_sd": _sd(r["av_ratio"] for r in rows),
        "av_ratio_n": sum(r["av_ratio"] is not None for r in rows),
        "seconds_mean": _mean(r["seconds"] for r in rows), "seconds_max": max(r["seconds"] for r in rows),
        "cpu_seconds_mean": _mean(r["cpu_seconds"] for r in rows),
        "stages_cpu_s_mean": {k: _mean(r["stages_cpu_s"].get(k) for r in rows)
                              for k in dict.fromkeys(k for r in rows for k in r["stages_cpu_s"])},
        "dr_signs": _dr_signs(rows),
    }
    if "laterality_truth" in rows[0]:
        out["laterality_from_image"] = {
            "right": sum(r["laterality"] == r["laterality_truth"] for r in rows),
            "wrong": sum(r["laterality"] is not None and r["laterality"] != r["laterality_truth"] for r in rows),
            "not_given": sum(r["laterality"] is None for r in rows)}
    if "second_observer" in rows[0]:
        s = [r["second_observer"] for r in rows]
        out["second_observer"] = {"f1": _mean(x["f1"] for x in s), "sensitivity": _mean(x["sensitivity"] for x in s),
                                  "precision": _mean(x["precision"] for x in s)}
    if "av" in rows[0]:
        a = [r["av"] for r in rows]
        n_lab = sum(x["labelled_px"] for x in a)
        out["av_accuracy"] = _mean(x["accuracy"] for x in a)
        out["av_share_labelled"] = _mean(x["share_labelled"] for x in a)
        out["av_accuracy_pooled"] = round(sum(x["correct_px"] for x in a) / max(n_lab, 1), 4)
        out["av_share_labelled_pooled"] = round(n_lab / max(sum(x["reference_px"] for x in a), 1), 4)
        groups = {}
        for g in ("h", "dr", "g"):
            gr = [r for r in rows if r.get("group") == g]
            if gr:
                groups[g] = {"n": len(gr), "av_ratio_mean": _mean(r["av_ratio"] for r in gr),
                             "av_ratio_sd": _sd(r["av_ratio"] for r in gr),
                             "av_ratio_n": sum(r["av_ratio"] is not None for r in gr),
                             "vessel_f1": _mean(r["vessel"]["f1"] for r in gr),
                             "av_accuracy": _mean(r["av"]["accuracy"] for r in gr),
                             "dr_signs": _dr_signs(gr)}
        out["by_group"] = groups
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", type=Path, default=DEFAULT_REAL, help="the shared/real/cfp folder")
    ap.add_argument("--sets", default="chase_db1,hrf_av", help="comma-separated: chase_db1, hrf_av")
    ap.add_argument("--limit", type=int, default=None, help="first N photographs of each set (while iterating)")
    ap.add_argument("--rows", action="store_true", help="include the per-photograph rows")
    ap.add_argument("--vessels", choices=("net", "classical"), default=None,
                    help="vessel method (default: measure_fundus's, the network)")
    args = ap.parse_args(argv)
    global VESSELS
    VESSELS = args.vessels
    if not args.real.is_dir():
        print(f"no real-data folder at {args.real}; pass --real", file=sys.stderr)
        return 3
    from grok.cfp.vessels import VESSEL_METHOD

    out: dict = {"targets": TARGETS, "vessels": args.vessels or VESSEL_METHOD,
                 "load_average_1min": {"start": round(os.getloadavg()[0], 2)}, "sets": {}}
    for name in [s.strip() for s in args.sets.split(",") if s.strip()]:
        if name == "chase_db1":
            rows = run_chase(args.real / "chase_db1", args.limit)
        elif name == "hrf_av":
            rows = run_hrf(args.real / "hrf_av", args.limit)
        else:
            print(f"--sets: unknown set {name!r}; use chase_db1, hrf_av", file=sys.stderr)
            return 2
        from grok.cfp.train_vessel_model import is_training_photo

        for r in rows:
            r["training_split"] = is_training_photo(name, r["photo"])
        out["sets"][name] = summarise(rows)
        held = [r for r in rows if not r["training_split"]]
        if held:
            out["sets"][name]["heldout"] = summarise(held)
        if args.rows:
            out["sets"][name]["rows"] = rows
    out["load_average_1min"]["end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
