"""Fair queuing of audit work between tenants: per-tenant backlogs and deficit round robin.

Why. Celery on Redis has one list per queue, served first in, first out: a tenant that posts a
thousand batches at month-end puts them all ahead of a tenant that posts five a second later,
who then waits for the whole flood. Priorities do not help (they are per message, not per
tenant) and a queue per tenant does not either (kombu's Redis transport rotates BRPOP over the
queues a worker consumes, so it would be fair, but every worker would have to consume every
tenant's queue: thousands of keys in each BRPOP, and KEDA's trigger reads one key).

How. Accepted batches do not go to the Celery queue list. Each goes, as a ready Celery message,
to its tenant's backlog (a Redis list, FIFO within the tenant) and the tenant joins the ring
of active tenants. A dispatch step moves messages from the backlogs to the Celery queue list by
deficit round robin (Shreedhar and Varghese, 1995: each turn a tenant earns `quantum x weight`
expenses of credit and sends batches while its credit covers the next one; O(1) per batch, fair
for batches of different sizes, weights equal by default). Only a few messages are kept in the
queue list ahead of the fleet (about the free worker slots), so a new tenant's first batch is
dispatched within a moment: the flood waits in its own backlog, not in front of others.

Why this shape fits Celery on Redis:
- The move is one Lua script: a batch is in its backlog or in the queue list, never in
  between, and never in both; a crash of any process at any moment loses nothing and sends
  nothing twice. (A "claim, send_task, ack the claim" design needs stale-claim recovery and can
  publish twice; building the message at submission lets the script move it as is.)
- Workers stay plain Celery consumers of one list: acks_late, reject-on-worker-lost, retries
  (a retry is republished to the list by Celery, as before), dead letters and idempotent writes
  are untouched.
- It is work-conserving: dispatch runs where slots free up (after every task, for its
  successor), on submission, and on a short tick in every worker that tops the list up to that
  worker's idle slots, so no slot idles while any backlog holds work.
- The dispatcher needs no lock or leader: every run is one atomic script, any number may run.
- KEDA still reads plain keys: the `pending` hash (one field per backlogged batch) is the
  total backlog, added to the queue list and the unacked hash in the ScaledObject's formula.

What it does not cover: a retry (a countdown after a provider failure or a limiter wait) is
republished by Celery straight to the queue list; it is work already dispatched in its turn,
and the provider budgets it waits for are shared fairly by audit/ratelimit.py. Batches
re-enqueued by id (a dead-letter replay, `requeue-lost`, lease recovery) go back to their
tenant's backlog like new ones (worker/enqueue.py reads the tenant from the database).
The scripts use LMOVE (and the limiter's fair share ZADD GT): Redis 6.2 or later (the chart
runs 7.4).

This module knows nothing of Celery: the messages are opaque strings made by worker/enqueue.py
and pushed (LPUSH, the end kombu's consumers BRPOP from the other side) onto the destination
list. Keys live under `<queue>:fair:`; the scripts build tenant keys from that prefix, which is
fine on one Redis (not Redis Cluster, which the platform does not use).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

from redis import Redis
from sqlalchemy import select
from sqlalchemy.orm import Session

DEFAULT_WEIGHT = 1.0
MAX_WEIGHT = 1000.0

# The dispatch loop, shared by both scripts. Keys under P (ARGV prefix):
#   P..'pending'   hash  batch id -> message   (HLEN = total backlog; KEDA reads it)
#   P..'cost'      hash  batch id -> cost (expenses)
#   P..'owner'     hash  batch id -> tenant
#   P..'t:'..T     list  tenant T's batch ids, oldest first
#   P..'ring'      list  active tenants, the one whose turn it is first
#   P..'deficit'   hash  tenant -> credit left from its turns
#   P..'turn'      string the tenant whose current turn has already been credited
#   P..'weights'   hash  tenant -> weight (absent: 1)
_DISPATCH = """
-- A whole round in which no tenant's credit covered its next batch: add the rounds that
-- would pass the same way to every tenant at once (exactly what DRR would do, in O(tenants)),
-- so a batch far larger than the quantum costs no more steps than a small one.
local function skip_idle_rounds(P, quantum)
  local tenants = redis.call('LRANGE', P..'ring', 0, -1)
  local rounds = nil
  local rows = {}
  for _, t in ipairs(tenants) do
    local head = redis.call('LINDEX', P..'t:'..t, 0)
    if head then
      local earn = quantum * tonumber(redis.call('HGET', P..'weights', t) or '1')
      local credit = tonumber(redis.call('HGET', P..'deficit', t) or '0')
      local cost = tonumber(redis.call('HGET', P..'cost', head) or '1')
      local need = math.ceil((cost - credit) / earn)
      if rounds == nil or need < rounds then rounds = need end
      rows[#rows + 1] = {t, credit, earn}
    end
  end
  if rounds == nil or rounds <= 1 then return end
  for _, row in ipairs(rows) do
    redis.call('HSET', P..'deficit', row[1], row[2] + (rounds - 1) * row[3])
  end
end

local function dispatch(P, queue, target, quantum)
  local room = target - redis.call('LLEN', queue)
  local moved = 0
  local steps = 0
  local misses = 0
  while moved < room and steps < 20000 do
    steps = steps + 1
    local t = redis.call('LINDEX', P..'ring', 0)
    if not t then break end
    local backlog = P..'t:'..t
    local head = redis.call('LINDEX', backlog, 0)
    if not head then
      redis.call('LPOP', P..'ring')
      redis.call('HDEL', P..'deficit', t)
      redis.call('DEL', P..'turn')
    else
      local credit = tonumber(redis.call('HGET', P..'deficit', t) or '0')
      if redis.call('GET', P..'turn') ~= t then
        credit = credit + quantum * tonumber(redis.call('HGET', P..'weights', t) or '1')
        redis.call('SET', P..'turn', t)
      end
      local cost = tonumber(redis.call('HGET', P..'cost', head) or '1')
      if credit >= cost then
        redis.call('LPOP', backlog)
        local message = redis.call('HGET', P..'pending', head)
        redis.call('HDEL', P..'pending', head)
        redis.call('HDEL', P..'cost', head)
        redis.call('HDEL', P..'owner', head)
        if message then
          redis.call('LPUSH', queue, message)
          moved = moved + 1
        end
        misses = 0
        credit = credit - cost
        if redis.call('LLEN', backlog) == 0 then
          -- An emptied backlog leaves the ring with its credit (DRR: no hoarding while idle).
          redis.call('LPOP', P..'ring')
          redis.call('HDEL', P..'deficit', t)
          redis.call('DEL', P..'turn')
        else
          redis.call('HSET', P..'deficit', t, credit)
        end
      else
        -- Turn over: keep the credit, next tenant.
        redis.call('HSET', P..'deficit', t, credit)
        redis.call('LMOVE', P..'ring', P..'ring', 'LEFT', 'RIGHT')
        redis.call('DEL', P..'turn')
        misses = misses + 1
        if misses >= redis.call('LLEN', P..'ring') then
          skip_idle_rounds(P, quantum)
          misses = 0
        end
      end
    end
  end
  return moved
end
"""

# ARGV: prefix, queue, target, quantum. Returns messages moved.
_TOP_UP = (
    _DISPATCH
    + """
return dispatch(ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]))
"""
)

# ARGV: prefix, queue, target, quantum, batch id, tenant, cost, message, weight ('' = keep).
# Returns {1 if backlogged now, 0 if it was already waiting; messages moved}.
_PUSH = (
    _DISPATCH
    + """
