"""batches.idempotency_fingerprint: an Idempotency-Key is bound to the request it came with;
audit settings stored before their upper bounds existed are clamped into them

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 23:00:00.000000
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


# The upper bounds RuleSettings enforces from this revision on (the lower ones were already
# enforced). A value stored before is clamped, so every condominium's settings stay readable
# (GET .../audit-settings) and usable by its audits. A snapshot: later changes to the model
# must not change what this revision did.
_UPPER_BOUNDS: dict[str, Decimal] = {
    "recently_opened_days": Decimal(3650),
    "match_window_days": Decimal(90),
    "duplicate_window_days": Decimal(365),
    "split_window_days": Decimal(365),
    "approval_threshold": Decimal("1000000000.00"),
    "outlier_min_history": Decimal(1000),
    "outlier_zscore": Decimal(100),
    "outlier_scale_floor_ratio": Decimal(10),
}


def clamped(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings with every number above its bound set to the bound, in its own type."""
    out = dict(settings)
    for name, bound in _UPPER_BOUNDS.items():
        value = out.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            continue
        try:
            number = Decimal(str(value))
        except ArithmeticError:
            continue
        if number > bound:
            out[name] = int(bound) if isinstance(value, int) else str(bound)
    return out


def upgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("idempotency_fingerprint", sa.String(length=64), nullable=True)
        )
    condominiums = sa.table(
        "condominiums", sa.column("id", sa.String), sa.column("audit_settings", sa.JSON)
    )
    connection = op.get_bind()
    rows = connection.execute(sa.select(condominiums.c.id, condominiums.c.audit_settings))
    for condominium_id, settings in rows.all():
        if not isinstance(settings, dict) or clamped(settings) == settings:
            continue
        connection.execute(
            sa.update(condominiums)
            .where(condominiums.c.id == condominium_id)
            .values(audit_settings=clamped(settings))
        )


def downgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_column("idempotency_fingerprint")
