"""Synthetic macular OCT cubes and peripapillary circle scans with known ground truth.

Run as: python -m grok.phantom.oct --category amd --seed 1 --png /tmp/amd.png

The phantom builds each eye from en-face thickness maps (micrometres) of the retinal layers, stacked
on a curved and tilted Bruch's membrane, then renders every A-scan with partial-pixel coverage of
layers of realistic relative reflectivity (RNFL, IPL, OPL, EZ, RPE bright; GCL, INL, ONL darker;
textured choroid), retinal-vessel shadows, depth attenuation, lateral vignetting and dim B-scans,
multiplicative speckle (``noise`` scales it: 0.5 easy, 1 typical, 2 hard = fully developed speckle)
over a noise floor, and a device intensity transform (log or 4th-root, chosen per eye) to uint8.

Pathology by category (``severity`` scales it, 0 = none): ``amd`` drusen (RPE lifted off BM), sometimes
a serous PED, SRF, IRF, EZ loss over large lesions and a few HRF; ``diabetic_retinopathy`` retinal
thickening, intraretinal cysts (IRF), HRF, sometimes SRF; ``glaucoma`` RNFL and GC-IPL thinning (inferior-
temporal first); ``alzheimers`` subtle inner-retina thinning; ``normal``, ``diabetes``, ``hypertension``
normal variation with age and sex.

Conventions are those of :mod:`grok.oct.grid`: B-scan 0 is superior, nasal is towards the last column for
OD and towards column 0 for OS. Boundary rows are in pixels from the top, pixel ``r`` covering
``[r - 0.5, r + 0.5)``; a mask pixel belongs to a region when its centre lies inside it.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, field

import numba
import numpy as np
from scipy import ndimage

from grok.ids import (
    CATEGORIES,
    OCT_EXTRA_BIOMARKERS,
    OCT_GROK_BIOMARKERS,
    OCT_PERIPAPILLARY_BIOMARKERS,
)
from grok.oct.atrophy import atrophy_regions
from grok.oct.circle import circle_biomarkers
from grok.oct.grid import CubeSpacing
from grok.oct.lesions import lesion_boxes
from grok.oct.measures import macular_biomarkers
from grok.oct.overlay import bscan_png

LATERALITIES = ("OD", "OS")

# Linear reflectivities of the rendered segments (relative units); see _SEG_* below for the order.
_R_VITREOUS = 0.0
_R_RNFL = 1.0
_R_GCL = 0.30
_R_IPL = 0.62
_R_INL = 0.24
_R_FLUID = 0.002
_R_OPL = 0.60
_R_ONL = 0.11
_R_ELM = 0.55
_R_IS = 0.17
_R_EZ = 1.35
_R_OS = 0.20
_R_IZ = 0.55
_R_RPE = 1.7
_R_DRUSEN = 0.45
_R_PED = 0.004
_R_BM = 1.1
_R_SCLERA = 0.045
_TEXTURE = -1.0  # choroid: textured inside the kernel

#: Rendered segments (``_stack``'s order): the tissue each one is, so a per-eye factor is shared by the
#: two halves of a layer that a cyst splits, and by every fluid pocket.
_SEG_TISSUE = ("vitreous", "rnfl", "gcl", "ipl", "inl", "fluid", "inl", "opl", "onl", "fluid", "onl", "elm", "is",
               "ez", "os", "iz", "fluid", "rpe", "sub_rpe", "bm", "choroid", "sclera")
#: Standard reflectivity of each rendered segment (sub-RPE: drusen; a PED replaces it per column).
_BASE_REFL = (
    _R_VITREOUS, _R_RNFL, _R_GCL, _R_IPL, _R_INL, _R_FLUID, _R_INL, _R_OPL, _R_ONL, _R_FLUID, _R_ONL,
    _R_ELM, _R_IS, _R_EZ, _R_OS, _R_IZ, _R_FLUID, _R_RPE, _R_DRUSEN, _R_BM, _TEXTURE, _R_SCLERA,
)
#: Number of rendered segments per A-scan (vitreous ... sclera) and of their interfaces.
_NSEG = 22
_NZ = _NSEG - 1
assert len(_SEG_TISSUE) == _NSEG
#: Interface indices (``z[k]`` ends segment ``k``) that are the nine canonical boundaries.
_Z_OF_BOUNDARY = (0, 1, 3, 6, 7, 10, 12, 16, 19)
_Z_CSI = 20


@dataclass
class OctGeometry:
    """Sampling of a macular cube (defaults: a Spectralis-like 49-line 6 x 6 mm cube)."""

    n_bscans: int = 49  #: B-scans in the cube (>= 1)
    rows: int = 496  #: pixels per A-scan
    cols: int = 512  #: A-scans per B-scan
    axial_um: float = 3.87  #: micrometres between rows
    lateral_um: float = 11.7  #: micrometres between A-scans
    bscan_spacing_um: float = 120.0  #: micrometres between B-scans

    def __post_init__(self) -> None:
        for name, lo in (("n_bscans", 1), ("rows", 64), ("cols", 32)):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"OctGeometry.{name} must be an integer >= {lo}, got {v!r}")
        for name in ("axial_um", "lateral_um", "bscan_spacing_um"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"OctGeometry.{name} must be a positive number of micrometres, got {v!r}")
        depth = self.rows * self.axial_um
        if depth < 1200.0:
            raise ValueError(
                f"OctGeometry: rows x axial_um = {depth:.0f} um is too shallow for retina + choroid; "
                "raise rows or axial_um so the A-scan spans at least 1200 um"
            )

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """(axial, lateral, between B-scans) in mm, the order of ``OctScan.spacing_mm``."""
        return (self.axial_um * 1e-3, self.lateral_um * 1e-3, self.bscan_spacing_um * 1e-3)


@dataclass
class OctPhantom:
    """A synthetic cube and its truth (see the module docstring for the conventions)."""

    volume: np.ndarray  #: (n_bscans, rows, cols) uint8
    boundaries: np.ndarray  #: (n_bscans, 9, cols) float32 true rows, ``grok.ids.BOUNDARIES`` order
    choroid_sclera: np.ndarray  #: (n_bscans, cols) float32 true row of the choroid-sclera interface
    masks: dict[str, np.ndarray]  #: "irf", "srf", "ped", "drusen" -> (n_bscans, rows, cols) bool
    hrf: list[tuple[int, float, float]]  #: (bscan, row, col) of each hyperreflective focus
    lesions: list[dict]  #: {"type", "bscan", "box_xyxy_px": [x1, y1, x2, y2]} (inclusive pixel box)
    fovea: tuple[float, float]  #: (B-scan index, column) of the true foveal centre
    geometry: OctGeometry
    laterality: str
    biomarkers: dict[str, float]  #: true values of every canonical macular id (NaN only where undefined)
    category: str = "normal"
    ez_disrupted: np.ndarray | None = None  #: (n_bscans, cols) bool, where the EZ band is missing
    params: dict = field(default_factory=dict)  #: severity, age_years, sex, noise, transform
    #: (n_bscans, cols) bool en-face map of geographic atrophy (complete RPE and outer retinal atrophy); None
    #: when the cube was drawn without (``atrophy=False``)
    atrophy: np.ndarray | None = None

    def to_truth(self) -> dict:
        """JSON-able truth without the big arrays (NaN -> None)."""
        return {
            "category": self.category,
            "laterality": self.laterality,
            "fovea": [float(self.fovea[0]), float(self.fovea[1])],
            "geometry": asdict(self.geometry),
            "biomarkers": {k: _none_if_nan(v) for k, v in self.biomarkers.items()},
            "lesions": self.lesions,
            "hrf": [[int(b), float(r), float(c)] for b, r, c in self.hrf],
            "params": dict(self.params),
            "geographic_atrophy": None if self.atrophy is None else atrophy_truth(self.atrophy, self.geometry),
        }


def atrophy_truth(atrophy: np.ndarray, geometry: OctGeometry) -> dict:
    """Regions and area of an en-face atrophy map, counted as the measure counts them
    (:func:`grok.oct.atrophy.atrophy_regions`)."""
    n_regions, area_mm2, _ = atrophy_regions(atrophy, geometry.lateral_um, geometry.bscan_spacing_um)
    return {"regions": n_regions, "area_mm2": area_mm2}


@dataclass
class CirclePhantom:
    """A synthetic peripapillary circle scan (one B-scan, TSNIT order starting temporal).

    The circle has a 3.46 mm diameter (the Stratus/Cirrus convention), so its 768 A-scans cover a
    10.87 mm circumference: ``lateral_um`` = 14.15 um at the default ``cols``.
    """

    bscan: np.ndarray  #: (rows, cols) uint8
    boundaries: np.ndarray  #: (9, cols) float32
    laterality: str
    axial_um: float
    lateral_um: float
    biomarkers: dict[str, float]  #: rnfl_peripapillary_{mean,superior,nasal,inferior,temporal}_um
    category: str = "normal"

    def to_truth(self) -> dict:
        return {
            "category": self.category,
            "laterality": self.laterality,
            "axial_um": self.axial_um,
            "lateral_um": self.lateral_um,
            "scan_pattern": "circle",
            "circle_diameter_mm": CIRCLE_DIAMETER_MM,
            "order": "TSNIT",
            "biomarkers": {k: _none_if_nan(v) for k, v in self.biomarkers.items()},
        }


CIRCLE_DIAMETER_MM = 3.46


def _none_if_nan(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _check_appearance(appearance: str) -> None:
    if appearance not in APPEARANCES:
        raise ValueError(f"appearance must be one of {', '.join(APPEARANCES)}; got {appearance!r}")


def _check_args(category: str, laterality: str, severity: float, noise: float) -> None:
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {', '.join(CATEGORIES)}; got {category!r}")
    if laterality not in LATERALITIES:
        raise ValueError(f"laterality must be 'OD' or 'OS', got {laterality!r}")
    if not (0.0 <= severity <= 3.0):
        raise ValueError(f"severity must be in [0, 3] (0 = no pathology, 1 = typical), got {severity!r}")
    if not (0.0 <= noise <= 4.0):
        raise ValueError(f"noise must be in [0, 4] (0.5 easy, 1 typical, 2 hard), got {noise!r}")


# ----------------------------------------------------------------------------------------------------
# Rendering kernel
# ----------------------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _fill(mask, i, c, start, stop):
    """Set ``mask[i, r, c]`` for every pixel centre ``r`` in ``[start, stop)``."""
    rows = mask.shape[1]
    r0 = max(0, int(math.ceil(start)))
    r1 = min(rows, int(math.ceil(stop)))
    for r in range(r0, r1):
        mask[i, r, c] = True


@numba.njit(cache=True, nogil=True)
def _render(
    z,  # (n, _NZ, cols) float32 interface rows, non-decreasing along axis 1
    refl,  # (n, _NSEG, cols) float32 linear reflectivity of each segment (_TEXTURE = choroid)
    sub_is_ped,  # (n, cols) bool: the sub-RPE space holds PED (else drusen)
    gain,  # (n, cols) float32 illumination gain (vignetting, dim B-scans)
    shadow_start,  # (n, cols) float32 row where a vessel shadow starts (inf: none)
    shadow_factor,  # (n, cols) float32 intensity factor inside the shadow
    tex,  # (n, 6) float32 choroid texture parameters (wave numbers, phases)
    chor,  # choroid reflectivity scale (1 = the standard phantom)
    gamma,  # contrast power relative to the RPE applied to the choroid's levels (1 = the standard phantom)
    hrf,  # (k, 5) float32 rows: bscan, row, col, lateral radius px, axial radius px; sorted by bscan
    logn,  # (n, rows, cols) float32 log of unit-exponential noise
    noise_a,  # speckle exponent (0 = no speckle)
    floor,  # noise floor (linear)
    axial_um,
    transform,  # 0 = log10, 1 = 4th root
    out,  # (n, rows, cols) uint8
    m_irf,
    m_srf,
    m_ped,
    m_drusen,  # (n, rows, cols) bool masks, filled here
):
    n, rows, cols = out.shape
    lo_db = math.log10(0.0015)
    hi_db = math.log10(5.0)
    inv_ln10 = 1.0 / math.log(10.0)
    k_abs = axial_um / 4000.0  # sensitivity roll-off with depth in the image
    k_tis = axial_um / 2500.0  # attenuation inside tissue
    att_abs = np.empty(rows, np.float64)
    att_tis = np.empty(rows, np.float64)
    for r in range(rows):
        att_abs[r] = math.exp(-r * k_abs)
        att_tis[r] = math.exp(-r * k_tis)
    prof = np.empty(rows, np.float64)
    sin_r = np.empty(rows, np.float64)
    k0 = 0
    for i in range(n):
        while k0 < hrf.shape[0] and hrf[k0, 0] < i:
            k0 += 1
        k1 = k0
        while k1 < hrf.shape[0] and hrf[k1, 0] == i:
            k1 += 1
        for r in range(rows):
            sin_r[r] = 0.9 * math.sin(tex[i, 2] * r + tex[i, 4])
        for c in range(cols):
            zc = z[i, :, c]
            bm = zc[19]
            thick = max(zc[20] - bm, 1.0)
            # 1) linear reflectivity with partial-pixel coverage of each segment
            s = 0
            for r in range(rows):
                lo = r - 0.5
                hi = r + 0.5
                while s < _NZ and zc[s] <= lo:
                    s += 1
                acc = 0.0
                pos = lo
                t = s
                while True:
                    end = zc[t] if t < _NZ else 1e30
                    seg_hi = min(hi, end)
                    w = seg_hi - pos
                    if w > 0:
                        v = refl[i, t, c]
                        if v == _TEXTURE:
                            u = (r - bm) / thick
                            if u < 0.12:
                                v = 0.36
                            else:
                                q = math.cos(tex[i, 0] * c + tex[i, 3] + sin_r[r])
                                q *= math.cos(tex[i, 1] * (1.6 - u) * (r - bm) + tex[i, 5])
                                v = 0.05 if q > 0.35 else 0.24
                            if chor != 1.0 or gamma != 1.0:
                                v = _R_RPE * (v * chor / _R_RPE) ** gamma
                        acc += w * v
                    pos = seg_hi
                    if end >= hi:
                        break
                    t += 1
                prof[r] = acc
            # masks by pixel centre
            _fill(m_irf, i, c, zc[4], zc[5])
            _fill(m_irf, i, c, zc[8], zc[9])
            _fill(m_srf, i, c, zc[15], zc[16])
            if sub_is_ped[i, c]:
                _fill(m_ped, i, c, zc[17], zc[19])
            else:
                _fill(m_drusen, i, c, zc[17], zc[19])
            # 2) attenuation, shadows, HRF, speckle, device transform
            ilm = zc[0]
            g = gain[i, c]
            tis0 = math.exp(ilm * k_tis)
            ss = shadow_start[i, c]
            sf = shadow_factor[i, c]
            for r in range(rows):
                v = prof[r] * att_abs[r]
                if r > ilm:
                    v *= att_tis[r] * tis0
                if r >= ss:
                    v *= sf
                elif r >= ss - 3.0:
                    v += 0.5
                for k in range(k0, k1):
                    dc = (c - hrf[k, 2]) / hrf[k, 3]
                    dr = (r - hrf[k, 1]) / hrf[k, 4]
                    d2 = dc * dc + dr * dr
                    if d2 < 4.0:
                        v += 1.6 * math.exp(-d2)
                # log of the speckled intensity: log(v + floor) + a * (log E + euler_gamma)
                lv = math.log(v * g + floor)
                if noise_a > 0:
                    ln = logn[i, r, c] if c == 0 else 0.5 * (logn[i, r, c] + logn[i, r, c - 1])
                    lv += noise_a * (ln + 0.5772)
                if transform == 0:
                    x = (lv * inv_ln10 - lo_db) / (hi_db - lo_db)
                else:
                    x = math.exp(0.25 * (lv - math.log(5.0)))
                x = 255.0 * x + 0.5
                if x < 0.0:
                    x = 0.0
                elif x > 255.0:
                    x = 255.0
                out[i, r, c] = np.uint8(x)


# ----------------------------------------------------------------------------------------------------
# Anatomy
# ----------------------------------------------------------------------------------------------------


def _sig(r: np.ndarray, c0: float, w: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(r - c0) / w))


def _macular_layers(
    x: np.ndarray, y: np.ndarray, rng: np.random.Generator, age_years: float, sex: str
) -> dict[str, np.ndarray]:
    """Normal layer thickness maps in um at en-face points ``x`` (nasal, mm) and ``y`` (superior, mm)."""
    r = np.hypot(x, y)
    th = np.arctan2(y, x)
    g = _sig(r, 0.42, 0.11)
    g2 = _sig(r, 0.34, 0.10)
    g3 = _sig(r, 0.28, 0.10)
    lay = {
        "rnfl": g * (5.0 + 7.0 * r) * (1.0 + 0.4 * np.cos(th)) + g * 4.0 * r * np.abs(np.sin(th)),
        "gcl": g * 55.0 * np.exp(-(((r - 1.1) / 1.9) ** 2)),
        "ipl": g * 40.0 * np.exp(-(((r - 1.0) / 2.4) ** 2)),
        "inl": g2 * 37.0 * np.exp(-(((r - 1.0) / 2.6) ** 2)),
        "opl": 7.0 + 23.0 * g3 * np.exp(-(((r - 1.2) / 4.0) ** 2)),
        "onl": 56.0 + 14.0 * np.exp(-(((r - 0.9) / 1.6) ** 2)) + 62.0 * np.exp(-((r / 0.55) ** 2)),
        "is": 24.0 + 8.0 * np.exp(-((r / 0.5) ** 2)),
        "os": 31.0 + 14.0 * np.exp(-((r / 0.5) ** 2)),
        "rpe": np.full_like(r, 19.0),
    }
    inner_age = 1.0 - 0.0025 * (age_years - 60.0)
    sex_f = 1.03 if sex == "M" else 1.0
    for k in lay:
        f = rng.normal(1.0, 0.05) if k != "rpe" else rng.normal(1.0, 0.03)
        # smooth low-frequency individual variation (+-3 %)
        a, b, p = rng.uniform(0.3, 1.2), rng.uniform(0.3, 1.2), rng.uniform(0, 2 * np.pi, 2)
        f = f * (1.0 + 0.03 * np.sin(a * x + p[0]) * np.cos(b * y + p[1]))
        if k in ("rnfl", "gcl", "ipl"):
            f = f * inner_age
        if k in ("gcl", "ipl", "inl", "onl"):
            f = f * sex_f
        lay[k] = lay[k] * f
    return lay


def _domes(
    x: np.ndarray, y: np.ndarray, cx: np.ndarray, cy: np.ndarray, rad: np.ndarray, h: np.ndarray, p: float
) -> np.ndarray:
    """Max over domes ``h * (1 - (d / rad)^2)^p`` (all in mm / um) at points ``(x, y)``."""
    out = np.zeros_like(x)
    for i in range(len(cx)):
        # only touch the bounding box of each dome
        d2 = ((x - cx[i]) ** 2 + (y - cy[i]) ** 2) / rad[i] ** 2
        inside = d2 < 1.0
        if inside.any():
            np.maximum(out, np.where(inside, h[i] * np.clip(1.0 - d2, 0.0, None) ** p, 0.0), out=out)
    return out


def _random_centres(rng: np.random.Generator, n: int, r_max: float) -> tuple[np.ndarray, np.ndarray]:
    rr = r_max * np.sqrt(rng.random(n))
    aa = rng.uniform(0, 2 * np.pi, n)
    return rr * np.cos(aa), rr * np.sin(aa)


def _pathology(
    category: str, severity: float, x: np.ndarray, y: np.ndarray, lay: dict[str, np.ndarray], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Apply the category's effect on the layer maps (in place) and return lesion maps (um / bool)."""
    zeros = np.zeros_like(x)
    les = {k: zeros.copy() for k in ("drusen", "ped", "srf", "irf_inl", "irf_onl")}
    les["ez"] = np.zeros(x.shape, bool)
    les["hrf_n"] = 0
    r = np.hypot(x, y)
    th = np.arctan2(y, x)
    s = float(severity)
    if s <= 0:
        return les
    if category == "glaucoma":
        inferior = np.clip(-np.sin(th), 0, None)
        lay["rnfl"] *= np.clip(1.0 - s * 0.35 * (0.6 + 0.4 * inferior), 0.15, 1.0)
        f = np.clip(1.0 - s * 0.22 * (0.7 + 0.3 * inferior * (np.cos(th) < 0.3)), 0.3, 1.0)
        lay["gcl"] *= f
        lay["ipl"] *= f
    elif category == "alzheimers":
        for k in ("rnfl", "gcl", "ipl"):
            lay[k] *= max(0.5, 1.0 - 0.07 * s)
    elif category == "diabetes":
        for k in ("gcl", "ipl"):
            lay[k] *= max(0.5, 1.0 - 0.03 * s)
    elif category == "diabetic_retinopathy":
        swell = 1.0 + 0.22 * s * np.exp(-((r / 1.5) ** 2))
        lay["inl"] *= swell
        lay["onl"] *= swell
        n_cyst = int(round(rng.uniform(3, 12) * s))
        _cysts(rng, n_cyst, x, y, les, s)
        if rng.random() < 0.25 * min(s, 1.0):
            _srf(rng, x, y, les, s)
        les["hrf_n"] = int(round(rng.uniform(5, 30) * s))
        _ez_patches(rng, int(round(rng.uniform(0, 3) * s)), x, y, les)
    elif category == "amd":
        n_dr = int(rng.integers(round(8 * s), round(25 * s) + 1))
        cx, cy = _random_centres(rng, n_dr, 2.3)
        diam_um = np.clip(np.exp(rng.normal(np.log(160.0), 0.5, n_dr)), 63.0, 600.0)
        hgt = np.clip(0.35 * diam_um * rng.uniform(0.6, 1.2, n_dr), 15.0, 90.0)
        les["drusen"] = _domes(x, y, cx, cy, diam_um / 2000.0, hgt, 0.8)
        if rng.random() < 0.4 * min(s, 1.0):
            px, py = _random_centres(rng, 1, 0.8)
            prad = rng.uniform(0.35, 0.9, 1)
            ph = np.clip(rng.uniform(100.0, 280.0, 1) * s, 60.0, 400.0)
            les["ped"] = _domes(x, y, px, py, prad, ph, 0.6)
        if rng.random() < 0.3 * min(s, 1.0):
            _srf(rng, x, y, les, s)
        if rng.random() < 0.15 * min(s, 1.0):
            _cysts(rng, int(rng.integers(1, 5)), x, y, les, s)
        les["ez"] |= (les["drusen"] > 50.0) | (les["ped"] > 40.0)
        _ez_patches(rng, int(round(rng.uniform(0, 3) * s)), x, y, les)
        les["hrf_n"] = int(round(rng.uniform(0, 6) * s))
        lay["rpe"] *= 1.0 + 0.05 * s
    return les


