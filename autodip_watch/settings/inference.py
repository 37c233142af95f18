"""``[inference]``: how channels are labelled, built once into :class:`InferenceRules`.

Rules are regular expressions over a channel's text fields (``fluor``, ``channel``,
``image``, ``description``, ``path``) that give it a label; configured rules are tried
before the shipped ones (or instead of them). Folder defaults label files under a
folder; the deepest folder holding a file wins, per label. See ``metadata/`` for the
order in which each source is asked.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, PrivateAttr, field_validator

from ..metadata.labels import validate_microscope, validate_specimen
from ..metadata.rules import (DEFAULT_MICROSCOPE_RULES, DEFAULT_SPECIMEN_RULES, TEXT_FIELDS,
                              FolderDefaults, InferenceRules, LabelRule)
from .base import ConfigPath, Flag, MicroscopeLabel, Settings, SpecimenLabel, Text


class _Rule(Settings):
    pattern: Text = Field(description="A regular expression, matched case-insensitively.",
                          examples=["sir-dna"])
    label: Text = Field(examples=["nucleus"])
    fields: tuple[Literal[TEXT_FIELDS], ...] = Field(
        TEXT_FIELDS, min_length=1, description="The text fields the rule looks at.",
        examples=[["fluor", "channel"]])

    @field_validator("pattern")
    @classmethod
    def _regular_expression(cls, value: str) -> str:
        try:
            re.compile(value, re.IGNORECASE)
        except re.error as error:
            raise ValueError(f"rule pattern {value!r} is not a valid regular expression: "
                             f"{error}") from None
        return value

    def rule(self) -> LabelRule:
        return LabelRule(self.pattern, self.label, self.fields)


class SpecimenRule(_Rule):
    """A rule that labels a channel's specimen (any lower-case name)."""

    @field_validator("label")
    @classmethod
    def _label(cls, value: str) -> str:
        return validate_specimen(value)


class MicroscopeRule(_Rule):
    """A rule that labels a channel's microscope type (a known label)."""

    @field_validator("label")
    @classmethod
    def _label(cls, value: str) -> str:
        return validate_microscope(value)


class FolderLabels(Settings):
    """Labels for files under ``path`` that their own metadata does not settle."""

    path: ConfigPath = Field(description="Relative to the config file.",
                             examples=["/data/incoming/mito"])
    microscope: MicroscopeLabel = Field(None, examples=["confocal"])
    specimen: SpecimenLabel = Field(None, examples=["mito"])


class InferenceSettings(Settings):
    """``[inference]``: the site's labelling rules; :attr:`rules` is what inference uses."""

    specimen_rules: tuple[SpecimenRule, ...] = Field(
        (), description="Tried before the shipped rules.")
    microscope_rules: tuple[MicroscopeRule, ...] = Field(
        (), description="Tried before the shipped rules.")
    replace_default_rules: Flag = Field(False, description="Drop the shipped rules.",
                                        examples=[True])
    folders: tuple[FolderLabels, ...] = Field((), description="Folder defaults by path.")
    use_instrument_hints: Flag = Field(
        True, description="Infer the microscope from light sources, detectors and pinholes "
        "when AcquisitionMode is absent.", examples=[True])
    denoise_non_fluorescence: Flag = Field(
        False, description="Denoise brightfield / phase / DIC / transmitted channels instead "
        "of copying them.", examples=[True])
    _rules: InferenceRules = PrivateAttr()

    def model_post_init(self, context: object) -> None:
        replace = self.replace_default_rules
        self._rules = InferenceRules(
            specimen_rules=tuple(r.rule() for r in self.specimen_rules)
            + (() if replace else DEFAULT_SPECIMEN_RULES),
            microscope_rules=tuple(r.rule() for r in self.microscope_rules)
            + (() if replace else DEFAULT_MICROSCOPE_RULES),
            folder_defaults=tuple(FolderDefaults(f.path, f.microscope, f.specimen)
                                  for f in self.folders),
            use_instrument_hints=self.use_instrument_hints,
            denoise_non_fluorescence=self.denoise_non_fluorescence)

    @property
    def rules(self) -> InferenceRules:
        """The rules inference uses, built once when the settings were validated."""
        return self._rules
