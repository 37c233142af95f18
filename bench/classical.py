"""Classical denoisers a user could run without ground truth, as peers of DIP (issue 14).

* ``bm3d``: BM3D (the ``bm3d`` package) for Gaussian noise of the standard deviation that
  scikit-image's ``estimate_sigma`` (wavelet MAD) finds in the image: what a user who
  reaches for BM3D does.
* ``bm3d-vst``: the classical answer to Poisson-Gaussian noise: the noise-level function
  estimated from the image (``autodip_watch.dip.noise``), the generalised Anscombe
  transform, BM3D at unit variance, the exact unbiased inverse (Makitalo & Foi 2013).
* ``tv-discrepancy``: total variation (Chambolle) with its weight chosen by the
  discrepancy principle: the largest weight whose residual does not exceed the
  estimated noise variance of the image.

All work on the plane's [0, 1] min-max scale and return that scale.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.restoration import denoise_tv_chambolle, estimate_sigma

from autodip_watch.dip.noise import Anscombe, estimate_noise

TV_SEARCH = np.geomspace(0.002, 1.0, 40)


def bm3d_gaussian(unit: np.ndarray) -> tuple[np.ndarray, dict]:
    import bm3d

    sigma = float(estimate_sigma(unit))
    return np.clip(bm3d.bm3d(unit, sigma_psd=sigma), 0, 1), {"sigma": sigma}


def bm3d_stabilised(unit: np.ndarray) -> tuple[np.ndarray, dict]:
    import bm3d

    model = estimate_noise(unit)
    try:
        transform = Anscombe.for_model(model)
    except ValueError:  # homoscedastic: plain BM3D at the estimated level
        sigma = float(np.sqrt(max(model.intercept, 1e-12)))
        return np.clip(bm3d.bm3d(unit, sigma_psd=sigma), 0, 1), {**model.as_dict(), "vst": False}
    stabilised = transform.forward(unit)
    denoised = bm3d.bm3d(stabilised, sigma_psd=1.0)
    return np.clip(transform.inverse(denoised), 0, 1), {**model.as_dict(), "vst": True}


def expected_noise_variance(unit: np.ndarray) -> float:
    """Mean over the plane of the estimated noise variance at each pixel's local mean."""
    model = estimate_noise(unit)
    return float(np.mean(model.variance(ndimage.uniform_filter(unit, 5))))


def tv_discrepancy(unit: np.ndarray) -> tuple[np.ndarray, dict]:
    target = expected_noise_variance(unit)
    chosen, result = TV_SEARCH[0], denoise_tv_chambolle(unit, weight=TV_SEARCH[0])
    for weight in TV_SEARCH:
        denoised = denoise_tv_chambolle(unit, weight=weight)
        if np.mean((denoised - unit) ** 2) > target:
            break
        chosen, result = weight, denoised
    return result, {"weight": float(chosen), "noise_variance": target}


PEERS = {"bm3d": bm3d_gaussian, "bm3d-vst": bm3d_stabilised, "tv-discrepancy": tv_discrepancy}