local P, batch, tenant = ARGV[1], ARGV[5], ARGV[6]
local added = redis.call('HSETNX', P..'pending', batch, ARGV[8])
if added == 1 then
  redis.call('HSET', P..'cost', batch, ARGV[7])
  redis.call('HSET', P..'owner', batch, tenant)
  if ARGV[9] ~= '' then redis.call('HSET', P..'weights', tenant, ARGV[9]) end
  if redis.call('RPUSH', P..'t:'..tenant, batch) == 1 then
    redis.call('LREM', P..'ring', 0, tenant)
    redis.call('RPUSH', P..'ring', tenant)
  end
end
return {added, dispatch(P, ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]))}
"""
)

# ARGV: prefix, top N. Returns total, then tenant, length pairs (longest first), over the ring.
_SNAPSHOT = """
local P = ARGV[1]
local tenants = redis.call('LRANGE', P..'ring', 0, -1)
local rows = {}
for _, t in ipairs(tenants) do
  rows[#rows + 1] = {t, redis.call('LLEN', P..'t:'..t)}
end
table.sort(rows, function(a, b) return a[2] > b[2] end)
local out = {redis.call('HLEN', P..'pending'), #tenants}
for i = 1, math.min(#rows, tonumber(ARGV[2])) do
  out[#out + 1] = rows[i][1]
  out[#out + 1] = rows[i][2]
end
return out
"""


def fair_prefix(queue: str) -> str:
    return f"{queue}:fair:"


def pending_key(queue: str) -> str:
    """The hash of every backlogged batch: its length is the total backlog (KEDA reads it)."""
    return fair_prefix(queue) + "pending"


def validate_weight(weight: float) -> float:
    if not (math.isfinite(weight) and 0 < weight <= MAX_WEIGHT):
        raise ValueError(f"weight must be greater than 0 and at most {MAX_WEIGHT:g}")
    return float(weight)


@dataclass(frozen=True)
class BacklogSnapshot:
    """The backlog, for operators: the total and the tenants with the most waiting."""

    total: int
    active_tenants: int
    top: list[tuple[str, int]]  # (tenant, batches waiting), longest first


class FairQueue:
    """Per-tenant backlogs in front of one destination list (the Celery queue's)."""

    def __init__(self, redis: Redis, queue: str, *, quantum: int = 5) -> None:
        if quantum < 1:
            raise ValueError("quantum must be at least 1")
        self.redis = redis
        self.queue = queue
        self.prefix = fair_prefix(queue)
        self.quantum = quantum
        self._push = redis.register_script(_PUSH)
        self._top_up = redis.register_script(_TOP_UP)
        self._snapshot = redis.register_script(_SNAPSHOT)

    def push(
        self,
        batch_id: str,
        tenant: str,
        message: str,
        *,
        cost: int = 1,
        ahead: int = 1,
        weight: float | None = None,
    ) -> bool:
        """Backlog a batch (once: a batch already waiting is left as is) and top the queue
        list up to `ahead`. True when the batch was backlogged by this call."""
        args: list[str | int | float] = [
            self.prefix,
            self.queue,
            ahead,
            self.quantum,
            batch_id,
            tenant,
            max(1, cost),
            message,
            "" if weight is None else repr(validate_weight(weight)),
        ]
        added, _moved = cast("list[int]", self._push(args=args))
        return bool(added)

    def dispatch(self, target: int) -> int:
        """Move batches, fairly, until the queue list holds `target` messages or the backlogs
        are empty; returns how many moved."""
        if target <= 0:
            return 0
        return int(self._top_up(args=[self.prefix, self.queue, target, self.quantum]))

    def set_weight(self, tenant: str, weight: float) -> None:
        """A tenant's share relative to others (1 = equal); takes effect at its next turn."""
        weight = validate_weight(weight)
        if weight == DEFAULT_WEIGHT:
            self.redis.hdel(self.prefix + "weights", tenant)
        else:
            self.redis.hset(self.prefix + "weights", tenant, repr(weight))

    def weights(self) -> dict[str, float]:
        raw = cast("dict[bytes, bytes]", self.redis.hgetall(self.prefix + "weights"))
        return {k.decode(): float(v) for k, v in raw.items()}

    def waiting(self, tenant: str) -> int:
        return int(self.redis.llen(self.prefix + "t:" + tenant))

    def total(self) -> int:
        return int(self.redis.hlen(self.prefix + "pending"))

    def batch_ids(self) -> set[str]:
        """Every backlogged batch (for `requeue-lost`: these are held, not lost)."""
        return {k.decode() for k in cast("list[bytes]", self.redis.hkeys(self.prefix + "pending"))}

    def snapshot(self, top: int = 10) -> BacklogSnapshot:
        raw = cast("list[bytes | int]", self._snapshot(args=[self.prefix, max(0, top)]))
        total, active, *pairs = raw
        rows = [
            (cast("bytes", pairs[i]).decode(), int(pairs[i + 1])) for i in range(0, len(pairs), 2)
        ]
        return BacklogSnapshot(int(total), int(active), rows)


def stored_weights(session: Session) -> dict[str, float]:
    """Tenants whose weight is not the default, from the database (the record of truth)."""
    from audit.models import Tenant

    rows = session.execute(
        select(Tenant.id, Tenant.fair_weight).where(Tenant.fair_weight != DEFAULT_WEIGHT)
    )
    return {tenant_id: float(weight) for tenant_id, weight in rows}


def set_tenant_weight(session: Session, tenant_id: str, weight: float) -> None:
    """Store a tenant's weight; LookupError when the tenant does not exist. The caller then
    tells the fair queue (FairQueue.set_weight), which is what dispatch reads."""
    from audit.models import Tenant

    weight = validate_weight(weight)
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise LookupError(f"tenant {tenant_id} does not exist")
    tenant.fair_weight = weight


def sync_weights(session: Session, queue: FairQueue) -> int:
    """Copy the stored weights into Redis (a worker does it at start: a Redis that lost its
    data, or a queue renamed, gets the operators' weights back). Returns how many were set."""
    weights = stored_weights(session)
    for tenant_id, weight in weights.items():
        queue.set_weight(tenant_id, weight)
    return len(weights)
