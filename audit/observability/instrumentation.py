"""The standard instrumentations both processes share, installed only when tracing is on."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)


def instrument_sqlalchemy(provider: TracerProvider) -> None:
    """Trace every engine created from now on (audit.db builds them lazily, after this).

    The 0.66b instrumentation declares SQLAlchemy < 2.1 but works on 2.1 through the same
    engine events, so its version gate is skipped; it also wraps the asyncio engine
    factory, which on SQLAlchemy 2.1 needs greenlet installed.
    """
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    instrumentor = SQLAlchemyInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        return
    try:
        instrumentor.instrument(tracer_provider=provider, skip_dep_check=True)
    except ImportError as exc:
        log.warning("database queries are not traced: %s", exc)


def instrument_httpx(provider: TracerProvider) -> None:
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    instrumentor = HTTPXClientInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=provider)


def instrument_celery(provider: TracerProvider) -> None:
    """Only where tasks run: see audit.observability.tracing.publish_span for the API."""
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    instrumentor = CeleryInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=provider)
