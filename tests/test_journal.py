"""Logs journald can filter: the daemon, run for real under a journald stand-in, and its
records read the way journald reads them.

systemd tells a service that stderr goes to the journal with ``JOURNAL_STREAM=dev:inode``
(systemd.exec(5)). Here the daemon's stderr is a file whose device and inode the test
puts in ``JOURNAL_STREAM``; journald's native socket is a datagram socket the test binds
(``AUTODIP_WATCH_JOURNAL_SOCKET``), parsed with the native protocol's rules; without a
socket the records are ``<N>``-prefixed stderr lines (sd-daemon(3)), parsed as journald
parses a stream. The daemon also writes previews (``[output] preview = true``).
"""

from __future__ import annotations

import array
import io
import json
import os
import re
import socket
import sqlite3
import struct
import threading
from pathlib import Path

import pytest

from autodip_watch.daemon.log import JournalSink, configure, field_name, get_logger, readable
from autodip_watch.daemon.queue import JobQueue, QueueError
from helpers.daemon import TINY_FIT, DaemonProcess, Raw, output_of, wait_for, write_config


# --------------------------------------------------------------------------- journald's side

def parse_native(data: bytes) -> dict[str, str]:
    """One entry of journald's native protocol: ``KEY=value\\n``, or for values with a
    newline ``KEY\\n`` + 64-bit little-endian length + value + ``\\n``."""
    fields: dict[str, str] = {}
    position = 0
    while position < len(data):
        end = data.index(b"\n", position)
        line = data[position:end]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value.decode()
            position = end + 1
        else:
            (size,) = struct.unpack("<Q", data[end + 1:end + 9])
            fields[line.decode()] = data[end + 9:end + 9 + size].decode()
            position = end + 9 + size + 1
    return fields


class JournalSocket:
    """A bound datagram socket standing in for /run/systemd/journal/socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(path))
        self.socket.settimeout(0.2)
        self.entries: list[dict[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data, ancillary, _, _ = self.socket.recvmsg(1 << 20, socket.CMSG_SPACE(4))
            except TimeoutError:
                continue
            except OSError:
                return
            for level, kind, payload in ancillary:  # a large entry comes as a memfd
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    descriptor = array.array("i", payload[:4])[0]
                    with os.fdopen(descriptor, "rb") as handle:
                        handle.seek(0)
                        data = handle.read()
            self.entries.append(parse_native(data))

    def find(self, **fields) -> list[dict[str, str]]:
        return [entry for entry in list(self.entries)
                if all(entry.get(key) == value for key, value in fields.items())]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.socket.close()


def parse_stream(text: str) -> list[tuple[int, str]]:
    """A stream as journald files it: each line's ``<N>`` prefix is its priority."""
    records = []
    for line in text.splitlines():
        match = re.match(r"<([0-7])>(.*)", line)
        records.append((int(match.group(1)), match.group(2)) if match else (6, line))
    return records


# --------------------------------------------------------------------------- the sink alone

@pytest.mark.parametrize("key, name", [
    ("job_id", "JOB_ID"), ("path", "PATH"), ("max_attempts", "MAX_ATTEMPTS"),
    ("_private", "PRIVATE"), ("3d", "F_3D"), ("a.b-c", "A_B_C"), ("x" * 80, "X" * 64)])
def test_field_names_are_ones_journald_accepts(key, name):
    assert field_name(key) == name
    assert re.fullmatch(r"[A-Z][A-Z0-9_]{0,63}", field_name(key))


def test_a_record_becomes_an_entry_with_priority_and_fields(tmp_path):
    sink = JournalSink(io.StringIO(), socket_path=str(tmp_path / "absent"))
    entry = dict(sink.fields({"event": "job.failed", "level": "warning", "job_id": 7,
                              "path": "/data/a b.tif", "attempt": 1, "planes": [1, 2],
                              "healthy": False, "note": None,
                              "timestamp": "2026-01-01T00:00:00Z"}))
    assert entry["PRIORITY"] == 4 and entry["EVENT"] == "job.failed"
    assert entry["JOB_ID"] == 7 and entry["PATH"] == "/data/a b.tif"
    assert entry["PLANES"] == "[1, 2]" and entry["HEALTHY"] == "false"
    assert "NOTE" not in entry and "TIMESTAMP" not in entry and "LEVEL" not in entry
    assert entry["MESSAGE"] == 'job.failed job_id=7 path="/data/a b.tif" attempt=1 planes=[1, 2] healthy=false note=null'
    assert entry["SYSLOG_IDENTIFIER"] == "autodip-watch"


