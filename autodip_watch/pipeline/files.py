"""Several files in one call (``denoise a.tif b.tif ...``), as the daemon's worker runs them.

Each input gets its own output (two inputs that would share one are refused before
anything runs), a multi-file OME set given through several of its files is denoised
once, and where batching is on for the device the files run side by side so that
their planes share batches (``dip/batching.py``). A file's error is its own: the others
still run.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

from ..dip.batching import SharedFitter, run_together
from ..io.atomic import describe_os_error
from ..io.errors import ImageReadError
from ..io.outputs import output_path_for
from ..io.reader import ImageFile
from ..settings.denoise import DenoiseSettings
from ..settings.sections import BatchingSettings
from .denoise import FileProgress, Notify, PipelineError, denoise_file, shared_fitter

#: for_file(path) -> (progress, notify) of that file (a progress display's).
ForFile = Callable[[Path], tuple[FileProgress | None, Notify | None]]
#: on_result(path, summary): a file ended; ``summary`` has ``error`` when it failed.
OnResult = Callable[[Path, dict], None]


def output_target(out: str | None, inputs: int) -> Path | None:
    """``--out``: a folder when it ends in a slash or is an existing folder (created if
    missing), else a file (one input only).

    Raises
    ------
    PipelineError
        Several inputs and a file, or a folder path that is a file.
    OSError
        The folder cannot be created.
    """
    if out is None:
        return None
    path = Path(out).expanduser()
    if not (out.endswith(("/", os.sep)) or path.is_dir()):
        if inputs > 1:
            raise PipelineError(f"--out {out}: several inputs need a folder; write it with a "
                                f"trailing slash ({out}/) to create it")
        return path
    if path.exists() and not path.is_dir():
        raise PipelineError(f"--out {out}: {path} is a file, not a folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


def planned_outputs(inputs: list[Path], out: Path | None) -> list[Path]:
    """The output of each input; raises :class:`PipelineError` when two inputs would be
    written to one output."""
    planned = [output_path_for(path, out) for path in inputs]
    for i, first in enumerate(inputs):
        for j, second in enumerate(inputs):
            if i < j and planned[i] == planned[j] and first.absolute() != second.absolute():
                raise PipelineError(f"{first} and {second} would both be written to "
                                    f"{planned[i]}; denoise them into different folders")
    return planned


def one_per_set(inputs: list[Path]) -> tuple[list[Path], list[tuple[Path, Path]]]:
    """The inputs with each multi-file OME set once (its first file given), and the
    (member, first file given) pairs left out. Two inputs are of one set when they are
    read from the same files (a ``BinaryOnly`` member and its master, or files that
    each carry the whole set's OME-XML); plain files are their own set."""
    first_of: dict[object, Path] = {}
    kept: list[Path] = []
    left_out: list[tuple[Path, Path]] = []
    for path in inputs:
        key: object = path
        try:
            with ImageFile(path) as image:
                if len(image.source_files) > 1:
                    key = frozenset(p.resolve() for p in image.source_files)
        except (ImageReadError, OSError):
            pass  # denoising it reports the error
        if key in first_of:
            left_out.append((path, first_of[key]))
            continue
        first_of[key] = path
        kept.append(path)
    return kept, left_out


def files_together(settings: DenoiseSettings, files: int,
                   jobs_together: int) -> tuple[SharedFitter | None, int]:
    """The shared batching fitter and how many files run side by side: as the daemon's
    worker does, where batching is on for the device; else (None, 1)."""
    shared = shared_fitter(settings) if files > 1 else None
    if shared is None:
        return None, 1
    slots = BatchingSettings(mode=settings.batching, max_batch=settings.max_batch,
                             jobs_together=jobs_together).jobs_for(shared.fitter.device.type)
    return (shared, slots) if slots > 1 else (None, 1)


def count_planes(paths: list[Path]) -> int | None:
    """Planes of every input from the metadata (for an overall bar); None if unreadable."""
    total = 0
    for path in paths:
        try:
            with ImageFile(path) as image:
                total += sum(info.plane_count for info in image.series if info.has_pixels)
        except (ValueError, OSError):
            return None  # the file's own error comes when it is denoised
    return total


def denoise_files(inputs: list[Path], settings: DenoiseSettings, out: Path | None = None, *,
                  shared: SharedFitter | None = None, slots: int = 1,
                  for_file: ForFile | None = None, on_result: OnResult | None = None,
                  stopping: Callable[[], bool] = lambda: False,
                  incomplete: Callable[[Path], str] | None = None) -> list[dict]:
    """Denoise ``inputs``, ``slots`` at a time sharing ``shared`` (:func:`files_together`).

    Each file runs :func:`~.denoise.denoise_file`, as the daemon's worker runs them.

    Parameters
    ----------
    inputs : list of Path
        The files, each with its own output (:func:`planned_outputs` checks that first).
    settings : DenoiseSettings
        How every file is denoised.
    out : Path, optional
        Output file (one input) or folder; default beside each input.
    shared, slots
        A shared batching fitter and how many files run side by side (default: one at
        a time, each with its own fitter).
    for_file : callable, optional
        ``for_file(path) -> (progress, notify)`` of a progress display.
    on_result : callable, optional
        ``on_result(path, summary)`` as each file ends.
    stopping : callable
        True once the run should stop: files not started yet are not started.
    incomplete : callable, optional
        Take files that hold less than their metadata declares (an acquisition cut
        short) as they are, as the daemon does after ``incomplete_after_seconds``;
        ``incomplete(path)`` says what is missing, for the provenance. Without it such a
        file fails, and its error says that ``--incomplete`` would denoise it.

    Returns
    -------
    list of dict
        One summary per input, in order: the :class:`~.reports.FileReport` as a dict,
        or ``{"input", "error"}`` for a file that failed (its error named, an OS error
        with the path and the system's reason) or was not started because ``stopping()``
        said so. Never raises for one file's error.
    """
    def one(path: Path, fitter) -> dict:
        if stopping():
            return {"input": str(path), "error": "not started: stopping"}
        progress, notify = for_file(path) if for_file is not None else (None, None)
        try:
            summary = denoise_file(path, settings, out, progress=progress, fitter=fitter,
                                   notify=notify,
                                   incomplete=incomplete(path) if incomplete else None).as_dict()
        except (PipelineError, ValueError, OSError, RuntimeError) as error:
            message = (describe_os_error(error, error.filename or path, "denoise")
                       if isinstance(error, OSError) else str(error))
            if incomplete is None and _holds_less_than_declared(error, path):
                message += (" (if its acquisition was cut short, --incomplete denoises "
                            "what it holds)")
            summary = {"input": str(path), "error": message}
        if on_result is not None:
            on_result(path, summary)
        return summary

    return run_together(shared, [functools.partial(one, path) for path in inputs], slots)


def _holds_less_than_declared(error: Exception, path: Path) -> bool:
    """Whether ``path`` failed because it holds fewer pages, planes or set files than its
    metadata declares: it failed to read, and reads when taken as it is."""
    if not isinstance(error, ImageReadError):
        return False
    try:
        with ImageFile(path, allow_missing=True):
            return True
    except (ImageReadError, OSError):
        return False
