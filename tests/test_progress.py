"""Rate-based progress: the measured iteration rate (start-up excluded) gives the ETA, in
`denoise`'s display, in the daemon's worker and in `status`."""

from __future__ import annotations

import io
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from rich.console import Console

from autodip_watch.settings.config import Config
from autodip_watch.daemon.progress import FitProgress, IterationMeter, eta_seconds, format_duration
from autodip_watch.cli.progress_view import DenoiseProgress, describe_event
from autodip_watch.daemon.queue import JobQueue
from autodip_watch.daemon.status import collect_status, queue_eta
from autodip_watch.cli.status_view import render_status


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- the rate model

def test_iteration_meter_excludes_start_up():
    """100 s of start-up before iteration 1, then 2 s per iteration: the ETA says 2 s per
    remaining iteration from the second iteration on, not hours."""
    meter = IterationMeter()
    meter.update(1, 300, now=100.0)  # the first report comes after the start-up
    assert meter.rate() is None and meter.eta(100.0) is None
    meter.update(2, 300, now=102.0)
    assert meter.rate() == pytest.approx(0.5)
    assert meter.eta(102.0) == pytest.approx(298 * 2.0)
    meter.update(12, 300, now=122.0)
    assert meter.eta(123.0) == pytest.approx(288 * 2.0 - 1.0)


# (reports as (plane, planes, tile, tiles, iteration, iterations, time)), then the
# expected fraction, planes done and rate (fraction per second)
FIT_CASES = {
    "one plane": ([(1, 1, 1, 1, 1, 10, 50.0), (1, 1, 1, 1, 5, 10, 54.0)], 0.5, 0, 0.4 / 4),
    "two planes one after the other": (
        [(1, 2, 1, 1, 1, 10, 50.0), (1, 2, 1, 1, 10, 10, 59.0), (2, 2, 1, 1, 5, 10, 70.0)],
        0.75, 1, (0.75 - 0.05) / 20),
    "a batch of two planes, interleaved": (
        [(1, 2, 1, 1, 1, 10, 50.0), (2, 2, 1, 1, 1, 10, 50.0), (1, 2, 1, 1, 5, 10, 54.0),
         (2, 2, 1, 1, 5, 10, 54.0)], 0.5, 0, (0.5 - 0.05) / 4),
    "tiles of one plane": (
        [(1, 1, 1, 2, 10, 10, 50.0), (1, 1, 2, 2, 5, 10, 60.0)], 0.75, 0, 0.25 / 10),
    "a copied plane, then a fit": (
        [(1, 2, 1, 1, 1, 1, 50.0), (2, 2, 1, 1, 2, 4, 52.0)], 0.75, 1, 0.25 / 2),
}


@pytest.mark.parametrize("name", list(FIT_CASES))
def test_fit_progress_adds_up_planes_tiles_and_batches(name):
    reports, fraction, planes_done, rate = FIT_CASES[name]
    progress = FitProgress()
    for *report, now in reports:
        progress.update(*report, now=now)
    assert progress.fraction == pytest.approx(fraction)
    assert progress.planes_done == planes_done
    assert progress.rate() == pytest.approx(rate)
    assert progress.eta(progress.at) == pytest.approx((1 - fraction) / rate)


def test_fit_progress_finishes_at_one():
    progress = FitProgress()
    for plane in (1, 2, 3):
        for iteration in range(1, 5):
            progress.update(plane, 3, 1, 1, iteration, 4, now=float(plane * 10 + iteration))
    assert progress.fraction == pytest.approx(1.0) and progress.planes_done == 3
    assert progress.eta(progress.at) == 0.0


@pytest.mark.parametrize("args, expected", [
    ((None, 0.1), None), ((0.5, None), None), ((0.5, 0.0), None),
    ((0.5, 0.1), 5.0), ((0.5, 0.1, 2.0), 3.0), ((0.5, 0.1, 10.0), 0.0), ((1.2, 0.1), 0.0)])