@pytest.fixture
def restore_logging():
    """configure() replaces the root handlers and structlog's setup: put them back."""
    import logging

    import structlog

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def test_without_the_socket_each_line_carries_its_priority(tmp_path, monkeypatch,
                                                             restore_logging):
    stream = io.StringIO()
    monkeypatch.setenv("AUTODIP_WATCH_JOURNAL_SOCKET", str(tmp_path / "absent"))
    assert configure("debug", log_format="journal", stream=stream) == "journal-prefix"
    log = get_logger("test")
    log.debug("a.debug")
    log.info("a.info", job_id=1)
    log.warning("a.warning")
    log.error("a.error", error="two\nlines")
    import logging
    logging.getLogger("watchdog").error("from a library")
    records = parse_stream(stream.getvalue())
    assert [priority for priority, _ in records] == [7, 6, 4, 3, 3]
    assert records[1][1] == "a.info job_id=1"
    assert records[3][1] == 'a.error error="two\\nlines"'  # one record, one line
    assert records[4][1] == "from a library"


def test_readable_lines_keep_exceptions():
    text = readable({"event": "worker.error", "job_id": 3, "exception": "Traceback\n  boom"})
    assert text.splitlines() == ["worker.error job_id=3", "Traceback", "  boom"]


# --------------------------------------------------------------------------- the daemon

class JournalSite:
    def __init__(self, root: Path, native: bool) -> None:
        self.root = root
        self.folder = root / "in"
        self.folder.mkdir()
        self.state = root / "state"
        self.config = write_config(
            root / "config.toml", self.state,
            f'[[watch]]\npath = "{self.folder}"\nsettle_seconds = 0.5\n'
            f'corrupt_after_seconds = 1\n', TINY_FIT + "[output]\npreview = true\n")
        self.stderr = root / "daemon.stderr"
        self.stderr.touch()
        info = self.stderr.stat()
        self.journal = JournalSocket(root / "journal.sock") if native else None
        env = {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}",
               "AUTODIP_WATCH_JOURNAL_SOCKET": str(self.journal.path if native
                                                   else root / "no-journal.sock")}
        self.raw = Raw()
        self.good = self.raw.write(self.folder / "good.ome.tif", seed=1)
        self.corrupt = self.folder / "corrupt.tif"
        self.corrupt.write_bytes(b"II*\x00" + bytes(range(256)) * 4)
        # a person's own file where the output would go: never overwritten, quarantined
        self.foreign = self.raw.write(self.folder / "foreign.ome.tif", seed=2)
        self.raw.write(output_of(self.foreign), seed=3)
        self.daemon = DaemonProcess(self.config, self.stderr, env)

    @property
    def queue(self) -> JobQueue:
        return JobQueue(self.state, create=False)

    def job(self, path: Path):
        try:  # the daemon may still be creating its database
            return next((job for job in self.queue.jobs() if job.path == str(path)), None)
        except (QueueError, sqlite3.Error):
            return None

    def wait_outcomes(self) -> None:
        def settled():
            good, corrupt = self.job(self.good), self.job(self.corrupt)
            foreign = self.job(self.foreign)
            return (good is not None and good.state == "done"
                    and all(job is not None and job.state == "quarantined"
                            for job in (corrupt, foreign)))
        wait_for(settled, 120, "the good file done, the corrupt and the foreign one "
                 "quarantined", self.daemon)

    def close(self) -> None:
        self.daemon.kill()
        if self.journal is not None:
            self.journal.close()


