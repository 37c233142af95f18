"""What one DIP iteration must cost at least: FLOPs, kernel launches, and the floor.

Issue 7 asks each timed configuration to be compared with its floor: the FLOPs of one
iteration over the device's measured matrix rate (compute-bound), or the number of
kernels over the cost of one launch (launch-bound, the tiny widefield networks). Counts
are taken on the ``meta`` device, which runs every op's shape logic but no arithmetic,
so counting even the largest configuration is instant and needs no GPU.

A third floor is memory traffic: the bytes every kernel must read and write (its tensor
arguments and results, counted on the meta device) over the measured memory bandwidth.
It binds the small networks once launches are cheap (CUDA graphs) or amortised over K
networks (batching): their 512x512 feature maps are large and their FLOPs are few.

All floors are lower bounds. FLOPs count the convolutions only (BatchNorm, activations,
padding, upsampling and Adam are memory-bound and belong to neither floor); the op count
is what the dispatcher sees, and one op can launch several kernels on CUDA (a cuDNN
convolution backward, a ``_foreach`` op over more tensors than one launch takes).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from autodip_watch.dip.fit import training_step
from autodip_watch.dip.network import INPUT_CHANNELS, DipParams, SkipNet
from autodip_watch.dip.options import FitOptions

#: Matmul precisions ``measure_matrix_rate`` knows; tf32 is fp32 storage on CUDA tensor cores.
PRECISIONS = ("fp32", "tf32", "bf16")

#: Ops that allocate or only bookkeep: they launch no kernel.
_NO_KERNEL = frozenset({"aten::empty", "aten::empty_strided", "aten::empty_like",
                        "aten::new_empty", "aten::new_empty_strided", "aten::lift_fresh",
                        "aten::_unsafe_view"})


def forward_macs(net: nn.Module, shape: tuple[int, int]) -> int:
    """Multiply-accumulates of the convolutions in one forward pass (analytic, from hooks).

    Runs on the network's own device: pass a ``meta`` network to count without computing.
    """
    total = 0

    def count(module, inputs, output):
        nonlocal total
        kh, kw = module.kernel_size
        total += output.numel() * module.in_channels * kh * kw // module.groups

    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, nn.Conv2d)]
    first = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    try:
        with torch.no_grad():
            net(torch.zeros(1, first.in_channels, *shape, device=first.weight.device))
    finally:
        for hook in hooks:
            hook.remove()
    return total


def meta_network(params: DipParams, networks: int = 1) -> SkipNet:
    """The configuration's network (``networks`` stacked) on the meta device, in train mode."""
    with torch.device("meta"):
        net = SkipNet(params.depth, params.width, params.skip, networks=networks)
    return net.train()


