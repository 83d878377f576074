"""Measure a macular cube or a peripapillary circle scan: segmentation -> lesions -> biomarkers.

The pipeline calls :func:`measure_volume` (macular cubes, single B-scans), :func:`measure_circle`
(circle scans) and :func:`select_bscans` (which B-scans to show a model or a curator). Nothing here
raises on bad pixels: unusable input gives NaN biomarkers and a ``quality`` entry that says why. Bad
*arguments* (a 4-D array, an unknown laterality string) raise ``ValueError`` naming the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from grok.ids import BOUNDARIES, OCT_EXTRA_BIOMARKERS, OCT_GROK_BIOMARKERS, OCT_PERIPAPILLARY_BIOMARKERS
from grok.oct.atrophy import MIN_WIDTH_UM as ATROPHY_MIN_WIDTH_UM
from grok.oct.atrophy import atrophy_regions, bscan_atrophy
from grok.oct.circle import circle_biomarkers
from grok.oct.grid import CubeSpacing
from grok.oct.lesions import detect_bscan_lesions, lesion_boxes
from grok.oct.measures import macular_biomarkers
from grok.oct.segment import segment_bscan

MACULAR_IDS: tuple[str, ...] = (*OCT_GROK_BIOMARKERS, *OCT_EXTRA_BIOMARKERS)
#: Spacing assumed for *segmentation only* when the header has none (Spectralis-like); biomarkers in
#: physical units are then NaN.
DEFAULT_SPACING_UM = (3.87, 11.7, 120.0)
_B = {n: i for i, n in enumerate(BOUNDARIES)}
#: Mean peripapillary RNFL (um) a circle scan may report; outside it the segmentation is taken to have
#: failed (end-stage glaucoma floors near 40-50 um; no healthy eye reaches 250 um).
PLAUSIBLE_RNFL_UM = (30.0, 250.0)
#: Total retinal thickness (ILM-BM, um) an ETDRS subfield mean may report. Below it the ILM and BM sit
#: on the same edge somewhere in the subfield (a segmentation failure: even end-stage atrophy or a full-
#: thickness macular hole averages well over 80 um across a 1-mm subfield); above it is more than the
#: thickest macular oedema the data contract admits. Outside it, every boundary-derived biomarker of the
#: cube is NaN with the reason, so one failed cube never reaches a record, or stops a build at its contract.
PLAUSIBLE_RETINA_UM = (80.0, 1200.0)
#: Units-free biomarkers that stay valid without a pixel spacing.
_UNITLESS = ("hrf_count",)


@dataclass
class OctMeasurement:
    """Everything measured on one macular cube (or a single line B-scan)."""

    biomarkers: dict[str, float]  #: every canonical macular id; NaN where not measurable
    quality: dict  #: {"usable": bool, "flags": {flag: reason}, "reasons": {id: why NaN}, "fovea": {...}, ...}
    lesions: list[dict]  #: {"type", "bscan", "box_xyxy_px"} boxes in B-scan pixel coordinates
    segmentation: np.ndarray  #: (n_bscans, 9, cols) float32 rows, NaN where not found
    choroid_sclera: np.ndarray  #: (n_bscans, cols) float32
    fovea: tuple[float, float] | None  #: (B-scan index, column), None if not found
    laterality: str | None
    spacing_um: dict  #: {"axial", "lateral", "bscan"} as used (NaN where unknown)
    masks: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  #: detected lesion masks
    hrf: list[tuple[int, float, float]] = field(default_factory=list, repr=False)
    ez_disrupted: np.ndarray | None = field(default=None, repr=False)  #: (n_bscans, cols) bool
    #: (n_bscans, cols) bool en-face map of complete RPE and outer retinal atrophy (grok.oct.atrophy)
    atrophy: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        """JSON-able summary (no pixel arrays); NaN stays NaN (``print_json`` turns it into null)."""
        return {
            "laterality": self.laterality,
            "scan_pattern": "volume" if self.segmentation.shape[0] > 1 else "bscan",
            "biomarkers": dict(self.biomarkers),
            "quality": self.quality,
            "lesions": self.lesions,
            "fovea": None if self.fovea is None else {"bscan": self.fovea[0], "column": self.fovea[1]},
            "spacing_um": dict(self.spacing_um),
        }


@dataclass
class CircleMeasurement:
    """Peripapillary RNFL of a circle scan."""

    biomarkers: dict[str, float]  #: rnfl_peripapillary_{mean,superior,nasal,inferior,temporal}_um
    quality: dict
    segmentation: np.ndarray  #: (9, cols) float32
    laterality: str | None
    spacing_um: dict

    def to_dict(self) -> dict:
        return {
            "laterality": self.laterality,
            "scan_pattern": "circle",
            "biomarkers": dict(self.biomarkers),
            "quality": self.quality,
            "lesions": [],
            "spacing_um": dict(self.spacing_um),
        }


def _spacing_um(spacing_mm, n_bscans: int) -> tuple[tuple[float, float, float], list[str]]:
    """Spacing in um (defaults filled in for segmentation) and the names of the missing ones."""
    if spacing_mm is None:
        spacing_mm = (math.nan, math.nan, math.nan)
    vals = list(spacing_mm) + [math.nan] * (3 - len(spacing_mm))
    out, missing = [], []
    for name, v, d in zip(("axial", "lateral", "bscan"), vals[:3], DEFAULT_SPACING_UM):
        try:
            f = float(v) * 1000.0
        except (TypeError, ValueError):
            f = math.nan
        if not (math.isfinite(f) and f > 0):
            if name != "bscan" or n_bscans > 1:
                missing.append(name)
            f = d
        out.append(f)
    return (out[0], out[1], out[2]), missing


def _check_laterality(laterality: str | None) -> str | None:
    if laterality is None:
        return None
    lat = str(laterality).upper()
    if lat in ("R", "RIGHT"):
        lat = "OD"
    elif lat in ("L", "LEFT"):
        lat = "OS"
    if lat not in ("OD", "OS"):
        raise ValueError(f"laterality must be 'OD', 'OS' or None, got {laterality!r}")
    return lat


def find_fovea(
    boundaries: np.ndarray, spacing: CubeSpacing
) -> tuple[tuple[float, float] | None, dict]:
    """Foveal centre = minimum of the inner-retina thickness (ILM -> IPL_INL), sub-sample refined.

    The inner layers are absent at the foveola whatever the pathology does to the outer retina (DME,
    SRF), so their thickness minimum is a steadier landmark than the total-thickness minimum. Returns
    ``((bscan, column) or None, quality)``; quality ``{"status": "ok"|"uncertain"|"not_found", "reason"}``.
    """
    n, _, cols = boundaries.shape
    inner = (boundaries[:, _B["IPL_INL"]] - boundaries[:, _B["ILM"]]).astype(np.float64) * spacing.axial_um
    ok = np.isfinite(inner)
    if ok.mean() < 0.3:
        return None, {"status": "not_found", "reason": "too little of the inner retina was segmented"}
    fill = np.where(ok, inner, np.nanmedian(inner))
    # median first: one mis-segmented stretch (a PED wall, a vessel) must not look like a pit
    fill = ndimage.median_filter(fill, size=(3 if n >= 3 and spacing.bscan_spacing_um <= 250 else 1,
                                         max(3, int(250.0 / spacing.lateral_um)) | 1),
                                 mode="nearest")
    sb = max(0.0, 100.0 / spacing.bscan_spacing_um) if n > 1 else 0.0
    sc = max(1.0, 100.0 / spacing.lateral_um)
    sm = ndimage.gaussian_filter(fill, (sb, sc), mode="nearest")
    # search the central part of the scan (fixation is near the centre)
    bi = np.arange(n)[:, None]
    ci = np.arange(cols)[None, :]
    db = np.abs(bi - (n - 1) / 2) * spacing.bscan_spacing_um * 1e-3
    dc = np.abs(ci - (cols - 1) / 2) * spacing.lateral_um * 1e-3
    central = (db <= max(1.5, 0.2 * n * spacing.bscan_spacing_um * 1e-3)) & (dc <= max(1.5, 0.2 * cols * spacing.lateral_um * 1e-3))
    masked = np.where(central, sm, np.inf)
    i, c = np.unravel_index(int(np.argmin(masked)), masked.shape)

    def vertex(a: float, b: float, d: float) -> float:
        den = a - 2 * b + d
        return float(np.clip(0.5 * (a - d) / den, -0.5, 0.5)) if den > 0 else 0.0

    fi = float(i) + (vertex(sm[i - 1, c], sm[i, c], sm[i + 1, c]) if 0 < i < n - 1 else 0.0)
    fc = float(c) + (vertex(sm[i, c - 1], sm[i, c], sm[i, c + 1]) if 0 < c < cols - 1 else 0.0)
    # pit check: inner retina at the centre vs. on a 0.75-1.25 mm ring
    r = np.hypot((bi - fi) * spacing.bscan_spacing_um * 1e-3 if n > 1 else 0 * bi, (ci - fc) * spacing.lateral_um * 1e-3)
    ring = (r >= 0.75) & (r <= 1.25) & ok
    centre_val = float(sm[i, c])
    if not ring.any():
        return (fi, fc), {"status": "uncertain", "reason": "the scan does not reach 1 mm around the fovea"}
    rim = float(np.median(inner[ring]))
    if rim <= 0 or centre_val > 0.45 * rim:
        return (fi, fc), {"status": "uncertain",
                          "reason": f"no clear foveal pit (inner retina {centre_val:.0f} um at the centre vs {rim:.0f} um at 1 mm)"}
    return (fi, fc), {"status": "ok", "inner_retina_centre_um": centre_val, "inner_retina_rim_um": rim}


def ped_periphery_to_ped(masks: dict[str, np.ndarray]) -> None:
    """In place: sub-RPE elevation classed as drusen that touches a PED en face (neighbouring columns of the
    same B-scan or overlapping columns of the next one) is that PED's sloping rim, where the RPE rises less
    than the PED's height test asks on each B-scan: it moves to the PED mask."""
    ped_cols = masks["ped"].any(axis=1)  # (n_bscans, cols)
    dru_cols = masks["drusen"].any(axis=1)
    if not (ped_cols.any() and dru_cols.any()):
        return
    lab, _ = ndimage.label(ped_cols | dru_cols)
    with_ped = np.unique(lab[ped_cols])
    rim = np.isin(lab, with_ped[with_ped > 0]) & dru_cols
    move = masks["drusen"] & rim[:, None, :]
    masks["ped"] |= move
    masks["drusen"] &= ~move


