"""The OME part of :class:`~autodip_watch.io.reader.ImageFile`: series from the OME model,
their pixels located through TiffData blocks and checked before anything is read.

A mixin: it works on the reader's state (``self.series``, ``self.warnings``,
``self.missing``, its TIFF cache), which ``reader.py`` owns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from .errors import (DimensionError, ImageReadError, MalformedMetadataError, MissingFileError,
                     UnsupportedImageError)
from .model import (OME_DTYPES, SeriesInfo, axes_layout, check_plane_limits, sample_names,
                    storage_of)
from .omexml import member_path
from .pages import OmePages, check_page, format_ranges, is_tiff
from .physical import length_in_micrometres, resolution_sizes, seconds


class OmeSeries:

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
            source = OmePages(self._cache, mapping, info)
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
            self._check_first_page(image_index, info, pixels, mapping, source)
            pixel_images += 1
            self.series.append(info)
            self._sources.append(source)
        self.source_files = files
        if xml_is_tiff and xml_path in referenced:
            self.unreferenced_pages = self._unreferenced(xml_path, referenced[xml_path])
            if self.unreferenced_pages:
                self.warnings.append(
                    f"{xml_path.name}: TIFF pages (IFD) {format_ranges(self.unreferenced_pages)} hold "
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

    def _check_first_page(self, image_index: int, info: SeriesInfo, pixels, mapping,
                          source: OmePages) -> None:
        """The first page of an image decides its storage and sample layout, and is
        checked against the metadata; calibration found only in its TIFF tags is copied
        into the OME model."""
        first = next(i for i, entry in enumerate(mapping) if entry is not None)
        page, path = source.page(info.page_position(first))
        if info.samples > 1:  # the pages, not Pixels@Interleaved, say how samples are stored
            info.planar = page.keyframe.planarconfig == 2
            info.axes, info.shape = axes_layout(info.dimension_order, info.sizes, info.planar)
        check_page(page, info, f"image {image_index}", path)
        info.storage = storage_of(page)
        if "X" not in info.physical_sizes:  # calibration that lives in the TIFF tags
            sizes, notes = resolution_sizes(page)
            self.warnings.extend(f"image {image_index}: {note}" for note in notes)
            for letter, value in sizes.items():
                info.physical_sizes[letter], info.physical_units[letter] = value, "µm"
                setattr(pixels, f"physical_size_{letter.lower()}", value)
                from ome_types.model import UnitsLength

                setattr(pixels, f"physical_size_{letter.lower()}_unit", UnitsLength("µm"))

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
        path = member_path(base, block.uuid.file_name, xml_path)
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
            if path is None or not path.exists() or not is_tiff(path):
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
        if type_name not in OME_DTYPES:
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
        check_plane_limits(path, sizes, f"image {image_index}")
        if channels and len(channels) != stored_c:
            self.warnings.append(f"image {image_index}: {len(channels)} Channel elements for "
                                 f"SizeC={pixels.size_c}")
        order = pixels.dimension_order.value
        planar = bool(samples > 1 and pixels.interleaved is False)
        axes, shape = axes_layout(order, sizes, planar)
        names: list[str | None] = []
        for c in range(stored_c):
            base_name = channels[c].name if c < len(channels) else None
            names.extend(sample_names(base_name, samples))
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
                          dtype=np.dtype(OME_DTYPES[type_name]), axes=axes,
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
