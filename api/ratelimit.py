"""Per-tenant API request limit on the fleet-wide GCRA limiter (audit.ratelimit).

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


def _limiter(request: Request, settings: Settings) -> RateLimiter:
    limiter: RateLimiter | None = getattr(request.app.state, "api_limiter", None)
    if limiter is None:
        client = Redis.from_url(settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        limiter = RateLimiter(client, prefix="ratelimit:", headroom=0.0)
        request.app.state.api_limiter = limiter
    return limiter


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
