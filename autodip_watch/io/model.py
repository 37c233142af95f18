"""The data model of an opened image, described without reading pixels.

An image file holds series (OME Images / TIFF series); a series holds pages (one plane,
or one plane of every RGB sample) in OME dimension order; a :class:`PlaneKey` names one
2-D plane. These are the terms of OME (Pixels, Plane, Channel) and of tifffile (series,
page, axes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from .errors import DimensionError


#: Largest plane (Y x X x samples) we agree to read; 10^6 x 10^6 and such are refused.
MAX_PLANE_PIXELS = 1 << 30
#: Most planes one image may declare.
MAX_PLANES = 10_000_000

#: OME PixelType -> NumPy dtype for the types the denoiser handles.
OME_DTYPES = {"int8": "int8", "int16": "int16", "int32": "int32", "uint8": "uint8",
               "uint16": "uint16", "uint32": "uint32", "float": "float32", "double": "float64"}
DTYPE_OME = {np.dtype(v): k for k, v in OME_DTYPES.items()}


@dataclass(frozen=True)
class PlaneKey:
    """Position of one 2-D plane: index per non-spatial axis, and its logical channel.

    The logical channel counts RGB samples as channels: ``channel = C index * samples + S``.
    """

    series: int
    position: tuple[tuple[str, int], ...]
    channel: int

    def label(self) -> str:
        inner = ",".join(f"{a}={i}" for a, i in self.position)
        return f"series={self.series}" + (f",{inner}" if inner else "")


@dataclass
class SeriesInfo:
    """One image (OME Image / TIFF series) of a file, described without reading pixels.

    ``axes`` and ``shape`` are in storage order with length-1 axes squeezed, as tifffile
    reports them; pages are stored in OME ``dimension_order`` (first letter varies fastest).
    """

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    axes: str  # letters from T, Z, C, Y, X and S (samples), outermost first
    channel_names: list[str | None] = field(default_factory=list)
    dimension_order: str = "XYZCT"
    sizes: dict[str, int] = field(default_factory=dict)  # T, Z, C (stored), S, Y, X
    planar: bool = False  # samples stored as SYX pages instead of YXS
    has_pixels: bool = True
    ome_index: int | None = None  # the Image's index in the OME model, if any
    fixed: dict[str, int] = field(default_factory=dict)  # axes of the source split into series
    physical_sizes: dict[str, float] = field(default_factory=dict)  # X, Y, Z in micrometres
    physical_units: dict[str, str] = field(default_factory=dict)  # unit the source used
    time_increment: float | None = None  # seconds between time points
    channel_colors: list[tuple[int, int, int] | None] = field(default_factory=list)
    display_ranges: list[tuple[float, float] | None] = field(default_factory=list)
    storage: "Storage | None" = None  # how the source stored the pixels

    @property
    def samples(self) -> int:
        return self.sizes.get("S", 1)

    @property
    def plane_axes(self) -> str:
        return "".join(a for a in self.axes if a not in "YX")

    @property
    def page_count(self) -> int:
        return self.sizes.get("T", 1) * self.sizes.get("Z", 1) * self.sizes.get("C", 1)

    @property
    def plane_count(self) -> int:
        return self.page_count * self.samples

    @property
    def channel_count(self) -> int:
        """Logical channels: OME channels times samples per pixel."""
        return self.sizes.get("C", 1) * self.samples

    @property
    def page_shape(self) -> tuple[int, ...]:
        y, x, s = self.sizes["Y"], self.sizes["X"], self.samples
        if s == 1:
            return (y, x)
        return (s, y, x) if self.planar else (y, x, s)

    @property
    def page_nbytes(self) -> int:
        return int(np.prod(self.page_shape)) * np.dtype(self.dtype).itemsize

    def page_position(self, page: int) -> dict[str, int]:
        """T, Z, C of the ``page``-th page in storage (dimension-order) sequence."""
        position = {}
        for letter in self.dimension_order[2:]:
            size = self.sizes.get(letter, 1)
            position[letter] = page % size
            page //= size
        return position

    def plane_keys(self, page: int) -> list[PlaneKey]:
        """One key per sample plane of page ``page``."""
        position = self.page_position(page)
        outer = tuple((a, position[a]) for a in self.axes if a in "TZC")
        samples = self.samples
        if samples == 1:
            return [PlaneKey(self.index, outer, position["C"])]
        return [PlaneKey(self.index, outer + (("S", s),), position["C"] * samples + s)
                for s in range(samples)]

    def split_page(self, page: np.ndarray) -> list[np.ndarray]:
        """The 2-D sample planes of one page."""
        if self.samples == 1:
            return [page]
        if self.planar:
            return [page[s] for s in range(self.samples)]
        return [page[..., s] for s in range(self.samples)]

    def join_page(self, planes: Sequence[np.ndarray]) -> np.ndarray:
        """Inverse of :meth:`split_page`."""
        if self.samples == 1:
            return planes[0]
        return np.stack(planes, axis=0 if self.planar else -1)


@dataclass(frozen=True)
class Storage:
    """How the source's TIFF pages of one image are stored, for an output as good.

    ``compression`` is the tifffile ``COMPRESSION`` name (``NONE``, ``ADOBE_DEFLATE``,
    ``LZW``, ``ZSTD``, ``JPEG``...), ``predictor`` its TIFF code, ``tile`` the
    (length, width) of its tiles or None for strips, ``levels`` the (Y, X) shape of each
    sub-resolution (SubIFDs or reduced pages of a pyramid), largest first.
    """

    compression: str = "NONE"
    predictor: int = 1
    tile: tuple[int, int] | None = None
    levels: tuple[tuple[int, int], ...] = ()


def storage_of(page, levels: Sequence[tuple[int, int]] | None = None) -> Storage:
    """The ``Storage`` of a TIFF page; ``levels`` when already known (tifffile series)."""
    keyframe = page.keyframe if hasattr(page, "keyframe") else page
    compression = getattr(keyframe.compression, "name", str(keyframe.compression))
    predictor = int(getattr(keyframe, "predictor", 1) or 1)
    tile = (keyframe.tilelength, keyframe.tilewidth) if keyframe.is_tiled else None
    if levels is None:
        levels = []
        for offset in getattr(page, "subifds", None) or ():
            try:
                page.parent.filehandle.seek(offset)
                sub = tifffile.TiffPage(page.parent, index=0)
            except (tifffile.TiffFileError, OSError, ValueError, IndexError):
                break
            levels.append((sub.imagelength, sub.imagewidth))
    return Storage(compression, predictor, tile, tuple(levels))


def axes_layout(order: str, sizes: Mapping[str, int], planar: bool) -> tuple[str, tuple[int, ...]]:
    """tifffile-style squeezed axes and shape for pages stored in dimension ``order``."""
    axes = "".join(a for a in reversed(order[2:]) if sizes.get(a, 1) > 1)
    samples = sizes.get("S", 1)
    if samples > 1:
        axes += "SYX" if planar else "YXS"
    else:
        axes += "YX"
    return axes, tuple(sizes.get(a, 1) for a in axes)


def check_plane_limits(path: Path, sizes: Mapping[str, int], what: str) -> None:
    """Refuse absurd declared dimensions before anything is allocated."""
    for letter in ("X", "Y"):
        if sizes.get(letter, 0) < 1:
            raise DimensionError(path, f"{what} declares Size{letter}={sizes.get(letter)}")
    pixels = sizes["X"] * sizes["Y"] * sizes.get("S", 1)
    if pixels > MAX_PLANE_PIXELS:
        raise DimensionError(path, f"{what} declares a {sizes['X']}x{sizes['Y']} plane "
                                   f"({pixels:.3g} values), above the limit of "
                                   f"{MAX_PLANE_PIXELS:.3g}; refusing to allocate it")
    planes = sizes.get("T", 1) * sizes.get("Z", 1) * sizes.get("C", 1)
    if planes > MAX_PLANES:
        raise DimensionError(path, f"{what} declares {planes} planes, above the limit of {MAX_PLANES}")


def sample_names(channel_name: str | None, samples: int) -> list[str | None]:
    if samples == 1:
        return [channel_name]
    letters = {2: "LA", 3: "RGB", 4: "RGBA"}.get(samples)
    labels = list(letters) if letters else [f"S{s}" for s in range(samples)]
    return [f"{channel_name}:{label}" if channel_name else label for label in labels]


def rename_axes(axes: str) -> tuple[str, dict[str, str]]:
    """tifffile letters without an OME equivalent become T or Z, or split into series.

    Returns the renamed axes and, for letters split into separate series, their names.
    Positions (R) are always split: each stage position is its own image in OME.
    """
    taken = set(a for a in axes if a in "TZC")
    renamed, split = [], {}
    for letter in axes:
        if letter in "TZC":
            renamed.append(letter)
            continue
        free = next((a for a in "TZ" if a not in taken), None) if letter != "R" else None
        if free is None:
            placeholder = letter.lower()
            split[placeholder] = {"R": "position"}.get(letter, letter)
            renamed.append(placeholder)
        else:
            taken.add(free)
            renamed.append(free)
    return "".join(renamed), split
