"""``[calibrate]``: the defaults of ``autodip-watch calibrate`` (paper §III-A).

The grid (depths x widths x skips, scored every ``every`` of ``max_iterations``
iterations) is checked by :class:`~autodip_watch.calibration.grid.CalibrationGrid`, its
one home; the command line's options override these values.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..calibration.errors import CalibrationError
from ..calibration.grid import CalibrationGrid, parse_list
from ..dip.modes import MODES, PAPER
from ..dip.params import DEPTHS, SKIPS, WIDTHS
from .base import FitModeName, Flag, Settings, Text, Whole


class CalibrateSettings(Settings):
    """The calibration's search space and how each fit is scored (all keys optional)."""

    depths: tuple[int, ...] = Field(DEPTHS, description="Depths to search.", examples=[[4, 5]])
    widths: tuple[str, ...] = Field(WIDTHS, description="Widths to search (16..512, asc).",
                                    examples=[["16", "asc"]])
    skips: tuple[int, ...] = Field(SKIPS, description="Skip channels to search.",
                                   examples=[[4]])
    max_iterations: Whole = Field(3000, ge=1, description="Iterations per fit.",
                                  examples=[3000])
    every: Whole = Field(100, ge=1, description="Score the output every this many "
                         "iterations of the same run.", examples=[100])
    crop: Whole | None = Field(None, ge=16, description="Centre-crop each pair to N x N "
                               "(planes over 512 px are always cut to 512).", examples=[256])
    lpips: Flag = Field(True, description="Compute LPIPS (needs the AlexNet weights).",
                        examples=[True])
    match: Literal["affine", "none"] = Field(
        "affine", description="Ground truth onto noisy: a least-squares affine fit, or none.",
        examples=["affine"])
    seed: Whole = Field(0, examples=[0])
    device: Text | None = Field(None, examples=["cuda"])
    mode: FitModeName = Field(PAPER, description="Fit mode the grid is scored in: paper (the "
                       "AUTO-DIP calibration) or stable.",
                       json_schema_extra={"enum": list(MODES)}, examples=["paper"])
    members: Whole | None = Field(None, ge=1, description="stable mode: ensemble size.",
                                  examples=[3])

    @field_validator("depths", "skips", mode="before")
    @classmethod
    def _whole_numbers(cls, value: Any) -> Any:
        try:
            return parse_list(value, int) if isinstance(value, str) else value
        except CalibrationError as error:
            raise ValueError(str(error)) from None

    @field_validator("widths", mode="before")
    @classmethod
    def _widths(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_list(value, str)
        return tuple(str(v) for v in value) if isinstance(value, (list, tuple)) else value

    @model_validator(mode="after")
    def _a_grid(self) -> CalibrateSettings:
        try:
            self.grid()
        except CalibrationError as error:
            raise ValueError(str(error)) from None
        return self

    def grid(self) -> CalibrationGrid:
        """The search space these settings describe."""
        return CalibrationGrid(tuple(self.depths), tuple(self.widths), tuple(self.skips),
                               self.max_iterations, self.every)
