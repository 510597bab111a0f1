"""structlog set up for JSON lines, with request id, tenant and member bound from contextvars and the
current span's trace and span ids."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO, cast

import structlog
from opentelemetry import trace

# Keys whose values never reach a log line: credentials and personal contact data.
REDACTED_KEYS = frozenset({"authorization", "token", "password", "secret", "phone", "mobile", "email"})


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in event.keys() & REDACTED_KEYS:
        event[key] = "[redacted]"
    return event


def _trace_ids(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The ids of the span the line was written in (when it records), so a line leads to its
    trace in the collector and a trace back to its lines."""
    span = trace.get_current_span()
    if span.is_recording():
        context = span.get_span_context()
        event["trace_id"] = f"{context.trace_id:032x}"
        event["span_id"] = f"{context.span_id:016x}"
    return event


class _Stderr:
    """Whatever `sys.stderr` is when a line is written, so a command's stdout holds only its output
    and a capture installed later (pytest's) still sees the lines."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(level: str = "info", *, service: str, stream: TextIO | None = None) -> None:
    """Configures structlog (and stdlib logging, for libraries) to write JSON lines to `stream`,
    standard error by default.

    Loggers are not cached, so a later `configure` (a test capturing output) takes effect everywhere.
    """
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    logging.basicConfig(stream=sys.stderr, level=max(numeric, logging.WARNING), format="%(message)s")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _trace_ids,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(
            file=cast(TextIO, _Stderr()) if stream is None else stream
        ),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.bind_contextvars(service=service)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
