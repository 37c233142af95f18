"""``autodip-watch denoise``: options -> :class:`DenoiseSettings` -> ``pipeline.files``.

What is here is the terminal's part: progress on stderr, one line per file, and stopping
on SIGINT/SIGTERM without leaving a temporary file behind.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import defaults
from .app import app, console, fail, load_table, say, settings_from
from .stopping import stoppable


# The options, one alias each, so that the command reads as what it does.
Inputs = Annotated[list[Path], typer.Argument(metavar="FILE...",
                                              help="TIFF, OME-TIFF or PNG files.")]
Microscope = Annotated[Optional[str], typer.Option(
    metavar="TYPE", help="confocal, widefield or two-photon (overrides the metadata).")]
Specimen = Annotated[Optional[str], typer.Option(
    metavar="NAME", help="actin, mito or nucleus (overrides the metadata).")]
Depth = Annotated[Optional[int], typer.Option(metavar="4-8", help="Override the network depth.")]
Width = Annotated[Optional[str], typer.Option(metavar="WIDTH",
                                              help="Override the width: 16..512 or asc.")]
Skip = Annotated[Optional[int], typer.Option(metavar="0|4", help="Override the skip channels.")]
Iterations = Annotated[Optional[int], typer.Option(
    metavar="N", help="Override the number of iterations.")]
Out = Annotated[Optional[str], typer.Option(
    "--out", "-o", metavar="PATH", help="Output file (one input), or folder: an existing "
    "folder, or a path ending in / (created if missing).")]
Device = Annotated[Optional[str], typer.Option(
    metavar="DEVICE", help="cuda, cuda:N, mps or cpu (default: the best available).")]
Seed = Annotated[Optional[int], typer.Option(
    metavar="N", help="Random seed of the network and its input (default 0).")]
Metric = Annotated[Optional[str], typer.Option(
    metavar="METRIC", help="Calibration metric table (default: the table's, lpips_psnr).")]
Table = Annotated[Optional[Path], typer.Option(
    metavar="FILE", help="Calibration table TOML (default: the shipped FMD table).")]
Transfer = Annotated[Optional[str], typer.Option(
    metavar="MODE", help="Parameter transfer: group (default), or nearest-mae, nearest-mse, "
    "nearest-psnr, nearest-ssim, nearest-lpips, nearest-gradient (needs a table from "
    "`calibrate`).")]
WithinGroup = Annotated[bool, typer.Option(
    "--within-group", help="nearest-*: compare only with calibration images of the plane's "
    "group.")]
Batching = Annotated[Optional[str], typer.Option(
    metavar="MODE", help="Fit planes of one configuration together: auto (default: on CUDA "
    "only), on, off.")]
MaxBatch = Annotated[Optional[int], typer.Option(
    metavar="N", help=f"Most planes (tiles) fitted together in one batch (default "
    f"{defaults.MAX_BATCH}).")]
JobsTogether = Annotated[int, typer.Option(
    min=0, metavar="N", help=f"Files denoised side by side where batching is on, so that "
    f"planes of different files share batches (0: {defaults.JOBS_TOGETHER}).")]
Speed = Annotated[Optional[str], typer.Option(
    metavar="NAMES", help="Speed settings, comma-separated: channels_last, tf32, bf16, "
    "compile, cuda_graphs (default: none, the plain fp32 path; see bench/README.md for what "
    "each gains).")]
Mode = Annotated[Optional[str], typer.Option(
    metavar="MODE", help="Fit mode: stable (default: late-window mean of an ensemble of "
    "seeds, going on past the transferred count while the residual is above the estimated "
    "noise) or paper (the published AUTO-DIP: one fit, last iterate).")]
Members = Annotated[Optional[int], typer.Option(
    metavar="N", help="Ensemble size: fits per tile, averaged (default: the mode's for the "
    "device).")]
Incomplete = Annotated[bool, typer.Option(
    "--incomplete", help="Denoise a file that holds less than its metadata declares (an "
    "acquisition cut short: pages, planes or files of its set missing) as it is, as the "
    "daemon does after incomplete_after_seconds; the output's provenance says what was "
    "missing.")]
JsonSummary = Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr (errors "
                                                             "still).")]


@app.command()
def denoise(inputs: Inputs, microscope: Microscope = None, specimen: Specimen = None,
            depth: Depth = None, width: Width = None, skip: Skip = None,
            iterations: Iterations = None, out: Out = None, device: Device = None,
            seed: Seed = None, metric: Metric = None, table: Table = None,
            transfer: Transfer = None, within_group: WithinGroup = False,
            batching: Batching = None, max_batch: MaxBatch = None,
            jobs_together: JobsTogether = 0, speed: Speed = None, mode: Mode = None,
            members: Members = None, incomplete: Incomplete = False,
            as_json: JsonSummary = False,
            quiet: Quiet = False) -> None:
    """Denoise files with the AUTO-DIP configuration of each channel's group.

    Writes X.autodip.ome.tif for X.ome.tif (X.tif.autodip.ome.tif for X.tif, and so on)
    beside each input (or under --out); never modifies the input, never overwrites a file
    it did not write for that input. Progress goes to stderr: bars on a terminal, a line
    every 10 % (or 30 s) elsewhere.
    """
    _fail_fast_when_nothing_exists(inputs, as_json)
    if not quiet:
        say("loading the engine (torch) ...")
    from ..settings.denoise import DenoiseSettings
    from .inspect import check_transfer

    settings = settings_from(DenoiseSettings, {
        "microscope": microscope, "specimen": specimen, "depth": depth, "width": width,
        "skip": skip, "iterations": iterations, "metric": metric, "device": device,
        "seed": seed, "transfer": transfer, "within_group": within_group,
        "batching": batching, "max_batch": max_batch, "speed": speed, "mode": mode,
        "members": members, "table": load_table(table)})
    check_transfer(settings)
    target, planned = _outputs(inputs, out)
    summaries = _run(inputs, settings, target, planned, jobs_together, as_json, quiet,
                     what_is_missing if incomplete else None)
    if as_json:
        print_json(summaries)
    if any("error" in summary for summary in summaries):
        raise typer.Exit(1)


def _fail_fast_when_nothing_exists(inputs: list[Path], as_json: bool) -> None:
    """Every input missing (a typo, a share not mounted): say so, exit 1, without the
    seconds of loading torch first. With some inputs there, each missing one is reported
    in its turn, the others are denoised."""
    if any(path.exists() for path in inputs):
        return
    summaries = [{"input": str(path), "error": f"{path}: file does not exist"}
                 for path in inputs]
    for summary in summaries:
        console_error(summary["error"])
    if as_json:
        print_json(summaries)
    raise typer.Exit(1)


def _outputs(inputs: list[Path], out: Optional[str]) -> tuple[Optional[Path], list[Path]]:
    """``--out`` and the output of each input, or exit 2 (1 for a folder not created)."""
    from ..io.atomic import describe_os_error
    from ..pipeline.denoise import PipelineError
    from ..pipeline.files import output_target, planned_outputs

    try:
        target = output_target(out, len(inputs))
        return target, planned_outputs(inputs, target)
    except PipelineError as error:
        fail(error)
    except OSError as error:
        fail(describe_os_error(error, out, "create the folder"), 1)


def _run(inputs: list[Path], settings, target: Optional[Path], planned: list[Path],
         jobs_together: int, as_json: bool, quiet: bool,
         incomplete) -> list[dict]:
    """Denoise every input with progress on stderr; one summary per input given."""
    from ..dip.device import choose_device, configure_tf32
    from ..io.atomic import remove_temporary_outputs
    from ..pipeline.files import count_planes, denoise_files, files_together, one_per_set
    from .progress_view import DenoiseProgress, choose_mode

    inputs, same_set = one_per_set(inputs)
    for member, first in same_set:
        say(f"{member}: same multi-file OME set as {first}; the set is denoised once, with "
            f"{first}")
    shared, slots = files_together(settings, len(inputs), jobs_together)
    try:  # TF32 is switched for the process, once (dip.device.configure_tf32)
        configure_tf32(settings.tf32(choose_device(settings.device)))
    except ValueError:
        pass  # a device that is not here: each file says so

    finished: dict[str, dict] = {}  # filled from the fit threads; one key each

    def on_result(path: Path, summary: dict) -> None:
        finished[str(path)] = summary
        if "error" in summary:
            message = summary["error"]
            # reader errors already start with the path
            console_error(message if message.startswith(str(path)) else f"{path}: {message}")
        elif not as_json:
            say(f"{path} -> {summary['output']} ({summary['seconds']:.1f} s on "
                f"{summary['device']})")

    def remove_unfinished() -> None:
        for output in planned:
            remove_temporary_outputs(output)
        if as_json:  # a batch script learns which outputs are complete
            print_json(_with_set_members(inputs, [
                finished.get(str(path)) or {"input": str(path), "error": "stopped before it "
                                            "finished; no output written"}
                for path in inputs], same_set))

    # Ctrl-C or SIGTERM (systemd, a batch scheduler): what a writer left is removed.
    with stoppable(slots == 1, remove_unfinished, "unfinished outputs removed") as stopping, \
            DenoiseProgress(console, choose_mode(sys.stderr, quiet),
                            total_planes=count_planes(inputs) if len(inputs) > 1 else None,
                            label_files=len(inputs) > 1) as view:
        summaries = denoise_files(inputs, settings, target, shared=shared, slots=slots,
                                  for_file=stopping.watching(view.for_file),
                                  on_result=on_result, stopping=lambda: stopping.requested,
                                  incomplete=incomplete)
    return _with_set_members(inputs, summaries, same_set)


def _with_set_members(inputs: list[Path], summaries: list[dict],
                      same_set: list[tuple[Path, Path]]) -> list[dict]:
    """One summary per input given: those of ``inputs`` (in order), and one per member of
    a multi-file OME set that was given as well as the file that ran it."""
    outputs = {str(path): summary.get("output") for path, summary in zip(inputs, summaries)}
    return list(summaries) + [
        {"input": str(member), "same_set_as": str(first), "output": outputs.get(str(first)),
         "note": "member of a multi-file OME set given more than once; denoised once"}
        for member, first in same_set]


def print_json(summaries: list[dict]) -> None:
    """``--json``: the summary of one input as an object, of several as a list."""
    typer.echo(json.dumps(summaries[0] if len(summaries) == 1 else summaries, indent=2))


def what_is_missing(path: Path) -> str:
    """``--incomplete``: what a file taken as it is lacks, for its provenance, found as
    the daemon's watcher finds it (``daemon/inspection.py``)."""
    from ..daemon.inspection import UnreadableImage, inspect_image, set_files

    try:
        image = inspect_image(path)
    except (UnreadableImage, OSError, ValueError):
        image = None
    parts = []
    if image is not None and image.missing:
        parts.append(f"missing {set_files(image.missing)}")
    if image is not None and image.planes is not None and not image.planes.complete:
        parts.append(image.planes.describe())
    return "; ".join(parts + ["by denoise --incomplete"])


def console_error(message: str) -> None:
    """One file's error; the run goes on."""
    from rich.markup import escape

    console.print(f"[red]error:[/red] {escape(message)}", highlight=False)
