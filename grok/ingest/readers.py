"""Read OCT and fundus images from DICOM, image exports and vendor files into plain arrays.

These readers return pixels plus the geometry a measurement needs (spacing, laterality) and
nothing identifying: no names, ids or dates leave this module. Ingestion (``grok.ingest.pipeline``)
uses the lower-level helpers here and does its own de-identification of the headers.

Image-export convention (documented in the README): a PNG/TIFF/JPEG file may have a sidecar
``<file>.json`` (the same name with ``.json`` appended, or with the image suffix replaced) holding
``modality`` ("oct" | "cfp"), ``eye`` ("OD" | "OS"), ``scan_pattern`` ("volume" | "circle" | "bscan"),
``spacing_mm`` {"axial", "lateral", "slice"} (OCT), ``pixel_spacing_mm`` (CFP), ``manufacturer``.
An OCT volume export is a folder with ``volume.json`` (same keys) and ``bscan_000.png``,
``bscan_001.png``, ... in acquisition order (B-scan 0 superior).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from grok.ids import BOUNDARIES

OPT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.5.4"
OP8_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.5.1"
OP16_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.5.2"
#: SOP classes whose pixels we ingest. VL photographic/SC fundus exports are common too.
OCT_SOP_CLASSES = {OPT_SOP_CLASS}
CFP_SOP_CLASSES = {
    OP8_SOP_CLASS,
    OP16_SOP_CLASS,
    "1.2.840.10008.5.1.4.1.1.77.1.4",  # VL Photographic Image
}

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".ppm", ".pgm", ".pnm"}
VENDOR_SUFFIXES = {".vol", ".e2e", ".sdb", ".fda", ".fds", ".img"}
VENDOR_EXTRA = "pip install 'grok-data-engine[vendor]'"

#: Largest image we decode, in pixels (width x height x frames). Larger files are refused as
#: decompression bombs before any pixel is decoded.
DEFAULT_MAX_PIXELS = 400_000_000


class ReaderError(ValueError):
    """A file that cannot be read as the expected image. The message names the file and the fix."""

    def __init__(self, message: str, *, error_class: str = "unreadable") -> None:
        super().__init__(message)
        self.error_class = error_class


@dataclass
class OctScan:
    """An OCT acquisition as arrays.

    Attributes
    ----------
    volume : (n_bscans, rows, cols) float32 ndarray
        Intensities as stored (not rescaled); B-scan 0 is the first acquired (superior).
    spacing_mm : (axial, lateral, between B-scans) in mm, NaN where unknown.
    """

    volume: np.ndarray
    spacing_mm: tuple[float, float, float]
    laterality: str | None
    scan_pattern: str
    manufacturer: str | None
    bit_depth: int
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class CfpImage:
    """A colour fundus photograph.

    Attributes
    ----------
    rgb : (H, W, 3) uint8 ndarray
        Greyscale sources are stacked to three channels (``meta["source_channels"] == 1``).
    pixel_spacing_mm : float
        Retinal size of one pixel in mm, NaN where unknown.
    """

    rgb: np.ndarray
    laterality: str | None
    pixel_spacing_mm: float
    manufacturer: str | None
    meta: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------


def _pydicom():
    import pydicom

    return pydicom


def dcmread_any(src: str | os.PathLike | IO[bytes], *, name: str, stop_before_pixels: bool = False):
    """``pydicom.dcmread`` with errors turned into :class:`ReaderError` naming ``name``."""
    pydicom = _pydicom()
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(src, stop_before_pixels=stop_before_pixels, force=False)
    except InvalidDicomError as exc:
        raise ReaderError(
            f"{name}: not a DICOM file ({exc}); export it as DICOM Part 10 or as PNG/TIFF with a sidecar",
            error_class="not_dicom",
        ) from exc
    except (EOFError, OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, OverflowError) as exc:
        raise ReaderError(
            f"{name}: truncated or corrupt DICOM ({type(exc).__name__}: {exc}); re-export the file from the device",
            error_class="corrupt_dicom",
        ) from exc


def laterality_from_dicom(ds) -> str | None:
    """``OD``/``OS`` from ImageLaterality, Laterality or the frame anatomy; None when absent."""
    candidates = [getattr(ds, "ImageLaterality", None), getattr(ds, "Laterality", None)]
    try:
        shared = ds.SharedFunctionalGroupsSequence[0]
        candidates.append(shared.FrameAnatomySequence[0].FrameLaterality)
    except (AttributeError, IndexError, KeyError):
        pass
    try:
        candidates.append(ds.PerFrameFunctionalGroupsSequence[0].FrameAnatomySequence[0].FrameLaterality)
    except (AttributeError, IndexError, KeyError):
        pass
    for c in candidates:
        if c in ("R", "OD"):
            return "OD"
        if c in ("L", "OS"):
            return "OS"
    return None


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def oct_spacing_from_dicom(ds) -> tuple[float, float, float]:
    """(axial, lateral, between B-scans) in mm from the functional groups, falling back to top level."""
    measures = None
    for path in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        try:
            measures = getattr(ds, path)[0].PixelMeasuresSequence[0]
            break
        except (AttributeError, IndexError, KeyError):
            continue
    src = measures if measures is not None else ds
    ps = getattr(src, "PixelSpacing", None)
    axial = lateral = math.nan
    if ps is not None and len(ps) == 2:
        axial, lateral = _float(ps[0]), _float(ps[1])
    between = _float(getattr(src, "SpacingBetweenSlices", None))
    if math.isnan(between):
        between = _float(getattr(src, "SliceThickness", None))
    if math.isnan(between):
        between = _float(getattr(ds, "SliceThickness", None))
    return (axial, lateral, between)


def frame_positions_from_dicom(ds) -> list[int] | None:
    """InStackPositionNumber of each frame (1-based), or None when the object does not say."""
    try:
        return [int(item.FrameContentSequence[0].InStackPositionNumber) for item in ds.PerFrameFunctionalGroupsSequence]
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return None


_CIRCLE_RE = re.compile(r"circle|peripapillary", re.I)


def circle_scan_hint(ds) -> bool:
    """True when the series description says the OPT object is a peripapillary circle scan."""
    return bool(_CIRCLE_RE.search(str(getattr(ds, "SeriesDescription", "") or "")))


def order_frames(arr: np.ndarray, positions: list[int] | None) -> np.ndarray:
    """Frames sorted by InStackPositionNumber when every frame has a distinct one; else as stored."""
    if positions is not None and len(positions) == arr.shape[0] and len(set(positions)) == len(positions):
        return arr[np.argsort(positions)]
    return arr


def check_pixel_budget(ds, *, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int, int, int]:
    """Validate declared dimensions before decoding; return (frames, rows, cols, samples).

    Raises :class:`ReaderError` for missing pixel data, absurd dimensions (decompression bombs) and
    uncompressed pixel data whose length disagrees with the declared dimensions.
    """
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise ReaderError(f"{name}: DICOM object has no pixel data; export the image, not only its report",
                          error_class="missing_pixel_data")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
        bits = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ReaderError(f"{name}: image dimensions missing or invalid ({exc}); the file is damaged, re-export it",
                          error_class="inconsistent_dimensions") from exc
    if rows <= 0 or cols <= 0 or frames <= 0 or samples not in (1, 3) or bits not in (8, 16):
        raise ReaderError(
            f"{name}: unsupported geometry rows={rows} cols={cols} frames={frames} samples={samples} bits={bits}; "
            "expected 8/16-bit greyscale or RGB",
            error_class="inconsistent_dimensions",
        )
    total = rows * cols * frames
    if total > max_pixels:
        raise ReaderError(
            f"{name}: declares {total:,} pixels (limit {max_pixels:,}); refusing a possible decompression bomb. "
            "Raise ingest.max_pixels in the config if this image is genuine",
            error_class="decompression_bomb",
        )
    if not ds.file_meta.TransferSyntaxUID.is_compressed and "PixelData" in ds:
        expected = total * samples * (bits // 8)
        actual = len(ds.PixelData)
        if actual < expected or actual > expected + 1:
            raise ReaderError(
                f"{name}: pixel data holds {actual:,} bytes but rows x cols x frames x samples says {expected:,}; "
                "the file is truncated or its header is wrong, re-export it",
                error_class="inconsistent_dimensions",
            )
    return frames, rows, cols, samples


def pixels_from_dicom(ds, *, name: str) -> np.ndarray:
    """Decode the pixel data, mapping decoder failures to :class:`ReaderError`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        ts = ds.file_meta.get("TransferSyntaxUID", "unknown")
        raise ReaderError(
            f"{name}: cannot decode transfer syntax {ts} ({exc}); install a decoder "
            "(pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg) or re-export uncompressed",
            error_class="undecodable_pixels",
        ) from exc
    except (ValueError, EOFError, OSError, IndexError, TypeError, AttributeError, KeyError) as exc:
        raise ReaderError(f"{name}: pixel data is corrupt ({type(exc).__name__}: {exc}); re-export the file",
                          error_class="corrupt_pixels") from exc
    return arr


