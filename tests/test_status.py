"""What status concludes from the daemon's row, its lock-file record and its process,
and how conditions are logged: once when they start, once when they end."""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
import time

import psutil
import pytest
import structlog
from structlog.testing import capture_logs

from autodip_watch.daemon.log import Condition
from autodip_watch.daemon.status import daemon_state, exit_status, status_json


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def row(**fields) -> dict:
    now = time.time()
    # a daemon records its start once it runs: after its process was created
    started = psutil.Process().create_time() + 1
    return {"pid": os.getpid(), "host": socket.gethostname(), "version": "t", "devices": ["cpu"],
            "started": started, "heartbeat": now, "heartbeat_seconds": 1.0, "stopped": None,
            "healthy": 1, "status": "0 waiting", **fields}


def cases(now: float) -> dict:
    """name: (database row, lock-file record, expected state, exit status), as they stand
    at ``now`` (built when the test runs, not when it is collected)."""
    return {
        "never ran": (None, None, "never-ran", 3),
        "running": (row(), None, "running", 0),
        "running, unhealthy": (row(healthy=0, status="observer of /data is not running"), None,
                               "unhealthy", 1),
        "stopped cleanly": (row(stopped=now, heartbeat=now - 600), None, "stopped", 3),
        "killed (kill -9)": (row(pid=dead_pid(), heartbeat=now - 600), None, "crashed", 3),
        "hung": (row(heartbeat=now - 600), None, "hung", 1),
        "cannot write its database": (
            row(heartbeat=now - 600),
            {"pid": os.getpid(), "host": socket.gethostname(), "heartbeat": now,
             "healthy": False,
             "problems": ["database /s/queue.sqlite3 not writable: database or disk is full"],
             "database": "OperationalError: database or disk is full"},
            "unhealthy", 1),
        "an old lock record of another run": (
            row(heartbeat=now - 600), {"pid": 1, "host": "elsewhere", "heartbeat": now},
            "hung", 1),
        "on another host, silent": (row(host="gpu-server-7", heartbeat=now - 600), None,
                                    "unknown", 4),
    }


CASE_NAMES = ["never ran", "running", "running, unhealthy", "stopped cleanly",
              "killed (kill -9)", "hung", "cannot write its database",
              "an old lock record of another run", "on another host, silent"]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_the_daemon_state_and_exit_status(case):
    info, lock, expected, code = cases(time.time())[case]
    state = daemon_state(info, time.time(), lock)
    assert state["state"] == expected
    assert exit_status({"daemon": state}) == code
    assert state["up"] == (expected in ("running", "unhealthy"))
    if case == "cannot write its database":
        assert "not writable" in state["problems"][0]


def test_json_times_are_iso_8601_utc():
    report = status_json({"daemon": {"started": 0.0, "heartbeat_age_seconds": 3.0},
                          "recent": [{"finished": 1_700_000_000.5, "seconds": 2.0}],
                          "waiting": [{"since": 1_700_000_000}]})
    assert report["daemon"]["started"] == "1970-01-01T00:00:00Z"
    assert re.fullmatch(r"2023-11-14T22:13:20\.500000Z", report["recent"][0]["finished"])
    assert report["recent"][0]["seconds"] == 2.0 and report["daemon"]["heartbeat_age_seconds"] == 3.0
    assert report["waiting"][0]["since"].endswith("Z")


def test_a_condition_is_logged_once_when_it_starts_and_once_when_it_ends():
    log = structlog.get_logger("test")
    with capture_logs() as logs:
        condition = Condition(log, "db.not_writable", "db.writable", where="state")
        for _ in range(50):
            condition.report(OSError(28, "No space left on device"))
        condition.report(PermissionError(13, "Permission denied"))  # another condition
        for _ in range(5):
            condition.report(PermissionError(13, "Permission denied"))
        assert condition.clear() and not condition.clear()
    assert [entry["event"] for entry in logs] == ["db.not_writable", "db.not_writable",
                                                  "db.writable"]
    assert "No space left on device" in logs[0]["error"] and logs[0]["traceback"]
    assert logs[2]["repeats"] == 5 and logs[2]["where"] == "state"


def _killed_unreaped() -> subprocess.Popen:
    """A child killed with SIGKILL and not waited for: a zombie until it is reaped."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    child.kill()
    deadline = time.monotonic() + 20
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the killed child never became a zombie"
        time.sleep(0.05)
    return child


# name: (how the pid's process stands, heartbeat age s, recorded start in s after the
# process was created: negative, the daemon's start came before this process existed)
PID_CASES = {
    "killed, not reaped yet, heartbeat fresh": ("zombie", 0, 0.5),
    "killed, not reaped yet, heartbeat old": ("zombie", 600, 0.5),
    "the pid now another, younger process's": ("other", 600, -3600),
    "the pid now another process's, heartbeat fresh": ("other", 0, -3600),
    "the same process, heartbeat old (hung)": ("same", 600, 0.5),
}


@pytest.mark.parametrize("case", list(PID_CASES))
def test_a_pid_that_is_no_longer_the_daemon_is_a_crash(case):
    """`status` right after `kill -9` (before anyone reaps the process), or after a
    reboot handed the daemon's pid to another program, says crashed, not up or hung."""
    kind, heartbeat_age, started = PID_CASES[case]
    child = _killed_unreaped() if kind == "zombie" else subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        created = psutil.Process(child.pid).create_time()
        now = time.time()
        info = row(pid=child.pid, heartbeat=now - heartbeat_age, started=created + started)
        state = daemon_state(info, now, None)
        expected = "hung" if kind == "same" else "crashed"
        assert state["state"] == expected, state
        assert exit_status({"daemon": state}) == (1 if expected == "hung" else 3)
        assert not state["up"]
    finally:
        child.kill()
        child.wait()


