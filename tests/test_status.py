"""What status concludes from the daemon's row, its lock-file record and its process,
and how conditions are logged: once when they start, once when they end."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

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
    return {"pid": os.getpid(), "host": socket.gethostname(), "version": "t", "devices": ["cpu"],
            "started": now - 100, "heartbeat": now, "heartbeat_seconds": 1.0, "stopped": None,
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
