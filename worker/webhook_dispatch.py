"""Publishing webhook deliveries: right after a batch's final commit, and when they come due.

Why a dispatcher loop inside the webhooks worker, and not countdowns or celery beat:
a retry hours away cannot wait in the broker. On Redis a countdown message sits in the
`unacked` hash, and the broker hands it out again once `visibility_timeout` passes, so a
5-hour countdown under a 1-hour timeout would be delivered several times, early. The due
time therefore lives in the database (`next_attempt_at`), and this loop publishes what is
due every WEBHOOK_DISPATCH_INTERVAL_SECONDS. It runs in every worker that consumes the
webhooks queue, and a fleet lock in Redis lets one of them work per interval. Beat would be
one more Deployment that must run exactly once; a Kubernetes CronJob runs at most once a
minute and starts a pod each time; this loop needs neither, and the webhooks Deployment
never scales below one pod. `condo-audit webhooks dispatch-due` runs the same pass once,
for operators. Short retries (under WEBHOOK_INLINE_RETRY_MAX_SECONDS, far below the
visibility timeout) ride an ordinary task countdown and do not wait for the loop.

The same pass is the outbox's safety net: rows committed with a batch's status whose
publish never happened (a crash after the commit, Redis away) are found here too.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import Any

from celery import bootsteps
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.orm import Session, sessionmaker

from audit.db import make_engine
from audit.fleetlock import FleetLocks
from audit.observability import metrics
from audit.settings import Settings, get_settings
from audit.webhooks import outbox

log = logging.getLogger(__name__)

DISPATCH_LOCK = "condo-audit:webhooks:dispatch"


def publish(session_ids: list[str]) -> int:
    """Enqueue committed deliveries; on failure they stay for the dispatcher to find."""
    from worker.enqueue import EnqueueFailed, enqueue_webhook_delivery

    published = 0
    for delivery_id in session_ids:
        try:
            enqueue_webhook_delivery(delivery_id)
            published += 1
        except EnqueueFailed as exc:
            log.warning("delivery %s not enqueued (%s); the dispatcher will", delivery_id, exc)
            return published
    return published


def publish_new_for_batch(sessions: sessionmaker[Session], batch_id: str) -> int:
    """After the batch's final commit: publish its new deliveries. Best effort by design:
    the rows are committed, so anything not published here is published by the dispatcher."""
    try:
        with sessions.begin() as session:
            ids = outbox.take_new_for_batch(session, batch_id)
        return publish(ids)
    except Exception as exc:  # the batch is done either way; never fail it over this
        log.warning("batch %s: webhook deliveries left to the dispatcher (%s)", batch_id, exc)
        return 0


def dispatch_due(sessions: sessionmaker[Session], settings: Settings) -> int:
    """One pass: publish every due delivery that has no live message."""
    requeue_after = dt.timedelta(seconds=settings.webhook_requeue_after_seconds)
    with sessions.begin() as session:
        ids = outbox.take_due(session, requeue_after=requeue_after)
    published = publish(ids)
    if published < len(ids):
        # Not published: clear the mark so the next pass takes them at once.
        with sessions.begin() as session:
            outbox.mark_enqueued(session, ids[published:], None)
    if published:
        metrics.WEBHOOK_DISPATCHED.inc(published)
        log.info("dispatched %d due webhook deliveries", published)
    return published


class DispatcherLoop:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Its own engine and Redis client: the prefork pool's children never share them.
        self.sessions = sessionmaker(make_engine(settings.database_url), expire_on_commit=False)
        self.locks = FleetLocks(Redis.from_url(settings.redis_url))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhook-dispatcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        interval = self.settings.webhook_dispatch_interval_seconds
        while not self._stop.wait(interval):
            try:
                # Held until it expires, not released: one pass per interval for the fleet.
                if self.locks.try_acquire(DISPATCH_LOCK, interval * 0.9) is not None:
                    dispatch_due(self.sessions, self.settings)
            except RedisError as exc:
                log.warning("webhook dispatcher: Redis unavailable (%s)", type(exc).__name__)
            except Exception:
                log.exception("webhook dispatcher pass failed; next pass in %.0fs", interval)


def consumes(worker: Any, queue: str) -> bool:
    """Whether this worker was started to consume `queue` (-Q)."""
    try:
        return queue in worker.app.amqp.queues.consume_from
    except AttributeError:
        return False


class WebhookDispatcher(bootsteps.StartStopStep):  # type: ignore[misc]
    """Runs the dispatcher loop in workers that consume the webhooks queue."""

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        self.loop: DispatcherLoop | None = None

    def start(self, worker: Any) -> None:
        settings = get_settings()
        if consumes(worker, settings.webhook_queue):
            self.loop = DispatcherLoop(settings)
            self.loop.start()
            log.info(
                "webhook dispatcher on, every %.1fs", settings.webhook_dispatch_interval_seconds
            )

    def stop(self, worker: Any) -> None:
        if self.loop is not None:
            self.loop.stop()
