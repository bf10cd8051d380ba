"""Recovery of batches whose worker died: enqueue again what holds no lease.

Every worker runs the pass on a timer (RECOVERY_INTERVAL_SECONDS); a fleet lock in Redis
lets one of them do it per interval. `condo-audit batches recover` runs the same pass once
(a CronJob, or an operator). A STARTED or RETRY batch holds a lease while a run works on it
and while its retry waits for its countdown (audit.leases); one without a lease lost its
worker (SIGKILL, OOM, node loss), so it goes back to PENDING and its message is published
again. The broker's visibility timeout plays no part: the dead worker's own message comes
back an hour later and is dropped then (the batch is finished, or leased by a live run).

Worst case from a kill to the batch running again: one lease (nobody renews it) plus one
interval (the next pass), plus the queue's wait: 60 + 30 s with the defaults.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from celery import bootsteps
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from audit.auditlog import AuditEvent, AuditLogService
from audit.batches import BatchStatus
from audit.db import make_engine
from audit.fleetlock import FleetLocks
from audit.leases import BatchLeases
from audit.models import Batch
from audit.settings import Settings, get_settings

log = logging.getLogger(__name__)

RECOVERY_LOCK = "condo-audit:recovery-lock"
LEASED = (BatchStatus.STARTED, BatchStatus.RETRY)


def recover_expired(
    sessions: sessionmaker[Session],
    leases: BatchLeases,
    enqueue: Callable[[str], None],
    *,
    dry_run: bool = False,
) -> list[str]:
    """Enqueue again the STARTED/RETRY batches that hold no lease; returns their ids."""
    with sessions() as session:
        candidates = list(session.scalars(select(Batch.id).where(Batch.status.in_(LEASED))))
    expired = leases.unleased(candidates)
    if dry_run or not expired:
        return expired
    recovered: list[str] = []
    for batch_id in expired:
        with sessions.begin() as session:
            # Only if it is still unfinished: it may have ended since the read above.
            moved = session.execute(
                update(Batch)
                .where(Batch.id == batch_id, Batch.status.in_(LEASED))
                .values(status=BatchStatus.PENDING)
            )
            if moved.rowcount != 1:  # type: ignore[attr-defined]
                continue
            AuditLogService(session).record(
                batch_id,
                AuditEvent.REQUEUED,
                reason="lease expired: its worker stopped renewing it (killed?)",
            )
        enqueue(batch_id)  # after the commit, so the log reads requeued -> started
        recovered.append(batch_id)
        log.warning("batch %s: lease expired, enqueued again", batch_id)
    return recovered


class RecoveryLoop:
    def __init__(self, settings: Settings, enqueue: Callable[[str], None]) -> None:
        self.settings = settings
        self.enqueue = enqueue
        # Its own engine and Redis client: the prefork pool's children never share them.
        self.sessions = sessionmaker(make_engine(settings.database_url), expire_on_commit=False)
        redis = Redis.from_url(settings.redis_url)
        self.locks = FleetLocks(redis)
        self.leases = BatchLeases(redis, settings.batch_lease_seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="batch-recovery", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def run_once(self) -> list[str]:
        """One pass, if no other worker made one this interval."""
        interval = self.settings.recovery_interval_seconds
        # Held until it expires, not released: one pass per interval for the whole fleet.
        if self.locks.try_acquire(RECOVERY_LOCK, interval * 0.9) is None:
            return []
        return recover_expired(self.sessions, self.leases, self.enqueue)

    def _run(self) -> None:
        interval = self.settings.recovery_interval_seconds
        while not self._stop.wait(interval):
            try:
                self.run_once()
            except RedisError as exc:
                log.warning("batch recovery: Redis unavailable (%s)", type(exc).__name__)
            except Exception:
                log.exception("batch recovery pass failed; next pass in %.0fs", interval)


class BatchRecovery(bootsteps.StartStopStep):  # type: ignore[misc]
    """Runs the recovery loop in every worker that consumes the audit queue."""

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        self.loop: RecoveryLoop | None = None

    def start(self, worker: Any) -> None:
        from worker.enqueue import enqueue_batch
        from worker.webhook_dispatch import consumes

        settings = get_settings()
        if consumes(worker, settings.audit_queue):
            self.loop = RecoveryLoop(settings, enqueue_batch)
            self.loop.start()
            log.info("batch recovery on, every %.1fs", settings.recovery_interval_seconds)

    def stop(self, worker: Any) -> None:
        if self.loop is not None:
            self.loop.stop()
