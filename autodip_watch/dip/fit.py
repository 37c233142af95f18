"""The DIP optimisation loop: fit a fresh network to one noisy tile.

Reference behaviour (DESIGN §2): fixed input z ~ U[0,1) x 0.1 with 32 channels, Adam
(lr 0.01) over the network weights, MSE against the noisy tile, output of the last
iteration. ``reg_noise_std`` and an output EMA are the original DIP's options, off by
default as in AUTO-DIP.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .network import INPUT_CHANNELS, INPUT_NOISE_SCALE, DipParams, SkipNet
from .tiling import crop_padded, pad_for_depth

#: progress(iteration, total) after each iteration.
ProgressCallback = Callable[[int, int], None]
#: snapshot(iteration, output) with the (cropped, 2-D, [0,1]) output tensor of that iteration.
SnapshotCallback = Callable[[int, torch.Tensor], None]


@dataclass(frozen=True)
class FitOptions:
    """Optimisation settings that are not part of the calibrated configuration."""

    seed: int = 0
    learning_rate: float = 0.01
    reg_noise_std: float = 0.0
    ema_weight: float | None = None  # e.g. 0.99 in the original DIP; None = off

    def __post_init__(self) -> None:
        if self.learning_rate <= 0:
            raise ValueError("learning_rate must be positive")
        if self.reg_noise_std < 0:
            raise ValueError("reg_noise_std must be >= 0")
        if self.ema_weight is not None and not 0.0 <= self.ema_weight < 1.0:
            raise ValueError("ema_weight must be in [0, 1)")


@dataclass
class FitResult:
    output: np.ndarray  # float32, same shape as the input tile, in [0, 1]
    losses: np.ndarray  # MSE per iteration
    seconds: float
    padded_shape: tuple[int, int] = field(default=(0, 0))


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
    device = torch.device(device)
    started = time.perf_counter()
    padded, original = pad_for_depth(np.asarray(noisy, dtype=np.float32), params.depth)
    net, generator = build_network(params, options.seed)
    net = net.to(device)
    net.train()  # BatchNorm uses the statistics of this one image, always
    z = make_input(padded.shape, generator).to(device)
    target = torch.from_numpy(np.ascontiguousarray(padded))[None, None].to(device)
    optimiser = torch.optim.Adam(net.parameters(), lr=options.learning_rate)
    loss_fn = torch.nn.MSELoss()
    losses = torch.zeros(params.iterations, device=device)
    ema: torch.Tensor | None = None
    noise = torch.empty_like(z) if options.reg_noise_std > 0 else None
    noise_generator = (torch.Generator(device=device).manual_seed(options.seed + 1)
                       if noise is not None else None)
    output = None
    for iteration in range(1, params.iterations + 1):
        optimiser.zero_grad(set_to_none=True)
        net_input = z
        if noise is not None:
            noise.normal_(generator=noise_generator)
            net_input = z + noise * options.reg_noise_std
        output = net(net_input)
        loss = loss_fn(output, target)
        loss.backward()
        optimiser.step()
        # Losses stay on the device: a .item() per iteration would sync the GPU.
        losses[iteration - 1] = loss.detach()
        current = output.detach()
        if options.ema_weight is not None:
            ema = current if ema is None else ema * options.ema_weight + current * (1 - options.ema_weight)
            current = ema
        if snapshot is not None and snapshot_every and iteration % snapshot_every == 0:
            snapshot(iteration, crop_padded(current[0, 0], original))
        if progress is not None:
            progress(iteration, params.iterations)
    final = ema if ema is not None else output.detach()
    result = crop_padded(final[0, 0], original).float().cpu().numpy()
    return FitResult(output=np.clip(result, 0.0, 1.0), losses=losses.cpu().numpy(),
                     seconds=time.perf_counter() - started, padded_shape=padded.shape)
