"""A raw file rewritten or deleted while its job runs: the job is skipped (a superseded
version), never a failed attempt with a retry and a traceback; the new version is denoised
and its output is made from the file as it is now. The daemon as a real subprocess."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from pathlib import Path

import pytest

from autodip_watch.daemon.queue import JobQueue, QueueError
from autodip_watch.provenance import read_provenance
from helpers.daemon import ENDLESS_FIT, DaemonProcess, Raw, output_of, wait_for, write_config

pytestmark = pytest.mark.slow

#: Long enough to change the file while the fit runs, short enough for the suite.
FIT = "[dip]\ndepth = 4\nwidth = 16\niterations = 600\nmembers = 1\n"


def rewrite_in_place(path: Path, scratch: Path) -> None:
    """The acquisition software saves the file again, same name, other pixels."""
    Raw().write(scratch, seed=99)
    with open(path, "r+b") as handle:  # same inode, as an in-place save
        handle.truncate(0)
        handle.write(scratch.read_bytes())


def replace_by_rename(path: Path, scratch: Path) -> None:
    """A transfer tool writes a new version beside it and renames it over the old."""
    Raw().write(scratch, seed=98)
    os.replace(scratch, path)


def delete(path: Path, scratch: Path) -> None:
    path.unlink()


CHANGES = {"rewritten in place": rewrite_in_place, "replaced by rename": replace_by_rename,
           "deleted": delete}


def jobs_now(state: Path) -> list:
    try:  # the daemon may still be creating its database
        return JobQueue(state, create=False).jobs()
    except (QueueError, sqlite3.Error):
        return []


def test_a_file_changed_while_its_job_runs_is_skipped_not_failed(tmp_path):
    folder, state = tmp_path / "incoming", tmp_path / "state"

    config = write_config(tmp_path / "config.toml", state,
                          f'[[watch]]\npath = "{folder}"\nsettle_seconds = 0.5\n', FIT)
    names = {kind: folder / f"{kind.replace(' ', '-')}.ome.tif" for kind in CHANGES}
    folder.mkdir()
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        for seed, (kind, path) in enumerate(names.items()):  # one at a time: the order is ours
            Raw().write(path, seed=seed)

            def running():
                jobs = [job for job in jobs_now(state) if job.path == str(path)]
                return jobs and jobs[0].state == "running" and (jobs[0].iteration or 0) >= 1
            wait_for(running, 180, f"the job of {path.name} fitting", daemon)
            CHANGES[kind](path, tmp_path / f"{path.name}.new")
        survivors = [path for kind, path in names.items() if kind != "deleted"]

        def settled():
            jobs = jobs_now(state)
            return jobs and all(
                [job.state for job in jobs if job.path == str(path)] == ["skipped", "done"]
                for path in survivors) and \
                [job.state for job in jobs if job.path == str(names["deleted"])] == ["skipped"]
        wait_for(settled, 300, "the old versions skipped, the new ones done", daemon)
        for job in JobQueue(state, create=False).jobs():
            assert job.attempts <= 1 and job.state in ("skipped", "done"), job
        events = [event for event in daemon.events() if event.get("event", "").startswith("job.")]
        assert not [event for event in events if event["event"] in ("job.failed",
                                                                     "job.quarantined")]
        for path in survivors:  # each output is made from the file as it is now
            entries = read_provenance(output_of(path))[0]["entries"]
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            assert digest in entries.values(), (path, entries)
        assert not output_of(names["deleted"]).exists()
        assert not list(folder.glob(".*.tmp"))
    finally:
        daemon.kill()


def test_the_daemon_drops_a_running_job_whose_raw_file_was_replaced(tmp_path):
    """A facility re-exports a file while the daemon fits it: the running job stops and
    is skipped, saying why, and the new version is denoised (before: the old version ran
    to the end, was thrown away, and the new one waited behind it)."""
    folder, state = tmp_path / "incoming", tmp_path / "state"
    raw = Raw().write(folder / "cells.ome.tif", seed=0)
    config = write_config(tmp_path / "config.toml", state,
                          f'[[watch]]\npath = "{folder}"\nsettle_seconds = 0.5\n',
                          ENDLESS_FIT + "members = 1\n")
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        wait_for(lambda: list(folder.glob(".*.tmp")), 180, "the first job fitting",
                 daemon)
        replaced = time.monotonic()
        replace_by_rename(raw, tmp_path / "cells.new.ome.tif")
        first = wait_for(lambda: next((job for job in jobs_now(state)
                                       if job.state == "skipped"), None), 120,
                         "the running job skipped", daemon)
        assert time.monotonic() - replaced < 60, daemon.log_tail()
        assert "changed while it was being denoised" in (first.error or ""), first
        second = wait_for(lambda: next((job for job in jobs_now(state)
                                        if job.id != first.id and job.state == "running"),
                                       None), 120, "the new version running", daemon)
        assert second.sha256 == hashlib.sha256(raw.read_bytes()).hexdigest()
        assert any(event.get("event") == "job.skipped" and event.get("during_run")
                   for event in daemon.events())
    finally:
        code, _ = daemon.stop()
    assert code == 0
    assert list(folder.glob(".*.tmp")) == []
