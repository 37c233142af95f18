"""What ``autodip-watch status`` shows, read from the state directory alone.

Reading only files (the queue database, and the health record the daemon keeps in its
lock file) and never talking to the process means status works whether the daemon runs,
hangs or is gone, and tells these apart by the heartbeats and the process id. It opens
the database read-only when it cannot write the state folder (another user, a read-only
mount).

The daemon's condition, and the exit status of ``autodip-watch status`` (as
``systemctl status``: 0 running, 3 not running):

========== ======================================================================= ====
state      meaning                                                                 exit
========== ======================================================================= ====
running    heartbeat fresh, every part healthy                                     0
unhealthy  heartbeat fresh (in the database or, when the daemon cannot write its   1
           database, in its lock file), but something is wrong: says what
degraded   healthy, but it cannot do its work for a cause outside it: a watched     1
           folder is unavailable, the Dask scheduler is unreachable or has no GPU
           worker (systemd's watchdog is still fed: a restart would not help)
hung       the process is there but has not written a heartbeat for a while        1
stopped    stopped cleanly                                                         3
crashed    the process is gone without a clean stop (crash, kill -9, power loss)   3
never-ran  no daemon has used this state directory                                 3
unknown    the database cannot be read, or the daemon ran on another host and its  4
           heartbeat is old
========== ======================================================================= ====
"""

from __future__ import annotations

import json
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil

from .. import __version__
from .progress import eta_seconds
from .queue import DATABASE_NAME, STATES, Job, JobQueue, QueueError

#: A heartbeat older than this many periods (and at least STALE_MIN_SECONDS) means down.
STALE_PERIODS = 3
STALE_MIN_SECONDS = 15.0
#: Exit status of `autodip-watch status` per daemon state (see the module docstring).
EXIT_STATUS = {"running": 0, "unhealthy": 1, "degraded": 1, "hung": 1, "stopped": 3, "crashed": 3,
               "never-ran": 3, "unknown": 4}
#: A process created this long after the daemon's recorded start is another process.
PID_REUSE_SLACK_SECONDS = 2.0
#: The daemon's lock file in the state directory; it also holds its health record.
LOCK_NAME = "daemon.lock"
#: Keys whose values are times (seconds since the epoch); JSON shows them as ISO 8601 UTC.
TIME_KEYS = frozenset({"started", "finished", "updated", "created", "heartbeat", "since",
                       "stopped", "retry_at", "progress_at", "not_before"})


def read_lock_record(state_dir) -> dict | None:
    """The health record the daemon keeps in its lock file, or None (none, unreadable,
    or an older daemon's plain ``pid N on host`` line)."""
    try:
        text = (Path(state_dir) / LOCK_NAME).read_text(encoding="utf-8", errors="replace")
        record = json.loads(text.strip() or "null")
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _process_alive(pid: int | None, started: float | None = None) -> bool | None:
    """Whether the daemon's process still runs on this host: None without a pid.

    A killed process that its parent has not reaped yet (a zombie: a container whose
    init never reaps, a supervisor between two polls) is dead; so is a pid that now
    belongs to a process created after the daemon started (reused after a reboot or a
    long time).
    """
    if not pid:
        return None
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        # create_time is derived from boot time and clock ticks: allow for its rounding
        if started and process.create_time() > started + PID_REUSE_SLACK_SECONDS:
            return False
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # exists, belongs to another user (the service user)
    return True