def _cysts(rng, n, x, y, les, s) -> None:
    cx, cy = _random_centres(rng, n, 1.8)
    rad = rng.uniform(0.05, 0.18, n)
    h = rng.uniform(30.0, 140.0, n) * min(1.0, s)
    host = rng.random(n) < 0.4
    for sel, key in ((host, "irf_inl"), (~host, "irf_onl")):
        if sel.any():
            np.maximum(les[key], _domes(x, y, cx[sel], cy[sel], rad[sel], h[sel], 0.5), out=les[key])


def _srf(rng, x, y, les, s) -> None:
    cx, cy = _random_centres(rng, 1, 0.6)
    rad = rng.uniform(0.4, 1.0, 1)
    h = rng.uniform(40.0, 160.0, 1) * s
    np.maximum(les["srf"], _domes(x, y, cx, cy, rad, h, 1.2), out=les["srf"])


def _ez_patches(rng, n, x, y, les) -> None:
    if n <= 0:
        return
    cx, cy = _random_centres(rng, n, 1.5)
    rad = rng.uniform(0.1, 0.4, n)
    les["ez"] |= _domes(x, y, cx, cy, rad, np.ones(n), 1.0) > 0


def _atrophy(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, lay: dict[str, np.ndarray], les: dict,
             severity: float) -> np.ndarray:
    """Geographic atrophy (complete RPE and outer retinal atrophy, Sadda 2018): one to three confluent
    patches 0.25-0.9 mm across near the fovea where the RPE is lost, the photoreceptors and outer nuclear
    layer thin, the EZ is gone and drusen have collapsed. Returns the en-face map; the caller renders the
    hypertransmission (the choroid brightens where no RPE absorbs the light)."""
    n = int(rng.integers(1, 4))
    cx, cy = _random_centres(rng, n, 1.2)
    rad = rng.uniform(0.25, 0.45, n) * min(1.5, 0.7 + 0.3 * max(severity, 0.0))
    # weight 1 inside, tapering to 0 over the outer ~15 % of each patch's radius (atrophy has sloping edges)
    w = np.clip(4.0 * _domes(x, y, cx, cy, rad, np.ones(n), 1.0), 0.0, 1.0)
    ga = w >= 0.5
    lay["rpe"] = lay["rpe"] * (1.0 - 0.85 * w)
    lay["is"] = lay["is"] * (1.0 - 0.6 * w)
    lay["os"] = lay["os"] + w * (np.minimum(lay["os"], 19.0) - lay["os"])  # EZ and ID bands still fit (>= 18.5 um)
    lay["onl"] = lay["onl"] * (1.0 - 0.4 * w)
    les["drusen"] = les["drusen"] * (1.0 - w)
    les["ez"] |= ga
    return ga


