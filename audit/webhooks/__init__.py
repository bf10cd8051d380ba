"""Completion webhooks, signed the Standard Webhooks way (https://www.standardwebhooks.com).

signing: secrets and `webhook-signature`; urls: which receivers may be called; secrets: the
secrets' encryption at rest; endpoints: registration per tenant; outbox: the delivery rows
written with a batch's final status and the due ones handed to a dispatcher; delivery: one
HTTP attempt and its bookkeeping. No Celery here: the worker enqueues by task name.
"""

from __future__ import annotations

from enum import StrEnum


class EventType(StrEnum):
    BATCH_SUCCEEDED = "batch.succeeded"
    BATCH_FAILED = "batch.failed"
    BATCH_DEAD_LETTERED = "batch.dead_lettered"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


EVENT_TYPES: tuple[str, ...] = tuple(e.value for e in EventType)
