"""The API key cache: each API process looks a key up once and remembers its tenant, yet a
revocation counts at once in every process. Two app instances on one database and one
Redis stand in for two API processes (each has its own cache)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from redis import Redis
from sqlalchemy import event, update

from api.main import create_app
from audit import auth
from audit.auth import (
    REVOCATIONS_KEY,
    KeyCache,
    RevocationNotAnnounced,
    announce_revocation,
    create_tenant,
    issue_key,
    revoke_key,
)
from audit.db import engine_for, session_scope, upgrade_database
from audit.models import ApiKey
from audit.settings import Settings
from cli.processes import free_port
from tests.support.platform import sqlite_url


@pytest.fixture
def settings(tmp_path: Path, redis_url: str) -> Settings:
    database_url = sqlite_url(tmp_path)
    upgrade_database(database_url)
    client = Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    return Settings(database_url=database_url, redis_url=redis_url)


@pytest.fixture
def key_lookups(settings: Settings) -> Iterator[list[str]]:
    """Every query on api_keys, as the database sees it."""
    engine = engine_for(settings.database_url)
    seen: list[str] = []

    def record(*args: Any) -> None:
        statement: str = args[2]
        if "FROM api_keys" in statement:
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


def new_key(settings: Settings) -> tuple[str, str]:
    with session_scope(settings.database_url) as session:
        tenant = create_tenant(session, "cached")
        issued = issue_key(session, tenant.id)
    return issued.key_id, issued.secret


def dead_letters(app: FastAPI, key: str) -> int:
    """One authenticated request to `app`, on an event loop of its own (as each request of a
    real process would be on that process's loop: the app keeps one Redis client per loop)."""

    async def call() -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            response = await client.get("/dead-letters", headers={"X-API-Key": key})
        return response.status_code

    return asyncio.run(call())


def test_a_key_is_looked_up_once_per_process(settings: Settings, key_lookups: list[str]) -> None:
    _, key = new_key(settings)
    first, second = create_app(settings), create_app(settings)
    assert [dead_letters(first, key) for _ in range(5)] == [200] * 5
    assert [dead_letters(second, key) for _ in range(5)] == [200] * 5
    assert len(key_lookups) == 2, key_lookups


def test_a_revocation_counts_at_once_in_every_process(
    settings: Settings, key_lookups: list[str]
) -> None:
    key_id, key = new_key(settings)
    _, other_key = new_key(settings)
    first, second = create_app(settings), create_app(settings)
    for app in (first, second):
        assert dead_letters(app, key) == 200
        assert dead_letters(app, other_key) == 200
    remembered = len(key_lookups)
    assert dead_letters(first, key) == 200
    assert len(key_lookups) == remembered  # both keys answered from the caches

    with session_scope(settings.database_url) as session:
        assert revoke_key(session, key_id, redis_url=settings.redis_url)

    # Well within the cache's 30 s: refused in both, at the next request.
    assert dead_letters(first, key) == 401
    assert dead_letters(second, key) == 401
    # The other key is looked up again once, and remembered again.
    assert [dead_letters(first, other_key) for _ in range(3)] == [200] * 3
    assert [dead_letters(second, other_key) for _ in range(3)] == [200] * 3
    assert len(key_lookups) == remembered + 4, key_lookups


def test_the_generation_is_bumped_once_the_revocation_is_committed(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_id, _ = new_key(settings)
    redis = Redis.from_url(settings.redis_url)
    committed: list[bool] = []

    def announce(url: str) -> None:
        with session_scope(settings.database_url) as other:
            committed.append(other.get_one(ApiKey, key_id).revoked_at is not None)
        announce_revocation(url)

    monkeypatch.setattr(auth, "announce_revocation", announce)
    try:
        with session_scope(settings.database_url) as session:
            assert revoke_key(session, key_id, redis_url=settings.redis_url)
        assert committed == [True]  # another session saw it before the announcement
        assert redis.get(REVOCATIONS_KEY) == b"1"
    finally:
        redis.close()


def test_a_key_revoked_behind_the_caches_back_lives_until_its_entry_expires(
    settings: Settings,
) -> None:
    """Why revocation goes through revoke_key: an UPDATE alone does not reach the caches."""
    _, key = new_key(settings)
    app = create_app(settings)
    app.state.key_cache = KeyCache(ttl=0.5)
    assert dead_letters(app, key) == 200
    with session_scope(settings.database_url) as session:
        session.execute(update(ApiKey).values(revoked_at=ApiKey.created_at))
    assert dead_letters(app, key) == 200
    time.sleep(0.6)
    assert dead_letters(app, key) == 401


def test_a_revocation_redis_did_not_hear_of_is_an_error(settings: Settings) -> None:
    key_id, key = new_key(settings)
    unreachable = f"redis://127.0.0.1:{free_port()}"
    with (
        pytest.raises(RevocationNotAnnounced, match="may accept it for up to 30 s"),
        session_scope(settings.database_url) as session,
    ):
        revoke_key(session, key_id, redis_url=unreachable)
    # The revocation itself was committed: a process that never saw the key refuses it.
    assert dead_letters(create_app(settings), key) == 401
