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
from scipy import ndimage as ndi

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


#: Field angle (degrees) of each set's camera (CHASE_DB1: Nidek NM-200-D, 30 degrees, Fraz et al. 2012; HRF: Canon
#: CR-1, 45 degrees, Budai et al. 2013): the disc-diameter unit of the placement scores is
#: ``grok.cfp.disc.EXPECTED_DD_PER_FOV_RADIUS`` (a 45-degree photograph) x 45 / this x the FOV's equal-area radius.
FIELD_ANGLE_DEG = {"chase_db1": 30.0, "hrf_av": 45.0}
#: Annotated disc: wide-vessel pixels are those whose distance to the annotation's edge is at or above this
#: percentile of the centre-line pixels'; each votes along its own direction over this span (x the DD unit).
REF_WIDE_PERCENTILE = 70.0
REF_VOTE_SPAN_DD = (0.1, 2.0)


def disc_reference(ref: np.ndarray, fov: np.ndarray, dd_px: float) -> tuple[float, float]:
    """Where the human-annotated vessel tree converges: an optic-disc position that owes nothing to our detector.

    ref, fov : (H, W) bool (the annotated vessels, the field of view); dd_px : the disc-diameter unit (px).
    The annotation is reduced by block majority to <= ~1000 px; its wide vessels (centre-line pixels at or above
    ``REF_WIDE_PERCENTILE`` of the centre line's half-width) each cast votes, weighted by the half-width, along
    their own direction (structure tensor of the mask) on both sides over ``REF_VOTE_SPAN_DD``; the reference is
    the maximum of the votes smoothed at 0.25 DD. The main vessels radiate from the disc, so their lines meet
    there; they leave it from the vessel trunk, which lies on the disc but often towards its nasal side, so the
    reference can sit up to ~0.3 DD off the disc's centre. Returns (x, y) px at the annotation's resolution.
    """
    from skimage.morphology import skeletonize

    f = max(1, int(round(max(ref.shape) / 1000)))
    v, fo = ref & fov, fov
    if f > 1:
        h, w = (ref.shape[0] // f) * f, (ref.shape[1] // f) * f
        v = v[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3)) >= 0.5
        fo = fov[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3)) >= 0.5
    v &= fo
    d = dd_px / f
    half_width = ndi.distance_transform_edt(v)
    ys, xs = np.nonzero(skeletonize(v))
    hw = half_width[ys, xs]
    wide = hw >= np.percentile(hw, REF_WIDE_PERCENTILE)
    ys, xs, hw = ys[wide], xs[wide], hw[wide]
    gy, gx = np.gradient(ndi.gaussian_filter(v.astype(np.float32), 1.5))
    jxx, jyy, jxy = (ndi.gaussian_filter(a, 3.0)[ys, xs] for a in (gx * gx, gy * gy, gx * gy))
    along = 0.5 * np.arctan2(2 * jxy, jxx - jyy) + np.pi / 2  # the vessel's direction: across the gradient
    t = np.arange(REF_VOTE_SPAN_DD[0] * d, REF_VOTE_SPAN_DD[1] * d)
    t = np.concatenate([t, -t])
    X = np.rint(xs[:, None] + np.cos(along)[:, None] * t).astype(np.int64)
    Y = np.rint(ys[:, None] + np.sin(along)[:, None] * t).astype(np.int64)
    h, w = v.shape
    ok = (X >= 0) & (X < w) & (Y >= 0) & (Y < h)
    votes = np.bincount((Y * w + X)[ok], weights=np.broadcast_to(hw[:, None], X.shape)[ok], minlength=h * w)
    votes = ndi.gaussian_filter(votes.reshape(h, w), 0.25 * d)
    y, x = np.unravel_index(int(np.argmax(votes)), votes.shape)
    return (x + 0.5) * f - 0.5, (y + 0.5) * f - 0.5


