"""Grounding boxes in the Qwen2-VL convention: integer coordinates normalised to [0, 1000).

Run as: python -c "from grok.instruct.boxes import format_box; print(format_box((10, 20, 50, 60), 'drusen'))"

A pixel box ``(x1, y1, x2, y2)`` (pixels of an image of width ``W`` and height ``H``, x to the
right, y downwards, origin at the top-left corner) becomes::

    <|object_ref_start|>label<|object_ref_end|><|box_start|>(X1,Y1),(X2,Y2)<|box_end|>

with ``X = round(x / W * 1000)`` and ``Y = round(y / H * 1000)``, each clamped to ``0..999``.
The label part is optional. Qwen2-VL's processor reads exactly these tokens, so rows can be used
for grounding without any conversion.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

BOX_START, BOX_END = "<|box_start|>", "<|box_end|>"
REF_START, REF_END = "<|object_ref_start|>", "<|object_ref_end|>"
#: Normalised coordinates lie in ``[0, NORM)``.
NORM = 1000

_BOX_RE = re.compile(
    r"(?:<\|object_ref_start\|>(?P<label>[^<]*)<\|object_ref_end\|>)?"
    r"<\|box_start\|>\((?P<x1>-?\d+(?:\.\d+)?),\s*(?P<y1>-?\d+(?:\.\d+)?)\),\s*"
    r"\((?P<x2>-?\d+(?:\.\d+)?),\s*(?P<y2>-?\d+(?:\.\d+)?)\)<\|box_end\|>"
)
#: Anything that opens a box, to catch malformed boxes that ``_BOX_RE`` does not parse.
_BOX_OPEN_RE = re.compile(re.escape(BOX_START))


@dataclass(frozen=True)
class Box:
    """A normalised box: integer corners in ``[0, 1000)``; ``label`` may be empty."""

    x1: float
    y1: float
    x2: float
    y2: float
    label: str = ""

    def to_dict(self) -> dict:
        return {"x1": self.x1, "y1": self.y1, "x2": self.x2, "y2": self.y2, "label": self.label}

    def problems(self) -> list[str]:
        """Why this box is not a valid normalised box (empty list when it is)."""
        out = []
        for name in ("x1", "y1", "x2", "y2"):
            v = getattr(self, name)
            if v != int(v):
                out.append(f"{name}={v} is not an integer")
            if not 0 <= v < NORM:
                out.append(f"{name}={v:g} is outside [0, {NORM})")
        if self.x2 <= self.x1 or self.y2 <= self.y1:
            out.append(f"corners ({self.x1:g},{self.y1:g}),({self.x2:g},{self.y2:g}) are not top-left then bottom-right")
        return out


def _norm(v: float, size: float) -> int:
    return int(min(NORM - 1, max(0, round(v / size * NORM))))


def normalise_box(box_xyxy_px, image_size_wh, label: str = "") -> Box:
    """Pixel box ``[x1, y1, x2, y2]`` on an image of size ``[W, H]`` (pixels) -> :class:`Box`.

    Raises ``ValueError`` (naming the fix) for a box that is not four finite numbers or an image
    size that is not two positive numbers.
    """
    if len(box_xyxy_px) != 4 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box_xyxy_px):
        raise ValueError(f"box_xyxy_px must be four finite pixel coordinates [x1, y1, x2, y2], got {box_xyxy_px!r}")
    if len(image_size_wh) != 2 or not all(isinstance(v, (int, float)) and v > 0 for v in image_size_wh):
        raise ValueError(f"image size must be [width, height] in pixels, both > 0, got {image_size_wh!r}")
    w, h = float(image_size_wh[0]), float(image_size_wh[1])
    x1, y1, x2, y2 = (float(v) for v in box_xyxy_px)
    x1, x2 = min(x1, x2), max(x1, x2)
    y1, y2 = min(y1, y2), max(y1, y2)
    b = Box(_norm(x1, w), _norm(y1, h), _norm(x2, w), _norm(y2, h), label)
    if b.x2 <= b.x1 or b.y2 <= b.y1:  # a box thinner than one normalised unit: widen it by one unit
        b = Box(min(b.x1, NORM - 2), min(b.y1, NORM - 2), max(b.x2, min(b.x1, NORM - 2) + 1),
                max(b.y2, min(b.y1, NORM - 2) + 1), label)
    return b


def format_box(box: Box | tuple, label: str | None = None) -> str:
    """The Qwen2-VL text of a box, with ``<|object_ref_start|>label<|object_ref_end|>`` when labelled."""
    if not isinstance(box, Box):
        box = Box(*box)
    lab = box.label if label is None else label
    ref = f"{REF_START}{lab}{REF_END}" if lab else ""
    return f"{ref}{BOX_START}({int(box.x1)},{int(box.y1)}),({int(box.x2)},{int(box.y2)}){BOX_END}"


def parse_boxes(text: str) -> tuple[list[Box], int]:
    """Boxes written in ``text`` and the number of ``<|box_start|>`` tokens that did not parse."""
    boxes = [Box(float(m["x1"]), float(m["y1"]), float(m["x2"]), float(m["y2"]), (m["label"] or "").strip())
             for m in _BOX_RE.finditer(text)]
    opened = len(_BOX_OPEN_RE.findall(text))
    return boxes, max(0, opened - len(boxes))


def strip_boxes(text: str) -> str:
    """``text`` with every box (and its label tokens) replaced by a space, for number checks."""
    return _BOX_RE.sub(" ", text)


def box_spans(text: str) -> list[tuple[int, int]]:
    """The ``(start, end)`` in ``text`` of each box :func:`strip_boxes` replaces by one space."""
    return [m.span() for m in _BOX_RE.finditer(text)]


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (0 when disjoint)."""
    ix = max(0.0, min(a.x2, b.x2) - max(a.x1, b.x1))
    iy = max(0.0, min(a.y2, b.y2) - max(a.y1, b.y1))
    inter = ix * iy
    union = (a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter
    return inter / union if union > 0 else 0.0
