"""The job store: one SQLite file (WAL) in the state directory.

A job is one raw file version, keyed by (path, size, mtime, sha256): repeated events and
restarts find the existing row instead of adding one, and a raw file that changes is a
new job. States::

    queued -> running -> done
                      -> partial (done from an incomplete file: `missing` names what lacked)
                      -> failed  (waits `not_before`, then runs again)
                      -> quarantined (after the last attempt, or at once when the output
                                      path holds a file that is not ours; a person looks)
                      -> skipped (the raw file vanished or changed before it ran, or a
                                  newer version of it was queued)

A version whose content (SHA-256) equals the latest job of its path, only its times
changed (``touch``, ``cp -p`` of the same bytes), adds no job: the latest job takes the
new size/mtime/ctime and an event says so (:meth:`JobQueue.same_content`).

Attempts are counted when a job starts, so a file that kills the daemon (OOM, driver
crash) is quarantined after ``max_attempts`` restarts instead of crash-looping; a
clean stop (SIGTERM) gives its attempt back. Rows are never deleted except by
``forget``: they are the history ``status`` reads. Every transition is also appended
to ``events``.

Each thread uses its own connection (sqlite3 connections are not shareable); WAL lets
``status`` read while the daemon writes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable

from .database import DATABASE_NAME, Database
from .jobs import FINISHED, RETRYABLE, STATES, Job, QueueError, RetryRule

__all__ = ["DATABASE_NAME", "FINISHED", "RETRYABLE", "STATES", "Job", "JobQueue",
           "QueueError", "RetryRule"]


class JobQueue(Database):
    """The SQLite job store (module docstring): what the watcher, the executors, the CLI
    and ``status`` do with jobs."""

    @staticmethod
    def _event(db: sqlite3.Connection, job_id: int, state: str, message: str | None,
               now: float) -> None:
        db.execute("INSERT INTO events (job_id, at, state, message) VALUES (?, ?, ?, ?)",
                   (job_id, now, state, message))

    def _set(self, db: sqlite3.Connection, job_id: int, state: str, message: str | None,
             now: float, **columns) -> None:
        assignments = ", ".join(f"{name} = ?" for name in columns)
        db.execute(f"UPDATE jobs SET state = ?, updated = ?{', ' if columns else ''}{assignments} "
                   f"WHERE id = ?", (state, now, *columns.values(), job_id))
        self._event(db, job_id, state, message, now)

    # ------------------------------------------------------------------ watcher side

    def known(self, path: str, size: int, mtime_ns: int, ctime_ns: int | None = None) -> bool:
        """Is this file version already recorded (in any state)? Saves re-hashing it.

        A version is (size, mtime, ctime): content replaced under a preserved mtime still
        changes the ctime, so it is hashed again. Rows of older versions have no ctime.
        """
        row = self._connect().execute(
            "SELECT 1 FROM jobs WHERE path = ? AND size = ? AND mtime_ns = ? "
            "AND (? IS NULL OR ctime_ns IS NULL OR ctime_ns = ?) LIMIT 1",
            (path, size, mtime_ns, ctime_ns, ctime_ns)).fetchone()
        return row is not None

    def latest(self, path: str) -> Job | None:
        """The newest job of ``path``, or None."""
        row = self._connect().execute("SELECT * FROM jobs WHERE path = ? ORDER BY id DESC "
                                      "LIMIT 1", (path,)).fetchone()
        return Job(**dict(row)) if row is not None else None

    def enqueue(self, path: str, size: int, mtime_ns: int, sha256: str, folder: str | None = None,
                state: str = "queued", error: str | None = None,
                members: list[str] | None = None, fit_key: str | None = None,
                missing: dict | None = None, sources: list[dict] | None = None,
                ctime_ns: int | None = None, planes: int | None = None) -> Job | None:
        """Add a job; returns None when this exact file version already has one.

        ``planes``: the planes its metadata declares, where known before it runs (the
        queue's ETA counts them; the worker's progress and the finished job replace it).

        Older jobs of the same path that have not run to the end (queued, failed,
        quarantined) are marked skipped: only the newest content of a file is worth
        denoising, and a version that was never right is no longer a problem to show.
        """
        if state not in ("queued", "quarantined"):
            raise ValueError("new jobs are queued, or quarantined when unreadable")
        now = time.time()
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO jobs (path, size, mtime_ns, sha256, folder, members, state, "
                "error, created, updated, finished, fit_key, missing, sources, ctime_ns, planes) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (path, size, mtime_ns, sha256, folder, json.dumps(members) if members else None,
                 state, error, now, now,
                 now if state == "quarantined" else None, fit_key,
                 json.dumps(missing) if missing else None,
                 json.dumps(sources) if sources else None, ctime_ns,
                 planes if state == "queued" else None))
            if cursor.rowcount == 0:
                return None
            job_id = cursor.lastrowid
            self._event(db, job_id, state, error or ("taken incomplete: " + missing["reason"]
                                                     if missing else "file settled"), now)
            for (older, older_state) in db.execute(
                    "SELECT id, state FROM jobs WHERE path = ? AND id != ? AND state IN "
                    "('queued', 'failed', 'quarantined')", (path, job_id)).fetchall():
                note = f"superseded by job {job_id} (the file changed)"
                self._set(db, older, "skipped", f"{note}; was {older_state}", now, finished=now,
                          error=f"superseded by job {job_id}")
        return self.get(job_id)

    def same_content(self, job_id: int, size: int, mtime_ns: int, ctime_ns: int | None,
                     note: str) -> bool:
        """Record a new version of a job's file whose content is the job's (only times
        changed): the job takes its size/mtime/ctime; an event says so. False when that
        version is already another row's."""
        now = time.time()
        try:
            with self._transaction() as db:
                job = self._row(db, job_id)
                db.execute("UPDATE jobs SET size = ?, mtime_ns = ?, ctime_ns = ?, updated = ? "
                           "WHERE id = ?", (size, mtime_ns, ctime_ns, now, job_id))
                self._event(db, job_id, job.state, note, now)
        except sqlite3.IntegrityError:
            return False
        return True

    def set_waiting(self, waiting: dict[str, tuple]) -> None:
        """Replace the list of files the watcher sees but has not taken yet, and why.

        ``waiting``: path -> (reason, since) or (reason, since, state, detail dict), where
        state is settling, writing, acquiring, waiting-set or incomplete.
        """
        rows = []
        for path, entry in waiting.items():
            reason, since, state, detail = (tuple(entry) + (None, None))[:4]
            rows.append((path, reason, since, state, json.dumps(detail) if detail else None))
        with self._transaction() as db:
            db.execute("DELETE FROM waiting")
            db.executemany("INSERT INTO waiting (path, reason, since, state, detail) "
                           "VALUES (?, ?, ?, ?, ?)", rows)

    # ------------------------------------------------------------------ worker side

    def claim(self, worker: str, prefer_key: str | None = None,
              only_key: bool = False) -> Job | None:
        """Take the next runnable job (queued first, then failed ones whose backoff is over).

        With ``prefer_key``, the oldest queued job of that fit key comes first, so that a
        batching worker runs files whose planes can share batches; with ``only_key`` too,
        no other job is taken (a cluster task of several files is one fit key).
        """
        now = time.time()
        with self._transaction() as db:
            row = None
            if prefer_key is not None:
                row = db.execute(
                    "SELECT id, attempts FROM jobs WHERE state = 'queued' AND fit_key = ? "
                    "ORDER BY id LIMIT 1", (prefer_key,)).fetchone()
            if row is None and only_key:
                return None
            if row is None:
                row = db.execute(
                    "SELECT id, attempts FROM jobs WHERE state = 'queued' "
                    "OR (state = 'failed' AND not_before <= ?) "
                    "ORDER BY state = 'failed', id LIMIT 1", (now,)).fetchone()
            if row is None:
                return None
            attempt = row["attempts"] + 1
            self._set(db, row["id"], "running", f"attempt {attempt} on {worker}", now,
                      attempts=attempt, started=now, worker=worker, finished=None,
                      plane=None, planes=None, tile=None, tiles=None, iteration=None,
                      iterations=None, progress_at=None, fraction=None, rate=None)
        return self.get(row["id"])

    def progress(self, job_id: int, plane: int, planes: int, tile: int, tiles: int,
                 iteration: int, iterations: int, fraction: float | None = None,
                 rate: float | None = None) -> None:
        """Record where the fit is; not an event (the worker throttles these writes).

        ``fraction`` (of the job, in [0, 1]) and ``rate`` (fraction per second since the
        first iteration) come from :class:`autodip_watch.progress.FitProgress`; ``status``
        computes the ETA from them.
        """
        self._connect().execute(
            "UPDATE jobs SET plane = ?, planes = ?, tile = ?, tiles = ?, iteration = ?, "
            "iterations = ?, fraction = ?, rate = ?, progress_at = ? "
            "WHERE id = ? AND state = 'running'",
            (plane, planes, tile, tiles, iteration, iterations, fraction, rate, time.time(),
             job_id))

    def placed(self, job_id: int, worker: str) -> bool:
        """A running job started on (or moved to) ``worker``, e.g. a Dask worker.

        Restarts the job's clock and progress: time spent waiting for a free GPU, or on a
        worker that died, is not this run's. Returns whether anything changed.
        """
        now = time.time()
        with self._transaction() as db:
            row = db.execute("SELECT worker FROM jobs WHERE id = ? AND state = 'running'",
                             (job_id,)).fetchone()
            if row is None or row["worker"] == worker:
                return False
            db.execute("UPDATE jobs SET worker = ?, started = ?, updated = ?, plane = NULL, "
                       "planes = NULL, tile = NULL, tiles = NULL, iteration = NULL, "
                       "iterations = NULL, progress_at = NULL, fraction = NULL, rate = NULL "
                       "WHERE id = ?",
                       (worker, now, now, job_id))
            self._event(db, job_id, "running", f"running on {worker}", now)
        return True

    def finish(self, job_id: int, output: str, report: dict | None, seconds: float,
               planes: int | None, message: str = "done", state: str = "done") -> None:
        """The job ran to the end: ``done``, or ``partial`` for an incomplete input."""
        if state not in FINISHED:
            raise ValueError(f"a finished job is {' or '.join(FINISHED)}, not {state}")
        now = time.time()
        with self._transaction() as db:
            self._set(db, job_id, state, message, now, finished=now, output=output,
                      seconds=seconds, planes=planes, error=None, not_before=0,
                      report=json.dumps(report) if report is not None else None)

    def quarantine(self, job_id: int, error: str) -> None:
        """Straight to quarantine, without retries: a person must act (e.g. a file at
        the output path that is not ours)."""
        now = time.time()
        with self._transaction() as db:
            self._set(db, job_id, "quarantined", error, now, error=error, finished=now)

    def fail(self, job_id: int, error: str, retry: RetryRule) -> str:
        """Record a failed attempt: failed with backoff, or quarantined after the last one."""
        now = time.time()
        with self._transaction() as db:
            job = self._row(db, job_id)
            if job.attempts >= retry.max_attempts:
                self._set(db, job_id, "quarantined",
                          f"attempt {job.attempts} of {retry.max_attempts} failed: {error}", now,
                          error=error, finished=now)
                return "quarantined"
            delay = retry.delay(job.attempts)
            self._set(db, job_id, "failed",
                      f"attempt {job.attempts} of {retry.max_attempts} failed, retry in "
                      f"{delay:.0f} s: {error}", now, error=error, not_before=now + delay)
            return "failed"

    def release(self, job_id: int, reason: str) -> None:
        """Back to the queue without counting the attempt (clean shutdown)."""
        now = time.time()
        with self._transaction() as db:
            job = self._row(db, job_id)
            self._set(db, job_id, "queued", reason, now, attempts=max(0, job.attempts - 1),
                      started=None, plane=None, iteration=None, progress_at=None,
                      fraction=None, rate=None)

    def skip(self, job_id: int, reason: str) -> None:
        now = time.time()
        with self._transaction() as db:
            self._set(db, job_id, "skipped", reason, now, error=reason, finished=now)

    def recover(self, retry: RetryRule) -> list[Job]:
        """After a crash: running jobs go back to the queue (the crash counts as an attempt)."""
        now = time.time()
        recovered = []
        with self._transaction() as db:
            for row in db.execute("SELECT * FROM jobs WHERE state = 'running'").fetchall():
                job = Job(**dict(row))
                if job.attempts >= retry.max_attempts:
                    error = (f"the daemon stopped uncleanly {job.attempts} time(s) while "
                             f"processing this file (crash, kill or out of memory?)")
                    self._set(db, job.id, "quarantined", error, now, error=error, finished=now)
                else:
                    self._set(db, job.id, "queued", "daemon restarted after an unclean stop; "
                              "the interrupted attempt counts", now, started=None)
                recovered.append(job)
        return recovered

    # ------------------------------------------------------------------ people side

    def retry(self, job_ids: Iterable[int]) -> list[int]:
        """Queue failed, quarantined or skipped jobs again, with a fresh attempt budget."""
        now = time.time()
        done = []
        with self._transaction() as db:
            for job_id in job_ids:
                job = self._row(db, job_id)
                if job.state not in RETRYABLE:
                    raise QueueError(f"job {job_id} is {job.state}; only "
                                     f"{', '.join(RETRYABLE)} jobs can be retried")
                self._set(db, job_id, "queued", "retry requested", now, attempts=0,
                          not_before=0, error=None, finished=None)
                done.append(job_id)
        return done

    def forget(self, job_ids: Iterable[int]) -> list[int]:
        """Delete jobs and their history; the file is taken again at the next (re)scan."""
        done = []
        with self._transaction() as db:
            for job_id in job_ids:
                job = self._row(db, job_id)
                if job.state == "running":
                    raise QueueError(f"job {job_id} is running; stop the daemon or wait")
                db.execute("DELETE FROM events WHERE job_id = ?", (job_id,))
                db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
                done.append(job_id)
        return done

    # ------------------------------------------------------------------ reading

    @staticmethod
    def _row(db: sqlite3.Connection, job_id: int) -> Job:
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise QueueError(f"no job {job_id}")
        return Job(**dict(row))

    def get(self, job_id: int) -> Job:
        return self._row(self._connect(), job_id)

    def jobs(self, states: Iterable[str] | None = None, limit: int | None = None,
             newest_first: bool = False, order: str = "id") -> list[Job]:
        states = list(states or [])
        where = f"WHERE state IN ({', '.join('?' * len(states))})" if states else ""
        direction = "DESC" if newest_first else "ASC"
        sql = f"SELECT * FROM jobs {where} ORDER BY {order} {direction}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [Job(**dict(row)) for row in self._connect().execute(sql, states).fetchall()]

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for row in self._connect().execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
            counts[row[0]] = row[1]
        return counts

    def superseded_by(self) -> dict[int, int]:
        """Jobs of a file that has a newer job (a new version, a retry by hand): job id ->
        the id of its file's newest job. Their outputs and errors are of an older
        version: ``status`` and ``queue list`` say so."""
        rows = self._connect().execute(
            "SELECT j.id, n.newest FROM jobs j JOIN (SELECT path, MAX(id) AS newest FROM jobs "
            "GROUP BY path) n ON n.path = j.path WHERE j.id < n.newest")
        return {row[0]: row[1] for row in rows}

    def superseded_counts(self) -> dict[str, int]:
        """Per state, how many jobs are superseded (:meth:`superseded_by`)."""
        counts = dict.fromkeys(STATES, 0)
        for row in self._connect().execute(
                "SELECT j.state, COUNT(*) FROM jobs j WHERE EXISTS (SELECT 1 FROM jobs k "
                "WHERE k.path = j.path AND k.id > j.id) GROUP BY j.state"):
            counts[row[0]] = row[1]
        return counts

    def events(self, job_id: int) -> list[dict]:
        return [dict(row) for row in self._connect().execute(
            "SELECT at, state, message FROM events WHERE job_id = ? ORDER BY id", (job_id,))]

    def waiting(self) -> list[dict]:
        rows = []
        for row in self._connect().execute("SELECT * FROM waiting ORDER BY since"):
            item = dict(row)
            item["detail"] = json.loads(item["detail"]) if item.get("detail") else None
            rows.append(item)
        return rows

    def current_jobs(self, states: Iterable[str], limit: int | None = None) -> list[Job]:
        """Jobs in ``states`` that are the newest of their path (not superseded), newest
        first: what still matters about each file."""
        states = list(states)
        sql = (f"SELECT * FROM jobs j WHERE state IN ({', '.join('?' * len(states))}) AND NOT "
               f"EXISTS (SELECT 1 FROM jobs k WHERE k.path = j.path AND k.id > j.id) "
               f"ORDER BY updated DESC")
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [Job(**dict(row)) for row in self._connect().execute(sql, states).fetchall()]

    def throughput(self, window_seconds: float = 3600.0, sample: int = 50) -> dict:
        """Images finished in the last hour, and the rate and s/plane of recent jobs."""
        db = self._connect()
        now = time.time()
        last_hour = db.execute("SELECT COUNT(*) FROM jobs WHERE state IN ('done', 'partial') "
                               "AND finished >= ? AND seconds IS NOT NULL",
                               (now - window_seconds,)).fetchone()[0]
        rows = db.execute("SELECT seconds, planes FROM jobs WHERE state IN ('done', 'partial') "
                          "AND seconds > 0 ORDER BY finished DESC LIMIT ?", (sample,)).fetchall()
        seconds = sum(row["seconds"] for row in rows)
        planes = sum(row["planes"] or 0 for row in rows)
        return {"images_last_hour": last_hour,
                "images_per_hour": round(3600.0 * len(rows) / seconds, 2) if seconds else None,
                "seconds_per_plane": round(seconds / planes, 3) if planes else None,
                "planes_per_job": round(planes / len(rows), 2) if planes else None,
                "sample_jobs": len(rows)}

    # ------------------------------------------------------------------ daemon row

    def register_daemon(self, **fields) -> None:
        now = time.time()
        fields = {"pid": os.getpid(), "started": now, "heartbeat": now, "stopped": None,
                  "healthy": 1, **fields}
        for key in ("devices", "watches"):
            if key in fields and not isinstance(fields[key], str):
                fields[key] = json.dumps(fields[key])
        with self._transaction() as db:
            db.execute("DELETE FROM daemon")
            db.execute(f"INSERT INTO daemon (id, {', '.join(fields)}) VALUES "
                       f"(1, {', '.join('?' * len(fields))})", tuple(fields.values()))

    def heartbeat(self, healthy: bool, status: str, watches: list[dict] | None = None) -> None:
        """Written by the daemon every few seconds; raises if the database is not writable."""
        columns = {"heartbeat": time.time(), "healthy": int(healthy), "status": status}
        if watches is not None:
            columns["watches"] = json.dumps(watches)
        assignments = ", ".join(f"{name} = ?" for name in columns)
        with self._transaction() as db:
            db.execute(f"UPDATE daemon SET {assignments} WHERE id = 1 AND pid = ?",
                       (*columns.values(), os.getpid()))

    def daemon_stopped(self) -> None:
        with self._transaction() as db:
            db.execute("UPDATE daemon SET stopped = ?, status = 'stopped' WHERE id = 1 AND pid = ?",
                       (time.time(), os.getpid()))

    def set_info(self, key: str, value: dict | None) -> None:
        """Store (or with None, drop) a JSON document under ``key``, e.g. the cluster view."""
        with self._transaction() as db:
            if value is None:
                db.execute("DELETE FROM meta WHERE key = ?", (f"info.{key}",))
            else:
                db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                           (f"info.{key}", json.dumps(value)))

    def info(self, key: str) -> dict | None:
        row = self._connect().execute("SELECT value FROM meta WHERE key = ?",
                                      (f"info.{key}",)).fetchone()
        return json.loads(row[0]) if row else None

    def daemon(self) -> dict | None:
        row = self._connect().execute("SELECT * FROM daemon WHERE id = 1").fetchone()
        if row is None:
            return None
        info = dict(row)
        for key in ("devices", "watches"):
            info[key] = json.loads(info[key]) if info.get(key) else []
        return info
