"""The DIP optimisation loop: fit a fresh network to one noisy tile.

Reference behaviour (DESIGN §2): fixed input z ~ U[0,1) x 0.1 with 32 channels, Adam
(lr 0.01) over the network weights, MSE against the noisy tile, output of the last
iteration. ``reg_noise_std`` and an output EMA are the original DIP's options, off by
default as in AUTO-DIP.

Stabilisation (issue 14, ``bench/README.md``): the last iterate of an Adam fit lands at a
random point of an oscillation, and Adam now and then throws the fit into a loss spike
that takes tens of iterations to recover. ``average_fraction`` returns the mean output of
the last part of the fit instead of the last output, leaving out iterations whose loss
spiked (``spike_factor``); ``rollback`` restores the weights of the last healthy check
after a spike, as the original DIP code's backtracking does. ``extend_fraction`` lets a
fit run past the transferred count while its residual says it has not yet reached the
noise (the discrepancy principle, ``discrepancy.py``). With all of them off (the
defaults) the loop is the paper's, operation for operation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .network import INPUT_CHANNELS, INPUT_NOISE_SCALE, DipParams, SkipNet
from .discrepancy import DiscrepancyStop
from .options import FitOptions
from .tiling import crop_padded, pad_for_depth

#: progress(iteration, total) after each iteration.
ProgressCallback = Callable[[int, int], None]
#: snapshot(iteration, output) with the (cropped, 2-D, [0,1]) output tensor of that iteration.
SnapshotCallback = Callable[[int, torch.Tensor], None]

#: A loss is a spike when it exceeds ``spike_factor`` times the lowest loss of this many
#: iterations before it: long enough to span Adam's normal oscillation, short enough to
#: follow the loss as it falls.
SPIKE_REFERENCE_ITERATIONS = 20
#: Rollback decides (one host sync) every this many iterations: on a GPU a sync per
#: iteration would cost more than the small networks' iterations themselves.
ROLLBACK_CHECK_EVERY = 5

#: Eager iterations before a CUDA graph of the step is captured. They create what must
#: not be allocated during capture (Adam's state, cuDNN workspaces, autograd buffers);
#: they are real iterations of the fit. Three, as in PyTorch's whole-network example.
GRAPH_WARMUP_ITERATIONS = 3


@dataclass
class FitResult:
    output: np.ndarray  # float32, same shape as the input tile, in [0, 1]
    losses: np.ndarray  # MSE per iteration
    seconds: float
    padded_shape: tuple[int, int] = field(default=(0, 0))
    rollbacks: int = 0  # how often ``rollback`` restored this network's weights
    #: With ``stops``: iteration -> the averaged output had the fit stopped there.
    stopped: dict[int, np.ndarray] = field(default_factory=dict)
    #: The iteration the output was taken at: the transferred count, or later where the
    #: fit was extended (``FitOptions.extend_fraction``).
    iterations: int = 0


def make_input(shape: tuple[int, int], generator: torch.Generator,
               channels: int = INPUT_CHANNELS) -> torch.Tensor:
    """The fixed DIP input z: uniform [0, 1) scaled by 0.1."""
    return torch.rand((1, channels, *shape), generator=generator) * INPUT_NOISE_SCALE


def build_network(params: DipParams, seed: int) -> tuple[SkipNet, torch.Generator]:
    """A freshly initialised network and the generator that drew it, both from ``seed``.

    The global RNG is forked so that fitting never disturbs (or depends on) the
    caller's random state.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = SkipNet(params.depth, params.width, params.skip)
    generator = torch.Generator().manual_seed(seed)
    return net, generator


def fit_tile(noisy: np.ndarray, params: DipParams, device: torch.device | str = "cpu",
             options: FitOptions = FitOptions(), progress: ProgressCallback | None = None,
             snapshot: SnapshotCallback | None = None,
             snapshot_every: int = 0) -> FitResult:
    """Fit DIP to a 2-D tile with values in [0, 1] and return the denoised tile.

    The tile is reflect-padded to a size the network runs on and cropped back.
    ``snapshot(i, out)`` is called every ``snapshot_every`` iterations (calibration
    scores the same run at several stopping points).
    """
    wrapped = None
    if snapshot is not None:
        def wrapped(iteration: int, outputs: torch.Tensor) -> None:
            snapshot(iteration, outputs[0])
    return fit_tiles([noisy], params, device, [options], progress, wrapped, snapshot_every)[0]


