"""``autodip-watch denoise``: options -> :class:`DenoiseSettings` -> ``pipeline.files``.

What is here is the terminal's part: progress on stderr, one line per file, and stopping
on SIGINT/SIGTERM without leaving a temporary file behind.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Optional

import typer

from .app import app, console, fail, json_flag, load_table, say, settings_from


@app.command()
def denoise(
    inputs: list[Path] = typer.Argument(..., metavar="FILE...",
                                        help="TIFF, OME-TIFF or PNG files."),
    microscope: Optional[str] = typer.Option(
        None, metavar="TYPE", help="confocal, widefield or two-photon (overrides the metadata)."),
    specimen: Optional[str] = typer.Option(
        None, metavar="NAME", help="actin, mito or nucleus (overrides the metadata)."),
    depth: Optional[int] = typer.Option(None, metavar="4-8",
                                        help="Override the network depth."),
    width: Optional[str] = typer.Option(None, metavar="WIDTH",
                                        help="Override the width: 16..512 or asc."),
    skip: Optional[int] = typer.Option(None, metavar="0|4", help="Override the skip channels."),
    iterations: Optional[int] = typer.Option(None, metavar="N",
                                             help="Override the number of iterations."),
    out: Optional[str] = typer.Option(None, "--out", "-o", metavar="PATH",
                                      help="Output file (one input), or folder: an existing "
                                           "folder, or a path ending in / (created if missing)."),
    device: Optional[str] = typer.Option(None, metavar="DEVICE", help="cuda, cuda:N, mps or cpu "
                                         "(default: the best available)."),
    seed: Optional[int] = typer.Option(None, metavar="N", help="Random seed of the network and "
                                       "its input (default 0)."),
    metric: Optional[str] = typer.Option(None, metavar="METRIC", help="Calibration metric "
                                         "table (default: the table's, lpips_psnr)."),
    table: Optional[Path] = typer.Option(None, metavar="FILE", help="Calibration table TOML "
                                         "(default: the shipped FMD table)."),
    transfer: Optional[str] = typer.Option(
        None, metavar="MODE", help="Parameter transfer: group (default), or nearest-mae, "
        "nearest-mse, nearest-psnr, nearest-ssim, nearest-lpips, nearest-gradient (needs a "
        "table from `calibrate`)."),
    within_group: bool = typer.Option(False, "--within-group", help="nearest-*: compare only "
                                      "with calibration images of the plane's group."),
    batching: Optional[str] = typer.Option(None, metavar="MODE", help="Fit planes of one "
                                           "configuration together: auto (default: on CUDA "
                                           "only), on, off."),
    max_batch: Optional[int] = typer.Option(None, metavar="N", help="Most planes (tiles) "
                                            "fitted together in one batch (default 32)."),
    jobs_together: int = typer.Option(0, min=0, metavar="N", help="Files denoised side by side "
                                      "where batching is on, so that planes of different files "
                                      "share batches (0: 4)."),
    speed: Optional[str] = typer.Option(
        None, metavar="NAMES", help="Speed settings, comma-separated: channels_last, tf32, "
        "bf16, compile, cuda_graphs (default: none, the plain fp32 path; see bench/README.md "
        "for what each gains)."),
    mode: Optional[str] = typer.Option(
        None, metavar="MODE", help="Fit mode: stable (default: variance-stabilised, "
        "late-window mean, rollback after loss spikes, ensemble of seeds) or paper (the "
        "published AUTO-DIP: one fit, last iterate)."),
    members: Optional[int] = typer.Option(None, metavar="N", help="Ensemble size: fits per "
                                          "tile, averaged (default: the mode's for the device)."),
    as_json: bool = json_flag("Print a JSON summary on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q",
                               help="No progress on stderr (errors still)."),
) -> None:
    """Denoise files with the AUTO-DIP configuration of each channel's group.

    Writes X.autodip.ome.tif for X.ome.tif (X.tif.autodip.ome.tif for X.tif, and so on)
    beside each input (or under --out); never modifies the input, never overwrites a file
    it did not write for that input. Progress goes to stderr: bars on a terminal, a line
    every 10 % (or 30 s) elsewhere.
    """
    if not quiet:
        say("loading the engine (torch) ...")
    from ..dip.device import choose_device, configure_tf32
    from ..io.atomic import describe_os_error, remove_temporary_outputs
    from ..pipeline.denoise import PipelineError
    from ..pipeline.files import (count_planes, denoise_files, files_together, one_per_set,
                                  output_target, planned_outputs)
    from ..settings.denoise import DenoiseSettings
    from .inspect import check_transfer
    from .progress_view import DenoiseProgress, choose_mode

    settings = settings_from(DenoiseSettings, {
        "microscope": microscope, "specimen": specimen, "depth": depth, "width": width,
        "skip": skip, "iterations": iterations, "metric": metric, "device": device,
        "seed": seed, "transfer": transfer, "within_group": within_group,
        "batching": batching, "max_batch": max_batch, "speed": speed, "mode": mode,
        "members": members, "table": load_table(table)})
    check_transfer(settings)
    try:
        target = output_target(out, len(inputs))
        planned = planned_outputs(inputs, target)
    except PipelineError as error:
        fail(error)
    except OSError as error:
        fail(describe_os_error(error, out, "create the folder"), 1)
    inputs, same_set = one_per_set(inputs)
    for member, first in same_set:
        say(f"{member}: same multi-file OME set as {first}; the set is denoised once, with "
            f"{first}")
    shared, slots = files_together(settings, len(inputs), jobs_together)
    try:  # TF32 is switched for the process, once (dip.device.configure_tf32)
        configure_tf32(settings.tf32(choose_device(settings.device)))
    except ValueError:
        pass  # a device that is not here: each file says so
    failed: list[Path] = []
    stopping = _Stopping(immediate=slots == 1)

    def on_result(path: Path, summary: dict) -> None:
        if "error" in summary:
            failed.append(path)
            message = summary["error"]
            # reader errors already start with the path
            console_error(message if message.startswith(str(path)) else f"{path}: {message}")
        elif not as_json:
            say(f"{path} -> {summary['output']} ({summary['seconds']:.1f} s on "
                f"{summary['device']})")

    try:
        with stopping, DenoiseProgress(console, choose_mode(sys.stderr, quiet),
                                       total_planes=count_planes(inputs) if len(inputs) > 1
                                       else None, label_files=len(inputs) > 1) as view:
            summaries = denoise_files(inputs, settings, target, shared=shared, slots=slots,
                                      for_file=stopping.watching(view.for_file),
                                      on_result=on_result,
                                      stopping=lambda: stopping.signal is not None)
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM (systemd, a batch scheduler): what a writer left is removed.
        for output in planned:
            remove_temporary_outputs(output)
        number = stopping.signal or signal.SIGINT
        console.print(f"[yellow]stopped by {signal.Signals(number).name}; unfinished outputs "
                      f"removed[/yellow]")
        raise typer.Exit(128 + number) from None
    if same_set:  # say what happened to every input given
        outputs = {str(path): summary.get("output") for path, summary in zip(inputs, summaries)}
        summaries = list(summaries) + [
            {"input": str(member), "same_set_as": str(first), "output": outputs.get(str(first)),
             "note": "member of a multi-file OME set given more than once; denoised once"}
            for member, first in same_set]
    if as_json:
        typer.echo(json.dumps(summaries[0] if len(summaries) == 1 else summaries, indent=2))
    if failed:
        raise typer.Exit(1)


def console_error(message: str) -> None:
    """One file's error; the run goes on."""
    from rich.markup import escape

    console.print(f"[red]error:[/red] {escape(message)}", highlight=False)


class _Stopping:
    """SIGTERM and SIGINT during ``denoise``: stop as Ctrl-C does, leaving no temporary file.

    With one file at a time the signal interrupts at once (KeyboardInterrupt; the writer
    removes its temporary file on the way out). With files side by side in threads it is
    noted and each fit stops at its next iteration, so that every thread's writer cleans
    up before the process exits.
    """

    def __init__(self, immediate: bool) -> None:
        self.immediate = immediate
        self.signal: Optional[int] = None
        self._previous: dict = {}

    def __enter__(self) -> _Stopping:
        for number in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[number] = signal.signal(number, self._on_signal)
            except ValueError:  # not the main thread (tests calling the app in a thread)
                pass
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        if self.signal is not None and exc[0] is None:
            raise KeyboardInterrupt

    def _on_signal(self, number, frame) -> None:
        first = self.signal is None
        self.signal = number
        if self.immediate or not first:
            raise KeyboardInterrupt

    def watching(self, for_file):
        """``for_file`` whose progress callbacks stop the fit once a signal came."""
        def watched(path: Path):
            progress, notify = for_file(path)

            def check(*args) -> None:
                if self.signal is not None:
                    raise KeyboardInterrupt
                progress(*args)
            return check, notify
        return watched
