"""Lesion candidates with boxes, typed by rules: haemorrhages, microaneurysms, hard exudates,
cotton-wool spots, drusen.

Three stages, so that every decision can be inspected (``lesion_candidates`` returns each candidate with
its features; ``classify`` sets its type or the reason it was dropped):

1. **Candidates.** Dark and bright blobs of the background-relative green channel
   (``grok.cfp.preprocess.relative_channels``): local maxima of a multi-scale, scale-normalised Hessian
   blob measure (both eigenvalues of one sign, so vessels, with one near-zero eigenvalue, respond
   little; the eigenvalues are those of the vessel segmentation, shared) in units of the local noise,
   plus the peaks of small isolated regions of clear contrast (elongated lesions such as flame
   haemorrhages respond weakly to the blob measure). Each seed grows into the connected region above
   half its peak contrast; the box is that region's pixel-edge box, as in the phantom truth.
2. **Features** of each region: contrast (on the relative map, in noise units, and against a ring
   around the region), equivalent diameter, elongation and minor width, edge width, colour of the
   absolute change against the ring (dB/dG: yellow exudates and drusen ~0.4-0.8, white cotton wool,
   nerve-fibre sheen and reflexes ~0.9 and more; dR/dG: deposits raise green more than red),
   brightness in disc units (green rise over the disc's green excess), red/green darkness ratio
   (blood <= 0.5, pigment ~1), "arms" (runs of the same polarity on a circle just beyond the region:
   0 for an isolated spot, 1-2 for a vessel end or piece, 3-4 for a crossing; runs about as wide as
   the region are the same structure continuing), vessel contacts (branches of the vessel mask
   touching it, their calibre), whether the region lies along a vessel, and the distances to the
   disc and the fovea in disc diameters (DD). Regions that fail the cheap checks (size, contrast,
   disc, unbounded) are dropped before the costly features are computed, and those are computed group
   by group when a rule first reads them (``_RegionFeatures``): a candidate dropped by an early rule
   never pays for the groups only later rules read (vessel contacts, nearest vessel, edge width).
3. **Typed rules** (``classify``; every threshold is a documented field of ``LesionRules``). Common:
   not at the disc, bounded, contrast also against its own ring, inside the FOV. Dark: not a vessel
   piece (arms, vessel contacts), not pigment, not the foveal pit, darker than the fundus texture around
   it (5 spreads of the surrounding darkness at all scales, not only of the fine-scale noise: the
   choroidal pattern of young and tessellated fundi); microaneurysm if round, isolated,
   blob-like and under 0.065 DD (~125 um, and >= 2.5 px), else haemorrhage (round, or elongated but
   wide, dense and not continued by a line: flame). Bright: not the foveal reflex, not a reflex along
   a vessel, not a gap between vessels, not red-dominated; whitish spots are cotton-wool spots when
   large, soft and at least 0.35 disc units bright (else sheen or reflex); yellow spots are hard
   exudates when at least 0.6 disc units bright, drusen when fainter, round, isolated, >= 63 um and
   within 2 DD of the fovea. Pieces of one lesion are merged (``merge_pieces``).

The length unit of the size rules is the disc diameter, capped at the typical disc of the field of view
(a disc fit that takes in peripapillary atrophy would otherwise shrink every lesion). Below about 60
working pixels per DD lesions are not assessed (``lesions_assessable``). The rules follow the clinical
descriptions of the lesions and are checked on the phantom, on the real normal photograph
``skimage.data.retina()`` (no lesion) and on lesions drawn into that photograph; no annotated real
lesions ship here. See docs/cfp.md for the figures.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from grok.cfp._kernels import cityblock_distance, flood_fill4, update_best_blob
from grok.cfp.preprocess import background, disk_filter, fill_outside, local_scale
from grok.cfp.vessels import VESSEL_SCALES, hessian_eigen

#: Disc diameters per FOV radius of a 45-degree photograph (FOV about 7.2 DD across).
LESION_DD_PER_FOV_RADIUS = 2 / 7.2
#: Percentile of the vessel-free green within the fitted disc rim that is the disc's pale part, whose excess
#: over the fundus just outside the disc is the unit of lesion brightness (65: on 45-degree photographs with
#: the centre on the cup it reads as the median within 0.35 DD of the centre did, the unit the thresholds were
#: set in; see ``_disc_green_excess``).
DISC_UNIT_PERCENTILE = 65.0
#: Width (DD) of the opening that frees flame haemorrhages from the thin vessels they touch.
FLAME_OPENING_DD = 0.045
#: Window (DD) of the median that estimates the green illumination field for the disc-unit correction.
ILLUMINATION_WINDOW_DD = 3.0
#: Below this many working pixels per disc diameter (a field of view under ~430 px across) lesions are
#: not assessed: a microaneurysm would be under 2 px and a small haemorrhage under 4 px.
MIN_LESION_DD_PX = 60.0


def lesions_assessable(fov_mask: np.ndarray) -> tuple[bool, str]:
    """Whether the working image resolves lesions; (False, reason) when the FOV is too small."""
    dd_fov = LESION_DD_PER_FOV_RADIUS * math.sqrt(float(np.count_nonzero(fov_mask)) / math.pi)
    if dd_fov < MIN_LESION_DD_PX:
        return False, (f"lesions not assessed: the field of view is {dd_fov:.0f} px per disc diameter "
                       f"(need {MIN_LESION_DD_PX:.0f}; a photograph of at least ~{int(7.2 * MIN_LESION_DD_PX)} px "
                       "across the field)")
    return True, ""


@dataclass(frozen=True)
class LesionRules:
    """Thresholds of the lesion detector (contrasts are fractions of the local background level,
    lengths are in disc diameters (DD) unless named ``_px``)."""

    z_seed: float = 4.0
    """Blob z-score (local noise units) a local maximum needs to become a candidate."""
    dark_min_contrast: float = 0.15
    """Minimum relative darkness (green) of a microaneurysm (the green channel's choroidal texture
    reaches about 0.15 on real and phantom photographs)."""
    hemorrhage_min_contrast: float = 0.2
    """Minimum relative darkness of a haemorrhage (larger texture patches reach about 0.2)."""
    dark_min_z: float = 5.0
    """Minimum peak darkness in local noise units."""
    ma_max_diameter_dd: float = 0.065
    """Equivalent diameter splitting microaneurysms (below, ~125 um) from haemorrhages."""
    ma_min_diameter_dd: float = 0.018
    """Smaller dark dots are noise / JPEG artefacts."""
    ma_min_diameter_px: float = 2.5
    """Dots narrower than this many (working) pixels cannot be told from noise or vessel crossings."""
    hemorrhage_min_diameter_px: float = 6.0
    """Haemorrhages need this many pixels across (no effect above ~700-px photographs, where 0.065 DD is
    more; on smaller ones texture patches and vessel pieces of that size are indistinguishable)."""
    dark_max_diameter_dd: float = 0.45
    """Larger dark regions are background variation (the macula, a choroidal shadow)."""
    dark_max_elongation: float = 5.0
    """Major/minor axis ratio above which a dark region is a vessel piece (flame haemorrhages reach ~4) ..."""
    flame_max_elongation: float = 6.5
    """... unless it is as wide as a flame (``flame_min_width_dd``), as dense (``flame_min_contrast``) and
    isolated (no line leaves it, or at most its two tails with no segmented vessel within
    ``continuing_line_max_gap_px``): a vessel that wide and dark would be segmented and joined to the tree,
    while long flames with feathered tails reach axis ratios of 5-6."""
    round_max_elongation: float = 2.2
    """Dark regions up to this axis ratio are round (microaneurysms, dot and blot haemorrhages)."""
    drop_on_vessel_net: bool = True
    """A dark candidate that is no clear blob (blob z-score under ``vessel_net_max_z_blob``) and whose peak lies on a
    structure of the vessel network's mask (``grok.cfp.vessel_net``, when it ran) reaching beyond ``vessel_net_reach``
    of its diameters is a piece of a vessel the classical ridge mask missed, not a lesion. The network also marks
    dot and blot haemorrhages, and joins those next to a vessel to it, hence the blob test: on 28 healthy children's
    photographs (CHASE_DB1) 52 of the 90 'haemorrhages' and 'microaneurysms' were dropped, none of 33 phantom and
    32 drawn-on-real ones found (docs/cfp.md, Lesions)."""
    vessel_net_reach: float = 2.5
    """Half-width of the window, in the candidate's equivalent diameters (at least 10 px x scale), that the network
    structure under its peak must reach the edge of for the candidate to count as a vessel piece."""
    vessel_net_max_z_blob: float = 2.5
    """Candidates with a blob z-score at least this high are lesions even on such a structure (drawn blot
    haemorrhages beside vessels: 1.95-7.0; the dropped vessel pieces of CHASE_DB1: mostly 0.8-2.0; microaneurysms
    need ``ma_min_z_blob`` anyway)."""
    dark_min_texture_z: float = 5.0
    """A dark lesion must stand out from the fundus texture around it by as many spreads as ``dark_min_z`` asks of
    the fine-scale noise (the same 5, not a fitted value): its contrast over the spread of the background-relative
    green darkness within ``texture_radius_dd`` of it (1.4826 x the median deviation of the pixels darker than the
    median, so that bright exudates around do not count as texture; its own region, the vessels of the ridge and
    network masks and the FOV rim left out). The noise unit of ``dark_min_z`` is measured at the finest scale and
    misses the coarser choroidal pattern of young and tessellated fundi, whose dark patches are as large as
    haemorrhages: on CHASE_DB1's healthy children (Image_01-07) 14 of the 16 false calls fall under 5, while the
    33 phantom and 32 drawn-on-real lesions found all stay (docs/cfp.md, Lesions). 0 turns the rule off."""
    texture_radius_dd: float = 0.5
    """Radius (DD) of the neighbourhood whose texture a dark lesion must stand out from (as wide as the largest
    dark lesion, ``dark_max_diameter_dd``, so that the pixels around even a large blot sample the fundus)."""
    ma_min_z_blob: float = 3.0
    """A microaneurysm is a clear isotropic blob (blob z-score); thin vessel fragments score lower."""
    flame_min_width_dd: float = 0.045
    """Elongated dark regions narrower than this are vessel fragments, not flame haemorrhages."""
    flame_min_contrast: float = 0.25
    """Elongated dark regions need this width and contrast, or 0.7 x the width at 1.4 x the contrast
    (isolated dense thin flames; a vessel that dark would be segmented and joined to the tree)."""
    vessel_branch_width_ratio: float = 1.7
    """A dark region touched by a vessel is a vessel piece unless its minor width exceeds the
    vessel's calibre by this factor."""
    pigment_red_ratio: float = 0.6
    """Dark regions whose relative red darkness reaches this share of the green darkness are pigment or
    pigmented texture (blood absorbs red at most about half as much as green: vessels in real
    photographs 0.15-0.3, the phantom's blood 0.4)."""
    fovea_exclusion_dd: float = 0.25
    """Dark candidates this close to the detected fovea centre are the foveal pit."""
    disc_exclusion_dd: float = 0.7
    """Candidates this close to the disc centre are disc / peripapillary structure."""
    bright_min_contrast: float = 0.12
    """Minimum relative brightness (green) of any bright lesion."""
    bright_min_z: float = 6.0
    bright_max_r_over_g: float = 0.9
    """Deposits (exudates, drusen, cotton wool) raise green more than red; larger dR/dG is background."""
    white_min_b_over_g: float = 0.9
    """dB/dG (absolute channel changes) at and above which a bright spot is whitish (cotton wool, sheen,
    reflexes) rather than yellow (exudates, drusen)."""
    cws_min_diameter_dd: float = 0.06
    cws_min_disc_units: float = 0.35
    """Bright-lesion strengths are in disc units: the green rise over the ring around the spot divided
    by the disc's green excess over the fundus near it. Whitish spots below this are sheen or reflexes."""
    exudate_min_disc_units: float = 0.6
    """Hard exudates are about as bright as the disc; yellow spots this bright or brighter are exudates."""
    drusen_min_disc_units: float = 0.2
    drusen_min_diameter_dd: float = 0.035
    """Drusen are counted from 63 um (0.035 DD): smaller ones are normal ageing (AREDS)."""
    sharp_edge_px: float = 2.2
    """Edge width (px at the 1024-px reference scale) at or below which an edge is sharp."""
    drusen_max_fovea_dd: float = 2.0
    """Drusen lie in the macula: within this distance of the fovea."""
    drusen_max_elongation: float = 3.0
    """Yellow spots up to this axis ratio can be drusen: one is round, two confluent ones measure ~2.2-2.9
    (elongated sheen and wall reflexes along vessels are dropped by the along-vessel rule before this)."""
    bright_max_diameter_dd: float = 0.45
    continuing_line_max_gap_px: float = 6.0
    """An elongated dark region continued by a line about as wide is a vessel piece only when a segmented
    vessel lies within this gap (px at the reference scale); with no vessel near, the line is the
    feathered tail of a flame haemorrhage."""
    along_vessel_gap_px: float = 3.0
    """Bright regions within this gap (px at reference scale) of a vessel and elongated along it are
    vessel-wall reflexes or sheen."""
    dark_min_ring_contrast_share: float = 0.55
    """The contrast against a ring around the region must be at least this share of the contrast on the
    background-relative map: drawn dark lesions give 0.7-0.9 (a defined spot on a flat surround); soft
    texture patches about 0.5 or less; artefacts of the background model near 0."""
    bright_min_ring_contrast_share: float = 0.25
    """The same for bright spots (soft cotton-wool spots and drusen give 0.35-0.6)."""
    min_circle_in_fov: float = 0.75
    """Share of a circle just around the region that must lie inside the field of view."""
    foveal_reflex_dd: float = 0.15
    """Small bright spots this close to the fovea centre are the foveal light reflex."""

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"LesionRules.{k}={v!r} must be a finite non-negative number")
        if self.ma_min_diameter_dd >= self.ma_max_diameter_dd:
            raise ValueError("LesionRules: ma_min_diameter_dd must be below ma_max_diameter_dd")
        if self.flame_max_elongation < self.dark_max_elongation:
            raise ValueError("LesionRules: flame_max_elongation must be at least dark_max_elongation")
        if self.vessel_net_reach <= 0:
            raise ValueError("LesionRules.vessel_net_reach must be positive (lesion diameters)")