def fit_tiles(tiles: list[np.ndarray], params: DipParams, device: torch.device | str = "cpu",
              options: list[FitOptions] | None = None,
              progress: ProgressCallback | None = None,
              snapshot: Callable[[int, torch.Tensor], None] | None = None,
              snapshot_every: int = 0,
              dtype: torch.dtype = torch.float32,
              stops: Sequence[int] = (),
              noise_variances: Sequence[float | None] | None = None) -> list[FitResult]:
    """Fit K independent networks, one per tile, in one batched optimisation.

    ``tiles``: K 2-D float arrays in [0, 1]; ``params.iterations`` is the transferred
    count N. Returns K :class:`FitResult`, outputs float32 in [0, 1] of each tile's shape.

    ``noise_variances``: per tile, the variance of its noise on the tile's [0, 1] scale,
    or None where unknown. With ``extend_fraction`` > 0 each network may go on past N
    (``discrepancy.py``); its output is taken where it stops (``FitResult.iterations``).
    Progress then counts to the latest possible stop, and ends with (stop, stop).

    ``stops``: with ``average_fraction`` > 0, also the averaged output as if the fit had
    been stopped at each of these iterations (the mean over the last ``average_fraction``
    of *those* iterations), in ``FitResult.stopped``: calibration scores one run at many
    stopping points. Each must be in 1..N (ValueError otherwise, before any iteration).

    The K networks are stacked into one grouped network (``SkipNet.stack``): each keeps
    its own weights, BatchNorm statistics and Adam moments, and the loss is the sum of
    the K MSEs, so each gradient is that network's own. Each result therefore equals
    fitting that tile alone with the same seed, up to floating-point rounding (with
    ``reg_noise_std`` > 0 the noise draws differ). All tiles must pad to the same shape.
    ``snapshot(i, outputs)`` gets the (K, H, W) outputs of iteration i. ``dtype``
    float64 is for reference checks: in float32, Adam amplifies rounding in the
    near-zero gradients of conv biases before BatchNorm, so batched and single
    trajectories drift apart by a few percent while staying equally good.

    With ``cuda_graphs`` the first ``GRAPH_WARMUP_ITERATIONS`` run eagerly and the step
    is then captured once and replayed. The fit is the same up to rounding: the graph
    needs Adam's ``capturable`` form, which computes its bias corrections in tensors of
    torch's default dtype instead of Python floats (in float32 that grows, like any
    rounding difference here, to percents within the first iterations; the fits stay
    equally good). ``reg_noise_std`` noise is drawn inside the graph from the fit's own
    seeded generator, registered with the graph, so the draws follow the eager sequence.
    """
    device = torch.device(device)
    started = time.perf_counter()
    options, shared = _batch_options(tiles, options, device)
    # Against N, not the extension's limit: a fit may stop at any candidate from N on,
    # so a stop past N might never be reached (found only after the whole fit).
    _check_stops(stops, params.iterations)
    padded_tiles, originals = zip(*(pad_for_depth(np.asarray(t, dtype=np.float32), params.depth)
                                    for t in tiles))
    if len({p.shape for p in padded_tiles}) != 1:
        raise ValueError("batched tiles must pad to the same shape")
    shape = padded_tiles[0].shape
    net, z = _stacked_network(params, options, shape, device, dtype)
    forward = torch.compile(net) if shared.compile else net
    target = torch.from_numpy(np.stack(padded_tiles))[None].to(device=device, dtype=dtype)
    # capturable: Adam's step counts live on the GPU, so that a graph replay advances them.
    optimiser = torch.optim.Adam(net.parameters(), lr=shared.learning_rate,
                                 capturable=shared.cuda_graphs)
    noise = torch.empty_like(z) if shared.reg_noise_std > 0 else None
    noise_generator = (torch.Generator(device=device).manual_seed(shared.seed + 1)
                       if noise is not None else None)

    def step() -> tuple[torch.Tensor, torch.Tensor]:
        return training_step(forward, optimiser, z, target, noise, noise_generator, shared,
                             device)

    run_step = _GraphedStep(step, optimiser, noise_generator) if shared.cuda_graphs else step
    extension, stabiliser = _late_iterations(shared, params.iterations, net, len(tiles), stops,
                                             noise_variances)
    final, stopped, all_losses, ends = _optimise(
        run_step, params.iterations, shared, device, dtype, len(tiles), stabiliser, extension,
        originals, stops, progress, snapshot, snapshot_every)
    seconds = time.perf_counter() - started
    rollbacks = stabiliser.rollbacks if stabiliser is not None else [0] * len(tiles)
    return [FitResult(output=np.clip(crop_padded(final[k], originals[k]), 0.0, 1.0),
                      losses=all_losses[:ends[k], k], seconds=seconds, padded_shape=shape,
                      rollbacks=rollbacks[k], iterations=ends[k],
                      stopped={stop: np.clip(crop_padded(frames[k], originals[k]), 0.0, 1.0)
                               for stop, frames in stopped.items()})
            for k in range(len(tiles))]


