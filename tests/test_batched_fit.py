"""Fitting K planes in one batched optimisation equals fitting each alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autodip_watch.dip.options import FitOptions
from autodip_watch.dip.fit import build_network, fit_tile, fit_tiles
from autodip_watch.dip.network import DipParams, SkipNet

from helpers.images import noisy_blobs


@pytest.mark.slow
@pytest.mark.parametrize("params", [DipParams(4, "16", 4, 8), DipParams(4, "asc", 0, 5),
                                    DipParams(5, "32", 4, 5)])
def test_batched_equals_single_fits_in_float64(params):
    """In float64 the batched trajectories are the single ones (the method is exact)."""
    tiles = [noisy_blobs((32, 40), seed=s) for s in range(3)]
    options = [FitOptions(seed=10 + s) for s in range(3)]
    batched = fit_tiles(tiles, params, "cpu", options, dtype=torch.float64)
    for tile, option, result in zip(tiles, options, batched):
        alone = fit_tiles([tile], params, "cpu", [option], dtype=torch.float64)[0]
        np.testing.assert_allclose(result.losses, alone.losses, rtol=1e-9)
        np.testing.assert_allclose(result.output, alone.output, atol=1e-6)
    assert not np.allclose(batched[0].output, batched[1].output)


@pytest.mark.slow
def test_batched_float32_fits_are_as_good_as_single_fits():
    """In float32 rounding makes the paths drift slightly; the fits stay equally good."""
    params = DipParams(4, "16", 4, 40)
    tiles = [noisy_blobs((32, 32), seed=s) for s in range(3)]
    options = [FitOptions(seed=s) for s in range(3)]
    batched = fit_tiles(tiles, params, "cpu", options)
    for tile, option, result in zip(tiles, options, batched):
        alone = fit_tile(tile, params, "cpu", option)
        assert result.losses[0] == pytest.approx(alone.losses[0], rel=1e-5)  # same start
        assert result.losses[-1] == pytest.approx(alone.losses[-1], rel=0.25)
        assert np.abs(result.output - alone.output).mean() < 0.05


def test_stacked_network_forward_equals_each_network():
    params = DipParams(4, "16", 4, 1)
    nets = [build_network(params, seed)[0].train() for seed in range(3)]
    stacked = SkipNet.stack(nets, 4, "16", 4).train()
    z = [torch.rand(1, 32, 32, 32) for _ in range(3)]
    with torch.no_grad():
        together = stacked(torch.cat(z, dim=1))
        for k, (net, zk) in enumerate(zip(nets, z)):
            torch.testing.assert_close(together[:, k:k + 1], net(zk), atol=1e-5, rtol=1e-4)


def test_batched_with_ema_matches_single():
    params = DipParams(4, "16", 4, 6)
    tiles = [noisy_blobs(seed=s) for s in range(2)]
    options = [FitOptions(seed=s, ema_weight=0.9) for s in range(2)]
    batched = fit_tiles(tiles, params, "cpu", options, dtype=torch.float64)
    alone = fit_tiles([tiles[1]], params, "cpu", [options[1]], dtype=torch.float64)[0]
    np.testing.assert_allclose(batched[1].output, alone.output, atol=1e-6)


def test_batched_refuses_mismatched_tiles():
    params = DipParams(4, "16", 4, 2)
    with pytest.raises(ValueError, match="same shape"):
        fit_tiles([noisy_blobs((32, 32)), noisy_blobs((64, 64))], params, "cpu",
                  [FitOptions(), FitOptions()])
    with pytest.raises(ValueError, match="share"):
        fit_tiles([noisy_blobs(), noisy_blobs()], params, "cpu",
                  [FitOptions(), FitOptions(learning_rate=0.1)])
