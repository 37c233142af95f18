"""The daemon's TOML configuration, validated up front.

Every problem is reported at once, each naming its key and how to fix it, so that a
facility admin fixes the file in one pass instead of restarting the service per typo.
Loading a config never imports torch (``status`` must stay fast); the checks that need
the engine (calibration table, DIP overrides, device) are in :func:`check_runtime`.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

#: Raw images the acquisition software writes; matched case-insensitively.
DEFAULT_PATTERNS = ("*.ome.tif", "*.ome.tiff", "*.tif", "*.tiff")
DEFAULT_OUTPUT_SUFFIX = ".autodip.ome.tif"
#: A preview replaces the output's ``.ome.tif(f)`` (preview.py).
PREVIEW_SUFFIX = ".preview.png"
#: Environment variable systemd sets from ``StateDirectory=``.
SYSTEMD_STATE_ENV = "STATE_DIRECTORY"
CONFIG_ENV = "AUTODIP_WATCH_CONFIG"
APP_NAME = "autodip-watch"


class ConfigError(ValueError):
    """An unusable configuration; ``problems`` lists every ``key: what to do``."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        self.source = source
        super().__init__(f"{source}: " + "; ".join(problems))

    def __str__(self) -> str:
        lines = [f"{self.source}: {len(self.problems)} problem(s)"]
        lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)


@dataclass(frozen=True)
class WatchFolder:
    """One watched tree and how files in it are taken and labelled."""

    path: Path
    patterns: tuple[str, ...] = DEFAULT_PATTERNS
    recursive: bool = True
    polling: bool = False  # SMB/NFS/CIFS: inotify sees nothing written by other hosts
    poll_interval_seconds: float = 5.0
    settle_seconds: float = 10.0
    #: A settled file still unreadable this long after its last change is quarantined.
    corrupt_after_seconds: float = 120.0
    #: A file (or OME set) that stays incomplete and unchanged this long (fewer planes
    #: than it declares, a member file that never arrives, a writer that never closes
    #: it) is taken as it is: its planes are denoised, the job ends ``partial`` and
    #: names what is missing. Longer than the longest pause between two frames.
    incomplete_after_seconds: float = 1800.0
    microscope: str | None = None  # folder defaults: below the file's own metadata
    specimen: str | None = None
    output_root: Path | None = None

    @property
    def observer_kind(self) -> str:
        return "polling" if self.polling else "native"

    def matches(self, name: str) -> bool:
        lowered = name.lower()
        return any(fnmatch.fnmatchcase(lowered, pattern.lower()) for pattern in self.patterns)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff; after the last one, quarantine."""

    max_attempts: int = 3
    backoff_seconds: float = 60.0
    backoff_factor: float = 4.0
    max_backoff_seconds: float = 3600.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return min(self.max_backoff_seconds,
                   self.backoff_seconds * self.backoff_factor ** max(0, attempt - 1))


@dataclass(frozen=True)
class DipOverrides:
    """Fit settings that replace the calibrated ones (tests, experiments)."""

    depth: int | None = None
    width: str | None = None
    skip: int | None = None
    iterations: int | None = None
    metric: str | None = None
    seed: int = 0
    reg_noise_std: float = 0.0
    ema_weight: float | None = None
    #: Parameter transfer: "group" or nearest-mae/-mse/-psnr/-ssim/-lpips/-gradient
    #: (similarity.py; needs a table from `autodip-watch calibrate`).
    transfer: str = "group"
    within_group: bool = False
    #: Speed settings of the fit (dip.params.SPEED_SETTINGS), comma-separated.
    speed: str = ""
    #: Fit mode (dip/modes.py): "stable" (default) or "paper"; ensemble size override.
    mode: str = "stable"
    members: int | None = None


#: Batching modes (dip/batching.py): auto batches on CUDA only.
BATCHING_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class BatchingSettings:
    """Fitting planes of one configuration together, within files and across files."""

    mode: str = "auto"
    #: Most networks fitted in one batch.
    max_batch: int = 32
    #: Device memory a batch may use, in MiB; 0 = 80 % of the memory free when it starts.
    memory_budget_mb: int = 0
    #: Files a worker runs side by side so their planes can share batches; 0 = auto
    #: (4 where batching is on, else 1).
    jobs_together: int = 0
    #: How long a batch waits for the planes of other files still being read.
    linger_seconds: float = 2.0

    def active_on(self, device_type: str) -> bool:
        return self.mode == "on" or (self.mode == "auto" and device_type == "cuda")

    def jobs_for(self, device_type: str) -> int:
        """Files run together on a device of ``device_type``."""
        if not self.active_on(device_type) or self.max_batch == 1:
            return 1
        return self.jobs_together or 4

    @property
    def memory_budget_bytes(self) -> int | None:
        return self.memory_budget_mb << 20 if self.memory_budget_mb else None


@dataclass(frozen=True)
class MetricsSettings:
    enabled: bool = False
    address: str = "127.0.0.1"
    port: int = 9464


@dataclass(frozen=True)
class DaemonSettings:
    heartbeat_seconds: float = 5.0
    #: SIGTERM: how long the current fit may take to abort before the daemon exits anyway.
    stop_timeout_seconds: float = 20.0
    #: A worker without progress this long is unhealthy (watchdog pings stop).
    stuck_seconds: float = 900.0
    log_level: str = "info"


#: Where jobs run: ``local`` (the daemon's own devices) or ``dask`` (a cluster).
EXECUTORS = ("local", "dask")
#: Dask scheduler addresses we accept: protocol://host:port (host:port means tcp).
_SCHEDULER_ADDRESS = re.compile(r"^(?:(tcp|tls)://)?(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


@dataclass(frozen=True)
class ClusterSettings:
    """The executor: the daemon's own devices, or a Dask cluster of GPU workers."""

    executor: str = "local"
    #: ``tcp://host:port`` of the Dask scheduler (executor = "dask").
    scheduler: str | None = None
    #: Tasks submitted at once, each holding one GPU and one file (or, where batching is
    #: on, up to ``batching.jobs_together`` files of one fit key); 0 = as many as the
    #: cluster has GPUs (at least 1).
    max_in_flight: int = 0
    #: How long one connection attempt to the scheduler may take.
    connect_timeout_seconds: float = 10.0
    #: Reconnection backoff doubles from 1 s up to this.
    reconnect_max_seconds: float = 60.0