def _dicom_of_class(src, name: str, classes, what: str, fix: str):
    """``(dataset, SOP class UID)`` of ``src``; :class:`ReaderError` (``wrong_sop_class``) naming ``what`` the
    reader expects and the ``fix`` when the object is of another class."""
    ds = dcmread_any(src, name=name)
    sop = str(getattr(ds, "SOPClassUID", ""))
    if sop not in classes:
        raise ReaderError(f"{name}: SOP class {sop or 'missing'} is not {what}; {fix}", error_class="wrong_sop_class")
    return ds, sop


def _read_oct_dicom(src, name: str) -> OctScan:
    ds, sop = _dicom_of_class(src, name, OCT_SOP_CLASSES, f"Ophthalmic Tomography ({OPT_SOP_CLASS})",
                              "pass an OPT object or a B-scan image export")
    frames, rows, cols, samples = check_pixel_budget(ds, name=name)
    arr = pixels_from_dicom(ds, name=name)
    if samples != 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = arr[None]
    positions = frame_positions_from_dicom(ds)
    arr = order_frames(arr, positions)
    n = arr.shape[0]
    pattern = "circle" if circle_scan_hint(ds) else ("volume" if n > 1 else "bscan")
    return OctScan(
        volume=arr.astype(np.float32, copy=False),
        spacing_mm=oct_spacing_from_dicom(ds),
        laterality=laterality_from_dicom(ds),
        scan_pattern=pattern,
        manufacturer=str(getattr(ds, "Manufacturer", "") or "") or None,
        bit_depth=int(ds.BitsStored) if "BitsStored" in ds else 8,
        meta={"sop_class": sop, "frames": n, "in_stack_positions": positions},
    )


