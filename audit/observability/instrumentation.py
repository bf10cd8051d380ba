"""The instrumentations the API and the worker share (database, HTTP clients), installed
only when tracing is on; each framework's own lives beside it (api/ and worker/)."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)


def enabled(name: str) -> bool:
    """False for an instrumentation listed in OTEL_PYTHON_DISABLED_INSTRUMENTATIONS (the
    variable opentelemetry-instrument reads; same names: fastapi, celery, httpx, sqlalchemy)."""
    disabled = os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "")
    return name not in {item.strip().lower() for item in disabled.split(",")}


def instrument_sqlalchemy(provider: TracerProvider) -> None:
    """Trace every engine created from now on (audit.db builds them lazily, after this).

    The 0.66b instrumentation declares SQLAlchemy < 2.1 but works on 2.1 through the same
    engine events, so its version gate is skipped; it also wraps the asyncio engine
    factory, which on SQLAlchemy 2.1 needs greenlet installed.
    """
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    instrumentor = SQLAlchemyInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry or not enabled("sqlalchemy"):
        return
    try:
        instrumentor.instrument(tracer_provider=provider, skip_dep_check=True)
    except ImportError as exc:
        log.warning("database queries are not traced: %s", exc)


def instrument_httpx(provider: TracerProvider) -> None:
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    instrumentor = HTTPXClientInstrumentor()
    if enabled("httpx") and not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=provider)
