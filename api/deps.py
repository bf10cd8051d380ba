"""Injected dependencies: settings, a database session per request, the calling tenant."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, Security, status
from fastapi.security import APIKeyHeader
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api import ratelimit
from audit.asyncdb import AsyncReader, reader_for
from audit.auth import KeyCache, hash_key, tenant_for_key
from audit.db import session_scope
from audit.settings import Settings

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_settings(request: Request) -> Settings:
    """async: it does no I/O, so it runs on the event loop (a sync dependency would cost a
    trip through the threadpool)."""
    return settings_of(request)


def get_session(settings: Annotated[Settings, Depends(get_settings)]) -> Iterator[Session]:
    with session_scope(settings.database_url) as session:
        yield session


def reader(settings: Settings) -> AsyncReader:
    """Single-row reads on the event loop, for an async route answering from one SELECT:
    no threadpool trip, no BEGIN and COMMIT round trips, no ORM session."""
    return reader_for(settings.database_url)


def _key_cache(request: Request) -> KeyCache:
    cache: KeyCache | None = getattr(request.app.state, "key_cache", None)
    if cache is None:
        cache = request.app.state.key_cache = KeyCache()
    return cache


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "ApiKey"}
    )


async def current_tenant(
    request: Request,
    settings: Annotated[Settings, Depends(get_settings)],
    api_key: Annotated[str | None, Security(api_key_header)],
) -> str:
    """The calling tenant, its request counted against the tenant's rate.

    A key this process looked up under the current revocation generation costs one Redis
    round trip on the event loop and no query; any other key is looked up in the database
    (and remembered, or marked bad a minute), in the threadpool. Without Redis every key is
    looked up, and nothing limited."""
    if not api_key:
        raise _unauthorized("missing X-API-Key header")
    digest = hash_key(api_key)
    remembered = _key_cache(request).get(digest)
    admission = await ratelimit.admit(request, settings, digest, remembered)
    if admission.outcome == ratelimit.Outcome.ADMITTED:
        assert remembered is not None
        return remembered.tenant_id
    return await run_in_threadpool(look_up_key, request, settings, api_key, digest, admission)


def look_up_key(
    request: Request,
    settings: Settings,
    api_key: str,
    digest: str,
    admission: ratelimit.Admission,
) -> str:
    """The tenant of a key the admission could not vouch for, from the database."""
    cache = _key_cache(request)
    tenant_id = None
    if admission.outcome != ratelimit.Outcome.KNOWN_BAD_KEY:
        cache.drop(digest)
        with session_scope(settings.database_url) as session:
            tenant_id = tenant_for_key(session, api_key)
    if tenant_id is None:
        if admission.outcome == ratelimit.Outcome.LOOK_UP:
            ratelimit.remember_bad_key(request, settings, digest)
        if admission.outcome != ratelimit.Outcome.REDIS_UNAVAILABLE:
            ratelimit.count_failed_authentication(request, settings)
        raise _unauthorized("invalid or revoked API key")
    if admission.outcome == ratelimit.Outcome.LOOK_UP:
        cache.put(digest, tenant_id, admission.generation)
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
    base = settings_of(request).public_base_url
    return f"{base.rstrip('/')}{path}" if base else path


def not_found(what: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"{what} not found")
