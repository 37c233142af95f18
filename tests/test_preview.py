"""`autodip-watch show`: a before/after PNG of a real output, read back and checked."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from autodip_watch.settings.denoise import DenoiseSettings
from autodip_watch.pipeline.denoise import denoise_file
from autodip_watch.io.outputs import preview_path
from autodip_watch.preview import (HIGH_PERCENTILE, LOW_PERCENTILE, PreviewError, build_preview,
                                   find_pair, structured_region)


def cells(shape=(96, 96), seed: int = 0) -> np.ndarray:
    """Two channels of blobs on a dark background with Poisson noise (uint16)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    planes = []
    for channel in range(2):
        clean = np.full(shape, 8.0)  # few photons: the noise is plain to see
        for _ in range(6):
            cy, cx = rng.uniform(10, shape[0] - 10), rng.uniform(10, shape[1] - 10)
            clean += 30 * ((yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(25, 80))
        planes.append(rng.poisson(clean * (1 + channel)).astype(np.uint16))
    return np.stack(planes)


@pytest.fixture(scope="module")
def denoised(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("show")
    raw = folder / "cells.ome.tif"
    tifffile.imwrite(raw, cells(), metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "Phalloidin"]}})
    settings = DenoiseSettings(microscope="widefield", depth=4, width="16", iterations=60,
                               device="cpu")
    report = denoise_file(raw, settings)
    return raw, Path(report.output)


def _gray(png: Path) -> np.ndarray:
    return np.asarray(Image.open(png).convert("L"), dtype=np.float64)


def _native(zoom: np.ndarray, height: int, width: int) -> np.ndarray:
    """A zoomed panel sampled back at the centres of its data pixels."""
    rows = ((np.arange(height) + 0.5) * zoom.shape[0] / height).astype(int)
    columns = ((np.arange(width) + 0.5) * zoom.shape[1] / width).astype(int)
    return zoom[np.ix_(rows, columns)]


def _roughness(panel: np.ndarray) -> float:
    """Mean absolute difference of neighbouring pixels: noise makes it large."""
    return float(np.mean(np.abs(np.diff(panel, axis=1))))


@pytest.mark.slow
def test_show_writes_a_png_whose_raw_and_denoised_panels_differ(denoised, tmp_path):
    raw, output = denoised
    picture = build_preview(output)
    png = picture.save(tmp_path / "cells.png")
    picture.close()
    assert png.stat().st_size > 20_000
    image = _gray(png)
    width, height = picture.figure.get_size_inches() * picture.dpi
    assert abs(image.shape[0] - height) <= 1 and abs(image.shape[1] - width) <= 1
    assert [panel.channel for panel in picture.channels] == [0, 1]
    for panel in picture.channels:
        boxes = {key: image[y0:y1, x0:x1] for key, (x0, y0, x1, y1) in panel.boxes.items()}
        height, width = np.min([box.shape for box in boxes.values()], axis=0)
        boxes = {key: box[:height, :width] for key, box in boxes.items()}
        assert height > 100 and width > 100
        # the same data would give the same pixels: the panels show different planes
        assert np.mean(np.abs(boxes["raw"] - boxes["denoised"])) > 3
        # and the denoised one is the smoother one, in full and in the zoom
        assert _roughness(boxes["denoised"]) < 0.7 * _roughness(boxes["raw"])
        _, _, crop_height, crop_width = panel.crop
        zoomed = {key: _native(boxes[key], crop_height, crop_width)
                  for key in ("raw_crop", "denoised_crop")}
        assert _roughness(zoomed["denoised_crop"]) < 0.7 * _roughness(zoomed["raw_crop"])
        # one stretch for both, from the raw plane's percentiles
        assert (panel.low, panel.high) == pytest.approx(
            tuple(np.percentile(panel.raw, [LOW_PERCENTILE, HIGH_PERCENTILE])))
        # what is shown is what is in the files
        with tifffile.TiffFile(raw) as source, tifffile.TiffFile(output) as result:
            assert np.array_equal(panel.raw, source.series[0].asarray()[panel.channel])
            assert np.array_equal(panel.denoised, result.series[0].asarray()[panel.channel])
    caption = picture.figure.texts[-1].get_text()
    assert "group widefield" in caption and "depth 4, width 16, skip" in caption
    assert "60 iterations" in caption and " s" in caption and "ch 1 'Phalloidin'" in caption


@pytest.mark.slow
def test_show_from_the_command_line_raw_or_output(denoised, tmp_path):
    raw, output = denoised
    for given in (output, raw):  # the output, or the raw file with its output beside it
        target = tmp_path / f"from-{given.name}.png"
        result = subprocess.run([sys.executable, "-m", "autodip_watch.cli", "show", str(given),
                                 "--channel", "1", "--out", str(target)],
                                capture_output=True, text=True, timeout=120,
                                preexec_fn=lambda: os.umask(0o027))
        assert result.returncode == 0, result.stderr
        assert "wrote" in result.stderr and target.is_file()
        assert stat.S_IMODE(target.stat().st_mode) == 0o640  # 0666 & ~umask, not 0600
        assert Image.open(target).size[0] > 400
    default = subprocess.run([sys.executable, "-m", "autodip_watch.cli", "show", str(output)],
                             capture_output=True, text=True, timeout=120)
    assert default.returncode == 0, default.stderr
    assert preview_path(output).is_file()
    assert preview_path(output).name == "cells.autodip.preview.png"


