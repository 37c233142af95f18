"""``calibrate --scheduler``: the (image, configuration) fits as tasks on a Dask cluster.

Each fit is one task needing one GPU; outcomes come back as they finish, so the
calibration records each at once and a stopped run resumes (``run.py``). Workers keep
their LPIPS networks between fits (``cluster.WorkerEngine``).
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator, Sequence

from ..cluster import (GPU_RESOURCE, close_quietly, cluster_workers, connect,
                       is_connection_error, this_worker, worker_engine)
from ..dip.device import choose_device, describe_device
from ..perceptual import LpipsNetworks
from .errors import CalibrationError
from .fitting import FitOutcome, FitTask, run_fit_task


def calibration_fit(task, device: str | None = None):
    """One calibration fit on a Dask worker (:func:`~.fitting.run_fit_task`).

    The outcome's ``device`` names the worker, so the calibration state records where
    each fit ran. The worker's LPIPS networks are kept on it for the fits that follow.
    """
    chosen = choose_device(device)
    worker = this_worker()
    lpips = None
    if worker is not None:
        engine = worker_engine(worker)
        with engine.lock:
            engine.lpips = engine.lpips or LpipsNetworks()
        lpips = engine.lpips
    outcome = run_fit_task(task, chosen, lpips=lpips)
    where = f"{socket.gethostname()} {worker.address}" if worker is not None else socket.gethostname()
    outcome.device = f"{describe_device(chosen)} on {where}"
    return outcome


def calibration_executor(address: str, device: str | None = None, max_in_flight: int = 0,
                         connect_timeout: float = 10.0):
    """A ``calibrate`` executor that runs each (image, configuration) fit as one Dask task.

    Yields ``(task, outcome)`` as fits finish, so the caller records each at once and a
    stopped run resumes. At most ``max_in_flight`` fits are submitted at a time (default
    twice the cluster's GPUs), which keeps the images of pending fits off the scheduler.
    """
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
                    if is_connection_error(error) or "Cancelled" in type(error).__name__:
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
            close_quietly(client)

    execute.description = f"Dask cluster {address}"
    return execute