def daemon_state(info: dict | None, now: float, lock: dict | None = None) -> dict:
    """The daemon's condition from its database row and its lock-file record.

    ``state`` is one of :data:`EXIT_STATUS`'s keys; ``up`` is True while it heartbeats.
    """
    if info is None:
        return {"up": False, "state": "never-ran", "healthy": False,
                "reason": "the daemon has never run with this state directory"}
    age = now - (info["heartbeat"] or 0)
    state = {"up": False, "pid": info["pid"], "host": info["host"], "version": info["version"],
             "devices": info["devices"], "started": info["started"],
             "heartbeat_age_seconds": round(age, 1), "healthy": bool(info["healthy"]),
             "status": info["status"], "problems": []}
    stale_after = max(STALE_MIN_SECONDS, STALE_PERIODS * (info["heartbeat_seconds"] or 5))
    alive = (_process_alive(info["pid"], info["started"]) if info["host"] == socket.gethostname()
             else None)
    # The lock file's record is rewritten even when the database cannot be written.
    if lock and lock.get("pid") == info["pid"] and lock.get("host") == info["host"]:
        lock_age = now - float(lock.get("heartbeat") or 0)
    else:
        lock, lock_age = None, None
    if info["stopped"]:
        state.update(state="stopped", reason="stopped cleanly")
    elif alive is False:
        state.update(state="crashed",
                     reason="the process is gone without a clean stop (crash, kill or power loss)")
    elif age <= stale_after:
        state.update(up=True, state="running" if state["healthy"] else "unhealthy")
        if not state["healthy"]:
            state["problems"] = [info["status"]] if info["status"] else []
    elif lock is not None and lock_age <= stale_after:
        # Alive and heartbeating, but its database row is old: it cannot write it.
        state.update(up=True, state="unhealthy", healthy=False,
                     heartbeat_age_seconds=round(lock_age, 1), status=lock.get("status"),
                     problems=list(lock.get("problems") or []), database=lock.get("database"))
    elif alive:
        state.update(state="hung", reason=f"the process is there, but has written no "
                                          f"heartbeat for {age:.0f} s (hung)")
    else:
        state.update(state="unknown", reason=f"no heartbeat for {age:.0f} s from "
                                             f"{info['host']} (cannot check that host's "
                                             f"process from here)")
    return state


def _recent_jobs(queue: JobQueue, recent: int) -> list[dict]:
    """The last ``recent`` finished jobs, newest first, each with the newer job of its
    file that superseded it (its output was, or is being, replaced), if any."""
    newer = queue.superseded_by()
    return [{"id": job.id, "path": job.path, "output": job.output, "state": job.state,
             "seconds": round(job.seconds, 3) if job.seconds is not None else None,
             "planes": job.planes, "finished": job.finished,
             "warnings": _warnings_of(job), "superseded_by": newer.get(job.id)}
            for job in queue.jobs(["done", "partial"], limit=recent, newest_first=True,
                                  order="finished")]


