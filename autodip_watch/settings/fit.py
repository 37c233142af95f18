"""How planes are fitted: the ``[dip]`` table, and the same fields of ``denoise``.

Nothing here is required: the calibration table gives each channel's depth, width, skip
and iterations (paper §II-B); these fields override them (tests, experiments), choose
the transfer (``group``, or a ``nearest-*`` mode), the fit mode (``dip/modes.py``) and the
speed settings of the fit (``bench/README.md``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from ..dip.modes import DEFAULT_MODE, MODES
from ..dip.params import DEPTHS, SKIPS, SPEED_SETTINGS, WIDTHS, normalise_width
from ..transfer.modes import TRANSFER_MODES
from .base import FitModeName, Flag, Number, Recorded, Settings, Text, Whole

#: Speed settings that cannot be used together.
_EXCLUSIVE_SPEED = {"compile", "cuda_graphs"}


class FitSettings(Settings):
    """``[dip]``: overrides of the calibrated configuration and the settings of the fit."""

    depth: Annotated[Whole | None, Recorded("depth_override")] = Field(
        None, description="Override the network depth.",
        json_schema_extra={"enum": [*DEPTHS, None]}, examples=[4])
    width: Annotated[str | None, Recorded("width_override")] = Field(
        None, description="Override the width: 16..512 or asc.",
        json_schema_extra={"enum": [*WIDTHS, None]}, examples=["asc"])
    skip: Annotated[Whole | None, Recorded("skip_override")] = Field(
        None, description="Override the skip channels.",
        json_schema_extra={"enum": [*SKIPS, None]}, examples=[4])
    iterations: Annotated[Whole | None, Recorded("iterations_override")] = Field(
        None, ge=1, description="Override the iterations.", examples=[300])
    metric: Text | None = Field(None, description="Which metric's table of the calibration "
                                "(default: the table's, lpips_psnr).",
                                examples=["lpips_psnr"])
    seed: Annotated[Whole, Recorded("seed")] = Field(
        0, description="Seed of the network and its input.", examples=[0])
    reg_noise_std: Annotated[Number, Recorded("reg_noise_std")] = Field(
        0.0, ge=0, description="The original DIP's input noise (AUTO-DIP: 0).", examples=[0.0])
    ema_weight: Annotated[Number | None, Recorded("ema_weight")] = Field(
        None, ge=0, lt=1, description="The original DIP's output average (e.g. 0.99; "
        "AUTO-DIP: none).", examples=[0.99])
    transfer: Annotated[Literal[TRANSFER_MODES], Recorded("transfer")] = Field(
        "group", description="Parameter transfer: group (the paper's), or a nearest-* mode "
        "(needs a table from `autodip-watch calibrate`).", examples=["nearest-lpips"])
    within_group: Flag = Field(False, description="nearest-*: compare only with calibration "
                               "images of the plane's group.", examples=[True])
    speed: tuple[str, ...] = Field((), description="Speed settings of the fit (default none, "
                                   "the plain fp32 path).",
                                   json_schema_extra={"items": {"enum": list(SPEED_SETTINGS)}},
                                   examples=[["channels_last", "tf32"]])
    mode: FitModeName = Field(DEFAULT_MODE, description="Fit mode: stable (an ensemble of seeds, each "
                       "the mean of its late iterations without loss spikes, going on past "
                       "the transferred count while the residual is above the estimated "
                       "noise) or paper (the published AUTO-DIP: one fit, last iterate).",
                       json_schema_extra={"enum": list(MODES)}, examples=["paper"])
    members: Whole | None = Field(None, ge=1, description="Ensemble size: fits per tile "
                                  "(default: the mode's for the device).", examples=[3])

    @field_validator("depth")
    @classmethod
    def _depth(cls, value: int | None) -> int | None:
        if value is not None and value not in DEPTHS:
            raise ValueError(f"must be one of {', '.join(map(str, DEPTHS))}, got {value!r}")
        return value

    @field_validator("width", mode="before")
    @classmethod
    def _width(cls, value: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(f"must be 16..512 or \"asc\", got {value!r}")
        try:
            return normalise_width(value)
        except ValueError:
            raise ValueError(f"must be one of {', '.join(WIDTHS)}, got {value!r}") from None

    @field_validator("skip")
    @classmethod
    def _skip(cls, value: int | None) -> int | None:
        if value is not None and value not in SKIPS:
            raise ValueError(f"must be one of {', '.join(map(str, SKIPS))}, got {value!r}")
        return value

    @field_validator("speed", mode="before")
    @classmethod
    def _speed_list(cls, value: Any) -> Any:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"must be a list of names, e.g. speed = [\"channels_last\", "
                             f"\"tf32\"], got {value!r}")
        return tuple(v.strip() for v in value if v.strip())

    @field_validator("speed")
    @classmethod
    def _speed_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [name for name in value if name not in SPEED_SETTINGS]
        if unknown:
            raise ValueError(f"unknown speed setting(s) {', '.join(unknown)}; choose from "
                             f"{', '.join(SPEED_SETTINGS)}")
        if _EXCLUSIVE_SPEED <= set(value):
            raise ValueError("speed settings compile and cuda_graphs do not combine")
        return value
