"""Per-tenant API request limit, and the failed-authentication limit per client address, on
the fleet-wide GCRA limiter (audit.ratelimit).

Every API process asks the same Redis key per tenant, so the limit holds across replicas.
A burst is allowed by letting a request reserve a slot up to `burst` intervals ahead
without waiting for it; a request that would need a slot further away gets 429 and
Retry-After. If Redis does not answer, the request is let through (logged): the limiter
protects the platform, and refusing every read while Redis restarts would do more harm.
"""

from __future__ import annotations

import logging
import math

from fastapi import HTTPException, Request, status
from redis import Redis
from redis.exceptions import RedisError

from audit.ratelimit import RateLimiter
from audit.settings import Settings

log = logging.getLogger(__name__)

KEY_PREFIX = "api-tenant:"
AUTH_FAILURE_PREFIX = "api-authfail:"


def _limiter(request: Request, settings: Settings) -> RateLimiter:
    limiter: RateLimiter | None = getattr(request.app.state, "api_limiter", None)
    if limiter is None:
        client = Redis.from_url(settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        limiter = RateLimiter(client, prefix="ratelimit:", headroom=0.0)
        request.app.state.api_limiter = limiter
    return limiter


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


def _too_many_failures(settings: Settings, retry_after: int) -> HTTPException:
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        f"too many failed authentications from this address: at most "
        f"{settings.auth_failures_per_minute:g} a minute; retry in {retry_after} s",
        headers={"Retry-After": str(retry_after)},
    )


def refuse_blocked_address(request: Request, settings: Settings) -> None:
    """429 before any key lookup when this address spent its failed-authentication budget:
    a client guessing keys costs one Redis read a request, not a database query."""
    rate = settings.auth_failures_per_minute
    if rate is None:
        return
    limiter = _limiter(request, settings)
    burst_seconds = settings.auth_failure_burst * limiter.interval(rate)
    key = AUTH_FAILURE_PREFIX + client_address(request, settings)
    try:
        ahead = limiter.next_slot_in(key)
    except RedisError as exc:
        log.warning("auth failure limit not enforced, Redis unavailable: %s", type(exc).__name__)
        return
    if ahead > burst_seconds:
        raise _too_many_failures(settings, max(1, math.ceil(ahead - burst_seconds)))


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
        retry_after = max(1, math.ceil(reservation.wait - burst_seconds))
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"too many requests: this tenant may send {rate:g} a minute; retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )
