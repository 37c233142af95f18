"""Files as facilities write them in, files as facilities read them out (issue 13):
renamed single files, planes beyond the declared dimensions, calibration outside OME,
the output's TIFF layer (compression, tiles, pyramid, resolution), attribution, and
several members of one set given to ``denoise``. Each fault is tested as a kind."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import imagecodecs
import numpy as np
import ome_types
import pytest
import tifffile
from ome_types import model
from typer.testing import CliRunner

from autodip_watch.transfer.table import default_table_path
from autodip_watch import __version__
from autodip_watch.cli.app import app
from autodip_watch.io.errors import DimensionError, MissingFileError
from autodip_watch.io.reader import ImageFile
from autodip_watch.settings.denoise import DenoiseSettings
from autodip_watch.pipeline.denoise import PipelineError, denoise_file
from autodip_watch.provenance import read_provenance
from autodip_watch.io.checksums import sha256_file
from helpers.omefiles import ome_model, structured, write_pages

SETTINGS = DenoiseSettings(iterations=2, depth=4, width="16", device="cpu")


def noisy(shape, seed=0, mean=300, dtype=np.uint16):
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, mean, shape[-1])
    return (rng.poisson(mean, shape) + ramp).astype(dtype)


# --------------------------------------------------------------------------- renamed single files

def _single(path: Path, named: str, with_uuid: bool, planes: int = 3, declared: int | None = None):
    file_uuid = f"urn:uuid:{uuid.uuid4()}"
    data = noisy((planes, 32, 32))
    count = declared or planes
    ome = ome_model("ZYX", (count, 32, 32), data.dtype, file_name=named, file_uuid=file_uuid)
    ome.images[0].pixels.tiff_data_blocks = [
        model.TiffData(first_z=z, ifd=z, plane_count=1, uuid=model.TiffData.UUID(
            value=file_uuid, file_name=named)) for z in range(count)]
    if not with_uuid:
        ome.uuid = None
    write_pages(path, list(data), (32, 32), planes, data.dtype, ome_types.to_xml(ome))
    return data


@pytest.mark.slow
@pytest.mark.parametrize("with_uuid", [True, False], ids=["own-uuid", "no-document-uuid"])
@pytest.mark.parametrize("new_name", ["mouse3_liver_mito.ome.tif", "sub dir name.ome.tiff"])
def test_renamed_single_file_is_read_as_itself(tmp_path, with_uuid, new_name):
    path = tmp_path / new_name
    data = _single(path, "acq_0001.ome.tif", with_uuid)
    with ImageFile(path) as image:
        assert image.source_files == [path]
        np.testing.assert_array_equal(image.read_series(0), data)
        assert any("acq_0001.ome.tif" in w and "renamed" in w for w in image.warnings)
    report = denoise_file(path, SETTINGS)
    assert Path(report.output).exists() and any("renamed" in w for w in report.warnings)


def test_renamed_file_that_lacks_planes_is_still_an_error(tmp_path):
    path = tmp_path / "renamed.ome.tif"
    _single(path, "acq_0001.ome.tif", True, planes=2, declared=3)
    with pytest.raises(DimensionError, match="IFD 2"):
        ImageFile(path)


def test_set_with_a_member_truly_missing_names_it(tmp_path):
    """Blocks with another file's UUID are members of a set, not this file."""
    names, uuids = ["set_0.ome.tif", "set_1.ome.tif"], [f"urn:uuid:{uuid.uuid4()}" for _ in range(2)]
    data = noisy((2, 32, 32))
    ome = ome_model("ZYX", data.shape, data.dtype, file_name=names[0], file_uuid=uuids[0])
    ome.images[0].pixels.tiff_data_blocks = [
        model.TiffData(first_z=z, ifd=0, plane_count=1,
                       uuid=model.TiffData.UUID(value=uuids[z], file_name=names[z])) for z in range(2)]
    write_pages(tmp_path / names[0], [data[0]], (32, 32), 1, data.dtype, ome_types.to_xml(ome))
    with pytest.raises(MissingFileError, match="set_1.ome.tif"):
        ImageFile(tmp_path / names[0])


