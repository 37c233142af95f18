"""AUTO-DIP calibration on a site's own noisy / ground-truth pairs (paper §II-B, §III-A).

For every pair and every configuration of the grid (depth x width x skip) DIP is fitted
once for ``max_iterations`` iterations, and the output is scored against the ground
truth every ``every`` iterations of that same run (``fitting.py``). Each (pair,
configuration) result is stored in SQLite as soon as it finishes (``state.py``), so an
interrupted calibration continues where it stopped. From the stored scores we pick, per
image and per group, the best (configuration, iteration) for every measure
(``selection.py``) and write a calibration table in the format of the shipped one, plus
the calibration images that nearest-image transfer compares with (``tables.py``).
"""

from __future__ import annotations

import datetime as _dt
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w
import torch

from ..dip.device import describe_device
from ..dip.modes import PAPER, fit_mode
from ..io.atomic import atomic_output
from ..io.checksums import sha256_file
from ..perceptual import LpipsNetworks, alexnet_checkpoint_path
from ..transfer.table import CalibrationTable
from .errors import CalibrationError, CalibrationInterrupted
from .fitting import Executor, FitTask, local_executor, scored_mode, settings_key
from .grid import CalibrationGrid
from .pairs import PreparedPair, load_pairs, prepare_pair
from .selection import RANK_SUM, TABLE_METRICS, Candidate
from .state import CalibrationState
from .tables import (GROUP_RULE, NORMALISATION, RANK_RULE, TIE_RULE, build_metric_tables,
                     default_state_path, image_entries, sidecar_path, versions, write_sidecar)


@dataclass
class CalibrationReport:
    """What :func:`calibrate` made: the ``table`` (TOML), its calibration images
    (``sidecar``, the ``<stem>.images.tif`` nearest-image transfer compares with), the
    ``state`` file of finished fits; how many ``images`` (pairs) and fits (total, run
    now, resumed from the state), the seconds spent fitting and in all (s), where it ran
    (``device``), and the ``metrics`` the table has a section for."""

    table: Path
    sidecar: Path
    state: Path
    images: int
    fits_total: int
    fits_run: int
    fits_resumed: int
    fit_seconds: float
    seconds: float
    device: str
    metrics: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {key: (str(value) if isinstance(value, Path) else value)
                for key, value in self.__dict__.items()}


#: progress(event, info): "start" {total_fits, resumed, iterations}; "iteration"
#: {task, iteration, total}; "fit" {task, seconds}.
CalibrationProgress = Callable[[str, dict], None]


