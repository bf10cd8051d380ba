"""A dependency that is down is a 503 with a plain reason, never a 500 or a hang."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as QueueError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "5"

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such record for this tenant (another tenant's is 404 too)"}
}

# What any authenticated route may answer besides its own codes (documented in OpenAPI).
AUTHENTICATED_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "The body is not parseable JSON, or a header is empty or malformed"},
    415: {"description": "A body sent without Content-Type: application/json"},
    401: {"description": "Missing, invalid or revoked X-API-Key"},
    413: {"description": "Request body larger than MAX_REQUEST_BYTES"},
    429: {"description": "Over the tenant's request rate; see Retry-After"},
    503: {"description": "The database or the queue is unavailable; see Retry-After"},
}


def queue_unavailable(reason: object, outcome: str = "nothing was stored") -> HTTPException:
    """The work queue refused a write; `outcome` tells the client what state it left."""
    return HTTPException(
        503,
        f"the work queue is unavailable ({reason}); {outcome}, retry later",
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


def unavailable(what: str) -> JSONResponse:
    return JSONResponse(
        {"detail": f"{what} is unavailable; nothing was changed, retry later"},
        status_code=503,
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """Connection refused, lost, locked or pool exhausted; a bad query stays a 500."""
    log.warning("database unavailable: %s", type(exc.__cause__ or exc).__name__)
    return unavailable("the database")


async def redis_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("Redis unavailable: %s", type(exc).__name__)
    return unavailable("the work queue (Redis)")


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: a rejected input may hold lone surrogates, which UTF-8
    cannot encode; escaped, they are still valid JSON and the client sees what it sent."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def is_json_media_type(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """422 names each bad field; but a body that is not JSON at all is the client's framing,
    not a field: 415 for a body sent as another media type, 400 for JSON that does not parse."""
    assert isinstance(exc, RequestValidationError)
    content_type = request.headers.get("content-type")
    # FastAPI hands the raw bytes to validation when the Content-Type is not JSON.
    if isinstance(exc.body, bytes) and exc.body and not is_json_media_type(content_type):
        sent = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
        return AsciiJSONResponse(
            {
                "detail": f"the request body must be JSON sent with Content-Type: "
                f"application/json; this request had {sent}"
            },
            status_code=415,
        )
    errors = exc.errors()
    for error in errors:
        if error.get("type") == "json_invalid":
            position = error["loc"][1] if len(error.get("loc", ())) > 1 else "?"
            reason = (error.get("ctx") or {}).get("error", "invalid JSON")
            return AsciiJSONResponse(
                {"detail": f"the body is not valid JSON: {reason} at character {position}"},
                status_code=400,
            )
    return AsciiJSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)


def register_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, invalid_request)
    for db_error in (OperationalError, InterfaceError, PoolTimeoutError):
        app.add_exception_handler(db_error, database_unavailable)
    for redis_error in (RedisConnectionError, RedisTimeoutError, QueueError):
        app.add_exception_handler(redis_error, redis_unavailable)
