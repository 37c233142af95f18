"""Run queued jobs on one device through the same pipeline as ``denoise``.

Without batching a worker runs one job at a time. Where batching is on (CUDA by
default) it runs up to ``batching.jobs_together`` jobs side by side, each in its own
thread, all handing their tiles to one shared batching fitter, so that planes of the
same configuration from different files are fitted together (``dip/batching.py``).

A stop request (SIGTERM) is honoured inside the fit: the progress callback raises
:class:`JobCancelled` at the next iteration, the job goes back to the queue without
using up an attempt, and any temporary output file is removed. The pipeline writes
outputs to a hidden temporary file and renames it, so a half-written output is never
visible under its real name, even after ``kill -9``.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from pathlib import Path

from ..settings.config import Config
from .log import Condition, get_logger
from ..io.outputs import OutputConflictError, check_output
from ..io.atomic import remove_temporary_outputs
from ..io.checksums import hash_files
from .queue import Job, JobQueue

log = get_logger("autodip_watch.worker")

#: At most one progress row write per this many seconds (SQLite is not a progress bar).
PROGRESS_WRITE_SECONDS = 1.0


class JobCancelled(BaseException):
    """Raised from the progress callback when the daemon stops.

    A BaseException so that ``except Exception`` in the pipeline cannot mistake a stop
    for a failure of the file.
    """


class Worker:
    """One device's job loop; runs in its own thread (plus one per job when batching)."""

    def __init__(self, config: Config, queue: JobQueue, device: str, table,
                 stop: threading.Event, wake: threading.Event, metrics=None) -> None:
        self.config = config
        self.queue = queue
        # The resolved device ("cpu", "cuda:0"), so that status, logs and the queue's
        # worker column name the same device as the daemon line (never "auto").
        self.device = _resolved(device)
        self.table = table
        self.stop = stop
        self.wake = wake
        self.metrics = metrics
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
        from ..pipeline.denoise import denoise_file

        path = Path(job.path)
        folder = self.config.folder_for(path)
        output = self.config.output_for(path, folder)
        bound = log.bind(job_id=job.id, path=job.path, device=self.device)
        bound.info("job.started", attempt=job.attempts, output=str(output),
                   incomplete=bool(job.missing))
        if not ready_to_run(job, output, self.queue, bound):
            return
        settings = self.config.denoise_settings(folder, self.device, self.table)
        started = time.monotonic()
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            report = denoise_file(path, settings, out=output, progress=self._progress_for(job),
                                  fitter=fitter, incomplete=incomplete_note(job))
        except OutputConflictError as error:  # never overwritten; retrying cannot help
            remove_temporary_outputs(output)
            self.queue.quarantine(job.id, str(error))
            bound.warning("job.quarantined", error=str(error), output=str(output))
            return
        except JobCancelled:
            remove_temporary_outputs(output)
            self.queue.release(job.id, "daemon stopping; the job goes back to the queue")
            bound.info("job.requeued", reason="daemon stopping",
                       seconds=round(time.monotonic() - started, 2))
            return
        except Exception as error:
            remove_temporary_outputs(output)
            _free_device_memory()
            message = f"{type(error).__name__}: {error}"
            state = self.queue.fail(job.id, message, self.config.retry)
            if self.metrics is not None:
                self.metrics.jobs_failed.inc()
            # quarantined needs a person: err, so `journalctl -p err` lists it
            (bound.error if state == "quarantined" else bound.warning)(
                f"job.{state}", error=message, attempt=job.attempts,
                max_attempts=self.config.retry.max_attempts,
                traceback=traceback.format_exc(limit=6))
            return
        seconds = time.monotonic() - started
        planes = getattr(report, "planes", []) or []
        missing = list(getattr(report, "missing", []) or [])
        state = finished_state(job, missing)
        self.queue.finish(job.id, str(report.output), _report_dict(report), seconds, len(planes),
                          finished_message(job, missing), state=state)
        if self.metrics is not None:
            self.metrics.jobs_done.inc()
            for plane in planes:
                self.metrics.plane_seconds.observe(float(getattr(plane, "seconds", 0.0)))
        if state == "partial":
            bound.warning("job.partial", output=str(report.output), seconds=round(seconds, 3),
                          planes=len(planes), missing=missing or job.missing_info())
        else:
            bound.info("job.done", output=str(report.output), seconds=round(seconds, 3),
                       planes=len(planes))
        if self.config.output.preview:
            write_job_preview(Path(report.output), path, bound)

    def _progress_for(self, job: Job):
        """The pipeline's progress callback: heartbeat, cancellation, throttled DB writes
        of where the fit is and its rate since the first iteration (for ``status``)."""
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