#: Axial offset (um) of a B-scan's Bruch's membrane from the median of its neighbours above which the
#: B-scan is taken to have moved (eye motion between B-scans; the retina's own curvature between
#: neighbours is far smaller at any usual B-scan spacing).
MOTION_UM = 40.0


#: A boundary point further than this (um) from the rows of both neighbouring B-scans' same column, while
#: those agree with each other, is taken as a segmentation slip and set to the three-B-scan median.
REPAIR_UM = 12.0
#: Largest B-scan spacing (um) at which neighbouring B-scans are close enough to vouch for each other.
REPAIR_MAX_SPACING_UM = 150.0


def _repair_across_bscans(seg: np.ndarray, axial_um: float, bscan_um: float) -> int:
    """3-D consistency for dense cubes: in place, a boundary row that leaves both neighbours' rows (same
    column) by more than :data:`REPAIR_UM` while the neighbours agree within it becomes the median of the
    three. Returns how many points were changed (0 when B-scans are further apart than
    :data:`REPAIR_MAX_SPACING_UM`, where real anatomy changes between them)."""
    n = seg.shape[0]
    if n < 3 or not (math.isfinite(axial_um) and math.isfinite(bscan_um)) or bscan_um > REPAIR_MAX_SPACING_UM:
        return 0
    tol = REPAIR_UM / axial_um
    prev, cur, nxt = seg[:-2], seg[1:-1], seg[2:]
    with np.errstate(invalid="ignore"):
        slip = (np.abs(cur - prev) > tol) & (np.abs(cur - nxt) > tol) & (np.abs(prev - nxt) <= tol)
    if not slip.any():
        return 0
    med = np.median(np.stack([prev, cur, nxt]), axis=0)
    cur[slip] = med[slip]
    # order stays enforced
    for k in range(1, seg.shape[1]):
        seg[:, k] = np.where(np.isnan(seg[:, k]), np.nan, np.fmax(seg[:, k], seg[:, k - 1]))
    return int(slip.sum())


