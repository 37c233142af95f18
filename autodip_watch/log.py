"""Structured logging: JSON lines for journald and files, readable lines on a terminal.

Every record carries key/value context (``job_id``, ``path`` ...) so that one job's life
can be followed with ``journalctl -u autodip-watch | grep '"job_id": 12'``.
"""

from __future__ import annotations

import logging
import sys

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def configure(level: str = "info", json_lines: bool | None = None) -> None:
    """Set up structlog (and route stdlib logging, e.g. watchdog's, through the same output).

    ``json_lines`` defaults to "stderr is not a terminal".
    """
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    numeric = _LEVELS.get(level.lower(), logging.INFO)
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json_lines:
        renderer = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        renderer = [structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(), *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries (watchdog, prometheus) log through stdlib logging: same format, same stream.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))


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
