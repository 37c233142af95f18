"""Sweeps of leftover temporary outputs never remove a file another process is writing.

A job that starts, a `denoise` stopped by Ctrl-C and a daemon recovering from a crash all
remove the `.<output>.*.tmp` files a dead writer left. A writer that is alive (a
`denoise` by hand beside the daemon, a second daemon on the same folder) holds its
temporary file's lock and keeps it: before, the daemon deleted such a file at the start
of its own job, and the other writer's fit ended in ENOENT after minutes of work.
Real processes, real files, real locks.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from autodip_watch.daemon.queue import JobQueue
from autodip_watch.io.atomic import AtomicFile, remove_temporary_outputs, temporary_outputs
from helpers.children import spawn
from helpers.daemon import (ENDLESS_FIT, TINY_FIT, DaemonProcess, Raw, child_env, output_of,
                            wait_for, write_config)

HOLDER = """
import sys
from autodip_watch.io.atomic import AtomicFile
target = AtomicFile(sys.argv[1])
print(target.temp, flush=True)
command = sys.stdin.readline().strip()
if command == "publish":
    with open(target.temp, "wb") as handle:
        handle.write(b"written while a sweep ran")
    target.publish()
print("done", flush=True)
"""


def holder(out: Path) -> tuple[subprocess.Popen, Path]:
    """Another process with an open AtomicFile for ``out``; returns it and its temp path."""
    process = spawn([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, text=True, env=child_env())
    return process, Path(process.stdout.readline().strip())


@pytest.mark.parametrize("writer, removed", [
    ("another process, writing", False),
    ("another process, killed", True),
    ("no writer (a leftover file)", True),
    ("this process, writing", True),
], ids=["alive-elsewhere", "killed", "leftover", "own"])
def test_a_sweep_removes_only_what_no_live_writer_holds(tmp_path, writer, removed):
    out = tmp_path / "cells.autodip.ome.tif"
    process = None
    if writer.startswith("another process"):
        process, temp = holder(out)
        if writer.endswith("killed"):
            process.kill()
            process.wait(30)
    elif writer.startswith("no writer"):
        temp = tmp_path / ".cells.autodip.ome.tif.0badc0de.tmp"
        temp.write_bytes(b"left by a writer that died")
    else:
        own = AtomicFile(out)
        temp = own.temp
    assert temporary_outputs(out) == [temp]
    assert remove_temporary_outputs(out) == ([temp] if removed else [])
    assert temp.exists() is not removed
    if writer == "another process, writing":  # the writer finishes as if nothing happened
        process.stdin.write("publish\n")
        process.stdin.flush()
        assert process.stdout.readline().strip() == "done"
        assert process.wait(30) == 0
        assert out.read_bytes() == b"written while a sweep ran"
        assert temporary_outputs(out) == []
    if writer == "this process, writing":
        own.discard()  # its own sweep already removed it: no error


def _denoise(raw: Path, iterations: int) -> subprocess.Popen:
    return spawn([sys.executable, "-m", "autodip_watch.cli", "denoise", str(raw), "--device",
                  "cpu", "--depth", "4", "--width", "16", "--members", "1", "--iterations",
                  str(iterations), "--quiet"], stdout=subprocess.PIPE,
                 stderr=subprocess.STDOUT, env=child_env())


def _holds_temporary(process: subprocess.Popen, output: Path) -> bool:
    """Whether ``process`` has one of ``output``'s temporary files open."""
    import psutil

    try:
        open_now = {Path(item.path) for item in psutil.Process(process.pid).open_files()}
    except psutil.NoSuchProcess:
        return False
    return any(path in open_now for path in temporary_outputs(output))


def _done(state: Path) -> bool:
    return [job.state for job in JobQueue(state).jobs()] == ["done"]


@pytest.mark.slow
@pytest.mark.parametrize("holder_kind", ["denoise", "daemon"])
def test_the_daemon_and_denoise_by_hand_never_remove_each_others_temporary_file(
        tmp_path, holder_kind):
    """A person denoises a file by hand while the daemon takes the same file, or the
    reverse: the sweep of the one (a job's start; Ctrl-C of `denoise`) leaves the other's
    live temporary output alone; each removes its own when stopped."""
    folder, state = tmp_path / "incoming", tmp_path / "state"
    raw_files = Raw()
    raw = raw_files.write(folder / "cells.ome.tif")
    fit = TINY_FIT if holder_kind == "denoise" else ENDLESS_FIT + "members = 1\n"
    config = write_config(tmp_path / "config.toml", state,
                          f'[[watch]]\npath = "{folder}"\nsettle_seconds = 0.5\n', fit)
    daemon = by_hand = None
    try:
        if holder_kind == "denoise":
            by_hand = _denoise(raw, 1_000_000)
            held = wait_for(lambda: temporary_outputs(output_of(raw)), 180,
                            "the temporary output of denoise")
            daemon = DaemonProcess(config, tmp_path / "daemon.log")
            wait_for(lambda: state.exists() and (state / "queue.sqlite3").exists()
                     and _done(state), 180, "the daemon's job done", daemon)
            assert by_hand.poll() is None
            assert all(path.exists() for path in held), daemon.log_tail()
            by_hand.send_signal(signal.SIGTERM)
            assert by_hand.wait(60) == 128 + signal.SIGTERM
            assert temporary_outputs(output_of(raw)) == []  # its own: removed
            assert output_of(raw).exists()  # the daemon's output stays
        else:
            daemon = DaemonProcess(config, tmp_path / "daemon.log")
            held = wait_for(lambda: temporary_outputs(output_of(raw)), 180,
                            "the daemon's temporary output", daemon)
            by_hand = _denoise(raw, 1_000_000)
            # the signal must come once denoise holds its own temporary file (its
            # handlers are set by then), not when the count of files says two
            wait_for(lambda: _holds_temporary(by_hand, output_of(raw)), 180,
                     "the temporary output of denoise")
            assert len(temporary_outputs(output_of(raw))) == 2
            by_hand.send_signal(signal.SIGINT)
            assert by_hand.wait(60) == 128 + signal.SIGINT
            assert temporary_outputs(output_of(raw)) == held  # the daemon's is left
            code, _ = daemon.stop()
            assert code == 0
            assert temporary_outputs(output_of(raw)) == []
        raw_files.check_unchanged()
    finally:
        for process in (by_hand, daemon.process if daemon else None):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(30)
