"""Colour fundus photograph (CFP) measures: quality, disc and cup, fovea, vessels, lesions.

Public API::

    from grok.cfp import measure_fundus, overlay_png, CfpMeasurement
    m = measure_fundus(rgb, laterality="OD")      # rgb : (H, W, 3) uint8
    m.biomarkers["cup_disc_ratio_vertical"]; m.lesions; m.quality; m.masks; m.to_dict()
    overlay_png(rgb, m, "overlay.png")

The names are imported lazily so that ``grok.cfp.formulas`` (used by the phantom) stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CfpMeasurement", "measure_fundus", "overlay_png", "write_masks"]


def __getattr__(name: str) -> Any:
    if name in ("CfpMeasurement", "measure_fundus"):
        from grok.cfp import measure

        return getattr(measure, name)
    if name in ("overlay_png", "write_masks"):
        from grok.cfp import overlay

        return getattr(overlay, name)
    raise AttributeError(f"module 'grok.cfp' has no attribute {name!r}")
