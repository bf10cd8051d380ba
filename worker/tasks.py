"""Celery tasks: a thin layer that maps the pipeline's outcomes onto Celery's retry machinery.

Every run holds the batch's lease (audit.leases) and renews it while it works, so a worker
killed hard is noticed by the recovery pass within a lease; a run that finds another live
run holding the batch (a duplicate message) does not run it.

Six kinds of trouble, six answers:
- no budget now (the fleet limiter, or a provider's 429): reschedule, not counted;
- the provider's circuit breaker is open (an outage, fleet-wide): wait for the next probe,
  not counted, up to BREAKER_MAX_WAIT_SECONDS in all; then dead-letter with the reason;
- a provider fails (ProviderError): a counted attempt; backoff, then dead-letter;
- the platform's own database or Redis is unreachable: retried with capped backoff and never
  counted, since the work itself is fine (and a dead letter could not even be written);
- a deterministic internal error (bad data meeting code: ValueError, OverflowError, ...):
  it would happen again identically, so the batch is dead-lettered at once with the reason;
- anything else (an answer nobody foresaw): a counted attempt like a provider failure, so it
  too ends as a dead letter that says why instead of a batch stuck forever.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any, NoReturn

from celery import Task
from celery.exceptions import Reject, Retry
from opentelemetry import trace
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DataError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from audit import lifecycle
from audit.auditlog import AuditEvent, AuditLogService
from audit.observability import metrics
from audit.observability.tracing import attempt_scope
from audit.providers.base import (
    ProviderCircuitOpen,
    ProviderError,
    ProviderRateLimited,
    RateLimitWait,
)
from audit.retry import RetryPolicy
from worker.celery_app import PROCESS_BATCH_TASK, app
from worker.runtime import WorkerRuntime, runtime
from worker.webhook_dispatch import publish_new_for_batch

log = logging.getLogger(__name__)

DATABASE_DOWN = (OperationalError, InterfaceError, PoolTimeoutError)
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)
# Errors that the same input raises every time: retrying spends attempts and changes nothing.
# (UnicodeError is a ValueError; decimal's InvalidOperation an ArithmeticError.)
DETERMINISTIC = (ArithmeticError, ValueError, TypeError, LookupError, AttributeError, DataError)


class BatchDeadLettered(Exception):
    """Ends the Celery task as FAILURE once the batch is dead-lettered; never retried."""


def retry_reason(error: ProviderError) -> str:
    """A small, fixed set of values for the retries metric's `reason` label."""
    if isinstance(error, ProviderRateLimited):
        return "provider_429"
    return type(error).__name__.removeprefix("Provider").lower() or "error"


def retry_later(task: Task, countdown: float) -> NoReturn:
    """Publish the retry; if even that fails, put the message back instead of dropping it."""
    try:
        raise task.retry(countdown=countdown, max_retries=None)
    except Reject as failed_publish:
        log.warning("could not publish a retry (%s); requeueing the message", failed_publish)
        raise Reject(str(failed_publish), requeue=True) from None


# No Celery result: a batch's status, progress and summary live in PostgreSQL, where GET
# /tasks/{id} reads them. Storing a result too cost two Redis writes a task (STARTED, then
# the result) and kept an entry nobody read for a week.
@app.task(name=PROCESS_BATCH_TASK, bind=True, max_retries=None, ignore_result=True)
def process_batch_expenses(self: Task, batch_id: str) -> dict[str, Any]:
    started = time.perf_counter()
    outcome = "failure"
    try:
        result, outcome = leased(self, batch_id)
        return result
    except Retry:
        outcome = "retry"
        raise
    except BatchDeadLettered:
        outcome = "dead_lettered"
        raise
    finally:
        metrics.TASKS.labels(PROCESS_BATCH_TASK, outcome).inc()
        metrics.TASK_DURATION.labels(PROCESS_BATCH_TASK, outcome).observe(
            time.perf_counter() - started
        )


