"""The schema: the same migrations on SQLite and PostgreSQL, with the matching index."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import sqlalchemy as sa
from alembic import command
from sqlalchemy import create_engine, inspect

from audit.db import alembic_config, session_scope, upgrade_database
from audit.models import Base, Condominium
from audit.rules import RuleSettings


def test_migrations_create_every_model_table(database_url: str) -> None:
    engine = create_engine(database_url)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert set(Base.metadata.tables) <= tables
    assert "alembic_version" in tables


def test_transactions_are_indexed_by_condominium_amount_and_date(database_url: str) -> None:
    engine = create_engine(database_url)
    indexes = inspect(engine).get_indexes("bank_transactions")
    engine.dispose()
    columns = [index["column_names"] for index in indexes]
    assert ["condominium_id", "amount", "date"] in columns, indexes
    # The indexes it replaced are gone (one less index per insert): the fleet-wide
    # (date, amount) and the (condominium_id, date, amount) that walked the whole window.
    assert ["date", "amount"] not in columns, indexes
    assert ["condominium_id", "date", "amount"] not in columns, indexes


def test_migrations_match_the_models(database_url: str) -> None:
    """No model change without a migration: autogenerate finds nothing to do."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = create_engine(database_url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert diff == []


def test_settings_stored_before_their_bounds_are_clamped_by_the_migration(
    database_url: str,
) -> None:
    """A condominium saved with a window of a billion days (accepted before 0003) is still
    readable after the upgrade, with the value at its bound and everything else kept."""
    command.downgrade(alembic_config(database_url), "0002")
    # The two tables as revision 0002 has them (later revisions may add columns).
    tenants = sa.table("tenants", sa.column("id"), sa.column("name"), sa.column("created_at"))
    condominiums = sa.table(
        "condominiums",
        sa.column("id"),
        sa.column("tenant_id"),
        sa.column("name"),
        sa.column("audit_settings", sa.JSON),
        sa.column("created_at"),
    )
    now = dt.datetime(2026, 11, 30, tzinfo=dt.UTC)
    stored = {"match_window_days": 1_000_000_000, "outlier_zscore": "1e9", "split_window_days": 7}
    engine = create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(sa.insert(tenants).values(id="t-old", name="old", created_at=now))
        connection.execute(
            sa.insert(condominiums).values(
                id="c-old", tenant_id="t-old", name="old", audit_settings=stored, created_at=now
            )
        )
    engine.dispose()

    upgrade_database(database_url)

    with session_scope(database_url) as session:
        condominium = session.get(Condominium, "c-old")
        assert condominium is not None
        settings = RuleSettings.from_stored(condominium.audit_settings)
    assert settings.match_window_days == 90
    assert settings.outlier_zscore == Decimal(100)
    assert settings.split_window_days == 7  # in range: kept
