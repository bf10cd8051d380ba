"""The API's tracing, request metrics, /metrics endpoint and log format."""

from __future__ import annotations

import time

from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis import Redis
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from audit.deadletters import open_dead_letter_count
from audit.observability import metrics
from audit.observability.instrumentation import enabled, instrument_sqlalchemy
from audit.observability.logs import configure_logging
from audit.observability.tracing import setup_tracing, shutdown_tracing
from audit.providers.factory import circuit_breakers
from audit.settings import Settings
from worker.enqueue import audit_backlog, tenant_backlogs

SERVICE_NAME = "condo-audit-api"
# Probes and scrapes are neither traced nor counted: they would drown the real traffic.
UNOBSERVED_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})


class RequestMetrics:
    """Pure ASGI middleware: requests by route template and status, and their latency."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNOBSERVED_PATHS:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            # Unmatched paths share one label value: raw paths would explode cardinality.
            template = getattr(route, "path", None) or "<unmatched>"
            method = scope["method"]
            metrics.HTTP_REQUESTS.labels(method, template, str(status)).inc()
            metrics.HTTP_LATENCY.labels(method, template).observe(time.perf_counter() - started)


class FlushTracesOnShutdown:
    """Exports the last spans when the server shuts down.

    uvicorn re-raises SIGTERM after a graceful shutdown, so the process dies by the signal
    and the SDK's atexit flush never runs; the lifespan's shutdown is the last safe moment.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                shutdown_tracing()
            await send(message)

        await self.app(scope, receive, send_wrapper)


def instrument_fastapi(app: FastAPI, provider: TracerProvider, excluded_urls: str) -> None:
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    if enabled("fastapi"):
        # The per-message "http receive"/"http send" spans say nothing an operator needs.
        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=provider,
            excluded_urls=excluded_urls,
            exclude_spans=["receive", "send"],
        )


BREAKER_PROVIDERS = ("cnpjws", "minha_receita", "pluggy")


def signal_collector(settings: Settings) -> metrics.SignalCollector:
    budgets: dict[str, float | None] = {
        "cnpjws:commercial" if settings.cnpjws_token else "cnpjws": settings.cnpjws_rate_per_minute,
        "minha_receita": settings.minha_receita_rate_per_minute,
        "pluggy:auth": settings.pluggy_rate_per_minute,
        "pluggy:transactions": settings.pluggy_rate_per_minute,
    }
    redis = Redis.from_url(settings.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
    breakers = circuit_breakers(settings, redis)
    return metrics.SignalCollector(
        redis,
        settings.audit_queue,
        lambda: audit_backlog(redis),
        budgets=budgets,
        open_dead_letters=lambda: open_dead_letter_count(settings.database_url),
        worker_ttl_seconds=3 * settings.worker_heartbeat_seconds,
        circuit_states=lambda: {
            provider: breakers.state(provider).state for provider in BREAKER_PROVIDERS
        },
        read_tenants=lambda: tenant_backlogs(redis, settings.audit_queue, top=1),
    )


def install(app: FastAPI, settings: Settings) -> None:
    """Logs, request metrics, /metrics (with the queue signal) and, when OTEL_* asks, traces."""
    configure_logging(SERVICE_NAME, settings.log_format, settings.log_level)
    app.add_middleware(RequestMetrics)
    registry = metrics.exposition_registry(signal_collector(settings))

    def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.add_route("/metrics", metrics_endpoint, include_in_schema=False)

    provider = setup_tracing(SERVICE_NAME)
    if provider is not None:
        app.add_middleware(FlushTracesOnShutdown)
        instrument_fastapi(app, provider, ",".join(UNOBSERVED_PATHS))
        instrument_sqlalchemy(provider)
