"""Small synthetic images with known structure and noise, for fits that must run fast."""

from __future__ import annotations

import numpy as np


def noisy_blobs(shape=(32, 32), seed=0) -> np.ndarray:
    """Smooth structure plus Poisson-Gaussian noise, in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    clean = np.zeros(shape)
    for cy, cx in rng.uniform(4, min(shape) - 4, size=(4, 2)):
        clean += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 18.0)
    clean = clean / clean.max()
    noisy = rng.poisson(clean * 30) / 30 + rng.normal(0, 0.05, shape)
    return ((noisy - noisy.min()) / (noisy.max() - noisy.min())).astype(np.float32)
