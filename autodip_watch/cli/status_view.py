"""What ``status`` prints for a person: the daemon line first, then what needs attention.

Everything that comes from files, jobs or the daemon (paths, errors, reasons) is escaped
before rich prints it, so text like ``[[watch]]`` in an error is shown as written.
"""

from __future__ import annotations

import time

from rich.markup import escape
from rich.table import Table


def age(seconds: float | None) -> str:
    """A duration for people: ``45 s``, ``12 min``, ``3.5 h``, ``2.0 d``."""
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


def render_status(status: dict, console) -> None:
    """Print a collected status report (``daemon.status.collect_status``)."""
    now = time.time()
    _daemon(status, console)
    if status.get("cluster"):
        render_cluster(status["cluster"], console, now)
    _watches(status["watches"], console)
    counts, superseded = status["counts"], status.get("superseded") or {}
    console.print("jobs: " + ", ".join(
        f"{count} {state}" + (f" ({superseded[state]} of them of an older version of their "
                              f"file)" if superseded.get(state) else "")
        for state, count in counts.items()))
    _running(status, console)
    _waiting(status, console)
    _recent(status["recent"], console, now)
    _problems(status["problems"], console)
    rate = status["throughput"]
    if rate["sample_jobs"]:
        console.print(f"throughput: {rate['images_last_hour']} image(s) in the last hour; "
                      f"{rate['images_per_hour']} images/h and {rate['seconds_per_plane']} "
                      f"s/plane over the last {rate['sample_jobs']} job(s)")
    else:
        console.print("throughput: no finished jobs yet")


def _daemon(status: dict, console) -> None:
    daemon = status["daemon"]
    if daemon["up"]:
        problems = "; ".join(daemon.get("problems") or []) or daemon.get("status") or "?"
        health = "" if daemon["healthy"] else f" [red]UNHEALTHY: {escape(problems)}[/red]"
        if daemon["state"] == "degraded":
            health = f" [yellow]DEGRADED: {escape(problems)}[/yellow]"
        console.print(f"[green]daemon up[/green]: pid {daemon['pid']} on "
                      f"{escape(str(daemon['host']))}, heartbeat "
                      f"{age(daemon['heartbeat_age_seconds'])} ago, version {daemon['version']}, "
                      f"device {escape(', '.join(daemon['devices']))}{health}")
    else:
        last = (f" (last heartbeat {age(daemon['heartbeat_age_seconds'])} ago, pid "
                f"{daemon['pid']})" if "pid" in daemon else "")
        console.print(f"[red]daemon {daemon['state']}[/red]: {escape(daemon['reason'])}{last}")
    access = {"read-only": " (opened read-only)",
              "snapshot": " (read-only snapshot: the folder cannot be written, so changes "
                          "not yet checkpointed by the daemon may be missing)"}
    console.print(f"database: {escape(str(status['database']))}"
                  f"{access.get(status.get('database_access'), '')}")


def _watches(watches: list[dict], console) -> None:
    for watch in watches:
        if watch.get("running") is False:
            where = "[yellow]stopped[/yellow] (the daemon is not running)"
        else:
            where = {True: "[green]ok[/green]", False: "[red]unavailable[/red]",
                     None: "starting"}[watch["available"]]
        note = f" - {escape(watch['note'])}" if watch.get("note") else ""
        console.print(f"watching {escape(watch['path'])} ({watch['observer']} observer, "
                      f"{where}){note}")


def _running(status: dict, console) -> None:
    """Interrupted and current jobs, and when the queue will be empty."""
    for job in status.get("interrupted", []):
        console.print(f"[yellow]interrupted[/yellow]: #{job['id']} {escape(job['path'])} "
                      f"(attempt {job['attempt']} on {escape(str(job['worker']))}): "
                      f"{escape(job['reason'])}")
    for job in status["current"]:
        if job["plane"]:
            where = (f"plane {job['plane']}/{job['planes']}"
                     # the pipeline counts every fit of a plane: its tiles x ensemble members
                     + (f", fit {job['tile']}/{job['tiles']}" if (job["tiles"] or 1) > 1 else "")
                     + f", iteration {job['iteration']}/{job['iterations']}")
            rate = job.get("iterations_per_second")
            eta = (f", {rate:.2f} it/s" if rate else "") + (
                f", ETA {age(job['eta_seconds'])}" if job["eta_seconds"] is not None
                else ", ETA after the second iteration")
        else:
            where, eta = "starting", ""
        console.print(f"[bold]now[/bold]: #{job['id']} {escape(job['path'])} - {where}"
                      f" ({age(job['elapsed_seconds'])} elapsed{eta}) on "
                      f"{escape(str(job['worker']))}")
    backlog = status.get("queue_eta")
    if backlog and backlog["jobs"]:
        if backlog["eta_seconds"] is not None:
            console.print(f"queue: {backlog['jobs']} job(s), about {backlog['planes']:g} "
                          f"plane(s); empty in about {age(backlog['eta_seconds'])} "
                          f"({backlog['seconds_per_plane']} s/plane recently, "
                          f"{backlog['parallel']} at a time)")
        else:
            console.print(f"queue: {backlog['jobs']} job(s); no ETA yet "
                          f"({escape(backlog.get('reason', 'unknown'))})")


