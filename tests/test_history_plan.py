"""The history and candidate queries read a window through an index, however long the history.

PostgreSQL only (the planner this is about); skipped when TEST_POSTGRES_URL does not answer.
Forty condominiums with two years of monthly batches fill the tables, enough that without
the indexes of migrations 0005 to 0007 the planner scans the whole table; EXPLAIN ANALYZE then
shows which index each query uses and how many rows its scan returned.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import ClauseElement, create_engine, insert, text

from audit import pgbatch
from audit.auth import create_tenant
from audit.db import session_scope
from audit.models import BankTransaction, Batch, Condominium, Expense
from audit.pipeline import (
    HISTORY_DAYS,
    candidate_transactions_query,
    clear_matches_statement,
    history_query,
)
from audit.rules import ExpenseFacts, RuleSettings
from tests.support.platform import fresh_postgres_schema

CONDOMINIUMS = 40
MONTHS = 24
EXPENSES_EACH = 40  # per condominium and month
TRANSACTIONS_EACH = 60
FIRST = dt.date(2024, 11, 1)
SUPPLIER = "11222333000181"


def month_start(offset: int) -> dt.date:
    months = FIRST.year * 12 + FIRST.month - 1 + offset
    return dt.date(months // 12, months % 12 + 1, 1)


@pytest.fixture(scope="module")
def history_database(postgres_database: str) -> tuple[str, str, str]:
    """(url, condominium id, its last batch id): every condominium with MONTHS + 1 months."""
    url = fresh_postgres_schema(postgres_database)
    rng = random.Random(5)
    with session_scope(url) as session:
        tenant = create_tenant(session, "plan")
        condominiums = [
            Condominium(tenant_id=tenant.id, name=f"C{n}", audit_settings={})
            for n in range(CONDOMINIUMS)
        ]
        session.add_all(condominiums)
        session.flush()
        batches, expenses, transactions = [], [], []
        for condominium in condominiums:
            for offset in range(MONTHS + 1):
                batch_id = f"{condominium.id[:8]}-{offset:02d}"
                batches.append(
                    {"id": batch_id, "tenant_id": tenant.id, "condominium_id": condominium.id}
                )
                start = month_start(offset)
                for n in range(EXPENSES_EACH):
                    expenses.append(
                        {
                            "batch_id": batch_id,
                            "condominium_id": condominium.id,
                            "external_id": f"e{n}",
                            "supplier_cnpj": SUPPLIER,
                            "amount": Decimal(rng.randrange(1_000, 900_000)) / 100,
                            "expense_date": start + dt.timedelta(days=rng.randrange(28)),
                            "description": "Serviço",
                            "category": "manutencao",
                        }
                    )
                for n in range(TRANSACTIONS_EACH):
                    transactions.append(
                        {
                            "condominium_id": condominium.id,
                            "provider_transaction_id": f"{batch_id}-{n}",
                            "account_id": "acc",
                            "date": start + dt.timedelta(days=rng.randrange(28)),
                            "amount": -Decimal(rng.randrange(1_000, 900_000)) / 100,
                            "description": "PIX",
                            "type": "DEBIT",
                            "status": "POSTED",
                        }
                    )
        session.execute(insert(Batch), batches)
        session.execute(insert(Expense), expenses)
        session.execute(insert(BankTransaction), transactions)
        target = condominiums[0].id
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text("ANALYZE"))
    engine.dispose()
    return url, target, f"{target[:8]}-{MONTHS:02d}"


def batch_facts(url: str, batch_id: str) -> list[ExpenseFacts]:
    with session_scope(url) as session:
        rows = session.query(Expense).filter(Expense.batch_id == batch_id).all()
        return [
            ExpenseFacts(
                expense_id=e.id,
                condominium_id=e.condominium_id,
                external_id=e.external_id,
                supplier_cnpj=e.supplier_cnpj,
                amount=e.amount,
                expense_date=e.expense_date,
                description=e.description,
                category=e.category,
            )
            for e in rows
        ]


def analyze(
    url: str, statement: ClauseElement | str, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """EXPLAIN ANALYZE's plan tree (rolled back: the UPDATE is only planned and run) of a
    SQLAlchemy statement, or of one of audit.pgbatch's with the driver's parameters."""
    engine = create_engine(url)
    with engine.connect() as connection:
        if isinstance(statement, str):
            explain = f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}"
            raw = connection.exec_driver_sql(explain, params or {}).scalar()
        else:
            compiled = statement.compile(connection, compile_kwargs={"literal_binds": True})
            raw = connection.execute(text(f"EXPLAIN (ANALYZE, FORMAT JSON) {compiled}")).scalar()
        connection.rollback()
    engine.dispose()
    plan = raw if isinstance(raw, list) else json.loads(str(raw))
    root: dict[str, Any] = plan[0]["Plan"]
    return root


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def scans_of(plan: dict[str, Any], table: str) -> list[dict[str, Any]]:
    return [n for n in nodes(plan) if n.get("Relation Name") == table]


def test_the_history_query_reads_the_window_from_the_condominium_date_index(
    history_database: tuple[str, str, str],
) -> None:
    url, condominium_id, batch_id = history_database
    expenses = batch_facts(url, batch_id)
    plan = analyze(url, history_query(condominium_id, batch_id, expenses))
    (scan,) = scans_of(plan, "expenses")
    assert scan["Node Type"] in ("Index Scan", "Bitmap Heap Scan"), plan
    index = scan.get("Index Name") or next(
        n["Index Name"] for n in nodes(plan) if n["Node Type"] == "Bitmap Index Scan"
    )
    assert index == "ix_expenses_condominium_id_expense_date", plan
    # Bounded by the window: the rows of the past HISTORY_DAYS (about 13 of the 24 months
    # of history), not the condominium's whole past.
    since = min(e.expense_date for e in expenses) - dt.timedelta(days=HISTORY_DAYS)
    in_window = sum(
        EXPENSES_EACH for offset in range(MONTHS + 1) if month_start(offset + 1) > since
    )
    assert scan["Actual Rows"] <= in_window
    assert scan["Actual Rows"] + EXPENSES_EACH * 10 < EXPENSES_EACH * (MONTHS + 1)


@pytest.mark.parametrize("statement", ["HISTORY", "HISTORY_CENTS_BY_CATEGORY"])
def test_the_worker_s_history_queries_read_the_window_from_the_condominium_date_index(
    history_database: tuple[str, str, str], statement: str
) -> None:
    """audit.pgbatch's two parts of the history (the batch's suppliers' expenses, the others'
    amounts by category): each one range of the (condominium_id, expense_date) index."""
    url, condominium_id, batch_id = history_database
    expenses = batch_facts(url, batch_id)
    since = min(e.expense_date for e in expenses) - dt.timedelta(days=HISTORY_DAYS)
    params = {
        "condominium_id": condominium_id,
        "batch_id": batch_id,
        "since": since,
        "suppliers": [SUPPLIER],
    }
    plan = analyze(url, getattr(pgbatch, statement), params)
    (scan,) = scans_of(plan, "expenses")
    index = scan.get("Index Name") or next(
        n["Index Name"] for n in nodes(plan) if n["Node Type"] == "Bitmap Index Scan"
    )
    assert index == "ix_expenses_condominium_id_expense_date", plan
    index_cond = scan.get("Index Cond") or next(
        n["Index Cond"] for n in nodes(plan) if n["Node Type"] == "Bitmap Index Scan"
    )
    assert f"expense_date >= '{since.isoformat()}'" in index_cond, plan
    in_window = sum(
        EXPENSES_EACH for offset in range(MONTHS + 1) if month_start(offset + 1) > since
    )
    read = scan["Actual Rows"] + scan.get("Rows Removed by Filter", 0)
    assert read <= in_window, plan


def test_candidate_transactions_read_the_date_window_and_probe_the_paying_expense(
    history_database: tuple[str, str, str],
) -> None:
    url, condominium_id, batch_id = history_database
    expenses = batch_facts(url, batch_id)
    settings = RuleSettings()
    plan = analyze(url, candidate_transactions_query(condominium_id, batch_id, expenses, settings))
    (scan,) = scans_of(plan, "bank_transactions")
    text_plan = json.dumps(plan)
    assert "ix_bank_transactions_condominium_id_amount_date" in text_plan, plan
    window = dt.timedelta(days=settings.match_window_days)
    start = (min(e.expense_date for e in expenses) - window).isoformat()
    # The condominium and the window bound the index scan itself: the other condominiums'
    # transactions of those dates are never read, however many share the table.
    index_cond = scan.get("Index Cond") or next(
        n["Index Cond"] for n in nodes(plan) if n["Node Type"] == "Bitmap Index Scan"
    )
    assert f"condominium_id)::text = '{condominium_id}'" in index_cond, plan
    assert f"date >= '{start}'" in index_cond, plan
    # The amount precedes the date in the index: each amount is a probe of its window.
    assert "amount = ANY" in index_cond, plan
    # Another batch's expense is found by its primary key, never by reading the
    # condominium's expenses.
    for expense_scan in scans_of(plan, "expenses"):
        assert expense_scan["Node Type"] != "Seq Scan", plan
        assert expense_scan.get("Index Name") == "pk_expenses", plan
    assert "Seq Scan" not in text_plan, plan
    assert scan["Actual Rows"] <= TRANSACTIONS_EACH * 2


def test_clearing_a_batch_s_matches_probes_the_matched_expense_index(
    history_database: tuple[str, str, str],
) -> None:
    url, _, batch_id = history_database
    expense_ids = [e.expense_id for e in batch_facts(url, batch_id)]
    plan = analyze(url, clear_matches_statement(expense_ids))
    text_plan = json.dumps(plan)
    assert "ix_bank_transactions_matched_expense_id" in text_plan, plan
    assert "Seq Scan" not in text_plan, plan


def test_finding_which_fetched_rows_are_stored_probes_the_unique_key(
    history_database: tuple[str, str, str],
) -> None:
    """The worker asks which of the fetched page's rows the condominium stores already: one
    probe of (condominium_id, provider_transaction_id) per row, whatever its history."""
    url, condominium_id, batch_id = history_database
    fetched = [f"{batch_id}-{n}" for n in range(0, TRANSACTIONS_EACH, 2)] + ["not-stored"]
    plan = analyze(
        url,
        pgbatch.STORED_TRANSACTIONS,
        {"condominium_id": condominium_id, "transaction_ids": fetched},
    )
    (scan,) = scans_of(plan, "bank_transactions")
    text_plan = json.dumps(plan)
    assert "uq_bank_transactions_condominium_id_provider_transaction_id" in text_plan, plan
    assert "Seq Scan" not in text_plan, plan
    assert scan["Actual Rows"] == len(fetched) - 1
