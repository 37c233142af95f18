"""Denoised output: the source's OME metadata kept, provenance added, atomic, input untouched."""

from __future__ import annotations

import hashlib
import os
from datetime import datetime
from pathlib import Path

import numpy as np
import ome_types
import pytest
import tifffile
import torch
from ome_types import model
from PIL import Image

from autodip_watch import __version__
from autodip_watch.settings.inference import InferenceSettings
from helpers.ome_diff import diff_ome
from autodip_watch.settings.denoise import DenoiseSettings
from autodip_watch.pipeline.denoise import PipelineError, denoise_file
from autodip_watch.provenance import PROVENANCE_NAMESPACE, read_provenance
from helpers.omefiles import structured, write_ome_tiff

FAST = dict(depth=4, width="16", skip=4, iterations=2, device="cpu")


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def rich_source(path: Path) -> model.OME:
    """A 3-channel confocal OME-TIFF with an instrument, physical sizes and planes."""
    scope = model.Instrument(
        id="Instrument:0",
        microscope=model.Microscope(manufacturer="Zeiss", model="LSM 980"),
        lasers=[model.Laser(id="LightSource:0", laser_medium="Ar", wavelength=488.0)],
        detectors=[model.Detector(id="Detector:0", type="PMT", model="GaAsP")],
        objectives=[model.Objective(id="Objective:0", nominal_magnification=63.0, lens_na=1.4)])
    channels = [
        {"name": "DAPI", "fluor": "DAPI", "acquisition_mode": "LaserScanningConfocalMicroscopy",
         "excitation_wavelength": 405.0, "emission_wavelength": 461.0},
        {"name": "Phalloidin", "fluor": "Alexa Fluor 488 Phalloidin",
         "acquisition_mode": "LaserScanningConfocalMicroscopy",
         "light_source_settings": {"id": "LightSource:0"}, "detector_settings": {"id": "Detector:0"}},
        {"name": "T-PMT", "acquisition_mode": "LaserScanningConfocalMicroscopy",
         "contrast_method": "Brightfield", "illumination_type": "Transmitted"},
    ]
    data = structured((2, 3, 20, 24), np.uint16)  # Z, C, Y, X
    return write_ome_tiff(path, data, "ZCYX", channels=channels, instrument=scope,
                          image_name="fixed cells", description="BPAE cells")


@pytest.fixture(scope="module")
def denoised(tmp_path_factory):
    folder = tmp_path_factory.mktemp("provenance")
    source = folder / "cells.ome.tif"
    before = rich_source(source)
    digest = sha256(source)
    stat = os.stat(source)
    report = denoise_file(source, DenoiseSettings(**FAST, seed=7))
    return source, before, digest, stat, report


def test_output_parses_and_matches_the_input_layout(denoised):
    source, _, _, _, report = denoised
    output = Path(report.output)
    assert output.name == "cells.autodip.ome.tif"
    ome_types.from_tiff(output, validate=True)  # schema-valid
    with tifffile.TiffFile(source) as raw, tifffile.TiffFile(output) as out:
        assert out.is_ome
        assert (out.series[0].shape, out.series[0].dtype, out.series[0].axes) == \
            (raw.series[0].shape, raw.series[0].dtype, raw.series[0].axes) == \
            ((2, 3, 20, 24), np.uint16, "ZCYX")
        raw_data, out_data = raw.series[0].asarray(), out.series[0].asarray()
    assert not np.array_equal(out_data[:, 0], raw_data[:, 0])  # fluorescence: denoised
    np.testing.assert_array_equal(out_data[:, 2], raw_data[:, 2])  # transmitted: copied


def test_output_metadata_differs_only_where_intended(denoised):
    _, before, _, _, report = denoised
    after = ome_types.from_tiff(report.output)
    assert sorted(diff_ome(before, after)) == sorted([
        "uuid",                                              # a new file
        "creator",                                           # autodip-watch wrote it
        "images[0].name",                                    # marked as denoised
        "images[0].annotation_refs",                         # -> the provenance
        "images[0].pixels.tiff_data_blocks[0].uuid.value",   # points into the new file
        "images[0].pixels.tiff_data_blocks[0].uuid.file_name",
        "images[0].pixels.big_endian",                       # written little-endian
        "structured_annotations.map_annotations",            # the provenance itself
    ])
    assert after.images[0].name == "fixed cells (AUTO-DIP denoised)"
    assert after.instruments == before.instruments
    assert after.images[0].pixels.channels == before.images[0].pixels.channels
    assert after.images[0].pixels.planes == before.images[0].pixels.planes
    assert after.images[0].pixels.physical_size_x == 0.1625
    assert after.creator == f"autodip-watch {__version__}"


