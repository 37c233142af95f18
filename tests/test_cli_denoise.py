"""`autodip-watch denoise` and `groups` end to end, on files the tests write."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from autodip_watch.cli.app import app
from autodip_watch.io.reader import ImageFile

FAST = ["--depth", "4", "--width", "16", "--skip", "4", "--iterations", "2", "--device", "cpu"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def structured(shape, dtype, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    high = min(info.max, 4000) if info else 1.0
    base = np.linspace(0, high * 0.8, shape[-1])[None, :] * np.ones(shape)
    return np.clip(base + rng.normal(0, high * 0.05, shape), info.min if info else -1,
                   high).astype(dtype)


def test_denoise_writes_beside_input_and_keeps_it(tmp_path, runner):
    source = tmp_path / "cells.ome.tif"
    data = structured((2, 3, 40, 36), np.uint16)
    tifffile.imwrite(source, data, ome=True, metadata={"axes": "CZYX"})
    before = sha256(source)
    result = runner.invoke(app, ["denoise", str(source), *FAST, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    output = tmp_path / "cells.autodip.ome.tif"
    assert summary["output"] == str(output) and output.is_file()
    assert sha256(source) == before
    with tifffile.TiffFile(output) as tif:
        assert tif.series[0].shape == data.shape
        assert tif.series[0].dtype == np.uint16
        assert tif.series[0].axes == "CZYX"
        denoised = tif.series[0].asarray()
    assert not np.array_equal(denoised, data)
    assert len(summary["planes"]) == 6
    plane = summary["planes"][0]
    assert plane["params"] == {"depth": 4, "width": "16", "skip": 4, "iterations": 2}
    assert plane["level"] == "override"
    assert {"group", "seconds", "microscope", "specimen"} <= set(plane)


@pytest.mark.slow
def test_group_configuration_is_used_without_overrides(tmp_path, runner):
    source = tmp_path / "nuclei.tif"
    tifffile.imwrite(source, structured((24, 24), np.uint8))
    result = runner.invoke(app, ["denoise", str(source), "--microscope", "widefield",
                                 "--specimen", "nucleus", "--iterations", "1", "--device", "cpu",
                                 "--json"])
    assert result.exit_code == 0, result.output
    plane = json.loads(result.stdout)["planes"][0]
    assert plane["group"] == "widefield/nucleus"
    assert plane["params"] == {"depth": 8, "width": "asc", "skip": 4, "iterations": 1}


def test_png_palette_index_is_the_intensity(tmp_path, runner):
    indices = structured((32, 32), np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette([v for i in range(256) for v in (0, i, 0)])  # a green LUT
    source = tmp_path / "green.png"
    image.save(source)
    result = runner.invoke(app, ["denoise", str(source), *FAST, "--json"])
    assert result.exit_code == 0, result.output
    output = Path(json.loads(result.stdout)["output"])
    assert output.name == "green.png.autodip.ome.tif"
    denoised = tifffile.imread(output)
    assert denoised.shape == (32, 32) and denoised.dtype == np.uint8
    # what the pipeline denoises is the index plane, not a rendered RGB image
    image_file = ImageFile(source)
    planes = [plane for _, plane in image_file.planes(0)]
    assert len(planes) == 1
    np.testing.assert_array_equal(planes[0], indices)


def test_refuses_output_equal_to_input(tmp_path, runner):
    source = tmp_path / "raw.tif"
    tifffile.imwrite(source, structured((16, 16), np.uint16))
    before = sha256(source)
    result = runner.invoke(app, ["denoise", str(source), *FAST, "--out", str(source)])
    assert result.exit_code != 0
    assert "refusing" in result.output
    assert sha256(source) == before


def test_out_folder_and_several_inputs(tmp_path, runner):
    out = tmp_path / "out"
    out.mkdir()
    sources = []
    for name in ("a.tif", "b.tif"):
        sources.append(tmp_path / name)
        tifffile.imwrite(sources[-1], structured((16, 20), np.int16))
    result = runner.invoke(app, ["denoise", *map(str, sources), *FAST, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["a.tif.autodip.ome.tif", "b.tif.autodip.ome.tif"]


def test_unreadable_input_is_a_clear_error(tmp_path, runner):
    bogus = tmp_path / "notes.tif"
    bogus.write_text("this is not a TIFF")
    result = runner.invoke(app, ["denoise", str(bogus), *FAST])
    assert result.exit_code == 1
    assert "notes.tif" in result.output
    assert not list(tmp_path.glob("*.autodip.ome.tif"))


def test_bad_override_is_refused(tmp_path, runner):
    source = tmp_path / "x.tif"
    tifffile.imwrite(source, structured((16, 16), np.uint16))
    result = runner.invoke(app, ["denoise", str(source), "--width", "48"])
    assert result.exit_code == 2 and "width" in result.output


def test_groups_prints_the_table(runner):
    result = runner.invoke(app, ["groups", "--json"])
    assert result.exit_code == 0
    document = json.loads(result.stdout)
    rows = {(row["level"], row["group"]): row for row in document["groups"]}
    assert len(rows) == 16
    assert rows[("microscope+specimen", "widefield/nucleus")]["width"] == "asc"
    assert rows[("all", "all")]["iterations"] == 700
    text = runner.invoke(app, ["groups"]).stdout
    assert "two-photon/nucleus" in text and "best_param_iter_comb_dict.yaml" in text


@pytest.mark.slow
def test_console_script_runs(tmp_path):
    source = tmp_path / "s.tif"
    tifffile.imwrite(source, structured((16, 16), np.float32))
    completed = subprocess.run([sys.executable, "-m", "autodip_watch.cli", "denoise", str(source),
                                *FAST, "--json"], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["output"].endswith("s.tif.autodip.ome.tif")
    out = tifffile.imread(tmp_path / "s.tif.autodip.ome.tif")
    assert out.dtype == np.float32


def test_status_before_the_daemon_ever_ran(tmp_path, runner):
    """Not running: exit status 3, as systemctl status says of an inactive unit."""
    result = runner.invoke(app, ["status", "--state-dir", str(tmp_path / "state"), "--json"])
    assert result.exit_code == 3, result.output
    report = json.loads(result.stdout)
    assert report["daemon"]["up"] is False and "no queue database" in report["daemon"]["reason"]
    assert report["daemon"]["state"] == "never-ran"
    assert report["counts"]["done"] == 0
    text = runner.invoke(app, ["status", "--state-dir", str(tmp_path / "state")])
    assert text.exit_code == 3 and "daemon not running" in text.stdout


def test_denoise_batching_on_fits_planes_together(tmp_path, runner):
    source = tmp_path / "stack.ome.tif"
    data = structured((5, 40, 36), np.uint16)
    tifffile.imwrite(source, data, ome=True, metadata={"axes": "ZYX"})
    result = runner.invoke(app, ["denoise", str(source), *FAST, "--batching", "on",
                                 "--max-batch", "3", "--members", "1", "--json"])
    assert result.exit_code == 0, result.output
    notes = [plane["note"] for plane in json.loads(result.stdout)["planes"]]
    assert notes == ["fitted in a batch of 3"] * 3 + ["fitted in a batch of 2"] * 2
    bad = runner.invoke(app, ["denoise", str(source), *FAST, "--batching", "sometimes"])
    assert bad.exit_code == 2 and "--batching: must be one of auto, on, off" in bad.output


def test_denoise_of_several_files_fits_their_planes_together(tmp_path, runner):
    """Four files side by side with batching on: the three good ones are fitted in one
    batch of 3, the truncated one fails alone and says so, the others are written."""
    sources = []
    for name in ("a", "broken", "b", "c"):
        sources.append(tmp_path / f"{name}.ome.tif")
        tifffile.imwrite(sources[-1], structured((40, 36), np.uint16, seed=len(sources)),
                         ome=True)
    broken = sources[1]
    broken.write_bytes(broken.read_bytes()[:-300])
    hashes = {path: sha256(path) for path in sources}
    # Imports happen in the first file's thread otherwise; done here, no file waits on
    # them past the shared batch's linger.
    assert runner.invoke(app, ["denoise", str(sources[0]), *FAST, "--out",
                               str(tmp_path / "warm.ome.tif")]).exit_code == 0
    result = runner.invoke(app, ["denoise", *map(str, sources), *FAST, "--batching", "on",
                                 "--jobs-together", "4", "--members", "1", "--json"])
    assert result.exit_code == 1, result.output
    summaries = json.loads(result.stdout)
    assert [Path(s["input"]).name for s in summaries] == [p.name for p in sources]
    assert "truncated" in summaries[1]["error"]
    for summary in (summaries[0], *summaries[2:]):
        assert [plane["note"] for plane in summary["planes"]] == ["fitted in a batch of 3"]
        assert Path(summary["output"]).is_file()
    assert not (tmp_path / "broken.autodip.ome.tif").exists()
    assert all(sha256(path) == digest for path, digest in hashes.items())
    text = runner.invoke(app, ["denoise", *map(str, sources[2:]), *FAST, "--batching", "on",
                               "--out", str(tmp_path / "again")], catch_exceptions=False)
    assert text.exit_code == 2 and "several inputs need a folder" in " ".join(text.output.split())
