"""Dask distributed, as both of the project's executors on a cluster use it.

The daemon's Dask executor (``daemon/dask_executor.py``, its tasks in
``daemon/dask_tasks.py``) and ``calibrate --scheduler`` (``calibration/
cluster_executor.py``) share what is here: the client, the view of the cluster's
workers, the resource a task needs (one GPU), and what each worker knows about itself.

``dask worker --preload autodip_watch.cluster`` (``docs/cluster.md``) runs
:func:`dask_setup` when a worker starts: it loads the engine once and says which device
the worker's tasks will use.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field

from .dip.device import choose_device, describe_device

#: The worker resource a job needs: start workers with ``--resources GPU=1``.
GPU_RESOURCE = "GPU"
#: Worker states in which its tasks must stop.
WORKER_STOPPING = ("closing", "closed", "failed", "stopping", "stopped")


# =========================================================================== worker side

@dataclass
class WorkerEngine:
    """What a Dask worker keeps for the tasks it runs: its device, and the LPIPS networks
    of calibration fits (loaded once per worker, not per fit). Held by the worker object
    itself (:func:`worker_engine`), so it lives exactly as long as the worker."""

    device: object  # torch.device
    lpips: object = None  # perceptual.LpipsNetworks, made by the first calibration fit
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def worker_engine(worker) -> WorkerEngine:
    """The :class:`WorkerEngine` of ``worker`` (a ``distributed.Worker``), made on first use."""
    engine = getattr(worker, "autodip_engine", None)
    if engine is None:
        engine = WorkerEngine(choose_device(None))
        worker.autodip_engine = engine
    return engine


def this_worker():
    """The Dask worker running this task, or None outside one (a plain call)."""
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def dask_setup(worker) -> None:
    """``dask worker --preload autodip_watch.cluster``: import the engine once, at start.

    A worker whose environment lacks the package (or torch) then fails at start, in its
    own log, instead of failing every job sent to it.
    """
    device = describe_device(worker_engine(worker).device)
    print(f"autodip-watch worker {worker.name} on {socket.gethostname()}: device {device}",
          flush=True)


def worker_device_type(dask_worker) -> str:
    """The kind of device jobs run on in this worker (``cuda``, ``cpu``, ``mps``).

    Run on the workers by the dispatcher (``client.run``, which passes ``dask_worker``);
    it groups files into one task only where batching is on for the workers' devices.
    """
    return worker_engine(dask_worker).device.type


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


def cluster_workers(client, ours: dict[str, list[int]] | None = None) -> list[dict]:
    """The scheduler's workers: address, host, name, GPUs, threads, busy or idle, our
    tasks and their jobs (``ours``: Dask key -> job ids)."""
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
            "our_tasks": sum(1 for key in keys if key in ours),
            "jobs": sorted(job for key in keys for job in ours.get(key, ()))})
    return workers


def is_connection_error(error: BaseException) -> bool:
    from distributed.comm.core import CommClosedError

    return isinstance(error, (OSError, CommClosedError, TimeoutError))


def close_quietly(client) -> None:
    """Close a Dask client on the way out; a scheduler already gone must not turn a
    shutdown into an error."""
    try:
        client.close(timeout=5)
    except Exception:
        pass
