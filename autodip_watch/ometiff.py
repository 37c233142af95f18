"""Read planes one at a time from OME-TIFF, TIFF, PNG and OME-XML; write OME-TIFF atomically.

Reading never loads a whole stack: a plane comes from its own TIFF page, from a memory
map of contiguous pixel data, or (PNG only, which cannot be read partially) from the one
decoded image. Writing streams pages into tifffile the same way, so a stack larger than
memory can be denoised.

OME-XML is untrusted input. It is screened with defusedxml (no DTD, no entity
declarations, no external references) before ome-types or tifffile parse it, and the
dimensions it declares are checked against limits and against the TIFF pages before
anything is allocated. Every failure is an :class:`ImageReadError` subclass whose message
names the file and the problem.

Supported layouts
-----------------
- single-file OME-TIFF, several images (series) per file included;
- multi-file OME-TIFF sets: the master-file form (other files hold ``BinaryOnly``) and the
  companion form (``*.companion.ome`` / ``*.ome.xml`` holds the metadata);
- Micro-Manager stacks (their OME-XML is used; schema violations become warnings);
- ImageJ hyperstacks, plain TIFF and PNG without OME (PNG palette images: the palette
  index is the intensity);
- a standalone ``.ome.xml`` (metadata only, for ``inspect``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import tempfile
import threading
import uuid
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from .physical import (SCREEN_DPI, length_in_micrometres, resolution_sizes, seconds,
                       tiff_calibration)

#: Largest plane (Y x X x samples) we agree to read; 10^6 x 10^6 and such are refused.
MAX_PLANE_PIXELS = 1 << 30
#: Most planes one image may declare.
MAX_PLANES = 10_000_000
#: Largest OME-XML document we parse.
MAX_XML_BYTES = 256 << 20
#: A TIFF series that is neither one page per plane nor contiguous is read whole, up to this.
MAX_WHOLE_SERIES_BYTES = 1 << 30
#: Past this output size the file is written as BigTIFF.
BIGTIFF_THRESHOLD = (1 << 32) - (64 << 20)

_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: OME PixelType -> NumPy dtype for the types the denoiser handles.
_OME_DTYPES = {"int8": "int8", "int16": "int16", "int32": "int32", "uint8": "uint8",
               "uint16": "uint16", "uint32": "uint32", "float": "float32", "double": "float64"}
_DTYPE_OME = {np.dtype(v): k for k, v in _OME_DTYPES.items()}
_AXIS_ORDERS = ("ZCT", "ZTC", "CTZ", "CZT", "TCZ", "TZC")


# --------------------------------------------------------------------------- errors

class ImageReadError(ValueError):
    """An input that cannot be read as an image; ``str()`` names the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class NotAnImageError(ImageReadError):
    """The file is not a TIFF, PNG or OME-XML file at all."""


class TruncatedImageError(ImageReadError):
    """The TIFF structure or its pixel data end early (copy still running, disk full...)."""


class MalformedMetadataError(ImageReadError):
    """The OME-XML is not well-formed XML, not OME, or cannot be turned into an OME model."""


class UnsafeMetadataError(ImageReadError):
    """The OME-XML declares a DTD, entities or external references, or points outside its folder."""


class DimensionError(ImageReadError):
    """Declared dimensions are absurd or do not match the pixel data."""


class MissingFileError(ImageReadError):
    """A file of a multi-file set (or the set's metadata file) is missing."""


class UnsupportedImageError(ImageReadError):
    """A valid image in a layout or pixel type the denoiser does not handle."""


# --------------------------------------------------------------------------- model

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


def _storage_of(page, levels: Sequence[tuple[int, int]] | None = None) -> Storage:
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


def _layout(order: str, sizes: Mapping[str, int], planar: bool) -> tuple[str, tuple[int, ...]]:
    """tifffile-style squeezed axes and shape for pages stored in dimension ``order``."""
    axes = "".join(a for a in reversed(order[2:]) if sizes.get(a, 1) > 1)
    samples = sizes.get("S", 1)
    if samples > 1:
        axes += "SYX" if planar else "YXS"
    else:
        axes += "YX"
    return axes, tuple(sizes.get(a, 1) for a in axes)


def _check_plane_limits(path: Path, sizes: Mapping[str, int], what: str) -> None:
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


# --------------------------------------------------------------------------- OME-XML

def screen_xml(text: str, source: str | Path) -> None:
    """Reject DTDs, entity declarations and external references without expanding them.

    Raises
    ------
    UnsafeMetadataError, MalformedMetadataError
    """
    from defusedxml import DefusedXmlException
    from defusedxml import ElementTree as SafeElementTree

    if len(text) > MAX_XML_BYTES:
        raise DimensionError(source, f"OME-XML is {len(text)} bytes, above the limit of {MAX_XML_BYTES}")
    try:
        root = SafeElementTree.fromstring(text, forbid_dtd=True, forbid_entities=True,
                                          forbid_external=True)
    except DefusedXmlException as error:
        raise UnsafeMetadataError(source, f"OME-XML declares a DTD, entities or external "
                                          f"references ({type(error).__name__}); refused "
                                          f"without expanding them") from None
    except SafeElementTree.ParseError as error:
        raise MalformedMetadataError(source, f"OME-XML is not well-formed XML: {error}") from None
    tag = root.tag.rsplit("}", 1)[-1]
    if tag != "OME":
        raise MalformedMetadataError(source, f"XML root element is <{tag}>, not <OME>")


def parse_ome_xml(text: str, source: str | Path, warnings_out: list[str] | None = None,
                  hints: Mapping[str, object] | None = None):
    """Screened, parsed OME model of ``text``; schema violations become warnings.

    Real acquisition software writes OME-XML that breaks the schema in small ways
    (Micro-Manager's ``Instrument ID="Microscope"``, ``PhysicalSizeX="0.0"``, enum values
    of newer schemas). A document that is not schema-valid is repaired value by value
    (:func:`autodip_watch.ome_repair.repair_tree`: out-of-range numbers dropped, unknown
    enum values mapped to ``Other``, invalid IDs made valid with their references) and
    each repair is recorded in ``warnings_out`` instead of refusing the file. ``hints``
    (``Type``, ``SizeX``, ``SizeY`` of the TIFF pages) repair required ``Pixels`` values.

    Raises
    ------
    UnsafeMetadataError, MalformedMetadataError, DimensionError
    """
    import ome_types

    from .ome_repair import repair_tree

    screen_xml(text, source)
    notes = warnings_out if warnings_out is not None else []
    problem = _schema_problem(text)
    if problem is None:
        try:
            return ome_types.from_xml(text, validate=False)
        except ImportError:
            raise
        except Exception as error:  # valid XML the model still refuses: repair it below
            problem = str(error).strip().splitlines()[0]
    if problem is not None:
        notes.append(f"OME-XML is not schema-valid ({problem}); parsed leniently")
    repairs: list[str] = []

    def repair(tree):
        repairs.extend(repair_tree(tree, hints))
        return tree

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ome = ome_types.from_xml(text, validate=False, transformations=[repair])
        notes.extend(repairs)
        notes.extend(str(w.message) for w in caught if "unclosed file" not in str(w.message))
        return ome
    except Exception as error:
        raise MalformedMetadataError(source, f"OME-XML cannot be read as an OME model: "
                                             f"{str(error).strip()[:500]}") from None


