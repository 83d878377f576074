"""Text burned into image pixels: a classical detector of rows of glyph-sized, high-contrast marks.

Run as: python -m grok.privacy.burned_in IMAGE_OR_FOLDER... [--json]   (which images would ingestion flag)

Clinic exports often carry the patient's name, record number or birth date in the pixels: a banner
across a screenshot, the header of an OCT report page, a camera's overlay in a photograph's corner.
Header de-identification cannot remove those, so ingestion quarantines images where this detector
finds text (``possible_burned_in_text``) unless the operator allows burned-in content.

Method (no learned model, no OCR):

1. the image becomes grey (luminance), reduced by an integer area factor to at most
   :data:`WORK_SIDE` pixels on its longer side;
2. strokes thinner than the structuring element stand out in a white and a black top-hat (text
   bright on dark, and dark on bright, are looked for separately); pixels whose top-hat exceeds
   :data:`MIN_CONTRAST` grey levels (of 255) form the candidate mask;
3. connected components of glyph size (5 to 60 px tall at working scale, not much wider than tall,
   partly filled) are kept only where the background around them is flat (glyphs sit on a plain
   bar or page; speckle, vessels and retinal texture do not);
4. glyphs are chained into lines (vertical overlap, similar heights, gaps under two glyph heights)
   and a line of at least :data:`MIN_GLYPHS` glyphs, at least three glyph heights wide, with aligned
   centres is a text region (a line found in both polarities is reported once).

It is tuned to flag rather than to miss: a flagged image goes to quarantine for a person to look at.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

#: Longer side (px) the detector works at; larger images are area-reduced by an integer factor.
WORK_SIDE = 2048
#: Top-hat response (grey levels of 255) a stroke pixel must exceed.
MIN_CONTRAST = 80.0
#: Glyph heights (px, at working scale) considered.
GLYPH_HEIGHT = (5, 60)
#: Largest standard deviation (grey levels) of the background right around a glyph.
MAX_BACKGROUND_STD = 14.0
#: Glyphs a line needs to count as text.
MIN_GLYPHS = 5
_SE = 9


@dataclass
class TextRegion:
    """One text-like line, in pixels of the input image: box (x0, y0, x1, y1), glyph count and height."""

    x0: int
    y0: int
    x1: int
    y1: int
    glyphs: int
    glyph_height_px: float

    def to_dict(self) -> dict:
        return asdict(self)


def _grey(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim == 3:
        a = a[..., :3]
        a = a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114 if a.shape[2] == 3 else a[..., 0]
    a = a.astype(np.float32)
    if np.asarray(image).dtype == np.uint16 or a.max(initial=0) > 255:
        a *= 255.0 / max(float(a.max()), 1.0)
    return a


def _reduce(grey: np.ndarray) -> tuple[np.ndarray, int]:
    f = max(1, -(-max(grey.shape) // WORK_SIDE))
    if f == 1:
        return grey, 1
    h, w = (grey.shape[0] // f) * f, (grey.shape[1] // f) * f
    return grey[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3)), f


def _glyphs(grey: np.ndarray, tophat: np.ndarray) -> list[tuple[int, int, int, int, float]]:
    """Candidate glyphs (y0, y1, x0, x1, contrast) of one polarity: glyph-sized marks on a flat background."""
    mask = tophat > MIN_CONTRAST
    if not mask.any():
        return []
    labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    near = ndi.binary_dilation(mask, iterations=2)
    lo, hi = GLYPH_HEIGHT
    out = []
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
        if not (lo <= h <= hi) or w > 3 * h or areas[i] < 5 or areas[i] > 0.85 * h * w:
            continue
        pad = max(2, h // 3)
        y0, y1 = max(0, sl[0].start - pad), min(grey.shape[0], sl[0].stop + pad)
        x0, x1 = max(0, sl[1].start - pad), min(grey.shape[1], sl[1].stop + pad)
        bg = grey[y0:y1, x0:x1][~near[y0:y1, x0:x1]]
        if bg.size < 8 or float(bg.std()) > MAX_BACKGROUND_STD:
            continue
        out.append((sl[0].start, sl[0].stop, sl[1].start, sl[1].stop,
                    float(tophat[sl][labels[sl] == i].mean())))
    return out


def _lines(glyphs: list[tuple[int, int, int, int, float]]) -> list[list[int]]:
    """Chain glyphs into lines: overlapping rows, similar heights, horizontal gaps below two glyph heights."""
    order = sorted(range(len(glyphs)), key=lambda k: glyphs[k][2])
    parent = list(range(len(glyphs)))

    def find(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for a_pos, a in enumerate(order):
        ay0, ay1, _, ax1, _ = glyphs[a]
        ah = ay1 - ay0
        for b in order[a_pos + 1:]:
            by0, by1, bx0, _, _ = glyphs[b]
            if bx0 > ax1 + 2 * ah:  # words: up to two glyph heights apart
                break
            bh = by1 - by0
            overlap = min(ay1, by1) - max(ay0, by0)
            if overlap >= 0.5 * min(ah, bh) and max(ah, bh) <= 2.0 * min(ah, bh):
                parent[find(b)] = find(a)
    groups: dict[int, list[int]] = {}
    for k in range(len(glyphs)):
        groups.setdefault(find(k), []).append(k)
    return list(groups.values())


def find_text_regions(image: np.ndarray) -> list[TextRegion]:
    """Text-like lines in ``image`` ((H, W) grey or (H, W, 3|4) colour, 8 or 16 bit); empty when none."""
    grey, f = _reduce(_grey(image))
    if min(grey.shape) < 16:
        return []
    regions = []
    opened = ndi.grey_opening(grey, size=(_SE, _SE))
    closed = ndi.grey_closing(grey, size=(_SE, _SE))
    for tophat in (grey - opened, closed - grey):
        glyphs = _glyphs(grey, tophat)
        for line in _lines(glyphs):
            if len(line) < MIN_GLYPHS:
                continue
            g = np.array([glyphs[k][:4] for k in line], dtype=float)
            heights = g[:, 1] - g[:, 0]
            h = float(np.median(heights))
            centres = (g[:, 0] + g[:, 1]) / 2
            x0, x1 = g[:, 2].min(), g[:, 3].max()
            if (x1 - x0) < 3 * h or float(np.std(centres)) > 0.3 * h:
                continue
            if np.mean(np.abs(heights - h) <= 0.4 * h) < 0.7:
                continue
            regions.append(TextRegion(x0=int(x0 * f), y0=int(g[:, 0].min() * f), x1=int(x1 * f),
                                      y1=int(g[:, 1].max() * f), glyphs=len(line), glyph_height_px=h * f))
    return _merge(sorted(regions, key=lambda r: (r.y0, r.x0)))


def _merge(regions: list[TextRegion]) -> list[TextRegion]:
    """One region per line: boxes that overlap (a line seen in both polarities: strokes and the gaps
    between them) are united."""
    out: list[TextRegion] = []
    for r in regions:
        for m in out:
            if r.x0 <= m.x1 and m.x0 <= r.x1 and r.y0 <= m.y1 and m.y0 <= r.y1:
                m.x0, m.y0, m.x1, m.y1 = min(m.x0, r.x0), min(m.y0, r.y0), max(m.x1, r.x1), max(m.y1, r.y1)
                m.glyphs = max(m.glyphs, r.glyphs)
                break
        else:
            out.append(r)
    return out


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def main(argv: list[str] | None = None) -> int:
    """Run the detector over images and folders of images; print the flagged files and a summary (exit 0)."""
    ap = argparse.ArgumentParser(prog="python -m grok.privacy.burned_in", description=main.__doc__)
    ap.add_argument("paths", nargs="+", type=Path, help="image files or folders (searched recursively)")
    ap.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    args = ap.parse_args(argv)
    files = sorted({f for p in args.paths for f in ([p] if p.is_file() else p.rglob("*"))
                    if f.suffix.lower() in IMAGE_SUFFIXES})
    flagged: dict[str, int] = {}
    seconds = 0.0
    for f in files:
        with Image.open(f) as im:
            arr = np.asarray(im.convert("RGB") if im.mode not in ("L", "I;16", "RGB") else im)
        t0 = time.perf_counter()
        regions = find_text_regions(arr)
        seconds += time.perf_counter() - t0
        if regions:
            flagged[str(f)] = len(regions)
    summary = {"images": len(files), "flagged": len(flagged), "detector_seconds": round(seconds, 2),
               "ms_per_image": round(1000 * seconds / max(len(files), 1), 1)}
    if args.json:
        print(json.dumps({**summary, "flagged_files": flagged}, indent=2))
    else:
        for f, n in flagged.items():
            print(f"{f}: {n} text-like line(s)", file=sys.stderr)
        print(json.dumps(summary), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
