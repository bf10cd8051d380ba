"""The transactional outbox: delivery rows written in the transaction that records a batch's
final status, so an event is stored exactly when the status is, and never lost to a crash
between the commit and a publish. The worker publishes the rows after its commit; whatever
it did not (a crash, Redis away) the dispatcher finds here by `next_attempt_at`.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from audit.models import Batch, Webhook, WebhookDelivery
from audit.observability.tracing import current_span_id
from audit.tracing_context import current_trace_id
from audit.webhooks import DeliveryStatus, EventType


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def event_body(batch: Batch, event: EventType, now: dt.datetime, **extra: Any) -> str:
    """The JSON body, serialized once: every attempt sends (and signs) these same bytes."""
    data: dict[str, Any] = {
        "task_id": batch.id,
        "batch_id": batch.id,
        "condominium_id": batch.condominium_id,
        "status": batch.status,
        "summary": batch.summary,
        "error": batch.error,
        "expenses": batch.expenses_total,
        "failed_attempts": batch.failed_attempts,
        "submitted_at": _iso(batch.submitted_at),
        "finished_at": _iso(batch.finished_at),
        "status_url": f"/tasks/{batch.id}",
        **extra,
    }
    payload = {"type": event.value, "timestamp": _iso(now), "data": data}
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=str)


def record_batch_event(
    session: Session, batch_id: str, event: EventType, key: str | None = None, **extra: Any
) -> int:
    """One pending delivery per subscribed endpoint of the batch's tenant, in the caller's
    transaction. `key` names the occurrence (the batch for a success, the dead letter for a
    failure) so a re-run does not emit it twice. Returns the rows written."""
    batch = session.get(Batch, batch_id, populate_existing=True)
    assert batch is not None
    hooks = session.scalars(
        select(Webhook).where(Webhook.tenant_id == batch.tenant_id, Webhook.deleted_at.is_(None))
    ).all()
    subscribed = [hook for hook in hooks if event.value in hook.events]
    if not subscribed:
        return 0
    event_key = f"{event.value}:{key or batch_id}"
    already = set(
        session.scalars(
            select(WebhookDelivery.webhook_id).where(
                WebhookDelivery.batch_id == batch_id, WebhookDelivery.event_key == event_key
            )
        )
    )
    now = dt.datetime.now(dt.UTC)
    body = event_body(batch, event, now, **extra)
    trace_id = current_trace_id()
    span_id = current_span_id() if trace_id else None
    written = 0
    for hook in subscribed:
        if hook.id in already:
            continue
        session.add(
            WebhookDelivery(
                webhook_id=hook.id,
                tenant_id=batch.tenant_id,
                batch_id=batch_id,
                message_id=f"msg_{uuid.uuid4().hex}",
                event_type=event.value,
                event_key=event_key,
                body=body,
                status=DeliveryStatus.PENDING,
                next_attempt_at=now,
                trace_id=trace_id or batch.trace_id,
                span_id=span_id,
            )
        )
        written += 1
    return written


def take_new_for_batch(session: Session, batch_id: str) -> list[str]:
    """The batch's deliveries written but never published; marked as published now (the
    caller publishes after committing this)."""
    now = dt.datetime.now(dt.UTC)
    ids = list(
        session.scalars(
            select(WebhookDelivery.id).where(
                WebhookDelivery.batch_id == batch_id,
                WebhookDelivery.status == DeliveryStatus.PENDING,
                WebhookDelivery.attempts == 0,
                WebhookDelivery.enqueued_at.is_(None),
            )
        )
    )
    mark_enqueued(session, ids, now)
    return ids


def take_due(session: Session, *, requeue_after: dt.timedelta, limit: int = 500) -> list[str]:
    """Pending deliveries that are due and have no live message: never published, or
    published longer than `requeue_after` ago without an attempt (the message was lost)."""
    now = dt.datetime.now(dt.UTC)
    ids = list(
        session.scalars(
            select(WebhookDelivery.id)
            .where(
                WebhookDelivery.status == DeliveryStatus.PENDING,
                WebhookDelivery.next_attempt_at <= now,
                or_(
                    WebhookDelivery.enqueued_at.is_(None),
                    WebhookDelivery.enqueued_at < now - requeue_after,
                ),
                or_(WebhookDelivery.locked_until.is_(None), WebhookDelivery.locked_until < now),
            )
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
        )
    )
    mark_enqueued(session, ids, now)
    return ids


def mark_enqueued(session: Session, ids: list[str], when: dt.datetime | None) -> None:
    if ids:
        session.execute(
            update(WebhookDelivery).where(WebhookDelivery.id.in_(ids)).values(enqueued_at=when)
        )
