"""``inspect``, ``groups`` and ``show``: what will be done, the table, what was done.

``inspect`` and ``groups`` read metadata and tables only: they never load torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..settings.denoise import DenoiseSettings
from ..transfer.hierarchy import LEVELS
from ..transfer.images import check_table_supports
from ..transfer.labels import uncalibrated_specimen
from ..transfer.table import TableError
from .app import app, console, fail, json_flag, load_table, say, settings_from, warn

_TABLE_OPTION = typer.Option(None, metavar="FILE", help="Calibration table TOML (default: "
                             "the shipped FMD table).")


@app.command()
def groups(
    metric: Optional[str] = typer.Option(None, metavar="METRIC", help="Which metric's table "
                                         "(default: the table's default)."),
    table: Optional[Path] = _TABLE_OPTION,
    as_json: bool = json_flag(),
) -> None:
    """Print the calibration table: the DIP configuration of every group."""
    calibration = load_table(table)
    try:
        rows = calibration.entries(metric)
    except TableError as error:
        fail(error)
    name = metric or calibration.default_metric
    if as_json:
        typer.echo(json.dumps({"table": str(calibration.path), "metric": name,
                               "provenance": calibration.provenance,
                               "groups": [{"level": level, "group": group, **params.as_dict()}
                                          for level, group, params in rows]}, indent=2))
        return
    view = Table(title=escape(f"AUTO-DIP calibration ({name}) - {calibration.path}"))
    for column in ("level", "group", "depth", "width", "skip", "iterations"):
        view.add_column(column, justify="right" if column in ("depth", "skip", "iterations")
                        else "left")
    for level, group, params in sorted(rows, key=lambda row: (LEVELS.index(row[0]), row[1])):
        view.add_row(level, group, str(params.depth), params.width, str(params.skip),
                     str(params.iterations))
    Console().print(view)
    source = calibration.provenance.get("source")
    if source:
        Console().print(escape(f"source: {source}"), highlight=False)


@app.command()
def inspect(
    files: list[Path] = typer.Argument(..., metavar="FILE...",
                                       help="OME-TIFF, TIFF, PNG or OME-XML files."),
    microscope: Optional[str] = typer.Option(
        None, metavar="TYPE", help="Preview an override: confocal, widefield, two-photon, ..."),
    specimen: Optional[str] = typer.Option(None, metavar="NAME", help="Preview an override: "
                                           "actin, mito, nucleus."),
    metric: Optional[str] = typer.Option(None, metavar="METRIC", help="Calibration metric "
                                         "table (default: the table's)."),
    table: Optional[Path] = _TABLE_OPTION,
    as_json: bool = json_flag("Print JSON: {\"images\": [...], \"errors\": [...]}."),
    transfer: Optional[str] = typer.Option(
        None, metavar="MODE", help="Preview a transfer mode; nearest-* modes read the first "
        "planes of each channel and show the nearest calibration images."),
    within_group: bool = typer.Option(False, "--within-group", help="nearest-*: only "
                                      "calibration images of the channel's group."),
) -> None:
    """Show, per image and channel, the microscope, specimen, evidence and DIP parameters.

    Reads metadata only (no pixels, no denoising). Unreadable files are reported and the
    others still inspected; the exit status is 1 if any file failed.
    """
    from ..pipeline.plan import inspect_file

    settings = settings_from(DenoiseSettings, {
        "microscope": microscope, "specimen": specimen, "metric": metric,
        "transfer": transfer, "within_group": within_group, "table": load_table(table)})
    check_transfer(settings)
    try:
        settings.table.lookup(None, None, metric)  # an unknown metric fails here, once
    except TableError as error:
        fail(error)
    images, errors = [], []
    for path in files:
        try:
            images.extend(inspect_file(path, settings))
        except (ValueError, OSError) as error:  # ImageReadError is a ValueError
            message = str(error) if str(path) in str(error) else f"{path}: {error}"
            errors.append({"file": str(path), "error": message})
            say_error(message)
    nearest = _inspect_nearest(files, settings, errors) if settings.transfer != "group" else None
    if as_json:
        typer.echo(json.dumps({"images": images, "errors": errors,
                               **({"nearest": nearest} if nearest is not None else {})},
                              indent=2))
    else:
        _print_inspection(images)
        if nearest is not None:
            _print_nearest(nearest, settings.transfer)
    if errors:
        raise typer.Exit(1)


def check_transfer(settings: DenoiseSettings) -> None:
    """Refuse a nearest-* transfer the table cannot serve before any file is read; warn
    when ``--specimen`` names a specimen the table has no group for (a misspelling would
    otherwise quietly give every channel a coarser configuration)."""
    table = settings.calibration_table()
    try:
        check_table_supports(table, settings.transfer, settings.metric)
    except ValueError as error:  # TableError and SimilarityError are ValueErrors
        fail(error)
    if not settings.specimen:
        return
    try:
        calibrated = table.specimens(settings.metric)
    except TableError:  # an unknown metric is refused where the metric is used
        return
    note = uncalibrated_specimen(settings.specimen, calibrated)
    if note:
        warn(f"--specimen: {note}")


def say_error(message: str) -> None:
    """One file's error; the others go on."""
    console.print(f"[red]error:[/red] {escape(message)}", highlight=False)