def normalise_scheduler(address: str) -> str:
    """``host:port`` -> ``tcp://host:port``; ``ValueError`` for anything else."""
    text = address.strip()
    match = _SCHEDULER_ADDRESS.match(text)
    if match is None or not 0 < int(match.group(3)) <= 65535:
        raise ValueError(f"must be a Dask scheduler address tcp://HOST:PORT (e.g. "
                         f"\"tcp://gpu-server:8786\"), got {address!r}")
    return text if match.group(1) else f"tcp://{text}"


@dataclass(frozen=True)
class Config:
    watch: tuple[WatchFolder, ...] = ()
    output_root: Path | None = None
    output_suffix: str = DEFAULT_OUTPUT_SUFFIX
    #: ``[output] preview``: write a small before/after PNG beside each output.
    output_preview: bool = False
    calibration_table: Path | None = None
    devices: tuple[str, ...] = ("auto",)
    state_dir: Path | None = None
    retry: RetryPolicy = RetryPolicy()
    dip: DipOverrides = DipOverrides()
    metrics: MetricsSettings = MetricsSettings()
    daemon: DaemonSettings = DaemonSettings()
    cluster: ClusterSettings = ClusterSettings()
    batching: BatchingSettings = BatchingSettings()
    #: The ``[inference]`` table, as metadata.InferenceRules.from_mapping reads it.
    inference: dict = field(default_factory=dict)
    source: Path | None = None

    # ------------------------------------------------------------------ derived

    def folder_for(self, path: Path) -> WatchFolder | None:
        """The watch folder whose tree holds ``path`` (paths as the watcher resolved them)."""
        for folder in self.watch:
            if _is_within(path, folder.path):
                return folder
        return None

    def output_root_for(self, folder: WatchFolder) -> Path | None:
        return folder.output_root or self.output_root

    def output_for(self, raw: Path, folder: WatchFolder | None) -> Path:
        """Where the denoised file of ``raw`` goes: beside it, or mirrored under an output
        root; named by :func:`outputs.output_name` (one output per raw file)."""
        from ..io.outputs import output_name

        name = output_name(raw.name, self.output_suffix)
        root = self.output_root_for(folder) if folder is not None else None
        if root is None:
            return raw.with_name(name)
        return root / raw.parent.relative_to(folder.path) / name

    def denoise_settings(self, folder: WatchFolder | None, device: str, table):
        """The pipeline settings for a file of ``folder`` on ``device``.

        The folder's microscope/specimen are *defaults*: they rank below what the file's
        own metadata says, so they are passed as folder defaults, never as overrides.
        """
        import dataclasses

        from .denoise import DenoiseSettings

        dip = self.dip
        settings = DenoiseSettings(depth=dip.depth, width=dip.width, skip=dip.skip,
                                   iterations=dip.iterations, metric=dip.metric,
                                   device=None if device == "auto" else device, seed=dip.seed,
                                   reg_noise_std=dip.reg_noise_std, ema_weight=dip.ema_weight,
                                   table=table, transfer=dip.transfer,
                                   within_group=dip.within_group,
                                   speed=dip.speed, mode=dip.mode, members=dip.members,
                                   batching=self.batching.mode,
                                   max_batch=self.batching.max_batch,
                                   memory_budget=self.batching.memory_budget_bytes)
        names = {f.name for f in dataclasses.fields(DenoiseSettings)}
        if self.inference and "rules" in names:
            from ..metadata.rules import InferenceRules

            settings = dataclasses.replace(settings,
                                           rules=InferenceRules.from_mapping(self.inference))
        if folder is not None and (folder.microscope or folder.specimen):
            if {"folder_microscope", "folder_specimen"} <= names:
                settings = dataclasses.replace(settings, folder_microscope=folder.microscope,
                                               folder_specimen=folder.specimen)
        return settings

    def preview_for(self, output: Path) -> Path:
        """The preview PNG of ``output``: ``x.autodip.ome.tif`` -> ``x.autodip.preview.png``."""
        from ..preview import preview_path

        return preview_path(output)

    def is_output(self, path: Path) -> bool:
        """The daemon's own outputs (and their previews), by name or by place; they are
        never taken as input."""
        lowered = path.name.lower()
        if lowered.endswith(DEFAULT_OUTPUT_SUFFIX) or lowered.endswith(self.output_suffix.lower()):
            return True
        for suffix in {DEFAULT_OUTPUT_SUFFIX, self.output_suffix.lower()}:
            stem = suffix.rsplit(".ome.tif", 1)[0]
            if lowered.endswith(stem + PREVIEW_SUFFIX):
                return True
        roots = [self.output_root] + [folder.output_root for folder in self.watch]
        return any(root is not None and _is_within(path, root) for root in roots)


