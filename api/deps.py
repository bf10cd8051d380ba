"""Injected dependencies: settings, a database session per request, the calling tenant."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader
from sqlalchemy.orm import Session

from api import ratelimit
from audit.auth import tenant_for_key
from audit.db import session_scope
from audit.settings import Settings

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_session(settings: Annotated[Settings, Depends(get_settings)]) -> Iterator[Session]:
    with session_scope(settings.database_url) as session:
        yield session


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
    tenant_id = tenant_for_key(session, api_key)
    if tenant_id is None:
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


def not_found(what: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"{what} not found")
