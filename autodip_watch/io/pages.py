"""Where a page's pixels come from: TIFF pages, memory maps, or a decoded PNG.

Each page source reads one page on request and checks it against what the metadata
declared, so a truncated or inconsistent file is an error naming the page, never a
silently zeroed plane. tifffile reports a damaged file by logging and carrying on, so
its log records are captured per reading thread (:func:`tifffile_log`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import tifffile

from .errors import DimensionError, MissingFileError, TruncatedImageError
from .model import SeriesInfo


#: A TIFF series that is neither one page per plane nor contiguous is read whole, up to this.
MAX_WHOLE_SERIES_BYTES = 1 << 30

TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class TiffCache:
    """Opened TIFF files of a (multi-file) set, opened once each, read-only."""

    def __init__(self) -> None:
        self.files: dict[Path, tifffile.TiffFile] = {}

    def get(self, path: Path) -> tifffile.TiffFile:
        key = path.resolve()
        if key not in self.files:
            if not path.exists():
                raise MissingFileError(path, "file of the multi-file OME-TIFF set is missing")
            try:
                self.files[key] = tifffile.TiffFile(path, _multifile=False)
            except tifffile.TiffFileError as error:
                raise TruncatedImageError(path, f"invalid or truncated TIFF: {error}") from None
        return self.files[key]

    def close(self) -> None:
        for handle in self.files.values():
            handle.close()
        self.files.clear()


def check_page(page, series: SeriesInfo, where: str, path: Path) -> None:
    """The page holds exactly the declared plane, and its bytes are in the file."""
    keyframe = page.keyframe
    found = (keyframe.imagelength, keyframe.imagewidth, keyframe.samplesperpixel)
    expected = (series.sizes["Y"], series.sizes["X"], series.samples)
    if keyframe.imagedepth != 1 or found != expected:
        raise DimensionError(path, f"{where}: metadata declares {expected[1]}x{expected[0]} "
                                   f"with {expected[2]} sample(s) per pixel, but the TIFF page "
                                   f"holds {found[1]}x{found[0]} with {found[2]}")
    if keyframe.dtype is None or np.dtype(keyframe.dtype) != np.dtype(series.dtype):
        raise DimensionError(path, f"{where}: metadata declares pixel type {series.dtype}, "
                                   f"the TIFF page holds {keyframe.dtype}")
    if series.samples > 1 and (keyframe.planarconfig == 2) != series.planar:
        raise DimensionError(path, f"{where}: sample layout differs from the first page")
    size = page.parent.filehandle.size
    offsets, counts = page.dataoffsets, page.databytecounts
    if not offsets or any(o + c > size for o, c in zip(offsets, counts)):
        raise TruncatedImageError(path, f"{where}: pixel data end beyond the end of the file "
                                        f"({size} bytes); the file is truncated")
    if keyframe.compression == 1 and sum(counts) < series.page_nbytes:
        raise TruncatedImageError(path, f"{where}: {sum(counts)} bytes of pixel data for a "
                                        f"{series.page_nbytes}-byte plane")


def read_page(page, series: SeriesInfo, where: str, path: Path) -> np.ndarray:
    check_page(page, series, where, path)
    try:
        data = page.asarray()
    except (ValueError, OSError, RuntimeError) as error:
        raise TruncatedImageError(path, f"{where}: cannot decode pixel data: {error}") from None
    data = np.asarray(data).reshape(series.page_shape)
    return np.asarray(data, dtype=np.dtype(series.dtype).newbyteorder("="))


class OmePages:
    """Pages of one OME image, located through its TiffData blocks."""

    def __init__(self, cache: TiffCache, mapping: list[tuple[Path, int]], series: SeriesInfo):
        self.cache, self.mapping, self.series = cache, mapping, series

    def linear(self, position: Mapping[str, int]) -> int:
        index, stride = 0, 1
        for letter in self.series.dimension_order[2:]:
            index += position.get(letter, 0) * stride
            stride *= self.series.sizes.get(letter, 1)
        return index

    def page(self, position: Mapping[str, int]):
        path, ifd = self.mapping[self.linear(position)]  # None: see read()
        tif = self.cache.get(path)
        try:
            return tif.pages[ifd], path
        except (IndexError, tifffile.TiffFileError):
            raise TruncatedImageError(path, f"IFD {ifd} referenced by the OME-XML does not "
                                            f"exist (the file has {len(tif.pages)} pages; "
                                            f"truncated, or the metadata is wrong)") from None

    def read(self, position: Mapping[str, int]) -> np.ndarray:
        if self.mapping[self.linear(position)] is None:  # ImageFile(allow_missing=True)
            return np.zeros(self.series.page_shape, dtype=np.dtype(self.series.dtype))
        page, path = self.page(position)
        where = f"image {self.series.index} plane {dict(position)}"
        return read_page(page, self.series, where, path)


class SeriesPages:
    """Pages of a tifffile series without OME: one page per plane, a memmap, or an array."""

    def __init__(self, path: Path, leading_axes: str, leading_shape: tuple[int, ...],
                 series: SeriesInfo, pages=None, array=None) -> None:
        self.path, self.series = path, series
        self.leading_axes, self.leading_shape = leading_axes, leading_shape
        self.pages, self.array = pages, array

    def read(self, position: Mapping[str, int]) -> np.ndarray:
        index = tuple(position.get(a, 0) for a in self.leading_axes)
        flat = int(np.ravel_multi_index(index, self.leading_shape)) if index else 0
        if self.pages is not None:
            page = self.pages[flat]
            if page is None:
                raise TruncatedImageError(self.path, f"page {flat} of the series is missing")
            return read_page(page, self.series, f"page {flat}", self.path)
        data = self.array[index] if index else self.array
        return np.array(data, dtype=np.dtype(self.series.dtype).newbyteorder("=")).reshape(
            self.series.page_shape)


class TifffileLog(logging.Filter):
    """Captures tifffile's log records while this thread reads a file.

    tifffile reports a damaged file by logging an error and carrying on (with fewer pages
    or zeroed data), so its errors must become our exceptions. A filter on tifffile's
    logger captures (and swallows) only the records of threads that are reading through
    :func:`tifffile_log`; other threads (several GPU workers) and other users of
    tifffile are unaffected.
    """

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        collector = getattr(self.local, "records", None)
        if collector is None:
            return True
        collector.append(record)
        return False


TIFFFILE_LOG = TifffileLog()
logging.getLogger("tifffile").addFilter(TIFFFILE_LOG)


@contextlib.contextmanager
def tifffile_log() -> Iterator[list[logging.LogRecord]]:
    previous = getattr(TIFFFILE_LOG.local, "records", None)
    records: list[logging.LogRecord] = []
    TIFFFILE_LOG.local.records = records
    try:
        yield records
    finally:
        TIFFFILE_LOG.local.records = previous


class PngPage:
    """A PNG decoded on first read: the format cannot be read partially."""

    def __init__(self, path: Path, series: SeriesInfo, mode: str) -> None:
        self.path, self.series, self.mode = path, series, mode

    def read(self, position: Mapping[str, int]) -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(self.path) as image:
                image.load()
                if image.mode not in ("P", "L", "1", "I;16", "I;16B", "I", "F", "RGB", "RGBA", "LA"):
                    image = image.convert("RGB")
                # Palette images keep their index: it is the intensity (Hagen et al. data).
                data = np.asarray(image)
        except (OSError, Image.DecompressionBombError) as error:
            raise TruncatedImageError(self.path, f"cannot decode PNG: {error}") from None
        if data.dtype == bool:
            data = data.astype(np.uint8)
        return np.ascontiguousarray(data, dtype=self.series.dtype).reshape(self.series.page_shape)


def is_tiff(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) in TIFF_MAGICS
    except OSError:
        return False


def format_ranges(numbers: Sequence[int]) -> str:
    """``1-3, 7`` for [1, 2, 3, 7]."""
    parts, start = [], None
    for index, number in enumerate(numbers):
        if start is None:
            start = number
        if index + 1 == len(numbers) or numbers[index + 1] != number + 1:
            parts.append(f"{start}" if start == number else f"{start}-{number}")
            start = None
    return ", ".join(parts)
