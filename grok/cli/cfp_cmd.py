"""CLI for colour fundus photographs: ``grok cfp measure``.

Run as: grok cfp measure PATH [--png OUT.png] [--masks DIR] [--json]

PATH is a DICOM Ophthalmic Photography file or an image file (PNG/JPEG/TIFF, optional sidecar
``<file>.json`` with ``eye`` / ``pixel_spacing_mm``). ``--json`` prints
``{"laterality", "biomarkers", "lesions", "quality", "extras", "extractor"}`` on stdout; ``--png`` writes the
overlay; ``--masks DIR`` writes fov/vessels/arteries/veins/disc/cup PNG masks at the original size.
Exit codes: 0 measured (grade good or usable), 1 the image was graded ``reject``, 3 unreadable file.
"""

from __future__ import annotations

from pathlib import Path

import typer

from grok.cli._common import ExitCode, console, fail, print_json

cfp_app = typer.Typer(help="Colour fundus photographs: measure disc, cup, vessels, lesions, quality.",
                      no_args_is_help=True)


@cfp_app.command("measure")
def measure_cmd(
    path: Path = typer.Argument(..., help="DICOM OP file or image file (PNG/JPEG/TIFF)."),
    png: Path | None = typer.Option(None, "--png", help="Write an overlay PNG here."),
    masks: Path | None = typer.Option(None, "--masks", help="Write binary mask PNGs into this folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the measurement as JSON on stdout."),
) -> None:
    """Measure one colour fundus photograph."""
    from grok.ingest.readers import ReaderError, read_cfp

    try:
        img = read_cfp(path)
    except ReaderError as exc:
        fail(str(exc), ExitCode.BAD_INPUT)
    from grok.cfp import measure_fundus
    from grok.cfp.overlay import overlay_png, write_masks

    m = measure_fundus(img.rgb, laterality=img.laterality, pixel_spacing_mm=img.pixel_spacing_mm)
    if png is not None:
        overlay_png(img.rgb, m, png)
        console.print(f"overlay: {png}")
    if masks is not None:
        written = write_masks(m, masks)
        console.print(f"masks: {len(written)} files in {masks}")
    if as_json:
        print_json(m.to_dict())
    else:
        bm = m.biomarkers
        console.print(f"{path}: quality {m.quality['grade']} {m.quality['reasons'] or ''}")
        console.print(f"  laterality {m.laterality}  disc {bm['disc_center_xy_px']}  DD {bm['disc_diameter_px']:.1f} px"
                      f"  fovea {bm['fovea_center_xy_px']}  vCDR {bm['cup_disc_ratio_vertical']:.2f}"
                      f"  AVR {bm['av_ratio']:.2f}  density {bm['vessel_density']:.3f}  lesions {len(m.lesions)}")
    if m.quality["grade"] == "reject":
        raise SystemExit(int(ExitCode.FAILED))


def register(app: typer.Typer) -> None:
    """Add ``grok cfp ...`` to the root app."""
    app.add_typer(cfp_app, name="cfp")
