"""Daemon configuration: defaults, every error names its key, outputs, state directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from autodip_watch.defaults import RAW_PATTERNS
from autodip_watch.settings.base import ConfigError
from autodip_watch.settings.config import (default_state_dir, load_config, parse_config,
                                           resolve_state_dir, with_cli_folders)
from autodip_watch.settings.inference import InferenceSettings
from autodip_watch.settings.runtime import check_runtime

EXAMPLE = Path(__file__).resolve().parents[1] / "systemd" / "autodip-watch.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_minimal_config_defaults(tmp_path):
    (tmp_path / "in").mkdir()
    config = load_config(write(tmp_path, '[[watch]]\npath = "in"\n'))
    folder = config.watch[0]
    assert folder.path == tmp_path / "in"  # relative to the config file
    assert folder.patterns == RAW_PATTERNS and not folder.polling
    assert folder.settle_seconds == 10 and folder.observer_kind == "native"
    assert config.devices == ("auto",) and config.retry.max_attempts == 3
    assert not config.metrics.enabled and config.output.root is None
    assert check_runtime(config) == []


def test_every_problem_is_reported_with_its_key(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, """
devcie = "cpu"
[[watch]]
path = "in"
settle_seconds = "ten"
polling = "yes"
patterns = []
[[watch]]
settle_seconds = 1
[retry]
max_attempts = 0
[output]
suffix = ".tif"
[metrics]
port = 70000
"""))
    problems = "\n".join(caught.value.problems)
    assert "devcie: unknown key; did you mean 'device'?" in problems
    assert "watch.0.settle_seconds: must be a number, got 'ten' (e.g. settle_seconds = 10)" in problems
    assert "watch.0.polling: must be true or false, got 'yes' (e.g. polling = true)" in problems
    assert "watch.0.patterns: must be a list of glob patterns" in problems
    assert "watch.1.path: missing" in problems
    assert "retry.max_attempts: must be at least 1" in problems
    assert "output.suffix: must end in .ome.tif" in problems
    assert "metrics.port: must be at most 65535" in problems
    assert len(caught.value.problems) == 8


def test_faults_in_every_table_are_listed_at_once_with_their_locations(tmp_path):
    """The kind, not the instance: one fault in each table of the file, all reported in
    one pass, each located by its table, entry and key."""
    (tmp_path / "in").mkdir()
    faults = {
        "[[watch]]\npath = \"in\"\nsettle_seconds = -1": "watch.0.settle_seconds: must be at least 0",
        "[output]\npreview = \"no\"": "output.preview: must be true or false",
        "[retry]\nbackoff_factor = 0.5": "retry.backoff_factor: must be at least 1",
        "[dip]\nwidth = 48\nmode = \"fast\"": "dip.width: must be one of 16, 32",
        "[metrics]\nenabled = 1": "metrics.enabled: must be true or false",
        "[daemon]\nheartbeat = 5": "daemon.heartbeat: unknown key; did you mean 'heartbeat_seconds'?",
        "[dask]\nconnect_timeout_seconds = \"10\"": "dask.connect_timeout_seconds: must be a number",
        "[batching]\nmax_batch = 0": "batching.max_batch: must be at least 1",
        "[inference]\nfolders = [{path = \"in\", specimen = \"Nuclei!\"}]":
            "inference.folders.0.specimen: invalid specimen",
        "[calibrate]\nwidths = [\"48\"]": "calibrate: width must be one of",
    }
    text = "log_level = \"loud\"\n" + "\n".join(faults)
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    problems = "\n".join(caught.value.problems)
    for expected in [*faults.values(), "log_level: must be one of debug, info, warning, error",
                     "dip.mode: unknown fit mode 'fast'"]:
        assert expected in problems, (expected, problems)
    assert len(caught.value.problems) == len(faults) + 2


def test_nested_folders_and_shared_output_roots_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"watch\.1\.path: .* overlaps watch\.0\.path"):
        parse_config({"watch": [{"path": "a"}, {"path": "a/b"}]}, tmp_path)
    with pytest.raises(ConfigError, match="give each \\[\\[watch\\]\\] its own output_root"):
        parse_config({"watch": [{"path": "a"}, {"path": "b"}], "output": {"root": "out"}}, tmp_path)
    with pytest.raises(ConfigError, match="lies inside its output root"):
        parse_config({"watch": [{"path": "out/a"}], "output": {"root": "out"}}, tmp_path)
    with pytest.raises(ConfigError, match="overlaps"):
        with_cli_folders(parse_config({"watch": [{"path": "a"}]}, tmp_path), [tmp_path / "a" / "c"])


def test_runtime_checks_name_the_key(tmp_path):
    config = parse_config({"watch": [{"path": "missing"}], "device": "cuda:7",
                           "calibration_table": "nope.toml"}, tmp_path)
    with pytest.raises(ConfigError) as caught:
        check_runtime(config)
    problems = "\n".join(caught.value.problems)
    assert "calibration_table: calibration table" in problems and "does not exist" in problems
    assert "device:" in problems
    config = parse_config({"watch": [{"path": "missing"}], "device": "cpu",
                           "dip": {"metric": "fidelity"}}, tmp_path)
    with pytest.raises(ConfigError, match="dip.metric: metric 'fidelity' not in table"):
        check_runtime(config)
    with pytest.raises(ConfigError, match="dip.depth: must be one of 4, 5, 6, 7, 8, got 3"):
        parse_config({"watch": [{"path": "missing"}], "dip": {"depth": 3}}, tmp_path)
    config = parse_config({"watch": [{"path": "missing"}], "device": "cpu"}, tmp_path)
    assert check_runtime(config) == [f"watch.0.path: {tmp_path / 'missing'} does not exist (yet); "
                                     f"the daemon waits for it to appear"]


def test_outputs_beside_or_mirrored(tmp_path):
    config = parse_config({"watch": [{"path": "in"}, {"path": "share", "output_root": "den"}],
                           "output": {"suffix": ".dn.ome.tif"}}, tmp_path)
    beside, mirrored = config.watch
    assert config.output_for(tmp_path / "in" / "x" / "a.ome.tif", beside) == \
        tmp_path / "in" / "x" / "a.dn.ome.tif"
    assert config.output_for(tmp_path / "share" / "day1" / "b.tif", mirrored) == \
        tmp_path / "den" / "day1" / "b.tif.dn.ome.tif"
    assert config.is_output(tmp_path / "in" / "a.dn.ome.tif")
    assert config.is_output(tmp_path / "in" / "a.autodip.ome.tif")
    assert config.is_output(tmp_path / "den" / "day1" / "c.tif")
    assert not config.is_output(tmp_path / "in" / "a.ome.tif")
    assert config.folder_for(tmp_path / "share" / "day1" / "b.tif") is mirrored


def test_folder_patterns_are_case_insensitive(tmp_path):
    folder = parse_config({"watch": [{"path": "in"}]}, tmp_path).watch[0]
    assert folder.matches("A.OME.TIF") and folder.matches("b.tiff")
    assert not folder.matches("notes.txt")


def test_state_directory_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_dir() == tmp_path / "xdg" / "autodip-watch"
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "systemd"))
    assert default_state_dir() == tmp_path / "systemd"
    config = parse_config({"state_dir": "st"}, tmp_path)
    assert resolve_state_dir(None, config) == tmp_path / "st"
    assert resolve_state_dir(tmp_path / "cli", config) == tmp_path / "cli"


def test_shipped_example_is_valid():
    config = load_config(EXAMPLE)
    assert [folder.observer_kind for folder in config.watch] == ["native", "polling"]
    assert config.watch[1].microscope == "widefield"
    check_runtime(config)  # only warnings: its folders do not exist here


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[[watch]\n"))


def test_inference_rules_are_checked_and_passed_on(tmp_path):
    with pytest.raises(ConfigError, match=r"inference\.specimen_rules\.0\.pattern: rule pattern"):
        parse_config({"watch": [{"path": "in", "microscope": "confocal"}], "device": "cpu",
                      "inference": {"specimen_rules": [{"pattern": "(", "label": "actin"}]}},
                     tmp_path)
    config = parse_config({"watch": [{"path": "in", "microscope": "confocal"}], "device": "cpu",
                           "inference": {"folders": [{"path": "in/mito", "specimen": "mito"}]}},
                          tmp_path)
    check_runtime(config)
    settings = config.denoise_settings(config.watch[0], "cpu", None)
    assert settings.folder_microscope == "confocal" and settings.microscope is None
    assert settings.rules.folder_defaults[0].folder == tmp_path / "in" / "mito"
    # Parsed once, with the configuration: every job's settings share the same rules.
    assert config.denoise_settings(None, "cpu").rules is settings.rules
    assert isinstance(config.inference, InferenceSettings)


def test_folder_labels_are_validated(tmp_path):
    with pytest.raises(ConfigError, match=r"watch\.0\.microscope: unknown microscope 'confocl'"):
        parse_config({"watch": [{"path": "in", "microscope": "confocl"}], "device": "cpu"},
                     tmp_path)


def test_batching_settings_reach_the_pipeline(tmp_path):
    (tmp_path / "in").mkdir()
    default = load_config(write(tmp_path, '[[watch]]\npath = "in"\n'))
    assert default.batching.mode == "auto"
    assert default.batching.jobs_for("cpu") == 1 and default.batching.jobs_for("cuda") == 4
    config = load_config(write(tmp_path, '[[watch]]\npath = "in"\n[batching]\nmode = "on"\n'
                                         'max_batch = 6\nmemory_budget_mb = 512\njobs_together = 2\n'))
    assert config.batching.jobs_for("cpu") == 2
    settings = config.denoise_settings(config.watch[0], "cpu", table=None)
    assert (settings.batching, settings.max_batch, settings.memory_budget) == ("on", 6, 512 << 20)
    off = parse_config({"watch": [{"path": str(tmp_path / "in")}],
                        "batching": {"mode": "off", "jobs_together": 5}}, tmp_path)
    assert off.batching.jobs_for("cuda") == 1  # side by side only helps when batching
    with pytest.raises(ConfigError) as caught:
        parse_config({"watch": [{"path": str(tmp_path / "in")}],
                      "batching": {"mode": "maybe", "max_batch": 0, "size": 3}}, tmp_path)
    text = str(caught.value)
    assert "batching.mode: must be one of auto, on, off" in text
    assert "batching.max_batch: must be at least 1" in text
    assert "batching.size: unknown key" in text


def test_speed_settings_are_checked(tmp_path):
    (tmp_path / "in").mkdir()
    config = load_config(write(tmp_path, '[[watch]]\npath = "in"\n[dip]\n'
                                         'speed = ["channels_last", "bf16"]\n'))
    assert config.denoise_settings(None, "cpu", table=None).speed == ("channels_last", "bf16")
    for bad, message in (('"bf16"', "must be a list"), ('["warp"]', "unknown speed setting"),
                         ('["compile", "cuda_graphs"]', "do not combine")):
        with pytest.raises(ConfigError, match=message):
            load_config(write(tmp_path, f'[[watch]]\npath = "in"\n[dip]\nspeed = {bad}\n'))


def test_config_check_lists_every_problem_of_every_table_with_its_location(tmp_path):
    """`config check` on a file with faults in [[watch]], [dip], [inference] and
    [calibrate] lists all of them at once, each located (issue: one model of settings)."""
    from typer.testing import CliRunner

    from autodip_watch.cli.app import app

    config = write(tmp_path, """
