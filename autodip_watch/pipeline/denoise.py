"""One file: read -> infer groups -> transfer -> denoise every plane -> write.

The pipeline is a function of (input file, settings, calibration table); the CLI's
``denoise`` and the daemon's executors (local and Dask) all call :func:`denoise_file`,
and ``inspect`` plans with the same code (``plan.py``), so what ``inspect`` shows is
what ``denoise`` does (DESIGN §3).

Planes stream from the reader through the denoiser into the writer; nothing holds a
whole stack. With single fits (the CPU default) one page is in flight at a time; with
a batching fitter (the CUDA default) a window of pages is gathered so that planes of
one configuration are fitted together (``dip/batching.py``), bounded by the batch size
and by :data:`WINDOW_BYTES` of buffered pixels. The output appears (atomically) only
once every plane is written and the inputs are confirmed unchanged since they were
hashed.
"""

from __future__ import annotations

import shlex
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..dip.batching import SharedFitter, TileFitter, make_fitter, make_shared_fitter
from ..dip.device import choose_device, describe_device
from ..dip.plane import PlaneJob, denoise_planes
from ..dip.tiling import plane_tiles
from ..io.atomic import describe_os_error
from ..io.model import PlaneKey, SeriesInfo
from ..io.outputs import OutputConflictError, check_output, output_path_for
from ..io.reader import ImageFile
from ..io.writer import OmeTiffWriter
from ..metadata.labels import POLICY_COPY
from ..provenance import (PROVENANCE_DESCRIPTION, PROVENANCE_NAMESPACE, ChannelRecord,
                          describe_sources, provenance_entries, software_versions, unchanged,
                          utc_now)
from ..settings.denoise import DenoiseSettings
from ..transfer.hierarchy import Transfer, apply_overrides
from ..transfer.modes import GROUP
from ..transfer.table import CalibrationTable
from .plan import ChannelPlan, plan_series
from .reports import FileReport, PlaneReport, plane_report

#: Most pixel bytes (as float32) gathered for one batching window of pages.
WINDOW_BYTES = 512 << 20

#: progress(plane, planes, tile, tiles, iteration, iterations), planes counted from 1.
FileProgress = Callable[[int, int, int, int, int, int], None]
#: notify(event, info): what the pipeline is about to do, in order: ``reading`` (path),
#: ``hashing`` (files), ``planned`` (format, device, planes, images with their channels'
#: labels and parameters), then per batch of planes ``fitting`` (planes, of, level, group,
#: params, device).
Notify = Callable[[str, dict], None]


class PipelineError(RuntimeError):
    """The file could not be denoised; the message says why and what to do."""


def shared_fitter(settings: DenoiseSettings, linger: float | None = None) -> SharedFitter | None:
    """A batching fitter several files can share (``denoise`` of several files, a
    cluster task), or None where ``settings.batching`` keeps this device on single fits
    or the device does not exist here (each file then reports the device error).

    ``linger``: seconds a batch waits for the planes of files still being read (default
    the batching default).
    """
    try:
        device = choose_device(settings.device)
    except ValueError:
        return None
    extra = {} if linger is None else {"linger": linger}
    return make_shared_fitter(device, settings.batching, settings.max_batch,
                              settings.memory_budget, **extra)


