"""The calibration images of a table, for nearest-image transfer.

A table made by ``autodip-watch calibrate`` lists its calibration images (``[[images]]``:
group, per-metric optimum, mean gradient) and keeps their noisy planes in a sidecar TIFF
beside it (``calibration_images.file``, checked by its SHA-256). The shipped FMD table
has none.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..dip.params import DipParams
from ..io.checksums import sha256_file
from .labels import canonical_microscope, canonical_specimen
from .modes import GROUP, MODE_MEASURES, check_mode
from .table import CalibrationTable, TableError


class SimilarityError(TableError):
    """Metric-based transfer is not possible with this table; the message says why."""


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
        import tifffile  # only tables with calibration images need it

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


@dataclass
class CalibrationImages:
    """A table's calibration images with their planes, and what compares planes with
    them: loaded once per table object (:func:`calibration_images`), for as long as the
    table is used (the daemon keeps its table for its lifetime)."""

    images: list[CalibrationImage]
    #: LPIPS networks for ``nearest-lpips`` (perceptual.LpipsNetworks), made on first use.
    lpips: object | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def lpips_network(self, device):
        """The LPIPS network on ``device`` (loaded on first use; needs torch)."""
        from ..perceptual import LpipsNetworks  # torch: only nearest-lpips compares so

        with self._lock:
            if self.lpips is None:
                self.lpips = LpipsNetworks()
        return self.lpips.get(device)


def calibration_images(table: CalibrationTable) -> CalibrationImages:
    """The calibration images of ``table`` with their planes, loaded once per table
    object and kept in :attr:`CalibrationTable.derived`."""
    found = table.derived.get("calibration_images")
    if found is None:
        found = table.derived.setdefault("calibration_images",
                                         CalibrationImages(load_images(table)))
    return found


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
