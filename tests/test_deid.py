"""De-identification of headers: Basic Profile actions, keyed pseudonyms, date handling."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grok.ingest.deid import (
    DeidConfig,
    age_years,
    apply_basic_profile,
    date_offset_days,
    pseudonymise_patient_id,
    transform_date,
)


def _phantom_header(phantom_archive: Path):
    return pydicom.dcmread(next((phantom_archive / "dicom").rglob("OCT_OD.dcm")), stop_before_pixels=True)


def test_basic_profile_strips_every_planted_identifier(phantom_archive, planted):
    ds = _phantom_header(phantom_archive)
    original_uid = ds.StudyInstanceUID
    original_date = ds.StudyDate
    cfg = DeidConfig(key="k1")
    pid = pseudonymise_patient_id(ds.PatientID, "k1")
    apply_basic_profile(ds, patient_pseudonym=pid, cfg=cfg, extra_identifiers=[ds.PatientID])
    text = str(ds) + repr(ds.to_json_dict())
    for p in planted:
        assert p not in text, p
    assert ds.PatientID == pid and str(ds.PatientName) == pid
    assert ds.PatientBirthDate == ""
    assert ds.PatientIdentityRemoved == "YES"
    assert {i.CodeValue for i in ds.DeidentificationMethodCodeSequence} >= {"113100", "113107"}
    assert ds.StudyInstanceUID != original_uid and ds.StudyInstanceUID.startswith("2.25.")
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.5.4"  # class UIDs are kept
    assert ds.StudyDate != original_date and len(ds.StudyDate) == 8
    assert not any(t.is_private for t in ds.keys())
    # references to other instances are remapped consistently with the instances themselves
    ref = ds.PerFrameFunctionalGroupsSequence[0].OphthalmicFrameLocationSequence[0].ReferencedSOPInstanceUID
    assert ref.startswith("2.25.")


def test_uid_mapping_consistent_across_files(phantom_archive):
    oct_path = next((phantom_archive / "dicom").rglob("OCT_OD.dcm"))
    a = pydicom.dcmread(oct_path, stop_before_pixels=True)
    b = pydicom.dcmread(oct_path.parent / "CFP_OD.dcm", stop_before_pixels=True)
    assert a.StudyInstanceUID == b.StudyInstanceUID
    cfp_uid = b.SOPInstanceUID
    cfg = DeidConfig(key="k1")
    for ds in (a, b):
        apply_basic_profile(ds, patient_pseudonym="Pabc", cfg=cfg)
    assert a.StudyInstanceUID == b.StudyInstanceUID
    ref = a.PerFrameFunctionalGroupsSequence[0].OphthalmicFrameLocationSequence[0].ReferencedSOPInstanceUID
    if ref:  # the OCT frames point at this CFP: the link survives de-identification
        assert ref == b.SOPInstanceUID != cfp_uid


@pytest.mark.parametrize("name", ["chrJapMulti.dcm", "chrRuss.dcm", "chrGreek.dcm", "chrArab.dcm"])
def test_person_names_in_other_character_sets_removed(name):
    from pydicom.data import get_charset_files

    ds = pydicom.dcmread(get_charset_files(name)[0])
    original = str(ds.PatientName)
    apply_basic_profile(ds, patient_pseudonym="Pxyz", cfg=DeidConfig(key="k"))
    assert str(ds.PatientName) == "Pxyz" and original not in str(ds)


def test_pseudonym_normalises_and_depends_on_key():
    assert pseudonymise_patient_id(" mrn123 ", "k") == pseudonymise_patient_id("MRN123", "k")
    assert pseudonymise_patient_id("MRN123", "k") != pseudonymise_patient_id("MRN123", "k2")
    assert pseudonymise_patient_id("MRN123", "k") != pseudonymise_patient_id("MRN124", "k")


def test_demo_key_is_flagged(monkeypatch):
    monkeypatch.delenv("GROK_PSEUDONYM_KEY", raising=False)
    assert DeidConfig().demo_key_used
    monkeypatch.setenv("GROK_PSEUDONYM_KEY", "s3cret")
    cfg = DeidConfig()
    assert not cfg.demo_key_used and cfg.key == "s3cret"


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="date_mode"):
        DeidConfig(date_mode="month")


@settings(max_examples=200, deadline=None)
@given(pid=st.text(min_size=1, max_size=30), y=st.integers(1950, 2030), doy=st.integers(0, 364))
def test_date_shift_properties(pid, y, doy):
    cfg = DeidConfig(key="k", max_shift_days=365)
    d = dt.date(y, 1, 1) + dt.timedelta(days=doy)
    p = pseudonymise_patient_id(pid, "k")
    off = date_offset_days(p, cfg)
    assert -365 <= off <= -1
    d2 = d + dt.timedelta(days=30)
    # intervals between one patient's dates are preserved
    assert (transform_date(d2, p, cfg) - transform_date(d, p, cfg)).days == 30
    assert transform_date(d, p, DeidConfig(key="k", date_mode="year")) == dt.date(y, 1, 1)


def test_age_capped_and_checked():
    assert age_years(dt.date(1920, 5, 1), dt.date(2024, 5, 2)) == 90.0
    assert age_years(dt.date(1960, 5, 2), dt.date(2024, 5, 1)) == 63.0
    assert age_years(None, dt.date(2024, 5, 1)) is None
    assert age_years(dt.date(2030, 1, 1), dt.date(2024, 5, 1)) is None
