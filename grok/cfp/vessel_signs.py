"""Signs read off the vessel graph: arteriovenous (AV) nicking at arteriole/venule crossings, and venous
beading along the veins (``find_venous_beading``, below).

AV nicking (``find_av_nicking``; the Wong-Mitchell mild hypertensive sign): where an arteriole crosses
a venule, the thickened arteriolar wall compresses the venule, whose blood column narrows or tapers on
both sides of the crossing. Read from the typed vessel graph of ``grok.cfp.vessels.measure_vessels``:

1. candidates: every junction of 3 or more ends (a crossing drawn as a 4-way junction, two merged 3-way
   ones, or one that lost an arm; ``grok.cfp.vessels.vessel_graph``) at least
   ``AvNickingConfig.min_disc_distance_dd`` from the disc centre, through which a venule goes straight
   (two ends typed vein, within ``straight_max_deg`` of straight) and where another end is typed artery
   (the crossing arteriole);
2. the venule's calibre every px along each arm, outwards from the junction centre (the skeleton stops
   short of a junction, so each arm is bridged to the centre), from the mean perpendicular profile over
   about one venule calibre along the arm: the half-maximum width (``grok.cfp._kernels.profile_stats``,
   as the zone-B calibres) and the vessel mask's width across the centreline;
3. per arm and measure, near = the narrowest calibre from the arteriole's edge out ``near_widths`` venule
   calibres, far = the median calibre ``far_widths`` (3-6) venule calibres from that edge (the venule's
   own calibre beyond a taper); the arm's ratio near / far is the larger of the two measures': a
   half-maximum border alone misreads wide vessels with a central reflex (it jumps to half the width),
   the mask alone is coarse on thin venules;
4. nicked when both arms' ratios are under ``max_ratio``. Not assessed: a venule under ``min_venule_px``
   (the narrowing of a thinner one is below the profiles' resolution), an arm that does not reach the far
   window, a ratio under ``min_ratio`` (the venule's profile lost: a gap in the mask), a crossing on a
   detected haemorrhage or cotton-wool spot.

The count is None with a reason when no crossing could be assessed or nothing is typed artery/vein; the
assessed crossings (position, venule and crossing-vessel calibres, both ratios, verdict) are kept for
inspection, overlays and the lesion list.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from grok.cfp._kernels import profile_stats
from grok.cfp.vessels import (
    Junction,
    Segment,
    _bend_deg,
    _end_direction,
    _profile_frames,
    _sample_profiles,
    vessel_graph,
)


@dataclass(frozen=True)
class AvNickingConfig:
    """Settings of ``find_av_nicking``. Lengths in working px at the 1024-px reference photograph
    (multiplied by the photograph's scale) unless the name ends in ``_dd`` (disc diameters) or ``_widths``
    (venule calibres)."""

    min_disc_distance_dd: float = 1.0
    """Crossings closer than this to the disc centre are not assessed (vessels converge and overlap there)."""
    min_venule_px: float = 3.0
    """Thinnest venule (median half-maximum calibre) whose narrowing can be read."""
    require_arteriole: bool = True
    """Assess only junctions where one of the other ends is typed artery (an arteriole crossing a venule).
    Off, a venule's own side branches are assessed too: on 16 phantom photographs as many hypertensive
    ones were found (6 of 8) but CHASE_DB1's children had 5 nicked crossings in 4 photographs (on: 1 in 1),
    most at a thin side branch."""
    straight_max_deg: float = 35.0
    """Two venule arms within this of straight are one venule going through a junction."""
    smooth_widths: float = 1.0
    """Calibres are read from the mean of the perpendicular profiles over this many venule calibres along
    the arm (at least ``min_smooth_px``): single profiles follow JPEG blocks and noise (CHASE_DB1's widths
    jump by a third from one px to the next)."""
    min_smooth_px: int = 5
    near_widths: float = 2.0
    """The near window runs from the crossing vessel's edge out this many venule calibres."""
    far_widths: tuple[float, float] = (3.0, 6.0)
    """The far window (venule calibres from the crossing vessel's edge): the venule's own calibre. Graders
    compare with the calibre 2-4 vessel widths away; the phantom's taper reaches about 3 measured calibres
    (its drawn narrowing has a Gaussian reach of 1.5 arteriole widths + 2 px), so 3-6 clears it."""
    min_far_widths: float = 1.0
    """Shortest stretch of the far window (venule calibres) an arm must reach to be assessed."""
    max_ratio: float = 0.75
    """A crossing is nicked when, on both arms, the near calibre is under this fraction of the far one by
    both measures (half-maximum and vessel mask)."""
    min_ratio: float = 0.35
    """Under this fraction of its far calibre the venule's profile is lost (a gap in the vessel mask), not
    measured: such an arm leaves the crossing unassessed."""

    def __post_init__(self) -> None:
        if not 0 < self.min_ratio < self.max_ratio < 1:
            raise ValueError(f"AvNickingConfig.max_ratio={self.max_ratio!r}, min_ratio={self.min_ratio!r}: need "
                             "0 < min_ratio < max_ratio < 1")
        lo, hi = self.far_widths
        if not (0 < self.near_widths <= lo < hi):
            raise ValueError(f"AvNickingConfig.far_widths={self.far_widths!r}: need 0 < near_widths <= start < end")


@dataclass
class AvNicking:
    """count : nicked crossings (None when none could be assessed); crossings : every assessed crossing as
    {"xy": [x, y] working px, "venule_px", "arteriole_px" (the crossing vessel's calibre), "ratios": [arm 1,
    arm 2] (each the larger of the half-maximum and the mask ratio), "nicked"}; n_typed : candidate venule
    crossings away from the disc (assessed or not); skipped : {why: how many} of those not assessed;
    reason : why the count is None."""

    count: int | None = None
    crossings: list[dict] = field(default_factory=list)
    n_typed: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    reason: str | None = None


def _calibres_along(xy: np.ndarray, darkness: np.ndarray, mask: np.ndarray, half_px: float,
                    smooth_px: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Calibres (k, 2) every px along the polyline ``xy`` (half-maximum width and vessel-mask width of the
    mean profile over ``smooth_px``), the profile centres (k, 2) and arc positions (k,) px (AV nicking's arms,
    venous beading's segments)."""
    c, nrm, arc = _profile_frames(xy, 1.0, 2.0)
    if len(c) == 0:
        return np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0)
    off, (pd, pm) = _sample_profiles([darkness, mask], c, nrm, half_px)
    if smooth_px > 1:
        pd = ndi.uniform_filter1d(pd, smooth_px, axis=0, mode="nearest")
        pm = ndi.uniform_filter1d(pm, smooth_px, axis=0, mode="nearest")
    z = np.zeros_like(pd)
    w, mw, *_ = profile_stats(pd, pm, z, z, off, True)
    return np.column_stack([w, mw]), c, arc


def _arm_calibres(seg: Segment, end: int, centre: np.ndarray, darkness: np.ndarray, mask: np.ndarray,
                  reach_px: float, half_px: float, smooth_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Calibres (k, 2) px every px along one arm of a junction, outwards from ``centre`` up to ``reach_px``
    from it: the half-maximum width and the vessel mask's width of the mean profile over ``smooth_px``;
    and each profile's distance (k,) from ``centre``."""
    xy = seg.xy if end == 0 else seg.xy[::-1]
    xy = np.vstack([centre[None, :], xy])  # the skeleton stops short of the junction: bridge the gap
    d_pts = np.hypot(xy[:, 0] - centre[0], xy[:, 1] - centre[1])
    beyond = np.flatnonzero(d_pts > reach_px)
    xy = xy[: int(beyond[0]) + 3] if beyond.size else xy
    cal, c, _ = _calibres_along(xy, darkness, mask, half_px, smooth_px)
    return cal, np.hypot(c[:, 0] - centre[0], c[:, 1] - centre[1])


def _venule_through(segments: list[Segment], jn: Junction, straight_max_deg: float) -> tuple[int, int] | None:
    """The venule going straight through a junction: the straightest pair of ends (within
    ``straight_max_deg`` of straight) whose segments are both typed vein; positions in ``jn.ends``, or None."""
    dirs = [_end_direction(segments[i].xy, e, segments[i].width_px) for i, e in jn.ends]
    best, best_bend = None, straight_max_deg
    m = len(jn.ends)
    for a in range(m):
        for b in range(a + 1, m):
            if segments[jn.ends[a][0]].kind != "vein" or segments[jn.ends[b][0]].kind != "vein":
                continue
            bend = _bend_deg(dirs[a], dirs[b])
            if bend <= best_bend:
                best, best_bend = (a, b), bend
    return best


def _arm_ratio(cal: np.ndarray, dist: np.ndarray, near: tuple[float, float], far: tuple[float, float],
               min_reach: float) -> float | None:
    """Near / far calibre of one arm, the larger of the half-maximum and the mask measure (both must show a
    narrowing): the narrowest calibre in the near window over the median in the far one. None when either
    window holds under 2 calibres or the arm stops ``min_reach`` short into the far window."""
    nsel = (dist >= near[0]) & (dist <= near[1])
    fsel = (dist >= far[0]) & (dist <= far[1])
    if not fsel.any() or float(dist[fsel].max() - far[0]) < min_reach:
        return None
    out = []
    for col in range(cal.shape[1]):
        n, f = cal[nsel, col], cal[fsel, col]
        n, f = n[np.isfinite(n)], f[np.isfinite(f)]
        if n.size < 2 or f.size < 2 or np.median(f) <= 0:
            return None
        out.append(float(np.min(n) / np.median(f)))
    return max(out)


def _skip(out: AvNicking, why: str) -> None:
    out.skipped[why] = out.skipped.get(why, 0) + 1


def find_av_nicking(segments: list[Segment], darkness: np.ndarray, vessel_mask: np.ndarray,
                    disc_xy: tuple[float, float] | None, dd_px: float, sc: float = 1.0,
                    exclude: np.ndarray | None = None, config: AvNickingConfig | None = None,
                    junctions: list[Junction] | None = None) -> AvNicking:
    """Count AV nicking at the arteriole/venule crossings of a typed vessel graph (see the module docstring).

    segments : the typed segments of ``grok.cfp.vessels.measure_vessels`` (``kind`` and ``width_px`` set);
    darkness / vessel_mask : the (h, w) maps their calibres were read from; disc_xy / dd_px : the disc
    (None / NaN: the disc-distance rule is skipped); sc : working scale (FOV radius / reference);
    exclude : (h, w) bool, detected lesions (crossings on them are skipped); junctions : the graph's
    junctions when already built (else ``vessel_graph``).
    """
    cfg = config or AvNickingConfig()
    out = AvNicking()
    if not any(s.kind for s in segments):
        out.reason = "no vessel segment is typed artery or vein: crossings cannot be read as arteriole over venule"
        return out
    have_disc = disc_xy is not None and np.isfinite(dd_px) and dd_px > 0
    if junctions is None:
        junctions, _ = vessel_graph(segments, disc_xy if have_disc else None, dd_px if have_disc else float("nan"))
    mask = vessel_mask.astype(np.float32)
    h, w_img = darkness.shape
    min_v = cfg.min_venule_px * sc
    for jn in junctions:
        m = len(jn.ends)
        if jn.kind in ("disc", "end") or m < 3:
            continue
        centre = np.asarray(jn.xy, float)
        if have_disc and math.hypot(centre[0] - disc_xy[0], centre[1] - disc_xy[1]) < cfg.min_disc_distance_dd * dd_px:
            continue
        pair = _venule_through(segments, jn, cfg.straight_max_deg)
        if pair is None:
            continue
        venule = [jn.ends[k] for k in pair]
        crossing = [jn.ends[k] for k in range(m) if k not in pair]
        if cfg.require_arteriole and not any(segments[i].kind == "artery" for i, _ in crossing):
            continue
        out.n_typed += 1
        x, y = int(round(centre[0])), int(round(centre[1]))
        if exclude is not None and 0 <= x < w_img and 0 <= y < h and exclude[y, x]:
            _skip(out, "on a lesion")
            continue
        wv = float(np.nanmedian([segments[i].width_px for i, _ in venule]))
        wa = float(np.nanmedian([segments[i].width_px for i, _ in crossing]))
        if not (np.isfinite(wv) and np.isfinite(wa)) or wv < min_v:
            _skip(out, "venule too thin")
            continue
        edge = 0.5 * wa
        near = (edge, edge + cfg.near_widths * wv)
        far = (edge + cfg.far_widths[0] * wv, edge + cfg.far_widths[1] * wv)
        smooth = max(int(round(cfg.smooth_widths * wv)), cfg.min_smooth_px)
        ratios = []
        for i, e in venule:
            cal, dist = _arm_calibres(segments[i], e, centre, darkness, mask, far[1] + 2, 1.5 * wv + 3, smooth)
            r = _arm_ratio(cal, dist, near, far, cfg.min_far_widths * wv)
            if r is None:
                break
            ratios.append(r)
        if len(ratios) != 2:
            _skip(out, "arm too short")
            continue
        if min(ratios) < cfg.min_ratio:
            _skip(out, "venule lost")
            continue
        out.crossings.append({"xy": [float(centre[0]), float(centre[1])], "venule_px": wv, "arteriole_px": wa,
                              "ratios": ratios, "nicked": bool(max(ratios) < cfg.max_ratio)})
    if not out.crossings:
        why = ", ".join(f"{n} {k}" for k, n in out.skipped.items())
        out.reason = (f"no arteriole/venule crossing could be assessed for AV nicking: {out.n_typed} away from "
                      f"the disc{' (' + why + ')' if why else ''}; a typed crossing with a venule at least "
                      f"{min_v:.1f} px wide and both its arms measurable is needed")
        return out
    out.count = sum(c["nicked"] for c in out.crossings)
    return out


# ------------------------------------------------------------------------------------------- venous beading
#: Vertical optic disc diameter (µm) taken as the photograph's scale when the disc is found (mean vertical
#: disc diameter of adults, ~1.8-1.9 mm; the phantom draws 1.8 mm); without a disc the field of view's
#: radius is taken as 3.6 disc diameters (a 45-degree field; ``FOV_RADIUS_UM``).
DISC_DIAMETER_UM = 1800.0
FOV_RADIUS_UM = 3.6 * DISC_DIAMETER_UM


def um_per_px(dd_px: float, fov_radius_px: float) -> float:
    """The photograph's scale, µm per (working) px: from the disc diameter when found, else from the field
    of view's radius; NaN when neither is known."""
    if np.isfinite(dd_px) and dd_px > 0:
        return DISC_DIAMETER_UM / float(dd_px)
    if np.isfinite(fov_radius_px) and fov_radius_px > 0:
        return FOV_RADIUS_UM / float(fov_radius_px)
    return float("nan")


@dataclass(frozen=True)
class VenousBeadingConfig:
    """Settings of ``find_venous_beading``. Lengths in µm (the photograph's scale, ``um_per_px``) unless the
    name ends in ``_dd`` (disc diameters) or ``_widths`` (the vein's median calibre)."""

    min_disc_distance_dd: float = 1.0
    """Vein centreline closer than this to the disc centre is not read (vessels converge and overlap there)."""
    min_fovea_distance_dd: float = 0.5
    """... nor closer than this to the fovea (no vein of beading calibre runs there; the dark macula reads as
    a wide faint vessel)."""
    min_vein_um: float = 60.0
    """Thinnest vein (median half-maximum calibre) whose calibre profile is read: a beaded venule of severe
    NPDR is a major vein or its first branches (~100-150 µm); under ~5 working px the profile is noise."""
    min_length_um: float = 400.0
    """Shortest stretch of vein (after ``end_trim_widths`` at each junction end) that is assessed: two beads
    and the constrictions around them need about 5 calibres."""
    end_trim_widths: float = 1.0
    """Calibres left out at a segment's junction ends (a branch or crossing widens the profile there)."""
    clear_widths: float = 0.5
    """A profile is read only where no other vessel segment's centreline comes within half the two calibres
    plus this many vein calibres of it (a crossing, a branch or a vessel alongside widens the profile)."""
    smooth_widths: float = 0.5
    """Calibres are read from the mean perpendicular profile over this many calibres along the vein (at
    least ``min_smooth_px``): it keeps a bead (2-3 calibres long) and averages JPEG blocks and noise."""
    min_smooth_px: int = 3
    baseline_widths: float = 12.0
    """The running median of the calibre over this many calibres is the vein's own calibre (beads are
    measured against it)."""
    min_widening: float = 1.08
    """A widening: a local maximum of the calibre at least this multiple of the running median, by both
    measures (half-maximum and vessel mask)."""
    max_constriction: float = 1.02
    """Between two widenings the calibre (mean of the two measures) falls back to at most this multiple of
    the running median: the vein narrows again (a sausage), not one long dilatation."""
    min_peak_to_valley: float = 1.2
    """... and each widening is at least this multiple of the constriction beside it (both measures)."""
    spacing_widths: tuple[float, float] = (1.5, 5.0)
    """Consecutive widenings are this many calibres apart (bead period)."""
    min_beads: int = 2
    """Widenings in one chain (consecutive, each pair separated by a constriction) for a beaded segment."""
    min_segments: int = 2
    """Fewer assessed vein segments than this: the count is None (too little vein to say "no beading")."""
    max_nan_share: float = 0.25
    """Segments with more of their profiles without a calibre are not assessed (the vein's profile lost)."""
    max_noise: float = 0.06
    """Segments whose calibre is read too unsteadily are not assessed: the two measures (half-maximum and
    mask width, each over its running median) read the same calibre, so the robust SD of their difference
    / sqrt(2) is the profile's own noise; over this a bead of +35 % cannot be told from noise. Added after
    the first real run (``benchmarks/cfp_venous_beading.py``: the real healthy eyes' false beads had a median
    noise of 0.068, the phantom's beads 0.040); CHASE_DB1's thin veins mostly fall out."""
    min_profile_ratio: float = 0.8
    """Segments whose calibre (mean of the two measures) drops under this fraction of its running median are
    not assessed: the profile was lost (a gap in the mask, a crossing's shadow, a blurred stretch), a dip
    deeper than a bead's constriction (0.85-0.92 on the phantom's beads; the real false beads' median was
    0.73). Added with ``max_noise``."""

    def __post_init__(self) -> None:
        if not (1 < self.min_widening and 0 < self.max_constriction < self.min_widening
                and self.min_peak_to_valley > 1):
            raise ValueError(f"VenousBeadingConfig.min_widening={self.min_widening!r}, max_constriction="
                             f"{self.max_constriction!r}, min_peak_to_valley={self.min_peak_to_valley!r}: need "
                             "1 < min_widening, 0 < max_constriction < min_widening, min_peak_to_valley > 1")
        lo, hi = self.spacing_widths
        if not 0 < lo < hi:
            raise ValueError(f"VenousBeadingConfig.spacing_widths={self.spacing_widths!r}: need 0 < low < high")
        if self.min_beads < 2:
            raise ValueError(f"VenousBeadingConfig.min_beads={self.min_beads!r}: beading is at least 2 widenings")


@dataclass
class VenousBeading:
    """count : beaded vein segments (None when not assessable); segments : every assessed vein segment as
    {"box_xyxy": [x1, y1, x2, y2] working px, "width_px", "length_px", "beads" (widenings in its longest
    chain), "peak_ratio" (its largest widening over the running median, the smaller of the two measures),
    "noise" (the profile's own noise, ``max_noise``), "min_ratio" (its lowest calibre over the running
    median), "beaded"}; n_veins : vein segments seen; skipped : {why: how many} of the vein segments not assessed; reason : why the count is None."""

    count: int | None = None
    segments: list[dict] = field(default_factory=list)
    n_veins: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    reason: str | None = None


def _fill_nan(x: np.ndarray) -> np.ndarray:
    ok = np.isfinite(x)
    if ok.all() or not ok.any():
        return x
    i = np.arange(len(x))
    return np.interp(i, i[ok], x[ok])


def _bead_chain(ratio_lo: np.ndarray, ratio_mid: np.ndarray, spacing: tuple[float, float],
                cfg: VenousBeadingConfig) -> tuple[int, list[int]]:
    """Widenings in the longest chain along a calibre profile (samples 1 px apart) and their positions.

    ratio_lo / ratio_mid : the smaller / the mean of the two measures' calibre over its running median,
    per sample. A widening is a local maximum of ``ratio_lo`` (both measures wide) of at least
    ``min_widening``; two consecutive ones (``spacing`` px apart) are chained when ``ratio_mid`` falls to
    ``max_constriction`` between them and each is ``min_peak_to_valley`` times that constriction (the
    mask's width moves in 0.5-px steps: the mean of the two measures reads a constriction steadier than
    either)."""
    n = len(ratio_lo)
    if n < 3:
        return 0, []
    lo, hi = spacing
    peaks = [i for i in range(1, n - 1) if ratio_lo[i] >= cfg.min_widening
             and ratio_lo[i] >= ratio_lo[i - 1] and ratio_lo[i] > ratio_lo[i + 1]]
    # of peaks closer than the shortest bead period keep the higher
    kept: list[int] = []
    for i in peaks:
        if kept and i - kept[-1] < lo:
            if ratio_lo[i] > ratio_lo[kept[-1]]:
                kept[-1] = i
            continue
        kept.append(i)
    best: list[int] = []
    chain: list[int] = kept[:1]
    for a, b in zip(kept, kept[1:]):
        valley = float(np.min(ratio_mid[a: b + 1]))
        linked = (lo <= b - a <= hi and valley <= cfg.max_constriction
                  and min(ratio_lo[a], ratio_lo[b]) >= cfg.min_peak_to_valley * valley)
        if linked:
            chain.append(b)
        else:
            chain = [b]
        if len(chain) > len(best):
            best = list(chain)
    if len(chain) > len(best):
        best = list(chain)
    return (len(best) if len(best) >= 2 else (1 if kept else 0)), best


def find_venous_beading(segments: list[Segment], darkness: np.ndarray, vessel_mask: np.ndarray,
                        disc_xy: tuple[float, float] | None, dd_px: float, um_px: float,
                        exclude: np.ndarray | None = None, fovea_xy: tuple[float, float] | None = None,
                        config: VenousBeadingConfig | None = None) -> VenousBeading:
    """Count beaded vein segments on a typed vessel graph.

    Along every vein segment (``kind == "vein"``) at least ``min_vein_um`` wide, ``min_disc_distance_dd``
    from the disc and ``min_length_um`` long after trimming its junction ends: the calibre every px (the
    half-maximum and the vessel mask width of the mean perpendicular profile over ``smooth_widths``
    calibres), each over its running median (``baseline_widths`` calibres); the segment is beaded when
    ``min_beads`` widenings (``min_widening`` x the median, both measures) follow each other
    ``spacing_widths`` calibres apart with a constriction between each pair (``_bead_chain``).

    segments : the typed segments of ``grok.cfp.vessels.measure_vessels``; darkness / vessel_mask : the
    (h, w) maps their calibres were read from; disc_xy / dd_px : the disc (None / NaN: the disc-distance
    rule is skipped); um_px : µm per px (``um_per_px``); exclude : (h, w) bool, detected lesions (profiles
    on them are dropped); fovea_xy : the fovea (None: that rule is skipped).
    """
    cfg = config or VenousBeadingConfig()
    out = VenousBeading()
    if not any(s.kind == "vein" for s in segments):
        out.reason = "no vessel segment is typed vein: the veins' calibre profiles cannot be read"
        return out
    if not (np.isfinite(um_px) and um_px > 0):
        out.reason = "the photograph's scale is unknown (no disc, no field of view): vein lengths cannot be set"
        return out
    have_disc = disc_xy is not None and np.isfinite(dd_px) and dd_px > 0
    mask = vessel_mask.astype(np.float32)
    h, w_img = darkness.shape
    min_w = cfg.min_vein_um / um_px
    # every segment's centreline, for the clearance from other vessels
    owner = np.concatenate([np.full(len(sg.xy), k) for k, sg in enumerate(segments)]) if segments else np.zeros(0, int)
    all_xy = np.vstack([sg.xy for sg in segments]) if segments else np.zeros((0, 2))
    all_w = np.concatenate([np.full(len(sg.xy), sg.width_px if np.isfinite(sg.width_px) else 3.0)
                            for sg in segments]) if segments else np.zeros(0)
    tree = cKDTree(all_xy) if len(all_xy) else None
    min_len = cfg.min_length_um / um_px

    def skip(why: str) -> None:
        out.skipped[why] = out.skipped.get(why, 0) + 1

    for k_seg, seg in enumerate(segments):
        if seg.kind != "vein":
            continue
        out.n_veins += 1
        wv = float(seg.width_px)
        if not np.isfinite(wv) or wv < min_w:
            skip("vein too thin")
            continue
        trim = cfg.end_trim_widths * wv
        if len(seg.xy) < min_len + 2 * trim:
            skip("too short")
            continue
        smooth = max(int(round(cfg.smooth_widths * wv)), cfg.min_smooth_px)
        cal, c, arc = _calibres_along(seg.xy, darkness, mask, 1.2 * wv + 3, smooth)
        if len(arc) == 0:
            skip("too short")
            continue
        keep = np.ones(len(arc), bool)
        if seg.ends[0] > 0:
            keep &= arc >= arc[0] + trim
        if seg.ends[1] > 0:
            keep &= arc <= arc[-1] - trim
        if have_disc:
            keep &= np.hypot(c[:, 0] - disc_xy[0], c[:, 1] - disc_xy[1]) >= cfg.min_disc_distance_dd * dd_px
        if fovea_xy is not None:
            keep &= (np.hypot(c[:, 0] - fovea_xy[0], c[:, 1] - fovea_xy[1])
                     >= cfg.min_fovea_distance_dd * DISC_DIAMETER_UM / um_px)
        if exclude is not None:
            xi = np.clip(np.round(c[:, 0]).astype(int), 0, w_img - 1)
            yi = np.clip(np.round(c[:, 1]).astype(int), 0, h - 1)
            keep &= ~exclude[yi, xi]
        if tree is not None:
            reach = 0.5 * wv + 0.5 * float(np.max(all_w)) + cfg.clear_widths * wv
            for i, near in enumerate(tree.query_ball_point(c, reach)):
                if not keep[i]:
                    continue
                for j in near:
                    if owner[j] != k_seg and math.hypot(*(all_xy[j] - c[i])) < 0.5 * (wv + all_w[j]) + cfg.clear_widths * wv:
                        keep[i] = False
                        break
        # the longest run of kept profiles
        lab, nlab = ndi.label(keep)
        if nlab == 0:
            skip("too short")
            continue
        sizes = np.bincount(lab)[1:]
        run = np.flatnonzero(lab == 1 + int(np.argmax(sizes)))
        if len(run) < min_len:
            skip("too short")
            continue
        cal, c = cal[run], c[run]
        if float(np.mean(~np.isfinite(cal).all(axis=1))) > cfg.max_nan_share:
            skip("profile lost")
            continue
        win = max(int(round(cfg.baseline_widths * wv)) | 1, 5)
        ratios = []
        for col in range(2):
            x = _fill_nan(cal[:, col])
            base = ndi.median_filter(x, size=win, mode="nearest")
            ratios.append(x / np.maximum(base, 1e-6))
        r_lo, r_mid = np.minimum(*ratios), 0.5 * (ratios[0] + ratios[1])
        # the two measures read the same calibre: their disagreement is the profile's measurement noise
        dev = ratios[0] - ratios[1]
        noise = 1.4826 * float(np.median(np.abs(dev - np.median(dev)))) / math.sqrt(2.0)
        if noise > cfg.max_noise:
            skip("calibre unsteady")
            continue
        if float(np.min(r_mid)) < cfg.min_profile_ratio:
            skip("profile lost")
            continue
        spacing = (cfg.spacing_widths[0] * wv, cfg.spacing_widths[1] * wv)
        n_beads, chain = _bead_chain(r_lo, r_mid, spacing, cfg)
        beaded = n_beads >= cfg.min_beads
        pts = c[chain[0]: chain[-1] + 1] if beaded else c
        half = 0.5 * float(np.nanmax(cal)) if np.isfinite(cal).any() else wv
        out.segments.append({
            "box_xyxy": [float(pts[:, 0].min() - half), float(pts[:, 1].min() - half),
                         float(pts[:, 0].max() + half + 1), float(pts[:, 1].max() + half + 1)],
            "width_px": wv, "length_px": float(len(run)), "beads": int(n_beads),
            "peak_ratio": float(np.max(r_lo)), "noise": noise, "min_ratio": float(np.min(r_mid)),
            "beaded": bool(beaded)})
    if len(out.segments) < cfg.min_segments:
        why = ", ".join(f"{n} {k}" for k, n in out.skipped.items())
        out.reason = (f"too few vein segments to assess venous beading: {len(out.segments)} of {out.n_veins} "
                      f"typed vein segments assessed{' (' + why + ')' if why else ''}; need "
                      f"{cfg.min_segments}, each at least {cfg.min_vein_um:.0f} µm wide and "
                      f"{cfg.min_length_um:.0f} µm long away from the disc")
        return out
    out.count = sum(s["beaded"] for s in out.segments)
    return out
