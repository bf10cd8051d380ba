"""Celery tasks: a thin layer that maps the pipeline's outcomes onto Celery's retry machinery."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task

from audit import lifecycle
from audit.providers.base import ProviderError, RateLimitWait
from worker.celery_app import PROCESS_BATCH_TASK, app
from worker.runtime import runtime

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
    except ProviderError as error:
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
    return {"batch_id": batch_id, **summary}