@dataclass
class Lesion:
    """type : one of grok.ids.CFP_LESION_TYPES; box_xyxy_px : [x_min, y_min, x_max + 1, y_max + 1] (working px);
    score : 0..1 (contrast in noise units through a logistic); area_px."""

    type: str
    box_xyxy_px: list[float]
    score: float
    area_px: int

    def to_dict(self) -> dict:
        return {"type": self.type, "box_xyxy_px": list(self.box_xyxy_px), "score": self.score, "area_px": self.area_px}


@dataclass
class Candidate:
    """One dark or bright blob and its features (working px unless stated; ``_dd`` in disc diameters).

    polarity : "dark" | "bright". xy : peak (x, y). box_xyxy_px : half-maximum region's pixel-edge box.
    type : lesion type after ``classify`` ("" when dropped); reason : why it was dropped.
    """

    polarity: str
    xy: tuple[float, float]
    box_xyxy_px: list[float]
    area_px: int
    features: dict[str, float] = field(default_factory=dict)
    type: str = ""
    reason: str = ""
    score: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        feats = self.features.complete() if isinstance(self.features, _RegionFeatures) else self.features
        return {"polarity": self.polarity, "xy": list(self.xy), "box_xyxy_px": list(self.box_xyxy_px),
                "area_px": self.area_px, "type": self.type, "reason": self.reason, "score": self.score,
                **feats}


