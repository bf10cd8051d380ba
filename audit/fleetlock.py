"""Locks that one process of the whole fleet holds at a time, in Redis.

SET NX PX with a random token; only the holder's token releases it, and the TTL frees it
when a holder dies. Used for work the fleet must do once: a supplier's first lookup, the
shared Pluggy key.
"""

from __future__ import annotations

import secrets

from redis import Redis

_DELETE_IF_EQUAL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class FleetLocks:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._delete_if_equal = redis.register_script(_DELETE_IF_EQUAL)

    def try_acquire(self, name: str, ttl_seconds: float) -> str | None:
        """The holder's token, or None when another process holds the lock."""
        token = secrets.token_hex(8)
        if self.redis.set(name, token, nx=True, px=max(1, int(ttl_seconds * 1000))):
            return token
        return None

    def release(self, name: str, token: str) -> None:
        self.delete_if_equal(name, token)

    def delete_if_equal(self, key: str, value: str) -> bool:
        """Delete `key` only while it still holds `value` (another process may have replaced it)."""
        return bool(self._delete_if_equal(keys=[key], args=[value]))
