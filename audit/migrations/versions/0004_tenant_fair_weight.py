"""tenants.fair_weight: a tenant's share of the fleet in the fair queue

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 22:50:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("fair_weight", sa.Float(), server_default="1", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("fair_weight")
