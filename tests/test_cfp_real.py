"""CFP vessels and artery/vein labels on a few real photographs of ``../shared/real/cfp``.

Regression guards, not the benchmark (``python -m benchmarks.cfp_real`` scores every photo): each
floor sits a little under what the current method reaches on that photo, so a change that loses thin
vessels, borders or A/V labels on real photographs fails here even when the phantom tests pass.
CHASE_DB1 (Fraz et al. 2012) and HRF (Budai et al. 2013; A/V labels Hemelings et al. 2019) are read in
place and never copied. Skipped when the shared folder is absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.cfp_real import _load_mask, lit_fov, pixel_scores
from grok.cfp import av_learned
from scripts.train_av_colour import main as train_av_colour

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "real" / "cfp"
pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason=f"real photographs not found at {REAL}")


def _measure(path: Path):
    from grok.cfp import measure_fundus
    from grok.ingest.readers import read_cfp

    img = read_cfp(path)
    return img.rgb, measure_fundus(img.rgb, laterality=img.laterality)


# photo -> F1 floor vs the 1st observer, default vessel path (the vessel network, grok.cfp.vessel_net). Both
# are held out from its training (children 11-14); they score 0.785 / 0.791 with the network (0.779 / 0.786
# before its camera-augmented fine-tuning), 0.743 / 0.613 with the classical path, 0.676 / 0.451 before issue
# #14 (benchmarks/cfp_real.py --rows).
CHASE_FLOORS = {"Image_11L": 0.76, "Image_14R": 0.76}


@pytest.mark.parametrize("stem", sorted(CHASE_FLOORS))
def test_chase_db1_vessel_f1(stem):
    folder = REAL / "chase_db1"
    rgb, m = _measure(folder / "images" / f"{stem}.jpg")
    ref = _load_mask(folder / "manual" / f"{stem}_1stHO.png") > 0
    s = pixel_scores(m.masks["vessels"], ref, lit_fov(rgb))
    assert s["f1"] >= CHASE_FLOORS[stem], s
    assert m.quality["grade"] != "reject"
    # CHASE_DB1 is disc-centred: the macula lies near the rim on a side the photograph does not fix, so no
    # fovea and no laterality are inferred rather than a guess (the old guess named the wrong eye on 20 of 28)
    assert m.biomarkers["fovea_center_xy_px"] is None
    assert any("disc-centred" in r for r in m.extras["reasons"]["fovea"])
    assert m.laterality is None
    # healthy children: every microaneurysm or haemorrhage is false; dark spots on long structures of the vessel
    # network that are no clear blob are vessel pieces (LesionRules.drop_on_vessel_net): 11L 5 -> 2, 14R 13 -> 6;
    # dark spots that do not stand out from the choroidal texture around them are not lesions
    # (LesionRules.dark_min_texture_z): 11L 2 -> 1 (a dot at the rim), 14R 6 -> 0
    red = m.biomarkers["microaneurysm_count"] + m.biomarkers["hemorrhage_count"]
    assert red <= CHASE_MAX_RED[stem], (stem, red)


CHASE_MAX_RED = {"Image_11L": 1, "Image_14R": 0}

# healthy children whose choroidal texture gave false haemorrhages (3 on 03L and 2 on
# before LesionRules.dark_min_texture_z; 0 with it). 03L and 06L are of the children (01-07) the rule was
# chosen on, 14R above of those it was checked on (docs/cfp.md, Lesions).
CHASE_TEXTURE = ("Image_03L", "Image_06L")


@pytest.mark.parametrize("stem", CHASE_TEXTURE)
def test_chase_db1_choroidal_texture_is_not_haemorrhage(stem):
    _, m = _measure(REAL / "chase_db1" / "images" / f"{stem}.jpg")
    assert m.biomarkers["microaneurysm_count"] == 0 and m.biomarkers["hemorrhage_count"] == 0, m.biomarkers


def _av_scores(m, lab: np.ndarray, fov: np.ndarray) -> tuple[float, float]:
    """A/V accuracy over the reference artery/vein pixels we label, and the share of them we label (as in
    ``benchmarks.cfp_real``)."""
    ref_av = (lab == 1) | (lab == 2)
    art, vein = m.masks["arteries"] & fov, m.masks["veins"] & fov
    labelled = ref_av & (art | vein)
    correct = labelled & ((art & (lab == 1)) | (vein & ~art & (lab == 2)))
    return float(correct.sum() / max(labelled.sum(), 1)), float(labelled.sum() / max(ref_av.sum(), 1))


def test_hrf_vessel_f1_and_artery_vein_accuracy():
    """One healthy HRF eye at 3504 x 2336 (never trained on): vessel F1 against any label (0.838 with the
    default vessel network, 0.840 before its camera-augmented fine-tuning, 0.813 with the classical path,
    0.790 before issue #14), A/V accuracy and share labelled at least 0.82 / 0.74 (0.908 / 0.756 with the
    colour reference per sector around the disc; 0.879 / 0.756 with the fine-tuned network, whose mask is more precise and less sensitive: the share is bounded by the vessel
    mask; 0.879 / 0.779 with the measured junction-link probabilities, 0.863 / 0.779
    before them; 0.859 / 0.770 with the ring typing of the A/V labels on the classical mask; 0.739 / 0.774
    before it; 12_h is not one of the 9 photos the ring weights were compared on, but one of the 15 healthy
    eyes the link probabilities were read from)."""
    folder = REAL / "hrf_av" / "test"
    _, m = _measure(folder / "images" / "12_h.jpg")
    lab = _load_mask(folder / "1st_manual" / "12_h_AVmanual.png")
    fov = _load_mask(folder / "mask" / "12_h_mask.tif") > 0
    s = pixel_scores(m.masks["vessels"], lab > 0, fov)
    assert s["f1"] >= 0.82, s
    acc, share = _av_scores(m, lab, fov)
    assert acc >= 0.82 and share >= 0.74, (acc, share)
    assert m.biomarkers["disc_center_xy_px"] is not None
    # a healthy eye's AV ratio (0.60 now; the healthy HRF eyes 0.65 +- 0.08, population about 0.7)
    assert 0.55 <= m.biomarkers["av_ratio"] <= 0.80, m.biomarkers["av_ratio"]
    assert np.isfinite(m.biomarkers["vessel_density"])


# photo -> (A/V accuracy floor, share-labelled floor): eyes outside the 15 healthy ones the junction-link
# probabilities of the A/V graph (``grok.cfp.vessels.AvConfig``) were read from. 08_g: 0.841 at 0.809 labelled
# with those links, 0.729 before them (weak links let thin vessels keep their washed-out colour instead of
# their tree's type); 0.762 (share 0.796) since the colour reference per sector around the disc, which costs
# this eye (its global colour model was right; the set's mean rose 0.819 -> 0.851). 04_dr: 0.755 before that
# revision, 0.870 (share 0.776) with it (benchmarks/cfp_real.py --rows --sets hrf_av; docs/cfp.md).
HRF_AV_FLOORS = {("training", "08_g"): (0.74, 0.78), ("training", "04_dr"): (0.85, 0.76)}


@pytest.mark.parametrize(("split", "stem"), sorted(HRF_AV_FLOORS))
def test_hrf_artery_vein_accuracy_beyond_the_healthy_eyes(split, stem):
    folder = REAL / "hrf_av" / split
    _, m = _measure(next((folder / "images").glob(f"{stem}.*")))  # HRF names some .JPG, some .jpg
    lab = _load_mask(folder / "1st_manual" / f"{stem}_AVmanual.png")
    fov = _load_mask(folder / "mask" / f"{stem}_mask.tif") > 0
    acc, share = _av_scores(m, lab, fov)
    floor_acc, floor_share = HRF_AV_FLOORS[(split, stem)]
    assert acc >= floor_acc and share >= floor_share, (acc, share)
    if stem.endswith("_dr"):  # the diabetic eye keeps its lower DR signs (6 microaneurysms, 2 haemorrhages)
        assert m.biomarkers["microaneurysm_count"] >= 3 and m.biomarkers["hemorrhage_count"] >= 1, m.biomarkers


# healthy children whose false hard exudates came with the disc-placement revision of issue #14 (its centre now on
# the vessel trunk, its rim on the margin): the brightness unit was the median green within 0.35 DD of the
# centre, which fell off the pale cup (05L 21 exudates, 12L 14); it is now the pale part of the whole fitted disc
# (lesions.DISC_UNIT_PERCENTILE): 0 on both (benchmarks/cfp_real.py --rows --sets chase_db1).
CHASE_NEW_DISC_EXUDATES = ("Image_05L", "Image_12L")


@pytest.mark.parametrize("stem", CHASE_NEW_DISC_EXUDATES)
def test_chase_db1_bright_unit_does_not_follow_the_disc_centre(stem):
    _, m = _measure(REAL / "chase_db1" / "images" / f"{stem}.jpg")
    assert m.biomarkers["hard_exudate_count"] == 0, (stem, m.biomarkers["hard_exudate_count"])
    assert m.biomarkers["cotton_wool_spot_count"] == 0, (stem, m.biomarkers["cotton_wool_spot_count"])


# photo -> largest distance (in the set's disc-diameter unit) of our disc centre from the annotation-derived
# reference (``benchmarks.cfp_real.disc_reference``: where the human-annotated vessel tree's wide vessels
# converge; checked by eye on all 73 photos). Image_04L and 06R were placed 1.08 / 1.44 DD off (on a bright
# reflex below the disc) before the vessel-convergence votes of issue #14, 06R now 0.14; 04L is still off the
# disc (0.75 DD, the reflex) and is held at its present place. 05L: 0.34 before (its rim fitted the pale cup), 0.04 now.
# 12_h (HRF): 0.40 before, 0.28 now.
PLACEMENT_MAX_DD = {("chase_db1", "Image_06R"): 0.5, ("chase_db1", "Image_05L"): 0.5,
                    ("chase_db1", "Image_04L"): 0.85, ("hrf_av", "12_h"): 0.5}


@pytest.mark.parametrize(("set_name", "stem"), sorted(PLACEMENT_MAX_DD))
def test_disc_placement_against_the_annotated_vessel_tree(set_name, stem):
    from benchmarks.cfp_real import FIELD_ANGLE_DEG, disc_placement

    if set_name == "chase_db1":
        folder = REAL / "chase_db1"
        rgb, m = _measure(folder / "images" / f"{stem}.jpg")
        ref, fov = _load_mask(folder / "manual" / f"{stem}_1stHO.png") > 0, lit_fov(rgb)
    else:
        folder = REAL / "hrf_av" / "test"
        _, m = _measure(folder / "images" / f"{stem}.jpg")
        ref = _load_mask(folder / "1st_manual" / f"{stem}_AVmanual.png") > 0
        fov = _load_mask(folder / "mask" / f"{stem}_mask.tif") > 0
    p = disc_placement(m, ref, fov, FIELD_ANGLE_DEG[set_name])
    assert p["distance_dd"] is not None and p["distance_dd"] <= PLACEMENT_MAX_DD[(set_name, stem)], p


def test_av_colour_training_runs_on_two_photographs(tmp_path):
    """The self-training of the learned A/V colour evidence (``scripts/train_av_colour.py``, two rounds) on two
    CHASE_DB1 photographs and one phantom writes trees that ``classify_av`` can read (the shipped weights use
    all 28 and 14 phantoms)."""
    out = tmp_path / "trees.npz"
    assert train_av_colour(["--real", str(REAL), "--limit", "2", "--rounds", "2", "--phantoms", "1",
                            "--out", str(out)]) == 0
    trees = av_learned.load(str(out))
    assert trees is not None and trees["feature"].shape[0] == 150
    assert "--rounds 2" in str(trees["meta_command"])
