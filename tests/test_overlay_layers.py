"""Per-structure overlay layers (transparent PNGs the size of the image) that the review app toggles one by one:
B-scan boundaries, fluid and drusen; fundus vessels and disc/cup."""

from __future__ import annotations

import numpy as np
from PIL import Image

from grok.cfp.measure import CfpMeasurement
from grok.cfp.overlay import cfp_layer_pngs
from grok.ids import BOUNDARIES
from grok.oct.overlay import BOUNDARY_COLOURS, bscan_layer_pngs


def _rgba(path) -> np.ndarray:
    img = Image.open(path)
    assert img.mode == "RGBA"
    return np.asarray(img)


def test_bscan_layers_draw_each_structure_where_it_is(tmp_path):
    rows, cols = 60, 80
    bounds = np.stack([np.full(cols, 10.0 + 4 * k) for k in range(len(BOUNDARIES))])
    bounds[0, 30:40] = np.nan  # a gap in the ILM stays open
    srf = np.zeros((rows, cols), bool)
    srf[45:50, 20:30] = True
    paths = bscan_layer_pngs((rows, cols), bounds, tmp_path / "b", masks={"srf": srf, "drusen": np.zeros_like(srf)},
                             hrf=[(20.0, 60.0)])
    assert set(paths) == {"layers", "fluid", "drusen"}  # drusen: the focus ring only
    layers = _rgba(paths["layers"])
    assert layers.shape == (rows, cols, 4)
    ilm = tuple(int(BOUNDARY_COLOURS[0][i:i + 2], 16) for i in (1, 3, 5))
    assert tuple(layers[10, 5, :3]) == ilm and layers[10, 5, 3] == 255
    assert layers[10, 35, 3] == 0  # the NaN gap
    assert layers[10 + 4 * 8, 50, 3] == 255  # BM
    assert layers[5, 5, 3] == 0 and layers[55, 5, 3] == 0  # transparent elsewhere
    fluid = _rgba(paths["fluid"])
    assert (fluid[..., 3] > 0).sum() == srf.sum() and fluid[47, 25, 3] > 0
    drusen = _rgba(paths["drusen"])
    assert drusen[20, 57, 3] == 255 and drusen[20, 60, 3] == 0  # a ring around the focus


def test_bscan_layers_skip_structures_that_are_absent(tmp_path):
    assert bscan_layer_pngs((20, 30), None, tmp_path / "x", masks={"irf": np.zeros((20, 30), bool)}) == {}
    assert not list(tmp_path.iterdir())


def test_cfp_layers_follow_the_shown_size(tmp_path):
    h, w = 100, 120
    masks = {k: np.zeros((h, w), bool) for k in ("fov", "vessels", "arteries", "veins", "disc", "cup")}
    masks["vessels"][50, :] = True
    masks["arteries"][50, :60] = True
    masks["veins"][50, 60:] = True
    yy, xx = np.mgrid[:h, :w]
    masks["disc"] = (yy - 40) ** 2 + (xx - 90) ** 2 <= 15 ** 2
    masks["cup"] = (yy - 40) ** 2 + (xx - 90) ** 2 <= 7 ** 2
    m = CfpMeasurement(biomarkers={"fovea_center_xy_px": (40.0, 60.0)}, lesions=[], quality={}, laterality="OD",
                       masks=masks)
    paths = cfp_layer_pngs(m, (60, 50), tmp_path / "cfp", scale=0.5)  # the photo shown at half size
    vessels, disc = _rgba(paths["vessels"]), _rgba(paths["disc_cup"])
    assert vessels.shape == (50, 60, 4) and disc.shape == (50, 60, 4)
    assert tuple(vessels[25, 10]) == (255, 60, 60, 210) and tuple(vessels[25, 50]) == (60, 110, 255, 210)
    assert vessels[10, 10, 3] == 0
    assert disc[20, 45, 3] == 0  # inside the cup: outlines only
    assert disc[20, 45 + 7, 3] == 255 or disc[20, 45 - 7, 3] == 255  # the disc's rim
    assert disc[30, 20, 3] == 255  # the fovea cross at (40, 60) * 0.5
