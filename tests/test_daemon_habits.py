"""The daemon on real acquisition habits (issue 12), as a real subprocess on real folders.

One daemon serves the main tests (module fixture, tests in file order); it is started
together with slow time-lapse writers (one page every 6 s), whose files the last test
checks, so their wait overlaps the other tests. Tiny fits throughout.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import tifffile

from helpers.acquisition import fill, remount, set_xml, tiny_filesystem, write_pages, write_set_member
from autodip_watch.provenance import read_provenance
from autodip_watch.daemon.queue import JobQueue
from helpers.daemon import TINY_FIT, DaemonProcess, Raw, cli, wait_for, write_config

pytestmark = pytest.mark.slow

#: The acceptance's time-lapse: 5 planes, one every 6 s, settle_seconds = 2.
FRAMES, FRAME_SECONDS, SETTLE = 5, 6.0, 2


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def provenance(output: Path) -> dict:
    return read_provenance(output)[0]["entries"]


class Habits:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.mixed = root / "mixed"  # exports side by side, replacements, touches
        self.native = root / "timelapse-native"
        self.polled = root / "timelapse-polled"
        self.aborted = root / "aborted"
        for folder in (self.mixed, self.native, self.polled, self.aborted):
            folder.mkdir()
        self.state = root / "state"
        watches = (f'[[watch]]\npath = "{self.mixed}"\nsettle_seconds = 0.5\n'
                   f'patterns = ["*.tif", "*.tiff", "*.png"]\n'
                   f'[[watch]]\npath = "{self.native}"\nsettle_seconds = {SETTLE}\n'
                   f'[[watch]]\npath = "{self.polled}"\nsettle_seconds = {SETTLE}\n'
                   f'polling = true\npoll_interval_seconds = 0.5\n'
                   f'[[watch]]\npath = "{self.aborted}"\nsettle_seconds = 0.5\n'
                   f'incomplete_after_seconds = 4\n')
        self.config = write_config(root / "config.toml", self.state, watches, TINY_FIT)
        self.raw = Raw()
        self.daemon: DaemonProcess | None = None
        self.writers: list[threading.Thread] = []
        self.stacks: list[Path] = []

    @property
    def queue(self) -> JobQueue:
        return JobQueue(self.state, create=False)

    def jobs_of(self, path: Path) -> list:
        return [job for job in self.queue.jobs() if job.path == str(path)]

    def status(self, exit_status: int | None = 0) -> dict:
        result = cli("status", "--json", "--config", str(self.config), check=False)
        if exit_status is not None:
            report = json.loads(result.stdout or "{}")  # the parts that decide the exit
            assert result.returncode == exit_status, (result.returncode, report.get("daemon"),
                                                      report.get("watches"), result.stderr)
        return json.loads(result.stdout)

    def start_time_lapses(self) -> None:
        """The acceptance's writers: declared OME and ImageJ stacks on both observers,
        and the case-06 writer (no count until it closes the file) on the native one."""
        plan = [(self.native / "lapse.ome.tif", "ome"), (self.native / "lapse-ij.tif", "imagej"),
                (self.native / "lapse-case06.ome.tif", "none"),
                (self.polled / "lapse.ome.tif", "ome"), (self.polled / "lapse-ij.tif", "imagej")]
        for number, (path, kind) in enumerate(plan):
            self.stacks.append(path)
            self.writers.append(threading.Thread(
                target=write_pages, args=(path, FRAMES, kind, FRAME_SECONDS),
                kwargs={"seed": 60 + number}, daemon=True))
        for writer in self.writers:
            writer.start()


@pytest.fixture(scope="module")
def habits(tmp_path_factory):
    habits = Habits(tmp_path_factory.mktemp("habits"))
    previous = os.umask(0o022)  # the acceptance: outputs 0644 under umask 022
    try:
        habits.daemon = DaemonProcess(habits.config, habits.root / "daemon.log")
    finally:
        os.umask(previous)
    try:
        habits.daemon.wait_ready()
        habits.start_time_lapses()
        yield habits
    finally:
        habits.daemon.kill()


def test_stacks_being_acquired_are_shown_as_acquiring(habits):
    """While the time-lapses are written: no job for them, and `status` lists them as
    acquiring with the planes present of those declared."""
    def acquiring():
        listed = {item["path"]: item for item in habits.status()["acquiring"]}
        return listed if {str(p) for p in habits.stacks if "case06" not in p.name} <= set(listed) \
            else None

    listed = wait_for(acquiring, 40, "the declared stacks listed as acquiring", habits.daemon)
    for path, item in listed.items():
        assert item["detail"]["planes_declared"] == FRAMES
        assert 1 <= item["detail"]["planes_present"] < FRAMES
        assert f"of {FRAMES} planes" in item["reason"]
    assert not any(habits.jobs_of(path) for path in habits.stacks)


def test_exports_side_by_side_get_one_output_each(habits):
    """Case 11's kind: x.tif, x.ome.tif and x.png (and x.ome.tiff) in one folder: four
    outputs, each made from, and recording the SHA-256 of, its own source; mode 0644
    under umask 022."""
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(11)
    sources = [habits.raw.write(habits.mixed / "x.tif", seed=1, ome=False),
               habits.raw.write(habits.mixed / "x.ome.tif", seed=2),
               habits.raw.write(habits.mixed / "x.ome.tiff", seed=3)]
    png = habits.mixed / "x.png"
    Image.fromarray(rng.poisson(20, (32, 32)).astype("uint8")).save(png)
    habits.raw.record(png)
    sources.append(png)
    wait_for(lambda: all(any(j.state == "done" for j in habits.jobs_of(p)) for p in sources),
             120, "four jobs done", habits.daemon)
    outputs = {}
    for source in sources:
        job = habits.jobs_of(source)[-1]
        output = Path(job.output)
        outputs[source.name] = output.name
        entries = provenance(output)
        assert entries["input.file"] == source.name and entries["input.path"] == str(source)
        assert entries["source.sha256"] == sha256(source)
        assert stat.S_IMODE(output.stat().st_mode) == 0o644
    assert outputs == {"x.tif": "x.tif.autodip.ome.tif", "x.ome.tif": "x.autodip.ome.tif",
                       "x.ome.tiff": "x.ome.tiff.autodip.ome.tif",
                       "x.png": "x.png.autodip.ome.tif"}
    assert not [job for job in habits.queue.jobs() if job.state in ("failed", "quarantined")]
    habits.raw.check_unchanged()


@pytest.mark.parametrize("how", ["rsync -a (renamed into place)", "cp -p (over the file)"])
def test_new_content_with_an_older_mtime_is_denoised_again(habits, how):
    raw = habits.mixed / ("x.ome.tif" if how.startswith("rsync") else "x.tif")
    old_job = [job for job in habits.jobs_of(raw) if job.state == "done"][-1]
    output = Path(old_job.output)
    archived = habits.root / f"archive-{raw.name}"  # a re-export restored from an archive
    Raw().write(archived, seed=99, ome=raw.name.endswith(".ome.tif"))
    old_time = output.stat().st_mtime_ns - 86400 * 10**9  # older than the output
    os.utime(archived, ns=(old_time, old_time))
    if how.startswith("rsync"):
        staged = raw.with_name(f".{raw.name}.rsync")
        shutil.copy2(archived, staged)
        os.replace(staged, raw)
    else:
        shutil.copy2(archived, raw)
    assert raw.stat().st_mtime_ns < output.stat().st_mtime_ns
    habits.raw.record(raw)
    wait_for(lambda: len([j for j in habits.jobs_of(raw) if j.state == "done"]) == 2, 90,
             "the new content denoised", habits.daemon)
    assert provenance(output)["source.sha256"] == sha256(raw) == sha256(archived)
    assert habits.jobs_of(raw)[-1].output == str(output)


def test_times_only_do_not_run_a_job_again(habits):
    """touch, and cp -p of identical bytes: recorded on the job, nothing is denoised."""
    raw = habits.mixed / "x.png"
    job = habits.jobs_of(raw)[-1]
    output_before = Path(job.output).stat().st_mtime_ns
    os.utime(raw)  # touch
    wait_for(lambda: any("same content" in (e["message"] or "")
                         for e in habits.queue.events(job.id)), 30, "the touch recorded",
             habits.daemon)
    copy = habits.root / "same-bytes.png"
    shutil.copy2(raw, copy)
    os.utime(copy, ns=(0, raw.stat().st_mtime_ns - 10**12))
    os.replace(copy, raw)
    wait_for(lambda: sum("same content" in (e["message"] or "")
                         for e in habits.queue.events(job.id)) == 2, 30,
             "the identical copy recorded", habits.daemon)
    time.sleep(2)
    assert [j.id for j in habits.jobs_of(raw)] == [job.id]
    assert Path(job.output).stat().st_mtime_ns == output_before


def test_a_file_at_the_output_path_that_is_not_ours_is_never_overwritten(habits):
    foreign = habits.mixed / "y.autodip.ome.tif"
    foreign.write_bytes(b"a person's own notes, named like an output")
    raw = habits.raw.write(habits.mixed / "y.ome.tif", seed=5)
    wait_for(lambda: [j.state for j in habits.jobs_of(raw)] == ["quarantined"], 60,
             "the job stopped", habits.daemon)
    error = habits.jobs_of(raw)[0].error
    assert str(foreign) in error and "not written by autodip-watch" in error
    assert f"the output of {raw}" in error  # both files named
    assert "queue retry" in error
    assert foreign.read_bytes() == b"a person's own notes, named like an output"
    problems = {item["path"]: item for item in habits.status()["problems"]}
    assert problems[str(raw)]["state"] == "quarantined"


def test_incomplete_acquisitions_end_partial_and_say_what_is_missing(habits):
    """An aborted time-lapse (3 of 5 declared planes) and an OME set whose second file
    never arrives (case 18) are taken after incomplete_after_seconds: their planes are
    denoised (missing ones written as zeros), the jobs end `partial`, and status, log
    and provenance name what is missing. When the file completes, or the member
    arrives, the new version is denoised and replaces the partial output."""
    aborted = habits.aborted / "aborted.ome.tif"
    write_pages(aborted, FRAMES, "ome", stop_after=3, seed=70)
    names = ["cells_C0.ome.tif", "cells_C1.ome.tif"]
    xml, uuids = set_xml(names)
    first = write_set_member(habits.aborted, names, 0, xml, uuids)
    for path in (aborted, first):
        habits.raw.record(path)
    wait_for(lambda: all([j.state for j in habits.jobs_of(p)] == ["partial"]
                         for p in (aborted, first)), 90, "two partial jobs", habits.daemon)
    report = habits.status()
    incomplete = {item["path"]: item for item in report["incomplete"]}
    assert incomplete[str(aborted)]["missing"]["planes_present"] == 3
    assert incomplete[str(aborted)]["missing"]["planes_declared"] == FRAMES
    assert incomplete[str(first)]["missing"]["files"] == ["cells_C1.ome.tif"]
    assert all(item["state"] == "partial" for item in incomplete.values())
    text = cli("status", "--config", str(habits.config)).stdout
    assert "cells_C1.ome.tif" in "".join(text.split())
    output = Path(habits.jobs_of(aborted)[0].output)
    entries = provenance(output)
    assert entries["input.complete"] == "false"
    assert "2 of 5 declared planes missing" in entries["input.missing"]
    with tifffile.TiffFile(output) as tif:
        assert len(tif.pages) == FRAMES
        assert not tif.pages[4].asarray().any()  # a missing plane: zeros, and said so
    set_output = Path(habits.jobs_of(first)[0].output)
    assert "cells_C1.ome.tif" in provenance(set_output)["input.missing"]
    partial_events = [e for e in habits.daemon.events() if e.get("event") == "job.partial"]
    assert {e["path"] for e in partial_events} == {str(aborted), str(first)}
    # The rest arrives.
    complete = habits.root / "complete.ome.tif"
    write_pages(complete, FRAMES, "ome", seed=70)
    os.replace(complete, aborted)
    second = write_set_member(habits.aborted, names, 1, xml, uuids)
    for path in (aborted, second):
        habits.raw.record(path)
    wait_for(lambda: all([j.state for j in habits.jobs_of(p)] == ["partial", "done"]
                         for p in (aborted, first)), 90, "the complete versions done",
             habits.daemon)
    assert provenance(output)["input.complete"] == "true"
    assert provenance(set_output)["source.files"] == "2"
    assert habits.status()["incomplete"] == []  # superseded: nothing incomplete any more


def test_a_second_daemon_is_refused_with_exit_78(habits):
    second = DaemonProcess(habits.config, habits.root / "second.log")
    code = second.process.wait(120)
    assert code == 78
    log = (habits.root / "second.log").read_text()
    assert "another daemon" in log and f"pid {habits.daemon.process.pid}" in log


def test_time_lapses_give_one_complete_output_each(habits):
    """The acceptance: a 5-plane stack written one page every 6 s with settle_seconds = 2
    gives exactly one output with 5 planes, and nothing failed or quarantined; on the
    native and the polling observer, declared by OME or ImageJ, and (native) the case-06
    writer that declares nothing until it closes the file."""
    for writer in habits.writers:
        writer.join(timeout=120)
    for path in habits.stacks:
        habits.raw.record(path)
    wait_for(lambda: all([j.state for j in habits.jobs_of(p)] == ["done"]
                         for p in habits.stacks), 120, "one done job per stack", habits.daemon)
    time.sleep(SETTLE + 1)
    for path in habits.stacks:
        jobs = habits.jobs_of(path)
        assert [job.state for job in jobs] == ["done"], (path, jobs)
        assert jobs[0].sha256 == sha256(path)
        with tifffile.TiffFile(jobs[0].output) as tif:
            assert tif.series[0].shape == (FRAMES, 32, 32)
    stacks = {str(p) for p in habits.stacks}
    trouble = [job for job in habits.queue.jobs() if job.path in stacks
               and job.state in ("failed", "quarantined", "skipped", "partial")]
    assert trouble == []
    # Stop: clean, and status says so (exit 3), with nothing left "running".
    code, _ = habits.daemon.stop()
    assert code == 0
    report = habits.status(exit_status=3)
    assert report["daemon"]["state"] == "stopped" and report["interrupted"] == []
    habits.raw.check_unchanged()


# --------------------------------------------------------------------------- the state folder

def _as_nobody() -> list[str] | None:
    """A command prefix that runs as an unprivileged user (root only), or None."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return None
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def test_status_tells_the_truth_about_the_state_folder(tmp_path):
    """A database the daemon cannot write (its disk is full) is named as such by status
    (exit 1) and logged once, not per retry; it recovers by itself when space returns.
    status works for a user who cannot write the state folder, and on a read-only one,
    without a traceback, also with --json."""
    folder = tmp_path / "in"
    folder.mkdir()
    with tiny_filesystem("3m") as disk:
        state = disk / "state"
        config = write_config(tmp_path / "config.toml", state,
                              f'[[watch]]\npath = "{folder}"\nsettle_seconds = 0.5\n', TINY_FIT)
        daemon = DaemonProcess(config, tmp_path / "daemon.log")
        try:
            daemon.wait_ready()
            Raw().write(folder / "before.ome.tif", seed=1)
            wait_for(lambda: [j.state for j in JobQueue(state, create=False).jobs()] == ["done"],
                     90, "a first job", daemon)

            def status(expected: int | None = None) -> tuple[int, dict]:
                result = cli("status", "--json", "--config", str(config), check=False)
                assert "Traceback" not in result.stderr + result.stdout
                if expected is not None:
                    assert result.returncode == expected, (result.stdout, result.stderr)
                return result.returncode, json.loads(result.stdout)

            assert status(0)[1]["daemon"]["state"] == "running"
            prefix = _as_nobody()
            if prefix is not None:  # another user: reads the database read-only
                result = subprocess.run([*prefix, sys.executable, "-m", "autodip_watch.cli",
                                         "status", "--json", "--state-dir", str(state)],
                                        capture_output=True, text=True, timeout=120,
                                        env={**os.environ, "HOME": "/"})
                assert result.returncode == 0, result.stderr
                assert json.loads(result.stdout)["daemon"]["state"] == "running"
            filler = fill(disk)
            during = Raw().write(folder / "during.ome.tif", seed=2)

            def unwritable():
                code, report = status()
                problems = " ".join(report["daemon"].get("problems") or [])
                return (code, report) if code == 1 and "not writable" in problems else None

            code, report = wait_for(unwritable, 60, "status naming the database", daemon)
            assert report["daemon"]["up"] and report["daemon"]["state"] == "unhealthy"
            assert "database or disk is full" in " ".join(report["daemon"]["problems"])
            time.sleep(5)  # ten heartbeats and twenty settler ticks in this condition
            events = [e.get("event") for e in daemon.events()]
            assert events.count("daemon.database_not_writable") == 1
            assert events.count("watcher.error") <= 2
            filler.unlink()
            wait_for(lambda: status()[0] == 0, 60, "healthy again", daemon)
            events = [e.get("event") for e in daemon.events()]
            assert events.count("daemon.database_writable") == 1
            wait_for(lambda: any(j.path == str(during) and j.state == "done"
                                 for j in JobQueue(state, create=False).jobs()), 90,
                     "the file dropped meanwhile denoised", daemon)
            code, _ = daemon.stop()
            assert code == 0
        finally:
            daemon.kill()
        # A read-only state folder after a clean stop: SQLite cannot even create its
        # shared-memory file there; status reads the database as it is.
        gc.collect()  # this test's own SQLite connections, or the file system stays busy
        remount(disk, "ro")
        for arguments in (["--json"], []):
            result = cli("status", *arguments, "--config", str(config), check=False)
            assert result.returncode == 3, (result.stdout, result.stderr)
            assert "Traceback" not in result.stdout + result.stderr
        report = json.loads(cli("status", "--json", "--config", str(config), check=False).stdout)
        assert report["daemon"]["state"] == "stopped"
        assert report["database_access"] in ("read-only", "snapshot")
        assert report["counts"]["done"] == 2
        assert report["recent"][0]["finished"].endswith("Z")  # ISO 8601 UTC, like the logs
        remount(disk, "rw")
