"""Per-channel microscope type and specimen, with the evidence for each decision.

AUTO-DIP's parameters depend on the group (microscope type x specimen), so every
channel needs a label and a reason a person can check. Labels come from, in order of
precedence (first that says something wins):

Microscope
    1. explicit override (``--microscope``, ``DenoiseSettings.microscope``);
    2. the file's structured metadata: ``Channel@ContrastMethod`` /
       ``IlluminationType`` saying the channel is not fluorescence, then
       ``Channel@AcquisitionMode``, then instrument hints (pulsed Ti:Sapphire laser with a
       PMT -> two-photon, a pinhole -> confocal, a camera with an arc, LED or filament
       source -> widefield, non-linear illumination -> two-photon);
    3. configured rules (regular expressions) over the file's own text: channel name,
       image name, image description;
    4. the folder default from the configuration;
    5. configured rules over the path (file name and its three nearest folders);
    6. ``unknown``.

Specimen
    1. explicit override (``--specimen``);
    2. configured rules over the file's own text, most specific field first:
       ``Channel@Fluor``, channel name, image name, image description;
    3. the folder default; 4. rules over the path; 5. ``unknown``.

A field whose text matches rules of two different labels (a description naming DAPI and
phalloidin) is ambiguous and skipped, with a note in the evidence.

Policy: channels whose label is not fluorescence (brightfield, phase contrast, DIC,
darkfield, other transmitted light) are copied through unchanged unless
``InferenceRules.denoise_non_fluorescence`` is set. Fluorescence modes outside the
calibration (TIRF, light-sheet, FLIM, SIM, ...) are denoised; having no group of their
own in the table, their parameters come from the specimen group, then ``all``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .transfer import MICROSCOPES, SPECIMENS, UNKNOWN, canonical_microscope, canonical_specimen

#: Fluorescence modes the calibration does not cover: denoised with fallback parameters.
OTHER_FLUORESCENCE = ("tirf", "light-sheet", "flim", "sim", "sted", "single-molecule",
                      "spectral", "shg", "other")
#: Channels that are not fluorescence: copied through unless configured otherwise.
NON_FLUORESCENCE = ("brightfield", "phase-contrast", "dic", "darkfield", "transmitted")
MICROSCOPE_LABELS = MICROSCOPES + OTHER_FLUORESCENCE + NON_FLUORESCENCE + (UNKNOWN,)
SPECIMEN_LABELS = SPECIMENS + (UNKNOWN,)

POLICY_DENOISE = "denoise"
POLICY_COPY = "copy"

#: Text fields rules can look at, most specific first.
TEXT_FIELDS = ("fluor", "channel", "image", "description", "path")
_FIELD_TITLES = {"fluor": "Channel Fluor", "channel": "channel name", "image": "image name",
                 "description": "image description", "path": "path"}
#: Fields that are the file's own metadata (outrank folder defaults); the rest is the path.
_METADATA_FIELDS = ("fluor", "channel", "image", "description")

#: OME Channel@AcquisitionMode -> microscope label.
ACQUISITION_MODES = {
    "LaserScanningConfocalMicroscopy": "confocal", "SpinningDiskConfocal": "confocal",
    "SlitScanConfocal": "confocal", "SweptFieldConfocal": "confocal",
    "WideField": "widefield", "MultiPhotonMicroscopy": "two-photon",
    "TotalInternalReflection": "tirf", "TIRF": "tirf", "SPIM": "light-sheet",
    "FluorescenceLifetime": "flim", "StructuredIllumination": "sim", "STED": "sted",
    "PALM": "single-molecule", "STORM": "single-molecule",
    "SingleMoleculeImaging": "single-molecule", "SpectralImaging": "spectral",
    "SecondHarmonicGenerationImaging": "shg", "BrightField": "brightfield",
    "FluorescenceCorrelationSpectroscopy": "other", "NearFieldScanningOpticalMicroscopy": "other",
    "FSM": "other", "LCM": "other", "Other": "other",
}
#: OME Channel@ContrastMethod values that mean "not fluorescence".
NON_FLUORESCENCE_CONTRAST = {
    "Brightfield": "brightfield", "Phase": "phase-contrast", "DIC": "dic",
    "Darkfield": "darkfield", "HoffmanModulation": "transmitted",
    "ObliqueIllumination": "transmitted", "PolarizedLight": "transmitted",
}
NON_FLUORESCENCE_ILLUMINATION = {"Transmitted": "transmitted", "Oblique": "transmitted"}
_CAMERAS = {"CCD", "IntensifiedCCD", "AnalogVideo", "EMCCD", "CMOS", "EBCCD"}
_PULSED = {"ModeLocked", "Repetitive", "QSwitched", "Single"}
_LABEL_SLUG = re.compile(r"^[a-z][a-z0-9-]*$")


def validate_microscope(label: str | None) -> str:
    """Canonical microscope label; ``ValueError`` naming the known labels otherwise."""
    canonical = canonical_microscope(label)
    if canonical not in MICROSCOPE_LABELS:
        raise ValueError(f"unknown microscope {label!r}; use one of {', '.join(MICROSCOPE_LABELS)}")
    return canonical


def validate_specimen(label: str | None) -> str:
    """Canonical specimen label. Specimens are an open set (a new calibration may add
    one), so any lower-case slug is accepted; the table lookup falls back if it has none."""
    canonical = canonical_specimen(label)
    if not _LABEL_SLUG.match(canonical):
        raise ValueError(f"invalid specimen {label!r}; use one of {', '.join(SPECIMEN_LABELS)} "
                         f"or a lower-case name")
    return canonical


# --------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class LabelRule:
    """A regular expression (case-insensitive) that labels a channel when it matches a field."""

    pattern: str
    label: str
    fields: tuple[str, ...] = TEXT_FIELDS

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "regex", re.compile(self.pattern, re.IGNORECASE))
        except re.error as error:
            raise ValueError(f"rule pattern {self.pattern!r} is not a valid regular "
                             f"expression: {error}") from None
        fields = (self.fields,) if isinstance(self.fields, str) else tuple(self.fields)
        unknown = [f for f in fields if f not in TEXT_FIELDS]
        if unknown or not fields:
            raise ValueError(f"rule {self.pattern!r}: fields must be among "
                             f"{', '.join(TEXT_FIELDS)} (got {', '.join(map(str, fields)) or 'none'})")
        object.__setattr__(self, "fields", fields)

    def matches(self, text: str) -> bool:
        return bool(self.regex.search(text))  # type: ignore[attr-defined]


@dataclass(frozen=True)
class FolderDefaults:
    """Labels for files under ``folder`` that their own metadata does not settle.

    ``folder`` may be ``None`` when the caller already knows the file is in the folder
    (the daemon passes its watch folder's defaults with each job).
    """

    folder: Path | None
    microscope: str | None = None
    specimen: str | None = None

    def __post_init__(self) -> None:
        if self.folder is not None:
            object.__setattr__(self, "folder", Path(self.folder).expanduser())
        if self.microscope is not None:
            object.__setattr__(self, "microscope", validate_microscope(self.microscope))
        if self.specimen is not None:
            object.__setattr__(self, "specimen", validate_specimen(self.specimen))

    def contains(self, path: Path) -> bool:
        if self.folder is None:
            return True
        try:
            Path(path).resolve().relative_to(self.folder.resolve())
            return True
        except (ValueError, OSError):
            return False


_B = r"(?<![a-z])"   # no letter before: "epi" in "EPI_RFP" but not in "recipe"
_E = r"(?![a-z])"    # no letter after

#: Specimen rules shipped by default: common dyes, tags and plain words.
DEFAULT_SPECIMEN_RULES = (
    LabelRule(_B + r"(dapi|hoechst|draq-?5|h2b|nucle(us|i|ar)|sytox|to-?pro-?3)", "nucleus"),
    LabelRule(_B + r"(phalloidin|life-?act|(f-?)?actin(?!in)|utrophin)", "actin"),
    LabelRule(_B + r"(mito-?tracker|tom-?20|mito(?!s|tic)|mitochondri)", "mito"),
)
#: Microscope rules shipped by default; transmitted-light names only on the channel name,
#: where "BF", "DIC" and "Trans" are common and unambiguous.
DEFAULT_MICROSCOPE_RULES = (
    LabelRule(_B + r"(bf|bright-?field)" + _E, "brightfield", ("channel",)),
    LabelRule(_B + r"dic" + _E, "dic", ("channel",)),
    LabelRule(_B + r"(phase|ph[123])" + _E, "phase-contrast", ("channel",)),
    LabelRule(_B + r"(trans|transmitted|t-?pmt)" + _E, "transmitted", ("channel",)),
    # not "2p": Micro-Manager names use it for "2 positions"
    LabelRule(r"two-?photon|multi-?photon|" + _B + r"mpm" + _E, "two-photon",
              ("channel", "image", "description", "path")),
    LabelRule(r"confocal|spinning-?disk|" + _B + r"(sdc|clsm|lscm)" + _E, "confocal",
              ("channel", "image", "description", "path")),
    LabelRule(r"wide-?field|epi-?fluorescen|" + _B + r"(epi|wf)" + _E, "widefield",
              ("channel", "image", "description", "path")),
    LabelRule(_B + r"tirf" + _E + "|total internal reflection", "tirf",
              ("channel", "image", "description", "path")),
    LabelRule(r"light-?sheet|" + _B + r"(spim|lattice)" + _E, "light-sheet",
              ("channel", "image", "description", "path")),
)


@dataclass(frozen=True)
class InferenceRules:
    """Everything configurable about labelling channels; the daemon's config builds one.

    Parameters
    ----------
    specimen_rules, microscope_rules
        Tried in order within each field; see the module docstring for the field order.
    folder_defaults
        Labels for files under a folder; for each label, the deepest folder holding the
        file that sets it wins (a sub-folder can refine the specimen only).
    use_instrument_hints
        Infer the microscope from light sources, detectors and pinholes when
        ``AcquisitionMode`` is absent.
    denoise_non_fluorescence
        Denoise brightfield / phase / DIC / transmitted channels instead of copying them.
    """

    specimen_rules: tuple[LabelRule, ...] = DEFAULT_SPECIMEN_RULES
    microscope_rules: tuple[LabelRule, ...] = DEFAULT_MICROSCOPE_RULES
    folder_defaults: tuple[FolderDefaults, ...] = ()
    use_instrument_hints: bool = True
    denoise_non_fluorescence: bool = False

    def __post_init__(self) -> None:
        for rule in self.microscope_rules:
            validate_microscope(rule.label)
        for rule in self.specimen_rules:
            validate_specimen(rule.label)
        object.__setattr__(self, "specimen_rules", tuple(self.specimen_rules))
        object.__setattr__(self, "microscope_rules", tuple(self.microscope_rules))
        object.__setattr__(self, "folder_defaults", tuple(self.folder_defaults))

    def defaults_for(self, path: Path | None, label: str | None = None) -> FolderDefaults | None:
        """The deepest configured folder holding ``path`` (that sets ``label``, if given:
        ``"microscope"`` or ``"specimen"``), so a sub-folder can refine one label only."""
        if path is None:
            return None
        holding = [d for d in self.folder_defaults if d.contains(path)
                   and (label is None or getattr(d, label) is not None)]
        return max(holding, key=lambda d: len(d.folder.resolve().parts) if d.folder else 0,
                   default=None)

    @classmethod
    def from_mapping(cls, mapping: Mapping | None) -> "InferenceRules":
        """Build from a config section (e.g. TOML ``[inference]``); ``ValueError`` says what is wrong.

        Keys: ``specimen_rules`` and ``microscope_rules`` (lists of ``{pattern, label,
        fields}``, tried before the defaults), ``replace_default_rules`` (drop the
        defaults), ``folders`` (list of ``{path, microscope, specimen}``),
        ``use_instrument_hints``, ``denoise_non_fluorescence``.
        """
        mapping = dict(mapping or {})
        known = {"specimen_rules", "microscope_rules", "replace_default_rules", "folders",
                 "use_instrument_hints", "denoise_non_fluorescence"}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ValueError(f"unknown inference setting(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        replace = bool(mapping.get("replace_default_rules", False))

        def rules(key: str, defaults: tuple[LabelRule, ...]) -> tuple[LabelRule, ...]:
            entries = mapping.get(key, [])
            if not isinstance(entries, list):
                raise ValueError(f"{key} must be a list of {{pattern, label, fields}} tables")
            parsed = []
            for number, entry in enumerate(entries):
                if not isinstance(entry, Mapping) or not {"pattern", "label"} <= set(entry):
                    raise ValueError(f"{key}[{number}] needs 'pattern' and 'label'")
                extra = set(entry) - {"pattern", "label", "fields"}
                if extra:
                    raise ValueError(f"{key}[{number}]: unknown key(s) {', '.join(sorted(extra))}")
                parsed.append(LabelRule(str(entry["pattern"]), str(entry["label"]),
                                        tuple(entry.get("fields", TEXT_FIELDS))))
            return tuple(parsed) + (() if replace else defaults)

        folders = []
        for number, entry in enumerate(mapping.get("folders", [])):
            if not isinstance(entry, Mapping) or "path" not in entry:
                raise ValueError(f"folders[{number}] needs 'path'")
            folders.append(FolderDefaults(Path(entry["path"]), entry.get("microscope"),
                                          entry.get("specimen")))
        return cls(specimen_rules=rules("specimen_rules", DEFAULT_SPECIMEN_RULES),
                   microscope_rules=rules("microscope_rules", DEFAULT_MICROSCOPE_RULES),
                   folder_defaults=tuple(folders),
                   use_instrument_hints=bool(mapping.get("use_instrument_hints", True)),
                   denoise_non_fluorescence=bool(mapping.get("denoise_non_fluorescence", False)))


DEFAULT_RULES = InferenceRules()


# --------------------------------------------------------------------------- what a file says

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


# --------------------------------------------------------------------------- inference

@dataclass(frozen=True)
class ChannelGroup:
    """What a channel is, what will be done with it, and why."""

    index: int
    name: str | None
    microscope: str
    specimen: str
    evidence: tuple[str, ...]
    policy: str = POLICY_DENOISE

    @property
    def fluorescence(self) -> bool:
        return self.microscope not in NON_FLUORESCENCE

    def as_dict(self) -> dict:
        return {"index": self.index, "name": self.name, "microscope": self.microscope,
                "specimen": self.specimen, "evidence": list(self.evidence),
                "policy": self.policy}


def _match_rules(rules: Iterable[LabelRule], context: ChannelContext, fields: Sequence[str],
                 kind: str, notes: list[str]) -> tuple[str, str] | None:
    """First field (in ``fields`` order) whose text matches exactly one label."""
    rules = tuple(rules)
    for field_name in fields:
        text = context.text(field_name)
        if not text:
            continue
        matched: dict[str, LabelRule] = {}
        for rule in rules:
            if field_name in rule.fields and rule.matches(text):
                matched.setdefault(rule.label, rule)
        if len(matched) == 1:
            label, rule = next(iter(matched.items()))
            found = rule.regex.search(text).group(0)  # type: ignore[attr-defined]
            shipped = rule in DEFAULT_SPECIMEN_RULES or rule in DEFAULT_MICROSCOPE_RULES
            which = "default rule" if shipped else f"configured rule /{rule.pattern}/"
            return label, (f"{kind}={label}: {_FIELD_TITLES[field_name]} {_short(text)!r} "
                           f"contains {found!r} ({which})")
        if len(matched) > 1:
            notes.append(f"{kind}: {_FIELD_TITLES[field_name]} {_short(text)!r} matches "
                         f"{', '.join(sorted(matched))}; ambiguous, ignored")
    return None


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _instrument_hint(context: ChannelContext) -> tuple[str, str] | None:
    where = "instrument (no channel settings)" if context.hints_from_instrument else "channel"
    if context.illumination_type == "NonLinear":
        return "two-photon", "microscope=two-photon: Channel IlluminationType=NonLinear"
    pulsed_tisa = [s for s in context.light_sources
                   if s.kind == "laser" and s.medium == "TiSapphire" and s.pulse in _PULSED]
    pmts = [d for d, kind in context.detectors if kind == "PMT"]
    if pulsed_tisa and pmts and (not context.hints_from_instrument or
                                 len(pulsed_tisa) == len(context.light_sources)):
        return "two-photon", (f"microscope=two-photon: {where} light source {pulsed_tisa[0].id} "
                              f"is a pulsed ({pulsed_tisa[0].pulse}) Ti:Sapphire laser and "
                              f"detector {pmts[0]} is a PMT")
    if context.pinhole_size is not None and context.pinhole_size > 0:
        return "confocal", f"microscope=confocal: Channel PinholeSize={context.pinhole_size:g} (a pinhole)"
    cameras = [(d, kind) for d, kind in context.detectors if kind in _CAMERAS]
    lamps = [s for s in context.light_sources if s.kind in ("arc", "filament", "led")]
    if cameras and lamps and (not context.hints_from_instrument or
                              (len(cameras) == len(context.detectors) and
                               len(lamps) == len(context.light_sources))):
        return "widefield", (f"microscope=widefield: {where} camera detector {cameras[0][0]} "
                             f"({cameras[0][1]}) with {lamps[0].kind} light source {lamps[0].id}")
    return None


def infer_channel(context: ChannelContext, rules: InferenceRules | None = None,
                  microscope: str | None = None, specimen: str | None = None,
                  folder: FolderDefaults | None = None) -> ChannelGroup:
    """Label one channel; see the module docstring for the precedence.

    ``microscope``/``specimen`` are explicit overrides; ``folder`` (else the deepest of
    ``rules.folder_defaults`` holding the file) gives the folder defaults.
    """
    rules = rules or DEFAULT_RULES
    evidence: list[str] = []
    notes: list[str] = []
    def lower_sources(kind: str, kind_rules: Iterable[LabelRule]) -> tuple[str, str] | None:
        """The sources below the file's structured metadata, in precedence order: rules
        over the metadata's text, the folder default, rules over the path."""
        found = _match_rules(kind_rules, context, _METADATA_FIELDS, kind, notes)
        if found:
            return found
        chosen = folder if folder is not None else rules.defaults_for(context.path, kind)
        if chosen is not None and getattr(chosen, kind) is not None:
            value = getattr(chosen, kind)
            return value, f"{kind}={value}: folder default" + (
                f" for {chosen.folder}" if chosen.folder else "")
        return _match_rules(kind_rules, context, ("path",), kind, notes)

    # ---- microscope
    label: str | None = None
    if microscope is not None:
        label = validate_microscope(microscope)
        evidence.append(f"microscope={label}: explicit override")
    if label is None:
        contrast = NON_FLUORESCENCE_CONTRAST.get(context.contrast_method or "")
        illumination = NON_FLUORESCENCE_ILLUMINATION.get(context.illumination_type or "")
        mode = ACQUISITION_MODES.get(context.acquisition_mode or "")
        if contrast:
            label = contrast
            evidence.append(f"microscope={label}: Channel ContrastMethod={context.contrast_method} "
                            f"(not fluorescence)")
        elif mode == "brightfield":
            label = mode
            evidence.append("microscope=brightfield: Channel AcquisitionMode=BrightField")
        elif illumination and context.contrast_method != "Fluorescence":
            label = illumination
            evidence.append(f"microscope={label}: Channel IlluminationType="
                            f"{context.illumination_type} (not fluorescence)")
        elif mode:
            label = mode
            evidence.append(f"microscope={label}: Channel AcquisitionMode={context.acquisition_mode}")
        if label is not None and label in NON_FLUORESCENCE and mode and mode != label:
            notes.append(f"AcquisitionMode={context.acquisition_mode} does not make the "
                         f"channel fluorescence")
    if label is None and rules.use_instrument_hints:
        hint = _instrument_hint(context)
        if hint:
            label = hint[0]
            evidence.append(hint[1])
    if label is None:
        found = lower_sources("microscope", rules.microscope_rules)
        if found:
            label = found[0]
            evidence.append(found[1])
    if label is None:
        label = UNKNOWN
        evidence.append("microscope=unknown: no acquisition mode, instrument hint, rule or "
                        "folder default says")

    # ---- specimen
    kind: str | None = None
    if specimen is not None:
        kind = validate_specimen(specimen)
        evidence.append(f"specimen={kind}: explicit override")
    if kind is None:
        found = lower_sources("specimen", rules.specimen_rules)
        if found:
            kind = found[0]
            evidence.append(found[1])
    if kind is None:
        kind = UNKNOWN
        evidence.append("specimen=unknown: no fluor, name, folder default or path rule says")

    # ---- policy
    policy = POLICY_DENOISE
    if label in NON_FLUORESCENCE:
        if rules.denoise_non_fluorescence:
            evidence.append(f"policy=denoise: {label} is not fluorescence, denoised because "
                            f"denoise_non_fluorescence is set")
        else:
            policy = POLICY_COPY
            evidence.append(f"policy=copy: {label} is not fluorescence; copied through unchanged")
    elif label in OTHER_FLUORESCENCE:
        evidence.append(f"policy=denoise: {label} has no calibration group; parameters fall "
                        f"back to the specimen group, then 'all'")
    return ChannelGroup(index=context.index, name=context.name, microscope=label, specimen=kind,
                        evidence=tuple(evidence + notes), policy=policy)


def infer_image(image, series: int, rules: InferenceRules | None = None,
                microscope: str | None = None, specimen: str | None = None,
                folder: FolderDefaults | None = None) -> list[ChannelGroup]:
    """Label every logical channel of series ``series`` of an opened ``ImageFile``."""
    info = image.series[series]
    contexts = channel_contexts(image.ome, info.ome_index, info.channel_count, info.samples,
                                image.path, info.channel_names)
    return [infer_channel(context, rules, microscope, specimen, folder) for context in contexts]


def infer_channels(channel_count: int, channel_names: list[str | None] | None = None,
                   microscope: str | None = None, specimen: str | None = None,
                   rules: InferenceRules | None = None, path: Path | None = None,
                   folder: FolderDefaults | None = None) -> list[ChannelGroup]:
    """Label channels known only by name (no OME): overrides, rules, folder defaults."""
    contexts = channel_contexts(None, None, channel_count, 1, path, channel_names or [])
    return [infer_channel(context, rules, microscope, specimen, folder) for context in contexts]
