"""Checks of a configuration against this machine: what validating the file cannot know.

The calibration table loads and serves the metric and transfer asked for, the devices
exist, Dask is installed where the executor needs it, there is a folder to watch.
``config check`` and the daemon at start run them. Only a device other than ``auto`` or
``cpu`` loads torch (``config check`` stays light otherwise).
"""

from __future__ import annotations

from ..transfer.images import check_table_supports
from ..transfer.labels import uncalibrated_specimen
from ..transfer.table import CalibrationTable, TableError
from .base import ConfigError
from .config import Config


def check_runtime(config: Config) -> list[str]:
    """Check ``config`` against this machine; returns warnings.

    Warnings are not errors: a watch folder that does not exist (yet) is waited for (a
    share not yet mounted at boot).

    Raises
    ------
    ConfigError
        Every problem found, each with the key it concerns.
    """
    table, problems = _checked_table(config)
    if config.executor == "dask":
        try:
            import distributed  # noqa: F401  (only whether it is installed)
        except ImportError:
            problems.append("executor: \"dask\" needs Dask distributed on this machine: "
                            "pip install 'autodip-watch[dask]'")
    else:  # the cluster's workers pick their own GPUs
        problems += _device_problems(config.devices)
    if not config.watch:
        problems.append("watch: no folders to watch; add a [[watch]] table with a path, "
                        "or pass --watch DIR (to `run`, and to `config check` to check the "
                        "same combination)")
    if problems:
        raise ConfigError(problems, str(config.source or "config"))
    calibrated = table.specimens(config.dip.metric)
    return [f"watch.{number}.path: {folder.path} does not exist (yet); the daemon waits for "
            f"it to appear" for number, folder in enumerate(config.watch)
            if not folder.path.is_dir()] + [
        f"watch.{number}.specimen: {note}" for number, folder in enumerate(config.watch)
        if folder.specimen and (note := uncalibrated_specimen(folder.specimen, calibrated))]


def _checked_table(config: Config) -> tuple[CalibrationTable | None, list[str]]:
    """The table, loaded once, and its problems: it loads, has the metric, and serves
    the transfer mode."""
    try:
        table = CalibrationTable.load(config.calibration_table)
    except TableError as error:
        return None, [f"calibration_table: {error}"]
    dip = config.dip
    try:
        table.lookup(None, None, dip.metric)
    except TableError as error:
        return table, [f"dip.metric: {error}"]
    try:
        check_table_supports(table, dip.transfer, dip.metric)
    except ValueError as error:  # includes TableError / SimilarityError
        return table, [f"dip.transfer: {error}"]
    return table, []


def _device_problems(devices: tuple[str, ...]) -> list[str]:
    problems = []
    for device in devices:
        if device in ("auto", "cpu"):
            continue  # always there: no need to load torch (config check stays light)
        from ..dip.device import choose_device  # torch: only to check a named device

        try:
            choose_device(device)
        except (ValueError, RuntimeError) as error:
            problems.append(f"device: {error}")
    return problems
