"""The queue's SQLite file: schema, migrations, one connection per thread, transactions.

WAL lets ``status`` read while the daemon writes; a reader that may not write the state
folder opens it read-only, or as an immutable snapshot where even that needs a write.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .jobs import STATES, QueueError

DATABASE_NAME = "queue.sqlite3"
#: 2: jobs.fit_key; 3: state partial, jobs.missing/sources/ctime_ns/fraction/rate,
#: waiting.state/detail
SCHEMA_VERSION = 3

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs (
    id          INTEGER PRIMARY KEY,
    path        TEXT    NOT NULL,
    size        INTEGER NOT NULL,
    mtime_ns    INTEGER NOT NULL,
    sha256      TEXT    NOT NULL,
    folder      TEXT,
    members     TEXT,
    state       TEXT    NOT NULL CHECK (state IN ({", ".join(repr(s) for s in STATES)})),
    attempts    INTEGER NOT NULL DEFAULT 0,
    not_before  REAL    NOT NULL DEFAULT 0,
    error       TEXT,
    created     REAL    NOT NULL,
    updated     REAL    NOT NULL,
    started     REAL,
    finished    REAL,
    worker      TEXT,
    output      TEXT,
    seconds     REAL,
    planes      INTEGER,
    plane       INTEGER,
    tile        INTEGER,
    tiles       INTEGER,
    iteration   INTEGER,
    iterations  INTEGER,
    progress_at REAL,
    report      TEXT,
    fit_key     TEXT,
    fraction    REAL,
    rate        REAL,
    missing     TEXT,
    sources     TEXT,
    ctime_ns    INTEGER,
    UNIQUE (path, size, mtime_ns, sha256)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, not_before);
CREATE INDEX IF NOT EXISTS jobs_path ON jobs (path, size, mtime_ns);
CREATE TABLE IF NOT EXISTS events (
    id      INTEGER PRIMARY KEY,
    job_id  INTEGER NOT NULL,
    at      REAL    NOT NULL,
    state   TEXT    NOT NULL,
    message TEXT
);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id);
CREATE TABLE IF NOT EXISTS daemon (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    pid       INTEGER,
    host      TEXT,
    version   TEXT,
    devices   TEXT,
    watches   TEXT,
    started   REAL,
    heartbeat REAL,
    heartbeat_seconds REAL,
    stopped   REAL,
    healthy   INTEGER,
    status    TEXT
);
CREATE TABLE IF NOT EXISTS waiting (
    path   TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    since  REAL NOT NULL,
    state  TEXT,
    detail TEXT
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""



class Database:
    """The SQLite file of a state directory. Cheap to construct; connections are per
    thread (sqlite3 connections are not shareable)."""

    def __init__(self, state_dir: str | Path, create: bool = True) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / DATABASE_NAME
        self._local = threading.local()
        #: How the database is open: "read-write"; for readers (create=False) that may
        #: not write the folder, "read-only" or, where even that needs a write (a WAL
        #: database whose -shm file is gone, after a clean stop), "snapshot" (SQLite's
        #: immutable mode: the main file as it is, without the write-ahead log).
        self.access = "read-write"
        self._create = create
        if create:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            # executescript manages its own transaction, so the script brings its own.
            self._connect().executescript(
                f"BEGIN IMMEDIATE;\n{_SCHEMA}\nINSERT OR IGNORE INTO meta VALUES "
                f"('schema', '{SCHEMA_VERSION}');\nCOMMIT;")
            self._migrate()
        elif not self.path.exists():
            raise QueueError(f"no queue database at {self.path} (has the daemon run with "
                             f"this state directory?)")

    def _migrate(self) -> None:
        """Bring a database of an older version up to this schema.

        Columns are added; the jobs table is rebuilt once (schema 3) because SQLite
        cannot change the CHECK constraint that lists the states.
        """
        with self._transaction() as db:
            columns = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
            if "fit_key" not in columns:  # schema 1
                db.execute("ALTER TABLE jobs ADD COLUMN fit_key TEXT")
                columns.add("fit_key")
            if "missing" not in columns:  # schema 2 -> 3
                create = _SCHEMA.split("CREATE TABLE IF NOT EXISTS jobs", 1)[1].split(");", 1)[0]
                db.execute(f"CREATE TABLE jobs_v3{create});")
                shared = ", ".join(sorted(columns))
                db.execute(f"INSERT INTO jobs_v3 ({shared}) SELECT {shared} FROM jobs")
                db.execute("DROP TABLE jobs")
                db.execute("ALTER TABLE jobs_v3 RENAME TO jobs")
                db.execute("CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, not_before)")
                db.execute("CREATE INDEX IF NOT EXISTS jobs_path ON jobs (path, size, mtime_ns)")
            waiting = {row["name"] for row in db.execute("PRAGMA table_info(waiting)")}
            for column in ("state", "detail"):
                if column not in waiting:
                    db.execute(f"ALTER TABLE waiting ADD COLUMN {column} TEXT")
            for column in ("fraction", "rate"):  # a schema-3 database of a development build
                if column not in {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {column} REAL")
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))

    def _connect(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = self._open(str(self.path), uri=False)
                if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    db.execute("PRAGMA journal_mode = WAL")
            except sqlite3.OperationalError:
                if self._create:
                    raise
                db = self._open_read_only()
            self._local.db = db
        return db

    def _open(self, target: str, uri: bool) -> sqlite3.Connection:
        db = sqlite3.connect(target, timeout=30, isolation_level=None, uri=uri)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA busy_timeout = 30000")
        db.execute("SELECT count(*) FROM sqlite_master").fetchall()  # opens the file for real
        return db

    def _open_read_only(self) -> sqlite3.Connection:
        """For a reader that cannot write the state folder (``status`` by another user,
        a read-only mount): read-only, else the immutable snapshot."""
        from urllib.parse import quote

        base = f"file:{quote(str(self.path.absolute()))}"
        try:
            db = self._open(f"{base}?mode=ro", uri=True)
            self.access = "read-only"
        except sqlite3.OperationalError:
            db = self._open(f"{base}?immutable=1", uri=True)
            self.access = "snapshot"
        return db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: take the write lock up front, so read-then-write is atomic."""
        db = self._connect()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def check_integrity(self, most: int = 5) -> None:
        """SQLite's ``quick_check`` of the whole file (every page, not only those opening
        it reads): damage found now is a clear error at start rather than a job lost
        later. O(size of the file); the daemon runs it once when it starts.

        Raises
        ------
        sqlite3.DatabaseError
            The file is damaged; the message names up to ``most`` of the problems.
        """
        rows = [row[0] for row in self._connect().execute(f"PRAGMA quick_check({int(most)})")]
        if rows != ["ok"]:
            raise sqlite3.DatabaseError("; ".join(" ".join(row.split()) for row in rows))

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
