"""Tiling, padding, normalisation and dtype mapping are exact (DESIGN §2)."""

from __future__ import annotations

import numpy as np
import pytest

from autodip_watch.dip.intensity import denormalise, normalise
from autodip_watch.dip.tiling import (blend_weights, crop_padded, pad_for_depth, plane_tiles,
                                      runnable_shape, tile_starts)
from helpers.planes import denoise_plane_with, process_tiled


def identity(tile, index, count):
    return tile


@pytest.mark.parametrize("shape", [(1024, 768), (700, 300), (20, 20), (512, 512), (513, 1300)])
def test_identity_denoiser_returns_input_exactly(shape):
    rng = np.random.default_rng(1)
    plane = rng.integers(0, 65535, size=shape, dtype=np.uint16)
    out = denoise_plane_with(plane, identity)
    assert out.dtype == plane.dtype and out.shape == plane.shape
    np.testing.assert_array_equal(out, plane)


def test_tiles_are_full_size_and_cover_the_plane():
    shape = (1024, 768)
    tiles = plane_tiles(shape)
    assert all(t.y1 - t.y0 == 512 and t.x1 - t.x0 == 512 for t in tiles)
    covered = np.zeros(shape, dtype=int)
    for t in tiles:
        covered[t.slices] += 1
    assert covered.min() >= 1
    assert tile_starts(1024) == [0, 384, 512]
    assert tile_starts(768) == [0, 256]
    assert tile_starts(300) == [0]
    # every neighbouring pair overlaps by at least 128 px
    for starts in (tile_starts(5000), tile_starts(1300), tile_starts(513)):
        assert all(b - a <= 384 for a, b in zip(starts, starts[1:]))
        assert starts[-1] + 512 == max(starts[-1] + 512, 0)


def test_small_planes_are_one_tile():
    assert [(t.y1 - t.y0, t.x1 - t.x0) for t in plane_tiles((700, 300))] == [(512, 300), (512, 300)]
    assert len(plane_tiles((20, 20))) == 1


def test_overlaps_blend_without_seams():
    """Tiles fitted independently (here: each off by its own constant) meet smoothly."""
    plane = np.full((1024, 1024), 0.5, dtype=np.float64)
    tiles = plane_tiles(plane.shape)
    assert len(tiles) == 9

    def offset_per_tile(tile, index, count):
        return tile + 0.1 * index

    out = process_tiled(plane, offset_per_tile)
    # neighbouring tiles differ by at most 0.3 (three tiles per row); averaging with
    # flat weights would jump by that much at a tile edge, the ramp spreads it over
    # the 128 px overlap
    largest_jump = 0.3
    assert np.abs(np.diff(out, axis=0)).max() <= largest_jump / 128 * 1.01
    assert np.abs(np.diff(out, axis=1)).max() <= largest_jump / 128 * 1.01


def test_blend_weights_only_ramp_inside_the_plane():
    tiles = plane_tiles((1024, 512))
    first = blend_weights(tiles[0], (1024, 512))
    assert first[0, 0] == 1.0 and first[-1, 0] < 0.01


@pytest.mark.parametrize("depth", [4, 5, 6, 7, 8])
@pytest.mark.parametrize("shape", [(20, 20), (700, 300), (1, 40), (512, 512), (33, 17)])
def test_padding_gives_runnable_shape_and_crops_back(depth, shape):
    rng = np.random.default_rng(0)
    tile = rng.random(shape).astype(np.float32)
    padded, original = pad_for_depth(tile, depth)
    step = 2 ** depth
    assert padded.shape == runnable_shape(shape, depth)
    assert all(side % step == 0 and side // step >= 2 for side in padded.shape)
    np.testing.assert_array_equal(crop_padded(padded, original), tile)


DTYPES = ["uint8", "uint16", "int8", "int16", "uint32", "float32"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_round_trips(dtype):
    rng = np.random.default_rng(2)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        plane = (rng.standard_normal((40, 30)) * 1000).astype(dtype)
    else:
        info = np.iinfo(dtype)
        plane = rng.integers(info.min, info.max, size=(40, 30), endpoint=True).astype(dtype)
        plane[0, 0], plane[0, 1] = info.min, info.max  # the full range survives
    out = denoise_plane_with(plane, identity)
    assert out.dtype == dtype
    if dtype.kind == "f":
        np.testing.assert_allclose(out, plane, rtol=1e-6, atol=1e-3)
    else:
        np.testing.assert_array_equal(out, plane)


def test_denormalise_rounds_and_clips():
    unit = np.array([0.0, 0.24, 0.26, 1.0, 1.2, -0.3])
    out = denormalise(unit, 0.0, 2.0, np.dtype("uint8"))
    np.testing.assert_array_equal(out, [0, 0, 1, 2, 2, 0])  # 0.48 -> 0, 0.52 -> 1: rounded
    out = denormalise(np.array([1.0, 0.0]), -100.0, 300.0, np.dtype("int8"))
    np.testing.assert_array_equal(out, [127, -100])  # clipped to the dtype's range


def test_constant_plane_is_copied():
    plane = np.full((16, 16), 7, dtype=np.uint16)
    calls = []
    out = denoise_plane_with(plane, lambda t, i, n: calls.append(i) or t)
    np.testing.assert_array_equal(out, plane)
    assert calls == []


def test_normalise_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        normalise(np.array([[0.0, np.nan]]))


def test_unsupported_dtype_is_refused():
    with pytest.raises(ValueError, match="unsupported pixel type"):
        denoise_plane_with(np.zeros((4, 4), dtype=np.complex64), identity)
