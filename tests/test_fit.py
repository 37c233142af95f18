"""The optimisation loop: reproducible, and it really fits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autodip_watch.dip.device import choose_device
from autodip_watch.dip.options import FitOptions
from autodip_watch.dip.fit import fit_tile
from autodip_watch.dip.network import DipParams
from autodip_watch.dip.plane import denoise_plane
from helpers.images import noisy_blobs


SMALL = DipParams(depth=4, width="16", skip=4, iterations=6)


def test_same_seed_gives_same_output():
    tile = noisy_blobs()
    first = fit_tile(tile, SMALL, "cpu", FitOptions(seed=7))
    second = fit_tile(tile, SMALL, "cpu", FitOptions(seed=7))
    np.testing.assert_array_equal(first.output, second.output)
    np.testing.assert_array_equal(first.losses, second.losses)
    other = fit_tile(tile, SMALL, "cpu", FitOptions(seed=8))
    assert not np.array_equal(first.output, other.output)


def test_fit_does_not_disturb_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fit_tile(noisy_blobs(), SMALL, "cpu", FitOptions(seed=1))
    np.testing.assert_array_equal(torch.rand(3), expected)


def test_short_fit_lowers_the_loss():
    tile = noisy_blobs(seed=3)
    result = fit_tile(tile, DipParams(4, "16", 4, 60), "cpu", FitOptions(seed=0))
    assert result.losses.shape == (60,)
    assert result.losses[-5:].mean() < 0.5 * result.losses[:5].mean()
    assert result.output.shape == tile.shape and result.output.dtype == np.float32
    assert 0.0 <= result.output.min() and result.output.max() <= 1.0


def test_reg_noise_and_ema_options_run_and_differ():
    tile = noisy_blobs()
    plain = fit_tile(tile, SMALL, "cpu", FitOptions(seed=2))
    ema = fit_tile(tile, SMALL, "cpu", FitOptions(seed=2, ema_weight=0.9))
    noisy_input = fit_tile(tile, SMALL, "cpu", FitOptions(seed=2, reg_noise_std=1 / 30))
    assert not np.array_equal(plain.output, ema.output)
    assert not np.array_equal(plain.output, noisy_input.output)
    # EMA does not change the optimisation itself, only what is returned
    np.testing.assert_array_equal(plain.losses, ema.losses)


def test_progress_and_snapshots_come_from_the_same_run():
    seen, snaps = [], {}
    result = fit_tile(noisy_blobs(), SMALL, "cpu", FitOptions(seed=0),
                      progress=lambda i, n: seen.append((i, n)),
                      snapshot=lambda i, out: snaps.__setitem__(i, out.cpu().numpy().copy()),
                      snapshot_every=3)
    assert seen == [(i, 6) for i in range(1, 7)]
    assert sorted(snaps) == [3, 6]
    np.testing.assert_allclose(snaps[6], result.output, atol=1e-7)


def test_odd_sized_plane_is_padded_and_cropped_back():
    tile = noisy_blobs((21, 13))
    result = fit_tile(tile, DipParams(5, "16", 0, 2), "cpu", FitOptions())
    assert result.output.shape == (21, 13)
    assert result.padded_shape == (64, 64)


def test_denoise_plane_keeps_dtype_and_range():
    plane = (noisy_blobs((24, 40)) * 3000 + 100).astype(np.uint16)
    result = denoise_plane(plane, SMALL, "cpu", FitOptions(seed=0))
    assert result.output.dtype == np.uint16 and result.output.shape == plane.shape
    assert plane.min() <= result.output.min() and result.output.max() <= plane.max()
    assert result.tiles == 1 and not result.constant


def test_fit_options_validation():
    with pytest.raises(ValueError):
        FitOptions(ema_weight=1.5)
    with pytest.raises(ValueError):
        FitOptions(reg_noise_std=-1)


def test_device_choice():
    assert choose_device("cpu").type == "cpu"
    assert choose_device(None).type in ("cuda", "mps", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            choose_device("cuda")
    with pytest.raises((ValueError, RuntimeError)):
        choose_device("tpu")


@pytest.mark.cuda
def test_cuda_fit_matches_cpu_closely():
    tile = noisy_blobs()
    cpu = fit_tile(tile, SMALL, "cpu", FitOptions(seed=0))
    gpu = fit_tile(tile, SMALL, "cuda", FitOptions(seed=0))
    assert np.abs(cpu.output - gpu.output).max() < 1e-2
