"""Injected dependencies: settings, a database session per request, the calling tenant."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, Security, status
from fastapi.security import APIKeyHeader
from redis.exceptions import RedisError
from sqlalchemy.orm import Session

from api import ratelimit
from audit.auth import hash_key, tenant_for_key
from audit.db import session_scope
from audit.settings import Settings

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_session(settings: Annotated[Settings, Depends(get_settings)]) -> Iterator[Session]:
    with session_scope(settings.database_url) as session:
        yield session


NEGATIVE_CACHE_PREFIX = "api-badkey:"
NEGATIVE_CACHE_SECONDS = 60


def lookup_key(request: Request, settings: Settings, session: Session, api_key: str) -> str | None:
    """The key's tenant. Keys found unknown are remembered a minute (by hash) so that a
    client repeating a bad key costs a Redis read, not a database query; known keys are
    never cached, so a revocation takes effect at once."""
    redis = ratelimit.api_redis(request, settings)
    remembered = NEGATIVE_CACHE_PREFIX + hash_key(api_key)
    try:
        if redis.exists(remembered):
            return None
    except RedisError:
        pass
    tenant_id = tenant_for_key(session, api_key)
    if tenant_id is None:
        with contextlib.suppress(RedisError):
            redis.set(remembered, b"1", ex=NEGATIVE_CACHE_SECONDS)
    return tenant_id


def current_tenant(
    request: Request,
    session: Annotated[Session, Depends(get_session, scope="function")],
    settings: Annotated[Settings, Depends(get_settings)],
    api_key: Annotated[str | None, Security(api_key_header)],
) -> str:
    if not api_key:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing X-API-Key header",
            headers={"WWW-Authenticate": "ApiKey"},
        )
    ratelimit.refuse_blocked_address(request, settings)
    tenant_id = lookup_key(request, settings, session, api_key)
    if tenant_id is None:
        ratelimit.count_failed_authentication(request, settings)
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "invalid or revoked API key",
            headers={"WWW-Authenticate": "ApiKey"},
        )
    ratelimit.enforce(request, settings, tenant_id)
    return tenant_id


# scope="function": commit before the response is sent, so a failed commit is the client's
# error (503), never a 2xx for a write that did not happen.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
TenantDep = Annotated[str, Depends(current_tenant)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


# Every id the platform issues is a UUID; anything not shaped like an id is refused (422
# naming the parameter) before it reaches the database.
ID_PATTERN = r"^[A-Za-z0-9_\-]{1,36}$"
IdPath = Annotated[str, Path(min_length=1, max_length=36, pattern=ID_PATTERN)]


def status_url(request: Request, task_id: str) -> str:
    """Where to follow a task: on PUBLIC_BASE_URL when configured, else a relative URL.

    Never built from the request's Host header, which any client can forge (a status_url
    pointing at an attacker's host, cached or logged, is a phishing link)."""
    path = str(request.app.url_path_for("get_task", task_id=task_id))
    base = get_settings(request).public_base_url
    return f"{base.rstrip('/')}{path}" if base else path


def not_found(what: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"{what} not found")
