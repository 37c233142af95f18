"""The daemon as a real subprocess, and what the tests that start one share: raw files
whose hashes prove they are never touched, waiting for a condition, the CLI as a
subprocess, a configuration on a tmp folder."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

from autodip_watch.daemon.queue import JobQueue

from .children import spawn

TINY_FIT = "[dip]\ndepth = 4\nwidth = 16\niterations = 2\n"
ENDLESS_FIT = "[dip]\ndepth = 4\nwidth = 16\niterations = 1000000\n"
#: One fit per plane (no ensemble), for tests that count what shares a batch.
ONE_FIT = "members = 1\n"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Raw:
    """Raw files written by the tests, with their hashes, to prove they are never touched."""

    def __init__(self) -> None:
        self.hashes: dict[Path, str] = {}

    def write(self, path: Path, shape=(32, 32), seed: int = 0, ome: bool = True,
              axes: str | None = None) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(seed).poisson(200, shape).astype(np.uint16)
        metadata = {"axes": axes} if axes else {}
        tifffile.imwrite(path, pixels, ome=ome, metadata=metadata if ome else None)
        self.hashes[path] = sha256(path)
        return path

    def record(self, path: Path) -> None:
        self.hashes[path] = sha256(path)

    def check_unchanged(self) -> None:
        changed = [str(p) for p, digest in self.hashes.items() if sha256(p) != digest]
        assert not changed, f"raw files modified: {changed}"


def output_of(raw: Path) -> Path:
    """X.ome.tif -> X.autodip.ome.tif; any other name keeps its extension (README)."""
    name = raw.name[: -len(".ome.tif")] if raw.name.endswith(".ome.tif") else raw.name
    return raw.with_name(name + ".autodip.ome.tif")


def temp_files(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob(".*.tmp")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, timeout: float, what: str, daemon: "DaemonProcess | None" = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if daemon is not None and daemon.process.poll() is not None:
            raise AssertionError(f"daemon exited ({daemon.process.returncode}) while waiting for "
                                 f"{what}\n{daemon.log_tail()}")
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}"
                         + (f"\n{daemon.log_tail()}" if daemon else ""))


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "autodip_watch.cli", *args],
                            capture_output=True, text=True, timeout=120, env=child_env())
    if check and result.returncode != 0:
        raise AssertionError(f"autodip-watch {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def child_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("STATE_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC", "AUTODIP_WATCH_CONFIG",
                        "JOURNAL_STREAM", "AUTODIP_WATCH_LOG_FORMAT",
                        "AUTODIP_WATCH_JOURNAL_SOCKET")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


class DaemonProcess:
    def __init__(self, config: Path, log: Path, env: dict | None = None) -> None:
        self.config = config
        self.log = log
        handle = open(log, "ab")
        self.process = spawn(
            [sys.executable, "-m", "autodip_watch.cli", "run", "--config", str(config)],
            stdout=handle, stderr=subprocess.STDOUT, env={**child_env(), **(env or {})})
        handle.close()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def events(self) -> list[dict]:
        records = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                pass
        return records

    def wait_ready(self, timeout: float = 90) -> None:
        wait_for(lambda: any(e.get("event") == "daemon.ready" for e in self.events()), timeout,
                 "daemon.ready", self)

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> tuple[int, float]:
        started = time.monotonic()
        self.process.send_signal(sig)
        code = self.process.wait(timeout)
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


def write_config(path: Path, state: Path, watches: str, extra: str = "") -> Path:
    path.write_text(f'device = "cpu"\nstate_dir = "{state}"\nlog_level = "info"\n{watches}\n'
                    f"[retry]\nmax_attempts = 2\nbackoff_seconds = 0.5\n"
                    f"[daemon]\nheartbeat_seconds = 0.5\nstop_timeout_seconds = 10\n{extra}",
                    encoding="utf-8")
    return path


def job_states(queue: JobQueue) -> dict[str, str]:
    return {job.path: job.state for job in queue.jobs()}