def leased(task: Task, batch_id: str) -> tuple[dict[str, Any], str]:
    """Run under the batch's lease: renewed while it works, handed to the retry when the run
    ends with one, released when it ends for good."""
    rt = runtime()
    try:
        acquired = rt.leases.acquire(batch_id)
    except REDIS_DOWN:
        return guarded(task, batch_id)  # the broker is Redis too: the retry path handles it
    lease = acquired.value
    if lease is None:
        # A duplicate message (the broker handing out a killed worker's message late, or a
        # recovered batch's original): another live run has the batch. Look again once its
        # lease could have lapsed; by then it is finished, or its worker died.
        countdown = acquired.held_for + random.uniform(0.5, 1.5)
        log.info(
            "batch %s runs elsewhere under a live lease; looking again in %.0fs",
            batch_id,
            countdown,
        )
        metrics.RETRIES.labels(PROCESS_BATCH_TASK, "leased_elsewhere", "platform").inc()
        retry_later(task, countdown)
    retry_in: float | None = None
    try:
        with rt.leases.kept(batch_id, lease):
            return guarded(task, batch_id)
    except Retry as retry:
        retry_in = float(retry.when) if isinstance(retry.when, int | float) else 0.0
        raise
    finally:
        try:
            if retry_in is not None:
                rt.leases.wait(batch_id, lease, retry_in)
            else:
                rt.leases.release(batch_id, lease)
        except REDIS_DOWN:
            pass  # the lease expires by itself


def guarded(task: Task, batch_id: str) -> tuple[dict[str, Any], str]:
    """Audit the batch; map the platform's own outages and unforeseen errors to retries."""
    rt = runtime()
    try:
        return audit_batch(task, rt, batch_id)
    except (Retry, Reject, BatchDeadLettered):
        raise
    except DATABASE_DOWN + REDIS_DOWN as exc:
        component = "database" if isinstance(exc, DATABASE_DOWN) else "redis"
        policy = RetryPolicy(
            base_seconds=rt.settings.retry_backoff_base_seconds,
            max_seconds=rt.settings.infrastructure_retry_max_seconds,
            jitter_ratio=rt.settings.retry_jitter_ratio,
        )
        countdown = policy.countdown(task.request.retries + 1)
        log.warning(
            "batch %s: %s unavailable (%s); retrying in %.1fs, not counted as an attempt",
            batch_id,
            component,
            type(exc).__name__,
            countdown,
        )
        record_uncounted_retry(rt, batch_id, component, type(exc).__name__, countdown)
        metrics.RETRIES.labels(PROCESS_BATCH_TASK, f"{component}_unavailable", "platform").inc()
        retry_later(task, countdown)
    except Exception as exc:
        log.exception("batch %s: unexpected error", batch_id)
        lines = str(exc).splitlines() or [""]
        reason = f"internal error {type(exc).__name__}: {lines[0][:300]}"
        if isinstance(exc, DETERMINISTIC):
            dead_letter_at_once(rt, batch_id, "internal", f"{reason} (deterministic, not retried)")
        count_failure(task, rt, batch_id, "internal", reason, "internal")