def _read_cfp_dicom(src, name: str) -> CfpImage:
    ds, sop = _dicom_of_class(src, name, CFP_SOP_CLASSES,
                              f"Ophthalmic Photography ({OP8_SOP_CLASS} / {OP16_SOP_CLASS})",
                              "pass an OP object or an image export")
    check_pixel_budget(ds, name=name)
    arr = pixels_from_dicom(ds, name=name)
    rgb = to_rgb8(arr, photometric=str(getattr(ds, "PhotometricInterpretation", "RGB")), name=name)
    ps = getattr(ds, "PixelSpacing", None)
    spacing = _float(ps[0]) if ps is not None and len(ps) >= 1 else math.nan
    return CfpImage(
        rgb=rgb,
        laterality=laterality_from_dicom(ds),
        pixel_spacing_mm=spacing,
        manufacturer=str(getattr(ds, "Manufacturer", "") or "") or None,
        meta={"sop_class": sop, "source_channels": 3 if arr.ndim == 3 and arr.shape[-1] == 3 else 1},
    )


def to_rgb8(arr: np.ndarray, *, photometric: str = "RGB", name: str = "image") -> np.ndarray:
    """Convert decoded pixels to (H, W, 3) uint8 (16-bit scaled by its max bit depth, YBR converted)."""
    if arr.ndim == 4:  # a multi-frame photograph: keep the first frame
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[-1] == 3 and photometric.startswith("YBR"):
        from pydicom.pixels import convert_color_space

        arr = convert_color_space(arr, photometric, "RGB")
    if arr.dtype != np.uint8:
        a = arr.astype(np.float64)
        top = 65535.0 if a.max(initial=0) > 255 else 255.0
        if a.max(initial=0) > 4095 or top == 65535.0:
            top = float(2 ** int(np.ceil(np.log2(max(a.max(initial=1), 1) + 1))) - 1)
        arr = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ReaderError(f"{name}: unexpected pixel array shape {arr.shape}; expected (H, W) or (H, W, 3)",
                          error_class="inconsistent_dimensions")
    return np.ascontiguousarray(arr[..., :3])


# --------------------------------------------------------------------------------------------
# Image exports
# --------------------------------------------------------------------------------------------


def sidecar_for(path: Path) -> Path | None:
    """The sidecar JSON of an image export, if there is one."""
    for cand in (path.with_name(path.name + ".json"), path.with_suffix(".json")):
        if cand.is_file():
            return cand
    return None


