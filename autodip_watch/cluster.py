"""Jobs on a Dask distributed cluster of GPU workers (``executor = "dask"``).

The daemon's SQLite queue stays the truth; Dask only runs what the daemon hands it:

- :class:`DaskDispatcher` (daemon side) claims up to ``max_in_flight`` jobs and
  submits each as one task needing ``resources={"GPU": 1}``. What comes back settles
  the job in the queue. A task whose worker dies is rescheduled by Dask on another
  worker; a task Dask gives up on (it killed several workers) counts as a failed
  attempt, like a crash of the local daemon does; a task lost with the scheduler, or
  cancelled at shutdown, goes back to the queue without using an attempt.
- :func:`denoise_task` (worker side) runs the same :func:`~autodip_watch.pipeline.denoise_file`
  as ``denoise`` and the local worker, reading the input and writing the output (to a
  temporary file, then renamed) on storage shared under the same paths on every
  machine. It reports where it runs and its progress as Dask worker events, and stops
  at the next fit iteration once its task is cancelled (SIGTERM of the daemon, or the
  daemon's client gone).
- :func:`calibration_executor` runs the (image, configuration) fits of ``calibrate``
  over the same cluster, one fit per task.

``status`` shows what the dispatcher last saw of the cluster (:meth:`JobQueue.info`
``"cluster"``), so it still needs nothing but the database.

Running a cluster: ``docs/cluster.md``.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .config import Config, WatchFolder
from .log import get_logger
from .queue import Job, JobQueue

log = get_logger("autodip_watch.cluster")

#: The worker resource a job needs: start workers with ``--resources GPU=1``.
GPU_RESOURCE = "GPU"
#: Progress events from a task, at most one per this many seconds.
EVENT_SECONDS = 1.0
#: How often the dispatcher refreshes its view of the cluster for ``status``.
VIEW_SECONDS = 2.0
#: How often the dispatcher looks for finished tasks.
COLLECT_SECONDS = 0.25
#: Waiting for the result of a finished task (the worker holding it may just have died).
RESULT_TIMEOUT_SECONDS = 30.0
_WORKER_STOPPING = ("closing", "closed", "failed", "stopping", "stopped")


class WorkerStorageError(RuntimeError):
    """The input is not visible on a worker: shared storage is missing or mounted elsewhere."""


# =========================================================================== worker side

def settings_payload(settings, inference: dict | None = None) -> dict:
    """A :class:`DenoiseSettings` as plain data for a task: scalars, table, inference rules.

    The calibration table travels as its parsed document, so workers need not have the
    daemon's table file (nearest-* transfer still reads the table's calibration images,
    which must then be under the same path on the workers).
    """
    payload = {}
    for item in dataclasses.fields(settings):
        value = getattr(settings, item.name)
        if isinstance(value, (str, int, float, bool, type(None))):
            payload[item.name] = value
    table = settings.table
    payload["table"] = {"document": table.document,
                        "path": str(table.path) if table.path is not None else None}
    payload["inference"] = dict(inference) if inference else None
    return payload


def settings_from_payload(payload: dict):
    """The :class:`DenoiseSettings` that :func:`settings_payload` described."""
    from .metadata import InferenceRules
    from .pipeline import DenoiseSettings
    from .transfer import CalibrationTable

    payload = dict(payload)
    table = payload.pop("table")
    inference = payload.pop("inference", None)
    names = {item.name for item in dataclasses.fields(DenoiseSettings)}
    settings = DenoiseSettings(
        **{key: value for key, value in payload.items() if key in names},
        table=CalibrationTable(table["document"],
                               Path(table["path"]) if table["path"] else None))
    if inference:
        settings.rules = InferenceRules.from_mapping(inference)
    return settings


def _this_worker():
    """The Dask worker running this task, or None outside one (a plain call)."""
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def _cancelled(worker, key: str | None) -> bool:
    """Whether this task should stop: cancelled, released, or its worker shutting down."""
    if worker is None or key is None:
        return False
    try:
        if getattr(worker.status, "name", "") in _WORKER_STOPPING:
            return True
        task = worker.state.tasks.get(key)
        return task is None or task.state not in ("executing", "long-running")
    except Exception:  # the worker's internals are not an API; never fail a fit on them
        return False


def denoise_task(input_path: str, output_path: str, settings: dict,
                 raw_mtime_ns: int | None = None, job_id: int | None = None,
                 progress_topic: str | None = None, task_key: str | None = None) -> dict:
    """One daemon job on a Dask worker: :func:`denoise_file` from shared storage to shared storage.

    Returns a plain dict: ``status`` (``done``; ``kept`` when a current output already
    exists; ``cancelled`` when stopped) with ``output``, ``report``, ``seconds``,
    ``planes``, ``worker`` (address), ``host`` and ``device``. Errors of the file raise,
    as they do locally; the temporary output is removed first.
    """
    from .dip.device import choose_device, describe_device
    from .pipeline import denoise_file
    from .worker import JobCancelled, output_is_current, remove_temporary_outputs

    worker = _this_worker()
    address = worker.address if worker is not None else ""
    host = socket.gethostname()
    source, output = Path(input_path), Path(output_path)
    if not source.exists():
        raise WorkerStorageError(
            f"{input_path} does not exist on worker {address or 'here'} (host {host}): the "
            f"microscope storage must be mounted under the same path on every worker")
    where = {"job": job_id, "key": task_key, "worker": address, "host": host}
    if raw_mtime_ns is not None and output_is_current(output, raw_mtime_ns):
        # A rerun after the worker died between writing the output and reporting it.
        return {"status": "kept", "output": output_path, "worker": address, "host": host,
                "device": ""}
    denoise_settings = settings_from_payload(settings)
    device = describe_device(choose_device(denoise_settings.device))
    where["device"] = device

    def send(message: dict) -> None:
        if worker is not None and progress_topic:
            try:
                worker.log_event(progress_topic, {**where, **message})
            except Exception:  # progress is a courtesy; the fit goes on without it
                pass

    send({"event": "started"})
    last_sent = [0.0]

    def progress(plane: int, planes: int, tile: int, tiles: int, iteration: int,
                 iterations: int) -> None:
        if _cancelled(worker, task_key):
            raise JobCancelled()
        now = time.monotonic()
        final = plane == planes and tile == tiles and iteration == iterations
        if now - last_sent[0] >= EVENT_SECONDS or final:
            last_sent[0] = now
            send({"event": "progress", "plane": plane, "planes": planes, "tile": tile,
                  "tiles": tiles, "iteration": iteration, "iterations": iterations})

    remove_temporary_outputs(output)  # of an attempt on a worker that died
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        report = denoise_file(source, denoise_settings, out=output, progress=progress,
                              worker=address or None)
    except JobCancelled:
        remove_temporary_outputs(output)
        return {"status": "cancelled", "output": output_path, "worker": address, "host": host,
                "device": device}
    except BaseException:
        remove_temporary_outputs(output)
        _free_device_memory()
        raise
    return {"status": "done", "output": str(report.output), "report": report.as_dict(),
            "seconds": report.seconds, "planes": len(report.planes), "worker": address,
            "host": host, "device": report.device}


def calibration_fit(task, device: str | None = None):
    """One calibration fit on a Dask worker (:func:`calibrate.run_fit_task`).

    The outcome's ``device`` names the worker, so the calibration state records where
    each fit ran.
    """
    from .calibrate import run_fit_task
    from .dip.device import choose_device, describe_device

    chosen = choose_device(device)
    outcome = run_fit_task(task, chosen)
    worker = _this_worker()
    where = f"{socket.gethostname()} {worker.address}" if worker is not None else socket.gethostname()
    outcome.device = f"{describe_device(chosen)} on {where}"
    return outcome


def dask_setup(worker) -> None:
    """``dask worker --preload autodip_watch.cluster``: import the engine once, at start.

    A worker whose environment lacks the package (or torch) then fails at start, in its
    own log, instead of failing every job sent to it.
    """
    from .dip.device import choose_device, describe_device

    device = describe_device(choose_device(None))
    print(f"autodip-watch worker {worker.name} on {socket.gethostname()}: device {device}",
          flush=True)


def _free_device_memory() -> None:
    from .dip.device import free_device_memory  # torch only where a job really ran

    free_device_memory()


# =========================================================================== client side

def connect(address: str, timeout: float = 10.0, name: str | None = None):
    """A synchronous Dask client of ``address``; ``OSError`` when it cannot be reached."""
    from distributed import Client

    try:
        return Client(address, timeout=timeout, set_as_default=False, name=name)
    except OSError:
        raise
    except Exception as error:  # e.g. a version mismatch reported by the handshake
        raise OSError(f"cannot connect to the Dask scheduler at {address}: "
                      f"{type(error).__name__}: {error}") from error


def cluster_workers(client, ours: dict[str, int] | None = None) -> list[dict]:
    """The scheduler's workers: address, host, name, GPUs, threads, busy or idle, our jobs."""
    info = client.scheduler_info(n_workers=-1)
    processing = client.processing()
    ours = ours or {}
    workers = []
    for address, worker in sorted(info.get("workers", {}).items()):
        keys = list(processing.get(address, ()))
        workers.append({
            "address": address, "host": worker.get("host"), "name": str(worker.get("name")),
            "gpus": float((worker.get("resources") or {}).get(GPU_RESOURCE, 0)),
            "threads": worker.get("nthreads"), "tasks": len(keys),
            "state": "busy" if keys else "idle",
            "jobs": sorted(ours[key] for key in keys if key in ours)})
    return workers


