"""The words the verifier reads: biomarker, disease, lesion and unit names, built from the knowledge base.

Run as: python -c "from grok.knowledge.lexicon import build_lexicon; print(len(build_lexicon().biomarker_alias))"

Every alias points to canonical ids of the knowledge base (``grok.ids`` spellings); the hand-written
lists below only add the abbreviations and synonyms that clinicians write (CST, GC-IPL, CDR, ...).
A test checks that every id they name exists in the bundled knowledge base.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from grok.knowledge import load_knowledge_base

#: Extra names for biomarkers (lower case), beyond the knowledge base's ``name``.
BIOMARKER_SYNONYMS: dict[str, tuple[str, ...]] = {
    "macular_thickness_central_um": ("cst", "central subfield thickness", "central retinal thickness",
                                     "central macular thickness", "centre subfield thickness",
                                     "center subfield thickness", "central thickness", "central subfield",
                                     "centre subfield", "center subfield"),
    "macular_thickness_overall_um": ("overall macular thickness", "mean macular thickness",
                                     "average macular thickness", "macular thickness"),
    "macular_volume_mm3": ("macular volume",),
    "gcipl_thickness_um": ("gcipl", "gc-ipl", "ganglion cell-inner plexiform layer",
                           "ganglion cell inner plexiform layer", "ganglion cell layer"),
    # American spellings too: "retinal nerve fiber layer" alone names the peripapillary mean
    "rnfl_thickness_um": ("macular rnfl", "macular nerve fibre layer", "macular nerve fiber layer",
                          "macular retinal nerve fiber layer", "macular retinal nerve fiber layer thickness"),
    "rnfl_peripapillary_mean_um": ("peripapillary rnfl", "mean peripapillary rnfl", "rnfl", "nerve fibre layer",
                                   "nerve fiber layer", "retinal nerve fibre layer", "retinal nerve fiber layer"),
    "rnfl_peripapillary_superior_um": ("superior rnfl", "superior peripapillary rnfl"),
    "rnfl_peripapillary_inferior_um": ("inferior rnfl", "inferior peripapillary rnfl"),
    "rnfl_peripapillary_nasal_um": ("nasal rnfl", "nasal peripapillary rnfl"),
    "rnfl_peripapillary_temporal_um": ("temporal rnfl", "temporal peripapillary rnfl"),
    "inl_thickness_um": ("inl", "inner nuclear layer"),
    "rpe_thickness_um": ("rpe thickness", "retinal pigment epithelium"),
    "cup_disc_ratio_vertical": ("cup-to-disc ratio", "cup-disc ratio", "cup/disc ratio", "cup to disc ratio",
                                "vertical cup-to-disc ratio", "cdr", "vertical cdr", "c/d ratio", "vertical c/d ratio",
                                "c:d ratio", "cup:disc ratio", "c/d", "vertical c/d", "cup-disc", "cup/disc"),
    # "arteriolar" / "arterioles": the calibre that generalised arteriolar narrowing ("narrowed arterioles")
    # is graded on here; longer aliases ("arteriolar tortuosity", "arteriolar fractal dimension") win
    "av_ratio": ("av ratio", "a/v ratio", "avr", "arteriole-to-venule ratio", "arteriolar-to-venular ratio",
                 "arteriovenous ratio", "arteriolar", "arterioles"),
    "vessel_density": ("vessel density", "vascular density"),
    "arterial_tortuosity": ("arteriolar tortuosity", "arterial tortuosity"),
    "venular_tortuosity": ("venular tortuosity", "venous tortuosity"),
    # "... branching complexity": the fractal-dimension findings' own terms (knowledge_base/findings/cfp.yaml),
    # which must not be read as the bare "arteriolar" of the AV ratio above
    "arterial_fractal_dimension": ("arteriolar fractal dimension", "arterial fractal dimension",
                                   "arteriolar branching complexity"),
    "venular_fractal_dimension": ("venular fractal dimension", "venous fractal dimension",
                                  "venular branching complexity"),
    "subfoveal_choroidal_thickness_um": ("choroidal thickness", "subfoveal choroid", "choroid"),
    "foveal_pit_depth_um": ("foveal pit depth", "foveal pit"),
    "disc_diameter_vertical_mm": ("vertical disc diameter", "disc diameter"),
    "drusen_volume_3mm_mm3": ("drusen volume in the central 3 mm", "central 3 mm drusen volume"),
    "drusen_volume_5mm_mm3": ("drusen volume in the central 5 mm", "central 5 mm drusen volume", "drusen volume"),
    "irf_volume_nl": ("intraretinal fluid", "irf", "intraretinal fluid volume"),
    "srf_volume_nl": ("subretinal fluid", "srf", "subretinal fluid volume"),
    "ped_max_height_um": ("ped height", "pigment epithelial detachment", "pigment epithelium detachment", "ped",
                          "maximum ped height"),
    "ez_disruption_fraction": ("ellipsoid zone disruption", "ellipsoid zone", "ez disruption"),
    "hrf_count": ("hyperreflective foci", "hyperreflective focus"),
    "microaneurysm_count": ("microaneurysms", "microaneurysm"),
    "hemorrhage_count": ("haemorrhages", "hemorrhages", "haemorrhage", "hemorrhage", "retinal haemorrhages"),
    "hard_exudate_count": ("hard exudates", "hard exudate", "exudates"),
    "cotton_wool_spot_count": ("cotton-wool spots", "cotton wool spots", "cotton-wool spot", "cotton wool spot"),
    "drusen_count": ("drusen", "druse"),
}

#: Names of things that can be present or absent, with the findings that decide it.
PRESENCE_ENTITIES: dict[str, tuple[str, ...]] = {
    "subretinal fluid": ("srf_present",),
    "srf": ("srf_present",),
    "intraretinal fluid": ("irf_present",),
    "irf": ("irf_present",),
    "intraretinal cysts": ("irf_present",),
    "fluid": ("srf_present", "irf_present"),
    "pigment epithelial detachment": ("ped_present",),
    "pigment epithelium detachment": ("ped_present",),
    "ped": ("ped_present",),
    "drusen": ("drusen_present_oct", "drusen_present_cfp"),
    "sub-rpe drusen": ("drusen_present_oct",),
    "sub-rpe deposits": ("drusen_present_oct",),
    "drusen on oct": ("drusen_present_oct",),
    "drusen on the photograph": ("drusen_present_cfp",),
    "drusen on the fundus photograph": ("drusen_present_cfp",),
    "microaneurysms": ("microaneurysms_present",),
    "microaneurysm": ("microaneurysms_present",),
    "haemorrhages": ("hemorrhages_present",),
    "hemorrhages": ("hemorrhages_present",),
    "haemorrhage": ("hemorrhages_present",),
    "hemorrhage": ("hemorrhages_present",),
    "hard exudates": ("hard_exudates_present",),
    "exudates": ("hard_exudates_present",),
    "cotton-wool spots": ("cotton_wool_spots_present",),
    "cotton wool spots": ("cotton_wool_spots_present",),
    "hyperreflective foci": ("hrf_present",),
    "ellipsoid zone disruption": ("ez_disruption",),
    "geographic atrophy": ("geographic_atrophy_present",),
    "neovascularisation": ("neovascularisation_present",),
    "neovascularization": ("neovascularisation_present",),
    "arteriovenous nicking": ("av_nicking_present",),
    "av nicking": ("av_nicking_present",),
    "disc swelling": ("disc_swelling_present",),
    "optic disc swelling": ("disc_swelling_present",),
}

#: Extra names for disease categories (lower case), beyond the knowledge base's ``name`` and id.
DISEASE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "normal": ("normal eye", "normal retina", "normal fundus", "normal study", "healthy eye", "healthy retina",
               "no disease", "no retinal disease", "normal findings"),
    "amd": ("amd", "age-related macular degeneration", "age related macular degeneration", "macular degeneration",
            "neovascular amd", "atrophic amd"),
    "glaucoma": ("glaucoma", "glaucomatous optic neuropathy", "glaucomatous"),
    "diabetes": ("diabetes mellitus", "diabetes"),
    "hypertension": ("systemic hypertension", "hypertension", "hypertensive retinopathy", "hypertensive"),
    "alzheimers": ("alzheimer's disease", "alzheimer disease", "alzheimers disease", "alzheimer's", "alzheimers",
                   "alzheimer"),
    "diabetic_retinopathy": ("diabetic retinopathy", "dr", "npdr", "pdr", "proliferative diabetic retinopathy",
                             "non-proliferative diabetic retinopathy"),
    "dme": ("diabetic macular oedema", "diabetic macular edema", "dme", "macular oedema", "macular edema"),
    "rvo": ("retinal vein occlusion", "rvo", "branch retinal vein occlusion", "central retinal vein occlusion"),
    "csc": ("central serous chorioretinopathy", "central serous retinopathy", "csc", "cscr"),
}

#: Display names used by the templates (short, and each one an alias the verifier reads).
DISPLAY_NAMES: dict[str, str] = {
    "macular_thickness_central_um": "central subfield thickness (CST)",
    "macular_thickness_overall_um": "overall macular thickness",
    "gcipl_thickness_um": "GC-IPL thickness",
    "rnfl_peripapillary_mean_um": "mean peripapillary RNFL thickness",
    "cup_disc_ratio_vertical": "vertical cup-to-disc ratio",
    "av_ratio": "arteriole-to-venule ratio",
}

#: Unit spellings -> knowledge-base unit id, longest first when compiled.
UNIT_ALIASES: dict[str, str] = {
    "µm": "um", "μm": "um", "um": "um", "microns": "um", "micron": "um", "micrometres": "um", "micrometers": "um",
    "micrometre": "um", "micrometer": "um",
    "mm³": "mm3", "mm3": "mm3", "mm^3": "mm3", "cubic millimetres": "mm3", "cubic millimeters": "mm3",
    "nl": "nl", "nanolitres": "nl", "nanoliters": "nl", "nanolitre": "nl", "nanoliter": "nl",
    "µl": "ul", "μl": "ul", "ul": "ul", "microlitres": "ul", "microliters": "ul", "microlitre": "ul", "microliter": "ul",
    "mm": "mm", "millimetres": "mm", "millimeters": "mm", "millimetre": "mm", "millimeter": "mm",
    "px": "px", "pixels": "px", "pixel": "px",
    "%": "percent",
}

#: Factors to a base unit per quantity: lengths in µm, volumes in nl.
UNIT_BASE: dict[str, tuple[str, float]] = {
    "um": ("length", 1.0), "mm": ("length", 1000.0), "nl": ("volume", 1.0), "mm3": ("volume", 1000.0),
    "ul": ("volume", 1000.0),
    "px": ("pixels", 1.0),
}


def prefix_tree(words) -> dict:
    """``words`` as a nested dict by character; ``""`` marks where a word ends (the regex tries below)."""
    trie: dict = {}
    for w in words:
        node = trie
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = {}
    return trie


def _trie_pattern(words) -> str:
    """A regex alternation factored by common prefixes (much faster than a flat ``a|b|c`` of
    hundreds of names). Longer matches are preferred: a word that continues is tried before the
    shorter word ending here, and the word-boundary check after the group backtracks into it."""
    trie = prefix_tree(words)

    def build(node: dict) -> str:
        ends = "" in node
        branches = [re.escape(ch) + build(child) for ch, child in sorted(node.items()) if ch != ""]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if ends else body

    return build(trie)


#: Look-behind placed after the first (word) character of an alternative: "the character before
#: the match is not a word character", i.e. a leading ``\b``. Starting every alternative with a
#: literal character (or a digit) lets the regex engine skip positions where no alternative can
#: start, which is most of the speed of the scans below.
_WB = r"(?<!\w.)"


def _lead_trie(words, guard: str = _WB) -> str:
    """Prefix-factored alternation of ``words`` whose every branch starts with a literal character
    followed by ``guard`` (see :data:`_WB`); longer words are preferred, as in ``_trie_pattern``."""
    by_first: dict[str, list[str]] = {}
    for w in sorted(set(words)):
        by_first.setdefault(w[0], []).append(w[1:])
    alts = []
    for c, rests in by_first.items():
        tail = [r for r in rests if r]
        body = _trie_pattern(tail) if tail else ""
        if tail and "" in rests:
            body = f"(?:{body})?"
        alts.append(re.escape(c) + guard + body)
    return "(?:" + "|".join(alts) + ")"


def _alias_regex(aliases) -> re.Pattern:
    words = sorted({a.lower() for a in aliases})
    return re.compile(rf"(?<![\w-])(?:{_trie_pattern(words)})(?![\w-])")


@dataclass
class Lexicon:
    """Alias tables and compiled patterns; build once per knowledge base with :func:`build_lexicon`."""

    biomarker_alias: dict[str, tuple[str, ...]]
    disease_alias: dict[str, str]
    disease_names: dict[str, str]
    presence_alias: dict[str, tuple[str, ...]]
    biomarker_units: dict[str, str]
    biomarker_names: dict[str, str]
    biomarker_decimals: dict[str, int]
    unit_symbols: dict[str, str]
    #: The three patterns below match lower-case text only (the verifier lower-cases first).
    biomarker_re: re.Pattern = field(repr=False, default=None)
    disease_re: re.Pattern = field(repr=False, default=None)
    presence_re: re.Pattern = field(repr=False, default=None)

    def display_name(self, biomarker: str) -> str:
        """How templates name ``biomarker`` (always an alias the verifier recognises)."""
        if biomarker in DISPLAY_NAMES:
            return DISPLAY_NAMES[biomarker]
        name = self.biomarker_names[biomarker]
        return name[0].lower() + name[1:] if name[:2] != name[:2].upper() else name


def _kb_name_aliases(name: str) -> list[str]:
    low = name.lower()
    out = [low]
    stripped = re.sub(r"\s*\([^)]*\)", "", low).strip()
    if stripped != low:
        out.append(stripped)
    return out


@lru_cache(maxsize=8)
def _build(snapshot_id: str, kb_key: int) -> Lexicon:  # kb_key keeps distinct KB objects apart
    kb = _KB_BY_KEY[kb_key]
    balias: dict[str, set[str]] = {}
    for bid, b in kb.biomarkers.items():
        if b.value_kind == "position":
            continue
        for a in _kb_name_aliases(b.name):
            balias.setdefault(a, set()).add(bid)
    for bid, syns in BIOMARKER_SYNONYMS.items():
        if bid not in kb.biomarkers:
            continue
        for a in syns:
            balias.setdefault(a.lower(), set()).add(bid)
    for bid, disp in DISPLAY_NAMES.items():
        if bid in kb.biomarkers:
            balias.setdefault(disp.lower(), set()).add(bid)
            for a in _kb_name_aliases(disp):
                balias.setdefault(a, set()).add(bid)
    dalias: dict[str, str] = {}
    dnames: dict[str, str] = {}
    for did, d in kb.diseases.items():
        dnames[did] = d.name
        if did != "normal":
            for a in _kb_name_aliases(d.name):
                dalias.setdefault(a, did)
            dalias.setdefault(did.replace("_", " "), did)
    for did, syns in DISEASE_SYNONYMS.items():
        if did in kb.diseases:
            for a in syns:
                dalias[a.lower()] = did
    palias = {a: tuple(f for f in fs if f in kb.findings) for a, fs in PRESENCE_ENTITIES.items()}
    palias = {a: fs for a, fs in palias.items() if fs}
    lex = Lexicon(
        biomarker_alias={a: tuple(sorted(s)) for a, s in balias.items()},
        disease_alias=dalias,
        disease_names=dnames,
        presence_alias=palias,
        biomarker_units={bid: b.unit for bid, b in kb.biomarkers.items()},
        biomarker_names={bid: b.name for bid, b in kb.biomarkers.items()},
        biomarker_decimals={bid: b.decimals for bid, b in kb.biomarkers.items()},
        unit_symbols={uid: u.symbol for uid, u in kb.units.items()},
    )
    lex.biomarker_re = _alias_regex(lex.biomarker_alias)
    lex.disease_re = _alias_regex(lex.disease_alias)
    lex.presence_re = _alias_regex(lex.presence_alias)
    return lex


_KB_BY_KEY: dict[int, object] = {}


def build_lexicon(kb=None) -> Lexicon:
    """The lexicon of ``kb`` (default: the bundled knowledge base); cached per knowledge base."""
    if kb is None:

        kb = _default_kb()
    key = id(kb)
    _KB_BY_KEY[key] = kb
    return _build(kb.snapshot_id, key)


@lru_cache(maxsize=1)
def _default_kb():
    return load_knowledge_base()
