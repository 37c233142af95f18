"""Choosing the best (configuration, iteration): per image, and per group on average.

Per metric the best candidate wins; ``lpips_psnr`` is the paper's combined criterion,
the sum of an image's LPIPS rank and PSNR rank (§III-A). Groups follow the transfer
hierarchy (``transfer/hierarchy.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..dip.params import WIDTHS, DipParams
from ..metrics import LOWER_IS_BETTER
from ..transfer.hierarchy import TABLE_SECTIONS, group_levels
from .errors import CalibrationError
from .grid import GridPoint
from .pairs import PreparedPair


#: Measures recorded at every snapshot (the columns of the SQLite ``snapshots`` table).
MEASURES = ("mse", "mae", "psnr", "ssim", "lpips")
#: The paper's combined criterion: lowest sum of LPIPS rank and PSNR rank.
RANK_SUM = "lpips_psnr"
#: Table metrics in the order they are written; lpips ones only when LPIPS was computed.
TABLE_METRICS = ("mae", "mse", "psnr", "ssim", "lpips", RANK_SUM)
METRIC_MEANING = {
    "mae": "lowest mean absolute error to the ground truth",
    "mse": "lowest mean squared error to the ground truth",
    "psnr": "highest PSNR to the ground truth",
    "ssim": "highest SSIM to the ground truth",
    "lpips": "lowest LPIPS (AlexNet) to the ground truth",
    RANK_SUM: "lowest sum of LPIPS rank and PSNR rank (the paper's choice)",
}


@dataclass(frozen=True)
class Candidate:
    """A (configuration, stopping iteration) pair: one point of the search."""

    depth: int
    width: str
    skip: int
    iteration: int

    def tie_key(self) -> tuple[int, int, int, int]:
        """Order among equal scores: fewer iterations (faster) first, then grid order."""
        return (self.iteration, self.depth, WIDTHS.index(self.width), self.skip)

    def params(self) -> DipParams:
        return DipParams(self.depth, self.width, self.skip, self.iteration)

    @property
    def config(self) -> str:
        return GridPoint(self.depth, self.width, self.skip).key


def average_ranks(values: Sequence[float], descending: bool = False) -> np.ndarray:
    """Ranks from 1 (best); tied values share the mean of the ranks they span.

    NaN counts as the worst value, so a failed score never wins.
    """
    array = np.asarray(values, dtype=np.float64)
    keyed = -array if descending else array.copy()
    keyed[np.isnan(keyed)] = np.inf
    order = np.argsort(keyed, kind="stable")
    ranks = np.empty(len(keyed), dtype=np.float64)
    sorted_values = keyed[order]
    start = 0
    while start < len(sorted_values):
        stop = start + 1
        while stop < len(sorted_values) and sorted_values[stop] == sorted_values[start]:
            stop += 1
        ranks[order[start:stop]] = (start + 1 + stop) / 2.0  # mean of ranks start+1..stop
        start = stop
    return ranks


def criterion(scores: dict[Candidate, dict[str, float]], metric: str
              ) -> tuple[dict[Candidate, float], bool]:
    """Per-candidate value of ``metric`` for one image, and whether lower is better.

    For ``lpips_psnr`` the value is the candidate's rank sum over all of the image's
    candidates (the paper's combined measure).
    """
    if metric == RANK_SUM:
        candidates = list(scores)
        lpips_ranks = average_ranks([scores[c].get("lpips", math.nan) for c in candidates])
        psnr_ranks = average_ranks([scores[c].get("psnr", math.nan) for c in candidates],
                                   descending=True)
        return {c: float(a + b) for c, a, b in zip(candidates, lpips_ranks, psnr_ranks)}, True
    if metric not in LOWER_IS_BETTER:
        raise CalibrationError(f"unknown metric {metric!r}")
    return {c: float(s.get(metric, math.nan)) for c, s in scores.items()}, LOWER_IS_BETTER[metric]


def select(values: dict[Candidate, float], lower_is_better: bool) -> tuple[Candidate, float]:
    """The best candidate; exact ties go to the smallest :meth:`Candidate.tie_key`."""
    if not values:
        raise CalibrationError("no candidates to choose from")
    best: tuple[Candidate, float] | None = None
    for candidate in sorted(values, key=Candidate.tie_key):
        value = values[candidate]
        if math.isnan(value):
            continue
        if best is None or (value < best[1] if lower_is_better else value > best[1]):
            best = (candidate, value)
    if best is None:
        raise CalibrationError("every candidate scored NaN")
    return best


def group_optimum(images: Sequence[dict[Candidate, dict[str, float]]], metric: str,
                  restrict: Callable[[Candidate], bool] | None = None) -> tuple[Candidate, float]:
    """The candidate best on average over ``images`` (each: candidate -> scores).

    The per-image criterion (the value, or for ``lpips_psnr`` the rank sum, ranked over
    that image's full grid) is averaged over the images, over the candidates every
    image has; ``restrict`` limits the choice (e.g. to the original DIP architecture)
    without changing the ranks.
    """
    if not images:
        raise CalibrationError("a group needs at least one image")
    per_image = []
    lower = True
    for scores in images:
        values, lower = criterion(scores, metric)
        per_image.append(values)
    common = set(per_image[0]).intersection(*per_image[1:])
    if restrict is not None:
        common = {c for c in common if restrict(c)}
    means = {c: float(np.mean([values[c] for values in per_image])) for c in common}
    return select(means, lower)


def image_optimum(scores: dict[Candidate, dict[str, float]], metric: str) -> tuple[Candidate, float]:
    """The best candidate of one image for ``metric``."""
    return group_optimum([scores], metric)


def group_members(pairs: Sequence[PreparedPair]) -> dict[tuple[str, str], list[int]]:
    """Indices of the pairs in every group: (level, group) -> [pair index].

    Levels are named by the table's sections (``transfer.hierarchy.TABLE_SECTIONS``):
    ``microscope_specimen`` (group "m/s"), ``microscope``, ``specimen`` and ``all``; an
    unknown label leaves the image out of that level only.
    """
    groups: dict[tuple[str, str], list[int]] = {}
    for index, pair in enumerate(pairs):
        for level, group in group_levels(pair.microscope, pair.specimen):
            groups.setdefault((TABLE_SECTIONS[level], group), []).append(index)
    return groups
