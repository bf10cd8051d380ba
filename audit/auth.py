"""API keys: random secrets shown once, stored as SHA-256 hashes, each owned by a tenant.

An API process remembers a key's tenant a short while (KeyCache) so that a request costs no
database query. Revocation still takes effect at once everywhere: revoking bumps a
generation counter in Redis after the commit, every request reads that counter (in the
round trip it makes for the rate limit anyway), and a remembered key counts only under the
generation it was looked up in. Any revocation makes every process look its keys up again
once: revocations are rare, requests are not.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.orm import Session

from audit.models import ApiKey, Tenant
from audit.settings import get_settings

KEY_PREFIX = "ca_"
# Bumped after every committed revocation; a cached key is good only under the value it was
# looked up in.
REVOCATIONS_KEY = "api-keys:revocations"
# Without any revocation yet the counter does not exist; GET answers nothing, read as this.
NO_REVOCATIONS = "0"
# How long a process trusts a key it looked up, revocations aside (they count at once).
KEY_CACHE_SECONDS = 30.0


class RevocationNotAnnounced(RuntimeError):
    """The key is revoked in the database, but Redis did not take the new generation."""


@dataclass(frozen=True)
class IssuedKey:
    key_id: str
    tenant_id: str
    secret: str  # shown once, never stored


def hash_key(secret: str) -> str:
    # Keys carry 256 bits of randomness, so a fast hash is safe; no salt needed to resist guessing.
    return hashlib.sha256(secret.encode()).hexdigest()


def create_tenant(session: Session, name: str) -> Tenant:
    tenant = Tenant(name=name)
    session.add(tenant)
    session.flush()
    return tenant


def issue_key(session: Session, tenant_id: str, name: str = "") -> IssuedKey:
    if session.get(Tenant, tenant_id) is None:
        raise LookupError(f"tenant {tenant_id} does not exist")
    token = secrets.token_urlsafe(32)
    secret = f"{KEY_PREFIX}{token}"
    key = ApiKey(tenant_id=tenant_id, prefix=secret[:10], key_hash=hash_key(secret), name=name)
    session.add(key)
    session.flush()
    return IssuedKey(key_id=key.id, tenant_id=tenant_id, secret=secret)


def revoke_key(session: Session, key_id: str, redis_url: str | None = None) -> bool:
    """Revoke the key, commit, and tell every API process (RevocationNotAnnounced when Redis
    does not take it: the key is revoked, but cached copies live out their seconds).

    Commits itself because the announcement must follow the commit, never precede it: a
    process that looked the key up in between would cache it as active under the new
    generation."""
    key = session.get(ApiKey, key_id)
    if key is None or key.revoked_at is not None:
        return False
    key.revoked_at = dt.datetime.now(dt.UTC)
    session.commit()
    announce_revocation(redis_url or get_settings().redis_url)
    return True


def announce_revocation(redis_url: str) -> None:
    """Bump the revocation generation: API processes drop their cached keys at once."""
    client = Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.incr(REVOCATIONS_KEY)
    except RedisError as exc:
        raise RevocationNotAnnounced(
            f"the key is revoked, but Redis did not answer ({type(exc).__name__}): API "
            f"processes may accept it for up to {KEY_CACHE_SECONDS:g} s more"
        ) from exc
    finally:
        client.close()


def tenant_for_key(session: Session, secret: str) -> str | None:
    """The tenant id owning an active key, or None."""
    if not secret.startswith(KEY_PREFIX) or len(secret) > 200:
        return None
    digest = hash_key(secret)
    query = select(ApiKey.tenant_id, ApiKey.key_hash, ApiKey.revoked_at).where(
        ApiKey.key_hash == digest
    )
    key = session.execute(query).first()
    if key is None or key.revoked_at is not None:
        return None
    if not hmac.compare_digest(key.key_hash, digest):
        return None
    tenant_id: str = key.tenant_id
    return tenant_id


@dataclass(frozen=True)
class CachedKey:
    tenant_id: str
    generation: str  # the revocation generation the key was looked up under
    expires: float  # time.monotonic()


class KeyCache:
    """Key hash -> tenant for `ttl` seconds, in one process. The caller checks the entry's
    generation against Redis' before trusting it (see the module docstring)."""

    def __init__(self, ttl: float = KEY_CACHE_SECONDS, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[str, CachedKey] = {}

    def get(self, digest: str) -> CachedKey | None:
        entry = self._entries.get(digest)
        if entry is not None and entry.expires <= time.monotonic():
            self._entries.pop(digest, None)
            return None
        return entry

    def put(self, digest: str, tenant_id: str, generation: str) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # many distinct keys at once: start over, never grow
        self._entries[digest] = CachedKey(tenant_id, generation, time.monotonic() + self.ttl)

    def drop(self, digest: str) -> None:
        self._entries.pop(digest, None)
