"""One file: read -> infer groups -> transfer -> denoise every plane -> write.

The pipeline is a function of (input file, settings, calibration table); the CLI's
``denoise`` and the daemon's worker both call :func:`denoise_file`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import __version__
from .dip.device import choose_device, describe_device
from .dip.fit import FitOptions
from .dip.plane import denoise_plane
from .metadata import ChannelGroup, infer_channels
from .ometiff import ImageFile, PlaneKey, atomic_write_tiff
from .transfer import CalibrationTable, Transfer, apply_overrides

OUTPUT_SUFFIX = ".autodip.ome.tif"
_INPUT_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".png")

#: progress(plane, planes, tile, tiles, iteration, iterations), planes counted from 1.
FileProgress = Callable[[int, int, int, int, int, int], None]


class PipelineError(RuntimeError):
    """The file could not be denoised; the message says why and what to do."""


@dataclass
class DenoiseSettings:
    """Everything that decides how a file is denoised, besides the file itself."""

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

    def fit_options(self) -> FitOptions:
        return FitOptions(seed=self.seed, reg_noise_std=self.reg_noise_std,
                          ema_weight=self.ema_weight)


@dataclass
class PlaneReport:
    series: int
    plane: str
    channel: int
    microscope: str
    specimen: str
    level: str
    group: str
    params: dict
    seconds: float
    tiles: int
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class FileReport:
    input: str
    output: str
    device: str
    seconds: float
    planes: list[PlaneReport]

    def as_dict(self) -> dict:
        return {"input": self.input, "output": self.output, "device": self.device,
                "seconds": round(self.seconds, 3),
                "planes": [plane.as_dict() for plane in self.planes]}


def output_path_for(input_path: Path, out: Path | None = None) -> Path:
    """``<stem>.autodip.ome.tif`` beside the input, or in/at ``out``."""
    name = input_path.name
    for suffix in _INPUT_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    default_name = name + OUTPUT_SUFFIX
    if out is None:
        return input_path.with_name(default_name)
    if out.is_dir():
        return out / default_name
    return out


def denoise_file(input_path: str | Path, settings: DenoiseSettings,
                 out: str | Path | None = None,
                 progress: FileProgress | None = None) -> FileReport:
    """Denoise every plane of ``input_path`` and write the OME-TIFF; never touches the input."""
    started = time.perf_counter()
    input_path = Path(input_path)
    output = output_path_for(input_path, Path(out) if out is not None else None)
    if output.resolve() == input_path.resolve():
        raise PipelineError(f"output path {output} is the input file; refusing to overwrite it")
    device = choose_device(settings.device)
    image = ImageFile(input_path)
    total = sum(series.plane_count for series in image.series)
    reports: list[PlaneReport] = []
    arrays = []
    done = 0
    for series in image.series:
        groups = infer_channels(series.channel_count, series.channel_names,
                                settings.microscope, settings.specimen)
        transfers = [_transfer_for(group, settings) for group in groups]
        denoised = []
        for key, plane in image.planes(series.index):
            done += 1
            transfer, group = transfers[key.channel], groups[key.channel]
            callback = None
            if progress is not None:
                def callback(tile, tiles, iteration, iterations, _done=done):
                    progress(_done, total, tile, tiles, iteration, iterations)
            result = denoise_plane(plane, transfer.params, device, settings.fit_options(),
                                   progress=callback)
            denoised.append(result.output)
            reports.append(_plane_report(key, group, transfer, result.seconds, result.tiles,
                                         "constant plane copied" if result.constant else ""))
        arrays.append((image.assemble(series.index, denoised), series.axes))
    atomic_write_tiff(output, arrays)
    return FileReport(str(input_path), str(output), describe_device(device),
                      time.perf_counter() - started, reports)


def _transfer_for(group: ChannelGroup, settings: DenoiseSettings) -> Transfer:
    transfer = settings.table.lookup(group.microscope, group.specimen, settings.metric)
    return apply_overrides(transfer, settings.depth, settings.width, settings.skip,
                           settings.iterations)


def _plane_report(key: PlaneKey, group: ChannelGroup, transfer: Transfer, seconds: float,
                  tiles: int, note: str) -> PlaneReport:
    return PlaneReport(series=key.series, plane=key.label(), channel=key.channel,
                       microscope=group.microscope, specimen=group.specimen,
                       level=transfer.level, group=transfer.group,
                       params=transfer.params.as_dict(), seconds=round(seconds, 3),
                       tiles=tiles, note=note)


def torch_version() -> str:
    return torch.__version__
