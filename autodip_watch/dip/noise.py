"""Poisson-Gaussian noise of fluorescence images: estimate it, stabilise its variance.

A fluorescence camera counts photons (Poisson) and adds read noise (Gaussian), so the
noise variance of a pixel grows with its mean: ``var(y) = a * y + b`` (Foi et al.,
"Practical Poissonian-Gaussian noise modeling and fitting for single-image raw-data",
IEEE TIP 2008). DIP's MSE loss weighs every pixel alike, so on such data it fits the
noise of bright structures before the signal of dim ones. The generalised Anscombe
transform (GAT) makes the variance about 1 everywhere; the fit then runs in that domain
and its result goes back through the exact unbiased inverse (Makitalo & Foi, "Optimal
inversion of the generalized Anscombe transformation for Poisson-Gaussian noise",
IEEE TIP 2013, closed-form approximation, their eq. 13).

No maintained package on the index estimates a noise-level function from one image
(searched: ``anscombe-transform`` needs a time series), so :func:`estimate_noise` is a
compact version of the standard approach: a high-pass residual with a known noise gain
(Immerkaer, "Fast noise variance estimation", CVIU 1996) on the flattest pixels, robust
variances per intensity bin, and a weighted least-squares line through them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: Immerkaer's 3x3 Laplacian difference mask; for i.i.d. noise of variance s2 its
#: response has variance 36 * s2.
_LAPLACIAN = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
_LAPLACIAN_GAIN = 36.0
#: MAD -> standard deviation for Gaussian data.
_MAD_TO_STD = 1.4826
_SQRT_3_2 = np.sqrt(1.5)


@dataclass(frozen=True)
class NoiseModel:
    """``var(y) = slope * y + intercept`` on the plane's own scale (for a [0, 1] plane,
    variances of [0, 1] values). ``slope`` >= 0; ``intercept`` may be negative (an offset
    of the zero level, e.g. a camera's dark level below the plane's minimum)."""

    slope: float
    intercept: float

    def variance(self, mean: np.ndarray | float) -> np.ndarray | float:
        return np.maximum(self.slope * np.asarray(mean) + self.intercept, 0.0)

    def as_dict(self) -> dict:
        return {"slope": float(self.slope), "intercept": float(self.intercept)}


def estimate_noise(plane: np.ndarray, bins: int = 16, flat_fraction: float = 0.5,
                   min_pixels: int = 200) -> NoiseModel:
    """Estimate the noise-level function ``var = a * mean + b`` of one noisy 2-D plane.

    Parameters
    ----------
    plane : (H, W) array, any real dtype; H, W >= 8. Usually the [0, 1] rescaled plane.
    bins : number of intensity bins (quantiles of the local mean) for the variance fit.
    flat_fraction : share of pixels, the flattest by local gradient, that are used;
        edges and texture inflate a high-pass residual.
    min_pixels : bins with fewer usable pixels are ignored.

    Returns
    -------
    NoiseModel on the plane's scale. A plane without usable bins gives slope 0 and the
    variance of its residual as intercept (pure Gaussian).

    Raises
    ------
    ValueError: not a 2-D plane of at least 8 x 8 finite values.
    """
    values = np.asarray(plane, dtype=np.float64)
    if values.ndim != 2 or min(values.shape) < 8:
        raise ValueError(f"need a 2-D plane of at least 8x8, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError("plane contains NaN or infinite values")
    residual = ndimage.convolve(values, _LAPLACIAN, mode="reflect")
    local_mean = ndimage.uniform_filter(values, size=3, mode="reflect")
    smooth = ndimage.gaussian_filter(values, 2.0, mode="reflect")
    gradient = np.hypot(ndimage.sobel(smooth, 0), ndimage.sobel(smooth, 1))
    inner = (slice(1, -1), slice(1, -1))  # the mask reaches one pixel out
    residual, local_mean, gradient = residual[inner], local_mean[inner], gradient[inner]
    flat = gradient <= np.quantile(gradient, flat_fraction)
    # Pixels at the plane's minimum or maximum are clipped: their variance is not the model's.
    low, high = values.min(), values.max()
    unclipped = (ndimage.minimum_filter(values, 3)[inner] > low) & \
                (ndimage.maximum_filter(values, 3)[inner] < high)
    usable = flat & unclipped
    if usable.sum() < min_pixels:
        usable = flat
    means, residuals = local_mean[usable], residual[usable]
    bins = max(2, min(bins, len(means) // min_pixels))  # small planes: fewer, fuller bins
    edges = np.unique(np.quantile(means, np.linspace(0.0, 1.0, bins + 1)))
    xs, ys, weights = [], [], []
    for lower, upper in zip(edges[:-1], edges[1:]):
        chosen = (means >= lower) & (means <= upper)
        if chosen.sum() < min_pixels:
            continue
        r = residuals[chosen]
        spread = _MAD_TO_STD * np.median(np.abs(r - np.median(r)))
        xs.append(means[chosen].mean())
        ys.append(spread ** 2 / _LAPLACIAN_GAIN)
        weights.append(chosen.sum())
    if len(xs) < 2:
        spread = _MAD_TO_STD * np.median(np.abs(residual - np.median(residual)))
        return NoiseModel(0.0, float(spread ** 2 / _LAPLACIAN_GAIN))
    x, y, w = np.asarray(xs), np.asarray(ys), np.sqrt(np.asarray(weights, dtype=np.float64))
    design = np.stack([x, np.ones_like(x)], axis=1) * w[:, None]
    (slope, intercept), *_ = np.linalg.lstsq(design, y * w, rcond=None)
    if slope < 0:  # variance cannot fall with the signal: a constant is the best line
        return NoiseModel(0.0, float(np.average(y, weights=w ** 2)))
    return NoiseModel(float(slope), float(intercept))


@dataclass(frozen=True)
class Anscombe:
    """The generalised Anscombe transform for ``var(y) = a * y + b`` and its exact
    unbiased inverse (module docstring). Written for the standard form with gain 1:
    ``y' = (y - offset) / a`` counts photons, ``sigma`` is the Gaussian part in counts."""

    gain: float  # a
    offset: float  # y value of zero photons (when b < 0)
    sigma: float  # Gaussian standard deviation in photon units

    @classmethod
    def for_model(cls, model: NoiseModel) -> "Anscombe":
        """The transform that stabilises ``model``'s variance to 1.

        Raises ValueError for a model without a signal-dependent part (slope 0): plain
        Gaussian noise needs no stabilising.
        """
        if model.slope <= 0:
            raise ValueError("the noise has no signal-dependent (Poisson) part")
        if model.intercept >= 0:
            return cls(model.slope, 0.0, float(np.sqrt(model.intercept) / model.slope))
        return cls(model.slope, float(-model.intercept / model.slope), 0.0)

    def forward(self, y: np.ndarray) -> np.ndarray:
        """``2 sqrt(y' + 3/8 + sigma^2)``, y' the photon count; float64, noise var ~1."""
        counts = (np.asarray(y, dtype=np.float64) - self.offset) / self.gain
        return 2.0 * np.sqrt(np.maximum(counts + 0.375 + self.sigma ** 2, 0.0))

    def inverse(self, d: np.ndarray) -> np.ndarray:
        """Exact unbiased inverse (closed-form approximation): maps the expected value of
        ``forward(y)`` back to the expected value of ``y``. Values at or below the
        transform of zero photons map to ``offset``."""
        d = np.asarray(d, dtype=np.float64)
        safe = np.maximum(d, 1e-3)
        counts = (0.25 * safe ** 2 + 0.25 * _SQRT_3_2 / safe - 1.375 / safe ** 2
                  + 0.625 * _SQRT_3_2 / safe ** 3 - 0.125 - self.sigma ** 2)
        floor = 2.0 * np.sqrt(0.375 + self.sigma ** 2)  # forward() of zero photons
        counts = np.where(d <= floor, 0.0, np.maximum(counts, 0.0))
        return counts * self.gain + self.offset
