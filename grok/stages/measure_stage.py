"""Measure stage: ingested studies -> biomarkers (OCT + CFP) and the media later stages show.

Run as: the measure stage of grok build (or grok.stages.measure_stage.measure_build(BUILD_DIR) from Python)

For each study (patient x eye x visit) of ``BUILD/ingest/studies.parquet``: the macular cube is
segmented and measured (``grok.oct``), a circle scan if there is one, the photograph measured
(``grok.cfp``); the foveal B-scan, the B-scans with the most lesion burden, the photograph and their
overlays are written under ``BUILD/media/<study_id>/``. Work is done in shards (batches of studies)
so an orchestrator can fan it out and skip finished shards; each shard writes
``BUILD/measure/shard-<name>.parquet`` atomically, with the content key of its inputs
(:mod:`grok.stages.keys`), so only a shard whose inputs changed is measured again, and a study that fails goes to that shard's
quarantine with its reason. :func:`merge_shards` concatenates the shards into
``BUILD/biomarkers.parquet`` and ``BUILD/measure_quarantine.parquet``.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import shutil
import socket
import threading
import time
import traceback
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from grok import __version__
from grok.cfp import measure_fundus, overlay_png
from grok.cfp.measure import EXTRACTOR_NAME as CFP_NAME
from grok.cfp.measure import EXTRACTOR_VERSION as CFP_V
from grok.cfp.overlay import cfp_layer_pngs
from grok.ids import CFP_BIOMARKERS, OCT_EXTRA_BIOMARKERS, OCT_GROK_BIOMARKERS, OCT_PERIPAPILLARY_BIOMARKERS
from grok.oct import measure_circle, measure_volume, select_bscans
from grok.oct.measures import band_maps_um
from grok.oct.overlay import bscan_layer_pngs, bscan_png, thickness_map_png
from grok.parquet_io import take_rows
from grok.stages.folder import BuildFolder, StageReport
from grok.stages.keys import content_key, shard_name, source_digest
from grok.stages.stage import Shard, Stage, auto_size

MEASURE_VERSION = "1"
#: Longest side of the photograph written to media (boxes are scaled to it).
CFP_MEDIA_MAX_SIDE = 1024

SCALAR_IDS: tuple[str, ...] = tuple(
    [*OCT_GROK_BIOMARKERS, *OCT_EXTRA_BIOMARKERS, *OCT_PERIPAPILLARY_BIOMARKERS]
    + [b for b in CFP_BIOMARKERS if not b.endswith("_xy_px")]
)
POSITION_IDS: tuple[str, ...] = tuple(b for b in CFP_BIOMARKERS if b.endswith("_xy_px"))

BIOMARKER_SCHEMA = pa.schema(
    [
        ("study_id", pa.string()),
        ("patient_id", pa.string()),
        ("eye", pa.string()),
        ("visit", pa.string()),
        ("age_years", pa.float64()),
        ("sex", pa.string()),
        *[(b, pa.float64()) for b in SCALAR_IDS],
        *[(b, pa.list_(pa.float64())) for b in POSITION_IDS],
        ("oct_image_id", pa.string()),
        ("cfp_image_id", pa.string()),
        ("circle_image_id", pa.string()),
        ("oct_quality", pa.string()),  # JSON
        ("cfp_quality_grade", pa.string()),
        ("cfp_quality_reasons", pa.list_(pa.string())),
        ("lesions", pa.string()),  # JSON list, boxes in media pixel coordinates
        ("images", pa.string()),  # JSON {key: media path relative to BUILD}
        ("image_sizes", pa.string()),  # JSON {key: [W, H]}
        ("overlays", pa.string()),  # JSON {key: media path}
        ("oct_spacing_mm", pa.list_(pa.float64())),
        ("cfp_pixel_spacing_mm", pa.float64()),
        ("source_sha256s", pa.list_(pa.string())),
        ("extractors", pa.string()),  # JSON
        ("flags", pa.list_(pa.string())),
        # JSON list, one item per image of the study: image_id, kind (oct_cube | oct_circle | cfp), primary
        # (its values fill this row), quality and biomarkers; or the error that kept it from being measured
        ("image_measurements", pa.string()),
    ]
)

QUARANTINE_SCHEMA = pa.schema([("study_id", pa.string()), ("stage", pa.string()), ("reason", pa.string()),
                               ("error_class", pa.string())])


def measure_inputs(study: dict[str, Any] | None, manifest: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What a study's measurement depends on: its study row and the manifest row (pixel and source-file
    sha256s, spacing, scan pattern) of every image it names."""
    if study is None:
        return {}
    ids = [*(study.get("oct_image_ids") or []), *(study.get("cfp_image_ids") or [])]
    return {"study": study, "images": {i: manifest.get(i) for i in ids}}