def test_eta_seconds(args, expected):
    assert eta_seconds(*args) == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize("seconds, text", [(None, "-:--:--"), (0, "0:00:00"), (65.4, "0:01:05"),
                                           (3600 * 3 + 61, "3:01:01")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


# --------------------------------------------------------------------------- the plain display

def plain_display(clock: Clock, total_planes: int | None = None) -> tuple[DenoiseProgress, io.StringIO]:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False, width=200)
    return DenoiseProgress(console, "plain", total_planes=total_planes, clock=clock), buffer


def test_plain_lines_every_ten_percent():
    clock = Clock()
    display, buffer = plain_display(clock)
    progress, _ = display.for_file(Path("a.tif"))
    for iteration in range(1, 101):
        clock.now += 0.5
        progress(1, 1, 1, 1, iteration, 100)
        display._draw()
    lines = buffer.getvalue().splitlines()
    counts = [int(line.split(": ")[1].split("/")[0]) for line in lines]
    assert counts == [1] + list(range(10, 101, 10)), lines
    assert "ETA -:--:--" in lines[0] and "ETA 0:00:45" in lines[1]  # 90 left at 2 it/s
    assert "2.00 it/s" in lines[1]


def test_plain_lines_at_least_every_30_seconds():
    clock = Clock()
    display, buffer = plain_display(clock)
    progress, _ = display.for_file(Path("a.tif"))
    for iteration in range(1, 9):  # 20 s per iteration: under 10 % in 30 s
        clock.now += 20.0
        progress(1, 1, 1, 1, iteration, 1000)
        display._draw()
    counts = [int(line.split(": ")[1].split("/")[0]) for line in buffer.getvalue().splitlines()]
    assert counts == [1, 3, 5, 7]


def test_plain_overall_line_for_several_planes():
    clock = Clock()
    display, buffer = plain_display(clock, total_planes=4)
    progress, _ = display.for_file(Path("a.tif"))
    for plane in range(1, 5):
        for iteration in range(1, 11):
            clock.now += 1.0
            progress(plane, 4, 1, 1, iteration, 10)
            display._draw()
    overall = [line for line in buffer.getvalue().splitlines() if line.startswith("all: ")]
    assert overall[-1].startswith("all: 4/4 planes (100 %)")
    halfway = next(line for line in overall if line.startswith("all: 2/4 planes"))
    assert "ETA 0:00:2" in halfway  # 20 iterations left at 1 it/s (about 20 s)


def test_what_the_pipeline_is_about_to_do_is_said():
    planned = describe_event("planned", {
        "planes": 2, "format": "ome-tiff", "device": "cpu",
        "images": [{"index": 0, "channels": [
            {"index": 0, "name": "DAPI", "microscope": "widefield", "specimen": "nucleus",
             "group": "widefield/nucleus", "level": "microscope+specimen",
             "params": {"depth": 8, "width": "asc", "skip": 4, "iterations": 300}},
            {"index": 1, "name": None, "microscope": "brightfield", "specimen": "unknown",
             "group": None, "level": "copy", "params": None}]}]}, "a.tif")
    assert "2 plane(s), ome-tiff, on cpu" in planned
    assert "group widefield/nucleus" in planned and "depth 8, width asc, skip 4, 300" in planned
    assert "copied unchanged" in planned
    fitting = describe_event("fitting", {"planes": [1, 2, 3, 5], "of": 6, "group": "widefield",
                                         "level": "microscope", "device": "cuda:0",
                                         "params": {"depth": 8, "width": "32", "skip": 4,
                                                    "iterations": 400}}, "a.tif")
    assert fitting == ("a.tif: building the network for group widefield (depth 8, width 32, "
                       "skip 4) and fitting planes 1-3, 5 of 6: 400 iterations on cuda:0")


# --------------------------------------------------------------------------- the daemon side

def test_status_eta_comes_from_the_rate_not_from_elapsed_time(tmp_path):
    """A job that spent 1000 s starting up and is 10 % through at 1 %/s: about 90 s left,
    not the 9000 s an elapsed-time estimate gives."""
    queue = JobQueue(tmp_path)
    queue.register_daemon(heartbeat_seconds=5)  # a live daemon: its running job is current
    job = queue.enqueue("/data/a.tif", 1, 1, "aa")
    queue.claim("cpu@1")
    queue._connect().execute("UPDATE jobs SET started = ? WHERE id = ?", (time.time() - 1000, job.id))
    queue.progress(job.id, 1, 1, 1, 1, 30, 300, fraction=0.1, rate=0.01)
    current = collect_status(queue)["current"][0]
    assert current["eta_seconds"] == pytest.approx(90, abs=2)
    assert current["elapsed_seconds"] >= 1000
    assert current["iterations_per_second"] == pytest.approx(3.0)
    shown = io.StringIO()
    render_status(collect_status(queue), Console(file=shown, width=300))
    assert re.search(r"now: #1 /data/a.tif - plane 1/1, iteration 30/300 \(1[67] min elapsed, "
                     r"3\.00 it/s, ETA (8\d s|9\d s|2 min)\) on cpu@1", shown.getvalue()), shown.getvalue()
    before_rate = queue.get(job.id)
    queue.progress(job.id, 1, 1, 1, 1, 1, 300, fraction=0.003, rate=None)  # first report
    assert collect_status(queue)["current"][0]["eta_seconds"] is None
    assert before_rate.rate == 0.01


def test_queue_eta_is_waiting_planes_times_seconds_per_plane(tmp_path):
    queue = JobQueue(tmp_path)
    for number in range(3):  # finished jobs: 4 planes in 40 s each -> 10 s/plane
        job = queue.enqueue(f"/data/done{number}.tif", 1, 1, f"d{number}")
        queue.claim("cpu@1")
        queue.finish(job.id, f"/data/done{number}.out", None, 40.0, 4)
    waiting = [queue.enqueue(f"/data/w{number}.tif", 1, 1, f"w{number}") for number in range(5)]
    status = collect_status(queue)
    assert status["throughput"]["planes_per_job"] == 4.0
    backlog = status["queue_eta"]
    assert backlog["jobs"] == 5 and backlog["planes"] == 20
    assert backlog["eta_seconds"] == pytest.approx(200.0)
    # two workers: half the time; a running job adds what it has left
    assert queue_eta(queue.jobs(["queued"]), [{"eta_seconds": 30.0}], status["throughput"],
                     parallel=2)["eta_seconds"] == pytest.approx(115.0)
    buffer = io.StringIO()
    render_status(status, Console(file=buffer, width=200))
    assert "queue: 5 job(s), about 20 plane(s); empty in about 3 min" in buffer.getvalue()
    assert waiting


def test_queue_eta_says_why_there_is_none_yet(tmp_path):
    queue = JobQueue(tmp_path)
    queue.enqueue("/data/a.tif", 1, 1, "aa")
    backlog = collect_status(queue)["queue_eta"]
    assert backlog["eta_seconds"] is None and "no finished jobs" in backlog["reason"]


def test_the_worker_records_a_rate_from_a_real_fit(tmp_path, monkeypatch):
    """A real pipeline run through the daemon's worker callback: each iteration's report
    gives `status` a rate and an ETA from the second write on, and the job ends at 1."""
    from autodip_watch.daemon import worker as worker_module
    from autodip_watch.daemon.lifecycle import JobOutcomes
    from autodip_watch.transfer.table import CalibrationTable

    monkeypatch.setattr(worker_module, "PROGRESS_WRITE_SECONDS", 0.0)  # every iteration
    raw = tmp_path / "cells.ome.tif"
    pixels = np.random.default_rng(0).poisson(100, (2, 32, 32)).astype(np.uint16)
    tifffile.imwrite(raw, pixels, metadata={"axes": "CYX"})
    queue = JobQueue(tmp_path / "state")
    queue.register_daemon(heartbeat_seconds=5)  # a live daemon: its running job is current
    queued = queue.enqueue(str(raw), raw.stat().st_size, raw.stat().st_mtime_ns, "aa")
    config = Config(devices=("cpu",))
    outcomes = JobOutcomes(queue, config.retry)
    worker = worker_module.Worker(config, queue, "auto", CalibrationTable.load(),
                                  threading.Event(), threading.Event(), outcomes)
    assert worker.device == "cpu" and worker.name.startswith("cpu@")  # resolved, never "auto"
    job = queue.claim(worker.name)
    assert job.id == queued.id and job.worker.startswith("cpu@")
    seen: list[dict] = []
    record = worker._progress_for(job)

    def progress(*report):
        record(*report)
        seen.append(collect_status(queue)["current"][0])

    from autodip_watch.settings.denoise import DenoiseSettings
    from autodip_watch.pipeline.denoise import denoise_file

    settings = DenoiseSettings(depth=4, width="16", iterations=6, device="cpu")
    denoise_file(raw, settings, tmp_path / "out.ome.tif", progress=progress)
    members = settings.fit_mode().members("cpu")  # the default mode fits an ensemble
    # 2 planes x members fits of 6 iterations; the stable mode's extension may take a fit
    # to 8 (and then ends it with one more report)
    assert 2 * members * 6 <= len(seen) <= 2 * members * (8 + 1)
    assert seen[0]["eta_seconds"] is None  # one report: no rate yet
    assert all(entry["eta_seconds"] is not None for entry in seen[1:])
    assert [entry["fraction"] for entry in seen] == sorted(entry["fraction"] for entry in seen)
    assert seen[-1]["fraction"] == 1.0 and seen[-1]["eta_seconds"] == 0.0
    assert queue.get(job.id).rate > 0
    # every member of the ensemble is a fit of its own, counted in status as in denoise
    assert {entry["tiles"] for entry in seen} == {members}
    assert {entry["tile"] for entry in seen} == set(range(1, members + 1))


# (planes, tile, tiles, iteration) as the worker reports them, then what status says
WHERE_CASES = {
    "one fit per plane": ((2, 1, 1, 30), "plane 1/2, iteration 30/300"),
    "three ensemble members": ((1, 2, 3, 30), "plane 1/1, fit 2/3, iteration 30/300"),
    "four tiles x three members": ((3, 12, 12, 299), "plane 1/3, fit 12/12, iteration 299/300"),
}


@pytest.mark.parametrize("name", list(WHERE_CASES))
def test_status_says_which_fit_of_a_plane_runs(tmp_path, name):
    (planes, tile, tiles, iteration), expected = WHERE_CASES[name]
    queue = JobQueue(tmp_path)
    queue.register_daemon(heartbeat_seconds=5)
    job = queue.enqueue("/data/a.tif", 1, 1, "aa")
    queue.claim("cpu@1")
    queue.progress(job.id, 1, planes, tile, tiles, iteration, 300, fraction=0.5, rate=0.01)
    shown = io.StringIO()
    render_status(collect_status(queue), Console(file=shown, width=300))
    assert f"now: #1 /data/a.tif - {expected} (" in shown.getvalue(), shown.getvalue()


def test_the_network_is_announced_once_per_configuration_in_a_row():
    display, buffer = plain_display(Clock())
    _, notify = display.for_file(Path("stack.tif"))
    widefield = {"group": "widefield", "level": "microscope", "device": "cpu",
                 "params": {"depth": 8, "width": "32", "skip": 4, "iterations": 400}}
    confocal = {**widefield, "group": "confocal",
                "params": {"depth": 4, "width": "asc", "skip": 4, "iterations": 1200}}
    for plane, info in [(1, widefield), (2, widefield), (3, confocal), (4, widefield)]:
        notify("fitting", {"planes": [plane], "of": 4, **info})
    announced = [line for line in buffer.getvalue().splitlines() if "building" in line]
    assert [line.split("fitting ")[1].split(":")[0] for line in announced] == [
        "plane 1 of 4", "plane 3 of 4", "plane 4 of 4"]
