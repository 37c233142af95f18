"""Reading every supported layout one plane at a time, and streaming atomic OME-TIFF output."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
import uuid
from pathlib import Path

import numpy as np
import ome_types
import pytest
import tifffile
from ome_types import model
from PIL import Image

from autodip_watch.io.reader import ImageFile
from autodip_watch.io.errors import ImageReadError, MissingFileError
from autodip_watch.io.writer import OmeTiffWriter
from helpers.ome_diff import diff_ome
from helpers.omefiles import dimension_order, ome_model, structured, write_ome_tiff, write_pages


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def copy_through(image: ImageFile, out: Path) -> Path:
    """Write ``image`` unchanged through the streaming writer (what the pipeline does for copies)."""
    with OmeTiffWriter(out, image) as writer:
        for info in image.series:
            if info.has_pixels:
                writer.write_series(info.index, (page for _, page in image.pages(info.index)))
        writer.commit({info.index: [("test", "copy")] for info in image.series if info.has_pixels},
                      namespace="urn:autodip-watch:test")
    return out


# --------------------------------------------------------------------------- OME-TIFF

@pytest.mark.parametrize("axes", ["TZCYX", "TCZYX", "CTZYX", "CZTYX", "ZTCYX", "ZCTYX"])
def test_every_dimension_order_reads_like_tifffile(tmp_path, axes):
    shape = dict(T=2, Z=3, C=2, Y=12, X=10)
    data = structured(tuple(shape[a] for a in axes), np.uint16)
    path = tmp_path / "order.ome.tif"
    write_ome_tiff(path, data, axes)
    with ImageFile(path) as image:
        info = image.series[0]
        assert info.dimension_order == dimension_order(axes)
        assert info.axes == tifffile.TiffFile(path).series[0].axes == axes
        assert info.shape == data.shape and info.channel_count == 2 and info.plane_count == 12
        np.testing.assert_array_equal(image.read_series(0), data)
        keys = [key for key, _ in image.planes(0)]
    c_index = axes.index("C")
    # plane keys name every position, and the logical channel is the C index
    for key, (index, plane) in zip(keys, enumerate(data.reshape(-1, 12, 10))):
        position = dict(key.position)
        assert key.channel == position["C"]
        selector = tuple(position[a] for a in axes[:3])
        np.testing.assert_array_equal(data[selector], plane)
        assert selector[c_index] == key.channel


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int8", "int16", "uint32", "float32"])
def test_dtypes_round_trip_through_the_writer(tmp_path, dtype):
    data = structured((3, 16, 20), dtype)
    source = tmp_path / f"in-{dtype}.ome.tif"
    write_ome_tiff(source, data, "CYX")
    out = tmp_path / f"out-{dtype}.ome.tif"
    with ImageFile(source) as image:
        copy_through(image, out)
    with tifffile.TiffFile(out) as tif:
        series = tif.series[0]
        assert (series.shape, series.axes, series.dtype) == (data.shape, "CYX", np.dtype(dtype))
        np.testing.assert_array_equal(series.asarray(), data)
    ome_types.from_tiff(out, validate=True)


@pytest.mark.parametrize("planar", [False, True])
def test_rgb_samples_are_channels(tmp_path, planar):
    data = structured((3, 24, 20), np.uint8) if planar else structured((24, 20, 3), np.uint8)
    axes = "SYX" if planar else "YXS"
    source = tmp_path / "rgb.ome.tif"
    write_ome_tiff(source, data, axes, channels=[{"name": "BPAE"}])
    with ImageFile(source) as image:
        info = image.series[0]
        assert (info.samples, info.planar, info.axes, info.channel_count) == (3, planar, axes, 3)
        assert info.channel_names == ["BPAE:R", "BPAE:G", "BPAE:B"]
        planes = list(image.planes(0))
        assert [key.channel for key, _ in planes] == [0, 1, 2]
        for s, (_, plane) in enumerate(planes):
            np.testing.assert_array_equal(plane, data[s] if planar else data[..., s])
        copy_through(image, tmp_path / "rgb-out.ome.tif")
    with tifffile.TiffFile(tmp_path / "rgb-out.ome.tif") as tif:
        assert tif.series[0].axes == axes
        np.testing.assert_array_equal(tif.series[0].asarray(), data)


def test_multi_image_file(tmp_path):
    path = tmp_path / "two.ome.tif"
    first, second = structured((2, 8, 10), np.uint16), structured((3, 6, 4), np.uint16, seed=1)
    with tifffile.TiffWriter(path, ome=True) as writer:
        writer.write(first, photometric="minisblack", metadata={"axes": "ZYX", "Name": "first"})
        writer.write(second, photometric="minisblack", metadata={"axes": "TYX", "Name": "second"})
    with ImageFile(path) as image:
        assert [s.name for s in image.series] == ["first", "second"]
        assert [s.axes for s in image.series] == ["ZYX", "TYX"]
        np.testing.assert_array_equal(image.read_series(1), second)
        out = copy_through(image, tmp_path / "two-out.ome.tif")
    with tifffile.TiffFile(out) as tif:
        assert [s.shape for s in tif.series] == [first.shape, second.shape]
        np.testing.assert_array_equal(tif.series[1].asarray(), second)
    names = [image.name for image in ome_types.from_tiff(out).images]
    assert names == ["first (AUTO-DIP denoised)", "second (AUTO-DIP denoised)"]


def write_master_set(folder: Path, planes: np.ndarray) -> list[Path]:
    """A master-file multi-file set: file 0 holds the OME-XML, the others BinaryOnly."""
    uuids = [f"urn:uuid:{uuid.uuid4()}" for _ in planes]
    names = [f"set_Z{z}.ome.tif" for z in range(len(planes))]
    ome = ome_model("ZYX", planes.shape, planes.dtype, file_name=names[0], file_uuid=uuids[0])
    ome.images[0].pixels.tiff_data_blocks = [
        model.TiffData(first_z=z, ifd=0, plane_count=1,
                       uuid=model.TiffData.UUID(value=uuids[z], file_name=names[z]))
        for z in range(len(planes))]
    for z, plane in enumerate(planes):
        if z == 0:
            xml = ome_types.to_xml(ome)
        else:
            member = model.OME(uuid=uuids[z], binary_only=model.OME.BinaryOnly(
                metadata_file=names[0], uuid=uuids[0]))
            xml = ome_types.to_xml(member)
        write_pages(folder / names[z], [plane], plane.shape, 1, plane.dtype, xml)
    return [folder / name for name in names]


def test_master_file_set_opens_from_any_member(tmp_path):
    planes = structured((4, 10, 12), np.uint16)
    files = write_master_set(tmp_path, planes)
    for member in files:
        with ImageFile(member) as image:
            assert image.kind == "ome-tiff-multifile"
            assert image.metadata_path == files[0]
            assert image.source_files == files
            np.testing.assert_array_equal(image.read_series(0), planes)
    files[2].unlink()
    with pytest.raises(MissingFileError, match="set_Z2.ome.tif"):
        ImageFile(files[1])


def test_companion_set(tmp_path):
    data = structured((2, 3, 8, 9), np.int16)  # C, Z, Y, X
    companion = tmp_path / "run.companion.ome"
    uuids = [f"urn:uuid:{uuid.uuid4()}" for _ in range(2)]
    names = ["run_C0.ome.tif", "run_C1.ome.tif"]
    ome = ome_model("CZYX", data.shape, data.dtype, file_name="unused")
    ome.images[0].pixels.tiff_data_blocks = [
        model.TiffData(first_c=c, ifd=0, plane_count=3,
                       uuid=model.TiffData.UUID(value=uuids[c], file_name=names[c]))
        for c in range(2)]
    companion.write_text(ome_types.to_xml(ome), encoding="utf-8")
    for c in range(2):
        member = model.OME(uuid=uuids[c], binary_only=model.OME.BinaryOnly(
            metadata_file=companion.name, uuid=ome.uuid))
        write_pages(tmp_path / names[c], data[c], data.shape[-2:], 3, data.dtype,
                    ome_types.to_xml(member))
    for opened in (companion, tmp_path / names[1]):
        with ImageFile(opened) as image:
            assert image.metadata_path == companion
            assert image.kind == "ome-companion"
            assert image.series[0].axes == "CZYX"
            np.testing.assert_array_equal(image.read_series(0), data)


def test_micromanager_real_stack(shared_data):
    path = shared_data / "ome/exampletiffs/singles/181003_multi_pos_time_course_1_MMStack.ome.tif"
    reference = tifffile.imread(path)  # tifffile: T, position, Y, X
    with ImageFile(path) as image:
        assert image.kind == "micromanager"
        assert len(image.series) == 2 and image.series[0].axes == "TYX"
        assert any("not schema-valid" in w for w in image.warnings)
        for position in range(2):
            np.testing.assert_array_equal(image.read_series(position), reference[:, position])


def test_real_master_set(shared_data):
    folder = shared_data / "ome/exampletiffs/master"
    reference = tifffile.imread(folder / "multifile-Z1.ome.tiff")
    with ImageFile(folder / "multifile-Z4.ome.tiff") as image:
        assert image.metadata_path.name == "multifile-Z1.ome.tiff"
        assert len(image.source_files) == 5
        np.testing.assert_array_equal(image.read_series(0), reference)


def test_standalone_ome_xml_is_metadata_only(shared_data):
    with ImageFile(shared_data / "ome/ome-types/OverViewScan.ome.xml") as image:
        assert image.kind == "ome-xml" and not image.series[0].has_pixels
        assert image.series[0].shape == (3212, 7398)
        with pytest.raises(ImageReadError, match="no pixel data"):
            next(image.pages(0))


# --------------------------------------------------------------------------- without OME

def test_imagej_hyperstack(tmp_path):
    data = structured((2, 3, 2, 16, 12), np.uint16)
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, data, imagej=True, resolution=(4.0, 4.0),
                     metadata={"axes": "TZCYX", "unit": "um", "spacing": 0.5})
    with ImageFile(path) as image:
        info = image.series[0]
        assert image.kind == "imagej" and image.ome is None
        assert info.axes == "TZCYX" and info.dimension_order == "XYCZT"
        assert info.physical_sizes == {"X": 0.25, "Y": 0.25, "Z": 0.5}
        np.testing.assert_array_equal(image.read_series(0), data)
        out = copy_through(image, tmp_path / "hyper-out.ome.tif")
    with tifffile.TiffFile(out) as tif:
        assert tif.series[0].axes == "TZCYX" and tif.series[0].shape == data.shape
    pixels = ome_types.from_tiff(out, validate=True).images[0].pixels
    assert (pixels.physical_size_x, pixels.physical_size_z) == (0.25, 0.5)


def test_plain_multipage_tiff_unknown_axis_becomes_t(tmp_path):
    data = structured((3, 8, 8), np.float32)
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, data, photometric="minisblack")  # tifffile calls the axis Q
    with ImageFile(path) as image:
        assert image.kind == "tiff" and image.series[0].axes == "TYX"
        np.testing.assert_array_equal(image.read_series(0), data)


def test_contiguous_series_is_memory_mapped(tmp_path):
    """ImageJ stores stacks over 4 GB with one IFD and contiguous data; they are read plane
    by plane from a memory map. Reproduced small by cutting the IFD chain after page 0."""
    data = structured((4, 8, 6), np.uint16)
    path = tmp_path / "contiguous.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZYX"})
    with tifffile.TiffFile(path) as tif:
        first = tif.pages[0]
        next_pointer = first.offset + 2 + len(first.tags) * 12  # classic TIFF IFD layout
    raw = bytearray(path.read_bytes())
    raw[next_pointer:next_pointer + 4] = bytes(4)
    path.write_bytes(bytes(raw))
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 1 and tif.series[0].shape == data.shape
    with ImageFile(path) as image:
        assert isinstance(image._sources[0].array, np.memmap)
        np.testing.assert_array_equal(image.read_series(0), data)


def test_png_palette_gray16_and_rgb(tmp_path):
    indices = structured((20, 24), np.uint8)
    palette = Image.fromarray(indices, mode="P")
    palette.putpalette([v for i in range(256) for v in (0, i, 0)])
    palette.save(tmp_path / "p.png")
    gray16 = structured((20, 24), np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    rgb = structured((20, 24, 3), np.uint8)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "rgb.png")
    for name, expected, axes in (("p.png", indices, "YX"), ("g16.png", gray16, "YX"),
                                 ("rgb.png", rgb, "YXS")):
        with ImageFile(tmp_path / name) as image:
            assert image.kind == "png" and image.series[0].axes == axes
            np.testing.assert_array_equal(image.read_series(0), expected)


# --------------------------------------------------------------------------- streaming

def stack_and_warm_up(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """An 8 MiB stack of 128 KiB planes; a first tiny copy loads schemas and caches untraced."""
    small = tmp_path / "small.ome.tif"
    write_ome_tiff(small, structured((2, 8, 8), np.uint16), "ZYX")
    with ImageFile(small) as image:
        copy_through(image, tmp_path / "small-out.ome.tif")
    data = structured((64, 256, 256), np.uint16)
    path = tmp_path / "stack.ome.tif"
    write_ome_tiff(path, data, "ZYX")
    return path, data


def test_planes_are_read_one_at_a_time(tmp_path):
    path, data = stack_and_warm_up(tmp_path)
    with ImageFile(path) as image:
        tracemalloc.start()
        count = sum(1 for _ in image.planes(0))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert count == 64
    assert peak < data.nbytes / 8, f"reading peaked at {peak} bytes; the stack is {data.nbytes}"


def test_writer_streams_pages(tmp_path):
    """Writing memory does not grow with the stack: a 64-plane copy peaks no more than a
    few planes above a 16-plane copy (a writer that held the stack would add 48 planes,
    6 MiB). Compared, not absolute: the fixed cost (pydantic inspecting signatures copies
    ``sys.modules``) depends on how many modules the process has loaded."""
    path, data = stack_and_warm_up(tmp_path)
    short = tmp_path / "short.ome.tif"
    write_ome_tiff(short, data[:16], "ZYX")
    peaks = {}
    for name, source in (("short", short), ("long", path)):
        with ImageFile(source) as image:
            copy_through(image, tmp_path / f"warm-{name}.ome.tif")  # caches filled
            tracemalloc.start()
            copy_through(image, tmp_path / f"streamed-{name}.ome.tif")
            _, peaks[name] = tracemalloc.get_traced_memory()
            tracemalloc.stop()
    plane = data[0].nbytes
    assert peaks["long"] - peaks["short"] < 8 * plane, (peaks, plane)
    assert peaks["long"] < data.nbytes / 2, peaks
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "streamed-long.ome.tif"), data)


def test_failed_write_leaves_nothing(tmp_path):
    data = structured((3, 8, 8), np.uint8)
    path = tmp_path / "in.ome.tif"
    write_ome_tiff(path, data, "ZYX")
    before = sha256(path)
    out = tmp_path / "out.ome.tif"

    def failing_pages(image):
        for number, (_, page) in enumerate(image.pages(0)):
            if number == 2:
                raise KeyboardInterrupt  # a BaseException, like the daemon's cancellation
            yield page

    with ImageFile(path) as image, pytest.raises(KeyboardInterrupt):
        with OmeTiffWriter(out, image) as writer:
            writer.write_series(0, failing_pages(image))
            writer.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.ome.tif"]
    with ImageFile(path) as image:
        with pytest.raises(ValueError, match="refusing"):
            OmeTiffWriter(path, image)
        with OmeTiffWriter(out, image) as writer:  # never committed: nothing appears
            writer.write_series(0, (page for _, page in image.pages(0)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.ome.tif"]
    assert sha256(path) == before


def test_copy_keeps_metadata_except_where_intended(tmp_path):
    instrument = model.Instrument(id="Instrument:0", detectors=[model.Detector(id="Detector:0",
                                                                               type="PMT")])
    data = structured((2, 8, 8), np.uint16)
    path = tmp_path / "meta.ome.tif"
    source = write_ome_tiff(path, data, "CYX", instrument=instrument,
                            channels=[{"name": "DAPI", "fluor": "DAPI"}, {"name": "GFP"}])
    with ImageFile(path) as image:
        copy_through(image, tmp_path / "meta-out.ome.tif")
    output = ome_types.from_tiff(tmp_path / "meta-out.ome.tif", validate=True)
    changed = diff_ome(source, output)
    assert sorted(changed) == sorted([
        "uuid", "creator", "images[0].name", "images[0].annotation_refs",
        "images[0].pixels.tiff_data_blocks[0].uuid.value",
        "images[0].pixels.tiff_data_blocks[0].uuid.file_name", "images[0].pixels.big_endian",
        "structured_annotations.map_annotations"])
    assert output.images[0].pixels.tiff_data_blocks[0].uuid.file_name == "meta-out.ome.tif"
    assert output.uuid != source.uuid
    assert output.creator == "autodip-watch"  # the writer's software, not the source's
