"""Tracer set-up from the standard OTEL_* variables, and the spans the domain opens itself.

Tracing is on only when an exporter is configured: an OTLP endpoint
(OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) or an explicit
OTEL_TRACES_EXPORTER; OTEL_SDK_DISABLED=true turns it off. When off, no SDK is loaded, no
instrumentation is installed, and the domain's spans are the API's no-op spans.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

from opentelemetry import propagate, trace

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

tracer = trace.get_tracer("condo_audit")

# The batch's attempt number (failed attempts so far + 1) while a task runs it: provider
# spans carry it as `retry.attempt` without threading it through every call.
_attempt: ContextVar[int | None] = ContextVar("condo_audit_attempt", default=None)

_provider: TracerProvider | None = None
_provider_pid: int | None = None


def tracing_requested(env: Mapping[str, str] | None = None) -> bool:
    """Whether the OTEL_* variables ask for traces to be exported."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER")
    if exporters is not None:
        return exporters.strip().lower() not in ("", "none")
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def _exporters(env: Mapping[str, str]) -> list[SpanExporter]:
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    found: list[SpanExporter] = []
    for name in names:
        if name == "otlp":
            protocol = (
                env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf"
            ).strip()
            if protocol == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                    OTLPSpanExporter as GrpcExporter,
                )

                found.append(GrpcExporter())
            elif protocol == "http/protobuf":
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter as HttpExporter,
                )

                found.append(HttpExporter())
            else:
                raise ValueError(f"unsupported OTLP protocol {protocol!r}: grpc or http/protobuf")
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            found.append(ConsoleSpanExporter())
        elif name not in ("", "none"):
            raise ValueError(f"unsupported OTEL_TRACES_EXPORTER {name!r}: otlp, console or none")
    return found


def setup_tracing(default_service_name: str) -> TracerProvider | None:
    """Install this process's tracer provider once; None when tracing is not requested.

    Call it in the process that does the work: in a prefork worker, the pool child (a
    provider set in the parent before the fork would win over the child's and its export
    thread would not survive the fork). OTEL_SERVICE_NAME overrides the default name;
    OTEL_TRACES_SAMPLER(_ARG) and OTEL_BSP_* are read by the SDK itself.
    """
    global _provider, _provider_pid
    if _provider is not None and _provider_pid == os.getpid():
        return _provider
    if not tracing_requested():
        return None
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = os.environ.get("OTEL_SERVICE_NAME") or default_service_name
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    for exporter in _exporters(os.environ):
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _provider, _provider_pid = provider, os.getpid()
    return provider


def shutdown_tracing() -> None:
    """Flush and stop this process's exporter (a pool child about to exit)."""
    global _provider
    if _provider is not None and _provider_pid == os.getpid():
        _provider.shutdown()
        _provider = None


@contextmanager
def attempt_scope(attempt: int) -> Iterator[None]:
    token = _attempt.set(attempt)
    try:
        yield
    finally:
        _attempt.reset(token)


def current_attempt() -> int | None:
    return _attempt.get()


def current_span_id() -> str | None:
    context = trace.get_current_span().get_span_context()
    return format(context.span_id, "016x") if context.is_valid else None


@contextmanager
def publish_span(task_name: str, task_id: str) -> Iterator[dict[str, str]]:
    """A producer span around a publish by task name, and the headers that carry it.

    The Celery instrumentation cannot close its own publish span for `send_task` of a task
    the publishing process has not registered (the API never imports the tasks), so the
    API opens this one and injects the context into the message headers itself.
    """
    with tracer.start_as_current_span(
        f"apply_async/{task_name}",
        kind=trace.SpanKind.PRODUCER,
        attributes={
            "celery.action": "apply_async",
            "celery.task_name": task_name,
            "messaging.message.id": task_id,
        },
    ):
        headers: dict[str, str] = {}
        propagate.inject(headers)
        yield headers


def replay_link(
    trace_id: str | None, span_id: str | None, dead_letter_id: str
) -> trace.Link | None:
    """A link from a replay to the trace in which the batch was dead-lettered."""
    if not trace_id:
        return None
    try:
        context = trace.SpanContext(
            trace_id=int(trace_id, 16),
            span_id=int(span_id, 16) if span_id else trace.INVALID_SPAN_ID,
            is_remote=True,
            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
        )
    except ValueError:
        return None
    return trace.Link(context, {"link.kind": "replay_of", "dead_letter.id": dead_letter_id})