def calibrate(pairs_source: str | Path, out: str | Path, grid: CalibrationGrid = CalibrationGrid(),
              state_path: str | Path | None = None, device: torch.device | str = "cpu",
              seed: int = 0, crop: int | None = None, with_lpips: bool = True,
              match: str = "affine", stop_after: int | None = None,
              progress: CalibrationProgress | None = None,
              executor: Executor | None = None, mode: str = PAPER,
              members: int | None = None) -> CalibrationReport:
    """Run (or resume) a calibration and write its table and calibration images.

    Parameters
    ----------
    pairs_source : path
        A folder of pairs or a pairs CSV (:func:`~.pairs.load_pairs`).
    out : path
        The table to write (``.toml``); its calibration images go beside it
        (``<stem>.images.tif``).
    grid : CalibrationGrid
        The search space.
    state_path : path, optional
        SQLite file of finished fits (default ``<out stem>.calibration.sqlite``).
    device : torch.device or str
        Where the local executor fits.
    seed, crop, with_lpips, match
        Seed of every fit; centre crop (px, at most the 512 px tile); whether LPIPS (and
        the paper's ``lpips_psnr``) is computed; ground-truth matching (``affine`` or
        ``none``).
    stop_after : int, optional
        Stop after that many new fits (tests interrupt a run so).
    progress : callable, optional
        See :data:`CalibrationProgress`.
    executor : callable, optional
        Runs the fits (default: :func:`~.fitting.local_executor` on ``device``; a Dask
        cluster: ``cluster_executor.py``).
    mode, members
        The fit mode the grid is scored in (``dip/modes.py``): ``paper`` (the AUTO-DIP
        calibration) or ``stable``, with ``members`` fits per image in the latter.

    Returns
    -------
    CalibrationReport

    Raises
    ------
    CalibrationError
        Bad pairs, grid, output path or state.
    CalibrationInterrupted
        ``stop_after`` reached; the finished fits are saved.
    perceptual.LpipsWeightsMissing
        ``with_lpips`` without the AlexNet backbone in the torch hub cache.
    """
    started = time.perf_counter()
    out, pairs_source, device = Path(out), Path(pairs_source), torch.device(device)
    pairs, lpips, members = _prepare(pairs_source, out, device, crop, match, with_lpips, mode,
                                     members)
    key = settings_key(grid.max_iterations, grid.every, seed, with_lpips, mode, members)
    state_path = Path(state_path) if state_path is not None else default_state_path(out)
    tasks = [FitTask(pair, point, grid.max_iterations, grid.every, seed, with_lpips, mode,
                     members)
             for pair in pairs for point in grid.points()]
    with CalibrationState(state_path) as state:
        new_fits, resumed = _run_pending(tasks, state, key, executor or local_executor(device, lpips),
                                         progress, stop_after, grid, state_path)
        scores, fit_seconds = _scores(state, key, pairs, grid, state_path)
    metrics = [m for m in TABLE_METRICS if with_lpips or m not in ("lpips", RANK_SUM)]
    where = getattr(executor, "description", None) or describe_device(device)
    document = _document(pairs_source, out, pairs, scores, metrics, grid, seed, with_lpips,
                         mode, members, device, where)
    _write_table(document, out)
    return CalibrationReport(out, sidecar_path(out), state_path, len(pairs), len(tasks),
                             new_fits, resumed, fit_seconds, time.perf_counter() - started,
                             where, metrics)


def _prepare(pairs_source: Path, out: Path, device: torch.device, crop: int | None,
             match: str, with_lpips: bool, mode: str, members: int | None):
    """Everything that can fail before hours of fitting, failed now: the output path,
    the pairs, the LPIPS weights, the mode. Returns (pairs, LPIPS networks, members)."""
    if out.suffix.lower() != ".toml":
        raise CalibrationError(f"--out must be a .toml file, got {out}")
    if not out.parent.is_dir():
        raise CalibrationError(f"folder {out.parent} for the table does not exist")
    pairs = [prepare_pair(pair, crop) for pair in load_pairs(pairs_source, match)]
    lpips = LpipsNetworks()
    if with_lpips:
        lpips.get(device)  # fail now, with the file name, not after hours of fitting
    fit_mode(mode)  # fail now for an unknown mode
    if members is None and mode != PAPER:
        members = fit_mode(mode).members(device.type)  # the same on every worker
    return pairs, lpips, members


def _write_table(document: dict, out: Path) -> None:
    """Write the table atomically, after checking that the daemon can load it."""
    text = ("# Calibration table made by `autodip-watch calibrate`; see [provenance].\n"
            + tomli_w.dumps(document))
    CalibrationTable(tomllib.loads(text), out)  # refuse to write a table the daemon cannot load
    with atomic_output(out) as temp:
        temp.write_text(text, encoding="utf-8")


