"""What ``autodip-watch status`` shows, read from the queue database alone.

Reading only SQLite (never talking to the process) means status works whether the
daemon runs, hangs or is gone, and tells these apart by the heartbeat row.
"""

from __future__ import annotations

import os
import socket
import time

from . import __version__
from .queue import JobQueue

#: A heartbeat older than this many periods (and at least STALE_MIN_SECONDS) means down.
STALE_PERIODS = 3
STALE_MIN_SECONDS = 15.0


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


def daemon_state(info: dict | None, now: float) -> dict:
    if info is None:
        return {"up": False, "reason": "the daemon has never run with this state directory"}
    age = now - (info["heartbeat"] or 0)
    state = {"up": False, "pid": info["pid"], "host": info["host"], "version": info["version"],
             "devices": info["devices"], "started": info["started"],
             "heartbeat_age_seconds": round(age, 1), "healthy": bool(info["healthy"]),
             "status": info["status"]}
    stale_after = max(STALE_MIN_SECONDS, STALE_PERIODS * (info["heartbeat_seconds"] or 5))
    alive = _process_alive(info["pid"]) if info["host"] == socket.gethostname() else None
    if info["stopped"]:
        state["reason"] = "stopped cleanly"
    elif alive is False:
        state["reason"] = "the process is gone without a clean stop (crash or kill)"
    elif age > stale_after:
        state["reason"] = f"no heartbeat for {age:.0f} s (hung, or stopped uncleanly)"
    else:
        state["up"] = True
    return state


def collect_status(queue: JobQueue, recent: int = 10, problems: int = 20) -> dict:
    """Everything ``status`` shows, as one JSON-serialisable dict."""
    now = time.time()
    info = queue.daemon()
    daemon = daemon_state(info, now)
    current = []
    for job in queue.jobs(["running"]):
        fraction = job.fraction_done()
        elapsed = now - (job.started or now)
        eta = elapsed * (1 - fraction) / fraction if fraction else None
        current.append({
            "id": job.id, "path": job.path, "worker": job.worker, "attempt": job.attempts,
            "plane": job.plane, "planes": job.planes, "tile": job.tile, "tiles": job.tiles,
            "iteration": job.iteration, "iterations": job.iterations,
            "fraction": round(fraction, 4) if fraction is not None else None,
            "elapsed_seconds": round(elapsed, 1),
            "eta_seconds": round(eta, 1) if eta is not None else None})
    done = [{"id": job.id, "path": job.path, "output": job.output,
             "seconds": round(job.seconds, 3) if job.seconds is not None else None,
             "planes": job.planes, "finished": job.finished, "warnings": _warnings_of(job)}
            for job in queue.jobs(["done"], limit=recent, newest_first=True, order="finished")]
    trouble = [{"id": job.id, "path": job.path, "state": job.state, "attempts": job.attempts,
                "error": job.error, "updated": job.updated,
                "next_retry_seconds": (round(max(0.0, job.not_before - now), 1)
                                       if job.state == "failed" else None)}
               for job in queue.jobs(["failed", "quarantined", "skipped"], limit=problems,
                                     newest_first=True, order="updated")]
    return {
        "version": __version__,
        "database": str(queue.path),
        "daemon": daemon,
        # What the Dask dispatcher last saw (None with the local executor, or when down).
        "cluster": queue.info("cluster") if daemon["up"] else None,
        "watches": info["watches"] if info else [],
        "counts": queue.counts(),
        "current": current,
        "recent": done,
        "problems": trouble,
        "waiting": queue.waiting() if daemon["up"] else [],
        "throughput": queue.throughput(),
    }


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
        health = "" if daemon["healthy"] else f" [red]UNHEALTHY: {daemon['status']}[/red]"
        console.print(f"[green]daemon up[/green]: pid {daemon['pid']} on {daemon['host']}, "
                      f"heartbeat {_age(daemon['heartbeat_age_seconds'])} ago, "
                      f"version {daemon['version']}, device {', '.join(daemon['devices'])}{health}")
    else:
        last = (f" (last heartbeat {_age(daemon['heartbeat_age_seconds'])} ago, pid "
                f"{daemon['pid']})" if "pid" in daemon else "")
        console.print(f"[red]daemon down[/red]: {daemon['reason']}{last}")
    console.print(f"database: {status['database']}")
    if status.get("cluster"):
        render_cluster(status["cluster"], console, now)
    for watch in status["watches"]:
        where = {True: "[green]ok[/green]", False: "[red]unavailable[/red]",
                 None: "starting"}[watch["available"]]
        note = f" - {watch['note']}" if watch.get("note") else ""
        console.print(f"watching {watch['path']} ({watch['observer']} observer, {where}){note}")
    counts = status["counts"]
    console.print("jobs: " + ", ".join(f"{count} {state}" for state, count in counts.items()))
    for job in status["current"]:
        if job["plane"]:
            where = (f"plane {job['plane']}/{job['planes']}"
                     + (f", tile {job['tile']}/{job['tiles']}" if (job["tiles"] or 1) > 1 else "")
                     + f", iteration {job['iteration']}/{job['iterations']}")
            eta = f", ETA {_age(job['eta_seconds'])}" if job["eta_seconds"] is not None else ""
        else:
            where, eta = "starting", ""
        console.print(f"[bold]now[/bold]: #{job['id']} {job['path']} - {where}"
                      f" ({_age(job['elapsed_seconds'])} elapsed{eta}) on {job['worker']}")
    if status["waiting"]:
        console.print(f"waiting to settle or complete: {len(status['waiting'])} file(s)")
        for item in status["waiting"][:5]:
            console.print(f"  {item['path']}: {item['reason']}")
    if status["recent"]:
        table = Table(title="last completed", title_justify="left")
        for column in ("id", "finished", "seconds", "output"):
            table.add_column(column)
        for job in status["recent"]:
            table.add_row(str(job["id"]), f"{_age(now - job['finished'])} ago",
                          f"{job['seconds']:.1f}" if job["seconds"] is not None else "",
                          job["output"] or "")
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
