"""expenses (condominium_id, expense_date) and bank_transactions (matched_expense_id): the
history and match queries read a window or a batch's rows, not a condominium's whole past

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 01:30:00.000000
"""

from __future__ import annotations

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index(
        "ix_expenses_condominium_id_expense_date",
        "expenses",
        ["condominium_id", "expense_date"],
    )
    op.create_index(
        "ix_bank_transactions_matched_expense_id",
        "bank_transactions",
        ["matched_expense_id"],
    )


def downgrade() -> None:
    op.drop_index("ix_bank_transactions_matched_expense_id", table_name="bank_transactions")
    op.drop_index("ix_expenses_condominium_id_expense_date", table_name="expenses")