def _schema_problem(text: str) -> str | None:
    """None when ``text`` is valid against the OME 2016-06 schema, else the first error.

    The compiled schema is cached (ome-types compiles it on every validating parse);
    documents of older schema versions go through ome-types, which upgrades them first.
    """
    import ome_types
    from lxml import etree

    try:
        root = etree.fromstring(text.encode("utf-8"))
    except etree.XMLSyntaxError as error:
        return str(error)
    if root.tag.startswith("{http://www.openmicroscopy.org/Schemas/OME/2016-06}"):
        schema = _ome_schema()
        if schema.validate(root):
            return None
        error = schema.error_log[0]
        return f"line {error.line}: {error.message}"
    try:
        ome_types.from_xml(text, validate=True)
    except ImportError:
        raise
    except Exception as error:
        lines = str(error).strip().splitlines()
        return next((line.strip(" -") for line in lines[1:] if line.strip()), type(error).__name__)
    return None


def _member_path(base: Path, file_name: str, source: Path) -> Path:
    """A file named by OME metadata, which must stay inside the metadata file's folder."""
    candidate = Path(file_name)
    if candidate.is_absolute() or not file_name.strip():
        raise UnsafeMetadataError(source, f"OME-XML names file {file_name!r}; only names "
                                          f"relative to its own folder are accepted")
    resolved = (base / candidate).resolve()
    if not resolved.is_relative_to(base.resolve()):
        raise UnsafeMetadataError(source, f"OME-XML names file {file_name!r} outside its folder")
    return base / candidate


# --------------------------------------------------------------------------- page sources

class _TiffCache:
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


def _check_page(page, series: SeriesInfo, where: str, path: Path) -> None:
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


def _read_page(page, series: SeriesInfo, where: str, path: Path) -> np.ndarray:
    _check_page(page, series, where, path)
    try:
        data = page.asarray()
    except (ValueError, OSError, RuntimeError) as error:
        raise TruncatedImageError(path, f"{where}: cannot decode pixel data: {error}") from None
    data = np.asarray(data).reshape(series.page_shape)
    return np.asarray(data, dtype=np.dtype(series.dtype).newbyteorder("="))


class _OmePages:
    """Pages of one OME image, located through its TiffData blocks."""

    def __init__(self, cache: _TiffCache, mapping: list[tuple[Path, int]], series: SeriesInfo):
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
        return _read_page(page, self.series, where, path)


class _SeriesPages:
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
            return _read_page(page, self.series, f"page {flat}", self.path)
        data = self.array[index] if index else self.array
        return np.array(data, dtype=np.dtype(self.series.dtype).newbyteorder("=")).reshape(
            self.series.page_shape)


# --------------------------------------------------------------------------- reader

class _TifffileLog(logging.Filter):
    """Captures tifffile's log records while this thread reads a file.

    tifffile reports a damaged file by logging an error and carrying on (with fewer pages
    or zeroed data), so its errors must become our exceptions. A filter on tifffile's
    logger captures (and swallows) only the records of threads that are reading through
    :func:`_tifffile_log`; other threads (several GPU workers) and other users of
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


_TIFFFILE_LOG = _TifffileLog()
logging.getLogger("tifffile").addFilter(_TIFFFILE_LOG)


@contextlib.contextmanager
def _tifffile_log() -> Iterator[list[logging.LogRecord]]:
    previous = getattr(_TIFFFILE_LOG.local, "records", None)
    records: list[logging.LogRecord] = []
    _TIFFFILE_LOG.local.records = records
    try:
        yield records
    finally:
        _TIFFFILE_LOG.local.records = previous


def primary_file_of(path: str | Path) -> Path:
    """The file holding the metadata of ``path``'s set: itself, or the ``BinaryOnly`` target.

    Lets a watcher denoise a multi-file OME-TIFF set once, from its metadata file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            if handle.read(4) not in _TIFF_MAGICS:
                return path
        with tifffile.TiffFile(path, _multifile=False) as tif:
            description = tif.pages.first.description or ""
    except (OSError, tifffile.TiffFileError, IndexError):
        return path
    if "BinaryOnly" not in description:
        return path
    try:
        ome = parse_ome_xml(description, path)
    except ImageReadError:
        return path
    if ome.binary_only is None:
        return path
    return _member_path(path.parent, ome.binary_only.metadata_file, path)


