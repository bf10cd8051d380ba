"""Celery tasks: a thin layer that maps the pipeline's outcomes onto Celery's retry machinery."""

from __future__ import annotations

import logging
import random
from typing import Any, NoReturn

from celery import Task

from audit import lifecycle
from audit.providers.base import ProviderError, ProviderRateLimited, RateLimitWait
from worker.celery_app import PROCESS_BATCH_TASK, app
from worker.runtime import WorkerRuntime, runtime

log = logging.getLogger(__name__)


class BatchDeadLettered(Exception):
    """Ends the Celery task as FAILURE once the batch is dead-lettered; never retried."""


@app.task(name=PROCESS_BATCH_TASK, bind=True, max_retries=None)
def process_batch_expenses(self: Task, batch_id: str) -> dict[str, Any]:
    rt = runtime()
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
        raise self.retry(countdown=wait.wait_seconds, max_retries=None) from None
    except ProviderRateLimited as limited:
        # A 429 says "later", not "broken": wait it out uncounted, up to a generous bound.
        countdown = max(limited.retry_after or 1.0, 0.5) * random.uniform(1.0, 1.2)
        with rt.sessions.begin() as session:
            waits = lifecycle.rate_limited(
                session, batch_id, limited.provider, countdown, reason="provider 429"
            )
        if waits <= rt.settings.max_rate_limited_waits:
            raise self.retry(countdown=countdown, max_retries=None) from None
        return handle_failure(self, rt, batch_id, limited)
    except ProviderError as error:
        return handle_failure(self, rt, batch_id, error)
    return {"batch_id": batch_id, **summary}


def handle_failure(self: Task, rt: WorkerRuntime, batch_id: str, error: ProviderError) -> NoReturn:
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
        log.error(
            "batch %s dead-lettered after %d attempts: %s",
            batch_id,
            decision.failed_attempts,
            error,
        )
        raise BatchDeadLettered(str(error)) from None
    log.warning(
        "batch %s attempt %d failed (%s); retrying in %.1fs",
        batch_id,
        decision.failed_attempts,
        error,
        decision.countdown,
    )
    raise self.retry(countdown=decision.countdown, max_retries=None) from None