def collect_status(queue: JobQueue, recent: int = 10, problems: int = 20,
                   lock: dict | None = None) -> dict:
    """Everything ``status`` shows, as one JSON-serialisable dict (times as seconds
    since the epoch; :func:`status_json` turns them into ISO 8601 UTC).

    ``lock`` is the daemon's lock-file record (service.read_lock_record), if any.
    """
    now = time.time()
    info = queue.daemon()
    daemon = daemon_state(info, now, lock)
    live = daemon["state"] in ("running", "unhealthy")
    current, interrupted = [], []
    for job in queue.jobs(["running"]):
        if not live:
            # The row says running, but nothing runs it: shown for what it is. The
            # daemon puts it back in the queue when it starts again.
            interrupted.append({"id": job.id, "path": job.path, "worker": job.worker,
                                "attempt": job.attempts, "started": job.started,
                                "plane": job.plane, "planes": job.planes,
                                "reason": f"interrupted: the daemon is {daemon['state']}; "
                                          f"the job is queued again when it starts"})
            continue
        fraction = job.fraction_done()
        elapsed = now - (job.started or now)
        # The rate was measured from the first iteration on: reading, hashing and
        # building the network are not iterations and do not stretch the ETA.
        eta = eta_seconds(fraction, job.rate, now - (job.progress_at or now))
        current.append({
            "id": job.id, "path": job.path, "worker": job.worker, "attempt": job.attempts,
            "plane": job.plane, "planes": job.planes, "tile": job.tile, "tiles": job.tiles,
            "iteration": job.iteration, "iterations": job.iterations,
            "fraction": round(fraction, 4) if fraction is not None else None,
            "iterations_per_second": _iteration_rate(job),
            "elapsed_seconds": round(elapsed, 1),
            "eta_seconds": round(eta, 1) if eta is not None else None})
    throughput = queue.throughput()
    done = _recent_jobs(queue, recent)
    # Only the newest job of each file: a version that was superseded is no problem.
    trouble = [{"id": job.id, "path": job.path, "state": job.state, "attempts": job.attempts,
                "error": job.error, "updated": job.updated,
                "next_retry_seconds": (round(max(0.0, job.not_before - now), 1)
                                       if job.state == "failed" else None)}
               for job in queue.current_jobs(["failed", "quarantined", "skipped"],
                                             limit=problems)]
    incomplete = [_incomplete(job) for job in queue.current_jobs(
        ["queued", "running", "failed", "partial"], limit=problems) if job.missing]
    watches = info["watches"] if info else []
    if not live:
        # The last description the daemon wrote; nothing watches now.
        watches = [{**watch, "available": None, "running": False} for watch in watches]
    waiting = queue.waiting() if live else []
    cluster = queue.info("cluster") if live else None
    outside = _outside_causes(cluster, watches) if daemon["state"] == "running" else []
    if outside:
        daemon.update(state="degraded", problems=outside)
    return {
        "version": __version__,
        "database": str(queue.path),
        "database_access": queue.access,
        "daemon": daemon,
        # What the Dask dispatcher last saw (None with the local executor, or when down).
        "cluster": cluster,
        "watches": watches,
        "counts": queue.counts(),
        "superseded": queue.superseded_counts(),
        "current": current,
        "interrupted": interrupted,
        "recent": done,
        "problems": trouble,
        "incomplete": incomplete,
        "acquiring": [item for item in waiting if item.get("state") == "acquiring"],
        "waiting": waiting,
        "throughput": throughput,
        "queue_eta": queue_eta(queue.jobs(["queued", "failed"]), current, throughput,
                               _parallel(daemon, info, queue)),
    }


def _outside_causes(cluster: dict | None, watches: list[dict]) -> list[str]:
    """Why a healthy daemon denoises nothing (or misses files): the Dask scheduler it
    cannot reach or that has no GPU worker, watched folders that are not there."""
    causes = []
    if cluster and not cluster.get("connected"):
        causes.append(f"Dask scheduler {cluster.get('scheduler')} unreachable "
                      f"({cluster.get('error')}): files are watched and queued, none is "
                      f"denoised")
    elif cluster and not cluster.get("gpus"):
        causes.append(f"no GPU worker at Dask scheduler {cluster.get('scheduler')}: jobs "
                      f"wait until one joins")
    causes += [f"watched folder {watch['path']} unavailable"
               + (f" ({watch['note']})" if watch.get("note") else "")
               for watch in watches if watch.get("available") is False]
    return causes


def _iteration_rate(job: Job) -> float | None:
    """The job's iterations per second (all its fits together), from its measured rate,
    assuming every plane fits like the current one."""
    if not (job.rate and job.planes and job.iterations):
        return None
    return round(job.rate * job.planes * (job.tiles or 1) * job.iterations, 3)


def queue_eta(waiting: list[Job], current: list[dict], throughput: dict,
              parallel: int = 1) -> dict:
    """When the queue will be empty: the planes waiting times the recent seconds per plane
    (from finished jobs, start-up included), plus what the running jobs have left,
    shared among ``parallel`` workers.

    A waiting job counts the planes its metadata declares (recorded when it was queued)
    or that an earlier attempt found; where neither is known (a plain TIFF that never
    ran) it counts as many planes as the recent jobs had on average.
    """
    per_plane = throughput.get("seconds_per_plane")
    per_job = throughput.get("planes_per_job")
    result = {"jobs": len(waiting), "planes": None, "seconds_per_plane": per_plane,
              "parallel": parallel, "eta_seconds": None}
    if not waiting and not current:
        result.update(planes=0, eta_seconds=0.0)
        return result
    if not per_plane or not per_job:
        result["reason"] = "no finished jobs yet to measure seconds per plane"
        return result
    planes = sum(job.planes or per_job for job in waiting)
    left = sum(job["eta_seconds"] or 0.0 for job in current)
    result.update(planes=round(planes, 1),
                  eta_seconds=round((planes * per_plane + left) / max(1, parallel), 1))
    return result