def _waiting(status: dict, console) -> None:
    """Files not yet taken, and incomplete inputs."""
    if status["waiting"]:
        console.print(f"waiting to settle or complete: {len(status['waiting'])} file(s)")
        shown = sorted(status["waiting"], key=lambda item: item.get("state") != "incomplete")
        for item in shown[:8]:
            colour = "red" if item.get("state") == "incomplete" else "cyan"
            console.print(f"  {escape(item['path'])}: [{colour}]{escape(item['reason'])}"
                          f"[/{colour}]")
    for job in status.get("incomplete", []):
        missing = job["missing"].get("reason") or "; ".join(job["found_missing"])
        outcome = {"partial": f"denoised as it is -> {job['output']}",
                   "queued": "queued to be denoised as it is", "running": "being denoised",
                   "failed": "failed; retried"}.get(job["state"], job["state"])
        console.print(f"[yellow]incomplete[/yellow]: #{job['id']} {escape(job['path'])}: "
                      f"{escape(missing)}; {escape(outcome)}")


def _recent(recent: list[dict], console, now: float) -> None:
    if not recent:
        return
    table = Table(title="last completed", title_justify="left")
    for column in ("id", "finished", "seconds", "output"):
        table.add_column(column)
    for job in recent:
        partial = " [yellow](partial)[/yellow]" if job.get("state") == "partial" else ""
        older = (f" [dim](an older version; superseded by job {job['superseded_by']})[/dim]"
                 if job.get("superseded_by") else "")
        table.add_row(str(job["id"]), f"{age(now - job['finished'])} ago",
                      f"{job['seconds']:.1f}" if job["seconds"] is not None else "",
                      escape(job["output"] or "") + partial + older)
    console.print(table)
    for job in recent:
        for warning in job.get("warnings") or []:
            console.print(f"  [yellow]warning[/yellow] #{job['id']}: {escape(warning)}")


def _problems(problems: list[dict], console) -> None:
    if not problems:
        return
    table = Table(title="failed, quarantined and skipped", title_justify="left")
    for column in ("id", "state", "tries", "path", "error"):
        table.add_column(column, overflow="fold")
    for job in problems:
        state = job["state"]
        if state == "failed" and job["next_retry_seconds"] is not None:
            state += f" (retry in {age(job['next_retry_seconds'])})"
        colour = "red" if job["state"] == "quarantined" else "yellow"
        table.add_row(str(job["id"]), f"[{colour}]{state}[/{colour}]", str(job["attempts"]),
                      escape(job["path"]), escape(job["error"] or ""))
    console.print(table)


def render_cluster(cluster: dict, console, now: float) -> None:
    """The Dask cluster as the daemon last saw it: scheduler, workers, GPUs, busy or idle."""
    if not cluster["connected"]:
        retry = ""
        if cluster.get("retry_at"):
            retry = f"; next try in {age(cluster['retry_at'] - now)}"
        console.print(f"[red]cluster unreachable[/red]: Dask scheduler "
                      f"{escape(cluster['scheduler'])} since {age(now - cluster['since'])} ago "
                      f"({escape(str(cluster.get('error')))}){retry}; files are still watched "
                      f"and queued")
        return
    workers = cluster["workers"]
    busy = sum(1 for worker in workers if worker["state"] == "busy")
    console.print(f"cluster: Dask scheduler {escape(cluster['scheduler'])}, {len(workers)} "
                  f"worker(s), {cluster['gpus']:g} GPU(s), {busy} busy; "
                  f"{cluster.get('tasks', 0)} of {cluster['max_in_flight']} task(s) in flight, "
                  f"{cluster['in_flight']} job(s); up to {cluster.get('jobs_per_task', 1)} "
                  f"job(s) of one fit key per task")
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
        console.print(f"  {escape(worker['address'])} on {escape(str(worker['host']))} "
                      f"({escape(worker['name'])}): {worker['gpus']:g} GPU{device}, "
                      f"{worker['state']}{jobs}{other}")
