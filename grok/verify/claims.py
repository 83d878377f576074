"""How an answer speaks of a diagnosis, a stage or a lesion: stated, hedged, negated, or only named.

Run as: python -c "from grok.verify.claims import disease_polarity as p; print(p('the picture suggests ', ''))"

The verifier finds disease, stage and lesion names with the lexicon's patterns; the functions here
read the words around one name (the text of its clause before and after it) and say what the
answer claims about it:

* ``"stated"``: the answer puts it forward as the diagnosis, however hedged ("Diagnosis: X",
  "suggests X", "consistent with X", "in keeping with X", "points to X", "we favour X", "likely X",
  "X is the most likely", a terse answer that is just "X.").
* ``"negated"``: "no X", "without X", "rules out X", "X is unlikely / less likely / not supported /
  excluded", "rather than X".
* ``"possible"``: kept open, not claimed: "cannot exclude X", "X cannot be ruled out", "X remains in
  the differential", "X also has supporting findings", "possible X".
* ``None``: named without a claim ("X cannot be assessed further from these images").

What follows the name is read first ("X is unlikely", "X cannot be excluded"), then what precedes
it; on each side hedges before negations before statements, so "cannot exclude X" is open and
"not consistent with X" negated. The rules are plain word lists; each list is written out below.
"""

from __future__ import annotations

import re
from functools import lru_cache

from grok.knowledge.lexicon import _lead_trie

#: After the name: it is kept open.
#: A coordinated head word after a name ("a normal fundus and macula is ...") is skipped.
_AND = r"(?:and [\w-]+\s+)?"
_POSSIBLE_AFTER = re.compile(
    r"^[\s,:]*(?:\([^()]{0,120}(?:\([^()]*\)[^()]{0,80})*\)\s*)?" + _AND + r"(?:(?:is|are)\s+)?(?:also\s+|still\s+)?"
    r"(?:cannot|can't|can not|could not|may not)\s+be\s+(?:fully\s+|completely\s+|entirely\s+|confidently\s+)?"
    r"(?:excluded|ruled out)|^[\s,:]*" + _AND + r"(?:(?:is|are)\s+)?(?:also\s+|still\s+)?(?:not (?:excluded|ruled out)|"
    r"remains? (?:possible|in the differential|a possibility|on the differential)|(?:is|are) (?:possible|"
    r"a possibility|in the differential)|also has supporting|has supporting|should be considered|"
    r"(?:is|are) worth considering|would need)")
#: After the name: it is negated.
_NEG_AFTER = re.compile(
    r"^[\s,:–—-]*(?:\([^()]{0,120}(?:\([^()]*\)[^()]{0,80})*\)\s*)?" + _AND
    + r"(?:(?:is|are|was|seems|appears|looks|would be|remains|becomes|being|can be|could be|may be|has been|"
    r"have been|is being)\s+)?(?:(?:very|much|far|considerably|somewhat|also|therefore|thus|then|clinically)\s+)?"
    r"(?:less likely|unlikely|improbable|doubtful|not\b|ruled out|excluded|absent)")
#: After the name: it is put forward as the diagnosis.
_POS_AFTER = re.compile(
    r"^[\s,]*(?:\([^()]{0,120}(?:\([^()]*\)[^()]{0,80})*\)\s*)?(?:(?:damage|changes|disease|features|signs)\s+)?" + _AND
    + r"(?:(?:category\s+)?(?:is|seems|appears|remains)\s+"
    r"(?:(?:therefore|thus|clearly|by far)\s+)?(?:the\s+)?(?:most\s+|more\s+|very\s+|highly\s+|quite\s+)?"
    r"(?:likely|probable|favou?red|suggested|supported|(?:the\s+)?(?:diagnosis|likeliest|leading|best|working|"
    r"unifying|most likely)|present|evident|confirmed)|fits best|best fits|is what (?:this|the)|"
    r"(?:is\s+|sits\s+|goes\s+)?(?:at\s+)?(?:the\s+)?top of (?:the|my) differential|heads the differential|"
    r"leads the differential)")
