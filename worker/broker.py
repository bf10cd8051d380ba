"""The broker's Redis layout, read in one place.

Celery's Redis transport (kombu) keeps waiting messages in a list named after the queue, and
every message a worker has taken but not acknowledged (running, prefetched, or a retry held
until its countdown) in the `unacked` hash, as JSON `[message, exchange, routing_key]`, with
the delivery time in `unacked_index`. KEDA's ScaledObject adds the list and the hash; the
metrics, `condo-audit ops status`, `batches requeue-lost` and the formula tests read the same
keys through this module, so they can never disagree on what is outstanding.

In front of the queue list sit the tenants' backlogs (audit/fairqueue.py): batches accepted
but not yet dispatched. Their total is the `<queue>:fair:pending` hash, the third key KEDA
adds; the per-tenant lengths are read here too, for `ops status` and the metrics.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from redis import Redis

from audit.fairqueue import BacklogSnapshot, FairQueue, pending_key

UNACKED_HASH = "unacked"
UNACKED_INDEX = "unacked_index"


@dataclass(frozen=True)
class Backlog:
    """Outstanding work on one queue, split the way an operator reasons about it."""

    queued: int  # waiting in the queue list
    in_flight: int  # taken by a worker and due now (running or prefetched)
    scheduled: int  # taken by a worker, held until a retry countdown ends
    key_lengths: dict[str, int] = field(default_factory=dict)  # as KEDA's scaler reads each key
    backlogged: int = 0  # accepted, waiting in the tenants' backlogs for their turn

    @property
    def unacked(self) -> int:
        return self.in_flight + self.scheduled

    @property
    def outstanding(self) -> int:
        """What the ScaledObject's formula (backlogs + queue list + unacked hash) computes."""
        return self.backlogged + self.queued + self.unacked


def _message(raw: bytes | str, unacked: bool) -> dict[str, Any] | None:
    """The message dict of a queued entry, or of an unacked `[message, exchange, key]`."""
    try:
        decoded = json.loads(raw)
        message = decoded[0] if unacked else decoded
    except (ValueError, TypeError, IndexError, KeyError):
        return None
    return message if isinstance(message, dict) else None


def _headers(message: dict[str, Any] | None) -> dict[str, Any]:
    headers = (message or {}).get("headers")
    return headers if isinstance(headers, dict) else {}


def message_eta(raw: bytes | str) -> dt.datetime | None:
    """The Celery `eta` of an unacked entry (a retry's countdown); None when absent or malformed."""
    eta = _headers(_message(raw, unacked=True)).get("eta")
    if not eta:
        return None
    try:
        when = dt.datetime.fromisoformat(str(eta))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def message_task_id(raw: bytes | str, *, unacked: bool) -> str | None:
    task_id = _headers(_message(raw, unacked)).get("id")
    return str(task_id) if task_id else None


def split_unacked(unacked: Iterable[bytes | str], now: dt.datetime) -> tuple[int, int]:
    """(in_flight, scheduled): scheduled entries carry an eta still in the future."""
    in_flight = scheduled = 0
    for raw in unacked:
        eta = message_eta(raw)
        if eta is not None and eta > now:
            scheduled += 1
        else:
            in_flight += 1
    return in_flight, scheduled


def key_length(redis: Redis, key: str) -> int:
    """Length by type, as KEDA's redis scaler reads a key: LLEN, HLEN, SCARD or ZCARD."""
    kind = redis.type(key)
    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    readers: dict[str, Callable[[str], Any]] = {
        "list": redis.llen,
        "hash": redis.hlen,
        "set": redis.scard,
        "zset": redis.zcard,
    }
    reader = readers.get(kind)
    return int(reader(key)) if reader else 0


def redis_now(redis: Redis) -> dt.datetime:
    """Redis' clock: every reader compares etas with the same clock, whatever the host's."""
    seconds, micros = redis.time()
    return dt.datetime.fromtimestamp(seconds + micros / 1e6, dt.UTC)


def read_backlog(
    redis: Redis,
    queue: str,
    *,
    unacked_key: str = UNACKED_HASH,
    extra_keys: tuple[str, ...] = (),
    now: dt.datetime | None = None,
) -> Backlog:
    """One consistent snapshot of the backlogs' total, the queue list and the unacked hash
    (a MULTI block: a batch moving from backlog to list is counted once)."""
    backlog_key = pending_key(queue)
    with redis.pipeline(transaction=True) as pipe:
        pipe.time()
        pipe.llen(queue)
        pipe.hvals(unacked_key)
        pipe.hlen(backlog_key)
        (seconds, micros), queued, unacked, backlogged = pipe.execute()
    now = now or dt.datetime.fromtimestamp(seconds + micros / 1e6, dt.UTC)
    in_flight, scheduled = split_unacked(unacked, now)
    keys = {queue: int(queued), unacked_key: len(unacked), backlog_key: int(backlogged)}
    for key in extra_keys:
        if key not in keys:
            keys[key] = key_length(redis, key)
    return Backlog(int(queued), in_flight, scheduled, keys, int(backlogged))


def tenant_backlogs(redis: Redis, queue: str, top: int = 10) -> BacklogSnapshot:
    """The backlog per tenant: total, active tenants, and the `top` longest backlogs."""
    return FairQueue(redis, queue).snapshot(top)


def task_ids_in_broker(redis: Redis, queue: str, *, unacked_key: str = UNACKED_HASH) -> set[str]:
    """Ids of every task the broker still holds: backlogged, queued, or taken and not
    acknowledged."""
    with redis.pipeline(transaction=True) as pipe:
        pipe.lrange(queue, 0, -1)
        pipe.hvals(unacked_key)
        pipe.hkeys(pending_key(queue))
        queued, unacked, backlogged = pipe.execute()
    ids = {message_task_id(raw, unacked=False) for raw in queued}
    ids |= {message_task_id(raw, unacked=True) for raw in unacked}
    ids |= {raw.decode() if isinstance(raw, bytes) else str(raw) for raw in backlogged}
    return {i for i in ids if i is not None}
