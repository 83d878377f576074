"""Canonical identifiers shared by every table (see DESIGN.md, "Canonical records").

Ids are snake_case with the unit as suffix. The knowledge base owns the full catalogue
(names, units, normal ranges, sources); this module only fixes the spellings that code
needs at import time, so a typo is an ``ImportError`` rather than a silent empty column.
"""

from __future__ import annotations

#: OCT layer boundaries, top to bottom. EZ is the IS/OS junction, RPE the inner edge of the
#: RPE band, BM Bruch's membrane. Total retinal thickness is ILM -> BM.
BOUNDARIES: tuple[str, ...] = (
    "ILM",
    "RNFL_GCL",
    "IPL_INL",
    "INL_OPL",
    "OPL_ONL",
    "ELM",
    "EZ",
    "RPE",
    "BM",
)

#: GROK's six disease categories plus Normal.
CATEGORIES: tuple[str, ...] = (
    "normal",
    "amd",
    "glaucoma",
    "diabetes",
    "hypertension",
    "alzheimers",
    "diabetic_retinopathy",
)

LATERALITIES: tuple[str, ...] = ("OD", "OS")
MODALITIES: tuple[str, ...] = ("cfp", "oct")

_RINGS = ("inner", "outer")
_QUADRANTS = ("superior", "nasal", "inferior", "temporal")
_BANDS = ("inl_elm", "elm_isos", "isos_rpe", "inl_rpe")
_BAND_REGIONS = ("central", "inner", "outer", "average")

#: The 31 UK Biobank derived macular measures GROK used (category 100079), in a fixed order.
OCT_GROK_BIOMARKERS: tuple[str, ...] = (
    "macular_thickness_overall_um",
    "macular_thickness_central_um",
    *(f"macular_thickness_{r}_{q}_um" for r in _RINGS for q in _QUADRANTS),
    *(f"{b}_thickness_{g}_um" for b in _BANDS for g in _BAND_REGIONS),
    "rnfl_thickness_um",
    "gcipl_thickness_um",
    "inl_thickness_um",
    "rpe_thickness_um",
    "disc_diameter_vertical_mm",
)

#: Macular measures beyond GROK.
OCT_EXTRA_BIOMARKERS: tuple[str, ...] = (
    "macular_volume_mm3",
    "foveal_pit_depth_um",
    "drusen_volume_3mm_mm3",
    "drusen_volume_5mm_mm3",
    "irf_volume_nl",
    "srf_volume_nl",
    "ped_max_height_um",
    "hrf_count",
    "subfoveal_choroidal_thickness_um",
    "ez_disruption_fraction",
    "geographic_atrophy_count",
)

OCT_PERIPAPILLARY_BIOMARKERS: tuple[str, ...] = tuple(
    f"rnfl_peripapillary_{s}_um" for s in ("mean", "superior", "nasal", "inferior", "temporal")
)

CFP_LESION_TYPES: tuple[str, ...] = (
    "hemorrhage",
    "microaneurysm",
    "hard_exudate",
    "cotton_wool_spot",
    "drusen",
)

#: Vessel signs counted on the vessel graph (``grok.cfp.vessel_signs``), not by the lesion detector: each
#: has its ``<type>_count`` biomarker; AV nicking also one box per nick in the photograph's lesion list
#: (venous beading's segments only in the measure's extras: not specific on real photographs).
CFP_VESSEL_SIGN_TYPES: tuple[str, ...] = ("av_nicking", "venous_beading")

CFP_BIOMARKERS: tuple[str, ...] = (
    "disc_center_xy_px",
    "disc_diameter_px",
    "fovea_center_xy_px",
    "cup_disc_ratio_vertical",
    "vessel_density",
    "av_ratio",
    "arterial_tortuosity",
    "venular_tortuosity",
    "arterial_fractal_dimension",
    "venular_fractal_dimension",
    *(f"{t}_count" for t in CFP_LESION_TYPES),
    *(f"{t}_count" for t in CFP_VESSEL_SIGN_TYPES),
)
