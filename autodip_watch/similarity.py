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

import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .dip.params import DipParams
from .transfer import (UNKNOWN, CalibrationTable, TableError, Transfer, apply_overrides,
                       canonical_microscope, canonical_specimen)

if TYPE_CHECKING:  # the metrics (torch, scikit-image) load only when a plane is compared,
    import torch   # so that `inspect` and `config check` of a group transfer stay light

GROUP = "group"
#: Transfer modes: ``group`` (the paper's recommended default) and nearest-image modes.
TRANSFER_MODES = ("group", "nearest-mae", "nearest-mse", "nearest-psnr", "nearest-ssim",
                  "nearest-lpips", "nearest-gradient")
#: Per mode: the measure, and whether a higher value means more similar.
MODE_MEASURES = {"nearest-mae": ("mae", False), "nearest-mse": ("mse", False),
                 "nearest-psnr": ("psnr", True), "nearest-ssim": ("ssim", True),
                 "nearest-lpips": ("lpips", False), "nearest-gradient": ("gradient", False)}


class SimilarityError(TableError):
    """Metric-based transfer is not possible with this table; the message says why."""


def check_mode(mode: str) -> str:
    if mode not in TRANSFER_MODES:
        raise ValueError(f"transfer mode must be one of {', '.join(TRANSFER_MODES)}, got {mode!r}")
    return mode


@dataclass(frozen=True)
class CalibrationImage:
    """One calibration image of a table: its group, noisy plane and per-metric optima."""

    name: str
    microscope: str
    specimen: str
    mean_gradient: float
    optimum: dict  # metric -> table entry (depth, width, skip, iterations, score, ...)
    plane: np.ndarray | None  # normalised noisy plane; None when the sidecar is not needed

    def params(self, metric: str) -> DipParams:
        entry = self.optimum.get(metric)
        if entry is None:
            raise SimilarityError(f"calibration image {self.name!r} has no {metric!r} optimum "
                                  f"(have: {', '.join(self.optimum)})")
        return DipParams(int(entry["depth"]), str(entry["width"]), int(entry["skip"]),
                         int(entry["iterations"]))


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


def sidecar_file(table: CalibrationTable) -> Path:
    section = table.document.get("calibration_images") or {}
    if "file" not in section:
        raise SimilarityError(f"{table.path or 'table'} names no calibration image file")
    base = Path(table.path).parent if table.path is not None else Path.cwd()
    return base / section["file"]


def load_images(table: CalibrationTable, with_planes: bool = True) -> list[CalibrationImage]:
    """The calibration images of ``table``; the planes come from its sidecar TIFF."""
    entries = table.document.get("images")
    if not entries:
        raise SimilarityError(
            f"calibration table {table.path or ''} lists no calibration images, so metric-based "
            f"transfer cannot compare with any; make a table with `autodip-watch calibrate` "
            f"(the shipped FMD table has none) or use --transfer group")
    planes: list[np.ndarray] | None = None
    if with_planes:
        path = sidecar_file(table)
        if not path.is_file():
            raise SimilarityError(f"calibration images {path} (written beside the table by "
                                  f"`autodip-watch calibrate`) do not exist; copy it with the table")
        import tifffile

        from .provenance import sha256_file

        expected = (table.document.get("calibration_images") or {}).get("sha256")
        if expected and sha256_file(path) != expected:
            raise SimilarityError(f"calibration images {path} do not match the table's sha256; "
                                  f"the file was replaced or belongs to another table")
        with tifffile.TiffFile(path) as tif:
            planes = [series.asarray().astype(np.float32) for series in tif.series]
    images = []
    for position, entry in enumerate(entries):
        index = int(entry.get("sidecar_index", position))
        plane = None
        if planes is not None:
            if index >= len(planes):
                raise SimilarityError(f"calibration image {entry.get('name')!r}: sidecar has "
                                      f"{len(planes)} planes, no index {index}")
            plane = planes[index]
        images.append(CalibrationImage(
            name=str(entry["name"]), microscope=canonical_microscope(entry.get("microscope")),
            specimen=canonical_specimen(entry.get("specimen")),
            mean_gradient=float(entry.get("mean_gradient", np.nan)),
            optimum=dict(entry.get("optimum", {})), plane=plane))
    return images


_CACHE: "weakref.WeakKeyDictionary[CalibrationTable, list[CalibrationImage]]" = (
    weakref.WeakKeyDictionary())


def images_for(table: CalibrationTable) -> list[CalibrationImage]:
    """Load a table's calibration images once per table object (the daemon reuses tables)."""
    if table not in _CACHE:
        _CACHE[table] = load_images(table)
    return _CACHE[table]