@pytest.fixture(scope="module")
def native_site(tmp_path_factory):
    site = JournalSite(tmp_path_factory.mktemp("journal"), native=True)
    try:
        site.wait_outcomes()
        yield site
    finally:
        site.close()


@pytest.mark.slow
def test_journalctl_p_err_and_job_id_filters_work_on_the_daemons_entries(native_site):
    site = native_site
    good, corrupt = site.job(site.good), site.job(site.corrupt)
    journal = site.journal
    wait_for(lambda: journal.find(EVENT="job.preview")
             and len(journal.find(EVENT="job.quarantined")) == 2,
             60, "the job.preview and job.quarantined entries", site.daemon)
    # journalctl -p err: what needs a person, whatever the cause, and nothing routine
    errors = [entry for entry in journal.entries if int(entry["PRIORITY"]) <= 3]
    assert {entry["EVENT"] for entry in errors} == {"job.quarantined"}, errors
    assert {entry["PATH"] for entry in errors} == {str(site.corrupt), str(site.foreign)}
    quarantined = next(entry for entry in errors if entry["PATH"] == str(site.corrupt))
    assert quarantined["JOB_ID"] == str(corrupt.id) and quarantined["PATH"] == str(site.corrupt)
    assert "not a readable" in quarantined["ERROR"]
    assert quarantined["SYSLOG_IDENTIFIER"] == "autodip-watch"
    assert quarantined["MESSAGE"].startswith(f"job.quarantined job_id={corrupt.id} ")
    # journalctl JOB_ID=N: one job's whole life, in order, each at its priority
    life = journal.find(JOB_ID=str(good.id))
    assert [entry["EVENT"] for entry in life] == ["job.queued", "job.started", "job.done",
                                                 "job.preview"]
    assert {entry["PATH"] for entry in life} == {str(site.good)}
    assert all(entry["PRIORITY"] == "6" for entry in life)
    assert life[1]["DEVICE"] == "cpu"  # the resolved device, never "auto"
    ready = journal.find(EVENT="daemon.ready")[0]
    assert json.loads(ready["DEVICES"]) == ["cpu"]
    # nothing went to stderr instead (no duplicates, no "Unable to write" fallbacks)
    assert "job." not in site.stderr.read_text(errors="replace")


@pytest.mark.slow
def test_the_daemon_writes_a_preview_beside_each_output(native_site):
    site = native_site
    output = output_of(site.good)
    preview = output.with_name("good.autodip.preview.png")
    wait_for(preview.is_file, 60, "the preview", site.daemon)
    from PIL import Image

    assert Image.open(preview).format == "PNG" and Image.open(preview).size[0] > 300
    assert (preview.stat().st_mode & 0o777) == 0o666 & ~_umask_of(site.daemon.process.pid)
    # the preview is the daemon's own output: never a job of its own
    assert {job.path for job in site.queue.jobs()} == {str(site.good), str(site.corrupt),
                                                       str(site.foreign)}
    assert not list(site.folder.glob(".*.tmp"))
    site.raw.check_unchanged()


def _umask_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    return 0o022


@pytest.mark.slow
def test_without_journald_socket_the_stream_carries_priorities(tmp_path):
    site = JournalSite(tmp_path, native=False)
    try:
        site.wait_outcomes()
        corrupt, foreign = site.job(site.corrupt), site.job(site.foreign)
        wait_for(lambda: all(f"job.quarantined job_id={job.id}" in site.stderr.read_text()
                             for job in (corrupt, foreign)), 60, "the quarantine lines",
                 site.daemon)
        records = parse_stream(site.stderr.read_text(errors="replace"))
    finally:
        site.close()
    errors = [text for priority, text in records if priority <= 3]
    assert len(errors) == 2, errors
    for job in (corrupt, foreign):
        assert any(text.startswith(f"job.quarantined job_id={job.id} ")
                   and f"path={job.path}" in text for text in errors), (job, errors)
    good = site.job(site.good)
    done = [(priority, text) for priority, text in records
            if text.startswith(f"job.done job_id={good.id} ")]
    assert done and done[0][0] == 6
    assert not any(text.startswith("{") for _, text in records)  # no JSON lines here