@pytest.mark.slow
@pytest.mark.parametrize("arguments, message", [
    (["--z", "3"], "--z 3 is outside the image"),
    (["--channel", "5"], "no channel 5"),
    (["--series", "2"], "no image 2"),
])
def test_show_refuses_a_plane_that_is_not_there(denoised, arguments, message):
    _, output = denoised
    result = subprocess.run([sys.executable, "-m", "autodip_watch.cli", "show", str(output),
                             *arguments], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and message in result.stderr, result.stderr


def test_pairs_are_found_or_the_missing_half_is_named(denoised, tmp_path):
    raw, output = denoised
    assert find_pair(output)[:2] == (raw, output)
    assert find_pair(raw)[:2] == (raw, output)
    lonely = tmp_path / "lonely.ome.tif"
    tifffile.imwrite(lonely, cells()[0])
    with pytest.raises(PreviewError, match="no denoised output of .*lonely"):
        find_pair(lonely)
    with pytest.raises(PreviewError, match="is a folder; give one image file"):
        find_pair(tmp_path)
    moved = tmp_path / "moved.autodip.ome.tif"
    moved.write_bytes(output.read_bytes())
    assert find_pair(moved)[:2] == (raw, moved)  # the raw file is still where it was denoised
    assert find_pair(moved, raw=raw)[:2] == (raw, moved)
    other = tmp_path / "cells.ome.tif"
    tifffile.imwrite(other, cells(seed=5), metadata={"axes": "CYX"})
    notes = find_pair(moved, raw=other)[2]
    assert notes and "not the file" in notes[0] or "changed since" in notes[0]


@pytest.mark.parametrize("corner", [(8, 8), (8, 60), (60, 8), (60, 60), (30, 40)])
def test_the_zoom_goes_where_the_structure_is(corner):
    plane = np.zeros((96, 96))
    top, left = corner
    plane[top:top + 24, left:left + 24] = 1.0  # the only structure: a square's edges
    row, column = structured_region(plane, 24)
    assert abs(row - top) <= 12 and abs(column - left) <= 12, (row, column)
    assert 0 <= row <= 96 - 24 and 0 <= column <= 96 - 24


@pytest.mark.parametrize("suffix, name, own", [
    (".autodip.ome.tif", "cells.autodip.preview.png", True),
    (".autodip.ome.tif", "cells.autodip.ome.tif", True),
    (".autodip.ome.tif", "cells.preview.png", False),  # a user's file, not ours
    (".dn.ome.tiff", "cells.dn.preview.png", True),
    (".dn.ome.tiff", "cells.autodip.preview.png", True),  # the default's, always ours
    (".dn.ome.tiff", "cells.png", False),
])
def test_previews_are_the_daemons_own_outputs(suffix, name, own):
    """A watch pattern such as *.png must never take a preview as a raw image."""
    from autodip_watch.io.outputs import preview_path
    from autodip_watch.settings.config import Config

    config = Config(output={"suffix": suffix})
    assert config.is_output(Path("/data") / name) is own
    stem = suffix.rsplit(".ome.tif", 1)[0]
    if own and name.endswith(stem + ".preview.png"):
        output = Path("/data") / (name[: -len(stem + ".preview.png")] + suffix)
        assert preview_path(output) == Path("/data") / name



@pytest.mark.parametrize("layout, found", [
    ("output beside the raw file", "beside"),
    ("output in another folder (output root, --out), raw file where it was", "denoised at"),
    ("raw file both beside the output and where it was denoised", "beside"),
    ("output in another folder, raw file moved away", None),
])
def test_show_finds_the_raw_file_beside_the_output_or_where_it_was_denoised(tmp_path, layout,
                                                                           found):
    """A daemon with an output root, or `denoise --out folder/`, writes the output away
    from its raw file: `show OUTPUT` finds the raw file where the provenance says it was
    denoised (input.path), after looking beside the output; where neither holds it, the
    error asks for --raw. Real tiny outputs."""
    acquisition, results = tmp_path / "acquisition", tmp_path / "results"
    acquisition.mkdir()
    results.mkdir()
    raw = acquisition / "cells.ome.tif"
    tifffile.imwrite(raw, cells(shape=(32, 32))[0])
    settings = DenoiseSettings(depth=4, width="16", iterations=2, members=1, device="cpu")
    beside = layout.startswith("output beside")
    output = Path(denoise_file(raw, settings, out=None if beside else results).output)
    if layout.startswith("raw file both"):
        (results / "cells.ome.tif").write_bytes(raw.read_bytes())
    if layout.endswith("moved away"):
        raw.rename(tmp_path / "cells.ome.tif")
    if found is None:
        with pytest.raises(PreviewError, match="neither beside it nor where it was denoised; "
                                               "give the raw file with --raw"):
            find_pair(output)
        return
    expected = output.parent / "cells.ome.tif" if found == "beside" else raw
    assert find_pair(output)[:2] == (expected, output)