def bscans_out_of_line(bm: np.ndarray, axial_um: float) -> list[int]:
    """Indices of B-scans whose median Bruch's membrane row is more than :data:`MOTION_UM` off the median
    of the (three or four) B-scans around it (bm : (n_bscans, cols) rows, NaN where not found; the first
    and last B-scans, which have only two, are not judged). The median
    of the neighbours keeps one moved B-scan from implicating the ones beside it."""
    n = bm.shape[0]
    if n < 3 or not math.isfinite(axial_um):
        return []
    with np.errstate(all="ignore"):
        med = np.array([np.nanmedian(r) if np.isfinite(r).any() else np.nan for r in bm])
    out = []
    for i in range(n):
        around = [med[j] for j in range(max(0, i - 2), min(n, i + 3)) if j != i and np.isfinite(med[j])]
        if np.isfinite(med[i]) and len(around) >= 3 and abs(med[i] - float(np.median(around))) * axial_um > MOTION_UM:
            out.append(i)
    return out


def measure_volume(
    volume: np.ndarray,
    spacing_mm: tuple[float, float, float] | None,
    laterality: str | None,
    *,
    keep_masks: bool = True,
    method: str = "auto",
) -> OctMeasurement:
    """Segment and measure a macular cube.

    volume : (n_bscans, rows, cols) or (rows, cols) ndarray, B-scan 0 superior (see grok.oct.grid)
    spacing_mm : (axial, lateral, between B-scans) in mm, NaN/None where unknown
    laterality : "OD" | "OS" | None (None: nasal/temporal subfields are NaN)
    method : segmentation method (``grok.oct.segment.segment_bscan``: "auto", "classic", "layered")

    Returns an :class:`OctMeasurement`. Missing spacing -> the segmentation still runs (with Spectralis
    defaults) but every biomarker in physical units is NaN with the reason in ``quality["reasons"]``.
    """
    vol = np.asarray(volume)
    if vol.ndim == 2:
        vol = vol[None]
    if vol.ndim != 3:
        raise ValueError(f"volume must be (n_bscans, rows, cols) or (rows, cols), got shape {vol.shape}")
    if not (np.issubdtype(vol.dtype, np.number) or vol.dtype == bool):
        raise ValueError(f"volume must hold numbers, got dtype {vol.dtype}")
    lat = _check_laterality(laterality)
    n, rows, cols = vol.shape
    (ax, la, sp), missing = _spacing_um(spacing_mm, n)
    spacing = CubeSpacing(ax, la, sp)
    flags: dict[str, str] = {}
    if missing:
        flags["missing_spacing"] = (f"no {' / '.join(missing)} spacing in the header; biomarkers in physical "
                                    "units are NaN (pass --spacing-um or fix the export's sidecar)")
    seg = np.full((n, len(BOUNDARIES), cols), np.nan, np.float32)
    csi = np.full((n, cols), np.nan, np.float32)
    bscan_flags: dict[int, dict[str, str]] = {}
    images: list[np.ndarray | None] = []
    fines: list[np.ndarray | None] = []
    for i in range(n):
        res = segment_bscan(vol[i], ax, la, keep_image=True, method=method)
        seg[i], csi[i] = res.boundaries, res.choroid_sclera
        if res.flags:
            bscan_flags[i] = res.flags
        images.append(res.image)
        fines.append(res.fine)
    repaired = _repair_across_bscans(seg, ax, sp)
    if repaired:
        flags["repaired_across_bscans"] = (f"{repaired} boundary points that left both neighbouring B-scans' "
                                           f"rows by more than {REPAIR_UM:.0f} um were set to their median")
    valid_frac = float(np.isfinite(seg).all(axis=1).mean())
    moved = bscans_out_of_line(seg[:, _B["BM"]], ax)
    if moved:
        flags["motion_between_bscans"] = (f"B-scans {', '.join(map(str, moved))} sit more than "
                                          f"{MOTION_UM:.0f} um off the line of their neighbours (eye motion); "
                                          "thickness maps there are unreliable")
    for i, fl in bscan_flags.items():
        for k, v in fl.items():
            flags.setdefault(k, f"B-scan {i}: {v}" + (" (and others)" if sum(k in f for f in bscan_flags.values()) > 1 else ""))

    # lesions
    thick_rpe = (seg[:, _B["BM"]] - seg[:, _B["RPE"]]).ravel()
    thick_rpe = thick_rpe[np.isfinite(thick_rpe)]
    rpe_ref = float(np.percentile(thick_rpe, 40)) if thick_rpe.size else 5.0
    masks = {k: np.zeros((n, rows, cols), bool) for k in ("irf", "srf", "ped", "drusen")}
    hrf: list[tuple[int, float, float]] = []
    ez_dis = np.zeros((n, cols), bool)
    atrophy = np.zeros((n, cols), bool)
    for i in range(n):
        if images[i] is None or not np.isfinite(seg[i]).any():
            continue
        m, h, e = detect_bscan_lesions(images[i], seg[i], ax, la, rpe_ref, fines[i])
        for k in masks:
            if m[k].any():  # the cube was zeroed lazily: leaving an empty B-scan's pages untouched saves their faults
                masks[k][i] = m[k]
        hrf.extend((i, r, c) for r, c in h)
        ez_dis[i] = e
        atrophy[i] = bscan_atrophy(images[i], seg[i], e, ax, la, sub_rpe_masks=(m["ped"], m["drusen"]))
    images.clear()
    fines.clear()
    ped_periphery_to_ped(masks)

    fovea, fovea_q = find_fovea(seg, spacing)
    reasons: dict[str, str] = {}
    if valid_frac < 0.2 or fovea is None:
        bio = {k: math.nan for k in MACULAR_IDS}
        why = fovea_q.get("reason") if fovea is None else "fewer than 20% of the A-scans were segmented"
        reasons = {k: f"not measurable: {why}" for k in MACULAR_IDS}
        if valid_frac >= 0.2:
            bio["hrf_count"] = float(len(hrf))
            reasons.pop("hrf_count")
    else:
        bio, reasons = macular_biomarkers(
            seg, spacing, fovea, lat or "OD", choroid_sclera=csi, masks=masks, hrf_count=len(hrf),
            ez_disrupted=ez_dis,
        )
        ch = "subfoveal_choroidal_thickness_um"
        if not math.isfinite(bio.get(ch, math.nan)) and "choroid_low_contrast" in flags:
            reasons[ch] = f"choroid-sclera interface not found ({flags['choroid_low_contrast']})"
        if lat is None:
            for k in bio:
                if "nasal" in k or "temporal" in k:
                    bio[k] = math.nan
                    reasons[k] = "laterality unknown: nasal and temporal cannot be told apart"
        if fovea_q["status"] != "ok":
            flags["fovea_uncertain"] = fovea_q.get("reason", "fovea uncertain")
        _atrophy_biomarkers(bio, reasons, atrophy, la, sp, n)
        implausible = implausible_thickness(bio)
        if implausible:
            flags["implausible_thickness"] = implausible
            _withdraw(bio, reasons, f"not measurable: {implausible}")
    if missing:
        _withdraw(bio, reasons, flags["missing_spacing"])
    bio = {k: float(bio.get(k, math.nan)) for k in MACULAR_IDS}
    quality = {
        "usable": bool(valid_frac >= 0.2 and fovea is not None and not missing
                       and "implausible_thickness" not in flags),
        "segmented_fraction": valid_frac,
        "flags": flags,
        "reasons": reasons,
        "fovea": fovea_q,
        "bscans_flagged": sorted(bscan_flags),
    }
    return OctMeasurement(
        biomarkers=bio,
        quality=quality,
        lesions=lesion_boxes(masks, hrf),
        segmentation=seg,
        choroid_sclera=csi,
        fovea=fovea,
        laterality=lat,
        spacing_um={"axial": ax if "axial" not in missing else math.nan,
                    "lateral": la if "lateral" not in missing else math.nan,
                    "bscan": sp if "bscan" not in missing else math.nan},
        masks=masks if keep_masks else {},
        hrf=hrf,
        ez_disrupted=ez_dis,
        atrophy=atrophy,
    )


