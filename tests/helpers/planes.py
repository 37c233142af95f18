"""Denoise a plane with any tile function: the seam between the method and the plumbing.

Tests pass an identity (or a tile-tagging function) here to prove that normalisation,
tiling and reassembly are exact, using the production pieces (``dip.intensity``,
``dip.tiling``) around a tile function of their own.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from autodip_watch.dip.intensity import check_dtype, denormalise, normalise
from autodip_watch.dip.tiling import TILE_OVERLAP, TILE_SIZE, blend_tiles, plane_tiles

#: A tile denoiser: takes a [0,1] float32 tile, its index and the tile count.
TileDenoiser = Callable[[np.ndarray, int, int], np.ndarray]


def process_tiled(plane: np.ndarray, process: TileDenoiser, tile: int = TILE_SIZE,
                  overlap: int = TILE_OVERLAP) -> np.ndarray:
    """Apply ``process(tile_pixels, index, count)`` to every tile and blend the results
    into a float64 plane of the same shape."""
    windows = plane_tiles(plane.shape, tile, overlap)
    results = [process(plane[window.slices], index, len(windows))
               for index, window in enumerate(windows)]
    return blend_tiles(plane.shape, windows, results, overlap)


def denoise_plane_with(plane: np.ndarray, denoise_tile: TileDenoiser,
                       tile: int = TILE_SIZE, overlap: int = TILE_OVERLAP) -> np.ndarray:
    """Normalise ``plane``, run ``denoise_tile`` over its tiles, map back to its dtype."""
    if plane.ndim != 2:
        raise ValueError(f"expected a 2-D plane, got shape {plane.shape}")
    dtype = check_dtype(plane.dtype)
    unit, low, high = normalise(plane)
    if high == low:
        return plane.copy()
    denoised = process_tiled(unit, denoise_tile, tile, overlap)
    return denormalise(denoised, low, high, dtype)