def _is_within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------------- state dir

def default_state_dir() -> Path:
    """``$STATE_DIRECTORY`` under systemd, else the XDG state directory."""
    systemd = os.environ.get(SYSTEMD_STATE_ENV)
    if systemd:
        # systemd may pass several colon-separated directories; the first is ours.
        return Path(systemd.split(":")[0])
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / APP_NAME


def resolve_state_dir(cli: Path | None, config: Config | None) -> Path:
    """``--state-dir``, then the config's ``state_dir``, then :func:`default_state_dir`."""
    if cli is not None:
        return Path(cli).expanduser().absolute()
    if config is not None and config.state_dir is not None:
        return config.state_dir
    return default_state_dir()


# ------------------------------------------------------------------------ loading

_TOP_KEYS = {"watch", "output", "calibration_table", "device", "state_dir", "retry", "dip",
             "metrics", "daemon", "log_level", "calibrate", "inference", "executor",
             "scheduler", "max_in_flight", "dask", "batching"}
_WATCH_KEYS = {"path", "patterns", "recursive", "polling", "poll_interval_seconds",
               "settle_seconds", "corrupt_after_seconds", "incomplete_after_seconds",
               "microscope", "specimen", "output_root"}
_SECTION_KEYS = {
    "output": {"root", "suffix", "preview"},
    "retry": {"max_attempts", "backoff_seconds", "backoff_factor", "max_backoff_seconds"},
    "dip": {"depth", "width", "skip", "iterations", "metric", "seed", "reg_noise_std",
            "ema_weight", "transfer", "within_group", "speed", "mode", "members"},
    # `autodip-watch calibrate --config FILE` reads and checks the values (calibrate.py).
    "calibrate": {"depths", "widths", "skips", "max_iterations", "every", "crop", "lpips",
                  "match", "seed", "device"},
    "metrics": {"enabled", "address", "port"},
    "daemon": {"heartbeat_seconds", "stop_timeout_seconds", "stuck_seconds"},
    "dask": {"connect_timeout_seconds", "reconnect_max_seconds"},
    "batching": {"mode", "max_batch", "memory_budget_mb", "jobs_together", "linger_seconds"},
}
_LOG_LEVELS = ("debug", "info", "warning", "error")