def denoise_file(input_path: str | Path, settings: DenoiseSettings,
                 out: str | Path | None = None,
                 progress: FileProgress | None = None, *,
                 worker: str | None = None, fitter: TileFitter | None = None,
                 notify: Notify | None = None, allow_missing: bool = False,
                 incomplete: str | None = None) -> FileReport:
    """Denoise every plane of an image file and write a denoised OME-TIFF beside it.

    The input is never modified. Each logical channel is labelled (microscope, specimen,
    with evidence), gets the DIP configuration of its group from the calibration table
    (paper §II-B.1; nearest-image transfer per plane with ``settings.transfer``), and
    each 2-D plane is min-max normalised, fitted tile by tile and mapped back to its
    dtype (DESIGN §2). Non-fluorescence channels are written unchanged.

    Parameters
    ----------
    input_path : str or Path
        OME-TIFF (single file or first file of a set), TIFF, PNG or OME-XML with pixels.
    settings : DenoiseSettings
        Everything that decides how the file is denoised.
    out : str or Path, optional
        Output file, or folder for it; default beside the input, named by
        :func:`~autodip_watch.io.outputs.output_name` (``X.ome.tif`` ->
        ``X.autodip.ome.tif``).
    progress : callable, optional
        ``progress(plane, planes, tile, tiles, iteration, iterations)`` after each
        iteration; it may raise to stop the fit (nothing is written then).
    worker : str, optional
        The executor running this call when it is not the local process (a Dask worker
        address); recorded in the provenance beside this machine's name.
    fitter : TileFitter, optional
        Fits the tiles; default: the one ``settings.batching`` asks for (a daemon running
        several files at once passes a shared one).
    notify : callable, optional
        ``notify(event, info)`` hears what the pipeline is about to do (:data:`Notify`).
    allow_missing : bool
        Read an incomplete input as far as it goes (absent planes or set members read as
        zeros); what was missing is in the report's ``missing`` and the provenance.
    incomplete : str, optional
        The caller's word on an incomplete input (the daemon's "3 of 5 planes; unchanged
        for 30 min"); implies ``allow_missing``.

    Returns
    -------
    FileReport
        Output path, device, seconds, and one :class:`PlaneReport` per plane.

    Raises
    ------
    ImageReadError
        The input cannot be read (a ``ValueError`` naming the file).
    OutputConflictError
        A file at the output path was not written by autodip-watch for this input; it is
        never overwritten.
    PipelineError
        Anything else that stops the file, e.g. an OS error while writing (naming the
        path and the system's reason) or an input that changed while it was denoised.
        In every case no output appears.
    """
    clock, started = time.perf_counter(), utc_now()
    input_path = Path(input_path)
    output = output_path_for(input_path, Path(out) if out is not None else None)
    if output.resolve() == input_path.resolve():
        raise PipelineError(f"output path {output} is the input file; refusing to overwrite it")
    say = notify or _silent
    say("reading", {"path": str(input_path)})
    allow_missing = allow_missing or incomplete is not None
    with ImageFile(input_path, allow_missing=allow_missing) as image:
        pixel_series = _checked_input(image, input_path, output)
        run = _FileRun(image, input_path, settings, settings.calibration_table(), fitter,
                       progress, say)
        sources = run.plan(pixel_series)
        finished, missing, notes = _write(run, image, pixel_series, sources, output, started,
                                          worker, incomplete)
        return FileReport(str(input_path), str(output), run.device_name,
                          time.perf_counter() - clock, run.reports, started=started,
                          finished=finished, format=image.kind,
                          sources=[s.as_dict() for s in sources],
                          warnings=list(image.warnings) + notes,
                          host=run.host, worker=worker or "", missing=missing)


def _silent(event: str, info: dict) -> None:
    """The default :data:`Notify`: nobody is listening."""


def _checked_input(image: ImageFile, input_path: Path, output: Path) -> list[SeriesInfo]:
    """The series to denoise; raises when the output would overwrite an input or a file
    that is not ours, or when any plane could not be placed in the output."""
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
    return pixel_series


def _write(run: _FileRun, image: ImageFile, pixel_series: list, sources: list, output: Path,
           started: str, worker: str | None, incomplete: str | None):
    """Write the denoised planes and the provenance, atomically; returns (finished time,
    what was missing, the writer's notes). Raises :class:`PipelineError` for an OS error
    (naming the path and the system's reason) or an input that changed meanwhile."""
    try:
        with OmeTiffWriter(output, image, software=f"autodip-watch {__version__}") as writer:
            try:
                for info in pixel_series:
                    writer.write_series(info.index, run.denoised_pages(info))
            except OSError as error:  # explained while the partial file still fills the disk
                raise PipelineError(describe_os_error(error, output)) from error
            finished = utc_now()
            if not unchanged(sources):
                raise PipelineError(f"{run.input_path}: the input changed while it was being "
                                    f"denoised; output discarded")
            missing = list(image.missing) + (
                [f"taken incomplete: {incomplete}"] if incomplete else [])
            annotations = run.provenance(pixel_series, sources, started, finished, worker,
                                         missing, writer.notes)
            writer.commit(annotations, namespace=PROVENANCE_NAMESPACE,
                          description=PROVENANCE_DESCRIPTION)
    except OSError as error:  # a full disk, a read-only or missing folder: say which and why
        raise PipelineError(describe_os_error(error, output)) from error
    return finished, missing, writer.notes


