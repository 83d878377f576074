"""De-identification: DICOM Basic Application Level Confidentiality Profile plus keyed pseudonyms.

What happens to a header (PS3.15 Annex E, Basic Profile, with the "Retain Longitudinal Temporal
Information with Modified Dates" option when ``date_mode="shift"``):

* patient ids become a keyed hash (HMAC-SHA256 with a secret), stable across runs for the same
  secret, so the same patient in two archives gets the same pseudonym and nobody without the secret
  can reverse or recompute it;
* every date (DA/DT) is shifted by a per-patient offset derived from the same secret, or reduced
  to the year (``date_mode="year"``); the birth date is removed and only the age in years is kept
  (capped at 90, as HIPAA's safe harbour requires);
* every UID that identifies an instance (study, series, SOP instance, frame of reference, references
  to other instances) is replaced by a keyed UID, consistently, so references still resolve;
* every attribute on the profile's list of identifying attributes is removed or emptied, every
  person name (PN) anywhere is removed, free-text comments and descriptions are removed, and so are
  all private tags, overlays and curves;
* PatientIdentityRemoved = YES and DeidentificationMethodCodeSequence record what was done.
"""

from __future__ import annotations

import datetime as dt
import re
import warnings
from typing import Any, Literal

from pydantic import Field, PrivateAttr

from grok.config import Settings
from grok.privacy.pseudonyms import (  # the keyed constructions live in grok.privacy, below ingest
    DEMO_KEY,
    KEY_ENV,
    keyed_hash,
    keyed_uid,
    mac,
    pseudonymise_patient_id,
    resolve_key,
)

__all__ = ["DEMO_KEY", "KEY_ENV", "DeidConfig", "apply_basic_profile", "date_offset_days", "keyed_hash", "keyed_uid",
           "pseudonymise_patient_id", "transform_date"]

#: Attributes the Basic Profile removes (X) or empties (Z), by keyword. Not exhaustive on its own:
#: the blanket rules in :func:`apply_basic_profile` (all PN, private tags, comments) back it up.
REMOVE = frozenset(
    """
    OtherPatientIDs OtherPatientIDsSequence OtherPatientNames PatientBirthName PatientMotherBirthName
    PatientAddress PatientTelephoneNumbers PatientTelecomInformation MilitaryRank BranchOfService
    MedicalRecordLocator EthnicGroup Occupation AdditionalPatientHistory PatientComments
    PatientReligiousPreference PatientBirthTime PatientInsurancePlanCodeSequence
    PatientPrimaryLanguageCodeSequence PatientPrimaryLanguageModifierCodeSequence IssuerOfPatientID
    IssuerOfPatientIDQualifiersSequence InstitutionName InstitutionAddress InstitutionalDepartmentName
    InstitutionCodeSequence InstitutionalDepartmentTypeCodeSequence StationName DeviceSerialNumber
    OperatorsName OperatorIdentificationSequence PerformingPhysicianName
    PerformingPhysicianIdentificationSequence PhysiciansOfRecord PhysiciansOfRecordIdentificationSequence
    NameOfPhysiciansReadingStudy PhysiciansReadingStudyIdentificationSequence RequestingPhysician
    ReferringPhysicianAddress ReferringPhysicianTelephoneNumbers ReferringPhysicianIdentificationSequence
    ConsultingPhysicianName ConsultingPhysicianIdentificationSequence RequestAttributesSequence
    StudyComments ImageComments ContentCreatorName ContentCreatorIdentificationCodeSequence
    PersonName PersonAddress PersonTelephoneNumbers PersonTelecomInformation ResponsiblePerson
    ResponsibleOrganization ScheduledPerformingPhysicianName PerformedLocation PerformedStationName
    PerformedStationAETitle ScheduledStationName ScheduledStationAETitle AdmissionID
    AdmittingDiagnosesDescription AdmittingDiagnosesCodeSequence CurrentPatientLocation PatientState
    PatientSize PatientWeight MedicalAlerts Allergies SmokingStatus PregnancyStatus
    LastMenstrualDate SpecialNeeds ProtocolName SeriesDescription StudyDescription
    PerformedProcedureStepDescription PerformedProcedureStepID RequestedProcedureDescription
    RequestedProcedureID ScheduledProcedureStepDescription ScheduledProcedureStepID
    ReasonForTheRequestedProcedure ReasonForStudy RequestedProcedureComments
    ImagingServiceRequestComments InterpretationText DerivationDescription AcquisitionComments
    AcquisitionDeviceProcessingDescription DetectorID GantryID PlateID CassetteID
    IconImageSequence ReferencedPatientSequence ReferencedStudySequence ReferencedPatientAliasSequence
    ReferencedPerformedProcedureStepSequence ModifiedAttributesSequence OriginalAttributesSequence
    DigitalSignaturesSequence TextComments TextString FrameComments AuthorObserverSequence
    ParticipantSequence VerifyingObserverSequence VerifyingObserverName VerifyingOrganization
    SourceApplicationEntityTitle ServiceEpisodeID ServiceEpisodeDescription IssuerOfServiceEpisodeID
    PatientSpeciesDescription PatientBreedDescription ResponsiblePersonRole StudyID
    """.split()
)