def test_provenance_records_what_why_on_what_and_when(denoised):
    source, _, digest, stat, report = denoised
    after = ome_types.from_tiff(report.output)
    annotation = after.structured_annotations.map_annotations[0]
    assert annotation.namespace == PROVENANCE_NAMESPACE
    assert after.images[0].annotation_refs[0].id == annotation.id
    [record] = read_provenance(report.output)
    entries = record["entries"]
    assert entries["software"] == "autodip-watch" and entries["software.version"] == __version__
    assert entries["torch.version"] == torch.__version__ and entries["device"] == "cpu"
    assert (entries["source.file"], entries["source.size"], entries["source.sha256"]) == \
        ("cells.ome.tif", str(stat.st_size), digest)
    started = datetime.fromisoformat(entries["started"])
    finished = datetime.fromisoformat(entries["finished"])
    assert started.utcoffset().total_seconds() == 0 and started <= finished
    assert entries["channel.0.microscope"] == "confocal"
    assert entries["channel.0.specimen"] == "nucleus"
    assert "AcquisitionMode=LaserScanningConfocalMicroscopy" in entries["channel.0.evidence"]
    assert entries["channel.1.specimen"] == "actin"
    for index in (0, 1):
        assert (entries[f"channel.{index}.depth"], entries[f"channel.{index}.width"],
                entries[f"channel.{index}.skip"], entries[f"channel.{index}.iterations"]) == \
            ("4", "16", "4", "2")
        assert entries[f"channel.{index}.seed"] == "7"
        assert entries[f"channel.{index}.level"] == "override"
        assert float(entries[f"channel.{index}.seconds"]) > 0
        assert entries[f"channel.{index}.planes"] == "2"
    assert entries["channel.2.policy"] == "copy" and entries["channel.2.depth"] == ""
    assert entries["channel.2.microscope"] == "brightfield"


def test_report_carries_evidence_and_the_input_is_untouched(denoised):
    source, _, digest, _, report = denoised
    assert sha256(source) == digest
    assert len(report.planes) == 6
    copied = [plane for plane in report.planes if plane.channel == 2]
    assert all(plane.policy == "copy" and plane.level == "copy" for plane in copied)
    assert all(plane.evidence for plane in report.planes)
    summary = report.as_dict()
    assert summary["sources"][0]["sha256"] == digest and summary["format"] == "ome-tiff"
    assert not list(source.parent.glob(".*.tmp"))


def test_files_without_ome_get_ome_and_provenance(tmp_path):
    data = structured((2, 16, 16), np.uint8)
    source = tmp_path / "nucleus_stack.tif"
    tifffile.imwrite(source, data, imagej=True, metadata={"axes": "ZYX"})
    report = denoise_file(source, DenoiseSettings(**FAST))
    output = ome_types.from_tiff(report.output, validate=True)
    assert output.images[0].name == "nucleus_stack.tif (AUTO-DIP denoised)"
    entries = read_provenance(report.output)[0]["entries"]
    assert entries["channel.0.specimen"] == "nucleus"  # from the file name
    assert entries["source.sha256"] == sha256(source)
    with tifffile.TiffFile(report.output) as tif:
        assert (tif.series[0].shape, tif.series[0].axes) == (data.shape, "ZYX")

    png = tmp_path / "rgb.png"
    Image.fromarray(structured((16, 16, 3), np.uint8), mode="RGB").save(png)
    report = denoise_file(png, DenoiseSettings(**FAST))
    with tifffile.TiffFile(report.output) as tif:
        assert (tif.series[0].shape, tif.series[0].axes) == ((16, 16, 3), "YXS")
    entries = read_provenance(report.output)[0]["entries"]
    assert [entries[f"channel.{i}.name"] for i in range(3)] == ["R", "G", "B"]


def test_non_fluorescence_can_be_denoised_when_configured(tmp_path):
    source = tmp_path / "bf.ome.tif"
    data = structured((12, 12), np.uint16)
    write_ome_tiff(source, data, "YX", channels=[{"name": "BF", "contrast_method": "Brightfield"}])
    report = denoise_file(source, DenoiseSettings(**FAST))
    np.testing.assert_array_equal(tifffile.imread(report.output), data)
    settings = DenoiseSettings(**FAST, inference=InferenceSettings(denoise_non_fluorescence=True))
    report = denoise_file(source, settings)
    assert report.planes[0].policy == "denoise"
    assert not np.array_equal(tifffile.imread(report.output), data)