# --------------------------------------------------------------------------- planes beyond dimensions

MM_XML = '''<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">
<Image ID="Image:0" Name="snap"><Pixels DimensionOrder="XYCZT" ID="Pixels:0" SizeC="{c}" SizeT="{t}"
 SizeX="32" SizeY="32" SizeZ="{z}" Type="uint16"><Channel ID="Channel:0:0" Name="CameraA-0" SamplesPerPixel="1"/>
{blocks}</Pixels></Image></OME>'''


@pytest.mark.parametrize("letter", ["C", "Z", "T"])
def test_planes_beyond_the_declared_dimensions_are_kept(tmp_path, letter):
    """Micro-Manager multi-camera: SizeC=1, the second camera's plane at FirstC=1 in IFD 1
    (and the same for Z and T): the plane is denoised and written, the dimension grows."""
    blocks = "".join(f'<TiffData First{letter}="{i}" IFD="{i}" PlaneCount="1"/>' for i in range(2))
    xml = MM_XML.format(c=1, t=1, z=1, blocks=blocks)
    planes = [noisy((32, 32), seed=1, mean=100), noisy((32, 32), seed=2, mean=900)]
    path = tmp_path / "snap_MMStack_Default.ome.tif"
    write_pages(path, planes, (32, 32), 2, np.uint16, xml)
    report = denoise_file(path, SETTINGS)
    assert any("beyond the declared dimensions" in w and "no plane dropped" in w for w in report.warnings)
    assert len(report.planes) == 2
    output = ome_types.from_tiff(report.output, validate=True)
    assert getattr(output.images[0].pixels, f"size_{letter.lower()}") == 2
    if letter == "C":
        assert len(output.images[0].pixels.channels) == 2
    with tifffile.TiffFile(report.output) as tif:
        assert len(tif.pages) == 2
        denoised = tif.series[0].asarray()
    assert denoised[1].mean() > denoised[0].mean() * 3  # the second camera's plane, not a copy


def test_blocks_past_the_end_of_a_stopped_acquisition_are_ignored(tmp_path):
    blocks = "".join(f'<TiffData FirstT="{i}" IFD="{i}" PlaneCount="1"/>' for i in range(3))
    xml = MM_XML.format(c=1, t=2, z=1, blocks=blocks)
    write_pages(tmp_path / "stopped.ome.tif", [noisy((32, 32)), noisy((32, 32), 1)], (32, 32), 2,
                np.uint16, xml)
    with ImageFile(tmp_path / "stopped.ome.tif") as image:
        assert image.series[0].sizes["T"] == 2
        assert any("reach past the declared dimensions; ignored" in w for w in image.warnings)


def test_pages_no_image_declares_stop_the_job_and_are_named(tmp_path):
    xml = MM_XML.format(c=1, t=1, z=1, blocks='<TiffData IFD="0" PlaneCount="1"/>')
    path = tmp_path / "extra.ome.tif"
    write_pages(path, [noisy((32, 32)), noisy((32, 32), 1), noisy((32, 32), 2)], (32, 32), 3,
                np.uint16, xml)
    with ImageFile(path) as image:
        assert image.unreferenced_pages == [1, 2]
    with pytest.raises(PipelineError, match=r"IFD\) 1, 2"):
        denoise_file(path, SETTINGS)
    assert not (tmp_path / "extra.autodip.ome.tif").exists()


# --------------------------------------------------------------------------- calibration outside OME

UM_PER_PX = 285 / 512


