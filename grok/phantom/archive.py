"""Write a phantom clinic archive: DICOM OPT/OP, image exports, a cohort table and ground truth.

Run as: grok phantom --subjects 14 --seed 0 --out phantom/

Layout of ``OUT`` (documented in the README):

``dicom/<FAMILY>_<GIVEN>_<MRN>/<YYYYMMDD>/``
    ``CFP_OD.dcm``, ``CFP_OS.dcm`` (Ophthalmic Photography 8 Bit), ``OCT_OD.dcm``, ``OCT_OS.dcm``
    (Ophthalmic Tomography, multi-frame) or, for about a quarter of the subjects, ``OCT_OD/0001.dcm``...
    (a single-frame series), and ``RNFL_OD.dcm``/``RNFL_OS.dcm`` circle scans with ``--circle-scans``.
    Folder names carry the patient's name and record number, as clinic exports often do; ingestion
    must not let them through.
``exports/<FAMILY>_<GIVEN>_<MRN>/<EYE>_<YYYY-MM-DD>/``
    ``cfp.png`` + ``cfp.png.json``; ``oct/volume.json`` + ``oct/bscan_000.png``... (the same pixels
    as the DICOM objects, with the sidecar convention of ``grok.ingest.readers``). For every other
    subject (even index) also ``cfp_banner.jpg`` (the photograph under a header bar with the name,
    record number and birth date) and ``oct_report_banner.png`` (a report page: those lines above the
    central B-scan), both with sidecars: text burned into pixels, which ingestion must quarantine.
``cohort.csv``
    One row per subject with UK-Biobank-style fields (see ``docs/knowledge.md``).
``truth/``
    Ground truth that the pipeline never reads: ``truth.jsonl`` (one line per image, joined to the
    manifest by ``pixel_sha256``), ``<key>.npz`` (OCT boundaries and lesion masks, CFP masks) and
    ``planted_identifiers.json`` (every identifying string written anywhere, for leak tests).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydantic import Field, field_validator

from grok.config import Settings
from grok.ids import CATEGORIES
from grok.phantom.cfp import synth_fundus
from grok.phantom.dicom import DicomIdentity, phantom_uid, write_op, write_opt
from grok.phantom.oct import OctGeometry, synth_circle_scan, synth_oct_volume

_GIVEN_F = ["ETHELINDA", "PERPETUA", "MARIGOLD", "ROSALIND", "WINIFRED", "GWENDOLYN", "HENRIETTA", "OCTAVIA",
            "ISOLDE", "PHILIPPA", "CLEMENTINE", "BERNADETTE"]
_GIVEN_M = ["BARNABY", "CUTHBERT", "PEREGRINE", "FITZWILLIAM", "LEOPOLD", "MONTAGUE", "BARTHOLOMEW", "AUGUSTUS",
            "CORNELIUS", "THADDEUS", "RUPERT", "EZEKIEL"]
_FAMILY = ["WINTERBOTTOM", "FAIRWEATHER", "HIGGINBOTHAM", "OTTERBURN", "QUILLFEATHER", "BRACKENRIDGE",
           "THistlewood".upper(), "MACGILLIVRAY", "PENHALIGON", "ASHCOMBE", "DRUMMONDSON", "KILLINGWORTH",
           "LONGBOTTOMLEY", "STRATHEARN", "WETHERSPOON", "YARBOROUGH"]
_INSTITUTIONS = [("ST CATHERINE EYE INFIRMARY", "14 Lantern Row, Dunmore"),
                 ("NORTHGATE RETINA CLINIC", "2 Quarry Lane, Ashby Fold"),
                 ("KINGSMERE OPHTHALMIC CENTRE", "88 Meadowbank Rd, Kingsmere")]
_DOCTORS = ["ABERNETHY^CALLUM", "VANTONGEREN^MAAIKE", "OKONKWO-BRIDGES^ADAEZE", "PRZYBYLSKI^TOMASZ"]
_OPERATORS = ["TECHNICIAN^ROWENA", "TECHNICIAN^ALISTAIR"]

#: Age ranges (years) by category, roughly as these conditions present in a biobank cohort.
_AGE = {"normal": (40, 75), "amd": (65, 85), "glaucoma": (55, 82), "diabetes": (45, 78), "hypertension": (50, 80),
        "alzheimers": (68, 88), "diabetic_retinopathy": (45, 78)}
#: Manufacturer and model the phantom writes on its OCT objects (DICOM Manufacturer /
#: ManufacturerModelName, export sidecars), dealt to subjects by index so every build names each
#: device the knowledge base has OCT ranges for. Only the names vary: every cube keeps the configured
#: geometry (Spectralis-like by default).
PHANTOM_OCT_DEVICES: tuple[tuple[str, str], ...] = (
    ("Heidelberg Engineering", "Spectralis"),
    ("Carl Zeiss Meditec", "Cirrus HD-OCT 5000"),
    ("Topcon", "3D OCT-1000 Mark II"),
)
#: The knowledge-base device id of each entry of PHANTOM_OCT_DEVICES (same order).
PHANTOM_OCT_DEVICE_IDS: tuple[str, ...] = ("spectralis", "cirrus", "topcon")
#: Each emulated device's standard macular cube, used with ``device_geometry``: (B-scans, rows, A-scans)
#: and (axial, lateral, between-B-scan) spacing in micrometres, all over a 6 x 6 mm field.
#: Spectralis: 20 x 20 degree volume, 49 lines of 512 A-scans, 496 rows of 3.87 um (the default cube);
#: Cirrus: Macular Cube 512 x 128, 1024 rows over a 2 mm scan depth; Topcon 3D OCT-1000: 3D macula
#: 512 x 128, rows chosen for its stated 2.3 mm scan depth (the export's exact row count is not
#: verified here).
PHANTOM_OCT_SCAN_PATTERNS: dict[str, tuple[tuple[int, int, int], tuple[float, float, float]]] = {
    "spectralis": ((49, 496, 512), (3.87, 11.7, 120.0)),
    "cirrus": ((128, 1024, 512), (1.96, 11.7, 47.2)),
    "topcon": ((128, 650, 512), (3.5, 11.7, 47.2)),
}

#: PhantomConfig fields added after builds were first keyed (hashed only when changed).
_ADDED_LATER = ("oct_devices", "device_geometry")

#: Ocular categories may affect one eye only; systemic ones show in both.
_OCULAR = {"amd", "glaucoma", "diabetic_retinopathy"}


class PhantomConfig(Settings):
    """Options of ``grok phantom`` (the build's ``source.phantom`` section extends it:
    :class:`grok.stages.config.PhantomSource`). Everything written is a deterministic function of the
    seed and these options."""

    subjects: int = Field(14, ge=1, description=(
        "Subjects; each has both eyes (CFP + OCT per eye). Categories are dealt round-robin in a seeded order, "
        "so 7 subjects cover all seven categories."))
    seed: int = Field(0, description="Seed of everything the phantom writes.")
    oct_shape: tuple[int, int, int] = Field((49, 496, 512), description=(
        "Macular cube size: B-scans, rows, columns (rows and columns >= 64; default Spectralis-like)."))
    oct_spacing_um: tuple[float, float, float] = Field((3.87, 11.7, 120.0), description=(
        "Axial, lateral and between-B-scan spacing (um)."))
    cfp_size: int = Field(1024, ge=128, description="Fundus photograph side in pixels (square).")
    noise: float = Field(1.0, gt=0, description="OCT speckle level (0.5 easy, 1 typical, 2 hard).")
    circle_scans: bool = Field(False, description="Also write a peripapillary RNFL circle scan per eye.")
    exports: bool = Field(True, description="Also write the image-export layout (PNG + sidecars) of the same data.")
    single_frame_fraction: float = Field(0.25, ge=0, le=1, description=(
        "Fraction of subjects whose OCT is written as a single-frame-per-B-scan series."))
    workers: int = Field(1, ge=1, description="Processes used to synthesise subjects.")
    categories: tuple[str, ...] = Field(CATEGORIES, min_length=1, description="Categories dealt to subjects.")
    oct_devices: tuple[str, ...] = Field(PHANTOM_OCT_DEVICE_IDS, min_length=1, description=(
        "Devices named on the OCT objects, dealt to subjects by index (knowledge-base ids: spectralis, cirrus, "
        "topcon); one id gives a single-device archive."))
    device_geometry: bool = Field(False, description=(
        "Give each OCT cube the standard macular scan pattern of the device it is named after "
        "(grok.phantom.archive.PHANTOM_OCT_SCAN_PATTERNS) instead of oct_shape / oct_spacing_um."))

    @field_validator("oct_shape")
    @classmethod
    def _shape(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(v) < 1 or v[1] < 64 or v[2] < 64:
            raise ValueError("{here}oct_shape must be N ROWS COLS with N >= 1 and ROWS, COLS >= 64 (--oct-shape)")
        return v

    @field_validator("oct_devices")
    @classmethod
    def _oct_devices(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [d for d in v if d not in PHANTOM_OCT_DEVICE_IDS]
        if unknown:
            raise ValueError(f"unknown oct_devices {unknown}; the phantom emulates {', '.join(PHANTOM_OCT_DEVICE_IDS)}")
        return v

    def key_dump(self) -> dict[str, Any]:
        """As :meth:`grok.config.Settings.key_dump`; the device fields, added after builds were first keyed,
        enter content keys only when changed (so the build's ``source.phantom`` keeps its build ids)."""
        out = super().key_dump()
        for name in _ADDED_LATER:
            if getattr(self, name) == type(self).model_fields[name].get_default(call_default_factory=True):
                out.pop(name, None)
        return out

    def oct_device(self, index: int) -> tuple[str, str, str]:
        """(device id, manufacturer, model) named on subject ``index``'s OCT objects."""
        dev = self.oct_devices[index % len(self.oct_devices)]
        maker, model = PHANTOM_OCT_DEVICES[PHANTOM_OCT_DEVICE_IDS.index(dev)]
        return dev, maker, model

    def oct_geometry(self, device: str) -> OctGeometry:
        """The macular cube written for ``device``: its scan pattern with ``device_geometry``, else the
        configured ``oct_shape`` / ``oct_spacing_um``."""
        (n, rows, cols), (ax, lat, bs) = (PHANTOM_OCT_SCAN_PATTERNS[device] if self.device_geometry
                                          else (self.oct_shape, self.oct_spacing_um))
        return OctGeometry(n_bscans=n, rows=rows, cols=cols, axial_um=ax, lateral_um=lat, bscan_spacing_um=bs)

    @field_validator("categories")
    @classmethod
    def _categories(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = set(v) - set(CATEGORIES)
        if unknown:
            raise ValueError(f"unknown categories {sorted(unknown)}; use {', '.join(CATEGORIES)}")
        return v


@dataclass
class Subject:
    """One fictional participant: identity, category, per-eye involvement and cohort fields."""

    index: int
    category: str
    sex: str
    age_years: float
    eyes_affected: dict[str, bool]
    severity: dict[str, float]
    identity: DicomIdentity
    single_frame: bool
    cohort: dict[str, Any] = field(default_factory=dict)

    def eye_label(self, eye: str) -> str:
        if self.category in _OCULAR and not self.eyes_affected[eye]:
            return "normal"
        return self.category


def _pixel_sha(arr: np.ndarray) -> str:
    """The ingest's image fingerprint (sha256 of the bytes plus the shape)."""
    arr = np.ascontiguousarray(arr)
    return hashlib.sha256(arr.tobytes() + str(arr.shape).encode()).hexdigest()


def make_subjects(cfg: PhantomConfig) -> list[Subject]:
    """Draw the subjects (identity, category, eyes, cohort row) for ``cfg``."""
    rng = np.random.default_rng([cfg.seed, 1])
    cats = list(cfg.categories)
    order = [cats[i] for i in rng.permutation(len(cats))]
    subjects = []
    used_names = set()
    for i in range(cfg.subjects):
        cat = order[i % len(order)]
        sex = "F" if rng.random() < 0.5 else "M"
        lo, hi = _AGE[cat]
        age = float(rng.integers(lo, hi + 1))
        while True:
            given = str(rng.choice(_GIVEN_F if sex == "F" else _GIVEN_M))
            family = str(rng.choice(_FAMILY))
            if (family, given) not in used_names or len(used_names) > 150:
                break
        used_names.add((family, given))
        study_date = dt.date(2019, 1, 1) + dt.timedelta(days=int(rng.integers(0, 6 * 365)))
        # born between age and age + 1 years before the visit (leap days handled by timedelta)
        birth = study_date - dt.timedelta(days=int(age * 365.25) + int(rng.integers(1, 365)))
        inst, addr = _INSTITUTIONS[int(rng.integers(len(_INSTITUTIONS)))]
        ident = DicomIdentity(
            patient_name=f"{family}^{given}",
            patient_id=f"MRN{int(rng.integers(1_000_000, 9_999_999))}",
            birth_date=birth,
            sex=sex,
            study_date=study_date,
            accession_number=f"ACC{int(rng.integers(10_000_000, 99_999_999))}",
            institution=inst,
            institution_address=addr,
            referring_physician=str(rng.choice(_DOCTORS)),
            operator=str(rng.choice(_OPERATORS)),
            other_patient_id=f"NHS{int(rng.integers(100_000_0000, 999_999_9999))}",
            device_serial=f"SN{int(rng.integers(100_000, 999_999))}",
        )
        if cat in _OCULAR:
            r = rng.random()
            affected = {"OD": True, "OS": True} if r < 0.7 else ({"OD": True, "OS": False} if r < 0.85
                                                                  else {"OD": False, "OS": True})
        else:
            affected = {"OD": cat != "normal", "OS": cat != "normal"}
        severity = {e: (float(rng.uniform(0.6, 1.2)) if affected[e] else 0.0) for e in ("OD", "OS")}
        s = Subject(i, cat, sex, age, affected, severity, ident, bool(rng.random() < cfg.single_frame_fraction))
        s.cohort = _cohort_row(s, rng)
        subjects.append(s)
    return subjects


def _lat_code(affected: dict[str, bool]) -> str:
    """UK Biobank laterality coding: 1 left, 2 right, 3 both."""
    if affected["OD"] and affected["OS"]:
        return "3"
    return "2" if affected["OD"] else "1"


def _cohort_row(s: Subject, rng: np.random.Generator) -> dict[str, Any]:
    """UK-Biobank-style fields consistent with the subject's category, with realistic gaps and noise."""
    cat = s.category
    icd: list[str] = []
    self_rep: list[str] = []
    eye_prob: list[str] = []
    meds: list[str] = []
    vasc: list[str] = []
    row: dict[str, Any] = {
        "patient_id": s.identity.patient_id, "visit": 0, "sex": s.sex, "age_years": s.age_years,
        "amd_laterality": "", "glaucoma_laterality": "", "diabetic_eye_laterality": "",
        "age_amd_diagnosed": "", "age_glaucoma_diagnosed": "", "age_diabetic_eye_diagnosed": "",
        "age_diabetes_diagnosed": "", "diabetes_diagnosed_by_doctor": "0",
        "systolic_bp_manual_1": "", "diastolic_bp_manual_1": "",
    }
    sys_bp = float(rng.normal(124, 9))
    dia_bp = float(rng.normal(77, 6))
    if cat == "amd":
        if rng.random() < 0.8:
            icd.append("H35.3")
        if rng.random() < 0.6:
            self_rep.append("1528")
        eye_prob.append("5")
        row["amd_laterality"] = _lat_code(s.eyes_affected)
        row["age_amd_diagnosed"] = f"{s.age_years - float(rng.integers(1, 8)):.0f}"
    elif cat == "glaucoma":
        if rng.random() < 0.8:
            icd.append(str(rng.choice(["H40.1", "H40.9", "H40.2"])))
        if rng.random() < 0.6:
            self_rep.append("1277")
        eye_prob.append("2")
        row["glaucoma_laterality"] = _lat_code(s.eyes_affected)
        row["age_glaucoma_diagnosed"] = f"{s.age_years - float(rng.integers(1, 10)):.0f}"
    elif cat in ("diabetes", "diabetic_retinopathy"):
        t2 = rng.random() < 0.85
        icd.append("E11.9" if t2 else "E10.9")
        self_rep.append("1223" if t2 else "1222")
        row["diabetes_diagnosed_by_doctor"] = "1"
        row["age_diabetes_diagnosed"] = f"{s.age_years - float(rng.integers(3, 20)):.0f}"
        if not t2:
            meds.append("3")
        if cat == "diabetic_retinopathy":
            icd.append("H36.0" if rng.random() < 0.6 else ("E11.3" if t2 else "E10.3"))
            if rng.random() < 0.5:
                self_rep.append("1276")
            eye_prob.append("1")
            row["diabetic_eye_laterality"] = _lat_code(s.eyes_affected)
            row["age_diabetic_eye_diagnosed"] = f"{s.age_years - float(rng.integers(1, 5)):.0f}"
    elif cat == "hypertension":
        sys_bp = float(rng.normal(152, 10))
        dia_bp = float(rng.normal(94, 6))
        if rng.random() < 0.7:
            vasc.append("4")
            meds.append("2")
        if rng.random() < 0.5:
            icd.append("I10")
    elif cat == "alzheimers":
        icd.append(str(rng.choice(["F00.1", "G30.1", "G30.9"])))
        if rng.random() < 0.5:
            self_rep.append("1263")
    if cat != "hypertension":
        sys_bp = min(sys_bp, 136.0)
        dia_bp = min(dia_bp, 86.0)
    row["systolic_bp_auto_1"] = f"{sys_bp + rng.normal(0, 3):.0f}"
    row["systolic_bp_auto_2"] = f"{sys_bp + rng.normal(0, 3):.0f}" if rng.random() < 0.9 else ""
    row["diastolic_bp_auto_1"] = f"{dia_bp + rng.normal(0, 2):.0f}"
    row["diastolic_bp_auto_2"] = f"{dia_bp + rng.normal(0, 2):.0f}" if row["systolic_bp_auto_2"] else ""
    row["icd10_codes"] = ";".join(icd)
    row["self_reported_illness_codes"] = ";".join(self_rep)
    row["eye_problem_codes"] = ";".join(eye_prob) if eye_prob else "-7"
    row["vascular_heart_problem_codes"] = ";".join(vasc) if vasc else "-7"
    row["medication_codes"] = ";".join(meds)
    return row


COHORT_COLUMNS = [
    "patient_id", "visit", "sex", "age_years", "icd10_codes", "self_reported_illness_codes", "eye_problem_codes",
    "amd_laterality", "glaucoma_laterality", "diabetic_eye_laterality", "age_amd_diagnosed",
    "age_glaucoma_diagnosed", "age_diabetic_eye_diagnosed", "age_diabetes_diagnosed",
    "diabetes_diagnosed_by_doctor", "systolic_bp_auto_1", "systolic_bp_auto_2", "diastolic_bp_auto_1",
    "diastolic_bp_auto_2", "systolic_bp_manual_1", "diastolic_bp_manual_1", "vascular_heart_problem_codes",
    "medication_codes",
]


def _png(path: Path, arr: np.ndarray) -> None:
    Image.fromarray(arr).save(path, compress_level=1)


def _banner_text(ident: DicomIdentity) -> str:
    family, _, given = ident.patient_name.partition("^")
    return f"{family}, {given}   ID {ident.patient_id}   DOB {ident.birth_date.isoformat()}"


def _with_banner(image: np.ndarray, text: str) -> np.ndarray:
    """``image`` with a black header bar carrying ``text`` in white (Pillow's default font), as screenshots and
    photo exports of some clinic viewers show the patient."""
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    _, y0, _, y1 = probe.textbbox((0, 0), text, font=font)
    bar = (y1 - y0) + 8
    im = Image.fromarray(image).convert("RGB")
    page = Image.new("RGB", (im.width, im.height + bar), (0, 0, 0))
    page.paste(im, (0, bar))
    ImageDraw.Draw(page).text((4, 4 - y0), text, fill=(255, 255, 255), font=font)
    return np.asarray(page)


def _report_page(bscan: np.ndarray, ident: DicomIdentity, eye: str) -> np.ndarray:
    """An OCT report page: white page, black header lines (name, ids, birth date, eye), the B-scan below."""
    font = ImageFont.load_default()
    lines = [f"Patient: {ident.patient_name.replace('^', ', ')}",
             f"ID: {ident.patient_id}   DOB: {ident.birth_date.isoformat()}",
             f"{ident.institution}   Eye: {eye}   Macular cube"]
    page = Image.new("L", (max(bscan.shape[1] + 20, 320), bscan.shape[0] + 16 * len(lines) + 20), 255)
    draw = ImageDraw.Draw(page)
    for k, line in enumerate(lines):
        draw.text((10, 6 + 16 * k), line, fill=0, font=font)
    page.paste(Image.fromarray(bscan), (10, 16 * len(lines) + 12))
    return np.asarray(page)


def _write_subject(args: tuple[PhantomConfig, Subject, str]) -> list[dict[str, Any]]:
    """Synthesise and write one subject; returns its truth lines."""

    cfg, s, out_s = args
    out = Path(out_s)
    ident = s.identity
    folder = f"{ident.patient_name.replace('^', '_')}_{ident.patient_id}"
    ddir = out / "dicom" / folder / ident.study_date.strftime("%Y%m%d")
    ddir.mkdir(parents=True, exist_ok=True)
    study_uid = phantom_uid("study", cfg.seed, s.index)
    truth_lines: list[dict[str, Any]] = []
    device, oct_maker, oct_model = cfg.oct_device(s.index)
    geom = cfg.oct_geometry(device)
    n = geom.n_bscans
    spacing_mm = (geom.axial_um / 1000.0, geom.lateral_um / 1000.0, geom.bscan_spacing_um / 1000.0)
    for eye in ("OD", "OS"):
        label = s.eye_label(eye)
        sev = s.severity[eye]
        key = f"s{s.index:05d}_{eye}"
        rng_c = np.random.default_rng([cfg.seed, s.index, 0 if eye == "OD" else 1, 11])
        rng_o = np.random.default_rng([cfg.seed, s.index, 0 if eye == "OD" else 1, 22])
        fundus = synth_fundus(label, eye, rng_c, severity=sev if label != "normal" else 0.0, size=cfg.cfp_size)
        disc_px = float(fundus.truth.get("disc_diameter_px") or cfg.cfp_size / 7.2)
        cfp_spacing = 1.8 / disc_px
        cfp_uid = phantom_uid("cfp", cfg.seed, s.index, eye)
        write_op(ddir / f"CFP_{eye}.dcm", fundus.image, ident, laterality=eye, study_uid=study_uid,
                 series_uid=phantom_uid("cfp-series", cfg.seed, s.index, eye), sop_instance=cfp_uid,
                 pixel_spacing_mm=cfp_spacing)
        vol = synth_oct_volume(label, eye, rng_o, severity=sev if label != "normal" else 0.0,
                               age_years=s.age_years, sex=s.sex, noise=cfg.noise, geometry=geom)
        opt_series = phantom_uid("oct-series", cfg.seed, s.index, eye)
        if s.single_frame:
            sdir = ddir / f"OCT_{eye}"
            sdir.mkdir(exist_ok=True)
            for k in range(n):
                write_opt(sdir / f"{k + 1:04d}.dcm", vol.volume, ident, laterality=eye, study_uid=study_uid,
                          series_uid=opt_series, sop_instance=phantom_uid("oct", cfg.seed, s.index, eye, k),
                          spacing_mm=spacing_mm, fundus_sop_instance=cfp_uid,
                          fundus_shape=fundus.image.shape[:2], frames=[k], instance_number=k + 1,
                          manufacturer=oct_maker, model=oct_model)
        else:
            write_opt(ddir / f"OCT_{eye}.dcm", vol.volume, ident, laterality=eye, study_uid=study_uid,
                      series_uid=opt_series, sop_instance=phantom_uid("oct", cfg.seed, s.index, eye),
                      spacing_mm=spacing_mm, fundus_sop_instance=cfp_uid, fundus_shape=fundus.image.shape[:2],
                      manufacturer=oct_maker, model=oct_model)
        tdir = out / "truth"
        np.savez_compressed(tdir / f"{key}_oct.npz", boundaries=vol.boundaries, choroid_sclera=vol.choroid_sclera,
                            **{f"mask_{k}": v for k, v in vol.masks.items()})
        np.savez_compressed(tdir / f"{key}_cfp.npz", **fundus.masks())
        base = dict(subject=s.index, eye=eye, category=s.category, label=label, severity=sev,
                    age_years=s.age_years, sex=s.sex)
        truth_lines.append(dict(base, modality="cfp", key=f"{key}_cfp", pixel_sha256=_pixel_sha(fundus.image),
                                pixel_spacing_mm=cfp_spacing, truth=fundus.truth))
        truth_lines.append(dict(base, modality="oct", key=f"{key}_oct", pixel_sha256=_pixel_sha(vol.volume),
                                single_frame_series=s.single_frame, truth=vol.to_truth()))
        if cfg.circle_scans:
            rng_r = np.random.default_rng([cfg.seed, s.index, 0 if eye == "OD" else 1, 33])
            circ = synth_circle_scan(label, eye, rng_r, severity=sev if label != "normal" else 0.0,
                                     noise=cfg.noise, rows=max(256, cfg.oct_shape[1]),
                                     cols=768 if cfg.oct_shape[2] >= 512 else 256)
            cvol = circ.bscan[None]
            write_opt(ddir / f"RNFL_{eye}.dcm", cvol, ident, laterality=eye, study_uid=study_uid,
                      series_uid=phantom_uid("rnfl-series", cfg.seed, s.index, eye),
                      sop_instance=phantom_uid("rnfl", cfg.seed, s.index, eye),
                      spacing_mm=(circ.axial_um / 1000.0, circ.lateral_um / 1000.0, circ.lateral_um / 1000.0),
                      fundus_sop_instance=None, series_description="Peripapillary RNFL circle scan",
                      manufacturer=oct_maker, model=oct_model)
            np.savez_compressed(tdir / f"{key}_circle.npz", boundaries=circ.boundaries)
            truth_lines.append(dict(base, modality="oct", key=f"{key}_circle", pixel_sha256=_pixel_sha(cvol),
                                    scan_pattern="circle", truth={"biomarkers": circ.biomarkers}))
        if cfg.exports:
            edir = out / "exports" / folder / f"{eye}_{ident.study_date.isoformat()}"
            (edir / "oct").mkdir(parents=True, exist_ok=True)
            side_common = {"eye": eye, "patient_id": ident.patient_id, "visit_date": ident.study_date.isoformat(),
                           "birth_date": ident.birth_date.isoformat(), "sex": ident.sex,
                           "manufacturer": "GROK Phantom Optics"}
            _png(edir / "cfp.png", fundus.image)
            (edir / "cfp.png.json").write_text(json.dumps(dict(side_common, modality="cfp",
                                                               pixel_spacing_mm=cfp_spacing), indent=1))
            for k in range(n):
                _png(edir / "oct" / f"bscan_{k:03d}.png", vol.volume[k])
            (edir / "oct" / "volume.json").write_text(json.dumps(dict(
                side_common, manufacturer=oct_maker, model=oct_model, modality="oct", scan_pattern="volume",
                spacing_mm={"axial": spacing_mm[0], "lateral": spacing_mm[1], "slice": spacing_mm[2]}), indent=1))
            if s.index % 2 == 0:  # some exports show the patient in the pixels (ingestion must quarantine them)

                Image.fromarray(_with_banner(fundus.image, _banner_text(ident))).save(edir / "cfp_banner.jpg",
                                                                                     quality=90)
                (edir / "cfp_banner.jpg.json").write_text(json.dumps(dict(side_common, modality="cfp"), indent=1))
                _png(edir / "oct_report_banner.png", _report_page(vol.volume[n // 2], ident, eye))
                (edir / "oct_report_banner.png.json").write_text(json.dumps(dict(
                    side_common, modality="oct", scan_pattern="bscan"), indent=1))
    return truth_lines


def write_phantom(cfg: PhantomConfig, out: str | os.PathLike, progress=None) -> dict[str, Any]:
    """Write the archive described in the module docstring; returns a summary (counts, paths)."""
    out = Path(out)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    subjects = make_subjects(cfg)
    jobs = [(cfg, s, str(out)) for s in subjects]
    truth: list[dict[str, Any]] = []
    if cfg.workers > 1:
        with ProcessPoolExecutor(cfg.workers) as pool:
            for i, lines in enumerate(pool.map(_write_subject, jobs)):
                truth.extend(lines)
                if progress:
                    progress(i + 1)
    else:
        for i, job in enumerate(jobs):
            truth.extend(_write_subject(job))
            if progress:
                progress(i + 1)
    with open(out / "cohort.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COHORT_COLUMNS)
        w.writeheader()
        for s in subjects:
            w.writerow({k: s.cohort.get(k, "") for k in COHORT_COLUMNS})
    with open(out / "truth" / "truth.jsonl", "w") as fh:
        for line in truth:
            fh.write(json.dumps(line, sort_keys=True, default=_json_default) + "\n")
    planted = sorted({p for s in subjects for p in s.identity.planted_strings() if len(p) >= 6})
    (out / "truth" / "planted_identifiers.json").write_text(json.dumps(planted, indent=1))
    labels = {s.index: {"category": s.category, "eyes": {e: s.eye_label(e) for e in ("OD", "OS")}}
              for s in subjects}
    (out / "truth" / "subjects.json").write_text(json.dumps(
        [dict(index=s.index, patient_id=s.identity.patient_id, category=s.category, sex=s.sex, age_years=s.age_years,
              eyes=labels[s.index]["eyes"], severity=s.severity, single_frame=s.single_frame) for s in subjects],
        indent=1))
    per_cat: dict[str, int] = {}
    for s in subjects:
        per_cat[s.category] = per_cat.get(s.category, 0) + 1
    return {"out": str(out), "subjects": len(subjects), "images": len(truth), "categories": per_cat,
            "config": cfg.model_dump(mode="json")}


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (dt.date, dt.datetime)):
        return o.isoformat()
    raise TypeError(f"not JSON serialisable: {type(o)}")
