"""One file: read -> infer groups -> transfer -> denoise every plane -> write.

The pipeline is a function of (input file, settings, calibration table); the CLI's
``denoise`` and ``inspect`` and the daemon's worker all go through this module, so what
``inspect`` shows is what ``denoise`` does.

Planes stream from the reader through the denoiser into the writer; nothing holds a
whole stack. With single fits (the CPU default) one page is in flight at a time; with
a batching fitter (the CUDA default) a window of pages is gathered so that planes of
one configuration are fitted together (``dip/batching.py``), bounded by the batch
size and by :data:`WINDOW_BYTES` of buffered pixels. The output appears (atomically) only once every plane is
written and the inputs are confirmed unchanged since they were hashed.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import __version__
from .dip.modes import fit_mode
from .dip.params import (CUDA_ONLY_SPEED, DEFAULT_LINGER_SECONDS, DEFAULT_MAX_BATCH,
                         SPEED_SETTINGS)
from .dip.tiling import plane_tiles
from .metadata import (POLICY_COPY, ChannelGroup, FolderDefaults, InferenceRules, infer_image,
                       validate_microscope, validate_specimen)
from .ometiff import ImageFile, OmeTiffWriter, PlaneKey, SeriesInfo
from .provenance import (PROVENANCE_DESCRIPTION, PROVENANCE_NAMESPACE, ChannelRecord,
                         describe_sources, provenance_entries, sha256_file, software_versions,
                         unchanged, utc_now)
from .transfer import CalibrationTable, Transfer, apply_overrides

if TYPE_CHECKING:  # torch is imported where a fit needs it: `inspect` never loads it
    import torch

    from .dip.batching import SharedFitter, TileFitter
    from .dip.fit import FitOptions

from .outputs import OUTPUT_SUFFIX, OutputConflictError, check_output, describe_os_error, output_name

#: Most pixel bytes (as float32) gathered for one batching window of pages.
WINDOW_BYTES = 512 << 20

#: progress(plane, planes, tile, tiles, iteration, iterations), planes counted from 1.
FileProgress = Callable[[int, int, int, int, int, int], None]
#: notify(event, info): what the pipeline is about to do, in order: ``reading`` (path),
#: ``hashing`` (files), ``planned``
#: (format, device, planes, images with their channels' labels and parameters), then
#: per batch of planes ``fitting`` (planes, of, level, group, params, device).
Notify = Callable[[str, dict], None]


def _silent(event: str, info: dict) -> None:
    """The default :data:`Notify`: nobody is listening."""


class PipelineError(RuntimeError):
    """The file could not be denoised; the message says why and what to do."""


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

    def fit_options(self, device: torch.device | None = None) -> FitOptions:
        from .dip.fit import FitOptions

        speed = self.speed_settings(device)
        return self.fit_mode().fit_options(FitOptions(
            seed=self.seed, reg_noise_std=self.reg_noise_std, ema_weight=self.ema_weight,
            channels_last="channels_last" in speed, tf32=True if "tf32" in speed else None,
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
    channel_name: str | None = None
    policy: str = "denoise"
    evidence: list[str] = field(default_factory=list)
    members: int = 1  # ensemble size the plane was fitted with
    rollbacks: int = 0  # weight restores after loss spikes over its fits
    noise: dict | None = None  # the estimated noise-level function, when fitted on its VST

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class FileReport:
    input: str
    output: str
    device: str
    seconds: float
    planes: list[PlaneReport]
    started: str = ""
    finished: str = ""
    format: str = ""
    sources: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    host: str = ""  # the machine that ran the fit
    worker: str = ""  # the executor that ran it, when not this process (a Dask worker)
    #: What an incomplete input lacked (read with allow_missing): planes, member files.
    missing: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"input": self.input, "output": self.output, "device": self.device,
                "host": self.host, "worker": self.worker, "missing": self.missing,
                "seconds": round(self.seconds, 3), "started": self.started,
                "finished": self.finished, "format": self.format, "sources": self.sources,
                "warnings": self.warnings,
                "planes": [plane.as_dict() for plane in self.planes]}


@dataclass(frozen=True)
class ChannelPlan:
    """A channel's labels and what will be done to it: a transfer, or copy (``None``)."""

    group: ChannelGroup
    transfer: Transfer | None

    def as_dict(self) -> dict:
        data = self.group.as_dict()
        if self.transfer is None:
            data.update(level=POLICY_COPY, group=None, params=None)
        else:
            data.update(level=self.transfer.level, group=self.transfer.group,
                        params=self.transfer.params.as_dict())
        return data


