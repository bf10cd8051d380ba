"""The worker's tracing, metrics and logging, wired to Celery's process life cycle.

Prefork: the parent only serves metrics and sends the fleet heartbeat; each pool child
sets up its own tracer provider and instrumentations in `worker_process_init` (a provider
set in the parent would win over the child's, and the exporter thread does not survive a
fork). Children write their samples to PROMETHEUS_MULTIPROC_DIR, which the parent merges
on every scrape, so one port per worker pod serves the whole pool. Solo and thread pools
run tasks in the parent, which then sets tracing up itself.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery import Celery, signals
from opentelemetry.sdk.trace import TracerProvider
from redis import Redis
from redis.exceptions import RedisError

from audit.observability import metrics
from audit.observability.instrumentation import (
    enabled,
    instrument_httpx,
    instrument_sqlalchemy,
)
from audit.observability.logs import configure_logging
from audit.observability.tracing import setup_tracing, shutdown_tracing
from audit.settings import get_settings

log = logging.getLogger(__name__)

SERVICE_NAME = "condo-audit-worker"


def instrument_process() -> bool:
    """Tracer provider and instrumentations for the process that runs tasks (once)."""
    provider = setup_tracing(SERVICE_NAME)
    if provider is None:
        return False
    # Redis is deliberately not instrumented: the broker's polling (BRPOP every second,
    # the unacked-restore sweeps) would fill the backend with spans outside any batch, and
    # the limiter's Redis calls already sit inside "ratelimit.wait" spans.
    instrument_celery(provider)
    instrument_httpx(provider)
    instrument_sqlalchemy(provider)
    return True


def _is_prefork(pool_cls: Any) -> bool:
    name = pool_cls if isinstance(pool_cls, str) else getattr(pool_cls, "__module__", "")
    return "prefork" in str(name)


class FleetHeartbeat:
    """Tells Redis this worker is alive, for the `condo_audit_workers` gauge."""

    def __init__(self, redis: Redis, hostname: str, interval: float) -> None:
        self.redis = redis
        self.hostname = hostname
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                metrics.heartbeat(self.redis, self.hostname, self.interval)
            except RedisError as exc:
                log.warning("fleet heartbeat failed: %s", exc)
            if self._stop.wait(self.interval):
                return

    def stop(self) -> None:
        self._stop.set()
        try:
            metrics.forget_worker(self.redis, self.hostname)
        except RedisError as exc:
            log.warning("could not remove the fleet heartbeat: %s", exc)


_heartbeat: FleetHeartbeat | None = None


def on_setup_logging(loglevel: Any = None, **_: Any) -> None:
    """Celery leaves logging to us once anyone handles this signal."""
    settings = get_settings()
    configure_logging(SERVICE_NAME, settings.log_format, loglevel or settings.log_level)


def on_worker_init(sender: Any = None, **_: Any) -> None:
    metrics.clean_multiprocess_dir(keep_pid=os.getpid())
    if not _is_prefork(getattr(sender, "pool_cls", "prefork")):
        instrument_process()


def on_worker_ready(sender: Any = None, **_: Any) -> None:
    """Metrics server and heartbeat in the parent, once the pool is up."""
    global _heartbeat
    settings = get_settings()
    hostname = getattr(sender, "hostname", None) or f"worker-{os.getpid()}"
    if settings.metrics_port:
        from prometheus_client import start_http_server

        try:
            start_http_server(
                settings.metrics_port,
                addr=settings.metrics_host,
                registry=metrics.exposition_registry(),
            )
            log.info(
                "metrics on http://%s:%d/metrics%s",
                settings.metrics_host,
                settings.metrics_port,
                ""
                if metrics.multiprocess_dir()
                else " (PROMETHEUS_MULTIPROC_DIR unset: prefork children's samples are not merged)",
            )
        except OSError as exc:
            log.warning("metrics server not started on port %d: %s", settings.metrics_port, exc)
    _heartbeat = FleetHeartbeat(
        Redis.from_url(settings.redis_url), hostname, settings.worker_heartbeat_seconds
    )
    _heartbeat.start()


def on_worker_shutdown(**_: Any) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()
    shutdown_tracing()


def on_process_init(**_: Any) -> None:
    instrument_process()


def on_process_shutdown(**_: Any) -> None:
    shutdown_tracing()  # flush the child's last spans before it exits


def install(app: Celery) -> None:
    """Connect the handlers; `app` is taken so callers state which app they wire."""
    del app  # Celery's signals are process-wide
    signals.setup_logging.connect(on_setup_logging, weak=False)
    signals.worker_init.connect(on_worker_init, weak=False)
    signals.worker_ready.connect(on_worker_ready, weak=False)
    signals.worker_shutdown.connect(on_worker_shutdown, weak=False)
    signals.worker_process_init.connect(on_process_init, weak=False)
    signals.worker_process_shutdown.connect(on_process_shutdown, weak=False)


def instrument_celery(provider: TracerProvider) -> None:
    """Only where tasks run: see audit.observability.tracing.publish_span for the API."""
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    instrumentor = CeleryInstrumentor()  # type: ignore[no-untyped-call]
    if enabled("celery") and not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=provider)
