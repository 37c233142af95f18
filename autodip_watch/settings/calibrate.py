"""The ``[calibrate]`` settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..calibration.errors import CalibrationError
from ..calibration.grid import CalibrationGrid, parse_list
from ..calibration.pairs import MATCH_MODES
from ..dip.modes import PAPER, fit_mode
from ..dip.params import DEPTHS, SKIPS, WIDTHS


@dataclass
class CalibrateSettings:
    """The ``[calibrate]`` section of the configuration file (all keys optional)."""

    depths: tuple[int, ...] = DEPTHS
    widths: tuple[str, ...] = WIDTHS
    skips: tuple[int, ...] = SKIPS
    max_iterations: int = 3000
    every: int = 100
    crop: int | None = None
    lpips: bool = True
    match: str = "affine"
    seed: int = 0
    device: str | None = None
    mode: str = PAPER  # the fit mode the grid is scored in (dip/modes.py)
    members: int | None = None  # stable mode's ensemble size (None: the mode's for the device)

    KEYS: ClassVar[tuple[str, ...]] = ("depths", "widths", "skips", "max_iterations", "every",
                                       "crop", "lpips", "match", "seed", "device", "mode",
                                       "members")

    @classmethod
    def from_mapping(cls, section: dict) -> "CalibrateSettings":
        unknown = set(section) - set(cls.KEYS)
        if unknown:
            raise CalibrationError(f"[calibrate]: unknown key(s) {', '.join(sorted(unknown))}; "
                                   f"known: {', '.join(cls.KEYS)}")
        values = dict(section)
        for name, kind in (("depths", int), ("widths", str), ("skips", int)):
            if name in values:
                values[name] = parse_list(values[name], kind)
        settings = cls(**values)
        if settings.match not in MATCH_MODES:
            raise CalibrationError(f"[calibrate] match must be one of {MATCH_MODES}")
        try:
            fit_mode(settings.mode)
        except ValueError as error:
            raise CalibrationError(f"[calibrate] mode: {error}") from None
        settings.grid()  # validate now
        return settings

    def grid(self) -> CalibrationGrid:
        return CalibrationGrid(tuple(self.depths), tuple(self.widths), tuple(self.skips),
                               int(self.max_iterations), int(self.every))
