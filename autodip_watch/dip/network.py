"""The Deep Image Prior "skip" encoder-decoder, as AUTO-DIP parameterises it.

The layer order follows the original DIP ``skip`` model exactly (DESIGN §2), because
the calibration table is only meaningful for that network: a different layer order
would need a different calibration.
"""

from __future__ import annotations


import torch
from torch import nn

from .params import (BASELINE, DEPTHS, INPUT_CHANNELS, INPUT_NOISE_SCALE, LEAKY_SLOPE,  # noqa: F401
                     SKIPS, WIDTHS, DipParams, level_channels, normalise_width)


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1,
          networks: int = 1) -> nn.Sequential:
    """Conv with bias; 3x3 convs use reflection padding as in the reference.

    With ``networks`` > 1 the conv is grouped: K independent convs in one kernel.
    """
    layers: list[nn.Module] = []
    pad = (kernel - 1) // 2
    if pad:
        layers.append(nn.ReflectionPad2d(pad))
    layers.append(nn.Conv2d(in_ch * networks, out_ch * networks, kernel, stride=stride,
                            padding=0, bias=True, groups=networks))
    return nn.Sequential(*layers)


def _bn_act(channels: int, networks: int = 1) -> list[nn.Module]:
    # BatchNorm statistics are per channel, so K stacked networks keep their own.
    return [nn.BatchNorm2d(channels * networks), nn.LeakyReLU(LEAKY_SLOPE, inplace=True)]


class _Level(nn.Module):
    """One U-net level: optional skip branch, deeper branch, merge and up convs."""

    def __init__(self, in_ch: int, down: int, up: int, skip: int, deeper_out: int,
                 inner: nn.Module | None, networks: int = 1) -> None:
        super().__init__()
        k = networks
        self.networks = k
        self.skip_channels = skip
        self.deeper_channels = deeper_out
        self.skip = (nn.Sequential(_conv(in_ch, skip, 1, networks=k), *_bn_act(skip, k))
                     if skip > 0 else None)
        deeper: list[nn.Module] = [
            _conv(in_ch, down, 3, stride=2, networks=k), *_bn_act(down, k),
            _conv(down, down, 3, networks=k), *_bn_act(down, k),
        ]
        if inner is not None:
            deeper.append(inner)
        deeper.append(nn.Upsample(scale_factor=2, mode="bilinear"))
        self.deeper = nn.Sequential(*deeper)
        merged = skip + deeper_out
        self.merge = nn.Sequential(
            nn.BatchNorm2d(merged * k),
            _conv(merged, up, 3, networks=k), *_bn_act(up, k),
            _conv(up, up, 1, networks=k), *_bn_act(up, k),  # need1x1_up
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deep = self.deeper(x)
        if self.skip is not None:
            skipped = self.skip(x)
            if self.networks == 1:
                deep = torch.cat([skipped, deep], dim=1)
            else:
                # Concatenate per network, keeping each network's channels together.
                n, _, h, w = deep.shape
                deep = torch.cat([skipped.view(n, self.networks, self.skip_channels, h, w),
                                  deep.view(n, self.networks, self.deeper_channels, h, w)],
                                 dim=2).view(n, -1, h, w)
        return self.merge(deep)


class SkipNet(nn.Module):
    """DIP skip network of ``depth`` levels, width per level, ``skip`` channels per skip.

    Input: ``(N, 32, H, W)`` with H and W divisible by ``2**depth``; output
    ``(N, out_channels, H, W)`` in (0, 1) through a sigmoid.

    ``networks=K`` builds K independent copies in one module (grouped convolutions,
    per-network BatchNorm channels): input ``(N, K*32, H, W)``, output
    ``(N, K*out_channels, H, W)``. Used to fit many planes of one configuration at once.
    """

    def __init__(self, depth: int, width: int | str, skip: int,
                 in_channels: int = INPUT_CHANNELS, out_channels: int = 1,
                 networks: int = 1) -> None:
        super().__init__()
        channels = level_channels(depth, width)
        self.depth = depth
        self.networks = networks
        inner: nn.Module | None = None
        # Built from the deepest level outwards so each level can wrap the next.
        for i in reversed(range(depth)):
            level_in = in_channels if i == 0 else channels[i - 1]
            deeper_out = channels[i] if i == depth - 1 else channels[i + 1]
            inner = _Level(level_in, channels[i], channels[i], skip, deeper_out, inner,
                           networks)
        self.levels = inner
        self.head = nn.Sequential(_conv(channels[0], out_channels, 1, networks=networks),
                                  nn.Sigmoid())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.levels(z))

    @classmethod
    def stack(cls, nets: list["SkipNet"], depth: int, width: int | str,
              skip: int) -> "SkipNet":
        """One grouped network holding ``nets`` (same configuration), weights copied."""
        stacked = cls(depth, width, skip, networks=len(nets))
        states = [net.state_dict() for net in nets]
        merged = {}
        for name, value in stacked.state_dict().items():
            if value.ndim == 0:  # num_batches_tracked
                merged[name] = states[0][name]
            else:
                merged[name] = torch.cat([state[name] for state in states], dim=0)
        stacked.load_state_dict(merged)
        return stacked


def min_plane_side(depth: int) -> int:
    """Smallest side a depth-``depth`` network runs on.

    The deepest feature map is side / 2**depth; its 3x3 reflection padding needs at
    least 2 values per side (and BatchNorm more than one value per channel).
    """
    return 2 ** (depth + 1)
