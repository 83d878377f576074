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

import json
import math
import shutil
import traceback
from collections.abc import Iterable
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
from grok.ids import CFP_BIOMARKERS, OCT_EXTRA_BIOMARKERS, OCT_GROK_BIOMARKERS, OCT_PERIPAPILLARY_BIOMARKERS
from grok.oct import measure_circle, measure_volume, select_bscans
from grok.oct.measures import band_maps_um
from grok.oct.overlay import bscan_png, thickness_map_png
from grok.stages.folder import BuildFolder, StageReport
from grok.stages.keys import content_key, shard_name, source_digest
from grok.stages.stage import Shard, Stage

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


def plan_shards(build_dir: str | Path, shard_size: int, *, overlays: bool = True) -> list[Shard]:
    """Deterministic shards of at most ``shard_size`` studies (sorted ids, so reruns match), each with the
    content key of its real inputs (see :mod:`grok.stages.keys`): ``[{"ids": [...], "key": "..."}]``."""
    if shard_size < 1:
        raise ValueError("shard_size must be at least 1")
    ingest_dir = Path(build_dir) / "ingest"
    studies = {r["study_id"]: r for r in pq.read_table(ingest_dir / "studies.parquet").to_pylist()}
    manifest = {r["image_id"]: r for r in pq.read_table(ingest_dir / "manifest.parquet").to_pylist()}
    ids = sorted(studies)
    code = {"grok": __version__, "measure": MEASURE_VERSION, "cfp": CFP_V,
            "source": source_digest("grok.oct", "grok.cfp", "grok.ids", __name__)}
    shards = []
    for i in range(0, len(ids), shard_size):
        part = ids[i:i + shard_size]
        key = content_key({"stage": "measure", "code": code, "config": {"overlays": overlays},
                           "studies": [measure_inputs(studies.get(s), manifest) for s in part]})
        shards.append(Shard(ids=part, key=key))
    return shards


def shard_path(build_dir: str | Path, study_ids: Iterable[str]) -> Path:
    return Path(build_dir) / "measure" / f"shard-{shard_name(study_ids)}.parquet"


def finished_shard(build_dir: str | Path, shard: Shard) -> Path | None:
    """The shard's output when it exists and was written from the same inputs (its recorded key matches)."""
    out = shard_path(build_dir, shard["ids"])
    if not out.exists():
        return None
    meta = pq.read_schema(out).metadata or {}
    return out if meta.get(b"grok.content_key", b"").decode() == shard["key"] else None


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
                bscan_png(np.asarray(vol[b]), meas.segmentation[b], build_dir / orel, masks=bmasks,
                          hrf=[(r, c) for (bb, r, c) in meas.hrf if bb == b])
                over[key] = orel
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


def measure_shard(build_dir: str | Path, shard: Shard, *, overlays: bool = True) -> Path:
    """Measure a shard (``{"ids", "key"}`` from :func:`plan_shards`) into ``BUILD/measure/shard-<name>.parquet``;
    a finished shard whose recorded key matches is returned as is."""
    build = Path(build_dir)
    done = finished_shard(build, shard)
    if done is not None:
        return done
    out = shard_path(build, shard["ids"])
    study_ids = shard["ids"]
    ingest_dir = build / "ingest"
    studies = {r["study_id"]: r for r in pq.read_table(ingest_dir / "studies.parquet").to_pylist()}
    manifest = {r["image_id"]: r for r in pq.read_table(ingest_dir / "manifest.parquet").to_pylist()}
    rows, quarantine = [], []
    for sid in sorted(study_ids):
        if sid not in studies:
            quarantine.append(dict(study_id=sid, stage="measure", reason="study id not in studies.parquet",
                                   error_class="unknown_study"))
            continue
        try:
            res = measure_study(studies[sid], manifest, ingest_dir, build, overlays=overlays)
        except Exception as exc:  # noqa: BLE001 - one study never stops the shard
            tb = traceback.format_exc(limit=2).strip().splitlines()[-1]
            res = _StudyResult(None, dict(study_id=sid, stage="measure", error_class="measure_failure",
                                          reason=f"{type(exc).__name__}: {str(exc)[:300]} ({tb[:200]})"))
        if res.row is not None:
            rows.append(res.row)
        if res.quarantine is not None:
            quarantine.append(res.quarantine)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=BIOMARKER_SCHEMA)
    qtable = pa.Table.from_pylist(quarantine, schema=QUARANTINE_SCHEMA)
    meta = {b"grok.quarantine": json.dumps(qtable.to_pylist()).encode(), b"grok.content_key": shard["key"].encode()}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
    tmp = out.with_suffix(".tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(out)
    return out


def merge_shards(build_dir: str | Path, shard_paths: list[Path]) -> dict[str, int]:
    """Concatenate shard outputs into ``biomarkers.parquet`` and ``measure_quarantine.parquet``."""
    build = Path(build_dir)
    rows, quarantine = [], []
    for p in sorted(shard_paths):
        t = pq.read_table(p)
        rows += t.to_pylist()
        quarantine += json.loads((t.schema.metadata or {}).get(b"grok.quarantine", b"[]"))
    rows.sort(key=lambda r: r["study_id"])
    quarantine.sort(key=lambda r: r["study_id"])
    pq.write_table(pa.Table.from_pylist(rows, schema=BIOMARKER_SCHEMA), build / "biomarkers.parquet",
                   compression="zstd")
    pq.write_table(pa.Table.from_pylist(quarantine, schema=QUARANTINE_SCHEMA), build / "measure_quarantine.parquet")
    return {"studies_measured": len(rows), "studies_quarantined": len(quarantine)}


def measure_build(build_dir: str | Path, *, shard_size: int = 8, overlays: bool = True) -> dict[str, int]:
    """Measure every study of a build, shard by shard (finished shards are reused)."""
    build = Path(build_dir)
    shards = plan_shards(build, shard_size, overlays=overlays)
    paths = [measure_shard(build, s, overlays=overlays) for s in shards]
    res = merge_shards(build, paths)
    res["studies_in"] = sum(len(s["ids"]) for s in shards)
    return res


class Measure(Stage):
    """OCT and CFP biomarkers of every study, sharded (``measure.shard_size`` studies per shard)."""

    name = "measure"
    inputs: ClassVar[tuple[str, ...]] = ("ingest/studies.parquet", "ingest/manifest.parquet", "ingest/images/")
    outputs: ClassVar[tuple[str, ...]] = ("biomarkers.parquet", "measure_quarantine.parquet", "media/")

    def plan(self, folder: BuildFolder) -> list[Shard]:
        return plan_shards(folder.root, folder.cfg.measure.shard_size, overlays=folder.cfg.measure.overlays)

    def run_shard(self, folder: BuildFolder, shard: Shard) -> str:
        return str(measure_shard(folder.root, shard, overlays=folder.cfg.measure.overlays))

    def finished(self, folder: BuildFolder, shard: Shard) -> Path | None:
        return finished_shard(folder.root, shard)

    def merge(self, folder: BuildFolder, results: list[str], seconds: float) -> StageReport:
        res = merge_shards(folder.root, [Path(p) for p in results])
        return folder.finish(StageReport(
            "measure", n_in=res["studies_measured"] + res["studies_quarantined"], n_out=res["studies_measured"],
            n_quarantined=res["studies_quarantined"], seconds=seconds,
            outputs={"biomarkers": str(folder.path("biomarkers.parquet")),
                     "quarantine": str(folder.path("measure_quarantine.parquet"))}))
