"""Ingestion: archive -> de-identified normalised images + manifest, studies, quarantine.

Run as: grok ingest SOURCE --out DIR

Every file of the source ends in exactly one of three states, listed in ``DIR/files.parquet``:

* ``ingested``: its pixels are in ``DIR/images/<image_id>.npy`` and it has a manifest row (the
  members of a single-frame OCT series, or of an exported B-scan folder, share one image);
* ``quarantined``: unreadable, corrupt, inconsistent, of the wrong kind, or refused by policy
  (``BurnedInAnnotation = YES``, or an export whose pixels show text: ``possible_burned_in_text``);
  the reason and an error class are in ``DIR/quarantine.parquet``;
* ``skipped``: not an image by design (a sidecar consumed by its image, a cohort table, an OS
  metadata file) or an exact duplicate of an image already ingested.

So ``seen = ingested + quarantined + skipped`` always holds, and nothing is silently dropped.
No output holds a source path, a file name, a name, an original id or a real date: source files
are named by a keyed hash (``source_key``); ``grok ingest --locate`` maps keys back to paths on
the operator's terminal when the original source is at hand. The identifiers met on the way (names,
ids, birth dates ... from headers and sidecars) are kept only as keyed hashes, in ``DIR/deny_list.json``
(:mod:`grok.privacy.denylist`), for the data contracts, the publish step and ``grok privacy-scan``.

Re-ingesting into the same ``DIR`` reuses every file whose bytes are unchanged (matched by sha256)
and writes a byte-identical manifest.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
import os
import pickle
import re
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from grok import __version__
from grok.config import Settings
from grok.ingest import readers
from grok.ingest.deid import (
    DeidConfig,
    age_years,
    apply_basic_profile,
    identifying_values,
    keyed_hash,
    parse_da,
    pseudonymise_patient_id,
    transform_date,
)
from grok.ingest.readers import ReaderError
from grok.ingest.source import SourceFile, iter_source
from grok.parquet_io import ParquetSink, TableWriter, sorted_batches
from grok.privacy.burned_in import find_text_regions
from grok.privacy.denylist import DENY_LIST_FILE, DenyList, DenyListSpool

INGEST_VERSION = "1"

SKIP_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}
TABLE_SUFFIXES = {".csv", ".tsv", ".parquet", ".xlsx", ".xls"}
TEXT_SUFFIXES = {".txt", ".md", ".pdf", ".html", ".xml"}
#: Rows per spooled record batch of the driver's staged tables: file records, manifest rows.
SPOOL_BATCH_ROWS = 1024
#: Rows per batch when the staged tables are written out sorted (manifest, studies, files, quarantine): the most
#: the stage holds of a table. Each batch is gathered from the staged file's chunks of ``SPOOL_BATCH_ROWS`` rows
#: (:func:`grok.parquet_io.sorted_batches`), which costs a take per chunk a batch touches: 1.28M rows sorted by a
#: random key took 2.4 s of CPU in batches of 65,536, 5.1 s in batches of 16,384, 1.6 s as one batch (ad-hoc probe).
WRITE_BATCH_ROWS = 65536
#: ... and at most about this many bytes of it (manifest rows are ~560 B: 65,536 of them held 37 MB, and the stage's
#: peak grew with the archive up to that many images, +13 MB from 2,500 to 5,000 small phantom studies; issue 22).
WRITE_BATCH_BYTES = 2 << 20


def _write_batch_rows(table: pa.Table) -> int:
    """Rows per sorted batch of ``table``: :data:`WRITE_BATCH_BYTES` worth, 1,024 to :data:`WRITE_BATCH_ROWS`."""
    per_row = table.nbytes / max(1, table.num_rows)
    return int(min(WRITE_BATCH_ROWS, max(1024, WRITE_BATCH_BYTES // max(1.0, per_row))))


OCT2017_RE = re.compile(r"^(CNV|DME|DRUSEN|NORMAL)-(\d+)-(\d+)\.(jpe?g|png|tiff?)$", re.I)

MANIFEST_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("study_id", pa.string()),
        ("patient_id", pa.string()),
        ("eye", pa.string()),
        ("visit", pa.string()),
        ("modality", pa.string()),
        ("scan_pattern", pa.string()),
        ("source_format", pa.string()),
        ("sop_class_uid", pa.string()),
        ("manufacturer", pa.string()),
        ("model", pa.string()),
        ("rows", pa.int32()),
        ("cols", pa.int32()),
        ("frames", pa.int32()),
        ("channels", pa.int32()),
        ("bit_depth", pa.int32()),
        ("spacing_axial_mm", pa.float64()),
        ("spacing_lateral_mm", pa.float64()),
        ("spacing_slice_mm", pa.float64()),
        ("pixel_spacing_mm", pa.float64()),
        ("age_years", pa.float64()),
        ("sex", pa.string()),
        ("source_label", pa.string()),
        ("laterality_source", pa.string()),
        ("pixel_sha256", pa.string()),
        ("source_sha256s", pa.list_(pa.string())),
        ("normalized_path", pa.string()),
        ("header_path", pa.string()),
        ("pixel_bytes", pa.int64()),
        ("quality_flags", pa.list_(pa.string())),
    ]
)

STUDIES_SCHEMA = pa.schema(
    [
        ("study_id", pa.string()),
        ("patient_id", pa.string()),
        ("eye", pa.string()),
        ("visit", pa.string()),
        ("cfp_image_ids", pa.list_(pa.string())),
        ("oct_image_ids", pa.list_(pa.string())),
        ("paired", pa.bool_()),
        ("age_years", pa.float64()),
        ("sex", pa.string()),
        ("flags", pa.list_(pa.string())),
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        ("source_key", pa.string()),
        ("path", pa.string()),
        ("size_bytes", pa.int64()),
        ("source_sha256", pa.string()),
        ("reason", pa.string()),
        ("error_class", pa.string()),
        ("stage", pa.string()),
    ]
)

FILES_SCHEMA = pa.schema(
    [
        ("source_key", pa.string()),
        ("size_bytes", pa.int64()),
        ("source_sha256", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("error_class", pa.string()),
        ("image_ids", pa.list_(pa.string())),
    ]
)


#: What the driver spools of each file's record until the end of the run (``files.parquet`` and
#: ``quarantine.parquet`` are written from it); ``path`` only with ``quarantine_paths: plain``.
_REC_SCHEMA = pa.schema([("source_key", pa.string()), ("path", pa.string()), ("size_bytes", pa.int64()),
                         ("source_sha256", pa.string()), ("status", pa.string()), ("reason", pa.string()),
                         ("error_class", pa.string()), ("image_ids", pa.list_(pa.string())), ("stage", pa.string())])
#: A staged frame of a multi-file acquisition, spooled until the run's end (``Ingestor._assemble_series``): where
#: its pixels are, the fields its series' consistency checks read and its file record (``path`` only with
#: ``quarantine_paths: plain``, as in the files table). ``seq`` is the staging order.
_STAGED_SCHEMA = pa.schema([("series_key", pa.string()), ("position", pa.int64()), ("seq", pa.int64()),
                            ("npy", pa.string()), ("patient_id", pa.string()), ("eye", pa.string()),
                            ("source_key", pa.string()), ("path", pa.string()), ("size_bytes", pa.int64()),
                            ("source_sha256", pa.string()), ("stage", pa.string())])


class IngestConfig(Settings):
    """Settings of one ingestion run."""

    deid: DeidConfig = Field(default_factory=DeidConfig, description=(
        "Pseudonym secret, date handling, burned-in annotation policy."))
    max_pixels: int = Field(readers.DEFAULT_MAX_PIXELS, ge=1, description=(
        "Largest image (width x height x frames) decoded; larger ones are quarantined as possible "
        "decompression bombs."))
    quarantine_paths: Literal["redacted", "plain"] = Field("redacted", description=(
        "'redacted': the quarantine names files by their keyed source_key only, because clinic file and folder "
        "names often carry patient names; 'plain': also store the path inside the archive, for sites that know "
        "their paths hold no identifiers."))


@dataclass
class IngestResult:
    """Counts of one run; ``files_seen == files_ingested + files_quarantined + files_skipped``."""

    out_dir: str
    files_seen: int = 0
    files_ingested: int = 0
    files_quarantined: int = 0
    files_skipped: int = 0
    files_cached: int = 0
    images: int = 0
    studies: int = 0
    paired_studies: int = 0
    pixel_bytes: int = 0
    source_bytes: int = 0
    elapsed_s: float = 0.0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    skip_reasons: dict[str, int] = field(default_factory=dict)
    demo_key_used: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class _FileRec:
    source_key: str
    relpath: str
    size: int
    sha: str
    status: str = ""
    reason: str = ""
    error_class: str = ""
    image_ids: list[str] = field(default_factory=list)
    stage: str = "read"


@dataclass(slots=True)
class _Staged:
    """One frame of a multi-file OCT acquisition, parked on disk until its series is complete: its pixels in
    ``npy`` and its metadata (the first staged member's with the de-identified header) pickled beside them, so
    the driver keeps only the few fields the consistency checks need, however many frames an archive has."""

    position: int
    npy: str
    rec: _FileRec
    identity: tuple[Any, Any]  # (patient_id, eye)
    seq: int = 0  # staging order

    def meta(self) -> dict[str, Any]:
        with open(self.npy[:-4] + ".meta.pickle", "rb") as fh:
            return pickle.load(fh)


class _Quarantine(Exception):
    def __init__(self, reason: str, error_class: str, stage: str = "read") -> None:
        super().__init__(reason)
        self.reason = reason
        self.error_class = error_class
        self.stage = stage


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fnan(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def study_id_for(patient_id: str, eye: str | None, visit: str | None) -> str:
    """Deterministic study id from already-pseudonymous values."""
    return "S" + _sha(f"{patient_id}|{eye or 'unknown'}|{visit or 'unknown'}".encode())[:16]


def _quality_flags(arr: np.ndarray, modality: str) -> list[str]:
    flags: list[str] = []
    a = arr if arr.size <= 4_000_000 else arr.reshape(-1)[:: max(1, arr.size // 4_000_000)]
    if not np.all(np.isfinite(a)) if a.dtype.kind == "f" else False:
        flags.append("nonfinite_pixels")
    lo, hi = float(np.min(a)), float(np.max(a))
    if hi == lo:
        flags.append("constant_image")
        return flags
    top = 65535.0 if arr.dtype == np.uint16 else 255.0
    if (hi - lo) < 0.1 * top:
        flags.append("low_dynamic_range")
    if float(np.mean(a >= top)) > 0.05:
        flags.append("saturated")
    if modality == "cfp" and float(np.mean(a)) < 0.04 * top:
        flags.append("very_dark")
    return flags


class Ingestor:
    """Streams one source into ``out_dir``. Use :func:`ingest` unless you need the pieces."""

    def __init__(self, source: str, out_dir: Path, config: IngestConfig,
                 progress: Callable[[int, str], None] | None = None) -> None:
        self.source = str(source)
        self.out = Path(out_dir)
        self.cfg = config
        self.progress = progress
        self.images_dir = self.out / "images"
        self.staging = self.out / ".staging"
        self.key = config.deid.key_bytes
        # Memory stays flat in the archive's size: files whose state is final and manifest rows are spooled to
        # Arrow IPC files in the staging folder, ``SPOOL_BATCH_ROWS`` rows at a time; only files still waiting
        # (sidecars, frames of a series) are held.
        self.recs = TableWriter(self.staging / "files.arrow", _REC_SCHEMA, batch_rows=SPOOL_BATCH_ROWS)
        self.open_recs: list[_FileRec] = []
        self.rows = TableWriter(self.staging / "manifest.arrow", MANIFEST_SCHEMA, batch_rows=SPOOL_BATCH_ROWS)
        self.sidecars: dict[str, bytes] = {}
        self.consumed_sidecars: set[str] = set()
        # Frames of multi-file acquisitions: pixels and metadata parked in the staging folder, their records
        # spooled here and grouped by series at the end (a Python object per frame held the driver's memory
        # growing with the archive: ~1.4 kB a study on the small phantom, issue 22).
        self.staged = TableWriter(self.staging / "staged.arrow", _STAGED_SCHEMA, batch_rows=SPOOL_BATCH_ROWS)
        # The previous run's tables (columnar) and where each file / image is in them.
        self.prev_files: dict[str, int] = {}
        self.prev_rows: dict[str, int] = {}
        self._prev_files_table: pa.Table | None = None
        self._prev_manifest: pa.Table | None = None
        self.pixel_to_image: dict[str, str] = {}
        #: Identifiers met in the source, only as keyed hashes, spooled to the staging folder as they are met and
        #: written to ``deny_list.json`` at the end (held in a dict they grew with the patients: issue 22).
        self.deny = DenyListSpool(self.staging / "deny.arrow", key=self.key)

    # -- caching ---------------------------------------------------------------------------
    def _load_previous(self) -> None:
        files = self.out / "files.parquet"
        manifest = self.out / "manifest.parquet"
        meta = self.out / "ingest_summary.json"
        if not (files.exists() and manifest.exists() and meta.exists()):
            return
        try:
            prev_meta = json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError):
            return
        if prev_meta.get("ingest_version") != INGEST_VERSION or prev_meta.get("key_fingerprint") != self._key_fp():
            return  # other code or another secret: nothing can be reused
        ft = pq.read_table(files)
        self._prev_files_table = ft
        for i, (sha, key) in enumerate(zip(ft.column("source_sha256").to_pylist(), ft.column("source_key").to_pylist())):
            self.prev_files[sha + "|" + key] = i
        mt = pq.read_table(manifest)
        self._prev_manifest = mt
        for i, (image_id, path) in enumerate(zip(mt.column("image_id").to_pylist(),
                                                 mt.column("normalized_path").to_pylist())):
            if (self.out / path).exists():
                self.prev_rows[image_id] = i

    def _key_fp(self) -> str:
        return keyed_hash("fingerprint", self.key, purpose="key-fingerprint", length=12)

    # -- main loop -------------------------------------------------------------------------
    def run(self) -> IngestResult:
        t0 = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        self.images_dir.mkdir(exist_ok=True)
        if self.staging.exists():
            shutil.rmtree(self.staging)
        self._load_previous()
        # Pass 1: small JSON sidecars (so image exports find theirs even in a streamed tar).
        for sf in iter_source(self.source, want=lambda n: n.lower().endswith(".json")):
            if sf.size <= 1_000_000:
                self.sidecars[sf.relpath] = sf.read()
        # Pass 2: everything.
        result = IngestResult(out_dir=str(self.out), demo_key_used=self.cfg.deid.demo_key_used)
        for i, sf in enumerate(iter_source(self.source)):
            rec = self._handle(sf)
            if rec.status == "pending_sidecar":
                self.open_recs.append(rec)  # its state is settled at the end of the run
            elif rec.status != "staged":  # a staged frame's record is spooled with it (_stage)
                self._spool_rec(rec)
            result.source_bytes += sf.size
            if self.progress:
                self.progress(i + 1, rec.status)
        self._assemble_series()
        self._finalise_skipped_sidecars()
        self._write(result)
        result.elapsed_s = round(time.perf_counter() - t0, 3)
        summary = self.out / "ingest_summary.json"
        data = json.loads(summary.read_text())
        data["elapsed_s"] = result.elapsed_s
        summary.write_text(json.dumps(data, indent=2, sort_keys=True))
        shutil.rmtree(self.staging, ignore_errors=True)
        return result

    def _spool_rec(self, r: _FileRec) -> None:
        self.recs.write(dict(source_key=r.source_key, path=r.relpath if self.cfg.quarantine_paths == "plain" else None,
                              size_bytes=r.size, source_sha256=r.sha, status=r.status, reason=r.reason,
                              error_class=r.error_class, image_ids=r.image_ids, stage=r.stage))

    def _new_rec(self, sf: SourceFile, data: bytes) -> _FileRec:
        return _FileRec(keyed_hash(sf.relpath, self.key, purpose="source-path"), sf.relpath, len(data), _sha(data))

    def _handle(self, sf: SourceFile) -> _FileRec:
        name = PurePosixPath(sf.relpath).name
        lower = name.lower()
        try:
            data = sf.read()
        except Exception as exc:  # noqa: BLE001 - an archive member that cannot be read is quarantined
            rec = _FileRec(keyed_hash(sf.relpath, self.key, purpose="source-path"), sf.relpath, sf.size, "")
            return self._q(rec, _Quarantine(f"cannot read the file from the archive ({type(exc).__name__}: {exc})",
                                            "unreadable"))
        rec = self._new_rec(sf, data)
        suffix = PurePosixPath(lower).suffix
        if lower in SKIP_NAMES or lower.startswith("._"):
            return self._skip(rec, "operating-system metadata file")
        if suffix == ".json":
            rec.status = "pending_sidecar"
            return rec
        if suffix in TABLE_SUFFIXES:
            return self._skip(rec, "tabular file (pass cohort tables to the label stage, not to ingest)")
        if suffix in TEXT_SUFFIXES:
            return self._skip(rec, "document, not an image")
        if len(data) == 0:
            return self._q(rec, _Quarantine("zero-byte file; re-export it", "empty_file"))
        cached = self._cached(rec)
        if cached is not None:
            return cached
        try:
            if suffix in readers.IMAGE_SUFFIXES:
                self._ingest_image_export(rec, data)
            elif suffix in readers.VENDOR_SUFFIXES:
                self._ingest_vendor(rec, data, suffix)
            elif data[128:132] == b"DICM" or suffix in (".dcm", ".dicom", ""):
                self._ingest_dicom(rec, data)
            else:
                raise _Quarantine(f"unknown file type {suffix!r}; supported: DICOM, PNG/JPEG/TIFF exports, "
                                  ".vol/.e2e/.fda/.fds/.img vendor files", "unknown_format")
        except _Quarantine as q:
            return self._q(rec, q)
        except ReaderError as exc:
            return self._q(rec, _Quarantine(self._scrub(str(exc), rec), exc.error_class))
        except ImportError as exc:
            return self._q(rec, _Quarantine(str(exc), "missing_dependency"))
        except (MemoryError, RecursionError) as exc:
            return self._q(rec, _Quarantine(f"file too complex to decode ({type(exc).__name__})", "decode_failure"))
        except Exception as exc:  # noqa: BLE001 - one bad file never stops the run
            return self._q(rec, _Quarantine(f"unexpected decoder failure ({type(exc).__name__}: "
                                            f"{self._scrub(str(exc), rec)[:300]})", "decode_failure"))
        return rec

    def _scrub(self, message: str, rec: _FileRec) -> str:
        """Error messages name the file; outputs must not, so the path is replaced by its key."""
        if not rec.relpath:  # a staged frame's record read back without its path
            return message
        return message.replace(rec.relpath, f"<source {rec.source_key}>").replace(
            PurePosixPath(rec.relpath).name, f"<source {rec.source_key}>")

    def _cached(self, rec: _FileRec) -> _FileRec | None:
        at = self.prev_files.get(rec.sha + "|" + rec.source_key)
        if at is None:
            return None
        prev = self._prev_files_table.slice(at, 1).to_pylist()[0]
        if prev["status"] == "ingested":
            ids = list(prev["image_ids"] or [])
            if not ids or not all(i in self.prev_rows for i in ids):
                return None
            for i in ids:
                row = self._prev_manifest.slice(self.prev_rows[i], 1).to_pylist()[0]
                if row["pixel_sha256"] not in self.pixel_to_image:  # else this image is already in the manifest
                    self.rows.write(row)
                    self.pixel_to_image[row["pixel_sha256"]] = i
        rec.status, rec.reason, rec.error_class = prev["status"], prev["reason"], prev["error_class"]
        rec.image_ids = list(prev["image_ids"] or [])
        rec.stage = "cached"
        return rec

    def _q(self, rec: _FileRec, q: _Quarantine) -> _FileRec:
        rec.status, rec.reason, rec.error_class, rec.stage = "quarantined", q.reason, q.error_class, q.stage
        return rec

    def _skip(self, rec: _FileRec, reason: str) -> _FileRec:
        rec.status, rec.reason, rec.error_class = "skipped", reason, ""
        return rec

    # -- identity ----------------------------------------------------------------------------
    def _identity(self, original_id: str | None, birth, visit_date, sex: str | None,
                  fallback: str) -> tuple[str, str | None, float | None, str | None, list[str]]:
        flags = []
        if original_id and str(original_id).strip():
            pid = pseudonymise_patient_id(str(original_id), self.key)
        else:
            pid = "P" + keyed_hash(fallback, self.key, purpose="unknown-patient")
            flags.append("patient_unknown")
        visit = None
        if visit_date is not None:
            visit = transform_date(visit_date, pid, self.cfg.deid).isoformat()
            if self.cfg.deid.date_mode == "year":
                visit = visit[:4]
        else:
            flags.append("visit_date_unknown")
        age = age_years(birth, visit_date)
        sex = sex if sex in ("F", "M") else None
        return pid, visit, age, sex, flags

    # -- DICOM ---------------------------------------------------------------------------------
    def _ingest_dicom(self, rec: _FileRec, data: bytes) -> None:
        name = f"<source {rec.source_key}>"
        ds = readers.dcmread_any(io.BytesIO(data), name=name)
        for value, kind in identifying_values(ds):
            self.deny.add(value, kind)
        sop = str(getattr(ds, "SOPClassUID", "") or "")
        if not sop:
            raise _Quarantine("DICOM file without a SOP Class UID: damaged, or not an image object; re-export it",
                              "corrupt_dicom")
        if sop in readers.OCT_SOP_CLASSES:
            modality = "oct"
        elif sop in readers.CFP_SOP_CLASSES:
            modality = "cfp"
        else:
            raise _Quarantine(f"SOP class {sop or 'missing'} is not an ophthalmic photograph or tomogram; "
                              "only OPT, OP 8/16-bit and VL photographic objects are ingested", "wrong_sop_class")
        burned = str(getattr(ds, "BurnedInAnnotation", "") or "").upper()
        if burned == "YES" and not self.cfg.deid.allow_burned_in:
            raise _Quarantine("BurnedInAnnotation is YES: the pixels may show identifiers; review the image and "
                              "set deid.allow_burned_in to ingest it", "burned_in_annotation", stage="deid")
        frames, rows, cols, samples = readers.check_pixel_budget(ds, name=name, max_pixels=self.cfg.max_pixels)
        arr = readers.pixels_from_dicom(ds, name=name)
        original_id = str(getattr(ds, "PatientID", "") or "")
        birth = readers_da(getattr(ds, "PatientBirthDate", None))
        study_date = readers_da(getattr(ds, "StudyDate", None)) or readers_da(getattr(ds, "AcquisitionDateTime", None))
        sex = str(getattr(ds, "PatientSex", "") or "") or None
        pid, visit, age, sex, id_flags = self._identity(original_id, birth, study_date, sex, rec.sha)
        if age is None:
            age = _age_from_dicom(ds)
        laterality = readers.laterality_from_dicom(ds)
        flags = list(id_flags)
        if burned == "YES":
            flags.append("burned_in_annotation_allowed")
        common = dict(
            patient_id=pid, eye=laterality, visit=visit, modality=modality, sop_class_uid=sop, source_format="dicom",
            manufacturer=str(getattr(ds, "Manufacturer", "") or "") or None,
            model=str(getattr(ds, "ManufacturerModelName", "") or "") or None,
            age_years=age, sex=sex, source_label=None, laterality_source="header" if laterality else "unknown",
        )
        desc_pattern = "circle" if readers.circle_scan_hint(ds) else None  # read before de-identification
        # De-identified header, kept for provenance and for curators.
        ident_strings = [original_id, *str(getattr(ds, "PatientName", "") or "").replace("^", " ").split()]
        del ds.PixelData
        apply_basic_profile(ds, patient_pseudonym=pid, cfg=self.cfg.deid, extra_identifiers=ident_strings)
        header = ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=lambda _e: "")
        if modality == "oct":
            spacing = readers.oct_spacing_from_dicom(ds)
            if samples != 1:
                arr = arr[..., 0]
            if arr.ndim == 2:
                arr = arr[None]
            positions = readers.frame_positions_from_dicom(ds)
            common.update(spacing_axial_mm=spacing[0], spacing_lateral_mm=spacing[1], spacing_slice_mm=spacing[2])
            if frames == 1 and positions:
                series_key = keyed_hash(str(getattr(ds, "SeriesInstanceUID", "")), self.key, purpose="series")
                self._stage(series_key, positions[0], arr[0], rec, dict(common, header=header,
                                                                        scan_pattern=desc_pattern, flags=flags))
                return
            arr = readers.order_frames(arr, positions)
            pattern = desc_pattern or ("volume" if arr.shape[0] > 1 else "bscan")
            self._add_image(rec, np.ascontiguousarray(arr), dict(common, scan_pattern=pattern), header,
                            extra_flags=flags)
        else:
            rgb = readers.to_rgb8(arr, photometric=str(getattr(ds, "PhotometricInterpretation", "RGB")), name=name)
            ps = getattr(ds, "PixelSpacing", None)
            common.update(pixel_spacing_mm=_fnan(ps[0]) if ps is not None and len(ps) else math.nan,
                          scan_pattern="photo")
            self._add_image(rec, rgb, common, header, extra_flags=flags)

    # -- exports -------------------------------------------------------------------------------
    def _sidecar(self, relpath: str) -> tuple[dict[str, Any], str | None]:
        p = PurePosixPath(relpath)
        for cand in (str(p) + ".json", str(p.with_suffix(".json")), str(p.parent / "volume.json")):
            if cand in self.sidecars:
                return readers.parse_sidecar(self.sidecars[cand], name="sidecar"), cand
        return {}, None

    def _ingest_image_export(self, rec: _FileRec, data: bytes) -> None:
        arr = readers.decode_image(data, name=f"<source {rec.source_key}>", max_pixels=self.cfg.max_pixels)
        meta, side_name = self._sidecar(rec.relpath)
        for k in ("patient_id", "birth_date"):
            if meta.get(k):
                self.deny.add(str(meta[k]), k)
        text_flags = self._burned_in_text(arr)
        p = PurePosixPath(rec.relpath)
        parts_lower = [s.lower() for s in p.parts[:-1]]
        source_label = None
        m = OCT2017_RE.match(p.name)
        modality = meta.get("modality")
        original_id = meta.get("patient_id")
        if m:  # the public OCT2017 layout: <split>/<CLASS>/<CLASS>-<patient>-<n>.jpeg
            modality = modality or "oct"
            source_label = m.group(1).lower()
            original_id = original_id or f"oct2017-{m.group(2)}"
        if modality is None:
            if "oct" in parts_lower:
                modality = "oct"
            elif "cfp" in parts_lower or "fundus" in parts_lower:
                modality = "cfp"
            elif arr.ndim == 3 and arr.shape[2] >= 3 and not _is_grey(arr):
                modality = "cfp"
            else:
                raise _Quarantine("image export with no sidecar and no modality folder (oct/ or cfp/); add a "
                                  "sidecar <file>.json with \"modality\" (see README, image exports)",
                                  "unknown_modality")
        if source_label is None:
            for folder in ("oct", "cfp", "fundus"):
                if folder in parts_lower:
                    i = parts_lower.index(folder)
                    if i + 1 < len(parts_lower):
                        source_label = parts_lower[i + 1]
        if side_name:
            self.consumed_sidecars.add(side_name)
        visit_date = parse_da(str(meta.get("visit_date", "")).replace("-", ""))
        birth = parse_da(str(meta.get("birth_date", "")).replace("-", ""))
        pid, visit, age, sex, flags = self._identity(original_id, birth, visit_date, meta.get("sex"), rec.sha)
        flags += text_flags
        if age is None and meta.get("age_years") is not None:
            age = min(_fnan(meta.get("age_years")), 90.0)
        eye = meta.get("eye")
        common = dict(patient_id=pid, eye=eye, visit=visit, modality=modality, sop_class_uid=None,
                      source_format="image_export", manufacturer=meta.get("manufacturer"), model=meta.get("model"),
                      age_years=age, sex=sex, source_label=source_label,
                      laterality_source="sidecar" if eye else "unknown")
        if modality == "oct":
            sp = meta.get("spacing_mm") or {}
            common.update(spacing_axial_mm=_fnan(sp.get("axial")), spacing_lateral_mm=_fnan(sp.get("lateral")),
                          spacing_slice_mm=_fnan(sp.get("slice")))
            bscan = arr if arr.ndim == 2 else arr[..., :3].mean(axis=2).astype(arr.dtype)
            if side_name and side_name.endswith("volume.json"):
                m2 = re.search(r"(\d+)", p.stem)
                pos = int(m2.group(1)) if m2 else 0
                series_key = keyed_hash(str(p.parent), self.key, purpose="export-series")
                self._stage(series_key, pos, bscan, rec, dict(common, header=None,
                                                              scan_pattern=meta.get("scan_pattern", "volume"),
                                                              flags=flags))
                return
            self._add_image(rec, bscan[None], dict(common, scan_pattern=meta.get("scan_pattern", "bscan")), None,
                            extra_flags=flags)
        else:
            rgb = readers.to_rgb8(arr, name="export")
            if arr.ndim == 2 or _is_grey(rgb):
                flags.append("greyscale_photograph")
            common.update(pixel_spacing_mm=_fnan(meta.get("pixel_spacing_mm")), scan_pattern="photo")
            self._add_image(rec, rgb, common, None, extra_flags=flags)

    def _ingest_vendor(self, rec: _FileRec, data: bytes, suffix: str) -> None:
        """A vendor OCT file: pixels and geometry from the reader; the header's patient id becomes the
        keyed pseudonym (the same as that patient's DICOM files get, so studies pair) and its dates a
        shifted visit date and an age. No vendor header is kept."""
        import tempfile

        with tempfile.TemporaryDirectory() as td:
            tmp = Path(td) / f"scan{suffix}"
            tmp.write_bytes(data)
            scan, ident = readers.read_oct_vendor(tmp, name=f"<source {rec.source_key}>")
        for value, kind in ((ident.patient_id, "patient_id"), (ident.birth_date, "birth_date")):
            if value:
                self.deny.add(str(value), kind)
        vol = scan.volume
        vol = vol.astype(np.uint16 if scan.bit_depth == 16 else np.uint8) if np.all(np.isfinite(vol)) else vol
        pid, visit, age, _, id_flags = self._identity(ident.patient_id, readers_da(ident.birth_date),
                                                      readers_da(ident.visit_date), None, rec.sha)
        common = dict(patient_id=pid, eye=scan.laterality, visit=visit, modality="oct", sop_class_uid=None,
                      source_format=f"vendor{suffix}", manufacturer=scan.manufacturer, model=None, age_years=age,
                      sex=None, source_label=None, laterality_source="header" if scan.laterality else "unknown",
                      spacing_axial_mm=scan.spacing_mm[0], spacing_lateral_mm=scan.spacing_mm[1],
                      spacing_slice_mm=scan.spacing_mm[2], scan_pattern=scan.scan_pattern)
        flags = list(id_flags)
        if scan.meta.get("bscan_order") == "file_order_unverified":
            flags.append("bscan_order_unverified")
        self._add_image(rec, vol, common, None, extra_flags=flags)

    def _burned_in_text(self, arr: np.ndarray) -> list[str]:
        """Quarantine an export whose pixels show text-like lines (a name banner, a report header), unless the
        operator allows burned-in content; then the image is flagged instead."""
        regions = find_text_regions(arr)
        if not regions:
            return []
        if self.cfg.deid.allow_burned_in:
            return ["burned_in_text_allowed"]
        raise _Quarantine(f"possible burned-in text: {len(regions)} text-like line(s) in the pixels (e.g. a name "
                          "banner or a report header); crop or mask them, or review the image and set "
                          "deid.allow_burned_in to ingest it", "possible_burned_in_text", stage="deid")

    # -- images ---------------------------------------------------------------------------------
    def _stage(self, series_key: str, position: int, frame: np.ndarray, rec: _FileRec, meta: dict[str, Any]) -> None:
        d = self.staging / series_key
        if d.exists():  # only the first member keeps the (de-identified) header of the series
            meta = {k: v for k, v in meta.items() if k != "header"}
        d.mkdir(parents=True, exist_ok=True)
        npy = d / f"{position:06d}_{rec.sha[:12]}.npy"
        np.save(npy, np.ascontiguousarray(frame))
        with open(d / f"{position:06d}_{rec.sha[:12]}.meta.pickle", "wb") as fh:
            pickle.dump(meta, fh, protocol=pickle.HIGHEST_PROTOCOL)
        self.staged.write(dict(series_key=series_key, position=position, seq=self.staged.rows, npy=str(npy),
                               patient_id=meta["patient_id"], eye=meta["eye"], source_key=rec.source_key,
                               path=rec.relpath if self.cfg.quarantine_paths == "plain" else None,
                               size_bytes=rec.size, source_sha256=rec.sha, stage=rec.stage))
        rec.status = "staged"

    def _staged_series(self) -> Iterator[list[_Staged]]:
        """The spooled frames grouped by series (sorted by series key, then position and file digest, as the
        files table is), one series in memory at a time."""
        table = self.staged.read()
        if not table.num_rows:
            return
        order = [("series_key", "ascending"), ("position", "ascending"), ("source_sha256", "ascending")]
        rows = (r for batch in sorted_batches(table, order, SPOOL_BATCH_ROWS) for r in batch.to_pylist())
        for _, group in itertools.groupby(rows, key=lambda r: r["series_key"]):
            yield [_Staged(r["position"], r["npy"], _FileRec(r["source_key"], r["path"] or "", r["size_bytes"],
                                                             r["source_sha256"], status="staged", stage=r["stage"]),
                           (r["patient_id"], r["eye"]), r["seq"]) for r in group]

    def _assemble_series(self) -> None:
        for members in self._staged_series():
            try:
                self._assemble(members)
            except Exception as exc:  # noqa: BLE001 - one acquisition never stops the run
                problem = _Quarantine(f"unexpected failure assembling the acquisition ({type(exc).__name__}: "
                                      f"{str(exc)[:300]})", "decode_failure")
                for m in members:
                    self._q(m.rec, problem)
            for m in members:
                self._spool_rec(m.rec)

    def _assemble(self, members: list[_Staged]) -> None:
        """One series' frames (sorted) into one image, or every member quarantined with the reason."""
        frames = [np.load(m.npy) for m in members]
        positions = [m.position for m in members]
        shapes = {f.shape for f in frames}
        problem = None
        if len(shapes) != 1:
            problem = _Quarantine(f"B-scans of one acquisition have different sizes {sorted(shapes)}; "
                                  "re-export the series", "inconsistent_dimensions")
        elif len(set(positions)) != len(positions):
            problem = _Quarantine("two files claim the same B-scan position in one acquisition; "
                                  "re-export the series", "duplicate_frame_position")
        ids_meta = {m.identity for m in members}
        if problem is None and len(ids_meta) != 1:
            problem = _Quarantine("frames of one acquisition disagree on patient or eye", "inconsistent_series")
        if problem is not None:
            for m in members:
                self._q(m.rec, problem)
            return
        vol = np.stack(frames)
        del frames
        meta = members[0].meta()
        header = min(members, key=lambda m: m.seq).meta().get("header")  # the first staged member's
        meta.pop("header", None)
        flags = meta.pop("flags", [])
        if meta.get("scan_pattern") in (None, "volume"):
            meta["scan_pattern"] = "volume" if vol.shape[0] > 1 else "bscan"
        lead = members[0].rec
        image_id = self._add_image(lead, vol, meta, header, extra_flags=flags,
                                   source_shas=sorted(m.rec.sha for m in members))
        for m in members:
            if lead.status == "quarantined":
                self._q(m.rec, _Quarantine(lead.reason, lead.error_class))
            else:
                m.rec.status, m.rec.reason = lead.status, lead.reason
                m.rec.image_ids = [image_id] if image_id else []

    def _add_image(self, rec: _FileRec, arr: np.ndarray, meta: dict[str, Any], header: dict | None,
                   extra_flags: list[str] = (), source_shas: list[str] | None = None) -> str | None:
        if arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)):
                self._q(rec, _Quarantine("pixel data contains NaN or infinite values", "nonfinite_pixels"))
                return None
            arr = arr.astype(np.uint16 if arr.max(initial=0) > 255 else np.uint8)
        elif arr.dtype not in (np.uint8, np.uint16):
            if arr.min(initial=0) < 0:
                arr = (arr.astype(np.int64) - int(arr.min())).astype(np.uint16)
            else:
                arr = arr.astype(np.uint16 if arr.max(initial=0) > 255 else np.uint8)
        arr = np.ascontiguousarray(arr)
        h = hashlib.sha256(memoryview(arr).cast("B"))  # no copy of the pixels
        h.update(str(arr.shape).encode())
        pixel_sha = h.hexdigest()
        if pixel_sha in self.pixel_to_image:
            rec.status, rec.reason = "skipped", f"duplicate of image {self.pixel_to_image[pixel_sha]}"
            rec.image_ids = []
            return self.pixel_to_image[pixel_sha]
        image_id = "img-" + pixel_sha[:20]
        self.pixel_to_image[pixel_sha] = image_id
        npy_rel = f"images/{image_id}.npy"
        np.save(self.out / npy_rel, arr)
        header_rel = None
        if header is not None:
            header_rel = f"images/{image_id}.header.json"
            (self.out / header_rel).write_text(json.dumps(header, sort_keys=True))
        modality = meta["modality"]
        flags = list(extra_flags) + _quality_flags(arr, modality)
        if not meta.get("eye"):
            flags.append("laterality_missing")
        if modality == "oct" and any(math.isnan(_fnan(meta.get(k))) for k in
                                     ("spacing_axial_mm", "spacing_lateral_mm")):
            flags.append("spacing_missing")
        if modality == "oct":
            frames, rows, cols = arr.shape
            channels = 1
        else:
            rows, cols, channels = arr.shape
            frames = 1
        row = {k: None for k in MANIFEST_SCHEMA.names}
        row.update({k: v for k, v in meta.items() if k in row})
        for k in ("spacing_axial_mm", "spacing_lateral_mm", "spacing_slice_mm", "pixel_spacing_mm"):
            row[k] = _fnan(row.get(k))
        row.update(
            image_id=image_id, rows=rows, cols=cols, frames=frames, channels=channels,
            bit_depth=16 if arr.dtype == np.uint16 else 8, pixel_sha256=pixel_sha,
            source_sha256s=source_shas or [rec.sha], normalized_path=npy_rel, header_path=header_rel,
            pixel_bytes=int(arr.nbytes), quality_flags=sorted(set(flags)),
            study_id=study_id_for(meta["patient_id"], meta.get("eye"), meta.get("visit")),
        )
        self.rows.write(row)
        rec.status = "ingested"
        rec.image_ids = [image_id]
        return image_id

    def _finalise_skipped_sidecars(self) -> None:
        for rec in self.open_recs:
            if rec.status == "pending_sidecar":
                if rec.relpath in self.consumed_sidecars:
                    self._skip(rec, "sidecar of an image export (read with its image)")
                else:
                    self._skip(rec, "JSON file that is no image's sidecar")
            self._spool_rec(rec)
        self.open_recs = []

    # -- outputs --------------------------------------------------------------------------------
    def _write(self, result: IngestResult) -> None:
        # The staged tables are memory-mapped and written in order a batch at a time: the stage holds each sort's
        # order (8 bytes a row) and one batch, never a whole sorted table or a Python object per study (issue 22).
        manifest = self.rows.read()
        with ParquetSink(self.out / "manifest.parquet", MANIFEST_SCHEMA) as sink:
            for part in sorted_batches(manifest, [("image_id", "ascending")], _write_batch_rows(manifest)):
                sink.write(part)
        result.studies, result.paired_studies = self._write_studies(manifest)
        files = self.recs.read()
        with ParquetSink(self.out / "quarantine.parquet", QUARANTINE_SCHEMA) as qs, \
                ParquetSink(self.out / "files.parquet", FILES_SCHEMA) as fs:
            for part in sorted_batches(files, [("source_key", "ascending")], _write_batch_rows(files)):
                qs.write(part.filter(pc.equal(part.column("status"), "quarantined")))
                fs.write(part)
        self._remove_stale_images(manifest)
        status = files.column("status")
        counts = {v["values"]: v["counts"] for v in pc.value_counts(status).to_pylist()}
        result.files_seen = files.num_rows
        result.files_ingested = counts.get("ingested", 0)
        result.files_quarantined = counts.get("quarantined", 0)
        result.files_skipped = counts.get("skipped", 0)
        result.files_cached = int(pc.sum(pc.equal(files.column("stage"), "cached")).as_py() or 0)
        unaccounted = sorted(set(counts) - {"ingested", "quarantined", "skipped"})
        if unaccounted:  # a bug, not bad input: fail loudly rather than lose files
            raise RuntimeError(f"ingest bug: {counts[unaccounted[0]]} files in state {unaccounted[0]!r}")
        result.images = manifest.num_rows
        result.pixel_bytes = int(pc.sum(manifest.column("pixel_bytes")).as_py() or 0)
        qr: dict[str, int] = defaultdict(int)
        sr: dict[str, int] = defaultdict(int)
        for batch in files.select(["status", "reason", "error_class"]).to_batches(SPOOL_BATCH_ROWS):
            for r in batch.filter(pc.invert(pc.equal(batch.column("status"), "ingested"))).to_pylist():
                if r["status"] == "quarantined":
                    qr[r["error_class"]] += 1
                elif r["status"] == "skipped":
                    sr[r["reason"].split(" image ")[0] if r["reason"].startswith("duplicate") else r["reason"]] += 1
        result.quarantine_reasons = dict(sorted(qr.items()))
        result.skip_reasons = dict(sorted(sr.items()))
        summary = result.to_dict()
        summary.pop("elapsed_s")
        summary.pop("out_dir")
        summary.update(ingest_version=INGEST_VERSION, grok_version=__version__, key_fingerprint=self._key_fp(),
                       date_mode=self.cfg.deid.date_mode)
        (self.out / "ingest_summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
        self._write_deny_list()

    def _write_studies(self, manifest: pa.Table) -> tuple[int, int]:
        """``studies.parquet`` (:func:`_studies`), :data:`SPOOL_BATCH_ROWS` studies at a time; (studies, paired)."""
        rows, paired = _studies(manifest), 0
        with ParquetSink(self.out / "studies.parquet", STUDIES_SCHEMA) as sink:
            while batch := list(itertools.islice(rows, SPOOL_BATCH_ROWS)):
                paired += sum(s["paired"] for s in batch)
                sink.write(pa.Table.from_pylist(batch, schema=STUDIES_SCHEMA))
        return sink.rows, paired

    def _remove_stale_images(self, manifest: pa.Table) -> None:
        """Remove normalised copies no manifest row refers to any more (a file changed since the last run). The
        folder's names are looked up :data:`WRITE_BATCH_ROWS` at a time in the manifest's memory-mapped path
        columns (Arrow's hash set), not in a Python set of every path."""
        paths = pa.chunked_array(manifest.column("normalized_path").chunks + manifest.column("header_path").chunks,
                                 type=pa.string())
        with os.scandir(self.images_dir) as entries:  # a generator (Path.iterdir lists the whole folder first)
            names = (e.name for e in entries)
            while chunk := list(itertools.islice(names, WRITE_BATCH_ROWS)):
                known = pc.is_in(pa.array([f"images/{n}" for n in chunk], type=pa.string()), value_set=paths)
                for name, keep in zip(chunk, known.to_pylist()):
                    if not keep:
                        (self.images_dir / name).unlink()

    def _write_deny_list(self) -> None:
        """``deny_list.json``: keyed hashes of every identifier met (see grok.privacy.denylist), merged with the
        previous run's (files reused from cache are not read again)."""
        path = self.out / DENY_LIST_FILE
        if path.exists():
            try:
                self.deny.update(DenyList.load(path, self.key))
            except ValueError:  # another secret: the old hashes are of no use
                pass
        self.deny.save(path)


def readers_da(value: Any):
    return parse_da(str(value)[:8]) if value else None


def _age_from_dicom(ds) -> float | None:
    s = str(getattr(ds, "PatientAge", "") or "")
    m = re.match(r"^(\d{3})Y$", s)
    return float(min(int(m.group(1)), 90)) if m else None


def _is_grey(rgb: np.ndarray) -> bool:
    if rgb.ndim == 2:
        return True
    sub = rgb[::8, ::8, :3].astype(np.int16)
    return bool(np.abs(sub[..., 0] - sub[..., 1]).max(initial=0) <= 2 and np.abs(sub[..., 1] - sub[..., 2]).max(initial=0) <= 2)


def _studies(manifest: pa.Table) -> Iterator[dict[str, Any]]:
    """One row per study in study-id order, its image ids in image-id order, made from the manifest's rows sorted by
    (study, image) a batch at a time."""
    cols = ["study_id", "patient_id", "eye", "visit", "modality", "image_id", "age_years", "sex"]
    study: dict[str, Any] | None = None
    for part in sorted_batches(manifest.select(cols), [("study_id", "ascending"), ("image_id", "ascending")],
                               WRITE_BATCH_ROWS):
        for batch in part.to_batches(max_chunksize=SPOOL_BATCH_ROWS):
            for r in batch.to_pylist():
                if study is None or r["study_id"] != study["study_id"]:
                    if study is not None:
                        yield _finish_study(study)
                    study = dict(study_id=r["study_id"], patient_id=r["patient_id"], eye=r["eye"], visit=r["visit"],
                                 cfp_image_ids=[], oct_image_ids=[], age_years=r["age_years"], sex=r["sex"])
                study["cfp_image_ids" if r["modality"] == "cfp" else "oct_image_ids"].append(r["image_id"])
                if study["age_years"] is None or (isinstance(study["age_years"], float)
                                                  and math.isnan(study["age_years"])):
                    study["age_years"] = r["age_years"]
    if study is not None:
        yield _finish_study(study)


def _finish_study(s: dict[str, Any]) -> dict[str, Any]:
    """A study row's ``paired`` and ``flags`` from its images and eye."""
    s["paired"] = bool(s["cfp_image_ids"]) and bool(s["oct_image_ids"])
    s["flags"] = [flag for flag, missing in (("no_cfp", not s["cfp_image_ids"]), ("no_oct", not s["oct_image_ids"]),
                                             ("eye_unknown", not s["eye"])) if missing]
    return s


def ingest(source: str, out_dir: str | Path, config: IngestConfig | None = None,
           progress: Callable[[int, str], None] | None = None) -> IngestResult:
    """Ingest ``source`` (folder, .zip, .tar(.gz) or fsspec URL) into ``out_dir``; see the module docstring."""
    return Ingestor(source, Path(out_dir), config or IngestConfig(), progress).run()


def locate(source: str, out_dir: str | Path, config: IngestConfig | None = None,
           keys: set[str] | None = None) -> dict[str, str]:
    """Map ``source_key`` -> path inside ``source`` for the quarantined files of a run (operator use only).

    Needs the original source and the same secret; nothing is written.
    """
    cfg = config or IngestConfig()
    if keys is None:
        keys = set(pq.read_table(Path(out_dir) / "quarantine.parquet").column("source_key").to_pylist())
    found = {}
    for sf in iter_source(source):
        k = keyed_hash(sf.relpath, cfg.deid.key_bytes, purpose="source-path")
        if k in keys:
            found[k] = sf.relpath
    return found
