"""The transfer hierarchy: which calibration groups a channel belongs to, most specific first.

The paper's best strategy is group-based transfer (§II-B.1): use the configuration that
was best on average for calibration images of the same microscope type and specimen.
When a group is missing (e.g. an unknown specimen), the next level answers: the
microscope-only group, then the specimen-only group, then ``all``. This module is the
one place that walk is written; the table lookup (``table.py``), the nearest-image pool
(``nearest.py``) and the calibration's groups (``calibration/selection.py``) all use it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..dip.params import DipParams
from .labels import UNKNOWN, canonical_microscope, canonical_specimen

#: Transfer levels, most specific first.
LEVELS = ("microscope+specimen", "microscope", "specimen", "all")
#: The section of a calibration table that holds each level's groups.
TABLE_SECTIONS = {"microscope+specimen": "microscope_specimen", "microscope": "microscope",
                  "specimen": "specimen", "all": "all"}


def group_levels(microscope: str | None, specimen: str | None) -> list[tuple[str, str]]:
    """The ``(level, group)`` pairs a channel with these labels belongs to, most specific
    first: ``("microscope+specimen", "widefield/nucleus")``, ``("microscope",
    "widefield")``, ``("specimen", "nucleus")``, ``("all", "all")``. Levels that need a
    label the channel does not have (``unknown``) are left out; ``all`` never is.

    Labels are canonicalised first (``wide-field`` -> ``widefield``).
    """
    microscope = canonical_microscope(microscope)
    specimen = canonical_specimen(specimen)
    candidates = [("microscope+specimen", f"{microscope}/{specimen}"),
                  ("microscope", microscope), ("specimen", specimen), ("all", "all")]
    return [(level, group) for level, group in candidates
            if UNKNOWN not in group.split("/")]


@dataclass(frozen=True)
class Transfer:
    """The outcome of a lookup: parameters, and which level and group supplied them."""

    params: DipParams
    level: str  # one of LEVELS, or "override" when the user set every parameter
    group: str  # e.g. "widefield/nucleus", "widefield", "nucleus", "all"
    metric: str

    def as_dict(self) -> dict:
        return {"level": self.level, "group": self.group, "metric": self.metric,
                "params": self.params.as_dict()}


def apply_overrides(transfer: Transfer, depth: int | None = None, width: str | int | None = None,
                    skip: int | None = None, iterations: int | None = None) -> Transfer:
    """Replace parameters the user set by hand; the level records that they did."""
    changes = {key: value for key, value in
               (("depth", depth), ("width", width), ("skip", skip), ("iterations", iterations))
               if value is not None}
    if not changes:
        return transfer
    merged = {**transfer.params.as_dict(), **changes}
    params = DipParams(**merged)
    level = "override" if len(changes) == 4 else f"{transfer.level}+override"
    return Transfer(params, level, transfer.group, transfer.metric)
