"""``autodip-watch calibrate``: options -> :class:`CalibrateSettings` -> ``calibration.run``."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..settings.calibrate import CalibrateSettings
from ..daemon.progress import format_duration
from .app import app, console, fail, say, settings_from
from .progress_view import PLAIN_SECONDS, PLAIN_STEP, choose_mode
from .stopping import stoppable


def _default(name: str) -> str:
    """A ``[calibrate]`` default as the help shows it, read from the settings model (where
    it is written once)."""
    value = CalibrateSettings.model_fields[name].default
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


Pairs = Annotated[Path, typer.Argument(
    metavar="PAIRS", help="Folder (with pairs.csv, or MICROSCOPE/SPECIMEN/NAME_noisy.EXT + "
    "NAME_gt.EXT) or a CSV with columns noisy, ground_truth, microscope, specimen.")]
Out = Annotated[Path, typer.Option(
    "--out", "-o", metavar="TABLE.toml", help="Table to write; the calibration images go "
    "beside it as <stem>.images.tif.")]
Depths = Annotated[Optional[str], typer.Option(
    metavar="LIST", help=f"Depths to search, e.g. 4,5 (default {_default('depths')}).")]
Widths = Annotated[Optional[str], typer.Option(
    metavar="LIST", help=f"Widths, e.g. 16,asc (default {_default('widths')}).")]
Skips = Annotated[Optional[str], typer.Option(
    metavar="LIST", help=f"Skip channels, e.g. 4 (default {_default('skips')}).")]
MaxIterations = Annotated[Optional[int], typer.Option(
    metavar="N", help=f"Iterations per fit (default {_default('max_iterations')}).")]
Every = Annotated[Optional[int], typer.Option(
    metavar="N", help=f"Score the output every N iterations of the same run (default "
    f"{_default('every')}).")]
Crop = Annotated[Optional[int], typer.Option(
    metavar="N", help="Centre-crop each pair to N x N (at least 16; planes over 512 px are "
    "always cut to 512).")]
Lpips = Annotated[Optional[bool], typer.Option(
    "--lpips/--no-lpips", help="Compute LPIPS (needs the AlexNet weights; default on). "
    "Without it there are no lpips/lpips_psnr tables and the default metric is psnr.")]
Match = Annotated[Optional[str], typer.Option(
    metavar="MODE", help="Ground truth onto noisy: affine (least-squares fit, default) or "
    "none; a pairs CSV can set it per pair.")]
State = Annotated[Optional[Path], typer.Option(
    metavar="FILE", help="SQLite file of finished fits (default <out stem>.calibration.sqlite).")]
Device = Annotated[Optional[str], typer.Option(
    metavar="DEVICE", help="cuda, cuda:N, mps or cpu (default: the best available).")]
Seed = Annotated[Optional[int], typer.Option(
    metavar="N", help=f"Seed of every fit (default {_default('seed')}, as denoise).")]
ConfigFile = Annotated[Optional[Path], typer.Option(
    metavar="FILE", help="TOML configuration whose [calibrate] table sets the defaults of "
    "these options.")]
Restart = Annotated[bool, typer.Option("--restart", help="Discard the state file and start "
                                                         "from scratch.")]
Scheduler = Annotated[Optional[str], typer.Option(
    metavar="ADDRESS", help="Run the fits on a Dask cluster, one fit per task, e.g. "
    "tcp://gpu-server:8786 (workers started with --resources GPU=1).")]
StopAfter = Annotated[Optional[int], typer.Option(
    hidden=True, help="Stop after N new fits (testing resumption).")]
Mode = Annotated[Optional[str], typer.Option(
    metavar="MODE", help=f"Fit mode the grid is scored in: {_default('mode')} (default, the "
    f"AUTO-DIP calibration) or stable (as denoise's default mode; slower by its ensemble "
    f"size).")]
Members = Annotated[Optional[int], typer.Option(
    metavar="N", help="stable mode: ensemble size (default: the mode's for the device).")]
JsonSummary = Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")]


@app.command()
def calibrate(pairs: Pairs, out: Out, depths: Depths = None, widths: Widths = None,
              skips: Skips = None, max_iterations: MaxIterations = None, every: Every = None,
              crop: Crop = None, lpips: Lpips = None, match: Match = None, state: State = None,
              device: Device = None, seed: Seed = None, config: ConfigFile = None,
              restart: Restart = False, scheduler: Scheduler = None,
              stop_after: StopAfter = None, mode: Mode = None, members: Members = None,
              as_json: JsonSummary = False) -> None:
    """Build a calibration table from your own noisy / ground-truth pairs (AUTO-DIP grid search).

    Each finished fit is saved at once: run the same command again to continue a stopped run.
    """
    from ..calibration.errors import CalibrationError, CalibrationInterrupted
    from ..calibration.run import calibrate as run
    from ..calibration.tables import default_state_path
    from ..dip.device import choose_device
    from ..perceptual import LpipsWeightsMissing
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
    progress = _Progress(state_path, choose_mode(sys.stderr, quiet=False))
    # A stopped run (Ctrl-C, SIGTERM from systemd or a batch scheduler) exits 128 + signal.
    saved = (f"finished fits are saved in {state_path}. Run the same command again to "
             f"continue.")
    try:
        with stoppable(True, lambda: None, saved), progress.bars:
            report = run(pairs, out, settings.grid(), state_path, chosen_device, settings.seed,
                         settings.crop, settings.lpips, settings.match, stop_after,
                         progress.on_event, executor=executor, mode=settings.mode,
                         members=settings.members)
    except CalibrationInterrupted as stopped:
        console.print(f"[yellow]{escape(str(stopped))}[/yellow]", highlight=False)
        raise typer.Exit(3) from None
    except (CalibrationError, LpipsWeightsMissing, TableError, OSError) as error:
        fail(error)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
        return
    say(f"wrote {report.table} and {report.sidecar}: {report.images} image(s), "
        f"{report.fits_total} fits ({report.fits_resumed} resumed), {report.fit_seconds:.1f} s "
        f"of fitting on {report.device}; use it with --table {shlex.quote(str(report.table))}")


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
    """The calibration's progress on stderr, resumed fits said once: a bar on a terminal;
    elsewhere (a log file, a batch system) a line at every 10 % and at least every 30 s,
    as ``denoise`` does (``progress_view.py``), so that a long run does not look hung."""

    def __init__(self, state_path: Path, mode: str) -> None:
        self.state_path = state_path
        self.mode = mode
        self.bars = Progress(TextColumn("{task.description}"), BarColumn(),
                             TextColumn("{task.fields[fits]}"), TimeElapsedColumn(),
                             TimeRemainingColumn(), console=console, disable=mode != "bar")
        self.task = None
        self.done = self.pending = self.per_fit = 0
        self.started = time.monotonic()
        self.printed = (0, self.started)  # (10 % step, when) of the last plain line

    def on_event(self, event: str, info: dict) -> None:
        if event == "start":
            if info["resumed"]:
                say(f"resuming: {info['resumed']} of {info['total_fits']} fits already in "
                    f"{self.state_path}")
            self.pending, self.per_fit = info["pending"], info["iterations"]
            self.started = time.monotonic()
            self.printed = (0, self.started)
            self.task = self.bars.add_task("calibrating",
                                           total=max(1, self.pending * self.per_fit),
                                           fits=f"0/{self.pending} fits")
        elif event == "iteration":  # every iteration: an update only records a number
            task = info["task"]
            completed = self.done * self.per_fit + info["iteration"]
            self.bars.update(self.task, completed=completed,
                             description=f"{task.pair.name} {task.point.key}")
            self._plain(completed, f"{task.pair.name} {task.point.key}")
        elif event == "fit":
            self.done += 1
            self.bars.update(self.task, completed=self.done * self.per_fit,
                             fits=f"{self.done}/{self.pending} fits")
            self._plain(self.done * self.per_fit, None)

    def _plain(self, completed: int, fitting: str | None) -> None:
        if self.mode != "plain" or not self.pending:
            return
        now = time.monotonic()
        fraction = completed / max(1, self.pending * self.per_fit)
        step = int(fraction / PLAIN_STEP + 1e-9)
        if step <= self.printed[0] and now - self.printed[1] < PLAIN_SECONDS:
            return
        self.printed = (step, now)
        elapsed = now - self.started
        eta = elapsed * (1 - fraction) / fraction if fraction > 0 else None
        say(f"calibrating: {self.done}/{self.pending} fits ({100 * fraction:.0f} %)"
            f"{f', fitting {fitting}' if fitting else ''}, elapsed "
            f"{format_duration(elapsed)}, ETA {format_duration(eta)}")
