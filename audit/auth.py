"""API keys: random secrets shown once, stored as SHA-256 hashes, each owned by a tenant."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from audit.models import ApiKey, Tenant

KEY_PREFIX = "ca_"


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


def revoke_key(session: Session, key_id: str) -> bool:
    key = session.get(ApiKey, key_id)
    if key is None or key.revoked_at is not None:
        return False
    key.revoked_at = dt.datetime.now(dt.UTC)
    return True


def tenant_for_key(session: Session, secret: str) -> str | None:
    """The tenant id owning an active key, or None."""
    if not secret.startswith(KEY_PREFIX) or len(secret) > 200:
        return None
    digest = hash_key(secret)
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    if key is None or key.revoked_at is not None:
        return None
    if not hmac.compare_digest(key.key_hash, digest):
        return None
    return key.tenant_id
