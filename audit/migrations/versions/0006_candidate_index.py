"""bank_transactions (condominium_id, date, amount) replaces (date, amount): the candidate
query reads one condominium's match window, not every condominium's transactions in it

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 08:10:00.000000
"""

from __future__ import annotations

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index(
        "ix_bank_transactions_condominium_id_date_amount",
        "bank_transactions",
        ["condominium_id", "date", "amount"],
    )
    op.drop_index("ix_bank_transactions_date_amount", table_name="bank_transactions")


def downgrade() -> None:
    op.create_index("ix_bank_transactions_date_amount", "bank_transactions", ["date", "amount"])
    op.drop_index("ix_bank_transactions_condominium_id_date_amount", table_name="bank_transactions")
