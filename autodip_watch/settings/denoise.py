"""The settings of denoising a file: everything that decides the result besides the file.

``denoise`` builds one from its options, the daemon from its configuration
(:meth:`~.config.Config.denoise_settings`); a Dask task carries one as JSON
(:meth:`DenoiseSettings.model_dump` ``mode="json"`` there, :meth:`model_validate` on the
worker). Creating one reads no file: the shipped calibration table is loaded when a file
is denoised (:meth:`DenoiseSettings.calibration_table`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BeforeValidator, Field, PlainSerializer, field_validator

from .. import defaults
from ..dip.modes import FitMode, fit_mode
from ..dip.options import FitOptions
from ..dip.params import CUDA_ONLY_SPEED
from ..metadata.labels import validate_microscope, validate_specimen
from ..metadata.rules import FolderDefaults, InferenceRules
from ..transfer.table import CalibrationTable
from .base import Recorded, Whole
from .fit import FitSettings
from .inference import InferenceSettings

if TYPE_CHECKING:
    import torch


def _table(value: Any) -> CalibrationTable | None:
    """A table, or the ``{"document", "path"}`` a table is serialised as."""
    if value is None or isinstance(value, CalibrationTable):
        return value
    if isinstance(value, dict) and "document" in value:
        path = value.get("path")
        return CalibrationTable(value["document"], Path(path) if path else None)
    raise ValueError(f"must be a calibration table, got {type(value).__name__}")


def _table_data(table: CalibrationTable | None) -> dict | None:
    """A table as plain data: its parsed document travels, so a Dask worker needs no copy
    of the table file (nearest-* transfer still reads the table's calibration images,
    which must then be under the same path on the workers)."""
    if table is None:
        return None
    return {"document": table.document, "path": str(table.path) if table.path else None}


#: A calibration table field: the object in Python, its document in JSON.
Table = Annotated[CalibrationTable | None, BeforeValidator(_table),
                  PlainSerializer(_table_data, when_used="always")]


class DenoiseSettings(FitSettings):
    """Everything that decides how a file is denoised, besides the file itself.

    ``microscope``/``specimen`` are explicit overrides: they beat the file's metadata.
    ``folder_microscope``/``folder_specimen`` are folder defaults: the file's metadata
    beats them. ``inference`` configures the labelling (rules, folder defaults, what to do
    with non-fluorescence channels). Fields marked :class:`Recorded` go into each
    output's provenance (:meth:`provenance_record`).
    """

    microscope: Annotated[str | None, Recorded("microscope_override")] = Field(
        None, description="Override the microscope type of every channel.")
    specimen: Annotated[str | None, Recorded("specimen_override")] = Field(
        None, description="Override the specimen of every channel.")
    folder_microscope: Annotated[str | None, Recorded("folder_microscope")] = None
    folder_specimen: Annotated[str | None, Recorded("folder_specimen")] = None
    device: str | None = Field(None, description="cuda, cuda:N, mps or cpu; None: the best "
                               "available.")
    table: Table = Field(None, description="The calibration table; None: the shipped one.")
    inference: InferenceSettings = InferenceSettings()
    batching: Literal["auto", "on", "off"] = Field(
        "auto", description="Fit planes of one configuration together: auto (on CUDA only), "
        "on, off (dip/batching.py).")
    max_batch: Whole = Field(defaults.MAX_BATCH, ge=1)
    memory_budget: Whole | None = Field(None, ge=0, description="Device bytes a batch may "
                                        "use; None: a share of the free memory.")
    command: str | None = Field(None, description="What ran, for the provenance (None: this "
                                "process's command line).")

    @field_validator("speed", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        """``"channels_last,bf16"`` (the command line's form) -> a list."""
        return [name.strip() for name in value.split(",")] if isinstance(value, str) else value

    @field_validator("microscope", "folder_microscope")
    @classmethod
    def _microscope(cls, value: str | None) -> str | None:
        if value is not None:
            validate_microscope(value)
        return value

    @field_validator("specimen", "folder_specimen")
    @classmethod
    def _specimen(cls, value: str | None) -> str | None:
        if value is not None:
            validate_specimen(value)
        return value

    # -------------------------------------------------------------- what the method needs

    @property
    def rules(self) -> InferenceRules:
        return self.inference.rules

    def calibration_table(self) -> CalibrationTable:
        """The table to transfer parameters from: :attr:`table`, or the shipped one
        (read from disk on each call: a caller that denoises many files passes a table)."""
        return self.table if self.table is not None else CalibrationTable.load()

    def fit_mode(self) -> FitMode:
        """The :class:`~autodip_watch.dip.modes.FitMode` of :attr:`mode`."""
        return fit_mode(self.mode)

    def ensemble_members(self, device: torch.device) -> int:
        """Fits per tile on ``device``: :attr:`members`, else the mode's size for it."""
        return self.members if self.members is not None else \
            self.fit_mode().members(device.type)

    def speed_settings(self, device: torch.device | None = None) -> list[str]:
        """The speed settings, limited to those that apply on ``device`` when given (TF32
        and CUDA graphs exist on CUDA only)."""
        if device is not None and device.type != "cuda":
            return [name for name in self.speed if name not in CUDA_ONLY_SPEED]
        return list(self.speed)

    def tf32(self, device: torch.device) -> bool | None:
        """The process's TF32 switch these settings ask for on ``device`` (None: torch's
        default; ``dip.device.configure_tf32``)."""
        return True if "tf32" in self.speed_settings(device) else None

    def fit_options(self, device: torch.device | None = None) -> FitOptions:
        """The options of every fit: seed, DIP's own options, speed, the mode's
        stabilisation."""
        speed = self.speed_settings(device)
        return self.fit_mode().fit_options(FitOptions(
            seed=self.seed, reg_noise_std=self.reg_noise_std, ema_weight=self.ema_weight,
            channels_last="channels_last" in speed, bf16="bf16" in speed,
            compile="compile" in speed, cuda_graphs="cuda_graphs" in speed))

    def folder_defaults(self) -> FolderDefaults | None:
        if self.folder_microscope is None and self.folder_specimen is None:
            return None
        return FolderDefaults(None, self.folder_microscope, self.folder_specimen)

    def provenance_record(self, table: CalibrationTable) -> dict[str, object]:
        """The settings that shaped a result, as the provenance records them: the table,
        the metric, then every field marked :class:`Recorded`, in field order."""
        record: dict[str, object] = {
            "calibration_table": table.path.name if table.path else "",
            "calibration_source": table.provenance.get("source", ""),
            "metric": self.metric or table.default_metric}
        for name, field in type(self).model_fields.items():
            for marker in field.metadata:
                if isinstance(marker, Recorded):
                    record[marker.key] = getattr(self, name)
        return record