#: ``shard_size: auto``: shards per worker (a slow shard then leaves the others about a quarter of a
#: worker's share to take over) and the bounds of a shard's size.
AUTO_WAVES, AUTO_MIN, AUTO_MAX = 4, 1, 64


def auto_shard_size(n_studies: int, workers: int) -> int:
    """Studies per shard for ``n_studies`` on ``workers``: about :data:`AUTO_WAVES` shards per worker, between
    :data:`AUTO_MIN` and :data:`AUTO_MAX` studies each (many small shards cost orchestration per shard; few
    large ones leave workers idle at the end)."""
    return auto_size(n_studies, workers, AUTO_MIN, AUTO_MAX, AUTO_WAVES)


#: ``shard_size: auto``: the build's last studies go to shards of a half, a quarter and an eighth of the size,
#: one of each per worker, so that the workers finish together: with equal shards a worker that takes the
#: last full one leaves the others idle for up to a whole shard (measured: 2,500 small studies in 40 shards
#: of 64 on 2 workers, one worker idle 56 s at the end of a 1,306 s stage).
TAPER_LEVELS = 3


def shard_sizes(n_studies: int, shard_size: int, taper_workers: int = 0) -> list[int]:
    """Sizes of the consecutive shards of ``n_studies`` sorted studies: full shards of ``shard_size``, then,
    when ``taper_workers`` is set, ``taper_workers`` shards of each of ``shard_size`` / 2, / 4, / 8 (at least 1)
    at the end (:data:`TAPER_LEVELS`; dropped when they would take more than half the studies)."""
    if shard_size < 1:
        raise ValueError("shard_size must be at least 1")
    tail = [max(1, shard_size >> k) for k in range(1, TAPER_LEVELS + 1) for _ in range(max(0, taper_workers))]
    if shard_size < 2 or 2 * sum(tail) > n_studies:
        tail = []
    head = n_studies - sum(tail)
    sizes = [shard_size] * (head // shard_size) + ([head % shard_size] if head % shard_size else [])
    return sizes + tail


class IngestRows(Mapping):
    """An ingest table held columnar (its Arrow table) with an index from its key column to row numbers; a row
    comes out as a fresh dict when asked for. The rows as dicts of Python objects took about ten times the
    memory (a manifest row about 4 KB), in the driver for the whole build and in every worker."""

    def __init__(self, table: pa.Table, key: str) -> None:
        self.table = table
        self.index = {k: i for i, k in enumerate(table.column(key).to_pylist())}  # the last row of a key wins

    def __getitem__(self, key: str) -> dict[str, Any]:
        return self.table.slice(self.index[key], 1).to_pylist()[0]

    def __contains__(self, key: object) -> bool:
        return key in self.index

    def __iter__(self) -> Iterator[str]:
        return iter(self.index)

    def __len__(self) -> int:
        return len(self.index)

    def subset(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The rows of ``keys`` that exist, as dicts, in one conversion."""
        found = [k for k in dict.fromkeys(keys) if k in self.index]
        # chunk by chunk: Arrow's take on a table of many row groups concatenates each string column first
        rows = take_rows(self.table, np.fromiter((self.index[k] for k in found), np.int64, len(found))).to_pylist()
        return dict(zip(found, rows))


_TABLES: dict[str, tuple[tuple[int, int], IngestRows]] = {}
_TABLES_LOCK = threading.Lock()


def ingest_rows(build_dir: str | Path, table: str, *, cached: bool = True) -> IngestRows:
    """``ingest/studies.parquet`` (by study id) or ``ingest/manifest.parquet`` (by image id), read once per
    process while the file is unchanged (a worker measuring many shards does not re-read them per shard).
    ``cached=False``: read for this call only, never kept (the driver's plan: the tables grow with the archive,
    and the driver lives for the whole build)."""
    path = Path(build_dir) / "ingest" / f"{table}.parquet"
    if not cached:
        return IngestRows(pq.read_table(path), "study_id" if table == "studies" else "image_id")
    st = path.stat()
    stamp = (st.st_mtime_ns, st.st_size)
    key = str(path.resolve())
    with _TABLES_LOCK:
        hit = _TABLES.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        rows = IngestRows(pq.read_table(path), "study_id" if table == "studies" else "image_id")
        _TABLES[key] = (stamp, rows)
        return rows


def plan_shards(build_dir: str | Path, shard_size: int, *, overlays: bool = True,
                taper_workers: int = 0) -> list[Shard]:
    """Deterministic shards of at most ``shard_size`` studies (sorted ids, so reruns match; sizes from
    :func:`shard_sizes`), each with the content key of its real inputs (see :mod:`grok.stages.keys`):
    ``[{"ids": [...], "key": "..."}]``."""
    # read for the plan alone: cached, the driver kept both tables for the rest of the build (issue 22: its
    # level after the measure stage rose 25 MB from 500 to 5,000 studies)
    studies, manifest = ingest_rows(build_dir, "studies", cached=False), ingest_rows(build_dir, "manifest", cached=False)
    ids = sorted(studies)
    code = {"grok": __version__, "measure": MEASURE_VERSION, "cfp": CFP_V,
            "source": source_digest("grok.oct", "grok.cfp", "grok.ids", __name__)}
    shards = []
    start = 0
    for size in shard_sizes(len(ids), shard_size, taper_workers):
        part, start = ids[start:start + size], start + size
        rows = studies.subset(part)  # a shard's rows at a time, not every row as a dict
        images = manifest.subset(i for r in rows.values()
                                 for i in (*(r.get("oct_image_ids") or []), *(r.get("cfp_image_ids") or [])))
        key = content_key({"stage": "measure", "code": code, "config": {"overlays": overlays},
                           "studies": [measure_inputs(rows.get(s), images) for s in part]})
        shards.append(Shard(ids=part, key=key))
    return shards


def shard_path(build_dir: str | Path, study_ids: Iterable[str]) -> Path:
    return Path(build_dir) / "measure" / f"shard-{shard_name(study_ids)}.parquet"


def finished_shard(build_dir: str | Path, shard: Shard, *, study_timeout_s: float | None = None) -> Path | None:
    """The shard's output when it exists, reads back whole and was written from the same inputs (its recorded
    key matches); a corrupt or truncated file, or one that timed out a study under a smaller limit than
    ``study_timeout_s``, is not finished (the shard is measured again)."""
    out = shard_path(build_dir, shard["ids"])
    if not out.exists():
        return None
    try:
        table = pq.read_table(out)
    except (OSError, ValueError, pa.ArrowException):  # corrupt, truncated or not parquet: redo it
        return None
    meta = table.schema.metadata or {}
    if meta.get(b"grok.content_key", b"").decode() != shard["key"]:
        return None
    try:
        quarantine = json.loads(meta.get(b"grok.quarantine", b"[]"))
        if len(quarantine) + table.num_rows != len(shard["ids"]):
            return None  # not every study of the shard is accounted for
        limit = json.loads(meta.get(b"grok.study_timeout_s", b"null"))
    except ValueError:
        return None
    timed_out = any(q.get("error_class") == "study_timeout" for q in quarantine)
    if timed_out and (study_timeout_s is None or (limit is not None and study_timeout_s > limit)):
        return None  # studies that ran out of time get the larger limit now asked for
    return out


class StudyTimeout(BaseException):
    """Raised inside a study's measurement when it runs past ``measure.study_timeout_s`` (a BaseException, so
    the per-image ``except Exception`` of a study does not swallow it)."""


class _Deadline:
    """Raise :class:`StudyTimeout` in the calling thread once ``seconds`` have passed (any thread: the main
    one, a thread pool's or a Dask worker's). The exception arrives at the next Python bytecode the thread
    runs, so a single native call that never returns is not interrupted; measurement code is many short
    numpy/numba calls, so a study stuck in a loop stops within one of them."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self._lock = threading.Lock()
        self._armed = False
        self._fired = False
        self._timer: threading.Timer | None = None

    def _fire(self) -> None:
        with self._lock:
            if self._armed:
                self._fired = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._tid), ctypes.py_object(StudyTimeout))

    def __enter__(self) -> _Deadline:
        if self.seconds is not None:
            self._tid = threading.get_ident()
            self._armed = True
            self._timer = threading.Timer(self.seconds, self._fire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is None:
            return
        self._timer.cancel()
        with self._lock:
            self._armed = False
            if self._fired:  # fired as the study finished: clear it if it has not been raised yet
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._tid), None)


