"""Database engine, sessions and schema migrations (Alembic, run programmatically)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

from audit.settings import get_settings

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def ensure_sqlite_directory(database_url: str) -> None:
    """SQLite creates its file but not the folder: make it, so `.local/` needs no setup."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)


# Connections opened beyond the pool size in a burst; each is closed when it is returned.
POOL_OVERFLOW = 10


def default_pool_size() -> int:
    """DATABASE_POOL_SIZE, for the callers that hold only a URL."""
    return get_settings().database_pool_size


def make_engine(
    database_url: str, pool_size: int | None = None, *, pre_ping: bool = True
) -> Engine:
    """An engine tuned per backend: SQLite gets WAL and a busy timeout for many processes;
    PostgreSQL keeps `pool_size` connections open (DATABASE_POOL_SIZE when not given).

    `pre_ping` tests each PostgreSQL connection with a round trip as it leaves the pool, so
    that a request after a restart of the server finds a live one. Without it, the first
    statement on a dropped connection fails and the pool replaces every connection older
    than the failure: for a caller that retries that error anyway, a round trip saved on
    every transaction."""
    # `sqlalchemy.create_engine` is looked up at call time, so that the SQLAlchemy
    # instrumentation installed after import (tracing on) wraps the engines made here.
    if database_url.startswith("sqlite"):
        ensure_sqlite_directory(database_url)
        engine = sqlalchemy.create_engine(
            database_url, connect_args={"timeout": 30, "check_same_thread": False}
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return sqlalchemy.create_engine(
        database_url,
        pool_pre_ping=pre_ping,
        pool_size=pool_size or default_pool_size(),
        max_overflow=POOL_OVERFLOW,
    )


@lru_cache(maxsize=8)
def engine_for(database_url: str) -> Engine:
    """The process's one engine (and connection pool) per database."""
    return make_engine(database_url)


@lru_cache(maxsize=8)
def session_factory(database_url: str) -> sessionmaker[Session]:
    return sessionmaker(engine_for(database_url), expire_on_commit=False)


@contextmanager
def session_scope(database_url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = session_factory(database_url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade_database(database_url: str, revision: str = "head") -> None:
    """Bring the schema to `revision`; safe to run on every start."""
    ensure_sqlite_directory(database_url)
    command.upgrade(alembic_config(database_url), revision)


def json_document(value: Any) -> str:
    """A JSON document for a statement's parameter (a batch's expenses, a page of bank rows,
    findings): orjson writes it in about a tenth of the standard library's time, UTF-8 rather
    than \\u escapes, the same JSON to PostgreSQL."""
    return orjson.dumps(value).decode()
