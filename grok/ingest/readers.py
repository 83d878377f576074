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

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
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


def _read_oct_dicom(src, name: str) -> OctScan:
    ds = dcmread_any(src, name=name)
    sop = str(getattr(ds, "SOPClassUID", ""))
    if sop not in OCT_SOP_CLASSES:
        raise ReaderError(
            f"{name}: SOP class {sop or 'missing'} is not Ophthalmic Tomography ({OPT_SOP_CLASS}); "
            "pass an OPT object or a B-scan image export",
            error_class="wrong_sop_class",
        )
    frames, rows, cols, samples = check_pixel_budget(ds, name=name)
    arr = pixels_from_dicom(ds, name=name)
    if samples != 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = arr[None]
    positions = frame_positions_from_dicom(ds)
    if positions is not None and len(positions) == arr.shape[0] and len(set(positions)) == len(positions):
        arr = arr[np.argsort(positions)]
    n = arr.shape[0]
    desc = str(getattr(ds, "SeriesDescription", "") or "")
    pattern = "circle" if re.search(r"circle|peripapillary|rnfl", desc, re.I) else ("volume" if n > 1 else "bscan")
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
    ds = dcmread_any(src, name=name)
    sop = str(getattr(ds, "SOPClassUID", ""))
    if sop not in CFP_SOP_CLASSES:
        raise ReaderError(
            f"{name}: SOP class {sop or 'missing'} is not Ophthalmic Photography ({OP8_SOP_CLASS} / {OP16_SOP_CLASS}); "
            "pass an OP object or an image export",
            error_class="wrong_sop_class",
        )
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
    """Decode PNG/JPEG/TIFF/BMP bytes with Pillow, refusing decompression bombs and corrupt files."""
    from PIL import Image

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


def _read_oct_image(path: Path) -> OctScan:
    arr = decode_image(path, name=str(path))
    side = sidecar_for(path)
    meta = parse_sidecar(side.read_text(), name=str(side)) if side else {}
    if meta.get("modality", "oct") != "oct":
        raise ReaderError(f"{path}: its sidecar says modality {meta['modality']!r}, not an OCT B-scan",
                          error_class="wrong_modality")
    bscan = _gray(arr).astype(np.float32)
    return OctScan(bscan[None], _spacing_from_meta(meta), meta.get("eye"), meta.get("scan_pattern", "bscan"),
                   meta.get("manufacturer"), 16 if arr.dtype == np.uint16 else 8, {"source": "image_export"})


def _require_vendor(module: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        raise ImportError(f"reading vendor OCT files needs the optional extra: {VENDOR_EXTRA}") from exc


def _read_oct_vendor(path: Path) -> OctScan:
    """Heidelberg .vol/.e2e via eyepy; Topcon .fda/.fds and Zeiss .img via oct-converter.

    Only pixels and scan geometry are taken; the vendor headers' identifiers are never read out.
    """
    suffix = path.suffix.lower()
    if suffix in (".vol", ".e2e", ".sdb"):
        eyepy = _require_vendor("eyepy")
        loader = eyepy.import_heyex_vol if suffix == ".vol" else eyepy.import_heyex_e2e
        ev = loader(str(path))
        meta = ev.meta
        vol = np.asarray(ev.data, dtype=np.float32)
        spacing = (_float(meta.get("scale_y")), _float(meta.get("scale_x")), _float(meta.get("scale_z")))
        lat = meta.get("laterality")
        lat = {"OD": "OD", "OS": "OS", "R": "OD", "L": "OS"}.get(str(lat).upper() if lat else "", None)
        return OctScan(vol, spacing, lat, "volume" if vol.shape[0] > 1 else "bscan", "Heidelberg Engineering",
                       16 if vol.max(initial=0) > 255 else 8, {"source": "vendor"})
    oc = _require_vendor("oct_converter.readers")
    if suffix in (".fda", ".fds"):
        reader = oc.FDA(str(path)) if suffix == ".fda" else oc.FDS(str(path))
        oct_vol = reader.read_oct_volume()
        vol = np.asarray(oct_vol.volume, dtype=np.float32)
        vol = np.transpose(vol, (0, 1, 2)) if vol.ndim == 3 else vol
        pix = getattr(oct_vol, "pixel_spacing", None) or [math.nan, math.nan, math.nan]
        spacing = (_float(pix[1]) if len(pix) > 1 else math.nan, _float(pix[0]), _float(pix[2]) if len(pix) > 2 else math.nan)
        lat = {"R": "OD", "L": "OS"}.get(str(getattr(oct_vol, "laterality", "") or "").upper()[:1])
        return OctScan(vol, spacing, lat, "volume", "Topcon", 8, {"source": "vendor"})
    if suffix == ".img":
        reader = oc.IMG(str(path))
        oct_vol = reader.read_oct_volume()
        vol = np.asarray(oct_vol.volume, dtype=np.float32)
        lat = {"R": "OD", "L": "OS"}.get(str(getattr(oct_vol, "laterality", "") or "").upper()[:1])
        return OctScan(vol, (math.nan, math.nan, math.nan), lat, "volume", "Carl Zeiss Meditec", 8, {"source": "vendor"})
    raise ReaderError(f"{path}: unknown vendor format {suffix}", error_class="unknown_format")


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
        arr = decode_image(p, name=str(p))
        side = sidecar_for(p)
        meta = parse_sidecar(side.read_text(), name=str(side)) if side else {}
        if meta.get("modality", "cfp") != "cfp":
            raise ReaderError(f"{p}: its sidecar says modality {meta['modality']!r}, not a fundus photograph",
                              error_class="wrong_modality")
        channels = 3 if arr.ndim == 3 else 1
        return CfpImage(to_rgb8(arr, name=str(p)), meta.get("eye"), _float(meta.get("pixel_spacing_mm")),
                        meta.get("manufacturer"), {"source": "image_export", "source_channels": channels})
    return _read_cfp_dicom(p, str(p))
