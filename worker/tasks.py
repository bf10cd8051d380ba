"""Celery tasks: a thin layer that maps the pipeline's outcomes onto Celery's retry machinery."""

from __future__ import annotations

import logging
import random
import time
from typing import Any, NoReturn

from celery import Task
from celery.exceptions import Retry
from opentelemetry import trace

from audit import lifecycle
from audit.observability import metrics
from audit.observability.tracing import attempt_scope
from audit.providers.base import ProviderError, ProviderRateLimited, RateLimitWait
from worker.celery_app import PROCESS_BATCH_TASK, app
from worker.runtime import WorkerRuntime, runtime

log = logging.getLogger(__name__)


class BatchDeadLettered(Exception):
    """Ends the Celery task as FAILURE once the batch is dead-lettered; never retried."""


def retry_reason(error: ProviderError) -> str:
    """A small, fixed set of values for the retries metric's `reason` label."""
    if isinstance(error, ProviderRateLimited):
        return "provider_429"
    return type(error).__name__.removeprefix("Provider").lower() or "error"


@app.task(name=PROCESS_BATCH_TASK, bind=True, max_retries=None)
def process_batch_expenses(self: Task, batch_id: str) -> dict[str, Any]:
    started = time.perf_counter()
    outcome = "failure"
    try:
        result, outcome = _process(self, batch_id)
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


def _process(self: Task, batch_id: str) -> tuple[dict[str, Any], str]:
    rt = runtime()
    span = trace.get_current_span()
    span.set_attribute("batch.id", batch_id)
    with rt.sessions.begin() as session:
        batch = lifecycle.start(session, batch_id)
        if batch is None:
            log.info("batch %s is unknown or already finished; nothing to do", batch_id)
            return {"batch_id": batch_id, "skipped": True}, "skipped"
        attempt = batch.failed_attempts + 1
    span.set_attribute("retry.attempt", attempt)
    try:
        with attempt_scope(attempt):
            summary = rt.auditor.run(batch_id)
    except RateLimitWait as wait:
        # Waiting for budget is not a failure: reschedule without counting an attempt.
        with rt.sessions.begin() as session:
            lifecycle.rate_limited(session, batch_id, wait.provider, wait.wait_seconds)
        metrics.RETRIES.labels(PROCESS_BATCH_TASK, "rate_limit_wait", wait.provider).inc()
        raise self.retry(countdown=wait.wait_seconds, max_retries=None) from None
    except ProviderRateLimited as limited:
        # A 429 says "later", not "broken": wait it out uncounted, up to a generous bound.
        countdown = max(limited.retry_after or 1.0, 0.5) * random.uniform(1.0, 1.2)
        with rt.sessions.begin() as session:
            waits = lifecycle.rate_limited(
                session, batch_id, limited.provider, countdown, reason="provider 429"
            )
        if waits > rt.settings.max_rate_limited_waits:
            fail_attempt(self, rt, batch_id, limited)
        metrics.RETRIES.labels(PROCESS_BATCH_TASK, "provider_429", limited.provider).inc()
        raise self.retry(countdown=countdown, max_retries=None) from None
    except ProviderError as error:
        fail_attempt(self, rt, batch_id, error)
    return {"batch_id": batch_id, **summary}, "success"


def fail_attempt(self: Task, rt: WorkerRuntime, batch_id: str, error: ProviderError) -> NoReturn:
    """Count a failed attempt: retry after the backoff, or dead-letter when they are spent."""
    with rt.sessions.begin() as session:
        decision = lifecycle.failed(
            session,
            batch_id,
            provider=error.provider,
            reason=str(error),
            task_name=PROCESS_BATCH_TASK,
            payload={"batch_id": batch_id},
            policy=rt.retry_policy,
        )
    if decision.countdown is None:
        metrics.DEAD_LETTERS.labels(PROCESS_BATCH_TASK, error.provider).inc()
        log.error(
            "batch %s dead-lettered after %d attempts: %s",
            batch_id,
            decision.failed_attempts,
            error,
        )
        raise BatchDeadLettered(str(error)) from None
    metrics.RETRIES.labels(PROCESS_BATCH_TASK, retry_reason(error), error.provider).inc()
    log.warning(
        "batch %s attempt %d failed (%s); retrying in %.1fs",
        batch_id,
        decision.failed_attempts,
        error,
        decision.countdown,
    )
    raise self.retry(countdown=decision.countdown, max_retries=None) from None
