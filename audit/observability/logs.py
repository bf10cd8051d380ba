"""Log lines that carry the trace id: JSON for log collectors, readable text locally."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any

from opentelemetry import trace

_HANDLER_NAME = "condo-audit"
# Servers that install their own handlers; their lines go through ours instead.
_TAKEN_OVER = ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task")


class TraceContextFilter(logging.Filter):
    """Adds the active span's trace and span ids ("-" outside any trace) to every record."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        else:
            record.trace_id = "-"
            record.span_id = "-"
        record.service = self.service
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the fields log pipelines index."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": getattr(record, "service", None),
            "process": record.process,
            "trace_id": getattr(record, "trace_id", "-"),
            "span_id": getattr(record, "span_id", "-"),
        }
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body, ensure_ascii=False, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [trace=%(trace_id)s] %(message)s"


def configure_logging(service: str, log_format: str = "text", level: str | int = "INFO") -> None:
    """Route the root logger (and the servers' own loggers) through one handler.

    Idempotent: calling it again replaces the handler it installed, and leaves any other
    handler (a test runner's, for instance) in place.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(TraceContextFilter(service))
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == _HANDLER_NAME:
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    for name in _TAKEN_OVER:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
