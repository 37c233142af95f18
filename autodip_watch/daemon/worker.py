"""Run queued jobs on one device through the same pipeline as ``denoise``.

Without batching a worker runs one job at a time. Where batching is on (CUDA by
default) it runs up to ``batching.jobs_together`` jobs side by side, each in its own
thread, all handing their tiles to one shared batching fitter, so that planes of the
same configuration from different files are fitted together (``dip/batching.py``).

A stop request (SIGTERM) is honoured inside the fit: the progress callback raises
:class:`JobCancelled` at the next iteration, the job goes back to the queue without
using up an attempt, and any temporary output file is removed. A raw file that changes
or vanishes while its job runs stops the fit the same way (``lifecycle.SourceWatch``):
the job is skipped and the new version, queued by the watcher, runs instead. The pipeline writes
outputs to a hidden temporary file and renames it, so a half-written output is never
visible under its real name, even after ``kill -9``.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from ..settings.config import Config
from .lifecycle import (JobCancelled, JobOutcomes, SourceWatch, incomplete_note,
                        ready_to_run, run_job)
from .log import Condition, get_logger
from .queue import Job, JobQueue

log = get_logger("autodip_watch.worker")

#: At most one progress row write per this many seconds (SQLite is not a progress bar).
PROGRESS_WRITE_SECONDS = 1.0


class Worker:
    """One device's job loop (an :class:`~.executor.Executor`); runs in its own thread
    (plus one per job when batching)."""

    def __init__(self, config: Config, queue: JobQueue, device: str, table,
                 stop: threading.Event, wake: threading.Event, outcomes: JobOutcomes) -> None:
        self.config = config
        self.queue = queue
        self.outcomes = outcomes
        # The resolved device ("cpu", "cuda:0"), so that status, logs and the queue's
        # worker column name the same device as the daemon line (never "auto").
        self.device = _resolved(device)
        self.table = table
        self.stop = stop
        self.wake = wake
        self.name = f"{self.device}@{os.getpid()}"
        self.running: dict[int, Job] = {}  # job id -> job, while it runs
        self.last_beat = time.monotonic()
        self.thread = threading.Thread(target=self.run, name=f"worker-{self.device}", daemon=True)
        self._jobs_lock = threading.Lock()
        self._shared = None  # the SharedFitter of jobs run together
        self._claims = Condition(log, "worker.claim_failed", "worker.claim_recovered",
                                 device=device)
        self._progress_writes = Condition(log, "worker.progress_not_saved",
                                          "worker.progress_saved", device=device)

    # ---------------------------------------------------------------- loop

    def jobs(self) -> list[Job]:
        with self._jobs_lock:
            return list(self.running.values())

    def start(self) -> None:
        self.thread.start()

    def healthy(self) -> tuple[bool, str]:
        if not self.thread.is_alive():
            return False, f"worker {self.device} died"
        silent = time.monotonic() - self.last_beat
        if silent > self.config.daemon.stuck_seconds:
            return False, f"worker {self.device} has made no progress for {silent:.0f} s"
        return True, ""

    def run(self) -> None:
        slots = self._slots()
        threads: list[threading.Thread] = []
        while not self.stop.is_set():
            threads = [thread for thread in threads if thread.is_alive()]
            if len(threads) >= slots:
                self.stop.wait(0.2)  # the running jobs' progress keeps the heartbeat
                continue
            if not threads:
                self.last_beat = time.monotonic()
            claimed = self._claim(slots - len(threads))
            if not claimed:
                self.wake.wait(1.0)  # queue retry/forget from the CLI is seen within a second
                self.wake.clear()
                continue
            if slots == 1:
                self._guarded(claimed[0], None)
                continue
            # Every claimed job is a member of the shared fitter before any starts, so
            # the first to submit waits for the others' planes instead of running alone.
            for job in claimed:
                thread = threading.Thread(target=self._slot, args=(job, self._shared.enter()),
                                          daemon=True, name=f"slot-job-{job.id}")
                thread.start()
                threads.append(thread)
        for thread in threads:  # each aborts at its next iteration (JobCancelled)
            thread.join()

    def _claim(self, count: int) -> list[Job]:
        """Up to ``count`` queued jobs (fewer when the queue has fewer).

        The first is the oldest runnable job, so no group waits behind another for
        long; the others preferably share its fit key (configurations and plane
        sizes), so that their planes can be fitted in the same batches.
        """
        claimed: list[Job] = []
        while len(claimed) < count:
            prefer = next((job.fit_key for job in claimed if job.fit_key), None)
            try:
                job = self.queue.claim(self.name, prefer_key=prefer)
                self._claims.clear()
            except Exception as error:  # e.g. the database cannot be written: once, not per try
                self._claims.report(error)
                self.stop.wait(5)
                break
            if job is None:
                break
            claimed.append(job)
        return claimed

    def _slots(self) -> int:
        """How many jobs run side by side; creates the shared fitter when more than one."""
        from ..dip.device import choose_device

        settings = self.config.batching
        try:
            device = choose_device(None if self.device == "auto" else self.device)
        except ValueError:
            return 1  # the first job fails with the device error and says so
        slots = settings.jobs_for(device.type)
        if slots > 1:
            from ..dip.batching import make_shared_fitter

            self._shared = make_shared_fitter(device, settings.mode, settings.max_batch,
                                              settings.memory_budget_bytes,
                                              settings.linger_seconds)
            if self._shared is None:
                return 1
            log.info("worker.batching", device=self.device, jobs_together=slots,
                     max_batch=settings.max_batch,
                     memory_budget_mb=settings.memory_budget_mb or "80% of free")
        return slots

    def _slot(self, job: Job, member) -> None:
        """Run ``job`` as a member of the shared fitter, then the oldest queued job, and so
        on while there is one.

        The next job is claimed and joins the fitter before the finished one leaves it:
        had the finished job left first, a job sharing batches with it could find itself
        the only member waiting and be fitted alone, before the worker's loop claimed a
        partner for it.
        """
        while True:
            self._guarded(job, member)
            following = None if self.stop.is_set() else next(iter(self._claim(1)), None)
            successor = self._shared.enter() if following is not None else None
            self._shared.leave()
            if following is None:
                return
            job, member = following, successor

    def _guarded(self, job: Job, fitter) -> None:
        """Run ``job``; ``fitter`` is the shared fitter's membership it runs under, if any."""
        with self._jobs_lock:
            self.running[job.id] = job
        try:
            self.process(job, fitter)
        except Exception:
            # A bug in our bookkeeping must not kill the worker; record and go on.
            log.exception("worker.error", job_id=job.id, path=job.path)
        finally:
            with self._jobs_lock:
                self.running.pop(job.id, None)

    # ---------------------------------------------------------------- one job

    def process(self, job: Job, fitter=None) -> None:
        """Run one claimed job; ``fitter`` is the shared batching fitter, if any."""
        path = Path(job.path)
        folder = self.config.folder_for(path)
        output = self.config.output_for(path, folder)
        bound = log.bind(job_id=job.id, path=job.path, device=self.device)
        bound.info("job.started", attempt=job.attempts, output=str(output),
                   incomplete=bool(job.missing))
        if not ready_to_run(job, output, self.outcomes, bound):
            return
        settings = self.config.denoise_settings(folder, self.device, self.table)
        source = SourceWatch([path, *map(Path, job.member_paths())], job.sha256)
        outcome = run_job(path, output, settings, progress=self._progress_for(job, source),
                          fitter=fitter, incomplete=incomplete_note(job))
        self.outcomes.record(job, outcome, bound)

    def summary(self) -> str:
        """The files this device runs now, for the heartbeat's status line."""
        return "; ".join(f"{self.device}: {Path(job.path).name}" for job in self.jobs())

    def _progress_for(self, job: Job, source: SourceWatch | None = None):
        """The pipeline's progress callback: heartbeat, cancellation (a stop, or the raw
        file changed: ``source``), throttled DB writes of where the fit is and its rate
        since the first iteration (for ``status``)."""
        from .progress import FitProgress

        last_write = 0.0
        measured = FitProgress()

        def progress(plane: int, planes: int, tile: int, tiles: int, iteration: int,
                     iterations: int) -> None:
            nonlocal last_write
            now = time.monotonic()
            self.last_beat = now
            if self.stop.is_set():
                raise JobCancelled()
            if source is not None:
                source.check()
            measured.update(plane, planes, tile, tiles, iteration, iterations, now)
            last = plane == planes and tile == tiles and iteration == iterations
            if now - last_write >= PROGRESS_WRITE_SECONDS or last:
                last_write = now
                try:  # progress is for status only: a database hiccup must not fail the fit
                    self.queue.progress(job.id, plane, planes, tile, tiles, iteration,
                                        iterations, fraction=measured.fraction,
                                        rate=measured.rate())
                    self._progress_writes.clear()
                except Exception as error:
                    self._progress_writes.report(error)

        return progress


def _resolved(device: str) -> str:
    """``auto``/``cuda`` -> the device it means here; a missing device stays as named (its
    first job fails with the device error and says so)."""
    from ..dip.device import choose_device, device_name

    try:
        return device_name(choose_device(None if device == "auto" else device))
    except (ValueError, RuntimeError):
        return device
