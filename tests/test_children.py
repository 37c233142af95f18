"""Interrupted test runs leave no processes behind (tests/helpers/children.py).

A stand-in for pytest starts a child the way the fixtures start daemons and Dask workers,
and is then killed outright (SIGKILL: no fixture teardown, no atexit); the child must
go too. And a stand-in that exits without tearing down (a Ctrl-C that skipped the
fixtures) takes its children with it through atexit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

_PARENT = """
import sys, time
sys.path.insert(0, {here!r})
from helpers.children import spawn
child = spawn([sys.executable, "-c", "import time; time.sleep(300)"])
print(child.pid, flush=True)
sys.stdin.readline()  # the test has seen the child alive
if {exit_at_once!r}:
    sys.exit(0)   # leaves without stopping the child itself: atexit must
time.sleep(300)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead but not yet reaped by its (new) parent
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def _wait_gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("how", ["SIGKILL of the test process", "exit without teardown"])
def test_children_die_with_the_test_process(how):
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT.format(here=str(HERE),
                                              exit_at_once=how == "exit without teardown")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        assert _alive(child)
        if how == "SIGKILL of the test process":
            parent.send_signal(signal.SIGKILL)
        else:
            parent.stdin.write("go\n")
            parent.stdin.flush()
        parent.wait(30)
        assert _wait_gone(child), f"child {child} outlived its parent ({how})"
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
