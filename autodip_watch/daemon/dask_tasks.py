"""The worker side of the daemon's Dask executor: jobs run on a cluster's GPU worker.

:func:`denoise_task` runs the same :func:`~autodip_watch.pipeline.denoise.denoise_file` as
``denoise`` and the local worker, reading the input and writing the output (to a
temporary file, then renamed) on storage shared under the same paths on every machine;
the jobs of a task side by side, sharing batches. It reports where each job runs and
its progress as Dask worker events, and stops at the next fit iteration once its task is
cancelled (SIGTERM of the daemon, or the daemon's client gone).
"""

from __future__ import annotations

import dataclasses
import functools
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from ..cluster import WORKER_STOPPING, this_worker
from .. import defaults
from ..settings.denoise import DenoiseSettings


#: Progress events from a task, at most one per this many seconds.
EVENT_SECONDS = 1.0


class WorkerStorageError(RuntimeError):
    """The input is not visible on a worker: shared storage is missing or mounted elsewhere."""


def _cancelled(worker, key: str | None) -> bool:
    """Whether this task should stop: cancelled, released, or its worker shutting down."""
    if worker is None or key is None:
        return False
    try:
        if getattr(worker.status, "name", "") in WORKER_STOPPING:
            return True
        task = worker.state.tasks.get(key)
        return task is None or task.state not in ("executing", "long-running")
    except Exception:  # the worker's internals are not an API; never fail a fit on them
        return False


@dataclass
class _TaskContext:
    """Where a task runs and how it reports: shared by the jobs of one task."""

    worker: object
    topic: str | None
    key: str | None
    host: str = dataclasses.field(default_factory=socket.gethostname)

    @property
    def address(self) -> str:
        return self.worker.address if self.worker is not None else ""

    def cancelled(self) -> bool:
        return _cancelled(self.worker, self.key)

    def send(self, message: dict) -> None:
        if self.worker is not None and self.topic:
            try:
                self.worker.log_event(self.topic, {"key": self.key, "worker": self.address,
                                                   "host": self.host, **message})
            except Exception:  # progress is a courtesy; the fit goes on without it
                pass


def denoise_task(jobs: list[dict], payloads: dict[str, dict], progress_topic: str | None = None,
                 task_key: str | None = None,
                 linger: float = defaults.LINGER_SECONDS) -> list[dict]:
    """Daemon jobs on a Dask worker: :func:`denoise_file` from shared storage to shared storage.

    ``jobs`` are files of one fit key (the dispatcher groups them), each a dict of
    ``job`` (id), ``input``, ``output``, ``mtime_ns`` and ``settings`` (a key of
    ``payloads``: a :class:`DenoiseSettings` as JSON, ``model_dump(mode="json")``). Where
    batching is on for this worker's device, several jobs run side by side in threads that hand their tiles to one shared
    batching fitter, so their planes are fitted in the same batches, as in the local
    daemon; otherwise they run one after the other.

    Returns one plain dict per job, in order: its :class:`~.lifecycle.Outcome`
    (``Outcome.as_dict``) with ``worker`` (address) and ``host``. A file's error is its
    own: the other files of the task still finish.
    """
    from ..dip.batching import run_together
    from ..dip.device import choose_device, configure_tf32
    from ..pipeline.denoise import shared_fitter

    context = _TaskContext(this_worker(), progress_topic, task_key)
    settings = {key: DenoiseSettings.model_validate(payload) for key, payload in payloads.items()}
    first = settings[jobs[0]["settings"]]
    try:  # a process setting of the worker; every task of one daemon asks the same
        configure_tf32(first.tf32(choose_device(first.device)))
    except (ValueError, RuntimeError):
        pass  # no such device here: each job fails with the device error and says so
    shared = (shared_fitter(settings[jobs[0]["settings"]], linger) if len(jobs) > 1
              else None)
    return run_together(shared, [functools.partial(_run_job, job, settings[job["settings"]],
                                                   context) for job in jobs])


def _run_job(job: dict, denoise_settings, context: _TaskContext, fitter) -> dict:
    """One job of a task: its :class:`~.lifecycle.Outcome` as plain data, with the worker
    and host that ran it. Errors of the file come back as an outcome, not an exception."""
    from ..dip.device import choose_device, describe_device
    from ..io.atomic import remove_temporary_outputs
    from .lifecycle import Outcome, SourceWatch, output_is_current, run_job

    source, output = Path(job["input"]), Path(job["output"])
    where = {"worker": context.address, "host": context.host}
    if context.cancelled():
        return {**Outcome("cancelled", job["output"]).as_dict(), **where}
    try:
        if not source.exists():
            raise WorkerStorageError(
                f"{source} does not exist on worker {context.address or 'here'} (host "
                f"{context.host}): the microscope storage must be mounted under the same "
                f"path on every worker")
        hashes = [tuple(pair) for pair in job.get("hashes") or []]
        if hashes and output_is_current(output, source, hashes):
            # A rerun after the worker died between writing the output and reporting it.
            return {**Outcome("kept", job["output"]).as_dict(), **where}
        device = describe_device(choose_device(denoise_settings.device))
    except Exception as error:
        explained = isinstance(error, WorkerStorageError)  # its message says all
        return {**Outcome("error", job["output"],
                          error=str(error) if explained else f"{type(error).__name__}: {error}",
                          traceback=traceback.format_exc(limit=6)).as_dict(), **where}
    context.send({"job": job["job"], "event": "started", "device": device})
    remove_temporary_outputs(output)  # of an attempt on a worker that died
    watch = (SourceWatch([Path(path) for path in job.get("files") or [source]], job["sha256"])
             if job.get("sha256") else None)
    outcome = run_job(source, output, denoise_settings,
                      progress=_progress_events(job["job"], device, context, watch),
                      fitter=fitter, incomplete=job.get("incomplete"),
                      worker=context.address or None)
    outcome.device = outcome.device or device
    return {**outcome.as_dict(), **where}


def _progress_events(job_id: int, device: str, context: _TaskContext, source=None):
    """The pipeline's progress callback on a worker: cancellation (the task's, or the raw
    file changed: ``source``, a :class:`~.lifecycle.SourceWatch`), and progress events
    to the daemon at most every :data:`EVENT_SECONDS`."""
    from .lifecycle import JobCancelled
    from .progress import FitProgress

    last_sent = [0.0]
    measured = FitProgress()

    def progress(plane: int, planes: int, tile: int, tiles: int, iteration: int,
                 iterations: int) -> None:
        if context.cancelled():
            raise JobCancelled()
        if source is not None:
            source.check()
        now = time.monotonic()
        measured.update(plane, planes, tile, tiles, iteration, iterations, now)
        final = plane == planes and tile == tiles and iteration == iterations
        if now - last_sent[0] >= EVENT_SECONDS or final:
            last_sent[0] = now
            context.send({"job": job_id, "event": "progress", "device": device,
                          "plane": plane, "planes": planes, "tile": tile, "tiles": tiles,
                          "iteration": iteration, "iterations": iterations,
                          "fraction": measured.fraction, "rate": measured.rate()})

    return progress
