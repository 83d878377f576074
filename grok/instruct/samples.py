"""Small synthetic study records (one per eye-visit) for tests, benchmarks and the docs.

Run as: python -m grok.instruct.samples --n 20 --out studies.jsonl

Values are plausible for each category but invented (no patient data); the reasoning is computed
with the bundled knowledge base, exactly as the records stage does. Lesion boxes lie inside the
stated image sizes; image paths follow the ``media/<study_id>/...`` layout of the contract.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

from grok.knowledge import reason

CFP_SIZE = [512, 512]
OCT_SIZE = [384, 256]

_BASE = {
    "macular_thickness_central_um": 270.0, "macular_thickness_overall_um": 300.0, "gcipl_thickness_um": 82.0,
    "rnfl_thickness_um": 32.0, "inl_thickness_um": 36.0, "rpe_thickness_um": 21.0,
    "cup_disc_ratio_vertical": 0.42, "av_ratio": 0.68, "vessel_density": 0.11,
    "drusen_volume_3mm_mm3": 0.0, "drusen_volume_5mm_mm3": 0.0, "srf_volume_nl": 0.0, "irf_volume_nl": 0.0,
    "ped_max_height_um": 0.0, "hrf_count": 0, "subfoveal_choroidal_thickness_um": 280.0,
    "microaneurysm_count": 0, "hemorrhage_count": 0, "hard_exudate_count": 0, "cotton_wool_spot_count": 0,
    "drusen_count": 0, "disc_diameter_px": 70.0,
}

_PATTERNS: dict[str, dict[str, Any]] = {
    "normal": {},
    "amd": {"drusen_volume_3mm_mm3": 0.05, "drusen_volume_5mm_mm3": 0.09, "drusen_count": 3, "ped_max_height_um": 0.0,
            "_lesions": [("drusen", "cfp", 3, 140.0), ("drusen", "oct_foveal", 2, None)]},
    "glaucoma": {"cup_disc_ratio_vertical": 0.78, "gcipl_thickness_um": 66.0, "rnfl_thickness_um": 24.0},
    "diabetic_retinopathy": {"microaneurysm_count": 4, "hemorrhage_count": 2, "hard_exudate_count": 1,
                             "_lesions": [("microaneurysm", "cfp", 4, None), ("hemorrhage", "cfp", 2, None),
                                          ("hard_exudate", "cfp", 1, None)]},
    "dme": {"macular_thickness_central_um": 372.0, "irf_volume_nl": 48.0, "microaneurysm_count": 2,
            "hard_exudate_count": 2,
            "_lesions": [("irf", "oct_foveal", 2, None), ("microaneurysm", "cfp", 2, None),
                         ("hard_exudate", "cfp", 2, None)]},
    "hypertension": {"av_ratio": 0.55, "cotton_wool_spot_count": 1, "hemorrhage_count": 1,
                     "_lesions": [("cotton_wool_spot", "cfp", 1, None), ("hemorrhage", "cfp", 1, None)]},
    "diabetes": {},
    "alzheimers": {"gcipl_thickness_um": 74.0},
}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sample_record(i: int, label: str, seed: int = 0, kb=None, *, with_reasoning: bool = True) -> dict[str, Any]:
    """One synthetic study record of category ``label`` (a key of the patterns above)."""
    rng = random.Random(f"{seed}-{i}-{label}")
    pattern = dict(_PATTERNS[label])
    lesion_specs = pattern.pop("_lesions", [])
    bm: dict[str, Any] = {}
    for k, v in {**_BASE, **pattern}.items():
        if isinstance(v, int) and not isinstance(v, bool) and k.endswith("_count"):
            bm[k] = v
        elif v == 0.0:
            bm[k] = 0.0
        else:
            bm[k] = round(v * (1 + rng.uniform(-0.03, 0.03)), 3)
    bm["disc_center_xy_px"] = [round(CFP_SIZE[0] * rng.uniform(0.6, 0.7), 1), round(CFP_SIZE[1] * rng.uniform(0.45, 0.55), 1)]
    bm["fovea_center_xy_px"] = [round(CFP_SIZE[0] * 0.45, 1), round(CFP_SIZE[1] * 0.5, 1)]
    if rng.random() < 0.2:  # some records miss a measurement, as real ones do
        bm[rng.choice(["gcipl_thickness_um", "av_ratio", "subfoveal_choroidal_thickness_um"])] = None
    study_id = f"S{_sha(f'{seed}:{i}')[:12]}"
    patient_id = f"P{_sha(f'p{seed}:{i // 2}')[:16]}"
    eye = "OD" if i % 2 == 0 else "OS"
    lesions = []
    for typ, image, n, diam in lesion_specs:
        w, h = CFP_SIZE if image == "cfp" else OCT_SIZE
        for _ in range(n):
            bw, bh = rng.uniform(0.04, 0.1) * w, rng.uniform(0.04, 0.1) * h
            x, y = rng.uniform(0.1, 0.8) * w, rng.uniform(0.1, 0.8) * h
            les = {"type": typ, "modality": "cfp" if image == "cfp" else "oct", "image": image,
                   "box_xyxy_px": [round(x, 1), round(y, 1), round(x + bw, 1), round(y + bh, 1)],
                   "score": round(rng.uniform(0.6, 0.99), 2)}
            if diam is not None:
                les["diameter_um"] = round(diam * rng.uniform(0.95, 1.2), 1)
            lesions.append(les)
    rec = {
        "study_id": study_id, "patient_id": patient_id, "eye": eye, "visit": "2023-11-13",
        "age_years": float(rng.randint(45, 80)), "sex": rng.choice(["F", "M"]), "device": "generic",
        "label": label, "labels": [label], "biomarkers": bm,
        "quality": {"oct": {}, "cfp": {"grade": "good", "reasons": []}},
        "lesions": lesions,
        "images": {"cfp": f"media/{study_id}/cfp.png", "oct_foveal": f"media/{study_id}/oct_024.png"},
        "image_sizes": {"cfp": list(CFP_SIZE), "oct_foveal": list(OCT_SIZE)},
        "provenance": {"source_sha256s": [_sha(f"{study_id}-cfp"), _sha(f"{study_id}-oct")],
                       "extractors": {"oct": "grok.oct@0.1.0", "cfp": "grok.cfp@0.1.0"},
                       "kb_snapshot": None, "code_version": "0.1.0", "build_id": "samples"},
    }
    if with_reasoning:
        r = reason({**rec, "laterality": eye}, kb).to_dict()
        rec["reasoning"] = r
        rec["provenance"]["kb_snapshot"] = r["kb_snapshot_id"]
    return rec


def sample_records(n: int, seed: int = 0, kb=None, labels: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """``n`` records cycling over the categories (or ``labels``)."""
    labels = labels or tuple(_PATTERNS)
    return [sample_record(i, labels[i % len(labels)], seed, kb) for i in range(n)]


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="Write synthetic study records (JSONL).")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    with open(a.out, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, sort_keys=True) + "\n" for r in sample_records(a.n, a.seed))


if __name__ == "__main__":
    main()
