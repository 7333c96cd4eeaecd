"""structlog setup: one JSON object per line on stderr, with stable event names.

The event names the daemon emits are listed in docs/daemon.md; tests assert on them with
``structlog.testing.capture_logs()``.
"""

from __future__ import annotations

import logging as _stdlib_logging
import sys
from typing import IO, TextIO

import structlog

LEVELS = {"debug": _stdlib_logging.DEBUG, "info": _stdlib_logging.INFO,
          "warning": _stdlib_logging.WARNING, "error": _stdlib_logging.ERROR}


LOG_FORMATS = ("auto", "json", "console")


def wants_json(fmt: str, stream: IO[str] | None = None) -> bool:
    """``auto``: human-readable lines on a terminal, JSON lines otherwise (journald, files)."""
    if fmt == "auto":
        stream = stream or sys.stderr
        return not (hasattr(stream, "isatty") and stream.isatty())
    return fmt == "json"


def configure(level: str = "info", stream: TextIO | None = None, *, json_output: bool = True,
              fmt: str | None = None, observers: tuple = ()) -> None:
    """Route structlog to ``stream`` (stderr by default): JSON lines, or with
    ``fmt="console"`` (or ``"auto"`` on a terminal) structlog's console renderer."""
    if fmt is not None:
        json_output = wants_json(fmt, stream)
    renderer = (structlog.processors.JSONRenderer(sort_keys=False) if json_output
                else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            *observers,  # extra structlog processors
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, _stdlib_logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(**initial: object) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger("nsg-agent").bind(**initial)