_GAP2 = r"\s+(?:[\w'’-]+\s+){0,2}$"
_GAP3 = r"\s+(?:[\w'’-]+\s+){0,3}$"
#: Before the name: it is kept open ("cannot exclude X", "possible X", "X or Y"). Every cue list is
#: written as literal words (``_lead_trie``) so the regex engine skips positions where none starts.
_POSSIBLE_BEFORE = re.compile(
    _lead_trie(("cannot", "can't", "can not", "could not", "unable to", "not able to"))
    + r"\s+(?:be\s+)?(?:(?:fully|completely|entirely|confidently)\s+)?(?:exclude|rule out|ruled out|excluded)" + _GAP3
    + "|" + _lead_trie(("possible", "possibly", "may be", "might be", "could be", "differential includes",
                        "differential diagnosis includes", "consider", "considering", "considered", "versus", "vs",
                        "vs.", "or")) + _GAP2)
#: Before the name: a comparison ("less likely than X", "more consistent with Y than X").
_THAN_BEFORE = re.compile(r"\b(less|more) (?:likely|probable|consistent with [\w'’ -]{1,40}?|in keeping with "
                          r"[\w'’ -]{1,40}?) than\s+(?:[\w'’-]+\s+){0,2}$")
#: Before the name: it is negated (a negator at most three words before it).
_NEG_BEFORE = re.compile(_lead_trie((
    "no", "not", "without", "nor", "neither", "against", "exclude", "excludes", "excluded", "excluding", "rule out",
    "rules out", "ruled out", "ruling out", "rather than", "instead of", "absence of", "free of", "lack of",
    "unlikely", "less likely", "inconsistent with", "not in keeping with", "argue against", "argues against")) + _GAP3)
#: Before the name: it is put forward (a cue at most four words before it, no sentence punctuation between).
_POS_BEFORE = re.compile(_lead_trie((
    "diagnosis", "diagnoses", "diagnosed", "answer", "impression", "conclusion", "assessment", "suggest", "suggests",
    "suggestive of", "suggesting", "consistent with", "compatible with", "in keeping with", "in line with",
    "point to", "points to", "point towards", "points towards", "pointing to", "indicate", "indicates",
    "indicative of", "indicating", "favour", "favours", "favor", "favors", "favoured", "favored", "favouring",
    "favoring", "support", "supports", "likely", "probable", "probably", "presumed", "presumably", "suspected",
    "suspect", "typical of", "characteristic of", "diagnostic of", "features of", "picture of", "appearance of",
    "signs of", "represent", "represents", "representing", "reflect", "reflects", "best described as",
    "best described by", "best explained as", "best explained by", "this is", "these are", "think", "believe",
    "working diagnosis", "due to", "secondary to", "caused by", "has", "have", "show", "shows", "established",
    "confirm", "confirms", "confirmed", "most likely", "most consistent with", "category", "look like", "looks like",
    "appears to be", "seems to be", "in favour of", "in favor of", "fits with", "suspicion for", "suspicion of",
    "suspicious for", "concerning for", "concern for", "worrying for", "raises the possibility of", "graded as", "classed as",
    "classified as", "categorised as", "categorized as", "is that of", "are those of", "grade", "grading",
    "staging", "classification"))
    + r"\s*[:—–-]?\s+(?:[\w'’-]+\s+|\([^()]{0,40}\)\s+){0,4}$")
#: A name that opens its clause and ends it or is followed by punctuation or "with/given/...": a terse
#: answer ("Glaucoma.", "Glaucoma, given the enlarged cup").
_TERSE_AFTER = re.compile(r"^\s*(?:$|[.;,:!(–—-]|(?:with|given|based on|because|due to|secondary to|on the basis|"
                          r"in view)\b)|^(?:\s+[\w'’-]+){1,2}\s*(?:$|[.;,:!(])")
_TERSE_BEFORE = re.compile(r"^[\s*•\-–—#>\d.)]*(?:\*\*)?(?:[\w'’-]+\s+|\([^()]{0,40}\)\s+){0,3}$")
_WINDOW = 80


def disease_polarity(before: str, after: str) -> str | None:
    """What the answer claims about a disease named between ``before`` and ``after`` (its clause's
    text on each side, lower case): ``"stated"``, ``"negated"``, ``"possible"`` or None."""
    return _polarity(before[-_WINDOW:], after[:_WINDOW + 60])