def _watch(path: str, available, note: str = "") -> dict:
    return {"path": path, "observer": "polling", "configured": "polling", "available": available,
            "patterns": ["*.tif"], "settle_seconds": 2.0, "microscope": None, "specimen": None,
            "note": note, "restarts": 0}


def _cluster(connected: bool, gpus: int) -> dict:
    return {"executor": "dask", "scheduler": "tcp://sched:8786", "connected": connected,
            "since": time.time() - 60, "error": None if connected else "timed out",
            "retry_at": None, "workers": [], "gpus": gpus, "in_flight": 0, "tasks": 0,
            "max_in_flight": 1, "jobs_per_task": 1, "updated": time.time()}


# name: (watches, cluster view, expected state, what status must name)
OUTSIDE_CASES = {
    "all there": ([_watch("/data/a", True)], _cluster(True, 2), "running", None),
    "a folder still being checked": ([_watch("/data/a", None)], None, "running", None),
    "a share not mounted": ([_watch("/data/a", True), _watch("/mnt/share", False, "gone")],
                            None, "degraded", "watched folder /mnt/share unavailable (gone)"),
    "scheduler unreachable": ([_watch("/data/a", True)], _cluster(False, 0), "degraded",
                              "Dask scheduler tcp://sched:8786 unreachable (timed out)"),
    "scheduler without a GPU worker": ([_watch("/data/a", True)], _cluster(True, 0),
                                       "degraded", "no GPU worker at Dask scheduler"),
}


@pytest.mark.parametrize("case", list(OUTSIDE_CASES))
def test_a_healthy_daemon_that_cannot_work_is_degraded(tmp_path, case):
    """A monitoring check on `status` alerts (exit 1) when the daemon runs but denoises
    nothing or misses files for a cause outside it; the daemon itself stays healthy."""
    from rich.console import Console

    from autodip_watch.cli.status_view import render_status
    from autodip_watch.daemon.queue import JobQueue
    from autodip_watch.daemon.status import collect_status

    watches, cluster, expected, named = OUTSIDE_CASES[case]
    queue = JobQueue(tmp_path)
    queue.register_daemon(heartbeat_seconds=5)
    queue.heartbeat(True, "0 waiting", watches)
    queue.set_info("cluster", cluster)
    report = collect_status(queue)
    assert report["daemon"]["state"] == expected
    assert report["daemon"]["up"] and report["daemon"]["healthy"]
    assert exit_status(report) == (0 if expected == "running" else 1)
    shown = io.StringIO()
    render_status(report, Console(file=shown, width=300))
    if named:
        assert any(named in problem for problem in report["daemon"]["problems"])
        assert "DEGRADED: " in shown.getvalue() and named in shown.getvalue()
    else:
        assert "DEGRADED" not in shown.getvalue()


def test_jobs_of_an_older_version_are_marked_superseded(tmp_path):
    """A file denoised, replaced and denoised again, and one whose first version was
    skipped: `status` and `queue list` say which jobs are of an older version (their
    output was replaced), and count them as such, so that "done -> output" is never
    read from a superseded job. Real SQLite; the CLI in process."""
    import json

    from rich.console import Console
    from typer.testing import CliRunner

    from autodip_watch.cli.app import app
    from autodip_watch.cli.status_view import render_status
    from autodip_watch.daemon.queue import JobQueue
    from autodip_watch.daemon.status import collect_status

    queue = JobQueue(tmp_path)
    ids = {}
    for name, version, ending in [("a", 1, "done"), ("b", 1, "skipped"), ("a", 2, "done"),
                                  ("b", 2, "done"), ("c", 1, "done")]:
        job = queue.enqueue(f"/data/{name}.tif", version, version, f"{name}{version}")
        claimed = queue.claim("cpu@1")
        assert claimed.id == job.id
        if ending == "done":
            queue.finish(job.id, f"/data/{name}.autodip.ome.tif", None, 1.0, 1)
        else:
            queue.skip(job.id, "the raw file changed while it was being denoised")
        ids[name, version] = job.id
    newer = queue.superseded_by()
    assert newer == {ids["a", 1]: ids["a", 2], ids["b", 1]: ids["b", 2]}
    report = collect_status(queue)
    assert report["superseded"]["done"] == 1 and report["superseded"]["skipped"] == 1
    assert {row["id"]: row["superseded_by"] for row in report["recent"]} == {
        ids["a", 1]: ids["a", 2], ids["a", 2]: None, ids["b", 2]: None, ids["c", 1]: None}
    shown = io.StringIO()
    render_status(report, Console(file=shown, width=300))
    text = shown.getvalue()
    assert "4 done (1 of them of an older version of their file)" in text
    assert "1 skipped (1 of them of an older version of their file)" in text
    assert f"superseded by job {ids['a', 2]}" in text
    listed = CliRunner().invoke(app, ["queue", "list", "--json", "--state-dir", str(tmp_path)])
    assert listed.exit_code == 0, listed.output
    assert {row["id"]: row["superseded_by"] for row in json.loads(listed.stdout)} == {
        job_id: newer.get(job_id) for job_id in ids.values()}