class _FileRun:
    """The state of one :func:`denoise_file` call: plans, records, reports, the fitter."""

    def __init__(self, image: ImageFile, input_path: Path, settings: DenoiseSettings,
                 table: CalibrationTable, fitter: TileFitter | None,
                 progress: FileProgress | None, say: Notify) -> None:
        self.image, self.input_path, self.settings, self.table = image, input_path, settings, table
        device = choose_device(settings.device) if fitter is None else fitter.device
        self.device_name = describe_device(device)
        self.fitter = fitter if fitter is not None else make_fitter(
            device, settings.batching, settings.max_batch, settings.memory_budget)
        self.progress, self._say = progress, say
        self.host = socket.gethostname()
        self.plans: dict[int, list[ChannelPlan]] = {}
        self.records: dict[int, list[ChannelRecord]] = {}
        self.reports: list[PlaneReport] = []
        self.total = self.done = 0

    def say(self, event: str, info: dict) -> None:
        self._say(event, {"path": str(self.input_path), **info})

    def plan(self, pixel_series: list[SeriesInfo]) -> list:
        """Hash the sources, label and plan every channel; returns the sources' record."""
        image = self.image
        self.say("hashing", {"files": [str(path) for path in image.source_files]})
        sources = describe_sources(image.source_files)
        self.plans = {info.index: plan_series(image, info.index, self.settings, self.table)
                      for info in pixel_series}
        self.total = sum(info.plane_count for info in pixel_series)
        self.say("planned", {"format": image.kind, "device": self.device_name,
                             "planes": self.total,
                             "images": [{"index": info.index, "name": info.name,
                                         "channels": [p.as_dict() for p in self.plans[info.index]]}
                                        for info in pixel_series]})
        self.records = {index: [ChannelRecord(
            index=plan.group.index, name=plan.group.name, microscope=plan.group.microscope,
            specimen=plan.group.specimen, evidence=plan.group.evidence, policy=plan.group.policy,
            level=plan.transfer.level if plan.transfer else POLICY_COPY,
            group=plan.transfer.group if plan.transfer else None, seed=self.settings.seed)
            for plan in plans] for index, plans in self.plans.items()}
        return sources

    def denoised_pages(self, info: SeriesInfo) -> Iterator[np.ndarray]:
        """Pages of ``info`` with every plane denoised (or copied), as the writer takes them.

        Pages are gathered into windows of about ``fitter.window`` tiles to denoise, so a
        batching fitter sees many planes at once; the single fitter's window is one page.
        """
        plans = self.plans[info.index]
        window: list[tuple[list[PlaneKey], list[np.ndarray]]] = []
        tiles = buffered = 0
        for keys, page in self.image.pages(info.index):
            planes = info.split_page(page)
            window.append((keys, planes))
            for key, plane in zip(keys, planes):
                if plans[key.channel].transfer is not None:
                    tiles += len(plane_tiles(plane.shape))
                    buffered += plane.size * 4
            if tiles >= self.fitter.window or buffered >= WINDOW_BYTES:
                yield from self._denoise_window(window, info)
                window, tiles, buffered = [], 0, 0
        if window:
            yield from self._denoise_window(window, info)

    def _denoise_window(self, window, info: SeriesInfo) -> Iterator[np.ndarray]:
        """Denoise the planes of a window of pages in one fitter call; yield the pages."""
        entries, jobs = self._jobs(window, info)
        results = denoise_planes(jobs, self.fitter)
        records = self.records[info.index]
        position = 0
        for _, planes in window:
            outputs = []
            for plane in planes:
                key, plan, transfer, job = entries[position]
                position += 1
                if job is None:
                    outputs.append(plane)
                    records[key.channel].add_plane(None, 0.0)
                    self.reports.append(plane_report(key, plan, None, 0.0, 0,
                                                     "copied: not fluorescence"))
                    continue
                result = results[job]
                outputs.append(result.output)
                records[key.channel].add_plane(transfer.params.as_dict(), result.seconds,
                                               level=transfer.level, group=transfer.group,
                                               batch=result.batch, iterations=result.iterations)
                note = "constant plane copied" if result.constant else (
                    f"fitted in a batch of {result.batch}" if result.batch > 1 else "")
                report = plane_report(key, plan, transfer, result.seconds, result.tiles, note)
                report.members, report.rollbacks = result.members, result.rollbacks
                report.noise = result.noise.as_dict() if result.noise is not None else None
                report.iterations_run = list(result.iterations) if result.iterations else None
                self.reports.append(report)
            yield info.join_page(outputs)

    def _jobs(self, window, info: SeriesInfo) -> tuple[list, list[PlaneJob]]:
        """The planes of ``window`` to fit, and per plane (key, plan, transfer, job index
        or None for a copied plane); says which configurations are about to be fitted."""
        settings, device = self.settings, self.fitter.device
        plans = self.plans[info.index]
        jobs: list[PlaneJob] = []
        fitting: dict[tuple, list[int]] = {}  # (level, group, params) -> planes, for `say`
        entries = []
        for keys, planes in window:
            for key, plane in zip(keys, planes):
                self.done += 1
                plan = plans[key.channel]
                if plan.transfer is None:
                    entries.append((key, plan, None, None))
                    if self.progress is not None:
                        self.progress(self.done, self.total, 1, 1, 1, 1)
                    continue
                transfer = plan.transfer
                if settings.transfer != GROUP:  # per plane: the nearest calibration image
                    transfer = self._nearest(plane, plan, device)
                entries.append((key, plan, transfer, len(jobs)))
                jobs.append(PlaneJob(plane, transfer.params, settings.fit_options(device),
                                     self._plane_progress(self.done),
                                     members=settings.ensemble_members(device),
                                     vst=settings.fit_mode().vst))
                fitting.setdefault((transfer.level, transfer.group, transfer.params),
                                   []).append(self.done)
        for (level, group, params), numbers in fitting.items():
            self.say("fitting", {"device": self.device_name, "planes": numbers,
                                 "of": self.total, "level": level, "group": group,
                                 "params": params.as_dict()})
        return entries, jobs

    def _nearest(self, plane: np.ndarray, plan: ChannelPlan, device: torch.device) -> Transfer:
        from ..transfer.nearest import nearest  # scikit-image: only nearest-* transfer needs it

        settings = self.settings
        found = nearest(plane, self.table, plan.group.microscope, plan.group.specimen,
                        settings.transfer, settings.within_group, settings.metric, device)
        return apply_overrides(found, settings.depth, settings.width, settings.skip,
                               settings.iterations)

    def _plane_progress(self, plane: int):
        if self.progress is None:
            return None

        def callback(tile: int, tiles: int, iteration: int, iterations: int) -> None:
            self.progress(plane, self.total, tile, tiles, iteration, iterations)
        return callback

    def provenance(self, pixel_series: list[SeriesInfo], sources: list, started: str,
                   finished: str, worker: str | None, missing: list[str],
                   notes: list[str]) -> dict[int, list[tuple[str, str]]]:
        """The provenance MapAnnotation of every written image (``provenance.py``)."""
        versions = software_versions(torch)
        record = _settings_record(self.settings, self.table, self.fitter)
        return {info.index: provenance_entries(
            software="autodip-watch", version=__version__, torch_version=torch.__version__,
            device=self.device_name, sources=sources, started=started, finished=finished,
            image_name=info.name, channels=self.records[info.index], settings=record,
            host=self.host, worker=worker, input_path=self.input_path, missing=missing,
            source_ome=self.image.source_identity(info.index),
            warnings=self.image.warnings + notes, versions=versions,
            calibration_sha256=self.table.sha256(),
            command=self.settings.command or _command_line())
            for info in pixel_series}


def _settings_record(settings: DenoiseSettings, table: CalibrationTable,
                     fitter: TileFitter) -> dict[str, object]:
    """The settings that shaped the result, for the provenance record: the fields the
    settings model marks as recorded, then how the planes were fitted (batching, speed,
    the fit mode as it ran on this device)."""
    described = fitter.describe()
    mode = settings.fit_mode().describe(fitter.device.type,
                                        settings.ensemble_members(fitter.device))
    return {**settings.provenance_record(table), "batching": described["batching"],
            "max_batch": described.get("max_batch", 1),
            "speed": ",".join(settings.speed_settings(fitter.device)) or "none",
            **{f"mode_{key}" if key != "name" else "mode": value
               for key, value in mode.items()}}


def _command_line() -> str:
    """This process's command line, the program named without its folder."""
    argv = list(sys.argv) or ["python"]
    argv[0] = Path(argv[0]).name
    return shlex.join(argv)
