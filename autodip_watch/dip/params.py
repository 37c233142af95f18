"""DIP configurations (depth, width, skip, iterations): validation and level widths.

Kept free of torch so that the CLI's light commands (status, groups, queue) start fast.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import defaults

#: Depths, widths and skip sizes AUTO-DIP searched; anything else has no calibration.
DEPTHS = (4, 5, 6, 7, 8)
WIDTHS = ("16", "32", "64", "128", "256", "512", "asc")
SKIPS = (0, 4)
#: Channels of the fixed random input z (original DIP: 32).
INPUT_CHANNELS = 32
#: Scale of the uniform input noise, U[0,1) x 0.1 (original DIP: ``var=1/10``).
INPUT_NOISE_SCALE = 0.1
LEAKY_SLOPE = 0.2


@dataclass(frozen=True)
class DipParams:
    """One DIP configuration: the network shape and when to stop."""

    depth: int
    width: str
    skip: int
    iterations: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "width", normalise_width(self.width))
        if self.depth not in DEPTHS:
            raise ValueError(f"depth must be one of {DEPTHS}, got {self.depth!r}")
        if self.skip not in SKIPS:
            raise ValueError(f"skip must be one of {SKIPS}, got {self.skip!r}")
        if int(self.iterations) < 1:
            raise ValueError(f"iterations must be at least 1, got {self.iterations!r}")
        object.__setattr__(self, "iterations", int(self.iterations))

    @property
    def channels(self) -> list[int]:
        """Feature maps per level, used for both the down and the up path."""
        return level_channels(self.depth, self.width)

    def as_dict(self) -> dict:
        return {"depth": self.depth, "width": self.width, "skip": self.skip,
                "iterations": self.iterations}

    def label(self) -> str:
        return f"d{self.depth}/w{self.width}/s{self.skip}/{self.iterations}it"


def normalise_width(width: int | str) -> str:
    """Accept 128, "128", "asc", "asc_to512" or "v512" and return the canonical form."""
    text = str(width).strip().lower()
    if text in ("asc", "asc_to512", "v512"):
        return "asc"
    if text not in WIDTHS:
        raise ValueError(f"width must be one of {', '.join(WIDTHS)}, got {width!r}")
    return text


def level_channels(depth: int, width: int | str) -> list[int]:
    """Channels at each of the ``depth`` levels.

    ``asc`` doubles per level and reaches 512 at the deepest one:
    ``[2**i for i in range(10 - depth, 10)]``.
    """
    width = normalise_width(width)
    if width == "asc":
        return [2**i for i in range(10 - depth, 10)]
    return [int(width)] * depth


#: The original DIP configuration (Ulyanov et al.), the baseline to beat.
BASELINE = DipParams(depth=5, width="128", skip=4, iterations=1800)


#: Speed settings of the fit (FitOptions), off unless asked for: each changes the
#: arithmetic or the execution, and bench/README.md records what each gains and costs.
SPEED_SETTINGS = ("channels_last", "tf32", "bf16", "compile", "cuda_graphs")
#: Speed settings that exist only on CUDA; elsewhere they are left out (and the
#: provenance lists the settings that were applied).
CUDA_ONLY_SPEED = ("tf32", "cuda_graphs")

# The batching defaults are written once, in defaults.py (settings and the CLI's help
# name them too); the fitter's keyword defaults are the same values.
DEFAULT_MAX_BATCH = defaults.MAX_BATCH
DEFAULT_LINGER_SECONDS = defaults.LINGER_SECONDS