def output_path_for(input_path: Path, out: Path | None = None,
                    suffix: str = OUTPUT_SUFFIX) -> Path:
    """The output of ``input_path``: beside it, in the folder ``out``, or the file ``out``.

    Named by :func:`outputs.output_name`: ``X.ome.tif`` -> ``X.autodip.ome.tif``, any
    other name keeps its extension (``X.tif`` -> ``X.tif.autodip.ome.tif``), so
    different raw files in one folder never share an output.
    """
    default_name = output_name(input_path.name, suffix)
    if out is None:
        return input_path.with_name(default_name)
    if out.is_dir():
        return out / default_name
    return out


def plan_series(image: ImageFile, series: int, settings: DenoiseSettings) -> list[ChannelPlan]:
    """Labels and group transfer of every logical channel of one series."""
    groups = infer_image(image, series, settings.rules, settings.microscope, settings.specimen,
                         settings.folder_defaults())
    plans = []
    for group in groups:
        transfer = None if group.policy == POLICY_COPY else _transfer_for(group, settings)
        plans.append(ChannelPlan(group, transfer))
    return plans


def inspect_file(path: str | Path, settings: DenoiseSettings) -> list[dict]:
    """What ``denoise`` would do with every image and channel of ``path`` (no pixels read).

    Raises ``ImageReadError`` (a ``ValueError``) naming the file when it cannot be read.
    """
    settings.check_labels()
    path = Path(path)
    images = []
    with ImageFile(path) as image:
        for info in image.series:
            plans = plan_series(image, info.index, settings)
            images.append({
                "file": str(path), "format": image.kind, "index": info.index,
                "name": info.name, "shape": list(info.shape), "axes": info.axes,
                "dtype": str(info.dtype), "pixels": info.has_pixels,
                "source_files": [str(p) for p in image.source_files],
                "physical_sizes_um": dict(info.physical_sizes),
                "warnings": list(image.warnings),
                "mode": _mode_record(settings),
                "channels": [plan.as_dict() for plan in plans]})
    return images


def shared_fitter(settings: DenoiseSettings,
                  linger: float = DEFAULT_LINGER_SECONDS) -> SharedFitter | None:
    """A batching fitter several files can share (``denoise`` of several files, a
    cluster task), or None where ``settings.batching`` keeps this device on single fits
    or the device does not exist here (each file then reports the device error)."""
    from .dip.batching import make_shared_fitter
    from .dip.device import choose_device

    try:
        device = choose_device(settings.device)
    except ValueError:
        return None
    return make_shared_fitter(device, settings.batching, settings.max_batch,
                              settings.memory_budget, linger)


def fit_key(path: str | Path, settings: DenoiseSettings) -> str | None:
    """What a batching worker groups files by: the DIP configurations and plane sizes
    ``path`` needs, as a stable string (metadata only, no pixels read).

    None when it cannot be known before the pixels are seen (nearest-image transfer
    picks the configuration per plane) or when the file cannot be read.
    """
    if settings.transfer != "group":
        return None
    try:
        images = inspect_file(path, settings)
    except (ValueError, OSError):
        return None
    needs = set()
    for image in images:
        sizes = dict(zip(image["axes"], image["shape"]))
        for channel in image["channels"]:
            params = channel.get("params")
            if params:
                needs.add(f"d{params['depth']}/w{params['width']}/s{params['skip']}/"
                          f"{params['iterations']}it@{sizes.get('Y')}x{sizes.get('X')}")
    return ";".join(sorted(needs)) or None


