"""Per-channel microscope type and specimen, with the evidence for each.

(First version: explicit labels only; OME-based inference comes with the metadata issue.)
"""

from __future__ import annotations

from dataclasses import dataclass

from .transfer import UNKNOWN, canonical_microscope, canonical_specimen


@dataclass(frozen=True)
class ChannelGroup:
    """What a channel is, and why we think so."""

    index: int
    name: str | None
    microscope: str
    specimen: str
    evidence: tuple[str, ...]

    def as_dict(self) -> dict:
        return {"index": self.index, "name": self.name, "microscope": self.microscope,
                "specimen": self.specimen, "evidence": list(self.evidence)}


def infer_channels(channel_count: int, channel_names: list[str | None] | None = None,
                   microscope: str | None = None,
                   specimen: str | None = None) -> list[ChannelGroup]:
    """Label every channel; explicit ``microscope``/``specimen`` win over everything."""
    names = list(channel_names or []) + [None] * channel_count
    groups = []
    for index in range(channel_count):
        evidence = []
        mic = canonical_microscope(microscope)
        spec = canonical_specimen(specimen)
        evidence.append(f"microscope: {'override' if mic != UNKNOWN else 'no evidence'}")
        evidence.append(f"specimen: {'override' if spec != UNKNOWN else 'no evidence'}")
        groups.append(ChannelGroup(index, names[index], mic, spec, tuple(evidence)))
    return groups
