"""Per-tenant API request limit, and the failed-authentication limit per client address, on
the fleet-wide GCRA limiter (audit.ratelimit).

Every API process asks the same Redis key per tenant, so the limit holds across replicas.
A burst is allowed by letting a request reserve a slot up to `burst` intervals ahead
without waiting for it; a request that would need a slot further away gets 429 and
Retry-After. If Redis does not answer, the request is let through (logged): the limiter
protects the platform, and refusing every read while Redis restarts would do more harm.

A request whose key the process remembers (audit.auth.KeyCache) is admitted in one Redis
round trip (`admit`): the address check, the negative cache, the revocation generation and
the tenant's slot, in one script, awaited on the event loop (no threadpool trip).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
from dataclasses import dataclass
from typing import cast

from fastapi import HTTPException, Request, status
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from audit.auth import NO_REVOCATIONS, REVOCATIONS_KEY, CachedKey
from audit.ratelimit import RateLimiter
from audit.settings import Settings

log = logging.getLogger(__name__)

KEY_PREFIX = "api-tenant:"
AUTH_FAILURE_PREFIX = "api-authfail:"
# Keys found unknown are remembered a minute (by hash), so that a client repeating a bad key
# costs a Redis read, not a database query.
NEGATIVE_CACHE_PREFIX = "api-badkey:"
NEGATIVE_CACHE_SECONDS = 60

# KEYS[1] the address's failed-authentication budget, KEYS[2] the key's negative-cache mark,
# KEYS[3] the revocation generation, KEYS[4] the remembered tenant's budget (when there is
# one). ARGV[1] the address's burst (us; -1: no limit), ARGV[2] the remembered generation
# ('' none), ARGV[3] the tenant's interval (us; -1: no limit), ARGV[4] its longest wait (us),
# ARGV[5] the generation before any revocation. The address's block comes first (a client
# guessing keys is refused before anything else), then the negative cache; the tenant's slot
# is audit.ratelimit's GCRA (_RESERVE) on the key `enforce` uses.
# Returns {outcome (Outcome), microseconds, generation}.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local burst = tonumber(ARGV[1])
if burst >= 0 then
  local booked = redis.call('GET', KEYS[1])
  if booked and tonumber(booked) - now > burst then
    return {0, tonumber(booked) - now, ''}
  end
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {1, 0, ''}
end
local generation = redis.call('GET', KEYS[3]) or ARGV[5]
if ARGV[2] ~= generation then
  return {2, 0, generation}
end
local interval = tonumber(ARGV[3])
if interval < 0 then
  return {3, 0, generation}
end
local tat = now
local raw = redis.call('GET', KEYS[4])
if raw then
  tat = math.max(tonumber(raw), now)
end
local wait = tat - now
if wait > tonumber(ARGV[4]) then
  return {4, wait, generation}
end
local new_tat = tat + interval
redis.call('SET', KEYS[4], string.format('%d', new_tat),
           'PX', math.ceil((new_tat - now) / 1000) + 1000)
return {3, wait, generation}
"""
_US = 1_000_000


class Outcome(enum.IntEnum):
    BLOCKED_ADDRESS = 0
    KNOWN_BAD_KEY = 1
    LOOK_UP = 2  # nothing remembered, or remembered under an older generation
    ADMITTED = 3
    OVER_RATE = 4
    REDIS_UNAVAILABLE = 5


@dataclass(frozen=True)
class Admission:
    outcome: Outcome
    generation: str = ""  # the current revocation generation (LOOK_UP, ADMITTED)


