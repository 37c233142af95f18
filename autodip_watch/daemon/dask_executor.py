"""The daemon's side of the Dask executor (``executor = "dask"``).

The daemon's SQLite queue stays the truth; Dask only runs what the daemon hands it. The
executor keeps up to ``max_in_flight`` tasks on the cluster, each needing
``resources={"GPU": 1}``. A task is the oldest runnable job, plus, where batching is on
for the workers' devices, up to ``jobs_together - 1`` queued jobs of its fit key. What
comes back settles each job in the queue. A task whose worker dies is rescheduled by
Dask on another worker; a task Dask gives up on (it killed several workers) counts as a
failed attempt of each of its jobs, like a crash of the local daemon does, and each is
retried alone; a task lost with the scheduler, or cancelled at shutdown, goes back to
the queue without using an attempt.

``status`` shows what the executor last saw of the cluster (:meth:`JobQueue.info`
``"cluster"``), so it still needs nothing but the database. Running a cluster:
``docs/cluster.md``.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..cluster import (GPU_RESOURCE, close_quietly, cluster_workers, connect,
                       is_connection_error, worker_device_type)
from ..settings.config import Config, WatchFolder
from .dask_tasks import denoise_task
from .lifecycle import JobOutcomes, Outcome, incomplete_note, ready_to_run
from .log import get_logger
from .queue import Job, JobQueue

log = get_logger("autodip_watch.daemon.dask_executor")


#: How often the dispatcher refreshes its view of the cluster for ``status``.
VIEW_SECONDS = 2.0
#: How often the dispatcher looks for finished tasks.
COLLECT_SECONDS = 0.25
#: Waiting for the result of a finished task (the worker holding it may just have died).
RESULT_TIMEOUT_SECONDS = 30.0


@dataclass
class _InFlight:
    """One job of a task on the cluster."""

    job: Job
    output: Path
    bound: object


@dataclass
class _Task:
    """One Dask task: the jobs of one fit key that run together on one GPU."""

    future: object
    members: list[_InFlight]
    submitted: float

    def member(self, job_id: int | None) -> _InFlight | None:
        return next((item for item in self.members if item.job.id == job_id), None)


class DaskDispatcher:
    """The daemon's side of the Dask executor: an :class:`~.executor.Executor` whose
    one thread hands jobs to the cluster and settles what comes back."""

    device = "dask"

    def __init__(self, config: Config, queue: JobQueue, table, stop: threading.Event,
                 wake: threading.Event, outcomes: JobOutcomes) -> None:
        self.config = config
        self.outcomes = outcomes
        self.scheduler = config.scheduler
        self.queue = queue
        self.table = table
        self.stop = stop
        self.wake = wake
        self.client = None
        self.in_flight: dict[str, _Task] = {}  # Dask key -> task
        self.worker_devices: dict[str, str] = {}  # worker address -> "cuda", "cpu", ...
        self._alone: set[int] = set()  # jobs whose group killed its worker: run alone
        self.connected = False
        self.error: str | None = None
        self.since = time.time()  # of the current connection state
        self.retry_at: float | None = None
        self.workers: list[dict] = []
        self.last_beat = time.monotonic()
        self._last_view = 0.0
        self._events: dict[tuple, dict] = {}
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
        return [item.job for task in list(self.in_flight.values()) for item in task.members]

    def limit(self) -> int:
        """Tasks in flight at once: max_in_flight, or the cluster's GPUs (at least 1)."""
        if self.config.max_in_flight:
            return self.config.max_in_flight
        return max(1, int(sum(worker["gpus"] for worker in self.workers)))

    def jobs_per_task(self) -> int:
        """Files of one fit key sent as one task, to be fitted in shared batches.

        ``batching.jobs_together`` where batching is on for the cluster's devices (with
        ``auto``: every worker seen has CUDA), else 1.
        """
        kinds = set(self.worker_devices.values())
        kind = "cuda" if kinds and kinds <= {"cuda"} else "cpu"
        return self.config.batching.jobs_for(kind)

    def summary(self) -> str:
        """One line for the heartbeat/sd_notify status."""
        if not self.connected:
            return f"Dask scheduler {self.scheduler} unreachable (retrying; files are queued)"
        busy = sum(1 for worker in self.workers if worker["state"] == "busy")
        return (f"dask {self.scheduler}: {len(self.workers)} worker(s), {busy} busy, "
                f"{len(self.jobs())} job(s) in flight")

    def view(self) -> dict:
        """What ``status`` shows of the cluster."""
        return {"executor": "dask", "scheduler": self.scheduler, "connected": self.connected,
                "since": self.since, "error": self.error, "retry_at": self.retry_at,
                "workers": self.workers if self.connected else [],
                "gpus": sum(worker["gpus"] for worker in self.workers) if self.connected else 0,
                "in_flight": len(self.jobs()), "tasks": len(self.in_flight),
                "max_in_flight": self.limit(), "jobs_per_task": self.jobs_per_task(),
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
                        delay = min(delay * 2, self.config.dask.reconnect_max_seconds)
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
                    if not is_connection_error(error) and self.client is not None \
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
            client = connect(self.scheduler, self.config.dask.connect_timeout_seconds,
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
                    in_flight=len(self.jobs()),
                    note="jobs in flight go back to the queue; reconnecting")
        self._release_all("lost the connection to the Dask scheduler")
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
        close_quietly(client)

    def _shutdown(self) -> None:
        """SIGTERM: cancel what is in flight on the cluster; those jobs go back to the queue."""
        if self.in_flight and self.client is not None:
            try:
                self.client.cancel([task.future for task in self.in_flight.values()],
                                   reason="autodip-watch daemon stopping")
            except Exception as error:
                log.warning("cluster.cancel_failed", error=str(error))
        self._release_all("daemon stopping; cancelled on the cluster")
        self._close_client()
        self.connected = False

    def _release_all(self, reason: str) -> None:
        for key, task in list(self.in_flight.items()):
            for item in task.members:
                try:
                    self.outcomes.requeue(item.job, item.bound, reason,
                                          time.monotonic() - task.submitted)
                except Exception:
                    log.exception("cluster.release_failed", job_id=item.job.id)
            self.in_flight.pop(key, None)

    # ---------------------------------------------------------------- view and events

    def _on_event(self, event) -> None:
        """Called on the client's event loop: keep it trivial, the loop thread applies it."""
        try:
            _, message = event
            key = (message.get("key"), message.get("job"))
        except (TypeError, ValueError, AttributeError):
            return
        if key[0] is not None:
            with self._events_lock:
                previous = self._events.get(key, {})
                self._events[key] = {**previous, **message}

    def _apply_events(self) -> None:
        with self._events_lock:
            events, self._events = self._events, {}
        for (key, job_id), message in events.items():
            task = self.in_flight.get(key)
            item = task.member(job_id) if task is not None else None
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
                                    message["iterations"], fraction=message.get("fraction"),
                                    rate=message.get("rate"))

    def _refresh_view(self) -> None:
        now = time.monotonic()
        if now - self._last_view < VIEW_SECONDS:
            return
        self._last_view = now
        ours = {key: [item.job.id for item in task.members]
                for key, task in self.in_flight.items()}
        self.workers = cluster_workers(self.client, ours)
        self._learn_devices()
        for worker in self.workers:
            worker["device"] = self.worker_devices.get(worker["address"])
        self._publish()

    def _learn_devices(self) -> None:
        """Ask workers not seen before which device they run jobs on."""
        addresses = {worker["address"] for worker in self.workers}
        for gone in set(self.worker_devices) - addresses:
            del self.worker_devices[gone]
        new = sorted(addresses - set(self.worker_devices))
        if not new:
            return
        answers = self.client.run(worker_device_type, workers=new, on_error="return")
        for address, kind in answers.items():
            if isinstance(kind, str):
                self.worker_devices[address] = kind
            else:  # asked once: its jobs will fail and say why
                self.worker_devices[address] = "unknown"
                log.warning("cluster.device_unknown", worker=address,
                            error=f"{type(kind).__name__}: {kind}",
                            note="is autodip-watch installed on the worker?")

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
            self._payloads[key] = settings.model_dump(mode="json")
        return self._payloads[key]

    def _submit(self) -> None:
        while len(self.in_flight) < self.limit() and not self.stop.is_set():
            members = self._claim_task()
            if members is None:
                return
            if not members:
                continue  # each claimed job was settled here (input gone, output current)
            first = members[0].job
            key = f"autodip-job-{first.id}-{first.attempts}-{uuid.uuid4().hex[:8]}"
            payloads: dict[str, dict] = {}
            jobs = []
            for item in members:
                folder = self.config.folder_for(Path(item.job.path))
                payload_key = str(folder.path) if folder is not None else ""
                payloads[payload_key] = self._payload(folder)
                jobs.append({"job": item.job.id, "input": item.job.path,
                             "output": str(item.output), "mtime_ns": item.job.mtime_ns,
                             "files": [item.job.path, *item.job.member_paths()],
                             "sha256": item.job.sha256,
                             "hashes": [(f["file"], f["sha256"])
                                        for f in item.job.source_list()],
                             "incomplete": incomplete_note(item.job),
                             "settings": payload_key})
            try:
                future = self.client.submit(
                    denoise_task, jobs, payloads, self.topic, key,
                    self.config.batching.linger_seconds, key=key, pure=False,
                    resources={GPU_RESOURCE: 1})
            except Exception:
                for item in members:
                    self.queue.release(item.job.id, "could not be submitted to the Dask "
                                                    "scheduler; the job goes back to the queue")
                raise
            for item in members:
                item.bound.info("job.submitted", attempt=item.job.attempts,
                                output=str(item.output), scheduler=self.scheduler, task=key,
                                jobs_in_task=len(members))
            self.in_flight[key] = _Task(future, members, time.monotonic())

    def _claim_task(self) -> list[_InFlight] | None:
        """The jobs of the next task, or None when nothing is runnable.

        The oldest runnable job first, so no group waits behind another for long; then,
        up to :meth:`jobs_per_task`, queued jobs of its fit key, whose planes can share
        batches on the GPU. A job whose group killed its worker runs alone.
        """
        size = self.jobs_per_task()
        members: list[_InFlight] = []
        first: Job | None = None
        while len(members) < size:
            if first is None:
                job = self.queue.claim(self.claim_name)
            elif first.fit_key and first.id not in self._alone:
                job = self.queue.claim(self.claim_name, prefer_key=first.fit_key,
                                       only_key=True)
            else:
                break
            if job is None:
                break
            first = first or job
            output = self.config.output_for(Path(job.path), self.config.folder_for(Path(job.path)))
            bound = log.bind(job_id=job.id, path=job.path, executor="dask")
            try:
                if ready_to_run(job, output, self.outcomes, bound):
                    members.append(_InFlight(job, output, bound))
            except Exception:
                for item in [*members, _InFlight(job, output, bound)]:
                    self.queue.release(item.job.id, "could not be prepared for the cluster; "
                                                    "the job goes back to the queue")
                raise
        return None if first is None else members

    def _collect(self) -> None:
        """Settle the tasks that ended; otherwise wait a moment (or until woken).

        Future states are pushed to the client by the scheduler, so looking at them is
        free; a short wait keeps both new files and finished tasks prompt.
        """
        done = [key for key, task in self.in_flight.items() if task.future.done()]
        if not done:
            self.wake.wait(COLLECT_SECONDS if self.in_flight else 1.0)
            self.wake.clear()
            return
        for key in done:
            task = self.in_flight.pop(key, None)
            if task is not None:
                self._settle(task)

    def _settle(self, task: _Task) -> None:
        from distributed import KilledWorker

        future = task.future
        if future.status == "cancelled":
            self._requeue(task, task.members, "the Dask scheduler cancelled the task "
                                              "(restarted, or the connection was lost)")
            return
        if future.status == "finished":
            try:
                results = future.result(timeout=RESULT_TIMEOUT_SECONDS)
            except Exception as error:
                self._requeue(task, task.members,
                              f"the result could not be fetched from the worker "
                              f"({type(error).__name__}: {error})")
                if self.client is None or self.client.status != "running":
                    raise
                return
            for item, result in zip(task.members, results):
                self._finished(task, item, result)
            return
        try:
            error = future.exception(timeout=RESULT_TIMEOUT_SECONDS)
        except Exception as fetch_error:  # cancelled meanwhile, or the scheduler went away
            self._requeue(task, task.members,
                          f"the task's outcome is unknown ({type(fetch_error).__name__})")
            return
        if isinstance(error, KilledWorker):
            # Dask retried the task on other workers and each of them died: the usual cause
            # is a file (out of memory on the GPU worker), so it uses an attempt. Which
            # file of a group it was is unknown: each is retried alone.
            message = (f"KilledWorker: the Dask worker(s) running this job died "
                       f"({error}); out of memory on the GPU server?")
            if len(task.members) > 1:
                message += (f" It ran together with job(s) "
                            f"{', '.join(str(item.job.id) for item in task.members)}; each "
                            f"is retried alone")
                self._alone.update(item.job.id for item in task.members)
        elif is_connection_error(error) or type(error).__name__ in ("CancelledError",
                                                                     "FutureCancelledError"):
            self._requeue(task, task.members, f"{type(error).__name__}: {error}")
            return
        else:  # denoise_task itself failed (a file's errors come back as results)
            message = f"{type(error).__name__}: {error}"
        trace = ("".join(traceback.format_tb(future.traceback(), limit=6))
                 if future.status == "error" else None)
        for item in task.members:
            self._failed(item, message, trace)

    def _failed(self, item: _InFlight, message: str, trace: str | None) -> None:
        self.outcomes.fail(item.job, item.bound, message, trace)

    def _requeue(self, task: _Task, items: list[_InFlight], reason: str) -> None:
        for item in items:
            self.outcomes.requeue(item.job, item.bound, reason,
                                  time.monotonic() - task.submitted)

    def _finished(self, task: _Task, item: _InFlight, result: dict) -> None:
        outcome = Outcome.from_dict(result)
        where = f"{result.get('worker')} on {result.get('host')}"
        if outcome.status == "done":
            self._alone.discard(item.job.id)
            self.queue.placed(item.job.id, f"{where} ({outcome.device})")
        elif outcome.status == "kept":
            self._alone.discard(item.job.id)
        fields = {"worker": result.get("worker"), "host": result.get("host")}
        if outcome.status == "done":
            fields.update(device=outcome.device, jobs_in_task=len(task.members))
        self.outcomes.record(item.job, outcome, item.bound, where=where,
                             stopped="the task stopped", **fields)