def _training_tensors(networks: int, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    z = torch.empty(1, INPUT_CHANNELS * networks, *shape, device="meta")
    target = torch.empty(1, networks, *shape, device="meta")
    return z, target


def _meta_training_step(params: DipParams, shape: tuple[int, int], networks: int):
    """The fit loop's own step (``fit.training_step``) on a meta network, ready to call.

    Adam runs with ``foreach``, its default on CUDA (on CPU and meta it defaults to a
    per-parameter loop, which would count one op per parameter tensor).
    """
    net = meta_network(params, networks)
    z, target = _training_tensors(networks, shape)
    optimiser = torch.optim.Adam(net.parameters(), lr=0.01, foreach=True)
    options = FitOptions()
    return lambda: training_step(net, optimiser, z, target, None, None, options,
                                 torch.device("meta"))


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding,
                         _dilation, transposed, _output_padding, _groups, output_mask,
                         out_shape=None, **kwargs) -> int:
    """Gradient FLOPs of a (grouped) convolution: each gradient costs one forward.

    torch's own formula computes the weight gradient as one ungrouped convolution, which
    counts a grouped convolution's weight gradient ``groups`` times over: wrong for the
    K-network stack, whose convolutions have K groups. Every multiply of the forward has
    exactly one counterpart in the input gradient and one in the weight gradient.
    """
    positions = math.prod((x_shape if transposed else grad_out_shape)[2:])
    forward = 2 * grad_out_shape[0] * positions * math.prod(w_shape)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter with the grouped-convolution backward counted right."""
    return FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten.convolution_backward: _conv_backward_flops})


def forward_flops(params: DipParams, shape: tuple[int, int], networks: int = 1) -> int:
    """FLOPs (2 per multiply-accumulate) of one forward pass, counted by ``FlopCounterMode``."""
    net = meta_network(params, networks)
    z, _ = _training_tensors(networks, shape)
    counter = flop_counter()
    with counter, torch.no_grad():
        net(z)
    return counter.get_total_flops()


def iteration_flops(params: DipParams, shape: tuple[int, int], networks: int = 1) -> int:
    """FLOPs of one training iteration: forward, MSE and backward (counted, not estimated).

    The backward costs about twice the forward: gradients of the inputs and of the
    weights of each convolution, except the input gradient of the first one (z is fixed).
    """
    step = _meta_training_step(params, shape, networks)
    counter = flop_counter()
    with counter:
        step()  # Adam's element-wise ops have no FLOP formula: convolutions only
    return counter.get_total_flops()


class _OpCounter(TorchDispatchMode):
    """Counts the ops that run on ``device`` and launch a kernel (no views, no allocations).

    Ops on other devices are left out: with ``capturable=False`` Adam keeps its step
    counters on the CPU, and those updates launch nothing on the GPU.
    """

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device
        self.count = 0
        self.bytes = 0  # tensor bytes read and written by the counted ops

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if (func.namespace == "aten" and not func.is_view
                and func._schema.name not in _NO_KERNEL
                and _touches(self.device, args, kwargs, result)):
            self.count += 1
            self.bytes += _tensor_bytes(args, kwargs, result)
        return result


def _tensor_bytes(*trees) -> int:
    """Bytes of the distinct tensors in (nested) arguments and results: what an op reads
    and writes at least once (an in-place op's tensor is counted once)."""
    seen: set[int] = set()
    total = 0
    pending = list(trees)
    while pending:
        item = pending.pop()
        if isinstance(item, torch.Tensor):
            if id(item) not in seen and item.numel() > 1:  # scalars stay in cache
                seen.add(id(item))
                total += item.numel() * item.element_size()
        elif isinstance(item, (list, tuple)):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.values())
    return total


def _touches(device: torch.device, *trees) -> bool:
    """Whether any tensor in the (nested) arguments or results lives on ``device``."""
    pending = list(trees)
    while pending:
        item = pending.pop()
        if isinstance(item, torch.Tensor):
            if item.device.type == device.type:
                return True
        elif isinstance(item, (list, tuple)):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.values())
    return False


def kernels_per_iteration(params: DipParams, shape: tuple[int, int], networks: int = 1) -> int:
    """Ops dispatched on the device by one training step of the eager fit loop.

    The step is ``fit.training_step``: zero_grad, forward, MSE, backward, Adam. The
    second step is counted; the first also creates Adam's state. Grouping K networks
    into one (``networks``) changes the kernels' sizes, not their number, except for a
    copy per gradient of the per-network concatenation at each skip level.
    """
    return _count_step(params, shape, networks).count


def traffic_per_iteration(params: DipParams, shape: tuple[int, int], networks: int = 1) -> int:
    """Bytes read and written by the ops of one training step (same ops as
    :func:`kernels_per_iteration`), in fp32: each op's tensors once, no cache reuse."""
    return _count_step(params, shape, networks).bytes


def _count_step(params: DipParams, shape: tuple[int, int], networks: int) -> _OpCounter:
    """The ops of the second training step on the meta device (the first creates Adam's
    state, which later steps do not)."""
    step = _meta_training_step(params, shape, networks)
    step()
    counter = _OpCounter(torch.device("meta"))
    with counter:
        step()
    return counter


