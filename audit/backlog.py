"""The outstanding audit work as KEDA sees it, read straight from the broker's Redis keys.

Celery's Redis transport keeps waiting messages in a list named after the queue, and every
message a worker has taken but not acknowledged (running, prefetched, or a retry held until
its countdown) in the `unacked` hash. KEDA's ScaledObject sums the two.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from redis import Redis

UNACKED_HASH = "unacked"


@dataclass(frozen=True)
class Backlog:
    queued: int  # waiting in the queue list
    in_flight: int  # taken by a worker and due now (running or prefetched)
    scheduled: int  # taken by a worker, held until a retry countdown ends

    @property
    def outstanding(self) -> int:
        """What the ScaledObject's formula (queued + unacked) computes."""
        return self.queued + self.in_flight + self.scheduled


def _eta(raw: bytes) -> dt.datetime | None:
    try:
        message = json.loads(raw)[0]
        eta = message.get("headers", {}).get("eta")
    except (ValueError, IndexError, AttributeError, TypeError):
        return None
    if not eta:
        return None
    parsed = dt.datetime.fromisoformat(eta)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def read_backlog(redis: Redis, queue: str, now: dt.datetime | None = None) -> Backlog:
    now = now or dt.datetime.now(dt.UTC)
    with redis.pipeline(transaction=True) as pipe:
        pipe.llen(queue)
        pipe.hvals(UNACKED_HASH)
        queued, unacked = pipe.execute()
    scheduled = sum(1 for raw in unacked if (eta := _eta(raw)) is not None and eta > now)
    return Backlog(queued=int(queued), in_flight=len(unacked) - scheduled, scheduled=scheduled)


def _task_id(raw: bytes, unacked: bool) -> str | None:
    try:
        decoded = json.loads(raw)
        message = decoded[0] if unacked else decoded
        task_id = message.get("headers", {}).get("id")
    except (ValueError, IndexError, AttributeError, TypeError):
        return None
    return str(task_id) if task_id else None


def task_ids_in_broker(redis: Redis, queue: str) -> set[str]:
    """Ids of every task the broker still holds: queued, or taken and not acknowledged."""
    with redis.pipeline(transaction=True) as pipe:
        pipe.lrange(queue, 0, -1)
        pipe.hvals(UNACKED_HASH)
        queued, unacked = pipe.execute()
    ids = {_task_id(raw, unacked=False) for raw in queued}
    ids |= {_task_id(raw, unacked=True) for raw in unacked}
    ids.discard(None)
    return {i for i in ids if i is not None}