def _parallel(daemon: dict, info: dict | None, queue: JobQueue) -> int:
    """How many jobs run at once: the local workers, or the cluster's GPUs."""
    if not daemon.get("up") or info is None:
        return 1
    cluster = queue.info("cluster")
    if cluster and cluster.get("connected"):
        return max(1, int(cluster.get("gpus") or 0))
    return max(1, len(info.get("devices") or []))


def _incomplete(job) -> dict:
    """A job taken from an incomplete file: what was missing, and what became of it."""
    missing = job.missing_info() or {}
    report = json.loads(job.report) if job.report else {}
    return {"id": job.id, "path": job.path, "state": job.state, "output": job.output,
            "missing": missing, "found_missing": report.get("missing") or [],
            "updated": job.updated}


def read_status(state_dir: Path, recent: int = 10) -> dict:
    """What ``status`` shows of ``state_dir``, whatever the daemon's condition: the
    collected report (:func:`collect_status`), or, where no daemon ever ran there, a
    ``never-ran`` report, or, where the state cannot be read, an ``unknown`` one with the
    ``error``. Never raises for a state it cannot read: that is what ``status`` reports.
    """
    state_dir = Path(state_dir)
    try:
        os.stat(state_dir / DATABASE_NAME)
        queue = JobQueue(state_dir, create=False)
    except FileNotFoundError:
        reason = (f"no queue database in {state_dir} (has the daemon run with this state "
                  f"directory?)")
        return {"version": __version__, "database": None, "state_dir": str(state_dir),
                "daemon": {"up": False, "state": "never-ran", "reason": reason},
                "counts": dict.fromkeys(STATES, 0), "superseded": dict.fromkeys(STATES, 0)}
    except (OSError, QueueError) as error:  # e.g. a folder this user may not enter
        return _unreadable(state_dir, f"{error}")
    try:
        return collect_status(queue, recent=recent, lock=read_lock_record(state_dir))
    except Exception as error:  # sqlite3.Error, OSError, a damaged row: one line, never a trace
        return _unreadable(state_dir, f"{type(error).__name__}: {error}")


def _unreadable(state_dir: Path, error: str) -> dict:
    return {"version": __version__, "state_dir": str(state_dir),
            "daemon": {"up": False, "state": "unknown"},
            "error": f"cannot read the daemon's state in {state_dir}: {error}"}


def exit_status(report: dict) -> int:
    """`autodip-watch status`'s exit status for a collected report (module docstring)."""
    return EXIT_STATUS.get(report.get("daemon", {}).get("state", "unknown"), 4)


def iso_utc(seconds: float) -> str:
    """Seconds since the epoch as ISO 8601 UTC, the way the logs write times."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat().replace("+00:00", "Z")


def status_json(value):
    """``value`` with every time (keys in :data:`TIME_KEYS`) as ISO 8601 UTC text."""
    if isinstance(value, dict):
        return {key: (iso_utc(item) if key in TIME_KEYS and isinstance(item, (int, float))
                      and not isinstance(item, bool) else status_json(item))
                for key, item in value.items()}
    if isinstance(value, list):
        return [status_json(item) for item in value]
    return value


def _warnings_of(job) -> list[str]:
    """The reader's warnings recorded in a finished job's report (metadata repairs,
    planes beyond the declared dimensions, ...)."""
    try:
        report = json.loads(job.report) if job.report else {}
    except (TypeError, ValueError):
        return []
    warnings = report.get("warnings") if isinstance(report, dict) else None
    return [str(w) for w in warnings] if isinstance(warnings, list) else []


