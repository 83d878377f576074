"""Hand-written answers about real phantom-build records, kept apart from the generated corpus.

The generated corpus (``scripts/make_verifier_cases.py``) and the verifier were written by the same
hands; these answers were written afterwards, as free prose in the way a clinician or a chat model
answers, to see whether the verifier generalises beyond the generator's phrasings. Each right
answer must pass and each wrong one must fail with the code its error calls for.

First runs, before the verifier was changed for them (the changes were general: eye named as
"left macula"/"right optic disc", "Left eye" capitalised, "raise suspicion for", "Impression —",
"at the top of the differential", a count a few words before its lesion, a negated list "no
microaneurysms, haemorrhages or exudates", a bare "Normal."): batch 1 (``RIGHT[:12]``,
``WRONG[:20]``) 8 of 12 right answers passed and 20 of 20 wrong ones were caught; batch 2, 5 of 8
and 9 of 10; batch 3, 7 of 10 and 10 of 10 (a CST written as "central subfield (404 µm)" after
"subretinal fluid" read as a wrong unit of the fluid volume, "graded as", and one answer that broke
the report family's one-paragraph rule, moved to a free-form task); batch 4 (sample records), 7 of 10
and 8 of 10 ("that of", "Grade:", the reasoner's own stage name as a terse answer, volumes in µL,
"several cotton-wool spots").
"""

from __future__ import annotations

import pytest

from grok.instruct.records import build_facts
from grok.knowledge import load_knowledge_base
from grok.knowledge.lexicon import build_lexicon
from grok.verify.corpus import DEFAULT_RECORDS, chat_row, read_jsonl
from grok.verify.verifier import Verifier

KB = load_knowledge_base()
LEX = build_lexicon(KB)
V = Verifier(LEX)
FACTS = {f.study_id: f for f in (build_facts(r, KB, LEX) for r in read_jsonl(DEFAULT_RECORDS))}
AMD_OS = "S11dee795bb03b8dd"  # late AMD features; CST 404.4 µm (high), SRF 5.7 nl, PED 205 µm, 1 hard exudate
DR_OD = "S1e06a9d0e6a6c457"  # moderate NPDR or worse; IRF 18.8 nl, 8 MAs, 4 haemorrhages, 12 exudates, 2 CWS
GLAUC_OS = "S97d0356368bc12f5"  # glaucoma suspect; vertical CDR 0.70 (enlarged), RNFL 67.2 µm
HTN_OS = "S3ff46ff04f4606ad"  # moderate hypertensive retinopathy signs; 1 haemorrhage, 2 CWS, AVR 0.58
NORMAL_OS = "Sbff203696d3cdbc2"  # normal; CST 273.6 µm
AMD_OD = "Sbf0218a6f8b32d64"  # late AMD features; PED 85 µm, CST 285.0 µm (normal)
GLAUC_OD = "S69b106604671029a"  # glaucoma (no stage); vertical CDR 0.69, RNFL 53.4 µm
HTN_OD = "Sbf255984a6fb7c29"  # moderate hypertensive retinopathy signs; 2 haemorrhages, 1 CWS, AVR 0.67
ALZ_OS = "S19f713c850c5cab2"  # Alzheimer's disease; CST 268.6 µm, RNFL 91.0 µm, EZ disruption
DM_OS = "S90c6eb8c275915c5"  # diabetes, no retinopathy; CST 265.7 µm
# sample records (grok.instruct.samples), for the categories and stages the phantom build lacks
DME_OD = "S3adf4e63cc74"  # centre-involved DME; CST 374.1 µm, IRF 46.6 nl, 2 MAs, 2 hard exudates
AMDI_OS = "S59a5a0c7c397"  # intermediate AMD; central 3 mm drusen volume 0.049 mm³, no fluid
GLA_OD = "S749ce3286f34"  # glaucoma, advanced structural damage; vertical CDR 0.78
DR_OS = "Sbb352f840be2"  # moderate NPDR or worse; 4 MAs, 2 haemorrhages, 1 hard exudate, no CWS
HT_OS = "S0e1db62f5d25"  # moderate hypertensive retinopathy signs; 1 haemorrhage, 1 CWS, AVR 0.54

