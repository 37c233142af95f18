"""One job's life, wherever it runs: the checks before it, the run, and how it ended.

Both executors (``executor.py``) go through here. Before a claimed job runs,
:func:`ready_to_run` settles what needs no fit (the raw file vanished or changed, the
output is already current, a foreign file sits at the output path). :func:`run_job`
runs the pipeline and turns every way it can end into an :class:`Outcome`, plain data
that also travels back from a Dask worker. :class:`JobOutcomes` records an outcome in the
queue, the log and the metrics: one place, so that a job done, failed, requeued or
quarantined reads the same whichever executor ran it.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from ..io.atomic import remove_temporary_outputs
from ..io.checksums import hash_files
from ..io.errors import ImageReadError
from ..io.outputs import OutputConflictError, check_output
from .inspection import file_version
from .queue import Job, JobQueue, RetryRule


class JobCancelled(BaseException):
    """Raised from the progress callback when the daemon stops (or a Dask task is
    cancelled).

    A BaseException so that ``except Exception`` in the pipeline cannot mistake a stop
    for a failure of the file.
    """


class InputChanged(JobCancelled):
    """Raised from the progress callback when the raw file (or a file of its set) changed
    content or vanished while its job ran (:class:`SourceWatch`): the output would be of
    a version that no longer exists, so the fit stops instead of running to its end."""


#: How often a running job looks at its raw files (a ``stat`` each; a hash only when
#: the size or times changed), in s.
SOURCE_CHECK_SECONDS = 1.0


class SourceWatch:
    """Notices, while a job runs, that its raw files are no longer the queued version.

    ``check()`` is called from the fit's progress callback; at most every ``every``
    seconds it compares the files' size and times with those at the start. Changed
    times alone (``touch``, a copy of the same bytes) cost one hash and the fit goes
    on; changed content, a file that vanished or cannot be read raise
    :class:`InputChanged`.

    Parameters
    ----------
    files : list of Path
        The raw file and the other files of its multi-file OME set.
    sha256 : str
        The SHA-256 of the files together, as queued (``io.checksums.hash_files``).
    every : float
        Seconds between looks.
    """

    def __init__(self, files: list[Path], sha256: str,
                 every: float = SOURCE_CHECK_SECONDS) -> None:
        self.files = list(files)
        self.sha256 = sha256
        self.every = every
        self.version = _version(self.files)
        self._next = time.monotonic() + every

    def check(self) -> None:
        """Raise :class:`InputChanged` if the files changed since the start (throttled)."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.every
        version = _version(self.files)
        if version == self.version:
            return
        if version is None:
            raise InputChanged("the raw file (or a file of its set) disappeared while it "
                               "was being denoised")
        try:
            digest, _ = hash_files(self.files)
        except OSError as error:
            raise InputChanged(f"the raw file could not be read while it was being "
                               f"denoised: {error}") from None
        if digest != self.sha256:
            raise InputChanged("the raw file changed while it was being denoised; the new "
                               "version is queued as its own job")
        self.version = version  # new times, same content: go on
        self._next = time.monotonic() + self.every


