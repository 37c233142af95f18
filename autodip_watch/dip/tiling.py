"""Split large planes into overlapping tiles, pad tiles to a runnable size, reassemble.

Planes larger than 512 px in a dimension are cut into 512 px tiles overlapping by at
least 128 px; the last tile is shifted back so that it is a full 512 px too (the
reference code left small edge tiles, which a deep network cannot fit well).
Overlaps are blended with weights that ramp linearly across the overlap, so that two
independently fitted tiles meet without a visible seam; where only one tile covers a
pixel its weight is the only one, so an identity "denoiser" returns its input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TILE_SIZE = 512
TILE_OVERLAP = 128


def tile_starts(length: int, tile: int = TILE_SIZE, overlap: int = TILE_OVERLAP) -> list[int]:
    """Start offsets along one axis; every tile is ``tile`` long where ``length`` allows."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


@dataclass(frozen=True)
class Tile:
    """A window ``[y0:y1, x0:x1]`` of a plane."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


def plane_tiles(shape: tuple[int, int], tile: int = TILE_SIZE,
                overlap: int = TILE_OVERLAP) -> list[Tile]:
    """All tiles covering a plane of ``shape`` (row-major order)."""
    height, width = shape
    return [Tile(y, min(y + tile, height), x, min(x + tile, width))
            for y in tile_starts(height, tile, overlap)
            for x in tile_starts(width, tile, overlap)]


def _ramp(length: int, ramp_start: bool, ramp_end: bool, overlap: int) -> np.ndarray:
    """1-D blending weight: rises over ``overlap`` px at edges shared with other tiles."""
    position = np.arange(length, dtype=np.float64)
    weight = np.ones(length, dtype=np.float64)
    if ramp_start:
        weight = np.minimum(weight, (position + 0.5) / overlap)
    if ramp_end:
        weight = np.minimum(weight, (length - position - 0.5) / overlap)
    return weight


def blend_weights(tile: Tile, shape: tuple[int, int], overlap: int = TILE_OVERLAP) -> np.ndarray:
    """2-D weight of one tile: ramps only on edges that lie inside the plane."""
    height, width = shape
    wy = _ramp(tile.y1 - tile.y0, tile.y0 > 0, tile.y1 < height, overlap)
    wx = _ramp(tile.x1 - tile.x0, tile.x0 > 0, tile.x1 < width, overlap)
    return np.outer(wy, wx)


def blend_tiles(shape: tuple[int, int], windows: list[Tile], results: list[np.ndarray],
                overlap: int = TILE_OVERLAP) -> np.ndarray:
    """Reassemble processed tiles (``plane_tiles`` order) into a float64 plane of ``shape``."""
    if len(windows) == 1:
        return np.asarray(results[0], dtype=np.float64)
    accumulated = np.zeros(shape, dtype=np.float64)
    total_weight = np.zeros(shape, dtype=np.float64)
    for window, result in zip(windows, results):
        weight = blend_weights(window, shape, overlap)
        accumulated[window.slices] += weight * np.asarray(result, dtype=np.float64)
        total_weight[window.slices] += weight
    return accumulated / total_weight


def runnable_shape(shape: tuple[int, int], depth: int) -> tuple[int, int]:
    """Smallest shape >= ``shape`` a depth-``depth`` network runs on.

    Each side becomes a multiple of ``2**depth`` and at least ``2**(depth+1)``: the
    deepest feature map must be at least 2x2 (3x3 reflection padding, and BatchNorm
    in training mode needs more than one value per channel).
    """
    step = 2**depth
    return tuple(max(-(-side // step), 2) * step for side in shape)  # type: ignore[return-value]


def pad_for_depth(tile: np.ndarray, depth: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Reflect-pad a 2-D tile to ``runnable_shape``; returns the padded tile and the original shape.

    Padding is split between both sides so the image stays centred; numpy reflects
    repeatedly when the pad is larger than the tile (tiny planes at large depths).
    """
    height, width = tile.shape
    target_h, target_w = runnable_shape((height, width), depth)
    pad_y, pad_x = target_h - height, target_w - width
    pads = ((pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2))
    mode = "reflect" if min(height, width) > 1 else "edge"
    return np.pad(tile, pads, mode=mode), (height, width)


def crop_padded(padded: np.ndarray, original: tuple[int, int]) -> np.ndarray:
    """Undo ``pad_for_depth`` (works on the last two axes)."""
    height, width = original
    top = (padded.shape[-2] - height) // 2
    left = (padded.shape[-1] - width) // 2
    return padded[..., top:top + height, left:left + width]