RIGHT = [
    (AMD_OS, "report", ("The left macula is markedly thickened, with a central subfield thickness of roughly 404 µm, "
     "and there is a shallow pocket of subretinal fluid (about 5.7 nL) over a pigment epithelial detachment "
     "approximately 205 microns high. Drusen are present beneath the RPE. Taken together with the exudation, this "
     "is most in keeping with neovascular age-related macular degeneration.")),
    (AMD_OS, "diagnosis", "Wet AMD."),
    (AMD_OS, "multiturn", [("What is going on in this eye?", ("There is subretinal fluid with a PED, so I favour "
                            "neovascular AMD.")),
                           ("How thick is the centre?", "The CST is 404 microns, well above normal."),
                           ("Could this be glaucoma?", ("Glaucoma is unlikely; the vertical cup-to-disc ratio is "
                            "0.42, which is within normal limits."))]),
    (DR_OD, "report", ("Right eye: multiple microaneurysms (eight on the photograph), four intraretinal haemorrhages "
     "and a dozen hard exudates, with two cotton-wool spots. OCT shows intraretinal fluid of about 19 nl, although "
     "the central subfield thickness (301 µm) remains within normal limits. The overall picture suggests moderate "
     "non-proliferative diabetic retinopathy.")),
    (DR_OD, "biomarker_qa", ("- CST: 301 µm (normal)\n- Intraretinal fluid: present, ~18.8 nL\n- Microaneurysms: 8\n"
     "- Haemorrhages: 4\n- Cotton-wool spots: 2")),
    (GLAUC_OS, "report", ("In the left eye the vertical cup-to-disc ratio is enlarged at 0.70 and the mean "
     "peripapillary RNFL measures 67 µm. There is no macular fluid and the central subfield thickness is normal at "
     "267 µm. These structural findings raise suspicion for glaucoma; visual fields are needed to confirm it.")),
    (GLAUC_OS, "diagnosis", "Glaucoma suspect, given the enlarged vertical C/D ratio of 0.7."),
    (HTN_OS, "report", ("Fundus photography of the left eye shows two cotton-wool spots and a single retinal "
     "haemorrhage, with an arteriole-to-venule ratio of 0.58. The macula is dry on OCT and the CST is within "
     "normal limits (280 µm). These features are consistent with moderate hypertensive retinopathy.")),
    (HTN_OS, "diagnosis", "Hypertensive retinopathy (moderate), in view of the cotton-wool spots and haemorrhage."),
    (NORMAL_OS, "report", ("The left eye looks healthy: central subfield thickness 274 µm, within the normal range, "
     "vertical CDR 0.28, no drusen, no fluid and no haemorrhages. I see no sign of diabetic retinopathy or AMD. "
     "Impression: normal eye.")),
    (NORMAL_OS, "diagnosis", "Normal."),
    (NORMAL_OS, "biomarker_qa", "The CST is two hundred and seventy-four microns, which is normal."),
    # batch 2
    (AMD_OD, "report", ("OD: drusenoid pigment epithelial detachment measuring approximately 85 μm in height, with "
     "sub-RPE drusen and focal ellipsoid zone disruption. No subretinal or intraretinal fluid. CST 285 µm (normal). "
     "Overall, findings are compatible with late AMD; angiography would help to confirm neovascular activity.")),
    (AMD_OD, "diagnosis", "Age-related macular degeneration (late features)."),
    (GLAUC_OD, "report", ("The right optic disc shows a vertical cup:disc ratio of 0.69 and the average RNFL thickness "
     "is 53 microns. Macular thickness is unremarkable (CST 266 µm). I would put glaucoma at the top of the "
     "differential.")),
    (HTN_OD, "report", ("Right eye fundus: two flame haemorrhages and a cotton-wool spot; A/V ratio 0.67. OCT: dry "
     "macula, CST 272 µm. Impression — hypertensive retinopathy, moderate grade.")),
    (HTN_OD, "multiturn", [("Diagnosis?", "Systemic hypertension with retinal signs."),
                           ("Any fluid?", "No - neither subretinal nor intraretinal fluid is seen."),
                           ("And the CST?", "About 272 um.")]),
    (ALZ_OS, "report", ("Left eye. CST 268.6 µm and mean RNFL 91 µm, both unremarkable; the ellipsoid zone shows "
     "some disruption but there is no fluid. The retinal findings are non-specific; in this context Alzheimer's "
     "disease remains the working diagnosis.")),
    (DM_OS, "report", ("Left eye: no microaneurysms, haemorrhages or exudates are visible, and the macula is dry "
     "(CST 266 µm). There is no diabetic retinopathy at present. Diagnosis: diabetes mellitus without retinopathy.")),
    (DM_OS, "biomarker_qa", "Central subfield thickness: 265.7 µm — normal for her age."),
    # batch 3
    (AMD_OS,"report","**Summary (left eye):** The OCT demonstrates a pigment epithelial detachment (~205 µm) with overlying subretinal fluid and a thickened central subfield (404 µm). Sub-RPE drusen are also visible. **Assessment:** exudative (neovascular) age-related macular degeneration is the most likely diagnosis; an anti-VEGF work-up would be appropriate."),
    (AMD_OS,"biomarker_qa","Yes — at 404 µm the CST is well above the upper limit of normal (about 316 µm for a man of this age)."),
    (DR_OD,"diagnosis","Diabetic retinopathy — moderate NPDR, with eight microaneurysms, four haemorrhages and cotton-wool spots."),
    (DR_OD,"biomarker_qa","### Right eye\n* Microaneurysms: 8\n* Haemorrhages: 4\n* Hard exudates: 12\n* Cotton-wool spots: 2\n* Intraretinal fluid: 18.8 nL\n\nThe combination of haemorrhages, exudates and cotton-wool spots indicates at least moderate non-proliferative diabetic retinopathy."),
    (GLAUC_OS,"multiturn",[("","The disc looks suspicious for glaucoma."),("What's the cup-to-disc ratio?","The vertical CDR is 0.70, which is enlarged."),("Anything at the macula?","No — the macula is dry and the CST is 267 µm, within normal limits.")]),
    (HTN_OS,"report","Left fundus: there are 2 cotton-wool spots and 1 retinal haemorrhage, and the arteriolar calibre appears reduced (AVR 0.58). The macula on OCT shows no fluid. In a hypertensive patient these appearances would be graded as moderate hypertensive retinopathy."),
    (HTN_OS,"diagnosis","Systemic hypertension (hypertensive retinopathy)."),
    (NORMAL_OS,"report","Both the fundus photograph and the OCT of the left eye are within normal limits: CST 273.6 µm, cup-to-disc ratio 0.28, no haemorrhages, exudates or drusen. No pathology is identified; this is a normal eye."),
    (AMD_OD,"biomarker_qa","The PED measures approximately 85 microns in maximal height."),
    (DM_OS,"diagnosis","Diabetes mellitus, with no diabetic retinopathy visible."),
    # batch 4
    (DME_OD,"report","In this 56-year-old man's right eye the fovea is thickened (CST 374 µm) by intraretinal cystoid spaces totalling roughly 47 nl. A couple of microaneurysms and two hard exudates are seen on the photograph. Findings are consistent with centre-involving diabetic macular edema."),
    (DME_OD,"diagnosis","Centre-involved diabetic macular oedema."),
    (AMDI_OS,"report","Left eye: numerous soft drusen are visible on the colour photograph and sub-RPE deposits on OCT, with a central 3 mm drusen volume of 0.049 mm³. There is no fluid and no PED; the CST is 277 µm. This is intermediate age-related macular degeneration."),
    (AMDI_OS,"multiturn",[("","Intermediate AMD."),("Is there any sign of wet AMD?","No — there is no subretinal or intraretinal fluid, so no sign of neovascular activity.")]),
    (GLA_OD,"report","Right eye: the optic disc is markedly cupped with a vertical cup-to-disc ratio of 0.78, while the macula is normal (CST 265 µm, no fluid). The picture is that of advanced glaucomatous optic neuropathy."),
    (GLA_OD,"diagnosis","Glaucoma (advanced)."),
    (DR_OS,"report","Left eye, 73-year-old woman: four microaneurysms, two blot haemorrhages and a single hard exudate, no cotton-wool spots; macula dry with CST 266 µm. Grade: moderate non-proliferative diabetic retinopathy."),
    (DR_OS,"biomarker_qa","There are 4 microaneurysms in this photograph."),
    (HT_OS,"report","Left eye of a 52-year-old woman: one flame-shaped haemorrhage and one cotton-wool spot, with arteriolar narrowing (AVR 0.54). OCT is unremarkable (CST 274 µm). These signs suggest hypertensive retinopathy."),
    (HT_OS,"biomarker_qa","The arteriole-to-venule ratio is 0.54."),
]

