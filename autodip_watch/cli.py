"""The ``autodip-watch`` command line (typer). Commands mirror the library modules."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__
from .transfer import LEVELS, CalibrationTable, TableError

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
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output file (one input) or folder."),
    device: Optional[str] = typer.Option(None, help="cuda, cuda:N, mps or cpu (default: best available)."),
    seed: int = typer.Option(0, help="Random seed of the network and its input."),
    metric: Optional[str] = typer.Option(None, help="Calibration metric table (default: the table's, lpips_psnr)."),
    table: Optional[Path] = typer.Option(None, help="Calibration table TOML (default: the shipped FMD table)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Denoise files with the AUTO-DIP configuration of each channel's group.

    Writes <stem>.autodip.ome.tif beside each input (or under --out); never modifies the input.
    """
    from .dip.network import DipParams, normalise_width
    from .pipeline import DenoiseSettings, PipelineError, denoise_file

    if len(inputs) > 1 and out is not None and not out.is_dir():
        console.print("[red]error:[/red] --out must be an existing folder when several inputs are given")
        raise typer.Exit(2)
    try:
        if width is not None:
            width = normalise_width(width)
        if skip is not None and skip not in (0, 4):
            raise ValueError("skip must be 0 or 4")
    except ValueError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    settings = DenoiseSettings(microscope=microscope, specimen=specimen, depth=depth, width=width,
                               skip=skip, iterations=iterations, metric=metric, device=device,
                               seed=seed, table=_load_table(table))
    summaries = []
    failed = 0
    for path in inputs:
        with _plane_progress(enabled=sys.stderr.isatty() or not as_json) as progress_bar:
            try:
                report = denoise_file(path, settings, out, progress=progress_bar)
            except (PipelineError, ValueError, OSError, RuntimeError) as error:
                failed += 1
                console.print(f"[red]error:[/red] {path}: {error}")
                summaries.append({"input": str(path), "error": str(error)})
                continue
        summaries.append(report.as_dict())
        if not as_json:
            console.print(f"{path} -> {report.output} ({report.seconds:.1f} s on {report.device})")
    if as_json:
        typer.echo(json.dumps(summaries[0] if len(summaries) == 1 else summaries, indent=2))
    if failed:
        raise typer.Exit(1)


class _plane_progress:
    """A rich progress bar per plane, fed by the pipeline's progress callback."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.completed}/{task.total} it"),
                                 TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=console, disable=not enabled)
        self.tasks: dict[tuple[int, int], int] = {}

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def __call__(self, plane, planes, tile, tiles, iteration, iterations) -> None:
        key = (plane, tile)
        if key not in self.tasks:
            label = f"plane {plane}/{planes}" + (f" tile {tile}/{tiles}" if tiles > 1 else "")
            self.tasks[key] = self.progress.add_task(label, total=iterations)
        if iteration % 10 == 0 or iteration == iterations:
            self.progress.update(self.tasks[key], completed=iteration)


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


if __name__ == "__main__":
    app()
