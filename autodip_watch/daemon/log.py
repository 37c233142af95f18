"""Structured logging: readable lines on a terminal, journal entries under systemd, JSON
lines elsewhere.

Every record carries key/value context (``job_id``, ``path`` ...). Where the output goes
decides the format:

- **journald** (systemd started us with stderr connected to the journal: the
  ``JOURNAL_STREAM`` variable names stderr's device and inode, systemd.exec(5)): each
  record is sent with journald's native protocol (a datagram to
  ``/run/systemd/journal/socket``, via ``logging-journald``) with its ``PRIORITY`` and
  every key as a field (``JOB_ID=42``, ``PATH=/data/x.tif``, ``DEVICE=cuda:0``, ...), so
  ``journalctl -u autodip-watch -p err`` and ``journalctl JOB_ID=42`` work. Where the
  socket is absent (a container without journald's socket), or a send fails, the record
  is written to stderr as a readable line prefixed with its syslog priority ``<N>``
  (sd-daemon(3)), which journald turns into the entry's priority.
- **a terminal**: readable, coloured lines.
- **anything else** (a file, a pipe, a log collector): one JSON object per line.

``AUTODIP_WATCH_JOURNAL_SOCKET`` names another socket for the native protocol (tests
bind their own); ``AUTODIP_WATCH_LOG_FORMAT`` (``console``, ``json``, ``journal``) forces
a format.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
from pathlib import Path
from typing import IO, Any

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}

#: syslog priorities (sd-daemon(3)) of structlog's level names.
PRIORITIES = {"debug": 7, "info": 6, "notice": 5, "warning": 4, "warn": 4, "error": 3,
              "exception": 3, "critical": 2, "fatal": 2}
#: The journal's default socket (systemd-journald.service(8)).
JOURNAL_SOCKET = "/run/systemd/journal/socket"
SOCKET_ENV = "AUTODIP_WATCH_JOURNAL_SOCKET"
FORMAT_ENV = "AUTODIP_WATCH_LOG_FORMAT"
FORMATS = ("console", "json", "journal")
IDENTIFIER = "autodip-watch"
# Keys that are not fields of their own: the level is PRIORITY, the event is in MESSAGE
# and EVENT, journald stamps its own time.
_NOT_FIELDS = {"level", "timestamp"}


def under_journald(stream: IO | None = None) -> bool:
    """Whether ``stream`` (default stderr) is connected to the journal: systemd sets
    ``JOURNAL_STREAM=<device>:<inode>`` of the stream it connected (systemd.exec(5))."""
    value = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    stream = stream if stream is not None else sys.stderr
    try:
        info = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


def choose_format(stream: IO | None = None) -> str:
    """``journal`` under journald, ``console`` on a terminal, else ``json``."""
    forced = os.environ.get(FORMAT_ENV, "").strip().lower()
    if forced in FORMATS:
        return forced
    stream = stream if stream is not None else sys.stderr
    if under_journald(stream):
        return "journal"
    try:
        return "console" if stream.isatty() else "json"
    except (AttributeError, ValueError):
        return "json"


def field_name(key: str) -> str:
    """A journal field name for a log key: upper case letters, digits and underscores, not
    starting with an underscore or a digit (those are journald's own), at most 64 long."""
    name = re.sub(r"[^A-Z0-9_]", "_", key.upper()).lstrip("_")
    if not name or name[0].isdigit():
        name = "F_" + name
    return name[:64]


def readable(event_dict: dict) -> str:
    """``job.failed job_id=42 path=/x.tif error="..."``: the event, then its context."""
    parts = [str(event_dict.get("event", ""))]
    for key, value in event_dict.items():
        if key in ("event", "level", "timestamp", "logger", "exception"):
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        if isinstance(value, str) and (not value or re.search(r'[\s="]', value)):
            text = json.dumps(value)
        parts.append(f"{key}={text}")
    line = " ".join(parts)
    if event_dict.get("exception"):
        line += "\n" + str(event_dict["exception"])
    return line


class JournalSink:
    """Writes records to the journal: native fields through the socket, else ``<N>`` lines.

    Thread-safe; one per process (``configure`` makes it).
    """

    def __init__(self, stream: IO, socket_path: str | None = None) -> None:
        self.stream = stream
        self.socket_path = socket_path or os.environ.get(SOCKET_ENV) or JOURNAL_SOCKET
        self.transport = None
        self._lock = threading.Lock()
        if Path(self.socket_path).exists():
            try:
                from logging_journald import JournaldTransport

                self.transport = JournaldTransport(self.socket_path)
            except OSError:
                self.transport = None  # not listening: the <N> lines still carry priorities

    @property
    def native(self) -> bool:
        return self.transport is not None

    def fields(self, event_dict: dict) -> list[tuple[str, Any]]:
        """The journal entry of a record: MESSAGE, PRIORITY, SYSLOG_IDENTIFIER, and every
        key as a field (non-text values as JSON)."""
        level = str(event_dict.get("level", "info")).lower()
        entry: list[tuple[str, Any]] = [
            ("MESSAGE", readable(event_dict)), ("PRIORITY", PRIORITIES.get(level, 6)),
            ("SYSLOG_IDENTIFIER", IDENTIFIER), ("EVENT", str(event_dict.get("event", "")))]
        taken = {name for name, _ in entry}
        for key, value in event_dict.items():
            if key in _NOT_FIELDS or key == "event":
                continue
            name = field_name(key)
            if name in taken:
                name = f"AUTODIP_{name}"[:64]
            taken.add(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                value = json.dumps(value, default=str)
            entry.append((name, value))
        return entry

    def emit(self, event_dict: dict) -> None:
        with self._lock:
            if self.transport is not None:
                try:
                    self.transport.send(self.fields(event_dict))
                    return
                except OSError:
                    pass  # journald restarting or gone: this record goes to stderr
            self.write_line(event_dict)

    def write_line(self, event_dict: dict) -> None:
        """``<N>text``: each line of a multi-line record carries the prefix, so a traceback
        stays at the record's priority."""
        level = str(event_dict.get("level", "info")).lower()
        prefix = f"<{PRIORITIES.get(level, 6)}>"
        text = readable(event_dict)
        try:
            self.stream.write("".join(f"{prefix}{line}\n" for line in text.splitlines() or [""]))
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def processor(self, logger, method_name: str, event_dict: dict):
        """structlog's last processor: emit, and drop the record (nothing left to print)."""
        self.emit(event_dict)
        raise structlog.DropEvent


class _JournalHandler(logging.Handler):
    """Routes stdlib logging (watchdog, Dask, prometheus) into the journal sink."""

    def __init__(self, sink: JournalSink) -> None:
        super().__init__()
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            event_dict = {"event": record.getMessage(), "level": record.levelname.lower(),
                          "logger": record.name}
            if record.exc_info:
                event_dict["exception"] = logging.Formatter().formatException(record.exc_info)
            self.sink.emit(event_dict)
        except Exception:
            self.handleError(record)


def configure(level: str = "info", json_lines: bool | None = None,
              log_format: str | None = None, stream: IO | None = None) -> str:
    """Set up structlog (and route stdlib logging, e.g. watchdog's, through the same output).

    ``log_format`` is ``console``, ``json`` or ``journal`` (default: :func:`choose_format`);
    ``json_lines`` (older callers) True means ``json``, False ``console``. Returns the
    format chosen (``journal`` or ``journal-prefix`` when the socket is absent).
    """
    stream = stream if stream is not None else sys.stderr
    if log_format is None and json_lines is not None:
        log_format = "json" if json_lines else "console"
    log_format = log_format or choose_format(stream)
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, not {log_format!r}")
    numeric = _LEVELS.get(level.lower(), logging.INFO)
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    sink = None
    if log_format == "journal":
        sink = JournalSink(stream)
        renderer = [structlog.processors.format_exc_info, sink.processor]
    elif log_format == "json":
        renderer = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        renderer = [structlog.dev.ConsoleRenderer(colors=_isatty(stream))]
    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(), *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # Libraries (watchdog, prometheus) log through stdlib logging: same format, same stream.
    if sink is not None:
        handler: logging.Handler = _JournalHandler(sink)
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))
    if sink is not None and not sink.native:
        return "journal-prefix"
    return log_format


