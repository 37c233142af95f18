"""Noisy / ground-truth pairs for the calibration tests: two groups, tiny images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile


def _structure(kind: str, seed: int, size: int = 32) -> np.ndarray:
    """Blobs (nucleus-like) or lines (actin-like) in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    image = np.zeros((size, size))
    if kind == "nucleus":
        for _ in range(3):
            cy, cx = rng.uniform(6, size - 6, 2)
            image += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(2, 4) ** 2))
    else:
        for _ in range(4):
            angle = rng.uniform(0, np.pi)
            cy, cx = rng.uniform(8, size - 8, 2)
            image += np.exp(-(((yy - cy) * np.cos(angle) - (xx - cx) * np.sin(angle)) ** 2) / 2)
    return image / image.max()


def make_pairs(root: Path) -> Path:
    """4 synthetic 32x32 pairs with Poisson-Gaussian noise, two groups, folder layout."""
    rng = np.random.default_rng(42)
    groups = [("widefield", "nucleus"), ("widefield", "nucleus"), ("confocal", "actin"),
              ("confocal", "actin")]
    for index, (microscope, specimen) in enumerate(groups):
        clean = _structure(specimen, index)
        noisy = rng.poisson(clean * 30 + 2) + rng.normal(0, 2, clean.shape)
        folder = root / microscope / specimen
        folder.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(folder / f"cell{index}_noisy.tif",
                         np.clip(noisy * 100, 0, 65535).astype(np.uint16))
        # A ground truth on another scale, as in W2S/Hagen: the affine fit undoes it.
        tifffile.imwrite(folder / f"cell{index}_gt.tif", (clean * 3000 + 200).astype(np.uint16))
    return root
