"""Image quality grade for fundus photographs: good | usable | reject, with reasons.

In the spirit of the EyeQ grading GROK used, from measurable properties rather than a trained model:
field-of-view coverage and shape, exposure (under/over, saturation), colour (greyscale / red-free /
an OCT B-scan by mistake), illumination evenness, sharpness (focus) and vessel contrast.
Thresholds are listed in ``QualityThresholds`` and documented in docs/cfp.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage as ndi

from grok.cfp._kernels import block_mean
from grok.cfp.preprocess import erode


@dataclass(frozen=True)
class QualityThresholds:
    """Limits of the quality rules (fractions of full scale unless stated)."""

    min_fov_coverage: float = 0.15
    """FOV area / image area below which the frame holds no usable fundus (reject)."""
    min_circularity_reject: float = 0.5
    min_circularity_usable: float = 0.72
    max_saturated_reject: float = 0.4
    """Share of FOV pixels with all channels >= 0.97 above which the frame is over-exposed (reject)."""
    max_saturated_usable: float = 0.04
    min_mean_luminance_reject: float = 0.05
    min_mean_luminance_usable: float = 0.12
    max_illumination_cv_usable: float = 0.28
    """Coefficient of variation of the coarse background over the FOV (uneven illumination)."""
    max_illumination_cv_reject: float = 0.55
    min_sharpness_usable: float = 0.55
    """Fine-to-coarse gradient ratio (1-px vs 3-px scale) of the green channel."""
    min_sharpness_reject: float = 0.42
    """0.35 until issue #14's bad-input checks: a Gaussian blur of 5 px (x FOV radius / 480) left real
    photographs at 0.37-0.40, graded usable with AV ratios 0.3 off; originals of CHASE_DB1 and HRF 0.53-0.81."""
    min_sharpness_calibre: float = 0.50
    """Below this, vessel calibres are widened by blur (AV ratio, vessel density): those are NaN with the reason."""
    max_sharpness_reject: float = 1.5
    """Above this the finest scale is dominated by noise (real photographs 0.53-0.81, the 512-px phantom 1.24;
    grain of 40/255 on real photographs: 1.3 (HRF, 3504 px) to 2.0 (CHASE_DB1, 999 px))."""
    min_vessel_density_usable: float = 0.035
    min_vessel_density_reject: float = 0.01
    max_aspect_ratio: float = 1.8
    max_non_fundus_colour: float = 0.10
    """Share of FOV pixels whose red chromaticity R / (R + G + B) is under ``FUNDUS_RED_CHROMATICITY`` above
    which the image is not a colour fundus photograph (reject): 0-0.012 on the 73 CHASE_DB1/HRF photos and
    ``skimage.data.retina()`` (0.018 with grain of 40/255); 0.27 (coffee) to 1.0 on scikit-image's everyday photographs."""

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if not (isinstance(v, (int, float)) and v >= 0):
                raise ValueError(f"QualityThresholds.{k}={v!r} must be a non-negative number")


@dataclass
class Quality:
    grade: str = "good"
    reasons: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)

    def add(self, level: str, reason: str) -> None:
        """Record a problem: level 'usable' or 'reject'; the grade only gets worse."""
        self.reasons.append(reason)
        order = {"good": 0, "usable": 1, "reject": 2}
        if order[level] > order[self.grade]:
            self.grade = level

    def to_dict(self) -> dict:
        return {"grade": self.grade, "reasons": list(self.reasons)}


def sharpness_ratio(green: np.ndarray, mask: np.ndarray, sc: float) -> float:
    """Ratio of the 95th-percentile scale-normalised gradient at ~1 px to that at ~3 px (x sc).

    Blur removes the fine scale first, so the ratio falls with defocus (dimensionless; ~0.6-1 sharp).
    The coarse scale is measured on a 2 x 2 block-averaged copy at half the sigma (the same quantity,
    scale-normalised, for a quarter of the work); percentiles use every other inner-FOV pixel.
    """

    inner = erode(mask, max(int(10 * sc), 1))
    if inner.sum() < 100:
        return float("nan")
    fine = max(1.0 * sc, 1.0)  # below one pixel a Gaussian derivative no longer measures anything
    g = np.asarray(green, np.float32)
    gm = ndi.gaussian_gradient_magnitude(g, fine) * fine
    v_fine = float(np.percentile(gm[inner][::2], 95))
    half = block_mean(g, 2)
    ih = inner[: half.shape[0] * 2: 2, : half.shape[1] * 2: 2]
    gm2 = ndi.gaussian_gradient_magnitude(half, 1.5 * fine) * (1.5 * fine)
    v_coarse = float(np.percentile(gm2[ih][::2], 95)) if ih.any() else float("nan")
    return v_fine / max(v_coarse, 1e-9)


#: A fundus is lit through red-dominated tissue: its pixels keep R / (R + G + B) above this (the pale disc ~0.5).
FUNDUS_RED_CHROMATICITY = 0.5
#: Blocks whose mean red reaches this are left out of the colour test (a clipped red channel, not the tissue).
RED_CLIPPED = 0.97


def non_fundus_colour_share(rgb: np.ndarray, mask: np.ndarray) -> float:
    """Share of ``mask`` pixels of ``rgb`` (h, w, 3) float whose red chromaticity is under
    ``FUNDUS_RED_CHROMATICITY``, on 4 x 4 block means (grain and JPEG chroma noise averaged out) whose red is
    not clipped: near 0 for any colour fundus photograph, large for other photographs; NaN when no block is left."""
    f = 4
    m = block_mean(np.asarray(mask, np.float32), f) > 0.99
    if not m.any():
        return float("nan")
    ch = [block_mean(np.ascontiguousarray(rgb[..., c], dtype=np.float32), f)[m] for c in range(3)]
    ok = ch[0] < RED_CLIPPED  # where red is clipped (over-exposure) its share says nothing about the tissue
    if not ok.any():
        return float("nan")
    r = ch[0][ok] / np.maximum(ch[0][ok] + ch[1][ok] + ch[2][ok], 1e-6)
    return float(np.mean(r < FUNDUS_RED_CHROMATICITY))


def illumination_cv(lum_bg: np.ndarray, mask: np.ndarray) -> float:
    """Coefficient of variation of a coarse background over the inner FOV."""
    inner = erode(mask, 5)
    v = lum_bg[inner] if inner.any() else lum_bg[mask]
    return float(np.std(v) / max(np.mean(v), 1e-6)) if v.size else float("nan")