@dataclass
class _InFlight:
    job: Job
    future: object
    output: Path
    bound: object
    submitted: float


def _is_connection_error(error: BaseException) -> bool:
    from distributed.comm.core import CommClosedError

    return isinstance(error, (OSError, CommClosedError, TimeoutError))


class DaskDispatcher:
    """The daemon's side of the Dask executor; one thread, same life cycle as a Worker."""

    device = "dask"

    def __init__(self, config: Config, queue: JobQueue, table, stop: threading.Event,
                 wake: threading.Event, metrics=None) -> None:
        self.config = config
        self.settings = config.cluster
        self.scheduler = self.settings.scheduler
        self.queue = queue
        self.table = table
        self.stop = stop
        self.wake = wake
        self.metrics = metrics
        self.client = None
        self.in_flight: dict[str, _InFlight] = {}
        self.connected = False
        self.error: str | None = None
        self.since = time.time()  # of the current connection state
        self.retry_at: float | None = None
        self.workers: list[dict] = []
        self.last_beat = time.monotonic()
        self._last_view = 0.0
        self._events: dict[str, dict] = {}
        self._events_lock = threading.Lock()
        self._payloads: dict[str | None, dict] = {}
        # One topic per daemon run: events of an earlier run's tasks are not ours.
        self.topic = f"autodip-watch-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.claim_name = f"{self.scheduler} (waiting for a GPU worker)"
        self.thread = threading.Thread(target=self.run, name="dask-dispatcher", daemon=True)

    # ---------------------------------------------------------------- daemon interface

    def start(self) -> None:
        self.thread.start()

    def healthy(self) -> tuple[bool, str]:
        """Alive and looping. An unreachable scheduler is not unhealthy: a restart would
        not bring it back, and files are still queued meanwhile (status says so)."""
        if not self.thread.is_alive():
            return False, "the Dask dispatcher died"
        silent = time.monotonic() - self.last_beat
        if silent > self.config.daemon.stuck_seconds:
            return False, f"the Dask dispatcher has been blocked for {silent:.0f} s"
        return True, ""

    def jobs(self) -> list[Job]:
        return [item.job for item in list(self.in_flight.values())]

    def limit(self) -> int:
        """Jobs in flight at once: max_in_flight, or the cluster's GPUs (at least 1)."""
        if self.settings.max_in_flight:
            return self.settings.max_in_flight
        return max(1, int(sum(worker["gpus"] for worker in self.workers)))

    def summary(self) -> str:
        """One line for the heartbeat/sd_notify status."""
        if not self.connected:
            return f"Dask scheduler {self.scheduler} unreachable (retrying; files are queued)"
        busy = sum(1 for worker in self.workers if worker["state"] == "busy")
        return (f"dask {self.scheduler}: {len(self.workers)} worker(s), {busy} busy, "
                f"{len(self.in_flight)} job(s) in flight")

    def view(self) -> dict:
        """What ``status`` shows of the cluster."""
        return {"executor": "dask", "scheduler": self.scheduler, "connected": self.connected,
                "since": self.since, "error": self.error, "retry_at": self.retry_at,
                "workers": self.workers if self.connected else [],
                "gpus": sum(worker["gpus"] for worker in self.workers) if self.connected else 0,
                "in_flight": len(self.in_flight), "max_in_flight": self.limit(),
                "updated": time.time()}

    # ---------------------------------------------------------------- loop

    def run(self) -> None:
        delay = 1.0
        try:
            while not self.stop.is_set():
                self.last_beat = time.monotonic()
                if self.client is None:
                    if not self._connect(delay):
                        self.stop.wait(delay)
                        delay = min(delay * 2, self.settings.reconnect_max_seconds)
                        continue
                    delay = 1.0
                try:
                    if self.client.status != "running":
                        raise OSError(f"connection to the scheduler {self.scheduler} lost "
                                      f"(client {self.client.status})")
                    self._apply_events()
                    self._refresh_view()
                    self._submit()
                    self._collect()
                except Exception as error:
                    if not _is_connection_error(error) and self.client is not None \
                            and self.client.status == "running":
                        # A bug in our bookkeeping must not kill the dispatcher.
                        log.exception("cluster.error")
                        self.stop.wait(1.0)
                        continue
                    self._lost(error)
        finally:
            self._shutdown()

    def _connect(self, delay: float) -> bool:
        try:
            client = connect(self.scheduler, self.settings.connect_timeout_seconds,
                             name=f"autodip-watch {socket.gethostname()} pid {os.getpid()}")
            client.subscribe_topic(self.topic, self._on_event)
        except Exception as error:
            message = f"{type(error).__name__}: {error}"
            first = self.connected or self.error is None
            self.connected, self.error = False, message
            if first:
                self.since = time.time()
            self.retry_at = time.time() + delay
            (log.warning if first else log.info)(
                "cluster.unreachable", scheduler=self.scheduler, error=message,
                retry_in_seconds=delay,
                note="files are still watched and queued; jobs wait for the scheduler")
            self._publish()
            return False
        self.client = client
        self.connected, self.error, self.since, self.retry_at = True, None, time.time(), None
        self._last_view = 0.0
        self._refresh_view()
        log.info("cluster.connected", scheduler=self.scheduler, workers=len(self.workers),
                 gpus=sum(worker["gpus"] for worker in self.workers))
        return True

    def _lost(self, error: BaseException) -> None:
        """The scheduler is gone: jobs in flight go back to the queue, attempts kept."""
        message = f"{type(error).__name__}: {error}"
        log.warning("cluster.lost", scheduler=self.scheduler, error=message,
                    in_flight=len(self.in_flight),
                    note="jobs in flight go back to the queue; reconnecting")
        self._release_all("lost the connection to the Dask scheduler; the job goes back to "
                          "the queue")
        self._close_client()
        self.connected, self.error, self.since = False, message, time.time()
        self.retry_at = time.time() + 1.0
        self._publish()

    def _close_client(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        try:
            client.unsubscribe_topic(self.topic)
        except Exception:
            pass
        _close_quietly(client)

    def _shutdown(self) -> None:
        """SIGTERM: cancel what is in flight on the cluster; those jobs go back to the queue."""
        if self.in_flight and self.client is not None:
            try:
                self.client.cancel([item.future for item in self.in_flight.values()],
                                   reason="autodip-watch daemon stopping")
            except Exception as error:
                log.warning("cluster.cancel_failed", error=str(error))
        self._release_all("daemon stopping; cancelled on the cluster, the job goes back to "
                          "the queue")
        self._close_client()
        self.connected = False

    def _release_all(self, reason: str) -> None:
        for key, item in list(self.in_flight.items()):
            try:
                self.queue.release(item.job.id, reason)
                item.bound.info("job.requeued", reason=reason,
                                seconds=round(time.monotonic() - item.submitted, 2))
            except Exception:
                log.exception("cluster.release_failed", job_id=item.job.id)
            self.in_flight.pop(key, None)

    # ---------------------------------------------------------------- view and events

    def _on_event(self, event) -> None:
        """Called on the client's event loop: keep it trivial, the loop thread applies it."""
        try:
            _, message = event
            key = message.get("key")
        except (TypeError, ValueError, AttributeError):
            return
        if key is not None:
            with self._events_lock:
                previous = self._events.get(key, {})
                self._events[key] = {**previous, **message}

    def _apply_events(self) -> None:
        with self._events_lock:
            events, self._events = self._events, {}
        for key, message in events.items():
            item = self.in_flight.get(key)
            if item is None:
                continue
            where = f"{message.get('worker', '?')} on {message.get('host', '?')}"
            if message.get("device"):
                where += f" ({message['device']})"
            if self.queue.placed(item.job.id, where):
                item.bound.info("job.placed", worker=message.get("worker"),
                                host=message.get("host"), device=message.get("device"))
            if message.get("iteration") is not None:
                self.queue.progress(item.job.id, message["plane"], message["planes"],
                                    message["tile"], message["tiles"], message["iteration"],
                                    message["iterations"])

    def _refresh_view(self) -> None:
        now = time.monotonic()
        if now - self._last_view < VIEW_SECONDS:
            return
        self._last_view = now
        ours = {key: item.job.id for key, item in self.in_flight.items()}
        self.workers = cluster_workers(self.client, ours)
        self._publish()

    def _publish(self) -> None:
        try:
            self.queue.set_info("cluster", self.view())
        except Exception:
            log.exception("cluster.publish_failed")

    # ---------------------------------------------------------------- jobs

    def _payload(self, folder: WatchFolder | None) -> dict:
        key = str(folder.path) if folder is not None else None
        if key not in self._payloads:
            settings = self.config.denoise_settings(folder, "auto", self.table)
            self._payloads[key] = settings_payload(settings, self.config.inference)
        return self._payloads[key]

    def _submit(self) -> None:
        from .worker import ready_to_run

        while len(self.in_flight) < self.limit() and not self.stop.is_set():
            job = self.queue.claim(self.claim_name)
            if job is None:
                return
            path = Path(job.path)
            folder = self.config.folder_for(path)
            output = self.config.output_for(path, folder)
            bound = log.bind(job_id=job.id, path=job.path, executor="dask")
            bound.info("job.submitted", attempt=job.attempts, output=str(output),
                       scheduler=self.scheduler)
            try:
                if not ready_to_run(job, output, self.queue, bound):
                    continue
                key = f"autodip-job-{job.id}-{job.attempts}-{uuid.uuid4().hex[:8]}"
                future = self.client.submit(
                    denoise_task, str(path), str(output), self._payload(folder), job.mtime_ns,
                    job.id, self.topic, key, key=key, pure=False,
                    resources={GPU_RESOURCE: 1})
            except Exception:
                self.queue.release(job.id, "could not be submitted to the Dask scheduler; the "
                                           "job goes back to the queue")
                raise
            self.in_flight[key] = _InFlight(job, future, output, bound, time.monotonic())

    def _collect(self) -> None:
        """Settle the tasks that ended; otherwise wait a moment (or until woken).

        Future states are pushed to the client by the scheduler, so looking at them is
        free; a short wait keeps both new files and finished tasks prompt.
        """
        done = [key for key, item in self.in_flight.items() if item.future.done()]
        if not done:
            self.wake.wait(COLLECT_SECONDS if self.in_flight else 1.0)
            self.wake.clear()
            return
        for key in done:
            item = self.in_flight.pop(key, None)
            if item is not None:
                self._settle(item)

    def _settle(self, item: _InFlight) -> None:
        from distributed import KilledWorker

        job, future, bound = item.job, item.future, item.bound
        if future.status == "cancelled":
            self._requeue(item, "the Dask scheduler cancelled the task (restarted, or the "
                                "connection was lost)")
            return
        if future.status == "finished":
            try:
                result = future.result(timeout=RESULT_TIMEOUT_SECONDS)
            except Exception as error:
                self._requeue(item, f"the result could not be fetched from the worker "
                                    f"({type(error).__name__}: {error})")
                if self.client is None or self.client.status != "running":
                    raise
                return
            self._finished(item, result)
            return
        try:
            error = future.exception(timeout=RESULT_TIMEOUT_SECONDS)
        except Exception as fetch_error:  # cancelled meanwhile, or the scheduler went away
            self._requeue(item, f"the task's outcome is unknown ({type(fetch_error).__name__}); "
                                f"the job goes back to the queue")
            return
        if isinstance(error, KilledWorker):
            # Dask retried the task on other workers and each of them died: the usual cause
            # is the file (out of memory on the GPU worker), so it uses an attempt.
            message = (f"KilledWorker: the Dask worker(s) running this job died "
                       f"({error}); out of memory on the GPU server?")
        elif _is_connection_error(error) or type(error).__name__ in ("CancelledError",
                                                                     "FutureCancelledError"):
            self._requeue(item, f"{type(error).__name__}: {error}")
            return
        else:
            message = f"{type(error).__name__}: {error}"
        state = self.queue.fail(job.id, message, self.config.retry)
        if self.metrics is not None:
            self.metrics.jobs_failed.inc()
        bound.warning(f"job.{state}", error=message, attempt=job.attempts,
                      max_attempts=self.config.retry.max_attempts,
                      traceback="".join(traceback.format_tb(future.traceback(), limit=6))
                      if future.status == "error" else None)

    def _requeue(self, item: _InFlight, reason: str) -> None:
        self.queue.release(item.job.id, f"{reason}; the job goes back to the queue")
        item.bound.info("job.requeued", reason=reason,
                        seconds=round(time.monotonic() - item.submitted, 2))

    def _finished(self, item: _InFlight, result: dict) -> None:
        job, bound = item.job, item.bound
        status = result.get("status")
        where = f"{result.get('worker')} on {result.get('host')}"
        if status == "cancelled":
            self._requeue(item, f"the task stopped on {where}")
            return
        if status == "kept":
            self.queue.finish(job.id, result["output"], None, 0.0, None,
                              f"output already present and newer than the raw file; kept "
                              f"({where})")
            bound.info("job.done", output=result["output"], note="output already present",
                       worker=result.get("worker"), host=result.get("host"))
            return
        self.queue.placed(job.id, f"{where} ({result.get('device')})")
        self.queue.finish(job.id, result["output"], result.get("report"),
                          float(result.get("seconds") or 0.0), result.get("planes"),
                          f"done on {where}")
        if self.metrics is not None:
            self.metrics.jobs_done.inc()
            for plane in (result.get("report") or {}).get("planes", []):
                self.metrics.plane_seconds.observe(float(plane.get("seconds", 0.0)))
        bound.info("job.done", output=result["output"], seconds=result.get("seconds"),
                   planes=result.get("planes"), worker=result.get("worker"),
                   host=result.get("host"), device=result.get("device"))


# =========================================================================== calibrate

def calibration_executor(address: str, device: str | None = None, max_in_flight: int = 0,
                         connect_timeout: float = 10.0):
    """A ``calibrate`` executor that runs each (image, configuration) fit as one Dask task.

    Yields ``(task, outcome)`` as fits finish, so the caller records each at once and a
    stopped run resumes. At most ``max_in_flight`` fits are submitted at a time (default
    twice the cluster's GPUs), which keeps the images of pending fits off the scheduler.
    """
    from .calibrate import CalibrationError, FitOutcome, FitTask

    def execute(tasks: Sequence[FitTask], progress=None) -> Iterator[tuple[FitTask, FitOutcome]]:
        from distributed import KilledWorker, as_completed

        if not tasks:
            return
        try:
            client = connect(address, connect_timeout,
                             name=f"autodip-watch calibrate {socket.gethostname()}")
        except OSError as error:
            raise CalibrationError(f"--scheduler: {error}") from None
        pending = list(tasks)[::-1]
        submitted: dict[str, tuple[FitTask, object]] = {}
        finished = 0
        try:
            gpus = sum(worker["gpus"] for worker in cluster_workers(client))
            limit = max_in_flight or max(2, int(2 * gpus))
            stream = as_completed(loop=client.loop)  # not the default client: there is none

            def submit_next() -> None:
                if pending:
                    task = pending.pop()
                    key = f"autodip-fit-{task.pair.key[:12]}-{task.point.key}-{uuid.uuid4().hex[:8]}"
                    future = client.submit(calibration_fit, task, device, key=key, pure=False,
                                           resources={GPU_RESOURCE: 1})
                    submitted[future.key] = (task, future)
                    stream.add(future)

            for _ in range(limit):
                submit_next()
            for future in stream:
                task, _ = submitted.pop(future.key)
                try:
                    outcome = future.result()
                except KilledWorker as error:
                    raise CalibrationError(
                        f"a fit ({task.pair.name}, {task.point.key}) killed the Dask workers "
                        f"that ran it ({error}); out of memory? {finished} fit(s) of this run "
                        f"are saved; run the command again to continue") from None
                except Exception as error:
                    if _is_connection_error(error) or "Cancelled" in type(error).__name__:
                        raise CalibrationError(
                            f"lost the Dask scheduler at {address} ({type(error).__name__}: "
                            f"{error}); {finished} fit(s) of this run are saved; run the same "
                            f"command again to continue") from None
                    raise
                submit_next()
                finished += 1
                yield task, outcome
        finally:
            try:
                if submitted:  # stopped early (an error, or the caller stopped reading)
                    client.cancel([future for _, future in submitted.values()])
            except Exception:
                pass
            _close_quietly(client)

    execute.description = f"Dask cluster {address}"
    return execute


def _close_quietly(client) -> None:
    """Close a Dask client on the way out; a scheduler already gone must not turn a
    shutdown into an error."""
    try:
        client.close(timeout=5)
    except Exception:
        pass
