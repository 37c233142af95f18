"""The settings of one denoising run (``denoise``, a daemon job)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..dip.modes import fit_mode
from ..dip.options import FitOptions
from ..dip.params import CUDA_ONLY_SPEED, DEFAULT_MAX_BATCH, SPEED_SETTINGS
from ..metadata.labels import validate_microscope, validate_specimen
from ..metadata.rules import FolderDefaults, InferenceRules
from ..transfer.table import CalibrationTable

if TYPE_CHECKING:
    import torch


@dataclass
class DenoiseSettings:
    """Everything that decides how a file is denoised, besides the file itself.

    ``microscope``/``specimen`` are explicit overrides: they beat the file's metadata.
    ``folder_microscope``/``folder_specimen`` are folder defaults: the file's metadata
    beats them. ``rules`` configures the inference (specimen and microscope patterns,
    path-based folder defaults, what to do with non-fluorescence channels).
    """

    microscope: str | None = None
    specimen: str | None = None
    depth: int | None = None
    width: str | None = None
    skip: int | None = None
    iterations: int | None = None
    metric: str | None = None
    device: str | None = None
    seed: int = 0
    reg_noise_std: float = 0.0
    ema_weight: float | None = None
    table: CalibrationTable = field(default_factory=CalibrationTable.load)
    # Metric-based transfer (similarity.py): "group" or nearest-mae/-mse/-psnr/-ssim/
    # -lpips/-gradient; within_group limits the nearest search to the plane's group.
    transfer: str = "group"
    within_group: bool = False
    rules: InferenceRules | None = None
    folder_microscope: str | None = None
    folder_specimen: str | None = None
    # Batched fits of planes with one configuration (dip/batching.py): "auto" batches
    # on CUDA only; memory_budget (bytes) None = a share of the device's free memory.
    batching: str = "auto"
    max_batch: int = DEFAULT_MAX_BATCH
    memory_budget: int | None = None
    # Comma-separated SPEED_SETTINGS, e.g. "channels_last,bf16"; "" = the plain fp32 path.
    speed: str = ""
    # What ran, for the provenance (None: this process's command line).
    command: str | None = None
    # Fit mode (dip/modes.py): "paper" or "stable"; None = the default. ``members``
    # overrides the mode's ensemble size for the device.
    mode: str | None = None
    members: int | None = None

    def fit_mode(self):
        """The :class:`~.dip.modes.FitMode` (``ValueError`` for an unknown name)."""
        return fit_mode(self.mode)

    def ensemble_members(self, device: torch.device) -> int:
        """Fits per tile on ``device``: the override, else the mode's size for it."""
        return self.members if self.members is not None else \
            self.fit_mode().members(device.type)

    def speed_settings(self, device: torch.device | None = None) -> list[str]:
        """The requested speed settings (``ValueError`` for unknown ones), limited to
        those that apply on ``device`` when given."""
        names = [name.strip() for name in self.speed.split(",") if name.strip()]
        unknown = [name for name in names if name not in SPEED_SETTINGS]
        if unknown:
            raise ValueError(f"unknown speed setting(s) {', '.join(unknown)}; "
                             f"choose from {', '.join(SPEED_SETTINGS)}")
        if "compile" in names and "cuda_graphs" in names:
            raise ValueError("speed settings compile and cuda_graphs do not combine")
        if device is not None and device.type != "cuda":
            names = [name for name in names if name not in CUDA_ONLY_SPEED]
        return names

    def calibration_table(self) -> CalibrationTable:
        """The table to transfer parameters from: ``table``, or the shipped one."""
        return self.table if self.table is not None else CalibrationTable.load()

    def fit_options(self, device: torch.device | None = None) -> FitOptions:
        speed = self.speed_settings(device)
        return self.fit_mode().fit_options(FitOptions(
            seed=self.seed, reg_noise_std=self.reg_noise_std, ema_weight=self.ema_weight,
            channels_last="channels_last" in speed,
            bf16="bf16" in speed, compile="compile" in speed,
            cuda_graphs="cuda_graphs" in speed))

    def folder_defaults(self) -> FolderDefaults | None:
        if self.folder_microscope is None and self.folder_specimen is None:
            return None
        return FolderDefaults(None, self.folder_microscope, self.folder_specimen)

    def check_labels(self) -> None:
        """``ValueError`` for an override or folder default that is not a known label."""
        for value in (self.microscope, self.folder_microscope):
            if value is not None:
                validate_microscope(value)
        for value in (self.specimen, self.folder_specimen):
            if value is not None:
                validate_specimen(value)
        self.speed_settings()
        self.fit_mode()
        if self.members is not None and self.members < 1:
            raise ValueError(f"members must be at least 1, got {self.members}")
