"""Burned-in text: every phantom export with a name banner is quarantined, clean exports and the real
photographs of ../shared/real/cfp are not flagged, and text drawn onto a real photograph is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw, ImageFont

from grok.ingest.deid import DeidConfig, keyed_hash
from grok.ingest.pipeline import IngestConfig, ingest
from grok.privacy.burned_in import find_text_regions

KEY = "test-secret-key"
REAL_CFP = Path(__file__).resolve().parents[2] / "shared" / "real" / "cfp"


def _fates(out: Path) -> dict[str, dict]:
    return {r["source_key"]: r for r in pq.read_table(out / "files.parquet").to_pylist()}


def _exports(phantom_archive: Path) -> tuple[list[str], list[str]]:
    root = phantom_archive / "exports"
    images = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix in (".png", ".jpg"))
    return [p for p in images if "banner" in Path(p).name], [p for p in images if "banner" not in Path(p).name]


def test_every_banner_export_is_quarantined_and_no_clean_one(phantom_archive, tmp_path):
    banners, clean = _exports(phantom_archive)
    assert len(banners) == 8 and len(clean) > 50
    out = tmp_path / "ing"
    res = ingest(str(phantom_archive / "exports"), out, IngestConfig(deid=DeidConfig(key=KEY)))
    fates = _fates(out)
    for rel in banners:
        f = fates[keyed_hash(rel, KEY, purpose="source-path")]
        assert (f["status"], f["error_class"]) == ("quarantined", "possible_burned_in_text"), rel
    for rel in clean:
        assert fates[keyed_hash(rel, KEY, purpose="source-path")]["status"] != "quarantined", rel
    assert res.quarantine_reasons == {"possible_burned_in_text": 8}


def test_allowed_burned_in_text_is_ingested_and_flagged(phantom_archive, tmp_path):
    banners, _ = _exports(phantom_archive)
    out = tmp_path / "ing"
    res = ingest(str(phantom_archive / "exports"), out, IngestConfig(deid=DeidConfig(key=KEY, allow_burned_in=True)))
    assert res.files_quarantined == 0
    m = pq.read_table(out / "manifest.parquet").to_pandas()
    flagged = m[m.quality_flags.map(lambda f: "burned_in_text_allowed" in list(f))]
    assert len(flagged) == len(banners)


def _draw_line(img: Image.Image, text: str, xy: tuple[int, int], fill) -> None:
    ImageDraw.Draw(img).text(xy, text, fill=fill, font=ImageFont.load_default())


@pytest.mark.parametrize("page,ink", [(0, 255), (255, 0), (30, 220)])
def test_detector_finds_a_line_of_text_in_either_polarity(page, ink):
    img = Image.new("L", (320, 120), page)
    _draw_line(img, "ASHCOMBE, GWENDOLYN  ID MRN4333367", (12, 50), ink)
    regions = find_text_regions(np.asarray(img))
    assert len(regions) == 1
    r = regions[0]
    assert 40 <= r.y0 <= 52 and 58 <= r.y1 <= 66 and r.glyphs >= 20


def test_detector_ignores_noise_and_smooth_images():
    rng = np.random.default_rng(0)
    speckle = (rng.gamma(1.5, 40.0, (496, 512))).clip(0, 255).astype(np.uint8)
    ramp = np.tile(np.linspace(0, 255, 512, dtype=np.float32), (300, 1)).astype(np.uint8)
    assert find_text_regions(speckle) == [] and find_text_regions(ramp) == []


def _real_photos() -> list[Path]:
    return sorted(p for p in REAL_CFP.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))


def _load_reduced(path: Path) -> Image.Image:
    """Decoded at a reduced scale first (JPEG DCT scaling, fast): the longer side ends near 1000 px
    (HRF 3504 -> 876, CHASE_DB1 999 kept)."""
    im = Image.open(path)
    scale = 1
    while max(im.size) // (scale * 2) >= 800:
        scale *= 2
    im.draft("RGB", (im.width // scale, im.height // scale))
    return im.convert("RGB")


@pytest.mark.skipif(not REAL_CFP.is_dir(), reason="../shared/real/cfp is not present")
def test_no_real_photograph_is_flagged():
    photos = _real_photos()
    assert len(photos) == 73  # CHASE_DB1 28 + HRF 45
    flagged = [p.name for p in photos if find_text_regions(np.asarray(_load_reduced(p)))]
    assert flagged == []


@pytest.mark.skipif(not REAL_CFP.is_dir(), reason="../shared/real/cfp is not present")
def test_text_drawn_onto_a_real_photograph_is_flagged():
    """Positive control on real data: an overlay in the dark corner of a real fundus photograph."""
    photo = _load_reduced(_real_photos()[0])
    _draw_line(photo, "WINTERBOTTOM E  1945-03-12", (8, 8), (235, 235, 235))
    regions = find_text_regions(np.asarray(photo))
    assert len(regions) == 1 and regions[0].y0 < 30
