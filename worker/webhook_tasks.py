"""The webhook delivery task: one attempt per message, on the webhooks queue.

The attempt and its bookkeeping are the domain's (audit.webhooks.delivery); this maps the
result onto the broker: a retry due soon is published with a countdown, a later one is left
to the dispatcher (worker/webhook_dispatch.py says why).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from functools import lru_cache
from typing import Any

from audit.db import session_factory
from audit.settings import get_settings
from audit.webhooks import outbox
from audit.webhooks.delivery import Deliverer
from worker.celery_app import DELIVER_WEBHOOK_TASK, app

log = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def _deliverer_for(pid: int) -> Deliverer:
    settings = get_settings()
    return Deliverer(session_factory(settings.database_url), settings)


def deliverer() -> Deliverer:
    """This process's deliverer (a forked child builds its own HTTP client)."""
    return _deliverer_for(os.getpid())


@app.task(name=DELIVER_WEBHOOK_TASK, ignore_result=True)
def deliver_webhook(delivery_id: str) -> dict[str, Any]:
    from worker.enqueue import EnqueueFailed, enqueue_webhook_delivery

    runner = deliverer()
    result = runner.attempt(delivery_id)
    settings = runner.settings
    if result.retry_in is not None and result.retry_in <= settings.webhook_inline_retry_max_seconds:
        with runner.sessions.begin() as session:
            outbox.mark_enqueued(session, [delivery_id], dt.datetime.now(dt.UTC))
        try:
            enqueue_webhook_delivery(delivery_id, countdown=result.retry_in)
        except EnqueueFailed as exc:
            log.warning("delivery %s: retry left to the dispatcher (%s)", delivery_id, exc)
            with runner.sessions.begin() as session:
                outbox.mark_enqueued(session, [delivery_id], None)
    return {
        "delivery_id": delivery_id,
        "outcome": result.outcome,
        "attempt": result.attempt,
        "status_code": result.status_code,
    }