def _limiter(request: Request, settings: Settings) -> RateLimiter:
    limiter: RateLimiter | None = getattr(request.app.state, "api_limiter", None)
    if limiter is None:
        client = Redis.from_url(settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        limiter = RateLimiter(client, prefix="ratelimit:", headroom=0.0)
        request.app.state.api_limiter = limiter
    return limiter


def _admit_script(request: Request, settings: Settings) -> AsyncScript:
    """The admission script on an asyncio client of the running event loop (uvicorn runs
    one per process; a test client may run several in turn, and a client is bound to one)."""
    loop = asyncio.get_running_loop()
    held: tuple[asyncio.AbstractEventLoop, AsyncScript] | None = getattr(
        request.app.state, "api_admit", None
    )
    if held is None or held[0] is not loop:
        client = AsyncRedis.from_url(
            settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5
        )
        held = (loop, client.register_script(_ADMIT))
        request.app.state.api_admit = held
    return held[1]


def api_redis(request: Request, settings: Settings) -> Redis:
    """The API process's Redis client (short timeouts), shared with the limiter."""
    return _limiter(request, settings).redis


def client_address(request: Request, settings: Settings) -> str:
    """The caller's address: the socket peer, or the entry TRUSTED_PROXY_HOPS from the right
    of X-Forwarded-For when the API sits behind that many proxies (an ingress)."""
    peer = request.client.host if request.client else "unknown"
    hops = settings.trusted_proxy_hops
    if hops == 0:
        return peer
    forwarded = [a.strip() for a in request.headers.get("x-forwarded-for", "").split(",")]
    chain = [a for a in forwarded if a] + [peer]
    return chain[-1 - hops] if len(chain) > hops else chain[0]


async def admit(
    request: Request, settings: Settings, digest: str, remembered: CachedKey | None
) -> Admission:
    """Every check before a key's lookup, and the remembered tenant's slot, in one round trip.

    Raises 429 for an address over its failed-authentication budget and for a remembered
    tenant over its rate; otherwise says whether the key is known bad, admitted (its slot
    taken) or must be looked up (then `enforce` takes the slot)."""
    limiter = _limiter(request, settings)
    auth_rate = settings.auth_failures_per_minute
    api_rate = settings.api_rate_per_minute
    address_burst = -1
    if auth_rate is not None:
        address_burst = math.floor(settings.auth_failure_burst * limiter.interval(auth_rate) * _US)
    interval, max_wait = -1, 0
    if api_rate is not None:
        interval = math.ceil(limiter.interval(api_rate) * _US)
        max_wait = math.floor(settings.api_rate_burst * limiter.interval(api_rate) * _US)
    keys = [
        limiter.prefix + AUTH_FAILURE_PREFIX + client_address(request, settings),
        NEGATIVE_CACHE_PREFIX + digest,
        REVOCATIONS_KEY,
    ]
    if remembered is not None:
        keys.append(limiter.prefix + KEY_PREFIX + remembered.tenant_id)
    script = _admit_script(request, settings)
    remembered_generation = remembered.generation if remembered is not None else ""
    args: list[str | int] = [
        address_burst,
        remembered_generation,
        interval,
        max_wait,
        NO_REVOCATIONS,
    ]
    try:
        reply = await script(keys=keys, args=args)
        outcome, micros, generation = cast("tuple[int, int, bytes]", reply)
    except RedisError as exc:
        log.warning("API admission not checked, Redis unavailable: %s", type(exc).__name__)
        return Admission(Outcome.REDIS_UNAVAILABLE)
    wait = int(micros) / _US
    if outcome == Outcome.BLOCKED_ADDRESS:
        assert auth_rate is not None
        raise _too_many_failures(settings, max(1, math.ceil(wait - address_burst / _US)))
    if outcome == Outcome.OVER_RATE:
        assert api_rate is not None
        raise _over_rate(api_rate, max(1, math.ceil(wait - max_wait / _US)))
    return Admission(Outcome(outcome), generation.decode())


def remember_bad_key(request: Request, settings: Settings, digest: str) -> None:
    """Mark the key (its hash) unknown for NEGATIVE_CACHE_SECONDS."""
    with contextlib.suppress(RedisError):
        redis = api_redis(request, settings)
        redis.set(NEGATIVE_CACHE_PREFIX + digest, b"1", ex=NEGATIVE_CACHE_SECONDS)


def _over_rate(rate: float, retry_after: int) -> HTTPException:
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        f"too many requests: this tenant may send {rate:g} a minute; retry in {retry_after} s",
        headers={"Retry-After": str(retry_after)},
    )


def _too_many_failures(settings: Settings, retry_after: int) -> HTTPException:
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        f"too many failed authentications from this address: at most "
        f"{settings.auth_failures_per_minute:g} a minute; retry in {retry_after} s",
        headers={"Retry-After": str(retry_after)},
    )


def count_failed_authentication(request: Request, settings: Settings) -> None:
    """Spend one of the address's failed authentications; 429 once they are spent."""
    rate = settings.auth_failures_per_minute
    if rate is None:
        return
    limiter = _limiter(request, settings)
    burst_seconds = settings.auth_failure_burst * limiter.interval(rate)
    key = AUTH_FAILURE_PREFIX + client_address(request, settings)
    try:
        reservation = limiter.reserve(key, rate, max_wait=burst_seconds)
    except RedisError as exc:
        log.warning("auth failure limit not enforced, Redis unavailable: %s", type(exc).__name__)
        return
    if not reservation.granted:
        raise _too_many_failures(settings, max(1, math.ceil(reservation.wait - burst_seconds)))


def enforce(request: Request, settings: Settings, tenant_id: str) -> None:
    """Raise 429 with Retry-After when the tenant is over its request rate."""
    rate = settings.api_rate_per_minute
    if rate is None:
        return
    limiter = _limiter(request, settings)
    burst_seconds = settings.api_rate_burst * limiter.interval(rate)
    try:
        reservation = limiter.reserve(KEY_PREFIX + tenant_id, rate, max_wait=burst_seconds)
    except RedisError as exc:
        log.warning("API rate limit not enforced, Redis unavailable: %s", type(exc).__name__)
        return
    if not reservation.granted:
        raise _over_rate(rate, max(1, math.ceil(reservation.wait - burst_seconds)))