WRONG = [
    (AMD_OS, "report", ("The left macula shows a central subfield thickness of 260 µm with subretinal fluid. "
     "Diagnosis: neovascular AMD."), {"wrong_number"}),
    (AMD_OS, "report", ("Central subfield thickness 404 µm with subretinal fluid and a PED. The appearance could "
     "reflect central serous chorioretinopathy, which I favour here."), {"diagnosis_mismatch"}),
    (AMD_OS, "report", "In this left eye there is no subretinal fluid and the PED is flat. Diagnosis: AMD.",
     {"contradiction"}),
    (AMD_OS, "report", ("There is a full-thickness macular hole with surrounding subretinal fluid in the left eye. "
     "Diagnosis: AMD."), {"invented_finding"}),
    (AMD_OS, "report", "The right eye shows subretinal fluid over a PED. Diagnosis: neovascular AMD.",
     {"laterality"}),
    (AMD_OS, "report", "Left eye: a few small drusen and nothing else, so this is early AMD.",
     {"wrong_stage", "contradiction"}),
    (DR_OD, "report", "Right eye with microaneurysms and haemorrhages. The CST is 400.", {"wrong_number"}),
    (DR_OD, "report", ("Right eye: microaneurysms, haemorrhages and exudates. These changes point to proliferative "
     "diabetic retinopathy."), {"wrong_stage"}),
    (DR_OD, "report", ("Right eye: scattered haemorrhages. The picture is most suggestive of a retinal vein "
     "occlusion."), {"diagnosis_mismatch"}),
    (DR_OD, "report", "According to the labels supplied with the images, this right eye has diabetic retinopathy.",
     {"forbidden_phrase"}),
    (DR_OD, "report", ("Right eye: microaneurysms are present but there are no haemorrhages. Diagnosis: diabetic "
     "retinopathy."), {"contradiction"}),
    (GLAUC_OS, "report", "Left eye: the vertical cup-to-disc ratio is 0.45, within normal limits. Glaucoma suspect.",
     {"wrong_number", "contradiction"}),
    (GLAUC_OS, "report", ("Left eye: enlarged cup (CDR 0.70) with a disc haemorrhage at the inferior rim. "
     "Diagnosis: glaucoma."), {"invented_finding"}),
    (GLAUC_OS, "report", "Left eye: the RNFL is 67 mm thick and the cup is enlarged. Glaucoma suspect.",
     {"wrong_unit"}),
    (HTN_OS, "report", "Left eye: cotton-wool spots and a haemorrhage. Glaucoma seems the most likely explanation.",
     {"diagnosis_mismatch"}),
    (HTN_OS, "report", "Left eye: cotton-wool spots with an AV ratio of 0.85. Hypertensive retinopathy.",
     {"wrong_number"}),
    (HTN_OS, "report", "Based on the provided measurements, the left eye shows hypertensive retinopathy.",
     {"forbidden_phrase"}),
    (NORMAL_OS, "report", ("The left eye looks healthy, with a CST of 274 µm. However, we cannot call this a normal "
     "eye: there is no normal eye here. Impression: normal eye."), {"self_contradiction"}),
    (NORMAL_OS, "report", ("The left eye has a CST of 274 µm and a small epiretinal membrane. Impression: normal "
     "eye."), {"invented_finding"}),
    (NORMAL_OS, "report", "Left eye: CST 274 µm. The findings are suggestive of early glaucoma.",
     {"diagnosis_mismatch"}),
    # batch 2
    (AMD_OD, "report", "OD: PED of about 150 µm with sub-RPE drusen. Diagnosis: late AMD.", {"wrong_number"}),
    (AMD_OD, "report", "OD: PED with drusen; the picture is most compatible with central serous chorioretinopathy.",
     {"diagnosis_mismatch"}),
    (AMD_OD, "report", "OD: drusen and a PED with a large subretinal haemorrhage. Diagnosis: AMD.",
     {"invented_finding"}),
    (GLAUC_OD, "report", "Right eye: RNFL 53 µm, CDR 0.9. Glaucoma.", {"wrong_number"}),
    (GLAUC_OD, "report", "Left eye: CDR 0.69 and RNFL 53 µm. Glaucoma.", {"laterality"}),
    (HTN_OD, "report", ("Right eye: cotton-wool spot and haemorrhages; AV ratio 0.67. Malignant hypertensive "
     "retinopathy."), {"wrong_stage"}),
    (HTN_OD, "report", "Right eye: there are no haemorrhages and no cotton-wool spots. Hypertensive retinopathy.",
     {"contradiction"}),
    (ALZ_OS, "report", "Left eye: CST 268.6 µm. Based on the ground truth, this is Alzheimer's disease.",
     {"forbidden_phrase"}),
    (DM_OS, "report", "Left eye: CST 266 µm with several microaneurysms. Diagnosis: diabetes mellitus.",
     {"contradiction", "invented_finding"}),
    (DM_OS, "report", "Left eye: dry macula, CST 266 nL. Diagnosis: diabetes mellitus.", {"wrong_unit"}),
    # batch 3
    (AMD_OS,"report","**Left eye:** PED (~205 µm) with subretinal fluid and a CST of 404 µm. **Assessment:** central serous chorioretinopathy is favoured over AMD.",{"diagnosis_mismatch","contradiction"}),
    (AMD_OS,"biomarker_qa","The CST is about 310 µm, just within normal limits.",{"wrong_number","contradiction"}),
    (DR_OD,"biomarker_qa","### Right eye\n* Microaneurysms: 3\n* Haemorrhages: 4\n\nModerate NPDR.",{"wrong_number"}),
    (DR_OD,"report","Right eye: microaneurysms, haemorrhages and exudates, plus neovascularisation at the disc. This is proliferative diabetic retinopathy.",{"wrong_stage","invented_finding","contradiction"}),
    (GLAUC_OS,"multiturn",[("","The disc looks suspicious for glaucoma."),("Is the macula ok?","There is a small amount of subretinal fluid at the fovea.")],{"contradiction","invented_finding"}),
    (HTN_OS,"report","Left fundus: 2 cotton-wool spots and 1 haemorrhage; AVR 0.58. The ground-truth category is hypertension.",{"forbidden_phrase"}),
    (HTN_OS,"diagnosis","Diabetic retinopathy (cotton-wool spots and a haemorrhage).",{"diagnosis_mismatch"}),
    (NORMAL_OS,"report","Right eye: CST 273.6 µm, CDR 0.28, no haemorrhages. Normal eye.",{"laterality"}),
    (AMD_OD,"biomarker_qa","The PED measures approximately 85 mm in maximal height.",{"wrong_unit"}),
    (DM_OS,"report","Left eye: CST 265.7 µm, no retinopathy. Diagnosis: diabetes mellitus. On reflection the patient does not have diabetes.",{"self_contradiction","contradiction"}),
    # batch 4
    (DME_OD,"report","Right eye: CST 374 µm with intraretinal fluid of about 47 µL. Diagnosis: DME.",{"wrong_unit","hallucinated_number","wrong_number"}),
    (DME_OD,"report","Right eye: CST 374 µm with intraretinal fluid. The appearance favours a branch retinal vein occlusion.",{"diagnosis_mismatch"}),
    (DME_OD,"report","Right eye: intraretinal fluid with a CST of 374 µm. Non-centre-involved DME.",{"wrong_stage"}),
    (AMDI_OS,"report","Left eye: drusen volume 0.49 mm³ in the central 3 mm. Intermediate AMD.",{"wrong_number"}),
    (AMDI_OS,"report","Left eye: drusen with a small amount of subretinal fluid. Intermediate AMD.",{"contradiction"}),
    (GLA_OD,"report","Right eye: vertical CDR 0.58, within normal limits. Glaucoma.",{"wrong_number","contradiction"}),
    (GLA_OD,"report","Right eye: CDR 0.78. The macular OCT is normal. Early glaucoma is the most likely diagnosis.",{"wrong_stage"}),
    (DR_OS,"report","Left eye: microaneurysms and haemorrhages. In the accompanying spreadsheet this eye is coded as DR.",{"forbidden_phrase"}),
    (DR_OS,"report","Left eye: 4 microaneurysms, 2 haemorrhages and several cotton-wool spots. Moderate NPDR.",{"contradiction"}),
    (HT_OS,"report","OD: one haemorrhage and one cotton-wool spot, AVR 0.54. Hypertensive retinopathy.",{"laterality"}),
]


def _row(sid, task, answer):
    return chat_row(FACTS[sid], task, answer, "Please assess this eye.")


@pytest.mark.parametrize(("sid", "task", "answer"), RIGHT)
def test_handwritten_right_answers_pass(sid, task, answer):
    res = V.verify(_row(sid, task, answer), FACTS[sid])
    assert res.passed, res.reasons


@pytest.mark.parametrize(("sid", "task", "answer", "codes"), WRONG)
def test_handwritten_wrong_answers_fail_for_their_reason(sid, task, answer, codes):
    res = V.verify(_row(sid, task, answer), FACTS[sid])
    got = {r.split(":", 1)[0] for r in res.hard_reasons}
    assert not res.passed and got & codes, res.reasons
