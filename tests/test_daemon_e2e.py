"""End to end: the daemon as a real subprocess on real folders, tiny images, tiny fits.

One daemon serves the tests of the main flow (module fixture, tests in file order);
the interruption tests start their own. Each daemon start costs a torch import, so
they are few.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import tifffile

from autodip_watch.daemon.queue import JobQueue
from helpers.daemon import (ENDLESS_FIT, ONE_FIT, TINY_FIT, DaemonProcess, Raw, cli,
                            free_port, job_states, output_of, sha256, temp_files, wait_for,
                            write_config)

pytestmark = pytest.mark.slow

# --------------------------------------------------------------------------- the main daemon

class Setup:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.native = root / "native"
        self.polled = root / "polled"
        self.slow = root / "slow"
        self.mirrored = root / "mirrored"  # outputs under an output root, not beside
        self.denoised = root / "denoised"
        for folder in (self.native, self.polled, self.slow, self.mirrored):
            folder.mkdir()
        self.state = root / "state"
        self.port = free_port()
        watches = (f'[[watch]]\npath = "{self.native}"\nsettle_seconds = 0.5\ncorrupt_after_seconds = 2\n'
                   f'[[watch]]\npath = "{self.polled}"\npolling = true\npoll_interval_seconds = 0.3\n'
                   f'settle_seconds = 0.5\n'
                   f'[[watch]]\npath = "{self.slow}"\nsettle_seconds = 2\ncorrupt_after_seconds = 60\n'
                   f'[[watch]]\npath = "{self.mirrored}"\nsettle_seconds = 0.5\n'
                   f'output_root = "{self.denoised}"\n')
        self.config = write_config(root / "config.toml", self.state, watches,
                                   TINY_FIT + f"[metrics]\nenabled = true\nport = {self.port}\n")
        self.raw = Raw()
        # systemd's side of sd_notify: a datagram socket the daemon reports to.
        self.notify_path = root / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.settimeout(0.2)
        self.notifications: list[str] = []
        # systemd reads its socket all the time: a socket left unread fills after a few
        # datagrams (net.unix.max_dgram_qlen) and the daemon's sd_notify call then blocks
        # its heartbeat, which a loaded machine makes visible as a "hung" daemon.
        self._reading = threading.Thread(target=self._read_notify, daemon=True)
        self._reading.start()
        self.daemon: DaemonProcess | None = None
        self._queue: JobQueue | None = None

    @property
    def queue(self) -> JobQueue:
        if self._queue is None:
            self._queue = JobQueue(self.state, create=False)
        return self._queue

    def wait_done(self, paths: list[Path], timeout: float = 120) -> None:
        wanted = {str(p) for p in paths}

        def finished():
            states = job_states(self.queue)
            return all(states.get(p) == "done" for p in wanted)

        wait_for(finished, timeout, f"{len(wanted)} job(s) done", self.daemon)

    def status(self, exit_status: int = 0, timeout: float = 60) -> dict:
        """``status --json``, asked again until it exits with ``exit_status``: on a loaded
        machine a heartbeat can be late for a moment, and status then says "hung" (1)."""
        results = []

        def asked() -> bool:
            results.append(cli("status", "--json", "--config", str(self.config), check=False))
            return results[-1].returncode == exit_status

        try:
            wait_for(asked, timeout, f"status to exit {exit_status}", self.daemon)
        except AssertionError:
            last = results[-1]
            raise AssertionError((last.returncode, last.stdout, last.stderr)) from None
        return json.loads(results[-1].stdout)

    def _read_notify(self) -> None:
        while True:
            try:
                message = self.notify.recv(4096).decode()
            except socket.timeout:
                continue
            except OSError:  # closed at the end of the module
                return
            self.notifications.append(message)

    def read_notifications(self) -> list[str]:
        return list(self.notifications)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    setup = Setup(tmp_path_factory.mktemp("daemon"))
    setup.daemon = DaemonProcess(setup.config, setup.root / "daemon.log",
                                 {"NOTIFY_SOCKET": str(setup.notify_path),
                                  "WATCHDOG_USEC": "2000000"})
    try:
        setup.daemon.wait_ready()
        yield setup
    finally:
        setup.daemon.kill()
        setup.notify.close()


def test_dropped_files_are_denoised_with_provenance(setup):
    from autodip_watch.provenance import PROVENANCE_NAMESPACE

    raws = [setup.raw.write(setup.native / "a.ome.tif", seed=1),
            setup.raw.write(setup.native / "day 1" / "b.ome.tif", (2, 32, 32), seed=2, axes="CYX"),
            setup.raw.write(setup.native / "c.tif", seed=3, ome=False)]
    setup.wait_done(raws)
    for raw in raws:
        output = output_of(raw)
        assert output.is_file()
        with tifffile.TiffFile(raw) as source, tifffile.TiffFile(output) as result:
            assert result.series[0].shape == source.series[0].shape
            assert result.series[0].dtype == source.series[0].dtype
            assert PROVENANCE_NAMESPACE in (result.ome_metadata or "")
    status = setup.status()
    daemon = status["daemon"]
    assert daemon["up"] and daemon["pid"] == setup.daemon.process.pid
    assert daemon["heartbeat_age_seconds"] < 10 and daemon["devices"] == ["cpu"]
    assert daemon["version"]
    assert [(w["path"], w["observer"], w["available"]) for w in status["watches"]] == [
        (str(setup.native), "native", True), (str(setup.polled), "polling", True),
        (str(setup.slow), "native", True), (str(setup.mirrored), "native", True)]
    assert status["counts"]["done"] >= 3
    recent = {job["path"]: job for job in status["recent"]}
    for raw in raws:
        assert recent[str(raw)]["output"] == str(output_of(raw))
        assert recent[str(raw)]["seconds"] > 0
    assert status["throughput"]["images_per_hour"] > 0
    assert status["throughput"]["seconds_per_plane"] > 0
    # The human view says the same.
    text = cli("status", "--config", str(setup.config)).stdout
    assert "daemon up" in text and str(setup.polled) in text and "polling" in text
    setup.raw.check_unchanged()


def test_polling_folder(setup):
    raws = [setup.raw.write(setup.polled / "p1.ome.tif", seed=11),
            setup.raw.write(setup.polled / "deeper" / "p2.tif", seed=12, ome=False)]
    setup.wait_done(raws)
    assert all(output_of(raw).is_file() for raw in raws)
    setup.raw.check_unchanged()


def test_corrupt_file_is_quarantined_while_others_go_on(setup):
    corrupt = setup.native / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    setup.raw.record(corrupt)
    good = [setup.raw.write(setup.native / f"after-corrupt-{n}.ome.tif", seed=20 + n)
            for n in range(2)]
    setup.wait_done(good)
    wait_for(lambda: job_states(setup.queue).get(str(corrupt)) == "quarantined", 60,
             "quarantine", setup.daemon)
    problems = {job["path"]: job for job in setup.status()["problems"]}
    assert problems[str(corrupt)]["state"] == "quarantined"
    assert "not a readable" in problems[str(corrupt)]["error"]
    assert not output_of(corrupt).exists()
    listed = json.loads(cli("queue", "list", "--state", "quarantined", "--json",
                            "--config", str(setup.config)).stdout)
    assert [job["path"] for job in listed] == [str(corrupt)]
    setup.raw.check_unchanged()


def test_burst_of_200_files_and_a_slow_writer(setup):
    # The slow writer: a valid TIFF trickling in over 15 s. Taken only once it has
    # settled (2 s in that folder), never while growing.
    source = setup.root / "source-slow.ome.tif"
    Raw().write(source, (96, 96), seed=99)
    content = source.read_bytes()
    slow = setup.slow / "slow.ome.tif"
    finished_writing = {}

    def trickle():
        chunks = 60
        step = -(-len(content) // chunks)
        with open(slow, "wb") as handle:
            for start in range(0, len(content), step):
                handle.write(content[start:start + step])
                handle.flush()
                time.sleep(15 / chunks)
        finished_writing["at"] = time.time()

    writer = threading.Thread(target=trickle)
    writer.start()
    burst = setup.native / "burst"
    burst.mkdir()
    raws = [setup.raw.write(burst / f"img{n:03d}.ome.tif", seed=1000 + n) for n in range(200)]
    writer.join()
    setup.raw.record(slow)
    setup.wait_done(raws + [slow], timeout=300)
    jobs = setup.queue.jobs()
    slow_jobs = [job for job in jobs if job.path == str(slow)]
    assert len(slow_jobs) == 1, "the slow file was taken more than once (so: early)"
    assert slow_jobs[0].size == len(content)
    assert slow_jobs[0].created >= finished_writing["at"]
    burst_jobs = [job for job in jobs if job.path.startswith(str(burst) + os.sep)]
    assert len(burst_jobs) == 200 and len({job.path for job in burst_jobs}) == 200
    names = sorted(p.name for p in burst.iterdir())
    assert names == sorted([raw.name for raw in raws] + [output_of(raw).name for raw in raws])
    assert output_of(slow).is_file()
    setup.raw.check_unchanged()


def test_output_root_mirrors_the_watched_tree(setup):
    raw = setup.raw.write(setup.mirrored / "run 3" / "m.ome.tif", seed=7)
    setup.wait_done([raw])
    output = setup.denoised / "run 3" / "m.autodip.ome.tif"
    assert output.is_file()
    assert sorted(p.name for p in setup.mirrored.rglob("*")) == ["m.ome.tif", "run 3"]
    assert setup.queue.jobs()[-1].output == str(output)
    setup.raw.check_unchanged()


def test_metrics_endpoint(setup):
    text = urllib.request.urlopen(f"http://127.0.0.1:{setup.port}/metrics", timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    assert values["autodip_queue_depth"] == 0
    assert values["autodip_jobs_done_total"] >= 209
    assert values["autodip_jobs_failed_total"] == 0  # the corrupt file never ran
    assert values['autodip_jobs{state="quarantined"}'] == 1
    assert values["autodip_plane_seconds_count"] >= 210


def test_queue_retry_list_and_forget_from_the_cli(setup):
    config = ["--config", str(setup.config)]
    corrupt = json.loads(cli("queue", "list", "--state", "quarantined", "--json", *config).stdout)[0]
    assert "queued again" in cli("queue", "retry", str(corrupt["id"]), *config).stderr
    # The worker now tries it: fails, backs off, fails again, quarantined (max_attempts = 2).
    wait_for(lambda: (setup.queue.get(corrupt["id"]).state == "quarantined"
                      and setup.queue.get(corrupt["id"]).attempts == 2), 60,
             "the retried file to be quarantined again", setup.daemon)
    history = json.loads(cli("queue", "list", "--history", str(corrupt["id"]), *config).stdout)
    states = [event["state"] for event in history["events"]]
    assert states[-5:] == ["queued", "running", "failed", "running", "quarantined"]
    assert history["error"]
    cli("queue", "forget", str(corrupt["id"]), *config)
    remaining = json.loads(cli("queue", "list", "--json", *config).stdout)
    assert corrupt["id"] not in [job["id"] for job in remaining]
    done = next(job for job in remaining if job["state"] == "done")
    report = json.loads(cli("queue", "list", "--history", str(done["id"]), *config).stdout)["report"]
    assert report["output"] == done["output"] and report["planes"]
    refused = cli("queue", "retry", str(done["id"]), *config, check=False)
    assert refused.returncode == 1 and "only partial, failed, quarantined, skipped" in refused.stderr


def test_systemd_notifications(setup):
    """READY once started, then STATUS lines and WATCHDOG pings while healthy."""
    time.sleep(1.5)  # WATCHDOG_USEC = 2 s: a ping at least every second
    messages = setup.read_notifications()
    assert messages[0].startswith("READY=1")
    assert f"MAINPID={setup.daemon.process.pid}" in messages[0]
    pings = [m for m in messages if "WATCHDOG=1" in m]
    assert len(pings) >= 3
    assert any("STATUS=" in m and "done" in m for m in pings)
    assert not any("unhealthy" in m for m in messages)


def test_sigterm_stops_cleanly(setup):
    code, seconds = setup.daemon.stop()
    assert any(m.startswith("STOPPING=1") for m in setup.read_notifications())
    assert code == 0 and seconds < 10
    stopped = [e for e in setup.daemon.events() if e.get("event") == "daemon.stopped"]
    assert stopped and stopped[-1]["clean"] is True
    status = setup.status(exit_status=3)  # works with the daemon gone; 3: not running
    assert not status["daemon"]["up"] and status["daemon"]["reason"] == "stopped cleanly"
    assert status["daemon"]["state"] == "stopped"
    assert status["counts"]["running"] == 0
    # Nothing watches any more: the observers are not shown as live.
    assert status["watches"] and all(w["running"] is False for w in status["watches"])
    text = cli("status", "--config", str(setup.config), check=False).stdout
    assert "observer, ok)" not in text and "stopped" in text
    assert temp_files(setup.root) == []
    jobs = setup.queue.jobs()
    assert len({job.path for job in jobs}) == len(jobs)  # no file queued twice
    setup.raw.check_unchanged()


# --------------------------------------------------------------------------- interruptions

def test_sigterm_and_kill_during_a_job(tmp_path):
    """SIGTERM mid-fit requeues the job; kill -9 mid-fit, then restart: done exactly once."""
    folder = tmp_path / "in"
    folder.mkdir()
    state = tmp_path / "state"
    watches = f'[[watch]]\npath = "{folder}"\nsettle_seconds = 0.5\n'
    endless = write_config(tmp_path / "endless.toml", state, watches, ENDLESS_FIT)
    tiny = write_config(tmp_path / "tiny.toml", state, watches, TINY_FIT)
    raw = Raw()
    image = raw.write(folder / "cell.ome.tif", (64, 64), seed=5)
    log = tmp_path / "daemon.log"

    def running_job(daemon):
        def check():
            try:  # the database file can exist a moment before its tables do
                jobs = JobQueue(state, create=False).jobs(["running"]) if (state / "queue.sqlite3").exists() else []
            except sqlite3.OperationalError:
                return None
            return jobs[0] if jobs and jobs[0].iteration else None
        return wait_for(check, 90, "a running job with progress", daemon)

    # 1. SIGTERM while fitting: bounded, clean, the job is back in the queue unharmed.
    daemon = DaemonProcess(endless, log)
    try:
        job = running_job(daemon)
        status = json.loads(cli("status", "--json", "--config", str(endless)).stdout)
        current = status["current"][0]
        assert status["daemon"]["state"] == "running" and not status["interrupted"]
        assert current["path"] == str(image) and current["iteration"] >= 1
        # the default stable mode counts to the latest stop its extension allows
        assert current["iterations"] == 1250000 and current["planes"] == 1
        code, seconds = daemon.stop()
    finally:
        daemon.kill()
    assert code == 0 and seconds < 10
    requeued = JobQueue(state, create=False).get(job.id)
    assert requeued.state == "queued" and requeued.attempts == 0
    assert not output_of(image).exists() and temp_files(folder) == []

    # 2. kill -9 while fitting: nothing visible but the raw file (a temp file at most).
    daemon = DaemonProcess(endless, log)
    try:
        assert running_job(daemon).id == job.id
        daemon.process.kill()
        daemon.process.wait(30)
    finally:
        daemon.kill()
    assert not output_of(image).exists()
    assert JobQueue(state, create=False).get(job.id).state == "running"  # as the crash left it
    # status tells the truth: the daemon crashed (exit 3), the job is interrupted, not "now".
    after_kill = cli("status", "--json", "--config", str(endless), check=False)
    assert after_kill.returncode == 3, after_kill.stdout
    report = json.loads(after_kill.stdout)
    assert report["daemon"]["state"] == "crashed" and report["current"] == []
    assert [item["id"] for item in report["interrupted"]] == [job.id]
    text = cli("status", "--config", str(endless), check=False).stdout
    assert "now:" not in text and "interrupted" in text
    # What a kill during the write phase leaves: the writer's hidden temporary file.
    leftover = folder / f".{output_of(image).name}.k1ll3d.tmp"
    leftover.write_bytes(b"half an output")

    # 3. Restart: the job is recovered and finished exactly once; temp files are gone.
    daemon = DaemonProcess(tiny, log)
    try:
        wait_for(lambda: JobQueue(state, create=False).get(job.id).state == "done", 90,
                 "the recovered job", daemon)
        time.sleep(2)  # give a duplicate, if there were one, time to appear
        code, _ = daemon.stop()
    finally:
        daemon.kill()
    assert code == 0
    queue = JobQueue(state, create=False)
    assert [(j.id, j.state) for j in queue.jobs()] == [(job.id, "done")]
    finished = [e for e in queue.events(job.id) if e["state"] == "done"]
    assert len(finished) == 1
    assert queue.get(job.id).attempts == 2  # the killed run counted, the SIGTERM one did not
    recovered = [e for e in daemon.events() if e.get("event") == "job.recovered"]
    assert [e["job_id"] for e in recovered] == [job.id]
    assert not leftover.exists()
    assert output_of(image).is_file()
    assert temp_files(folder) == []
    raw.check_unchanged()


# --------------------------------------------------------------------------- batching

def test_queued_files_of_one_group_share_batches(tmp_path):
    """Three files waiting in the queue are run together and fitted in one batch; a
    SIGTERM while jobs share a batch requeues each of them."""
    folder = tmp_path / "in"
    folder.mkdir()
    state = tmp_path / "state"
    watches = f'[[watch]]\npath = "{folder}"\nsettle_seconds = 0.5\n'
    batching = "[batching]\nmode = \"on\"\njobs_together = 3\nmax_batch = 8\nlinger_seconds = 30\n"
    raw = Raw()
    images = [raw.write(folder / f"cell{i}.ome.tif", (48, 40), seed=i) for i in range(3)]

    def enqueue(paths):
        # As a previous daemon run left them: queued, not yet started.
        queue = JobQueue(state)
        for path in paths:
            info = path.stat()
            queue.enqueue(str(path), info.st_size, info.st_mtime_ns, sha256(path), str(folder))
        queue.close()

    # 1. SIGTERM while three jobs share one endless batch: all three go back unharmed.
    enqueue(images)
    endless = write_config(tmp_path / "endless.toml", state, watches,
                           ENDLESS_FIT + ONE_FIT + batching)
    daemon = DaemonProcess(endless, tmp_path / "daemon.log")
    try:
        def all_fitting():
            jobs = JobQueue(state, create=False).jobs(["running"])
            return len(jobs) == 3 and all(job.iteration for job in jobs)
        wait_for(all_fitting, 90, "three jobs fitting together", daemon)
        code, seconds = daemon.stop()
    finally:
        daemon.kill()
    assert code == 0 and seconds < 10
    queue = JobQueue(state, create=False)
    assert sorted((job.state, job.attempts) for job in queue.jobs()) == [("queued", 0)] * 3
    assert not any(output_of(image).exists() for image in images)

    # 2. A fresh daemon runs them together to the end: one batch of three networks.
    tiny = write_config(tmp_path / "tiny.toml", state, watches, TINY_FIT + ONE_FIT + batching)
    daemon = DaemonProcess(tiny, tmp_path / "daemon.log")
    try:
        wait_for(lambda: all(j.state == "done" for j in JobQueue(state, create=False).jobs()),
                 90, "three jobs done", daemon)
        daemon.stop()
    finally:
        daemon.kill()
    from autodip_watch.provenance import read_provenance
    for image in images:
        entries = read_provenance(output_of(image))[0]["entries"]
        assert entries["settings.batching"] == "on"
        assert entries["channel.0.largest_batch"] == "3"
    started = [e for e in daemon.events() if e.get("event") == "worker.batching"]
    assert started and started[-1]["jobs_together"] == 3
    raw.check_unchanged()


def test_batching_worker_runs_files_of_one_fit_key_together(tmp_path):
    """Queued a1, b1, a2, b2 (two plane sizes): two at a time, the worker takes a1 with
    a2 and b1 with b2, so each pair shares one batch; the watcher records the key of a
    file dropped while the daemon runs."""
    from autodip_watch.settings.config import load_config
    from autodip_watch.pipeline.plan import fit_key
    from autodip_watch.provenance import read_provenance
    from autodip_watch.transfer.table import CalibrationTable

    folder = tmp_path / "in"
    folder.mkdir()
    state = tmp_path / "state"
    watches = f'[[watch]]\npath = "{folder}"\nsettle_seconds = 0.5\n'
    config_path = write_config(tmp_path / "config.toml", state, watches, TINY_FIT + ONE_FIT +
                               "[batching]\nmode = \"on\"\njobs_together = 2\nlinger_seconds = 30\n")
    raw = Raw()
    shapes = {"a1": (48, 40), "b1": (64, 64), "a2": (48, 40), "b2": (64, 64)}
    images = {name: raw.write(folder / f"{name}.ome.tif", shape, seed=i)
              for i, (name, shape) in enumerate(shapes.items())}
    config = load_config(config_path)
    settings = config.denoise_settings(config.watch[0], "auto", CalibrationTable.load())
    keys = {name: fit_key(path, settings) for name, path in images.items()}
    assert keys["a1"] == keys["a2"] != keys["b1"] == keys["b2"]
    queue = JobQueue(state)
    for name, path in images.items():  # in this order, as the watcher would have
        info = path.stat()
        queue.enqueue(str(path), info.st_size, info.st_mtime_ns, sha256(path), str(folder),
                      fit_key=keys[name])
    daemon = DaemonProcess(config_path, tmp_path / "daemon.log")
    try:
        wait_for(lambda: all(j.state == "done" for j in JobQueue(state, create=False).jobs()),
                 90, "four jobs done", daemon)
        late = raw.write(folder / "a3.ome.tif", (48, 40), seed=9)
        wait_for(lambda: output_of(late).exists(), 90, "the late file done", daemon)
        daemon.stop()
    finally:
        daemon.kill()
    for name, image in images.items():
        entries = read_provenance(output_of(image))[0]["entries"]
        assert entries["channel.0.largest_batch"] == "2", name
    late_job = next(j for j in JobQueue(state, create=False).jobs() if j.path == str(late))
    assert late_job.fit_key == keys["a1"]
    raw.check_unchanged()
