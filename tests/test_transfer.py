"""The shipped calibration table and the transfer hierarchy."""

from __future__ import annotations

import pytest
import yaml

from autodip_watch.dip.network import DipParams
from autodip_watch.transfer.table import CalibrationTable, TableError
from autodip_watch.transfer.hierarchy import apply_overrides
from autodip_watch.transfer.labels import canonical_microscope, canonical_specimen


@pytest.fixture(scope="module")
def table() -> CalibrationTable:
    return CalibrationTable.load()


# DESIGN §2, the lpips_psnr_gt table, row by row.
EXPECTED = [
    ("confocal", "actin", "microscope+specimen", (6, "256", 4, 1300)),
    ("two-photon", "actin", "microscope+specimen", (4, "64", 0, 2900)),
    ("widefield", "actin", "microscope+specimen", (8, "32", 4, 500)),
    ("confocal", "mito", "microscope+specimen", (5, "128", 4, 1300)),
    ("two-photon", "mito", "microscope+specimen", (4, "32", 4, 1400)),
    ("widefield", "mito", "microscope+specimen", (8, "32", 4, 400)),
    ("confocal", "nucleus", "microscope+specimen", (4, "32", 4, 1200)),
    ("two-photon", "nucleus", "microscope+specimen", (8, "512", 4, 1700)),
    ("widefield", "nucleus", "microscope+specimen", (8, "asc", 4, 300)),
    ("confocal", "unknown", "microscope", (4, "asc", 4, 1200)),
    ("two-photon", None, "microscope", (7, "128", 4, 1000)),
    ("widefield", "", "microscope", (8, "32", 4, 400)),
    ("unknown", "actin", "specimen", (4, "64", 0, 2900)),
    (None, "mito", "specimen", (4, "16", 4, 2400)),
    ("tirf", "nucleus", "specimen", (6, "asc", 4, 300)),
    ("unknown", "unknown", "all", (8, "64", 4, 700)),
    ("light-sheet", "membrane", "all", (8, "64", 4, 700)),
]


@pytest.mark.parametrize("microscope,specimen,level,params", EXPECTED)
def test_hierarchy(table, microscope, specimen, level, params):
    transfer = table.lookup(microscope, specimen)
    assert transfer.level == level
    assert transfer.params == DipParams(*params)
    assert transfer.metric == "lpips_psnr"


def test_aliases():
    assert canonical_microscope("TwoPhoton") == "two-photon"
    assert canonical_microscope("Wide-Field") == "widefield"
    assert canonical_specimen("Mitochondria") == "mito"
    assert canonical_specimen("F-actin") == "actin"
    assert canonical_specimen(None) == "unknown"


def test_other_metric_tables(table):
    assert set(table.metrics) == {"mae", "mse", "psnr", "ssim", "lpips", "lpips_psnr"}
    assert table.lookup("widefield", "nucleus", "psnr").metric == "psnr"
    with pytest.raises(TableError, match="not in table"):
        table.lookup("widefield", "nucleus", "fid")


def test_overrides(table):
    base = table.lookup("widefield", "nucleus")
    changed = apply_overrides(base, iterations=50)
    assert changed.params == DipParams(8, "asc", 4, 50)
    assert changed.level == "microscope+specimen+override"
    full = apply_overrides(base, depth=4, width=16, skip=0, iterations=3)
    assert full.level == "override" and full.params == DipParams(4, "16", 0, 3)
    assert apply_overrides(base) is base


def test_shipped_table_states_its_source(table):
    assert "best_param_iter_comb_dict.yaml" in table.provenance["source"]
    assert table.provenance["images"] == 110


def test_shipped_table_matches_reference_yaml(table, shared_reference):
    """Every entry of every metric equals the AUTO-DIP reference file."""
    reference = yaml.safe_load((shared_reference / "best_param_iter_comb_dict.yaml").read_text())
    names = {"l1_gt": "mae", "mse_gt": "mse", "psnr_gt": "psnr", "ssim_gt": "ssim",
             "lpips_gt": "lpips", "lpips_psnr_gt": "lpips_psnr"}
    micro = {"confocal": "confocal", "twophoton": "two-photon", "widefield": "widefield"}

    def params(entry):
        return DipParams(entry["depth"], entry["width"], entry["skip_n11"], entry["num_iter"])

    checked = 0
    for key, source in reference.items():
        metric = names[key]
        assert table.params_for(metric, "all", "all") == params(source["all"]["all"]["all"])
        for m, value in source["microscope_type"].items():
            assert table.params_for(metric, "microscope", micro[m]) == params(value["best"])
        for s, value in source["object"].items():
            assert table.params_for(metric, "specimen", s) == params(value["best"])
        for group, value in source["mic_obj_group"].items():
            s, m = group.split("_")
            assert table.params_for(metric, "microscope+specimen", f"{micro[m]}/{s}") == params(value["best"])
            checked += 1
    assert checked == 6 * 9


def test_broken_tables_give_clear_errors(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(TableError, match="does not exist"):
        CalibrationTable.load(missing)
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml")
    with pytest.raises(TableError, match="not valid TOML"):
        CalibrationTable.load(bad)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('default_metric = "psnr"\n[metrics.psnr.all]\ndepth = 3\nwidth = "32"\nskip = 4\niterations = 10\n')
    with pytest.raises(TableError, match="depth"):
        CalibrationTable.load(wrong)


@pytest.mark.parametrize("text, hint", [
    ('[[watch]]\npath = "/data"\n', "looks like an autodip-watch configuration"),
    ('[dip]\niterations = 5\n', "looks like an autodip-watch configuration"),
    ('title = "something else"\n', None),
    ('', None),
])
def test_a_file_that_is_not_a_table_is_called_so(tmp_path, text, hint):
    """`--table` given the daemon's configuration (or any other TOML) says it is not a
    calibration table, and for a configuration, where the table is named."""
    path = tmp_path / "given.toml"
    path.write_text(text)
    with pytest.raises(TableError, match="no \\[metrics\\] section; not a calibration table") as caught:
        CalibrationTable.load(path)
    assert (hint in str(caught.value)) if hint else "configuration" not in str(caught.value)
