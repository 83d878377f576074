"""Write the verifier's adversarial corpus: right and wrong answers over real pipeline records.

Run as: .venv/bin/python scripts/make_verifier_cases.py [--records-from BUILD/records.jsonl] [--seed 0]

Records (``tests/data/verifier_records.jsonl``): the records stage's output for the phantom demo
build (``grok demo``; pass its ``records.jsonl`` with ``--records-from`` to refresh them) plus
``grok.instruct.samples.sample_records(24, seed=3)`` (synthetic values, reasoning computed by the
same reasoner), so every category and stage of the knowledge base appears. The reasoner's output
is kept as the records stage wrote it, trimmed to the fields study facts read (explanations,
sources and notes dropped) so the file stays small.

Cases (``tests/data/verifier_cases.jsonl``, one instruction row per line with ``kind`` right/wrong,
``type`` (the error type or the writing style), ``study_id`` and ``why``): each answer is written
the way a clinician or an LLM would write it about that record (several phrasings, British and
American spelling, terse to verbose, bullets, tables, number words, multi-turn), from the record's
values and the reasoner's statuses. A wrong answer is a right answer in one of those styles with
one planted error of its type (a number without its unit that is off, a wrong unit, a value off by
more than 10 %, two biomarkers' values swapped, a wrong diagnosis in hedged words, a true finding
negated, a lesion the study does not have, the other eye, a wrong stage, a label or data-sheet
leak, a self-contradiction, a value of the fellow eye); every fourth wrong answer is the second
assistant turn of a conversation. The wording lists here are the writer's
own; they are not the verifier's word lists. ``benchmarks/verifier.py`` and
``tests/test_verifier_corpus.py`` score the verifier on the file.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "tests" / "data" / "verifier_records.jsonl"
CASES = ROOT / "tests" / "data" / "verifier_cases.jsonl"
WRONG_TYPES = ("unitless_wrong_number", "wrong_unit", "off_by_more_than_10pct", "swapped_biomarker",
               "wrong_diagnosis_hedged", "negated_true_finding", "invented_lesion", "wrong_laterality",
               "wrong_staging", "label_leak", "self_contradiction", "other_eye_number")
RIGHT_STYLES = ("terse", "verbose", "bullets", "british", "american", "llm_prose", "multiturn", "table",
                "number_words")
PER_TYPE = 28
PER_STYLE = 36


# -- records --------------------------------------------------------------------------------------------
def _trim_reasoning(r: dict) -> dict:
    keep_m = ("biomarker", "normal_range", "percentile", "within_normal")
    out = {k: r.get(k) for k in ("absent", "kb_snapshot_id", "laterality", "missing", "age_years", "sex", "device")}
    out["measurements"] = []
    for m in r.get("measurements", []):
        if not m.get("normal_range") and m.get("within_normal") is None and m.get("percentile") is None:
            continue  # carries nothing study facts read
        mm = {k: m.get(k) for k in keep_m}
        if isinstance(mm.get("normal_range"), dict):
            mm["normal_range"] = {k: mm["normal_range"].get(k) for k in ("p5", "p95", "mean")}
        out["measurements"].append(mm)
    out["findings"] = [{k: f.get(k) for k in ("id", "name", "term", "biomarker", "abnormal", "threshold", "grade")}
                       for f in r.get("findings", [])]
    out["not_evaluable"] = [{"finding": n.get("finding")} for n in r.get("not_evaluable", [])]
    out["differential"] = [{k: d.get(k) for k in ("id", "name", "status", "supporting", "opposing")}
                           | {"staging": [{"name": s.get("name"), "stage": s.get("stage")} for s in d.get("staging", [])]}
                           for d in r.get("differential", [])]
    return out


def refresh_records(build_records: Path, kb) -> list[dict]:
    from grok.instruct.samples import sample_records

    out = []
    for line in build_records.read_text().splitlines():
        r = json.loads(line)
        r.pop("overlays", None)
        r["reasoning"] = _trim_reasoning(r["reasoning"])
        r["provenance"] = {"source": "records stage of the phantom demo build (grok demo)",
                           "kb_snapshot": r.get("provenance", {}).get("kb_snapshot")}
        out.append(r)
    for r in sample_records(24, seed=3, kb=kb):
        r["reasoning"] = _trim_reasoning(r["reasoning"])
        r["provenance"] = {"source": "grok.instruct.samples.sample_records(24, seed=3)", "kb_snapshot": kb.snapshot_id}
        out.append(r)
    RECORDS.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in out))
    return out


# -- the writer's words ------------------------------------------------------------------------------------
DISEASE_WORDS = {
    "normal": ["a normal eye", "a healthy retina", "a normal fundus and macula"],
    "amd": ["age-related macular degeneration", "AMD", "age related macular degeneration"],
    "glaucoma": ["glaucoma", "glaucomatous optic neuropathy"],
    "diabetes": ["diabetes mellitus", "diabetes"],
    "diabetic_retinopathy": ["diabetic retinopathy", "DR"],
    "hypertension": ["systemic hypertension", "hypertensive retinopathy", "hypertension"],
    "alzheimers": ["Alzheimer's disease", "Alzheimer disease"],
    "dme": ["diabetic macular oedema", "DME"],
    "csc": ["central serous chorioretinopathy", "CSCR"],
    "rvo": ["retinal vein occlusion", "RVO"],
}
DISEASE_WORDS_US = {"dme": ["diabetic macular edema", "DME"]}
#: Natural stage phrases per (disease, reasoner stage id); the wrong ones are the other stages.
STAGE_PHRASES = {
    "amd": {"late": ["late AMD", "neovascular AMD", "late-stage (neovascular) AMD"],
            "intermediate": ["intermediate AMD", "intermediate-stage AMD"],
            "early": ["early AMD", "early-stage AMD"]},
    "diabetic_retinopathy": {"moderate": ["moderate non-proliferative diabetic retinopathy", "moderate NPDR"],
                             "mild": ["mild NPDR", "mild non-proliferative diabetic retinopathy"],
                             "proliferative": ["proliferative diabetic retinopathy", "PDR"]},
    "hypertension": {"moderate": ["moderate hypertensive retinopathy", "Keith-Wagener-Barker grade III changes"],
                     "mild": ["mild hypertensive retinopathy"],
                     "malignant": ["malignant hypertensive retinopathy"]},
    "glaucoma": {"advanced": ["advanced glaucoma", "advanced glaucomatous damage"],
                 "suspect": ["a glaucoma suspect", "suspected glaucoma"]},
    "dme": {"centre": ["centre-involved DME", "centre-involving macular oedema"],
            "non_centre": ["non-centre-involved DME"]},
}
STAGE_OF = {  # reasoner stage name (start) -> stage id above
    "late amd": "late", "intermediate amd": "intermediate", "early amd": "early", "moderate npdr": "moderate",
    "mild npdr": "mild", "proliferative": "proliferative", "moderate hypertensive": "moderate",
    "mild hypertensive": "mild", "malignant": "malignant", "advanced structural": "advanced",
    "glaucoma suspect": "suspect", "centre-involved": "centre", "macular oedema signs without": "non_centre",
}
#: biomarker -> (names, unit symbols written, qualifier words by status)
BIOMARKER_WORDS = {
    "macular_thickness_central_um": (["central subfield thickness", "CST", "central retinal thickness",
                                      "central macular thickness"], ["µm", "microns", "um", "μm"]),
    "macular_thickness_overall_um": (["average macular thickness", "mean macular thickness",
                                      "overall macular thickness"], ["µm", "microns"]),
    "gcipl_thickness_um": (["GCIPL thickness", "GC-IPL thickness", "ganglion cell-inner plexiform layer thickness"],
                           ["µm", "microns"]),
    "rnfl_peripapillary_mean_um": (["average RNFL thickness", "mean peripapillary RNFL thickness",
                                    "peripapillary RNFL"], ["µm", "microns"]),
    "cup_disc_ratio_vertical": (["vertical cup-to-disc ratio", "CDR", "cup/disc ratio", "vertical C/D ratio"], [""]),
    "av_ratio": (["arteriole-to-venule ratio", "AVR", "A/V ratio"], [""]),
    "subfoveal_choroidal_thickness_um": (["subfoveal choroidal thickness", "choroidal thickness"], ["µm", "microns"]),
    "macular_volume_mm3": (["macular volume", "total macular volume"], ["mm³", "mm3"]),
    "srf_volume_nl": (["subretinal fluid volume", "SRF volume"], ["nl", "nL"]),
    "irf_volume_nl": (["intraretinal fluid volume", "IRF volume"], ["nl", "nL"]),
    "ped_max_height_um": (["maximum PED height", "PED height"], ["µm", "microns"]),
    "drusen_volume_3mm_mm3": (["drusen volume in the central 3 mm", "central 3 mm drusen volume"], ["mm³"]),
}
QUALIFIER = {
    "normal": ["within normal limits", "within the normal range", "normal"],
    "high": ["increased", "above the normal range", "elevated"],
    "low": ["reduced", "below the normal range", "thinned"],
}
HIGH_FOR = {"macular_thickness_central_um": ["thickened", "increased"], "cup_disc_ratio_vertical": ["enlarged"],
            "subfoveal_choroidal_thickness_um": ["thickened"]}
ENTITY_WORDS = {  # presence biomarker -> (present phrasings, absent phrasings)
    "srf_volume_nl": (["subretinal fluid is present", "there is subretinal fluid"], ["no subretinal fluid"]),
    "irf_volume_nl": (["intraretinal fluid is present", "there are intraretinal cysts"], ["no intraretinal fluid"]),
    "ped_max_height_um": (["a pigment epithelial detachment is present", "there is a PED"],
                          ["no pigment epithelial detachment"]),
    "drusen_volume_5mm_mm3": (["sub-RPE drusen are present", "there are drusen beneath the RPE"],
                              ["no sub-RPE drusen"]),
    "ez_disruption_fraction": (["ellipsoid zone disruption is present", "the ellipsoid zone shows disruption"],
                               ["no ellipsoid zone disruption"]),
    "hrf_count": (["hyperreflective foci are seen", "there are hyperreflective foci"], ["no hyperreflective foci"]),
    "microaneurysm_count": (["microaneurysms are present", "there are scattered microaneurysms"],
                            ["no microaneurysms"]),
    "hemorrhage_count": (["retinal haemorrhages are present", "there are dot-blot haemorrhages"],
                         ["no retinal haemorrhages"]),
    "hard_exudate_count": (["hard exudates are present", "there are hard exudates"], ["no hard exudates"]),
    "cotton_wool_spot_count": (["cotton-wool spots are present", "there are cotton-wool spots"],
                               ["no cotton-wool spots"]),
    "drusen_count": (["drusen are visible on the fundus photograph", "there are drusen on the colour photograph"],
                     ["no drusen on the fundus photograph"]),
}
INVENTED = ["There is a small full-thickness macular hole.", "An epiretinal membrane is present.",
            "There is a vitreous haemorrhage inferiorly.", "Choroidal neovascularisation is seen beneath the fovea.",
            "A disc haemorrhage is present at the inferior rim.", "There is a retinal detachment temporally.",
            "Geographic atrophy is present at the fovea.", "Neovascularisation of the disc is present.",
            "Laser scars are visible in the periphery.", "A choroidal naevus is present superotemporally."]
LEAKS = ["Based on the provided measurements, ", "According to the data sheet, ", "The ground truth label here is ",
         "As given in the report, ", "From the biomarker list you supplied, ", "The dataset annotation says ",
         "Going by the accompanying table, ", "The reference answer is ", "Looking at the JSON, ",
         "The label for this case is "]
UK_US = [("oedema", "edema"), ("haemorrhage", "hemorrhage"), ("centre", "center"), ("fibre", "fiber"),
         ("favour", "favor"), ("colour", "color"), ("naevus", "nevus"), ("ageing", "aging")]


class Writer:
    """Writes answers about one study from its facts (values and the reasoner's statuses)."""

    def __init__(self, facts, rng: random.Random, us: bool = False):
        self.f = facts
        self.rng = rng
        self.us = us

    def pick(self, xs):
        return self.rng.choice(list(xs))

    def spell(self, text: str) -> str:
        if not self.us:
            return text
        for uk, us in UK_US:
            text = text.replace(uk, us).replace(uk.capitalize(), us.capitalize())
        return text

    # values
    def measured(self) -> list[str]:
        return [b for b in BIOMARKER_WORDS if b in self.f.biomarkers]

    def value_text(self, bid: str, value: float | None = None, unit: str | None = None) -> str:
        b = self.f.biomarkers[bid]
        v = b.value if value is None else value
        units = BIOMARKER_WORDS[bid][1]
        unit = self.pick(units) if unit is None else unit
        if b.unit in ("ratio", "dimensionless", "fraction"):
            return f"{v:.2f}"
        if b.unit == "um":
            num = f"{v:.0f}" if self.rng.random() < 0.6 else f"{v:.1f}"
        elif b.unit == "mm3":
            num = f"{v:.3f}" if abs(v) < 1 else f"{v:.2f}"
        else:
            num = f"{v:.1f}"
        return f"{num} {unit}".strip()

    def qualifier(self, bid: str) -> str | None:
        st = self.f.biomarkers[bid].status
        if st is None:
            return None
        if st == "high" and bid in HIGH_FOR:
            return self.pick(HIGH_FOR[bid])
        return self.pick(QUALIFIER[st])

    def name(self, bid: str) -> str:
        return self.pick(BIOMARKER_WORDS[bid][0])

    def measurement(self, bid: str, value: float | None = None, unit: str | None = None, qual: bool = True) -> str:
        q = self.qualifier(bid) if qual else None
        form = self.rng.randrange(3)
        nm, val = self.name(bid), self.value_text(bid, value, unit)
        if form == 0:
            s = f"the {nm} is {val}"
        elif form == 1:
            s = f"the {nm} measures {val}"
        else:
            s = f"a {nm} of {val}"
        return s + (f", {q}" if q else "")

    def presence(self, state: str) -> list[tuple[str, str]]:
        out = []
        for p in self.f.presence():
            words = ENTITY_WORDS.get(p["biomarker"])
            if words and p["state"] == state:
                out.append((p["biomarker"], self.pick(words[0] if state == "present" else words[1])))
        return out

    # diagnosis
    def disease(self, did: str) -> str:
        words = (DISEASE_WORDS_US if self.us else {}).get(did) or DISEASE_WORDS[did]
        return self.pick(words)

    def stage_id(self) -> str | None:
        st = (self.f.stage or "").lower()
        return next((v for k, v in STAGE_OF.items() if st.startswith(k)), None)

    def stage_phrase(self, wrong: bool = False) -> str | None:
        sid = self.stage_id()
        opts = STAGE_PHRASES.get(self.f.label, {})
        if sid is None or sid not in opts:
            return None
        if wrong:
            others = [p for k, ps in opts.items() if k != sid for p in ps]
            return self.pick(others) if others else None
        return self.pick(opts[sid])

    def conclusion(self, did: str | None = None, stage: str | None = None) -> str:
        d = self.disease(did or self.f.label)
        if stage:
            d = stage if self.f.label != "normal" else d
        return self.pick([f"Diagnosis: {d}.", f"Overall, the picture is most consistent with {d}.",
                          f"These findings suggest {d}.", f"The appearance is in keeping with {d}.",
                          f"I would favour {d}.", f"Impression: {d}.", f"Taken together, this points to {d}.",
                          f"The most likely diagnosis is {d}.", f"This raises suspicion for {d}.",
                          f"Impression — {d}.", f"{_cap(d)} is the leading diagnosis."])

    def ruled_out(self, n: int = 2) -> list[str]:
        outs = [d["id"] for d in self.f.differential if d["status"] == "ruled_out" and d["id"] != self.f.label
                and d["id"] in DISEASE_WORDS]
        self.rng.shuffle(outs)
        sents = []
        for did in outs[:n]:
            w = self.disease(did)
            sents.append(self.pick([f"{_cap(w)} is unlikely.", f"{_cap(w)} is less likely.",
                                    f"There is no evidence of {w}.", f"{_cap(w)} is not supported by these findings."]))
        return sents

    def eye(self, wrong: bool = False) -> str:
        right = self.f.eye == "OD"
        if wrong:
            right = not right
        return self.pick(["right eye"] if right else ["left eye"])


def _cap(s: str) -> str:
    return s[0].upper() + s[1:] if s else s


def _row(facts, task: str, answer, question: str) -> dict:
    from grok.verify.corpus import chat_row

    return chat_row(facts, task, answer, question)


# -- right answers, one function per style -----------------------------------------------------------------------
def _body(w: Writer, n_meas: int = 3, values: dict | None = None) -> list[str]:
    """Measurement and finding sentences (``values``: biomarker -> (value, unit) overrides)."""
    values = values or {}
    bms = w.measured()
    w.rng.shuffle(bms)
    core = [b for b in ("macular_thickness_central_um", "cup_disc_ratio_vertical") if b in bms]
    chosen = list(dict.fromkeys(core + [b for b in values if b in bms] + bms))[:max(n_meas, len(values))]
    sents = [_cap(w.measurement(b, *values.get(b, (None, None)))) + "." for b in chosen]
    for _bid, s in w.presence("present")[:3]:
        sents.append(_cap(s) + ".")
    absent = w.presence("absent")
    if len(absent) >= 2 and w.rng.random() < 0.4:
        a, b = (x[3:] for _, x in absent[:2])  # "no subretinal fluid" -> "subretinal fluid"
        sents.append(w.pick([f"There is no {a} or {b}.", f"Neither {a} nor {b} is seen.", f"No {a}, no {b}."]))
    elif absent:
        sents.append(_cap(w.pick(["there is ", "there is ", ""]) + " and ".join(s for _, s in absent[:2])) + ".")
    return sents


def _lead(w: Writer, eye: str | None = None) -> str:
    eye = eye or w.eye()
    return w.pick([f"These images of the {eye} show the following.", f"{_cap(eye)}:",
                   f"In the {eye}, the findings are as follows.", f"Examination of the {eye}:"])


def right_terse(w: Writer) -> dict:
    st = w.stage_phrase()
    d = w.disease(w.f.label)
    present = [s for _, s in w.presence("present")]
    ev = ""
    if present:
        ev = w.pick([f", given that {present[0]}", f" ({present[0]})", f"; {present[0]}"])
    ans = w.pick([f"{_cap(d)}{ev}.", f"Answer: {d}{ev}.", f"{_cap(st or d)}.", f"Most likely {d}{ev}."])
    return _row(w.f, "diagnosis", ans, "What is the most likely diagnosis?")


def right_verbose(w: Writer) -> dict:
    sents = [_lead(w)] + _body(w, 4)
    sents += w.ruled_out(2)
    st = w.stage_phrase()
    sents.append(w.conclusion(stage=st if st and w.rng.random() < 0.5 else None))
    return _row(w.f, "report", w.spell(" ".join(sents)), "Write a diagnostic report for this eye.")


def right_bullets(w: Writer) -> dict:
    bms = w.measured()
    w.rng.shuffle(bms)
    lines = [f"- {_cap(w.name(b))}: {w.value_text(b)}" + (f" ({w.qualifier(b)})" if w.qualifier(b) else "")
             for b in bms[:4]]
    lines += [f"- {_cap(s)}" for _, s in w.presence("present")[:2]]
    lines.append(f"- Impression: {w.disease(w.f.label)}")
    return _row(w.f, "biomarker_qa", w.spell("\n".join(lines)), "Summarise the key measurements as a list.")


def right_llm(w: Writer) -> dict:
    opener = w.pick(["Certainly. ", "Sure — here is my reading. ", "Looking carefully at both images, ", ""])
    sents = [f"{opener}In this {w.eye()}, {w.measurement(w.measured()[0])}."]
    sents += _body(w, 2)[1:]
    sents += w.ruled_out(1)
    d = w.disease(w.f.label)
    sents.append(w.pick([f"Putting this together, the findings are most consistent with {d}.",
                         f"In summary, I would favour {d} as the unifying diagnosis.",
                         f"All things considered, this is in keeping with {d}.",
                         f"On balance, the picture suggests {d}."]))
    sents.append(w.pick(["Clinical correlation is advised.", "Correlate with the clinical history.",
                         "Follow-up imaging would be reasonable."]))
    return _row(w.f, "report", w.spell(" ".join(sents)), "Please describe these images and give a diagnosis.")


def right_multiturn(w: Writer) -> dict:
    b = w.measured()[0]
    d = w.disease(w.f.label)
    turns = [("", w.pick([f"The findings point to {d}.", f"This looks like {d}.", f"Diagnosis: {d}."])),
             (f"What is the {w.name(b)}?", _cap(w.measurement(b)) + ".")]
    outs = w.ruled_out(1)
    if outs:
        turns.append(("Is anything else likely?", outs[0]))
    return _row(w.f, "multiturn", turns, "What is the diagnosis?")


def right_table(w: Writer) -> dict:
    bms = w.measured()
    w.rng.shuffle(bms)
    if w.rng.random() < 0.5:
        rows = ["| Measurement | Value | Reading |", "|---|---|---|"]
        rows += [f"| {_cap(w.name(b))} | {w.value_text(b)} | {w.qualifier(b) or '-'} |" for b in bms[:4]]
        text = "\n".join(rows) + f"\n\nImpression: {w.disease(w.f.label)}."
    else:
        cells = "".join(f"<tr><td>{_cap(w.name(b))}</td><td>{w.value_text(b)}</td></tr>" for b in bms[:4])
        text = f"<table><tr><th>Measurement</th><th>Value</th></tr>{cells}</table>\nImpression: {w.disease(w.f.label)}."
    return _row(w.f, "biomarker_qa", text, "Tabulate the measurements.")


_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS_W = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def in_words(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS_W[n // 10] + ("-" + _ONES[n % 10] if n % 10 else "")
    rest = n % 100
    return _ONES[n // 100] + " hundred" + (" and " + in_words(rest) if rest else "")


def right_number_words(w: Writer) -> dict:
    bms = [b for b in w.measured() if w.f.biomarkers[b].unit == "um"]
    b = w.pick(bms)
    v = round(w.f.biomarkers[b].value)
    approx = w.pick(["about ", "roughly ", "approximately ", ""])
    text = f"The {w.name(b)} is {approx}{in_words(v)} microns"
    q = w.qualifier(b)
    text += f", {q}." if q else "."
    return _row(w.f, "biomarker_qa", text, "How thick is it? Answer in words.")


RIGHT = {"terse": right_terse, "verbose": right_verbose, "bullets": right_bullets,
         "british": right_verbose, "american": right_verbose,
         "llm_prose": right_llm, "multiturn": right_multiturn, "table": right_table,
         "number_words": right_number_words}


# -- wrong answers: a right answer in some style with one planted error -----------------------------------------
def _report(w: Writer, values: dict | None = None, extra: list[str] | None = None, conclusion: str | None = None,
            eye: str | None = None, lead: str = "") -> str:
    first = _lead(w, eye)
    sents = [lead + (first[0].lower() + first[1:] if lead else first)] + _body(w, 3, values)
    sents += extra or []
    sents += w.ruled_out(1)
    sents.append(conclusion or w.conclusion())
    return w.spell(" ".join(sents))


def _far(w: Writer, v: float, lo: float = 1.15, hi: float = 1.5) -> float:
    f = w.rng.uniform(lo, hi)
    return v * f if w.rng.random() < 0.5 or v * (2 - f) <= 0 else v / f


def wrong_unitless(w: Writer):
    bms = [b for b in w.measured() if w.f.biomarkers[b].unit in ("um", "ratio") and w.f.biomarkers[b].value > 0.05]
    b = w.pick(bms)
    v = _far(w, w.f.biomarkers[b].value)
    num = f"{v:.2f}" if w.f.biomarkers[b].unit == "ratio" else f"{v:.0f}"
    s = w.pick([f"The {w.name(b)} is {num}.", f"{_cap(w.name(b))} {num}.", f"The {w.name(b)} measured {num} on this scan."])
    return _report(w, extra=[s]), f"{b} written as {num} without a unit (truth {w.f.biomarkers[b].text})"


def wrong_unit(w: Writer):
    b = w.pick([x for x in w.measured() if w.f.biomarkers[x].unit in ("um", "nl", "mm3")
                and w.f.biomarkers[x].value >= (0.01 if w.f.biomarkers[x].unit == "mm3" else 1.0)])
    fact = w.f.biomarkers[b]
    bad = {"um": ["mm", "nl"], "nl": ["µm", "mm³"], "mm3": ["µm", "nl"]}[fact.unit]
    unit = w.pick(bad)
    v = fact.value
    num = f"{v:.0f}" if fact.unit == "um" else (f"{v:.3f}" if v < 1 else f"{v:.1f}")
    if fact.unit == "mm3" and unit == "nl" and v * 1000 >= 0.5:
        num = f"{v:.3f}"  # mm³ written as nl without conversion
    return _report(w, extra=[f"The {w.name(b)} is {num} {unit}."]), f"{b} {fact.text} written in {unit}"


def wrong_off(w: Writer):
    b = w.pick([x for x in w.measured() if abs(w.f.biomarkers[x].value) > 0.05])
    fact = w.f.biomarkers[b]
    v = _far(w, fact.value, 1.13, 1.6)
    return _report(w, values={b: (v, None)}), f"{b} written as {v:.3g} (truth {fact.text})"


def wrong_swap(w: Writer):
    pairs = [("macular_thickness_central_um", "macular_thickness_overall_um"),
             ("gcipl_thickness_um", "rnfl_peripapillary_mean_um"),
             ("macular_thickness_central_um", "subfoveal_choroidal_thickness_um"),
             ("cup_disc_ratio_vertical", "av_ratio")]
    ok = [(a, b) for a, b in pairs if a in w.f.biomarkers and b in w.f.biomarkers
          and abs(w.f.biomarkers[a].value - w.f.biomarkers[b].value) > 0.15 * max(abs(w.f.biomarkers[a].value), abs(w.f.biomarkers[b].value))]
    a, b = w.pick(ok)
    fa, fb = w.f.biomarkers[a], w.f.biomarkers[b]
    text = f"{_cap(w.measurement(a, fb.value, qual=False))}, and {w.measurement(b, fa.value, qual=False)}."
    return _report(w, extra=[text]), f"values of {a} ({fa.text}) and {b} ({fb.text}) swapped"


def wrong_diagnosis(w: Writer):
    others = [d["id"] for d in w.f.differential if d["id"] != w.f.label and d["id"] in DISEASE_WORDS
              and not (w.f.label == "diabetes" and d["id"] in ("diabetic_retinopathy", "dme"))]
    did = w.pick(others)
    d = w.disease(did)
    c = w.pick([f"The picture suggests {d}.", f"This is consistent with {d}.", f"The findings are in keeping with {d}.",
                f"I think this is likely {d}.", f"Overall this points to {d}.", f"We favour {d}.",
                f"These changes are suggestive of {d}.", f"Probable {d}."])
    return _report(w, conclusion=c), f"states {did}; the label is {w.f.label}"


def wrong_negated(w: Writer):
    present = w.presence("present")
    bid, _ = w.pick(present)
    neg = ENTITY_WORDS[bid][1][0]
    s = w.pick([f"There is {neg}.", f"{_cap(neg)} is seen.", f"Importantly, {neg} is present."]).replace(
        "There is no sub-RPE drusen", "There are no sub-RPE drusen")
    if neg.startswith("no "):
        s = w.pick([f"There is {neg}.", f"I see {neg}.", f"{_cap(neg)} on this scan."])
    return _report(w, extra=[s]), f"negates {bid}, which the reasoner finds present"


def wrong_invented(w: Writer):
    s = w.pick(INVENTED)
    if "Geographic atrophy" in s and w.f.finding_state.get("geographic_atrophy_present") == "present":
        s = INVENTED[0]
    absent = w.presence("absent")
    if absent and w.rng.random() < 0.3:  # a KB lesion the study does not have
        bid, _ = w.pick(absent)
        s = _cap(ENTITY_WORDS[bid][0][0]) + "."
    return _report(w, extra=[s]), f"claims a lesion the record lacks: {s}"


def wrong_eye(w: Writer):
    return _report(w, eye=w.eye(wrong=True)), f"names the {w.eye(wrong=True)} for {w.f.eye}"


def wrong_stage(w: Writer):
    st = w.stage_phrase(wrong=True)
    d = w.pick([f"Diagnosis: {st}.", f"The findings are consistent with {st}.", f"This is {st}.",
                f"Overall the picture suggests {st}."])
    return _report(w, conclusion=d), f"stage {st!r}; the reasoner stages it {w.f.stage!r}"


def wrong_leak(w: Writer):
    lead = w.pick(LEAKS)
    d = w.disease(w.f.label)
    if lead.endswith(("is ", "says ")):
        return _report(w, extra=[f"{lead}{d}."]), f"leak: {lead.strip()}"
    return _report(w, lead=lead), f"leak: {lead.strip()}"


def wrong_self_contradiction(w: Writer):
    d = w.disease(w.f.label)
    present = w.presence("present")
    if present and w.rng.random() < 0.5:
        bid, pos = w.pick(present)
        neg = ENTITY_WORDS[bid][1][0]
        extra = [_cap(pos) + ".", f"On closer review, there is {neg}."]
        return _report(w, extra=extra), f"says {bid} present and absent"
    extra = [w.pick([f"There is no {d}.", f"{_cap(d)} can be ruled out.", f"This is not {d}."])]
    return _report(w, extra=extra, conclusion=f"Diagnosis: {d}."), "rules out and states the same diagnosis"


def wrong_other_eye(w: Writer, fellow):
    cands = [b for b in w.measured() if b in fellow.biomarkers and w.f.biomarkers[b].unit in ("um", "ratio", "nl", "mm3")
             and abs(fellow.biomarkers[b].value - w.f.biomarkers[b].value) > 0.13 * abs(w.f.biomarkers[b].value)
             and abs(fellow.biomarkers[b].value) > 0.01]
    b = w.pick(cands)
    return _report(w, values={b: (fellow.biomarkers[b].value, None)}), \
        f"{b} of the fellow eye ({fellow.biomarkers[b].text}; this eye {w.f.biomarkers[b].text})"


def applicable(kind: str, w: Writer, fellow) -> bool:
    f = w.f
    if kind == "negated_true_finding":
        return bool(w.presence("present"))
    if kind == "wrong_staging":
        return w.stage_phrase(wrong=True) is not None
    if kind == "swapped_biomarker":
        try:
            wrong_swap(Writer(f, random.Random(0)))
            return True
        except IndexError:
            return False
    if kind == "other_eye_number":
        if fellow is None:
            return False
        try:
            wrong_other_eye(Writer(f, random.Random(0)), fellow)
            return True
        except IndexError:
            return False
    return True


WRONG = {"unitless_wrong_number": wrong_unitless, "wrong_unit": wrong_unit, "off_by_more_than_10pct": wrong_off,
         "swapped_biomarker": wrong_swap, "wrong_diagnosis_hedged": wrong_diagnosis,
         "negated_true_finding": wrong_negated, "invented_lesion": wrong_invented, "wrong_laterality": wrong_eye,
         "wrong_staging": wrong_stage, "label_leak": wrong_leak, "self_contradiction": wrong_self_contradiction}


def make_cases(records: list[dict], kb, lex, seed: int = 0) -> list[dict]:
    from grok.instruct.records import build_facts

    facts = [build_facts(r, kb, lex) for r in records]
    by_patient: dict[str, list] = {}
    for f in facts:
        by_patient.setdefault(f.patient_id, []).append(f)
    usable = [f for f in facts if f.label_status != "ruled_out"]
    rng = random.Random(seed)
    cases = []
    for style in RIGHT_STYLES:
        for i in range(PER_STYLE):
            f = usable[(i * 7 + len(cases)) % len(usable)]
            w = Writer(f, random.Random(rng.random()), us=style == "american" or (style not in ("british",) and i % 3 == 0))
            row = RIGHT[style](w)
            cases.append({"id": f"right-{style}-{i:02d}", "kind": "right", "type": style, "study_id": f.study_id,
                          **row, "why": ""})
    for kind in (*WRONG, "other_eye_number"):
        n = 0
        k = 0
        while n < PER_TYPE:
            f = usable[(k * 5 + n) % len(usable)]
            k += 1
            fellow = next((g for g in by_patient[f.patient_id] if g.study_id != f.study_id), None)
            w = Writer(f, random.Random(rng.random()), us=k % 3 == 0)
            if not applicable(kind, w, fellow):
                if k > 50 * PER_TYPE:
                    raise RuntimeError(f"too few records for {kind}")
                continue
            text, why = wrong_other_eye(w, fellow) if kind == "other_eye_number" else WRONG[kind](w)
            if n % 4 == 3:  # every fourth wrong answer is the second turn of a conversation
                opener = w.pick([f"This looks like {w.disease(f.label)}.", f"Diagnosis: {w.disease(f.label)}.",
                                 "Let me describe the images first."])
                row = _row(f, "multiturn", [("", opener), ("Can you go through the findings?", text)],
                           "What do you see in these images?")
                why += " (second turn)"
            else:
                row = _row(f, "report", text, "Write a diagnostic report for this eye.")
            cases.append({"id": f"wrong-{kind}-{n:02d}", "kind": "wrong", "type": kind, "study_id": f.study_id,
                          **row, "why": why})
            n += 1
    return cases


def main(argv: list[str] | None = None) -> None:
    from grok.knowledge import load_knowledge_base
    from grok.knowledge.lexicon import build_lexicon

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records-from", type=Path, help="a build's records.jsonl to refresh the corpus records from")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=CASES)
    args = ap.parse_args(argv)
    kb = load_knowledge_base()
    lex = build_lexicon(kb)
    if args.records_from:
        records = refresh_records(args.records_from, kb)
    else:
        records = [json.loads(x) for x in RECORDS.read_text().splitlines() if x.strip()]
    cases = make_cases(records, kb, lex, args.seed)
    args.out.write_text("".join(json.dumps(c, ensure_ascii=False, sort_keys=True) + "\n" for c in cases))
    kinds = {k: sum(c["kind"] == k for c in cases) for k in ("right", "wrong")}
    print(json.dumps({"cases": len(cases), **kinds, "out": str(args.out)}))


if __name__ == "__main__":
    main()