def parse_sidecar(data: bytes | str, *, name: str) -> dict[str, Any]:
    """Parse and check a sidecar; unknown keys are ignored, bad values raise :class:`ReaderError`."""
    try:
        meta = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReaderError(f"{name}: sidecar is not valid JSON ({exc}); fix or delete it", error_class="bad_sidecar") from exc
    if not isinstance(meta, dict):
        raise ReaderError(f"{name}: sidecar must be a JSON object", error_class="bad_sidecar")
    if "modality" in meta and meta["modality"] not in ("oct", "cfp"):
        raise ReaderError(f"{name}: sidecar modality {meta['modality']!r} must be 'oct' or 'cfp'", error_class="bad_sidecar")
    if "eye" in meta and meta["eye"] not in ("OD", "OS", None):
        raise ReaderError(f"{name}: sidecar eye {meta['eye']!r} must be 'OD' or 'OS'", error_class="bad_sidecar")
    return meta


def decode_image(data: bytes | IO[bytes] | Path, *, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode PNG/JPEG/TIFF/BMP/PPM/PGM bytes (8- or 16-bit) with Pillow, refusing decompression bombs and corrupt files."""
    src = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    old = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = max_pixels // 2  # Pillow raises at 2x this value; warn-level is an error here
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(src) as im:
                if im.width * im.height > max_pixels:
                    raise ReaderError(f"{name}: {im.width}x{im.height} exceeds the {max_pixels:,}-pixel limit "
                                      "(possible decompression bomb)", error_class="decompression_bomb")
                im.load()
                if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                    arr = np.asarray(im).astype(np.uint16)
                elif im.mode in ("L", "RGB"):
                    arr = np.asarray(im)
                else:
                    arr = np.asarray(im.convert("RGB"))
    except ReaderError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ReaderError(f"{name}: refused as a decompression bomb ({exc})", error_class="decompression_bomb") from exc
    except (OSError, ValueError, SyntaxError, EOFError, TypeError, IndexError, MemoryError) as exc:
        raise ReaderError(f"{name}: unreadable image ({type(exc).__name__}: {exc}); re-export it as PNG or TIFF",
                          error_class="unreadable_image") from exc
    finally:
        Image.MAX_IMAGE_PIXELS = old
    if arr.size == 0:
        raise ReaderError(f"{name}: image has no pixels", error_class="unreadable_image")
    return arr


def _gray(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 3:
        return arr[..., :3].mean(axis=2)
    return arr


def _spacing_from_meta(meta: dict[str, Any]) -> tuple[float, float, float]:
    sp = meta.get("spacing_mm") or {}
    return (_float(sp.get("axial")), _float(sp.get("lateral")), _float(sp.get("slice")))


def _read_oct_export_folder(path: Path) -> OctScan:
    meta = parse_sidecar((path / "volume.json").read_text(), name=str(path / "volume.json"))
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ReaderError(f"{path}: volume.json found but no B-scan images (bscan_000.png, ...)",
                          error_class="missing_pixel_data")
    frames = [_gray(decode_image(p, name=str(p))) for p in files]
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise ReaderError(f"{path}: B-scans have different sizes {sorted(shapes)}; all must match",
                          error_class="inconsistent_dimensions")
    vol = np.stack(frames).astype(np.float32)
    return OctScan(vol, _spacing_from_meta(meta), meta.get("eye"), meta.get("scan_pattern", "volume"),
                   meta.get("manufacturer"), 16 if vol.max(initial=0) > 255 else 8, {"source": "export_folder"})


def _export_with_sidecar(path: Path, modality: str, what: str) -> tuple[np.ndarray, dict[str, Any]]:
    """An exported image's pixels and its sidecar's fields (``{}`` without one); :class:`ReaderError`
    (``wrong_modality``) when the sidecar names another modality than ``modality`` (``what`` it should be)."""
    arr = decode_image(path, name=str(path))
    side = sidecar_for(path)
    meta = parse_sidecar(side.read_text(), name=str(side)) if side else {}
    if meta.get("modality", modality) != modality:
        raise ReaderError(f"{path}: its sidecar says modality {meta['modality']!r}, not {what}",
                          error_class="wrong_modality")
    return arr, meta


def _read_oct_image(path: Path) -> OctScan:
    arr, meta = _export_with_sidecar(path, "oct", "an OCT B-scan")
    bscan = _gray(arr).astype(np.float32)
    return OctScan(bscan[None], _spacing_from_meta(meta), meta.get("eye"), meta.get("scan_pattern", "bscan"),
                   meta.get("manufacturer"), 16 if arr.dtype == np.uint16 else 8, {"source": "image_export"})


def _require_vendor(module: str, name: str = "vendor file"):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        raise ImportError(f"{name}: reading vendor OCT files needs the optional extra: {VENDOR_EXTRA}") from exc


#: Bytes of the fixed file header of a Heidelberg .vol file (then the SLO image, then the B-scans).
HEYEX_VOL_HEADER_BYTES = 2048
#: Bytes of the smallest B-scan header of a .vol file (general part, before the segmentation lines).
_HEYEX_VOL_MIN_BSCAN_HEADER = 256


@dataclass
class VendorIdentity:
    """Identifying fields read from a vendor file header, for ingestion's de-identification only.

    :func:`read_oct` never returns these; :func:`read_oct_vendor` hands them to ingestion, which turns
    ``patient_id`` into the keyed pseudonym (so a patient's DICOM and vendor files share one) and the
    dates into shifted dates and an age. Dates are DICOM DA strings (``"YYYYMMDD"``); every field is
    ``None`` where the header leaves it empty (blank or ``"unknown"`` id, zero date) or where the
    format's reader does not expose it (.e2e, Topcon, Zeiss at present).
    """

    # kept out of repr so a logged identity shows no identifier
    patient_id: str | None = field(default=None, repr=False)
    birth_date: str | None = field(default=None, repr=False)
    visit_date: str | None = field(default=None, repr=False)


def _heyex_text(value: Any) -> str | None:
    """A zero-terminated header string: text before the first NUL, stripped; None when blank/'unknown'."""
    s = str(value or "").split("\x00", 1)[0].strip()
    return None if not s or s.lower() == "unknown" else s


def _heyex_da(value: Any) -> str | None:
    """An eyepy-decoded header date (ISO string) as DICOM DA; None for the zero dates (1601, 1899)."""
    s = str(value or "")
    if len(s) < 10 or not s[:4].isdigit() or int(s[:4]) < 1900:
        return None
    return s[:4] + s[5:7] + s[8:10]


def _positive_mm(v: Any) -> float:
    f = _float(v)
    return f if math.isfinite(f) and f > 0 else math.nan


def _heyex_vol_header(path: Path, name: str, vol_reader) -> Any:
    """Parse and check the 2048-byte .vol header before any pixel is read.

    The header's sizes must fit in the file: a truncated copy is refused here with the numbers, and a
    corrupt size can never make the parser allocate more memory than the file holds.
    """
    size = path.stat().st_size
    if size < HEYEX_VOL_HEADER_BYTES:
        raise ReaderError(f"{name}: {size} bytes, shorter than the {HEYEX_VOL_HEADER_BYTES}-byte header of a "
                          "Heidelberg .vol file; the copy is truncated, copy or export it again from HEYEX",
                          error_class="truncated_file")
    import construct as cs

    # eyepy's field list up to (not including) the SLO image and the B-scans
    header_format = cs.Struct(*[sc for sc in vol_reader.vol_format.subcons if sc.name not in ("localizer", "bscans")])
    with open(path, "rb") as fh:
        raw = fh.read(HEYEX_VOL_HEADER_BYTES)
    try:
        hdr = header_format.parse(raw)
    except Exception as exc:  # noqa: BLE001 - construct/adapter errors of a damaged header
        raise ReaderError(f"{name}: unreadable Heidelberg .vol header ({type(exc).__name__}); the file is corrupt, "
                          "export it again from HEYEX", error_class="corrupt_vendor_file") from None
    version = _heyex_text(hdr.version) or ""
    if not version.startswith(("HSF-OCT", "ep-v")):
        raise ReaderError(f"{name}: not a Heidelberg .vol file (no 'HSF-OCT' signature at its start); "
                          "check the file type, or export the scan as DICOM OPT", error_class="unknown_format")
    dims = {"size_x": hdr.size_x, "size_y": hdr.size_y, "n_bscans": hdr.n_bscans}
    bad = [k for k, v in dims.items() if v < 1]
    if bad:
        raise ReaderError(f"{name}: .vol header gives {', '.join(f'{k}={dims[k]}' for k in bad)}; a scan needs at "
                          "least one B-scan of one pixel; the file is corrupt, export it again",
                          error_class="corrupt_vendor_file")
    need = (HEYEX_VOL_HEADER_BYTES + hdr.size_x_slo * hdr.size_y_slo
            + hdr.n_bscans * (_HEYEX_VOL_MIN_BSCAN_HEADER + 4 * hdr.size_x * hdr.size_y))
    if size < need:
        raise ReaderError(f"{name}: truncated Heidelberg .vol file: its header declares {hdr.n_bscans} B-scans of "
                          f"{hdr.size_y} x {hdr.size_x} pixels and a {hdr.size_y_slo} x {hdr.size_x_slo} SLO image "
                          f"(at least {need} bytes) but the file has {size} bytes; copy or export it again",
                          error_class="truncated_file")
    if hdr.scan_pattern == 5:
        raise ReaderError(f"{name}: a radial (star) scan .vol file; only line, circle and volume scans are read "
                          "from .vol, export this scan as DICOM OPT instead", error_class="unsupported_scan_pattern")
    return hdr


#: Order of the first segmentation lines a Heidelberg .vol B-scan header stores, as canonical boundaries
#: (HSF-OCT-103: ILM, BM, then the RNFL's outer boundary). Later lines are not mapped.
HEYEX_VOL_LINES = ("ILM", "BM", "RNFL_GCL")


def heyex_display(raw: np.ndarray) -> np.ndarray:
    """8-bit display values (float32 0..255) of stored Heidelberg reflectivity: ``255 * v ** 0.25``.

    The fourth root is the display HEYEX-based tools use for the stored linear floats (0..1); the
    format's "no data" value (FLT_MAX) and anything non-finite become 0.
    """
    v = np.asarray(raw, dtype=np.float32)
    bad = ~np.isfinite(v) | (v > 1e30)
    out = np.power(np.clip(np.where(bad, 0.0, v), 0.0, 1.0), 0.25, dtype=np.float32) * np.float32(255.0)
    return out


def _read_heyex_vol(path: Path, name: str) -> tuple[OctScan, VendorIdentity]:
    _require_vendor("eyepy", name)  # first: a stale eyepy.io.* in sys.modules must not hide a missing eyepy
    vr = _require_vendor("eyepy.io.he.vol_reader", name)
    hdr = _heyex_vol_header(path, name, vr)
    try:  # the documented HSF-OCT layout as eyepy's construct format describes it (any scan pattern)
        parsed = vr.HeVolReader(str(path)).parsed_file
        raw = np.stack([np.asarray(b.data, dtype=np.float32).reshape(hdr.size_y, hdr.size_x)
                        for b in parsed.bscans])
        lines = [np.asarray(b.layer_segmentations, dtype=np.float32).reshape(-1, hdr.size_x)
                 if b.num_seg else np.zeros((0, hdr.size_x), np.float32) for b in parsed.bscans]
        pos = [(b.start_x, b.start_y, b.end_x, b.end_y) for b in parsed.bscans]
    except (ImportError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - eyepy/construct failures of a damaged body
        where = getattr(exc, "path", None)
        raise ReaderError(f"{name}: cannot parse the Heidelberg .vol file ({type(exc).__name__}"
                          f"{' at ' + str(where) if where else ''}; version {_heyex_text(hdr.version)!r}); the file is "
                          "corrupt or of an unsupported version, export it again from HEYEX",
                          error_class="corrupt_vendor_file") from None
    if raw.shape != (hdr.n_bscans, hdr.size_y, hdr.size_x):
        raise ReaderError(f"{name}: .vol pixels have shape {raw.shape}, the header says "
                          f"{(hdr.n_bscans, hdr.size_y, hdr.size_x)}; the file is corrupt, export it again",
                          error_class="inconsistent_dimensions")
    data = heyex_display(raw)
    # the device's own segmentation lines, in canonical rows (NaN where the device has none)
    dev = np.full((hdr.n_bscans, len(BOUNDARIES), hdr.size_x), np.nan, np.float32)
    for k, ln in enumerate(lines):
        for j, bname in enumerate(HEYEX_VOL_LINES[: ln.shape[0]]):
            row = ln[j]
            dev[k, BOUNDARIES.index(bname)] = np.where(np.isfinite(row) & (row < 1e30) & (row >= 0), row, np.nan)
    circle = hdr.scan_pattern == 2
    # B-scan positions are in mm on the SLO image, y growing downwards (inferior). Order the cube
    # superior first (OctScan's convention) and columns left to right in the fundus view. A circle
    # scan's columns run TSNIT from temporal as the device stores them (its end point is the centre).
    ys = np.array([(p[1] + p[3]) / 2.0 for p in pos], dtype=np.float64)
    dx = np.array([p[2] - p[0] for p in pos], dtype=np.float64)
    order = "single_bscan"
    if data.shape[0] > 1:
        steps = np.diff(ys)
        if np.all(steps > 0):
            order = "superior_first"
        elif np.all(steps < 0):
            data, dev, order = data[::-1], dev[::-1], "reversed_to_superior_first"
        else:
            order = "file_order_unverified"  # positions missing or not monotonic: kept as stored
    flipped = bool(not circle and np.all(dx < 0))
    if flipped:
        data, dev = data[:, :, ::-1], dev[:, :, ::-1]
    vol = np.ascontiguousarray(data, dtype=np.float32)
    spacing = (_positive_mm(hdr.scale_y), _positive_mm(hdr.scale_x), _positive_mm(hdr.distance))
    lat = (_heyex_text(hdr.scan_position) or "").upper()
    lat = {"OD": "OD", "OS": "OS", "R": "OD", "L": "OS"}.get(lat)
    pattern = {1: "bscan", 2: "circle", 3: "volume", 4: "volume"}.get(
        hdr.scan_pattern, "volume" if vol.shape[0] > 1 else "bscan")
    meta = {"source": "vendor", "format": "heyex_vol", "version": _heyex_text(hdr.version),
            "intensity": "255 * (stored float32 reflectivity) ** 0.25 (8-bit display); no-data values 0",
            "bscan_order": order, "columns_flipped": flipped,
            "device_boundaries": np.ascontiguousarray(dev),
            "device_lines": [b for b in HEYEX_VOL_LINES[: max((ln.shape[0] for ln in lines), default=0)]]}
    scan = OctScan(vol, spacing, lat, pattern, "Heidelberg Engineering", 8, meta)
    ident = VendorIdentity(
        patient_id=_heyex_text(hdr.patient_id),
        birth_date=_heyex_da(hdr.dob),
        visit_date=_heyex_da(hdr.visit_date) or _heyex_da(hdr.exam_time),
    )
    return scan, ident


def read_oct_vendor(path: str | os.PathLike, *, name: str | None = None) -> tuple[OctScan, VendorIdentity]:
    """Read a vendor OCT file and the identifying fields of its header (for ingestion only).

    Heidelberg ``.vol`` (line, circle and volume scans) is parsed with eyepy's description of the HSF-OCT
    layout: ``volume`` is :func:`heyex_display` of the stored float32 reflectivity (``255 * v ** 0.25``,
    the "no data" value FLT_MAX as 0) as float32 0..255, ordered superior B-scan first; the device's own
    segmentation lines (ILM, BM, RNFL outer boundary) are in ``meta["device_boundaries"]`` as an
    ``(n, 9, cols)`` array in ``grok.ids.BOUNDARIES`` order, NaN where the device has no line;
    spacing is (``scale_y``, ``scale_x``, ``distance``) of the header in mm; laterality from
    ``scan_position``. The identity comes from the header's user-defined ``patient_id``, ``dob`` and
    ``visit_date`` (eyepy's ``EyeVolume.meta`` drops them; its parsed header keeps them).
    ``.e2e`` (eyepy), Topcon ``.fda``/``.fds`` and Zeiss ``.img`` (oct-converter) return an empty identity.

    Parameters
    ----------
    path : the vendor file
    name : how messages name the file (default: the path); ingestion passes a keyed token

    Raises
    ------
    ImportError
        When the ``vendor`` extra is missing; the message names the install command.
    ReaderError
        When the file is truncated, corrupt or of an unsupported scan pattern; the message names the fix.
    """
    p = Path(path)
    name = name or str(p)
    suffix = p.suffix.lower()
    if suffix == ".vol":
        return _read_heyex_vol(p, name)
    if suffix in (".e2e", ".sdb"):
        eyepy = _require_vendor("eyepy", name)
        try:
            ev = eyepy.import_heyex_e2e(str(p))
            vol = np.asarray(ev.data, dtype=np.float32)
            meta = ev.meta
        except (ImportError, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - eyepy failures of a damaged file
            raise ReaderError(f"{name}: cannot parse the Heidelberg E2E file ({type(exc).__name__}); the file is "
                              "corrupt or of an unsupported version, export it again from HEYEX",
                              error_class="corrupt_vendor_file") from None
        spacing = (_positive_mm(meta.get("scale_y")), _positive_mm(meta.get("scale_x")),
                   _positive_mm(meta.get("scale_z")))
        lat = meta.get("laterality")
        lat = {"OD": "OD", "OS": "OS", "R": "OD", "L": "OS"}.get(str(lat).upper() if lat else "", None)
        return OctScan(vol, spacing, lat, "volume" if vol.shape[0] > 1 else "bscan", "Heidelberg Engineering",
                       16 if vol.max(initial=0) > 255 else 8, {"source": "vendor", "format": "heyex_e2e"}), \
            VendorIdentity()
    oc = _require_vendor("oct_converter.readers", name)
    if suffix in (".fda", ".fds"):
        reader = oc.FDA(str(p)) if suffix == ".fda" else oc.FDS(str(p))
        oct_vol = reader.read_oct_volume()
        vol = np.asarray(oct_vol.volume, dtype=np.float32)
        pix = getattr(oct_vol, "pixel_spacing", None) or [math.nan, math.nan, math.nan]
        spacing = (_float(pix[1]) if len(pix) > 1 else math.nan, _float(pix[0]), _float(pix[2]) if len(pix) > 2 else math.nan)
        lat = {"R": "OD", "L": "OS"}.get(str(getattr(oct_vol, "laterality", "") or "").upper()[:1])
        return OctScan(vol, spacing, lat, "volume", "Topcon", 8, {"source": "vendor"}), VendorIdentity()
    if suffix == ".img":
        reader = oc.IMG(str(p))
        oct_vol = reader.read_oct_volume()
        vol = np.asarray(oct_vol.volume, dtype=np.float32)
        lat = {"R": "OD", "L": "OS"}.get(str(getattr(oct_vol, "laterality", "") or "").upper()[:1])
        return OctScan(vol, (math.nan, math.nan, math.nan), lat, "volume", "Carl Zeiss Meditec", 8,
                       {"source": "vendor"}), VendorIdentity()
    raise ReaderError(f"{name}: unknown vendor format {suffix}", error_class="unknown_format")


def _read_oct_vendor(path: Path) -> OctScan:
    """Heidelberg .vol/.e2e via eyepy; Topcon .fda/.fds and Zeiss .img via oct-converter (no identity)."""
    return read_oct_vendor(path)[0]


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def read_oct(path: str | os.PathLike) -> OctScan:
    """Read an OCT acquisition.

    Parameters
    ----------
    path : path-like
        A DICOM OPT file (multi-frame, or one frame of a single-frame series), a PNG/TIFF B-scan export
        (with an optional sidecar), an export folder holding ``volume.json``, or a vendor file
        (.vol, .e2e, .fda, .fds, .img; needs the ``vendor`` extra).

    Raises
    ------
    ReaderError
        When the file is missing, not OCT, corrupt or inconsistent; the message names the fix.
    """
    p = Path(path)
    if not p.exists():
        raise ReaderError(f"{p}: no such file or folder; check the path", error_class="missing_file")
    if p.is_dir():
        if (p / "volume.json").is_file():
            return _read_oct_export_folder(p)
        raise ReaderError(f"{p}: a folder without volume.json; point at a DICOM file or an export folder",
                          error_class="unknown_format")
    if p.stat().st_size == 0:
        raise ReaderError(f"{p}: zero-byte file; re-export it", error_class="empty_file")
    suffix = p.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return _read_oct_image(p)
    if suffix in VENDOR_SUFFIXES:
        return _read_oct_vendor(p)
    return _read_oct_dicom(p, str(p))


def read_cfp(path: str | os.PathLike) -> CfpImage:
    """Read a colour fundus photograph from a DICOM OP object or an image file (+ optional sidecar).

    Raises
    ------
    ReaderError
        When the file is missing, not a photograph, corrupt or inconsistent; the message names the fix.
    """
    p = Path(path)
    if not p.is_file():
        raise ReaderError(f"{p}: no such file; check the path", error_class="missing_file")
    if p.stat().st_size == 0:
        raise ReaderError(f"{p}: zero-byte file; re-export it", error_class="empty_file")
    if p.suffix.lower() in IMAGE_SUFFIXES:
        arr, meta = _export_with_sidecar(p, "cfp", "a fundus photograph")
        channels = 3 if arr.ndim == 3 else 1
        return CfpImage(to_rgb8(arr, name=str(p)), meta.get("eye"), _float(meta.get("pixel_spacing_mm")),
                        meta.get("manufacturer"), {"source": "image_export", "source_channels": channels})
    return _read_cfp_dicom(p, str(p))
