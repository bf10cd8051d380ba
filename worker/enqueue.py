"""The API's one door to the worker side: enqueue audit work by task name, and read how
much of it is outstanding. The API and the CLI use this, never the task objects.

Audit work is not published straight to the Celery queue: each batch goes, as the exact
message `send_task` would publish, to its tenant's backlog, and the fair dispatcher
(audit/fairqueue.py, worker/dispatch.py) moves it to the queue list in its turn.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

from kombu.serialization import dumps
from redis import Redis
from redis.exceptions import RedisError

from audit.observability.tracing import publish_span
from audit.settings import get_settings
from worker.broker import Backlog, read_backlog, tenant_backlogs
from worker.celery_app import DELIVER_WEBHOOK_TASK, PROCESS_BATCH_TASK, app
from worker.dispatch import fair_queue

# Fail fast when Redis is down: the caller answers 503 instead of hanging.
PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2}

# The backlog of batches whose tenant could not be read (their row is gone): a lane of its own.
UNATTRIBUTED = "-"


class EnqueueFailed(RuntimeError):
    pass


def celery_message(batch_id: str, headers: dict[str, str], queue: str) -> str:
    """The message kombu's Redis transport LPUSHes for
    `send_task(PROCESS_BATCH_TASK, args=[batch_id], task_id=batch_id, queue=queue)`.

    Built here, at submission, so the dispatcher can move it to the queue list atomically
    inside Redis (tests/test_fairqueue.py compares it with a real send_task's)."""
    task_headers, properties, body, _ = app.amqp.create_task_message(
        batch_id,
        PROCESS_BATCH_TASK,
        [batch_id],
        {},
        root_id=batch_id,
        reply_to=app.thread_oid,
        ignore_result=None,  # as send_task leaves it: the task's own setting decides
    )
    task_headers.update(headers)
    content_type, content_encoding, data = dumps(body, serializer="json")  # type: ignore[no-untyped-call]
    raw = data.encode(content_encoding) if isinstance(data, str) else data
    message: dict[str, Any] = {
        "body": base64.b64encode(raw).decode("ascii"),
        "content-encoding": content_encoding,
        "content-type": content_type,
        "headers": task_headers,
        "properties": {
            **properties,
            "delivery_mode": 2,  # persistent, Celery's default
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(message)


def _owner(batch_id: str) -> tuple[str, int]:
    """(tenant, expenses) of a batch, for callers that enqueue by id alone (replays,
    requeue-lost, recovery): its backlog is its tenant's, like at submission."""
    from audit.db import session_scope
    from audit.models import Batch

    with session_scope(get_settings().database_url) as session:
        batch = session.get(Batch, batch_id)
        if batch is None:
            return UNATTRIBUTED, 1
        return batch.tenant_id, batch.expenses_total


def enqueue_batch(batch_id: str, tenant_id: str | None = None, expenses: int | None = None) -> None:
    """Backlog a batch in its tenant's lane (once: a batch already waiting stays as it is).

    The tenant and size are read from the database when not given."""
    if tenant_id is None or expenses is None:
        tenant_id, expenses = _owner(batch_id)
    queue = app.conf.task_default_queue
    try:
        with publish_span(PROCESS_BATCH_TASK, batch_id) as trace_headers:
            message = celery_message(batch_id, trace_headers, queue)
            _push_with_retry(batch_id, tenant_id, message, expenses)
    except Exception as exc:  # redis raises several connection error types
        raise EnqueueFailed(f"could not reach the queue: {type(exc).__name__}") from exc


def _push_with_retry(batch_id: str, tenant_id: str, message: str, expenses: int) -> None:
    settings = get_settings()
    delays = [0.1, 0.3]
    while True:
        try:
            fair_queue(settings).push(
                batch_id, tenant_id, message, cost=expenses, ahead=settings.fair_queue_ahead
            )
            return
        except RedisError:
            if not delays:
                raise
            time.sleep(delays.pop(0))


__all__ = ["EnqueueFailed", "audit_backlog", "enqueue_batch", "tenant_backlogs"]


def audit_backlog(redis: Redis) -> Backlog:
    """The audit queue's outstanding work, as KEDA counts it (for the API's /metrics)."""
    return read_backlog(redis, app.conf.task_default_queue)


def enqueue_webhook_delivery(delivery_id: str, countdown: float | None = None) -> None:
    """Publish one delivery attempt on the webhooks queue (routed by the task's name)."""
    try:
        app.send_task(
            DELIVER_WEBHOOK_TASK,
            args=[delivery_id],
            countdown=countdown,
            retry=True,
            retry_policy=PUBLISH_RETRY_POLICY,
        )
    except Exception as exc:  # kombu raises several connection error types
        raise EnqueueFailed(f"could not reach the queue: {type(exc).__name__}") from exc
