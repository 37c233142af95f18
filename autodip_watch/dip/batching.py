"""Fit many tiles of one configuration at once, within a device memory budget.

A file often holds many planes with the same DIP configuration (channels x Z x T,
tiles of large planes), and the queue often holds several files of one group. On a
GPU the small networks of most groups leave the device idle between kernel launches;
fitting K networks in one grouped optimisation (``fit_tiles``) fills it.

A :class:`TileFitter` takes fit requests and returns results in the same order:

* :class:`SingleFitter` fits each tile alone (the reference path, and the CPU default:
  on a CPU a grouped network is no faster per plane, see ``bench/README.md``).
* :class:`BatchedFitter` groups requests by configuration (architecture, iterations,
  padded shape, fit options except the seed) and fits each group in batches no larger
  than the memory budget allows. A CUDA out-of-memory error halves the batch and
  retries, and the smaller size is remembered for that configuration.
* :class:`SharedFitter` lets several jobs (threads) submit to one BatchedFitter, so
  that planes of different files with the same configuration share a batch.

Each tile's result equals fitting it alone with the same seed, up to floating-point
rounding (``fit_tiles``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from .fit import ProgressCallback, fit_tiles
from .network import INPUT_CHANNELS, SkipNet
from .options import FitOptions
from .params import DEFAULT_LINGER_SECONDS, DEFAULT_MAX_BATCH, DipParams
from .tiling import runnable_shape

#: Default share of the free device memory a batch may use.
DEFAULT_MEMORY_FRACTION = 0.8
#: Headroom over the estimated bytes of a fit (allocator rounding, cuDNN workspaces).
ESTIMATE_MARGIN = 1.3
#: Memory a batch needs besides its networks (allocator pools, library workspaces and
#: thread pools): measured on CPU, the first fit of a process peaks 150-280 MiB above
#: the estimate whatever the network, and each further network adds about the estimate.
BATCH_OVERHEAD_BYTES = 512 << 20


@dataclass
class FitRequest:
    """One tile to fit: a 2-D float32 array in [0, 1] and its configuration.

    ``noise_variance``: the variance of the tile's noise on its [0, 1] scale, where
    estimated; an extended fit (``FitOptions.extend_fraction``) needs it.
    """

    tile: np.ndarray
    params: DipParams
    options: FitOptions = FitOptions()
    progress: ProgressCallback | None = None
    noise_variance: float | None = None

    def key(self) -> tuple:
        """Requests with equal keys can share one batched optimisation."""
        shape = runnable_shape(self.tile.shape, self.params.depth)
        return (self.params, shape, dataclasses.replace(self.options, seed=0))


@dataclass
class TileResult:
    output: np.ndarray  # float32 in [0, 1], the tile's shape
    final_loss: float
    seconds: float  # this tile's share of its batch's wall time
    batch: int  # how many tiles were fitted together with it (itself included)
    rollbacks: int = 0  # weight restores after loss spikes (FitOptions.rollback)
    iterations: int = 0  # the iteration its output was taken at (extension: past N)


class TileFitter:
    """Fits requests; ``window`` says how many planes a caller should gather per call."""

    window: int = 1

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)

    def fit(self, requests: list[FitRequest]) -> list[TileResult]:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"batching": "off"}


class SingleFitter(TileFitter):
    """Every tile in its own optimisation, one after the other."""

    def __init__(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(device)
        self.dtype = dtype

    def fit(self, requests: list[FitRequest]) -> list[TileResult]:
        return [_run_batch([request], self.device, self.dtype)[0] for request in requests]


class BatchedFitter(TileFitter):
    """Groups requests by configuration and fits each group in memory-bounded batches.

    ``budget_bytes`` is the device memory a batch may use; ``None`` takes
    :func:`default_budget` of the device when the first batch is planned.
    """

    def __init__(self, device: torch.device | str, budget_bytes: int | None = None,
                 max_batch: int = DEFAULT_MAX_BATCH, dtype: torch.dtype = torch.float32,
                 memory_fraction: float = DEFAULT_MEMORY_FRACTION) -> None:
        super().__init__(device)
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.budget_bytes = budget_bytes
        self.max_batch = max_batch
        self.window = max_batch
        self.dtype = dtype
        self.memory_fraction = memory_fraction
        self._learned_limit: dict[tuple, int] = {}  # after an out-of-memory error
        # Sizes of the latest batches run (for reports and tests); bounded, as a daemon
        # runs batches for months.
        self.batches: deque[int] = deque(maxlen=1000)

    def describe(self) -> dict:
        return {"batching": "on", "max_batch": self.max_batch,
                "memory_budget_bytes": self.budget(),
                "batches": len(self.batches), "largest_batch": max(self.batches, default=0)}

    def budget(self) -> int:
        if self.budget_bytes is None:
            self.budget_bytes = default_budget(self.device, self.memory_fraction)
        return self.budget_bytes

    def capacity(self, key: tuple) -> int:
        """How many fits of ``key`` run together within the budget (at least one)."""
        params, shape, options = key
        per_fit = fit_memory_bytes(params, shape, options.bf16) * ESTIMATE_MARGIN
        fitting = int(max(0, self.budget() - BATCH_OVERHEAD_BYTES) // per_fit)
        limit = min(self.max_batch, self._learned_limit.get(key, self.max_batch))
        return max(1, min(limit, fitting))

    def fit(self, requests: list[FitRequest]) -> list[TileResult]:
        results: list[TileResult | None] = [None] * len(requests)
        for key, indices in group_by_key(requests).items():
            start = 0
            while start < len(indices):
                chunk = indices[start:start + self.capacity(key)]
                for index, result in zip(chunk, self._fit_chunk(key, [requests[i] for i in chunk])):
                    results[index] = result
                start += len(chunk)
        return results  # type: ignore[return-value]

    def _fit_chunk(self, key: tuple, chunk: list[FitRequest]) -> list[TileResult]:
        try:
            results = _run_batch(chunk, self.device, self.dtype)
        except torch.OutOfMemoryError:
            if len(chunk) == 1:
                raise
            # The estimate was too optimistic for this device: halve and remember.
            half = (len(chunk) + 1) // 2
            self._learned_limit[key] = min(half, self._learned_limit.get(key, half))
            _release_cached_memory(self.device)
            return self._fit_chunk(key, chunk[:half]) + self._fit_chunk(key, chunk[half:])
        self.batches.append(len(chunk))
        return results


class SharedFitter:
    """One :class:`BatchedFitter` shared by several jobs running in threads.

    Each job enters :meth:`member` and submits its requests through the fitter it gets;
    a submission waits until the batches holding its requests have run. A batch runs
    as soon as every member is waiting (nobody is about to add more), when one
    configuration has a full batch pending, or after ``linger`` seconds. Batches run
    in the thread of one of the waiting members (one at a time), so no extra thread
    owns the device. An error in a batch (including a cancellation raised by a
    member's progress callback) goes to every request of that batch.
    """

    def __init__(self, fitter: BatchedFitter, linger: float = DEFAULT_LINGER_SECONDS) -> None:
        self.fitter = fitter
        self.linger = linger
        self._lock = threading.Condition()
        self._members = 0
        self._waiting = 0
        self._running = False
        self._pending: list[_Pending] = []

    @contextmanager
    def member(self) -> Iterator[TileFitter]:
        """Be a member for the duration of the block; yields the member's fitter."""
        fitter = self.enter()
        try:
            yield fitter
        finally:
            self.leave()

    def enter(self) -> TileFitter:
        """Join as a member (a job that will submit); pair with :meth:`leave`.

        A daemon enters for each job it claims before starting its thread, so that a
        job that is quick to submit does not run alone while the others start.
        """
        with self._lock:
            self._members += 1
        return _MemberFitter(self)

    def leave(self) -> None:
        with self._lock:
            self._members -= 1
            self._lock.notify_all()

    def describe(self) -> dict:
        return {**self.fitter.describe(), "shared": True}

    def _submit(self, requests: list[FitRequest]) -> list[TileResult]:
        mine = [_Pending(request, time.monotonic()) for request in requests]
        with self._lock:
            self._pending.extend(mine)
            self._waiting += 1
            self._lock.notify_all()
            try:
                while not all(item.done for item in mine):
                    batch = None if self._running else self._ready_batch()
                    if batch is None:
                        self._lock.wait(timeout=0.1)
                        continue
                    self._running = True
                    self._lock.release()
                    try:
                        self._run(batch)
                    finally:
                        self._lock.acquire()
                        self._running = False
                        self._lock.notify_all()
            finally:
                self._waiting -= 1
        for item in mine:
            if item.error is not None:
                raise item.error
        return [item.result for item in mine]  # type: ignore[misc]

    def _ready_batch(self) -> list[_Pending] | None:
        """The next batch to run, or None while it is better to wait for more requests."""
        if not self._pending:
            return None
        groups = group_by_key([item.request for item in self._pending])
        everyone_waiting = self._waiting >= self._members
        oldest = min(item.since for item in self._pending)
        lingered = time.monotonic() - oldest >= self.linger
        for key, indices in groups.items():
            capacity = self.fitter.capacity(key)
            if len(indices) >= capacity or everyone_waiting or lingered:
                chosen = [self._pending[i] for i in indices[:capacity]]
                chosen_ids = {id(item) for item in chosen}
                self._pending = [p for p in self._pending if id(p) not in chosen_ids]
                return chosen
        return None

    def _run(self, batch: list[_Pending]) -> None:
        try:
            results = self.fitter.fit([item.request for item in batch])
        except BaseException as error:  # noqa: BLE001 - handed to each submitter
            for item in batch:
                item.error, item.done = error, True
            return
        for item, result in zip(batch, results):
            item.result, item.done = result, True


@dataclass
class _Pending:
    request: FitRequest
    since: float
    result: TileResult | None = None
    error: BaseException | None = None
    done: bool = False


class _MemberFitter(TileFitter):
    def __init__(self, shared: SharedFitter) -> None:
        super().__init__(shared.fitter.device)
        self.shared = shared
        self.window = shared.fitter.window

    def fit(self, requests: list[FitRequest]) -> list[TileResult]:
        return self.shared._submit(requests)

    def describe(self) -> dict:
        return self.shared.describe()


def group_by_key(requests: list[FitRequest]) -> OrderedDict[tuple, list[int]]:
    """Request indices per configuration key, in order of first appearance."""
    groups: OrderedDict[tuple, list[int]] = OrderedDict()
    for index, request in enumerate(requests):
        groups.setdefault(request.key(), []).append(index)
    return groups


def _run_batch(chunk: list[FitRequest], device: torch.device,
               dtype: torch.dtype) -> list[TileResult]:
    """Fit ``chunk`` (one configuration) together; progress goes to every request."""
    callbacks = [request.progress for request in chunk if request.progress is not None]
    progress: Callable[[int, int], None] | None = None
    if callbacks:
        def progress(iteration: int, total: int) -> None:
            for callback in callbacks:
                callback(iteration, total)
    results = fit_tiles([request.tile for request in chunk], chunk[0].params, device,
                        [request.options for request in chunk], progress=progress, dtype=dtype,
                        noise_variances=[request.noise_variance for request in chunk])
    return [TileResult(output=result.output, final_loss=float(result.losses[-1]),
                       seconds=result.seconds / len(chunk), batch=len(chunk),
                       rollbacks=result.rollbacks, iterations=result.iterations)
            for result in results]


@functools.lru_cache(maxsize=256)
def fit_memory_bytes(params: DipParams, shape: tuple[int, int], bf16: bool = False) -> int:
    """Estimated device bytes of fitting one network on a padded ``shape``.

    Counts what autograd saves for the backward pass (traced on the meta device, so
    nothing is computed or allocated), the input, target and output, and the weights
    four times over (weights, gradients, two Adam moments). bf16 autocast halves the
    saved activations; the estimate keeps fp32, erring on the safe side.
    """
    del bf16  # the fp32 count bounds the bf16 one
    with torch.device("meta"):
        net = SkipNet(params.depth, params.width, params.skip)
        z = torch.zeros(1, INPUT_CHANNELS, *shape)
    saved = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = net.train()(z)
        ((output - torch.zeros_like(output)) ** 2).mean()
    weights = sum(p.numel() * p.element_size() for p in net.parameters())
    planes = (z.numel() + 3 * output.numel()) * 4  # input, target, output and its gradient
    return int(saved + 4 * weights + planes)


def default_budget(device: torch.device, fraction: float = DEFAULT_MEMORY_FRACTION) -> int:
    """A share of the memory free now: the GPU's for CUDA, the machine's available RAM
    otherwise."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * fraction)
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        available = 4 << 30
    return int(available * fraction)


def make_fitter(device: torch.device, mode: str = "auto", max_batch: int = DEFAULT_MAX_BATCH,
                budget_bytes: int | None = None,
                memory_fraction: float = DEFAULT_MEMORY_FRACTION) -> TileFitter:
    """The fitter for a batching setting: ``on``, ``off``, or ``auto`` (on for CUDA only).

    ``auto`` keeps CPU and MPS on single fits: measured on CPU, a grouped network is
    slower per plane than fitting planes one after the other.
    """
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"batching must be auto, on or off, not {mode!r}")
    if mode == "off" or (mode == "auto" and device.type != "cuda") or max_batch == 1:
        return SingleFitter(device)
    return BatchedFitter(device, budget_bytes, max_batch, memory_fraction=memory_fraction)


def make_shared_fitter(device: torch.device, mode: str = "auto",
                       max_batch: int = DEFAULT_MAX_BATCH, budget_bytes: int | None = None,
                       linger: float = DEFAULT_LINGER_SECONDS) -> SharedFitter | None:
    """A fitter several files can share, where the batching setting batches on ``device``;
    None where each file should be fitted on its own (``make_fitter``'s single fits)."""
    fitter = make_fitter(device, mode, max_batch, budget_bytes)
    return SharedFitter(fitter, linger=linger) if isinstance(fitter, BatchedFitter) else None


def run_together(shared: SharedFitter | None,
                 calls: list[Callable[[TileFitter | None], object]],
                 slots: int | None = None) -> list[object]:
    """Run ``calls`` side by side, at most ``slots`` at a time (default: all), each in a
    thread and given a membership of ``shared`` as its fitter, so that tiles of
    different files share batches; one after the other (given None) without a shared
    fitter or with a single call.

    The first ``slots`` calls are members before any starts, so the first to submit
    waits for the others' tiles instead of running alone; a slot that frees takes the
    next call, which joins before the finished one leaves. Results come back in order;
    an exception that escapes a call is raised once every call has ended.
    """
    if shared is None or len(calls) < 2:
        return [call(None) for call in calls]
    slots = max(1, min(len(calls), slots or len(calls)))
    results: list[object] = [None] * len(calls)
    errors: list[BaseException | None] = [None] * len(calls)
    lock = threading.Lock()
    pending = iter(range(slots, len(calls)))  # the first ``slots`` go one to each slot

    def take() -> int | None:
        with lock:
            return next(pending, None)

    def slot(index: int | None, member: TileFitter) -> None:
        # The next call joins before the finished one leaves: a call whose batch partner
        # just finished is not left the only member waiting, fitted alone.
        while index is not None:
            try:
                results[index] = calls[index](member)
            except BaseException as error:  # noqa: BLE001 - raised in the caller's thread
                errors[index] = error
            index = take()
            successor = shared.enter() if index is not None else member
            shared.leave()
            member = successor

    threads = [threading.Thread(target=slot, args=(number, shared.enter()), daemon=True,
                                name=f"fit-together-{number}") for number in range(slots)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for error in errors:
        if error is not None:
            raise error
    return results


def _release_cached_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