def _logistic(z: float, z0: float, k: float = 1.0) -> float:
    return float(1.0 / (1.0 + math.exp(-(z - z0) / k)))


def _blob_z(hessian: list[tuple[float, np.ndarray, np.ndarray]], polarity: str, noise_rel: np.ndarray,
            allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Max over scales of the scale-normalised blob measure, in units of the robust spread of the same
    scale's Laplacian inside ``allowed`` times the local noise ratio. ``hessian``: (sigma, l1, l2) of the
    darkness map per scale; dark blobs have both eigenvalues negative (blob = -l1), bright blobs both
    positive (blob = l2). Returns (z, sigma_px of the best scale), both (h, w)."""
    best = np.zeros(noise_rel.shape, np.float32)
    best_s = np.zeros(noise_rel.shape, np.float32)
    inv_noise = (1.0 / noise_rel).astype(np.float32)
    sub = allowed[::4, ::4]
    for s, l1, l2 in hessian:
        lap = (l1[::4, ::4] + l2[::4, ::4])[sub]
        spread = 1.4826 * float(np.median(np.abs(lap - np.median(lap)))) + 1e-9 if lap.size else 1.0
        if polarity == "dark":
            update_best_blob(l1, -1.0 / spread, inv_noise, float(s), best, best_s)
        else:
            update_best_blob(l2, 1.0 / spread, inv_noise, float(s), best, best_s)
    return best, best_s


def lesion_candidates(rgb: np.ndarray, rel: list[np.ndarray], fov_mask: np.ndarray, vessel_mask: np.ndarray,
                      sc: float, disc_xy: tuple[float, float] | None, dd_px: float,
                      fovea_xy: tuple[float, float] | None, rules: LesionRules | None = None,
                      hessian: list[tuple[float, np.ndarray, np.ndarray]] | None = None,
                      highpass: np.ndarray | None = None, net_vessel: np.ndarray | None = None) -> list[Candidate]:
    """Dark and bright blob candidates with their features (not yet typed; see ``classify``).

    rgb : (h, w, 3) float in [0, 1] working image; rel : ``relative_channels`` (R, G, B each (h, w));
    fov_mask, vessel_mask : (h, w) bool; sc : length scale (FOV radius / 480 px); disc_xy, fovea_xy :
    (x, y) or None; dd_px : disc diameter (NaN: estimated from the FOV size); hessian : (sigma_px, l1, l2)
    of the vessel darkness map per scale (``VesselMaps.hessian``), computed here when not given;
    highpass : (h, w) fine-scale residual of the relative green (``VesselMaps.highpass``; sign is irrelevant).
    net_vessel : (h, w) bool, the vessel network's mask (``VesselMaps.mask`` after ``vessel_net.segment``), or None:
    a dark candidate's feature ``on_vessel_net`` (its peak on a structure of that mask reaching beyond
    ``LesionRules.vessel_net_reach`` of its diameters) drops it unless it is a clear blob (``drop_on_vessel_net``).
    """

    r = rules or LesionRules()
    h, w = fov_mask.shape
    # the length unit of the size rules: the disc diameter, but not more than a typical disc for this
    # field of view (a disc fit that takes in peripapillary atrophy would make every lesion "smaller");
    # the brightness unit reads the fitted disc itself, before the cap
    dd_fov = LESION_DD_PER_FOV_RADIUS * math.sqrt(fov_mask.sum() / math.pi)
    dd_fit = dd_px if np.isfinite(dd_px) and dd_px > 0 else dd_fov
    dd_px = min(dd_fit, dd_fov)
    inner = ndi.distance_transform_cdt(np.pad(fov_mask, 1), metric="chessboard")[1:-1, 1:-1]
    allowed = inner > max(int(8 * sc), 1)
    if not allowed.any():
        return []
    rr, rg = rel[0], rel[1]
    # the relative green level around lesions, without vessels (they would lower it near vessels)
    base = allowed & ~vessel_mask
    lvl = background(np.where(base, rg, 0).astype(np.float32) + 1.0, base, 42 * sc) - 1.0
    g = ndi.gaussian_filter(rg - lvl, 0.7 * sc)
    hp = highpass if highpass is not None else rg - ndi.gaussian_filter(rg, 1.5 * sc)
    noise_map = local_scale(hp, base, int(64 * sc))
    noise_glob = float(np.median(noise_map[allowed]))
    noise_rel = noise_map / max(noise_glob, 1e-9)
    # illumination of the green channel (vignetting, gradients): a 3-DD median, which the macula, the
    # disc and lesions barely move; brightness in disc units is taken relative to it at both ends
    gfill = fill_outside(rgb[..., 1].astype(np.float32), fov_mask, 0.2 * dd_px)
    illum = background(gfill, fov_mask, ILLUMINATION_WINDOW_DD * dd_px)
    illum_disc = (float(illum[int(np.clip(disc_xy[1], 0, h - 1)), int(np.clip(disc_xy[0], 0, w - 1))])
                  if disc_xy is not None else float("nan"))
    ctx = _Ctx(rgb=rgb, rr=rr, g=g, noise=noise_map, vessel=vessel_mask,
               sc=sc, dd=dd_px, disc=disc_xy, fovea=fovea_xy,
               disc_dg=_disc_green_excess(rgb, vessel_mask, disc_xy, dd_fit),
               fov_inner=inner,
               rules=r, illum=illum, illum_disc=illum_disc, net_vessel=net_vessel)
    out: list[Candidate] = []
    if not hessian:
        ds = ndi.gaussian_filter(-rg, 0.6 * sc)
        hessian = [(s * sc, *hessian_eigen(ds, s * sc)) for s in VESSEL_SCALES]
    max_area = math.pi * (0.5 * r.dark_max_diameter_dd * dd_px) ** 2 * 1.5
    for pol, c in (("dark", -g), ("bright", g)):
        z, zs = _blob_z(hessian, pol, noise_rel, allowed)
        z[~allowed] = 0
        peaks = (z >= r.z_seed) & (z == ndi.maximum_filter(z, size=max(int(3 * sc), 1) * 2 + 1))
        ys, xs = np.nonzero(peaks)
        order = np.argsort(-z[ys, xs])
        seeds = [(int(ys[i]), int(xs[i]), float(zs[ys[i], xs[i]]), float(z[ys[i], xs[i]]), None)
                 for i in order[:3000]]
        # elongated lesions (flame haemorrhages) respond weakly to the blob measure: add the peaks of
        # small isolated regions of clear contrast that are not part of the vessel tree
        thr = np.maximum(3.0 * noise_map, 0.8 * (r.dark_min_contrast if pol == "dark" else r.bright_min_contrast))
        lab, _ = ndi.label((c >= thr) & allowed)
        lab_area = np.bincount(lab.ravel())
        for y, x, _k in _region_peaks(lab, c, max_area):
            seeds.append((y, x, float(max(zs[y, x], sc)), float(z[y, x]), None))
        if pol == "dark":
            # a flame haemorrhage touching a thin vessel joins the vessel tree in that map: an opening
            # wider than thin vessels (FLAME_OPENING_DD) cuts it free; it grows only within its piece
            rad = max(int(round(FLAME_OPENING_DD * dd_px / 2)), 1)
            # a binary opening by that disk (scipy's binary_opening with a disk structure, border 0)
            opened = disk_filter(disk_filter((c >= thr) & allowed, rad, "min", border=0), rad, "max", border=0)
            lab_o, _ = ndi.label(opened)
            for y, x, k in _region_peaks(lab_o, c, max_area):
                if lab_area[lab[y, x]] > max_area:  # else its region was small already: seeded above
                    seeds.append((y, x, float(max(zs[y, x], sc)), float(z[y, x]), (lab_o, k)))
        taken = np.zeros((h, w), bool)  # pixels of bounded candidates
        tried = np.zeros((h, w), bool)  # pixels of any grown region (unbounded ones too)
        for y, x, s_, zb, limit in seeds:
            if taken[y, x] or (tried[y, x] and limit is None):
                continue
            cand = _grow(ctx, c, x, y, s_, zb, pol, taken, tried, limit)
            if cand is not None:
                out.append(cand)
    return out


def _region_peaks(lab: np.ndarray, c: np.ndarray, max_area: float) -> list[tuple[int, int, int]]:
    """(y, x, label) of the strongest pixel of ``c`` in every labelled region of 4 to ``max_area`` px, in
    label order; among equal values the first in row-major order (``np.argmax``'s choice)."""
    flat = lab.ravel()
    idx = np.flatnonzero(flat)
    if idx.size == 0:
        return []
    k = flat[idx]
    area = np.bincount(k)
    # per label: the largest value first, then the first pixel (idx ascending); labels ascending
    order = np.lexsort((idx, -c.ravel()[idx], k))
    k_sorted = k[order]
    first = order[np.flatnonzero(np.r_[True, k_sorted[1:] != k_sorted[:-1]])]
    keep = (area[k[first]] >= 4) & (area[k[first]] <= max_area)
    ys, xs = np.divmod(idx[first[keep]], lab.shape[1])
    return [(int(y), int(x), int(kk)) for y, x, kk in zip(ys, xs, k[first[keep]])]


def _disc_green_excess(rgb: np.ndarray, vessel_mask: np.ndarray, disc_xy, dd_px: float) -> float:
    """Green brightness of the disc's pale part above the fundus just outside the disc (absolute, fraction of
    full scale); NaN without a disc. Bright lesions are measured in this unit, which does not depend on
    exposure or on how green the fundus is.

    dd_px : the fitted disc's diameter (not the size rules' capped DD). The pale part is the
    ``DISC_UNIT_PERCENTILE`` of the vessel-free green within the fitted rim (0.5 DD of the centre), the
    fundus the median of the vessel-free green 0.9-1.4 DD from the centre: both are properties of the
    disc, not of where inside it the centre point lies (on the pale cup or on the vessel trunk beside it),
    and the ring stays off the disc when the camera's field is narrower than 45 degrees."""
    if disc_xy is None or not np.isfinite(dd_px):
        return float("nan")
    h, w = vessel_mask.shape
    x0, y0 = disc_xy
    R = int(1.45 * dd_px) + 2
    ys, xs = slice(max(int(y0) - R, 0), min(int(y0) + R + 1, h)), slice(max(int(x0) - R, 0), min(int(x0) + R + 1, w))
    yy, xx = np.mgrid[ys, xs]
    rho = np.hypot(xx - x0, yy - y0) / dd_px
    g = rgb[ys, xs, 1]
    nv = ~vessel_mask[ys, xs] & (g > 0.02)
    a, b = g[(rho < 0.5) & nv], g[(rho > 0.9) & (rho < 1.4) & nv]
    if a.size < 10 or b.size < 10:
        return float("nan")
    d = float(np.percentile(a, DISC_UNIT_PERCENTILE) - np.median(b))
    return d if d > 0.02 else float("nan")


@dataclass
class _Ctx:
    rgb: np.ndarray
    rr: np.ndarray
    g: np.ndarray
    noise: np.ndarray
    vessel: np.ndarray
    sc: float
    dd: float
    disc: tuple[float, float] | None
    fovea: tuple[float, float] | None
    disc_dg: float
    fov_inner: np.ndarray
    rules: LesionRules
    illum: np.ndarray | None = None
    """(h, w) illumination field of the green channel (3-DD median: flat over the macula and lesions);
    brightness in disc units is corrected by its ratio between the lesion and the disc."""
    illum_disc: float = float("nan")
    net_vessel: np.ndarray | None = None
    """(h, w) bool: the vessel network's mask at working resolution, or None (classical path)."""


def _erode4(m: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_erosion(m)`` (4-connected cross, outside = False) without its per-call overhead."""
    p = np.pad(m, 1)
    return p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


def _grow(ctx: _Ctx, c: np.ndarray, x: int, y: int, sigma: float, zb: float, pol: str,
          taken: np.ndarray, tried: np.ndarray, limit: tuple[np.ndarray, int] | None = None) -> Candidate | None:
    """Half-maximum region around a seed and its features; marks the region in ``tried`` and, when it
    is bounded, in ``taken``. ``limit`` (labels, k): grow only within component k (dilated by 2 px)."""
    h, w = c.shape
    dd = ctx.dd
    half = int(max(4 * sigma, 0.3 * dd)) + 3
    y0, y1, x0, x1 = max(y - half, 0), min(y + half + 1, h), max(x - half, 0), min(x + half + 1, w)
    win = c[y0:y1, x0:x1]
    ly, lx = y - y0, x - x0
    r0 = max(round(sigma), 1)
    nb = win[max(ly - r0, 0): ly + r0 + 1, max(lx - r0, 0): lx + r0 + 1]
    peak = float(nb.max())
    if peak <= 0:
        return None
    py, px = np.unravel_index(int(np.argmax(nb)), nb.shape)
    py += max(ly - r0, 0)
    px += max(lx - r0, 0)
    reg_all = win >= 0.5 * peak
    if limit is not None:
        reg_all &= cityblock_distance(limit[0][y0:y1, x0:x1] == limit[1]) <= 2  # dilated by 2 px
    if not reg_all[py, px]:
        return None
    # the 4-connected half-maximum piece of the peak; st: area, y and x extent, sums of y and x
    reg, st = flood_fill4(reg_all, int(py), int(px))
    area, rymin, rymax, rxmin, rxmax = (int(v) for v in st[:5])
    touches = bool(rymin == 0 or rxmin == 0 or rymax == reg.shape[0] - 1 or rxmax == reg.shape[1] - 1)
    tried[y0:y1, x0:x1] |= reg
    if not touches:
        taken[y0:y1, x0:x1] |= reg
    box = [float(rxmin + x0), float(rymin + y0), float(rxmax + x0 + 1), float(rymax + y0 + 1)]
    cx, cy = float(int(st[6]) / area + x0), float(int(st[5]) / area + y0)
    f: dict[str, float] = {}
    f["z_blob"] = zb
    f["sigma_px"] = sigma
    f["contrast"] = peak
    f["z_contrast"] = peak / max(float(ctx.noise[y, x]), 1e-6)
    eqd = 2.0 * math.sqrt(area / math.pi)
    f["eqd_px"] = eqd
    f["eqd_dd"] = eqd / dd
    f["touches_window"] = float(touches)
    f["d_disc_dd"] = math.hypot(cx - ctx.disc[0], cy - ctx.disc[1]) / dd if ctx.disc is not None else 99.0
    f["d_fovea_dd"] = math.hypot(cx - ctx.fovea[0], cy - ctx.fovea[1]) / dd if ctx.fovea is not None else 99.0
    # only the dark rules read it (a vessel piece is dark)
    f["on_vessel_net"] = (_on_vessel_net(ctx, px + x0, py + y0, eqd)
                          if ctx.net_vessel is not None and pol == "dark" else 0.0)
    reason = _gate(f, pol, ctx.rules)
    if reason:  # dropped on the cheap features: the costly ones below are not needed
        return Candidate(polarity=pol, xy=(float(px + x0), float(py + y0)), box_xyxy_px=box, area_px=area,
                         features=f, reason=reason)
    return Candidate(polarity=pol, xy=(float(px + x0), float(py + y0)), box_xyxy_px=box, area_px=area,
                     features=_RegionFeatures(f, _Region(ctx, c, win, reg, reg_all, pol, peak, half, cx, cy,
                                                         (y0, y1, x0, x1))))


_EIGHT = np.ones((3, 3), bool)


def _on_vessel_net(ctx: _Ctx, x: int, y: int, eqd_px: float) -> float:
    """1.0 when (x, y) lies on the vessel network's mask and its 8-connected piece there reaches the edge of a window
    of half-width ``vessel_net_reach`` equivalent diameters (at least 10 px x scale): a longer structure than the
    candidate, a vessel; a compact blob the network also segments (a dot or blot haemorrhage) stays inside."""
    net = ctx.net_vessel
    if not net[y, x]:
        return 0.0
    h, w = net.shape
    half = int(max(ctx.rules.vessel_net_reach * eqd_px, 10 * ctx.sc))
    y0, y1, x0, x1 = max(y - half, 0), min(y + half + 1, h), max(x - half, 0), min(x + half + 1, w)
    lab, _ = ndi.label(net[y0:y1, x0:x1], structure=_EIGHT)
    piece = lab == lab[y - y0, x - x0]
    return float(piece[0].any() or piece[-1].any() or piece[:, 0].any() or piece[:, -1].any())


class _Region:
    """What the costly features of one grown region are computed from (window views and masks)."""

    __slots__ = ("c", "cx", "cy", "ctx", "dreg", "grown", "half", "major", "peak", "pol", "reg", "reg_all", "vsub",
                 "win", "window")

    def __init__(self, ctx: _Ctx, c, win, reg, reg_all, pol, peak, half, cx, cy, window):
        self.ctx, self.c, self.win, self.reg, self.reg_all, self.pol = ctx, c, win, reg, reg_all, pol
        self.peak, self.half, self.cx, self.cy, self.window = peak, half, cx, cy, window
        self.dreg = self.grown = self.vsub = self.major = None


class _RegionFeatures(dict):
    """A region's features: the cheap ones given, each costly group computed on its first lookup.

    ``classify`` reads features in the order of its rules, so a candidate dropped by an early rule never
    pays for the groups only later rules read (vessel contacts, nearest vessel, edge width). Every group
    is computed exactly as before, whichever feature asks first: the values do not depend on the order.
    :meth:`complete` computes all of them (a full record of the candidate; ``Candidate.to_dict``).
    """

    def __init__(self, cheap: dict[str, float], region: _Region):
        super().__init__(cheap)
        self._region: _Region | None = region

    def __missing__(self, key: str) -> float:
        group = _GROUP_OF.get(key)
        if group is None or self._region is None:
            raise KeyError(key)
        group(self, self._region)
        return dict.__getitem__(self, key)

    def complete(self) -> _RegionFeatures:
        """Every feature computed; the region's arrays released."""
        if self._region is not None:
            for key in _GROUP_OF:
                self[key]  # noqa: B018 - a lookup computes the feature's group when it is missing
            self._region = None
        return self

    def release(self) -> None:
        """Drop the region's arrays (features not computed yet stay missing)."""
        self._region = None


def _shape(f: dict, r: _Region) -> None:
    ry, rx = np.nonzero(r.reg)
    area = int(ry.size)
    if area >= 3:
        cov = np.cov(np.vstack([rx, ry]).astype(float)) + np.eye(2) / 12.0
        ev, evec = np.linalg.eigh(cov)
        f["elongation"] = float(math.sqrt(ev[1] / max(ev[0], 1e-6)))
        f["minor_px"] = float(4 * math.sqrt(max(ev[0], 1e-6)))
        r.major = evec[:, 1]
    else:
        f["elongation"] = 1.0
        f["minor_px"] = f["eqd_px"]
        r.major = np.array([1.0, 0.0])
    f["minor_dd"] = f["minor_px"] / r.ctx.dd


def _arm_radius(f: dict, r: _Region) -> float:
    """Radius (px) of the circle just beyond the region's far ends (semi-major axis + margin)."""
    semi_major = 0.5 * f["minor_px"] * f["elongation"]
    return semi_major + max(3.0 * r.ctx.sc, 0.5 * f["minor_px"])


def _arm_features(f: dict, r: _Region) -> None:
    # structures leaving the region: a circle just beyond its far ends
    runs = _arms(r.c, r.cx, r.cy, _arm_radius(f, r), r.peak)
    f["arms"] = float(runs.size)
    ratio = runs / max(f["minor_px"], 1e-6)
    f["arm_width_ratio"] = float(ratio.max()) if runs.size else 0.0
    # arms about as wide as the region itself: the same structure going on (a vessel, not a lesion)
    f["continuing_arms"] = float(np.sum((ratio >= 0.5) & (ratio <= 2.0)))


def _circle_in_fov(f: dict, r: _Region) -> None:
    # share of that circle inside the FOV (a piece cut off by the FOV edge cannot be judged)
    h, w = r.c.shape
    rc = _arm_radius(f, r)
    t = np.linspace(0, 2 * math.pi, 24, endpoint=False)
    yy_ = np.clip(np.round(r.cy + rc * np.sin(t)).astype(int), 0, h - 1)
    xx_ = np.clip(np.round(r.cx + rc * np.cos(t)).astype(int), 0, w - 1)
    f["circle_in_fov"] = float(np.mean(r.ctx.fov_inner[yy_, xx_] > 2))


def _edge_width(f: dict, r: _Region) -> None:
    # edge width: contrast over the mean gradient on the half-maximum border
    gy, gx = np.gradient(r.win)
    edge = r.reg & ~_erode4(r.reg)
    gm = float(np.mean(np.hypot(gx, gy)[edge])) if edge.any() else 0.0
    f["edge_width_px"] = (0.5 * r.peak) / max(gm, 1e-9) / r.ctx.sc if gm > 0 else 99.0


def _dreg(r: _Region) -> np.ndarray:
    """The region's city-block distance map: its dilation by n px (4-connected) is ``dreg <= n``."""
    if r.dreg is None:
        r.dreg = cityblock_distance(r.reg)
    return r.dreg


def _grown(r: _Region) -> np.ndarray:
    """The region dilated by the vessel-contact band (2 px x scale + 1)."""
    if r.grown is None:
        r.grown = _dreg(r) <= max(int(2 * r.ctx.sc), 1) + 1
    return r.grown


def _colour(f: dict, r: _Region) -> None:
    # colour of the absolute change against a ring (vessels and other regions left out)
    ctx, reg = r.ctx, r.reg
    y0, y1, x0, x1 = r.window
    h, w = r.c.shape
    dreg = _dreg(r)
    n1 = max(int(2 * ctx.sc), 1)
    d1 = dreg <= n1
    ring_all = (dreg <= n1 + max(int(4 * ctx.sc), 2)) & ~d1
    ring = ring_all & ~ctx.vessel[y0:y1, x0:x1] & ~r.reg_all
    if ring.sum() < 6:
        ring = ring_all
    sub = ctx.rgb[y0:y1, x0:x1]
    dcol = sub[reg].mean(axis=0) - sub[ring].mean(axis=0) if ring.any() else np.zeros(3)
    dg = float(dcol[1]) if abs(float(dcol[1])) > 1e-6 else 1e-6
    f["dr_over_dg"] = float(dcol[0]) / dg
    f["dg_abs"] = float(dcol[1])
    # the same green contrast measured against the ring around the region (independent of the
    # background model; near the FOV edge the relative map is unreliable)
    ring_g = float(sub[ring][:, 1].mean()) if ring.any() else 0.0
    f["ring_contrast"] = (float(dcol[1]) / ring_g if ring_g > 1e-3 else 0.0) * (-1.0 if r.pol == "dark" else 1.0)
    units = float(dcol[1]) / ctx.disc_dg if np.isfinite(ctx.disc_dg) else float("nan")
    if ctx.illum is not None and np.isfinite(ctx.illum_disc):
        units *= ctx.illum_disc / max(float(ctx.illum[int(min(r.cy, h - 1)), int(min(r.cx, w - 1))]), 1e-4)
    f["dg_disc_units"] = units
    f["db_over_dg"] = float(dcol[2]) / dg


def _red_ratio(f: dict, r: _Region) -> None:
    # relative red darkness over relative green darkness (medians over the region): blood ~0.2-0.5,
    # dark pigment ~1 (pigment absorbs red about as much as green)
    y0, y1, x0, x1 = r.window
    f["red_ratio"] = (float(np.median(-r.ctx.rr[y0:y1, x0:x1][r.reg])) / max(float(np.median(r.win[r.reg])), 1e-6)
                      if r.pol == "dark" else 0.0)


def _vessels_near(r: _Region) -> np.ndarray:
    """The window's vessel mask without the pieces that lie (mostly) inside the region: the vessel
    segmentation takes in dark blobs, and such a piece is the lesion itself, not a vessel."""
    if r.vsub is None:
        y0, y1, x0, x1 = r.window
        vsub = r.ctx.vessel[y0:y1, x0:x1]
        if vsub.any():
            vl, nv = ndi.label(vsub, structure=np.ones((3, 3)))
            if nv:
                tot = np.bincount(vl.ravel(), minlength=nv + 1)
                ins = np.bincount(vl[_grown(r)].ravel(), minlength=nv + 1)
                selfc = ins >= 0.7 * np.maximum(tot, 1)
                selfc[0] = False
                vsub = vsub & ~selfc[vl]
        r.vsub = vsub
    return r.vsub


def _vessel_contacts(f: dict, r: _Region) -> None:
    # vessel contacts: vessel pixels in a thin ring around the region, grouped into branches
    vsub = _vessels_near(r)
    f["vessel_frac"] = float(vsub[r.reg].mean())
    near = _grown(r) & ~r.reg
    touch = near & vsub
    _, nbr = ndi.label(touch, structure=np.ones((3, 3)))
    f["vessel_branches"] = float(nbr)
    if nbr:
        # calibre of the touching vessels: twice the largest distance to the vessel border within
        # 0.08 DD of the contact (the vessel's centre line)
        vw = 2.0 * ndi.distance_transform_edt(vsub)
        reach = cityblock_distance(touch) <= max(int(0.04 * r.ctx.dd), 1)
        f["vessel_branch_width_px"] = float(vw[reach].max())
    else:
        f["vessel_branch_width_px"] = 0.0


def _nearest_vessel(f: dict, r: _Region) -> None:
    # vessel gap and alignment: nearest (non-self) vessel pixel from the region
    vsub = _vessels_near(r)
    sc = r.ctx.sc
    if vsub.any():
        if r.major is None:
            _shape(f, r)
        vd, (iy, ix) = ndi.distance_transform_edt(~vsub, return_indices=True)
        j = int(np.argmin(np.where(r.reg, vd, np.inf)))
        jy, jx = np.unravel_index(j, vd.shape)
        f["vessel_gap_px"] = float(vd[jy, jx]) / sc
        # local vessel direction from the vessel mask around the nearest vessel pixel
        f["along_vessel"] = _alignment(vsub, int(ix[jy, jx]), int(iy[jy, jx]), r.major, max(int(4 * sc), 3))
    else:
        f["vessel_gap_px"] = float(r.half) / sc
        f["along_vessel"] = 0.0


def _texture_z(f: dict, r: _Region) -> None:
    # contrast over the robust spread of the background-relative green around the region, at every scale up to
    # the background's: the choroidal pattern that the fine-scale noise unit misses; the region itself, vessels of
    # both masks (dilated 2 px x scale: their borders are dark) and pixels near the FOV rim left out
    ctx = r.ctx
    h, w = ctx.g.shape
    rad = max(int(round(ctx.rules.texture_radius_dd * ctx.dd)), 3)
    cx, cy = int(round(r.cx)), int(round(r.cy))
    y0, y1, x0, x1 = max(cy - rad, 0), min(cy + rad + 1, h), max(cx - rad, 0), min(cx + rad + 1, w)
    excl = ctx.vessel[y0:y1, x0:x1].copy()
    if ctx.net_vessel is not None:
        excl |= ctx.net_vessel[y0:y1, x0:x1]
    ry0, ry1, rx0, rx1 = r.window
    oy0, oy1, ox0, ox1 = max(y0, ry0), min(y1, ry1), max(x0, rx0), min(x1, rx1)
    if oy0 < oy1 and ox0 < ox1:
        excl[oy0 - y0:oy1 - y0, ox0 - x0:ox1 - x0] |= r.reg[oy0 - ry0:oy1 - ry0, ox0 - rx0:ox1 - rx0]
    yy, xx = np.ogrid[y0:y1, x0:x1]
    keep = ((yy - cy) ** 2 + (xx - cx) ** 2 <= rad * rad) & (ctx.fov_inner[y0:y1, x0:x1] > max(int(8 * ctx.sc), 1))
    keep &= cityblock_distance(excl) > max(int(2 * ctx.sc), 1)
    v = ctx.g[y0:y1, x0:x1][keep]
    if v.size < 30:  # too little fundus around it to measure a texture: the rule does not apply
        f["texture_z"] = 99.0
        return
    # the spread of the texture's own side only (darker than its median for a dark region): the exudates and
    # other bright spots of a diseased eye do not hide its microaneurysms; 1.4826 x the median deviation on that
    # side equals the MAD of a symmetric texture
    side = -v if r.pol == "dark" else v
    med = float(np.median(side))
    dev = side[side > med] - med
    spread = 1.4826 * float(np.median(dev)) if dev.size else 0.0
    f["texture_z"] = f["contrast"] / max(spread, 1e-6)


#: Which group computes each costly feature (``_RegionFeatures``).
_GROUP_OF = {
    **dict.fromkeys(("elongation", "minor_px", "minor_dd"), _shape),
    **dict.fromkeys(("arms", "arm_width_ratio", "continuing_arms"), _arm_features),
    "circle_in_fov": _circle_in_fov,
    "edge_width_px": _edge_width,
    **dict.fromkeys(("dr_over_dg", "dg_abs", "ring_contrast", "dg_disc_units", "db_over_dg"), _colour),
    "red_ratio": _red_ratio,
    **dict.fromkeys(("vessel_frac", "vessel_branches", "vessel_branch_width_px"), _vessel_contacts),
    **dict.fromkeys(("vessel_gap_px", "along_vessel"), _nearest_vessel),
    "texture_z": _texture_z,
}


def _gate(f: dict[str, float], pol: str, r: LesionRules) -> str:
    """The rules that need only position, size and contrast (checked before the costly features)."""
    if f["d_disc_dd"] < r.disc_exclusion_dd:
        return "disc"
    if f["touches_window"]:
        return "unbounded region (background variation)"
    if pol == "dark":
        if f["eqd_dd"] > r.dark_max_diameter_dd:
            return "too large"
        if f["eqd_dd"] < r.ma_min_diameter_dd:
            return "too small"
        if f["contrast"] < r.dark_min_contrast or f["z_contrast"] < r.dark_min_z:
            return "low contrast"
        if r.drop_on_vessel_net and f.get("on_vessel_net", 0.0) >= 1.0 and f["z_blob"] < r.vessel_net_max_z_blob:
            return "on a vessel the vessel network segments (vessel piece)"
    else:
        if f["eqd_dd"] > r.bright_max_diameter_dd:
            return "too large"
        if f["contrast"] < r.bright_min_contrast or f["z_contrast"] < r.bright_min_z:
            return "low contrast"
    return ""


def _arms(c: np.ndarray, x: float, y: float, rc: float, peak: float) -> np.ndarray:
    """Structures of the same polarity leaving a blob: runs above 0.35 x its peak contrast on a circle
    of radius ``rc`` (px) around (x, y), just beyond the blob. Returns the widths (px of arc) of the runs:
    none for an isolated spot; one for a vessel end; two for a vessel piece; 3-4 for a branch or
    crossing; a single run of the whole circumference when all of it is above the level."""
    n = max(int(2 * math.pi * rc), 16)
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    v = ndi.map_coordinates(c, [y + rc * np.sin(t), x + rc * np.cos(t)], order=1, mode="nearest")
    on = v >= 0.35 * peak
    step = 2 * math.pi * rc / n
    if on.all():
        return np.array([n * step])
    if not on.any():
        return np.zeros(0)
    k = int(np.argmin(on))  # start the scan on an "off" sample so that no run wraps around
    on = np.roll(on, -k)
    starts = np.flatnonzero(on & ~np.roll(on, 1))
    ends = np.flatnonzero(on & ~np.roll(on, -1))
    return (ends - starts + 1) * step


def _alignment(vessel: np.ndarray, x: int, y: int, axis: np.ndarray, r: int) -> float:
    """|cos| of the angle between ``axis`` (x, y) and the local vessel direction at (x, y) (0..1)."""
    sub = vessel[max(y - r, 0): y + r + 1, max(x - r, 0): x + r + 1]
    yy, xx = np.nonzero(sub)
    if yy.size < 3:
        return 0.0
    cov = np.cov(np.vstack([xx, yy]).astype(float)) + np.eye(2) * 1e-6
    ev, evec = np.linalg.eigh(cov)
    if ev[1] < 1.5 * ev[0]:
        return 0.0  # no clear direction (a crossing or a blob)
    d = evec[:, 1]
    return float(abs(d[0] * axis[0] + d[1] * axis[1]))


def classify(c: Candidate, rules: LesionRules | None = None) -> Candidate:
    """Type a candidate in place (``c.type``) or record why it is dropped (``c.reason``); returns it."""
    r = rules or LesionRules()
    f = c.features
    if c.reason:
        return c
    c.reason = _gate(f, c.polarity, r)
    if c.reason:
        return c
    share = r.dark_min_ring_contrast_share if c.polarity == "dark" else r.bright_min_ring_contrast_share
    if f["ring_contrast"] < share * f["contrast"]:
        c.reason = "no contrast against its own surroundings (background-model artefact)"
    elif f["circle_in_fov"] < r.min_circle_in_fov:
        c.reason = "at the edge of the field of view (vignetted rim)"
    elif c.polarity == "dark":
        _classify_dark(c, r)
    else:
        _classify_bright(c, r)
    if c.type:
        c.score = _logistic(f["z_contrast"], 8.0, 2.0)
    return c


def _classify_dark(c: Candidate, r: LesionRules) -> None:
    f = c.features
    ma = f["eqd_dd"] < r.ma_max_diameter_dd
    elongated = f["elongation"] > r.round_max_elongation
    if f["eqd_dd"] > r.dark_max_diameter_dd:
        c.reason = "too large"
    elif f["eqd_dd"] < r.ma_min_diameter_dd:
        c.reason = "too small"
    elif f["contrast"] < r.dark_min_contrast or f["z_contrast"] < r.dark_min_z:
        c.reason = "low contrast"
    elif f["d_fovea_dd"] < r.fovea_exclusion_dd:
        c.reason = "foveal pit"
    elif f["arms"] >= 3 or (f["arms"] >= 1 and (f["vessel_branches"] >= 3 or (
            f["vessel_branches"] > 0 and f["minor_px"] < r.vessel_branch_width_ratio * f["vessel_branch_width_px"]))):
        c.reason = "vessel piece (crossing, branch or end)"
    elif f["continuing_arms"] >= 2:
        c.reason = "a vessel runs through it (vessel piece or crossing)"
    elif f["red_ratio"] >= r.pigment_red_ratio:
        c.reason = "dark in red as well (pigment)"
    elif ma and f["eqd_px"] < r.ma_min_diameter_px:
        c.reason = "dot below the resolvable size"
    elif ma and (elongated or f["z_blob"] < r.ma_min_z_blob):
        c.reason = "small but not round (vessel fragment)"
    elif ma and f["arms"] > 0:
        c.reason = "dark dot on a vessel line (crossing, end or fragment)"
    elif f["elongation"] > r.dark_max_elongation and not (
            f["elongation"] <= r.flame_max_elongation and f["minor_dd"] >= r.flame_min_width_dd
            and f["contrast"] >= r.flame_min_contrast
            and ((f["arms"] == 0 and f["continuing_arms"] == 0)
                 or (f["arms"] <= 2 and f["vessel_gap_px"] > r.continuing_line_max_gap_px))):
        c.reason = "elongated (vessel)"
    elif elongated and not (
            (f["minor_dd"] >= r.flame_min_width_dd and f["contrast"] >= r.flame_min_contrast)
            or (f["minor_dd"] >= 0.7 * r.flame_min_width_dd and f["contrast"] >= 1.4 * r.flame_min_contrast)):
        c.reason = "thin or faint elongated piece (vessel fragment)"
    elif elongated and (f["circle_in_fov"] < 1 or f["arms"] > 2 or (
            f["continuing_arms"] > 0 and f["vessel_gap_px"] <= r.continuing_line_max_gap_px)):
        c.reason = "elongated piece continued by a line as wide, or cut by the FOV edge (vessel fragment)"
    elif not ma and f["eqd_px"] < r.hemorrhage_min_diameter_px:
        c.reason = "haemorrhage-sized for the disc but too few pixels to tell from texture or a vessel piece"
    elif not ma and f["contrast"] < r.hemorrhage_min_contrast:
        c.reason = "low contrast for a haemorrhage (texture)"
    elif f["texture_z"] < r.dark_min_texture_z:
        c.reason = "no darker than the fundus texture around it (choroidal pattern)"
    else:
        c.type = "microaneurysm" if ma else "hemorrhage"


def _classify_bright(c: Candidate, r: LesionRules) -> None:
    f = c.features
    units = f["dg_disc_units"]
    if not np.isfinite(units):  # no disc: the relative green brightness over a typical disc's (~0.9)
        units = f["contrast"] / 0.9
    white = f["db_over_dg"] >= r.white_min_b_over_g
    if f["eqd_dd"] > r.bright_max_diameter_dd:
        c.reason = "too large"
    elif f["contrast"] < r.bright_min_contrast or f["z_contrast"] < r.bright_min_z:
        c.reason = "low contrast"
    elif f["d_fovea_dd"] < r.foveal_reflex_dd and f["eqd_dd"] < 0.1:
        c.reason = "foveal reflex"
    elif f["vessel_gap_px"] <= r.along_vessel_gap_px and f["elongation"] > 1.8 and f["along_vessel"] > 0.8:
        c.reason = "along a vessel (wall reflex or sheen)"
    elif f["dr_over_dg"] > r.bright_max_r_over_g:
        c.reason = "red rises more than green (thin pigment or choroidal pattern, not a deposit)"
    elif f["vessel_branches"] >= 2 and units < r.exudate_min_disc_units:
        c.reason = "bright gap between vessels"
    elif white:
        if units < r.cws_min_disc_units:
            c.reason = "faint whitish spot (nerve-fibre sheen or reflex)"
        elif f["eqd_dd"] >= r.cws_min_diameter_dd and not f["edge_width_px"] <= r.sharp_edge_px:  # soft edge
            c.type = "cotton_wool_spot"
        else:
            c.reason = "small or sharp whitish spot (reflex)"
    elif units >= r.exudate_min_disc_units:
        c.type = "hard_exudate"
    elif units < r.drusen_min_disc_units:
        c.reason = "faint yellow spot"
    elif f["eqd_dd"] < r.drusen_min_diameter_dd:
        c.reason = "small yellow dot (below 63 um: not counted as drusen)"
    elif f["d_fovea_dd"] > r.drusen_max_fovea_dd:
        c.reason = "soft yellow spot outside the macula"
    elif f["elongation"] > r.drusen_max_elongation or f["arms"] > 1:
        c.reason = "yellow spot not round (nor two confluent drusen) or continued by bright lines (sheen, reflex)"
    else:
        c.type = "drusen"


def find_lesions(rgb: np.ndarray, rel: list[np.ndarray], fov_mask: np.ndarray, vessel_mask: np.ndarray, sc: float,
                 disc_xy: tuple[float, float] | None, dd_px: float,
                 fovea_xy: tuple[float, float] | None, rules: LesionRules | None = None,
                 hessian: list[tuple[float, np.ndarray, np.ndarray]] | None = None,
                 highpass: np.ndarray | None = None, net_vessel: np.ndarray | None = None) -> list[Lesion]:
    """Typed lesions at working resolution (see the module docstring and ``lesion_candidates``)."""
    rules = rules or LesionRules()
    out = []
    for c in lesion_candidates(rgb, rel, fov_mask, vessel_mask, sc, disc_xy, dd_px, fovea_xy, rules, hessian,
                               highpass, net_vessel):
        classify(c, rules)
        if isinstance(c.features, _RegionFeatures):
            c.features.release()  # the region's window arrays
        if c.type:
            out.append(Lesion(c.type, c.box_xyxy_px, round(c.score, 3), c.area_px))
    return merge_pieces(out)


def merge_pieces(lesions: list[Lesion]) -> list[Lesion]:
    """One lesion found as several pieces (a fluffy cotton-wool spot, a blot haemorrhage with two dark
    cores) becomes one: boxes of the same type that overlap by at least 30% of the smaller box, or for
    cotton-wool spots that touch, are merged (union box, highest score, summed area)."""
    items = list(lesions)
    merged = True
    while merged:
        merged = False
        for i in range(len(items)):
            for j in range(i + 1, len(items)):
                a, b = items[i], items[j]
                if a.type != b.type:
                    continue
                A, B = a.box_xyxy_px, b.box_xyxy_px
                gap = 1.0 if a.type == "cotton_wool_spot" else 0.0
                ix = min(A[2], B[2]) - max(A[0], B[0]) + gap
                iy = min(A[3], B[3]) - max(A[1], B[1]) + gap
                if ix <= 0 or iy <= 0:
                    continue
                small = min((A[2] - A[0]) * (A[3] - A[1]), (B[2] - B[0]) * (B[3] - B[1]))
                if a.type != "cotton_wool_spot" and ix * iy < 0.3 * small:
                    continue
                items[i] = Lesion(a.type, [min(A[0], B[0]), min(A[1], B[1]), max(A[2], B[2]), max(A[3], B[3])],
                                  max(a.score, b.score), a.area_px + b.area_px)
                del items[j]
                merged = True
                break
            if merged:
                break
    return items