def measure_memory_bandwidth(device: torch.device | str, megabytes: int | None = None,
                             repeats: int = 5) -> float:
    """Measured bytes per second of a large device-to-device copy (read + write)."""
    device = torch.device(device)
    megabytes = megabytes or (1024 if device.type == "cuda" else 128)
    source = torch.ones(megabytes << 18, device=device)  # float32: MiB x 2**18 values
    target = torch.empty_like(source)
    seconds = _median_seconds(lambda: target.copy_(source), device, repeats)
    return 2 * source.numel() * source.element_size() / seconds


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(run, device: torch.device, repeats: int) -> float:
    """Median wall time of ``run()`` after one untimed call, synchronised around each."""
    run()
    _synchronise(device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        _synchronise(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure_matrix_rate(device: torch.device | str, precision: str = "fp32",
                        size: int | None = None, repeats: int = 5) -> float:
    """Measured square-matmul FLOP/s on ``device`` in ``precision`` (fp32, tf32 or bf16).

    ``fp32`` forces TF32 off and ``tf32`` forces it on (CUDA only), whatever torch's
    process-wide setting; both are restored. Size defaults to 4096 on CUDA (large enough
    to reach the tensor cores' rate) and 512 on CPU (a few tenths of a second per run).
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "tf32" and device.type != "cuda":
        raise ValueError("tf32 exists only on CUDA devices")
    size = size or (4096 if device.type == "cuda" else 512)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    out = torch.empty(size, size, device=device, dtype=dtype)
    # Enough products per timing that launch and sync overheads vanish on a GPU.
    products = 20 if device.type == "cuda" else 2

    def run() -> None:
        for _ in range(products):
            torch.mm(a, b, out=out)

    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        seconds = _median_seconds(run, device, repeats)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return 2 * size**3 * products / seconds


def measure_launch_seconds(device: torch.device | str, launches: int = 1000,
                           repeats: int = 5, graphed: bool = False) -> float:
    """Median seconds per launch of a tiny kernel (``add_`` on one value), back to back.

    Eager, this is the host's dispatch-and-launch cost (or the GPU's per-kernel time,
    whichever is longer). ``graphed`` (CUDA only) replays the launches from one CUDA
    graph instead, which removes the host cost: the launch floor of graphed fits.
    """
    device = torch.device(device)
    if graphed and device.type != "cuda":
        raise ValueError("graphed launches need a CUDA device")
    value = torch.zeros(1, device=device)

    def launch_all() -> None:
        for _ in range(launches):
            value.add_(1)

    run = launch_all
    if graphed:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            launch_all()  # warm up outside the capture, as the capture recipe asks
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            launch_all()
        run = graph.replay
    return _median_seconds(run, device, repeats) / launches


@dataclass(frozen=True)
class Floor:
    """The lower bound of one iteration's time and which resource sets it."""

    compute_seconds: float  # FLOPs / matrix rate
    launch_seconds: float  # kernels x seconds per launch
    memory_seconds: float = 0.0  # bytes moved / memory bandwidth

    @property
    def seconds(self) -> float:
        return max(self.compute_seconds, self.launch_seconds, self.memory_seconds)

    @property
    def bound(self) -> str:
        parts = {"compute": self.compute_seconds, "launch": self.launch_seconds,
                 "memory": self.memory_seconds}
        return max(parts, key=parts.__getitem__)


def floor_seconds(flops: float, matrix_rate: float, kernels: int, launch_seconds: float,
                  traffic: float = 0.0, bandwidth: float | None = None) -> Floor:
    """The largest of the compute-, launch- and memory-bound times of one iteration."""
    if (matrix_rate <= 0 or launch_seconds < 0 or flops < 0 or kernels < 0 or traffic < 0
            or (bandwidth is not None and bandwidth <= 0)):
        raise ValueError("rates must be positive and counts non-negative")
    return Floor(compute_seconds=flops / matrix_rate, launch_seconds=kernels * launch_seconds,
                 memory_seconds=traffic / bandwidth if bandwidth else 0.0)