@app.command()
def show(
    file: Path = typer.Argument(..., metavar="FILE", help="A denoised output "
                                "(.autodip.ome.tif) or the raw file it was made from."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="PNG", help="PNG to write "
                                       "(default: <output stem>.preview.png beside the output)."),
    z: Optional[int] = typer.Option(None, min=0, metavar="N", help="Z plane (default: the "
                                    "middle of the stack)."),
    t: Optional[int] = typer.Option(None, min=0, metavar="N", help="Time point (default 0)."),
    channel: Optional[list[int]] = typer.Option(None, "--channel", "-c", min=0, metavar="N",
                                                help="Channel (repeatable; default: all)."),
    series: int = typer.Option(0, min=0, metavar="N", help="Image (series) of the file."),
    raw: Optional[Path] = typer.Option(None, metavar="FILE", help="The raw file, when it is "
                                       "neither beside the output nor where it was denoised."),
    denoised: Optional[Path] = typer.Option(None, metavar="FILE", help="The output, when FILE "
                                            "is the raw file and the output is elsewhere."),
) -> None:
    """Write a before/after PNG: raw and denoised planes side by side, same contrast, a zoom.

    Per channel: the raw plane, the denoised plane (one contrast stretch from the raw's
    percentiles), and a zoomed crop of the most structured region of each; the caption
    gives group, transfer level, parameters and seconds from the output's provenance.
    """
    from ..io.outputs import preview_path
    from ..preview import PreviewError, build_preview

    try:
        picture = build_preview(file, raw=raw, denoised=denoised, series=series, t=t, z=z,
                                channels=list(channel) if channel else None)
    except (PreviewError, ValueError, OSError) as error:
        fail(error, 1)
    target = out if out is not None else preview_path(picture.output_path)
    if target.is_dir():
        target = target / preview_path(picture.output_path).name
    try:
        picture.save(target)
    except OSError as error:
        fail(f"cannot write {target}: {error}", 1)
    finally:
        picture.close()
    for note in picture.notes:
        warn(note)
    where = ", ".join(f"{axis}={index}" for axis, index in picture.position.items())
    say(f"wrote {target} ({picture.raw_path.name} vs {picture.output_path.name}, image "
        f"{picture.series}, {where}, channel(s) "
        f"{', '.join(str(panel.channel) for panel in picture.channels)})")