def disc_placement(m, ref: np.ndarray, fov: np.ndarray, field_angle_deg: float) -> dict:
    """Our disc centre against ``disc_reference`` of the annotation (distance in the set's DD unit)."""
    from grok.cfp.disc import EXPECTED_DD_PER_FOV_RADIUS

    dd = EXPECTED_DD_PER_FOV_RADIUS * 45.0 / field_angle_deg * math.sqrt(float(fov.sum()) / math.pi)
    rx, ry = disc_reference(ref, fov, dd)
    ours = m.biomarkers["disc_center_xy_px"]
    dist = None if ours is None else math.hypot(ours[0] - rx, ours[1] - ry) / dd
    return {"reference_xy_px": [round(rx, 1), round(ry, 1)], "dd_px": round(dd, 1),
            "distance_dd": None if dist is None else round(dist, 3)}


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
        "vcdr": None if not np.isfinite(bm["cup_disc_ratio_vertical"]) else round(float(bm["cup_disc_ratio_vertical"]), 4),
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
        row["disc_placement"] = disc_placement(m, ref1, fov, FIELD_ANGLE_DEG["chase_db1"])
        row["laterality_truth"] = "OS" if p.stem.endswith("L") else "OD"  # CHASE_DB1 names: L = left eye
        rows.append(row)
        print(f"chase_db1 {p.stem}: F1 {row['vessel']['f1']:.3f} (2nd obs {row['second_observer']['f1']:.3f}) "
              f"disc {row['disc_found']} ({row['disc_placement']['distance_dd']} DD) AVR {row['av_ratio']} {sec:.2f} s",
              file=sys.stderr)
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
        row["disc_placement"] = disc_placement(m, ref, fov, FIELD_ANGLE_DEG["hrf_av"])
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
              f"({row['av']['share_labelled']:.2f}) disc {row['disc_found']} ({row['disc_placement']['distance_dd']} DD) AVR {row['av_ratio']} {sec:.2f} s",
              file=sys.stderr)
    return rows


def _mean(xs) -> float | None:
    xs = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    return round(float(np.mean(xs)), 4) if xs else None


def _sd(xs) -> float | None:
    xs = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    return round(float(np.std(xs, ddof=1)), 4) if len(xs) > 1 else None


#: A disc placed within this many DD of the annotated one counts as placed (the issue's acceptance; 1 DD beside it).
PLACED_DD = 0.5


def _placement(rows: list[dict]) -> dict:
    """Disc placement against the annotation-derived reference: shares within 0.5 and 1 DD, median and max
    distance (a disc not found counts as not placed), and the photographs placed further than ``PLACED_DD``."""
    d = {r["photo"]: r["disc_placement"]["distance_dd"] for r in rows}
    found = [x for x in d.values() if x is not None]
    return {"n": len(d), "within_0_5_dd": round(sum(x <= PLACED_DD for x in found) / max(len(d), 1), 4),
            "within_1_dd": round(sum(x <= 1.0 for x in found) / max(len(d), 1), 4),
            "median_dd": round(float(np.median(found)), 3) if found else None,
            "max_dd": round(max(found), 3) if found else None,
            "misplaced": {k: x for k, x in d.items() if x is None or x > PLACED_DD}}


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
        "vcdr_mean": _mean(r["vcdr"] for r in rows), "vcdr_sd": _sd(r["vcdr"] for r in rows),
        "seconds_mean": _mean(r["seconds"] for r in rows), "seconds_max": max(r["seconds"] for r in rows),
        "cpu_seconds_mean": _mean(r["cpu_seconds"] for r in rows),
        "stages_cpu_s_mean": {k: _mean(r["stages_cpu_s"].get(k) for r in rows)
                              for k in dict.fromkeys(k for r in rows for k in r["stages_cpu_s"])},
        "dr_signs": _dr_signs(rows),
    }
    if "disc_placement" in rows[0]:
        out["disc_placement"] = _placement(rows)
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
    ap.add_argument("--av-colour", choices=("em", "learned"), default=None,
                    help="artery/vein colour evidence (grok.cfp.vessels.AvConfig.colour_model; default: its default)")
    args = ap.parse_args(argv)
    global VESSELS
    VESSELS = args.vessels
    if args.av_colour:
        from grok.cfp.vessels import AvConfig

        MEASURE_OPTIONS["av_config"] = AvConfig(colour_model=args.av_colour)
    if not args.real.is_dir():
        print(f"no real-data folder at {args.real}; pass --real", file=sys.stderr)
        return 3
    from grok.cfp.vessels import VESSEL_METHOD

    out: dict = {"targets": TARGETS, "vessels": args.vessels or VESSEL_METHOD, "av_colour": args.av_colour or "default",
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
