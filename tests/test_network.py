"""The skip network is the DIP reference network, layer by layer (DESIGN §2)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autodip_watch.dip.network import (BASELINE, DipParams, SkipNet, level_channels,
                                       min_plane_side, normalise_width)


def expected_parameter_count(depth: int, width: str | int, skip: int, in_ch: int = 32) -> int:
    """Count weights from the layer definition in DESIGN §2, independently of the code."""
    channels = level_channels(depth, width)
    total = 0
    for i in range(depth):
        c_in = in_ch if i == 0 else channels[i - 1]
        down = up = channels[i]
        deeper_out = channels[i] if i == depth - 1 else channels[i + 1]
        if skip:
            total += c_in * skip + skip + 2 * skip          # 1x1 conv + BN
        total += c_in * down * 9 + down + 2 * down          # 3x3 stride-2 conv + BN
        total += down * down * 9 + down + 2 * down          # 3x3 conv + BN
        merged = skip + deeper_out
        total += 2 * merged                                  # BN after concat
        total += merged * up * 9 + up + 2 * up              # 3x3 conv + BN
        total += up * up + up + 2 * up                      # 1x1 conv + BN (need1x1_up)
    total += channels[0] * 1 + 1                             # final 1x1 conv to one channel
    return total


@pytest.mark.parametrize("depth,width,skip", [
    (5, "128", 4), (4, "32", 4), (4, "64", 0), (8, "asc", 4), (6, "asc", 4),
    (7, "128", 4), (8, "32", 4), (4, "16", 0), (5, "asc", 0), (8, "512", 4),
])
def test_parameter_counts_match_layer_definition(depth, width, skip):
    net = SkipNet(depth, width, skip)
    assert sum(p.numel() for p in net.parameters()) == expected_parameter_count(depth, width, skip)


def test_baseline_parameter_count_is_known_value():
    # d5/w128/s4 computed by hand once, so that a change in the counting helper is caught too.
    assert sum(p.numel() for p in SkipNet(5, 128, 4).parameters()) == 2_217_573


def test_asc_widths():
    assert level_channels(5, "asc") == [32, 64, 128, 256, 512]
    assert level_channels(8, "asc_to512") == [4, 8, 16, 32, 64, 128, 256, 512]
    assert level_channels(4, "v512") == [64, 128, 256, 512]
    assert normalise_width(256) == "256"
    with pytest.raises(ValueError):
        normalise_width(48)


def test_params_validation():
    with pytest.raises(ValueError, match="depth"):
        DipParams(3, "32", 4, 10)
    with pytest.raises(ValueError, match="skip"):
        DipParams(4, "32", 2, 10)
    with pytest.raises(ValueError, match="iterations"):
        DipParams(4, "32", 4, 0)
    assert BASELINE == DipParams(5, "128", 4, 1800)


def _types(module: nn.Module) -> list[str]:
    return [type(m).__name__ for m in module.modules() if not list(m.children())]


def test_level_layer_order_with_skip():
    net = SkipNet(4, 16, 4)
    level0 = net.levels
    assert _types(level0.skip) == ["Conv2d", "BatchNorm2d", "LeakyReLU"]
    assert level0.skip[0][0].kernel_size == (1, 1)
    deeper = list(level0.deeper.children())
    # 3x3 stride-2 conv (reflection padded) -> BN -> act -> 3x3 conv -> BN -> act -> inner -> upsample
    assert isinstance(deeper[0][0], nn.ReflectionPad2d) and deeper[0][1].stride == (2, 2)
    assert [type(m).__name__ for m in deeper[1:3]] == ["BatchNorm2d", "LeakyReLU"]
    assert isinstance(deeper[3][0], nn.ReflectionPad2d) and deeper[3][1].stride == (1, 1)
    assert type(deeper[-2]).__name__ == "_Level"
    assert isinstance(deeper[-1], nn.Upsample) and deeper[-1].mode == "bilinear"
    assert deeper[-1].scale_factor == 2
    merge = _types(level0.merge)
    assert merge == ["BatchNorm2d", "ReflectionPad2d", "Conv2d", "BatchNorm2d", "LeakyReLU",
                     "Conv2d", "BatchNorm2d", "LeakyReLU"]
    assert level0.merge[0].num_features == 4 + 16
    assert all(m.negative_slope == 0.2 for m in net.modules() if isinstance(m, nn.LeakyReLU))
    assert all(m.bias is not None for m in net.modules() if isinstance(m, nn.Conv2d))
    assert isinstance(net.head[-1], nn.Sigmoid)


def test_no_skip_means_no_concat():
    net = SkipNet(4, 16, 0)
    assert net.levels.skip is None
    assert net.levels.merge[0].num_features == 16


def test_deepest_level_upsamples_its_own_output():
    net = SkipNet(4, "asc", 4)  # 64,128,256,512
    deepest = net.levels.deeper[-2].deeper[-2].deeper[-2]
    assert not any(type(m).__name__ == "_Level" for m in deepest.deeper)
    assert deepest.merge[0].num_features == 4 + 512


@pytest.mark.parametrize("depth", [4, 5, 6, 7, 8])
def test_smallest_plane_per_depth_runs_and_one_smaller_fails(depth):
    side = min_plane_side(depth)
    net = SkipNet(depth, 16, 4).train()
    z = torch.rand(1, 32, side, side) * 0.1
    out = net(z).detach()
    assert out.shape == (1, 1, side, side)
    assert float(out.min()) > 0 and float(out.max()) < 1  # sigmoid output
    with pytest.raises((ValueError, RuntimeError)):
        net(torch.rand(1, 32, side // 2, side // 2) * 0.1)


def test_depth8_reference_failure_at_256():
    """DESIGN §2: the reference raises at depth 8 on 256x256 (1x1 deepest map)."""
    net = SkipNet(8, 32, 4).train()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        net(torch.rand(1, 32, 256, 256) * 0.1)
