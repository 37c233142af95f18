"""Write the denoised OME-TIFF: the source's metadata, streamed pages, atomic publish.

Pages stream into tifffile as the denoiser produces them (a stack larger than memory can
be written); the OME-XML, which holds the provenance known only at the end, is written
into the file in place, checked against the OME schema, and the file is published
atomically (``atomic.py``).
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import tifffile

from .atomic import AtomicFile, create_scratch
from .layout import OutputLayout, output_layout, store_levels, tiles_of
from .model import DTYPE_OME, SeriesInfo
from .omexml import schema_error, schema_problem
from .reader import ImageFile


#: Past this output size the file is written as BigTIFF.
BIGTIFF_THRESHOLD = (1 << 32) - (64 << 20)


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
                type=DTYPE_OME[np.dtype(info.dtype)], size_x=info.sizes["X"],
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


def unused_annotation_id(ome, stem: str) -> str:
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
            if same_file(source, self.out_path):
                raise ValueError(f"output path {self.out_path} is an input file; "
                                 f"refusing to overwrite it")
        self.file_uuid = new_uuid()
        self.ome = output_ome(image, self.out_path.name, self.file_uuid, creator=software)
        #: Elements of the source's metadata left out so that the output is schema-valid.
        self.notes: list[str] = []
        self.ome = schema_valid(self.ome, self.notes)
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
        stream = checked() if not levels else store_levels(checked(), levels, info)
        if layout.tile is not None:
            stream = tiles_of(stream, layout.tile, info.planar, info.samples)
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
                level_pages = tiles_of(level_pages, level_tile, info.planar, info.samples)
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
            scratch = create_scratch(self.out_path, "level")
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
                id=unused_annotation_id(self.ome, "autodip-watch"), namespace=namespace,
                description=description,
                value=model.Map(ms=[model.Map.M(k=k, value=str(v)) for k, v in entries]))
            if self.ome.structured_annotations is None:
                self.ome.structured_annotations = model.StructuredAnnotations()
            self.ome.structured_annotations.append(annotation)
            target.annotation_refs.append(model.AnnotationRef(id=annotation.id))
        xml = ome_types.to_xml(self.ome)
        problem = schema_problem(xml)
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


def schema_valid(ome, notes: list[str], attempts: int = 100):
    """``ome``, with the elements that keep it from being schema-valid dropped.

    The lenient reader accepts structure the XSD refuses (an ROI without a shape, a
    BinaryFile with neither data nor a reference); the output must be valid, so each
    such element (never an Image, Pixels, Channel or TiffData) is dropped, with a note.
    A document whose fault is in an essential element is returned as it is (and the
    commit refuses to publish it).
    """
    from lxml import etree

    import ome_types

    text = ome_types.to_xml(ome).encode("utf-8")
    dropped = False
    for _ in range(attempts):
        root = etree.fromstring(text)
        error = schema_error(root)
        if error is None:
            break
        line, message = error
        culprit = next((e for e in root.iter() if isinstance(e.tag, str)
                        and e.sourceline == line), None)
        name = etree.QName(culprit).localname if culprit is not None else None
        if culprit is None or name in _ESSENTIAL or culprit.getparent() is None:
            break
        notes.append(f"output OME-XML: {name} {culprit.get('ID', '')} left out, it is not "
                     f"schema-valid ({message})".replace("  ", " "))
        culprit.getparent().remove(culprit)
        text = etree.tostring(root, pretty_print=True)
        dropped = True
    if not dropped:
        return ome
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ome_types.from_xml(text, validate=False)


def same_file(source: Path, out_path: Path) -> bool:
    try:
        if source.resolve() == out_path.resolve():
            return True
        return out_path.exists() and source.exists() and out_path.samefile(source)
    except OSError:
        return False


def new_uuid() -> str:
    return f"urn:uuid:{uuid.uuid4()}"
