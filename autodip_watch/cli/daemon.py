"""The daemon's commands: ``run``, ``status`` and ``queue list|retry|forget``.

They read the configuration and the state directory; only ``run`` loads the engine
(when it starts jobs), so that ``status`` and ``queue`` stay fast.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..daemon.queue import STATES, JobQueue, QueueError
from ..settings.base import ConfigError
from ..settings.config import Config, load_config, resolve_state_dir
from .app import CONFIG_OPTION, STATE_OPTION, app, console, fail, json_flag, queue_app, say


def daemon_config(path: Optional[Path], code: int = 2) -> Config:
    """The configuration ``--config`` names (default: every default), or exit ``code``."""
    if path is None:
        return Config()
    try:
        return load_config(path)
    except ConfigError as error:
        fail(error, code)


def _open_queue(config: Optional[Path], state_dir: Optional[Path]) -> JobQueue:
    directory = resolve_state_dir(state_dir, daemon_config(config))
    try:
        return JobQueue(directory, create=False)
    except QueueError as error:
        fail(error)


@app.command()
def run(
    config: Optional[Path] = CONFIG_OPTION,
    watch: Optional[list[Path]] = typer.Option(None, "--watch", "-w", metavar="DIR",
                                               help="Folder to watch (repeatable; added to the "
                                                    "config's)."),
    state_dir: Optional[Path] = STATE_OPTION,
    log_level: Optional[str] = typer.Option(None, metavar="LEVEL", help="debug, info, warning "
                                            "or error (default: the config's, info)."),
    executor: Optional[str] = typer.Option(None, metavar="NAME", help="Where jobs run: local "
                                           "(this machine's devices) or dask (a Dask cluster of "
                                           "GPU workers; default: the config's, local)."),
    scheduler: Optional[str] = typer.Option(None, metavar="ADDRESS", help="Dask scheduler "
                                            "address, e.g. tcp://gpu-server:8786 (implies "
                                            "--executor dask)."),
    max_in_flight: Optional[int] = typer.Option(None, metavar="N", help="Dask: tasks submitted "
                                                "at once, each one GPU's (default: the "
                                                "config's; 0 = the cluster's GPUs)."),
) -> None:
    """Run the watcher daemon: denoise every settled image dropped into the watched folders."""
    from ..daemon.log import configure
    from ..daemon.service import EXIT_CONFIG, run_daemon
    from ..settings.config import with_cli_executor, with_cli_folders, with_cli_log_level

    # 78 for every configuration fault, as for the runtime checks: the unit's
    # RestartPreventExitStatus=78 must stop systemd from restart-looping on a typo.
    settings = daemon_config(config, EXIT_CONFIG)
    try:
        settings = with_cli_folders(settings, list(watch or []))
        settings = with_cli_executor(settings, executor, scheduler, max_in_flight)
        settings = with_cli_log_level(settings, log_level)
    except ConfigError as error:
        fail(error, EXIT_CONFIG)
    configure(settings.log_level)
    raise typer.Exit(run_daemon(settings, resolve_state_dir(state_dir, settings)))


@app.command()
def status(
    config: Optional[Path] = CONFIG_OPTION,
    state_dir: Optional[Path] = STATE_OPTION,
    as_json: bool = json_flag("Print JSON (times in ISO 8601 UTC)."),
    recent: int = typer.Option(10, min=0, metavar="N", help="How many completed jobs to show."),
) -> None:
    """What the daemon is doing: up or down, folders, queue, current job, failures, throughput.

    Exit status (as systemctl status): 0 running and healthy, 1 running but unhealthy (or
    hung), 3 not running (stopped, crashed, never started here), 4 unknown (the state
    cannot be read). Works on a state folder it cannot write.
    """
    from ..daemon.status import exit_status, read_status, status_json
    from .status_view import render_status

    report = read_status(resolve_state_dir(state_dir, daemon_config(config)), recent)
    if as_json:
        typer.echo(json.dumps(status_json(report), indent=2))
    elif "error" in report:
        console.print(f"[red]error:[/red] {escape(report['error'])}", highlight=False)
    elif report.get("database") is None:  # no queue database: never started here
        Console().print(escape(f"daemon not running: {report['daemon']['reason']}"),
                        highlight=False)
    else:
        render_status(report, Console())
    raise typer.Exit(exit_status(report))


@queue_app.command("list")
def queue_list(
    state: Optional[list[str]] = typer.Option(None, "--state", "-s", metavar="STATE",
                                              help="Only jobs in this state (repeatable): "
                                                   f"{', '.join(STATES)}."),
    limit: Optional[int] = typer.Option(None, min=1, metavar="N",
                                        help="At most this many (newest first)."),
    history: Optional[int] = typer.Option(None, metavar="ID",
                                          help="Show the full history of this job id."),
    config: Optional[Path] = CONFIG_OPTION,
    state_dir: Optional[Path] = STATE_OPTION,
    as_json: bool = json_flag(),
) -> None:
    """List jobs (all states by default), or one job's history (JSON)."""
    for name in state or []:
        if name not in STATES:
            fail(f"unknown state {name!r}; use one of {', '.join(STATES)}")
    jobs = _open_queue(config, state_dir)
    if history is not None:
        with _database_errors(jobs, "read"):
            try:
                job = jobs.get(history)
            except QueueError as error:
                fail(error, 1)
            record = {**job.as_dict(with_report=True), "events": jobs.events(history)}
        typer.echo(json.dumps(record, indent=2))
        return
    with _database_errors(jobs, "read"):
        rows = jobs.jobs(state, limit=limit, newest_first=limit is not None)
        newer = jobs.superseded_by()
    if as_json:  # superseded_by: a newer job of the same file replaced this one's output
        typer.echo(json.dumps([{**job.as_dict(), "superseded_by": newer.get(job.id)}
                               for job in rows], indent=2))
        return
    view = Table()
    for column in ("id", "state", "tries", "path", "output / error"):
        view.add_column(column, overflow="fold")
    for job in rows:
        shown = job.error if job.state in ("failed", "quarantined", "skipped") else job.output
        label = job.state + (f" (superseded by {newer[job.id]})" if job.id in newer else "")
        view.add_row(str(job.id), label, str(job.attempts), escape(job.path),
                     escape(shown or ""))
    Console().print(view)


