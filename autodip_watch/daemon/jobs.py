"""A job of the queue, as a row: its states, its fields, and what the queue needs of the
retry settings. Plain data; ``queue.py`` stores and changes jobs, ``database.py`` holds
the SQLite schema."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol

#: A job's states; ``queue.py``'s docstring draws how they follow each other.
STATES = ("queued", "running", "done", "partial", "failed", "quarantined", "skipped")
#: States a job can be retried from by hand.
RETRYABLE = ("partial", "failed", "quarantined", "skipped")
#: Final states of a job that ran to the end (an output was written or kept).
FINISHED = ("done", "partial")


class RetryRule(Protocol):
    """How often a job may fail, and how long it waits before the next attempt (the
    configuration's ``[retry]`` table, ``settings.RetryPolicy``): the queue needs only
    this, not the settings."""

    max_attempts: int

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""


@dataclass(frozen=True)
class Job:
    id: int
    path: str
    size: int
    mtime_ns: int
    sha256: str
    folder: str | None
    members: str | None  # JSON list of the other files of a multi-file OME set
    state: str
    attempts: int
    not_before: float
    error: str | None
    created: float
    updated: float
    started: float | None
    finished: float | None
    worker: str | None
    output: str | None
    seconds: float | None
    planes: int | None
    plane: int | None
    tile: int | None
    tiles: int | None
    iteration: int | None
    iterations: int | None
    progress_at: float | None
    report: str | None
    #: The DIP configurations and plane sizes the file needs (pipeline.fit_key), when
    #: known: a worker that batches runs jobs with equal keys together.
    fit_key: str | None = None
    #: Share of the job's fits done, in [0, 1], and its rate in fractions per second
    #: measured from the first iteration on (progress.FitProgress), as last written.
    fraction: float | None = None
    rate: float | None = None
    #: JSON: what the file (or set) lacked when the watcher took it as it was, after
    #: ``incomplete_after_seconds`` unchanged: {"reason", "planes_present",
    #: "planes_declared", "files"}; None for a complete file.
    missing: str | None = None
    #: JSON list of {"file", "path", "size", "sha256"}: every file of the job as hashed
    #: when it was queued (the first file, then the set's members).
    sources: str | None = None
    #: Newest ctime of the job's files: with size and mtime, what "this version is
    #: already known" compares (no tool can set a ctime back).
    ctime_ns: int | None = None

    def as_dict(self, with_report: bool = False) -> dict:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data.pop("report")
        data["members"] = self.member_paths()
        data["missing"] = self.missing_info()
        data["sources"] = self.source_list()
        if with_report and self.report:
            data["report"] = json.loads(self.report)
        return data

    def member_paths(self) -> list[str]:
        return json.loads(self.members) if self.members else []

    def missing_info(self) -> dict | None:
        return json.loads(self.missing) if self.missing else None

    def source_list(self) -> list[dict]:
        return json.loads(self.sources) if self.sources else []

    def fraction_done(self) -> float | None:
        """Progress in [0, 1], or None before the first report: as the worker measured it
        (planes fitted together in a batch each count), else from (plane, tile, iteration)."""
        if self.fraction is not None:
            return min(1.0, self.fraction)
        if not (self.planes and self.plane and self.iterations):
            return None
        tiles = self.tiles or 1
        within_plane = ((self.tile or 1) - 1 + (self.iteration or 0) / self.iterations) / tiles
        return min(1.0, (self.plane - 1 + within_plane) / self.planes)


class QueueError(RuntimeError):
    """A queue operation that cannot be done (unknown job, wrong state)."""
