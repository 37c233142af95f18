"""Bad and hostile input: a specific error that names the file and the problem, never a crash."""

from __future__ import annotations

import json
import time
import tracemalloc
from pathlib import Path

import numpy as np
import ome_types
import pytest
import tifffile
from typer.testing import CliRunner

from autodip_watch.cli.app import app
from autodip_watch.io.errors import (DimensionError, ImageReadError, MalformedMetadataError, NotAnImageError, TruncatedImageError, UnsafeMetadataError)
from autodip_watch.io.reader import ImageFile
from helpers.omefiles import (billion_laughs, external_entity, ome_model, structured, write_ome_tiff,
                      write_pages)


def read_everything(path: Path) -> int:
    """Open ``path`` and read every plane; the number of planes read."""
    with ImageFile(path) as image:
        return sum(1 for info in image.series if info.has_pixels
                   for _ in image.planes(info.index))


def assert_clear(error: ImageReadError, path: Path, *words: str) -> None:
    message = str(error)
    assert str(path) in message, message
    for word in words:
        assert word.lower() in message.lower(), message


# --------------------------------------------------------------------------- XML

def test_malformed_xml_from_a_real_file(shared_data, tmp_path):
    """A real Micro-Manager OME-XML cut short (an interrupted copy) is a clear error."""
    text = (shared_data / "ome/ome-types/MMStack.ome.xml").read_text(encoding="utf-8")
    broken = tmp_path / "cut.ome.xml"
    broken.write_text(text[: len(text) // 2], encoding="utf-8")
    with pytest.raises(MalformedMetadataError) as caught:
        ImageFile(broken)
    assert_clear(caught.value, broken, "not well-formed")


def test_schema_invalid_real_files_are_read_with_a_warning(shared_data):
    """Micro-Manager's invalid IDs are repaired, and the repair is reported, not hidden."""
    for name in ("ome/ome-types/MMStack.ome.xml", "ome/OMETIFF.jl/issue38.ome.xml"):
        with ImageFile(shared_data / name) as image:
            assert any("not schema-valid" in warning and "Microscope" in warning
                       for warning in image.warnings)


def test_malformed_ome_in_a_tiff(tmp_path):
    data = structured((8, 8), np.uint8)
    path = tmp_path / "broken.ome.tif"
    xml = ome_types.to_xml(ome_model("YX", data.shape, data.dtype, file_name=path.name))
    write_pages(path, [data], data.shape, 1, data.dtype, xml.replace("</OME>", "</Image>"))
    with pytest.raises(MalformedMetadataError) as caught:
        ImageFile(path)
    assert_clear(caught.value, path, "not well-formed")


def test_not_ome_xml(tmp_path):
    path = tmp_path / "other.ome.xml"
    path.write_text('<?xml version="1.0"?><Metadata><Image/></Metadata>')
    with pytest.raises(MalformedMetadataError) as caught:
        ImageFile(path)
    assert_clear(caught.value, path, "<Metadata>")


@pytest.mark.parametrize("where", ["xml", "tiff"])
def test_billion_laughs_is_refused_without_expanding(tmp_path, where):
    bomb = billion_laughs()
    if where == "xml":
        path = tmp_path / "bomb.ome.xml"
        path.write_text(bomb)
    else:
        path = tmp_path / "bomb.ome.tif"
        data = np.zeros((4, 4), np.uint8)
        write_pages(path, [data], data.shape, 1, data.dtype, bomb)
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(UnsafeMetadataError) as caught:
        ImageFile(path)
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert_clear(caught.value, path, "without expanding")
    assert seconds < 2 and peak < 20_000_000  # 10^9 "lol"s would be gigabytes


def test_external_entities_are_refused(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not leak")
    path = tmp_path / "xxe.ome.xml"
    path.write_text(external_entity(secret.as_uri()))
    with pytest.raises(UnsafeMetadataError) as caught:
        ImageFile(path)
    assert_clear(caught.value, path, "entities")
    assert "do not leak" not in str(caught.value)
    doctype = tmp_path / "dtd.ome.xml"
    doctype.write_text('<?xml version="1.0"?><!DOCTYPE OME SYSTEM "http://example.invalid/ome.dtd">'
                       '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"/>')
    with pytest.raises(UnsafeMetadataError):
        ImageFile(doctype)


def test_tiffdata_file_outside_the_folder_is_refused(tmp_path):
    data = structured((8, 8), np.uint8)
    path = tmp_path / "escape.ome.tif"
    ome = ome_model("YX", data.shape, data.dtype, file_name="../../etc/passwd")
    write_pages(path, [data], data.shape, 1, data.dtype, ome_types.to_xml(ome))
    with pytest.raises(UnsafeMetadataError) as caught:
        ImageFile(path)
    assert_clear(caught.value, path, "outside its folder")


# --------------------------------------------------------------------------- dimensions

def test_absurd_declared_dimensions_are_refused_before_allocating(tmp_path):
    data = structured((8, 8), np.uint16)
    path = tmp_path / "huge.ome.tif"
    ome = ome_model("YX", (10**6, 10**6), data.dtype, file_name=path.name)
    write_pages(path, [data], data.shape, 1, data.dtype, ome_types.to_xml(ome))
    tracemalloc.start()
    with pytest.raises(DimensionError) as caught:
        read_everything(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert_clear(caught.value, path, "1000000x1000000", "refusing")
    assert peak < 20_000_000
    xml_only = tmp_path / "huge.ome.xml"
    xml_only.write_text(ome_types.to_xml(ome))
    with pytest.raises(DimensionError):
        ImageFile(xml_only)


@pytest.mark.parametrize("declared, problem", [
    ({"axes": "YX", "shape": (64, 64), "dtype": "uint16"}, "holds 32x32"),
    ({"axes": "YX", "shape": (32, 32), "dtype": "uint8"}, "pixel type"),
    ({"axes": "ZYX", "shape": (10, 32, 32), "dtype": "uint16"}, "declares 10 planes"),
    ({"axes": "YXS", "shape": (32, 32, 3), "dtype": "uint16"}, "sample(s) per pixel"),
])
def test_declared_dimensions_must_match_the_pixels(tmp_path, declared, problem):
    data = structured((2, 32, 32), np.uint16)  # two 32x32 uint16 pages
    path = tmp_path / "mismatch.ome.tif"
    ome = ome_model(declared["axes"], declared["shape"], declared["dtype"], file_name=path.name)
    write_pages(path, data, data.shape[1:], 2, data.dtype, ome_types.to_xml(ome))
    with pytest.raises(DimensionError) as caught:
        read_everything(path)
    assert_clear(caught.value, path, problem)


def test_absurd_tiff_header_is_refused(tmp_path):
    path = tmp_path / "wide.tif"
    tifffile.imwrite(path, np.zeros((4, 4), np.uint16))
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags["ImageWidth"]
        offset, size = tag.valueoffset, tag.dtype  # patch the width; the strip stays 4x4
    raw = bytearray(path.read_bytes())
    width = (10**6).to_bytes(4, "little") if size == 4 else (65535).to_bytes(2, "little")
    raw[offset:offset + len(width)] = width
    path.write_bytes(bytes(raw))
    with pytest.raises(ImageReadError) as caught:
        read_everything(path)
    assert isinstance(caught.value, (DimensionError, TruncatedImageError))
    assert str(path) in str(caught.value)


# --------------------------------------------------------------------------- truncation

@pytest.mark.parametrize("kind", ["ome", "plain"])
def test_truncated_tiff_is_an_error_wherever_it_is_cut(tmp_path, kind):
    data = structured((4, 32, 32), np.uint16)
    full = tmp_path / f"full-{kind}.tif"
    if kind == "ome":
        write_ome_tiff(full, data, "ZYX")
    else:
        tifffile.imwrite(full, data, photometric="minisblack", metadata=None)
    raw = full.read_bytes()
    assert read_everything(full) == 4
    for fraction in (0.002, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99):
        cut = tmp_path / f"cut-{kind}-{fraction}.tif"
        cut.write_bytes(raw[: int(len(raw) * fraction)])
        with pytest.raises(ImageReadError) as caught:
            read_everything(cut)
        assert str(cut) in str(caught.value)
        assert "bound method" not in str(caught.value)  # messages name things, not objects
        assert isinstance(caught.value, (TruncatedImageError, NotAnImageError, DimensionError,
                                         MalformedMetadataError)), repr(caught.value)


# --------------------------------------------------------------------------- not an image

@pytest.mark.parametrize("content, name", [
    (b"this is a text file, not a TIFF\n", "notes.tif"),
    (b"", "empty.tif"),
    (bytes(range(256)) * 4, "random.png"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "broken.png"),
])
def test_not_an_image(tmp_path, content, name):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageReadError) as caught:
        read_everything(path)
    assert str(path) in str(caught.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageReadError, match="does not exist"):
        ImageFile(tmp_path / "absent.tif")
    with pytest.raises(NotAnImageError, match="folder"):
        ImageFile(tmp_path)


def test_cli_reports_hostile_input_and_goes_on(tmp_path):
    bomb = tmp_path / "bomb.ome.xml"
    bomb.write_text(billion_laughs())
    good = tmp_path / "good.ome.tif"
    write_ome_tiff(good, structured((2, 8, 8), np.uint8), "CYX")
    runner = CliRunner()
    result = runner.invoke(app, ["inspect", str(bomb), str(good), "--json"])
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert [image["file"] for image in document["images"]] == [str(good)]
    assert document["errors"][0]["file"] == str(bomb)
    assert "entities" in document["errors"][0]["error"]
    denoise = runner.invoke(app, ["denoise", str(bomb), "--device", "cpu", "--iterations", "1"])
    assert denoise.exit_code == 1 and "bomb.ome.xml" in denoise.output
    assert not list(tmp_path.glob("*.autodip.ome.tif"))