@queue_app.command("retry")
def queue_retry(
    ids: Optional[list[int]] = typer.Argument(None, metavar="ID...", help="Job ids."),
    all_quarantined: bool = typer.Option(False, "--all-quarantined",
                                         help="Retry every quarantined job."),
    config: Optional[Path] = CONFIG_OPTION,
    state_dir: Optional[Path] = STATE_OPTION,
) -> None:
    """Queue failed, quarantined or skipped jobs again, with a fresh retry budget."""
    jobs = _open_queue(config, state_dir)
    with _database_errors(jobs, "change"):
        chosen = list(ids or []) + ([job.id for job in jobs.jobs(["quarantined"])]
                                    if all_quarantined else [])
        if not chosen:
            fail("give job ids (see `autodip-watch queue list`) or --all-quarantined")
        done = _queue_action(jobs.retry, chosen)
    say(f"queued again: {', '.join(map(str, done))}")


@queue_app.command("forget")
def queue_forget(
    ids: Optional[list[int]] = typer.Argument(None, metavar="ID...", help="Job ids."),
    state: Optional[str] = typer.Option(None, "--state", metavar="STATE",
                                        help="Forget every job in this state (not running)."),
    config: Optional[Path] = CONFIG_OPTION,
    state_dir: Optional[Path] = STATE_OPTION,
) -> None:
    """Delete jobs and their history. A forgotten file still present is taken again at the
    next start."""
    jobs = _open_queue(config, state_dir)
    with _database_errors(jobs, "change"):
        chosen = list(ids or [])
        if state is not None:
            if state == "running":
                fail("running jobs cannot be forgotten; stop the daemon first")
            chosen += [job.id for job in jobs.jobs([state])]
        if not chosen:
            fail("give job ids (see `autodip-watch queue list`) or --state")
        done = _queue_action(jobs.forget, chosen)
    say(f"forgotten: {len(done)} job(s)")


def _queue_action(action, ids: list[int]) -> list:
    """Run a queue change on ``ids``; a refused change is a clear error and exit 1."""
    try:
        return action(ids)
    except QueueError as error:
        fail(error, 1)


@contextlib.contextmanager
def _database_errors(jobs: JobQueue, doing: str) -> Iterator[None]:
    """A queue database this user cannot ``doing`` (read, change): a read-only state
    folder, a damaged file, a database kept busy: one line naming it, exit 1, never a
    traceback."""
    try:
        yield
    except sqlite3.Error as error:
        read_only = (getattr(error, "sqlite_errorname", "").startswith("SQLITE_READONLY")
                     or "readonly" in str(error))
        hint = (" (run it as a user who may write the state directory, e.g. the daemon's: "
                "sudo -u autodip ...)" if read_only else "")
        fail(f"cannot {doing} the queue in {jobs.path}: {error}{hint}", 1)
