"""The calibration table a run writes, and its calibration images.

The table has the layout of the shipped one (``transfer/tables/README.md``), plus
``[[images]]`` (each image's group and per-metric optimum) and the sidecar TIFF of their
noisy planes that nearest-image transfer compares with.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
import torch

from .. import __version__
from ..dip.params import BASELINE
from ..io.atomic import atomic_output
from ..io.checksums import sha256_file
from ..metrics import mean_gradient
from .selection import METRIC_MEANING, Candidate, group_members, group_optimum, image_optimum
from .pairs import PreparedPair


GROUP_RULE = ("per group and measure, the (configuration, iteration) with the best mean "
              "over the group's images; for lpips_psnr the mean of the per-image rank sums")
RANK_RULE = ("per image, over all (configuration, iteration) candidates: LPIPS ranked "
             "ascending plus PSNR ranked descending, tied values share their average rank; "
             "lowest sum wins")
TIE_RULE = ("equal scores: fewer iterations first, then depth, width (16..512, asc) and "
            "skip in ascending grid order")
NORMALISATION = ("noisy plane min-max to [0, 1]; ground truth affinely fitted onto the noisy "
                 "plane (least squares, unless the pair says match = none), then rescaled "
                 "with the noisy plane's min and max, not clipped; crops are cut after this, "
                 "from the whole plane's scale, like the daemon's tiles; PSNR with data range 1")


def _rounded(value: float, digits: int = 6) -> float:
    return float(round(value, digits)) if math.isfinite(value) else float(value)


def _entry(candidate: Candidate, score: float, **extra) -> dict:
    return {"depth": candidate.depth, "width": candidate.width, "skip": candidate.skip,
            "iterations": candidate.iteration, "score": _rounded(score), **extra}


def _is_baseline(candidate: Candidate) -> bool:
    return (candidate.depth, candidate.width, candidate.skip) == (
        BASELINE.depth, BASELINE.width, BASELINE.skip)


def build_metric_tables(pairs: Sequence[PreparedPair],
                        scores: Sequence[dict[Candidate, dict[str, float]]],
                        metrics: Sequence[str]) -> dict:
    """The ``[metrics]`` section: per metric, the best configuration of every group."""
    groups = group_members(pairs)
    has_baseline = any(_is_baseline(c) for c in scores[0])
    tables: dict[str, dict] = {}
    for metric in metrics:
        table: dict = {"description": METRIC_MEANING[metric]}
        for (level, group), members in sorted(groups.items()):
            images = [scores[i] for i in members]
            best, value = group_optimum(images, metric)
            extra: dict = {"images": len(members)}
            if has_baseline:
                # Best stop of the original DIP architecture in this group, for comparison.
                baseline, _ = group_optimum(images, metric, restrict=_is_baseline)
                extra["original_architecture_iterations"] = baseline.iteration
            entry = _entry(best, value, **extra)
            if level == "all":
                table["all"] = entry
                if has_baseline:
                    baseline, baseline_value = group_optimum(images, metric, restrict=_is_baseline)
                    table["original_architecture"] = _entry(baseline, baseline_value,
                                                            images=len(members))
            elif level == "microscope_specimen":
                microscope, specimen = group.split("/")
                table.setdefault(level, {}).setdefault(microscope, {})[specimen] = entry
            else:
                table.setdefault(level, {})[group] = entry
        tables[metric] = table
    return tables


def image_entries(pairs: Sequence[PreparedPair],
                  scores: Sequence[dict[Candidate, dict[str, float]]],
                  metrics: Sequence[str], base: Path | None = None) -> list[dict]:
    """The ``[[images]]`` section: each calibration image, its group and per-metric optima."""
    entries = []
    for index, (pair, image_scores) in enumerate(zip(pairs, scores)):
        optimum = {}
        for metric in metrics:
            best, value = image_optimum(image_scores, metric)
            at_best = {m: _rounded(v) for m, v in image_scores[best].items()}
            optimum[metric] = _entry(best, value, **at_best)
        entry = {"name": pair.name, "microscope": pair.microscope, "specimen": pair.specimen,
                 "noisy": _display_path(pair.noisy_path, base),
                 "noisy_sha256": pair.noisy_sha256,
                 "ground_truth": _display_path(pair.truth_path, base),
                 "ground_truth_sha256": pair.truth_sha256, "match": pair.match,
                 "shape": list(pair.shape), "sidecar_index": index,
                 "mean_gradient": _rounded(mean_gradient(pair.noisy), 8)}
        if pair.channel is not None:
            entry["channel"] = pair.channel
        if pair.crop is not None:
            entry["crop"] = list(pair.crop)
        entry["optimum"] = optimum
        entries.append(entry)
    return entries


def _display_path(path: str, base: Path | None) -> str:
    """Paths relative to the pairs' folder where possible: tables move between machines."""
    if base is None:
        return path
    try:
        return Path(path).resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return path


def sidecar_path(table_path: Path) -> Path:
    """``site.toml`` -> ``site.images.tif``: the noisy calibration planes, for nearest-* transfer."""
    return table_path.with_name(table_path.stem + ".images.tif")


def default_state_path(table_path: Path) -> Path:
    return table_path.with_name(table_path.stem + ".calibration.sqlite")


def write_sidecar(path: Path, pairs: Sequence[PreparedPair]) -> str:
    """Write the normalised noisy planes, one TIFF series each; returns the file's sha256."""

    with atomic_output(path) as temp, tifffile.TiffWriter(temp) as writer:
        for pair in pairs:
            writer.write(pair.noisy.astype(np.float32), photometric="minisblack",
                         metadata={"axes": "YX", "name": pair.name})
    return sha256_file(path)


def versions() -> dict:
    from importlib import metadata

    try:
        lpips_version = metadata.version("lpips")
    except metadata.PackageNotFoundError:
        lpips_version = "not installed"
    return {"autodip_watch": __version__, "torch": torch.__version__, "lpips": lpips_version,
            "python": platform.python_version()}