def _withdraw(bio: dict[str, float], reasons: dict[str, str], why: str) -> None:
    """Every measured macular value that needs the boundaries in physical units becomes NaN with ``why``."""
    for k in MACULAR_IDS:
        if k not in _UNITLESS and math.isfinite(bio.get(k, math.nan)):
            bio[k] = math.nan
            reasons[k] = why


def _atrophy_biomarkers(bio: dict[str, float], reasons: dict[str, str], atrophy: np.ndarray, lateral_um: float,
                        bscan_um: float, n_bscans: int) -> None:
    """``geographic_atrophy_count`` from the en-face atrophy map. Atrophy found is reported on any scan; its
    absence only where the B-scans lie at most cRORA's 250 um apart (a sparser raster, or a single line, can
    pass between lesions): otherwise NaN with the reason."""
    count, _, _ = atrophy_regions(atrophy, lateral_um, bscan_um)
    if count == 0 and (n_bscans < 2 or not bscan_um <= ATROPHY_MIN_WIDTH_UM):
        where = "a single B-scan" if n_bscans < 2 else f"B-scans {bscan_um:.0f} um apart"
        bio["geographic_atrophy_count"] = math.nan
        reasons["geographic_atrophy_count"] = (
            f"no atrophy on {where}, which can pass between lesions of cRORA's {ATROPHY_MIN_WIDTH_UM:.0f} um: "
            "absence not assessable")
        return
    bio["geographic_atrophy_count"] = float(count)


