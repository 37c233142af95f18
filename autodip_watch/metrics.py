"""Image quality and image similarity measures used by calibration and transfer.

All measures work on 2-D float planes on the normalised scale (the noisy plane
min-max rescaled to [0, 1], DESIGN §2), so PSNR uses a data range of 1. The perceptual
measure, LPIPS, needs torch and lives in ``perceptual.py``; everything here is NumPy,
SciPy and scikit-image.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage
from skimage.metrics import structural_similarity

#: Quality measures a calibration records, and whether lower values are better.
LOWER_IS_BETTER = {"mse": True, "mae": True, "psnr": False, "ssim": False, "lpips": True}


# --------------------------------------------------------------------------- pairs

def fit_affine(source: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Least-squares ``a, b`` with ``source * a + b ≈ target``.

    Used to bring a ground truth onto its noisy image's intensity scale: W2S and Hagen
    ground truths were contrast-stretched separately from their noisy frames, and a
    comparison on different scales would measure the stretch, not the denoiser.
    """
    x = np.asarray(source, dtype=np.float64).ravel()
    y = np.asarray(target, dtype=np.float64).ravel()
    design = np.stack([x, np.ones_like(x)], axis=1)
    (slope, intercept), *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(slope), float(intercept)


def evaluation_pair(noisy: np.ndarray, ground_truth: np.ndarray,
                    match: str = "affine") -> tuple[np.ndarray, np.ndarray]:
    """Noisy and ground truth on the evaluation scale, both float32.

    The noisy plane is min-max rescaled to [0, 1] (what the denoiser sees); the ground
    truth gets the same rescaling, after an affine fit onto the noisy plane when
    ``match == "affine"``. The ground truth is not clipped, so a fit that leaves it
    slightly outside [0, 1] is measured as it is.
    """
    if match not in ("affine", "none"):
        raise ValueError(f"match must be 'affine' or 'none', got {match!r}")
    noisy = np.asarray(noisy, dtype=np.float64)
    truth = np.asarray(ground_truth, dtype=np.float64)
    if noisy.shape != truth.shape:
        raise ValueError(f"noisy {noisy.shape} and ground truth {truth.shape} differ in shape")
    low, high = float(noisy.min()), float(noisy.max())
    if high == low:
        raise ValueError("the noisy plane is constant; there is nothing to calibrate on")
    if match == "affine":
        slope, intercept = fit_affine(truth, noisy)
        truth = truth * slope + intercept
    scale = high - low
    return ((noisy - low) / scale).astype(np.float32), ((truth - low) / scale).astype(np.float32)


# --------------------------------------------------------------------------- pixel measures

def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return a, b


def mse(a: np.ndarray, b: np.ndarray) -> float:
    a, b = _pair(a, b)
    return float(np.mean((a - b) ** 2))


def mae(a: np.ndarray, b: np.ndarray) -> float:
    a, b = _pair(a, b)
    return float(np.mean(np.abs(a - b)))


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """PSNR in dB; ``inf`` for identical planes."""
    error = mse(a, b)
    if error == 0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / error))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """SSIM with the Wang et al. settings (11x11 Gaussian window, sigma 1.5).

    These are also the defaults of ``ignite.metrics.SSIM`` that the AUTO-DIP reference
    used. Planes too small for that window fall back to the largest odd uniform window.
    """
    a, b = _pair(a, b)
    if min(a.shape) >= 11:
        return float(structural_similarity(a, b, data_range=data_range, gaussian_weights=True,
                                           sigma=1.5, use_sample_covariance=False))
    window = min(a.shape) - (1 - min(a.shape) % 2)
    if window < 3:
        raise ValueError(f"plane {a.shape} is too small for SSIM")
    return float(structural_similarity(a, b, data_range=data_range, win_size=window))


def mean_gradient(image: np.ndarray) -> float:
    """Mean Sobel gradient magnitude, the paper's image-complexity measure.

    As in the AUTO-DIP reference: ``sqrt((gx**2 + gy**2) / 2)`` averaged over the plane.
    """
    values = np.asarray(image, dtype=np.float64)
    gradient_y = ndimage.sobel(values, axis=0)
    gradient_x = ndimage.sobel(values, axis=1)
    return float(np.mean(np.sqrt((gradient_x**2 + gradient_y**2) / 2.0)))


def quality(output: np.ndarray, truth: np.ndarray,
            lpips_metric: Callable[[np.ndarray, np.ndarray], float] | None = None
            ) -> dict[str, float | None]:
    """Every calibration measure of ``output`` against ``truth``; lpips is None without a net."""
    return {"mse": mse(output, truth), "mae": mae(output, truth), "psnr": psnr(output, truth),
            "ssim": ssim(output, truth),
            "lpips": lpips_metric(output, truth) if lpips_metric is not None else None}
