"""OCT analysis: layer segmentation, macular and peripapillary biomarkers, lesions, overlays.

Public API (imported lazily so that ``grok.oct.grid`` / ``grok.oct.measures`` stay light):

* :func:`segment_bscan` -- nine boundaries of one B-scan
* :func:`measure_volume` -- every canonical macular biomarker of a cube -> :class:`OctMeasurement`
* :func:`measure_circle` -- peripapillary RNFL of a circle scan -> :class:`CircleMeasurement`
* :func:`select_bscans` -- the foveal B-scan and the B-scans that show lesions
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "segment_bscan": "grok.oct.segment",
    "BscanSegmentation": "grok.oct.segment",
    "measure_volume": "grok.oct.volume",
    "OctMeasurement": "grok.oct.volume",
    "select_bscans": "grok.oct.volume",
    "measure_circle": "grok.oct.volume",
    "CircleMeasurement": "grok.oct.volume",
}

__all__ = [
    "BscanSegmentation",
    "CircleMeasurement",
    "OctMeasurement",
    "measure_circle",
    "measure_volume",
    "segment_bscan",
    "select_bscans",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'grok.oct' has no attribute {name!r}")