@pytest.mark.parametrize("unit,per_unit,expected", [
    ("CENTIMETER", 1e4 / UM_PER_PX, UM_PER_PX),
    ("INCH", 25400 / UM_PER_PX, UM_PER_PX),
    ("MILLIMETER", 1e3 / 0.1, 0.1),
    ("NONE", 5.0, None),          # no unit: an aspect ratio, not a size
    ("INCH", 72.0, None),         # an editor's screen default, not a pixel size
])
def test_resolution_tags_in_every_unit(tmp_path, unit, per_unit, expected):
    path = tmp_path / "frame_00001_ch1.tif"
    tifffile.imwrite(path, noisy((48, 48)), resolution=(per_unit, per_unit), resolutionunit=unit)
    report = denoise_file(path, SETTINGS)
    pixels = ome_types.from_tiff(report.output, validate=True).images[0].pixels
    with tifffile.TiffFile(report.output) as tif:
        page = tif.pages.first
        if expected is None:
            assert pixels.physical_size_x is None
            assert page.resolutionunit == tifffile.RESUNIT.NONE
        else:
            assert pixels.physical_size_x == pytest.approx(expected, rel=1e-6)
            assert pixels.physical_size_x_unit.value == "µm"
            assert page.resolutionunit == tifffile.RESUNIT.CENTIMETER
            assert 1e4 / page.get_resolution()[0] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("pixels_per_metre,expected", [(4_000_000, 0.25), (2835, None)])
def test_png_physical_size_from_phys(tmp_path, pixels_per_metre, expected):
    """PNG pHYs (pixels per metre); 2835/m is 72 dpi, an editor's default."""
    from PIL import Image

    path = tmp_path / "nuclei.png"
    dpi = pixels_per_metre * 0.0254
    Image.fromarray(noisy((32, 32), mean=100, dtype=np.uint8)).save(path, dpi=(dpi, dpi))
    with ImageFile(path) as image:
        size = image.series[0].physical_sizes.get("X")
    assert (size is None) if expected is None else size == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("unit,per_px,expected_um", [
    ("nm", 20.0, 0.02), ("\\u00B5m", 0.1, 0.1), ("um", 0.25, 0.25), ("micron", 0.5, 0.5),
    ("microns", 0.5, 0.5), ("mm", 0.001, 1.0), ("cm", 0.0001, 1.0)])
def test_imagej_units_in_every_spelling(tmp_path, unit, per_px, expected_um):
    path = tmp_path / "sted.tif"
    tifffile.imwrite(path, noisy((32, 32)), imagej=True, resolution=(1 / per_px, 1 / per_px),
                     metadata={"unit": unit})
    with ImageFile(path) as image:
        assert image.series[0].physical_sizes["X"] == pytest.approx(expected_um, rel=1e-9)


@pytest.mark.parametrize("unit", ["µm", "μm", "\\u00B5m", "um", "micron", "micrometre"])
def test_every_spelling_of_micrometre(unit):
    """ImageJ descriptions are ASCII (\\u00B5m); other writers use the micro sign or the
    Greek mu; all are micrometres."""
    from autodip_watch.io.physical import length_in_micrometres

    assert length_in_micrometres(0.3, unit) == (pytest.approx(0.3), "µm")


def _hyperstack(path: Path) -> np.ndarray:
    data = noisy((2, 3, 2, 32, 32))  # T Z C Y X
    green = np.stack([np.zeros(256), np.arange(256), np.zeros(256)]).astype(np.uint8)
    magenta = np.stack([np.arange(256), np.zeros(256), np.arange(256)]).astype(np.uint8)
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 20.0, 1 / 20.0), metadata={
        "axes": "TZCYX", "unit": "nm", "spacing": 150.0, "finterval": 2.5,
        "Labels": ["DAPI", "Phalloidin"] * 6, "LUTs": [green, magenta],
        "Ranges": (10.0, 900.0, 20.0, 800.0)})
    return data


