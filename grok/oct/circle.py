"""Peripapillary circle scans: RNFL thickness by TSNIT sector.

The scan is one B-scan around the optic disc whose columns run in TSNIT order starting temporal
(temporal -> superior -> nasal -> inferior -> temporal), the Heidelberg/Cirrus display order for both
eyes. Sectors are 90 degree quadrants centred on T (0 deg), S (90), N (180), I (270).
"""

from __future__ import annotations

import math

import numpy as np

from grok.ids import BOUNDARIES, OCT_PERIPAPILLARY_BIOMARKERS

_ILM, _RNFL = BOUNDARIES.index("ILM"), BOUNDARIES.index("RNFL_GCL")
#: Smallest fraction of a sector's (or the whole circle's) columns that must have a valid RNFL for its mean
#: to be reported. The RNFL around the disc is up to twice as thick at the superior and inferior humps as
#: beside them, so a gap (a blink, the scan cut off, a dense shadow) biases a partial mean by where it lies:
#: 10 % of a sector missing at its hump moves the mean by ~4 um (inside the 10 um a sector is held to), a
#: third of it by ~15 um (a blink over 60 of the 192 inferior columns of the real circle scan: -14 um).
MIN_SECTOR_COVERAGE = 0.9


def sector_of_columns(cols: int) -> np.ndarray:
    """(cols,) array of sector names ``"temporal" | "superior" | "nasal" | "inferior"`` (TSNIT order)."""
    phi = (np.arange(cols) + 0.5) * 360.0 / cols
    out = np.empty(cols, dtype=object)
    out[(phi >= 315) | (phi < 45)] = "temporal"
    out[(phi >= 45) & (phi < 135)] = "superior"
    out[(phi >= 135) & (phi < 225)] = "nasal"
    out[(phi >= 225) & (phi < 315)] = "inferior"
    return out


def circle_biomarkers(boundaries: np.ndarray, axial_um: float) -> tuple[dict[str, float], dict[str, str]]:
    """RNFL means (um) of a circle scan.

    boundaries : (9, cols) float rows in ``grok.ids.BOUNDARIES`` order (NaN where not found)
    Returns ``(biomarkers, reasons)`` over ``OCT_PERIPAPILLARY_BIOMARKERS``.
    """
    rnfl = (boundaries[_RNFL] - boundaries[_ILM]).astype(np.float64) * axial_um
    sectors = sector_of_columns(rnfl.shape[0])
    bio: dict[str, float] = {}
    why: dict[str, str] = {}
    for key, sel in (("mean", np.ones(rnfl.shape[0], bool)),
                     *((s, sectors == s) for s in ("superior", "nasal", "inferior", "temporal"))):
        vals = rnfl[sel]
        ok = np.isfinite(vals)
        name = f"rnfl_peripapillary_{key}_um"
        if ok.sum() < MIN_SECTOR_COVERAGE * max(1, vals.size):
            bio[name] = math.nan
            why[name] = (f"RNFL found in {ok.sum() / max(1, vals.size):.0%} of the {key} columns (under "
                         f"{MIN_SECTOR_COVERAGE:.0%}: a blink, a cut-off scan or a dense shadow); a partial mean "
                         "is biased by where the gap lies")
        else:
            bio[name] = float(vals[ok].mean())
    return {k: bio[k] for k in OCT_PERIPAPILLARY_BIOMARKERS}, why
