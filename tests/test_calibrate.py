"""`autodip-watch calibrate`: selection rules by hand, and a tiny grid end to end."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from autodip_watch.calibration.errors import CalibrationError
from autodip_watch.calibration.fitting import run_fit, settings_key
from autodip_watch.calibration.grid import CalibrationGrid, GridPoint
from autodip_watch.calibration.pairs import CalibrationPair, PreparedPair, load_pairs, prepare_pair
from autodip_watch.calibration.run import calibrate
from autodip_watch.calibration.selection import Candidate, average_ranks, criterion, group_members, group_optimum, image_optimum
from autodip_watch.calibration.state import CalibrationState
from autodip_watch.settings.base import ConfigError
from autodip_watch.settings.calibrate import CalibrateSettings
from autodip_watch.cli.app import app
from autodip_watch.dip.options import FitOptions
from autodip_watch.dip.fit import fit_tile
from autodip_watch.dip.network import DipParams
from autodip_watch.metrics import psnr
from autodip_watch.transfer.table import CalibrationTable
from helpers.pairs import make_pairs

C = Candidate


# --------------------------------------------------------------------------- ranks by hand

def test_average_ranks_share_ties():
    assert average_ranks([0.1, 0.3, 0.1, 0.2]).tolist() == [1.5, 4.0, 1.5, 3.0]
    assert average_ranks([30, 32, 32, 28], descending=True).tolist() == [3.0, 1.5, 1.5, 4.0]
    assert average_ranks([0.2, float("nan"), 0.1]).tolist() == [2.0, 3.0, 1.0]


def test_rank_sum_of_one_image_by_hand():
    # lpips ranks: .08 -> 1, the two .10 -> 2.5, .12 -> 4
    # psnr ranks (descending): the two 31 -> 1.5, 30 -> 3, 29 -> 4
    scores = {
        C(4, "16", 4, 100): {"lpips": 0.10, "psnr": 30.0},  # 2.5 + 3   = 5.5
        C(4, "16", 4, 200): {"lpips": 0.08, "psnr": 29.0},  # 1   + 4   = 5
        C(4, "32", 4, 100): {"lpips": 0.10, "psnr": 31.0},  # 2.5 + 1.5 = 4
        C(4, "32", 4, 200): {"lpips": 0.12, "psnr": 31.0},  # 4   + 1.5 = 5.5
    }
    values, lower = criterion(scores, "lpips_psnr")
    assert lower
    assert values == {C(4, "16", 4, 100): 5.5, C(4, "16", 4, 200): 5.0,
                      C(4, "32", 4, 100): 4.0, C(4, "32", 4, 200): 5.5}
    assert image_optimum(scores, "lpips_psnr") == (C(4, "32", 4, 100), 4.0)
    # Single measures: PSNR tie between the two 31 dB candidates -> fewer iterations.
    assert image_optimum(scores, "psnr") == (C(4, "32", 4, 100), 31.0)
    assert image_optimum(scores, "lpips") == (C(4, "16", 4, 200), 0.08)


def test_rank_sum_tie_prefers_fewer_iterations_then_grid_order():
    scores = {C(5, "16", 4, 200): {"lpips": 0.1, "psnr": 30.0},   # 1 + 2 = 3
              C(4, "32", 4, 100): {"lpips": 0.2, "psnr": 31.0}}   # 2 + 1 = 3
    assert image_optimum(scores, "lpips_psnr") == (C(4, "32", 4, 100), 3.0)
    same_stop = {C(5, "16", 4, 100): {"lpips": 0.1, "psnr": 30.0},
                 C(4, "asc", 0, 100): {"lpips": 0.2, "psnr": 31.0},
                 C(4, "32", 4, 100): {"lpips": 0.3, "psnr": 29.0}}  # 3 + 3 = 6
    # Tied at 3: same iterations -> lower depth wins.
    assert image_optimum(same_stop, "lpips_psnr") == (C(4, "asc", 0, 100), 3.0)
    width_tie = {C(4, "asc", 4, 100): {"mse": 1.0}, C(4, "64", 4, 100): {"mse": 1.0},
                 C(4, "64", 0, 100): {"mse": 1.0}}
    assert image_optimum(width_tie, "mse")[0] == C(4, "64", 0, 100)


P, Q, R = C(4, "16", 4, 100), C(4, "32", 4, 100), C(4, "16", 4, 200)
# Image X: lpips ranks P1 Q2 R3, psnr ranks P3 Q1 R2 -> rank sums P4 Q3 R5.
IMAGE_X = {P: {"lpips": 0.1, "psnr": 30.0}, Q: {"lpips": 0.2, "psnr": 32.0},
           R: {"lpips": 0.3, "psnr": 31.0}}
# Image Y: lpips ranks P1 Q3 R2, psnr ranks P1 Q3 R2 -> rank sums P2 Q6 R4.
IMAGE_Y = {P: {"lpips": 0.1, "psnr": 33.0}, Q: {"lpips": 0.3, "psnr": 30.0},
           R: {"lpips": 0.2, "psnr": 31.0}}
# Image Z: lpips ranks P1 Q3 R2, psnr ranks P2 Q1 R3 -> rank sums P3 Q4 R5.
IMAGE_Z = {P: {"lpips": 0.1, "psnr": 31.0}, Q: {"lpips": 0.3, "psnr": 32.0},
           R: {"lpips": 0.2, "psnr": 30.0}}


def test_group_optimum_averages_rank_sums_by_hand():
    assert image_optimum(IMAGE_X, "lpips_psnr") == (Q, 3.0)
    assert image_optimum(IMAGE_Y, "lpips_psnr") == (P, 2.0)
    # Mean rank sums over X and Y: P 3, Q 4.5, R 4.5.
    assert group_optimum([IMAGE_X, IMAGE_Y], "lpips_psnr") == (P, 3.0)
    # Single measures average the values: mean PSNR P 31.5, Q 31, R 31.
    assert group_optimum([IMAGE_X, IMAGE_Y], "psnr") == (P, 31.5)
    assert group_optimum([IMAGE_X, IMAGE_Y], "lpips") == (P, pytest.approx(0.1))


def test_group_optimum_tie_goes_to_grid_order():
    # Mean rank sums over X and Z: P 3.5, Q 3.5, R 5; P and Q stop at 100, depth 4,
    # and width 16 comes before 32.
    assert group_optimum([IMAGE_X, IMAGE_Z], "lpips_psnr") == (P, 3.5)


def test_group_optimum_restrict_keeps_full_grid_ranks():
    # Restricted to width 16 (P, R): the ranks still count Q, so means are P 3, R 4.5.
    best = group_optimum([IMAGE_X, IMAGE_Y], "lpips_psnr",
                             restrict=lambda c: c.width == "16")
    assert best == (P, 3.0)


def _prepared(name, microscope, specimen):
    plane = np.zeros((16, 16), np.float32)
    return PreparedPair(name, microscope, specimen, plane, plane, "", "", "a", "b",
                            "affine", None, None)


def test_group_members_by_level():
    pairs = [_prepared("a", "widefield", "nucleus"), _prepared("b", "widefield", "actin"),
             _prepared("c", "confocal", "unknown")]
    groups = group_members(pairs)
    assert groups == {
        ("all", "all"): [0, 1, 2],
        ("microscope", "widefield"): [0, 1], ("microscope", "confocal"): [2],
        ("specimen", "nucleus"): [0], ("specimen", "actin"): [1],
        ("microscope_specimen", "widefield/nucleus"): [0],
        ("microscope_specimen", "widefield/actin"): [1],
    }


def test_grid_validation_and_order():
    grid = CalibrationGrid(depths=(5, 4), widths=("asc", "16", "asc_to512"), skips=(4,),
                               max_iterations=300, every=100)
    assert [p.key for p in grid.points()] == ["d4/w16/s4", "d4/wasc/s4", "d5/w16/s4", "d5/wasc/s4"]
    assert grid.iterations == [100, 200, 300]
    with pytest.raises(CalibrationError, match="multiple"):
        CalibrationGrid(max_iterations=250, every=100)
    with pytest.raises(CalibrationError, match="depths"):
        CalibrationGrid(depths=(3,))
    with pytest.raises(CalibrationError, match="width"):
        CalibrationGrid(widths=("48",))
    assert len(CalibrationGrid().points()) == 5 * 7 * 2


def test_config_section_sets_the_grid():
    settings = CalibrateSettings.parse(
        {"depths": "4,5", "widths": ["16", "asc"], "skips": [4], "max_iterations": 300,
         "every": 100, "lpips": False})
    assert settings.grid().points()[0] == GridPoint(4, "16", 4)
    assert settings.lpips is False
    with pytest.raises(ConfigError, match="depth: unknown key; did you mean 'depths'"):
        CalibrateSettings.parse({"depth": 4})
    with pytest.raises(ConfigError, match="multiple"):
        CalibrateSettings.parse({"max_iterations": 250})


# --------------------------------------------------------------------------- pairs

def test_folder_layout_and_csv_give_the_same_pairs(tmp_path):
    root = make_pairs(tmp_path / "pairs")
    from_folder = load_pairs(root)
    assert [p.name for p in from_folder] == ["confocal/actin/cell2", "confocal/actin/cell3",
                                             "widefield/nucleus/cell0", "widefield/nucleus/cell1"]
    assert {(p.microscope, p.specimen) for p in from_folder} == {("confocal", "actin"),
                                                                  ("widefield", "nucleus")}
    csv_path = tmp_path / "list.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "noisy", "gt", "microscope", "specimen", "match"])
        for pair in from_folder:
            writer.writerow([pair.name, os.path.relpath(pair.noisy, tmp_path),
                             os.path.relpath(pair.ground_truth, tmp_path), "Wide-Field",
                             "Nuclei", "none"])
    from_csv = load_pairs(csv_path)
    assert [p.noisy for p in from_csv] == [p.noisy for p in from_folder]
    assert {(p.microscope, p.specimen, p.match) for p in from_csv} == {
        ("widefield", "nucleus", "none")}


def test_pairs_errors_are_explicit(tmp_path):
    root = make_pairs(tmp_path / "pairs")
    (root / "widefield" / "nucleus" / "cell1_gt.tif").unlink()
    with pytest.raises(CalibrationError, match="without a ground truth"):
        load_pairs(root)
    bad = tmp_path / "bad.csv"
    bad.write_text("noisy,microscope\na.tif,confocal\n")
    with pytest.raises(CalibrationError, match="missing column"):
        load_pairs(bad)
    with pytest.raises(CalibrationError, match="do not exist"):
        load_pairs(tmp_path / "nowhere")


def test_channels_and_crops(tmp_path):
    rgb = (np.random.default_rng(0).random((600, 40, 3)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "n.tif", rgb)
    tifffile.imwrite(tmp_path / "g.tif", rgb)
    pair = CalibrationPair("x", tmp_path / "n.tif", tmp_path / "g.tif", "widefield",
                               "actin", channel=2)
    prepared = prepare_pair(pair)
    assert prepared.shape == (512, 40) and prepared.crop == (44, 0, 512, 40)
    assert prepare_pair(pair, crop=32).shape == (32, 32)
    with pytest.raises(CalibrationError, match="channel"):
        prepare_pair(CalibrationPair("y", tmp_path / "n.tif", tmp_path / "g.tif",
                                             "widefield", "actin"))


# --------------------------------------------------------------------------- end to end

def test_run_fit_snapshots_are_the_shorter_fits(tmp_path):
    """A snapshot at iteration i of one run scores exactly what an i-iteration fit returns."""
    pair = prepare_pair(load_pairs(make_pairs(tmp_path / "pairs"))[0])
    rows = run_fit(pair, GridPoint(4, "16", 4), 4, 2, "cpu", seed=0, with_lpips=False)
    assert [row["iteration"] for row in rows] == [2, 4]
    assert rows[0]["lpips"] is None
    short = fit_tile(pair.noisy, DipParams(4, "16", 4, 2), "cpu", FitOptions(seed=0))
    assert psnr(short.output, pair.truth) == pytest.approx(rows[0]["psnr"], abs=1e-4)


TINY = CalibrationGrid(depths=(4,), widths=("16", "32"), skips=(4,), max_iterations=4,
                           every=2)


def _without_date(path: Path) -> dict:
    document = tomllib.loads(path.read_text())
    document["provenance"].pop("date")
    return document


@pytest.mark.slow
def test_interrupted_calibration_resumes_to_the_same_table(tmp_path, lpips_backbone):
    pairs = make_pairs(tmp_path / "pairs")
    whole = tmp_path / "whole"
    whole.mkdir()
    report = calibrate(pairs, whole / "site.toml", TINY, device="cpu")
    assert (report.fits_total, report.fits_run, report.fits_resumed) == (8, 8, 0)

    # Interrupted: the real CLI in another process stops after 3 fits...
    parts = tmp_path / "parts"
    parts.mkdir()
    env = {**os.environ, "TORCH_HOME": str(lpips_backbone), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "autodip_watch.cli", "calibrate", str(pairs), "--out",
               str(parts / "site.toml"), "--depths", "4", "--widths", "16,32", "--skips", "4",
               "--max-iterations", "4", "--every", "2", "--device", "cpu", "--stop-after", "3"]
    stopped = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert stopped.returncode == 3, stopped.stderr
    assert "run the same command again" in stopped.stderr.lower()
    # stderr is not a terminal here (a batch log): plain progress lines, not silence
    lines = re.findall(r"calibrating: (\d)/8 fits \((\d+) %\)", stopped.stderr)
    percents = [int(percent) for _, percent in lines]
    assert len(lines) >= 3 and percents == sorted(percents) and percents[-1] <= 38, \
        stopped.stderr
    assert not (parts / "site.toml").exists()
    with CalibrationState(parts / "site.calibration.sqlite") as state:
        assert len(state.done(settings_key(4, 2, 0, True))) == 3

    # ... and resumes here, running only the 5 missing fits.
    resumed = calibrate(pairs, parts / "site.toml", TINY, device="cpu")
    assert (resumed.fits_run, resumed.fits_resumed) == (5, 3)
    assert _without_date(parts / "site.toml") == _without_date(whole / "site.toml")

    table = CalibrationTable.load(whole / "site.toml")
    assert table.default_metric == "lpips_psnr"
    assert set(table.metrics) == {"mae", "mse", "psnr", "ssim", "lpips", "lpips_psnr"}
    transfer = table.lookup("widefield", "nucleus")
    assert transfer.level == "microscope+specimen"
    assert transfer.params.depth == 4 and transfer.params.iterations in (2, 4)
    assert table.lookup("two-photon", "mito").level == "all"

    document = tomllib.loads((whole / "site.toml").read_text())
    assert document["provenance"]["images"] == 4
    assert document["provenance"]["search"]["widths"] == ["16", "32"]
    assert document["provenance"]["versions"]["autodip_watch"]
    images = document["images"]
    assert [image["name"] for image in images][0] == "confocal/actin/cell2"
    for image in images:
        assert len(image["noisy_sha256"]) == 64 and len(image["ground_truth_sha256"]) == 64
        assert set(image["optimum"]) == {"mae", "mse", "psnr", "ssim", "lpips", "lpips_psnr"}
        assert not Path(image["noisy"]).is_absolute()  # relative to the pairs folder
    with tifffile.TiffFile(whole / "site.images.tif") as tif:
        assert len(tif.series) == 4 and tif.series[0].shape == (32, 32)


def test_growing_the_grid_reuses_finished_fits(tmp_path):
    pairs = make_pairs(tmp_path / "pairs")
    small = CalibrationGrid(depths=(4,), widths=("16",), skips=(4,), max_iterations=2,
                                every=1)
    first = calibrate(pairs, tmp_path / "t.toml", small, device="cpu", with_lpips=False)
    assert first.fits_run == 4 and first.metrics == ["mae", "mse", "psnr", "ssim"]
    bigger = CalibrationGrid(depths=(4,), widths=("16", "32"), skips=(4,),
                                 max_iterations=2, every=1)
    second = calibrate(pairs, tmp_path / "t.toml", bigger, device="cpu", with_lpips=False)
    assert (second.fits_run, second.fits_resumed) == (4, 4)
    table = CalibrationTable.load(tmp_path / "t.toml")
    assert table.default_metric == "psnr" and "lpips_psnr" not in table.metrics


def test_calibrate_cli_then_denoise_with_the_table(tmp_path):
    pairs = make_pairs(tmp_path / "pairs")
    out = tmp_path / "site.toml"
    runner = CliRunner()
    result = runner.invoke(app, ["calibrate", str(pairs), "--out", str(out), "--depths", "4",
                                 "--widths", "16", "--skips", "4", "--max-iterations", "2",
                                 "--every", "1", "--no-lpips", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    expected = CalibrationTable.load(out).lookup("confocal", "actin").params

    image = (np.random.default_rng(7).random((32, 32)) * 1000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "new.tif", image)
    denoised = runner.invoke(app, ["denoise", str(tmp_path / "new.tif"), "--table", str(out),
                                   "--microscope", "confocal", "--specimen", "actin",
                                   "--device", "cpu", "--json"])
    assert denoised.exit_code == 0, denoised.output
    assert f'"iterations": {expected.iterations}' in denoised.output
    assert '"level": "microscope+specimen"' in denoised.output


def test_calibrate_cli_reports_missing_lpips_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    pairs = make_pairs(tmp_path / "pairs")
    result = CliRunner().invoke(app, ["calibrate", str(pairs), "--out", str(tmp_path / "t.toml"),
                                      "--depths", "4", "--widths", "16", "--skips", "4",
                                      "--max-iterations", "1", "--every", "1", "--device", "cpu"])
    assert result.exit_code == 2
    assert "alexnet-owt-7be5be79.pth" in result.output


@pytest.mark.parametrize("name", ["site.toml", "site table.toml", "it's ours.toml"])
def test_calibrate_cli_suggests_a_table_option_that_pastes_into_a_shell(tmp_path, name):
    """The closing line's `--table PATH` is shell-quoted: pasted, it names the table."""
    import shlex

    pairs = make_pairs(tmp_path / "pairs")
    out = tmp_path / name
    result = CliRunner().invoke(app, ["calibrate", str(pairs), "--out", str(out), "--depths",
                                      "4", "--widths", "16", "--skips", "4",
                                      "--max-iterations", "2", "--every", "1", "--no-lpips",
                                      "--device", "cpu"], env={"COLUMNS": "1000"})
    assert result.exit_code == 0, result.output
    suggestion = result.output.rsplit("use it with ", 1)[1].strip()
    assert shlex.split(suggestion) == ["--table", str(out)]
