"""Denoise 2-D planes of any supported dtype: normalise, tile, fit, map back.

Each plane is min-max rescaled to [0, 1] with its own noisy minimum and maximum (the
paper's preprocessing), cut into tiles, fitted, and mapped back to the input's range
and dtype, rounding integers and clipping to the dtype's range. The tiles of many
planes go to one :class:`~.batching.TileFitter` together, so that a batching fitter
can fit those with the same configuration at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .batching import FitRequest, SingleFitter, TileFitter
from .fit import FitOptions
from .network import DipParams
from .tiling import TILE_OVERLAP, TILE_SIZE, blend_tiles, plane_tiles, process_tiled

#: Dtypes a plane may have; others are refused with a clear error.
SUPPORTED_DTYPES = tuple(np.dtype(name) for name in
                         ("uint8", "uint16", "int8", "int16", "uint32", "int32",
                          "float32", "float64"))

#: plane_progress(tile, tiles, iteration, iterations)
PlaneProgress = Callable[[int, int, int, int], None]
#: A tile denoiser: takes a [0,1] float32 tile, returns the denoised tile.
TileDenoiser = Callable[[np.ndarray, int, int], np.ndarray]


@dataclass
class PlaneResult:
    output: np.ndarray
    seconds: float
    tiles: int
    constant: bool  # a constant plane has nothing to denoise and is copied through
    final_loss: float | None
    batch: int = 1  # the largest batch one of its tiles was fitted in


@dataclass
class PlaneJob:
    """A plane and the configuration to denoise it with."""

    plane: np.ndarray
    params: DipParams
    options: FitOptions = FitOptions()
    progress: PlaneProgress | None = None


def check_dtype(dtype: np.dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"unsupported pixel type {dtype}; supported: "
                         f"{', '.join(str(d) for d in SUPPORTED_DTYPES)}")
    return dtype


def normalise(plane: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Min-max rescale to [0, 1]; returns the rescaled plane and the (min, max) used."""
    values = np.asarray(plane, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError("plane contains NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if high == low:
        return np.zeros_like(values), low, high
    return (values - low) / (high - low), low, high


def denormalise(unit: np.ndarray, low: float, high: float, dtype: np.dtype) -> np.ndarray:
    """Map [0, 1] back to ``[low, high]`` in ``dtype``: round integers, clip to the dtype."""
    dtype = np.dtype(dtype)
    values = np.asarray(unit, dtype=np.float64) * (high - low) + low
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    else:
        info = np.finfo(dtype)
        values = np.clip(values, info.min, info.max)
    return values.astype(dtype)


def denoise_plane_with(plane: np.ndarray, denoise_tile: TileDenoiser,
                       tile: int = TILE_SIZE, overlap: int = TILE_OVERLAP) -> np.ndarray:
    """Normalise ``plane``, run ``denoise_tile`` over its tiles, map back to its dtype.

    The seam between the method and the plumbing: tests pass an identity here to
    prove normalisation, tiling and reassembly are exact.
    """
    if plane.ndim != 2:
        raise ValueError(f"expected a 2-D plane, got shape {plane.shape}")
    dtype = check_dtype(plane.dtype)
    unit, low, high = normalise(plane)
    if high == low:
        return plane.copy()
    denoised = process_tiled(unit, denoise_tile, tile, overlap)
    return denormalise(denoised, low, high, dtype)


def denoise_plane(plane: np.ndarray, params: DipParams, device: torch.device | str = "cpu",
                  options: FitOptions = FitOptions(),
                  progress: PlaneProgress | None = None) -> PlaneResult:
    """Denoise one plane with DIP configuration ``params``, tile after tile."""
    return denoise_planes([PlaneJob(plane, params, options, progress)], SingleFitter(device))[0]


def denoise_planes(jobs: list[PlaneJob], fitter: TileFitter) -> list[PlaneResult]:
    """Denoise several planes, handing all their tiles to ``fitter`` in one call.

    A plane's seconds are its tiles' shares of the batches they ran in.
    """
    prepared = []
    requests: list[FitRequest] = []
    for job in jobs:
        if job.plane.ndim != 2:
            raise ValueError(f"expected a 2-D plane, got shape {job.plane.shape}")
        dtype = check_dtype(job.plane.dtype)
        unit, low, high = normalise(job.plane)
        windows = [] if high == low else plane_tiles(unit.shape)
        first = len(requests)
        for index, window in enumerate(windows):
            tile = np.ascontiguousarray(unit[window.slices], dtype=np.float32)
            requests.append(FitRequest(tile, job.params, job.options,
                                       _tile_progress(job.progress, index, len(windows))))
        prepared.append((job, dtype, unit.shape, low, high, windows, first))
    results = fitter.fit(requests) if requests else []
    planes = []
    for job, dtype, shape, low, high, windows, first in prepared:
        if not windows:  # constant: nothing to denoise
            planes.append(PlaneResult(job.plane.copy(), 0.0, 0, True, None))
            continue
        mine = results[first:first + len(windows)]
        denoised = blend_tiles(shape, windows, [r.output for r in mine])
        planes.append(PlaneResult(
            output=denormalise(denoised, low, high, dtype),
            seconds=sum(r.seconds for r in mine), tiles=len(windows), constant=False,
            final_loss=float(np.mean([r.final_loss for r in mine])),
            batch=max(r.batch for r in mine)))
    return planes


def _tile_progress(progress: PlaneProgress | None, index: int, count: int):
    if progress is None:
        return None

    def callback(iteration: int, total: int) -> None:
        progress(index + 1, count, iteration, total)
    return callback
