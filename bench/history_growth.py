"""A batch's audit time as its condominium's history grows: month 1 against month 25.

    python -m bench.history_growth [--months 24] [--repeats 15] [--others 20]
                                   [--database auto|postgresql|sqlite]

One condominium submits a generated month (ops.workload) per calendar month. Its first
month is audited `--repeats` times with no history; then the next `--months` months are
submitted and audited once each (findings, bank matches and stored transactions pile up
as in production), and the month after them is audited `--repeats` times. Beside it,
`--others` condominiums hold the same amount of history, so the tables are shared as in
production. The auditor runs in this process (BatchAuditor.run: the worker's code without
Celery) with the supplier registrations and the bank months in memory, so what is timed is
the database and the rules. On PostgreSQL the tables are analyzed once filled and again
before month 25, as autovacuum keeps them in production (a table seconds old has no
statistics, and the planner's guesses then decide what is timed). Prints the median of
each and their ratio (target <= 1.2).
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from decimal import Decimal
from pathlib import Path

from sqlalchemy import create_engine, insert, text
from sqlalchemy.orm import Session

from audit.auth import create_tenant
from audit.batches import ExpenseInput, submit_batch
from audit.cnpj import normalize_cnpj
from audit.db import session_factory, session_scope
from audit.models import BankTransaction, Condominium
from audit.pipeline import BatchAuditor
from audit.providers.base import BankTransactionRecord, Registration
from audit.providers.pluggy import PluggyTransactions
from loadtests.platform import fresh_database, registration_of
from ops.workload import CondominiumMonth, WorkloadConfig, condominium_month

ACCOUNT = "history-account"
START = dt.date(2024, 10, 1)
EXPENSES = 50  # every month the same size, so that only the history differs


def period(first: dt.date, offset: int) -> str:
    """YYYY-MM, `offset` months after `first`."""
    months = first.year * 12 + first.month - 1 + offset
    return f"{months // 12:04d}-{months % 12 + 1:02d}"


def month_of(offset: int, index: int = 0) -> CondominiumMonth:
    """Condominium `index`'s month `offset` (a seed per month: new invoices, other calls)."""
    config = WorkloadConfig(
        condominiums=200,  # the supplier pools of a realistic fleet
        seed=500 + offset,
        period=period(START, offset),
        min_expenses=EXPENSES,
        max_expenses=EXPENSES,
    )
    return condominium_month(config, index)


class MemorySuppliers:
    """Every registration known: the warm cache, without its query."""

    def __init__(self) -> None:
        self.known: dict[str, Registration] = {}

    def add(self, month: CondominiumMonth) -> None:
        for supplier in month.suppliers.values():
            self.known[supplier.cnpj] = registration_of(supplier)

    def cached(
        self, cnpjs: Iterable[str], session: Session | None = None
    ) -> dict[str, Registration]:
        return {c: self.known[c] for c in cnpjs if c in self.known}

    def fresh(self, cached: Iterable[tuple[Registration, dt.datetime]]) -> dict[str, Registration]:
        return self.cached(r.cnpj for r, _ in cached)

    def get_many(
        self,
        cnpjs: Iterable[str],
        on_lookup: Callable[[dict[str, Registration]], None] | None = None,
        known: dict[str, Registration] | None = None,
    ) -> dict[str, Registration]:
        return self.cached(cnpjs)


class MemoryBank:
    """The account's transactions as Pluggy would list them, each month once submitted;
    kept by day, so that a fetch costs the window, not the months stored."""

    name = "pluggy"

    def __init__(self) -> None:
        self.by_day: dict[dt.date, list[BankTransactionRecord]] = defaultdict(list)

    def add(self, month: CondominiumMonth) -> None:
        for raw in month.transactions:
            record = PluggyTransactions.to_record(ACCOUNT, raw)
            self.by_day[record.date].append(record)

    def fetch(self, account_id: str, start: dt.date, end: dt.date) -> list[BankTransactionRecord]:
        days = (start + dt.timedelta(days=n) for n in range((end - start).days + 1))
        return [record for day in days for record in self.by_day.get(day, [])]


def expenses_of(month: CondominiumMonth) -> list[ExpenseInput]:
    return [
        ExpenseInput(
            external_id=e["external_id"],
            supplier_cnpj=normalize_cnpj(e["supplier_cnpj"]),
            amount=Decimal(e["amount"]),
            expense_date=dt.date.fromisoformat(e["date"]),
            description=e["description"],
            category=e["category"],
            invoice_number=e["invoice_number"],
        )
        for e in month.expenses
    ]


def submit(database_url: str, tenant_id: str, condominium_id: str, month: CondominiumMonth) -> str:
    with session_scope(database_url) as session:
        return submit_batch(session, tenant_id, condominium_id, expenses_of(month)).batch_id