def _print_inspection(images: list[dict]) -> None:
    """Per image: a plain-text table of labels and parameters (never truncated), then
    each channel's evidence, then the file's warnings once."""
    headers = ("ch", "name", "microscope", "specimen", "level", "group", "depth/width/skip/iter")
    for number, image in enumerate(images):
        shape = "x".join(map(str, image["shape"]))
        typer.echo(f"{image['file']} - image {image['index']} {image['name']!r}: {image['axes']} "
                   f"{shape} {image['dtype']} ({image['format']}"
                   f"{'' if image['pixels'] else ', metadata only'})")
        sizes = image.get("physical_sizes_um") or {}
        if sizes:
            typer.echo("  pixel size: " + ", ".join(f"{axis} {value:.6g} µm"
                                                   for axis, value in sizes.items()))
        rows = [headers]
        for channel in image["channels"]:
            params = channel["params"]
            rows.append((str(channel["index"]), channel["name"] or "-", channel["microscope"],
                         channel["specimen"], channel["level"], channel["group"] or "-",
                         "copied as is" if params is None else
                         f"{params['depth']}/{params['width']}/{params['skip']}/{params['iterations']}"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(headers))]
        for row in rows:
            typer.echo("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if image.get("mode"):
            typer.echo(f"  fit mode: {_describe_mode(image['mode'])}")
        for channel in image["channels"]:
            typer.echo(f"  ch {channel['index']} evidence:")
            for line in channel["evidence"]:
                typer.echo(f"    - {line}")
        last_of_file = number + 1 == len(images) or images[number + 1]["file"] != image["file"]
        if last_of_file:
            for warning in image["warnings"]:
                typer.echo(f"  warning: {warning}")
        typer.echo("")


def _describe_mode(mode: dict) -> str:
    """One line for a fit mode record (``pipeline.plan.mode_record``)."""
    if mode["name"] == "paper":
        return "paper (one fit per tile, output of the last iteration)"
    parts = []
    if mode.get("vst"):
        parts.append("variance-stabilised (Poisson-Gaussian noise estimated per plane)")
    if mode.get("average_fraction"):
        parts.append(f"mean of the last {mode['average_fraction']:.0%} of the iterations"
                     + (f" without loss spikes (> x{mode['spike_factor']})"
                        if mode.get("spike_factor") else ""))
    if mode.get("rollback"):
        parts.append("rollback after loss spikes")
    if mode.get("extend_fraction"):
        parts.append(f"goes on past the transferred count, by up to "
                     f"{mode['extend_fraction']:.0%}, while the residual is above the "
                     f"estimated noise and within x{mode.get('discrepancy_margin', 2):g} of "
                     f"it (discrepancy principle)")
    members = mode.get("members", {})
    parts.append(f"ensemble of {members.get('cpu')} fits on CPU, {members.get('cuda')} on CUDA")
    return f"{mode['name']}: " + "; ".join(parts)


def _inspect_nearest(files: list[Path], settings: DenoiseSettings,
                     errors: list[dict]) -> list[dict]:
    """nearest-* modes decide per plane from pixels: show the first planes' choices."""
    from ..perceptual import LpipsWeightsMissing
    from ..pipeline.nearest import inspect_nearest

    failed = {error["file"] for error in errors}
    rows = []
    for path in files:
        if str(path) in failed:
            continue
        try:
            rows.extend(inspect_nearest(path, settings, "cpu"))
        except (ValueError, OSError, LpipsWeightsMissing) as error:
            errors.append({"file": str(path), "error": str(error)})
            say_error(f"{path}: {error}")
    return rows


def _print_nearest(rows: list[dict], mode: str) -> None:
    typer.echo(f"{mode} transfer (decided per plane; the first planes of each channel):")
    for row in rows:
        params = row["params"]
        ranking = ", ".join(f"{item['image']} {item['distance']:.4g}" for item in row["ranking"][:4])
        typer.echo(f"  {row['file']} {row['plane']} ch {row['channel']} "
                   f"({row['microscope']}/{row['specimen']}): nearest {row['image']} "
                   f"({row['measure']} {row['distance']:.4g}, pool {row['pool']}, {row['metric']} optimum) "
                   f"-> {params['depth']}/{params['width']}/{params['skip']}/{params['iterations']}")
        typer.echo(f"    ranking: {ranking}")
