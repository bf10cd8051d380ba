"""Idempotency-Key, as the IETF httpapi draft and Stripe practise it.

A key is bound to the request it first came with: a fingerprint (SHA-256) of the tenant,
the route and the request body in canonical JSON (so whitespace and key order do not
matter). The same key with the same request replays the first answer; with a different
request it is refused (422); while the first request with that key is still being processed
it is refused too (409), so two racing requests never both decide. An empty key is 400.

Keys live IDEMPOTENCY_KEY_TTL_HOURS (24 h by default, Stripe's figure): after that, the key
is forgotten and a request with it is a new request.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from audit.fleetlock import FleetLocks

log = logging.getLogger(__name__)

IN_FLIGHT_PREFIX = "idempotency:in-flight:"


class IdempotencyKeyReused(ValueError):
    """The key was first used with a different request (422)."""


class IdempotencyKeyInFlight(RuntimeError):
    """A request with this key is still being processed (409)."""


def fingerprint(tenant_id: str, route: str, body: Any) -> str:
    canonical = json.dumps(
        {"tenant": tenant_id, "route": route, "body": body},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


@contextmanager
def processing(redis: Redis, tenant_id: str, key: str, ttl_seconds: float = 60.0) -> Iterator[None]:
    """Hold the key while its request is processed; IdempotencyKeyInFlight if another does.

    The lock expires by itself (a crashed API process), and a Redis that does not answer
    does not block submissions: the database's unique key still stops a duplicate batch.
    """
    locks = FleetLocks(redis)
    name = IN_FLIGHT_PREFIX + hashlib.sha256(f"{tenant_id}\n{key}".encode()).hexdigest()
    try:
        token = locks.try_acquire(name, ttl_seconds)
    except RedisError as exc:
        log.warning("Idempotency-Key not locked, Redis unavailable: %s", type(exc).__name__)
        yield
        return
    if token is None:
        raise IdempotencyKeyInFlight(key)
    try:
        yield
    finally:
        with suppress(RedisError):  # it expires
            locks.release(name, token)