#: Type-2 attributes that must stay present but empty.
EMPTY = frozenset(["AccessionNumber", "ReferringPhysicianName", "PatientBirthDate", "StudyID"])

#: Attributes whose values identify a person, a record or a place, by the kind a deny list files them under.
#: Every person name (PN) anywhere is added too: ``patient_name`` for the patient, ``person_name`` otherwise.
IDENTIFYING_VALUES = {
    "PatientID": "patient_id", "OtherPatientIDs": "patient_id", "PatientBirthDate": "birth_date",
    "AccessionNumber": "accession_number", "StudyID": "study_id", "AdmissionID": "record_number",
    "MedicalRecordLocator": "record_number", "ServiceEpisodeID": "record_number",
    "RequestedProcedureID": "record_number", "PerformedProcedureStepID": "record_number",
    "ScheduledProcedureStepID": "record_number", "InstitutionName": "institution",
    "InstitutionalDepartmentName": "institution", "IssuerOfPatientID": "institution",
    "InstitutionAddress": "address", "PatientAddress": "address", "ReferringPhysicianAddress": "address",
    "PatientTelephoneNumbers": "phone", "ReferringPhysicianTelephoneNumbers": "phone",
    "DeviceSerialNumber": "device_serial", "DetectorID": "device_serial", "StationName": "station",
}


def identifying_values(ds) -> list[tuple[str, str]]:
    """``(value, kind)`` for every identifying value of a pydicom ``Dataset`` (before de-identification), for
    a hashed deny list: every person name (and each of its parts) and the attributes of
    :data:`IDENTIFYING_VALUES`, in sequences too."""
    found: list[tuple[str, str]] = []

    def visit(dataset) -> None:
        for elem in dataset:
            try:
                if elem.VR == "SQ":
                    for item in elem.value:
                        visit(item)
                    continue
                kind = ("patient_name" if elem.keyword == "PatientName" else "person_name") if elem.VR == "PN" \
                    else IDENTIFYING_VALUES.get(elem.keyword or "")
                if kind is None or elem.value in (None, ""):
                    continue
                values = elem.value if elem.VM > 1 else [elem.value]
            except Exception:  # noqa: BLE001 - a damaged element: the reader decides the file's fate, not this
                continue
            for v in values:
                text = str(v).strip()
                if not text:
                    continue
                found.append((text, kind))
                if elem.VR == "PN":
                    found.extend((part, kind) for part in re.split(r"[\^=]", text) if part.strip())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            visit(ds)
        except Exception:  # noqa: BLE001 - a damaged dataset: keep what was read, the reader judges the file
            pass
    return found


#: UID attributes that name a class or a syntax, not an instance: kept as they are.
_KEEP_UIDS = re.compile(r"(ClassUID|TransferSyntaxUID|CodingSchemeUID|ContextGroupExtensionCreatorUID|"
                        r"MappingResourceUID|ContextUID|TemplateExtensionCreatorUID)$")

_DEID_CODES = {
    "113100": "Basic Application Confidentiality Profile",
    "113107": "Retain Longitudinal Temporal Information Modified Dates Option",
    "113109": "Retain Patient Characteristics Option",
}


class DeidPolicy(Settings):
    """How dates and burned-in text are handled (the secret is not a setting: :class:`DeidConfig` adds it;
    the build's ``deid`` section adds the name of the variable that holds it)."""

    date_mode: Literal["shift", "year"] = Field("shift", description=(
        "'shift': every date moved by a per-patient offset, intervals kept; 'year': dates reduced to 1 January "
        "of their year."))
    max_shift_days: int = Field(365, ge=1, description=(
        "Offsets are drawn (deterministically from the key and patient) in [-max_shift_days, -1]."))
    allow_burned_in: bool = Field(False, description=(
        "Ingest images whose header says BurnedInAnnotation = YES, and image exports whose pixels show text, "
        "with a quality flag instead of quarantining them."))


class DeidConfig(DeidPolicy):
    """How identifiers are replaced: :class:`DeidPolicy` plus the secret ``key`` of the keyed pseudonyms and
    date shifts (default ``$GROK_PSEUDONYM_KEY``, else the public demo key, and ``demo_key_used`` says so:
    pseudonyms are then reproducible by anyone)."""

    key: str | None = Field(None, repr=False, exclude=True, description="The pseudonym secret (never written).")
    _demo_key_used: bool = PrivateAttr(False)

    def model_post_init(self, context: Any) -> None:
        if not self.key:
            self.key, self._demo_key_used = resolve_key(None)

    @property
    def demo_key_used(self) -> bool:
        return self._demo_key_used

    @property
    def key_bytes(self) -> bytes:
        return str(self.key).encode()


