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
