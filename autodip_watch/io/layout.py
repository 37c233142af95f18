"""How an output series is stored: codec, predictor, tiles and pyramid levels.

The output keeps the source's storage where it can (a lossless codec, its tiles, its
pyramid), so that viewers read it as they read the source.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from .model import SeriesInfo, Storage


#: Lossless codecs kept as they are (tifffile COMPRESSION name -> tifffile codec name).
LOSSLESS_CODECS = {"ADOBE_DEFLATE": "zlib", "DEFLATE": "zlib", "LZW": "lzw", "ZSTD": "zstd",
                   "LZMA": "lzma", "PACKBITS": "packbits"}
#: Codec for inputs stored uncompressed or with a lossy codec (JPEG, WebP...): Adobe
#: Deflate (zlib) with the horizontal-differencing predictor. Lossless, and the one
#: codec every TIFF reader has (Bio-Formats, ImageJ 1, libtiff, tifffile, QuPath, OMERO);
#: zstd compresses a little better and faster but older readers cannot open it.
DEFAULT_CODEC = "zlib"
#: Planes larger than this on either side are written in tiles (when the source was
#: not tiled): the tile layout large-image viewers (QuPath, OMERO) read region by region.
TILE_ABOVE = 1024
DEFAULT_TILE = (512, 512)


@dataclass(frozen=True)
class OutputLayout:
    """How one output series is stored: codec, predictor, tiles, pyramid levels."""

    compression: str
    predictor: int
    tile: tuple[int, int] | None
    levels: tuple[tuple[int, int], ...]
    note: str = ""


def output_layout(info: SeriesInfo) -> OutputLayout:
    """The storage of the output of ``info``: as good as the source's.

    Lossless compression is kept; lossy or no compression becomes :data:`DEFAULT_CODEC`.
    Integer pixels get the horizontal predictor (TIFF predictor 2; floating-point
    sources keep theirs). Tiles: the source's tile size, or :data:`DEFAULT_TILE` for
    planes larger than :data:`TILE_ABOVE`. Pyramid levels: as many, of the same shapes,
    as the source had.
    """
    storage = info.storage or Storage()
    codec = LOSSLESS_CODECS.get(storage.compression)
    note = ""
    if codec is None:
        codec = DEFAULT_CODEC
        if storage.compression not in ("NONE", ""):
            note = (f"source compression {storage.compression} is not lossless; written "
                    f"with {codec}")
    kind = np.dtype(info.dtype).kind
    if kind in "iu":
        predictor = 2 if codec != "packbits" else 1
    else:
        predictor = 3 if storage.predictor == 3 else 1
    tile = storage.tile
    if tile is not None and (tile[0] % 16 or tile[1] % 16):
        tile = DEFAULT_TILE
    if tile is None and max(info.sizes["Y"], info.sizes["X"]) > TILE_ABOVE:
        tile = DEFAULT_TILE
    return OutputLayout(codec, predictor, tile, tuple(storage.levels), note)


def downsample(page: np.ndarray, factor: tuple[int, int], shape: tuple[int, int],
               samples_axis: int | None) -> np.ndarray:
    """Block mean of a 2-D plane (or a page of samples) by integer ``factor`` (Y, X),
    edges replicated, cut to ``shape`` (Y, X); rounded and clipped for integer dtypes."""
    data = np.asarray(page)
    if samples_axis == 0:
        return np.stack([downsample(plane, factor, shape, None) for plane in data])
    if samples_axis is not None:
        return np.stack([downsample(data[..., s], factor, shape, None)
                         for s in range(data.shape[-1])], axis=-1)
    fy, fx = factor
    height, width = shape
    need_y, need_x = height * fy, width * fx
    padded = np.pad(data.astype(np.float64), ((0, max(0, need_y - data.shape[0])),
                                              (0, max(0, need_x - data.shape[1]))), mode="edge")
    padded = padded[:need_y, :need_x]
    reduced = padded.reshape(height, fy, width, fx).mean(axis=(1, 3))
    if data.dtype.kind in "iu":
        info = np.iinfo(data.dtype)
        reduced = np.clip(np.rint(reduced), info.min, info.max)
    return reduced.astype(data.dtype)


def tiles_of(pages: Iterable[np.ndarray], tile: tuple[int, int], planar: bool,
           samples: int) -> Iterator[np.ndarray]:
    """The tiles of each page in TIFF order (per sample plane when planar)."""
    length, width = tile
    for page in pages:
        planes = [page[s] for s in range(samples)] if planar and samples > 1 else [page]
        for plane in planes:
            for y in range(0, plane.shape[0], length):
                for x in range(0, plane.shape[1], width):
                    yield plane[y:y + length, x:x + width]


def store_levels(pages: Iterable[np.ndarray], levels: list, info: SeriesInfo) -> Iterator[np.ndarray]:
    """Pass pages through, writing each page's downsampled levels to their stores."""
    samples_axis = None if info.samples == 1 else (0 if info.planar else -1)
    for index, page in enumerate(pages):
        for shape, factor, store in levels:
            store[index] = downsample(page, factor, shape, samples_axis)
        yield page