def date_offset_days(patient_pseudonym: str, cfg: DeidConfig) -> int:
    """Per-patient date shift in days, in ``[-max_shift_days, -1]``."""
    n = int.from_bytes(mac(cfg.key_bytes, "dateshift", patient_pseudonym)[:4], "big")
    return -(1 + n % cfg.max_shift_days)


def parse_da(value: Any) -> dt.date | None:
    s = str(value or "").strip()
    if len(s) >= 8 and s[:8].isdigit():
        try:
            return dt.date(int(s[:4]), int(s[4:6]), int(s[6:8]))
        except ValueError:
            return None
    return None


def transform_date(d: dt.date, patient_pseudonym: str, cfg: DeidConfig) -> dt.date:
    """Shift or reduce one date according to ``cfg``."""
    if cfg.date_mode == "year":
        return dt.date(d.year, 1, 1)
    return d + dt.timedelta(days=date_offset_days(patient_pseudonym, cfg))


def age_years(birth: dt.date | None, on: dt.date | None) -> float | None:
    """Age in whole years on a date, capped at 90 (None when either date is unknown)."""
    if birth is None or on is None:
        return None
    age = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    if age < 0 or age > 130:
        return None
    return float(min(age, 90))


def apply_basic_profile(ds, *, patient_pseudonym: str, cfg: DeidConfig, extra_identifiers: list[str] = ()) -> None:
    """De-identify a pydicom ``Dataset`` in place (header only; pixels are not inspected).

    ``extra_identifiers`` are strings known to identify the patient (original id, name parts);
    any remaining text element containing one of them is removed as a last line of defence.
    """
    key = cfg.key_bytes
    needles = [s.upper() for s in extra_identifiers if s and len(s) >= 3]

    def visit(dataset) -> None:
        for elem in list(dataset):
            tag = elem.tag
            kw = elem.keyword
            if tag.group in range(0x5000, 0x5100) or (tag.group in range(0x6000, 0x6100) and tag.element in (0x3000, 0x4000)):
                del dataset[tag]
                continue
            if kw in EMPTY:
                elem.value = ""
                continue
            if kw in REMOVE:
                del dataset[tag]
                continue
            if elem.VR == "SQ":
                for item in elem.value:
                    visit(item)
                continue
            if elem.VR == "PN":
                if kw == "PatientName":
                    elem.value = patient_pseudonym
                else:
                    del dataset[tag]
                continue
            if kw == "PatientID":
                elem.value = patient_pseudonym
                continue
            if elem.VR == "UI" and elem.value and not _KEEP_UIDS.search(kw or ""):
                if elem.VM > 1:
                    elem.value = [keyed_uid(str(u), key) for u in elem.value]
                else:
                    elem.value = keyed_uid(str(elem.value), key)
                continue
            if elem.VR == "DA" and elem.value:
                d = parse_da(elem.value)
                elem.value = transform_date(d, patient_pseudonym, cfg).strftime("%Y%m%d") if d else ""
                continue
            if elem.VR == "DT" and elem.value:
                s = str(elem.value)
                d = parse_da(s[:8])
                elem.value = (transform_date(d, patient_pseudonym, cfg).strftime("%Y%m%d") + s[8:14]) if d else ""
                continue
            if elem.VR in ("LO", "LT", "ST", "UT", "SH", "UC") and needles and elem.value:
                text = str(elem.value).upper()
                if any(n in text for n in needles):
                    del dataset[tag]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.remove_private_tags()  # recursive (walks every sequence item) -- once, not per item
        visit(ds)
        if hasattr(ds, "file_meta") and "MediaStorageSOPInstanceUID" in ds.file_meta:
            ds.file_meta.MediaStorageSOPInstanceUID = keyed_uid(str(ds.file_meta.MediaStorageSOPInstanceUID), key)
        ds.PatientIdentityRemoved = "YES"
        methods = ["113100", "113109"] + (["113107"] if cfg.date_mode == "shift" else [])
        # LO holds 64 characters; the code sequence below carries the full meanings.
        ds.DeidentificationMethod = "GROK basic profile" + (" + modified dates" if cfg.date_mode == "shift" else
                                                              " + dates to year")
        from pydicom.dataset import Dataset
        from pydicom.sequence import Sequence

        items = []
        for m in methods:
            it = Dataset()
            it.CodeValue = m
            it.CodingSchemeDesignator = "DCM"
            it.CodeMeaning = _DEID_CODES[m]
            items.append(it)
        ds.DeidentificationMethodCodeSequence = Sequence(items)
