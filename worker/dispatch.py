"""Where the fair dispatcher runs in the worker fleet (the queuing itself: audit/fairqueue.py).

Dispatch is one atomic Redis script, so it needs no leader and no lock: any number of
processes may run it at once, and a process killed at any point leaves every batch either in
its tenant's backlog or in the queue list. It runs at the three moments work can start:

- on submission (worker/enqueue.py): the queue list is topped up to FAIR_QUEUE_AHEAD, so an
  idle fleet starts a batch at once;
- after every audit task, in the process that ran it: its successor is moved (target
  FAIR_QUEUE_AHEAD + 1, the slot about to free up plus the spare), so a busy fleet never waits
  for a tick and the list never holds more than about one message per finishing slot;
- on a tick (FAIR_DISPATCH_TICK_SECONDS) in every worker that consumes the audit queue: the
  list is topped up to that worker's idle slots (concurrency minus the requests it holds), so
  a new pod, a restarted one, or a backlog left by a crash fills every free slot within a tick.

Together: while any tenant has a backlog, no slot stays idle longer than a tick
(work-conserving), and the list holds only about as many messages as there are free slots,
which is what lets a tenant that arrives behind a flood start within a batch or two.
"""

from __future__ import annotations

import logging
import os
import threading
from functools import lru_cache
from typing import Any

from celery import bootsteps, signals
from celery.worker import state
from redis import Redis
from redis.exceptions import RedisError

from audit.fairqueue import FairQueue, sync_weights
from audit.settings import Settings, get_settings
from worker.celery_app import PROCESS_BATCH_TASK

log = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def _queue_for(pid: int, redis_url: str, queue: str, quantum: int) -> FairQueue:
    return FairQueue(
        Redis.from_url(redis_url, socket_connect_timeout=2.0, socket_timeout=5.0),
        queue,
        quantum=quantum,
    )


def fair_queue(settings: Settings) -> FairQueue:
    """This process's handle (a forked pool child builds its own)."""
    return _queue_for(
        os.getpid(), settings.redis_url, settings.audit_queue, settings.fair_quantum_expenses
    )


def dispatch_successor(sender: Any = None, **_: Any) -> None:
    """After an audit task, in its process: move the batch that takes over its slot."""
    if getattr(sender, "name", None) != PROCESS_BATCH_TASK:
        return
    settings = get_settings()
    try:
        fair_queue(settings).dispatch(settings.fair_queue_ahead + 1)
    except RedisError as exc:  # the tick will do it; the task's outcome is already recorded
        log.warning("fair dispatch after a task failed (%s)", type(exc).__name__)


def idle_slots(worker: Any) -> int:
    """Pool slots holding no request: concurrency minus requests received and not finished."""
    concurrency = int(getattr(worker, "concurrency", 0) or 0)
    return max(0, concurrency - len(state.reserved_requests))


signals.task_postrun.connect(dispatch_successor, weak=False)


class DispatchTick:
    """A thread in the worker's main process that tops the list up to this worker's idle slots."""

    def __init__(self, worker: Any, settings: Settings) -> None:
        self.worker = worker
        self.settings = settings
        self.queue = fair_queue(settings)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fair-dispatch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def tick(self) -> int:
        return self.queue.dispatch(idle_slots(self.worker))

    def _run(self) -> None:
        while not self._stop.wait(self.settings.fair_dispatch_tick_seconds):
            try:
                self.tick()
            except RedisError as exc:
                log.warning("fair dispatch tick: Redis unavailable (%s)", type(exc).__name__)
            except Exception:
                log.exception("fair dispatch tick failed")


def sync_stored_weights(settings: Settings, queue: FairQueue) -> None:
    """The operators' weights, from the database into Redis (best effort, at start)."""
    from audit.db import session_scope

    try:
        with session_scope(settings.database_url) as session:
            sync_weights(session, queue)
    except Exception as exc:  # a worker must start even so; weights default to equal
        log.warning("tenant weights not synced to the fair queue (%s)", type(exc).__name__)


class FairDispatcher(bootsteps.StartStopStep):  # type: ignore[misc]
    """Runs the tick in workers that consume the audit queue."""

    # After the pool has forked its processes: none inherits the tick thread mid-call.
    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        self.tick: DispatchTick | None = None

    def start(self, worker: Any) -> None:
        from worker.webhook_dispatch import consumes

        settings = get_settings()
        if consumes(worker, settings.audit_queue):
            self.tick = DispatchTick(worker, settings)
            sync_stored_weights(settings, self.tick.queue)
            self.tick.start()
            log.info("fair dispatch tick on, every %.1fs", settings.fair_dispatch_tick_seconds)

    def stop(self, worker: Any) -> None:
        # Stops before the pool drains: a worker shutting down takes no new work.
        if self.tick is not None:
            self.tick.stop()
