"""Quality measures, evaluation normalisation and LPIPS loading (with a test backbone)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from autodip_watch import metrics, perceptual


def test_pixel_measures_against_hand_values():
    a = np.array([[0.0, 0.5], [1.0, 0.25]])
    b = np.array([[0.1, 0.5], [0.8, 0.25]])
    assert metrics.mae(a, b) == pytest.approx((0.1 + 0.2) / 4)
    assert metrics.mse(a, b) == pytest.approx((0.01 + 0.04) / 4)
    assert metrics.psnr(a, b) == pytest.approx(10 * math.log10(1 / 0.0125))
    assert metrics.psnr(a, a) == math.inf
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.mse(a, np.zeros((3, 3)))


def test_ssim_is_one_for_identical_and_lower_for_noisy():
    rng = np.random.default_rng(0)
    clean = rng.random((32, 32))
    assert metrics.ssim(clean, clean) == pytest.approx(1.0)
    noisy = clean + rng.normal(0, 0.2, clean.shape)
    assert metrics.ssim(clean, noisy) < 0.9
    # Smaller than the 11 px Gaussian window: falls back to a uniform window.
    assert metrics.ssim(clean[:8, :8], clean[:8, :8]) == pytest.approx(1.0)


def test_affine_fit_recovers_a_contrast_stretch():
    rng = np.random.default_rng(1)
    truth = rng.random((16, 16))
    slope, intercept = metrics.fit_affine(truth, truth * 3.0 + 5.0)
    assert slope == pytest.approx(3.0) and intercept == pytest.approx(5.0)


def test_evaluation_pair_puts_truth_on_the_noisy_scale():
    rng = np.random.default_rng(2)
    clean = rng.random((32, 32)) * 100 + 50
    noisy = clean + rng.normal(0, 5, clean.shape)
    stretched = clean * 0.2 + 1000  # separately contrast-stretched ground truth (W2S, Hagen)
    noisy01, truth01 = metrics.evaluation_pair(noisy, stretched, "affine")
    assert noisy01.min() == 0 and noisy01.max() == pytest.approx(1)
    expected = (clean - noisy.min()) / (noisy.max() - noisy.min())
    assert np.abs(truth01 - expected).max() < 0.02
    # Without matching, the stretched truth is nowhere near the noisy image.
    _, unmatched = metrics.evaluation_pair(noisy, stretched, "none")
    assert metrics.psnr(noisy01, truth01) > metrics.psnr(noisy01, unmatched) + 20
    with pytest.raises(ValueError, match="constant"):
        metrics.evaluation_pair(np.ones((4, 4)), np.ones((4, 4)))


def test_mean_gradient_is_zero_for_flat_and_linear_in_contrast():
    rng = np.random.default_rng(3)
    image = rng.random((32, 32))
    assert metrics.mean_gradient(np.full((8, 8), 7.0)) == 0
    assert metrics.mean_gradient(image * 2) == pytest.approx(2 * metrics.mean_gradient(image))


def test_missing_backbone_error_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / perceptual.ALEXNET_CHECKPOINT
    assert perceptual.alexnet_checkpoint_path() == expected
    with pytest.raises(perceptual.LpipsWeightsMissing) as error:
        perceptual.Lpips("cpu")
    assert str(expected) in str(error.value)
    assert "TORCH_HOME" in str(error.value)
    assert not expected.exists()  # and nothing was downloaded


def test_lpips_zero_for_identical_positive_and_symmetric(lpips_backbone):
    networks = perceptual.LpipsNetworks()
    measure = networks.get("cpu")
    assert networks.get("cpu") is measure  # loaded once per owner and device
    rng = np.random.default_rng(4)
    clean = rng.random((32, 32)).astype(np.float32)
    noisy = np.clip(clean + rng.normal(0, 0.2, clean.shape), 0, 1).astype(np.float32)
    assert measure(clean, clean) == pytest.approx(0.0, abs=1e-7)
    forward, backward = measure(clean, noisy), measure(noisy, clean)
    assert forward > 0
    assert forward == pytest.approx(backward, rel=1e-4)
    # A noisier image is further away.
    noisier = np.clip(clean + rng.normal(0, 0.5, clean.shape), 0, 1).astype(np.float32)
    assert measure(clean, noisier) > forward


def test_lpips_feeds_grayscale_as_three_channels_in_minus_one_to_one(lpips_backbone):
    measure = perceptual.LpipsNetworks().get("cpu")
    rng = np.random.default_rng(5)
    a = rng.random((32, 32)).astype(np.float32)
    b = rng.random((32, 32)).astype(np.float32)

    def rgb(plane):
        tensor = torch.from_numpy(plane) * 2 - 1
        return tensor.expand(1, 3, 32, 32)

    with torch.no_grad():
        direct = float(measure.model(rgb(a), rgb(b)).item())
    assert measure(a, b) == pytest.approx(direct)
    assert measure(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(direct)


def test_quality_reports_every_measure(lpips_backbone):
    rng = np.random.default_rng(6)
    a = rng.random((32, 32)).astype(np.float32)
    scores = metrics.quality(a, a * 0.9, perceptual.LpipsNetworks().get("cpu"))
    assert set(scores) == {"mse", "mae", "psnr", "ssim", "lpips"}
    assert metrics.quality(a, a * 0.9)["lpips"] is None
