"""``autodip-watch calibrate``: options -> :class:`CalibrateSettings` -> ``calibration.run``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .app import app, console, fail, json_flag, say, settings_from


@app.command()
def calibrate(
    pairs: Path = typer.Argument(..., metavar="PAIRS", help="Folder (with pairs.csv, or "
                                 "MICROSCOPE/SPECIMEN/NAME_noisy.EXT + NAME_gt.EXT) or a CSV "
                                 "with columns noisy, ground_truth, microscope, specimen."),
    out: Path = typer.Option(..., "--out", "-o", metavar="TABLE.toml", help="Table to write; "
                             "the calibration images go beside it as <stem>.images.tif."),
    depths: Optional[str] = typer.Option(None, metavar="LIST", help="Depths to search, e.g. "
                                         "4,5 (default 4,5,6,7,8)."),
    widths: Optional[str] = typer.Option(None, metavar="LIST", help="Widths, e.g. 16,asc "
                                         "(default 16,32,64,128,256,512,asc)."),
    skips: Optional[str] = typer.Option(None, metavar="LIST", help="Skip channels, e.g. 4 "
                                        "(default 0,4)."),
    max_iterations: Optional[int] = typer.Option(None, metavar="N", help="Iterations per fit "
                                                 "(default 3000)."),
    every: Optional[int] = typer.Option(None, metavar="N", help="Score the output every N "
                                        "iterations of the same run (default 100)."),
    crop: Optional[int] = typer.Option(None, metavar="N", help="Centre-crop each pair to N x N "
                                       "(at least 16; planes over 512 px are always cut to "
                                       "512)."),
    lpips: Optional[bool] = typer.Option(None, "--lpips/--no-lpips", help="Compute LPIPS "
                                         "(needs the AlexNet weights; default on). Without it "
                                         "there are no lpips/lpips_psnr tables and the default "
                                         "metric is psnr."),
    match: Optional[str] = typer.Option(None, metavar="MODE", help="Ground truth onto noisy: "
                                        "affine (least-squares fit, default) or none; a pairs "
                                        "CSV can set it per pair."),
    state: Optional[Path] = typer.Option(None, metavar="FILE", help="SQLite file of finished "
                                         "fits (default <out stem>.calibration.sqlite)."),
    device: Optional[str] = typer.Option(None, metavar="DEVICE", help="cuda, cuda:N, mps or "
                                         "cpu (default: the best available)."),
    seed: Optional[int] = typer.Option(None, metavar="N", help="Seed of every fit (default 0, "
                                       "as denoise)."),
    config: Optional[Path] = typer.Option(None, metavar="FILE", help="TOML configuration whose "
                                          "[calibrate] table sets the defaults of these "
                                          "options."),
    restart: bool = typer.Option(False, "--restart", help="Discard the state file and start "
                                 "from scratch."),
    scheduler: Optional[str] = typer.Option(None, metavar="ADDRESS", help="Run the fits on a "
                                            "Dask cluster, one fit per task, e.g. "
                                            "tcp://gpu-server:8786 (workers started with "
                                            "--resources GPU=1)."),
    stop_after: Optional[int] = typer.Option(None, hidden=True, help="Stop after N new fits "
                                             "(testing resumption)."),
    mode: Optional[str] = typer.Option(None, metavar="MODE", help="Fit mode the grid is scored "
                                       "in: paper (default, the AUTO-DIP calibration) or stable "
                                       "(as denoise's default mode; slower by its ensemble "
                                       "size)."),
    members: Optional[int] = typer.Option(None, metavar="N", help="stable mode: ensemble size "
                                          "(default: the mode's for the device)."),
    as_json: bool = json_flag("Print a JSON summary on stdout."),
) -> None:
    """Build a calibration table from your own noisy / ground-truth pairs (AUTO-DIP grid search).

    Each finished fit is saved at once: run the same command again to continue a stopped run.
    """
    from ..calibration.errors import CalibrationError, CalibrationInterrupted
    from ..calibration.run import calibrate as run
    from ..calibration.tables import default_state_path
    from ..dip.device import choose_device
    from ..perceptual import LpipsWeightsMissing
    from ..settings.calibrate import CalibrateSettings
    from ..transfer.table import TableError
    from .daemon import daemon_config

    section = daemon_config(config).calibrate.model_dump(exclude_unset=True) if config else {}
    settings = settings_from(CalibrateSettings, {
        **section, "depths": depths, "widths": widths, "skips": skips,
        "max_iterations": max_iterations, "every": every, "crop": crop, "lpips": lpips,
        "match": match, "seed": seed, "device": device, "mode": mode, "members": members})
    try:
        chosen_device = choose_device(settings.device)
        executor = _cluster_executor(scheduler, settings.device) if scheduler else None
    except ValueError as error:
        fail(error)
    state_path = state or default_state_path(out)
    if restart:
        for suffix in ("", "-wal", "-shm"):
            Path(str(state_path) + suffix).unlink(missing_ok=True)
    progress = _Progress(state_path, disable=as_json and not sys.stderr.isatty())
    try:
        with progress.bars:
            report = run(pairs, out, settings.grid(), state_path, chosen_device, settings.seed,
                         settings.crop, settings.lpips, settings.match, stop_after,
                         progress.on_event, executor=executor, mode=settings.mode,
                         members=settings.members)
    except CalibrationInterrupted as stopped:
        console.print(f"[yellow]{escape(str(stopped))}[/yellow]", highlight=False)
        raise typer.Exit(3) from None
    except KeyboardInterrupt:
        say(f"interrupted; finished fits are saved in {state_path}. Run the same command again "
            f"to continue.")
        raise typer.Exit(130) from None
    except (CalibrationError, LpipsWeightsMissing, TableError, OSError) as error:
        fail(error)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
        return
    say(f"wrote {report.table} and {report.sidecar}: {report.images} image(s), "
        f"{report.fits_total} fits ({report.fits_resumed} resumed), {report.fit_seconds:.1f} s "
        f"of fitting on {report.device}; use it with --table {report.table}")


def _cluster_executor(scheduler: str, device: str | None):
    """``--scheduler``: the fits as Dask tasks; workers pick their own GPU unless
    ``--device`` (or ``[calibrate] device``) says otherwise."""
    from ..calibration.cluster_executor import calibration_executor
    from ..settings.config import normalise_scheduler

    try:
        address = normalise_scheduler(scheduler)
    except ValueError as error:
        raise ValueError(f"--scheduler: {error}") from None
    return calibration_executor(address, device=device)


class _Progress:
    """The calibration's bar: fits and iterations, resumed fits said once."""

    def __init__(self, state_path: Path, disable: bool) -> None:
        self.state_path = state_path
        self.bars = Progress(TextColumn("{task.description}"), BarColumn(),
                             TextColumn("{task.fields[fits]}"), TimeElapsedColumn(),
                             TimeRemainingColumn(), console=console, disable=disable)
        self.task = None
        self.done = self.pending = self.per_fit = 0

    def on_event(self, event: str, info: dict) -> None:
        if event == "start":
            if info["resumed"]:
                say(f"resuming: {info['resumed']} of {info['total_fits']} fits already in "
                    f"{self.state_path}")
            self.pending, self.per_fit = info["pending"], info["iterations"]
            self.task = self.bars.add_task("calibrating",
                                           total=max(1, self.pending * self.per_fit),
                                           fits=f"0/{self.pending} fits")
        elif event == "iteration":  # every iteration: an update only records a number
            task = info["task"]
            self.bars.update(self.task, completed=self.done * self.per_fit + info["iteration"],
                             description=f"{task.pair.name} {task.point.key}")
        elif event == "fit":
            self.done += 1
            self.bars.update(self.task, completed=self.done * self.per_fit,
                             fits=f"{self.done}/{self.pending} fits")
