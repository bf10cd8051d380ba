"""The current trace id, readable from the domain without importing an SDK's setup."""

from __future__ import annotations

from opentelemetry import trace


def current_trace_id() -> str | None:
    """Hex trace id of the active span, or None when nothing is being traced."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None
