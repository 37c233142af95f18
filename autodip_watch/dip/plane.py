"""Denoise 2-D planes of any supported dtype: normalise, tile, fit, map back.

Each plane is min-max rescaled to [0, 1] with its own noisy minimum and maximum (the
paper's preprocessing), cut into tiles, fitted, and mapped back to the input's range
and dtype, rounding integers and clipping to the dtype's range. The tiles of many
planes go to one :class:`~.batching.TileFitter` together, so that a batching fitter
can fit those with the same configuration at once.

Two plane-level parts of the stabilised mode (issue 14, ``bench/README.md``): an
*ensemble* fits every tile ``members`` times with different seeds and returns the mean
(a batching fitter fits the members together), and a *variance-stabilising transform*
fits the plane in the generalised Anscombe domain of its estimated Poisson-Gaussian
noise (``noise.py``) and maps the result back with the exact unbiased inverse. An
*extended* fit (``FitOptions.extend_fraction``) needs each tile's noise variance,
estimated on that tile (:func:`tile_noise_variances`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .batching import FitRequest, SingleFitter, TileFitter
from .intensity import check_dtype, denormalise, normalise
from .discrepancy import extension_limit
from .options import FitOptions
from .network import DipParams
from .noise import Anscombe, NoiseModel, estimate_noise
from .tiling import blend_tiles, plane_tiles


#: Member k of an ensemble with seed s is fitted with seed s + k * MEMBER_SEED_STRIDE, so
#: member 0 is the single fit of seed s, and the members of seeds 0, 1, 2, ... never
#: overlap (for fewer than a million seeds).
MEMBER_SEED_STRIDE = 1_000_000

#: plane_progress(tile, tiles, iteration, iterations); with an ensemble, each member's
#: fit of each tile counts as a tile (tiles = tiles of the plane x members).
PlaneProgress = Callable[[int, int, int, int], None]


@dataclass
class PlaneResult:
    output: np.ndarray
    seconds: float
    tiles: int
    constant: bool  # a constant plane has nothing to denoise and is copied through
    final_loss: float | None
    batch: int = 1  # the largest batch one of its tiles was fitted in
    members: int = 1  # fits per tile averaged (ensemble size)
    noise: NoiseModel | None = None  # the estimated noise (VST, extension), where used
    rollbacks: int = 0  # weight restores after loss spikes, all fits of the plane
    #: (lowest, highest) iteration its fits' outputs were taken at; above the transferred
    #: count where the extension went on.
    iterations: tuple[int, int] | None = None


@dataclass
class PlaneJob:
    """A plane and the configuration to denoise it with."""

    plane: np.ndarray
    params: DipParams
    options: FitOptions = FitOptions()
    progress: PlaneProgress | None = None
    members: int = 1  # ensemble size: fits per tile, seeds from member_seed()
    vst: bool = False  # fit in the variance-stabilised domain of the estimated noise

    def __post_init__(self) -> None:
        if self.members < 1:
            raise ValueError("members must be at least 1")


def member_seed(seed: int, member: int) -> int:
    """The seed of ensemble member ``member`` (0-based) of a fit with ``seed``."""
    return seed + member * MEMBER_SEED_STRIDE


def denoise_plane(plane: np.ndarray, params: DipParams, device: torch.device | str = "cpu",
                  options: FitOptions = FitOptions(),
                  progress: PlaneProgress | None = None) -> PlaneResult:
    """Denoise one plane with DIP configuration ``params``, tile after tile."""
    return denoise_planes([PlaneJob(plane, params, options, progress)], SingleFitter(device))[0]


class VarianceStabilised:
    """A [0, 1] plane taken into the GAT domain of its estimated noise and rescaled to
    [0, 1] for the network's sigmoid output, and the way back."""

    def __init__(self, unit: np.ndarray) -> None:
        self.model = estimate_noise(unit)
        try:
            self.transform: Anscombe | None = Anscombe.for_model(self.model)
        except ValueError:  # no Poisson part: the noise is already homoscedastic
            self.transform = None
        if self.transform is None:
            self.low, self.high = 0.0, 1.0
            self.plane = unit
            return
        stabilised = self.transform.forward(unit)
        self.low, self.high = float(stabilised.min()), float(stabilised.max())
        span = self.high - self.low
        self.plane = (stabilised - self.low) / span if span > 0 else np.zeros_like(stabilised)

    def back(self, fitted: np.ndarray) -> np.ndarray:
        if self.transform is None:
            return fitted
        stabilised = np.asarray(fitted, dtype=np.float64) * (self.high - self.low) + self.low
        return np.clip(self.transform.inverse(stabilised), 0.0, 1.0)


