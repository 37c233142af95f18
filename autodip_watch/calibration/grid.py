"""The search space of a calibration: depths x widths x skips, scored every N iterations.

AUTO-DIP's grid (paper §III-A, DESIGN §2): depth 4-8, width 16..512 or ``asc``, skip 0 or
4, and 100..3000 iterations in steps of 100 taken from one run per configuration.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..dip.params import DEPTHS, SKIPS, WIDTHS, normalise_width
from .errors import CalibrationError


@dataclass(frozen=True)
class GridPoint:
    """One network shape of the grid; the iterations are the snapshots of its run."""

    depth: int
    width: str
    skip: int

    @property
    def key(self) -> str:
        return f"d{self.depth}/w{self.width}/s{self.skip}"

    @classmethod
    def from_key(cls, key: str) -> "GridPoint":
        depth, width, skip = key.split("/")
        return cls(int(depth[1:]), width[1:], int(skip[1:]))


@dataclass(frozen=True)
class CalibrationGrid:
    """The search space: depths x widths x skips, scored every ``every`` iterations."""

    depths: tuple[int, ...] = DEPTHS
    widths: tuple[str, ...] = WIDTHS
    skips: tuple[int, ...] = SKIPS
    max_iterations: int = 3000
    every: int = 100

    def __post_init__(self) -> None:
        try:
            widths = tuple(dict.fromkeys(normalise_width(w) for w in self.widths))
        except ValueError as error:
            raise CalibrationError(str(error)) from None
        object.__setattr__(self, "widths", widths)
        object.__setattr__(self, "depths", tuple(dict.fromkeys(int(d) for d in self.depths)))
        object.__setattr__(self, "skips", tuple(dict.fromkeys(int(s) for s in self.skips)))
        if not self.depths or not self.widths or not self.skips:
            raise CalibrationError("the grid needs at least one depth, width and skip")
        bad_depths = [d for d in self.depths if d not in DEPTHS]
        if bad_depths:
            raise CalibrationError(f"depths must be among {DEPTHS}, got {bad_depths}")
        bad_skips = [s for s in self.skips if s not in SKIPS]
        if bad_skips:
            raise CalibrationError(f"skips must be among {SKIPS}, got {bad_skips}")
        if self.every < 1 or self.max_iterations < 1:
            raise CalibrationError("max_iterations and every must be positive")
        if self.max_iterations % self.every:
            raise CalibrationError(f"max_iterations ({self.max_iterations}) must be a multiple "
                                   f"of every ({self.every})")

    def points(self) -> list[GridPoint]:
        """Grid points in canonical order (depth, width as in WIDTHS, skip)."""
        return [GridPoint(d, w, s) for d in sorted(self.depths)
                for w in sorted(self.widths, key=WIDTHS.index) for s in sorted(self.skips)]

    @property
    def iterations(self) -> list[int]:
        return list(range(self.every, self.max_iterations + 1, self.every))

    def describe(self) -> str:
        widths = ",".join(sorted(self.widths, key=WIDTHS.index))
        depths = ",".join(str(d) for d in sorted(self.depths))
        skips = ",".join(str(s) for s in sorted(self.skips))
        return (f"depth {{{depths}}} x width {{{widths}}} x skip {{{skips}}} x iterations "
                f"{self.every}..{self.max_iterations} step {self.every}")

    def as_dict(self) -> dict:
        return {"depths": sorted(self.depths), "widths": sorted(self.widths, key=WIDTHS.index),
                "skips": sorted(self.skips), "max_iterations": self.max_iterations,
                "every": self.every}


def parse_list(text: str | Sequence | None, kind: Callable = str) -> tuple | None:
    """``"4,5"`` or ``[4, 5]`` -> ``(4, 5)``; None stays None (use the default)."""
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        return tuple(kind(str(item).strip()) for item in items if str(item).strip())
    except ValueError as error:
        raise CalibrationError(f"cannot read {text!r}: {error}") from None
