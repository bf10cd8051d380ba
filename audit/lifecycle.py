"""A batch's state machine as the worker drives it: start, retry, dead-letter, finish."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from audit.auditlog import AuditEvent, AuditLogService
from audit.batches import BatchStatus
from audit.models import AuditLogEntry, Batch, DeadLetter
from audit.observability.tracing import current_span_id, tracer
from audit.retry import RetryPolicy
from audit.tracing_context import current_trace_id
from audit.webhooks import EventType
from audit.webhooks.outbox import record_batch_event

TERMINAL = frozenset({BatchStatus.SUCCESS, BatchStatus.FAILURE})


@dataclass(frozen=True)
class RetryDecision:
    failed_attempts: int
    countdown: float | None  # None: attempts exhausted, the batch was dead-lettered
    dead_letter_id: str | None = None


def start(session: Session, batch_id: str) -> Batch | None:
    """Mark a run as started; None when the batch is unknown or already finished."""
    batch = session.get(Batch, batch_id)
    if batch is None or batch.status in TERMINAL:
        return None
    batch.status = BatchStatus.STARTED
    batch.started_at = batch.started_at or dt.datetime.now(dt.UTC)
    AuditLogService(session).record(batch_id, AuditEvent.STARTED, attempt=batch.failed_attempts + 1)
    return batch


def rate_limited(
    session: Session, batch_id: str, provider: str, wait_seconds: float, reason: str = "budget"
) -> int:
    """Record a wait for provider budget; returns how many such waits the batch has had."""
    AuditLogService(session).record(
        batch_id,
        AuditEvent.RATE_LIMITED,
        provider=provider,
        wait_seconds=round(wait_seconds, 3),
        reason=reason,
    )
    count = session.scalar(
        select(func.count()).where(
            AuditLogEntry.batch_id == batch_id, AuditLogEntry.event == AuditEvent.RATE_LIMITED
        )
    )
    return int(count or 0)


def waiting_for_provider(
    session: Session, batch_id: str, provider: str, wait_seconds: float, reason: str
) -> float:
    """Record a wait for a provider whose breaker is open (uncounted); returns the seconds
    this batch has waited for open breakers so far, this wait included."""
    AuditLogService(session).record(
        batch_id,
        AuditEvent.WAITING_FOR_PROVIDER,
        provider=provider,
        wait_seconds=round(wait_seconds, 3),
        reason=reason,
    )
    batch = session.get(Batch, batch_id)
    if batch is not None and batch.status not in TERMINAL:
        batch.status = BatchStatus.RETRY
    trace.get_current_span().add_event(
        "batch.waiting_for_provider",
        {"provider": provider, "wait_seconds": wait_seconds, "reason": reason},
    )
    # Waits since the batch's last replay (a replayed dead letter starts afresh); the
    # queries autoflush the entry recorded above, so the sum includes this wait.
    last_replay = session.scalar(
        select(func.max(AuditLogEntry.id)).where(
            AuditLogEntry.batch_id == batch_id, AuditLogEntry.event == AuditEvent.REPLAYED
        )
    )
    details = session.scalars(
        select(AuditLogEntry.detail).where(
            AuditLogEntry.batch_id == batch_id,
            AuditLogEntry.event == AuditEvent.WAITING_FOR_PROVIDER,
            AuditLogEntry.id > (last_replay or 0),
        )
    )
    return sum(float((d or {}).get("wait_seconds", 0)) for d in details)


def dead_letter_now(
    session: Session,
    batch_id: str,
    *,
    provider: str,
    reason: str,
    task_name: str,
    payload: dict[str, Any],
) -> RetryDecision:
    """Dead-letter without spending the remaining attempts: the failure will not go away by
    retrying (a deterministic error) or has lasted past the longest wait (an outage)."""
    session.execute(
        update(Batch).where(Batch.id == batch_id).values(failed_attempts=Batch.failed_attempts + 1)
    )
    batch = session.get(Batch, batch_id, populate_existing=True)
    assert batch is not None
    with tracer.start_as_current_span(
        "batch.dead_letter",
        attributes={
            "batch.id": batch_id,
            "batch.failed_attempts": batch.failed_attempts,
            "provider": provider,
        },
    ) as span:
        decision = _dead_letter(session, batch, task_name, payload, provider, reason)
        span.set_attribute("dead_letter.id", decision.dead_letter_id or "")
    return decision


def failed(
    session: Session,
    batch_id: str,
    *,
    provider: str,
    reason: str,
    task_name: str,
    payload: dict[str, Any],
    policy: RetryPolicy,
) -> RetryDecision:
    """Count a failed attempt; schedule a retry, or dead-letter when the policy is exhausted."""
    session.execute(
        update(Batch).where(Batch.id == batch_id).values(failed_attempts=Batch.failed_attempts + 1)
    )
    batch = session.get(Batch, batch_id, populate_existing=True)
    assert batch is not None
    audit_log = AuditLogService(session)
    attempts = batch.failed_attempts
    if not policy.exhausted(attempts):
        countdown = policy.countdown(attempts)
        batch.status = BatchStatus.RETRY
        audit_log.record(
            batch_id,
            AuditEvent.RETRIED,
            attempt=attempts,
            provider=provider,
            reason=reason,
            countdown_seconds=round(countdown, 3),
        )
        trace.get_current_span().add_event(
            "batch.retry_scheduled",
            {"retry.attempt": attempts, "retry.countdown_seconds": countdown, "provider": provider},
        )
        return RetryDecision(attempts, countdown)

    with tracer.start_as_current_span(
        "batch.dead_letter",
        attributes={"batch.id": batch_id, "batch.failed_attempts": attempts, "provider": provider},
    ) as span:
        decision = _dead_letter(session, batch, task_name, payload, provider, reason)
        span.set_attribute("dead_letter.id", decision.dead_letter_id or "")
    return decision


def _dead_letter(
    session: Session,
    batch: Batch,
    task_name: str,
    payload: dict[str, Any],
    provider: str,
    reason: str,
) -> RetryDecision:
    batch_id, attempts = batch.id, batch.failed_attempts
    audit_log = AuditLogService(session)
    first_failure = session.scalar(
        select(AuditLogEntry.created_at)
        .where(AuditLogEntry.batch_id == batch_id, AuditLogEntry.event == AuditEvent.RETRIED)
        .order_by(AuditLogEntry.id)
        .limit(1)
    )
    now = dt.datetime.now(dt.UTC)
    letter = DeadLetter(
        batch_id=batch_id,
        tenant_id=batch.tenant_id,
        task_name=task_name,
        payload=payload,
        provider=provider,
        error=reason,
        attempts=attempts,
        trace_id=current_trace_id() or batch.trace_id,
        first_failed_at=first_failure or now,
        dead_lettered_at=now,
    )
    session.add(letter)
    session.flush()
    batch.status = BatchStatus.FAILURE
    batch.error = f"dead-lettered after {attempts} failed attempts: {reason}"
    batch.finished_at = now
    audit_log.record(
        batch_id,
        AuditEvent.DEAD_LETTERED,
        attempt=attempts,
        provider=provider,
        reason=reason,
        dead_letter_id=letter.id,
        span_id=current_span_id(),  # with the entry's trace_id: where a replay links to
    )
    # The webhook outbox, in the transaction that records the status.
    detail = {"dead_letter_id": letter.id, "provider": provider, "reason": reason}
    record_batch_event(session, batch_id, EventType.BATCH_FAILED, key=letter.id, **detail)
    record_batch_event(session, batch_id, EventType.BATCH_DEAD_LETTERED, key=letter.id, **detail)
    return RetryDecision(attempts, None, letter.id)