def _check_stops(stops: Sequence[int], iterations: int) -> None:
    """Extra stops score the transferred fit, never its extension: refused up front."""
    for stop in stops:
        if not 1 <= int(stop) <= iterations:
            raise ValueError(f"stop {stop} is outside 1..{iterations}")


def _late_iterations(shared: FitOptions, iterations: int, net: torch.nn.Module, count: int,
                     stops: Sequence[int], noise_variances: Sequence[float | None] | None
                     ) -> tuple[DiscrepancyStop | None, _Stabiliser | None]:
    """What decides the end of a fit and its output there: the extension past N (None:
    stops at N) and the stabiliser (None: the paper's last iterate)."""
    extension = DiscrepancyStop.plan(shared, iterations, noise_variances, count)
    if not _stabilised(shared) and extension is None:
        return None, None
    limit = extension.limit if extension is not None else iterations
    candidates = extension.candidates if extension is not None else ()
    return extension, _Stabiliser(shared, limit, net, count, [*stops, *candidates])


def _batch_options(tiles: list[np.ndarray], options: list[FitOptions] | None,
                   device: torch.device) -> tuple[list[FitOptions], FitOptions]:
    """One option per tile (default: seeds 0..K-1), checked to differ only in the seed;
    and the options they share."""
    count = len(tiles)
    options = list(options) if options is not None else [FitOptions(seed=i) for i in range(count)]
    if len(options) != count or count == 0:
        raise ValueError("need one FitOptions per tile, and at least one tile")
    shared = options[0]
    if any(dataclasses.replace(o, seed=0) != dataclasses.replace(shared, seed=0) for o in options):
        raise ValueError("batched tiles must share every option but the seed (learning rate, "
                         "reg_noise_std, ema_weight, speed settings)")
    if shared.cuda_graphs and device.type != "cuda":
        raise ValueError(f"cuda_graphs needs a CUDA device, not {device.type!r}")
    return options, shared


def _stacked_network(params: DipParams, options: list[FitOptions], shape: tuple[int, int],
                     device: torch.device, dtype: torch.dtype
                     ) -> tuple[torch.nn.Module, torch.Tensor]:
    """The K networks (one per option's seed) as one grouped network on ``device``, and
    their fixed inputs z concatenated on the channel axis."""
    nets, inputs = [], []
    for option in options:
        net, generator = build_network(params, option.seed)
        nets.append(net)
        inputs.append(make_input(shape, generator))
    net = nets[0] if len(nets) == 1 else SkipNet.stack(nets, params.depth, params.width,
                                                        params.skip)
    net = net.to(device=device, dtype=dtype)
    net.train()  # BatchNorm uses the statistics of this one image, always
    z = torch.cat(inputs, dim=1).to(device=device, dtype=dtype)
    if options[0].channels_last:
        net = net.to(memory_format=torch.channels_last)
        z = z.contiguous(memory_format=torch.channels_last)
    return net, z


def _optimise(run_step: Callable[[], tuple[torch.Tensor, torch.Tensor]], iterations: int,
              shared: FitOptions, device: torch.device, dtype: torch.dtype, count: int,
              stabiliser: _Stabiliser | None, extension: DiscrepancyStop | None, originals,
              stops: Sequence[int], progress: ProgressCallback | None,
              snapshot: Callable[[int, torch.Tensor], None] | None, snapshot_every: int
              ) -> tuple[np.ndarray, dict[int, np.ndarray], np.ndarray, list[int]]:
    """The iterations of a fit: ``(final outputs (K, H, W), outputs at each stop,
    losses (iterations run, K), the iteration each network's output is taken at)``, all
    on the host. ``iterations`` is the transferred count; an ``extension`` may go on."""
    limit = extension.limit if extension is not None else iterations
    losses = torch.zeros(limit, count, device=device, dtype=dtype)
    ema: torch.Tensor | None = None
    output = None
    ran = 0
    with _side_stream(device, shared.cuda_graphs):
        for iteration in range(1, limit + 1):
            output, per_network = run_step()
            # Losses stay on the device: a .item() per iteration would sync the GPU.
            losses[iteration - 1] = per_network
            current = output.detach()
            if shared.ema_weight is not None:
                weight = shared.ema_weight
                # clone: a graphed step's output is overwritten by the next replay.
                ema = current.clone() if ema is None else ema * weight + current * (1 - weight)
                current = ema
            if stabiliser is not None:
                stabiliser.observe(iteration, current[0], per_network, losses)
            if snapshot is not None and snapshot_every and iteration % snapshot_every == 0:
                frame = current[0].clone() if shared.cuda_graphs else current[0]
                snapshot(iteration, _crop_each(frame, originals))
            if progress is not None:
                progress(iteration, limit)
            ran = iteration
            if extension is not None and extension.decide(iteration, losses):
                break
        if progress is not None and ran < limit:  # stopped before the limit: done
            progress(ran, ran)
        ends = extension.stops if extension is not None else [iterations] * count
        if extension is not None or (stabiliser is not None and stabiliser.averaging):
            # network k's output is the window mean at its own stop; one mean per stop
            means = {end: stabiliser.mean(end) for end in set(ends)}
            final = torch.stack([means[end][k] for k, end in enumerate(ends)])
            final = final.float().cpu().numpy()
            stopped = {stop: stabiliser.mean(stop).float().cpu().numpy() for stop in stops}
        else:
            final = (ema if ema is not None else output.detach())[0].float().cpu().numpy()
            stopped = {}
        return final, stopped, losses[:ran].cpu().numpy(), ends