def denoise_planes(jobs: list[PlaneJob], fitter: TileFitter) -> list[PlaneResult]:
    """Denoise several planes, handing all their tiles to ``fitter`` in one call.

    Each tile is fitted ``job.members`` times (seeds :func:`member_seed`) and the mean
    taken; with ``job.vst`` the fit runs on the variance-stabilised plane. A plane's
    seconds are its fits' shares of the batches they ran in.
    """
    prepared = []
    requests: list[FitRequest] = []
    for job in jobs:
        if job.plane.ndim != 2:
            raise ValueError(f"expected a 2-D plane, got shape {job.plane.shape}")
        dtype = check_dtype(job.plane.dtype)
        unit, low, high = normalise(job.plane)
        stabilised = VarianceStabilised(unit) if job.vst and high != low else None
        fitted_plane = stabilised.plane if stabilised is not None else unit
        windows = [] if high == low else plane_tiles(unit.shape)
        variances, model = ([None] * len(windows), None)
        iterations = job.params.iterations
        if windows and extension_limit(iterations, job.options.extend_fraction) > iterations:
            variances, model = tile_noise_variances(unit, stabilised, windows)
        first = len(requests)
        fits = len(windows) * job.members
        for member in range(job.members):
            options = job.options
            if member:
                options = dataclasses.replace(options, seed=member_seed(options.seed, member))
            for index, window in enumerate(windows):
                tile = np.ascontiguousarray(fitted_plane[window.slices], dtype=np.float32)
                requests.append(FitRequest(
                    tile, job.params, options,
                    _tile_progress(job.progress, member * len(windows) + index, fits),
                    noise_variance=variances[index]))
        prepared.append((job, dtype, unit.shape, low, high, windows, first, stabilised, model))
    results = fitter.fit(requests) if requests else []
    planes = []
    for job, dtype, shape, low, high, windows, first, stabilised, model in prepared:
        if not windows:  # constant: nothing to denoise
            planes.append(PlaneResult(job.plane.copy(), 0.0, 0, True, None))
            continue
        mine = results[first:first + len(windows) * job.members]
        count = len(windows)
        outputs = [np.mean([mine[m * count + i].output for m in range(job.members)], axis=0)
                   for i in range(count)]
        denoised = blend_tiles(shape, windows, outputs)
        if stabilised is not None:
            denoised = stabilised.back(denoised)
        planes.append(PlaneResult(
            output=denormalise(denoised, low, high, dtype),
            seconds=sum(r.seconds for r in mine), tiles=count, constant=False,
            final_loss=float(np.mean([r.final_loss for r in mine])),
            batch=max(r.batch for r in mine), members=job.members,
            noise=stabilised.model if stabilised is not None else model,
            rollbacks=sum(r.rollbacks for r in mine),
            iterations=(min(r.iterations for r in mine), max(r.iterations for r in mine))))
    return planes


def tile_noise_variances(unit: np.ndarray, stabilised: VarianceStabilised | None,
                         windows) -> tuple[list[float | None], NoiseModel | None]:
    """Per tile, the variance of its noise on the fitted [0, 1] scale, and the noise model
    to report for the plane.

    ``unit``: the (H, W) plane min-max rescaled to [0, 1]; ``windows``: its tiles
    (``tiling.plane_tiles``). Each tile gets its own noise-level function
    (``noise.estimate_noise`` on the tile: memory bounded by a tile, whatever the plane's
    size, and local to it where illumination or gain vary across a stitched plane); its
    variance is that function's mean over the tile's pixels. In the variance-stabilised
    domain the variance is 1 before the rescaling to [0, 1], so 1 / span^2 on every tile.
    A tile too small or too flat to estimate gets None (its fit stops at the transferred
    count). The model reported is the plane's where there is one (``stabilised``), the
    tile's for a one-tile plane, else None (the tiles differ).
    """
    if stabilised is not None and stabilised.transform is not None:
        span = stabilised.high - stabilised.low
        return [1.0 / span ** 2 if span > 0 else None] * len(windows), stabilised.model
    variances: list[float | None] = []
    models: list[NoiseModel] = []
    for window in windows:
        tile = unit[window.slices]
        try:
            model = estimate_noise(tile)
        except ValueError:
            variances.append(None)
            continue
        models.append(model)
        variances.append(float(np.mean(np.clip(model.variance(tile), 0.0, None))))
    if stabilised is not None:  # no Poisson part: the plane's own (Gaussian) estimate
        return variances, stabilised.model
    return variances, models[0] if len(windows) == 1 and models else None


def _tile_progress(progress: PlaneProgress | None, index: int, count: int):
    if progress is None:
        return None

    def callback(iteration: int, total: int) -> None:
        progress(index + 1, count, iteration, total)
    return callback