class _Reader:
    """Collects problems while reading typed values out of a TOML table."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.problems: list[str] = []

    def unknown(self, table: dict, allowed: set[str], where: str) -> None:
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(key, sorted(allowed), n=1)
                hint = f"did you mean {close[0]!r}?" if close else \
                    f"allowed keys: {', '.join(sorted(allowed))}"
                self.problems.append(f"{where}{key}: unknown key; {hint}")

    def choice(self, table: dict, key: str, where: str, choices: tuple[str, ...],
               default: str) -> str:
        """A string that must be one of ``choices`` (case-insensitive)."""
        value = self.get(table, key, where, "str", default, example=f'"{default}"').lower()
        if value not in choices:
            self.problems.append(f"{where}{key}: must be one of {', '.join(choices)}, "
                                 f"got {value!r}")
            return default
        return value

    def get(self, table: dict, key: str, where: str, kind: str, default: Any,
            minimum: float | None = None, example: str = "") -> Any:
        if key not in table:
            return default
        value = table[key]
        name = f"{where}{key}"
        fix = f" (e.g. {key} = {example})" if example else ""
        if kind == "bool":
            if not isinstance(value, bool):
                self.problems.append(f"{name}: must be true or false, got {value!r}{fix}")
                return default
            return value
        if kind in ("int", "number"):
            ok = isinstance(value, int) and not isinstance(value, bool)
            if kind == "number":
                ok = ok or isinstance(value, float)
            if not ok:
                what = "a whole number" if kind == "int" else "a number"
                self.problems.append(f"{name}: must be {what}, got {value!r}{fix}")
                return default
            if minimum is not None and value < minimum:
                self.problems.append(f"{name}: must be at least {minimum}, got {value!r}{fix}")
                return default
            return float(value) if kind == "number" else int(value)
        if kind == "str":
            if not isinstance(value, str) or not value.strip():
                self.problems.append(f"{name}: must be a non-empty string, got {value!r}{fix}")
                return default
            return value.strip()
        if kind == "path":
            if not isinstance(value, str) or not value.strip():
                self.problems.append(f"{name}: must be a path string, got {value!r}{fix}")
                return default
            path = Path(os.path.expandvars(value.strip())).expanduser()
            return path if path.is_absolute() else (self.base / path)
        raise AssertionError(kind)


def parse_config(document: dict, base: Path, source: str = "config") -> Config:
    """Validate a parsed TOML document; relative paths are relative to ``base``."""
    reader = _Reader(base)
    reader.unknown(document, _TOP_KEYS, "")
    sections = {}
    for section, keys in _SECTION_KEYS.items():
        table = document.get(section, {})
        if not isinstance(table, dict):
            reader.problems.append(f"{section}: must be a table, written [{section}]")
            table = {}
        reader.unknown(table, keys, f"{section}.")
        sections[section] = table

    output = sections["output"]
    output_root = reader.get(output, "root", "output.", "path", None, example='"/data/denoised"')
    suffix = reader.get(output, "suffix", "output.", "str", DEFAULT_OUTPUT_SUFFIX,
                        example='".autodip.ome.tif"')
    if not suffix.lower().endswith((".ome.tif", ".ome.tiff")):
        reader.problems.append(f"output.suffix: must end in .ome.tif or .ome.tiff so that Fiji, "
                               f"napari and OMERO read the metadata, got {suffix!r}")
        suffix = DEFAULT_OUTPUT_SUFFIX
    preview = reader.get(output, "preview", "output.", "bool", False, example="true")

    folders = _parse_watch(document.get("watch", []), reader)

    devices = document.get("device", "auto")
    if isinstance(devices, str):
        devices = [devices]
    if (not isinstance(devices, list) or not devices
            or not all(isinstance(d, str) and d.strip() for d in devices)):
        reader.problems.append(f"device: must be a device name or a list of them "
                               f"(e.g. device = \"cuda\" or device = [\"cuda:0\", \"cuda:1\"]), "
                               f"got {devices!r}")
        devices = ["auto"]
    devices = [d.strip() for d in devices]
    if len(set(devices)) != len(devices):
        reader.problems.append("device: lists a device twice; one worker per device")

    retry = sections["retry"]
    retry_policy = RetryPolicy(
        max_attempts=reader.get(retry, "max_attempts", "retry.", "int", 3, 1, "3"),
        backoff_seconds=reader.get(retry, "backoff_seconds", "retry.", "number", 60.0, 0, "60"),
        backoff_factor=reader.get(retry, "backoff_factor", "retry.", "number", 4.0, 1, "4"),
        max_backoff_seconds=reader.get(retry, "max_backoff_seconds", "retry.", "number",
                                       3600.0, 0, "3600"))

    dip = sections["dip"]
    width = dip.get("width")
    if width is not None and not isinstance(width, (int, str)):
        reader.problems.append(f"dip.width: must be 16..512 or \"asc\", got {width!r}")
        width = None
    overrides = DipOverrides(
        depth=reader.get(dip, "depth", "dip.", "int", None, 1, "4"),
        width=str(width) if width is not None else None,
        skip=reader.get(dip, "skip", "dip.", "int", None, 0, "4"),
        iterations=reader.get(dip, "iterations", "dip.", "int", None, 1, "300"),
        metric=reader.get(dip, "metric", "dip.", "str", None, example='"lpips_psnr"'),
        seed=reader.get(dip, "seed", "dip.", "int", 0, example="0"),
        reg_noise_std=reader.get(dip, "reg_noise_std", "dip.", "number", 0.0, 0, "0.0"),
        ema_weight=reader.get(dip, "ema_weight", "dip.", "number", None, 0, "0.99"),
        transfer=reader.get(dip, "transfer", "dip.", "str", "group", example='"nearest-lpips"'),
        within_group=reader.get(dip, "within_group", "dip.", "bool", False, example="true"),
        speed=_speed_list(dip.get("speed", []), reader),
        mode=reader.get(dip, "mode", "dip.", "str", "stable", example='"paper"'),
        members=reader.get(dip, "members", "dip.", "int", None, 1, "3"))

    inference = document.get("inference", {})
    if not isinstance(inference, dict):
        reader.problems.append("inference: must be a table, written [inference]")
        inference = {}
    inference = dict(inference)
    if isinstance(inference.get("folders"), list):  # folder paths relative to this file
        inference["folders"] = [
            {**entry, "path": str(base / Path(entry["path"]).expanduser())}
            if isinstance(entry, dict) and isinstance(entry.get("path"), str) else entry
            for entry in inference["folders"]]

    metrics = sections["metrics"]
    metrics_settings = MetricsSettings(
        enabled=reader.get(metrics, "enabled", "metrics.", "bool", False, example="true"),
        address=reader.get(metrics, "address", "metrics.", "str", "127.0.0.1",
                           example='"127.0.0.1"'),
        port=reader.get(metrics, "port", "metrics.", "int", 9464, 0, "9464"))
    if metrics_settings.port > 65535:
        reader.problems.append(f"metrics.port: must be at most 65535, got {metrics_settings.port}")

    daemon = sections["daemon"]
    log_level = reader.choice(document, "log_level", "", _LOG_LEVELS, "info")
    daemon_settings = DaemonSettings(
        heartbeat_seconds=reader.get(daemon, "heartbeat_seconds", "daemon.", "number", 5.0,
                                     0.1, "5"),
        stop_timeout_seconds=reader.get(daemon, "stop_timeout_seconds", "daemon.", "number",
                                        20.0, 0.1, "20"),
        stuck_seconds=reader.get(daemon, "stuck_seconds", "daemon.", "number", 900.0, 1, "900"),
        log_level=log_level)

    cluster = _parse_cluster(document, sections["dask"], reader)

    batching = sections["batching"]
    batching_settings = BatchingSettings(
        mode=reader.choice(batching, "mode", "batching.", BATCHING_MODES, "auto"),
        max_batch=reader.get(batching, "max_batch", "batching.", "int", 32, 1, "32"),
        memory_budget_mb=reader.get(batching, "memory_budget_mb", "batching.", "int", 0, 0,
                                    "40000"),
        jobs_together=reader.get(batching, "jobs_together", "batching.", "int", 0, 0, "4"),
        linger_seconds=reader.get(batching, "linger_seconds", "batching.", "number", 2.0, 0,
                                  "2"))

    config = Config(
        watch=tuple(folders), output_root=output_root, output_suffix=suffix,
        output_preview=preview, calibration_table=reader.get(document, "calibration_table", "", "path", None,
                                     example='"/etc/autodip-watch/table.toml"'),
        devices=tuple(devices),
        state_dir=reader.get(document, "state_dir", "", "path", None,
                             example='"/var/lib/autodip-watch"'),
        retry=retry_policy, dip=overrides, metrics=metrics_settings, daemon=daemon_settings,
        cluster=cluster, batching=batching_settings, inference=inference, source=None)
    reader.problems += _cross_checks(config)
    if reader.problems:
        raise ConfigError(reader.problems, source)
    return config


def _speed_list(value: Any, reader: _Reader) -> str:
    """``[dip] speed = ["channels_last", "bf16"]`` -> "channels_last,bf16"."""
    from ..dip.params import SPEED_SETTINGS

    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        reader.problems.append(f"dip.speed: must be a list of names, e.g. speed = "
                               f"[\"channels_last\", \"tf32\"], got {value!r}")
        return ""
    unknown = [v for v in value if v not in SPEED_SETTINGS]
    if unknown:
        reader.problems.append(f"dip.speed: unknown setting(s) {', '.join(unknown)}; choose "
                               f"from {', '.join(SPEED_SETTINGS)}")
        return ""
    if {"compile", "cuda_graphs"} <= set(value):
        reader.problems.append("dip.speed: compile and cuda_graphs do not combine")
        return ""
    return ",".join(value)


def _parse_cluster(document: dict, dask: dict, reader: _Reader) -> ClusterSettings:
    """``executor``, ``scheduler``, ``max_in_flight`` and the ``[dask]`` table."""
    executor = reader.get(document, "executor", "", "str", None, example='"dask"')
    scheduler = reader.get(document, "scheduler", "", "str", None,
                           example='"tcp://gpu-server:8786"')
    if scheduler is not None:
        try:
            scheduler = normalise_scheduler(scheduler)
        except ValueError as error:
            reader.problems.append(f"scheduler: {error}")
            scheduler = None
    return _cluster_settings(
        executor, scheduler, "scheduler" in document,
        reader.get(document, "max_in_flight", "", "int", 0, 0, "4"), reader.problems,
        "executor", "scheduler",
        connect_timeout_seconds=reader.get(dask, "connect_timeout_seconds", "dask.", "number",
                                           10.0, 0.1, "10"),
        reconnect_max_seconds=reader.get(dask, "reconnect_max_seconds", "dask.", "number",
                                         60.0, 1, "60"))


def _cluster_settings(executor: str | None, scheduler: str | None, scheduler_given: bool,
                      max_in_flight: int, problems: list[str], executor_key: str,
                      scheduler_key: str, **timeouts: float) -> ClusterSettings:
    """Check executor and scheduler together; a scheduler alone means executor "dask"."""
    if executor is not None:
        executor = executor.lower()
        if executor not in EXECUTORS:
            problems.append(f"{executor_key}: must be one of {', '.join(EXECUTORS)}, "
                            f"got {executor!r}")
            executor = None
    if executor is None:
        executor = "dask" if scheduler is not None else "local"
    if executor == "dask" and scheduler is None and not scheduler_given:
        problems.append(f"{scheduler_key}: missing; {executor_key} \"dask\" needs the address "
                        f"of the Dask scheduler (e.g. scheduler = \"tcp://gpu-server:8786\")")
    if executor == "local" and scheduler is not None:
        problems.append(f"{scheduler_key}: set, but {executor_key} is \"local\"; use "
                        f"executor = \"dask\" to send jobs to the cluster, or drop the scheduler")
    return ClusterSettings(executor=executor, scheduler=scheduler, max_in_flight=max_in_flight,
                           **timeouts)


def with_cli_executor(config: Config, executor: str | None, scheduler: str | None,
                      max_in_flight: int | None) -> Config:
    """Apply ``--executor``, ``--scheduler`` and ``--max-in-flight`` over the config's."""
    if executor is None and scheduler is None and max_in_flight is None:
        return config
    problems: list[str] = []
    current = config.cluster
    if scheduler is not None:
        try:
            scheduler = normalise_scheduler(scheduler)
        except ValueError as error:
            problems.append(f"--scheduler: {error}")
            scheduler = None
    if max_in_flight is not None and max_in_flight < 0:
        problems.append(f"--max-in-flight: must be at least 0, got {max_in_flight}")
        max_in_flight = None
    if executor is None:
        executor = "dask" if scheduler is not None else current.executor
    if scheduler is None and executor == "dask":
        scheduler = current.scheduler
    cluster = _cluster_settings(
        executor, scheduler if executor == "dask" else None, False,
        current.max_in_flight if max_in_flight is None else max_in_flight, problems,
        "--executor", "--scheduler", connect_timeout_seconds=current.connect_timeout_seconds,
        reconnect_max_seconds=current.reconnect_max_seconds)
    if problems:
        raise ConfigError(problems, "command line")
    return replace(config, cluster=cluster)


