"""The daemon's configuration file (TOML), as one validated model.

Every problem of a file is reported at once, each with its location
(``watch.0.settle_seconds``) and how to fix it, so that a facility admin fixes the file
in one pass instead of restarting the service per typo. Loading a configuration never
imports torch (``status`` must stay fast); the checks that need the engine or the file
system (the calibration table loads, devices exist, folders are there) are
``runtime.py``'s. ``autodip-watch config schema`` prints the JSON Schema of the file
(:func:`config_schema`), so that editors complete and check it.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, WithJsonSchema, field_validator, model_validator

from .. import defaults
from ..io.outputs import is_output_name, output_name
from .base import ConfigError, ConfigPath, Problems, Settings, Text, Whole, lowercase
from .calibrate import CalibrateSettings
from .denoise import DenoiseSettings
from .fit import FitSettings
from .inference import InferenceSettings
from .sections import (BatchingSettings, DaemonSettings, DaskSettings, MetricsSettings,
                       OutputSettings, RetryPolicy, WatchFolder)

#: Dask scheduler addresses we accept: protocol://host:port (host:port means tcp).
_SCHEDULER_ADDRESS = re.compile(
    r"^(?:(tcp|tls)://)?(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
#: What ``--executor``, ``--scheduler`` and ``--max-in-flight`` set.
_CLI_OPTIONS = {"executor": "--executor", "scheduler": "--scheduler",
                "max_in_flight": "--max-in-flight"}


def normalise_scheduler(address: str) -> str:
    """``host:port`` -> ``tcp://host:port``; ``ValueError`` for anything else."""
    text = address.strip()
    match = _SCHEDULER_ADDRESS.match(text)
    if match is None or not 0 < int(match.group(3)) <= 65535:
        raise ValueError(f"must be a Dask scheduler address tcp://HOST:PORT (e.g. "
                         f"\"tcp://gpu-server:8786\"), got {address!r}")
    return text if match.group(1) else f"tcp://{text}"