def audit_batch(task: Task, rt: WorkerRuntime, batch_id: str) -> tuple[dict[str, Any], str]:
    span = trace.get_current_span()
    span.set_attribute("batch.id", batch_id)
    begun = rt.auditor.begin(batch_id)  # marks it started and reads it: one transaction
    if begun is None:
        log.info("batch %s is unknown or already finished; nothing to do", batch_id)
        return {"batch_id": batch_id, "skipped": True}, "skipped"
    work, attempt = begun
    span.set_attribute("retry.attempt", attempt)
    try:
        with attempt_scope(attempt):
            outcome = rt.auditor.audit(work)
    except RateLimitWait as wait:
        # Waiting for budget is not a failure: reschedule without counting an attempt.
        with rt.sessions.begin() as session:
            lifecycle.rate_limited(session, batch_id, wait.provider, wait.wait_seconds)
        metrics.RETRIES.labels(PROCESS_BATCH_TASK, "rate_limit_wait", wait.provider).inc()
        retry_later(task, wait.come_back_in())
    except ProviderCircuitOpen as opened:
        wait_for_provider(task, rt, batch_id, opened)
    except ProviderRateLimited as limited:
        # A 429 says "later", not "broken": wait it out uncounted, up to a generous bound.
        countdown = max(limited.retry_after or 1.0, 0.5) * random.uniform(1.0, 1.2)
        with rt.sessions.begin() as session:
            waits = lifecycle.rate_limited(
                session, batch_id, limited.provider, countdown, reason="provider 429"
            )
        if waits > rt.settings.max_rate_limited_waits:
            count_failure(task, rt, batch_id, limited.provider, str(limited), "provider_429")
        metrics.RETRIES.labels(PROCESS_BATCH_TASK, "provider_429", limited.provider).inc()
        retry_later(task, countdown)
    except ProviderError as error:
        count_failure(task, rt, batch_id, error.provider, str(error), retry_reason(error))
    if outcome.deliveries:
        publish_new_for_batch(rt.sessions, batch_id)  # the outbox rows committed with SUCCESS
    return {"batch_id": batch_id, **outcome.summary}, "success"


def wait_for_provider(
    task: Task, rt: WorkerRuntime, batch_id: str, opened: ProviderCircuitOpen
) -> NoReturn:
    """An outage: wait for the breaker's next probe without spending an attempt, until the
    batch has waited BREAKER_MAX_WAIT_SECONDS in all; then dead-letter with the reason."""
    countdown = max(opened.wait_seconds, 0.5) * random.uniform(1.0, 1.2)
    with rt.sessions.begin() as session:
        waited = lifecycle.waiting_for_provider(
            session, batch_id, opened.provider, countdown, reason=opened.reason
        )
    limit = rt.settings.breaker_max_wait_seconds
    if waited > limit:
        dead_letter_at_once(
            rt,
            batch_id,
            opened.provider,
            f"{opened.provider} unavailable for longer than the {limit:.0f}s a batch waits "
            f"for an open circuit breaker ({opened.reason})",
        )
    metrics.RETRIES.labels(PROCESS_BATCH_TASK, "circuit_open", opened.provider).inc()
    log.info(
        "batch %s: %s circuit open; waiting %.1fs (%.0fs in all), not counted",
        batch_id,
        opened.provider,
        countdown,
        waited,
    )
    retry_later(task, countdown)


def dead_letter_at_once(rt: WorkerRuntime, batch_id: str, provider: str, reason: str) -> NoReturn:
    """Dead-letter now, whatever attempts are left: retrying cannot help."""
    with rt.sessions.begin() as session:
        lifecycle.dead_letter_now(
            session,
            batch_id,
            provider=provider,
            reason=reason,
            task_name=PROCESS_BATCH_TASK,
            payload={"batch_id": batch_id},
        )
    publish_new_for_batch(rt.sessions, batch_id)  # the outbox rows committed with FAILURE
    metrics.DEAD_LETTERS.labels(PROCESS_BATCH_TASK, provider).inc()
    log.error("batch %s dead-lettered at once: %s", batch_id, reason)
    raise BatchDeadLettered(reason)


def count_failure(
    task: Task, rt: WorkerRuntime, batch_id: str, provider: str, reason: str, label: str
) -> NoReturn:
    """Count a failed attempt: retry after the backoff, or dead-letter when they are spent."""
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
        publish_new_for_batch(rt.sessions, batch_id)  # the outbox rows committed with FAILURE
        metrics.DEAD_LETTERS.labels(PROCESS_BATCH_TASK, provider).inc()
        log.error(
            "batch %s dead-lettered after %d attempts: %s",
            batch_id,
            decision.failed_attempts,
            reason,
        )
        raise BatchDeadLettered(reason)
    metrics.RETRIES.labels(PROCESS_BATCH_TASK, label, provider).inc()
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
