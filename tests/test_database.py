"""The schema: the same migrations on SQLite and PostgreSQL, with the matching index."""

from __future__ import annotations

from sqlalchemy import create_engine, inspect

from audit.models import Base


def test_migrations_create_every_model_table(database_url: str) -> None:
    engine = create_engine(database_url)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert set(Base.metadata.tables) <= tables
    assert "alembic_version" in tables


def test_transactions_have_the_composite_date_amount_index(database_url: str) -> None:
    engine = create_engine(database_url)
    indexes = inspect(engine).get_indexes("bank_transactions")
    engine.dispose()
    assert any(index["column_names"] == ["date", "amount"] for index in indexes), indexes


def test_migrations_match_the_models(database_url: str) -> None:
    """No model change without a migration: autogenerate finds nothing to do."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = create_engine(database_url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert diff == []