#: Linear gain of the choroid's signal under geographic atrophy (no RPE above it to absorb the light).
_HYPERTRANSMISSION = 2.5


def _vessels(
    rng: np.random.Generator, b_of_y, c_of_x, n: int, cols: int, spacing_mm: float, lateral_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise retinal vessels on the (n, cols) en-face grid: (present bool, shadow factor)."""
    curves = []
    for sgn in (1.0, -1.0):  # superior and inferior arcades from the disc (nasal) towards temporal
        t = np.linspace(0.0, 1.0, 400)
        xs = 4.5 - 8.0 * t
        ys = sgn * (0.4 + rng.uniform(2.2, 2.8) * np.sin(np.pi * t * 0.85)) + 0.1 * np.sin(5 * t + rng.uniform(0, 6))
        curves.append((xs, ys, rng.uniform(0.10, 0.13), 0.35))
    for _ in range(int(rng.integers(6, 11))):
        a = curves[int(rng.integers(0, 2))]
        k = int(rng.integers(40, 360))
        x0, y0 = a[0][k], a[1][k]
        ang = np.arctan2(-y0, -x0) + rng.normal(0, 0.35)
        end_r = rng.uniform(0.55, 0.9)
        length = max(0.2, np.hypot(x0, y0) - end_r)
        t = np.linspace(0.0, 1.0, 200)
        bend = rng.normal(0, 0.25)
        xs = x0 + length * t * np.cos(ang) - bend * np.sin(np.pi * t) * np.sin(ang)
        ys = y0 + length * t * np.sin(ang) + bend * np.sin(np.pi * t) * np.cos(ang)
        curves.append((xs, ys, rng.uniform(0.04, 0.07), 0.6))
    present = np.zeros((n, cols), bool)
    factor = np.ones((n, cols), np.float32)
    rows_b = np.arange(n)
    for xs, ys, w, fac in curves:
        bb = b_of_y(ys)
        cc = c_of_x(xs)
        for i in rows_b:
            dy = np.abs(bb - i) * spacing_mm
            ok = dy < w / 2
            if not ok.any():
                continue
            hw = np.sqrt(np.maximum(w * w / 4 - dy[ok] ** 2, 0.0)) / lateral_mm
            c0 = np.clip(np.floor(cc[ok] - hw).astype(int), 0, cols)
            c1 = np.clip(np.ceil(cc[ok] + hw).astype(int), 0, cols)
            diff = np.zeros(cols + 1, int)
            np.add.at(diff, c0, 1)
            np.add.at(diff, c1, -1)
            hit = np.cumsum(diff[:cols]) > 0
            present[i] |= hit
            factor[i] = np.where(hit, np.minimum(factor[i], fac), factor[i])
    return present, factor


def _stack(
    bm: np.ndarray, lay: dict[str, np.ndarray], les: dict, choroid_um: np.ndarray, axial_um: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Interface rows z (n, _NZ, cols), segment reflectivities (n, _NSEG, cols), sub-RPE-is-PED (n, cols)."""
    px = {k: v / axial_um for k, v in lay.items()}
    n, cols = bm.shape
    z = np.empty((n, _NZ, cols), np.float64)
    h_sub = np.maximum(les["drusen"], les["ped"]) / axial_um
    is_ped = (les["ped"] >= les["drusen"]) & (les["ped"] > 0)
    srf = les["srf"] / axial_um
    irf_inl = les["irf_inl"] / axial_um
    irf_onl = les["irf_onl"] / axial_um
    z[:, 19] = bm
    z[:, 18] = bm - np.minimum(4.6 / axial_um, h_sub)  # thin Bruch's membrane line, 4.6 um
    z[:, 17] = bm - h_sub
    z[:, 16] = z[:, 17] - px["rpe"]
    z[:, 15] = z[:, 16] - srf
    z[:, 14] = z[:, 15] - 8.5 / axial_um  # interdigitation zone, 8.5 um
    z[:, 12] = z[:, 15] - px["os"]
    z[:, 13] = z[:, 12] + 10.0 / axial_um  # EZ band, 10 um
    z[:, 10] = z[:, 12] - px["is"]
    z[:, 11] = z[:, 10] + 5.0 / axial_um  # ELM line, 5 um
    z[:, 7] = z[:, 10] - px["onl"] - irf_onl
    z[:, 8] = z[:, 7] + 0.3 * px["onl"]
    z[:, 9] = z[:, 8] + irf_onl
    z[:, 6] = z[:, 7] - px["opl"]
    z[:, 3] = z[:, 6] - px["inl"] - irf_inl
    z[:, 4] = z[:, 3] + 0.35 * px["inl"]
    z[:, 5] = z[:, 4] + irf_inl
    z[:, 2] = z[:, 3] - px["ipl"]
    z[:, 1] = z[:, 2] - px["gcl"]
    z[:, 0] = z[:, 1] - px["rnfl"]
    z[:, 20] = bm + choroid_um / axial_um
    refl = np.empty((n, _NSEG, cols), np.float32)
    refl[:] = np.asarray(_BASE_REFL, np.float32)[None, :, None]
    refl[:, 13] = np.where(les["ez"], _R_OS, _R_EZ)
    refl[:, 18] = np.where(is_ped, _R_PED, _R_DRUSEN)
    return z, refl, is_ped


#: Phantom appearances: ``standard`` (fixed layer reflectivities, the original phantom) and ``device``
#: (per-eye random reflectivities and contrast, see :class:`DeviceLook`).
APPEARANCES = ("standard", "device")


@dataclass
class DeviceLook:
    """Per-eye appearance of a real device: no segmenter can match it with constants.

    Every layer's reflectivity is scaled by its own random factor; the linear dynamic range is stretched
    by a random power of 1.1-1.7 (real Spectralis scans put the RPE some hundred times above the outer
    nuclear layer, the standard phantom about fifteen; a stronger power sinks the outer nuclear layer
    under the noise floor, which real scans keep it well above); the EZ is brighter than the RPE in about a third of eyes
    (as many real devices show) and the ELM is faint; the choroid is darker or brighter at random; and a
    point-spread function (axial and lateral Gaussian, defocus included) correlates the speckle.
    """

    factors: np.ndarray  #: (_NSEG,) multiplicative factor per rendered segment
    gamma: float  #: power applied to reflectivities relative to the RPE
    choroid: float  #: choroid reflectivity scale
    psf_px: tuple[float, float]  #: Gaussian sigma (axial, lateral) in pixels

    @classmethod
    def draw(cls, rng: np.random.Generator) -> DeviceLook:
        tissues = sorted(set(_SEG_TISSUE))
        by_tissue = dict(zip(tissues, np.exp(rng.normal(0.0, 0.25, len(tissues)))))
        by_tissue["fluid"] = 1.0
        by_tissue["elm"] *= rng.uniform(0.3, 0.8)
        if rng.random() < 0.35:  # EZ brighter than the RPE
            by_tissue["ez"] = (_R_RPE / _R_EZ) * rng.uniform(1.05, 1.35) * by_tissue["rpe"]
        # the orders every device shows stay: the plexiform layers under the EZ / RPE band, the outer
        # nuclear layer the darkest retinal layer, the ELM under the EZ
        base = dict(zip(_SEG_TISSUE, _BASE_REFL))
        r = {t: base[t] * by_tissue[t] for t in tissues if t not in ("vitreous", "choroid")}
        cap = 0.4 * min(r["ez"], r["rpe"])
        for t in ("opl", "ipl", "elm", "is", "os", "gcl", "inl"):
            if r[t] > cap:
                by_tissue[t] *= cap / r[t]
        r = {t: base[t] * by_tissue[t] for t in tissues if t not in ("vitreous", "choroid")}
        floor_onl = min(r["inl"], r["gcl"], r["is"])
        if r["onl"] > 0.8 * floor_onl:
            by_tissue["onl"] *= 0.8 * floor_onl / r["onl"]
        f = np.array([by_tissue[t] for t in _SEG_TISSUE], np.float64)
        return cls(f.astype(np.float32), float(rng.uniform(1.1, 1.7)), float(rng.uniform(0.5, 1.5)),
                   (float(rng.uniform(0.5, 1.2)), float(rng.uniform(0.5, 2.0))))

    def apply(self, refl: np.ndarray) -> np.ndarray:
        out = refl.copy()
        pos = out > 0  # vitreous (0) and the textured choroid marker (< 0) are left alone
        scaled = out * self.factors[None, :, None]
        out[pos] = (_R_RPE * (scaled[pos] / _R_RPE) ** self.gamma).astype(np.float32)
        return out

    def blur(self, vol: np.ndarray) -> np.ndarray:
        f = ndimage.gaussian_filter(vol.astype(np.float32), (0.0, *self.psf_px), mode="nearest")
        return np.clip(np.rint(f), 0, 255).astype(np.uint8)


def _render_all(
    z: np.ndarray,
    refl: np.ndarray,
    is_ped: np.ndarray,
    gain: np.ndarray,
    shadow_start: np.ndarray,
    shadow_factor: np.ndarray,
    hrf_arr: np.ndarray,
    rows: int,
    axial_um: float,
    noise: float,
    rng: np.random.Generator,
    look: DeviceLook | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
    n, _, cols = z.shape
    tex = np.column_stack(
        [
            rng.uniform(0.08, 0.16, n),
            rng.uniform(0.12, 0.22, n),
            rng.uniform(0.05, 0.10, n),
            rng.uniform(0, 2 * np.pi, n),
            rng.uniform(0, 2 * np.pi, n),
            rng.uniform(0, 2 * np.pi, n),
        ]
    ).astype(np.float32)
    transform = int(rng.random() < 0.5)
    if noise > 0:
        logn = rng.standard_exponential((n, rows, cols), dtype=np.float32)
        np.maximum(logn, np.float32(1e-12), out=logn)
        np.log(logn, out=logn)
    else:
        logn = np.zeros((n, rows, cols), np.float32)
    out = np.empty((n, rows, cols), np.uint8)
    masks = {k: np.zeros((n, rows, cols), bool) for k in ("irf", "srf", "ped", "drusen")}
    if look is not None:
        refl = look.apply(refl)
    _render(
        z.astype(np.float32), refl, is_ped, gain.astype(np.float32), shadow_start.astype(np.float32),
        shadow_factor.astype(np.float32), tex, 1.0 if look is None else look.choroid,
        1.0 if look is None else look.gamma, hrf_arr.astype(np.float32),
        logn, 0.5 * noise, 0.003 * (0.6 + 0.4 * noise), axial_um, transform, out,
        masks["irf"], masks["srf"], masks["ped"], masks["drusen"],
    )
    if look is not None:
        out = look.blur(out)
    return out, masks, transform


def _place(z: np.ndarray, rows: int, rng: np.random.Generator) -> np.ndarray:
    """Shift all interfaces so the retina sits inside the image with the choroid below it."""
    top, bottom = float(z[:, 0].min()), float(z[:, 20].max())
    lo = 0.07 * rows - top
    hi = 0.96 * rows - bottom
    shift = rng.uniform(lo, lo + 0.45 * (hi - lo)) if hi > lo else lo
    return z + shift


# ----------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------


def synth_oct_volume(
    category: str,
    laterality: str,
    rng: np.random.Generator,
    *,
    severity: float = 1.0,
    age_years: float = 60.0,
    sex: str = "F",
    noise: float = 1.0,
    geometry: OctGeometry | None = None,
    appearance: str = "standard",
    atrophy: bool = False,
) -> OctPhantom:
    """Synthesise a macular cube of ``category`` with its truth (deterministic given ``rng``'s state).

    Parameters
    ----------
    category : one of ``grok.ids.CATEGORIES``
    laterality : ``"OD"`` or ``"OS"``
    severity : pathology scale, 0 (none) to 3; 1 is typical disease
    noise : speckle / noise-floor scale: 0.5 easy, 1 typical, 2 hard
    geometry : cube sampling (default 49 x 496 x 512, 3.87 / 11.7 / 120 um)
    appearance : ``"standard"`` or ``"device"`` (per-eye random layer reflectivities, contrast and PSF:
        :class:`DeviceLook`); the anatomy and the truth are the same for the same ``rng`` state
    atrophy : ``category="amd"`` only: add geographic atrophy (:func:`_atrophy`), drawn from a generator
        seeded by ``rng``'s state without advancing it, so every other draw, and every cube drawn without
        atrophy, is unchanged
    """
    _check_args(category, laterality, severity, noise)
    _check_appearance(appearance)
    if atrophy and category != "amd":
        raise ValueError(f"atrophy=True needs category='amd' (geographic atrophy is late dry AMD), got {category!r}")
    if sex not in ("F", "M"):
        raise ValueError(f"sex must be 'F' or 'M', got {sex!r}")
    geom = geometry or OctGeometry()
    n, rows, cols = geom.n_bscans, geom.rows, geom.cols
    lat_mm, sp_mm = geom.lateral_um * 1e-3, geom.bscan_spacing_um * 1e-3
    side = 1.0 if laterality == "OD" else -1.0
    # fovea near the centre (fixation is never perfect)
    fb = (n - 1) / 2 + rng.uniform(-0.3, 0.3) / sp_mm * (n > 1)
    fb = float(np.clip(fb, 0, n - 1))
    fc = float((cols - 1) / 2 + rng.uniform(-0.3, 0.3) / lat_mm)
    bi = np.arange(n, dtype=np.float64)[:, None]
    ci = np.arange(cols, dtype=np.float64)[None, :]
    y = np.broadcast_to((fb - bi) * sp_mm, (n, cols)).copy()
    x_img = np.broadcast_to((ci - fc) * lat_mm, (n, cols)).copy()
    x = x_img * side
    lay = _macular_layers(x, y, rng, age_years, sex)
    ga_rng = np.random.default_rng(int(rng.bit_generator.state["state"]["state"])) if atrophy else None
    les = _pathology(category, severity, x, y, lay, rng)
    ga = _atrophy(ga_rng, x, y, lay, les, severity) if ga_rng is not None else None
    choroid = np.clip(rng.normal(290.0, 50.0) - 1.6 * (age_years - 60.0), 120.0, 450.0)
    if category == "amd":
        choroid *= 1.0 - 0.15 * min(severity, 2.0)
    elif category == "hypertension":
        choroid *= 1.0 - 0.1 * min(severity, 2.0)
    a, b = rng.uniform(0.4, 1.0, 2)
    choroid_um = choroid * (1.0 - 0.12 * np.hypot(x, y) / 3.0) * (1 + 0.05 * np.sin(a * x) * np.cos(b * y))
    # Bruch's membrane: bowl-shaped (edges higher), tilted, gently undulating; rows relative to 0
    curv = rng.uniform(1.5, 6.0)
    tilt_x, tilt_y = rng.uniform(-6.0, 6.0), rng.uniform(-4.0, 4.0)
    xc = (ci - (cols - 1) / 2) * lat_mm
    yc = ((n - 1) / 2 - bi) * sp_mm
    bm = -curv * (xc**2 + yc**2) + tilt_x * xc + tilt_y * yc + 1.5 * np.sin(rng.uniform(0.8, 2) * xc + rng.uniform(0, 6))
    bm = np.broadcast_to(bm, (n, cols)).astype(np.float64)
    z, refl, is_ped = _stack(bm, lay, les, choroid_um, geom.axial_um)
    z = _place(z, rows, rng)

    # vessels and their shadows
    present, factor = _vessels(
        rng, lambda yy: fb - yy / sp_mm, lambda xx: fc + xx * side / lat_mm, n, cols, sp_mm, lat_mm
    )
    rnfl_px = z[:, 1] - z[:, 0]
    shadow_start = np.where(present, z[:, 0] + 0.5 * rnfl_px + 3.0, np.inf)
    if ga is not None:  # hypertransmission under the atrophy, from Bruch's membrane down (vessel shadows kept)
        hyper = ga & ~present
        shadow_start = np.where(hyper, z[:, 19] + 3.0, shadow_start)
        factor = np.where(hyper, _HYPERTRANSMISSION, factor)
    # illumination: lateral vignetting, B-scan gain, occasional dim B-scans
    vign = 1.0 - 0.35 * (xc / max(np.abs(xc).max(), 1e-9)) ** 2
    bgain = np.exp(rng.normal(0.0, 0.12 * noise, (n, 1)))
    bgain = np.where(rng.random((n, 1)) < 0.06 * noise, 0.45 * bgain, bgain)
    gain = vign * bgain

    # hyperreflective foci inside INL / ONL (not inside cysts' centres)
    hrf_list: list[tuple[int, float, float]] = []
    hrf_rows = []
    for _ in range(int(les["hrf_n"])):
        for _try in range(20):
            i = int(rng.integers(0, n))
            c = int(rng.integers(0, cols))
            if math.hypot(x[i, c], y[i, c]) > 2.5 or not (3 <= c < cols - 3):
                continue
            if rng.random() < 0.5:
                top, bot = z[i, 3, c], z[i, 4, c]  # INL above a cyst
            else:
                top, bot = z[i, 9, c], z[i, 10, c]  # ONL below a cyst
            if bot - top < 6:
                continue
            row = float(top + rng.uniform(0.3, 0.7) * (bot - top))
            hrf_list.append((i, row, float(c)))
            hrf_rows.append((i, row, float(c), 1.6, 2.2))
            break
    hrf_list.sort()
    hrf_rows.sort()
    hrf_arr = np.asarray(hrf_rows, np.float64).reshape(-1, 5)

    look = DeviceLook.draw(rng) if appearance == "device" else None
    volume, masks, transform = _render_all(
        z, refl, is_ped, gain, shadow_start, factor, hrf_arr, rows, geom.axial_um, noise, rng, look
    )
    boundaries = np.ascontiguousarray(z[:, list(_Z_OF_BOUNDARY), :].astype(np.float32))
    csi = z[:, _Z_CSI, :].astype(np.float32)


    spacing = CubeSpacing(geom.axial_um, geom.lateral_um, geom.bscan_spacing_um)
    bio, _ = macular_biomarkers(
        boundaries, spacing, (fb, fc), laterality, choroid_sclera=csi, masks=masks,
        hrf_count=len(hrf_list), ez_disrupted=les["ez"],
    )
    ga_truth = atrophy_truth(ga, geom) if ga is not None else {"regions": 0, "area_mm2": 0.0}
    bio["geographic_atrophy_count"] = float(ga_truth["regions"])
    bio = {k: bio[k] for k in (*OCT_GROK_BIOMARKERS, *OCT_EXTRA_BIOMARKERS)}
    return OctPhantom(
        volume=volume,
        boundaries=boundaries,
        choroid_sclera=csi,
        masks=masks,
        hrf=hrf_list,
        lesions=lesion_boxes(masks, hrf_list),
        fovea=(fb, fc),
        geometry=geom,
        laterality=laterality,
        biomarkers=bio,
        category=category,
        ez_disrupted=les["ez"],
        params={"severity": severity, "age_years": age_years, "sex": sex, "noise": noise,
                "transform": ("log10", "root4")[transform], "appearance": appearance, "atrophy": bool(atrophy)},
        atrophy=ga,
    )


def _tsnit_rnfl(phi_deg: np.ndarray) -> np.ndarray:
    """Normal peripapillary RNFL (um) by angle from temporal, through superior (90), nasal, inferior."""
    def bump(center: float, width: float) -> np.ndarray:
        d = (phi_deg - center + 180.0) % 360.0 - 180.0
        return np.exp(-((d / width) ** 2))

    return 64.0 + 88.0 * bump(95.0, 36.0) + 93.0 * bump(265.0, 36.0) + 12.0 * bump(180.0, 40.0)


def synth_circle_scan(
    category: str,
    laterality: str,
    rng: np.random.Generator,
    *,
    severity: float = 1.0,
    noise: float = 1.0,
    rows: int = 496,
    cols: int = 768,
    appearance: str = "standard",
) -> CirclePhantom:
    """Synthesise a peripapillary circle scan (3.46 mm circle, TSNIT order from temporal).

    Glaucoma thins the RNFL (inferior and superior first), Alzheimer's slightly; other categories show
    normal variation. Vessel shadows cluster in the superior and inferior sectors as around a real disc.
    """
    _check_args(category, laterality, severity, noise)
    _check_appearance(appearance)
    if rows < 256 or cols < 64:
        raise ValueError(f"synth_circle_scan needs rows >= 256 and cols >= 64, got rows={rows}, cols={cols}")
    axial_um = 3.87
    lateral_um = math.pi * CIRCLE_DIAMETER_MM * 1000.0 / cols
    phi = np.arange(cols) * 360.0 / cols
    rnfl = _tsnit_rnfl(phi) * rng.normal(1.0, 0.06)
    if category == "glaucoma" and severity > 0:
        si = np.clip(np.sin(np.radians(phi)) ** 2, 0, 1)  # superior / inferior emphasis
        inf = np.clip(-np.sin(np.radians(phi)), 0, 1)
        rnfl *= np.clip(1.0 - severity * (0.25 + 0.2 * si + 0.1 * inf), 0.2, 1.0)
    elif category == "alzheimers" and severity > 0:
        rnfl *= max(0.5, 1.0 - 0.07 * severity)
    one = np.ones((1, cols))
    lay = {
        "rnfl": rnfl[None, :],
        "gcl": 18.0 * one * rng.normal(1, 0.05),
        "ipl": 28.0 * one * rng.normal(1, 0.05),
        "inl": 28.0 * one * rng.normal(1, 0.05),
        "opl": 22.0 * one,
        "onl": 55.0 * one * rng.normal(1, 0.05),
        "is": 23.0 * one,
        "os": 32.0 * one,
        "rpe": 19.0 * one,
    }
    zeros = np.zeros((1, cols))
    les = {"drusen": zeros, "ped": zeros, "srf": zeros, "irf_inl": zeros, "irf_onl": zeros,
           "ez": np.zeros((1, cols), bool)}
    xs = np.arange(cols) / cols
    bm = (-25.0 * np.cos(2 * np.pi * (xs + rng.uniform(0, 1))) * rng.uniform(0.2, 1.0)
          + rng.uniform(-15, 15) * (xs - 0.5))[None, :]
    choroid_um = np.full((1, cols), rng.uniform(120.0, 220.0))
    z, refl, is_ped = _stack(bm, lay, les, choroid_um, axial_um)
    z = _place(z, rows, rng)
    # vessels: several per superior / inferior sector, a few elsewhere
    present = np.zeros((1, cols), bool)
    factor = np.ones((1, cols), np.float32)
    centres = np.concatenate([rng.normal(90, 25, 4), rng.normal(270, 25, 4), rng.uniform(0, 360, 2)])
    for ctr in centres:
        w = rng.uniform(60.0, 140.0) / lateral_um
        d = np.abs((phi - ctr + 180.0) % 360.0 - 180.0) * cols / 360.0
        hit = d < w / 2
        present[0] |= hit
        factor[0] = np.where(hit, 0.4, factor[0])
    shadow_start = np.where(present, z[:, 0] + 0.5 * (z[:, 1] - z[:, 0]) + 3.0, np.inf)
    gain = (1.0 - 0.1 * np.cos(2 * np.pi * xs))[None, :] * np.exp(rng.normal(0, 0.1))
    look = DeviceLook.draw(rng) if appearance == "device" else None
    vol, _, _ = _render_all(
        z, refl, is_ped, gain, shadow_start, factor, np.zeros((0, 5)), rows, axial_um, noise, rng, look
    )
    boundaries = z[0, list(_Z_OF_BOUNDARY), :].astype(np.float32)

    bio, _ = circle_biomarkers(boundaries, axial_um)
    return CirclePhantom(vol[0], boundaries, laterality, axial_um, lateral_um,
                         {k: bio[k] for k in OCT_PERIPAPILLARY_BIOMARKERS}, category)


def main(argv: list[str] | None = None) -> int:
    """Write a phantom's foveal B-scan (with true boundaries) as PNG and print its truth as JSON."""
    import json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--category", default="normal", choices=CATEGORIES)
    ap.add_argument("--laterality", default="OD", choices=LATERALITIES)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--severity", type=float, default=1.0)
    ap.add_argument("--noise", type=float, default=1.0)
    ap.add_argument("--appearance", default="standard", choices=APPEARANCES)
    ap.add_argument("--png", default=None, help="write the foveal B-scan with the true boundaries here")
    args = ap.parse_args(argv)
    ph = synth_oct_volume(args.category, args.laterality, np.random.default_rng(args.seed),
                          severity=args.severity, noise=args.noise, appearance=args.appearance)
    if args.png:
        i = int(round(ph.fovea[0]))
        bscan_png(ph.volume[i], ph.boundaries[i], args.png, masks={k: m[i] for k, m in ph.masks.items()},
                  title=f"{args.category} {args.laterality} B-scan {i} (truth)")
    print(json.dumps(ph.to_truth(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
