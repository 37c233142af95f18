"""`denoise --incomplete`: an acquisition cut short (fewer pages than its metadata
declares) is denoised by hand as the daemon takes it after `incomplete_after_seconds`;
without the flag it fails and the error says the flag would denoise it. Real files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from autodip_watch.cli.app import app
from autodip_watch.provenance import read_provenance

FAST = ["--depth", "4", "--width", "16", "--iterations", "2", "--members", "1", "--device",
        "cpu", "--quiet"]


def _cut_short(path: Path, full: Path, keep: int) -> Path:
    """``path``: the first ``keep`` pages of ``full`` under ``full``'s own description
    (what a microscope leaves when the acquisition stops early)."""
    with tifffile.TiffFile(full) as tif:
        description = tif.pages[0].description
        pixels = tif.asarray(key=range(keep))
    tifffile.imwrite(path, pixels, description=description, metadata=None,
                     photometric="minisblack")
    return path


def imagej(folder: Path) -> Path:
    full = folder / "full-ij.tif"
    tifffile.imwrite(full, np.random.default_rng(0).poisson(100, (6, 24, 24)).astype(np.uint16),
                     imagej=True, metadata={"axes": "ZYX"})
    return _cut_short(folder / "stack.tif", full, 3)


def ome(folder: Path) -> Path:
    full = folder / "full.ome.tif"
    tifffile.imwrite(full, np.random.default_rng(1).poisson(100, (5, 24, 24)).astype(np.uint16),
                     ome=True, metadata={"axes": "ZYX"})
    return _cut_short(folder / "stack.ome.tif", full, 3)


# how the file is made: what the provenance says was missing
CASES = {"ImageJ stack, 3 of 6": (imagej, "3 of 6 planes its ImageJ metadata declares"),
         "OME-TIFF, 3 of 5": (ome, "3 of 5 planes its OME metadata declares")}


@pytest.mark.parametrize("case", list(CASES))
def test_a_file_cut_short_is_refused_with_the_way_out_then_taken_with_incomplete(
        tmp_path, case):
    make, missing = CASES[case]
    raw = make(tmp_path)
    before = raw.read_bytes()
    refused = CliRunner().invoke(app, ["denoise", str(raw), *FAST], env={"COLUMNS": "300"})
    assert refused.exit_code == 1
    assert "--incomplete denoises what it holds" in " ".join(refused.output.split())
    taken = CliRunner().invoke(app, ["denoise", str(raw), *FAST, "--incomplete", "--json"])
    assert taken.exit_code == 0, taken.output
    report = json.loads(taken.stdout[taken.stdout.index("{"):])
    said = " ".join(report["missing"])
    assert missing in said and "by denoise --incomplete" in said, said
    entries = read_provenance(Path(report["output"]))[0]["entries"]
    assert missing in entries["input.missing"]
    assert raw.read_bytes() == before


def test_a_broken_file_gets_no_incomplete_hint(tmp_path):
    """The hint is given only where --incomplete would read the file."""
    raw = tmp_path / "broken.tif"
    raw.write_bytes(b"II*\0" + b"\xff" * 64)
    refused = CliRunner().invoke(app, ["denoise", str(raw), *FAST], env={"COLUMNS": "300"})
    assert refused.exit_code == 1 and "--incomplete" not in refused.output
