"""Refuse text PostgreSQL cannot store before any route sees it.

PostgreSQL's text types cannot hold the NUL character (psycopg raises DataError, a 500), and
every path id and query filter ends up in a WHERE clause. This plain ASGI middleware answers
for every route, present and future: a NUL in the path is 404 (no such resource can exist);
one in a query parameter is 422 naming the parameter. Ids are further checked for format
where they are declared (api.deps.IdPath).
"""

from __future__ import annotations

import json
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

UNSTORABLE = "\x00"


async def _answer(send: Send, status: int, detail: object) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def unstorable_query_parameter(query_string: bytes) -> str | None:
    """The name of the first query parameter whose name or value holds a NUL, else None."""
    if b"%00" not in query_string.lower() and b"\x00" not in query_string:
        return None
    text = query_string.decode("latin-1")
    for name, value in parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="replace"):
        if UNSTORABLE in name or UNSTORABLE in value:
            return name.replace(UNSTORABLE, "\\x00")
    return None


class RefuseUnstorableText:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if UNSTORABLE in scope.get("path", ""):
                await _answer(send, 404, "not found: the path holds a NUL (\\x00) character")
                return
            name = unstorable_query_parameter(scope.get("query_string", b""))
            if name is not None:
                detail = [
                    {
                        "loc": ["query", name],
                        "msg": "must not contain NUL (\\x00) characters",
                        "type": "value_error",
                    }
                ]
                await _answer(send, 422, detail)
                return
        await self.app(scope, receive, send)
