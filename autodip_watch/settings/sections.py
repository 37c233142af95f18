"""The tables of the daemon's configuration file: one model each, defaults written once.

``[[watch]]`` (:class:`WatchFolder`), ``[output]``, ``[retry]``, ``[metrics]``,
``[daemon]``, ``[dask]`` and ``[batching]``; ``[dip]`` is in ``fit.py``, ``[inference]`` in
``inference.py``, ``[calibrate]`` in ``calibrate.py``, and the file as a whole in
``config.py``. The example configuration (``systemd/autodip-watch.example.toml``) and
``autodip-watch config schema`` show every key.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from .. import defaults
from .base import (ConfigPath, Flag, MicroscopeLabel, Number, Settings, SpecimenLabel, Text,
                   Whole, lowercase)


class WatchFolder(Settings):
    """One watched tree (``[[watch]]``) and how files in it are taken and labelled."""

    path: ConfigPath = Field(description="The folder to watch; relative to the config file.",
                             examples=["/data/incoming"])
    patterns: tuple[str, ...] = Field(
        defaults.RAW_PATTERNS, description="Glob patterns of raw images (case-insensitive).",
        examples=[["*.ome.tif", "*.tif"]])
    recursive: Flag = Field(True, description="Watch sub-folders too.", examples=[True])
    polling: Flag = Field(False, description="Poll instead of inotify: SMB/NFS/CIFS shares, "
                          "where inotify sees nothing written by other hosts.", examples=[True])
    poll_interval_seconds: Number = Field(5.0, ge=0.05, examples=[5])
    settle_seconds: Number = Field(10.0, ge=0, description="A file is taken once it has not "
                                   "changed for this long (and is complete).", examples=[10])
    corrupt_after_seconds: Number = Field(
        120.0, ge=0, description="A settled file still unreadable this long after its last "
        "change is quarantined (default 120, at least settle_seconds).", examples=[120])
    incomplete_after_seconds: Number = Field(
        1800.0, ge=0, description="A file or OME set that stays incomplete and unchanged this "
        "long (fewer planes than it declares, a member that never arrives, a writer that "
        "never closes it) is taken as it is and its job ends partial (default 1800, at least "
        "settle_seconds); longer than the longest pause between two frames.",
        examples=[1800])
    microscope: MicroscopeLabel = Field(None, description="Folder default, below the file's own "
                                    "metadata.", examples=["widefield"])
    specimen: SpecimenLabel = Field(None, description="Folder default, below the file's own "
                                  "metadata.", examples=["nucleus"])
    output_root: ConfigPath | None = Field(None, description="Mirror outputs under this "
                                           "folder instead of beside the raw files.",
                                           examples=["/data/denoised"])

    @model_validator(mode="before")
    @classmethod
    def _timeouts_follow_settle(cls, data: Any) -> Any:
        """The corrupt and incomplete timeouts default to at least ``settle_seconds``."""
        if isinstance(data, dict) and isinstance(data.get("settle_seconds"), (int, float)) \
                and not isinstance(data.get("settle_seconds"), bool):
            settle = float(data["settle_seconds"])
            data = dict(data)
            data.setdefault("corrupt_after_seconds", max(120.0, settle))
            data.setdefault("incomplete_after_seconds", max(1800.0, settle))
        return data

    @field_validator("patterns", mode="before")
    @classmethod
    def _patterns(cls, value: Any) -> Any:
        if (not isinstance(value, (list, tuple)) or not value
                or not all(isinstance(p, str) and p.strip() for p in value)):
            raise ValueError(f"must be a list of glob patterns (e.g. patterns = "
                             f"[\"*.ome.tif\", \"*.tif\"]), got {value!r}")
        return tuple(p.strip() for p in value)

    @field_validator("path")
    @classmethod
    def _a_folder(cls, value: Path) -> Path:
        if value.exists() and not value.is_dir():
            raise ValueError(f"{value} is a file, not a folder")
        return value

    @field_validator("corrupt_after_seconds", "incomplete_after_seconds")
    @classmethod
    def _after_settling(cls, value: float, info: ValidationInfo) -> float:
        settle = info.data.get("settle_seconds")
        if settle is not None and value < settle:
            raise ValueError(f"must be at least settle_seconds ({settle:g})")
        return value

    @property
    def observer_kind(self) -> str:
        return "polling" if self.polling else "native"

    def matches(self, name: str) -> bool:
        """Whether a file called ``name`` is a raw image of this folder."""
        lowered = name.lower()
        return any(fnmatch.fnmatchcase(lowered, pattern.lower()) for pattern in self.patterns)


class OutputSettings(Settings):
    """``[output]``: where outputs go and what they are called."""

    root: ConfigPath | None = Field(None, description="Mirror every folder's outputs under "
                                    "this folder (a [[watch]] output_root wins).",
                                    examples=["/data/denoised"])
    suffix: Text = Field(defaults.OUTPUT_SUFFIX, description="Replaces .autodip.ome.tif in "
                         "output names.", examples=[defaults.OUTPUT_SUFFIX])
    preview: Flag = Field(False, description="Write a small before/after PNG beside each "
                          "output.", examples=[True])

    @field_validator("suffix")
    @classmethod
    def _readable_suffix(cls, value: str) -> str:
        if not value.lower().endswith((".ome.tif", ".ome.tiff")):
            raise ValueError(f"must end in .ome.tif or .ome.tiff so that Fiji, napari and "
                             f"OMERO read the metadata, got {value!r}")
        return value


class RetryPolicy(Settings):
    """``[retry]``: bounded retries with exponential backoff; after the last, quarantine."""

    max_attempts: Whole = Field(3, ge=1, examples=[3])
    backoff_seconds: Number = Field(60.0, ge=0, examples=[60])
    backoff_factor: Number = Field(4.0, ge=1, examples=[4])
    max_backoff_seconds: Number = Field(3600.0, ge=0, examples=[3600])

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return min(self.max_backoff_seconds,
                   self.backoff_seconds * self.backoff_factor ** max(0, attempt - 1))


class MetricsSettings(Settings):
    """``[metrics]``: the optional Prometheus endpoint."""

    enabled: Flag = Field(False, examples=[True])
    address: Text = Field("127.0.0.1", examples=["127.0.0.1"])
    port: Whole = Field(9464, ge=0, le=65535, examples=[9464])


class DaemonSettings(Settings):
    """``[daemon]``: the service's heartbeat and how it stops."""

    heartbeat_seconds: Number = Field(5.0, ge=0.1, examples=[5])
    stop_timeout_seconds: Number = Field(
        20.0, ge=0.1, description="SIGTERM: how long the current fit may take to abort "
        "before the daemon exits anyway.", examples=[20])
    stuck_seconds: Number = Field(900.0, ge=1, description="A worker without progress this "
                                  "long is unhealthy (watchdog pings stop).", examples=[900])


