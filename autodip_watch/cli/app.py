"""The ``autodip-watch`` command line (typer). Commands mirror the library modules."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .. import __version__
from ..io.atomic import describe_os_error
from ..transfer.hierarchy import LEVELS
from ..transfer.table import CalibrationTable, TableError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Denoise fluorescence microscopy images with AUTO-DIP.")
console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"autodip-watch {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """AUTO-DIP denoising daemon and tools."""


def _load_table(path: Optional[Path]) -> CalibrationTable:
    try:
        return CalibrationTable.load(path)
    except TableError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None


# --------------------------------------------------------------------------- denoise

@app.command()
def denoise(
    inputs: list[Path] = typer.Argument(..., help="TIFF, OME-TIFF or PNG files.", exists=False),
    microscope: Optional[str] = typer.Option(None, help="confocal, widefield or two-photon (overrides the metadata)."),
    specimen: Optional[str] = typer.Option(None, help="actin, mito or nucleus (overrides the metadata)."),
    depth: Optional[int] = typer.Option(None, min=4, max=8, help="Override the network depth (4-8)."),
    width: Optional[str] = typer.Option(None, help="Override the width: 16..512 or asc."),
    skip: Optional[int] = typer.Option(None, help="Override the skip channels: 0 or 4."),
    iterations: Optional[int] = typer.Option(None, min=1, help="Override the number of iterations."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Output file (one input), or folder: an existing "
                                      "folder, or a path ending in / (created if missing)."),
    device: Optional[str] = typer.Option(None, help="cuda, cuda:N, mps or cpu (default: best available)."),
    seed: int = typer.Option(0, help="Random seed of the network and its input."),
    metric: Optional[str] = typer.Option(None, help="Calibration metric table (default: the table's, lpips_psnr)."),
    table: Optional[Path] = typer.Option(None, help="Calibration table TOML (default: the shipped FMD table)."),
    transfer: str = typer.Option("group", help="Parameter transfer: group, or nearest-mae, nearest-mse, nearest-psnr, "
                                 "nearest-ssim, nearest-lpips, nearest-gradient (needs a table from `calibrate`)."),
    within_group: bool = typer.Option(False, "--within-group", help="nearest-*: compare only with calibration images of the plane's group."),
    batching: str = typer.Option("auto", help="Fit planes of one configuration together: auto (on CUDA only), on, off."),
    max_batch: int = typer.Option(32, min=1, help="Most planes (tiles) fitted together in one batch."),
    jobs_together: int = typer.Option(0, min=0, help="Files denoised side by side where batching is on, so "
                                      "that planes of different files share batches (0: 4)."),
    speed: str = typer.Option("", help="Speed settings, comma-separated: channels_last, tf32, bf16, compile, cuda_graphs "
                              "(default: none, the plain fp32 path; see bench/README.md for what each gains)."),
    mode: str = typer.Option("stable", help="Fit mode: stable (default: variance-stabilised, late-window "
                             "mean, rollback after loss spikes, ensemble of seeds) or paper (the "
                             "published AUTO-DIP: one fit, last iterate)."),
    members: Optional[int] = typer.Option(None, min=1, help="Ensemble size: fits per tile, averaged "
                                          "(default: the mode's for the device)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress on stderr (errors still)."),
) -> None:
    """Denoise files with the AUTO-DIP configuration of each channel's group.

    Writes X.autodip.ome.tif for X.ome.tif (X.tif.autodip.ome.tif for X.tif, and so on) beside
    each input (or under --out); never modifies the input, never overwrites a file it did not
    write for that input.
    Progress goes to stderr: bars on a terminal, a line every 10 % (or 30 s) elsewhere.
    """
    if not quiet:
        console.print("loading the engine (torch) ...", highlight=False)
    from ..dip.batching import run_together
    from ..dip.params import normalise_width
    from ..settings.denoise import DenoiseSettings
    from ..pipeline.denoise import PipelineError, denoise_file
    from ..io.outputs import output_path_for

    out_path = _out_target(out, len(inputs))
    planned = [output_path_for(path, out_path) for path in inputs]
    clashes = [(a, b) for i, a in enumerate(inputs) for j, b in enumerate(inputs)
               if i < j and planned[i] == planned[j] and a.absolute() != b.absolute()]
    if clashes:
        first, second = clashes[0]
        console.print(f"[red]error:[/red] {first} and {second} would both be written to "
                      f"{output_path_for(first, out_path)}; denoise them into different folders")
        raise typer.Exit(2)
    try:
        if width is not None:
            width = normalise_width(width)
        if skip is not None and skip not in (0, 4):
            raise ValueError("skip must be 0 or 4")
        if batching not in ("auto", "on", "off"):
            raise ValueError(f"--batching must be auto, on or off, not {batching!r}")
        DenoiseSettings(speed=speed, table=None).speed_settings()
        DenoiseSettings(mode=mode, table=None).fit_mode()
    except ValueError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    settings = DenoiseSettings(microscope=microscope, specimen=specimen, depth=depth, width=width,
                               skip=skip, iterations=iterations, metric=metric, device=device,
                               seed=seed, table=_load_table(table), batching=batching,
                               max_batch=max_batch, speed=speed, mode=mode, members=members)
    settings.transfer, settings.within_group = transfer, within_group
    _check_transfer(settings)
    inputs, same_set = _one_per_set(inputs)
    for member, first in same_set:
        console.print(f"{member}: same multi-file OME set as {first}; the set is denoised "
                      f"once, with {first}")
    shared, slots = _files_together(settings, len(inputs), jobs_together)
    failed: list[Path] = []
    stopping = _Stopping(immediate=slots == 1)

    def denoise_one(path: Path, fitter, progress_bar) -> dict:
        if stopping.signal is not None:
            return {"input": str(path), "error": "not started: stopping"}
        progress, notify = progress_bar.for_file(path)
        try:
            report = denoise_file(path, settings, out_path, progress=stopping.checked(progress),
                                  fitter=fitter, notify=notify)
        except (PipelineError, ValueError, OSError, RuntimeError) as error:
            failed.append(path)
            message = (describe_os_error(error, error.filename or path, "denoise")
                       if isinstance(error, OSError) else str(error))
            # reader errors already start with the path
            console.print(f"[red]error:[/red] {message if message.startswith(str(path)) else f'{path}: {message}'}")
            return {"input": str(path), "error": message}
        if not as_json:
            console.print(f"{path} -> {report.output} ({report.seconds:.1f} s on {report.device})")
        return report.as_dict()

    from .progress_view import DenoiseProgress, choose_mode

    try:
        with stopping, DenoiseProgress(console, choose_mode(sys.stderr, quiet),
                                       total_planes=_count_planes(inputs) if len(inputs) > 1 else None,
                                       label_files=len(inputs) > 1) as progress_bar:
            summaries = run_together(shared, [functools.partial(denoise_one, path,
                                                                progress_bar=progress_bar)
                                              for path in inputs], slots)
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM (systemd, a batch scheduler): what a writer left is removed.
        from ..io.atomic import remove_temporary_outputs

        for output in planned:
            remove_temporary_outputs(output)
        name = signal.Signals(stopping.signal or signal.SIGINT).name
        console.print(f"[yellow]stopped by {name}; unfinished outputs removed[/yellow]")
        raise typer.Exit(128 + (stopping.signal or signal.SIGINT)) from None
    if same_set:  # say what happened to every input given
        outputs = {str(path): summary.get("output") for path, summary in zip(inputs, summaries)}
        summaries = list(summaries) + [
            {"input": str(member), "same_set_as": str(first), "output": outputs.get(str(first)),
             "note": "member of a multi-file OME set given more than once; denoised once"}
            for member, first in same_set]
    if as_json:
        typer.echo(json.dumps(summaries[0] if len(summaries) == 1 else summaries, indent=2))
    if failed:
        raise typer.Exit(1)


def _out_target(out: Optional[str], inputs: int) -> Optional[Path]:
    """``--out``: a folder when it ends in a slash or is an existing folder (created if
    missing), else a file (one input only)."""
    from ..io.atomic import describe_os_error

    if out is None:
        return None
    path = Path(out).expanduser()
    folder = out.endswith(("/", os.sep)) or path.is_dir()
    if not folder:
        if inputs > 1:
            console.print(f"[red]error:[/red] --out {out}: several inputs need a folder; write "
                          f"it with a trailing slash ({out}/) to create it")
            raise typer.Exit(2)
        return path
    if path.exists() and not path.is_dir():
        console.print(f"[red]error:[/red] --out {out}: {path} is a file, not a folder")
        raise typer.Exit(2)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        console.print(f"[red]error:[/red] {describe_os_error(error, path, 'create the folder')}")
        raise typer.Exit(1) from None
    return path


class _Stopping:
    """SIGTERM and SIGINT during ``denoise``: stop as Ctrl-C does, leaving no temporary file.

    With one file at a time the signal interrupts at once (KeyboardInterrupt; the
    writer removes its temporary file on the way out). With files side by side in
    threads it is noted and each fit stops at its next iteration, so that every
    thread's writer cleans up before the process exits.
    """

    def __init__(self, immediate: bool) -> None:
        self.immediate = immediate
        self.signal: Optional[int] = None
        self._previous: dict = {}

    def __enter__(self) -> "_Stopping":
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[signum] = signal.signal(signum, self._on_signal)
            except ValueError:  # not the main thread (tests calling the app in a thread)
                pass
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if self.signal is not None and exc[0] is None:
            raise KeyboardInterrupt

    def _on_signal(self, signum, frame) -> None:
        first = self.signal is None
        self.signal = signum
        if self.immediate or not first:
            raise KeyboardInterrupt

    def checked(self, progress):
        """The progress callback, stopping the fit once a signal came."""
        def check(*args) -> None:
            if self.signal is not None:
                raise KeyboardInterrupt
            progress(*args)
        return check


def _one_per_set(inputs: list[Path]) -> tuple[list[Path], list[tuple[Path, Path]]]:
    """The inputs with each multi-file OME set once (its first file given), and the
    (member, first file given) pairs left out. Two inputs are of one set when they are
    read from the same files (a ``BinaryOnly`` member and its master, or files that
    each carry the whole set's OME-XML); plain files are their own set."""
    from ..io.reader import ImageFile
    from ..io.errors import ImageReadError

    first_of: dict[object, Path] = {}
    kept: list[Path] = []
    left_out: list[tuple[Path, Path]] = []
    for path in inputs:
        key: object = path
        try:
            with ImageFile(path) as image:
                if len(image.source_files) > 1:
                    key = frozenset(p.resolve() for p in image.source_files)
        except (ImageReadError, OSError):
            pass  # denoise reports it
        if key in first_of:
            left_out.append((path, first_of[key]))
            continue
        first_of[key] = path
        kept.append(path)
    return kept, left_out


def _files_together(settings, files: int, jobs_together: int):
    """The shared batching fitter and how many files run side by side, for ``denoise``
    of several files: as the daemon's worker, where batching is on for the device."""
    from ..settings.config import BatchingSettings
    from ..pipeline.denoise import shared_fitter

    shared = shared_fitter(settings) if files > 1 else None
    if shared is None:
        return None, 1
    slots = BatchingSettings(mode=settings.batching, max_batch=settings.max_batch,
                             jobs_together=jobs_together).jobs_for(shared.fitter.device.type)
    return (shared, slots) if slots > 1 else (None, 1)


def _count_planes(paths: list[Path]) -> int | None:
    """Planes of every input from the metadata (for the overall bar); None if unreadable."""
    from ..io.reader import ImageFile

    total = 0
    for path in paths:
        try:
            with ImageFile(path) as image:
                total += sum(info.plane_count for info in image.series if info.has_pixels)
        except (ValueError, OSError):
            return None  # the file's own error comes when it is denoised
    return total


# --------------------------------------------------------------------------- groups

@app.command()
def groups(
    metric: Optional[str] = typer.Option(None, help="Which metric's table (default: the table's default)."),
    table: Optional[Path] = typer.Option(None, help="Calibration table TOML (default: the shipped one)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Print the calibration table: the DIP configuration of every group."""
    calibration = _load_table(table)
    try:
        rows = calibration.entries(metric)
    except TableError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    name = metric or calibration.default_metric
    if as_json:
        typer.echo(json.dumps({"table": str(calibration.path), "metric": name,
                               "provenance": calibration.provenance,
                               "groups": [{"level": level, "group": group, **params.as_dict()}
                                          for level, group, params in rows]}, indent=2))
        return
    view = Table(title=f"AUTO-DIP calibration ({name}) - {calibration.path}")
    for column in ("level", "group", "depth", "width", "skip", "iterations"):
        view.add_column(column, justify="right" if column in ("depth", "skip", "iterations") else "left")
    for level, group, params in sorted(rows, key=lambda row: (LEVELS.index(row[0]), row[1])):
        view.add_row(level, group, str(params.depth), params.width, str(params.skip),
                     str(params.iterations))
    Console().print(view)
    source = calibration.provenance.get("source")
    if source:
        Console().print(f"source: {source}")


# --------------------------------------------------------------------------- inspect

@app.command()
def inspect(
    files: list[Path] = typer.Argument(..., help="OME-TIFF, TIFF, PNG or OME-XML files."),
    microscope: Optional[str] = typer.Option(None, help="Preview an override: confocal, widefield, two-photon, ..."),
    specimen: Optional[str] = typer.Option(None, help="Preview an override: actin, mito, nucleus."),
    metric: Optional[str] = typer.Option(None, help="Calibration metric table (default: the table's)."),
    table: Optional[Path] = typer.Option(None, help="Calibration table TOML (default: the shipped one)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: {\"images\": [...], \"errors\": [...]}."),
    transfer: str = typer.Option("group", help="Preview a transfer mode; nearest-* modes read the first planes "
                                 "of each channel and show the nearest calibration images."),
    within_group: bool = typer.Option(False, "--within-group", help="nearest-*: only calibration images of the channel's group."),
) -> None:
    """Show, per image and channel, the microscope, specimen, evidence and DIP parameters.

    Reads metadata only (no pixels, no denoising). Unreadable files are reported and the
    others still inspected; the exit status is 1 if any file failed.
    """
    from ..settings.denoise import DenoiseSettings
    from ..pipeline.plan import inspect_file

    settings = DenoiseSettings(microscope=microscope, specimen=specimen, metric=metric,
                               table=_load_table(table))
    settings.transfer, settings.within_group = transfer, within_group
    _check_transfer(settings)
    try:
        settings.check_labels()
        settings.table.lookup(None, None, metric)  # an unknown metric fails here, once
    except (ValueError, TableError) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    images, errors = [], []
    for path in files:
        try:
            images.extend(inspect_file(path, settings))
        except (ValueError, OSError) as error:  # ImageReadError is a ValueError
            message = str(error) if str(path) in str(error) else f"{path}: {error}"
            errors.append({"file": str(path), "error": message})
            console.print(f"[red]error:[/red] {message}")
    nearest = _inspect_nearest(files, settings, errors) if transfer != "group" else None
    if as_json:
        typer.echo(json.dumps({"images": images, "errors": errors,
                               **({"nearest": nearest} if nearest is not None else {})}, indent=2))
    else:
        _print_inspection(images)
        if nearest is not None:
            _print_nearest(nearest, transfer)
    if errors:
        raise typer.Exit(1)


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
    """One line for a fit mode record (pipeline._mode_record)."""
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
    members = mode.get("members", {})
    parts.append(f"ensemble of {members.get('cpu')} fits on CPU, {members.get('cuda')} on CUDA")
    return f"{mode['name']}: " + "; ".join(parts)


def _inspect_nearest(files: list[Path], settings, errors: list[dict]) -> list[dict]:
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
            console.print(f"[red]error:[/red] {path}: {error}")
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


# --------------------------------------------------------------------------- show

@app.command()
def show(
    file: Path = typer.Argument(..., help="A denoised output (.autodip.ome.tif) or the raw file it was made from."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="PNG to write (default: <output stem>.preview.png beside the output)."),
    z: Optional[int] = typer.Option(None, min=0, help="Z plane (default: the middle of the stack)."),
    t: Optional[int] = typer.Option(None, min=0, help="Time point (default 0)."),
    channel: Optional[list[int]] = typer.Option(None, "--channel", "-c", min=0, help="Channel (repeatable; default: all)."),
    series: int = typer.Option(0, min=0, help="Image (series) of the file."),
    raw: Optional[Path] = typer.Option(None, help="The raw file, when it is not beside the output."),
    denoised: Optional[Path] = typer.Option(None, help="The output, when FILE is the raw file and the output is elsewhere."),
) -> None:
    """Write a before/after PNG: raw and denoised planes side by side, same contrast, a zoom.

    Per channel: the raw plane, the denoised plane (one contrast stretch from the raw's
    percentiles), and a zoomed crop of the most structured region of each; the caption
    gives group, transfer level, parameters and seconds from the output's provenance.
    """
    from ..preview import PreviewError, build_preview, preview_path

    try:
        picture = build_preview(file, raw=raw, denoised=denoised, series=series, t=t, z=z,
                                channels=list(channel) if channel else None)
    except (PreviewError, ValueError, OSError) as error:
        console.print(f"[red]error:[/red] {error}", highlight=False)
        raise typer.Exit(1) from None
    target = out if out is not None else preview_path(picture.output_path)
    if target.is_dir():
        target = target / preview_path(picture.output_path).name
    try:
        picture.save(target)
    except OSError as error:
        console.print(f"[red]error:[/red] cannot write {target}: {error}", highlight=False)
        raise typer.Exit(1) from None
    finally:
        picture.close()
    for note in picture.notes:
        console.print(f"[yellow]warning:[/yellow] {note}", highlight=False)
    where = ", ".join(f"{axis}={index}" for axis, index in picture.position.items())
    console.print(f"wrote {target} ({picture.raw_path.name} vs {picture.output_path.name}, "
                  f"image {picture.series}, {where}, channel(s) "
                  f"{', '.join(str(panel.channel) for panel in picture.channels)})",
                  highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------- calibrate

def _check_transfer(settings) -> None:
    """Refuse a nearest-* transfer the table cannot serve before any file is read."""
    from ..transfer.images import check_table_supports

    try:
        check_table_supports(settings.table, settings.transfer, settings.metric)
    except (TableError, ValueError) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None


@app.command()
def calibrate(
    pairs: Path = typer.Argument(..., help="Folder (with pairs.csv, or MICROSCOPE/SPECIMEN/NAME_noisy.EXT + NAME_gt.EXT) "
                                 "or a CSV with columns noisy, ground_truth, microscope, specimen."),
    out: Path = typer.Option(..., "--out", "-o", help="Table to write (.toml); the calibration images go beside it as <stem>.images.tif."),
    depths: Optional[str] = typer.Option(None, help="Depths to search, e.g. 4,5 (default 4,5,6,7,8)."),
    widths: Optional[str] = typer.Option(None, help="Widths, e.g. 16,asc (default 16,32,64,128,256,512,asc)."),
    skips: Optional[str] = typer.Option(None, help="Skip channels, e.g. 4 (default 0,4)."),
    max_iterations: Optional[int] = typer.Option(None, min=1, help="Iterations per fit (default 3000)."),
    every: Optional[int] = typer.Option(None, min=1, help="Score the output every N iterations of the same run (default 100)."),
    crop: Optional[int] = typer.Option(None, min=16, help="Centre-crop each pair to N x N (planes over 512 px are always cut to 512)."),
    lpips: Optional[bool] = typer.Option(None, "--lpips/--no-lpips", help="Compute LPIPS (needs the AlexNet weights; default on). "
                                         "Without it there are no lpips/lpips_psnr tables and the default metric is psnr."),
    match: Optional[str] = typer.Option(None, help="Ground truth onto noisy: affine (least-squares fit, default) or none; "
                                        "a pairs CSV can set it per pair."),
    state: Optional[Path] = typer.Option(None, help="SQLite file of finished fits (default <out stem>.calibration.sqlite)."),
    device: Optional[str] = typer.Option(None, help="cuda, cuda:N, mps or cpu (default: best available)."),
    seed: Optional[int] = typer.Option(None, help="Seed of every fit (default 0, as denoise)."),
    config: Optional[Path] = typer.Option(None, help="TOML configuration whose [calibrate] section sets the defaults of these options."),
    restart: bool = typer.Option(False, "--restart", help="Discard the state file and start from scratch."),
    scheduler: Optional[str] = typer.Option(None, help="Run the fits on a Dask cluster, one fit per task, e.g. "
                                            "tcp://gpu-server:8786 (workers started with --resources GPU=1)."),
    stop_after: Optional[int] = typer.Option(None, hidden=True, help="Stop after N new fits (testing resumption)."),
    mode: Optional[str] = typer.Option(None, help="Fit mode the grid is scored in: paper (default, the AUTO-DIP "
                                       "calibration) or stable (as denoise's default mode; slower by its ensemble size)."),
    members: Optional[int] = typer.Option(None, min=1, help="stable mode: ensemble size (default: the mode's for the device)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Build a calibration table from your own noisy / ground-truth pairs (AUTO-DIP grid search).

    Each finished fit is saved at once: run the same command again to continue a stopped run.
    """
    import tomllib

    from ..settings.calibrate import CalibrateSettings
    from ..calibration.errors import CalibrationError, CalibrationInterrupted
    from ..calibration.run import calibrate as run
    from ..calibration.tables import default_state_path
    from ..calibration.grid import parse_list
    from ..dip.device import choose_device
    from ..perceptual import LpipsWeightsMissing

    try:
        section = {}
        if config is not None:
            section = tomllib.loads(config.read_text(encoding="utf-8")).get("calibrate", {})
        settings = CalibrateSettings.from_mapping(section)
        given = {"depths": parse_list(depths, int), "widths": parse_list(widths, str),
                 "skips": parse_list(skips, int), "max_iterations": max_iterations, "every": every,
                 "crop": crop, "lpips": lpips, "match": match, "seed": seed, "device": device,
                 "mode": mode, "members": members}
        for name, value in given.items():
            if value is not None:
                setattr(settings, name, value)
        grid = settings.grid()
        chosen_device = choose_device(settings.device)
        executor = None
        if scheduler is not None:
            from ..calibration.cluster_executor import calibration_executor
            from ..settings.config import normalise_scheduler

            try:
                address = normalise_scheduler(scheduler)
            except ValueError as error:
                raise ValueError(f"--scheduler: {error}") from None
            # Workers pick their own GPU unless --device (or [calibrate] device) says otherwise.
            executor = calibration_executor(address, device=settings.device)
    except (CalibrationError, ValueError, OSError, tomllib.TOMLDecodeError) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    state_path = state or default_state_path(out)
    if restart:
        for suffix in ("", "-wal", "-shm"):
            Path(str(state_path) + suffix).unlink(missing_ok=True)
    progress = Progress(TextColumn("{task.description}"), BarColumn(),
                        TextColumn("{task.fields[fits]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=console, disable=as_json and not sys.stderr.isatty())
    ids: dict = {}

    def on_progress(event: str, info: dict) -> None:
        if event == "start":
            if info["resumed"]:
                console.print(f"resuming: {info['resumed']} of {info['total_fits']} fits already in {state_path}")
            ids["pending"] = info["pending"]
            ids["done"] = 0
            ids["task"] = progress.add_task("calibrating", total=max(1, info["pending"] * info["iterations"]),
                                            fits=f"0/{info['pending']} fits")
            ids["per_fit"] = info["iterations"]
        elif event == "iteration":  # every iteration: an update only records a number
            task = info["task"]
            progress.update(ids["task"], completed=ids["done"] * ids["per_fit"] + info["iteration"],
                            description=f"{task.pair.name} {task.point.key}")
        elif event == "fit":
            ids["done"] += 1
            progress.update(ids["task"], completed=ids["done"] * ids["per_fit"],
                            fits=f"{ids['done']}/{ids['pending']} fits")

    try:
        with progress:
            report = run(pairs, out, grid, state_path, chosen_device, settings.seed, settings.crop,
                         settings.lpips, settings.match, stop_after, on_progress,
                         **({"executor": executor} if executor is not None else {}),
                         mode=settings.mode, members=settings.members)
    except CalibrationInterrupted as stopped:
        console.print(f"[yellow]{stopped}[/yellow]")
        raise typer.Exit(3) from None
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted; finished fits are saved in {state_path}. "
                      f"Run the same command again to continue.[/yellow]")
        raise typer.Exit(130) from None
    except (CalibrationError, LpipsWeightsMissing, TableError, OSError) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
        return
    console.print(f"wrote {report.table} and {report.sidecar}: {report.images} image(s), "
                  f"{report.fits_total} fits ({report.fits_resumed} resumed), "
                  f"{report.fit_seconds:.1f} s of fitting on {report.device}; "
                  f"use it with --table {report.table}")

# --------------------------------------------------------------------------- daemon: run, status, queue, config
# (the daemon's commands never import torch unless they run jobs, so status stays fast)

queue_app = typer.Typer(no_args_is_help=True, help="List, retry and forget the daemon's jobs.")
config_app = typer.Typer(no_args_is_help=True, help="Check a daemon configuration file.")
app.add_typer(queue_app, name="queue")
app.add_typer(config_app, name="config")

_CONFIG_OPTION = typer.Option(None, "--config", "-c", envvar="AUTODIP_WATCH_CONFIG",
                              help="Daemon configuration (TOML); see systemd/autodip-watch.example.toml.")
_STATE_OPTION = typer.Option(None, "--state-dir",
                             help="State directory holding the queue database (default: the config's "
                                  "state_dir, else $STATE_DIRECTORY, else the XDG state directory).")


def _daemon_config(config_path: Optional[Path]):
    from ..settings.config import Config, ConfigError, load_config

    if config_path is None:
        return Config()
    try:
        return load_config(config_path)
    except ConfigError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None


def _open_queue(config_path: Optional[Path], state_dir: Optional[Path]):
    from ..settings.config import resolve_state_dir
    from ..daemon.queue import JobQueue, QueueError

    directory = resolve_state_dir(state_dir, _daemon_config(config_path))
    try:
        return JobQueue(directory, create=False)
    except QueueError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None


@app.command()
def run(
    config: Optional[Path] = _CONFIG_OPTION,
    watch: Optional[list[Path]] = typer.Option(None, "--watch", "-w",
                                               help="Folder to watch (repeatable; added to the config's)."),
    state_dir: Optional[Path] = _STATE_OPTION,
    log_level: Optional[str] = typer.Option(None, help="debug, info, warning or error (default: the config's, info)."),
    executor: Optional[str] = typer.Option(None, help="Where jobs run: local (this machine's devices) or dask "
                                           "(a Dask cluster of GPU workers; default: the config's, local)."),
    scheduler: Optional[str] = typer.Option(None, help="Dask scheduler address, e.g. tcp://gpu-server:8786 "
                                            "(implies --executor dask)."),
    max_in_flight: Optional[int] = typer.Option(None, help="Dask: tasks submitted at once, each one "
                                                "GPU's (default: the config's; 0 = the cluster's GPUs)."),
) -> None:
    """Run the watcher daemon: denoise every settled image dropped into the watched folders."""
    from ..settings.config import (ConfigError, resolve_state_dir, with_cli_executor, with_cli_folders)
    from ..daemon.log import configure
    from ..daemon.service import EXIT_CONFIG, run_daemon

    settings = _daemon_config(config)
    try:
        settings = with_cli_folders(settings, list(watch or []))
        settings = with_cli_executor(settings, executor, scheduler, max_in_flight)
    except ConfigError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(EXIT_CONFIG) from None
    configure(log_level or settings.daemon.log_level)
    raise typer.Exit(run_daemon(settings, resolve_state_dir(state_dir, settings)))


@app.command()
def status(
    config: Optional[Path] = _CONFIG_OPTION,
    state_dir: Optional[Path] = _STATE_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print JSON (times in ISO 8601 UTC)."),
    recent: int = typer.Option(10, min=0, help="How many completed jobs to show."),
) -> None:
    """What the daemon is doing: up or down, folders, queue, current job, failures, throughput.

    Exit status (as systemctl status): 0 running and healthy, 1 running but unhealthy (or
    hung), 3 not running (stopped, crashed, never started here), 4 unknown (the state
    cannot be read). Works on a state folder it cannot write.
    """
    from ..settings.config import resolve_state_dir
    from ..daemon.queue import STATES, JobQueue, QueueError
    from ..daemon.status import (collect_status, exit_status, read_lock_record, render_status, status_json)

    from ..daemon.queue import DATABASE_NAME

    directory = resolve_state_dir(state_dir, _daemon_config(config))
    try:
        os.stat(directory / DATABASE_NAME)
        jobs = JobQueue(directory, create=False)
    except FileNotFoundError:
        jobs = None
    except (OSError, QueueError) as error:  # e.g. a folder this user may not enter
        message = f"cannot read the daemon's state in {directory}: {error}"
        if as_json:
            typer.echo(json.dumps({"version": __version__, "state_dir": str(directory),
                                   "daemon": {"up": False, "state": "unknown"},
                                   "error": message}, indent=2))
        else:
            console.print(f"[red]error:[/red] {message}")
        raise typer.Exit(4) from None
    if jobs is None:
        error = f"no queue database in {directory} (has the daemon run with this state directory?)"
        # Never started with this state directory: say so, not an error.
        report = {"version": __version__, "database": None, "state_dir": str(directory),
                  "daemon": {"up": False, "state": "never-ran", "reason": str(error)},
                  "counts": {name: 0 for name in STATES}}
        if as_json:
            typer.echo(json.dumps(report, indent=2))
        else:
            Console().print(f"daemon not running: {error}")
        raise typer.Exit(3)
    try:
        report = collect_status(jobs, recent=recent, lock=read_lock_record(directory))
        if as_json:
            typer.echo(json.dumps(status_json(report), indent=2))
        else:
            render_status(report, Console())
    except Exception as error:  # sqlite3.Error, OSError, a damaged row: one line, never a traceback
        message = (f"cannot read the daemon's state in {directory}: "
                   f"{type(error).__name__}: {error}")
        if as_json:
            typer.echo(json.dumps({"version": __version__, "state_dir": str(directory),
                                   "daemon": {"up": False, "state": "unknown"},
                                   "error": message}, indent=2))
        else:
            console.print(f"[red]error:[/red] {message}")
        raise typer.Exit(4) from None
    raise typer.Exit(exit_status(report))


@queue_app.command("list")
def queue_list(
    state: Optional[list[str]] = typer.Option(None, "--state", "-s",
                                              help="Only jobs in this state (repeatable): queued, running, "
                                                   "done, failed, quarantined, skipped."),
    limit: Optional[int] = typer.Option(None, min=1, help="At most this many (newest first)."),
    history: Optional[int] = typer.Option(None, help="Show the full history of this job id."),
    config: Optional[Path] = _CONFIG_OPTION,
    state_dir: Optional[Path] = _STATE_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List jobs (all states by default), or one job's history."""
    from ..daemon.queue import STATES, QueueError

    for name in state or []:
        if name not in STATES:
            console.print(f"[red]error:[/red] unknown state {name!r}; use one of {', '.join(STATES)}")
            raise typer.Exit(2)
    jobs = _open_queue(config, state_dir)
    if history is not None:
        try:
            job = jobs.get(history)
        except QueueError as error:
            console.print(f"[red]error:[/red] {error}")
            raise typer.Exit(1) from None
        record = {**job.as_dict(with_report=True), "events": jobs.events(history)}
        typer.echo(json.dumps(record, indent=2))
        return
    rows = jobs.jobs(state, limit=limit, newest_first=limit is not None)
    if as_json:
        typer.echo(json.dumps([job.as_dict() for job in rows], indent=2))
        return
    view = Table()
    for column in ("id", "state", "tries", "path", "output / error"):
        view.add_column(column, overflow="fold")
    for job in rows:
        view.add_row(str(job.id), job.state, str(job.attempts), job.path,
                     job.error if job.state in ("failed", "quarantined", "skipped") else (job.output or ""))
    Console().print(view)


@queue_app.command("retry")
def queue_retry(
    ids: Optional[list[int]] = typer.Argument(None, help="Job ids."),
    all_quarantined: bool = typer.Option(False, "--all-quarantined", help="Retry every quarantined job."),
    config: Optional[Path] = _CONFIG_OPTION,
    state_dir: Optional[Path] = _STATE_OPTION,
) -> None:
    """Queue failed, quarantined or skipped jobs again, with a fresh retry budget."""
    jobs = _open_queue(config, state_dir)
    chosen = list(ids or []) + ([job.id for job in jobs.jobs(["quarantined"])] if all_quarantined else [])
    if not chosen:
        console.print("[red]error:[/red] give job ids (see `autodip-watch queue list`) or --all-quarantined")
        raise typer.Exit(2)
    done = _queue_action(jobs.retry, chosen)
    console.print(f"queued again: {', '.join(map(str, done))}")


def _queue_action(action, ids: list[int]) -> list:
    """Run a queue change on ``ids``; a refused change is a clear error and exit 1."""
    from ..daemon.queue import QueueError

    try:
        return action(ids)
    except QueueError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from None


@queue_app.command("forget")
def queue_forget(
    ids: Optional[list[int]] = typer.Argument(None, help="Job ids."),
    state: Optional[str] = typer.Option(None, "--state", help="Forget every job in this state (not running)."),
    config: Optional[Path] = _CONFIG_OPTION,
    state_dir: Optional[Path] = _STATE_OPTION,
) -> None:
    """Delete jobs and their history. A forgotten file still present is taken again at the next start."""
    jobs = _open_queue(config, state_dir)
    chosen = list(ids or [])
    if state is not None:
        if state == "running":
            console.print("[red]error:[/red] running jobs cannot be forgotten; stop the daemon first")
            raise typer.Exit(2)
        chosen += [job.id for job in jobs.jobs([state])]
    if not chosen:
        console.print("[red]error:[/red] give job ids (see `autodip-watch queue list`) or --state")
        raise typer.Exit(2)
    done = _queue_action(jobs.forget, chosen)
    console.print(f"forgotten: {len(done)} job(s)")


@config_app.command("check")
def config_check(
    file: Path = typer.Argument(..., help="The TOML configuration to check."),
    as_json: bool = typer.Option(False, "--json", help="Print the resolved configuration as JSON."),
) -> None:
    """Validate a configuration: every problem, with its key and how to fix it."""
    import dataclasses

    from ..settings.config import ConfigError, check_runtime, load_config, resolve_state_dir

    try:
        settings = load_config(file)
        warnings = check_runtime(settings)
    except ConfigError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    for warning in warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    if as_json:
        typer.echo(json.dumps(dataclasses.asdict(settings), indent=2, default=str))
        return
    console.print(f"[green]ok[/green]: {file}")
    for folder in settings.watch:
        target = settings.output_root_for(folder) or "beside the raw files"
        defaults = ", ".join(f"{k}={v}" for k, v in (("microscope", folder.microscope),
                                                     ("specimen", folder.specimen)) if v)
        console.print(f"  watch {folder.path} ({folder.observer_kind}, settle {folder.settle_seconds:g} s"
                      f"{', ' + defaults if defaults else ''}) -> outputs {target}")
    console.print(f"  state directory: {resolve_state_dir(None, settings)}")
    cluster = settings.cluster
    if cluster.executor == "dask":
        in_flight = cluster.max_in_flight or "as many as the cluster has GPUs"
        console.print(f"  executor: dask, scheduler {cluster.scheduler}, tasks in flight: {in_flight}")
    else:
        console.print(f"  devices: {', '.join(settings.devices)}")

