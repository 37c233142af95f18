"""The daemon: wires watcher -> queue -> workers, and talks to systemd.

The main thread only supervises: it handles signals, writes the heartbeat row that
``status`` reads, and sends sd_notify READY/STATUS/WATCHDOG. Watchdog pings go out
only while every part is healthy (observers alive, database writable, no worker
stuck), so systemd restarts a daemon that is up but no longer doing its job.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import sqlite3
import sys
import threading
import time
from pathlib import Path

import sdnotify

from .. import __version__
from ..settings.base import ConfigError
from ..settings.config import Config
from ..settings.runtime import check_runtime
from ..io.atomic import remove_temporary_outputs
from .executor import Executor
from .lifecycle import JobOutcomes
from .log import Condition, get_logger
from .queue import DATABASE_NAME, JobQueue
from .status import LOCK_NAME, read_lock_record
from .watcher import Watcher

log = get_logger("autodip_watch.service")

#: Exit status for an unusable configuration; the unit's RestartPreventExitStatus=78
#: keeps systemd from restart-looping on a typo (sysexits.h EX_CONFIG).
EXIT_CONFIG = 78
EXIT_FAILURE = 1
#: The lock file also carries the daemon's health (JSON, rewritten in place every
#: heartbeat): ``status`` reads it when the database itself cannot be written.
LOCK_RECORD_BYTES = 4096


class DaemonError(RuntimeError):
    """The daemon cannot start; the message says why. ``exit_status`` is what the process
    ends with: 78 (EX_CONFIG, the unit's RestartPreventExitStatus) where restarting
    cannot help, such as another daemon already using the state directory."""

    def __init__(self, message: str, exit_status: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_status = exit_status


class Daemon:
    def __init__(self, config: Config, state_dir: Path) -> None:
        self.config = config
        self.state_dir = Path(state_dir)
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.notifier = sdnotify.SystemdNotifier()
        self.queue: JobQueue | None = None
        self.watcher: Watcher | None = None
        #: What runs the jobs: one local Worker per device, or one DaskDispatcher.
        self.executors: list[Executor] = []
        self.metrics = None
        self._lock_handle = None
        self._started = time.time()
        self._database = Condition(log, "daemon.database_not_writable",
                                   "daemon.database_writable",
                                   state_dir=str(state_dir))

    # ---------------------------------------------------------------- entry point

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the process exit status."""
        try:
            self._start()
        except ConfigError as error:
            log.error("daemon.config_error", problems=error.problems)
            print(str(error), file=sys.stderr)
            return EXIT_CONFIG
        except DaemonError as error:
            log.error("daemon.cannot_start", error=str(error), exit_status=error.exit_status)
            print(f"autodip-watch: {error}", file=sys.stderr)
            self._close()
            return error.exit_status
        self._supervise()
        return self._shutdown()

    def _start(self) -> None:
        for warning in check_runtime(self.config):
            log.warning("config.warning", message=warning)
        from ..dip.device import choose_device, describe_device
        from ..transfer.table import CalibrationTable

        table = CalibrationTable.load(self.config.calibration_table)
        try:
            self.queue = JobQueue(self.state_dir)
            self.queue.check_integrity()
        except (OSError, sqlite3.Error) as error:
            raise _queue_error(self.state_dir, error) from None
        self._take_lock()
        for job in self.queue.recover(self.config.retry):
            folder = self.config.folder_for(Path(job.path))
            remove_temporary_outputs(self.config.output_for(Path(job.path), folder))
            log.warning("job.recovered", job_id=job.id, path=job.path, attempt=job.attempts,
                        note="was running when the daemon stopped uncleanly")
        dask = self.config.executor == "dask"
        if dask:  # the cluster's workers pick their GPUs; `status` shows them
            devices = [f"dask {self.config.scheduler}"]
        else:
            devices = [describe_device(choose_device(None if d == "auto" else d))
                       for d in self.config.devices]
        if self.config.metrics.enabled:
            from .exporter import Metrics

            self.metrics = Metrics(self.queue)
            try:
                self.metrics.serve(self.config.metrics.address, self.config.metrics.port)
            except OSError as error:
                raise DaemonError(f"metrics.port: cannot listen on {self.config.metrics.address}:"
                                  f"{self.config.metrics.port}: {error}") from error
        self.watcher = Watcher(self.config, self.queue, on_enqueue=lambda job: self.wake.set(),
                               fit_key=self._fit_key_for(table, list(self.config.devices)))
        self.queue.register_daemon(host=socket.gethostname(), version=__version__,
                                   devices=devices, watches=self.watcher.describe(),
                                   heartbeat_seconds=self._interval(),
                                   status="starting")
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        self.watcher.start()
        self.queue.set_info("cluster", None)  # the dispatcher publishes its own view
        self.executors = self._executors(table)
        for executor in self.executors:
            executor.start()
        log.info("daemon.ready", pid=os.getpid(), version=__version__, devices=devices,
                 executor=self.config.executor, scheduler=self.config.scheduler,
                 state_dir=str(self.state_dir), folders=[str(f.path) for f in self.config.watch],
                 metrics=(f"http://{self.config.metrics.address}:{self.config.metrics.port}/metrics"
                          if self.metrics else None))
        self.notifier.notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=watching "
                             f"{len(self.config.watch)} folder(s)")

    def _executors(self, table) -> list[Executor]:
        """One Worker per configured device, or the Dask dispatcher; all record job
        outcomes through one :class:`~.lifecycle.JobOutcomes`."""
        outcomes = JobOutcomes(self.queue, self.config.retry, self.metrics,
                               preview=self.config.output.preview)
        if self.config.executor == "dask":
            from .dask_executor import DaskDispatcher

            return [DaskDispatcher(self.config, self.queue, table, self.stop, self.wake,
                                   outcomes)]
        from ..dip.device import choose_device, configure_tf32
        from .worker import Worker

        # TF32 is a process setting (dip.device.configure_tf32), set once here, never per
        # job: every worker of this daemon fits with the same [dip] speed settings.
        device = choose_device(None if self.config.devices[0] == "auto"
                               else self.config.devices[0])
        configure_tf32(self.config.denoise_settings(None, "auto").tf32(device))
        return [Worker(self.config, self.queue, name, table, self.stop, self.wake, outcomes)
                for name in self.config.devices]

    def _fit_key_for(self, table, devices: list[str]):
        """The watcher's fit-key function where a local worker batches, else None (the
        key costs a metadata read per file, and only batching workers use it)."""
        batching = self.config.batching
        local = self.config.executor != "dask"
        if not local or not any(batching.jobs_for(_device_type(d)) > 1 for d in devices):
            return None
        from ..pipeline.plan import fit_key

        def key(path: Path) -> str | None:
            folder = self.config.folder_for(path)
            return fit_key(path, self.config.denoise_settings(folder, "auto", table))
        return key

    def _take_lock(self) -> None:
        """One daemon per state directory: two would run every job twice."""
        # Not "a+": with O_APPEND, Linux's pwrite ignores the offset and appends.
        handle = os.fdopen(os.open(self.state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666),
                           "r+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            text = handle.read().strip()
            handle.close()
            record = read_lock_record(self.state_dir)
            holder = (f"pid {record.get('pid')} on {record.get('host')}" if record
                      else text or "another process")
            # Restarting cannot help while the other one runs: exit 78, no restart loop.
            raise DaemonError(f"another daemon ({holder}) already uses {self.state_dir}; "
                              f"stop it first or give this one another state_dir",
                              EXIT_CONFIG) from None
        self._lock_handle = handle
        self._write_lock_record(True, [], "starting")

    def _write_lock_record(self, healthy: bool, problems: list[str], status: str) -> None:
        """Rewrite the health record in the lock file in place (one pwrite of a fixed
        size, no truncation): it needs no new disk space, so it still works when the
        database cannot be written (a full disk, a broken database file)."""
        if self._lock_handle is None:
            return
        record = {"pid": os.getpid(), "host": socket.gethostname(), "version": __version__,
                  "started": self._started, "heartbeat": time.time(),
                  "heartbeat_seconds": self._interval(), "healthy": healthy,
                  "problems": problems, "status": status,
                  "database": self._database.current or "ok"}
        data = json.dumps(record).encode("utf-8")[: LOCK_RECORD_BYTES - 1]
        data = data.ljust(LOCK_RECORD_BYTES - 1) + b"\n"
        try:
            os.pwrite(self._lock_handle.fileno(), data, 0)
        except OSError:
            pass  # status falls back to the database row and the pid

    def _on_signal(self, signum, frame) -> None:
        if not self.stop.is_set():
            log.info("daemon.stopping", signal=signal.Signals(signum).name)
        self.stop.set()
        self.wake.set()

    # ---------------------------------------------------------------- supervision

    def _interval(self) -> float:
        """Heartbeat period: the configured one, but at least twice per systemd watchdog period."""
        interval = self.config.daemon.heartbeat_seconds
        watchdog_usec = os.environ.get("WATCHDOG_USEC")
        if watchdog_usec and watchdog_usec.isdigit() and int(watchdog_usec) > 0:
            interval = min(interval, int(watchdog_usec) / 2e6)
        return interval

    def health(self) -> tuple[bool, list[str]]:
        problems: list[str] = []
        ok, watcher_problems = self.watcher.healthy()
        problems += watcher_problems
        for executor in self.executors:
            ok, problem = executor.healthy()
            if not ok:
                problems.append(problem)
        return not problems, problems

    def status_line(self) -> str:
        counts = self.queue.counts()
        parts = [f"{counts['queued'] + counts['failed']} waiting", f"{counts['done']} done"]
        if counts.get("partial"):
            parts.append(f"{counts['partial']} partial")
        if counts["quarantined"]:
            parts.append(f"{counts['quarantined']} quarantined")
        parts += [line for line in (executor.summary() for executor in self.executors) if line]
        unavailable = [s for s in self.watcher.folders if s.checked and not s.available]
        if unavailable:
            parts.append(f"{len(unavailable)} folder(s) unavailable")
        return "; ".join(parts)

    def _supervise(self) -> None:
        interval = self._interval()
        was_healthy = True
        while True:
            healthy, problems = self.health()
            try:
                line = self.status_line()
                self.queue.heartbeat(healthy, line if healthy else "; ".join(problems),
                                     self.watcher.describe())
                self._database.clear()
            except sqlite3.Error as error:
                healthy = False
                line = "database not writable"
                problems.append(f"database {self.queue.path} not writable: {error}")
                self._database.report(f"{type(error).__name__}: {error}")
            self._write_lock_record(healthy, problems, line if healthy else "; ".join(problems))
            if healthy:
                self.notifier.notify(f"WATCHDOG=1\nSTATUS={line}")
            else:
                self.notifier.notify(f"STATUS=unhealthy: {'; '.join(problems)}")
            if healthy != was_healthy:
                (log.info if healthy else log.error)("daemon.health", healthy=healthy,
                                                     problems=problems)
                was_healthy = healthy
            if self.stop.wait(interval):
                return

    # ---------------------------------------------------------------- shutdown

    def _shutdown(self) -> int:
        self.notifier.notify("STOPPING=1\nSTATUS=stopping")
        deadline = time.monotonic() + self.config.daemon.stop_timeout_seconds
        self.stop.set()
        self.wake.set()
        if self.watcher is not None:
            self.watcher.stop(timeout=max(0.1, deadline - time.monotonic()))
        stuck = []
        for executor in self.executors:
            executor.thread.join(max(0.0, deadline - time.monotonic()))
            if executor.thread.is_alive():
                stuck.append(executor)
        for executor in stuck:
            for job in executor.jobs():
                try:
                    self.queue.release(job.id, "daemon stopped before the fit could abort; the "
                                               "job goes back to the queue")
                except Exception:
                    log.exception("daemon.release_failed", job_id=job.id)
                log.error("job.requeued", job_id=job.id, path=job.path,
                          reason=f"fit did not abort within {self.config.daemon.stop_timeout_seconds} s")
        self._close()
        log.info("daemon.stopped", clean=not stuck)
        if stuck:
            # A thread inside a native call cannot be joined; leave without waiting on it.
            sys.stderr.flush()
            os._exit(0)
        return 0

    def _close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        if self.queue is not None:
            try:
                self.queue.daemon_stopped()
            except sqlite3.Error:
                pass
            self.queue.close()
        if self._lock_handle is not None:
            self._write_lock_record(False, [], "stopped")
            self._lock_handle.close()
            self._lock_handle = None


def _queue_error(state_dir: Path, error: Exception) -> DaemonError:
    """Why the queue cannot be opened, and whether a restart could help: a damaged
    database or a folder this user may not write needs a person (exit 78, so systemd
    does not restart in a loop); anything else may pass (exit 1, restarted)."""
    database = state_dir / DATABASE_NAME
    if isinstance(error, sqlite3.DatabaseError) and not isinstance(error, sqlite3.OperationalError):
        return DaemonError(
            f"the queue database {database} is damaged ({error}): keep a copy to inspect, "
            f"then move it aside; the daemon then starts a new queue and takes every file "
            f"again (outputs already made from the same content are kept, not redone)",
            EXIT_CONFIG)
    unwritable = (getattr(error, "errno", None) in (errno.EACCES, errno.EPERM, errno.EROFS)
                  or getattr(error, "sqlite_errorname", "").startswith("SQLITE_READONLY")
                  # SQLite says only "unable to open" when WAL cannot make its -shm file
                  or (state_dir.is_dir() and not os.access(state_dir, os.W_OK)))
    if unwritable:
        return DaemonError(f"cannot write the queue in {state_dir}: {error} (set state_dir in "
                           f"the config or --state-dir to a folder this user may write)",
                           EXIT_CONFIG)
    return DaemonError(f"cannot open the queue in {state_dir}: {error} (set state_dir in the "
                       f"config or --state-dir to a writable folder)")


def run_daemon(config: Config, state_dir: Path) -> int:
    return Daemon(config, state_dir).run()


def _device_type(device: str) -> str:
    """"cuda:1" -> "cuda"; "auto" -> the type choose_device would pick."""
    if device == "auto":
        from ..dip.device import available_devices

        return available_devices()[0]
    return device.split(":")[0]
