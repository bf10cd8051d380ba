"""The API's one door to the worker side: enqueue audit work by task name, and read how
much of it is outstanding. The API and the CLI use this, never the task objects."""

from __future__ import annotations

from redis import Redis

from audit.observability.tracing import publish_span
from worker.broker import Backlog, read_backlog
from worker.celery_app import DELIVER_WEBHOOK_TASK, PROCESS_BATCH_TASK, app

# Fail fast when Redis is down: the caller answers 503 instead of hanging.
PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2}


class EnqueueFailed(RuntimeError):
    pass


def enqueue_batch(batch_id: str) -> None:
    try:
        with publish_span(PROCESS_BATCH_TASK, batch_id) as trace_headers:
            app.send_task(
                PROCESS_BATCH_TASK,
                args=[batch_id],
                task_id=batch_id,
                queue=app.conf.task_default_queue,
                retry=True,
                retry_policy=PUBLISH_RETRY_POLICY,
                headers=trace_headers,
            )
    except Exception as exc:  # kombu raises several connection error types
        raise EnqueueFailed(f"could not reach the queue: {type(exc).__name__}") from exc


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