def test_imagej_hyperstack_in_nm_keeps_calibration_labels_colours(tmp_path):
    path = tmp_path / "hyper.tif"
    data = _hyperstack(path)
    report = denoise_file(path, SETTINGS)
    # ImageJ labels are channel names: they label the specimen like OME channel names
    assert {p.specimen for p in report.planes if p.channel == 0} == {"nucleus"}
    assert {p.specimen for p in report.planes if p.channel == 1} == {"actin"}
    output = ome_types.from_tiff(report.output, validate=True)
    pixels = output.images[0].pixels
    assert (pixels.size_t, pixels.size_z, pixels.size_c) == (2, 3, 2)
    assert pixels.physical_size_x == pytest.approx(0.02) and pixels.physical_size_z == pytest.approx(0.15)
    assert pixels.time_increment == pytest.approx(2.5)
    assert [c.name for c in pixels.channels] == ["DAPI", "Phalloidin"]
    assert [c.color.as_rgb_tuple() for c in pixels.channels] == [(0, 255, 0), (255, 0, 255)]
    with tifffile.TiffFile(report.output) as tif:
        assert tif.series[0].shape == data.shape
        page = tif.pages.first
        assert page.resolutionunit == tifffile.RESUNIT.CENTIMETER
        assert 1e4 / page.get_resolution()[0] == pytest.approx(0.02, rel=1e-5)


# --------------------------------------------------------------------------- the TIFF layer

@pytest.mark.parametrize("compression,expected", [
    ("zlib", "ADOBE_DEFLATE"), ("lzw", "LZW"), ("zstd", "ZSTD"), (None, "ADOBE_DEFLATE"),
    ("jpeg", "ADOBE_DEFLATE")])
def test_output_keeps_lossless_compression(tmp_path, compression, expected):
    dtype = np.uint8 if compression == "jpeg" else np.uint16
    data = noisy((2, 64, 64), mean=100, dtype=dtype)
    path = tmp_path / "in.ome.tif"
    tifffile.imwrite(path, data, compression=compression, photometric="minisblack",
                     metadata={"axes": "CYX"})
    report = denoise_file(path, SETTINGS)
    with tifffile.TiffFile(report.output) as tif:
        page = tif.pages.first
        assert page.compression.name == expected
        # the first strip decodes with imagecodecs' own codec to a whole strip of bytes
        decode = {"ADOBE_DEFLATE": imagecodecs.zlib_decode, "LZW": imagecodecs.lzw_decode,
                  "ZSTD": imagecodecs.zstd_decode}[expected]
        tif.filehandle.seek(page.dataoffsets[0])
        raw = decode(tif.filehandle.read(page.databytecounts[0]))
        assert len(raw) == min(page.rowsperstrip, 64) * 64 * data.dtype.itemsize
        series = tif.series[0]
        assert series.shape == data.shape and series.dtype == data.dtype


@pytest.mark.slow
def test_deflate_two_channel_output_is_no_larger_than_its_input(tmp_path):
    """Acceptance: a deflate-compressed 2-channel input gives an output at most 1.1x its
    size (it was 1.9-2.1x when outputs were written uncompressed)."""
    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:256, 0:256]
    cells = (np.sin(x / 9.0) * np.cos(y / 13.0) + 1) * 800
    data = np.stack([rng.poisson(cells + 100), rng.poisson(cells[::-1] + 300)]).astype(np.uint16)
    path = tmp_path / "two.ome.tif"
    tifffile.imwrite(path, data, compression="zlib", photometric="minisblack",
                     metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "GFP"]}})
    report = denoise_file(path, SETTINGS)
    ratio = Path(report.output).stat().st_size / path.stat().st_size
    assert ratio <= 1.1, ratio