def _isatty(stream: IO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def get_logger(name: str = "autodip_watch") -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)


class Condition:
    """A condition that a loop meets again and again (a database that cannot be written,
    a share that is gone): logged once when it starts or changes, once when it clears,
    never once per retry.

    ``report(error)`` on each failure, ``clear()`` on each success. The first report of
    a new kind of error logs ``event`` at error level with the error and a short
    traceback; repeats of the same error only count; ``clear`` after trouble logs
    ``recovered_event`` with how often it repeated and for how long.
    """

    def __init__(self, logger, event: str, recovered_event: str, **context) -> None:
        self.logger = logger
        self.event = event
        self.recovered_event = recovered_event
        self.context = context
        self.current: str | None = None
        self.repeats = 0
        self.since = 0.0

    @property
    def active(self) -> bool:
        return self.current is not None

    def report(self, error: BaseException | str, **fields) -> bool:
        """Record a failure; returns True when it was logged (a new condition)."""
        import time
        import traceback

        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        if text == self.current:
            self.repeats += 1
            return False
        self.current, self.repeats, self.since = text, 0, time.monotonic()
        trace = None
        if isinstance(error, BaseException):
            trace = "".join(traceback.format_exception(type(error), error, error.__traceback__,
                                                       limit=6))
        self.logger.error(self.event, error=text, traceback=trace,
                          note="logged once; repeats are counted until it clears",
                          **self.context, **fields)
        return True

    def clear(self, **fields) -> bool:
        """Record a success; returns True when it ended a condition (and logged so)."""
        import time

        if self.current is None:
            return False
        self.logger.info(self.recovered_event, error=self.current, repeats=self.repeats,
                         seconds=round(time.monotonic() - self.since, 1),
                         **self.context, **fields)
        self.current, self.repeats = None, 0
        return True