@lru_cache(maxsize=1 << 16)
def _polarity(before: str, after: str) -> str | None:
    """:func:`disease_polarity` of the windows it reads (cached: generated rows repeat their sentences)."""
    if _POSSIBLE_AFTER.match(after):
        return "possible"
    if _NEG_AFTER.match(after):
        return "negated"
    if _POS_AFTER.match(after):
        return "stated"
    if _POSSIBLE_BEFORE.search(before):
        return "possible"
    m = _THAN_BEFORE.search(before)
    if m is not None:  # "glaucoma is less likely than AMD": AMD is put forward; "more likely than X": X is not
        return "stated" if m.group(1) == "less" else "negated"
    if _NEG_BEFORE.search(before):
        return "negated"
    if _POS_BEFORE.search(before):
        return "stated"
    if _TERSE_BEFORE.match(before) and _TERSE_AFTER.match(after):
        return "stated"
    return None


#: Words that mark a second diagnosis as coexisting rather than competing ("also", "coexisting").
COEXIST_RE = re.compile(r"\b(?:also|coexist\w*|co-exist\w*|additionally|in addition|as well|concurrent\w*|"
                        r"concomitant|associated|alongside|together with|plus)\b")

#: Stage words per disease: class -> phrases (lower case). A stage name of the knowledge base is read
#: with the same lists (its first phrase found gives its class), so the lists only need the words
#: clinicians write, not the knowledge base's exact names.
STAGE_WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "amd": {
        "late": ("late amd", "late-stage amd", "advanced amd", "neovascular amd", "wet amd", "exudative amd",
                 "late age-related macular degeneration", "advanced age-related macular degeneration",
                 "neovascular age-related macular degeneration", "wet age-related macular degeneration",
                 "late age related macular degeneration", "neovascular or atrophic"),
        "intermediate": ("intermediate amd", "intermediate-stage amd", "intermediate age-related macular degeneration",
                         "intermediate age related macular degeneration"),
        "early": ("early amd", "early-stage amd", "early age-related macular degeneration",
                  "early age related macular degeneration"),
        "ageing": ("normal ageing changes", "normal aging changes"),
    },
    "diabetic_retinopathy": {
        "proliferative": ("proliferative diabetic retinopathy", "proliferative retinopathy", "pdr"),
        "severe": ("severe npdr", "severe non-proliferative", "severe nonproliferative"),
        "moderate": ("moderate npdr", "moderate non-proliferative", "moderate nonproliferative"),
        "mild": ("mild npdr", "mild non-proliferative", "mild nonproliferative", "mild diabetic retinopathy",
                 "minimal diabetic retinopathy"),
        "none": ("no apparent retinopathy",),
    },
    "hypertension": {
        "malignant": ("malignant hypertensive", "accelerated hypertensive", "malignant hypertension",
                      "kwb grade iv", "keith-wagener-barker grade iv", "grade iv hypertensive", "grade 4 hypertensive"),
        "moderate": ("moderate hypertensive", "kwb grade iii", "grade iii hypertensive", "grade 3 hypertensive",
                     "keith-wagener-barker grade iii"),
        "mild": ("mild hypertensive", "kwb grade ii", "kwb grade i", "grade ii hypertensive", "grade i hypertensive",
                 "grade 1 hypertensive", "grade 2 hypertensive", "keith-wagener-barker grade ii",
                 "keith-wagener-barker grade i"),
        "none": ("no hypertensive retinopathy signs",),
    },
    "glaucoma": {
        "advanced": ("advanced glaucoma", "advanced structural damage", "end-stage glaucoma", "severe glaucoma",
                     "advanced glaucomatous"),
        "damage": ("glaucomatous structural damage", "moderate glaucoma", "established glaucoma",
                   "moderate glaucomatous"),
        "suspect": ("glaucoma suspect", "suspected glaucoma", "suspicious for glaucoma", "early glaucoma"),
    },
    "dme": {
        "centre": ("centre-involved", "center-involved", "centre involving", "center involving", "ci-dme",
                   "centre-involving", "center-involving"),
        "non_centre": ("non-centre-involved", "non-center-involved", "non-centre involving", "non-central",
                       "without central subfield thickening", "non-ci-dme"),
    },
}
#: Words just before a disease name that give its stage ("late-stage (neovascular) AMD", "moderate
#: non-proliferative diabetic retinopathy"): disease -> word -> class of ``STAGE_WORDS``.
STAGE_MODIFIERS: dict[str, dict[str, str]] = {
    "amd": {"late": "late", "late-stage": "late", "advanced": "late", "neovascular": "late", "wet": "late",
            "exudative": "late", "intermediate": "intermediate", "intermediate-stage": "intermediate",
            "early": "early", "early-stage": "early"},
    "diabetic_retinopathy": {"proliferative": "proliferative", "severe": "severe", "moderate": "moderate",
                             "mild": "mild", "minimal": "mild"},
    "hypertension": {"malignant": "malignant", "accelerated": "malignant", "moderate": "moderate", "mild": "mild"},
    "glaucoma": {"advanced": "advanced", "end-stage": "advanced", "severe": "advanced", "moderate": "damage",
                 "established": "damage"},
}
_TOKENS = re.compile(r"[\w'’-]+")