@pytest.mark.slow
def test_large_planes_are_tiled_and_pyramids_keep_their_levels(tmp_path):
    data = noisy((1, 1100, 1030), mean=50)
    path = tmp_path / "mosaic.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as writer:
        writer.write(data, subifds=2, tile=(256, 256), compression="zlib", photometric="minisblack",
                     metadata={"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
        for level in (1, 2):
            writer.write(data[:, ::2 ** level, ::2 ** level], subfiletype=1, tile=(256, 256),
                         compression="zlib", photometric="minisblack")
    report = denoise_file(path, DenoiseSettings(iterations=1, depth=4, width="16", device="cpu"))
    with tifffile.TiffFile(report.output) as tif, tifffile.TiffFile(path) as source:
        out, src = tif.series[0], source.series[0]
        assert [level.shape for level in out.levels] == [level.shape for level in src.levels]
        assert tif.pages.first.is_tiled and (tif.pages.first.tilelength, tif.pages.first.tilewidth) == (256, 256)
        full = out.levels[0].asarray().reshape(1100, 1030).astype(float)
        half = out.levels[1].asarray().reshape(550, 515)
        # recomputed from the denoised full resolution, not copied from the source
        expected = full.reshape(550, 2, 515, 2).mean(axis=(1, 3))
        np.testing.assert_allclose(half, np.rint(expected), atol=1)
        assert not np.array_equal(half, data[0, ::2, ::2])
        sub = tif.pages.first.subifds
        assert sub and len(sub) == 2
    assert not list(tmp_path.glob(".*.tmp"))  # the level scratch files are gone


def test_attribution_and_provenance(tmp_path):
    path = tmp_path / "cells.ome.tif"
    data = structured((2, 32, 32), np.uint16)
    ome = ome_model("CYX", data.shape, data.dtype, file_name=path.name)
    ome.creator = "MicroscopeVendor Acquire 7.1"
    write_pages(path, list(data), (32, 32), 2, data.dtype, ome_types.to_xml(ome))
    report = denoise_file(path, SETTINGS)
    output = ome_types.from_tiff(report.output)
    assert output.creator == f"autodip-watch {__version__}"
    with tifffile.TiffFile(report.output) as tif:
        assert tif.pages.first.software == f"autodip-watch {__version__}"
    entries = read_provenance(report.output)[0]["entries"]
    assert entries["source.creator"] == "MicroscopeVendor Acquire 7.1"
    assert entries["source.uuid"] == ome.uuid and entries["source.image_id"] == "Image:0"
    for name in ("python", "numpy", "tifffile", "ome-types", "torch", "cuda"):
        assert entries[f"version.{name}"], name
    assert entries["calibration_table.sha256"] == sha256_file(default_table_path())
    assert entries["command"]
    assert entries["source.sha256"] == sha256_file(path)  # existing keys keep their names


# --------------------------------------------------------------------------- sets once

def _master_set(folder: Path, count: int = 3) -> list[Path]:
    uuids = [f"urn:uuid:{uuid.uuid4()}" for _ in range(count)]
    names = [f"set_Z{z}.ome.tif" for z in range(count)]
    planes = noisy((count, 32, 32))
    ome = ome_model("ZYX", planes.shape, planes.dtype, file_name=names[0], file_uuid=uuids[0])
    ome.images[0].pixels.tiff_data_blocks = [
        model.TiffData(first_z=z, ifd=0, plane_count=1,
                       uuid=model.TiffData.UUID(value=uuids[z], file_name=names[z]))
        for z in range(count)]
    for z, plane in enumerate(planes):
        xml = ome_types.to_xml(ome) if z == 0 else ome_types.to_xml(model.OME(
            uuid=uuids[z], binary_only=model.OME.BinaryOnly(metadata_file=names[0], uuid=uuids[0])))
        write_pages(folder / names[z], [plane], plane.shape, 1, plane.dtype, xml)
    return [folder / name for name in names]


@pytest.mark.parametrize("given", [[0, 1, 2], [1, 2], [2, 0]])
def test_denoise_of_several_members_denoises_the_set_once(tmp_path, given):
    files = _master_set(tmp_path)
    args = [str(files[i]) for i in given]
    result = CliRunner().invoke(app, ["denoise", "--iterations", "2", "--depth", "4", "--width", "16",
                                      "--device", "cpu", "--json", *args])
    assert result.exit_code == 0, result.output
    summaries = json.loads(result.stdout)
    outputs = sorted(tmp_path.glob("*.autodip.ome.tif"))
    assert len(outputs) == 1  # one copy of the set, not one per member
    skipped = [s for s in summaries if "same_set_as" in s]
    assert len(skipped) == len(given) - 1
    assert all(s["output"] == str(outputs[0]) for s in skipped)
    assert "denoised once" in result.stderr if hasattr(result, "stderr") else True
    assert ome_types.from_tiff(outputs[0]).images[0].pixels.size_z == 3