class Config(Settings):
    """The daemon's configuration: one model of the whole TOML file.

    Every key and default is here (or in the table models it holds); relative paths are
    relative to the file's folder (:func:`load_config`).
    """

    watch: tuple[WatchFolder, ...] = Field(
        (), description="The folders to watch, one [[watch]] table each.")
    output: OutputSettings = OutputSettings()
    calibration_table: ConfigPath | None = Field(
        None, description="Calibration table TOML (default: the shipped FMD table).",
        examples=["/etc/autodip-watch/table.toml"])
    devices: Annotated[tuple[str, ...], WithJsonSchema({
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"},
                                       "minItems": 1, "uniqueItems": True}]})] = Field(
        ("auto",), alias="device", description="A device name or a list: one worker per "
        "device (auto: the best available).", examples=["cuda"])
    state_dir: ConfigPath | None = Field(
        None, description="Queue database and lock (default: $STATE_DIRECTORY, else the "
        "XDG state directory).", examples=["/var/lib/autodip-watch"])
    log_level: lowercase(Literal["debug", "info", "warning", "error"]) = Field(
        "info", examples=["info"])
    executor: lowercase(Literal["local", "dask"]) = Field(
        "local", description="Where jobs run: this machine's devices, or a Dask cluster "
        "(default: dask when a scheduler is given).", examples=["dask"])
    scheduler: Text | None = Field(None, description="The Dask scheduler, tcp://HOST:PORT.",
                                   examples=["tcp://gpu-server:8786"])
    max_in_flight: Whole = Field(0, ge=0, description="Dask: tasks submitted at once, each "
                                 "holding one GPU (0: as many as the cluster has GPUs).",
                                 examples=[4])
    retry: RetryPolicy = RetryPolicy()
    dip: FitSettings = FitSettings()
    metrics: MetricsSettings = MetricsSettings()
    daemon: DaemonSettings = DaemonSettings()
    dask: DaskSettings = DaskSettings()
    batching: BatchingSettings = BatchingSettings()
    inference: InferenceSettings = InferenceSettings()
    calibrate: CalibrateSettings = Field(
        CalibrateSettings(), description="Defaults of `autodip-watch calibrate --config`.")
    _source: Path | None = PrivateAttr(default=None)

    @field_validator("watch", mode="before")
    @classmethod
    def _tables(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return [value]
        if not isinstance(value, (list, tuple)):
            raise ValueError("must be one or more [[watch]] tables, each with a path")
        return value

    @field_validator("devices", mode="before")
    @classmethod
    def _devices(cls, value: Any) -> Any:
        names = [value] if isinstance(value, str) else value
        if (not isinstance(names, (list, tuple)) or not names
                or not all(isinstance(d, str) and d.strip() for d in names)):
            raise ValueError(f"must be a device name or a list of them (e.g. device = "
                             f"\"cuda\" or device = [\"cuda:0\", \"cuda:1\"]), got {value!r}")
        names = [d.strip() for d in names]
        if len(set(names)) != len(names):
            raise ValueError("lists a device twice; one worker per device")
        return tuple(names)

    @field_validator("scheduler")
    @classmethod
    def _scheduler(cls, value: str | None) -> str | None:
        return normalise_scheduler(value) if value is not None else None

    @model_validator(mode="before")
    @classmethod
    def _scheduler_means_dask(cls, data: Any) -> Any:
        """A scheduler without an executor means ``executor = "dask"``."""
        if isinstance(data, dict) and data.get("scheduler") is not None \
                and data.get("executor") is None:
            data = {**data, "executor": "dask"}
        return data

    @model_validator(mode="after")
    def _relations(self) -> Config:
        problems = self.executor_problems() + self.folder_problems()
        if problems:
            raise Problems(problems)
        return self

    def executor_problems(self) -> list[tuple[str, str]]:
        """The executor and the scheduler must agree."""
        if self.executor == "dask" and self.scheduler is None:
            return [("scheduler", "missing; executor \"dask\" needs the address of the Dask "
                                  "scheduler (e.g. scheduler = \"tcp://gpu-server:8786\")")]
        if self.executor == "local" and self.scheduler is not None:
            return [("scheduler", "set, but executor is \"local\"; use executor = \"dask\" to "
                                  "send jobs to the cluster, or drop the scheduler")]
        return []

    def folder_problems(self) -> list[tuple[str, str]]:
        """Relations between folders: no nesting, no shared output tree."""
        problems = []
        folders = list(self.watch)
        for i, first in enumerate(folders):
            for j, second in enumerate(folders):
                if i < j and (_is_within(first.path, second.path)
                              or _is_within(second.path, first.path)):
                    problems.append((f"watch.{j}.path", f"{second.path} overlaps watch.{i}.path "
                                     f"{first.path}; a file must belong to one folder, so watch "
                                     f"the outer folder once or move one of them"))
        owners: dict[Path, int] = {}
        for number, folder in enumerate(folders):
            root = self.output_root_for(folder)
            if root is None:
                continue
            root = Path(os.path.abspath(root))
            if root in owners:
                problems.append((f"watch.{number}.output_root", f"{root} is also the output "
                                 f"root of watch.{owners[root]}; give each [[watch]] its own "
                                 f"output_root so their mirrored trees cannot collide"))
            owners[root] = number
            if _is_within(folder.path, root):
                problems.append((f"watch.{number}.path", f"lies inside its output root {root}; "
                                 f"outputs are never taken as input, so nothing would be "
                                 f"denoised"))
        return problems

    # ------------------------------------------------------------------ derived

    @property
    def source(self) -> Path | None:
        """The file the configuration was read from, if any."""
        return self._source

    def folder_for(self, path: Path) -> WatchFolder | None:
        """The watch folder whose tree holds ``path`` (paths as the watcher resolved them)."""
        return next((folder for folder in self.watch if _is_within(path, folder.path)), None)

    def output_root_for(self, folder: WatchFolder) -> Path | None:
        return folder.output_root or self.output.root

    def output_for(self, raw: Path, folder: WatchFolder | None) -> Path:
        """Where the denoised file of ``raw`` goes: beside it, or mirrored under an output
        root; named by :func:`~autodip_watch.io.outputs.output_name`."""
        name = output_name(raw.name, self.output.suffix)
        root = self.output_root_for(folder) if folder is not None else None
        if root is None:
            return raw.with_name(name)
        return root / raw.parent.relative_to(folder.path) / name

    def is_output(self, path: Path) -> bool:
        """The daemon's own outputs (and their previews), by name or by place; they are
        never taken as input."""
        if is_output_name(path.name, self.output.suffix):
            return True
        roots = [self.output.root] + [folder.output_root for folder in self.watch]
        return any(root is not None and _is_within(path, root) for root in roots)

    def denoise_settings(self, folder: WatchFolder | None, device: str,
                         table=None) -> DenoiseSettings:
        """The pipeline settings for a file of ``folder`` on ``device``.

        The folder's microscope/specimen are *defaults*: they rank below what the file's
        own metadata says. The inference rules were built once, with the configuration.
        """
        return DenoiseSettings(
            **dict(self.dip), device=None if device == "auto" else device, table=table,
            inference=self.inference, batching=self.batching.mode,
            max_batch=self.batching.max_batch, memory_budget=self.batching.memory_budget_bytes,
            folder_microscope=folder.microscope if folder is not None else None,
            folder_specimen=folder.specimen if folder is not None else None)


def _is_within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def parse_config(document: dict, base: Path, source: str = "config") -> Config:
    """Validate a parsed TOML document; relative paths are relative to ``base``.

    Raises :class:`ConfigError` listing every problem with its location.
    """
    return Config.parse(document, base, source)


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML configuration file.

    Parameters
    ----------
    path : str or Path
        The TOML file (``systemd/autodip-watch.example.toml`` shows every key); relative
        paths in it are relative to its folder.

    Returns
    -------
    Config
        The validated configuration (frozen).

    Raises
    ------
    ConfigError
        The file is missing, unreadable, not TOML, or has problems (all of them, located).
    """
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(["file not found; create it from systemd/autodip-watch.example.toml"],
                          str(path)) from None
    except OSError as error:
        raise ConfigError([f"cannot read: {error}"], str(path)) from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([f"not valid TOML: {error}"], str(path)) from None
    config = parse_config(document, path.absolute().parent, str(path))
    config._source = path.absolute()
    return config


def _revalidated(config: Config, changes: dict, source: str,
                 rename: dict[str, str] | None = None) -> Config:
    """``config`` with ``changes``, validated as a whole again (the derived parts too)."""
    document = {**config.model_dump(by_alias=True, exclude_unset=True), **changes}
    try:
        changed = Config.parse(document, None, source)
    except ConfigError as error:
        problems = error.problems
        for key, flag in (rename or {}).items():
            problems = [flag + problem[len(key):] if problem.startswith(key + ":") else problem
                        for problem in problems]
        raise ConfigError(problems, source) from None
    changed._source = config.source
    return changed


def with_cli_folders(config: Config, folders: list[Path]) -> Config:
    """Add ``--watch DIR`` folders (default settings) to a configuration."""
    if not folders:
        return config
    added = [{"path": str(Path(os.path.abspath(Path(f).expanduser())))} for f in folders]
    return _revalidated(config, {"watch": [*config.model_dump()["watch"], *added]}, "--watch")


def with_cli_executor(config: Config, executor: str | None, scheduler: str | None,
                      max_in_flight: int | None) -> Config:
    """Apply ``--executor``, ``--scheduler`` and ``--max-in-flight`` over the config's; a
    scheduler alone means the Dask executor, ``--executor local`` drops the scheduler."""
    if executor is None and scheduler is None and max_in_flight is None:
        return config
    if executor is None:
        executor = "dask" if scheduler is not None else config.executor
    if scheduler is None and str(executor).lower() == "dask":
        scheduler = config.scheduler
    changes = {"executor": executor,
               "scheduler": scheduler if str(executor).lower() == "dask" else None,
               "max_in_flight": config.max_in_flight if max_in_flight is None else max_in_flight}
    return _revalidated(config, changes, "command line", _CLI_OPTIONS)


def with_cli_log_level(config: Config, level: str | None) -> Config:
    """Apply ``--log-level`` over the config's, checked as the config's ``log_level`` is
    (a misspelt level is refused, not silently taken as ``info``)."""
    if level is None:
        return config
    return _revalidated(config, {"log_level": level}, "command line",
                        {"log_level": "--log-level"})


def config_schema() -> dict:
    """The JSON Schema of the configuration file (``autodip-watch config schema``).

    Returns
    -------
    dict
        A JSON Schema (draft 2020-12, as pydantic writes it) of the TOML document: every
        table and key with its type, default, bounds, description and an example, and
        ``additionalProperties: false`` where unknown keys are refused. Editors that read
        JSON Schema (e.g. Taplo / Even Better TOML) complete and check the file with it.
    """
    schema = Config.model_json_schema(by_alias=True)
    schema["title"] = "autodip-watch configuration"
    schema["description"] = ("The daemon's configuration (TOML); see "
                             "systemd/autodip-watch.example.toml.")
    return schema


# ---------------------------------------------------------------------- state dir

def default_state_dir() -> Path:
    """``$STATE_DIRECTORY`` under systemd, else the XDG state directory."""
    systemd = os.environ.get(defaults.STATE_DIRECTORY_ENV)
    if systemd:
        # systemd may pass several colon-separated directories; the first is ours.
        return Path(systemd.split(":")[0])
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / defaults.APP_NAME


def resolve_state_dir(cli: Path | None, config: Config | None) -> Path:
    """``--state-dir``, then the config's ``state_dir``, then :func:`default_state_dir`."""
    if cli is not None:
        return Path(cli).expanduser().absolute()
    if config is not None and config.state_dir is not None:
        return config.state_dir
    return default_state_dir()
