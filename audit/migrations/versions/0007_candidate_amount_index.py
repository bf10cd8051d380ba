"""bank_transactions (condominium_id, amount, date) replaces (condominium_id, date, amount):
each of the batch's amounts is one probe of its window, not a walk of the whole window

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 11:45:00.000000
"""

from __future__ import annotations

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index(
        "ix_bank_transactions_condominium_id_amount_date",
        "bank_transactions",
        ["condominium_id", "amount", "date"],
    )
    op.drop_index("ix_bank_transactions_condominium_id_date_amount", table_name="bank_transactions")


def downgrade() -> None:
    op.create_index(
        "ix_bank_transactions_condominium_id_date_amount",
        "bank_transactions",
        ["condominium_id", "date", "amount"],
    )
    op.drop_index("ix_bank_transactions_condominium_id_amount_date", table_name="bank_transactions")
