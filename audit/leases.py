"""Leases on batches, in Redis: how the fleet knows a batch's worker is still alive.

A worker that starts a batch takes its lease (`run:<token>`, expiring after
BATCH_LEASE_SECONDS) and renews it from a thread while the task runs. A batch rescheduled
with a countdown holds a `wait:` lease that expires a lease after the countdown is due.
When a worker is killed hard (SIGKILL, OOM, node loss) nobody renews its lease; the
recovery pass (worker/recovery.py) finds unfinished batches without a lease and enqueues
them again. That does not depend on the broker's visibility timeout, which only decides
when kombu hands the dead worker's message out again: that late duplicate finds the batch
running under someone else's live lease, or finished, and is dropped (`acquire` refuses).

Writes are idempotent (a batch's findings are replaced whole), so an original worker that
was only slow, not dead, and finishes after the recovered run does no harm.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from redis import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

PREFIX = "lease:batch:"

# KEYS[1] lease; ARGV[1] this run's value, ARGV[2] ttl ms. Taken (-1) unless another run
# holds it: then the milliseconds its lease has left.
_ACQUIRE = """
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, 1, 4) == 'run:' and held ~= ARGV[1] then
  return redis.call('PTTL', KEYS[1])
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return -1
"""

# KEYS[1] lease; ARGV[1] expected value, ARGV[2] ttl ms, ARGV[3] new value ('' = keep).
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local value = ARGV[1]
if ARGV[3] ~= '' then value = ARGV[3] end
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True)
class Acquired:
    """value: this run's lease; None when another run holds it for `held_for` more seconds."""

    value: str | None
    held_for: float


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class BatchLeases:
    """Take, renew, hand over and release the leases of batches."""

    def __init__(self, redis: Redis, lease_seconds: float) -> None:
        self.redis = redis
        self.lease_seconds = lease_seconds
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._renewer: _Renewer | None = None
        self._renewer_lock = threading.Lock()  # one renewer, however many threads keep leases

    def acquire(self, batch_id: str) -> Acquired:
        """Take the batch for this run, unless another live run holds it."""
        value = f"run:{secrets.token_hex(8)}"
        left = int(self._acquire(keys=[PREFIX + batch_id], args=[value, _ms(self.lease_seconds)]))
        if left < 0:
            return Acquired(value, 0.0)
        return Acquired(None, left / 1000)

    def renew(self, batch_id: str, value: str) -> bool:
        """Extend this run's lease; False when it was lost (expired and taken over)."""
        args: list[str | int] = [value, _ms(self.lease_seconds), ""]
        return bool(self._renew(keys=[PREFIX + batch_id], args=args))

    def wait(self, batch_id: str, value: str, countdown: float) -> None:
        """The run ends with a retry due in `countdown` s: the batch stays leased until then
        plus one lease, so a lost retry message (its worker died) is recovered after that."""
        args: list[str | int] = [value, _ms(countdown + self.lease_seconds), f"wait:{value[4:]}"]
        self._renew(keys=[PREFIX + batch_id], args=args)

    def release(self, batch_id: str, value: str) -> None:
        self._release(keys=[PREFIX + batch_id], args=[value])

    def unleased(self, batch_ids: Iterable[str]) -> list[str]:
        """Those of `batch_ids` that hold no lease (no live run, no pending retry)."""
        ids = list(batch_ids)
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for batch_id in ids:
            pipe.exists(PREFIX + batch_id)
        return [batch_id for batch_id, held in zip(ids, pipe.execute(), strict=True) if not held]

    def mark_enqueued(self, batch_id: str) -> None:
        """A recovered batch: no lease until a worker starts it (recovery skips PENDING)."""
        self.redis.delete(PREFIX + batch_id)

    @contextmanager
    def kept(self, batch_id: str, value: str) -> Iterator[None]:
        """Renew the lease every third of its length while the block runs.

        One renewer thread per process serves every kept lease: a batch starts and stops no
        thread of its own (a start and a join per batch, the join waiting for the thread to
        be scheduled on a busy machine)."""
        with self._renewer_lock:
            renewer = self._renewer
            while renewer is None or not renewer.add(batch_id, value):
                renewer = self._renewer = _Renewer(self)
        try:
            yield
        finally:
            renewer.remove(batch_id, value)


class _Renewer:
    """The thread that renews the kept leases when each falls due. A renewal runs under the
    lock, so once `remove` returns no renewal of that lease is under way or to come. The
    thread ends after IDLE_SECONDS with no lease added (a new one starts with the next
    lease), so a process holding leases no more keeps no thread.

    It never sleeps longer than a period, and a lease added now falls due a period from
    now, so `add` need not wake it: a batch that ends within a period (most) costs the
    thread nothing, not a wake-up and a turn at the GIL each."""

    IDLE_SECONDS = 60.0

    def __init__(self, leases: BatchLeases) -> None:
        self.leases = leases
        self.period = leases.lease_seconds / 3
        self.lock = threading.Condition()
        self.due: dict[tuple[str, str], float] = {}  # (batch, value) -> monotonic due time
        self.last_added = time.monotonic()
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name="lease", daemon=True)
        self.thread.start()

    def add(self, batch_id: str, value: str) -> bool:
        """Keep renewing this lease; False when the thread has ended (take a new renewer)."""
        with self.lock:
            if self.stopped:
                return False
            self.last_added = time.monotonic()
            self.due[(batch_id, value)] = self.last_added + self.period
            return True

    def remove(self, batch_id: str, value: str) -> None:
        with self.lock:
            self.due.pop((batch_id, value), None)

    def _run(self) -> None:
        with self.lock:
            try:
                while True:
                    now = time.monotonic()
                    for entry, due in list(self.due.items()):
                        if due <= now:
                            self._renew(entry)
                    if not self.due and now - self.last_added >= self.IDLE_SECONDS:
                        return
                    next_due = min(self.due.values(), default=now + self.period)
                    self.lock.wait(min(self.period, max(0.0, next_due - now)))
            finally:
                self.stopped = True

    def _renew(self, entry: tuple[str, str]) -> None:
        batch_id, value = entry
        try:
            if not self.leases.renew(batch_id, value):
                log.warning("batch %s: lease lost (taken over after expiry)", batch_id)
                del self.due[entry]
                return
        except RedisError as exc:
            log.warning("batch %s: lease not renewed (%s)", batch_id, type(exc).__name__)
        self.due[entry] = time.monotonic() + self.period
