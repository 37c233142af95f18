"""The SQLite job store, against a real database file: dedupe, states, backoff, recovery."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from autodip_watch.settings.sections import RetryPolicy
from autodip_watch.daemon.database import SCHEMA_VERSION
from autodip_watch.daemon.queue import JobQueue, QueueError

FAST_RETRY = RetryPolicy(max_attempts=3, backoff_seconds=0.2, backoff_factor=2,
                         max_backoff_seconds=1.0)


@pytest.fixture
def queue(tmp_path) -> JobQueue:
    return JobQueue(tmp_path / "state")


def add(queue: JobQueue, path="/data/a.tif", size=100, mtime=1, sha="aa", **kwargs):
    return queue.enqueue(path, size, mtime, sha, folder="/data", **kwargs)


def test_database_is_wal_in_the_state_directory(queue, tmp_path):
    assert queue.path == tmp_path / "state" / "queue.sqlite3"
    mode = sqlite3.connect(queue.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_same_file_version_is_queued_once(queue):
    first = add(queue)
    assert first is not None and first.state == "queued"
    assert add(queue) is None  # repeated event
    assert JobQueue(queue.state_dir).enqueue("/data/a.tif", 100, 1, "aa") is None  # restart
    assert queue.counts()["queued"] == 1
    assert queue.known("/data/a.tif", 100, 1)
    assert not queue.known("/data/a.tif", 101, 1)


def test_changed_file_is_a_new_job_and_supersedes_the_queued_one(queue):
    old = add(queue, size=100, mtime=1, sha="aa")
    new = add(queue, size=120, mtime=2, sha="bb")
    assert new is not None and new.id != old.id
    assert queue.get(old.id).state == "skipped"
    assert "superseded" in queue.get(old.id).error
    # A finished job is history, not superseded.
    queue.claim("w")
    queue.finish(new.id, "/data/a.autodip.ome.tif", {"planes": []}, 1.0, 1)
    newest = add(queue, size=130, mtime=3, sha="cc")
    assert queue.get(new.id).state == "done"
    assert newest.state == "queued"


def test_claim_runs_jobs_in_order_and_counts_attempts(queue):
    first, second = add(queue, "/d/1.tif"), add(queue, "/d/2.tif")
    claimed = queue.claim("cpu@1")
    assert claimed.id == first.id and claimed.state == "running" and claimed.attempts == 1
    assert claimed.worker == "cpu@1"
    assert queue.claim("cpu@1").id == second.id
    assert queue.claim("cpu@1") is None


def test_concurrent_claims_never_hand_out_a_job_twice(queue):
    for number in range(40):
        add(queue, f"/d/{number}.tif")
    taken: list[int] = []
    lock = threading.Lock()

    def claim_all():
        own = JobQueue(queue.state_dir)
        while (job := own.claim(threading.current_thread().name)) is not None:
            with lock:
                taken.append(job.id)

    threads = [threading.Thread(target=claim_all) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(taken) == list(range(1, 41))


def test_failure_backs_off_then_quarantines(queue):
    job = add(queue)
    queue.claim("w")
    assert queue.fail(job.id, "boom 1", FAST_RETRY) == "failed"
    failed = queue.get(job.id)
    assert failed.state == "failed" and failed.error == "boom 1"
    assert failed.not_before == pytest.approx(time.time() + 0.2, abs=0.15)
    assert queue.claim("w") is None  # backoff not over
    time.sleep(0.25)
    assert queue.claim("w").attempts == 2
    assert queue.fail(job.id, "boom 2", FAST_RETRY) == "failed"
    assert queue.get(job.id).not_before - time.time() > 0.25  # 0.2 * 2
    time.sleep(0.45)
    assert queue.claim("w").attempts == 3
    assert queue.fail(job.id, "boom 3", FAST_RETRY) == "quarantined"
    quarantined = queue.get(job.id)
    assert quarantined.state == "quarantined" and quarantined.error == "boom 3"
    time.sleep(0.3)
    assert queue.claim("w") is None
    states = [event["state"] for event in queue.events(job.id)]
    assert states == ["queued", "running", "failed", "running", "failed", "running", "quarantined"]


def test_backoff_is_exponential_and_capped():
    policy = RetryPolicy(max_attempts=9, backoff_seconds=10, backoff_factor=3,
                         max_backoff_seconds=100)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [10, 30, 90, 100]


def test_queued_jobs_go_before_retries(queue):
    job = add(queue, "/d/1.tif")
    queue.claim("w")
    queue.fail(job.id, "boom", RetryPolicy(backoff_seconds=0))
    fresh = add(queue, "/d/2.tif")
    assert queue.claim("w").id == fresh.id
    assert queue.claim("w").id == job.id


def test_crash_recovery_requeues_running_jobs_and_counts_the_attempt(queue):
    job = add(queue)
    queue.claim("w")
    # A new process after kill -9: the row still says running.
    restarted = JobQueue(queue.state_dir)
    recovered = restarted.recover(FAST_RETRY)
    assert [r.id for r in recovered] == [job.id]
    again = restarted.get(job.id)
    assert again.state == "queued" and again.attempts == 1
    assert restarted.claim("w").attempts == 2


def test_a_file_that_keeps_crashing_the_daemon_is_quarantined(queue):
    job = add(queue)
    policy = RetryPolicy(max_attempts=2)
    for _ in range(2):
        assert queue.claim("w").id == job.id
        JobQueue(queue.state_dir).recover(policy)
    final = queue.get(job.id)
    assert final.state == "quarantined"
    assert "stopped uncleanly 2 time(s)" in final.error


def test_release_returns_the_attempt(queue):
    job = add(queue)
    queue.claim("w")
    queue.progress(job.id, 1, 2, 1, 1, 5, 10)
    queue.release(job.id, "daemon stopping")
    released = queue.get(job.id)
    assert released.state == "queued" and released.attempts == 0 and released.iteration is None


def test_progress_and_fraction(queue):
    job = add(queue)
    queue.claim("w")
    queue.progress(job.id, 2, 4, 1, 2, 50, 100)  # plane 2 of 4, first of two tiles, half way
    running = queue.get(job.id)
    assert (running.plane, running.planes, running.iteration, running.iterations) == (2, 4, 50, 100)
    assert running.fraction_done() == pytest.approx((1 + 0.25) / 4)


def test_retry_and_forget(queue):
    job = add(queue)
    queue.claim("w")
    with pytest.raises(QueueError, match="running"):
        queue.forget([job.id])
    with pytest.raises(QueueError, match="only partial, failed, quarantined, skipped"):
        queue.retry([job.id])
    queue.fail(job.id, "bad", RetryPolicy(max_attempts=1))
    assert queue.get(job.id).state == "quarantined"
    assert queue.retry([job.id]) == [job.id]
    retried = queue.get(job.id)
    assert retried.state == "queued" and retried.attempts == 0 and retried.error is None
    assert queue.forget([job.id]) == [job.id]
    with pytest.raises(QueueError, match="no job"):
        queue.get(job.id)
    assert queue.events(job.id) == []
    assert not queue.known("/data/a.tif", 100, 1)  # taken again at the next scan
    with pytest.raises(QueueError, match="no job 999"):
        queue.retry([999])


def test_unreadable_files_enter_quarantined(queue):
    job = add(queue, state="quarantined", error="not a TIFF")
    assert job.state == "quarantined" and job.error == "not a TIFF" and job.attempts == 0
    assert queue.claim("w") is None


def test_history_and_throughput(queue):
    for number in range(3):
        job = add(queue, f"/d/{number}.tif")
        queue.claim("w")
        queue.finish(job.id, f"/d/{number}.autodip.ome.tif", None, 2.0, 4)
    rate = queue.throughput()
    assert rate["images_last_hour"] == 3
    assert rate["images_per_hour"] == pytest.approx(1800.0)
    assert rate["seconds_per_plane"] == pytest.approx(0.5)
    assert queue.counts()["done"] == 3
    assert [j.id for j in queue.jobs(["done"], limit=2, newest_first=True)] == [3, 2]


def test_heartbeat_row(queue):
    assert queue.daemon() is None
    queue.register_daemon(host="h", version="0", devices=["cpu"], watches=[{"path": "/d"}],
                          heartbeat_seconds=1.0, status="starting")
    queue.heartbeat(True, "3 waiting")
    info = queue.daemon()
    assert info["status"] == "3 waiting" and info["devices"] == ["cpu"]
    assert info["watches"] == [{"path": "/d"}] and info["stopped"] is None
    queue.daemon_stopped()
    assert queue.daemon()["stopped"] is not None


def test_opening_without_create_needs_an_existing_database(tmp_path):
    with pytest.raises(QueueError, match="no queue database"):
        JobQueue(tmp_path / "nothing", create=False)


def test_claim_can_prefer_jobs_of_one_fit_key(queue):
    a1 = add(queue, "/d/a1.tif", fit_key="d8/wasc/s4/300it@512x512")
    b1 = add(queue, "/d/b1.tif", fit_key="d5/w128/s4/1300it@512x512")
    a2 = add(queue, "/d/a2.tif", fit_key="d8/wasc/s4/300it@512x512")
    unknown = add(queue, "/d/c.tif")
    assert queue.get(a1.id).fit_key == "d8/wasc/s4/300it@512x512"
    first = queue.claim("w")
    assert first.id == a1.id
    assert queue.claim("w", prefer_key=first.fit_key).id == a2.id  # jumps over b1
    assert queue.claim("w", prefer_key=first.fit_key).id == b1.id  # none left: oldest
    assert queue.claim("w", prefer_key="anything").id == unknown.id


def test_claim_of_one_fit_key_only_takes_nothing_else(queue):
    a1 = add(queue, "/d/a1.tif", fit_key="d8/wasc/s4/300it@512x512")
    b1 = add(queue, "/d/b1.tif", fit_key="d5/w128/s4/1300it@512x512")
    a2 = add(queue, "/d/a2.tif", fit_key="d8/wasc/s4/300it@512x512")
    key = queue.claim("w").fit_key
    assert queue.claim("w", prefer_key=key, only_key=True).id == a2.id
    assert queue.claim("w", prefer_key=key, only_key=True) is None  # b1 stays queued
    assert queue.get(b1.id).state == "queued"
    assert queue.claim("w").id == b1.id
    assert a1.id < b1.id < a2.id


def test_a_schema_1_database_is_migrated(tmp_path):
    """A queue written before fit keys existed opens, keeps its jobs, takes keys, and
    (schema 3) the partial state with its missing and per-file source records."""
    state = tmp_path / "state"
    state.mkdir()
    old = sqlite3.connect(state / "queue.sqlite3")
    old.executescript("""
        CREATE TABLE jobs (id INTEGER PRIMARY KEY, path TEXT NOT NULL, size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL, folder TEXT, members TEXT,
            state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            not_before REAL NOT NULL DEFAULT 0, error TEXT, created REAL NOT NULL,
            updated REAL NOT NULL, started REAL, finished REAL, worker TEXT, output TEXT,
            seconds REAL, planes INTEGER, plane INTEGER, tile INTEGER, tiles INTEGER,
            iteration INTEGER, iterations INTEGER, progress_at REAL, report TEXT,
            UNIQUE (path, size, mtime_ns, sha256));
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
        INSERT INTO meta VALUES ('schema', '1');
        INSERT INTO jobs (path, size, mtime_ns, sha256, state, created, updated)
            VALUES ('/d/old.tif', 1, 1, 'aa', 'queued', 0, 0);
    """)
    old.close()
    queue = JobQueue(state)
    assert [(j.path, j.fit_key) for j in queue.jobs()] == [("/d/old.tif", None)]
    assert add(queue, "/d/new.tif", fit_key="k").fit_key == "k"
    schema = sqlite3.connect(state / "queue.sqlite3").execute(
        "SELECT value FROM meta WHERE key = 'schema'").fetchone()[0]
    assert schema == str(SCHEMA_VERSION) == "3"
    migrated = queue.get(1)
    assert (migrated.fraction, migrated.rate) == (None, None)  # schema 3 columns exist
    job = queue.enqueue("/d/part.tif", 5, 5, "bb", missing={"reason": "3 of 5 planes"},
                        sources=[{"file": "part.tif", "sha256": "bb"}], ctime_ns=7)
    queue.claim("w")
    queue.claim("w")
    queue.claim("w")
    queue.finish(job.id, "/d/part.tif.autodip.ome.tif", None, 1.0, 3, state="partial")
    assert queue.get(job.id).state == "partial"
    assert queue.get(job.id).missing_info() == {"reason": "3 of 5 planes"}
    assert queue.known("/d/part.tif", 5, 5, 7) and not queue.known("/d/part.tif", 5, 5, 8)
    assert queue.known("/d/old.tif", 1, 1, 99)  # rows from before ctimes match any ctime


@pytest.mark.parametrize("command", [
    ["queue", "retry", "1"],
    ["queue", "retry", "--all-quarantined"],
    ["queue", "forget", "1"],
    ["queue", "forget", "--state", "quarantined"],
], ids=["retry-id", "retry-all", "forget-id", "forget-state"])
def test_queue_changes_on_a_state_it_may_only_read_are_one_clear_line(command):
    """A person who may read the state folder but not write it (README: `status` works
    for them) gets one line naming the database and what to do when they try to change
    the queue, exit 1, never a traceback; `queue list` still works. A real read-only
    mount of a real database, the CLI as a subprocess."""
    from helpers.acquisition import remount, tiny_filesystem
    from helpers.daemon import cli

    with tiny_filesystem("4m") as disk:
        state = disk / "state"
        queue = JobQueue(state)
        job = queue.enqueue(str(disk / "cells.ome.tif"), 10, 1, "0" * 64)
        queue.quarantine(job.id, "needs a person")
        queue.close()
        remount(disk, "ro")
        try:
            result = cli(*command, "--state-dir", str(state), check=False)
            listed = cli("queue", "list", "--state-dir", str(state), "--json", check=False)
        finally:
            remount(disk, "rw")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot change the queue in "
                                                   f"{state / 'queue.sqlite3'}:"), lines
    assert listed.returncode == 0 and '"quarantined"' in listed.stdout


@pytest.mark.parametrize("command, doing", [
    (["queue", "list"], "read"),
    (["queue", "list", "--history", "1"], "read"),
    (["queue", "retry", "1"], "change"),
    (["queue", "retry", "--all-quarantined"], "change"),
    (["queue", "forget", "1"], "change"),
    (["queue", "forget", "--state", "failed"], "change"),
], ids=["list", "history", "retry-id", "retry-all", "forget-id", "forget-state"])
def test_queue_commands_on_a_damaged_database_are_one_clear_line(tmp_path, command, doing):
    """A queue database that is not one (damaged, overwritten): every queue command says
    so in one line naming it, exit 1, never a traceback (as `status`, which exits 4)."""
    from helpers.daemon import cli

    state = tmp_path / "state"
    state.mkdir()
    (state / "queue.sqlite3").write_bytes(b"not a database, 100 bytes of it " * 4)
    result = cli(*command, "--state-dir", str(state), check=False)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.strip().splitlines() == [
        f"error: cannot {doing} the queue in {state / 'queue.sqlite3'}: file is not a database"]
