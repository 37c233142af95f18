"""What a file says about each logical channel: the input of inference.

A :class:`ChannelContext` gathers, per channel, the OME fields inference reads (name,
fluor, acquisition mode, contrast method, illumination, pinhole, the light sources and
detectors tied to it), the image's name and description, and the file's path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LightSourceHint:
    """The part of an OME light source that says something about the microscope."""

    id: str
    kind: str  # laser, arc, filament, led, generic
    medium: str | None = None
    pulse: str | None = None


@dataclass(frozen=True)
class ChannelContext:
    """What the file says about one logical channel: the input of inference."""

    index: int
    name: str | None = None
    fluor: str | None = None
    acquisition_mode: str | None = None
    contrast_method: str | None = None
    illumination_type: str | None = None
    pinhole_size: float | None = None
    light_sources: tuple[LightSourceHint, ...] = ()
    detectors: tuple[tuple[str, str], ...] = ()  # (id, OME detector type)
    hints_from_instrument: bool = False  # light sources/detectors not tied to the channel
    image_name: str | None = None
    description: str | None = None
    path: Path | None = None

    def text(self, field_name: str) -> str | None:
        if field_name == "fluor":
            return self.fluor
        if field_name == "channel":
            return self.name
        if field_name == "image":
            return self.image_name
        if field_name == "description":
            return self.description
        if field_name == "path":
            return _path_text(self.path)
        raise KeyError(field_name)


def _path_text(path: Path | None) -> str | None:
    """File name plus its three nearest folders: enough for a lab's naming, not the mount."""
    if path is None:
        return None
    parts = Path(path).parts
    return "/".join(parts[-4:])


def _enum_value(value) -> str | None:
    if value is None:
        return None
    return str(getattr(value, "value", value))


_LIGHT_SOURCE_KINDS = {"Laser": "laser", "Arc": "arc", "Filament": "filament",
                       "LightEmittingDiode": "led", "GenericExcitationSource": "generic"}


def _light_source_hint(source) -> LightSourceHint:
    return LightSourceHint(id=str(source.id),
                           kind=_LIGHT_SOURCE_KINDS.get(type(source).__name__, "generic"),
                           medium=_enum_value(getattr(source, "laser_medium", None)),
                           pulse=_enum_value(getattr(source, "pulse", None)))


def _instrument_of(ome, image):
    if not ome.instruments:
        return None
    if image.instrument_ref is not None:
        for instrument in ome.instruments:
            if instrument.id == image.instrument_ref.id:
                return instrument
    return ome.instruments[0] if len(ome.instruments) == 1 else None


def _light_sources(instrument) -> list:
    if instrument is None:
        return []
    return [*instrument.lasers, *instrument.arcs, *instrument.filaments,
            *instrument.light_emitting_diodes, *instrument.generic_excitation_sources]


def channel_contexts(ome, image_index: int | None, channel_count: int, samples: int = 1,
                     path: Path | None = None, channel_names: Sequence[str | None] = ()) -> list[ChannelContext]:
    """One context per logical channel (RGB samples count as channels) of an image.

    ``ome`` may be ``None`` (plain TIFF, PNG): then only names and the path are known.
    """
    names = list(channel_names) + [None] * channel_count
    if ome is None or image_index is None:
        return [ChannelContext(index=i, name=names[i], path=path) for i in range(channel_count)]
    image = ome.images[image_index]
    instrument = _instrument_of(ome, image)
    sources = {s.id: s for s in _light_sources(instrument)}
    detectors = {d.id: d for d in (instrument.detectors if instrument else [])}
    channels = list(image.pixels.channels)
    contexts = []
    for index in range(channel_count):
        ome_index = index // max(samples, 1)
        channel = channels[ome_index] if ome_index < len(channels) else None
        if channel is None:
            contexts.append(ChannelContext(index=index, name=names[index],
                                           image_name=image.name, description=image.description,
                                           path=path))
            continue
        own_sources, own_detectors, from_instrument = [], [], False
        if channel.light_source_settings is not None and channel.light_source_settings.id in sources:
            own_sources = [sources[channel.light_source_settings.id]]
        if channel.detector_settings is not None and channel.detector_settings.id in detectors:
            own_detectors = [detectors[channel.detector_settings.id]]
        if not own_sources and not own_detectors:
            own_sources, own_detectors = list(sources.values()), list(detectors.values())
            from_instrument = bool(own_sources or own_detectors)
        contexts.append(ChannelContext(
            index=index, name=names[index] or channel.name, fluor=channel.fluor,
            acquisition_mode=_enum_value(channel.acquisition_mode),
            contrast_method=_enum_value(channel.contrast_method),
            illumination_type=_enum_value(channel.illumination_type),
            pinhole_size=channel.pinhole_size,
            light_sources=tuple(_light_source_hint(s) for s in own_sources),
            detectors=tuple((str(d.id), _enum_value(d.type) or "") for d in own_detectors),
            hints_from_instrument=from_instrument,
            image_name=image.name, description=image.description, path=path))
    return contexts
