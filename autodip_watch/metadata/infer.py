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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..transfer.labels import UNKNOWN
from .context import ChannelContext, channel_contexts
from .labels import (ACQUISITION_MODES, CAMERA_TYPES, NON_FLUORESCENCE, NON_FLUORESCENCE_CONTRAST,
                     NON_FLUORESCENCE_ILLUMINATION, OTHER_FLUORESCENCE, POLICY_COPY,
                     POLICY_DENOISE, PULSED_MODES, validate_microscope, validate_specimen)
from .rules import (DEFAULT_MICROSCOPE_RULES, DEFAULT_RULES, DEFAULT_SPECIMEN_RULES,
                    FIELD_TITLES, METADATA_FIELDS, FolderDefaults, InferenceRules, LabelRule)


# --------------------------------------------------------------------------- settings


# --------------------------------------------------------------------------- what a file says


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
            return label, (f"{kind}={label}: {FIELD_TITLES[field_name]} {_short(text)!r} "
                           f"contains {found!r} ({which})")
        if len(matched) > 1:
            notes.append(f"{kind}: {FIELD_TITLES[field_name]} {_short(text)!r} matches "
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
                   if s.kind == "laser" and s.medium == "TiSapphire" and s.pulse in PULSED_MODES]
    pmts = [d for d, kind in context.detectors if kind == "PMT"]
    if pulsed_tisa and pmts and (not context.hints_from_instrument or
                                 len(pulsed_tisa) == len(context.light_sources)):
        return "two-photon", (f"microscope=two-photon: {where} light source {pulsed_tisa[0].id} "
                              f"is a pulsed ({pulsed_tisa[0].pulse}) Ti:Sapphire laser and "
                              f"detector {pmts[0]} is a PMT")
    if context.pinhole_size is not None and context.pinhole_size > 0:
        return "confocal", f"microscope=confocal: Channel PinholeSize={context.pinhole_size:g} (a pinhole)"
    cameras = [(d, kind) for d, kind in context.detectors if kind in CAMERA_TYPES]
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
    """Label one channel, with the evidence; see the module docstring for the precedence.

    Parameters
    ----------
    context : ChannelContext
        What the file says about the channel (:func:`channel_contexts`).
    rules : InferenceRules, optional
        The site's configuration; default: the shipped rules.
    microscope, specimen : str, optional
        Explicit overrides: they beat the file's metadata.
    folder : FolderDefaults, optional
        Folder defaults (the daemon's watch folder); default: the deepest of
        ``rules.folder_defaults`` holding the file. The file's metadata beats them.

    Returns
    -------
    ChannelGroup
        Labels, policy (``denoise`` or ``copy``) and one evidence line per decision.

    Raises
    ------
    ValueError
        An override that is not a known label.
    """
    rules = rules or DEFAULT_RULES
    evidence: list[str] = []
    notes: list[str] = []
    label = kind = None
    if microscope is not None:
        label = validate_microscope(microscope)
        evidence.append(f"microscope={label}: explicit override")
    found = None
    if label is None:
        found = _structured_microscope(context, notes)
    if found is None and label is None and rules.use_instrument_hints:
        found = _instrument_hint(context)
    if found is None and label is None:
        found = _lower_sources(context, rules, folder, "microscope", rules.microscope_rules, notes)
    if found is not None:
        label = found[0]
        evidence.append(found[1])
    if label is None:
        label = UNKNOWN
        evidence.append("microscope=unknown: no acquisition mode, instrument hint, rule or "
                        "folder default says")
    if specimen is not None:
        kind = validate_specimen(specimen)
        evidence.append(f"specimen={kind}: explicit override")
    else:
        found = _lower_sources(context, rules, folder, "specimen", rules.specimen_rules, notes)
        if found:
            kind = found[0]
            evidence.append(found[1])
    if kind is None:
        kind = UNKNOWN
        evidence.append("specimen=unknown: no fluor, name, folder default or path rule says")
    policy, why = _policy(label, rules)
    if why:
        evidence.append(why)
    return ChannelGroup(index=context.index, name=context.name, microscope=label, specimen=kind,
                        evidence=tuple(evidence + notes), policy=policy)


def _structured_microscope(context: ChannelContext, notes: list[str]) -> tuple[str, str] | None:
    """What the channel's own OME fields say: not fluorescence (ContrastMethod,
    IlluminationType), else its AcquisitionMode; ``(label, evidence)`` or None."""
    contrast = NON_FLUORESCENCE_CONTRAST.get(context.contrast_method or "")
    illumination = NON_FLUORESCENCE_ILLUMINATION.get(context.illumination_type or "")
    mode = ACQUISITION_MODES.get(context.acquisition_mode or "")
    found = None
    if contrast:
        found = contrast, (f"microscope={contrast}: Channel ContrastMethod="
                           f"{context.contrast_method} (not fluorescence)")
    elif mode == "brightfield":
        found = mode, "microscope=brightfield: Channel AcquisitionMode=BrightField"
    elif illumination and context.contrast_method != "Fluorescence":
        found = illumination, (f"microscope={illumination}: Channel IlluminationType="
                               f"{context.illumination_type} (not fluorescence)")
    elif mode:
        found = mode, f"microscope={mode}: Channel AcquisitionMode={context.acquisition_mode}"
    if found is not None and found[0] in NON_FLUORESCENCE and mode and mode != found[0]:
        notes.append(f"AcquisitionMode={context.acquisition_mode} does not make the "
                     f"channel fluorescence")
    return found


def _lower_sources(context: ChannelContext, rules: InferenceRules, folder: FolderDefaults | None,
                   kind: str, kind_rules: Iterable[LabelRule],
                   notes: list[str]) -> tuple[str, str] | None:
    """The sources below the file's structured metadata, in precedence order: rules over
    the metadata's text, the folder default, rules over the path."""
    found = _match_rules(kind_rules, context, METADATA_FIELDS, kind, notes)
    if found:
        return found
    chosen = folder if folder is not None else rules.defaults_for(context.path, kind)
    if chosen is not None and getattr(chosen, kind) is not None:
        value = getattr(chosen, kind)
        return value, f"{kind}={value}: folder default" + (
            f" for {chosen.folder}" if chosen.folder else "")
    return _match_rules(kind_rules, context, ("path",), kind, notes)


def _policy(label: str, rules: InferenceRules) -> tuple[str, str | None]:
    """What is done with a channel of microscope ``label``, and the evidence line."""
    if label in NON_FLUORESCENCE:
        if rules.denoise_non_fluorescence:
            return POLICY_DENOISE, (f"policy=denoise: {label} is not fluorescence, denoised "
                                    f"because denoise_non_fluorescence is set")
        return POLICY_COPY, f"policy=copy: {label} is not fluorescence; copied through unchanged"
    if label in OTHER_FLUORESCENCE:
        return POLICY_DENOISE, (f"policy=denoise: {label} has no calibration group; parameters "
                                f"fall back to the specimen group, then 'all'")
    return POLICY_DENOISE, None


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
