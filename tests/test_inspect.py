"""`autodip-watch inspect`: per image and channel, labels, evidence, level and parameters."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from autodip_watch.cli.app import app
from autodip_watch.io.errors import ImageReadError
from autodip_watch.settings.denoise import DenoiseSettings
from autodip_watch.pipeline.plan import inspect_file
from helpers.omefiles import structured, write_ome_tiff

CHANNEL_KEYS = {"index", "name", "microscope", "specimen", "evidence", "level", "params"}

#: What the metadata of the real files states (SOURCES.md), channel by channel.
EXPECTED = {
    "ome/ome-model/2016-06/multi-channel.ome.xml": [("confocal", None), ("confocal", None),
                                                    ("two-photon", None)],
    "ome/ome-types/OverViewScan.ome.xml": [("widefield", "nucleus")],
    "ome/ome-model/2016-06/instrument-units-default.ome.xml": [("confocal", None)],
    "ome/ome-types/fake-plate-rows-2.ome.xml": [("brightfield", None)],
    "ome/ome-types/MMStack.ome.xml": [("unknown", None), ("unknown", "nucleus"),
                                      ("unknown", None)],
    "ome/OMETIFF.jl/issue38.ome.xml": [("widefield", None), ("widefield", None)],
}


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_json_shape(tmp_path, runner):
    path = tmp_path / "cells.ome.tif"
    write_ome_tiff(path, structured((2, 3, 10, 12), np.uint16), "CZYX",
                   channels=[{"name": "Hoechst", "acquisition_mode": "SpinningDiskConfocal"},
                             {"name": "BF", "contrast_method": "Brightfield"}])
    result = runner.invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert set(document) == {"images", "errors"} and document["errors"] == []
    [image] = document["images"]
    assert image["name"] == "cells" and image["axes"] == "CZYX" and image["file"] == str(path)
    first, second = image["channels"]
    assert CHANNEL_KEYS <= set(first)
    assert (first["microscope"], first["specimen"], first["level"]) == \
        ("confocal", "nucleus", "microscope+specimen")
    assert first["params"] == {"depth": 4, "width": "32", "skip": 4, "iterations": 1200}
    assert any("SpinningDiskConfocal" in line for line in first["evidence"])
    assert (second["microscope"], second["policy"], second["level"], second["params"]) == \
        ("brightfield", "copy", "copy", None)


def test_overrides_and_table_output(tmp_path, runner):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, structured((16, 16), np.uint8))
    result = runner.invoke(app, ["inspect", str(path), "--microscope", "widefield",
                                 "--specimen", "mito"])
    assert result.exit_code == 0, result.output
    assert "widefield/mito" in result.stdout and "8/32/4/400" in result.stdout
    assert "explicit override" in result.stdout
    bad = runner.invoke(app, ["inspect", str(path), "--microscope", "confocl"])
    assert bad.exit_code == 2 and "confocl" in bad.output


def test_unreadable_files_do_not_stop_the_others(tmp_path, runner):
    good = tmp_path / "good.ome.tif"
    write_ome_tiff(good, structured((8, 8), np.uint8), "YX")
    text = tmp_path / "notes.tif"
    text.write_text("not an image")
    result = runner.invoke(app, ["inspect", str(text), str(good), str(tmp_path / "gone.tif")])
    assert result.exit_code == 1
    assert "notes.tif" in result.output and "gone.tif" in result.output
    assert str(good) in result.stdout
    as_json = json.loads(runner.invoke(app, ["inspect", str(text), str(good), "--json"]).stdout)
    assert [e["file"] for e in as_json["errors"]] == [str(text)]
    assert len(as_json["images"]) == 1


@pytest.mark.slow
def test_every_real_file_parses_or_fails_clearly(shared_data):
    folder = shared_data / "ome"
    if not folder.is_dir():
        pytest.skip(f"no OME samples in {folder}")
    settings = DenoiseSettings()
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    assert files
    seen = {}
    for path in files:
        try:
            images = inspect_file(path, settings)
        except ImageReadError as error:
            assert str(path) in str(error)  # a clear error that names the file
            continue
        assert images, path
        for image in images:
            for channel in image["channels"]:
                assert CHANNEL_KEYS <= set(channel)
                assert channel["evidence"] and channel["microscope"] and channel["specimen"]
                if channel["policy"] == "denoise":
                    assert set(channel["params"]) == {"depth", "width", "skip", "iterations"}
        seen[path.relative_to(shared_data).as_posix()] = images
    for name, expected in EXPECTED.items():
        channels = seen[name][0]["channels"]
        assert [c["microscope"] for c in channels] == [m for m, _ in expected], name
        for channel, (_, specimen) in zip(channels, expected):
            if specimen is not None:
                assert channel["specimen"] == specimen, name
    # the spec sample: 2 confocal channels and a two-photon one, with their groups
    levels = [(c["level"], c["group"]) for c in
              seen["ome/ome-model/2016-06/multi-channel.ome.xml"][0]["channels"]]
    assert levels == [("microscope", "confocal")] * 2 + [("microscope", "two-photon")]
    assert seen["ome/ome-types/fake-plate-rows-2.ome.xml"][0]["channels"][0]["policy"] == "copy"


def test_cli_over_the_real_folder(shared_data, runner):
    files = sorted(str(p) for p in (shared_data / "ome").rglob("*") if p.is_file())
    result = runner.invoke(app, ["inspect", *files, "--json"])
    document = json.loads(result.stdout)
    assert result.exit_code == (1 if document["errors"] else 0)
    assert {image["file"] for image in document["images"]} | \
        {error["file"] for error in document["errors"]} == set(files)
