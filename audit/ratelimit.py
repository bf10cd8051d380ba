"""One rate limiter for the whole fleet: GCRA in an atomic Redis script.

Celery's `rate_limit` counts per worker, so N workers would send N times a provider's
limit. Here every process and pod asks the same Redis key for its turn. The key holds the
theoretical arrival time (TAT) of the next request, in Redis' own clock (microseconds), so
clocks of different hosts never matter. A request is granted the slot at TAT and TAT moves
one emission interval (60 / rate seconds) on; slots are handed out back to back, so while
work waits no budget is left idle, and the sustained rate never exceeds the limit.

A caller may reserve a slot up to `max_wait` seconds ahead and sleep until it; a slot
further away is not reserved (no budget is held for a caller that goes away), the caller
gets the wait instead and reschedules itself (to a random moment inside max_wait before
the slot, `RateLimitWait.come_back_in`, so the callers sent away do not race for it). A
provider's 429 pushes TAT to the release time it announced, which slows every worker down
at once (`penalize`).

Fair shares between tenants. One shared budget handed out first come, first served goes to
whoever asks most often: a tenant with a thousand new suppliers has hundreds of batches
coming back for CNPJ lookups, and a tenant with five would wait for the whole flood. So a
request made for a tenant (`requests_for`, set by the pipeline around a batch) also passes a
per-tenant GCRA in the same script: while k tenants want the budget, each tenant's own TAT
moves k intervals per granted request, so each gets 1/k of the budget and a tenant over its
share is deferred (told to come back at its next fair slot) while the others take theirs. A
tenant alone moves its own TAT one interval, which never binds: nothing changes for a
single tenant and no slot is held back from it. "Wanting the budget" is a claim in a sorted
set, renewed at every request and lapsing one interval (plus 2 s) after the tenant's next fair
slot, so a tenant that stops asking stops holding a share within seconds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import cast

from redis import Redis

from audit.observability import metrics
from audit.observability.tracing import tracer
from audit.providers.base import RateLimitWait

# KEYS[1] the budget; ARGV[1] emission interval (us), ARGV[2] longest wait to reserve (us).
# Returns {granted 0/1, wait in us}.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local max_wait = tonumber(ARGV[2])
local tat = now
local raw = redis.call('GET', KEYS[1])
if raw then
  tat = math.max(tonumber(raw), now)
end
local wait = tat - now
if wait > max_wait then
  return {0, wait}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', new_tat),
           'PX', math.ceil((new_tat - now) / 1000) + 1000)
return {1, wait}
"""

# KEYS[1] the budget, KEYS[2] tenants wanting it (zset tenant -> claim expiry, us),
# KEYS[3] tenants' own TATs (hash); ARGV[1] interval (us), ARGV[2] longest wait (us),
# ARGV[3] tenant. Returns {granted 0/1, wait in us}.
_RESERVE_FAIR = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local max_wait = tonumber(ARGV[2])
local tenant = ARGV[3]
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local sharing = redis.call('ZCARD', KEYS[2])
if not redis.call('ZSCORE', KEYS[2], tenant) then sharing = sharing + 1 end
local tat = now
local raw = redis.call('GET', KEYS[1])
if raw then tat = math.max(tonumber(raw), now) end
local own = now
local own_raw = redis.call('HGET', KEYS[3], tenant)
if own_raw then own = math.max(tonumber(own_raw), now) end
local wait = tat - now
local need = wait
if sharing > 1 then need = math.max(wait, own - now) end
local claim = now + need + interval + 2000000
redis.call('ZADD', KEYS[2], 'GT', claim, tenant)
local ttl = math.ceil((need + (sharing + 1) * interval) / 1000) + 5000
redis.call('PEXPIRE', KEYS[2], ttl)
if need > max_wait then
  return {0, need}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', new_tat),
           'PX', math.ceil((new_tat - now) / 1000) + 1000)
redis.call('HSET', KEYS[3], tenant, string.format('%d', math.max(own, tat) + sharing * interval))
redis.call('PEXPIRE', KEYS[3], ttl)
return {1, wait}
"""

# KEYS[1] the budget; ARGV[1] back-off (us). Nobody is granted a slot before now + back-off.
_PENALIZE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local until_at = now + tonumber(ARGV[1])
local raw = redis.call('GET', KEYS[1])
if raw and tonumber(raw) >= until_at then
  return 0
end
redis.call('SET', KEYS[1], string.format('%d', until_at),
           'PX', math.ceil((until_at - now) / 1000) + 1000)
return 1
"""

_US = 1_000_000

_requester: ContextVar[str | None] = ContextVar("ratelimit_requester", default=None)


@contextmanager
def requests_for(tenant: str) -> Iterator[None]:
    """Provider requests made inside this block count against `tenant`'s fair share."""
    token = _requester.set(tenant)
    try:
        yield
    finally:
        _requester.reset(token)


@dataclass(frozen=True)
class Reservation:
    """granted: a slot is yours in `wait` seconds; else none was taken, come back in `wait`."""

    granted: bool
    wait: float


