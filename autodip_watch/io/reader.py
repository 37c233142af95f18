"""Read planes one at a time from OME-TIFF, TIFF, PNG and OME-XML.

Reading never loads a whole stack: a plane comes from its own TIFF page, from a memory
map of contiguous pixel data, or (PNG only, which cannot be read partially) from the one
decoded image (``pages.py``).

OME-XML is untrusted input. It is screened with defusedxml (no DTD, no entity
declarations, no external references) before ome-types or tifffile parse it
(``omexml.py``), and the dimensions it declares are checked against limits and against
the TIFF pages before anything is allocated. Every failure is an
:class:`~autodip_watch.io.errors.ImageReadError` subclass whose message names the file
and the problem.

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
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

from .errors import (DimensionError, ImageReadError, MalformedMetadataError, MissingFileError,
                     NotAnImageError, TruncatedImageError, UnsupportedImageError)
from .model import (DTYPE_OME, OME_DTYPES, PlaneKey, SeriesInfo, check_plane_limits,
                    axes_layout, rename_axes, sample_names, storage_of)
from .ome_series import OmeSeries
from .omexml import MAX_XML_BYTES, member_path, parse_ome_xml
from .pages import (PNG_MAGIC, TIFF_MAGICS, MAX_WHOLE_SERIES_BYTES, check_page, is_tiff,
                    PngPage, SeriesPages, TiffCache, tifffile_log)
from .physical import SCREEN_DPI, tiff_calibration


class ImageFile(OmeSeries):
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
        self._cache = TiffCache()
        try:
            with tifffile_log() as log:
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
        if head[:4] in TIFF_MAGICS:
            self._open_tiff()
        elif head[:8] == PNG_MAGIC:
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
                xml_source = member_path(self.path.parent, ome.binary_only.metadata_file, self.path)
                if not xml_source.exists():
                    raise MissingFileError(xml_source, f"metadata file of the multi-file set "
                                                       f"that {self.path.name} belongs to is missing")
                description = self._metadata_text(xml_source)
                ome = self._parse(description, xml_source)
                if ome.binary_only is not None:
                    raise MalformedMetadataError(xml_source, "metadata file is itself BinaryOnly")
            self.metadata_path = xml_source
            self._open_ome(ome, xml_source, xml_is_tiff=is_tiff(xml_source))
            if self.kind == "ome-tiff" and tif.is_micromanager:
                self.kind = "micromanager"
            return
        self._open_generic_tiff(tif)

    def _metadata_text(self, path: Path) -> str:
        if is_tiff(path):
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
        if not is_tiff(source):
            return {}
        try:
            keyframe = self._cache.get(source).pages.first.keyframe
            hints: dict[str, object] = {"SizeX": keyframe.imagewidth,
                                        "SizeY": keyframe.imagelength}
            if keyframe.dtype is not None and np.dtype(keyframe.dtype).newbyteorder("=") in DTYPE_OME:
                hints["Type"] = DTYPE_OME[np.dtype(keyframe.dtype).newbyteorder("=")]
            return hints
        except (ImageReadError, IndexError, tifffile.TiffFileError, ValueError):
            return {}

    def _open_xml(self) -> None:
        text = self._metadata_text(self.path)
        ome = self._parse(text, self.path)
        if ome.binary_only is not None:
            raise MalformedMetadataError(self.path, "a BinaryOnly OME-XML file holds no metadata")
        self._open_ome(ome, self.path, xml_is_tiff=False)

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
        renamed, split = rename_axes(leading_axes)
        dtype = np.dtype(tiff_series.dtype)
        if dtype.newbyteorder("=") not in {np.dtype(v) for v in OME_DTYPES.values()}:
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
        check_plane_limits(self.path, sizes, f"series {number}")
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
        storage = storage_of(tiff_series.keyframe, levels or None)
        base_name = tiff_series.name or self.path.name
        for combo in np.ndindex(*split_sizes) if split_letters else [()]:
            fixed = dict(zip(split_letters, (int(v) for v in combo)))
            view_sizes = dict(sizes)
            view_axes, view_shape = axes_layout(order, view_sizes, planar)
            suffix = ", ".join(f"{split[a]}={v}" for a, v in fixed.items())
            info = SeriesInfo(index=len(self.series),
                              name=f"{base_name} ({suffix})" if suffix else base_name,
                              shape=view_shape, dtype=dtype, axes=view_axes,
                              channel_names=[name for c in range(sizes["C"])
                                             for name in sample_names(
                                                 calibration.channel_names[c], sizes["S"])],
                              dimension_order=order, sizes=view_sizes, planar=planar,
                              fixed=fixed, physical_sizes=dict(calibration.sizes),
                              physical_units=dict(calibration.units),
                              time_increment=calibration.time_increment,
                              channel_colors=list(calibration.channel_colors),
                              display_ranges=list(calibration.display_ranges),
                              storage=storage)
            source = SeriesPages(self.path, renamed, tuple(leading_shape), info,
                                  pages=reader_pages, array=array)
            if reader_pages is not None:
                check_page(reader_pages[0], info, f"series {number}", self.path)
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
        check_plane_limits(self.path, sizes, "PNG header")
        dtype = {"I;16": "uint16", "I;16B": "uint16", "I": "int32", "F": "float32"}.get(mode, "uint8")
        axes, shape = axes_layout("XYZCT", sizes, False)
        info = SeriesInfo(index=0, name=self.path.name, shape=shape, dtype=np.dtype(dtype),
                          axes=axes, channel_names=sample_names(None, samples),
                          dimension_order="XYZCT", sizes=sizes)
        if dpi and all(float(d) > 0 for d in dpi[:2]):
            if round(float(dpi[0])) in SCREEN_DPI:
                self.warnings.append(f"PNG pHYs of {float(dpi[0]):g} dots per inch is a screen "
                                     f"default, not a pixel size; ignored")
            else:
                info.physical_sizes = {"X": 25400.0 / float(dpi[0]), "Y": 25400.0 / float(dpi[1])}
                info.physical_units = {"X": "µm", "Y": "µm"}
        self.series.append(info)
        self._sources.append(PngPage(self.path, info, mode))

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
        if not creator and is_tiff(self.path):
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
                with tifffile_log() as log:
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