def denoise_file(input_path: str | Path, settings: DenoiseSettings,
                 out: str | Path | None = None,
                 progress: FileProgress | None = None, *,
                 worker: str | None = None, fitter: TileFitter | None = None,
                 notify: Notify | None = None, allow_missing: bool = False,
                 incomplete: str | None = None) -> FileReport:
    """Denoise every plane of ``input_path`` and write the OME-TIFF; never touches the input.

    ``worker`` names the executor running this call when it is not the local process
    (the Dask worker address); it goes into the provenance beside this machine's name.
    ``fitter`` fits the tiles; by default the one ``settings.batching`` asks for (a
    daemon running several jobs at once passes a shared one).
    ``notify(event, info)`` hears what the pipeline is about to do (see :data:`Notify`),
    so that a person is told what happens before the first iteration.
    ``allow_missing`` reads
    an incomplete input as far as it goes (planes or set members not there read as
    zeros); what was missing is in the report's ``missing`` and the provenance, with
    ``incomplete``, the caller's word on it (the daemon's: "3 of 5 planes; unchanged for
    30 min"), which implies ``allow_missing``.
    Non-fluorescence channels (policy ``copy``) are written unchanged. Raises
    ``ImageReadError`` for unreadable input, ``OutputConflictError`` when a file at the
    output path was not written by autodip-watch for this input (it is never
    overwritten), ``PipelineError`` for everything else that stops the file (an OS error
    while writing names the path and the system's reason); in every case no output appears.
    """
    started_clock = time.perf_counter()
    started = utc_now()
    input_path = Path(input_path)
    output = output_path_for(input_path, Path(out) if out is not None else None)
    if output.resolve() == input_path.resolve():
        raise PipelineError(f"output path {output} is the input file; refusing to overwrite it")
    settings.check_labels()
    say = notify or _silent
    say("reading", {"path": str(input_path)})
    allow_missing = allow_missing or incomplete is not None
    with ImageFile(input_path, allow_missing=allow_missing) as image:
        missing = list(image.missing) + ([f"taken incomplete: {incomplete}"] if incomplete
                                         else [])
        for source in image.source_files:
            if source.resolve() == output.resolve():
                raise PipelineError(f"output path {output} is a file of the input set; "
                                    f"refusing to overwrite it")
        existing = check_output(output, input_path)
        if existing.state == "foreign":
            raise OutputConflictError(f"{existing.reason}; not overwritten. Move it away (or "
                                      f"choose another output) to denoise {input_path}")
        pixel_series = [info for info in image.series if info.has_pixels]
        if not pixel_series:
            raise PipelineError(f"{input_path}: no pixel data (an OME-XML file whose images "
                                f"have no TIFF files beside it); nothing to denoise")
        without = [info.index for info in image.series if not info.has_pixels]
        if without:  # never drop an image silently
            raise PipelineError(f"{input_path}: image(s) {without} have no readable pixel data "
                                f"({'; '.join(image.warnings[-3:]) or 'metadata only'})")
        if image.unreferenced_pages:  # planes the metadata does not place: never dropped silently
            raise PipelineError(f"{input_path}: TIFF pages (IFD) "
                                f"{', '.join(map(str, image.unreferenced_pages[:20]))} hold planes "
                                f"that no OME image declares; not denoised, so that no plane "
                                f"is dropped silently (fix the OME-XML or split the file)")
        import torch

        from .dip.batching import make_fitter
        from .dip.device import choose_device, describe_device

        device = choose_device(settings.device) if fitter is None else fitter.device
        device_name = describe_device(device)
        if fitter is None:
            fitter = make_fitter(device, settings.batching, settings.max_batch,
                                 settings.memory_budget)
        host = socket.gethostname()
        say("hashing", {"path": str(input_path),
                        "files": [str(path) for path in image.source_files]})
        sources = describe_sources(image.source_files)
        plans = {info.index: plan_series(image, info.index, settings) for info in pixel_series}
        say("planned", {"path": str(input_path), "format": image.kind, "device": device_name,
                        "planes": sum(info.plane_count for info in pixel_series),
                        "images": [{"index": info.index, "name": info.name,
                                    "channels": [plan.as_dict() for plan in plans[info.index]]}
                                   for info in pixel_series]})
        records = {info.index: [ChannelRecord(
            index=plan.group.index, name=plan.group.name, microscope=plan.group.microscope,
            specimen=plan.group.specimen, evidence=plan.group.evidence, policy=plan.group.policy,
            level=plan.transfer.level if plan.transfer else POLICY_COPY,
            group=plan.transfer.group if plan.transfer else None, seed=settings.seed)
            for plan in plans[info.index]] for info in pixel_series}
        reports: list[PlaneReport] = []
        counter = _Counter(sum(info.plane_count for info in pixel_series))
        try:
            with OmeTiffWriter(output, image, software=f"autodip-watch {__version__}") as writer:
                try:
                    for info in pixel_series:
                        pages = _denoised_pages(image, info, plans[info.index],
                                                records[info.index], settings, fitter,
                                                progress, reports, counter,
                                                lambda event, data: say(event, {
                                                    "path": str(input_path),
                                                    "device": device_name, **data}))
                        writer.write_series(info.index, pages)
                except OSError as error:  # explained while the partial file still fills the disk
                    raise PipelineError(describe_os_error(error, output)) from error
                finished = utc_now()
                if not unchanged(sources):
                    raise PipelineError(f"{input_path}: the input changed while it was being "
                                        f"denoised; output discarded")
                versions = software_versions(torch)
                table_hash = _table_sha256(settings.table)
                command = settings.command or _command_line()
                annotations = {
                    info.index: provenance_entries(
                        software="autodip-watch", version=__version__,
                        torch_version=torch.__version__, device=device_name, sources=sources,
                        started=started, finished=finished, image_name=info.name,
                        channels=records[info.index], settings=_settings_record(settings, fitter),
                        host=host, worker=worker, input_path=input_path, missing=missing,
                        source_ome=image.source_identity(info.index),
                        warnings=image.warnings + writer.notes, versions=versions,
                        calibration_sha256=table_hash, command=command)
                    for info in pixel_series}
                writer.commit(annotations, namespace=PROVENANCE_NAMESPACE,
                              description=PROVENANCE_DESCRIPTION)
        except OSError as error:  # a full disk, a read-only or missing folder: say which and why
            raise PipelineError(describe_os_error(error, output)) from error
        return FileReport(str(input_path), str(output), device_name,
                          time.perf_counter() - started_clock, reports, started=started,
                          finished=finished, format=image.kind,
                          sources=[s.as_dict() for s in sources],
                          warnings=list(image.warnings) + writer.notes,
                          host=host, worker=worker or "", missing=missing)