class RateLimiter:
    """Fleet-wide budgets, one Redis key per provider (and per endpoint where it counts so).

    `headroom` keeps the pace a little under the configured rate: a request granted at its
    slot still needs a few milliseconds to reach the provider, and that jitter must not make
    two requests land inside one of the provider's windows more often than the limit allows.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = "ratelimit:",
        headroom: float = 0.02,
        fair_share: bool = True,
    ):
        if not 0 <= headroom < 1:
            raise ValueError("headroom must be in [0, 1)")
        self.redis = redis
        self.prefix = prefix
        self.headroom = headroom
        self.fair_share = fair_share
        self._reserve = redis.register_script(_RESERVE)
        self._reserve_fair = redis.register_script(_RESERVE_FAIR)
        self._penalize = redis.register_script(_PENALIZE)

    def interval(self, rate_per_minute: float) -> float:
        """Seconds between two requests at this rate, headroom included."""
        if rate_per_minute <= 0:
            raise ValueError("rate_per_minute must be positive")
        return 60.0 / (rate_per_minute * (1 - self.headroom))

    def reserve(
        self,
        key: str,
        rate_per_minute: float,
        max_wait: float = 0.0,
        *,
        tenant: str | None = None,
    ) -> Reservation:
        """A slot on the budget; for a tenant (default: the one of `requests_for`), within
        its fair share of it."""
        interval_us = math.ceil(self.interval(rate_per_minute) * _US)
        max_wait_us = max(0, math.floor(max_wait * _US))
        tenant = tenant if tenant is not None else _requester.get()
        budget = self.prefix + key
        if tenant is not None and self.fair_share:
            granted, wait_us = cast(
                "list[int]",
                self._reserve_fair(
                    keys=[budget, budget + ":wanting", budget + ":tenants"],
                    args=[interval_us, max_wait_us, tenant],
                ),
            )
        else:
            granted, wait_us = cast(
                "list[int]", self._reserve(keys=[budget], args=[interval_us, max_wait_us])
            )
        return Reservation(granted=bool(granted), wait=int(wait_us) / _US)

    def acquire(self, key: str, rate_per_minute: float) -> float:
        """0 when a request may go now (its slot is taken), else seconds until the next slot."""
        reservation = self.reserve(key, rate_per_minute, 0.0)
        return 0.0 if reservation.granted else max(reservation.wait, 1e-6)

    def wait_turn(
        self, key: str, rate_per_minute: float, *, provider: str, max_wait: float
    ) -> float:
        """Block until this process's slot (at most max_wait); RateLimitWait if it is further.

        Returns the seconds slept. RateLimitWait is not a failure: the caller reschedules.
        """
        with tracer.start_as_current_span(
            "ratelimit.wait",
            attributes={"ratelimit.key": key, "ratelimit.provider": provider},
            # Having to come back later is pacing, not an error.
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            reservation = self.reserve(key, rate_per_minute, max_wait)
            span.set_attribute("ratelimit.granted", reservation.granted)
            span.set_attribute("ratelimit.wait_seconds", reservation.wait)
            if not reservation.granted:
                metrics.RATELIMIT_DEFERRED.labels(key).inc()
                raise RateLimitWait(provider, reservation.wait, window=max_wait)
            metrics.RATELIMIT_WAIT.labels(key).observe(reservation.wait)
            if reservation.wait > 0:
                time.sleep(reservation.wait)
            return reservation.wait

    def penalize(self, key: str, seconds: float) -> None:
        """Hold every worker back from this budget for `seconds` (a provider's 429)."""
        if seconds > 0:
            self._penalize(keys=[self.prefix + key], args=[math.ceil(seconds * _US)])

    def next_slot_in(self, key: str) -> float:
        """Seconds until the budget's next free slot (0 when free now); for metrics and tests."""
        return read_budgets(self.redis, [self.prefix + key])[self.prefix + key].ahead_seconds


@dataclass(frozen=True)
class BudgetReading:
    """A budget's TAT against Redis' clock at one instant (both in microseconds)."""

    now_us: int
    tat_us: int | None  # None: the key expired, nothing is booked

    @property
    def ahead_seconds(self) -> float:
        """How far ahead the next free slot is; 0 when a request would be granted now."""
        return 0.0 if self.tat_us is None else max(0.0, (self.tat_us - self.now_us) / _US)


def read_budgets(redis: Redis, keys: Sequence[str]) -> dict[str, BudgetReading]:
    """The one reader of the limiter's keys (metrics, `ops record`, tests): one round trip."""
    pipe = redis.pipeline(transaction=True)
    pipe.time()
    for key in keys:
        pipe.get(key)
    (seconds, micros), *raws = pipe.execute()
    now_us = int(seconds) * _US + int(micros)
    return {
        key: BudgetReading(now_us, None if raw is None else int(raw))
        for key, raw in zip(keys, raws, strict=True)
    }