def candidate_pool(images: list[CalibrationImage], microscope: str | None, specimen: str | None,
                   within_group: bool) -> tuple[str, list[CalibrationImage]]:
    """The images to compare with, and the group they come from.

    Without ``within_group`` every image; with it, the most specific level of
    microscope+specimen, microscope, specimen, all that has images.
    """
    if not within_group:
        return "all", list(images)
    microscope = canonical_microscope(microscope)
    specimen = canonical_specimen(specimen)
    levels = [
        (f"{microscope}/{specimen}",
         lambda image: (image.microscope, image.specimen) == (microscope, specimen),
         UNKNOWN not in (microscope, specimen)),
        (microscope, lambda image: image.microscope == microscope, microscope != UNKNOWN),
        (specimen, lambda image: image.specimen == specimen, specimen != UNKNOWN),
    ]
    for group, belongs, known in levels:
        if known:
            pool = [image for image in images if belongs(image)]
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
             device: torch.device | str = "cpu") -> float:
    """Dissimilarity of a normalised plane and a calibration image (lower = nearer).

    PSNR and SSIM are similarities, so their negative is returned.
    """
    from .metrics import lpips_distance, mae, mean_gradient, mse, psnr, ssim

    if measure == "gradient":
        return abs(mean_gradient(plane01) - image.mean_gradient)
    if image.plane is None:
        raise SimilarityError(f"calibration image {image.name!r} has no plane loaded")
    a, b = _common_crop(np.asarray(plane01, dtype=np.float32), image.plane)
    if measure == "mae":
        return mae(a, b)
    if measure == "mse":
        return mse(a, b)
    if measure == "psnr":
        return -psnr(a, b)
    if measure == "ssim":
        return -ssim(a, b)
    if measure == "lpips":
        return lpips_distance(a, b, device)
    raise ValueError(f"unknown similarity measure {measure!r}")


def nearest(plane: np.ndarray, table: CalibrationTable, microscope: str | None,
            specimen: str | None, mode: str, within_group: bool = False,
            metric: str | None = None, device: torch.device | str = "cpu",
            images: list[CalibrationImage] | None = None) -> NearestTransfer:
    """The per-image optimum of the calibration image nearest to ``plane``.

    ``plane`` is a raw 2-D plane (any dtype); it is min-max normalised like the
    calibration images. Equal distances go to the image listed first in the table.
    """
    from .dip.plane import normalise

    check_mode(mode)
    if mode == GROUP:
        raise ValueError("nearest() is for the nearest-* modes; group transfer is table.lookup")
    measure, _ = MODE_MEASURES[mode]
    metric_name = metric or table.default_metric
    if images is None:
        images = load_images(table, with_planes=False) if measure == "gradient" else images_for(table)
    pool_name, pool = candidate_pool(images, microscope, specimen, within_group)
    unit, _, _ = normalise(np.asarray(plane))
    unit = unit.astype(np.float32)
    scored = [(image, distance(unit, image, measure, device)) for image in pool]
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


def nearest_transfer(plane: np.ndarray, group, settings, device: torch.device | str = "cpu"
                     ) -> Transfer:
    """Pipeline hook: metric-based transfer for one plane, with the user's overrides.

    ``group`` is the channel's :class:`~autodip_watch.metadata.ChannelGroup` and
    ``settings`` the :class:`~autodip_watch.pipeline.DenoiseSettings`.
    """
    found = nearest(plane, settings.table, group.microscope, group.specimen,
                    settings.transfer, getattr(settings, "within_group", False),
                    settings.metric, device)
    return apply_overrides(found, settings.depth, settings.width, settings.skip,
                           settings.iterations)


def check_table_supports(table: CalibrationTable, mode: str, metric: str | None = None) -> None:
    """Fail early (before any file is read) when ``mode`` cannot work with ``table``."""
    check_mode(mode)
    if mode == GROUP:
        return
    images = load_images(table, with_planes=MODE_MEASURES[mode][0] != "gradient")
    metric = metric or table.default_metric
    missing = [image.name for image in images if metric not in image.optimum]
    if missing:
        raise SimilarityError(f"calibration images without a {metric!r} optimum: "
                              f"{', '.join(missing)}")


def inspect_nearest(path: str | Path, settings, device: torch.device | str = "cpu",
                    planes_per_channel: int = 4) -> list[dict]:
    """What a nearest-* transfer picks for the first planes of every channel of ``path``.

    Unlike group transfer this needs pixels, so ``inspect`` reads up to
    ``planes_per_channel`` planes per channel; ``denoise`` decides for every plane.
    Channels that are copied (not fluorescence) are left out.
    """
    from .ometiff import ImageFile
    from .pipeline import plan_series

    rows: list[dict] = []
    with ImageFile(path) as image:
        for info in image.series:
            if not info.has_pixels:
                continue
            plans = plan_series(image, info.index, settings)
            wanted = {plan.group.index for plan in plans if plan.transfer is not None}
            seen: dict[int, int] = {}
            for keys, page in image.pages(info.index):
                for key, plane in zip(keys, info.split_page(page)):
                    plan = plans[key.channel]
                    if key.channel not in wanted or seen.get(key.channel, 0) >= planes_per_channel:
                        continue
                    seen[key.channel] = seen.get(key.channel, 0) + 1
                    found = nearest(plane, settings.table, plan.group.microscope,
                                    plan.group.specimen, settings.transfer,
                                    getattr(settings, "within_group", False), settings.metric,
                                    device)
                    rows.append({"file": str(path), "series": info.index, "plane": key.label(),
                                 "channel": key.channel, "microscope": plan.group.microscope,
                                 "specimen": plan.group.specimen, **found.as_dict()})
                if all(seen.get(channel, 0) >= planes_per_channel for channel in wanted):
                    break
    return rows
