"""Configurable inference: label rules (regular expressions), folder defaults, switches.

:class:`InferenceRules` is everything a site can configure about labelling channels; the
``[inference]`` table of the configuration builds one (``settings``), and the shipped
default rules know common dyes, tags and plain words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .labels import validate_microscope, validate_specimen


#: Text fields rules can look at, most specific first.
TEXT_FIELDS = ("fluor", "channel", "image", "description", "path")
FIELD_TITLES = {"fluor": "Channel Fluor", "channel": "channel name", "image": "image name",
                 "description": "image description", "path": "path"}
#: Fields that are the file's own metadata (outrank folder defaults); the rest is the path.
METADATA_FIELDS = ("fluor", "channel", "image", "description")


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


DEFAULT_RULES = InferenceRules()
