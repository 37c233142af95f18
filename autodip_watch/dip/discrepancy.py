"""Ground-truth-free stopping past the transferred count: the discrepancy principle.

The transferred iteration count N is the calibration's prior for a whole group; a given
image may need more. Its noise says how far the fit should go: the mean squared residual
of a fit that has fitted the signal and nothing else equals the noise variance
(Morozov's discrepancy principle). A DIP fit's residual falls as it fits, first the
signal, then the noise; while it is still above the noise variance estimated from the
image (``noise.estimate_noise``), the fit has not yet fitted all of the signal.

So, in the stable mode (issue 14, ``bench/README.md``), a network whose lowest loss at N
is still above its tile's noise variance goes on, and stops at the first candidate stop
(every ``EXTENSION_STEP`` x N) where it has reached it, at the latest at
N x (1 + ``extend_fraction``). N stays the floor: a fit that reaches the noise level
before N is not cut, as the stable mode's late-window mean and ensemble already remove
the over-fitting that follows (measured: cutting there lost 0.2-0.4 dB on three of the
four W2S frames). A residual more than ``discrepancy_margin`` x the estimate at N means the
estimate does not describe this noise (spatially correlated noise, as in the FMD
images, where the estimator sees a tenth of the variance): the prior N is kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .options import FitOptions

#: An extended fit decides whether to go on at the transferred count N and then every
#: this fraction of N (one host sync each): the late-window means of all these candidate
#: stops are kept, so whichever a network stops at, its output is that window's mean.
EXTENSION_STEP = 0.05


def extension_limit(iterations: int, extend_fraction: float) -> int:
    """The latest stop of a fit of ``iterations`` (N) transferred iterations that may be
    extended by ``extend_fraction`` (0-1): N + round(fraction x N); N where that adds none."""
    return iterations + int(round(extend_fraction * iterations))


class DiscrepancyStop:
    """Where each of K stacked networks stops: the transferred count N, or later by the
    discrepancy principle (``fit_tiles``; issue 14, ``bench/README.md``).

    ``iterations``: N; ``limit``: the latest stop (> N); ``variances``: per network, its
    tile's noise variance on the fitted [0, 1] scale, or None (stops at N); ``margin``:
    ``FitOptions.discrepancy_margin``. ``candidates``: N, N + step, ..., ``limit`` (step
    ``EXTENSION_STEP`` x N). At each, :meth:`decide` compares the lowest loss so far of
    every undecided network with its variance (one host sync); ``stops[k]`` is set once
    network k is decided. ``bench/analyse_trajectories.py`` replays it on recorded losses.
    """

    def __init__(self, iterations: int, limit: int, variances: list[float | None],
                 margin: float) -> None:
        step = max(1, int(round(EXTENSION_STEP * iterations)))
        self.base = iterations
        self.limit = limit
        self.candidates = sorted({*range(iterations, limit, step), limit})
        self.variances = variances
        self.margin = margin
        self.stops: list[int | None] = [None] * len(variances)

    @classmethod
    def plan(cls, options: FitOptions, iterations: int,
             variances: Sequence[float | None] | None, count: int) -> "DiscrepancyStop | None":
        """The extension of a fit, or None where it cannot go past N (off, or no noise
        variance known for any tile)."""
        limit = extension_limit(iterations, options.extend_fraction)
        if limit == iterations or variances is None:
            return None
        variances = [None if v is None or not np.isfinite(v) or v <= 0 else float(v)
                     for v in variances]
        if len(variances) != count:
            raise ValueError(f"need one noise variance per tile ({count}), got {len(variances)}")
        if all(v is None for v in variances):
            return None
        return cls(iterations, limit, variances, options.discrepancy_margin)

    def decide(self, iteration: int, losses: torch.Tensor) -> bool:
        """Decide the networks that can be decided after ``iteration``; True once all are.

        ``losses``: (at least ``iteration``, K) MSE per iteration and network, any device.
        """
        if iteration not in self.candidates:
            return False
        lowest = losses[:iteration].amin(dim=0).tolist()  # the one host sync
        for k, variance in enumerate(self.variances):
            if self.stops[k] is not None:
                continue
            if (variance is None or lowest[k] <= variance or iteration == self.limit
                    or (iteration == self.base and lowest[k] > self.margin * variance)):
                self.stops[k] = iteration
        return all(stop is not None for stop in self.stops)
