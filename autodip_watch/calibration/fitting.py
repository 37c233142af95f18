"""One calibration fit: DIP on one pair in one configuration, scored every N iterations.

The unit of work is :func:`run_fit`, a pure function of one :class:`FitTask`; an
executor runs tasks and yields their outcomes as they finish: :func:`local_executor` one
after the other on one device, ``cluster_executor.py`` one Dask task per fit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..dip.fit import fit_tile, fit_tiles
from ..dip.modes import PAPER, fit_mode
from ..dip.options import FitOptions
from ..dip.params import DipParams
from ..dip.plane import VarianceStabilised, member_seed
from ..metrics import quality
from ..perceptual import LpipsNetworks
from .grid import GridPoint
from .pairs import PreparedPair


@dataclass
class FitTask:
    """Everything one fit needs; picklable, so an executor can ship it to a worker."""

    pair: PreparedPair
    point: GridPoint
    max_iterations: int
    every: int
    seed: int = 0
    with_lpips: bool = True
    mode: str = PAPER
    members: int | None = None  # stable mode: ensemble size (None: the mode's for the device)


#: Fit-mode settings that act only in a running fit, not on a calibration's scores.
RUN_TIME_ONLY = ("extend_fraction", "discrepancy_margin")


def scored_mode(mode: str, device_type: str, members: int | None = None) -> dict:
    """The settings of fit mode ``mode`` that shape a calibration's scores: its
    ``describe`` record without :data:`RUN_TIME_ONLY` (calibration scores fixed stopping
    points, where the extension past N never acts). For the state key and the table's
    provenance alike. Raises ValueError for an unknown mode."""
    described = fit_mode(mode).describe(device_type, members)
    return {k: v for k, v in described.items() if k not in RUN_TIME_ONLY}


def settings_key(max_iterations: int, every: int, seed: int, with_lpips: bool,
                 mode: str = PAPER, members: int | None = None) -> str:
    """What, besides the pixels and the shape, decides a fit's scores (state key).
    Paper-mode keys are those of earlier versions, so old states resume."""
    options = FitOptions(seed=seed)
    key = {"max_iterations": max_iterations, "every": every, "seed": seed,
           "lpips": with_lpips, "learning_rate": options.learning_rate,
           "reg_noise_std": options.reg_noise_std, "ema": options.ema_weight}
    if mode != PAPER:
        # The run-time extension past N never applies in calibration, so it must not
        # invalidate states saved before it existed.
        key.update(scored_mode(mode, "cpu", members))
        key["mode"] = mode
    return json.dumps(key, sort_keys=True)


def run_fit(pair: PreparedPair, point: GridPoint, max_iterations: int, every: int,
            device: torch.device | str = "cpu", seed: int = 0, with_lpips: bool = True,
            progress: Callable[[int, int], None] | None = None, mode: str = PAPER,
            members: int | None = None, lpips: LpipsNetworks | None = None) -> list[dict]:
    """Fit DIP once and score its output every ``every`` iterations of that run.

    Returns one row per snapshot: ``{"iteration", "mse", "mae", "psnr", "ssim",
    "lpips"}`` (lpips None when ``with_lpips`` is false). Pure apart from the LPIPS
    network, taken from ``lpips`` (whose owner keeps it loaded across fits; a fresh one
    when not given). In ``stable`` mode
    (``dip/modes.py``) the output scored at iteration i is what a stable-mode fit stopped
    at i returns: the ensemble's mean of the late-window means, mapped back from the
    variance-stabilised domain; the ensemble's networks are fitted as one batch.
    """
    params = DipParams(point.depth, point.width, point.skip, max_iterations)
    lpips_metric = (lpips or LpipsNetworks()).get(device) if with_lpips else None
    truth = pair.truth
    truth_on_device = torch.from_numpy(truth).to(device) if lpips_metric is not None else None
    rows: list[dict] = []

    def score(iteration: int, output: torch.Tensor) -> None:
        clipped = output.detach().float().clamp(0.0, 1.0)
        scores = quality(clipped.cpu().numpy(), truth, None)
        if lpips_metric is not None:
            scores["lpips"] = lpips_metric(clipped, truth_on_device)
        rows.append({"iteration": iteration, **scores})

    if mode == PAPER:
        fit_tile(pair.noisy, params, device, FitOptions(seed=seed), progress=progress,
                 snapshot=score, snapshot_every=every)
        return rows
    chosen = fit_mode(mode)
    count = members if members is not None else chosen.members(torch.device(device).type)
    stabilised = VarianceStabilised(pair.noisy) if chosen.vst else None
    plane = stabilised.plane if stabilised is not None else pair.noisy
    options = [chosen.fit_options(FitOptions(seed=member_seed(seed, m))) for m in range(count)]
    stops = list(range(every, max_iterations + 1, every))
    results = fit_tiles([np.asarray(plane, dtype=np.float32)] * count, params, device, options,
                        progress=progress, stops=stops)
    for stop in stops:
        mean = np.mean([result.stopped[stop] for result in results], axis=0)
        if stabilised is not None:
            mean = stabilised.back(mean)
        score(stop, torch.from_numpy(np.asarray(mean, dtype=np.float32)).to(device))
    return rows


@dataclass
class FitOutcome:
    rows: list[dict]
    seconds: float
    device: str


def run_fit_task(task: FitTask, device: torch.device | str = "cpu",
                 progress: Callable[[int, int], None] | None = None,
                 lpips: LpipsNetworks | None = None) -> FitOutcome:
    """:func:`run_fit` on a task, timed: the function a Dask executor submits."""
    started = time.perf_counter()
    rows = run_fit(task.pair, task.point, task.max_iterations, task.every, device, task.seed,
                   task.with_lpips, progress, task.mode, task.members, lpips)
    return FitOutcome(rows, time.perf_counter() - started, str(device))


#: An executor runs tasks and yields (task, outcome) as each finishes, in any order.
Executor = Callable[[Sequence[FitTask], Callable[[FitTask, int, int], None] | None],
                    Iterator[tuple[FitTask, FitOutcome]]]


def local_executor(device: torch.device | str = "cpu",
                   lpips: LpipsNetworks | None = None) -> Executor:
    """Run the tasks one after the other on ``device`` (the default executor), with one
    set of LPIPS networks for the whole run."""
    lpips = lpips or LpipsNetworks()

    def execute(tasks: Sequence[FitTask],
                progress: Callable[[FitTask, int, int], None] | None = None
                ) -> Iterator[tuple[FitTask, FitOutcome]]:
        for task in tasks:
            callback = None
            if progress is not None:
                def callback(iteration: int, total: int, _task: FitTask = task) -> None:
                    progress(_task, iteration, total)
            yield task, run_fit_task(task, device, callback, lpips)

    return execute