def stage_modifier(disease: str, before: str) -> str | None:
    """The stage class given by the (at most three) words just before a name of ``disease``, with
    words in parentheses counted ("late-stage (neovascular) amd" -> "late"); None when none is given."""
    return _stage_modifier(disease, before[-60:]) if disease in STAGE_MODIFIERS else None


@lru_cache(maxsize=1 << 14)
def _stage_modifier(disease: str, tail: str) -> str | None:
    mods = STAGE_MODIFIERS[disease]
    cut = max(tail.rfind(","), tail.rfind(":"), tail.rfind(";"))
    for tok in reversed(_TOKENS.findall(tail[cut + 1:])[-3:]):
        if tok in mods:
            return mods[tok]
    return None


#: Stage classes a stage name also allows ("moderate NPDR or worse" allows a claim of severe NPDR).
STAGE_ALSO_ALLOWS = {("diabetic_retinopathy", "moderate"): ("severe",)}


#: Lesions and signs the pipeline never measures, so no record can support a claim that one is
#: present (a macular hole, an epiretinal membrane, a vitreous haemorrhage, ...).
UNMEASURED_LESIONS: tuple[str, ...] = (
    "macular hole", "full-thickness macular hole", "lamellar hole", "lamellar macular hole", "epiretinal membrane",
    "vitreomacular traction", "retinal detachment", "rhegmatogenous detachment", "retinal tear", "retinal break",
    "vitreous haemorrhage", "vitreous hemorrhage", "subretinal haemorrhage", "subretinal hemorrhage",
    "choroidal neovascularisation", "choroidal neovascularization", "choroidal neovascular membrane", "cnv",
    "cnvm", "disc haemorrhage", "disc hemorrhage", "drance haemorrhage", "drance hemorrhage", "disciform scar",
    "macular scar", "fibrotic scar", "laser scars", "laser scar", "photocoagulation scars", "choroidal naevus",
    "choroidal nevus", "retinoschisis", "hollenhorst plaque", "retinal emboli", "retinal embolus",
    "disc pallor", "optic disc pallor", "optic atrophy", "macular star", "reticular pseudodrusen",
    "subretinal drusenoid deposits", "vitelliform lesion", "cystoid macular oedema", "cystoid macular edema",
    "peripapillary atrophy", "myopic degeneration", "lacquer cracks", "posterior staphyloma",
)
#: A lesion name is kept open or asked about, not claimed.
LESION_HEDGE_BEFORE = re.compile(
    _lead_trie(("cannot", "can't", "could not", "unable to")) + r"\s+(?:be\s+)?(?:fully\s+)?(?:exclude|rule out)"
    + _GAP2 + "|" + _lead_trie(("possible", "possibly", "suspected", "suspicious for", "query", "rule out",
                                "to exclude", "exclude", "whether", "any", "if")) + _GAP2)
LESION_NEG_BEFORE = re.compile(_lead_trie((
    "no", "not", "without", "nor", "neither", "absence of", "free of", "lack of", "absent", "rather than", "exclude",
    "excludes", "excluded", "rule out", "rules out", "ruled out")) + _GAP3)
LESION_NEG_AFTER = re.compile(r"^[\s,:–—-]*(?:(?:is|are|was|were)\s+)?(?:absent|not\b|none|ruled out|excluded)")