[[watch]]
path = "in"
settle_seconds = "ten"
[dip]
depth = 9
width = "17"
iterations = 0
mode = "fast"
speed = ["warp"]
[inference]
specimen_rules = [{pattern = "(", label = "nucleus"}]
denoise_non_fluorescence = 1
[calibrate]
every = 0
match = "cubic"
""")
    result = CliRunner().invoke(app, ["config", "check", str(config)], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    expected = ["watch.0.settle_seconds: must be a number", "dip.depth: must be one of",
                "dip.width: must be one of", "dip.iterations: must be at least 1",
                "dip.speed: unknown speed setting(s) warp", "dip.mode: unknown fit mode",
                "inference.specimen_rules.0.pattern: rule pattern '(' is not a valid",
                "inference.denoise_non_fluorescence: must be true or false",
                "calibrate.every: must be at least 1", "calibrate.match: must be one of"]
    for problem in expected:
        assert problem in result.output, problem
    assert "10 problem(s)" in result.output


# name: (config text, --watch folders given to check, exit code, what it says)
WATCH_CASES = {
    "no folders anywhere": ("[dip]\niterations = 5\n", [], 2, "no folders to watch"),
    "folders on the command line, as for run": ("[dip]\niterations = 5\n", ["in"], 0,
                                                "watch {in}"),
    "folders in the file and on the command line": ('[[watch]]\npath = "a"\n', ["in"], 0,
                                                   "watch {in}"),
    "a folder on the command line that is not there yet": ("", ["absent"], 0,
                                                           "does not exist (yet)"),
}


@pytest.mark.parametrize("case", list(WATCH_CASES))
def test_config_check_checks_what_run_will_run(tmp_path, case):
    """`run --watch DIR --config FILE` accepts a file without [[watch]]; `config check
    FILE --watch DIR` checks the same combination, so a file that runs also checks."""
    from typer.testing import CliRunner

    from autodip_watch.cli.app import app

    text, folders, code, said = WATCH_CASES[case]
    (tmp_path / "in").mkdir()
    (tmp_path / "a").mkdir()
    config = write(tmp_path, text)
    arguments = [argument for folder in folders for argument in ("--watch", str(tmp_path / folder))]
    result = CliRunner().invoke(app, ["config", "check", str(config), *arguments],
                                env={"COLUMNS": "300"})
    assert result.exit_code == code, result.output
    assert said.format(**{"in": tmp_path / "in"}) in result.output, result.output


def test_the_dask_payload_is_the_settings_model_as_json():
    """What a Dask task receives is DenoiseSettings.model_dump(mode="json"); read back on a
    worker it gives the same fit, the same labelling rules and the same provenance."""
    import json

    from autodip_watch.settings.denoise import DenoiseSettings
    from autodip_watch.transfer.table import CalibrationTable

    inference = InferenceSettings.parse({
        "specimen_rules": [{"pattern": "sir-dna", "label": "nucleus", "fields": ["fluor"]}],
        "folders": [{"path": "/data/mito", "specimen": "mito"}],
        "denoise_non_fluorescence": True}, base=None)
    settings = DenoiseSettings(table=CalibrationTable.load(), depth=4, width="asc",
                               iterations=7, seed=3, speed=["channels_last"], mode="paper",
                               members=2, inference=inference, folder_microscope="confocal",
                               batching="off", max_batch=8, command="test")
    payload = json.loads(json.dumps(settings.model_dump(mode="json")))
    back = DenoiseSettings.model_validate(payload)
    assert back.fit_options() == settings.fit_options()
    assert back.rules == settings.rules
    assert back.table.document == settings.table.document
    assert back.table.path.name == settings.table.path.name
    assert back.provenance_record(back.table) == settings.provenance_record(settings.table)
    assert back.model_dump(exclude={"table"}) == settings.model_dump(exclude={"table"})


@pytest.mark.parametrize("text, option, expected", [
    ('[[watch]]\npath = "in"\nsettle_secnds = 3\n', [], "did you mean 'settle_seconds'"),
    ('[[watch]]\npath = "in"\npolling = "yes"\n', [], "watch.0.polling: must be true or false"),
    ('[[watch]]\npath = "in"\n[dip\niterations = 3\n', [], "not valid TOML"),
    (None, [], "file not found"),
    ('[[watch]]\npath = "in"\n', ["--executor", "bogus"], "--executor: must be one of"),
    ('[[watch]]\npath = "in"\n', ["--log-level", "verbose"], "--log-level: must be one of"),
], ids=["unknown-key", "wrong-type", "not-toml", "missing-file", "bad-executor",
        "bad-log-level"])
def test_run_exits_78_on_every_configuration_fault(tmp_path, text, option, expected):
    """`run` with a faulty configuration (file or options) exits 78 (EX_CONFIG), which the
    unit's RestartPreventExitStatus=78 needs to keep systemd from restart-looping on a
    typo; it names the problem and never starts watching. A real subprocess."""
    from helpers.daemon import cli

    config = tmp_path / "config.toml"
    if text is not None:
        config.write_text(text, encoding="utf-8")
    result = cli("run", "--config", str(config), "--state-dir", str(tmp_path / "state"),
                 *option, check=False)
    assert result.returncode == 78, (result.stdout, result.stderr)
    assert expected in result.stderr
    assert "watch.start" not in result.stderr and "daemon.ready" not in result.stderr


def _damaged_database(state, how: str) -> None:
    """A real queue database with rows, then damaged the way disks and people damage it."""
    from autodip_watch.daemon.queue import DATABASE_NAME, JobQueue

    queue = JobQueue(state)
    for number in range(300):
        queue.enqueue(f"/data/f{number}.tif", 1, 1, f"{number:064x}")
    queue.close()
    path = state / DATABASE_NAME
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[:len(data) // 3]
    elif how == "pages overwritten":  # the first page intact: opening it reads fine
        data[4096:3 * 4096] = bytes(range(256)) * 32
    elif how == "header overwritten":
        data[:16] = b"not a database!!"
    elif how == "not SQLite at all":
        data = bytearray(b"queue notes, saved over the database by an editor\n" * 50)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "pages overwritten", "header overwritten",
                                 "not SQLite at all"])
def test_run_on_a_damaged_queue_exits_78_naming_the_database(tmp_path, how):
    """A damaged queue database needs a person, not a restart every 10 s: exit 78, the
    file named, what to do said; the damage inside the file is found at start too."""
    from helpers.daemon import cli

    state = tmp_path / "state"
    _damaged_database(state, how)
    (tmp_path / "in").mkdir()
    result = cli("run", "--watch", str(tmp_path / "in"), "--state-dir", str(state), check=False)
    assert result.returncode == 78, (result.stdout, result.stderr)
    assert f"the queue database {state / 'queue.sqlite3'} is damaged" in result.stderr
    assert "move it aside" in result.stderr
    assert "Traceback" not in result.stderr and "watch.start" not in result.stderr


@pytest.mark.parametrize("state_name", ["state", "fresh"],
                         ids=["a queue already there", "no queue yet"])
def test_run_on_a_state_folder_it_may_not_write_exits_78(state_name):
    """A state folder on a read-only mount (a share mounted ro, a wrong StateDirectory)
    does not heal by restarting: exit 78, the folder named, what to do said. A real
    read-only tmpfs, the daemon as a subprocess."""
    from autodip_watch.daemon.queue import JobQueue
    from helpers.acquisition import remount, tiny_filesystem
    from helpers.daemon import cli

    with tiny_filesystem("4m") as disk:
        (disk / "in").mkdir()
        JobQueue(disk / "state").close()
        remount(disk, "ro")
        try:
            result = cli("run", "--watch", str(disk / "in"), "--state-dir",
                         str(disk / state_name), check=False)
        finally:
            remount(disk, "rw")
    assert result.returncode == 78, (result.stdout, result.stderr)
    assert f"cannot write the queue in {disk / state_name}" in result.stderr
    assert "a folder this user may write" in result.stderr and "Traceback" not in result.stderr


# specimen as written: what the warning says (None: no warning)
SPECIMENS = {
    "mito": None,
    "mitochondria": None,  # a spelling of a calibrated specimen
    "Nuclei": None,
    "unknown": None,
    "mitochondira": "did you mean 'mitochondria' (mito)?",
    "actn": "did you mean 'actin'?",
    "nucleus ": None,
    "neurons": "no group in the calibration table (it has actin, mito, nucleus)",
}


@pytest.mark.parametrize("specimen", list(SPECIMENS))
def test_a_folder_specimen_without_a_calibrated_group_is_warned_about(tmp_path, specimen):
    """Specimens are an open set (a table may calibrate new ones), so an unknown one is
    not an error; but a misspelling would quietly give every channel of the folder a
    coarser configuration: `config check` and the daemon's start say so."""
    (tmp_path / "in").mkdir()
    config = parse_config({"watch": [{"path": "in", "microscope": "widefield",
                                      "specimen": specimen}], "device": "cpu"}, tmp_path)
    warnings = check_runtime(config)
    expected = SPECIMENS[specimen]
    if expected is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warnings[0].startswith("watch.0.specimen: specimen ")
        assert expected in warnings[0] and "coarser level" in warnings[0]


@pytest.mark.parametrize("command", ["inspect", "denoise"])
def test_a_specimen_override_without_a_calibrated_group_is_warned_about(tmp_path, command):
    from typer.testing import CliRunner

    from autodip_watch.cli.app import app

    missing = tmp_path / "not-an-image.tif"  # the warning comes before any file is read
    missing.write_text("not an image")
    result = CliRunner().invoke(app, [command, str(missing), "--specimen", "mitochondira"],
                                env={"COLUMNS": "300"})
    text = " ".join(result.output.split())
    assert "warning: --specimen: specimen 'mitochondira' has no group" in text, text
    assert "did you mean 'mitochondria' (mito)?" in text
    calibrated = CliRunner().invoke(app, [command, str(missing), "--specimen", "mito"])
    assert "--specimen" not in calibrated.output