@dataclass
class Outcome:
    """How one run of a job ended.

    ``status`` is ``done`` (an output was written), ``kept`` (the output was already
    there, made from this content), ``cancelled`` (stopped; the job goes back to the
    queue), ``changed`` (stopped because the raw file changed or vanished while it ran:
    :class:`SourceWatch`), ``conflict`` (a file that is not ours holds the output path) or ``error``
    (the attempt failed). ``report`` is the pipeline's
    :meth:`~autodip_watch.pipeline.reports.FileReport.as_dict`; ``seconds`` the wall time
    of the run in s; ``error``/``traceback`` say what went wrong.
    """

    status: str
    output: str
    report: dict | None = None
    seconds: float = 0.0
    planes: int | None = None
    error: str | None = None
    traceback: str | None = None
    device: str = ""

    def as_dict(self) -> dict:
        """Plain data (a Dask task's result)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Outcome:
        names = {item.name for item in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})

    @property
    def missing(self) -> list[str]:
        """What the reader found missing in an incomplete input."""
        return list((self.report or {}).get("missing") or [])


def run_job(source: Path, output: Path, settings, *, progress=None, fitter=None,
            incomplete: str | None = None, worker: str | None = None) -> Outcome:
    """Denoise ``source`` into ``output`` and say how it ended; never raises for the file.

    Parameters
    ----------
    source, output : Path
        The raw file (the first file of its set) and where its output goes.
    settings : DenoiseSettings
        How to denoise it (``settings/denoise.py``).
    progress, fitter, incomplete, worker
        Passed on to :func:`~autodip_watch.pipeline.denoise.denoise_file`; ``progress``
        raises :class:`JobCancelled` to stop the fit.

    Returns
    -------
    Outcome
        ``done``, ``cancelled``, ``changed``, ``conflict`` or ``error``; temporary files of a run that
        did not finish are removed, and after an error the device's cached memory is
        freed for the next job.
    """
    from ..pipeline.denoise import PipelineError, denoise_file

    started = time.monotonic()
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        report = denoise_file(source, settings, out=output, progress=progress, fitter=fitter,
                              incomplete=incomplete, worker=worker)
    except OutputConflictError as error:  # never overwritten; retrying cannot help
        remove_temporary_outputs(output)
        return Outcome("conflict", str(output), error=str(error))
    except InputChanged as changed:
        remove_temporary_outputs(output)
        return Outcome("changed", str(output), seconds=time.monotonic() - started,
                       error=str(changed))
    except JobCancelled:
        remove_temporary_outputs(output)
        return Outcome("cancelled", str(output), seconds=time.monotonic() - started)
    except Exception as error:
        remove_temporary_outputs(output)
        from ..dip.device import free_device_memory

        free_device_memory()
        # The pipeline's and the reader's errors are written for the user (what, where,
        # why); any other exception's class name is part of the explanation.
        explained = isinstance(error, (PipelineError, ImageReadError))
        return Outcome("error", str(output), seconds=time.monotonic() - started,
                       error=str(error) if explained else f"{type(error).__name__}: {error}",
                       traceback=traceback.format_exc(limit=6))
    return Outcome("done", str(report.output), report.as_dict(), time.monotonic() - started,
                   len(report.planes), device=report.device)


class JobOutcomes:
    """Records how jobs ended: the queue's state, a log event, the metrics, a preview.

    Parameters
    ----------
    queue : JobQueue
        The job store.
    retry : RetryRule
        How often a job may fail (the configuration's ``[retry]``).
    metrics : Metrics or None
        The Prometheus exporter (``exporter.py``), when enabled.
    preview : bool
        Write a before/after PNG beside each output (``[output] preview``).
    """

    def __init__(self, queue: JobQueue, retry: RetryRule, metrics=None,
                 preview: bool = False) -> None:
        self.queue = queue
        self.retry = retry
        self.metrics = metrics
        self.preview = preview

    def record(self, job: Job, outcome: Outcome, bound, where: str | None = None,
               stopped: str = "daemon stopping", **fields) -> None:
        """Settle ``job`` from ``outcome``. ``where`` names the Dask worker that ran it
        (None: this process); ``stopped`` is why a cancelled run stopped; ``fields`` go
        into the ``job.done`` log event."""
        on = f" on {where}" if where else ""
        if outcome.status == "cancelled":
            self.requeue(job, bound, stopped + on, outcome.seconds)
        elif outcome.status == "changed":
            # skipped, with the queue's reason, if the change is still there; a file that
            # was changed and then put back runs again
            if _current_hashes(job, self.queue, bound, during_run=True) is not None:
                self.requeue(job, bound, f"{outcome.error}{on}", outcome.seconds)
        elif outcome.status == "conflict":
            self.quarantine(job, bound, outcome.error or "output path taken", outcome.output)
        elif outcome.status == "error":
            # A raw file rewritten or deleted during the run is a superseded version, not a
            # failure, whatever error it caused: skipped (the watcher queues the new one).
            if _current_hashes(job, self.queue, bound, during_run=True) is None:
                return
            self.fail(job, bound, f"{outcome.error}{f' (on {where})' if where else ''}",
                      outcome.traceback)
        elif outcome.status == "kept":
            self.kept(job, bound, Path(outcome.output),
                      f"output already present, made from this content; kept"
                      f"{f' ({where})' if where else ''}", **fields)
        else:
            self.done(job, bound, outcome, on, **fields)

    def done(self, job: Job, bound, outcome: Outcome, on: str = "", **fields) -> None:
        """An output was written: ``done``, or ``partial`` from an incomplete input."""
        missing = outcome.missing
        state = finished_state(job, missing)
        self.queue.finish(job.id, outcome.output, outcome.report, outcome.seconds,
                          outcome.planes, finished_message(job, missing) + on, state=state)
        if self.metrics is not None:
            self.metrics.jobs_done.inc()
            for plane in (outcome.report or {}).get("planes", []):
                self.metrics.plane_seconds.observe(float(plane.get("seconds", 0.0)))
        if state == "partial":
            bound.warning("job.partial", output=outcome.output,
                          seconds=round(outcome.seconds, 3), planes=outcome.planes,
                          missing=missing or job.missing_info(), **fields)
        else:
            bound.info("job.done", output=outcome.output, seconds=round(outcome.seconds, 3),
                       planes=outcome.planes, **fields)
        if self.preview:
            write_job_preview(Path(outcome.output), Path(job.path), bound)

    def kept(self, job: Job, bound, output: Path, message: str, **fields) -> None:
        """The output was already there, made from this content: never redone."""
        state = finished_state(job, [])
        self.queue.finish(job.id, str(output), None, 0.0, None, message, state=state)
        bound.info("job.done" if state == "done" else "job.partial", output=str(output),
                   note="output already present", **fields)

    def fail(self, job: Job, bound, message: str, trace: str | None = None) -> str:
        """A failed attempt: retried after a backoff, or quarantined after the last."""
        state = self.queue.fail(job.id, message, self.retry)
        if self.metrics is not None:
            self.metrics.jobs_failed.inc()
        # quarantined needs a person: err, so `journalctl -p err` lists it
        (bound.error if state == "quarantined" else bound.warning)(
            f"job.{state}", error=message, attempt=job.attempts,
            max_attempts=self.retry.max_attempts, traceback=trace)
        return state

    def requeue(self, job: Job, bound, reason: str, seconds: float) -> None:
        """Back to the queue without using an attempt (a stop, a lost scheduler)."""
        self.queue.release(job.id, f"{reason}; the job goes back to the queue")
        bound.info("job.requeued", reason=reason, seconds=round(seconds, 2))

    def quarantine(self, job: Job, bound, error: str, output: str) -> None:
        """A person must look (the output path holds a file that is not ours)."""
        self.queue.quarantine(job.id, error)
        # needs a person, like every quarantine: err, so `journalctl -p err` lists it
        bound.error("job.quarantined", error=error, output=output)


def ready_to_run(job: Job, output: Path, outcomes: JobOutcomes, bound) -> bool:
    """The checks before a claimed job runs, here or on a cluster; False when settled here.

    A raw file that vanished or whose content changed is skipped (a change of times only
    is recorded on the job); leftover temporary outputs are removed; an output that is
    current (its provenance records the SHA-256 of every source file as it is now) is
    kept and the job finished; a file at the output path that autodip-watch did not
    write for this raw file quarantines the job (it is never overwritten).
    """
    queue = outcomes.queue
    hashes = _current_hashes(job, queue, bound)
    if hashes is None:
        return False
    for leftover in remove_temporary_outputs(output):
        bound.info("job.temp_removed", temp=str(leftover))
    existing = check_output(output, Path(job.path), hashes)
    if existing.state == "foreign":
        outcomes.quarantine(job, bound, f"{existing.reason}; not overwritten with the output "
                            f"of {job.path}. Move it away, "
                            f"then `autodip-watch queue retry {job.id}`", str(output))
        return False
    if existing.state == "current":
        # E.g. killed between the rename and the database update: never redo, never
        # overwrite a finished output of this content.
        outcomes.kept(job, bound, output, "output already present, made from this content "
                      "(SHA-256 in its provenance); kept")
        return False
    return True


def _current_hashes(job: Job, queue: JobQueue, bound,
                    during_run: bool = False) -> list[tuple[str, str]] | None:
    """``(file name, sha256)`` of the job's files as they are now, or None when the job
    was skipped because they vanished or their content changed since it was queued
    (``during_run``: the job's run noticed it and stopped; the reasons say so)."""
    files = [Path(job.path), *(Path(p) for p in job.member_paths())]
    current = _version(files)
    when = "while it was being denoised" if during_run else "before it was processed"
    if current is None:
        queue.skip(job.id, f"the raw file (or a file of its set) disappeared {when}")
        bound.warning("job.skipped", reason="input vanished", during_run=during_run)
        return None
    hashes = [(item["file"], item["sha256"]) for item in job.source_list()]
    same_version = (current[:2] == (job.size, job.mtime_ns)
                    and job.ctime_ns in (None, current[2]))
    if same_version and hashes:
        return hashes
    # Times (or the size) differ from the queued version, or an older row has no
    # per-file hashes: the content decides.
    try:
        digest, sources = hash_files(files)
    except OSError:
        digest, sources = None, []
    if digest != job.sha256:
        changed = "changed while it was being denoised" if during_run else \
            "changed after it was queued"
        queue.skip(job.id, f"the raw file {changed}; the new version is queued as its own "
                           f"job")
        bound.warning("job.skipped", reason="input changed since queued",
                      during_run=during_run)
        return None
    if not same_version:
        queue.same_content(job.id, current[0], current[1], current[2],
                           "the file's times changed after it was queued, not its content")
    return [(item["file"], item["sha256"]) for item in sources]


def finished_state(job: Job, missing: list[str]) -> str:
    """``partial`` when the input was taken incomplete or the reader found planes or
    files missing; else ``done``."""
    return "partial" if (job.missing or missing) else "done"


def finished_message(job: Job, missing: list[str]) -> str:
    """The queue event of a finished job: ``done``, or what an incomplete input lacked."""
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


def _version(files: list[Path]) -> tuple[int, int, int] | None:
    try:
        return file_version(files)
    except OSError:
        return None