def training_step(forward, optimiser, z, target, noise, noise_generator,
                  options: FitOptions, device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step: this iteration's output (before the update) and the MSE of
    each network. Pure device work, no host sync, so that it can be captured in a graph."""
    optimiser.zero_grad(set_to_none=True)
    net_input = z
    if noise is not None:
        noise.normal_(generator=noise_generator)
        net_input = z + noise * options.reg_noise_std
    if options.bf16:
        # No cast cache under a graph (PyTorch's advice for autocast with CUDA graphs);
        # each weight is cast once per forward here anyway, so it costs nothing.
        with torch.autocast(device.type, dtype=torch.bfloat16,
                            cache_enabled=not options.cuda_graphs):
            output = forward(net_input)
        output = output.float()
    else:
        output = forward(net_input)
    per_network = ((output - target) ** 2).mean(dim=(0, 2, 3))
    per_network.sum().backward()
    optimiser.step()
    return output, per_network.detach()


def _stabilised(options: FitOptions) -> bool:
    return options.average_fraction > 0 or options.spike_factor is not None


class _Stabiliser:
    """Late-window averaging, spike detection and rollback for K stacked networks.

    Everything per iteration stays on the device (no host sync): a spike is a loss above
    ``spike_factor`` x the lowest loss of the ``SPIKE_REFERENCE_ITERATIONS`` before it,
    judged per network. Each averaging window (the last ``average_fraction`` of the fit,
    and of every extra stopping point in ``stops``) keeps a running sum of its healthy
    outputs. Rollback syncs once every ``ROLLBACK_CHECK_EVERY`` iterations: a network
    with a spike since the last check gets the weights of its last verified checkpoint
    back; otherwise the weights saved at the last check, whose losses are now all known
    to be healthy, become its checkpoint. Stacked networks are concatenated along dim 0
    of every parameter (``SkipNet.stack``), so network k's weights are block k of each.
    """

    def __init__(self, options: FitOptions, iterations: int, net: torch.nn.Module,
                 count: int, stops: Sequence[int] = ()) -> None:
        self.factor = options.spike_factor
        self.count = count
        self.averaging = options.average_fraction > 0
        #: stop -> first iteration of its window; sums and kept counts per stop. An
        #: extended fit without averaging keeps windows of one iteration: its outputs at
        #: the candidate stops.
        self.windows: dict[int, int] = {}
        if self.averaging or options.extend_fraction > 0:
            # stops are checked by fit_tiles (_check_stops); candidates lie in N..limit
            for stop in {iterations, *(int(s) for s in stops)}:
                width = max(1, int(round(options.average_fraction * stop)))
                self.windows[stop] = stop - width + 1
        self.sums: dict[int, torch.Tensor] = {}
        self.kept: dict[int, torch.Tensor] = {}
        self.last: dict[int, torch.Tensor] = {}
        self.unhealthy: torch.Tensor | None = None
        self.rollbacks = [0] * count
        self.parameters = list(net.parameters()) if options.rollback else []
        self.checkpoint = [p.detach().clone() for p in self.parameters]
        self.candidate = [p.detach().clone() for p in self.parameters]

    def healthy(self, iteration: int, per_network: torch.Tensor,
                losses: torch.Tensor) -> torch.Tensor | None:
        """Per network, whether this iteration's loss is not a spike (None: no rule)."""
        if self.factor is None or iteration == 1:
            return None
        first = max(0, iteration - 1 - SPIKE_REFERENCE_ITERATIONS)
        reference = losses[first:iteration - 1].amin(dim=0)
        return per_network <= reference * self.factor

    def observe(self, iteration: int, outputs: torch.Tensor, per_network: torch.Tensor,
                losses: torch.Tensor) -> None:
        """Account for iteration ``iteration``: its (K, H, W) outputs and K losses."""
        ok = self.healthy(iteration, per_network, losses)
        weight = None
        for stop, first in self.windows.items():
            if not first <= iteration <= stop:
                continue
            if weight is None:
                weight = torch.ones_like(per_network) if ok is None else ok.to(outputs.dtype)
                contribution = outputs * weight.view(-1, 1, 1)
            self.sums[stop] = (contribution.clone() if stop not in self.sums
                               else self.sums[stop] + contribution)
            self.kept[stop] = (weight.clone() if stop not in self.kept
                               else self.kept[stop] + weight)
            if iteration == stop:  # clone: a graphed step's output is overwritten later
                self.last[stop] = outputs.clone()
        if self.parameters and ok is not None:
            self.unhealthy = ~ok if self.unhealthy is None else self.unhealthy | ~ok
            if iteration % ROLLBACK_CHECK_EVERY == 0:
                self._check()

    @torch.no_grad()
    def _check(self) -> None:
        spiked = self.unhealthy.cpu().tolist()  # the one host sync per check
        self.unhealthy = None
        k = self.count
        for p, checkpoint, candidate in zip(self.parameters, self.checkpoint, self.candidate):
            blocks, saved, pending = (p.unflatten(0, (k, -1)), checkpoint.unflatten(0, (k, -1)),
                                      candidate.unflatten(0, (k, -1)))
            for network, bad in enumerate(spiked):
                if bad:
                    blocks[network].copy_(saved[network])
                else:
                    saved[network].copy_(pending[network])
            pending.copy_(blocks)
        for network, bad in enumerate(spiked):
            self.rollbacks[network] += int(bad)

    def mean(self, stop: int) -> torch.Tensor:
        """(K, H, W): the mean kept output of the window ending at ``stop``; a network
        that kept none (every iteration of its window spiked) gives its output at ``stop``."""
        kept = self.kept[stop].view(-1, 1, 1)
        return torch.where(kept > 0, self.sums[stop] / kept.clamp(min=1), self.last[stop])


class _GraphedStep:
    """The training step, run eagerly for the warm-up iterations, then captured once into a
    CUDA graph and replayed; returns the graph's static output and losses after a replay.

    Capture records kernels without running them, so the capturing call replays at once:
    every call is exactly one optimisation step, as in the eager loop.
    """

    def __init__(self, step: Callable[[], tuple[torch.Tensor, torch.Tensor]],
                 optimiser: torch.optim.Optimizer,
                 noise_generator: torch.Generator | None) -> None:
        self.step = step
        self.optimiser = optimiser
        self.noise_generator = noise_generator
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        if self.calls <= GRAPH_WARMUP_ITERATIONS:
            return self.step()
        if self.graph is None:
            self.graph = torch.cuda.CUDAGraph()
            if self.noise_generator is not None:
                # A generator other than the default must be registered to be graph-safe:
                # each replay then advances its offset as an eager draw would.
                self.graph.register_generator_state(self.noise_generator)
            # No gradients at capture: backward then allocates them in the graph's own
            # memory, where every replay writes them again.
            self.optimiser.zero_grad(set_to_none=True)
            # thread_local: the daemon's other jobs (threads reading pages, freeing
            # cached memory after an error) may call CUDA while this thread captures;
            # only this thread's calls must be capture-safe.
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.static = self.step()
        self.graph.replay()
        return self.static


@contextlib.contextmanager
def _side_stream(device: torch.device, enabled: bool):
    """Run a graphed fit on a side stream: warm-up before capture must not run on the
    default stream, and one stream for the whole loop keeps every read of the graph's
    outputs ordered after its replay."""
    if not enabled:
        yield
        return
    outer = torch.cuda.current_stream(device)
    stream = torch.cuda.Stream(device)
    stream.wait_stream(outer)
    try:
        with torch.cuda.stream(stream):
            yield
    finally:
        outer.wait_stream(stream)


def _crop_each(outputs: torch.Tensor, originals) -> torch.Tensor:
    """Crop (K, H, W) padded outputs back; tiles of one batch share their original shape
    only if they had it, so crop each and stack when possible."""
    cropped = [crop_padded(outputs[k], original) for k, original in enumerate(originals)]
    if len({tuple(c.shape) for c in cropped}) == 1:
        return torch.stack(cropped)
    return cropped  # type: ignore[return-value]
