"""The floor of an iteration's time (issue 7): counted FLOPs, kernel count, measured rates.

Counts run on the meta device, so even the large configurations are instant; the rate
measurements run small on the CPU (their GPU numbers come from ``bench/speed.py``).
``cost.py`` lives beside the benchmarks that use it (``bench/``).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from autodip_watch.dip.fit import training_step
from autodip_watch.dip.network import DipParams, SkipNet
from autodip_watch.dip.options import FitOptions

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import cost  # noqa: E402

CONFIGS = [DipParams(4, "16", 4, 1), DipParams(5, "128", 4, 1), DipParams(8, "asc", 4, 1),
           DipParams(4, "64", 0, 1)]


@pytest.mark.parametrize("params", CONFIGS, ids=lambda p: p.label())
def test_forward_flops_are_twice_the_analytic_conv_macs(params):
    shape = (512, 512)
    macs = cost.forward_macs(cost.meta_network(params), shape)
    assert macs > 0
    assert cost.forward_flops(params, shape) == 2 * macs


@pytest.mark.parametrize("params", CONFIGS, ids=lambda p: p.label())
def test_iteration_flops_are_three_forwards_less_the_fixed_inputs_gradient(params):
    """Backward = input and weight gradients of every conv, one forward each, except
    the input gradients of the two level-0 convs that read the fixed z."""
    h = w = 512
    first_down = params.channels[0]
    z_convs = (h // 2) * (w // 2) * first_down * 32 * 9 + h * w * params.skip * 32
    forward = cost.forward_flops(params, (h, w))
    assert cost.iteration_flops(params, (h, w)) == 3 * forward - 2 * z_convs


def test_meta_counts_equal_a_real_cpu_step():
    params, shape = DipParams(4, "16", 4, 1), (64, 64)
    torch.manual_seed(0)
    net = SkipNet(4, "16", 4).train()
    optimiser = torch.optim.Adam(net.parameters(), lr=0.01)
    z, target = torch.rand(1, 32, *shape), torch.rand(1, 1, *shape)
    counter = cost.flop_counter()
    with counter:
        training_step(net, optimiser, z, target, None, None, FitOptions(), torch.device("cpu"))
    assert counter.get_total_flops() == cost.iteration_flops(params, shape)


@pytest.mark.slow
@pytest.mark.parametrize("params", CONFIGS[:3], ids=lambda p: p.label())
def test_flops_scale_linearly_with_stacked_networks(params):
    shape = (512, 512)
    single = cost.iteration_flops(params, shape)
    assert cost.iteration_flops(params, shape, networks=4) == 4 * single
    assert cost.forward_flops(params, shape, networks=4) == 4 * cost.forward_flops(params, shape)


def test_grouped_conv_backward_counts_one_forward_per_gradient():
    """torch's stock formula counts a grouped conv's weight gradient ``groups`` times."""
    conv = nn.Conv2d(8, 12, 3, groups=4, device="meta")
    x = torch.empty(2, 8, 16, 16, device="meta", requires_grad=True)
    forward = 2 * 2 * 14 * 14 * 12 * (8 // 4) * 9
    counter = cost.flop_counter()
    with counter:
        conv(x).sum().backward()
    assert counter.get_total_flops() == 3 * forward


@pytest.mark.slow
@pytest.mark.parametrize("params", [DipParams(4, "16", 4, 1), DipParams(8, "32", 4, 1)],
                         ids=lambda p: p.label())
def test_kernel_count_does_not_grow_with_stacked_networks(params):
    shape = (2 ** (params.depth + 1),) * 2
    single = cost.kernels_per_iteration(params, shape)
    convs = sum(isinstance(m, nn.Conv2d) for m in cost.meta_network(params).modules())
    # Each conv at least runs forward, backward, and Adam touches its weights.
    assert single > 2 * convs
    four = cost.kernels_per_iteration(params, shape, networks=4)
    assert cost.kernels_per_iteration(params, shape, networks=16) == four
    # Measured: the only extra ops are 2 copies per skip level, the gradients of the
    # per-network channel interleave of the concatenation (SkipNet with networks > 1).
    assert 0 <= four - single <= 2 * params.depth


def test_kernel_count_without_skips_is_the_same_for_any_stack():
    params = DipParams(4, "64", 0, 1)
    assert (cost.kernels_per_iteration(params, (64, 64))
            == cost.kernels_per_iteration(params, (64, 64), networks=8))


@pytest.mark.slow
def test_kernel_count_does_not_depend_on_the_plane_size():
    params = DipParams(5, "32", 4, 1)
    assert cost.kernels_per_iteration(params, (64, 64)) == cost.kernels_per_iteration(
        params, (512, 256))


def test_floor_is_the_larger_part():
    compute_bound = cost.floor_seconds(flops=1e12, matrix_rate=1e12, kernels=100,
                                       launch_seconds=1e-6)
    assert compute_bound.bound == "compute"
    assert compute_bound.seconds == pytest.approx(1.0)
    assert compute_bound.launch_seconds == pytest.approx(1e-4)
    launch_bound = cost.floor_seconds(flops=1e6, matrix_rate=1e12, kernels=500,
                                      launch_seconds=4e-6)
    assert launch_bound.bound == "launch"
    assert launch_bound.seconds == pytest.approx(2e-3)
    assert launch_bound.compute_seconds == pytest.approx(1e-6)
    memory_bound = cost.floor_seconds(flops=1e6, matrix_rate=1e12, kernels=10,
                                      launch_seconds=1e-6, traffic=3e9, bandwidth=1e12)
    assert memory_bound.bound == "memory"
    assert memory_bound.seconds == pytest.approx(3e-3)
    with pytest.raises(ValueError):
        cost.floor_seconds(flops=1.0, matrix_rate=0.0, kernels=1, launch_seconds=1e-6)


@pytest.mark.slow
def test_memory_traffic_scales_with_plane_and_stack_and_covers_saved_tensors():
    from autodip_watch.dip.batching import fit_memory_bytes

    params = DipParams(5, "32", 4, 1)
    single = cost.traffic_per_iteration(params, (128, 128))
    assert cost.traffic_per_iteration(params, (256, 256)) == pytest.approx(4 * single, rel=0.1)
    assert cost.traffic_per_iteration(params, (128, 128), networks=4) == pytest.approx(
        4 * single, rel=0.1)
    # Every tensor saved for the backward pass is written once and read once at least.
    assert single > fit_memory_bytes(params, (128, 128))


def test_memory_bandwidth_is_measured():
    bandwidth = cost.measure_memory_bandwidth("cpu", megabytes=16, repeats=3)
    assert 1e8 < bandwidth < 1e13


def test_cpu_matrix_rate_and_launch_cost_are_measured():
    rate = cost.measure_matrix_rate("cpu", "fp32", size=128, repeats=3)
    assert math.isfinite(rate) and 1e7 < rate < 1e14
    assert cost.measure_matrix_rate("cpu", "bf16", size=128, repeats=3) > 1e6
    launch = cost.measure_launch_seconds("cpu", launches=200, repeats=3)
    assert 1e-8 < launch < 1e-3
    with pytest.raises(ValueError, match="CUDA"):
        cost.measure_matrix_rate("cpu", "tf32")
    with pytest.raises(ValueError, match="CUDA"):
        cost.measure_launch_seconds("cpu", graphed=True)
    with pytest.raises(ValueError, match="precision"):
        cost.measure_matrix_rate("cpu", "fp8")


@pytest.mark.cuda
def test_cuda_rates_and_graphed_launches():
    rates = {p: cost.measure_matrix_rate("cuda", p, size=2048) for p in cost.PRECISIONS}
    assert rates["bf16"] > rates["fp32"]
    assert torch.backends.cuda.matmul.allow_tf32 is False  # torch's default, restored
    eager = cost.measure_launch_seconds("cuda")
    graphed = cost.measure_launch_seconds("cuda", graphed=True)
    assert 0 < graphed < eager