def implausible_thickness(biomarkers: dict[str, float]) -> str | None:
    """Why a cube's ETDRS total-thickness map cannot be right (:data:`PLAUSIBLE_RETINA_UM`), or None."""
    lo, hi = PLAUSIBLE_RETINA_UM
    off = [(k, v) for k, v in biomarkers.items()
           if k.startswith("macular_thickness_") and math.isfinite(v) and not lo <= v <= hi]
    if not off:
        return None
    k, v = off[0]
    where = k.removeprefix("macular_thickness_").removesuffix("_um").replace("_", " ")
    more = f" (and {len(off) - 1} more subfields)" if len(off) > 1 else ""
    return (f"retinal thickness {v:.0f} um in the {where} subfield{more} is outside the plausible "
            f"{lo:.0f}-{hi:.0f} um: the segmentation failed there; thickness, volume and lesion measures "
            "of this cube are not reported")


def select_bscans(measurement: OctMeasurement, max_lesion_bscans: int = 4) -> dict:
    """Pick the B-scans to show: the foveal one and those with the most lesion burden.

    Returns ``{"foveal": int | None, "lesion_bscans": [int, ...]}`` (lesion B-scans ranked by the lesion
    area in pixels plus 20 per hyperreflective focus, the foveal B-scan excluded).
    """
    n = measurement.segmentation.shape[0]
    foveal = None if measurement.fovea is None else int(np.clip(round(measurement.fovea[0]), 0, n - 1))
    burden = np.zeros(n)
    for m in measurement.masks.values():
        burden += m.reshape(n, -1).sum(axis=1)
    if not measurement.masks:  # masks were not kept: fall back to the boxes
        for les in measurement.lesions:
            x1, y1, x2, y2 = les["box_xyxy_px"]
            burden[les["bscan"]] += (x2 - x1 + 1) * (y2 - y1 + 1)
    for b, _, _ in measurement.hrf:
        burden[b] += 20
    order = [int(i) for i in np.argsort(-burden, kind="stable") if burden[i] > 0 and i != foveal]
    return {"foveal": foveal, "lesion_bscans": order[:max_lesion_bscans]}


