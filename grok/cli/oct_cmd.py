"""CLI for OCT: ``grok oct segment`` and ``grok oct measure``.

Run as: grok oct segment PATH [--frame N] [--spacing-um AXIAL LATERAL] [--method M] [--compare-device]
                        [--png OUT.png] [--json]
        grok oct measure PATH [--method M] [--png OUT.png] [--json]

PATH is anything ``grok.ingest.readers.read_oct`` reads: a DICOM OPT file (multi- or single-frame), an
8/16-bit PNG/TIFF B-scan export with its sidecar ``<file>.json``, an export folder with ``volume.json``, or
a vendor file when the ``vendor`` extra is installed.

``segment --json`` prints ``{"frame", "spacing_um": {"axial", "lateral"}, "boundaries": {name: [row per
column, null where not found]}, "choroid_sclera", "confidence": {name: [0..1 per column]}, "flags"}`` (rows
are floats in pixels from the top; ``--compare-device`` adds ``device_difference``).
``measure --json`` prints ``{"laterality", "scan_pattern", "biomarkers": {id: value or null}, "quality",
"lesions", ...}`` for a macular cube, a single B-scan or a circle scan. ``--png`` writes the (foveal)
B-scan with boundaries and lesion masks; ``measure`` on a cube also writes ``<OUT>_thickness.png`` (en-face
thickness map with the ETDRS grid).

Exit codes: 0 done; 1 nothing usable was found (all boundaries NaN, or the biomarkers are not
measurable: the JSON's flags / quality say why); 2 bad flag value (e.g. --frame out of range);
3 unreadable or missing file.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import typer

from grok.cli._common import ExitCode, console, fail, print_json

oct_app = typer.Typer(help="OCT: layer segmentation and macular / peripapillary biomarkers.", no_args_is_help=True)


def _read(path: Path):
    from grok.ingest.readers import ReaderError, read_oct

    try:
        return read_oct(path)
    except ReaderError as exc:
        fail(str(exc), ExitCode.BAD_INPUT)
    except (OSError, ValueError) as exc:  # a reader bug must still name the file
        fail(f"{path}: cannot be read as OCT ({exc}); check the file or re-export it", ExitCode.BAD_INPUT)


def _mm_to_um(v: float) -> float:
    try:
        f = float(v) * 1000.0
    except (TypeError, ValueError):
        return math.nan
    return f if math.isfinite(f) and f > 0 else math.nan


def device_differences(ours: np.ndarray, device: np.ndarray, axial_um: float) -> dict[str, dict]:
    """Per boundary the device's lines have: mean absolute and signed difference (ours - device), px and um,
    over the columns where both are defined."""
    from grok.ids import BOUNDARIES

    out: dict[str, dict] = {}
    for k, name in enumerate(BOUNDARIES):
        both = np.isfinite(ours[k]) & np.isfinite(device[k])
        if not np.isfinite(device[k]).any():
            continue
        d = (ours[k] - device[k])[both].astype(np.float64)
        mae = float(np.abs(d).mean()) if d.size else math.nan
        out[name] = {"mae_px": mae, "mean_px": float(d.mean()) if d.size else math.nan,
                     "mae_um": mae * axial_um if math.isfinite(axial_um) else math.nan, "columns": int(both.sum()),
                     "device_columns": int(np.isfinite(device[k]).sum())}
    return out


@oct_app.command("segment")
def segment_cmd(
    path: Path = typer.Argument(..., help="DICOM OPT, B-scan image export (+ sidecar), export folder or vendor file."),
    frame: int | None = typer.Option(None, "--frame", help="B-scan index in the file (default: the middle one)."),
    spacing_um: tuple[float, float] | None = typer.Option(
        None, "--spacing-um", help="Axial and lateral pixel spacing in micrometres (overrides the header)."
    ),
    png: Path | None = typer.Option(None, "--png", help="Write the B-scan with its boundaries here."),
    method: str = typer.Option("auto", "--method", help="Segmentation method: auto, layered or classic "
                                                        "(docs/oct.md)."),
    compare_device: bool = typer.Option(False, "--compare-device", help="Also print the mean absolute "
                                        "difference to the device's own lines stored in the file (vendor files)."),
    as_json: bool = typer.Option(False, "--json", help="Print the boundaries as JSON on stdout."),
) -> None:
    """Segment the nine layer boundaries of one B-scan."""
    scan = _read(path)
    n = scan.volume.shape[0]
    idx = n // 2 if frame is None else frame
    if not 0 <= idx < n:
        fail(f"--frame {frame} is out of range: {path} holds {n} B-scan(s) (0..{n - 1})", ExitCode.USAGE)
    if spacing_um is not None:
        ax, la = (float(v) for v in spacing_um)
        if not (ax > 0 and la > 0 and math.isfinite(ax) and math.isfinite(la)):
            fail(f"--spacing-um needs two positive numbers (axial lateral), got {spacing_um}", ExitCode.USAGE)
    else:
        ax, la = _mm_to_um(scan.spacing_mm[0]), _mm_to_um(scan.spacing_mm[1])
    from grok.ids import BOUNDARIES
    from grok.oct.segment import segment_bscan
    from grok.oct.volume import DEFAULT_SPACING_UM

    missing = [name for name, v in (("axial", ax), ("lateral", la)) if not math.isfinite(v)]
    if method not in ("auto", "layered", "classic"):
        fail(f"--method must be auto, layered or classic, got {method!r}", ExitCode.USAGE)
    res = segment_bscan(scan.volume[idx], ax if math.isfinite(ax) else DEFAULT_SPACING_UM[0],
                        la if math.isfinite(la) else DEFAULT_SPACING_UM[1],
                        pattern="circle" if scan.scan_pattern == "circle" else "macula", method=method)
    flags = dict(res.flags)
    device = None
    if compare_device:
        dev = scan.meta.get("device_boundaries")
        if dev is None:
            fail(f"{path}: the file holds no device segmentation lines to compare with (--compare-device reads "
                 "them from vendor files such as Heidelberg .vol)", ExitCode.USAGE)
        device = device_differences(res.boundaries, dev[idx], ax)
    if missing:
        flags["missing_spacing"] = (f"no {' / '.join(missing)} spacing in {path}; segmented assuming "
                                    f"{DEFAULT_SPACING_UM[0]} x {DEFAULT_SPACING_UM[1]} um pixels (pass --spacing-um)")
    if png is not None:
        from grok.oct.overlay import bscan_png

        bscan_png(scan.volume[idx], res.boundaries, png, title=f"{path.name} frame {idx}")
        console.print(f"overlay: {png}")
    found = bool(np.isfinite(res.boundaries).any())
    if as_json:
        print_json({
            "frame": idx,
            "spacing_um": {"axial": ax, "lateral": la},
            "boundaries": {name: res.boundaries[k] for k, name in enumerate(BOUNDARIES)},
            "choroid_sclera": res.choroid_sclera,
            "confidence": {name: res.confidence[k] for k, name in enumerate(BOUNDARIES)},
            "flags": flags,
            **({"device_difference": device} if device is not None else {}),
        })
    else:
        fin = np.isfinite(res.boundaries).mean(axis=1)
        console.print(f"{path} frame {idx}: " + ", ".join(f"{b} {f:.0%}" for b, f in zip(BOUNDARIES, fin)))
        for k, v in flags.items():
            console.print(f"  [yellow]{k}[/]: {v}", highlight=False)
        for name, d in (device or {}).items():
            console.print(f"  vs device {name}: {d['mae_px']:.2f} px mean absolute difference "
                          f"({d['mae_um']:.1f} um) over {d['columns']} columns; signed {d['mean_px']:+.2f} px")
    if not found:
        raise SystemExit(int(ExitCode.FAILED))


@oct_app.command("measure")
def measure_cmd(
    path: Path = typer.Argument(..., help="DICOM OPT, B-scan image export (+ sidecar), export folder or vendor file."),
    png: Path | None = typer.Option(None, "--png", help="Write the foveal B-scan overlay here (cubes also get "
                                                        "<OUT>_thickness.png)."),
    method: str = typer.Option("auto", "--method", help="Segmentation method: auto, layered or classic "
                                                        "(docs/oct.md)."),
    as_json: bool = typer.Option(False, "--json", help="Print the measurement as JSON on stdout."),
) -> None:
    """Measure every canonical OCT biomarker of a macular cube, a single B-scan or a circle scan."""
    if method not in ("auto", "layered", "classic"):
        fail(f"--method must be auto, layered or classic, got {method!r}", ExitCode.USAGE)
    scan = _read(path)
    from grok.oct.volume import measure_circle, measure_volume

    if scan.scan_pattern == "circle":
        m = measure_circle(scan.volume[0], _mm_to_um(scan.spacing_mm[0]), _mm_to_um(scan.spacing_mm[1]),
                           scan.laterality, method=method)
        if png is not None:
            from grok.oct.overlay import bscan_png

            bscan_png(scan.volume[0], m.segmentation, png, title=f"{path.name} circle scan (TSNIT)")
    else:
        m = measure_volume(scan.volume, scan.spacing_mm, scan.laterality, method=method)
        if png is not None:
            _write_volume_pngs(scan, m, png, path)
    if png is not None:
        console.print(f"overlay: {png}")
    if as_json:
        print_json(m.to_dict())
    else:
        bm = m.biomarkers
        shown = {k: v for k, v in bm.items() if math.isfinite(v)}
        console.print(f"{path}: {len(shown)}/{len(bm)} biomarkers, usable={m.quality['usable']}")
        for k, v in list(shown.items())[:12]:
            console.print(f"  {k} = {v:.4g}")
        for k, v in m.quality["flags"].items():
            console.print(f"  [yellow]{k}[/]: {v}", highlight=False)
    if not m.quality["usable"]:
        raise SystemExit(int(ExitCode.FAILED))


def _write_volume_pngs(scan, m, png: Path, path: Path) -> None:
    from grok.oct.overlay import bscan_png, thickness_map_png
    from grok.oct.volume import select_bscans

    sel = select_bscans(m)
    i = sel["foveal"] if sel["foveal"] is not None else scan.volume.shape[0] // 2
    bscan_png(scan.volume[i], m.segmentation[i], png, masks={k: v[i] for k, v in m.masks.items()},
              hrf=[(r, c) for b, r, c in m.hrf if b == i], title=f"{path.name} B-scan {i}")
    if scan.volume.shape[0] > 1 and m.fovea is not None and math.isfinite(m.spacing_um["bscan"]):
        seg = m.segmentation
        thick = (seg[:, 8] - seg[:, 0]) * m.spacing_um["axial"]
        out = png.with_name(png.stem + "_thickness.png")
        thickness_map_png(thick, (m.spacing_um["lateral"], m.spacing_um["bscan"]), m.fovea, m.laterality or "OD",
                          out, values=m.biomarkers)
        console.print(f"thickness map: {out}")


def register(app: typer.Typer) -> None:
    """Add ``grok oct ...`` to the main app."""
    app.add_typer(oct_app, name="oct")