def fill_others(database_url: str, tenant_id: str, others: int, months: int) -> None:
    """Other condominiums' stored history (expenses and bank transactions, not audited)."""
    for index in range(1, others + 1):
        with session_scope(database_url) as session:
            condominium = Condominium(tenant_id=tenant_id, name=f"Other {index}", audit_settings={})
            session.add(condominium)
            session.flush()
            condominium_id = condominium.id
        for offset in range(months + 1):
            month = month_of(offset, index)
            submit(database_url, tenant_id, condominium_id, month)
            rows = [
                {
                    "condominium_id": condominium_id,
                    "provider_transaction_id": r.id,
                    "account_id": r.account_id,
                    "date": r.date,
                    "amount": r.amount,
                    "description": r.description,
                    "type": r.type,
                    "status": r.status,
                    "receiver_document": r.receiver_document,
                }
                for r in (PluggyTransactions.to_record(ACCOUNT, raw) for raw in month.transactions)
            ]
            with session_scope(database_url) as session:
                session.execute(insert(BankTransaction), rows)


def timed(auditor: BatchAuditor, batch_ids: list[str], repeats: int) -> list[list[float]]:
    """Seconds per run of each batch, the batches taking turns (so that a change in the
    machine's load falls on all of them); each batch's first run (new bank rows, cold
    statements) is left out."""
    for batch_id in batch_ids:
        auditor.run(batch_id)
    seconds: list[list[float]] = [[] for _ in batch_ids]
    for _ in range(repeats):
        for batch_id, runs in zip(batch_ids, seconds, strict=True):
            started = time.perf_counter()
            auditor.run(batch_id)
            runs.append(time.perf_counter() - started)
    return seconds


def analyze_tables(url: str) -> None:
    """What autovacuum does to tables that grew: the planner's statistics, so that the timed
    runs get the plans production gets, not those of a table created seconds ago."""
    if not url.startswith("postgresql"):
        return
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text("ANALYZE"))
    engine.dispose()


def condominium(url: str, tenant_id: str, name: str) -> str:
    with session_scope(url) as session:
        created = Condominium(
            tenant_id=tenant_id, name=name, pluggy_account_id=ACCOUNT, audit_settings={}
        )
        session.add(created)
        session.flush()
        return created.id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--months", type=int, default=24, help="history months before the last")
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--others", type=int, default=20, help="condominiums beside it")
    parser.add_argument("--database", choices=("auto", "postgresql", "sqlite"), default="auto")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        database = fresh_database(args.database, Path(tmp))
        try:
            url = database.url
            with session_scope(url) as session:
                tenant_id = create_tenant(session, "history").id
            condominium_id = condominium(url, tenant_id, "History")
            fill_others(url, tenant_id, args.others, args.months)
            analyze_tables(url)
            suppliers, bank = MemorySuppliers(), MemoryBank()
            auditor = BatchAuditor(session_factory(url), suppliers, bank)

            def month(offset: int, into: str = condominium_id) -> tuple[str, int]:
                generated = month_of(offset)
                suppliers.add(generated)
                bank.add(generated)
                return submit(url, tenant_id, into, generated), len(generated.expenses)

            # A twin: the same first month in a condominium that never gets a history, timed
            # in turns with month 1 and again with month 25, the reference for how the
            # machine's load moved between the two.
            first_id, first_size = month(0)
            twin_id, _ = month(0, condominium(url, tenant_id, "Twin"))
            first, twin_before = timed(auditor, [first_id, twin_id], args.repeats)
            for offset in range(1, args.months):
                auditor.run(month(offset)[0])
            last_id, last_size = month(args.months)
            analyze_tables(url)
            last, twin_after = timed(auditor, [last_id, twin_id], args.repeats)
        finally:
            database.drop()
    first_ms, last_ms, before_ms, after_ms = (
        statistics.median(runs) * 1000 for runs in (first, last, twin_before, twin_after)
    )
    last_month = args.months + 1
    corrected = (last_ms / after_ms) / (first_ms / before_ms)
    print(
        f"history growth ({database.kind}, {args.others} other condominiums alike, medians of "
        f"{args.repeats} runs): month 1 ({first_size} expenses, no history) {first_ms:.1f} ms; "
        f"month {last_month} ({last_size} expenses, {args.months} months before it) "
        f"{last_ms:.1f} ms\n"
        f"ratio month {last_month} / month 1: {last_ms / first_ms:.2f}x; against the twin "
        f"without history timed in turns with each ({before_ms:.1f} ms, then {after_ms:.1f} ms): "
        f"{corrected:.2f}x (target <= 1.2x)"
    )


if __name__ == "__main__":
    main()