def _parse_watch(entries: Any, reader: _Reader) -> list[WatchFolder]:
    if isinstance(entries, dict):
        entries = [entries]
    if not isinstance(entries, list):
        reader.problems.append("watch: must be one or more [[watch]] tables, each with a path")
        return []
    folders = []
    for number, entry in enumerate(entries):
        where = f"watch[{number}]."
        if not isinstance(entry, dict):
            reader.problems.append(f"watch[{number}]: must be a table written [[watch]]")
            continue
        reader.unknown(entry, _WATCH_KEYS, where)
        path = reader.get(entry, "path", where, "path", None, example='"/data/incoming"')
        if path is None:
            if "path" not in entry:
                reader.problems.append(f"{where}path: missing; every [[watch]] needs "
                                       f"path = \"/folder/to/watch\"")
            continue
        patterns = entry.get("patterns", list(DEFAULT_PATTERNS))
        if (not isinstance(patterns, list) or not patterns
                or not all(isinstance(p, str) and p.strip() for p in patterns)):
            reader.problems.append(f"{where}patterns: must be a list of glob patterns "
                                   f"(e.g. patterns = [\"*.ome.tif\", \"*.tif\"]), got {patterns!r}")
            patterns = list(DEFAULT_PATTERNS)
        settle = reader.get(entry, "settle_seconds", where, "number", 10.0, 0, "10")
        folder = WatchFolder(
            path=Path(os.path.abspath(path)),
            patterns=tuple(p.strip() for p in patterns),
            recursive=reader.get(entry, "recursive", where, "bool", True, example="true"),
            polling=reader.get(entry, "polling", where, "bool", False, example="true"),
            poll_interval_seconds=reader.get(entry, "poll_interval_seconds", where, "number",
                                             5.0, 0.05, "5"),
            settle_seconds=settle,
            corrupt_after_seconds=reader.get(entry, "corrupt_after_seconds", where, "number",
                                             max(120.0, settle), 0, "120"),
            incomplete_after_seconds=reader.get(entry, "incomplete_after_seconds", where,
                                                "number", max(1800.0, settle), 0, "1800"),
            microscope=reader.get(entry, "microscope", where, "str", None,
                                  example='"widefield"'),
            specimen=reader.get(entry, "specimen", where, "str", None, example='"nucleus"'),
            output_root=reader.get(entry, "output_root", where, "path", None,
                                   example='"/data/denoised"'))
        if folder.corrupt_after_seconds < folder.settle_seconds:
            reader.problems.append(f"{where}corrupt_after_seconds: must be at least "
                                   f"settle_seconds ({folder.settle_seconds:g})")
        if folder.incomplete_after_seconds < folder.settle_seconds:
            reader.problems.append(f"{where}incomplete_after_seconds: must be at least "
                                   f"settle_seconds ({folder.settle_seconds:g})")
        if folder.path.exists() and not folder.path.is_dir():
            reader.problems.append(f"{where}path: {folder.path} is a file, not a folder")
        folders.append(folder)
    return folders


