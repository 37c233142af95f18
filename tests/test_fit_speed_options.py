"""The speed settings of the fit (issue: speed on the GPU) run and keep the result.

On CPU this checks that each path computes the same fit; their speed is measured by
``bench/speed.py``, never here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autodip_watch.dip.fit import FitOptions, fit_tile
from autodip_watch.dip.network import DipParams

from test_fit import noisy_blobs

SMALL = DipParams(4, "16", 4, 3)


def test_channels_last_is_the_same_fit():
    tile = noisy_blobs()
    plain = fit_tile(tile, SMALL, "cpu", FitOptions(seed=1))
    nhwc = fit_tile(tile, SMALL, "cpu", FitOptions(seed=1, channels_last=True))
    np.testing.assert_allclose(nhwc.losses, plain.losses, rtol=1e-3)
    assert np.abs(nhwc.output - plain.output).max() < 1e-2


def test_bf16_autocast_fits_and_stays_close():
    tile = noisy_blobs(seed=4)
    params = DipParams(4, "16", 4, 30)
    plain = fit_tile(tile, params, "cpu", FitOptions(seed=0))
    bf16 = fit_tile(tile, params, "cpu", FitOptions(seed=0, bf16=True))
    assert bf16.output.dtype == np.float32
    assert bf16.losses[-1] < 0.7 * bf16.losses[0]
    assert bf16.losses[0] == pytest.approx(plain.losses[0], rel=0.05)


def test_tf32_setting_is_restored_after_the_fit():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    fit_tile(noisy_blobs(), SMALL, "cpu", FitOptions(tf32=True))
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_tf32_on_cuda_is_restored_and_close():
    tile = noisy_blobs()
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    strict = fit_tile(tile, SMALL, "cuda", FitOptions(seed=0, tf32=False))
    fast = fit_tile(tile, SMALL, "cuda", FitOptions(seed=0, tf32=True))
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    assert np.abs(strict.output - fast.output).max() < 2e-2


@pytest.mark.slow
def test_compiled_network_is_the_same_fit():
    tile = noisy_blobs()
    plain = fit_tile(tile, SMALL, "cpu", FitOptions(seed=2))
    compiled = fit_tile(tile, SMALL, "cpu", FitOptions(seed=2, compile=True))
    np.testing.assert_allclose(compiled.losses, plain.losses, rtol=1e-3)