def _save_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, optimize=False, compress_level=6)


def _save_jpeg(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, quality=92, subsampling=0)


def _to_u8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    a = img.astype(np.float64)
    lo, hi = np.nanpercentile(a, 0.5), np.nanpercentile(a, 99.8)
    return np.clip((a - lo) / max(hi - lo, 1e-9) * 255, 0, 255).astype(np.uint8)


@dataclass
class _StudyResult:
    row: dict[str, Any] | None
    quarantine: dict[str, Any] | None


def _nan(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def measure_study(study: dict[str, Any], manifest: dict[str, dict[str, Any]], ingest_dir: Path,
                  build_dir: Path, *, overlays: bool = True) -> _StudyResult:
    """Measure one study; never raises for bad image content (it is quarantined with the reason)."""
    sid = study["study_id"]
    media = build_dir / "media" / sid
    if media.exists():  # media of an earlier measurement (other images, other settings) never survive
        shutil.rmtree(media)
    row: dict[str, Any] = {k: None for k in BIOMARKER_SCHEMA.names}
    row.update(study_id=sid, patient_id=study["patient_id"], eye=study["eye"], visit=study["visit"],
               age_years=_nan(study.get("age_years")), sex=study.get("sex"))
    for b in SCALAR_IDS:
        row[b] = math.nan
    images: dict[str, str] = {}
    sizes: dict[str, list[int]] = {}
    over: dict[str, str] = {}
    lesions: list[dict[str, Any]] = []
    flags: list[str] = list(study.get("flags") or [])
    shas: list[str] = []
    eye = study["eye"] if study["eye"] in ("OD", "OS") else None
    if eye is None:
        return _StudyResult(None, dict(study_id=sid, stage="measure", reason="eye (laterality) unknown: the ETDRS "
                                       "grid and the differential need it; fix the header or sidecar",
                                       error_class="laterality_missing"))
    measured: list[dict[str, Any]] = []  # every image of the study: measured (primary or not), or why not
    for i in [*(study.get("oct_image_ids") or []), *(study.get("cfp_image_ids") or [])]:
        if i not in manifest:
            measured.append({"image_id": i, "kind": None, "primary": False, "error": "not in the manifest"})
    oct_rows = [manifest[i] for i in study.get("oct_image_ids") or [] if i in manifest]
    for r in oct_rows:
        if r["scan_pattern"] not in CUBE_PATTERNS + ("circle",):
            measured.append({"image_id": r["image_id"], "kind": "oct", "primary": False,
                             "error": f"scan pattern {r['scan_pattern']!r} is not measured"})

    def load_cube(m: dict[str, Any]):
        vol = np.load(ingest_dir / m["normalized_path"], mmap_mode="r")
        spacing = (_nan(m["spacing_axial_mm"]), _nan(m["spacing_lateral_mm"]), _nan(m["spacing_slice_mm"]))
        return vol, spacing, measure_volume(np.asarray(vol), spacing, eye)

    def load_circle(c: dict[str, Any]):
        bscan = np.load(ingest_dir / c["normalized_path"])
        return measure_circle(bscan[0], _nan(c["spacing_axial_mm"]) * 1000.0, _nan(c["spacing_lateral_mm"]) * 1000.0,
                              eye)

    def load_photo(c: dict[str, Any]):
        rgb = np.load(ingest_dir / c["normalized_path"])
        return rgb, measure_fundus(rgb, eye, _nan(c["pixel_spacing_mm"]))

    cube = _measure_each("oct_cube", [r for r in oct_rows if r["scan_pattern"] in CUBE_PATTERNS], load_cube,
                         lambda r, res: (*_usable_first(res[2].quality), -(r["frames"] or 0)), measured)
    circle = _measure_each("oct_circle", [r for r in oct_rows if r["scan_pattern"] == "circle"], load_circle,
                           lambda r, res: _usable_first(res.quality), measured)
    photo = _measure_each("cfp", [manifest[i] for i in study.get("cfp_image_ids") or [] if i in manifest], load_photo,
                          lambda r, res: (CFP_GRADE_ORDER.get(res[1].quality.get("grade"), len(CFP_GRADE_ORDER)),),
                          measured)
    flags += [f"image_not_primary:{m['image_id']}" for m in measured if "biomarkers" in m and not m["primary"]]
    flags += [f"image_not_measured:{m['image_id']}" for m in measured if "error" in m]
    row["image_measurements"] = json.dumps(measured, default=_json_default, sort_keys=True)
    if cube is None and photo is None:
        return _StudyResult(None, dict(study_id=sid, stage="measure", reason="no OCT cube and no photograph",
                                       error_class="no_images"))
    oct_quality: dict[str, Any] = {}
    if cube is not None:
        m, (vol, spacing, meas) = cube
        for k, v in meas.biomarkers.items():
            if k in row:
                row[k] = _nan(v)
        oct_quality = meas.quality
        row["oct_image_id"] = m["image_id"]
        row["oct_spacing_mm"] = list(spacing)
        shas += list(m["source_sha256s"] or [])
        pick = select_bscans(meas)
        keys = []
        if pick["foveal"] is not None:
            keys.append(("oct_foveal", pick["foveal"]))
        else:
            keys.append(("oct_foveal", vol.shape[0] // 2))
            flags.append("fovea_not_found_central_bscan_used")
        keys += [(f"oct_{b:03d}", b) for b in pick["lesion_bscans"]]
        for key, b in keys:
            rel = f"media/{sid}/{key}.png"
            _save_png(build_dir / rel, _to_u8(np.asarray(vol[b])))
            images[key] = rel
            sizes[key] = [int(vol.shape[2]), int(vol.shape[1])]
            if overlays:
                orel = f"media/{sid}/{key}_overlay.png"
                bmasks = {k: v[b] for k, v in meas.masks.items()} if meas.masks else None
                hrf = [(r, c) for (bb, r, c) in meas.hrf if bb == b]
                bscan_png(np.asarray(vol[b]), meas.segmentation[b], build_dir / orel, masks=bmasks, hrf=hrf)
                over[key] = orel
                # one transparent PNG per structure ("<image key>/<layer>"), toggled separately by grok review
                for name in bscan_layer_pngs(vol[b].shape, meas.segmentation[b], build_dir / f"media/{sid}/{key}",
                                             masks=bmasks, hrf=hrf):
                    over[f"{key}/{name}"] = f"media/{sid}/{key}_{name}.png"
        shown = {b: key for key, b in keys}
        for les in meas.lesions:
            key = shown.get(int(les["bscan"]))
            lesions.append({"type": les["type"], "modality": "oct", "image": key, "bscan": int(les["bscan"]),
                            "box_xyxy_px": [float(x) for x in les["box_xyxy_px"]], "score": les.get("score")})
        if overlays and meas.fovea is not None and meas.segmentation.shape[0] > 1 and math.isfinite(spacing[0]):

            maps = band_maps_um(meas.segmentation, spacing[0] * 1000.0)
            total = maps.get("total") if isinstance(maps, dict) else None
            if total is not None:
                orel = f"media/{sid}/thickness_map.png"
                thickness_map_png(total, (spacing[1] * 1000.0, spacing[2] * 1000.0), meas.fovea, eye,
                                  build_dir / orel, values={k: v for k, v in meas.biomarkers.items()
                                                            if k.startswith("macular_thickness_")})
                over["thickness_map"] = orel
    else:
        flags.append("no_oct")
    if circle is not None:
        c, cm = circle
        for k, v in cm.biomarkers.items():
            row[k] = _nan(v)
        row["circle_image_id"] = c["image_id"]
        oct_quality = dict(oct_quality, circle=cm.quality)
        shas += list(c["source_sha256s"] or [])
    if photo is not None:
        c, (rgb, cm) = photo
        for k, v in cm.biomarkers.items():
            if k in POSITION_IDS:
                row[k] = None if v is None else [float(x) for x in v]
            elif k in row:
                row[k] = _nan(v)
        row["cfp_image_id"] = c["image_id"]
        row["cfp_pixel_spacing_mm"] = _nan(c["pixel_spacing_mm"])
        row["cfp_quality_grade"] = cm.quality.get("grade")
        row["cfp_quality_reasons"] = [str(r) for r in cm.quality.get("reasons", [])]
        shas += list(c["source_sha256s"] or [])
        h, w = rgb.shape[:2]
        scale = min(1.0, CFP_MEDIA_MAX_SIDE / max(h, w))
        media_rgb = rgb
        if scale < 1.0:
            from skimage.transform import resize

            media_rgb = (resize(rgb, (round(h * scale), round(w * scale)), anti_aliasing=True) * 255).astype(np.uint8)
        rel = f"media/{sid}/cfp.jpg"
        _save_jpeg(build_dir / rel, media_rgb)
        images["cfp"] = rel
        sizes["cfp"] = [int(media_rgb.shape[1]), int(media_rgb.shape[0])]
        for les in cm.lesions:
            lesions.append({"type": les["type"], "modality": "cfp", "image": "cfp",
                            "box_xyxy_px": [float(x) * scale for x in les["box_xyxy_px"]], "score": les.get("score")})
        for k in POSITION_IDS:
            if row[k] is not None:
                row[k] = [float(x) * scale for x in row[k]]
        if row.get("disc_diameter_px") is not None and math.isfinite(row["disc_diameter_px"]):
            row["disc_diameter_px"] = row["disc_diameter_px"] * scale
        if math.isfinite(_nan(c["pixel_spacing_mm"])) and math.isfinite(_nan(cm.biomarkers.get("disc_diameter_px"))):
            row["disc_diameter_vertical_mm"] = float(cm.biomarkers["disc_diameter_px"]) * _nan(c["pixel_spacing_mm"])
        if overlays:
            orel = f"media/{sid}/cfp_overlay.png"
            overlay_png(rgb, cm, build_dir / orel)
            over["cfp"] = orel
            for name in cfp_layer_pngs(cm, (int(media_rgb.shape[1]), int(media_rgb.shape[0])),
                                       build_dir / f"media/{sid}/cfp", scale=scale):
                over[f"cfp/{name}"] = f"media/{sid}/cfp_{name}.png"
        cfp_extractor = f"{CFP_NAME}@{CFP_V}"
    else:
        flags.append("no_cfp")
        cfp_extractor = None
    row["oct_quality"] = json.dumps(oct_quality, default=_json_default, sort_keys=True)
    row["lesions"] = json.dumps(lesions, default=_json_default)
    row["images"] = json.dumps(images, sort_keys=True)
    row["image_sizes"] = json.dumps(sizes, sort_keys=True)
    row["overlays"] = json.dumps(over, sort_keys=True)
    row["source_sha256s"] = sorted(set(shas))
    row["extractors"] = json.dumps({"oct": f"grok.oct@{__version__}", "cfp": cfp_extractor,
                                    "measure_stage": MEASURE_VERSION}, sort_keys=True)
    row["flags"] = sorted(set(flags))
    return _StudyResult(row, None)


#: OCT scan patterns measured as a macular cube (a single B-scan counts as a one-frame cube).
CUBE_PATTERNS = ("volume", "bscan")
#: Photograph grades, best first: the best-graded photograph of a study is its primary one.
CFP_GRADE_ORDER = {"good": 0, "usable": 1, "reject": 2}


def _usable_first(quality: dict[str, Any]) -> tuple[Any, ...]:
    return (not quality.get("usable", False), -float(quality.get("segmented_fraction") or 0.0))


def _measure_each(kind: str, rows: list[dict[str, Any]], measure, rank, measured: list[dict[str, Any]]):
    """Measure every image of one kind; return ``(manifest row, result)`` of the primary one (None if none).

    The primary one is the best by ``rank(row, result)`` (quality first), ties broken by image id, so the
    choice is deterministic. Every image is appended to ``measured`` with its biomarkers and whether it
    is primary, or with the error that stopped it; when every image of the kind fails, the first error
    is raised (the study is quarantined with it, as with a single image).
    """
    done, errors = [], []
    for r in sorted(rows, key=lambda r: r["image_id"]):
        try:
            done.append((r, measure(r)))
        except Exception as exc:  # noqa: BLE001 - another image of the study may still be measured
            errors.append(exc)
            measured.append({"image_id": r["image_id"], "kind": kind, "primary": False,
                             "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
    if not done:
        if errors:
            raise errors[0]
        return None
    done.sort(key=lambda d: (*rank(*d), d[0]["image_id"]))
    for n, (r, res) in enumerate(done):
        m = res[-1] if isinstance(res, tuple) else res
        quality = {k: m.quality.get(k) for k in ("usable", "segmented_fraction", "grade") if k in m.quality}
        measured.append({"image_id": r["image_id"], "kind": kind, "primary": n == 0, "quality": quality,
                         "biomarkers": {k: None if isinstance(v, float) and not math.isfinite(v) else v
                                        for k, v in m.biomarkers.items()}})
    return done[0]


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        v = o.item()
        return None if isinstance(v, float) and not math.isfinite(v) else v
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return str(o)


def measure_shard(build_dir: str | Path, shard: Shard, *, overlays: bool = True,
                  study_timeout_s: float | None = None) -> Path:
    """Measure a shard (``{"ids", "key"}`` from :func:`plan_shards`) into ``BUILD/measure/shard-<name>.parquet``;
    a finished shard whose recorded key matches is returned as is. A study that raises or runs past
    ``study_timeout_s`` is quarantined with the reason; the shard goes on. The file's metadata records the
    quarantine, the content key and where and how long each study took (``grok.timing``)."""
    build = Path(build_dir)
    done = finished_shard(build, shard, study_timeout_s=study_timeout_s)
    if done is not None:
        return done
    started = time.time()
    out = shard_path(build, shard["ids"])
    study_ids = shard["ids"]
    ingest_dir = build / "ingest"
    studies, manifest = ingest_rows(build, "studies"), ingest_rows(build, "manifest")
    rows, quarantine, seconds = [], [], {}
    for sid in sorted(study_ids):
        if sid not in studies:
            quarantine.append(dict(study_id=sid, stage="measure", reason="study id not in studies.parquet",
                                   error_class="unknown_study"))
            continue
        t0 = time.perf_counter()
        try:
            with _Deadline(study_timeout_s):
                res = measure_study(studies[sid], manifest, ingest_dir, build, overlays=overlays)
        except StudyTimeout:
            res = _StudyResult(None, dict(study_id=sid, stage="measure", error_class="study_timeout", reason=(
                f"measuring took longer than measure.study_timeout_s = {study_timeout_s:g} s; raise it (the shard "
                "is measured again on the next run) or check the study's images")))
        except Exception as exc:  # noqa: BLE001 - one study never stops the shard
            tb = traceback.format_exc(limit=2).strip().splitlines()[-1]
            res = _StudyResult(None, dict(study_id=sid, stage="measure", error_class="measure_failure",
                                          reason=f"{type(exc).__name__}: {str(exc)[:300]} ({tb[:200]})"))
        seconds[sid] = round(time.perf_counter() - t0, 3)
        if res.row is not None:
            rows.append(res.row)
        if res.quarantine is not None:
            quarantine.append(res.quarantine)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=BIOMARKER_SCHEMA)
    qtable = pa.Table.from_pylist(quarantine, schema=QUARANTINE_SCHEMA)
    timing = {"host": socket.gethostname(), "pid": os.getpid(), "started": started, "ended": time.time(),
              "study_seconds": seconds}
    meta = {b"grok.quarantine": json.dumps(qtable.to_pylist()).encode(), b"grok.content_key": shard["key"].encode(),
            b"grok.study_timeout_s": json.dumps(study_timeout_s).encode(), b"grok.timing": json.dumps(timing).encode()}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
    tmp = out.with_name(f"{out.stem}.{os.getpid()}.{threading.get_ident()}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(out)
    return out


def shard_timing(shard_paths: list[Path], since: float) -> dict[str, Any]:
    """What the shards of one measure stage cost, from their ``grok.timing`` metadata: shard sizes, seconds per
    study, busy seconds per worker process and the span from the first shard's start to the last one's end
    (shards finished before ``since``, a Unix time, were reused and are only counted)."""
    per_study, busy, starts, ends, sizes, reused = [], {}, [], [], [], 0
    for p in shard_paths:
        timing = json.loads((pq.read_schema(p).metadata or {}).get(b"grok.timing", b"{}"))
        if not timing or timing["ended"] < since:
            reused += 1
            continue
        sizes.append(len(timing["study_seconds"]))
        per_study += list(timing["study_seconds"].values())
        worker = f"{timing['host']}:{timing['pid']}"
        busy[worker] = busy.get(worker, 0.0) + timing["ended"] - timing["started"]
        starts.append(timing["started"])
        ends.append(timing["ended"])
    out: dict[str, Any] = {"shards": len(shard_paths), "reused": reused, "sizes": sorted(set(sizes))}
    if per_study:
        per_study.sort()
        out.update(
            studies_measured_here=len(per_study), study_seconds_mean=round(sum(per_study) / len(per_study), 3),
            study_seconds_p50=per_study[len(per_study) // 2], study_seconds_max=per_study[-1],
            workers=len(busy), worker_busy_s=sorted(round(b, 1) for b in busy.values()),
            first_shard_start_s=round(min(starts) - since, 1), shards_span_s=round(max(ends) - min(starts), 1))
    return out


def merge_shards(build_dir: str | Path, shard_paths: list[Path]) -> dict[str, int]:
    """Concatenate shard outputs into ``biomarkers.parquet`` and ``measure_quarantine.parquet``, one shard in
    memory at a time (shards hold contiguous runs of the sorted study ids, so writing them in the order of
    their first id keeps the table sorted; anything else is refused rather than written out of order)."""
    build = Path(build_dir)
    firsts = []
    for p in shard_paths:
        ids = pq.read_table(p, columns=["study_id"]).column("study_id").to_pylist()
        firsts.append((min(ids) if ids else "", str(p)))
    quarantine: list[dict[str, Any]] = []
    n_rows, last = 0, ""
    with pq.ParquetWriter(build / "biomarkers.parquet", BIOMARKER_SCHEMA, compression="zstd") as writer:
        for _, p in sorted(firsts):
            t = pq.read_table(p)
            quarantine += json.loads((t.schema.metadata or {}).get(b"grok.quarantine", b"[]"))
            ids = t.column("study_id").to_pylist()
            if not ids:
                continue
            if ids != sorted(ids) or ids[0] <= last:
                raise ValueError(f"{p}: measure shards overlap or are out of order; delete {build / 'measure'} "
                                 "and rerun the build")
            last = ids[-1]
            writer.write_table(t.replace_schema_metadata(None).cast(BIOMARKER_SCHEMA))
            n_rows += t.num_rows
    quarantine.sort(key=lambda r: r["study_id"])
    pq.write_table(pa.Table.from_pylist(quarantine, schema=QUARANTINE_SCHEMA), build / "measure_quarantine.parquet")
    return {"studies_measured": n_rows, "studies_quarantined": len(quarantine)}


def measure_build(build_dir: str | Path, *, shard_size: int = 8, overlays: bool = True,
                  study_timeout_s: float | None = None) -> dict[str, int]:
    """Measure every study of a build, shard by shard (finished shards are reused)."""
    build = Path(build_dir)
    shards = plan_shards(build, shard_size, overlays=overlays)
    paths = [measure_shard(build, s, overlays=overlays, study_timeout_s=study_timeout_s) for s in shards]
    res = merge_shards(build, paths)
    res["studies_in"] = sum(len(s["ids"]) for s in shards)
    return res


class Measure(Stage):
    """OCT and CFP biomarkers of every study, sharded (``measure.shard_size`` studies per shard, or auto)."""

    name = "measure"
    inputs: ClassVar[tuple[str, ...]] = ("ingest/studies.parquet", "ingest/manifest.parquet", "ingest/images/")
    outputs: ClassVar[tuple[str, ...]] = ("biomarkers.parquet", "measure_quarantine.parquet", "media/")

    def sizing(self, folder: BuildFolder) -> tuple[int, int]:
        """(studies per shard, workers the last shards taper over): ``measure.shard_size`` as set (no taper),
        or for ``auto`` what this build folder recorded (``build.json`` ``measure_shard_size`` and
        ``measure_shard_taper``), else :func:`auto_shard_size` for its studies on ``folder.workers`` and a
        taper over them (:func:`shard_sizes`), recorded so that a rerun on other workers keeps the plan."""
        size = folder.cfg.measure.shard_size
        if size != "auto":
            return size, 0
        info = folder.info()
        if info.get("measure_shard_size"):
            return int(info["measure_shard_size"]), int(info.get("measure_shard_taper") or 0)
        size = auto_shard_size(len(ingest_rows(folder.root, "studies", cached=False)), folder.workers)
        folder.update(measure_shard_size=size, measure_shard_taper=folder.workers)
        return size, folder.workers

    def plan(self, folder: BuildFolder) -> list[Shard]:
        size, taper = self.sizing(folder)
        return plan_shards(folder.root, size, overlays=folder.cfg.measure.overlays, taper_workers=taper)

    def run_shard(self, folder: BuildFolder, shard: Shard) -> str:
        m = folder.cfg.measure
        return str(measure_shard(folder.root, shard, overlays=m.overlays, study_timeout_s=m.study_timeout_s))

    def finished(self, folder: BuildFolder, shard: Shard) -> Path | None:
        return finished_shard(folder.root, shard, study_timeout_s=folder.cfg.measure.study_timeout_s)

    def merge(self, folder: BuildFolder, results: list[str], seconds: float) -> StageReport:
        paths = [Path(p) for p in results]
        res = merge_shards(folder.root, paths)
        return folder.finish(StageReport(
            "measure", n_in=res["studies_measured"] + res["studies_quarantined"], n_out=res["studies_measured"],
            n_quarantined=res["studies_quarantined"], seconds=seconds,
            outputs={"biomarkers": str(folder.path("biomarkers.parquet")),
                     "quarantine": str(folder.path("measure_quarantine.parquet"))},
            details={"shards": shard_timing(paths, time.time() - seconds)}))