def _cross_checks(config: Config) -> list[str]:
    """Relations between folders: no nesting, no shared output tree."""
    problems = []
    folders = list(config.watch)
    for i, first in enumerate(folders):
        for j, second in enumerate(folders):
            if i < j and (_is_within(first.path, second.path) or _is_within(second.path, first.path)):
                problems.append(f"watch[{j}].path: {second.path} overlaps watch[{i}].path "
                                f"{first.path}; a file must belong to one folder, so watch the "
                                f"outer folder once or move one of them")
    owners: dict[Path, int] = {}
    for number, folder in enumerate(folders):
        root = config.output_root_for(folder)
        if root is None:
            continue
        root = Path(os.path.abspath(root))
        if root in owners:
            problems.append(f"watch[{number}].output_root: {root} is also the output root of "
                            f"watch[{owners[root]}]; give each [[watch]] its own output_root so "
                            f"their mirrored trees cannot collide")
        owners[root] = number
        if _is_within(folder.path, root):
            problems.append(f"watch[{number}].path: lies inside its output root {root}; outputs "
                            f"are never taken as input, so nothing would be denoised")
    return problems


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML config file."""
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
    return replace(config, source=path.absolute())


def with_cli_folders(config: Config, folders: list[Path]) -> Config:
    """Add ``--watch DIR`` folders (default settings) to a config."""
    if not folders:
        return config
    added = tuple(WatchFolder(path=Path(os.path.abspath(Path(f).expanduser()))) for f in folders)
    merged = replace(config, watch=config.watch + added)
    problems = _cross_checks(merged)
    if problems:
        raise ConfigError(problems, "--watch")
    return merged


def check_runtime(config: Config) -> list[str]:
    """Checks that need the engine: the table loads, overrides are valid, devices exist.

    Returns warnings (not errors): watch folders that do not exist yet (a share not yet
    mounted at boot is waited for, not fatal). Raises :class:`ConfigError` on errors.
    """
    from ..dip.params import DipParams
    from ..transfer.table import CalibrationTable, TableError

    problems: list[str] = []
    warnings: list[str] = []
    table = None
    try:
        table = CalibrationTable.load(config.calibration_table)
    except TableError as error:
        problems.append(f"calibration_table: {error}")
    dip = config.dip
    if table is not None:
        try:
            base = table.lookup(None, None, dip.metric).params
            DipParams(depth=dip.depth or base.depth, width=dip.width or base.width,
                      skip=dip.skip if dip.skip is not None else base.skip,
                      iterations=dip.iterations or base.iterations)
        except TableError as error:
            problems.append(f"dip.metric: {error}")
        except ValueError as error:
            problems.append(f"dip: {error} (see `autodip-watch groups` for valid values)")
        from ..transfer.images import check_table_supports

        try:
            check_table_supports(table, dip.transfer, dip.metric)
        except ValueError as error:  # includes TableError / SimilarityError
            problems.append(f"dip.transfer: {error}")
    if dip.ema_weight is not None and not 0 <= dip.ema_weight < 1:
        problems.append(f"dip.ema_weight: must be in [0, 1), got {dip.ema_weight}")
    from ..dip.modes import MODES

    if dip.mode not in MODES:
        problems.append(f"dip.mode: unknown fit mode {dip.mode!r}; choose from "
                        f"{', '.join(MODES)}")
    if config.inference:
        from ..metadata.rules import InferenceRules

        try:
            InferenceRules.from_mapping(config.inference)
        except (ValueError, TypeError) as error:
            problems.append(f"inference: {error}")
    if config.cluster.executor == "dask":
        try:
            import distributed  # noqa: F401
        except ImportError:
            problems.append("executor: \"dask\" needs Dask distributed on this machine: "
                            "pip install 'autodip-watch[dask]'")
    for number, device in enumerate(config.devices):
        if config.cluster.executor == "dask":
            break  # jobs run on the cluster's workers; each picks its own GPU
        if device in ("auto", "cpu"):
            continue  # always there: no need to load torch (config check stays light)
        from ..dip.device import choose_device

        try:
            choose_device(device)
        except (ValueError, RuntimeError) as error:
            problems.append(f"device: {error}")
    if not config.watch:
        problems.append("watch: no folders to watch; add a [[watch]] table with a path, "
                        "or pass --watch DIR")
    from ..metadata.labels import validate_microscope, validate_specimen

    for number, folder in enumerate(config.watch):
        for key, value, validate in (("microscope", folder.microscope, validate_microscope),
                                     ("specimen", folder.specimen, validate_specimen)):
            if value is not None:
                try:
                    validate(value)
                except ValueError as error:
                    problems.append(f"watch[{number}].{key}: {error}")
        if not folder.path.is_dir():
            warnings.append(f"watch[{number}].path: {folder.path} does not exist (yet); the "
                            f"daemon waits for it to appear")
    if problems:
        raise ConfigError(problems, str(config.source or "config"))
    return warnings