class DaskSettings(Settings):
    """``[dask]``: how the daemon talks to a Dask scheduler (``executor = "dask"``)."""

    connect_timeout_seconds: Number = Field(10.0, ge=0.1, examples=[10])
    reconnect_max_seconds: Number = Field(60.0, ge=1, description="Reconnection backoff "
                                          "doubles from 1 s up to this.", examples=[60])


class BatchingSettings(Settings):
    """``[batching]``: fitting planes of one configuration together, within files and
    across files (``dip/batching.py``)."""

    mode: lowercase(Literal["auto", "on", "off"]) = Field(
        "auto", description="auto batches on CUDA only.", examples=["auto"])
    max_batch: Whole = Field(defaults.MAX_BATCH, ge=1, description="Most networks fitted in "
                             "one batch.", examples=[defaults.MAX_BATCH])
    memory_budget_mb: Whole = Field(0, ge=0, description="Device memory a batch may use, in "
                                    "MiB; 0 = 80 % of the memory free when it starts.",
                                    examples=[40000])
    jobs_together: Whole = Field(0, ge=0, description="Files a worker runs side by side so "
                                 "their planes can share batches; 0 = "
                                 f"{defaults.JOBS_TOGETHER} where batching is on, else 1.",
                                 examples=[4])
    linger_seconds: Number = Field(defaults.LINGER_SECONDS, ge=0, description="How long a "
                                   "batch waits for the planes of other files still being "
                                   "read.", examples=[defaults.LINGER_SECONDS])

    def active_on(self, device_type: str) -> bool:
        """Whether planes are batched on a device of ``device_type``."""
        return self.mode == "on" or (self.mode == "auto" and device_type == "cuda")

    def jobs_for(self, device_type: str) -> int:
        """Files run together on a device of ``device_type``."""
        if not self.active_on(device_type) or self.max_batch == 1:
            return 1
        return self.jobs_together or defaults.JOBS_TOGETHER

    @property
    def memory_budget_bytes(self) -> int | None:
        return self.memory_budget_mb << 20 if self.memory_budget_mb else None
