"""The task status read on the event loop (audit.asyncdb), against real SQLite and PostgreSQL:
the same row the ORM sees, nothing of another tenant's, and on PostgreSQL the outages a
deployment meets (a restart that cuts every connection, a database refusing new ones)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from pydantic import ValidationError
from sqlalchemy import Select, create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import QueuePool

from audit.asyncdb import AsyncReader, PsycopgReader, close_readers, make_reader, reader_for
from audit.auth import create_tenant
from audit.batches import task_status
from audit.db import make_engine, session_scope
from audit.models import Batch, Condominium
from audit.settings import Settings, get_settings
from tests.support.platform import POSTGRES_ADMIN_URL
from tests.test_faults_database import database_blocked

T = TypeVar("T")
BACKEND_PID: Select[Any] = select(func.pg_backend_pid().label("pid"))


def run(database_url: str, scenario: Callable[[AsyncReader], Awaitable[T]], size: int = 2) -> T:
    """`scenario` with a reader of its own, on an event loop of its own, closed after."""

    async def main() -> T:
        reader = make_reader(database_url, pool_size=size)
        try:
            return await scenario(reader)
        finally:
            await reader.close()

    return asyncio.run(main())


def seed_batch(database_url: str) -> tuple[str, str, str]:
    """(tenant, another tenant, the first tenant's finished batch)."""
    with session_scope(database_url) as session:
        owner, other = create_tenant(session, "owner"), create_tenant(session, "other")
        condominium = Condominium(tenant_id=owner.id, name="Edifício Aurora", audit_settings={})
        session.add(condominium)
        session.flush()
        batch = Batch(
            tenant_id=owner.id,
            condominium_id=condominium.id,
            status="SUCCESS",
            expenses_total=3,
            expenses_done=3,
            failed_attempts=1,
            summary={"findings": 2, "by_rule": {"DUPLICATE": 2}},
            trace_id="ab" * 16,
            started_at=dt.datetime(2026, 3, 1, 12, 0, 1, tzinfo=dt.UTC),
            finished_at=dt.datetime(2026, 3, 1, 12, 0, 2, 500000, tzinfo=dt.UTC),
        )
        session.add(batch)
        session.flush()
        return owner.id, other.id, batch.id


def test_the_status_read_is_the_row_the_orm_sees_and_only_for_its_tenant(
    database_url: str,
) -> None:
    owner, other, batch_id = seed_batch(database_url)

    async def reads(reader: AsyncReader) -> list[Any]:
        return [
            await task_status(reader, owner, batch_id),
            await task_status(reader, other, batch_id),
            await task_status(reader, owner, "no-such-task"),
        ]

    mine, theirs, unknown = run(database_url, reads)
    assert theirs is None
    assert unknown is None
    assert mine is not None
    with session_scope(database_url) as session:
        batch = session.get_one(Batch, batch_id)
        expected = {column: getattr(batch, column) for column in mine}
    assert dict(mine) == expected
    assert set(mine) >= {"id", "status", "summary", "submitted_at", "finished_at"}
    assert mine["summary"] == {"findings": 2, "by_rule": {"DUPLICATE": 2}}


def test_one_reader_per_database_per_event_loop_closed_with_it(database_url: str) -> None:
    """uvicorn runs one loop per process; a loop after it gets its own connections."""

    async def twice() -> tuple[AsyncReader, AsyncReader]:
        first, again = reader_for(database_url), reader_for(database_url)
        await first.first(select(text("1 AS one")), {})
        await close_readers()
        return first, again

    first, again = asyncio.run(twice())
    assert first is again
    later, _ = asyncio.run(twice())
    assert later is not first


def terminate_backends(database_url: str) -> int:
    """What a PostgreSQL restart or failover does to the clients: every connection cut."""
    name = make_url(database_url).database
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            return len(
                connection.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": name},
                ).all()
            )
    finally:
        admin.dispose()


@pytest.mark.postgres
def test_connections_cut_by_the_server_are_replaced_without_an_error(
    dedicated_postgres_url: str,
) -> None:
    async def scenario(reader: AsyncReader) -> tuple[set[int], set[int]]:
        async def pid() -> int:
            row = await reader.first(BACKEND_PID, {})
            assert row is not None
            return int(row["pid"])

        before = set(await asyncio.gather(*(pid() for _ in range(4))))
        assert await asyncio.to_thread(terminate_backends, dedicated_postgres_url) >= 2
        after = {await pid() for _ in range(4)}  # the first read meets a dead connection
        return before, after

    before, after = run(dedicated_postgres_url, scenario)
    assert before
    assert after
    assert not before & after, "a connection from before the cut was used again"


@pytest.mark.postgres
def test_a_database_refusing_connections_is_an_operational_error_at_once(
    dedicated_postgres_url: str,
) -> None:
    """What the API's handler turns into 503 'the database is unavailable'."""
    owner, _, batch_id = seed_batch(dedicated_postgres_url)

    async def scenario(reader: AsyncReader) -> tuple[list[BaseException | None], float]:
        assert await task_status(reader, owner, batch_id) is not None
        outcomes: list[BaseException | None] = []
        started = time.monotonic()
        with database_blocked(dedicated_postgres_url):
            for _ in range(3):
                try:
                    await task_status(reader, owner, batch_id)
                    outcomes.append(None)
                except OperationalError as exc:
                    outcomes.append(exc)
        elapsed = time.monotonic() - started
        assert await task_status(reader, owner, batch_id) is not None  # back by itself
        return outcomes, elapsed

    outcomes, elapsed = run(dedicated_postgres_url, scenario)
    assert all(isinstance(o, OperationalError) for o in outcomes), outcomes
    causes = {type(o.__cause__).__module__.split(".")[0] for o in outcomes if o is not None}
    assert causes == {"psycopg"}
    assert elapsed < 5, f"refused reads took {elapsed:.1f}s"


@pytest.mark.postgres
def test_the_pool_keeps_its_size_and_serves_bursts_beyond_it(dedicated_postgres_url: str) -> None:
    async def scenario(reader: AsyncReader) -> int:
        rows = await asyncio.gather(
            *(reader.first(select(func.pg_sleep(0.05).label("slept")), {}) for _ in range(30))
        )
        assert len(rows) == 30
        assert isinstance(reader, PsycopgReader)
        return len(reader._idle)

    assert run(dedicated_postgres_url, scenario, size=3) == 3


def test_the_pool_size_is_one_setting_for_the_engines_and_the_reader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = "postgresql+psycopg://nobody@127.0.0.1:1/nowhere"  # nothing connects here
    monkeypatch.setenv("DATABASE_POOL_SIZE", "7")
    get_settings.cache_clear()
    try:
        engine = make_engine(url)
        assert isinstance(engine.pool, QueuePool)
        assert engine.pool.size() == 7
        reader = make_reader(url)
        assert isinstance(reader, PsycopgReader)
        assert reader._size == 7
        monkeypatch.setenv("DATABASE_POOL_SIZE", "0")
        with pytest.raises(ValidationError, match="database_pool_size"):
            Settings()
    finally:
        get_settings.cache_clear()
    monkeypatch.delenv("DATABASE_POOL_SIZE")
    assert Settings().database_pool_size == 10
