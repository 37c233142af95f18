"""Read image planes from TIFF / OME-TIFF / PNG and write denoised OME-TIFFs atomically.

(First version: whole-series reads. To be extended for multi-file sets, plane-at-a-time
reading and provenance.)
"""

from __future__ import annotations

import itertools
import os
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image


class ImageReadError(ValueError):
    """An input that cannot be read as an image; the message says why."""


@dataclass
class SeriesInfo:
    """One image (OME Image / TIFF series) of a file."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    axes: str  # tifffile axes letters, ending in YX or YXS
    channel_names: list[str | None] = field(default_factory=list)

    @property
    def plane_axes(self) -> str:
        return "".join(a for a in self.axes if a not in "YX")

    @property
    def plane_count(self) -> int:
        return int(np.prod([self.shape[self.axes.index(a)] for a in self.plane_axes] or [1]))

    @property
    def channel_count(self) -> int:
        for letter in ("C", "S"):
            if letter in self.axes:
                return self.shape[self.axes.index(letter)]
        return 1


@dataclass(frozen=True)
class PlaneKey:
    """Position of one 2-D plane: index per non-spatial axis, and its channel."""

    series: int
    position: tuple[tuple[str, int], ...]
    channel: int

    def label(self) -> str:
        inner = ",".join(f"{a}={i}" for a, i in self.position)
        return f"series={self.series}" + (f",{inner}" if inner else "")


class ImageFile:
    """An opened input file: its series and, if present, its OME-XML."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.ome_xml: str | None = None
        self.series: list[SeriesInfo] = []
        self._arrays: list[np.ndarray] = []
        try:
            if self.path.suffix.lower() == ".png":
                self._open_png()
            else:
                self._open_tiff()
        except ImageReadError:
            raise
        except (OSError, ValueError, tifffile.TiffFileError, Image.UnidentifiedImageError) as error:
            raise ImageReadError(f"{self.path}: cannot read image: {error}") from error

    def _open_png(self) -> None:
        with Image.open(self.path) as image:
            # Palette images: the index is the intensity (Hagen et al. data).
            array = np.array(image)
        axes = "YXS" if array.ndim == 3 else "YX"
        self._add(array, axes, self.path.stem)

    def _open_tiff(self) -> None:
        with tifffile.TiffFile(self.path) as tif:
            self.ome_xml = tif.ome_metadata
            for series in tif.series:
                self._add(series.asarray(), series.axes, series.name or self.path.stem)

    def _add(self, array: np.ndarray, axes: str, name: str) -> None:
        axes = axes.replace("Q", "I")
        self.series.append(SeriesInfo(len(self.series), name, array.shape, array.dtype, axes))
        self._arrays.append(array)

    def planes(self, series: int = 0) -> Iterator[tuple[PlaneKey, np.ndarray]]:
        """Every 2-D plane of one series, in storage order."""
        info = self.series[series]
        array = self._arrays[series]
        others = [a for a in info.axes if a not in "YX"]
        ranges = [range(info.shape[info.axes.index(a)]) for a in others]
        for combo in itertools.product(*ranges):
            index = [slice(None)] * array.ndim
            for letter, value in zip(others, combo):
                index[info.axes.index(letter)] = value
            position = tuple(zip(others, combo))
            channel = dict(position).get("C", dict(position).get("S", 0))
            yield PlaneKey(series, position, channel), array[tuple(index)]

    def assemble(self, series: int, planes: Iterable[np.ndarray]) -> np.ndarray:
        """Put planes (in ``planes()`` order) back into the series' array layout."""
        info = self.series[series]
        out = np.empty(info.shape, dtype=info.dtype)
        for (key, _), plane in zip(self.planes(series), planes):
            index = [slice(None)] * out.ndim
            for letter, value in key.position:
                index[info.axes.index(letter)] = value
            out[tuple(index)] = plane
        return out


def atomic_write_tiff(out_path: Path, arrays: list[tuple[np.ndarray, str]],
                      description: str | None = None) -> None:
    """Write series to a temporary file beside ``out_path``, fsync, then rename."""
    out_path = Path(out_path)
    descriptor, temp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp",
                                             dir=out_path.parent)
    os.close(descriptor)
    try:
        with tifffile.TiffWriter(temp_name, bigtiff=True, ome=description is None) as writer:
            for number, (array, axes) in enumerate(arrays):
                photometric = "rgb" if axes.endswith("S") else "minisblack"
                kwargs = {"metadata": {"axes": axes}} if description is None else {
                    "metadata": None, "description": description if number == 0 else None}
                writer.write(array, photometric=photometric, **kwargs)
        with open(temp_name, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temp_name, out_path)
        directory = os.open(out_path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def new_uuid() -> str:
    return f"urn:uuid:{uuid.uuid4()}"
