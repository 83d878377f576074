"""Write phantom images as real DICOM objects: Ophthalmic Tomography (OPT) and Ophthalmic Photography (OP).

The objects carry the mandatory modules of their IODs (checked in the tests with dicom3tools'
``dciodvfy`` when it is installed) and, on purpose, realistic identifying data in the headers
(names, ids, birth dates, institution, physicians, a private vendor block) that ingestion must strip.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from grok import __version__

OPT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.5.4"
OP8_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.5.1"
OP16_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.5.2"

#: Root for UIDs minted by the phantom (a UUID-derived root, 2.25, is always valid).
_UID_PREFIX = "2.25."


def phantom_uid(*parts: object) -> str:
    """A deterministic DICOM UID from ``parts`` (2.25.<decimal of a 128-bit hash>)."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()[:16]
    return _UID_PREFIX + str(int.from_bytes(digest, "big"))


@dataclass(frozen=True)
class DicomIdentity:
    """Identifying header data of one (fictional) patient visit, planted for the de-identification tests."""

    patient_name: str  #: DICOM PN, e.g. ``"DOE^JANE"``
    patient_id: str  #: the clinic's medical record number
    birth_date: dt.date
    sex: str  #: ``"F"`` or ``"M"``
    study_date: dt.date
    accession_number: str
    institution: str
    institution_address: str
    referring_physician: str  #: PN
    operator: str  #: PN
    other_patient_id: str
    device_serial: str

    def planted_strings(self) -> list[str]:
        """Every identifying string this identity writes into a header (for leak searches)."""
        family, _, given = self.patient_name.partition("^")
        return [
            self.patient_name,
            family,
            given,
            self.patient_id,
            self.birth_date.strftime("%Y%m%d"),
            self.accession_number,
            self.institution,
            self.institution_address,
            self.referring_physician,
            self.referring_physician.partition("^")[0],
            self.operator,
            self.other_patient_id,
            self.device_serial,
        ]


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _base_dataset(
    sop_class: str,
    sop_instance: str,
    ident: DicomIdentity,
    *,
    modality: str,
    laterality: str,
    study_uid: str,
    series_uid: str,
    series_number: int,
    instance_number: int,
    manufacturer: str,
    model: str,
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = phantom_uid("grok-implementation")
    meta.ImplementationVersionName = f"GROK_{__version__}"[:16]

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.Modality = modality
    date = ident.study_date.strftime("%Y%m%d")
    ds.StudyDate = date
    ds.SeriesDate = date
    ds.ContentDate = date
    ds.AcquisitionDateTime = date + "101500"
    ds.StudyTime = "101500"
    ds.SeriesTime = "101500"
    ds.ContentTime = "101500"
    # Patient module (planted identifiers).
    ds.PatientName = ident.patient_name
    ds.PatientID = ident.patient_id
    ds.IssuerOfPatientID = ident.institution
    ds.PatientBirthDate = ident.birth_date.strftime("%Y%m%d")
    ds.PatientSex = ident.sex
    ds.OtherPatientIDs = ident.other_patient_id
    age = ident.study_date.year - ident.birth_date.year - (
        (ident.study_date.month, ident.study_date.day) < (ident.birth_date.month, ident.birth_date.day)
    )
    ds.PatientAge = f"{age:03d}Y"
    # General study.
    ds.StudyInstanceUID = study_uid
    ds.StudyID = ident.accession_number[-6:]
    ds.AccessionNumber = ident.accession_number
    ds.ReferringPhysicianName = ident.referring_physician
    ds.StudyDescription = "Macula and disc imaging"
    # General series / ophthalmic series.
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.OperatorsName = ident.operator
    ds.FrameOfReferenceUID = phantom_uid("for", study_uid, laterality)
    ds.PositionReferenceIndicator = ""
    ds.SynchronizationFrameOfReferenceUID = phantom_uid("sync", study_uid)
    ds.SynchronizationTrigger = "NO TRIGGER"
    ds.AcquisitionTimeSynchronized = "N"
    # Equipment.
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = model
    ds.DeviceSerialNumber = ident.device_serial
    ds.SoftwareVersions = "6.16"
    ds.InstitutionName = ident.institution
    ds.InstitutionAddress = ident.institution_address
    ds.StationName = "OCT-ROOM-2"
    # Image.
    ds.InstanceNumber = instance_number
    ds.ImageLaterality = "R" if laterality == "OD" else "L"
    ds.ContentQualification = "RESEARCH"
    ds.BurnedInAnnotation = "NO"
    ds.RecognizableVisualFeatures = "NO"
    ds.LossyImageCompression = "00"
    # A vendor private block with identifiers, as real devices write.
    block = ds.private_block(0x0099, "GROK PHANTOM VENDOR", create=True)
    block.add_new(0x01, "LO", ident.patient_id)
    block.add_new(0x02, "PN", ident.patient_name)
    block.add_new(0x03, "LO", f"exam of {ident.patient_name.replace('^', ' ')}")
    return ds


def _acquisition_device(ds: Dataset, oct: bool) -> None:
    if oct:
        ds.AcquisitionDeviceTypeCodeSequence = Sequence(
            [_code("392012008", "SCT", "Optical Coherence Tomography Scanner")]
        )
    else:
        ds.AcquisitionDeviceTypeCodeSequence = Sequence([_code("409899009", "SCT", "Fundus Camera")])
    ds.IlluminationTypeCodeSequence = Sequence()
    ds.LightPathFilterTypeStackCodeSequence = Sequence()
    ds.ImagePathFilterTypeStackCodeSequence = Sequence()
    ds.LensesCodeSequence = Sequence()
    ds.DetectorType = "CCD"
    ds.AnatomicRegionSequence = Sequence([_code("81745001", "SCT", "Eye")])
    ds.PatientEyeMovementCommanded = "NO"
    ds.HorizontalFieldOfView = 30.0 if oct else 45.0
    ds.RefractiveStateSequence = Sequence()
    ds.EmmetropicMagnification = 1.0
    ds.IntraOcularPressure = 15.0
    ds.PupilDilated = "YES"
    ds.MydriaticAgentSequence = Sequence()
    ds.DegreeOfDilation = 6.0


def write_op(
    path: Path,
    rgb: np.ndarray,
    ident: DicomIdentity,
    *,
    laterality: str,
    study_uid: str,
    series_uid: str,
    sop_instance: str,
    pixel_spacing_mm: float,
    manufacturer: str = "GROK Phantom Optics",
    model: str = "FundusCam 45",
    burned_in_annotation: bool = False,
) -> None:
    """Write an Ophthalmic Photography 8 Bit Image.

    Parameters
    ----------
    rgb : (H, W, 3) uint8 ndarray
        The colour fundus photograph.
    pixel_spacing_mm : float
        Size of one pixel on the retina in mm (both directions).
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"write_op needs an (H, W, 3) uint8 image, got {rgb.dtype} {rgb.shape}")
    ds = _base_dataset(
        OP8_SOP_CLASS,
        sop_instance,
        ident,
        modality="OP",
        laterality=laterality,
        study_uid=study_uid,
        series_uid=series_uid,
        series_number=1,
        instance_number=1,
        manufacturer=manufacturer,
        model=model,
    )
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    _acquisition_device(ds, oct=False)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = int(rgb.shape[0]), int(rgb.shape[1])
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [f"{pixel_spacing_mm:.6f}", f"{pixel_spacing_mm:.6f}"]
    ds.PatientOrientation = ""
    ds.NumberOfFrames = 1
    ds.FrameIncrementPointer = 0x00181063  # FrameTime
    ds.FrameTime = 0.0
    ds.BurnedInAnnotation = "YES" if burned_in_annotation else "NO"
    ds.PixelData = np.ascontiguousarray(rgb).tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_opt(
    path: Path,
    volume: np.ndarray,
    ident: DicomIdentity,
    *,
    laterality: str,
    study_uid: str,
    series_uid: str,
    sop_instance: str,
    spacing_mm: tuple[float, float, float],
    fundus_sop_instance: str | None,
    fundus_shape: tuple[int, int] | None = None,
    frames: list[int] | None = None,
    instance_number: int = 1,
    series_description: str = "Macular cube",
    manufacturer: str = "GROK Phantom Optics",
    model: str = "Spectral OCT 2",
) -> None:
    """Write an Ophthalmic Tomography Image (multi-frame, or one frame of a single-frame series).

    Parameters
    ----------
    volume : (n_bscans, rows, cols) uint8 ndarray
        B-scans top to bottom of the retina in each frame.
    spacing_mm : (axial, lateral, between B-scans) in mm
        Written to PixelMeasuresSequence (PixelSpacing = axial, lateral; SliceThickness = between B-scans)
        in the shared functional groups.
    fundus_sop_instance : str or None
        SOPInstanceUID of the fundus/SLO image the B-scans are located on (OphthalmicFrameLocationSequence).
    frames : list of int, optional
        Indices of ``volume`` to write (default all). One index gives a single-frame object whose
        InStackPositionNumber records its place in the cube.
    """
    if volume.dtype != np.uint8 or volume.ndim != 3:
        raise ValueError(f"write_opt needs an (n, rows, cols) uint8 volume, got {volume.dtype} {volume.shape}")
    n_total, rows, cols = volume.shape
    frames = list(range(n_total)) if frames is None else list(frames)
    ds = _base_dataset(
        OPT_SOP_CLASS,
        sop_instance,
        ident,
        modality="OPT",
        laterality=laterality,
        study_uid=study_uid,
        series_uid=series_uid,
        series_number=2,
        instance_number=instance_number,
        manufacturer=manufacturer,
        model=model,
    )
    ds.SeriesDescription = series_description
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    _acquisition_device(ds, oct=True)
    ds.AcquisitionNumber = 1
    ds.AcquisitionDuration = 1.2
    ds.PresentationLUTShape = "IDENTITY"
    ds.AcquisitionContextSequence = Sequence()
    # Concatenation attributes are deliberately absent: the object is not a concatenation. dciodvfy
    # (dicom3tools 2022) still lists them as type 1 in the OPT image module, while the multi-frame
    # functional groups module forbids them outside a concatenation; the tests allow exactly those three.
    ds.AxialLengthOfTheEye = 23.6
    ds.DepthSpatialResolution = spacing_mm[0] * 1000.0
    ds.MaximumDepthDistortion = 1.0
    ds.AlongScanSpatialResolution = spacing_mm[1] * 1000.0
    ds.MaximumAlongScanDistortion = 1.0
    ds.AcrossScanSpatialResolution = spacing_mm[2] * 1000.0
    ds.MaximumAcrossScanDistortion = 1.0
    ds.IlluminationWaveLength = 870.0
    ds.IlluminationPower = 1.2
    ds.IlluminationBandwidth = 50.0
    ds.DepthOfScanField = max(1, round(rows * spacing_mm[0]))  # IS, mm
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(rows), int(cols)
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = len(frames)
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.InstanceNumber = instance_number

    # Multi-frame dimension module: one stack, indexed by the position in the stack.
    dim_org = phantom_uid("dim", series_uid)
    org = Dataset()
    org.DimensionOrganizationUID = dim_org
    ds.DimensionOrganizationSequence = Sequence([org])
    idx_stack = Dataset()
    idx_stack.DimensionOrganizationUID = dim_org
    idx_stack.DimensionIndexPointer = 0x00209056  # StackID
    idx_stack.FunctionalGroupPointer = 0x00209111  # FrameContentSequence
    idx_pos = Dataset()
    idx_pos.DimensionOrganizationUID = dim_org
    idx_pos.DimensionIndexPointer = 0x00209057  # InStackPositionNumber
    idx_pos.FunctionalGroupPointer = 0x00209111
    ds.DimensionIndexSequence = Sequence([idx_stack, idx_pos])

    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [f"{spacing_mm[0]:.6f}", f"{spacing_mm[1]:.6f}"]
    measures.SliceThickness = f"{spacing_mm[2]:.6f}"
    shared.PixelMeasuresSequence = Sequence([measures])
    orient = Dataset()
    orient.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PlaneOrientationSequence = Sequence([orient])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])

    per_frame = []
    half_extent = (n_total - 1) / 2.0
    for k in frames:
        item = Dataset()
        content = Dataset()
        content.StackID = "1"
        content.InStackPositionNumber = k + 1
        content.DimensionIndexValues = [1, k + 1]
        content.FrameAcquisitionDateTime = ds.AcquisitionDateTime
        content.FrameReferenceDateTime = ds.AcquisitionDateTime
        content.FrameAcquisitionDuration = 24.0
        item.FrameContentSequence = Sequence([content])
        pos = Dataset()
        pos.ImagePositionPatient = [0.0, 0.0, round((k - half_extent) * spacing_mm[2], 6)]
        item.PlanePositionSequence = Sequence([pos])
        anatomy = Dataset()
        anatomy.AnatomicRegionSequence = Sequence([_code("81745001", "SCT", "Eye")])
        anatomy.FrameLaterality = "R" if laterality == "OD" else "L"
        item.FrameAnatomySequence = Sequence([anatomy])
        if fundus_sop_instance is not None and fundus_shape is not None:
            loc = Dataset()
            loc.ReferencedSOPClassUID = OP8_SOP_CLASS
            loc.ReferencedSOPInstanceUID = fundus_sop_instance
            loc.OphthalmicImageOrientation = "LINEAR"
            fh, fw = fundus_shape
            # Row/column pairs on the fundus image: a horizontal line through the macula,
            # stacked top to bottom (B-scan 0 is superior).
            y = fh / 2.0 + (k - half_extent) * (spacing_mm[2] / (spacing_mm[1] * cols)) * (fw / 3.0)
            x0 = fw / 2.0 - fw / 6.0
            x1 = fw / 2.0 + fw / 6.0
            loc.ReferenceCoordinates = [round(y, 3), round(x0, 3), round(y, 3), round(x1, 3)]
            item.OphthalmicFrameLocationSequence = Sequence([loc])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = np.ascontiguousarray(volume[frames]).tobytes()
    ds.save_as(path, enforce_file_format=True)


def read_back(path: Path) -> Dataset:
    """Open a written object again (used by tests)."""
    return pydicom.dcmread(path)


__all__ = [
    "DicomIdentity",
    "OP8_SOP_CLASS",
    "OP16_SOP_CLASS",
    "OPT_SOP_CLASS",
    "generate_uid",
    "phantom_uid",
    "read_back",
    "write_op",
    "write_opt",
]