def _run_pending(tasks: list[FitTask], state: CalibrationState, key: str, run: Executor,
                 progress: CalibrationProgress | None, stop_after: int | None,
                 grid: CalibrationGrid, state_path: Path) -> tuple[int, int]:
    """Fit what the state does not hold yet, recording each fit as it finishes; returns
    (new fits, fits resumed from the state)."""
    done = state.done(key)
    pending = [task for task in tasks if (task.pair.key, task.point.key) not in done]
    if progress is not None:
        progress("start", {"total_fits": len(tasks), "resumed": len(tasks) - len(pending),
                           "pending": len(pending), "iterations": grid.max_iterations})

    def on_iteration(task: FitTask, iteration: int, total: int) -> None:
        if progress is not None:
            progress("iteration", {"task": task, "iteration": iteration, "total": total})

    new_fits = 0
    for task, outcome in run(pending, on_iteration):
        state.record(task, outcome, key)
        new_fits += 1
        if progress is not None:
            progress("fit", {"task": task, "seconds": outcome.seconds})
        if stop_after is not None and new_fits >= stop_after and new_fits < len(pending):
            raise CalibrationInterrupted(
                f"stopped after {new_fits} fits; {len(pending) - new_fits} left. Run the "
                f"same command again to continue from {state_path}.")
    return new_fits, len(tasks) - len(pending)


def _scores(state: CalibrationState, key: str, pairs: list[PreparedPair],
            grid: CalibrationGrid, state_path: Path
            ) -> tuple[list[dict[Candidate, dict[str, float]]], float]:
    """Every image's scores over the grid (exactly the grid's candidates), and the
    seconds of fitting they took."""
    scores = [state.scores(pair.key, key) for pair in pairs]
    expected = {Candidate(p.depth, p.width, p.skip, i)
                for p in grid.points() for i in grid.iterations}
    for pair, image_scores in zip(pairs, scores):
        missing = expected - set(image_scores)
        if missing:
            raise CalibrationError(f"state {state_path} lacks {len(missing)} results for "
                                   f"{pair.name!r}; run the command again")
    fit_seconds = state.seconds(key, {pair.key for pair in pairs})
    return ([{c: s for c, s in image_scores.items() if c in expected} for image_scores in scores],
            fit_seconds)


def _document(pairs_source: Path, out: Path, pairs: list[PreparedPair], scores: list,
              metrics: list[str], grid: CalibrationGrid, seed: int, with_lpips: bool,
              mode: str, members: int | None, device: torch.device, where: str) -> dict:
    """The table's TOML document; writes the calibration images beside ``out``."""
    base = pairs_source if pairs_source.is_dir() else pairs_source.parent
    sidecar = sidecar_path(out)
    sidecar_sha = write_sidecar(sidecar, pairs)
    lpips = (f"lpips AlexNet v0.1; backbone {alexnet_checkpoint_path().name} sha256 "
             f"{sha256_file(alexnet_checkpoint_path())}" if with_lpips else
             "not computed (--no-lpips): no lpips or lpips_psnr tables; default metric psnr")
    return {
        "format": "autodip-watch calibration table, version 1",
        "default_metric": RANK_SUM if with_lpips else "psnr",
        "provenance": {
            "source": f"autodip-watch calibrate, on {len(pairs)} noisy/ground-truth pair(s)",
            "pairs": pairs_source.name, "images": len(pairs), "grid": grid.describe(),
            "group_rule": GROUP_RULE,
            "rank_rule": RANK_RULE if with_lpips else "not used: calibrated without LPIPS",
            "tie_rule": TIE_RULE, "normalisation": NORMALISATION, "lpips": lpips, "seed": seed,
            # how the scores were made: without the run-time extension past N
            "fit_mode": (scored_mode(mode, device.type, members) if mode != PAPER
                         else {"name": PAPER}),
            # An executor elsewhere (a Dask cluster) names itself; the state has each fit's device.
            "device": where,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "search": grid.as_dict(), "versions": versions(),
        },
        "calibration_images": {
            "file": sidecar.name, "sha256": sidecar_sha,
            "content": "noisy planes after cropping, min-max normalised to [0, 1], float32, "
                       "one TIFF series per image in [[images]] order (sidecar_index)",
        },
        "metrics": build_metric_tables(pairs, scores, metrics),
        "images": image_entries(pairs, scores, metrics, base),
    }