def test_folder_defaults_in_settings_rank_below_metadata(tmp_path):
    source = tmp_path / "x.ome.tif"
    write_ome_tiff(source, structured((2, 12, 12), np.uint16), "CYX",
                   channels=[{"acquisition_mode": "WideField"}, {}])
    settings = DenoiseSettings(**FAST, folder_microscope="two-photon", folder_specimen="mito")
    report = denoise_file(source, settings)
    assert [(p.microscope, p.specimen) for p in report.planes] == [("widefield", "mito"),
                                                                   ("two-photon", "mito")]


def test_multifile_set_becomes_one_output(tmp_path, shared_data):
    folder = tmp_path / "set"
    folder.mkdir()
    for member in (shared_data / "ome/exampletiffs/master").iterdir():
        (folder / member.name).write_bytes(member.read_bytes())
    report = denoise_file(folder / "multifile-Z3.ome.tiff",
                          DenoiseSettings(**{**FAST, "iterations": 1}))
    with tifffile.TiffFile(report.output) as tif:
        assert len(tif.pages) == 5 and tif.series[0].shape == (5, 24, 18)
    after = ome_types.from_tiff(report.output, validate=True)
    assert after.binary_only is None
    blocks = after.images[0].pixels.tiff_data_blocks
    assert len(blocks) == 1 and blocks[0].uuid.file_name == "multifile-Z3.ome.tiff.autodip.ome.tif"
    entries = read_provenance(report.output)[0]["entries"]
    assert entries["source.files"] == "5" and entries["source.0.file"] == "multifile-Z1.ome.tiff"


@pytest.mark.parametrize("change", ["new content, newer mtime", "new content, mtime kept",
                                    "times only (touch)"])
def test_input_changing_during_denoising_discards_the_output(tmp_path, change):
    """Decided by content: other bytes discard the output even when size and mtime are
    put back as they were (cp -p); a touch keeps it."""
    source = tmp_path / "moving.ome.tif"
    write_ome_tiff(source, structured((2, 12, 12), np.uint16), "ZYX")
    before = source.stat()

    def meddle(plane, *_):
        if plane != 2:
            return
        if change == "times only (touch)":
            os.utime(source, ns=(1, before.st_mtime_ns + 5_000_000_000))
            return
        with tifffile.TiffFile(source) as tif:
            offset = tif.pages[0].dataoffsets[0]
        content = bytearray(source.read_bytes())
        content[offset:offset + 8] = bytes(8)  # other pixels, same size
        replacement = tmp_path / ".replacement"
        replacement.write_bytes(bytes(content))
        if change == "new content, mtime kept":
            os.utime(replacement, ns=(before.st_atime_ns, before.st_mtime_ns))
        os.replace(replacement, source)  # the reader keeps the file it opened

    if change == "times only (touch)":
        report = denoise_file(source, DenoiseSettings(**FAST), progress=meddle)
        assert Path(report.output).is_file()
        return
    with pytest.raises(PipelineError, match="changed while"):
        denoise_file(source, DenoiseSettings(**FAST), progress=meddle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["moving.ome.tif"]


def test_cancellation_leaves_no_output(tmp_path):
    source = tmp_path / "c.ome.tif"
    write_ome_tiff(source, structured((3, 12, 12), np.uint16), "ZYX")

    class Stop(BaseException):
        pass

    def stop(plane, *_):
        if plane == 2:
            raise Stop

    with pytest.raises(Stop):
        denoise_file(source, DenoiseSettings(**FAST), progress=stop)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.ome.tif"]


def test_output_equal_to_a_set_member_is_refused(tmp_path, shared_data):
    folder = tmp_path / "set"
    folder.mkdir()
    for member in (shared_data / "ome/exampletiffs/master").iterdir():
        (folder / member.name).write_bytes(member.read_bytes())
    digest = sha256(folder / "multifile-Z1.ome.tiff")
    with pytest.raises(PipelineError, match="refusing"):
        denoise_file(folder / "multifile-Z2.ome.tiff", DenoiseSettings(**FAST),
                     out=folder / "multifile-Z1.ome.tiff")
    assert sha256(folder / "multifile-Z1.ome.tiff") == digest
