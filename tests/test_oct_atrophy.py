"""Geographic atrophy (cRORA) on OCT: the phantom draws it without disturbing any other draw, and the
measure finds it where it is and nowhere else."""

from __future__ import annotations

import math

import numpy as np
import pytest

from grok.knowledge import load_knowledge_base
from grok.knowledge.coverage import EVALUABLE, kb_coverage
from grok.oct.atrophy import MIN_WIDTH_UM, atrophy_regions, bscan_atrophy
from grok.oct.volume import measure_volume
from grok.phantom.oct import OctGeometry, synth_oct_volume

#: 13 B-scans 480 um apart over the 6 mm cube: every patch is crossed by at least one B-scan
GEO = OctGeometry(n_bscans=13, rows=496, cols=512, bscan_spacing_um=480.0)


def _pair(seed: int, appearance: str = "standard"):
    return [synth_oct_volume("amd", "OS", np.random.default_rng(seed), severity=1.5, atrophy=ga, geometry=GEO,
                             appearance=appearance) for ga in (True, False)]


def test_phantom_atrophy_changes_only_the_atrophy():
    ga, plain = _pair(3)
    assert plain.atrophy is None and plain.to_truth()["geographic_atrophy"] is None
    truth = ga.to_truth()["geographic_atrophy"]
    assert truth["regions"] >= 1 and truth["area_mm2"] > 0.1
    # every other draw is the same: Bruch's membrane, the foci's B-scans and columns (their rows follow the
    # thinner layers), the fovea and, away from the atrophy, every boundary
    assert np.array_equal(ga.boundaries[:, 8], plain.boundaries[:, 8])
    assert [(b, c) for b, _, c in ga.hrf] == [(b, c) for b, _, c in plain.hrf] and ga.fovea == plain.fovea
    far = ~np.asarray([np.convolve(row, np.ones(61), "same") > 0 for row in ga.atrophy])
    assert far.mean() > 0.5
    assert np.array_equal(ga.boundaries.transpose(0, 2, 1)[far], plain.boundaries.transpose(0, 2, 1)[far])
    inside = ga.atrophy
    # inside: the RPE is nearly gone (RPE -> BM), the EZ is disrupted, the outer retina thinner
    rpe_ga = (ga.boundaries[:, 8] - ga.boundaries[:, 7])[inside]
    rpe_plain = (plain.boundaries[:, 8] - plain.boundaries[:, 7])[inside]
    assert np.median(rpe_ga) < 0.5 * np.median(rpe_plain)
    assert ga.ez_disrupted[inside].all()
    # the signal under Bruch's membrane is brighter (hypertransmission)
    b = int(np.argmax(inside.sum(axis=1)))
    cols = np.flatnonzero(inside[b])
    deep = int(np.nanmedian(ga.boundaries[b, 8, cols])) + 60
    assert ga.volume[b, deep:deep + 40, cols].mean() > plain.volume[b, deep:deep + 40, cols].mean() + 10


def test_atrophy_needs_amd():
    with pytest.raises(ValueError, match="amd"):
        synth_oct_volume("normal", "OD", np.random.default_rng(0), atrophy=True, geometry=GEO)


@pytest.mark.parametrize("seed", [0, 3])
def test_measure_finds_atrophy_where_it_is_and_not_without_it(seed):
    ga, plain = _pair(seed)
    m = measure_volume(ga.volume, GEO.spacing_mm, "OS")
    n, area, regions = atrophy_regions(m.atrophy, GEO.lateral_um, GEO.bscan_spacing_um)
    assert n >= 1 and area > 0
    # what is found lies on the true atrophy
    assert (m.atrophy & ga.atrophy).sum() / m.atrophy.sum() > 0.8
    assert all(r["type"] == "geographic_atrophy" for r in regions)
    # each B-scan's run is at least cRORA's 250 um
    for row in m.atrophy:
        if row.any():
            assert row.sum() * GEO.lateral_um >= MIN_WIDTH_UM
    # the same eye without atrophy (drusen, maybe a PED or fluid): nothing
    m0 = measure_volume(plain.volume, GEO.spacing_mm, "OS")
    assert not m0.atrophy.any()


def test_bscan_atrophy_without_boundaries_is_empty():
    img = np.random.default_rng(0).random((496, 256)).astype(np.float32)
    b = np.full((9, 256), np.nan)
    assert not bscan_atrophy(img, b, np.zeros(256, bool), 3.87, 11.7).any()
    # a B-scan too shallow for the band under BM: nothing, not an error
    b = np.tile(np.linspace(400, 480, 9)[:, None], (1, 256))
    assert not bscan_atrophy(img, b, np.ones(256, bool), 3.87, 11.7).any()


def test_atrophy_count_biomarker_and_when_absence_is_assessable():
    ga, plain = _pair(0)
    found = measure_volume(ga.volume, GEO.spacing_mm, "OS")
    assert found.biomarkers["geographic_atrophy_count"] >= 1  # found: reported on any raster
    assert ga.biomarkers["geographic_atrophy_count"] == ga.to_truth()["geographic_atrophy"]["regions"]
    sparse = measure_volume(plain.volume, GEO.spacing_mm, "OS")  # B-scans 480 um apart: could pass between
    assert math.isnan(sparse.biomarkers["geographic_atrophy_count"])
    assert "absence not assessable" in sparse.quality["reasons"]["geographic_atrophy_count"]
    dense_geo = OctGeometry(n_bscans=25, rows=496, cols=256, lateral_um=23.4, bscan_spacing_um=240.0)
    normal = synth_oct_volume("normal", "OD", np.random.default_rng(5), severity=0.0, geometry=dense_geo)
    m = measure_volume(normal.volume, dense_geo.spacing_mm, "OD")
    assert m.biomarkers["geographic_atrophy_count"] == 0.0 and normal.biomarkers["geographic_atrophy_count"] == 0.0


def test_geographic_atrophy_finding_is_counted_on_oct():
    cov = {c["category"]: c for c in kb_coverage(load_knowledge_base())["categories"]}
    ga = next(f for f in cov["amd"]["findings"] if f["finding"] == "geographic_atrophy_present")
    assert ga["status"] == EVALUABLE and ga["biomarker"] == "geographic_atrophy_count"