class _Counter:
    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0


def _denoised_pages(image: ImageFile, info: SeriesInfo, plans: list[ChannelPlan],
                    records: list[ChannelRecord], settings: DenoiseSettings,
                    fitter: TileFitter, progress: FileProgress | None,
                    reports: list[PlaneReport], counter: _Counter,
                    say: Notify = None) -> Iterator[np.ndarray]:
    """Pages of ``info`` with every plane denoised (or copied), as the writer consumes them.

    Pages are gathered into windows of about ``fitter.window`` tiles to denoise, so a
    batching fitter sees many planes at once; the single fitter's window is one page.
    """
    window: list[tuple[list[PlaneKey], list[np.ndarray]]] = []
    tiles = buffered = 0
    for keys, page in image.pages(info.index):
        planes = info.split_page(page)
        window.append((keys, planes))
        for key, plane in zip(keys, planes):
            if plans[key.channel].transfer is not None:
                tiles += len(plane_tiles(plane.shape))
                buffered += plane.size * 4
        if tiles >= fitter.window or buffered >= WINDOW_BYTES:
            yield from _denoise_window(window, info, plans, records, settings, fitter,
                                       progress, reports, counter, say)
            window, tiles, buffered = [], 0, 0
    if window:
        yield from _denoise_window(window, info, plans, records, settings, fitter, progress,
                                   reports, counter, say)


def _denoise_window(window, info: SeriesInfo, plans: list[ChannelPlan],
                    records: list[ChannelRecord], settings: DenoiseSettings,
                    fitter: TileFitter, progress: FileProgress | None,
                    reports: list[PlaneReport], counter: _Counter,
                    say: Notify | None = None) -> Iterator[np.ndarray]:
    """Denoise the planes of a window of pages in one fitter call; yield the pages."""
    from .dip.plane import PlaneJob, denoise_planes

    jobs: list[PlaneJob] = []
    fitting: dict[tuple, list[int]] = {}  # (level, group, params) -> planes, for `say`
    entries = []  # (key, plan, transfer, job index or None)
    for keys, planes in window:
        for key, plane in zip(keys, planes):
            counter.done += 1
            plan = plans[key.channel]
            if plan.transfer is None:
                entries.append((key, plan, None, None))
                if progress is not None:
                    progress(counter.done, counter.total, 1, 1, 1, 1)
                continue
            transfer = plan.transfer
            if settings.transfer != "group":  # per plane: the nearest calibration image
                from .similarity import nearest_transfer
                transfer = nearest_transfer(plane, plan.group, settings, fitter.device)
            callback = None
            if progress is not None:
                def callback(tile, tiles, iteration, iterations, _done=counter.done):
                    progress(_done, counter.total, tile, tiles, iteration, iterations)
            entries.append((key, plan, transfer, len(jobs)))
            jobs.append(PlaneJob(plane, transfer.params, settings.fit_options(fitter.device),
                                 callback, members=settings.ensemble_members(fitter.device),
                                 vst=settings.fit_mode().vst))
            fitting.setdefault((transfer.level, transfer.group, transfer.params),
                               []).append(counter.done)
    if say is not None:
        for (level, group, params), numbers in fitting.items():
            say("fitting", {"planes": numbers, "of": counter.total, "level": level,
                            "group": group, "params": params.as_dict()})
    results = denoise_planes(jobs, fitter)
    position = 0
    for keys, planes in window:
        outputs = []
        for plane in planes:
            key, plan, transfer, job = entries[position]
            position += 1
            if job is None:
                outputs.append(plane)
                records[key.channel].add_plane(None, 0.0)
                reports.append(_plane_report(key, plan, None, 0.0, 0, "copied: not fluorescence"))
                continue
            result = results[job]
            outputs.append(result.output)
            records[key.channel].add_plane(transfer.params.as_dict(), result.seconds,
                                           level=transfer.level, group=transfer.group,
                                           batch=result.batch)
            note = "constant plane copied" if result.constant else (
                f"fitted in a batch of {result.batch}" if result.batch > 1 else "")
            reports.append(_plane_report(key, plan, transfer, result.seconds, result.tiles, note))
            reports[-1].members, reports[-1].rollbacks = result.members, result.rollbacks
            reports[-1].noise = result.noise.as_dict() if result.noise is not None else None
        yield info.join_page(outputs)


