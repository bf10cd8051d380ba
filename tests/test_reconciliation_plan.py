"""The reconciliation query is served by the (condominium_id, date, amount) index on both
databases."""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal

from sqlalchemy import create_engine, insert, text

from audit.auth import create_tenant
from audit.db import session_scope
from audit.models import BankTransaction, Batch, Condominium
from audit.pipeline import candidate_transactions_query
from audit.rules import ExpenseFacts, RuleSettings

CONDOMINIUMS = 40
TRANSACTIONS_EACH = 1500


def populate(database_url: str) -> str:
    """Many condominiums' year of transactions, like a shared production table."""
    rng = random.Random(7)
    with session_scope(database_url) as session:
        tenant = create_tenant(session, "plan")
        ids = []
        for n in range(CONDOMINIUMS):
            condominium = Condominium(tenant_id=tenant.id, name=f"C{n}", audit_settings={})
            session.add(condominium)
            session.flush()
            ids.append(condominium.id)
        rows = [
            {
                "condominium_id": condominium_id,
                "provider_transaction_id": f"{condominium_id}-{i}",
                "account_id": "acc",
                "date": dt.date(2026, 1, 1) + dt.timedelta(days=rng.randrange(365)),
                "amount": Decimal(-rng.randrange(1000, 900_000)) / 100,
                "description": "PIX",
                "type": "DEBIT",
                "status": "POSTED",
            }
            for condominium_id in ids
            for i in range(TRANSACTIONS_EACH)
        ]
        session.execute(insert(BankTransaction), rows)
        session.add(Batch(id="plan-batch", tenant_id=tenant.id, condominium_id=ids[0]))
    return ids[0]


def query_plan(database_url: str, condominium_id: str) -> str:
    expenses = [
        ExpenseFacts(
            expense_id=i,
            condominium_id=condominium_id,
            external_id=f"e{i}",
            supplier_cnpj="11222333000181",
            amount=Decimal("1234.56") + i,
            expense_date=dt.date(2026, 10, 10),
            description="x",
            category="limpeza",
        )
        for i in range(20)
    ]
    statement = candidate_transactions_query(condominium_id, "plan-batch", expenses, RuleSettings())
    engine = create_engine(database_url)
    with engine.connect() as connection:
        compiled = statement.compile(connection, compile_kwargs={"literal_binds": True})
        if engine.dialect.name == "postgresql":
            connection.execute(text("ANALYZE bank_transactions"))
            rows = connection.execute(text(f"EXPLAIN {compiled}")).scalars().all()
        else:
            connection.execute(text("ANALYZE"))
            rows = [r[-1] for r in connection.execute(text(f"EXPLAIN QUERY PLAN {compiled}"))]
    engine.dispose()
    return "\n".join(str(row) for row in rows)


def test_candidate_transactions_use_the_condominium_amount_date_index(database_url: str) -> None:
    condominium_id = populate(database_url)
    plan = query_plan(database_url, condominium_id)
    assert "ix_bank_transactions_condominium_id_amount_date" in plan, plan