def measure_circle(
    bscan: np.ndarray, axial_um: float, lateral_um: float, laterality: str | None = None, *, method: str = "auto"
) -> CircleMeasurement:
    """Peripapillary RNFL of a circle scan whose columns run TSNIT from temporal (see grok.oct.circle).

    bscan : (rows, cols) ndarray; axial_um / lateral_um : pixel spacing (NaN -> biomarkers NaN)
    """
    lat = _check_laterality(laterality)
    img = np.asarray(bscan)
    if img.ndim == 3 and img.shape[0] == 1:
        img = img[0]
    if img.ndim != 2:
        raise ValueError(f"a circle scan is one (rows, cols) B-scan, got shape {img.shape}")
    flags: dict[str, str] = {}
    ok_ax = axial_um is not None and math.isfinite(axial_um) and axial_um > 0
    ok_la = lateral_um is not None and math.isfinite(lateral_um) and lateral_um > 0
    res = segment_bscan(img, axial_um if ok_ax else DEFAULT_SPACING_UM[0], lateral_um if ok_la else 14.15,
                        pattern="circle", method=method)
    flags.update(res.flags)
    bio, why = circle_biomarkers(res.boundaries, axial_um if ok_ax else math.nan)
    if not ok_ax:
        flags["missing_spacing"] = "no axial spacing: RNFL thickness in um cannot be computed"
        why = {k: flags["missing_spacing"] for k in OCT_PERIPAPILLARY_BIOMARKERS}
        bio = {k: math.nan for k in OCT_PERIPAPILLARY_BIOMARKERS}
    # end-stage glaucoma keeps ~40-50 um of RNFL (glia, vessels) in every sector; a mean (or, where the mean
    # is not given for lack of coverage, a sector) outside the plausible range is a segmentation failure, not
    # a finding: never published as a number
    off = {k: v for k, v in bio.items()
           if math.isfinite(v) and not PLAUSIBLE_RNFL_UM[0] <= v <= PLAUSIBLE_RNFL_UM[1]}
    if off:
        k, v = next(iter(off.items()))
        what = k.replace("rnfl_peripapillary_", "").replace("_um", "")
        flags["implausible_rnfl"] = (f"{what} peripapillary RNFL {v:.0f} um is outside the plausible "
                                     f"{PLAUSIBLE_RNFL_UM[0]:.0f}-{PLAUSIBLE_RNFL_UM[1]:.0f} um; not reported")
        why = {k: flags["implausible_rnfl"] for k in OCT_PERIPAPILLARY_BIOMARKERS}
        bio = {k: math.nan for k in OCT_PERIPAPILLARY_BIOMARKERS}
    quality = {"usable": bool(ok_ax and math.isfinite(bio["rnfl_peripapillary_mean_um"])), "flags": flags,
               "reasons": why, "order": "TSNIT from temporal"}
    return CircleMeasurement(bio, quality, res.boundaries, lat,
                             {"axial": axial_um if ok_ax else math.nan, "lateral": lateral_um if ok_la else math.nan})
