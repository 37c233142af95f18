"""What the daemon asks of whatever runs its jobs: the :class:`Executor` protocol.

Two executors exist: :class:`~.worker.Worker`, one per local device, and
:class:`~.dask_executor.DaskDispatcher`, which hands jobs to a Dask cluster. The service
(``service.py``) starts, supervises and stops them through this protocol only; how a
job ended is recorded by :class:`~.lifecycle.JobOutcomes` for both, so that a job done,
failed, requeued or quarantined reads the same in the queue, the log and the metrics
wherever it ran. The shape follows rq's ``BaseWorker``: a loop in its own thread that
claims jobs from the store, with a health check the supervisor polls.
"""

from __future__ import annotations

import threading
from typing import Protocol, runtime_checkable

from .queue import Job


@runtime_checkable
class Executor(Protocol):
    """Runs queued jobs until the daemon's stop event is set.

    An executor claims jobs from the :class:`~.queue.JobQueue` itself (nothing is pushed
    to it), runs each through the pipeline (``pipeline.denoise.denoise_file``) here or
    elsewhere, and records each outcome with :class:`~.lifecycle.JobOutcomes`. On stop
    it aborts or cancels what runs; those jobs go back to the queue without using up an
    attempt.
    """

    #: The thread of the executor's loop; the service joins it at shutdown.
    thread: threading.Thread

    def start(self) -> None:
        """Start the loop in :attr:`thread`; returns at once."""

    def healthy(self) -> tuple[bool, str]:
        """``(True, "")`` while the loop runs and makes progress, else ``(False, why)``;
        the service stops systemd's watchdog pings while any executor is unhealthy."""

    def jobs(self) -> list[Job]:
        """The jobs running now (for the status line, and to requeue at shutdown)."""

    def summary(self) -> str:
        """One short line for the heartbeat's status (sd_notify ``STATUS=``)."""
