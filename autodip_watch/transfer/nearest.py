"""Metric-based parameter transfer (paper §II-B.2 and §II-B.3).

Instead of the configuration that was best on average for a group, use the per-image
optimum of the calibration image most similar to the plane being denoised. Similarity
is measured between the plane and the calibration images' noisy planes (what the
daemon sees is noisy too), both min-max normalised to [0, 1], by MAE, MSE, PSNR,
SSIM, LPIPS or the difference of their mean Sobel gradients. With ``within_group``
only calibration images of the plane's group are candidates, walking the same
hierarchy as group transfer (microscope+specimen, microscope, specimen, all) until a
level has calibration images.

The calibration images and their optima come from a table written by
``autodip-watch calibrate`` (its ``[[images]]`` section and the ``.images.tif``
sidecar beside it); the shipped FMD table has no images, so only ``group`` works
with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .. import metrics
from ..dip.intensity import normalise
from .hierarchy import Transfer, group_levels
from .images import (CalibrationImage, CalibrationImages, SimilarityError, calibration_images,
                     load_images)
from .modes import GROUP, MODE_MEASURES, check_mode
from .table import CalibrationTable

if TYPE_CHECKING:  # LPIPS loads torch only when a nearest-lpips transfer compares planes
    import torch


@dataclass(frozen=True)
class NearestTransfer(Transfer):
    """A transfer from the most similar calibration image, with the evidence."""

    image: str = ""
    measure: str = ""
    distance: float = float("nan")
    pool: str = "all"  # the group whose images were compared
    ranking: tuple[tuple[str, float], ...] = ()  # (image, distance), nearest first

    def as_dict(self) -> dict:
        return {**super().as_dict(), "image": self.image, "measure": self.measure,
                "distance": self.distance, "pool": self.pool,
                "ranking": [{"image": name, "distance": value} for name, value in self.ranking]}


def candidate_pool(images: list[CalibrationImage], microscope: str | None, specimen: str | None,
                   within_group: bool) -> tuple[str, list[CalibrationImage]]:
    """The images to compare with, and the group they come from.

    Without ``within_group`` every image; with it, the most specific level of
    microscope+specimen, microscope, specimen, all that has images.
    """
    if not within_group:
        return "all", list(images)
    for level, group in group_levels(microscope, specimen):
        pool = [image for image in images
                if (level, group) in group_levels(image.microscope, image.specimen)]
        if pool:
            return group, pool
    return "all", list(images)


def _common_crop(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre-crop both planes to their common size: pixel measures need equal shapes."""
    height = min(a.shape[0], b.shape[0])
    width = min(a.shape[1], b.shape[1])

    def crop(plane: np.ndarray) -> np.ndarray:
        top = (plane.shape[0] - height) // 2
        left = (plane.shape[1] - width) // 2
        return plane[top:top + height, left:left + width]

    return crop(a), crop(b)


def distance(plane01: np.ndarray, image: CalibrationImage, measure: str,
             device: torch.device | str = "cpu",
             lpips: Callable[[np.ndarray, np.ndarray], float] | None = None) -> float:
    """Dissimilarity of a normalised plane and a calibration image (lower = nearer).

    PSNR and SSIM are similarities, so their negative is returned. ``lpips`` is the
    network the ``lpips`` measure uses (:class:`~autodip_watch.perceptual.Lpips`).
    """
    if measure == "gradient":
        return abs(metrics.mean_gradient(plane01) - image.mean_gradient)
    if image.plane is None:
        raise SimilarityError(f"calibration image {image.name!r} has no plane loaded")
    a, b = _common_crop(np.asarray(plane01, dtype=np.float32), image.plane)
    if measure == "mae":
        return metrics.mae(a, b)
    if measure == "mse":
        return metrics.mse(a, b)
    if measure == "psnr":
        return -metrics.psnr(a, b)
    if measure == "ssim":
        return -metrics.ssim(a, b)
    if measure == "lpips":
        if lpips is None:
            raise ValueError("the lpips measure needs an LPIPS network")
        return lpips(a, b)
    raise ValueError(f"unknown similarity measure {measure!r}")


def nearest(plane: np.ndarray, table: CalibrationTable, microscope: str | None,
            specimen: str | None, mode: str, within_group: bool = False,
            metric: str | None = None, device: torch.device | str = "cpu",
            images: CalibrationImages | None = None) -> NearestTransfer:
    """The per-image optimum of the calibration image nearest to ``plane``.

    ``plane`` is a raw 2-D plane (any dtype); it is min-max normalised like the
    calibration images. Equal distances go to the image listed first in the table.
    ``images`` are the table's loaded images (default: :func:`calibration_images`).
    """
    check_mode(mode)
    if mode == GROUP:
        raise ValueError("nearest() is for the nearest-* modes; group transfer is table.lookup")
    measure, _ = MODE_MEASURES[mode]
    metric_name = metric or table.default_metric
    loaded = images or (None if measure == "gradient" else calibration_images(table))
    candidates = loaded.images if loaded is not None else load_images(table, with_planes=False)
    lpips = loaded.lpips_network(device) if measure == "lpips" else None
    pool_name, pool = candidate_pool(candidates, microscope, specimen, within_group)
    unit, _, _ = normalise(np.asarray(plane))
    unit = unit.astype(np.float32)
    scored = [(image, distance(unit, image, measure, device, lpips)) for image in pool]
    ranking = sorted(enumerate(scored), key=lambda item: (item[1][1], item[0]))
    best_image, best_distance = ranking[0][1]
    # Report similarities (PSNR, SSIM) with their natural sign.
    sign = -1.0 if MODE_MEASURES[mode][1] else 1.0
    level = mode + (f" within {pool_name}" if within_group else "")
    return NearestTransfer(
        params=best_image.params(metric_name), level=level, group=best_image.name,
        metric=metric_name, image=best_image.name, measure=measure,
        distance=sign * best_distance, pool=pool_name,
        ranking=tuple((image.name, sign * value) for _, (image, value) in ranking))


