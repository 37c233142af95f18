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

from .. import __version__
from .progress import eta_seconds
from .queue import Job, JobQueue

#: A heartbeat older than this many periods (and at least STALE_MIN_SECONDS) means down.
STALE_PERIODS = 3
STALE_MIN_SECONDS = 15.0
#: Exit status of `autodip-watch status` per daemon state (see the module docstring).
EXIT_STATUS = {"running": 0, "unhealthy": 1, "hung": 1, "stopped": 3, "crashed": 3,
               "never-ran": 3, "unknown": 4}
#: The daemon's lock file in the state directory; it also holds its health record.
LOCK_NAME = "daemon.lock"
#: Keys whose values are times (seconds since the epoch); JSON shows them as ISO 8601 UTC.
TIME_KEYS = frozenset({"started", "finished", "updated", "created", "heartbeat", "since",
                       "stopped", "retry_at", "progress_at", "not_before"})


def read_lock_record(state_dir) -> dict | None:
    """The health record the daemon keeps in its lock file, or None (none, unreadable,
    or an older daemon's plain ``pid N on host`` line)."""
    from pathlib import Path

    try:
        text = (Path(state_dir) / LOCK_NAME).read_text(encoding="utf-8", errors="replace")
        record = json.loads(text.strip() or "null")
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _process_alive(pid: int | None) -> bool | None:
    if not pid:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
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
    alive = _process_alive(info["pid"]) if info["host"] == socket.gethostname() else None
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
    done = [{"id": job.id, "path": job.path, "output": job.output, "state": job.state,
             "seconds": round(job.seconds, 3) if job.seconds is not None else None,
             "planes": job.planes, "finished": job.finished,
             "warnings": _warnings_of(job)}
            for job in queue.jobs(["done", "partial"], limit=recent, newest_first=True,
                                  order="finished")]
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
    return {
        "version": __version__,
        "database": str(queue.path),
        "database_access": queue.access,
        "daemon": daemon,
        # What the Dask dispatcher last saw (None with the local executor, or when down).
        "cluster": queue.info("cluster") if live else None,
        "watches": watches,
        "counts": queue.counts(),
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

    A waiting job whose plane count is not known yet (it has never run) counts as many
    planes as the recent jobs had on average.
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
    import json

    try:
        report = json.loads(job.report) if job.report else {}
    except (TypeError, ValueError):
        return []
    warnings = report.get("warnings") if isinstance(report, dict) else None
    return [str(w) for w in warnings] if isinstance(warnings, list) else []


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def render_cluster(cluster: dict, console, now: float) -> None:
    """The Dask cluster as the daemon last saw it: scheduler, workers, GPUs, busy or idle."""
    if not cluster["connected"]:
        retry = ""
        if cluster.get("retry_at"):
            retry = f"; next try in {_age(cluster['retry_at'] - now)}"
        console.print(f"[red]cluster unreachable[/red]: Dask scheduler {cluster['scheduler']} "
                      f"since {_age(now - cluster['since'])} ago ({cluster.get('error')}){retry}; "
                      f"files are still watched and queued")
        return
    workers = cluster["workers"]
    busy = sum(1 for worker in workers if worker["state"] == "busy")
    console.print(f"cluster: Dask scheduler {cluster['scheduler']}, {len(workers)} worker(s), "
                  f"{cluster['gpus']:g} GPU(s), {busy} busy; {cluster.get('tasks', 0)} of "
                  f"{cluster['max_in_flight']} task(s) in flight, {cluster['in_flight']} "
                  f"job(s); up to {cluster.get('jobs_per_task', 1)} job(s) of one fit key "
                  f"per task")
    if not workers:
        console.print("  [yellow]no workers: jobs wait until a GPU worker joins[/yellow]")
    elif not cluster["gpus"]:
        console.print("  [yellow]no worker offers the GPU resource: start workers with "
                      "--resources GPU=1[/yellow]")
    for worker in workers:
        jobs = f": job {', '.join(f'#{job}' for job in worker['jobs'])}" if worker["jobs"] else ""
        others = worker["tasks"] - worker.get("our_tasks", len(worker["jobs"]))
        other = f" (+{others} task(s) of other clients)" if others > 0 else ""
        device = f", {worker['device']}" if worker.get("device") else ""
        console.print(f"  {worker['address']} on {worker['host']} ({worker['name']}): "
                      f"{worker['gpus']:g} GPU{device}, {worker['state']}{jobs}{other}")


def render_status(status: dict, console) -> None:
    """Print ``status`` for a person: the daemon line first, then what needs attention."""
    from rich.table import Table

    now = time.time()
    daemon = status["daemon"]
    if daemon["up"]:
        problems = "; ".join(daemon.get("problems") or []) or daemon.get("status") or "?"
        health = "" if daemon["healthy"] else f" [red]UNHEALTHY: {problems}[/red]"
        console.print(f"[green]daemon up[/green]: pid {daemon['pid']} on {daemon['host']}, "
                      f"heartbeat {_age(daemon['heartbeat_age_seconds'])} ago, "
                      f"version {daemon['version']}, device {', '.join(daemon['devices'])}{health}")
    else:
        last = (f" (last heartbeat {_age(daemon['heartbeat_age_seconds'])} ago, pid "
                f"{daemon['pid']})" if "pid" in daemon else "")
        console.print(f"[red]daemon {daemon['state']}[/red]: {daemon['reason']}{last}")
    access = {"read-only": " (opened read-only)",
              "snapshot": " (read-only snapshot: the folder cannot be written, so changes "
                          "not yet checkpointed by the daemon may be missing)"}
    console.print(f"database: {status['database']}{access.get(status.get('database_access'), '')}")
    if status.get("cluster"):
        render_cluster(status["cluster"], console, now)
    for watch in status["watches"]:
        if watch.get("running") is False:
            where = "[yellow]stopped[/yellow] (the daemon is not running)"
        else:
            where = {True: "[green]ok[/green]", False: "[red]unavailable[/red]",
                     None: "starting"}[watch["available"]]
        note = f" - {watch['note']}" if watch.get("note") else ""
        console.print(f"watching {watch['path']} ({watch['observer']} observer, {where}){note}")
    counts = status["counts"]
    console.print("jobs: " + ", ".join(f"{count} {state}" for state, count in counts.items()))
    for job in status.get("interrupted", []):
        console.print(f"[yellow]interrupted[/yellow]: #{job['id']} {job['path']} (attempt "
                      f"{job['attempt']} on {job['worker']}): {job['reason']}")
    for job in status["current"]:
        if job["plane"]:
            where = (f"plane {job['plane']}/{job['planes']}"
                     + (f", tile {job['tile']}/{job['tiles']}" if (job["tiles"] or 1) > 1 else "")
                     + f", iteration {job['iteration']}/{job['iterations']}")
            rate = job.get("iterations_per_second")
            eta = (f", {rate:.2f} it/s" if rate else "") + (
                f", ETA {_age(job['eta_seconds'])}" if job["eta_seconds"] is not None
                else ", ETA after the second iteration")
        else:
            where, eta = "starting", ""
        console.print(f"[bold]now[/bold]: #{job['id']} {job['path']} - {where}"
                      f" ({_age(job['elapsed_seconds'])} elapsed{eta}) on {job['worker']}")
    backlog = status.get("queue_eta")
    if backlog and backlog["jobs"]:
        if backlog["eta_seconds"] is not None:
            console.print(f"queue: {backlog['jobs']} job(s), about {backlog['planes']:g} "
                          f"plane(s); empty in about {_age(backlog['eta_seconds'])} "
                          f"({backlog['seconds_per_plane']} s/plane recently, "
                          f"{backlog['parallel']} at a time)")
        else:
            console.print(f"queue: {backlog['jobs']} job(s); no ETA yet "
                          f"({backlog.get('reason', 'unknown')})")
    if status["waiting"]:
        console.print(f"waiting to settle or complete: {len(status['waiting'])} file(s)")
        shown = sorted(status["waiting"], key=lambda item: item.get("state") != "incomplete")
        for item in shown[:8]:
            colour = "red" if item.get("state") == "incomplete" else "cyan"
            console.print(f"  {item['path']}: [{colour}]{item['reason']}[/{colour}]")
    for job in status.get("incomplete", []):
        missing = job["missing"].get("reason") or "; ".join(job["found_missing"])
        outcome = {"partial": f"denoised as it is -> {job['output']}",
                   "queued": "queued to be denoised as it is", "running": "being denoised",
                   "failed": "failed; retried"}.get(job["state"], job["state"])
        console.print(f"[yellow]incomplete[/yellow]: #{job['id']} {job['path']}: {missing}; "
                      f"{outcome}")
    if status["recent"]:
        table = Table(title="last completed", title_justify="left")
        for column in ("id", "finished", "seconds", "output"):
            table.add_column(column)
        for job in status["recent"]:
            partial = " [yellow](partial)[/yellow]" if job.get("state") == "partial" else ""
            table.add_row(str(job["id"]), f"{_age(now - job['finished'])} ago",
                          f"{job['seconds']:.1f}" if job["seconds"] is not None else "",
                          (job["output"] or "") + partial)
        console.print(table)
        for job in status["recent"]:
            for warning in job.get("warnings") or []:
                console.print(f"  [yellow]warning[/yellow] #{job['id']}: {warning}")
    if status["problems"]:
        table = Table(title="failed, quarantined and skipped", title_justify="left")
        for column in ("id", "state", "tries", "path", "error"):
            table.add_column(column, overflow="fold")
        for job in status["problems"]:
            state = job["state"]
            if state == "failed" and job["next_retry_seconds"] is not None:
                state += f" (retry in {_age(job['next_retry_seconds'])})"
            colour = "red" if job["state"] == "quarantined" else "yellow"
            table.add_row(str(job["id"]), f"[{colour}]{state}[/{colour}]", str(job["attempts"]),
                          job["path"], job["error"] or "")
        console.print(table)
    rate = status["throughput"]
    if rate["sample_jobs"]:
        console.print(f"throughput: {rate['images_last_hour']} image(s) in the last hour; "
                      f"{rate['images_per_hour']} images/h and {rate['seconds_per_plane']} s/plane "
                      f"over the last {rate['sample_jobs']} job(s)")
    else:
        console.print("throughput: no finished jobs yet")