def _transfer_for(group: ChannelGroup, settings: DenoiseSettings) -> Transfer:
    transfer = settings.table.lookup(group.microscope, group.specimen, settings.metric)
    return apply_overrides(transfer, settings.depth, settings.width, settings.skip,
                           settings.iterations)


def _plane_report(key: PlaneKey, plan: ChannelPlan, transfer: Transfer | None, seconds: float,
                  tiles: int, note: str) -> PlaneReport:
    group = plan.group
    return PlaneReport(series=key.series, plane=key.label(), channel=key.channel,
                       microscope=group.microscope, specimen=group.specimen,
                       level=transfer.level if transfer else POLICY_COPY,
                       group=transfer.group if transfer else "",
                       params=transfer.params.as_dict() if transfer else {},
                       seconds=round(seconds, 3), tiles=tiles, note=note,
                       channel_name=group.name, policy=group.policy,
                       evidence=list(group.evidence))


def _settings_record(settings: DenoiseSettings, fitter: TileFitter) -> dict[str, object]:
    """The settings that shaped the result, for the provenance record."""
    table = settings.table
    described = fitter.describe()
    fitter_record = {"batching": described["batching"],
                     "max_batch": described.get("max_batch", 1),
                     "speed": ",".join(settings.speed_settings(fitter.device)) or "none"}
    return {"calibration_table": table.path.name if table.path else "",
            "calibration_source": table.provenance.get("source", ""),
            "metric": settings.metric or table.default_metric, "transfer": settings.transfer,
            "microscope_override": settings.microscope, "specimen_override": settings.specimen,
            "folder_microscope": settings.folder_microscope,
            "folder_specimen": settings.folder_specimen,
            "depth_override": settings.depth, "width_override": settings.width,
            "skip_override": settings.skip, "iterations_override": settings.iterations,
            "seed": settings.seed, "reg_noise_std": settings.reg_noise_std,
            "ema_weight": settings.ema_weight, **fitter_record,
            **{f"mode_{key}" if key != "name" else "mode": value for key, value in
               settings.fit_mode().describe(
                   fitter.device.type, settings.ensemble_members(fitter.device)).items()}}


def _mode_record(settings: DenoiseSettings) -> dict:
    """The fit mode as ``inspect`` shows it: settings, and the ensemble size per device
    (which device runs the file is decided when it runs)."""
    mode = settings.fit_mode()
    record = mode.describe("cpu", settings.members)
    record.pop("members")
    record["members"] = {"cpu": settings.members or mode.members_cpu,
                         "cuda": settings.members or mode.members_cuda}
    return record


def _table_sha256(table: CalibrationTable | None) -> str:
    """SHA-256 of the calibration table file (of its canonical JSON when it has no file)."""
    import hashlib
    import json

    if table is None:
        return ""
    if table.path is not None and Path(table.path).is_file():
        return sha256_file(table.path)
    return hashlib.sha256(json.dumps(table.document, sort_keys=True, default=str)
                          .encode("utf-8")).hexdigest()


def _command_line() -> str:
    """This process's command line, the program named without its folder."""
    import shlex
    import sys

    argv = list(sys.argv) or ["python"]
    argv[0] = Path(argv[0]).name
    return shlex.join(argv)


def torch_version() -> str:
    import torch

    return torch.__version__
