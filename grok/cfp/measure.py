"""All CFP measures for one photograph: ``measure_fundus(rgb) -> CfpMeasurement``.

Run as: grok cfp measure PATH --json   (the CLI command wraps ``measure_fundus``)

Photographs larger than ``WORKING_MAX_SIDE_PX`` are analysed at that working resolution; every position,
length and box is reported in the ORIGINAL image's pixels. Each measure is NaN (positions None, counts
None) with a reason when it cannot be measured; a rejected image carries only its quality verdict.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from grok.cfp import vessel_net
from grok.cfp._kernels import channel_mean_min_max
from grok.cfp.disc import find_disc, find_fovea, laterality_from_image
from grok.cfp.lesions import find_lesions, lesions_assessable
from grok.cfp.preprocess import (
    MIN_SIDE_PX,
    REFERENCE_FOV_RADIUS_PX,
    background,
    fill_outside,
    find_fov,
    relative_channels,
    to_working,
)
from grok.cfp.quality import (
    FUNDUS_RED_CHROMATICITY,
    Quality,
    QualityThresholds,
    illumination_cv,
    non_fundus_colour_share,
    sharpness_ratio,
)
from grok.cfp.vessel_signs import VenousBeading, find_av_nicking, find_venous_beading, um_per_px
from grok.cfp.vessels import VESSEL_METHOD, AvConfig, measure_vessels, segment_vessels, vessel_mask_at
from grok.ids import CFP_BIOMARKERS, CFP_LESION_TYPES

EXTRACTOR_NAME = "grok.cfp.measure"
EXTRACTOR_VERSION = "0.4.0"  # 0.2.0: av_nicking_count and "av_nicking" lesion boxes (grok.cfp.vessel_signs);
# 0.3.0: venous_beading_count and "venous_beading" boxes (grok.cfp.vessel_signs.find_venous_beading; None unless asked);
# 0.4.0: dark lesion candidates on the vessel network's mask are vessel pieces (LesionRules.drop_on_vessel_net)
MASK_NAMES = ("fov", "vessels", "arteries", "veins", "disc", "cup")
#: Why ``venous_beading_count`` is None when :func:`measure_fundus` is not asked for it.
BEADING_OFF = ("venous beading not measured: the detector is not validated (beads called in 15 of 43 healthy real "
               "eyes, docs/cfp.md), so it runs only when asked (measure_fundus(..., venous_beading=True))")
#: Smallest field of view (working px across) for the box-counting fractal dimensions: below it the
#: box sizes (2 px to 1/8 of the side) span under ~4.5 octaves and every tree measures close to 1
#: (phantom trees: ~1.06 at 384 px, ~1.15 at 512 px, ~1.22 at 1024 px).
MIN_FRACTAL_FOV_DIAMETER_PX = 600
#: Red values at or above this (fraction of full scale) are clipped; above RED_SATURATED_USABLE of the
#: field clipped in red, the grade is at most ``usable``.
RED_CLIP_LEVEL = 0.98
RED_SATURATED_USABLE = 0.25
#: ... and above this share no artery/vein-dependent measure is given (their labels rest on red).
RED_SATURATED_NO_AV = 0.5
#: Measures that blur biases (calibres widen, the thinnest vessels vanish), or a crop without any FOV edge
#: (vessel scales from the frame): NaN under ``QualityThresholds.min_sharpness_calibre`` or with the frame
#: filled (issue #14, benchmarks/cfp_quality.py: a 2-px blur moved real AV ratios by up to 0.38, the central
#: crop by up to 0.21).
SCALE_DEPENDENT = ("av_ratio", "vessel_density", "arterial_fractal_dimension", "venular_fractal_dimension")
#: Below this many grey levels of median green per working pixel (``_green_levels``) the A/V colour is not
#: given (issue #14, benchmarks/cfp_quality.py: real photographs 39-100 levels at 8 bit; CHASE_DB1 darkened
#: x 0.3, 12-28 levels, moved its AV ratio by up to 0.26; HRF darkened x 0.3 keeps 44-100 per working pixel).
MIN_GREEN_LEVELS = 30.0
#: A bright area covering more of the frame than this shows no edge of the camera's field (a crop).
FRAME_FILLED_COVERAGE = 0.97
AV_DEPENDENT = ("av_ratio", "arterial_tortuosity", "venular_tortuosity", "arterial_fractal_dimension",
                "venular_fractal_dimension")


@dataclass
class CfpMeasurement:
    """The measures of one colour fundus photograph.

    biomarkers : every id of ``grok.ids.CFP_BIOMARKERS``; ``*_xy_px`` are [x, y] lists in original pixels
        (None when not found); scalars are floats (NaN when not measured); ``*_count`` are ints (None
        when not measured). Ratios and densities are dimensionless; tortuosity is radians per disc
        diameter; fractal dimensions are box-counting dimensions.
    lesions : [{"type", "box_xyxy_px" [x1, y1, x2, y2] original px (pixel edges), "score" 0..1}]: the lesion
        detector's (``grok.ids.CFP_LESION_TYPES``) and one "av_nicking" box per nicked crossing
        (``grok.cfp.vessel_signs``; score 1 - the larger of its two arms' near/far calibre ratios). Beaded
        vein segments (``venous_beading_count``) are boxed in ``extras["venous_beading"]["assessed"]`` only
        (not specific enough on real photographs to be read as lesions, docs/cfp.md).
    quality : {"grade": "good" | "usable" | "reject", "reasons": [...]}.
    laterality : "OD" | "OS" | None (the header's value when given, else inferred from the disc).
    masks : {"fov", "vessels", "arteries", "veins", "disc", "cup"} -> (H, W) bool at the original size.
    extras : confidences, laterality evidence, CRAE/CRVE, working scale, per-measure reasons, timing.
    """

    biomarkers: dict[str, Any]
    lesions: list[dict[str, Any]]
    quality: dict[str, Any]
    laterality: str | None
    masks: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    extras: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (masks left out; NaN stays NaN, ``grok.cli._common.print_json`` writes null)."""
        return {
            "laterality": self.laterality,
            "biomarkers": dict(self.biomarkers),
            "lesions": [dict(d) for d in self.lesions],
            "quality": dict(self.quality),
            "extras": dict(self.extras),
            "extractor": {"name": EXTRACTOR_NAME, "version": EXTRACTOR_VERSION},
        }


def _content_extent(arr: np.ndarray) -> tuple[int, int]:
    """(height, width) px of the bounding box of the non-black content (cameras pad the circular field
    with black margins, so the frame's aspect ratio says little); the frame's size when all is dark."""
    a = arr[::4, ::4]
    a = a.max(axis=-1) if a.ndim == 3 else a
    lit = a > (0.04 * 255 if np.issubdtype(a.dtype, np.integer) else 0.04)
    if not lit.any():
        return arr.shape[0], arr.shape[1]
    ys, xs = np.nonzero(lit)
    return 4 * (int(ys.max()) - int(ys.min()) + 1), 4 * (int(xs.max()) - int(xs.min()) + 1)


def _empty_biomarkers() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in CFP_BIOMARKERS:
        if k.endswith(("_xy_px", "_count")):
            out[k] = None
        else:
            out[k] = float("nan")
    return out


def _rejected(q: Quality, laterality: str | None, shape: tuple[int, int], extras: dict) -> CfpMeasurement:
    H, W = shape
    z = np.zeros((H, W), dtype=bool)
    return CfpMeasurement(
        biomarkers=_empty_biomarkers(),
        lesions=[],
        quality=q.to_dict(),
        laterality=laterality,
        masks={k: z for k in MASK_NAMES},
        extras={**extras, "quality_metrics": q.metrics},
    )


def measure_fundus(rgb: np.ndarray, laterality: str | None = None, pixel_spacing_mm: float = float("nan"),
                   *, thresholds: QualityThresholds | None = None, vessels: str | None = None,
                   venous_beading: bool = False, av_config: AvConfig | None = None,
                   keep_segments: bool = False) -> CfpMeasurement:
    """Measure a colour fundus photograph.

    Parameters
    ----------
    rgb : (H, W, 3) uint8/uint16/float ndarray (an (H, W) greyscale array is accepted and rejected
        with a reason).
    laterality : the header's "OD" / "OS", or None. The image's own evidence (disc left/right of the
        fovea) is always computed; a disagreement is flagged in ``quality["reasons"]`` and extras.
    pixel_spacing_mm : mm per pixel when known; adds ``disc_diameter_mm`` to extras.
    vessels : "net" (the vessel network, ``grok.cfp.vessel_net``) or "classical" (ridge hysteresis and
        half-maximum borders); None: ``grok.cfp.vessels.VESSEL_METHOD``. The vessel graph, A/V colour,
        zone-B calibres, disc and lesion rules read the classical ridge mask either way.
    venous_beading : also run the venous-beading detector (``grok.cfp.vessel_signs.find_venous_beading``). Off by
        default: it calls beads in 15 of 43 healthy real eyes (docs/cfp.md "Venous beading"), so its count is
        not written into a build's records (``venous_beading_count`` None, with that reason) until it is
        validated; benchmarks and research turn it on.
    av_config : artery/vein settings (``grok.cfp.vessels.AvConfig``; None: the defaults).
    keep_segments : also return the vessel-graph segments (``grok.cfp.vessels.Segment``, with their colour
        features and A/V scores) as ``extras["vessel_segments"]`` (not JSON; ``scripts/train_av_colour.py``
        reads them).

    Never raises on bad image content; raises ValueError only for arrays that cannot be an image.
    """
    t0 = time.perf_counter()
    timing: dict[str, float] = {}
    lap = [time.process_time()]

    def tick(stage: str) -> None:  # CPU seconds of each stage, for the speed benchmark's breakdown
        now = time.process_time()
        timing[stage] = timing.get(stage, 0.0) + now - lap[0]
        lap[0] = now

    th = thresholds or QualityThresholds()
    if laterality is not None and laterality not in ("OD", "OS"):
        raise ValueError(f"measure_fundus: laterality={laterality!r}; use 'OD', 'OS' or None")
    arr = np.asarray(rgb)
    q = Quality()
    extras: dict[str, Any] = {"laterality_header": laterality, "laterality_from_image": None}
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise ValueError(f"measure_fundus: array of shape {arr.shape} is not an image; pass (H, W, 3)")
    H, W = arr.shape[:2]
    if min(H, W) < MIN_SIDE_PX:
        q.add("reject", f"image too small ({W}x{H} px); need at least {MIN_SIDE_PX} px on the shorter side")
        return _rejected(q, laterality, (H, W), extras)
    ch, cw = _content_extent(arr)
    if max(ch, cw) / max(min(ch, cw), 1) > th.max_aspect_ratio:
        q.add("reject", f"aspect ratio {max(ch, cw) / max(min(ch, cw), 1):.2f} of the image content is not that "
                        "of a fundus photograph (an OCT B-scan or a montage?)")
    wk = to_working(arr)
    extras["working_scale"] = wk.scale
    if wk.greyscale:
        q.add("reject", "no colour: a greyscale or red-free image (or an OCT B-scan); the CFP measures need "
                        "an RGB colour fundus photograph")
    img = wk.rgb

    lum, ch_min, _ = channel_mean_min_max(img)
    fov = find_fov(img)
    q.metrics.update(fov_coverage=fov.coverage, fov_circularity=fov.circularity)
    if fov.coverage < th.min_fov_coverage or fov.radius < 40:
        q.add("reject", f"no usable field of view (bright area {100 * fov.coverage:.0f}% of the frame): a "
                        "black, blank or mostly dark frame")
    else:
        sat = float(np.mean((ch_min >= 0.97)[fov.mask]))
        mean_l = float(lum[fov.mask].mean())
        q.metrics.update(saturated_fraction=sat, mean_luminance=mean_l)
        _grade(q, sat, th.max_saturated_reject, th.max_saturated_usable, high_is_bad=True,
               reject=f"over-exposed: {100 * sat:.0f}% of the field is saturated",
               usable=f"partly over-exposed: {100 * sat:.1f}% of the field is saturated")
        _grade(q, mean_l, th.min_mean_luminance_reject, th.min_mean_luminance_usable, high_is_bad=False,
               reject=f"under-exposed: mean brightness {mean_l:.3f} of full scale",
               usable=f"dark (under-exposed): mean brightness {mean_l:.3f} of full scale")
        _grade(q, fov.circularity, th.min_circularity_reject, th.min_circularity_usable, high_is_bad=False,
               reject=f"the bright area is not a circular field of view (circularity {fov.circularity:.2f})",
               usable=f"field of view cut off or irregular (circularity {fov.circularity:.2f})")
        non_fundus = non_fundus_colour_share(img, fov.mask)
        q.metrics["non_fundus_colour_share"] = non_fundus
        if non_fundus > th.max_non_fundus_colour and not wk.greyscale:  # a grey image has its own reason
            q.add("reject", f"not a colour fundus photograph: {100 * non_fundus:.0f}% of the bright area is not "
                            "fundus-coloured (red share of R+G+B under "
                            f"{FUNDUS_RED_CHROMATICITY}; a fundus keeps it above nearly everywhere)")
        if fov.coverage > FRAME_FILLED_COVERAGE and q.grade != "reject":
            q.add("usable", f"no edge of the camera's field of view is visible (the bright area fills "
                            f"{100 * fov.coverage:.0f}% of the frame: a crop?); length scales are taken from the frame, "
                            "and the scale-dependent vessel measures are not given")
    if q.grade == "reject":
        extras["seconds"] = time.perf_counter() - t0
        return _rejected(q, laterality, (H, W), extras)

    sc = fov.radius / REFERENCE_FOV_RADIUS_PX
    lf = fill_outside(lum.astype(np.float32), fov.mask, 8 * sc)
    cv = illumination_cv(background(lf, fov.mask, 120 * sc), fov.mask)
    sharp = sharpness_ratio(img[..., 1].astype(np.float32), fov.mask, sc)
    q.metrics.update(illumination_cv=cv, sharpness=sharp)
    _grade(q, cv, th.max_illumination_cv_reject, th.max_illumination_cv_usable, high_is_bad=True,
           reject=f"very uneven illumination (background varies by {100 * cv:.0f}%)",
           usable=f"uneven illumination (background varies by {100 * cv:.0f}%)")
    _grade(q, sharp, th.min_sharpness_reject, th.min_sharpness_usable, high_is_bad=False,
           reject=f"out of focus (sharpness {sharp:.2f})", usable=f"slightly blurred (sharpness {sharp:.2f})")
    if sharp > th.max_sharpness_reject:
        q.add("reject", f"dominated by noise or grain (fine-to-coarse gradient ratio {sharp:.2f}, over "
                        f"{th.max_sharpness_reject})")

    tick("input_fov_quality")
    rel = relative_channels(img, fov.mask, sc)
    tick("relative_channels")
    vm = segment_vessels(img, fov.mask, sc, rel)
    tick("vessel_segmentation")
    dens = float(vm.mask[fov.mask].mean())
    q.metrics["vessel_density"] = dens
    if dens < th.min_vessel_density_reject:
        q.add("reject", f"vessels not visible (vessel density {dens:.3f}): low contrast or not a fundus image")
    elif dens < th.min_vessel_density_usable:
        q.add("usable", f"low vessel contrast (vessel density {dens:.3f})")
    if q.grade == "reject":
        extras["seconds"] = time.perf_counter() - t0
        return _rejected(q, laterality, (H, W), extras)
    method = vessels or VESSEL_METHOD
    if method not in ("net", "classical"):
        raise ValueError(f"measure_fundus: vessels={vessels!r}; use 'net', 'classical' or None")
    green_full = _green_at_full(arr)
    if method == "net" and vessel_net.available():
        vm = vessel_net.segment(vm, green_full, (H, W), wk.scale, fov.mask)
    extras["vessel_method"] = "net" if vm.net_probability is not None else "classical"
    tick("vessel_network")

    # disc, fovea and lesion rules read the ridge mask they were built on (the learned mask when present
    # is the reported vessel mask; see grok.cfp.vessels.VesselMaps.graph_mask)
    rmask = vm.graph_mask if vm.graph_mask is not None else vm.mask
    disc = find_disc(img, fov.mask, fov.center_xy, fov.radius, rmask)
    tick("disc_cup")
    fovea = find_fovea(img, fov.mask, fov.center_xy, fov.radius, rmask, disc)
    tick("fovea")
    lat_img = laterality_from_image(disc, fovea, fov.center_xy)
    extras["laterality_from_image"] = lat_img
    lat = laterality if laterality is not None else lat_img
    if laterality is not None and lat_img is not None and lat_img != laterality:
        q.add("usable", f"laterality disagreement: header says {laterality} but the disc position says {lat_img}")
        extras["laterality_disagrees_with_header"] = True
    else:
        extras["laterality_disagrees_with_header"] = False
    extras["laterality_inferred"] = laterality is None and lat_img is not None
    if disc.center_xy is None:
        q.add("usable", "optic disc not found: disc, cup and disc-referenced vessel measures are missing")

    dd = disc.diameter_vertical_px
    les_ok, les_reason = lesions_assessable(fov.mask)
    # with the vessel network, its mask (vm.mask) also marks the thin vessels the ridge mask misses: a dark spot on
    # a long structure of it that is no clear blob is a vessel piece, not a haemorrhage (LesionRules.drop_on_vessel_net)
    lesions = find_lesions(img, rel, fov.mask, rmask, sc, disc.center_xy, dd, fovea.center_xy,
                           hessian=vm.hessian, highpass=vm.highpass,
                           net_vessel=vm.mask if vm.net_probability is not None else None) if les_ok else []
    tick("lesions")
    # haemorrhages and cotton-wool spots are left out of the zone-B calibres (a flame haemorrhage looks
    # like a short wide vessel; a cotton-wool spot hides the vessel under it)
    exclude = np.zeros(fov.mask.shape, bool)
    for les in lesions:
        if les.type in ("hemorrhage", "cotton_wool_spot"):
            x1, y1, x2, y2 = (int(v) for v in les.box_xyxy_px)
            g = max(int(2 * sc), 1)
            exclude[max(y1 - g, 0): y2 + g, max(x1 - g, 0): x2 + g] = True
    # red clipped at full scale (over-exposed or very light fundi): a vessel's red density against its
    # background is not measurable there or next to it
    red_sat = img[..., 0] >= RED_CLIP_LEVEL
    red_share = float(red_sat[fov.mask].mean()) if fov.mask.any() else 0.0
    extras["red_saturated_fraction"] = red_share
    if red_share > 0:
        red_sat = ndi.maximum_filter(red_sat, size=max(int(9 * sc), 3) | 1)
    vmeas, art, vein, segs = measure_vessels(vm, rel, fov.mask, sc, disc.center_xy, dd, exclude=exclude,
                                             av_config=av_config, red_saturated=red_sat if red_share > 0 else None)
    if keep_segments:
        extras["vessel_segments"] = segs
    if red_share > RED_SATURATED_USABLE:
        q.add("usable", f"red channel saturated over {100 * red_share:.0f}% of the field: artery/vein colour "
                        "and the AV ratio are unreliable there")
    tick("vessel_measures")
    nick = find_av_nicking(segs, vm.darkness, rmask, disc.center_xy, dd, sc, exclude=exclude)
    um_px = um_per_px(dd, fov.radius)
    bead = (find_venous_beading(segs, vm.darkness, rmask, disc.center_xy, dd, um_px, exclude=exclude,
                                fovea_xy=fovea.center_xy) if venous_beading else
            VenousBeading(reason=BEADING_OFF))
    tick("vessel_signs")

    s = 1.0 / wk.scale  # working -> original px

    def xy(p):
        return None if p is None else [float(p[0] * s + (s - 1) / 2), float(p[1] * s + (s - 1) / 2)]

    bm = _empty_biomarkers()
    bm["disc_center_xy_px"] = xy(disc.center_xy)
    bm["disc_diameter_px"] = float(dd * s) if np.isfinite(dd) else float("nan")
    bm["fovea_center_xy_px"] = xy(fovea.center_xy)
    bm["cup_disc_ratio_vertical"] = disc.cdr_vertical
    bm["vessel_density"] = vmeas.vessel_density
    bm["av_ratio"] = vmeas.av_ratio
    bm["arterial_tortuosity"] = vmeas.arterial_tortuosity
    bm["venular_tortuosity"] = vmeas.venular_tortuosity
    levels = _green_levels(arr, img, fov.mask, wk.scale)
    extras["green_levels"] = levels
    if levels < MIN_GREEN_LEVELS:
        for k in AV_DEPENDENT:
            bm[k] = float("nan")
        vmeas.reasons.append(f"green channel too dark for artery/vein colour: its median is {levels:.0f} grey levels "
                             f"per working pixel (need {MIN_GREEN_LEVELS}); quantisation swamps the vessels' colour "
                             "contrast, so the AV ratio, tortuosities and fractal dimensions per class are not given")
    if red_share > RED_SATURATED_NO_AV:
        for k in AV_DEPENDENT:
            bm[k] = float("nan")
        vmeas.reasons.append(f"red channel saturated over {100 * red_share:.0f}% of the field (need under "
                             f"{100 * RED_SATURATED_NO_AV:.0f}%): artery/vein labels, and the AV ratio, tortuosities "
                             "and fractal dimensions per class, are not given")
    blurred, cropped = sharp < th.min_sharpness_calibre, fov.coverage > FRAME_FILLED_COVERAGE
    nick_reasons = [nick.reason] if nick.reason else []
    if levels < MIN_GREEN_LEVELS or red_share > RED_SATURATED_NO_AV:
        nick_reasons.append("artery/vein colour not usable (see the vessel reasons): a crossing cannot be read as "
                            "arteriole over venule, so AV nicking is not assessed")
    if blurred:
        nick_reasons.append(f"blurred (sharpness {sharp:.2f}, need {th.min_sharpness_calibre}): blur fills a venule's "
                            "narrowing at a crossing, so AV nicking is not assessed")
    nicked = [c for c in nick.crossings if c["nicked"]] if not nick_reasons else []
    bead_reasons = [bead.reason] if bead.reason else []
    if levels < MIN_GREEN_LEVELS or red_share > RED_SATURATED_NO_AV:
        bead_reasons.append("artery/vein colour not usable (see the vessel reasons): veins cannot be told from "
                            "arteries, so venous beading is not assessed")
    if blurred:
        bead_reasons.append(f"blurred (sharpness {sharp:.2f}, need {th.min_sharpness_calibre}): blur smooths a "
                            "vein's calibre variation, so venous beading is not assessed")
    if blurred or cropped:
        for k in SCALE_DEPENDENT:
            bm[k] = float("nan")
        vmeas.crae_px = vmeas.crve_px = float("nan")
    if blurred:
        vmeas.reasons.append(f"blurred (sharpness {sharp:.2f}, need {th.min_sharpness_calibre}): blur widens thin "
                             "vessels more than wide ones and loses the thinnest, so the AV ratio, vessel density "
                             "and fractal dimensions are not given")
    if cropped:
        vmeas.reasons.append("no edge of the field of view is visible (a crop): the vessel scales and the area the "
                             "density and fractal dimensions cover are unknown, so those and the AV ratio are not given")
    fov_diam = 2.0 * float(np.sqrt(fov.mask.sum() / np.pi))
    if fov_diam >= MIN_FRACTAL_FOV_DIAMETER_PX:
        if red_share <= RED_SATURATED_NO_AV and not (blurred or cropped):
            bm["arterial_fractal_dimension"] = vmeas.arterial_fractal_dimension
            bm["venular_fractal_dimension"] = vmeas.venular_fractal_dimension
    else:
        vmeas.reasons.append(
            f"fractal dimensions not given: the field of view is {fov_diam:.0f} px across (need "
            f"{MIN_FRACTAL_FOV_DIAMETER_PX}); box counting over so few scales collapses towards 1")
    les_out = []
    for les in lesions:
        b = les.box_xyxy_px
        les_out.append({"type": les.type, "box_xyxy_px": [round(b[0] * s, 1), round(b[1] * s, 1),
                                                          round(b[2] * s, 1), round(b[3] * s, 1)],
                        "score": round(les.score, 3)})
    for t in CFP_LESION_TYPES:
        bm[f"{t}_count"] = sum(1 for les in les_out if les["type"] == t) if les_ok else None
    bm["av_nicking_count"] = None if nick_reasons else len(nicked)
    bm["venous_beading_count"] = None if bead_reasons else sum(b["beaded"] for b in bead.segments)
    # beaded segments are boxed in extras["venous_beading"] (and the overlay), NOT in the lesion list: a box
    # there makes venous_beading_present present, and the detector calls beads in healthy real eyes
    # (docs/cfp.md "Venous beading")
    for c in nicked:  # one box per nicked crossing: the crossing and the venule's narrowed arms
        x, y = c["xy"]
        r = 0.5 * c["arteriole_px"] + 2.0 * c["venule_px"]
        les_out.append({"type": "av_nicking", "box_xyxy_px": [round(max(x - r, 0) * s, 1), round(max(y - r, 0) * s, 1),
                                                              round(min(x + r + 1, img.shape[1]) * s, 1),
                                                              round(min(y + r + 1, img.shape[0]) * s, 1)],
                        "score": round(float(np.clip(1.0 - max(c["ratios"]), 0.0, 1.0)), 3)})
    assert set(bm) == set(CFP_BIOMARKERS)

    extras.update(
        disc_confidence=disc.confidence,
        disc_diameter_horizontal_px=float(disc.diameter_horizontal_px * s) if np.isfinite(dd) else float("nan"),
        cdr_confidence=disc.cdr_confidence,
        cdr_cues=dict(disc.cdr_cues),
        fovea_confidence=fovea.confidence,
        crae_px=vmeas.crae_px * s,
        crve_px=vmeas.crve_px * s,
        n_arteries_zone_b=vmeas.n_arteries_zone_b,
        n_veins_zone_b=vmeas.n_veins_zone_b,
        reasons={"disc": disc.reasons, "fovea": fovea.reasons, "vessels": vmeas.reasons,
                 "lesions": [les_reason] if les_reason else [], "av_nicking": nick_reasons,
                 "venous_beading": bead_reasons},
        av_nicking={"venule_crossings": nick.n_typed, "not_assessed": dict(nick.skipped),
                    "assessed": [{"xy": xy(c["xy"]), "venule_px": round(c["venule_px"] * s, 2),
                                  "ratios": [round(r, 3) for r in c["ratios"]], "nicked": c["nicked"]}
                                 for c in nick.crossings]},
        venous_beading={"vein_segments": bead.n_veins, "not_assessed": dict(bead.skipped), "um_per_px": um_px * wk.scale,
                        "assessed": [{"box_xyxy_px": [round(min(max(v, 0), lim) * s, 1) for v, lim in
                                                      zip(b["box_xyxy"], (img.shape[1], img.shape[0]) * 2)],
                                      "width_px": round(b["width_px"] * s, 2), "length_px": round(b["length_px"] * s, 1),
                                      "beads": b["beads"], "peak_ratio": round(b["peak_ratio"], 3),
                                      "noise": round(b["noise"], 4), "min_ratio": round(b["min_ratio"], 3), "beaded": b["beaded"]}
                                     for b in bead.segments]},
        quality_metrics=q.metrics,
        fractal_dimension_resolution_px=list(img.shape[:2]),
    )
    if np.isfinite(pixel_spacing_mm) and np.isfinite(dd):
        extras["disc_diameter_mm"] = float(dd * s * pixel_spacing_mm)
    masks = {
        "fov": fov.mask,
        "vessels": vm.mask,
        "arteries": art,
        "veins": vein,
        "disc": disc.disc_mask if disc.disc_mask is not None else np.zeros_like(fov.mask),
        "cup": disc.cup_mask if disc.cup_mask is not None else np.zeros_like(fov.mask),
    }
    if wk.scale != 1.0:
        masks = {k: _upsample_mask(m, (H, W)) for k, m in masks.items() if k not in ("vessels", "arteries", "veins")}
        masks.update(_vessel_masks_at(vm, art, vein, (H, W), green_full))
    tick("output")
    extras["timing_cpu_s"] = {k: round(v, 4) for k, v in timing.items()}
    extras["seconds"] = time.perf_counter() - t0
    return CfpMeasurement(biomarkers=bm, lesions=les_out, quality=q.to_dict(), laterality=lat, masks=masks,
                          extras=extras)


def _green_levels(arr: np.ndarray, img: np.ndarray, fov_mask: np.ndarray, scale: float) -> float:
    """Median green of the field in the input's grey levels (255 for 8-bit, 65535 for 16-bit integer input,
    inf for float input), times the working image's averaging factor (1 / ``scale``, the square root of the
    original pixels averaged into one working pixel): how finely a working pixel's green is resolved."""
    if not np.issubdtype(arr.dtype, np.integer) or not fov_mask.any():
        return float("inf")
    full = float(np.iinfo(arr.dtype).max) if arr.dtype in (np.uint8, np.uint16) else float(arr.max() or 1)
    return float(np.median(img[..., 1][fov_mask])) * full / scale


def _green_at_full(arr: np.ndarray) -> np.ndarray | None:
    """The input's green channel as float32 in [0, 1] (scaled as ``to_working`` scales it), or None."""
    if arr.ndim != 3 or arr.shape[2] < 3:
        return None
    g = arr[..., 1]
    if g.dtype == np.uint8:
        return g.astype(np.float32) / 255.0
    if g.dtype == np.uint16:
        return g.astype(np.float32) / 65535.0
    if np.issubdtype(g.dtype, np.integer):
        return g.astype(np.float32) / max(float(arr[..., :3].max()), 1.0)
    g = np.nan_to_num(g.astype(np.float32))
    if g.size and float(np.nanmax(arr[..., :3])) > 1.5:
        g = g / 255.0
    return np.clip(g, 0, 1)


def _vessel_masks_at(vm, art: np.ndarray, vein: np.ndarray, shape: tuple[int, int],
                     green: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Vessel, artery and vein masks at the original size: the vessel border found again at that
    resolution on the photograph's own green channel ``green`` (``grok.cfp.vessels.vessel_mask_at``),
    each of its pixels typed as the nearest working pixel labelled artery or vein (within 2 working px)."""
    ves = vessel_mask_at(vm, shape, green)
    lab = np.zeros(art.shape, np.uint8)
    lab[art] = 1
    lab[vein & ~art] = 2
    if lab.any():
        dist, (iy, ix) = ndi.distance_transform_edt(lab == 0, return_indices=True)
        lab = np.where(dist <= 2.0, lab[iy, ix], 0).astype(np.uint8)
    up = _upsample_mask(lab, shape)
    return {"vessels": ves, "arteries": ves & (up == 1), "veins": ves & (up == 2)}


def _grade(q, value: float, reject_at: float, usable_at: float, *, high_is_bad: bool, reject: str,
           usable: str) -> None:
    """Grade one quality metric: ``reject`` past ``reject_at``, else ``usable`` past ``usable_at`` (past =
    above when ``high_is_bad``, below otherwise)."""
    past = (lambda lim: value > lim) if high_is_bad else (lambda lim: value < lim)
    if past(reject_at):
        q.add("reject", reject)
    elif past(usable_at):
        q.add("usable", usable)


def _upsample_mask(m: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a mask (bool or labels) to (H, W) (pixel centres mapped back)."""
    H, W = shape
    h, w = m.shape
    yi = np.minimum(((np.arange(H) + 0.5) * h / H).astype(int), h - 1)
    xi = np.minimum(((np.arange(W) + 0.5) * w / W).astype(int), w - 1)
    return m[yi[:, None], xi[None, :]]