class ImageFile:
    """An opened input: its series described up front, pixels read one page at a time.

    Use as a context manager (or call :meth:`close`) to release file handles.

    Attributes
    ----------
    path : Path
        The file that was opened.
    kind : str
        ``ome-tiff``, ``ome-tiff-multifile``, ``ome-companion``, ``ome-xml``,
        ``micromanager``, ``imagej``, ``tiff`` or ``png``.
    ome : ome_types.OME or None
        The parsed OME model (of the set's metadata file for multi-file sets).
    ome_xml : str or None
        The screened OME-XML text the model came from.
    metadata_path : Path
        The file that holds the metadata (master or companion file of a set).
    source_files : list of Path
        Every file whose bytes the image depends on, metadata file first.
    warnings : list of str
        Problems that did not prevent reading (schema repairs, tifffile notices).
    """

    def __init__(self, path: str | Path, allow_missing: bool = False) -> None:
        self.path = Path(path)
        #: Read an incomplete input as far as it goes: planes whose IFD or file is not
        #: there read as zeros (as Bio-Formats does for partial filesets) and are named
        #: in ``missing``. For the daemon's incomplete files (an aborted acquisition, a
        #: member that never arrived); off, they are errors.
        self.allow_missing = allow_missing
        self.missing: list[str] = []
        self.kind = "unknown"
        self.ome = None
        self.ome_xml: str | None = None
        self.metadata_path = self.path
        self.source_files: list[Path] = [self.path]
        self.series: list[SeriesInfo] = []
        self.warnings: list[str] = []
        #: IFDs of a single-file OME-TIFF with planes no OME image declares.
        self.unreferenced_pages: list[int] = []
        self._sources: list = []
        self._cache = _TiffCache()
        try:
            with _tifffile_log() as log:
                self._open()
            self._absorb_log(log, self.path)
        except ImageReadError:
            self.close()
            raise
        except tifffile.TiffFileError as error:
            self.close()
            raise TruncatedImageError(self.path, f"damaged or truncated TIFF: {error}") from error
        except (OSError, ValueError, IndexError, KeyError) as error:
            self.close()
            raise ImageReadError(self.path, f"cannot read: {error}") from error

    # -- context management
    def __enter__(self) -> "ImageFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._cache.close()

    # -- opening
    def _absorb_log(self, records: list[logging.LogRecord], path: Path) -> None:
        errors = [r.getMessage() for r in records if r.levelno >= logging.ERROR]
        if self.allow_missing:  # an ImageJ stack with fewer pages than it declares
            errors = [e for e in errors if "ImageJ series metadata invalid" not in e]
        if errors:
            raise TruncatedImageError(path, "damaged or truncated TIFF: " + "; ".join(errors[:3]))
        self.warnings.extend(r.getMessage() for r in records if r.levelno == logging.WARNING)

    def _open(self) -> None:
        if not self.path.exists():
            raise MissingFileError(self.path, "file does not exist")
        if self.path.is_dir():
            raise NotAnImageError(self.path, "is a folder, not an image file")
        with open(self.path, "rb") as handle:
            head = handle.read(512)
        if head[:4] in _TIFF_MAGICS:
            self._open_tiff()
        elif head[:8] == _PNG_MAGIC:
            self._open_png()
        elif head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
            self._open_xml()
        elif not head:
            raise NotAnImageError(self.path, "file is empty")
        else:
            raise NotAnImageError(self.path, f"not a TIFF, PNG or OME-XML file "
                                             f"(starts with {head[:8]!r})")

    def _open_tiff(self) -> None:
        tif = self._cache.get(self.path)
        if len(tif.pages) == 0:
            raise TruncatedImageError(self.path, "TIFF has no readable pages")
        description = tif.pages.first.description or ""
        # Anything that looks like OME-XML is screened before tifffile could parse it.
        if description.lstrip().startswith("<") and (
                "<OME" in description or description.rstrip().endswith("OME>")):
            xml_source = self.path
            ome = self._parse(description, self.path)
            if ome.binary_only is not None:
                xml_source = _member_path(self.path.parent, ome.binary_only.metadata_file, self.path)
                if not xml_source.exists():
                    raise MissingFileError(xml_source, f"metadata file of the multi-file set "
                                                       f"that {self.path.name} belongs to is missing")
                description = self._metadata_text(xml_source)
                ome = self._parse(description, xml_source)
                if ome.binary_only is not None:
                    raise MalformedMetadataError(xml_source, "metadata file is itself BinaryOnly")
            self.metadata_path = xml_source
            self._open_ome(ome, xml_source, xml_is_tiff=_is_tiff(xml_source))
            if self.kind == "ome-tiff" and tif.is_micromanager:
                self.kind = "micromanager"
            return
        self._open_generic_tiff(tif)

    def _metadata_text(self, path: Path) -> str:
        if _is_tiff(path):
            tif = self._cache.get(path)
            return tif.pages.first.description or ""
        if path.stat().st_size > MAX_XML_BYTES:
            raise DimensionError(path, f"OME-XML is larger than {MAX_XML_BYTES} bytes")
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise MalformedMetadataError(path, f"OME-XML is not UTF-8 text: {error}") from None

    def _parse(self, text: str, source: Path):
        ome = parse_ome_xml(text, source, self.warnings, hints=self._page_hints(source))
        self.ome_xml = text
        return ome

    def _page_hints(self, source: Path) -> dict[str, object]:
        """What the first TIFF page of ``source`` says about Pixels (for repairs)."""
        if not _is_tiff(source):
            return {}
        try:
            keyframe = self._cache.get(source).pages.first.keyframe
            hints: dict[str, object] = {"SizeX": keyframe.imagewidth,
                                        "SizeY": keyframe.imagelength}
            if keyframe.dtype is not None and np.dtype(keyframe.dtype).newbyteorder("=") in _DTYPE_OME:
                hints["Type"] = _DTYPE_OME[np.dtype(keyframe.dtype).newbyteorder("=")]
            return hints
        except (ImageReadError, IndexError, tifffile.TiffFileError, ValueError):
            return {}

    def _open_xml(self) -> None:
        text = self._metadata_text(self.path)
        ome = self._parse(text, self.path)
        if ome.binary_only is not None:
            raise MalformedMetadataError(self.path, "a BinaryOnly OME-XML file holds no metadata")
        self._open_ome(ome, self.path, xml_is_tiff=False)

    def _open_ome(self, ome, xml_path: Path, xml_is_tiff: bool) -> None:
        """Series from the OME model; pixels located through TiffData, checked up front."""
        self.ome = ome
        base = xml_path.parent
        files: list[Path] = [xml_path]
        pixel_images = 0
        named = {block.uuid.file_name for image in ome.images for block in image.pixels.tiff_data_blocks
                 if block.uuid is not None and block.uuid.file_name}
        self._single_name = next(iter(named)) if len(named) == 1 else None
        self._renamed: set[str] = set()
        referenced: dict[Path, set[int]] = {}
        for image_index, image in enumerate(ome.images):
            pixels = image.pixels
            self._extend_to_tiffdata(image_index, pixels, base, xml_path, xml_is_tiff)
            info = self._ome_series(image_index, image)
            mapping = self._tiffdata_mapping(pixels, info, base, xml_path, xml_is_tiff)
            for path, ifd in mapping or ():
                referenced.setdefault(path, set()).add(ifd)
            if mapping is None:  # no TiffData: metadata only, or pixels in BinData
                info.has_pixels = False
                self.series.append(info)
                self._sources.append(None)
                continue
            top_ifd: dict[Path, int] = {}
            for path, ifd in mapping:
                top_ifd[path] = max(ifd, top_ifd.get(path, 0))
            missing_files = sorted(p.name for p in top_ifd if not p.exists())
            if missing_files and not self.allow_missing:
                if not xml_is_tiff and self.path == xml_path:
                    self.warnings.append(f"image {image_index}: pixel files missing "
                                         f"({', '.join(missing_files[:5])}); metadata only")
                    info.has_pixels = False
                    self.series.append(info)
                    self._sources.append(None)
                    continue
                raise MissingFileError(base / missing_files[0],
                                       f"file of the multi-file OME-TIFF set described by "
                                       f"{xml_path.name} is missing")
            if self.allow_missing:
                mapping = self._present_only(mapping, info, missing_files)
            source = _OmePages(self._cache, mapping, info)
            for path, top in top_ifd.items():
                if self.allow_missing and not path.exists():
                    continue
                tif = self._cache.get(path)
                if top >= len(tif.pages) and not self.allow_missing:
                    raise DimensionError(path, f"image {image_index}: OME-XML declares "
                                               f"{info.page_count} planes, up to IFD {top}, "
                                               f"but the file has {len(tif.pages)} pages")
                if path not in files:
                    files.append(path)
            first = next(i for i, entry in enumerate(mapping) if entry is not None)
            page, path = source.page(info.page_position(first))
            if info.samples > 1:  # the pages, not Pixels@Interleaved, say how samples are stored
                info.planar = page.keyframe.planarconfig == 2
                info.axes, info.shape = _layout(info.dimension_order, info.sizes, info.planar)
            _check_page(page, info, f"image {image_index}", path)
            info.storage = _storage_of(page)
            if "X" not in info.physical_sizes:  # calibration that lives in the TIFF tags
                sizes, notes = resolution_sizes(page)
                self.warnings.extend(f"image {image_index}: {note}" for note in notes)
                for letter, value in sizes.items():
                    info.physical_sizes[letter], info.physical_units[letter] = value, "µm"
                    setattr(pixels, f"physical_size_{letter.lower()}", value)
                    from ome_types.model import UnitsLength

                    setattr(pixels, f"physical_size_{letter.lower()}_unit", UnitsLength("µm"))
            pixel_images += 1
            self.series.append(info)
            self._sources.append(source)
        self.source_files = files
        if xml_is_tiff and xml_path in referenced:
            self.unreferenced_pages = self._unreferenced(xml_path, referenced[xml_path])
            if self.unreferenced_pages:
                self.warnings.append(
                    f"{xml_path.name}: TIFF pages (IFD) {_ranges(self.unreferenced_pages)} hold "
                    f"full-resolution planes that no OME image declares; they cannot be "
                    f"placed in the output, so the file is not denoised")
        data_files = [p for p in files if p != xml_path or xml_is_tiff]
        if not xml_is_tiff:
            self.kind = "ome-companion" if pixel_images else "ome-xml"
        elif len(data_files) > 1 or xml_path != self.path:
            self.kind = "ome-tiff-multifile"
        else:
            self.kind = "ome-tiff"
        if not ome.images:
            raise MalformedMetadataError(xml_path, "OME-XML describes no images")

    def _present_only(self, mapping: list[tuple[Path, int]], info: SeriesInfo,
                      missing_files: list[str]) -> list[tuple[Path, int] | None]:
        """``mapping`` with None for every page whose file or IFD is not there, each
        named in :attr:`missing`; an image with no page at all is still an error."""
        counts: dict[Path, int] = {}
        present: list[tuple[Path, int] | None] = []
        for path, ifd in mapping:
            if path not in counts:
                counts[path] = len(self._cache.get(path).pages) if path.exists() else 0
            present.append((path, ifd) if ifd < counts[path] else None)
        absent = [index for index, entry in enumerate(present) if entry is None]
        if len(absent) == len(present):
            raise MissingFileError(self.path, f"image {info.index}: none of its "
                                              f"{len(present)} planes is in the file(s)")
        if absent:
            labels = []
            for index in absent[:8]:
                position = info.page_position(index)
                labels.append(",".join(f"{a}={position[a]}" for a in "ZCT"
                                       if info.sizes.get(a, 1) > 1) or f"page {index}")
            more = f" and {len(absent) - 8} more" if len(absent) > 8 else ""
            self.missing.append(f"image {info.index}: {len(absent)} of {len(present)} declared "
                                f"planes missing ({'; '.join(labels)}{more}), written as zeros")
        for name in missing_files:
            self.missing.append(f"file {name} of the set is missing")
        return present

    def _block_path(self, block, base: Path, xml_path: Path, xml_is_tiff: bool) -> Path | None:
        """The file a TiffData block points into; None when it names none (and the XML is
        not in a TIFF). A single file renamed after acquisition still names its old name:
        a block whose UUID is the document's own (or, without UUIDs, the only name any
        block gives) is read from the file itself, with a warning."""
        if block.uuid is None or not block.uuid.file_name:
            return xml_path if xml_is_tiff else None
        path = _member_path(base, block.uuid.file_name, xml_path)
        if not xml_is_tiff or path.exists() or path == xml_path:
            return path
        own = self.ome.uuid if self.ome is not None else None
        value = (block.uuid.value or "").strip()
        if (value and own and value == own) or (
                (not value or not own) and block.uuid.file_name == self._single_name):
            if block.uuid.file_name not in self._renamed:
                self._renamed.add(block.uuid.file_name)
                self.warnings.append(
                    f"TiffData names {block.uuid.file_name!r}, which is not here; "
                    f"{'its UUID is this file' + chr(39) + 's own' if value and own else 'it is the only file the OME-XML names'}"
                    f" (renamed after acquisition?), so its planes are read from {xml_path.name}")
            return xml_path
        return path

    def _extend_to_tiffdata(self, image_index: int, pixels, base: Path, xml_path: Path,
                            xml_is_tiff: bool) -> None:
        """Planes that TiffData places beyond SizeZ/SizeC/SizeT, in IFDs that exist, are
        kept: the dimension grows to hold them (a Micro-Manager multi-camera save with
        SizeC=1 and the second camera's plane at FirstC=1 becomes a 2-channel image) and
        a Channel is added for each new channel. Blocks whose IFD does not exist (an
        acquisition stopped early) are left to :meth:`_tiffdata_mapping`, which ignores
        them with a warning."""
        from ome_types import model

        sizes = {"Z": pixels.size_z, "C": pixels.size_c, "T": pixels.size_t}
        samples = int(pixels.channels[0].samples_per_pixel or 1) if pixels.channels else 1
        sizes["C"] = max(1, sizes["C"] // max(samples, 1))
        extent = dict(sizes)
        found = []
        for block in pixels.tiff_data_blocks:
            first = {"Z": block.first_z or 0, "C": block.first_c or 0, "T": block.first_t or 0}
            beyond = [letter for letter in "ZCT" if first[letter] >= sizes[letter]]
            if not beyond or (block.plane_count or 1) != 1:
                continue
            path = self._block_path(block, base, xml_path, xml_is_tiff)
            if path is None or not path.exists() or not _is_tiff(path):
                continue
            try:
                pages = len(self._cache.get(path).pages)
            except ImageReadError:
                continue
            if (block.ifd or 0) >= pages:
                continue
            for letter in beyond:
                extent[letter] = max(extent[letter], first[letter] + 1)
            found.append(f"{','.join(f'{a}={first[a]}' for a in beyond)} in IFD {block.ifd or 0}")
        if extent == sizes:
            return
        grown = [f"Size{a} {sizes[a] * (samples if a == 'C' else 1)} -> "
                 f"{extent[a] * (samples if a == 'C' else 1)}" for a in "ZCT" if extent[a] != sizes[a]]
        pixels.size_z, pixels.size_t = extent["Z"], extent["T"]
        pixels.size_c = extent["C"] * samples
        for channel in range(len(pixels.channels), extent["C"]):
            if channel >= sizes["C"]:
                pixels.channels.append(model.Channel(
                    id=f"Channel:{image_index}:{channel}:autodip", samples_per_pixel=samples))
        self.warnings.append(f"image {image_index}: TiffData places planes beyond the declared "
                             f"dimensions ({'; '.join(found)}); kept as part of the image "
                             f"({', '.join(grown)}), no plane dropped")

    def _unreferenced(self, path: Path, referenced: set[int]) -> list[int]:
        """IFDs of ``path`` holding full-resolution planes that no TiffData names."""
        tif = self._cache.get(path)
        missing = []
        for index in range(len(tif.pages)):
            if index in referenced:
                continue
            try:
                page = tif.pages[index]
            except (IndexError, tifffile.TiffFileError):
                continue
            if page is not None and not (int(page.subfiletype) & 1):  # 1: reduced resolution
                missing.append(index)
        return missing

    def _ome_series(self, image_index: int, image) -> SeriesInfo:
        pixels = image.pixels
        path = self.metadata_path
        type_name = pixels.type.value if hasattr(pixels.type, "value") else str(pixels.type)
        if type_name not in _OME_DTYPES:
            raise UnsupportedImageError(path, f"image {image_index}: pixel type {type_name} "
                                              f"is not supported")
        channels = list(pixels.channels)
        samples = int(channels[0].samples_per_pixel or 1) if channels else 1
        if samples < 1 or pixels.size_c % samples:
            raise DimensionError(path, f"image {image_index}: SizeC={pixels.size_c} is not a "
                                       f"multiple of SamplesPerPixel={samples}")
        if any(int(c.samples_per_pixel or samples) != samples for c in channels):
            raise UnsupportedImageError(path, f"image {image_index}: channels with different "
                                              f"SamplesPerPixel")
        stored_c = pixels.size_c // samples
        sizes = {"T": pixels.size_t, "Z": pixels.size_z, "C": stored_c, "S": samples,
                 "Y": pixels.size_y, "X": pixels.size_x}
        _check_plane_limits(path, sizes, f"image {image_index}")
        if channels and len(channels) != stored_c:
            self.warnings.append(f"image {image_index}: {len(channels)} Channel elements for "
                                 f"SizeC={pixels.size_c}")
        order = pixels.dimension_order.value
        planar = bool(samples > 1 and pixels.interleaved is False)
        axes, shape = _layout(order, sizes, planar)
        names: list[str | None] = []
        for c in range(stored_c):
            base_name = channels[c].name if c < len(channels) else None
            names.extend(_sample_names(base_name, samples))
        physical, units = {}, {}
        for letter in "XYZ":
            value = getattr(pixels, f"physical_size_{letter.lower()}")
            unit = getattr(pixels, f"physical_size_{letter.lower()}_unit")
            if value is None:
                continue
            unit_text = getattr(unit, "value", unit) or "µm"
            converted = length_in_micrometres(float(value), str(unit_text))
            if converted is None:  # pixel or reference-frame units: no physical length
                self.warnings.append(f"image {image_index}: PhysicalSize{letter} is in "
                                     f"{unit_text!r}, not a length; not used for the TIFF "
                                     f"resolution")
                continue
            physical[letter], units[letter] = converted[0], str(unit_text)
        increment = None
        if pixels.time_increment is not None:
            unit = getattr(pixels.time_increment_unit, "value", pixels.time_increment_unit) or "s"
            increment = seconds(float(pixels.time_increment), str(unit))
        return SeriesInfo(index=image_index, name=image.name or self.path.name, shape=shape,
                          dtype=np.dtype(_OME_DTYPES[type_name]), axes=axes,
                          channel_names=names, dimension_order=order, sizes=sizes,
                          planar=planar, ome_index=image_index, physical_sizes=physical,
                          physical_units=units, time_increment=increment)

    def _tiffdata_mapping(self, pixels, info: SeriesInfo, base: Path, xml_path: Path,
                          xml_is_tiff: bool) -> list[tuple[Path, int]] | None:
        """(file, IFD) of every page, in dimension order; ``None`` when there is no TiffData."""
        count = info.page_count
        blocks = list(pixels.tiff_data_blocks)
        if not blocks:
            if xml_is_tiff and len(self.ome.images) == 1 and not pixels.bin_data_blocks \
                    and pixels.metadata_only is None:
                self.warnings.append("OME-XML has no TiffData; pages taken in file order")
                return [(xml_path, i) for i in range(count)]
            return None
        mapping: list[tuple[Path, int] | None] = [None] * count
        order = info.dimension_order[2:]
        outside = 0
        for block in blocks:
            first = {"Z": block.first_z or 0, "C": block.first_c or 0, "T": block.first_t or 0}
            if any(first[letter] >= info.sizes[letter] for letter in order):
                # Micro-Manager writes TiffData past SizeT when an acquisition stops early;
                # the declared sizes are authoritative, so such blocks are ignored.
                outside += 1
                continue
            start, stride = 0, 1
            for letter in order:
                start += first[letter] * stride
                stride *= info.sizes[letter]
            path = self._block_path(block, base, xml_path, xml_is_tiff)
            if path is None:  # XML saved from an OME-TIFF: its pixels stayed in that TIFF
                self.warnings.append(f"image {info.index}: TiffData names no file; "
                                     f"metadata only")
                return None
            ifd = block.ifd or 0
            if block.plane_count is not None:
                planes = block.plane_count
            elif "ifd" in block.model_fields_set:
                planes = 1
            else:
                planes = count - start
            if start + planes > count:
                outside += 1
                planes = count - start
            for k in range(planes):
                mapping[start + k] = (path, ifd + k)
        if outside:
            self.warnings.append(f"image {info.index}: {outside} TiffData block(s) reach past "
                                 f"the declared dimensions; ignored")
        holes = sum(entry is None for entry in mapping)
        if holes:
            raise DimensionError(xml_path, f"image {info.index}: {holes} of {count} declared "
                                           f"planes have no TiffData (no pixel data)")
        return mapping  # type: ignore[return-value]

    def _open_generic_tiff(self, tif: tifffile.TiffFile) -> None:
        self.kind = ("micromanager" if tif.is_micromanager else
                     "imagej" if tif.is_imagej else "tiff")
        declared = (tif.imagej_metadata or {}).get("images") if tif.is_imagej else None
        if self.allow_missing and isinstance(declared, int) and declared > len(tif.pages) > 1:
            self.missing.append(f"ImageJ metadata declares {declared} images, the file holds "
                                f"{len(tif.pages)}; read as a stack of {len(tif.pages)}")
        for number, tiff_series in enumerate(tif.series):
            self._add_generic_series(tiff_series, tif, number)
        if not self.series:
            raise NotAnImageError(self.path, "TIFF holds no image series")

    def _add_generic_series(self, tiff_series, tif: tifffile.TiffFile, number: int) -> None:
        """Add TIFF series ``number`` (its position in the file)."""
        axes, shape = tiff_series.axes, tuple(tiff_series.shape)
        page_axes = ""
        for letter in reversed(axes):
            if letter not in "YXS" or letter in page_axes:
                break
            page_axes = letter + page_axes
        if page_axes not in ("YX", "YXS", "SYX"):
            raise UnsupportedImageError(self.path, f"series axes {axes} do not end in YX, YXS or SYX")
        leading_axes, leading_shape = axes[: -len(page_axes)], shape[: -len(page_axes)]
        renamed, split = _rename_axes(leading_axes)
        dtype = np.dtype(tiff_series.dtype)
        if dtype.newbyteorder("=") not in {np.dtype(v) for v in _OME_DTYPES.values()}:
            raise UnsupportedImageError(self.path, f"pixel type {dtype} is not supported")
        dtype = dtype.newbyteorder("=")
        sizes = {"T": 1, "Z": 1, "C": 1, "S": 1}
        for letter, size in zip(renamed, leading_shape):
            if letter in sizes:
                sizes[letter] = size
        sizes["Y"], sizes["X"] = shape[axes.index("Y")], shape[axes.index("X")]
        if "S" in page_axes:
            sizes["S"] = shape[axes.index("S")]
        planar = page_axes == "SYX"
        present = "".join(a for a in reversed(renamed) if a in "TZC")
        order = "XY" + present + "".join(a for a in "ZCT" if a not in present)
        _check_plane_limits(self.path, sizes, f"series {number}")
        n_pages = int(np.prod(leading_shape)) if leading_shape else 1
        pages = list(tiff_series.pages)
        reader_pages, array = None, None
        if len(pages) == n_pages and all(p is not None for p in pages) and \
                tuple(pages[0].shape) == tuple(shape[len(leading_axes):]):
            reader_pages = pages
        elif tiff_series.dataoffset is not None:
            array = np.memmap(self.path, dtype=np.dtype(tiff_series.dtype).newbyteorder(tif.byteorder),
                              mode="r", offset=tiff_series.dataoffset, shape=shape)
        elif tiff_series.size * dtype.itemsize <= MAX_WHOLE_SERIES_BYTES:
            array = tiff_series.asarray()
        else:
            raise UnsupportedImageError(self.path, f"series {number} is stored neither "
                                                   f"one page per plane nor contiguously, and is "
                                                   f"too large to read whole")
        if array is not None:
            array = array.reshape(tuple(leading_shape) + tuple(shape[len(leading_axes):]))
        split_letters = [letter for letter in renamed if letter in split]
        split_sizes = [leading_shape[renamed.index(letter)] for letter in split_letters]
        calibration = tiff_calibration(tif, tiff_series.keyframe, sizes["C"],
                                       sizes["Z"] * sizes["T"])
        self.warnings.extend(note for note in calibration.notes if "ignored" in note
                             or "no physical size" in note)
        levels = [tuple(level.shape[level.axes.index(a)] for a in "YX")
                  for level in getattr(tiff_series, "levels", [])[1:]
                  if "Y" in level.axes and "X" in level.axes]
        storage = _storage_of(tiff_series.keyframe, levels or None)
        base_name = tiff_series.name or self.path.name
        for combo in np.ndindex(*split_sizes) if split_letters else [()]:
            fixed = dict(zip(split_letters, (int(v) for v in combo)))
            view_sizes = dict(sizes)
            view_axes, view_shape = _layout(order, view_sizes, planar)
            suffix = ", ".join(f"{split[a]}={v}" for a, v in fixed.items())
            info = SeriesInfo(index=len(self.series),
                              name=f"{base_name} ({suffix})" if suffix else base_name,
                              shape=view_shape, dtype=dtype, axes=view_axes,
                              channel_names=[name for c in range(sizes["C"])
                                             for name in _sample_names(
                                                 calibration.channel_names[c], sizes["S"])],
                              dimension_order=order, sizes=view_sizes, planar=planar,
                              fixed=fixed, physical_sizes=dict(calibration.sizes),
                              physical_units=dict(calibration.units),
                              time_increment=calibration.time_increment,
                              channel_colors=list(calibration.channel_colors),
                              display_ranges=list(calibration.display_ranges),
                              storage=storage)
            source = _SeriesPages(self.path, renamed, tuple(leading_shape), info,
                                  pages=reader_pages, array=array)
            if reader_pages is not None:
                _check_page(reader_pages[0], info, f"series {number}", self.path)
            self.series.append(info)
            self._sources.append(source)

    def _open_png(self) -> None:
        from PIL import Image

        self.kind = "png"
        try:
            with Image.open(self.path) as image:
                width, height = image.size
                mode = image.mode
                # PIL reports pHYs as dots per inch only when its unit is the metre
                dpi = image.info.get("dpi")
        except (OSError, Image.UnidentifiedImageError, Image.DecompressionBombError) as error:
            raise NotAnImageError(self.path, f"cannot read PNG: {error}") from None
        samples = {"RGB": 3, "RGBA": 4, "LA": 2}.get(mode, 1)
        sizes = {"T": 1, "Z": 1, "C": 1, "S": samples, "Y": height, "X": width}
        _check_plane_limits(self.path, sizes, "PNG header")
        dtype = {"I;16": "uint16", "I;16B": "uint16", "I": "int32", "F": "float32"}.get(mode, "uint8")
        axes, shape = _layout("XYZCT", sizes, False)
        info = SeriesInfo(index=0, name=self.path.name, shape=shape, dtype=np.dtype(dtype),
                          axes=axes, channel_names=_sample_names(None, samples),
                          dimension_order="XYZCT", sizes=sizes)
        if dpi and all(float(d) > 0 for d in dpi[:2]):
            if round(float(dpi[0])) in SCREEN_DPI:
                self.warnings.append(f"PNG pHYs of {float(dpi[0]):g} dots per inch is a screen "
                                     f"default, not a pixel size; ignored")
            else:
                info.physical_sizes = {"X": 25400.0 / float(dpi[0]), "Y": 25400.0 / float(dpi[1])}
                info.physical_units = {"X": "µm", "Y": "µm"}
        self.series.append(info)
        self._sources.append(_PngPage(self.path, info, mode))

    def source_identity(self, series: int) -> dict[str, str]:
        """The source's ``creator`` (OME Creator, else the TIFF Software tag), OME ``uuid``
        and ``image_id`` of ``series``, for the provenance."""
        info = self.series[series]
        creator = uuid_text = image_id = ""
        if self.ome is not None:
            creator = self.ome.creator or ""
            uuid_text = self.ome.uuid or ""
            if info.ome_index is not None and info.ome_index < len(self.ome.images):
                image_id = self.ome.images[info.ome_index].id
        if not creator and _is_tiff(self.path):
            with contextlib.suppress(ImageReadError, IndexError, tifffile.TiffFileError):
                creator = str(self._cache.get(self.path).pages.first.software or "")
        return {"creator": creator, "uuid": uuid_text, "image_id": image_id}

    # -- reading
    def pages(self, series: int = 0) -> Iterator[tuple[list[PlaneKey], np.ndarray]]:
        """Every page of one series in storage order: its plane keys and its pixels.

        A page is one plane, or one plane of every RGB sample.
        """
        info = self.series[series]
        source = self._sources[series]
        if source is None or not info.has_pixels:
            raise ImageReadError(self.path, f"image {series} has no pixel data in a TIFF "
                                            f"(metadata only)")
        for index in range(info.page_count):
            position = {**info.page_position(index), **info.fixed}
            try:
                with _tifffile_log() as log:
                    page = source.read(position)
            except tifffile.TiffFileError as error:
                raise TruncatedImageError(self.path, f"damaged or truncated TIFF: {error}") from None
            self._absorb_log(log, self.path)
            yield info.plane_keys(index), page

    def planes(self, series: int = 0) -> Iterator[tuple[PlaneKey, np.ndarray]]:
        """Every 2-D plane of one series, in storage order, one page in memory at a time."""
        info = self.series[series]
        for keys, page in self.pages(series):
            yield from zip(keys, info.split_page(page))

    def read_series(self, series: int = 0) -> np.ndarray:
        """The whole series in memory (tests and small files only), shaped like ``shape``."""
        info = self.series[series]
        pages = [page for _, page in self.pages(series)]
        order = info.dimension_order[2:]
        stacked = np.stack(pages).reshape(
            tuple(info.sizes[a] for a in reversed(order)) + info.page_shape)
        return stacked.reshape(info.shape)


class _PngPage:
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


def _is_tiff(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) in _TIFF_MAGICS
    except OSError:
        return False


def _ranges(numbers: Sequence[int]) -> str:
    """``1-3, 7`` for [1, 2, 3, 7]."""
    parts, start = [], None
    for index, number in enumerate(numbers):
        if start is None:
            start = number
        if index + 1 == len(numbers) or numbers[index + 1] != number + 1:
            parts.append(f"{start}" if start == number else f"{start}-{number}")
            start = None
    return ", ".join(parts)


def _sample_names(channel_name: str | None, samples: int) -> list[str | None]:
    if samples == 1:
        return [channel_name]
    letters = {2: "LA", 3: "RGB", 4: "RGBA"}.get(samples)
    labels = list(letters) if letters else [f"S{s}" for s in range(samples)]
    return [f"{channel_name}:{label}" if channel_name else label for label in labels]


def _rename_axes(axes: str) -> tuple[str, dict[str, str]]:
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


# --------------------------------------------------------------------------- writing

def new_uuid() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def fsync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


class AtomicFile:
    """A temporary file beside ``out_path`` that becomes ``out_path`` only when published.

    ``publish`` fsyncs the file, renames it over ``out_path`` and fsyncs the folder, so a
    reader (or a crash) never sees a half-written output; ``discard`` removes it.
    """

    def __init__(self, out_path: str | Path) -> None:
        from .outputs import create_temporary

        self.out_path = Path(out_path)
        # Mode 0666 less the umask (or a default ACL), as a plain open() would give:
        # mkstemp's 0600 would survive the rename and lock the group out.
        descriptor, self.temp = create_temporary(self.out_path)
        os.close(descriptor)

    def publish(self) -> None:
        with open(self.temp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(self.temp, self.out_path)
        fsync_directory(self.out_path.parent)

    def discard(self) -> None:
        self.temp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_output(out_path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``out_path``; published on success, removed on error."""
    target = AtomicFile(out_path)
    try:
        yield target.temp
        target.publish()
    except BaseException:
        target.discard()
        raise


def atomic_write_tiff(out_path: Path, arrays: list[tuple[np.ndarray, str]],
                      description: str | None = None) -> None:
    """Write in-memory series to ``out_path`` atomically (small outputs; tests, calibration)."""
    with atomic_output(out_path) as temp:
        with tifffile.TiffWriter(temp, bigtiff=True, ome=description is None) as writer:
            for number, (array, axes) in enumerate(arrays):
                photometric = "rgb" if axes.endswith("S") and array.shape[-1] in (3, 4) else "minisblack"
                kwargs = {"metadata": {"axes": axes}} if description is None else {
                    "metadata": None, "description": description if number == 0 else None}
                writer.write(array, photometric=photometric, **kwargs)


def denoised_name(name: str | None) -> str:
    """The output image's name: the source's, marked as denoised."""
    return f"{name or 'image'} (AUTO-DIP denoised)"


def output_ome(image: ImageFile, file_name: str, file_uuid: str, creator: str | None = None):
    """The output's OME model: the source's, with what must change for the new file changed.

    Kept: instruments, channels, physical sizes, planes, annotations, everything else.
    Changed: the document UUID, ``Creator`` (the software that wrote the file), each
    written image's name (marked denoised), its TiffData (one block pointing into the
    single output file), ``BigEndian`` (outputs are little-endian), ``Interleaved`` (the
    sample layout written), and ``BinaryOnly`` is dropped (the output holds its own
    metadata). Files without OME get an OME model built from what the file states:
    dimensions, pixel type, physical sizes with their units (ImageJ ``unit``, TIFF
    resolution tags), ``TimeIncrement`` (ImageJ ``finterval``), channel names (ImageJ
    labels) and colours (ImageJ LUTs).
    """
    from ome_types import model

    if image.ome is not None:
        ome = image.ome.model_copy(deep=True)
        ome.binary_only = None
    else:
        ome = model.OME()
        for info in image.series:
            channels = []
            for c in range(info.sizes["C"]):
                extra: dict = {}
                name = info.channel_names[c * info.samples] if info.samples == 1 and \
                    c < len(info.channel_names) else None
                if name:
                    extra["name"] = name
                colour = info.channel_colors[c] if c < len(info.channel_colors) else None
                if colour is not None:
                    extra["color"] = model.Color(tuple(colour))
                channels.append(model.Channel(id=f"Channel:{info.index}:{c}",
                                              samples_per_pixel=info.samples, **extra))
            physical: dict = {}
            for letter, value in info.physical_sizes.items():
                # in micrometres whatever unit the file used: readers that ignore
                # PhysicalSize*Unit (bioio, napari plugins) then still read it right
                physical[f"physical_size_{letter.lower()}"] = value
                physical[f"physical_size_{letter.lower()}_unit"] = model.UnitsLength("µm")
            if info.time_increment is not None:
                physical["time_increment"] = info.time_increment
                physical["time_increment_unit"] = model.UnitsTime("s")
            pixels = model.Pixels(
                id=f"Pixels:{info.index}", dimension_order=info.dimension_order,
                type=_DTYPE_OME[np.dtype(info.dtype)], size_x=info.sizes["X"],
                size_y=info.sizes["Y"], size_z=info.sizes["Z"],
                size_c=info.sizes["C"] * info.samples, size_t=info.sizes["T"],
                channels=channels, metadata_only=None, **physical)
            ome.images.append(model.Image(id=f"Image:{info.index}", name=info.name, pixels=pixels))
    ome.uuid = file_uuid
    if creator:
        ome.creator = creator
    first_ifd = 0
    for info in image.series:
        target = ome.images[info.ome_index if info.ome_index is not None else info.index]
        if not info.has_pixels:  # its pixels are not in the output: say so, point nowhere
            if target.pixels.tiff_data_blocks:
                target.pixels.tiff_data_blocks = []
                target.pixels.metadata_only = model.MetadataOnly()
            continue
        target.name = denoised_name(target.name or image.path.name)
        pixels = target.pixels
        pixels.tiff_data_blocks = [model.TiffData(
            ifd=first_ifd, plane_count=info.page_count,
            uuid=model.TiffData.UUID(value=file_uuid, file_name=file_name))]
        pixels.bin_data_blocks = []
        pixels.metadata_only = None
        pixels.big_endian = False
        if info.samples > 1:
            pixels.interleaved = not info.planar
        first_ifd += info.page_count
    return ome


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


def _tiles(pages: Iterable[np.ndarray], tile: tuple[int, int], planar: bool,
           samples: int) -> Iterator[np.ndarray]:
    """The tiles of each page in TIFF order (per sample plane when planar)."""
    length, width = tile
    for page in pages:
        planes = [page[s] for s in range(samples)] if planar and samples > 1 else [page]
        for plane in planes:
            for y in range(0, plane.shape[0], length):
                for x in range(0, plane.shape[1], width):
                    yield plane[y:y + length, x:x + width]


def _unused_annotation_id(ome, stem: str) -> str:
    used = {a.id for a in (ome.structured_annotations or [])}
    number = 0
    while f"Annotation:{stem}:{number}" in used:
        number += 1
    return f"Annotation:{stem}:{number}"


class OmeTiffWriter:
    """Stream the pages of an output OME-TIFF to a temporary file; publish it atomically.

    ``write_series`` consumes an iterable of pages (each shaped like the series'
    ``page_shape``), so the denoiser can feed planes as they finish; ``commit`` adds the
    per-image annotations (known only at the end), checks the OME-XML against the schema,
    rewrites it in place with ``tifffile.tiffcomment``, fsyncs and renames. Leaving the
    ``with`` block without ``commit`` (or by an exception) deletes the temporary file and
    leaves ``out_path`` untouched.
    """

    def __init__(self, out_path: str | Path, image: ImageFile, software: str = "autodip-watch") -> None:
        self.out_path = Path(out_path)
        self.image = image
        for source in dict.fromkeys(image.source_files + [image.path]):
            if _same_file(source, self.out_path):
                raise ValueError(f"output path {self.out_path} is an input file; "
                                 f"refusing to overwrite it")
        self.file_uuid = new_uuid()
        self.ome = output_ome(image, self.out_path.name, self.file_uuid, creator=software)
        #: Elements of the source's metadata left out so that the output is schema-valid.
        self.notes: list[str] = []
        self.ome = _schema_valid(self.ome, self.notes)
        self.software = software
        self._target: AtomicFile | None = None
        self._writer: tifffile.TiffWriter | None = None
        self._written: list[int] = []
        self._scratch: list[Path] = []
        #: Per written series: codec, predictor, tiles and pyramid levels (for reports).
        self.layouts: dict[int, OutputLayout] = {}

    def __enter__(self) -> "OmeTiffWriter":
        import ome_types

        self._target = AtomicFile(self.out_path)
        total = sum(s.page_count * s.page_nbytes for s in self.image.series if s.has_pixels)
        self._writer = tifffile.TiffWriter(self._target.temp, bigtiff=total > BIGTIFF_THRESHOLD,
                                           ome=False)
        self._placeholder = ome_types.to_xml(self.ome).encode("utf-8")
        return self

    def _pending(self) -> list[int]:
        return [s.index for s in self.image.series if s.has_pixels and s.index not in self._written]

    def write_series(self, series: int, pages: Iterable[np.ndarray]) -> None:
        """Write every page of ``series``, in storage order; series go in index order."""
        if self._writer is None:
            raise RuntimeError("OmeTiffWriter is not open (use it in a with block)")
        info = self.image.series[series]
        pending = self._pending()
        if not pending or pending[0] != series:
            raise ValueError(f"series {series} cannot be written now; next is {pending[:1]}")
        count = 0

        def checked() -> Iterator[np.ndarray]:
            nonlocal count
            for page in pages:
                page = np.asarray(page)
                if page.shape != info.page_shape or page.dtype != info.dtype:
                    raise ValueError(f"page {count} of series {series} is {page.shape} "
                                     f"{page.dtype}, expected {info.page_shape} {info.dtype}")
                count += 1
                yield page

        photometric = "rgb" if info.samples in (3, 4) else "minisblack"
        options: dict = {}
        if info.samples > 1:
            options["planarconfig"] = "separate" if info.planar else "contig"
            extra = info.samples - (3 if photometric == "rgb" else 1)
            if extra:
                options["extrasamples"] = ["unspecified"] * extra
        layout = output_layout(info)
        self.layouts[series] = layout
        # one thread: pages are encoded as they stream in, without a pool buffering them
        options.update(compression=layout.compression, maxworkers=1,
                       predictor=layout.predictor if layout.predictor > 1 else None)
        size_x, size_y = info.physical_sizes.get("X"), info.physical_sizes.get("Y")
        resolution = None
        if size_x and size_y:  # the OME physical size, as TIFF readers without OME see it
            resolution = (1e4 / size_x, 1e4 / size_y)
            options.update(resolutionunit="CENTIMETER")
        levels = self._level_stores(info, layout)
        stream = checked() if not levels else _store_levels(checked(), levels, info)
        if layout.tile is not None:
            stream = _tiles(stream, layout.tile, info.planar, info.samples)
        self._writer.write(stream, shape=(info.page_count, *info.page_shape),
                           dtype=info.dtype, photometric=photometric, metadata=None,
                           software=self.software, tile=layout.tile, resolution=resolution,
                           subifds=len(levels) or None,
                           description=None if self._written else self._placeholder, **options)
        if count != info.page_count:
            raise ValueError(f"series {series}: {count} pages given, {info.page_count} expected")
        for (shape, factor, store) in levels:  # sub-resolutions, each a SubIFD of its page
            level_tile = layout.tile if layout.tile and min(shape) > max(layout.tile) else None
            level_pages = (store[index] for index in range(info.page_count))
            if level_tile is not None:
                level_pages = _tiles(level_pages, level_tile, info.planar, info.samples)
            level_resolution = None if resolution is None else (
                resolution[0] / factor[1], resolution[1] / factor[0])
            self._writer.write(level_pages, shape=store.shape, dtype=info.dtype,
                               photometric=photometric, metadata=None, subfiletype=1,
                               tile=level_tile, resolution=level_resolution,
                               software=self.software, **options)
            store.flush()
        self._drop_scratch()
        self._written.append(series)

    def _level_stores(self, info: SeriesInfo, layout: OutputLayout) -> list:
        """(shape, factor, memory-mapped scratch array) per pyramid level, beside the output.

        Levels are recomputed from the denoised full-resolution pages as they stream
        past; they are kept on disk (not in memory) until the full-resolution pages are
        written, because TIFF puts a page's SubIFDs after it.
        """
        stores = []
        for shape in layout.levels:
            factor = (max(1, round(info.sizes["Y"] / shape[0])),
                      max(1, round(info.sizes["X"] / shape[1])))
            if info.samples == 1:
                page_shape = shape
            elif info.planar:
                page_shape = (info.samples, *shape)
            else:
                page_shape = (*shape, info.samples)
            descriptor, name = tempfile.mkstemp(prefix=f".{self.out_path.name}.level.",
                                                suffix=".tmp", dir=self.out_path.parent)
            os.close(descriptor)
            scratch = Path(name)
            self._scratch.append(scratch)
            store = np.memmap(scratch, dtype=info.dtype, mode="w+",
                              shape=(info.page_count, *page_shape))
            stores.append((tuple(shape), factor, store))
        return stores

    def _drop_scratch(self) -> None:
        for scratch in self._scratch:
            scratch.unlink(missing_ok=True)
        self._scratch.clear()

    def commit(self, annotations: Mapping[int, Sequence[tuple[str, str]]] | None = None,
               namespace: str | None = None, description: str | None = None) -> None:
        """Attach one MapAnnotation per series (``index -> [(key, value), ...]``) and publish."""
        import ome_types
        from ome_types import model

        if self._writer is None or self._target is None:
            raise RuntimeError("OmeTiffWriter is not open")
        if self._pending():
            raise ValueError(f"series {self._pending()} not written")
        for series, entries in (annotations or {}).items():
            info = self.image.series[series]
            target = self.ome.images[info.ome_index if info.ome_index is not None else info.index]
            annotation = model.MapAnnotation(
                id=_unused_annotation_id(self.ome, "autodip-watch"), namespace=namespace,
                description=description,
                value=model.Map(ms=[model.Map.M(k=k, value=str(v)) for k, v in entries]))
            if self.ome.structured_annotations is None:
                self.ome.structured_annotations = model.StructuredAnnotations()
            self.ome.structured_annotations.append(annotation)
            target.annotation_refs.append(model.AnnotationRef(id=annotation.id))
        xml = ome_types.to_xml(self.ome)
        problem = _schema_problem(xml)
        if problem is not None:  # never publish an output that is not schema-valid
            raise RuntimeError(f"output OME-XML is not schema-valid: {problem}")
        self._writer.close()
        self._writer = None
        tifffile.tiffcomment(self._target.temp, comment=xml.encode("utf-8"))
        self._target.publish()
        self._target = None

    def __exit__(self, *exc) -> None:
        self._drop_scratch()
        try:
            if self._writer is not None:
                writer, self._writer = self._writer, None
                writer.close()
        finally:
            if self._target is not None:  # not committed: nothing may appear at out_path
                self._target.discard()
                self._target = None


#: Elements an output cannot do without; a schema error in one of them is not repaired
#: by dropping it (the commit then refuses to publish).
_ESSENTIAL = {"OME", "Image", "Pixels", "Channel", "TiffData", "UUID", "StructuredAnnotations"}


@functools.cache
def _ome_schema():
    from lxml import etree

    import ome_types

    return etree.XMLSchema(etree.parse(str(Path(ome_types.__file__).parent / "ome-2016-06.xsd")))


def _schema_valid(ome, notes: list[str], attempts: int = 100):
    """``ome``, with the elements that keep it from being schema-valid dropped.

    The lenient reader accepts structure the XSD refuses (an ROI without a shape, a
    BinaryFile with neither data nor a reference); the output must be valid, so each
    such element (never an Image, Pixels, Channel or TiffData) is dropped, with a note.
    A document whose fault is in an essential element is returned as it is (and the
    commit refuses to publish it).
    """
    from lxml import etree

    import ome_types

    schema = _ome_schema()
    text = ome_types.to_xml(ome).encode("utf-8")
    dropped = False
    for _ in range(attempts):
        root = etree.fromstring(text)
        if schema.validate(root):
            break
        error = schema.error_log[0]
        culprit = next((e for e in root.iter() if isinstance(e.tag, str)
                        and e.sourceline == error.line), None)
        name = etree.QName(culprit).localname if culprit is not None else None
        if culprit is None or name in _ESSENTIAL or culprit.getparent() is None:
            break
        notes.append(f"output OME-XML: {name} {culprit.get('ID', '')} left out, it is not "
                     f"schema-valid ({error.message})".replace("  ", " "))
        culprit.getparent().remove(culprit)
        text = etree.tostring(root, pretty_print=True)
        dropped = True
    if not dropped:
        return ome
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ome_types.from_xml(text, validate=False)


def _store_levels(pages: Iterable[np.ndarray], levels: list, info: SeriesInfo) -> Iterator[np.ndarray]:
    """Pass pages through, writing each page's downsampled levels to their stores."""
    samples_axis = None if info.samples == 1 else (0 if info.planar else -1)
    for index, page in enumerate(pages):
        for shape, factor, store in levels:
            store[index] = downsample(page, factor, shape, samples_axis)
        yield page


def _same_file(source: Path, out_path: Path) -> bool:
    try:
        if source.resolve() == out_path.resolve():
            return True
        return out_path.exists() and source.exists() and out_path.samefile(source)
    except OSError:
        return False


def diff_ome(before, after, path: str = "") -> list[str]:
    """Dotted paths where two OME models differ (lists compared element by element).

    Used to show that an output differs from its input only where intended.
    """
    left = before.model_dump() if hasattr(before, "model_dump") else before
    right = after.model_dump() if hasattr(after, "model_dump") else after
    return _diff(left, right, path)


def _diff(left, right, path: str) -> list[str]:
    if isinstance(left, dict) and isinstance(right, dict):
        out = []
        for key in list(left) + [k for k in right if k not in left]:
            out.extend(_diff(left.get(key), right.get(key), f"{path}.{key}" if path else str(key)))
        return out
    if isinstance(left, list) and isinstance(right, list):
        if len(left) != len(right):
            return [path]
        out = []
        for index, (a, b) in enumerate(zip(left, right)):
            out.extend(_diff(a, b, f"{path}[{index}]"))
        return out
    return [] if left == right else [path]
