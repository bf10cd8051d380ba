"""Celery tasks: a thin layer that maps the pipeline's outcomes onto Celery's retry machinery.

Three kinds of trouble, three answers:
- a provider fails (ProviderError): a counted attempt; backoff, then dead-letter;
- the platform's own database or Redis is unreachable: retried with capped backoff and never
  counted, since the work itself is fine (and a dead letter could not even be written);
- anything else (a bug, an answer nobody foresaw): a counted attempt like a provider
  failure, so it too ends as a dead letter that says why instead of a batch stuck forever.
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn

from celery import Task
from celery.exceptions import Reject, Retry
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from audit import lifecycle
from audit.auditlog import AuditEvent, AuditLogService
from audit.providers.base import ProviderError, RateLimitWait
from audit.retry import RetryPolicy
from worker.celery_app import PROCESS_BATCH_TASK, app
from worker.runtime import WorkerRuntime, runtime

log = logging.getLogger(__name__)

DATABASE_DOWN = (OperationalError, InterfaceError, PoolTimeoutError)
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)


class BatchDeadLettered(Exception):
    """Ends the Celery task as FAILURE once the batch is dead-lettered; never retried."""


def retry_later(task: Task, countdown: float) -> NoReturn:
    """Publish the retry; if even that fails, put the message back instead of dropping it."""
    try:
        raise task.retry(countdown=countdown, max_retries=None)
    except Reject as failed_publish:
        log.warning("could not publish a retry (%s); requeueing the message", failed_publish)
        raise Reject(str(failed_publish), requeue=True) from None


@app.task(name=PROCESS_BATCH_TASK, bind=True, max_retries=None)
def process_batch_expenses(self: Task, batch_id: str) -> dict[str, Any]:
    rt = runtime()
    try:
        return audit_batch(self, rt, batch_id)
    except (Retry, Reject, BatchDeadLettered):
        raise
    except DATABASE_DOWN + REDIS_DOWN as exc:
        component = "database" if isinstance(exc, DATABASE_DOWN) else "redis"
        policy = RetryPolicy(
            base_seconds=rt.settings.retry_backoff_base_seconds,
            max_seconds=rt.settings.infrastructure_retry_max_seconds,
            jitter_ratio=rt.settings.retry_jitter_ratio,
        )
        countdown = policy.countdown(self.request.retries + 1)
        log.warning(
            "batch %s: %s unavailable (%s); retrying in %.1fs, not counted as an attempt",
            batch_id,
            component,
            type(exc).__name__,
            countdown,
        )
        record_uncounted_retry(rt, batch_id, component, type(exc).__name__, countdown)
        retry_later(self, countdown)
    except Exception as exc:
        log.exception("batch %s: unexpected error", batch_id)
        reason = f"internal error {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        count_failure(self, rt, batch_id, "internal", reason)


def audit_batch(task: Task, rt: WorkerRuntime, batch_id: str) -> dict[str, Any]:
    with rt.sessions.begin() as session:
        batch = lifecycle.start(session, batch_id)
        if batch is None:
            log.info("batch %s is unknown or already finished; nothing to do", batch_id)
            return {"batch_id": batch_id, "skipped": True}
    try:
        summary = rt.auditor.run(batch_id)
    except RateLimitWait as wait:
        # Waiting for budget is not a failure: reschedule without counting an attempt.
        with rt.sessions.begin() as session:
            lifecycle.rate_limited(session, batch_id, wait.provider, wait.wait_seconds)
        retry_later(task, wait.wait_seconds)
    except ProviderError as error:
        count_failure(task, rt, batch_id, error.provider, str(error))
    return {"batch_id": batch_id, **summary}


def count_failure(
    task: Task, rt: WorkerRuntime, batch_id: str, provider: str, reason: str
) -> NoReturn:
    with rt.sessions.begin() as session:
        decision = lifecycle.failed(
            session,
            batch_id,
            provider=provider,
            reason=reason,
            task_name=PROCESS_BATCH_TASK,
            payload={"batch_id": batch_id},
            policy=rt.retry_policy,
        )
    if decision.countdown is None:
        log.error(
            "batch %s dead-lettered after %d attempts: %s",
            batch_id,
            decision.failed_attempts,
            reason,
        )
        raise BatchDeadLettered(reason)
    log.warning(
        "batch %s attempt %d failed (%s); retrying in %.1fs",
        batch_id,
        decision.failed_attempts,
        reason,
        decision.countdown,
    )
    retry_later(task, decision.countdown)


def record_uncounted_retry(
    rt: WorkerRuntime, batch_id: str, component: str, error: str, countdown: float
) -> None:
    """Best effort: with the database down there is nowhere to write it, and that is fine."""
    try:
        with rt.sessions.begin() as session:
            AuditLogService(session).record(
                batch_id,
                AuditEvent.RETRIED,
                counted=False,
                unavailable=component,
                reason=f"{component} unavailable ({error})",
                countdown_seconds=round(countdown, 3),
            )
    except Exception as exc:
        log.info("batch %s: retry not written to the audit log (%s)", batch_id, type(exc).__name__)
