"""What ``autodip-watch denoise`` shows while it works (stderr; stdout stays for ``--json``).

The pipeline's callbacks only record numbers (:mod:`autodip_watch.progress`); a display
thread reads them a few times per second and draws:

- on a terminal, rich progress bars: one per plane being fitted (iterations, it/s,
  elapsed, ETA) and, with several planes or files, an overall bar above them (planes
  done / total, overall ETA);
- elsewhere (a pipe, a log file, a batch system), plain lines: for each fit at every
  10 % and at least every 30 s, and the same for the whole run.

Before the first iteration it says what it is doing: reading, loading the engine,
checksumming, the plan per channel, and which network is built for which planes.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import IO

from ..daemon.progress import FitProgress, IterationMeter, eta_seconds, format_duration

#: Seconds between two redraws of the bars.
REFRESH_SECONDS = 0.1
#: Plain lines: at every this fraction of a fit, and at least every PLAIN_SECONDS.
PLAIN_STEP = 0.1
PLAIN_SECONDS = 30.0
#: Channels listed before the first fit; more are summed up.
PLAN_LINES = 12
MODES = ("bar", "plain", "off")


def choose_mode(stream: IO | None = None, quiet: bool = False) -> str:
    """``bar`` on a terminal, ``plain`` elsewhere, ``off`` when asked to be quiet."""
    if quiet:
        return "off"
    stream = stream if stream is not None else sys.stderr
    try:
        return "bar" if stream.isatty() else "plain"
    except (AttributeError, ValueError):
        return "plain"


class _Fit:
    """One plane's (tile's) fit as shown: its label, meter and plain-line bookkeeping."""

    def __init__(self, label: str, order: int) -> None:
        self.label = label
        self.order = order
        self.meter = IterationMeter()
        self.task = None  # rich task id
        self.hidden = False
        self.printed_step = -1
        self.printed_at = 0.0
        self.finished_shown = False


class DenoiseProgress:
    """Progress of one ``denoise`` run over one or more files.

    ``total_planes`` (when known beforehand, e.g. counted from the metadata of several
    inputs) sizes the overall bar; otherwise it grows as files report their plan.
    Use as a context manager; :meth:`for_file` gives the pipeline's callbacks.
    """

    def __init__(self, console, mode: str = "bar", total_planes: int | None = None,
                 label_files: bool = False, refresh_seconds: float = REFRESH_SECONDS,
                 plain_seconds: float = PLAIN_SECONDS, clock=time.monotonic) -> None:
        if mode not in MODES:
            raise ValueError(f"progress mode must be one of {MODES}, not {mode!r}")
        self.console = console
        self.mode = mode
        self.total_planes = total_planes
        self.label_files = label_files
        self.refresh_seconds = refresh_seconds
        self.plain_seconds = plain_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._fits: dict[tuple, _Fit] = {}
        self._files: dict[str, FitProgress] = {}
        self._planned: dict[str, int] = {}
        self._overall_task = None
        self._overall_printed = (-1, 0.0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._progress = None

    # ------------------------------------------------------------------ lifetime

    def __enter__(self) -> DenoiseProgress:
        if self.mode == "bar":
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(),
                TextColumn("{task.fields[count]}"), TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"),
                console=self.console, auto_refresh=False)
            self._progress.start()
        if self.mode != "off":
            self._thread = threading.Thread(target=self._run, name="denoise-progress",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._draw(final=True)
        if self._progress is not None:
            self._progress.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_seconds):
            try:
                self._draw()
            except Exception:  # a display glitch must never stop the denoising
                pass

    # ------------------------------------------------------------------ callbacks

    def for_file(self, path: Path):
        """``(progress, notify)`` for :func:`autodip_watch.pipeline.denoise_file`."""
        key = str(path)
        name = Path(path).name
        fit_progress = FitProgress(clock=self.clock)
        with self._lock:
            self._files[key] = fit_progress

        def progress(plane: int, planes: int, tile: int, tiles: int, iteration: int,
                     iterations: int) -> None:
            # Per iteration: record, never draw (drawing is the display thread's job).
            now = self.clock()
            fit_progress.update(plane, planes, tile, tiles, iteration, iterations, now)
            fit = self._fits.get((key, plane, tile))
            if fit is None:
                fit = self._new_fit((key, plane, tile), name, plane, planes, tile, tiles)
            fit.meter.update(iteration, iterations, now)

        last_fit: list = [None]

        def notify(event: str, info: dict) -> None:
            if event == "planned":
                with self._lock:
                    self._planned[key] = int(info.get("planes") or 0)
            if event == "fitting":
                # Said once per configuration in a row: a stack's next plane with the same
                # network is on its bar; a different network is news.
                configuration = (info.get("group"), str(info.get("params")))
                if configuration == last_fit[0]:
                    return
                last_fit[0] = configuration
            self.say(describe_event(event, info, name))

        return progress, notify

    def _new_fit(self, key: tuple, name: str, plane: int, planes: int, tile: int,
                 tiles: int) -> _Fit:
        # A plane's fits: its tiles, each fitted once per ensemble member (dip/plane.py).
        label = f"plane {plane}/{planes}" + (f" fit {tile}/{tiles}" if tiles > 1 else "")
        if self.label_files:
            label = f"{name} {label}"
        with self._lock:
            fit = self._fits.get(key)
            if fit is None:
                fit = self._fits[key] = _Fit(label, len(self._fits))
        return fit

    def say(self, line: str | None) -> None:
        """A line of what is happening, above the bars (or between plain lines)."""
        if not line or self.mode == "off":
            return
        if self._progress is not None:
            self._progress.console.print(line, markup=False, highlight=False)
        else:
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    # ------------------------------------------------------------------ drawing

    def overall(self, now: float) -> tuple[int, int, float, float | None] | None:
        """(planes done, planes in all, fraction, ETA seconds) over every file, or None
        while the number of planes is unknown."""
        with self._lock:
            files = dict(self._files)
            planned = dict(self._planned)
        total = self.total_planes or sum(planned.values())
        if not total:
            return None
        done = sum(progress.planes_done for progress in files.values())
        fraction = sum(progress.fraction * (progress.planes or planned.get(path, 0))
                       for path, progress in files.items()) / total
        first = min((p for p in files.values() if p.anchor is not None),
                    key=lambda p: p.anchor[0], default=None)
        latest = max((p.at for p in files.values() if p.at is not None), default=None)
        eta = None
        if first is not None and latest is not None:
            # From the first iteration of the run on: start-up before it is not a rate.
            started, start_fraction = first.anchor[0], first.anchor[1] * first.planes / total
            if latest > started and fraction > start_fraction:
                eta = eta_seconds(fraction, (fraction - start_fraction) / (latest - started),
                                  now - latest)
        return done, total, min(1.0, fraction), eta

    def _draw(self, final: bool = False) -> None:
        if self.mode == "off":
            return
        now = self.clock()
        with self._lock:
            fits = sorted(self._fits.values(), key=lambda fit: fit.order)
        overall = self.overall(now)
        several = overall is not None and (overall[1] > 1 or len(self._files) > 1)
        if self.mode == "bar":
            self._draw_bars(fits, overall if several else None, now)
        else:
            self._draw_plain(fits, overall if several else None, now, final)

    def _draw_bars(self, fits: list[_Fit], overall, now: float) -> None:
        progress = self._progress
        if overall is not None:
            done, total, fraction, eta = overall
            fields = {"count": f"{done}/{total} planes", "rate": "",
                      "eta": format_duration(eta)}
            if self._overall_task is None:
                self._overall_task = progress.add_task("all", total=1000, **fields)
            progress.update(self._overall_task, completed=round(1000 * fraction), **fields)
        started_new = False
        for fit in fits:
            meter = fit.meter
            rate = meter.rate()
            fields = {"count": f"{meter.iteration}/{meter.total} it",
                      "rate": f"{rate:.2f} it/s" if rate else "- it/s",
                      "eta": format_duration(meter.eta(now))}
            if fit.task is None:
                fit.task = progress.add_task(fit.label, total=meter.total or 1, **fields)
                started_new = True
            if not fit.hidden:
                progress.update(fit.task, completed=meter.iteration, total=meter.total or 1,
                                **fields)
        if started_new:  # a finished plane makes way for the next one
            running = [fit for fit in fits if fit.task is not None and not fit.meter.done]
            if running:
                for fit in fits:
                    if fit.meter.done and not fit.hidden and fit.task is not None:
                        fit.hidden = True
                        progress.update(fit.task, visible=False)
        progress.refresh()

    def _draw_plain(self, fits: list[_Fit], overall, now: float, final: bool) -> None:
        for fit in fits:
            meter = fit.meter
            if not meter.total or fit.finished_shown:
                continue
            step = int(meter.iteration / meter.total / PLAIN_STEP + 1e-9)
            due = step > fit.printed_step or now - fit.printed_at >= self.plain_seconds
            if not due:
                continue
            fit.printed_step, fit.printed_at = step, now
            fit.finished_shown = meter.done
            rate = meter.rate()
            self.say(f"{fit.label}: {meter.iteration}/{meter.total} it "
                     f"({100 * meter.iteration / meter.total:.0f} %), "
                     f"{f'{rate:.2f} it/s' if rate else '- it/s'}, "
                     f"ETA {format_duration(meter.eta(now))}")
        if overall is not None:
            done, total, fraction, eta = overall
            step = int(fraction / PLAIN_STEP + 1e-9)
            printed_step, printed_at = self._overall_printed
            if (step > printed_step and (fraction > 0 or final)) or (
                    printed_step >= 0 and now - printed_at >= self.plain_seconds):
                self._overall_printed = (step, now)
                self.say(f"all: {done}/{total} planes ({100 * fraction:.0f} %), "
                         f"ETA {format_duration(eta)}")


def describe_event(event: str, info: dict, name: str) -> str | None:
    """One readable line for a pipeline :data:`~autodip_watch.pipeline.Notify` event."""
    if event == "reading":
        return f"reading {info['path']}"
    if event == "hashing":
        files = info.get("files") or []
        return f"{name}: checksumming {len(files)} file(s) for the provenance (SHA-256)"
    if event == "planned":
        lines = [f"{name}: {info['planes']} plane(s), {info['format']}, on {info['device']}"]
        channels = [(image, channel) for image in info.get("images", [])
                    for channel in image["channels"]]
        for image, channel in channels[:PLAN_LINES]:
            label = f"  image {image['index']} channel {channel['index']}"
            if channel.get("name"):
                label += f" {channel['name']!r}"
            labels = f"{channel['microscope']}/{channel['specimen']}"
            params = channel.get("params")
            if params is None:
                lines.append(f"{label}: {labels}: copied unchanged (not fluorescence)")
            else:
                lines.append(f"{label}: {labels} -> group {channel['group']} "
                             f"(level {channel['level']}): {_params(params)}")
        if len(channels) > PLAN_LINES:  # a plate of many images: `inspect` lists them all
            lines.append(f"  ... and {len(channels) - PLAN_LINES} more channel(s) "
                         f"(`autodip-watch inspect` lists every one)")
        return "\n".join(lines)
    if event == "fitting":
        planes = info["planes"]
        which = (f"plane {planes[0]}" if len(planes) == 1
                 else f"planes {_ranges(planes)}") + f" of {info['of']}"
        params = info["params"]
        return (f"{name}: building the network for group {info['group']} (depth "
                f"{params['depth']}, width {params['width']}, skip {params['skip']}) and "
                f"fitting {which}: {params['iterations']} iterations on {info['device']}")
    return None


def _params(params: dict) -> str:
    return (f"depth {params['depth']}, width {params['width']}, skip {params['skip']}, "
            f"{params['iterations']} iterations")


def _ranges(numbers: list[int]) -> str:
    """[1, 2, 3, 5] -> "1-3, 5"."""
    parts: list[str] = []
    start = previous = numbers[0]
    for number in numbers[1:] + [None]:
        if number is not None and number == previous + 1:
            previous = number
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if number is not None:
            start = previous = number
    return ", ".join(parts)
