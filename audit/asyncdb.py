"""Single-row reads awaited on the event loop, for the API's most polled route.

A route that answers from one SELECT need not leave the event loop: a threadpool trip costs
a thread handoff and GIL contention each way. On PostgreSQL the read goes straight to
psycopg 3's asyncio connections, from a small pool kept here: SQLAlchemy's asyncio engine
was measured to cost as much CPU per read as the threadpool it replaces (its greenlet
bridge, pool checkout and pre-ping), four times what psycopg alone costs. The statement is
still a SQLAlchemy Core select, compiled once with its bound values and type conversions;
errors are wrapped into SQLAlchemy's exceptions, so the API's 503 handlers and logs see
what they see from the engines. SQLite (local runs) reads through the process's engine in a
worker thread.

One reader per database per running event loop: asyncio connections belong to the loop
that opened them. uvicorn runs one loop per process; an in-process test client runs one
loop after another, and each new loop gets a new reader.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast

import psycopg
from opentelemetry import trace
from psycopg.pq import ConnStatus, TransactionStatus
from psycopg.rows import DictRow, dict_row
from sqlalchemy import exc, make_url
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.engine import Compiled
from sqlalchemy.sql import Select

from audit.db import POOL_OVERFLOW, default_pool_size, engine_for
from audit.observability.instrumentation import enabled
from audit.observability.tracing import tracing_requested

# As SQLAlchemy's pool_timeout: how long a read waits for a connection when all are in use.
POOL_TIMEOUT_SECONDS = 30.0

_DIALECT = PGDialect_psycopg()  # type: ignore[no-untyped-call]
_tracer = trace.get_tracer("condo_audit.asyncdb")


class AsyncReader:
    """Reads one row by a Core select; `close` when the loop is done with it."""

    async def first(
        self, statement: Select[Any], params: Mapping[str, Any]
    ) -> Mapping[str, Any] | None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class _Compiled:
    """A select compiled once for psycopg: its SQL, and how to complete a call's parameters
    (the statement's own bound values, the types that convert a value before it is sent)."""

    sql: str
    compiled: Compiled
    processors: dict[str, Callable[[Any], Any]]

    def parameters(self, params: Mapping[str, Any]) -> dict[str, Any]:
        values = dict(self.compiled.construct_params(dict(params)) or {})
        for name, process in self.processors.items():
            values[name] = process(values[name])
        return values


@lru_cache(maxsize=64)
def _compile(statement: Select[Any]) -> _Compiled:
    """Rows come back as psycopg builds them (no SQLAlchemy result processing): strings,
    numbers, timestamps and JSON read as they do through the engines."""
    compiled = statement.compile(dialect=_DIALECT)
    if compiled.post_compile_params or compiled.literal_execute_params:
        raise ValueError("expanding IN parameters need an engine, not the asyncio reader")
    processors: dict[str, Callable[[Any], Any]] = {}
    for name, bind in compiled.binds.items():
        process = bind.type.dialect_impl(_DIALECT).bind_processor(_DIALECT)
        if process is not None:
            processors[compiled.escaped_bind_names.get(name, name)] = process
    return _Compiled(str(compiled), compiled, processors)


class PsycopgReader(AsyncReader):
    """Autocommit psycopg connections: up to `size` kept open, `POOL_OVERFLOW` more opened
    in a burst and closed after use, as the engines' pools do.

    No ping before each read: a connection the server dropped (a restart, a failover)
    fails its read, and then every idle connection, opened before the failure too, is
    closed and the read retried once on a new connection. A refused connection fails at
    once (503), never waits."""

    def __init__(self, database_url: str, size: int) -> None:
        url = make_url(database_url).set(drivername="postgresql+psycopg")
        # The keywords the engines connect with: host, port, user, dbname, sslmode, ...
        _, self._connect_kwargs = _DIALECT.create_connect_args(url)  # type: ignore[no-untyped-call]
        self._size = size
        self._slots = asyncio.Semaphore(size + POOL_OVERFLOW)
        self._idle: list[psycopg.AsyncConnection[DictRow]] = []
        self._span_name = f"SELECT {url.database}"
        self._span_attributes: dict[str, str | int] = {
            "db.system": "postgresql",
            "db.name": url.database or "",
            "net.peer.name": url.host or "",
            "net.peer.port": url.port or 5432,
        }
        # A span per read, as the SQLAlchemy instrumentation gives the engines' queries.
        self._traced = tracing_requested() and enabled("sqlalchemy")

    async def first(
        self, statement: Select[Any], params: Mapping[str, Any]
    ) -> Mapping[str, Any] | None:
        compiled = _compile(statement)
        sql, values = compiled.sql, compiled.parameters(params)
        if not self._traced:
            return await self._first(sql, values)
        with _tracer.start_as_current_span(self._span_name, kind=trace.SpanKind.CLIENT) as span:
            if span.is_recording():
                span.set_attributes({**self._span_attributes, "db.statement": sql})
            return await self._first(sql, values)

    async def _first(self, sql: str, params: Mapping[str, Any]) -> Mapping[str, Any] | None:
        try:
            async with asyncio.timeout(POOL_TIMEOUT_SECONDS):
                await self._slots.acquire()
        except TimeoutError:
            raise exc.TimeoutError(
                f"no database connection free within {POOL_TIMEOUT_SECONDS:g} s"
            ) from None
        try:
            try:
                return await self._read(sql, params, retry=True)
            except psycopg.Error as error:
                raise exc.DBAPIError.instance(sql, params, error, psycopg.Error) from error
        finally:
            self._slots.release()

    async def _read(
        self, sql: str, params: Mapping[str, Any], *, retry: bool
    ) -> Mapping[str, Any] | None:
        reused = bool(self._idle)
        connection = self._idle.pop() if reused else await self._connect()
        try:
            cursor = await connection.execute(sql, params)
            row = await cursor.fetchone()
        except psycopg.OperationalError:
            if connection.info.status == ConnStatus.BAD:  # the server is gone, not the query
                await connection.close()
                if reused and retry:
                    await self._close_idle()  # opened before the failure: stale too
                    return await self._read(sql, params, retry=False)
            else:
                await self._release(connection)
            raise
        except psycopg.Error:
            await self._release(connection)
            raise
        except BaseException:
            # Cancelled mid-read: the connection's protocol state is unknown.
            await connection.close()
            raise
        await self._release(connection)
        return row

    async def _connect(self) -> psycopg.AsyncConnection[DictRow]:
        return await psycopg.AsyncConnection.connect(
            **self._connect_kwargs, autocommit=True, row_factory=dict_row
        )

    async def _release(self, connection: psycopg.AsyncConnection[DictRow]) -> None:
        healthy = connection.info.transaction_status == TransactionStatus.IDLE
        if healthy and len(self._idle) < self._size:
            self._idle.append(connection)
        else:
            await connection.close()

    async def _close_idle(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.close()

    async def close(self) -> None:
        await self._close_idle()


class ThreadedReader(AsyncReader):
    """SQLite (local runs): the engine's own connection, in a thread of the loop's default
    executor. SQLite answers in microseconds, so the thread hop is the cost either way, and
    aiosqlite behind SQLAlchemy's asyncio engine was measured slower (its own thread per
    connection plus the greenlet bridge) than this."""

    def __init__(self, database_url: str) -> None:
        self.engine = engine_for(database_url)

    async def first(
        self, statement: Select[Any], params: Mapping[str, Any]
    ) -> Mapping[str, Any] | None:
        # to_thread copies the context: the query's span stays under the request's.
        return await asyncio.to_thread(self._first, statement, dict(params))

    def _first(self, statement: Select[Any], params: dict[str, Any]) -> Mapping[str, Any] | None:
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            # A RowMapping: also keyed by Column objects, by name is what is read here.
            return cast(
                "Mapping[str, Any] | None", connection.execute(statement, params).mappings().first()
            )

    async def close(self) -> None:
        """Nothing of its own: the engine is the process's (audit.db.engine_for)."""


def make_reader(database_url: str, pool_size: int | None = None) -> AsyncReader:
    backend = make_url(database_url).get_backend_name()
    if backend == "sqlite":
        return ThreadedReader(database_url)
    if backend == "postgresql":
        return PsycopgReader(database_url, pool_size or default_pool_size())
    raise ValueError(f"no asyncio reads from {backend!r} databases")


_readers: dict[str, tuple[asyncio.AbstractEventLoop, AsyncReader]] = {}


def reader_for(database_url: str) -> AsyncReader:
    """The process's one reader (and its connections) per database, on the running loop."""
    loop = asyncio.get_running_loop()
    held = _readers.get(database_url)
    if held is None or held[0] is not loop:
        held = _readers[database_url] = (loop, make_reader(database_url))
    return held[1]


async def close_readers() -> None:
    """Close the running loop's connections (an API process shutting down): once the loop
    has stopped they can only be dropped, unclosed."""
    loop = asyncio.get_running_loop()
    for database_url, (owner, reader) in list(_readers.items()):
        if owner is loop:
            del _readers[database_url]
            await reader.close()
