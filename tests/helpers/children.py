"""Child processes of the tests (daemons, Dask schedulers and workers) that never outlive
the test run: not when a test fails, not when the run is interrupted (Ctrl-C, SIGTERM),
not even when pytest is killed outright.

Three layers, because each covers what the others cannot:

- the fixtures' ``finally`` kills them (a failing test);
- ``atexit`` kills every child still running when the interpreter exits (a Ctrl-C that
  skips fixture teardown);
- on Linux each child asks the kernel for SIGKILL when its parent dies
  (``prctl(PR_SET_PDEATHSIG)``), which also covers ``kill -9`` of pytest, where no
  Python code runs at all.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
import weakref

PR_SET_PDEATHSIG = 1
_children: "weakref.WeakSet[subprocess.Popen]" = weakref.WeakSet()


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


_LIBC = _libc()
_PARENT = os.getpid()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # Start as a shell starts a foreground command: SIGINT and SIGTERM at their defaults,
    # whatever the test runner (pytest-xdist's workers ignore SIGINT) passed down.
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_DFL)
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The parent may have died between fork and prctl: then nobody would send the signal.
    if os.getppid() != _PARENT:
        os._exit(1)


def spawn(args: list[str], **kwargs) -> subprocess.Popen:
    """``subprocess.Popen(args, **kwargs)`` for a child that dies with the test process."""
    process = subprocess.Popen(args, preexec_fn=_die_with_parent, **kwargs)
    _children.add(process)
    return process


def stop_when(args: list[str], ready, signum: int, settle: float = 1.0,
              timeout: float = 180, **kwargs) -> subprocess.CompletedProcess:
    """Run ``args``, wait until ``ready()`` (at most ``timeout`` s; the child must not end
    before), let it run ``settle`` s more, send ``signum`` and return how it ended (exit
    status, stdout, stderr). The child is killed if it does not end within 60 s of the
    signal."""
    process = spawn(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                    **kwargs)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if process.poll() is not None:
                raise AssertionError(f"ended ({process.returncode}) before it was ready: "
                                     f"{process.stderr.read()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"not ready within {timeout} s: {' '.join(args)}")
            time.sleep(0.1)
        time.sleep(settle)
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_children):
        if process.poll() is None:
            process.kill()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                pass