def write_job_preview(output: Path, raw: Path, bound) -> Path | None:
    """``[output] preview``: the small before/after PNG beside ``output`` (preview.py).

    A preview is a courtesy: when it fails (matplotlib missing, disk full) the job stays
    done and the reason is logged as a warning.
    """
    try:
        from ..preview import write_preview

        written = write_preview(output, raw=raw)
    except Exception as error:
        bound.warning("job.preview_failed", output=str(output),
                      error=f"{type(error).__name__}: {error}")
        return None
    bound.info("job.preview", preview=str(written))
    return written


def ready_to_run(job: Job, output: Path, queue: JobQueue, bound) -> bool:
    """The checks before a claimed job runs, here or on a cluster; False when settled here.

    A raw file that vanished or whose content changed is skipped (a change of times only
    is recorded on the job); leftover temporary outputs are removed; an output that is
    current (its provenance records the SHA-256 of every source file as it is now) is
    kept and the job finished; a file at the output path that autodip-watch did not
    write for this raw file quarantines the job (it is never overwritten).
    """
    files = [Path(job.path), *(Path(p) for p in job.member_paths())]
    current = _version(files)
    if current is None:
        queue.skip(job.id, "the raw file (or a file of its set) disappeared before it "
                           "was processed")
        bound.warning("job.skipped", reason="input vanished")
        return False
    hashes = [(item["file"], item["sha256"]) for item in job.source_list()]
    same_version = (current[:2] == (job.size, job.mtime_ns)
                    and job.ctime_ns in (None, current[2]))
    if not same_version or not hashes:
        # Times (or the size) differ from the queued version, or an older row has no
        # per-file hashes: the content decides.
        try:
            digest, sources = hash_files(files)
        except OSError:
            digest, sources = None, []
        if digest != job.sha256:
            queue.skip(job.id, "the raw file changed after it was queued; the new version "
                               "is queued as its own job")
            bound.warning("job.skipped", reason="input changed since queued")
            return False
        if not same_version:
            queue.same_content(job.id, current[0], current[1], current[2],
                               "the file's times changed after it was queued, not its content")
        hashes = [(item["file"], item["sha256"]) for item in sources]
    for leftover in remove_temporary_outputs(output):
        bound.info("job.temp_removed", temp=str(leftover))
    existing = check_output(output, Path(job.path), hashes)
    if existing.state == "foreign":
        error = (f"{existing.reason}; not overwritten. Move it away, then "
                 f"`autodip-watch queue retry {job.id}`")
        queue.quarantine(job.id, error)
        bound.warning("job.quarantined", error=error, output=str(output))
        return False
    if existing.state == "current":
        # E.g. killed between the rename and the database update: never redo, never
        # overwrite a finished output of this content.
        state = finished_state(job, [])
        queue.finish(job.id, str(output), None, 0.0, None,
                     "output already present, made from this content (SHA-256 in its "
                     "provenance); kept", state=state)
        bound.info("job.done" if state == "done" else "job.partial", output=str(output),
                   note="output already present")
        return False
    return True


def finished_state(job: Job, missing: list[str]) -> str:
    """``partial`` when the input was taken incomplete or the reader found planes or
    files missing; else ``done``."""
    return "partial" if (job.missing or missing) else "done"


def finished_message(job: Job, missing: list[str]) -> str:
    if not (job.missing or missing):
        return "done"
    said = "; ".join(missing) or incomplete_note(job) or ""
    return f"done from an incomplete input: {said}"


def incomplete_note(job: Job) -> str | None:
    """What the watcher found missing when it took the file as it was, or None."""
    info = job.missing_info()
    if info is None:
        return None
    return info.get("reason") or "incomplete"


def output_is_current(output: Path, source: Path, hashes: list[tuple[str, str]]) -> bool:
    """Whether ``output`` was made by autodip-watch from ``source`` with exactly these
    ``(file name, sha256)`` source files (its provenance says so); never by times."""
    return check_output(output, source, hashes).state == "current"


def _version(files: list[Path]) -> tuple[int, int, int] | None:
    try:
        infos = [path.stat() for path in files]
    except OSError:
        return None
    return (sum(i.st_size for i in infos), max(i.st_mtime_ns for i in infos),
            max(i.st_ctime_ns for i in infos))


def _report_dict(report) -> dict | None:
    as_dict = getattr(report, "as_dict", None)
    try:
        return as_dict() if as_dict is not None else None
    except Exception:  # the report format belongs to the pipeline; never fail a job on it
        return None


def _resolved(device: str) -> str:
    """``auto``/``cuda`` -> the device it means here; a missing device stays as named (its
    first job fails with the device error and says so)."""
    from ..dip.device import choose_device, device_name

    try:
        return device_name(choose_device(None if device == "auto" else device))
    except (ValueError, RuntimeError):
        return device


def _free_device_memory() -> None:
    from ..dip.device import free_device_memory

    free_device_memory()
