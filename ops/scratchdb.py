"""Scratch PostgreSQL databases for the tests, the benchmarks and the load runs: each run
gets its own, dropped afterwards, so runs never see each other's rows."""

from __future__ import annotations

import uuid

import sqlalchemy
from sqlalchemy import make_url

from audit.db import engine_for, session_factory


def postgres_unavailable(admin_url: str) -> str | None:
    """None when the PostgreSQL server at `admin_url` answers, else the reason it does not."""
    try:
        engine = sqlalchemy.create_engine(admin_url, connect_args={"connect_timeout": 2})
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # any failure to connect means: no usable PostgreSQL
        return f"PostgreSQL at {admin_url} does not answer ({type(exc).__name__})"
    return None


def create_scratch_database(admin_url: str, prefix: str) -> str:
    """A new, empty PostgreSQL database next to `admin_url`'s, for a test or a benchmark run."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_scratch_database(admin_url: str, database_url: str) -> None:
    """Drop a database made by create_scratch_database, whoever is still connected."""
    name = make_url(database_url).database
    session_factory.cache_clear()
    engine_for.cache_clear()
    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
