"""How far a fit is and when it will end: rate-based progress for people.

The DIP fit calls a progress callback after every iteration without waiting for the
device (``dip/fit.py``: no host sync per iteration). The callbacks here only store a few
numbers and a clock reading; whoever shows progress (the CLI's display thread, the
daemon's throttled database writes) reads them when it wants.

Rates are measured from the end of the first reported iteration on: start-up (reading,
hashing, loading torch, building the network, the first iteration's allocations and
kernel selection) is not an iteration and would make an early ETA hours long. So an ETA
exists from the second iteration on, and it converges as the rate is measured over more
iterations.

Nothing here imports torch; ``status`` uses :func:`eta_seconds` too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["FitProgress", "IterationMeter", "eta_seconds", "format_duration"]


def eta_seconds(fraction: float | None, rate: float | None, since_report: float = 0.0
                ) -> float | None:
    """Seconds until ``fraction`` reaches 1 at ``rate`` (fraction per second).

    ``since_report`` is the time since ``fraction`` was measured (the work went on
    meanwhile). None when the rate is not known yet (fewer than two reports).
    """
    if fraction is None or not rate or rate <= 0:
        return None
    return max(0.0, (1.0 - min(1.0, fraction)) / rate - max(0.0, since_report))


def format_duration(seconds: float | None) -> str:
    """``0:01:05`` style, or ``-:--:--`` when unknown (rich's own notation)."""
    if seconds is None:
        return "-:--:--"
    seconds = int(round(max(0.0, seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@dataclass
class IterationMeter:
    """Iterations of one fit (one tile of one plane) against a clock.

    ``update`` is what the per-iteration callback calls: two assignments and, once, an
    anchor. ``rate`` is iterations per second since the first update.
    """

    total: int = 0
    iteration: int = 0
    at: float = 0.0  # clock of the latest update
    anchor: tuple[float, int] | None = None  # (clock, iteration) of the first update

    def update(self, iteration: int, total: int, now: float) -> None:
        if self.anchor is None:
            self.anchor = (now, iteration)
        self.iteration, self.total, self.at = iteration, total, now

    def rate(self) -> float | None:
        """Iterations per second since the first update, None before a second one."""
        if self.anchor is None:
            return None
        started, first = self.anchor
        if self.iteration <= first or self.at <= started:
            return None
        return (self.iteration - first) / (self.at - started)

    def eta(self, now: float) -> float | None:
        rate = self.rate()
        if rate is None or not self.total:
            return None
        return max(0.0, (self.total - self.iteration) / rate - (now - self.at))

    @property
    def done(self) -> bool:
        return bool(self.total) and self.iteration >= self.total


@dataclass
class FitProgress:
    """The fraction of one file's fits done, and its rate since the first iteration.

    Fed with the pipeline's ``progress(plane, planes, tile, tiles, iteration,
    iterations)``. Each (plane, tile) contributes ``iteration / iterations / tiles /
    planes``, so planes fitted together in a batch (each reporting its own iterations)
    add up instead of overwriting each other.
    """

    clock: Callable[[], float] = time.monotonic
    fraction: float = 0.0
    planes: int = 0
    planes_done: int = 0
    at: float | None = None  # clock of the latest report
    anchor: tuple[float, float] | None = None  # (clock, fraction) of the first report
    _tiles: dict[tuple[int, int], float] = field(default_factory=dict)
    _plane: dict[int, float] = field(default_factory=dict)

    def update(self, plane: int, planes: int, tile: int, tiles: int, iteration: int,
               iterations: int, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        share = min(1.0, iteration / max(1, iterations)) / max(1, tiles)
        key = (plane, tile)
        delta = share - self._tiles.get(key, 0.0)
        self._tiles[key] = share
        before = self._plane.get(plane, 0.0)
        self._plane[plane] = before + delta
        if before < 1.0 - 1e-9 <= self._plane[plane]:
            self.planes_done += 1
        self.planes = planes
        self.fraction = min(1.0, self.fraction + delta / max(1, planes))
        if self.anchor is None:
            self.anchor = (now, self.fraction)
        self.at = now

    def rate(self) -> float | None:
        """Fraction of the file per second since the first report (None before a second)."""
        if self.anchor is None or self.at is None:
            return None
        started, first = self.anchor
        if self.at <= started or self.fraction <= first:
            return None
        return (self.fraction - first) / (self.at - started)

    def eta(self, now: float | None = None) -> float | None:
        now = self.clock() if now is None else now
        return eta_seconds(self.fraction, self.rate(), now - (self.at or now))
