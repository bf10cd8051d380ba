"""The audit of one batch: resolve suppliers, fetch bank transactions, apply the rules, store.

Provider errors propagate to the caller (the Celery task), which owns retries. Storing the
findings replaces the batch's earlier ones in one transaction, so any re-run is idempotent.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from sqlalchemy import Select, Table, bindparam, delete, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from audit.auditlog import AuditEvent, AuditLogService
from audit.batches import BatchStatus, findings_summary
from audit.models import BankTransaction, Batch, Condominium, Expense, Finding
from audit.providers.base import BankTransactionRecord, Registration, TransactionSource
from audit.ratelimit import requests_for
from audit.rules import BatchEvaluation, ExpenseFacts, RuleSettings, evaluate
from audit.webhooks import EventType
from audit.webhooks.outbox import record_batch_event

HISTORY_DAYS = 365
# Core statements run executemany on the table (ORM bulk statements would want primary keys).
TRANSACTIONS_TABLE = cast(Table, BankTransaction.__table__)


class SupplierSource(Protocol):
    def get_many(
        self,
        cnpjs: Iterable[str],
        on_lookup: Callable[[dict[str, Registration]], None] | None = None,
    ) -> dict[str, Registration]: ...


@dataclass
class BatchAuditor:
    sessions: sessionmaker[Session]
    suppliers: SupplierSource
    transactions: TransactionSource | None
    progress_interval_seconds: float = 0.5
    clock: Callable[[], float] = time.monotonic

    def run(self, batch_id: str) -> dict[str, Any]:
        with self.sessions.begin() as session:
            batch = session.get(Batch, batch_id)
            assert batch is not None
            condominium = session.get(Condominium, batch.condominium_id)
            assert condominium is not None
            expenses = [facts_of(e) for e in batch.expenses]
            settings = RuleSettings.from_stored(condominium.audit_settings)
            account_id = condominium.pluggy_account_id
            condominium_id = condominium.id
            tenant_id = batch.tenant_id

        bank_data_available = False
        with requests_for(tenant_id):  # provider budgets are shared fairly between tenants
            registrations = self._resolve_suppliers(batch_id, expenses)
            if account_id and self.transactions is not None and expenses:
                window = dt.timedelta(settings.match_window_days)
                start = min(e.expense_date for e in expenses) - window
                end = max(e.expense_date for e in expenses) + window
                records = self.transactions.fetch(account_id, start, end)
                self._store_transactions(condominium_id, records)
                bank_data_available = True

        with self.sessions.begin() as session:
            transactions = load_transactions(session, condominium_id, batch_id, expenses, settings)
            history = load_history(session, condominium_id, batch_id, expenses)
            result = evaluate(
                expenses,
                registrations,
                transactions,
                history,
                settings,
                bank_data_available=bank_data_available,
            )
            store_result(session, batch_id, condominium_id, result)
            summary = findings_summary(session, batch_id)
            session.execute(
                update(Batch)
                .where(Batch.id == batch_id)
                .values(
                    status=BatchStatus.SUCCESS,
                    expenses_done=len(expenses),
                    summary=summary,
                    error=None,
                    finished_at=dt.datetime.now(dt.UTC),
                )
            )
            AuditLogService(session).record(batch_id, AuditEvent.FINISHED, **summary)
            # The webhook outbox, in the transaction that records the status.
            record_batch_event(session, batch_id, EventType.BATCH_SUCCEEDED)
        return summary

    def _resolve_suppliers(
        self, batch_id: str, expenses: list[ExpenseFacts]
    ) -> dict[str, Registration]:
        """Look every supplier up once, reporting progress as expenses become resolvable."""
        per_supplier: dict[str, int] = {}
        for expense in expenses:
            per_supplier[expense.supplier_cnpj] = per_supplier.get(expense.supplier_cnpj, 0) + 1
        last_report = self.clock()

        def report(resolved: dict[str, Registration]) -> None:
            nonlocal last_report
            if self.clock() - last_report >= self.progress_interval_seconds:
                self._report_progress(batch_id, sum(per_supplier[c] for c in resolved))
                last_report = self.clock()

        return self.suppliers.get_many(per_supplier, on_lookup=report)

    def _report_progress(self, batch_id: str, done: int) -> None:
        with self.sessions.begin() as session:
            session.execute(update(Batch).where(Batch.id == batch_id).values(expenses_done=done))

    def _store_transactions(
        self, condominium_id: str, records: list[BankTransactionRecord]
    ) -> None:
        if not records:
            return
        with self.sessions.begin() as session:
            rows = [
                {
                    "condominium_id": condominium_id,
                    "provider_transaction_id": r.id,
                    "account_id": r.account_id,
                    "date": r.date,
                    "amount": r.amount,
                    "description": r.description[:500],
                    "type": r.type,
                    "status": r.status,
                    "receiver_document": r.receiver_document,
                }
                for r in records
            ]
            dialect = session.get_bind().dialect.name
            insert = pg_insert if dialect == "postgresql" else sqlite_insert
            # One statement executed with many parameter sets: compiled once and cached, sent
            # as multi-row batches (a statement with the rows in .values() compiles per call).
            statement = insert(TRANSACTIONS_TABLE).on_conflict_do_nothing(
                index_elements=["condominium_id", "provider_transaction_id"]
            )
            session.connection().execute(statement, rows)


def facts_of(expense: Expense) -> ExpenseFacts:
    return ExpenseFacts(
        expense_id=expense.id,
        condominium_id=expense.condominium_id,
        external_id=expense.external_id,
        supplier_cnpj=expense.supplier_cnpj,
        amount=expense.amount,
        expense_date=expense.expense_date,
        description=expense.description,
        category=expense.category,
        invoice_number=expense.invoice_number,
    )


def candidate_transactions_query(
    condominium_id: str,
    batch_id: str,
    expenses: list[ExpenseFacts],
    settings: RuleSettings,
) -> Select[BankTransaction]:
    """Transactions that could pay one of the batch's expenses: within the date window and of
    an expense's amount (debits carry Pluggy's negative sign), served by the (date, amount)
    index, and not already taken by another batch's expense."""
    window = dt.timedelta(days=settings.match_window_days)
    start = min(e.expense_date for e in expenses) - window
    end = max(e.expense_date for e in expenses) + window
    amounts = {e.amount for e in expenses} | {-e.amount for e in expenses}
    taken_elsewhere = select(Expense.id).where(
        Expense.condominium_id == condominium_id, Expense.batch_id != batch_id
    )
    return select(BankTransaction).where(
        BankTransaction.date.between(start, end),
        BankTransaction.amount.in_(sorted(amounts)),
        BankTransaction.condominium_id == condominium_id,
        or_(
            BankTransaction.matched_expense_id.is_(None),
            BankTransaction.matched_expense_id.not_in(taken_elsewhere),
        ),
    )


def load_transactions(
    session: Session,
    condominium_id: str,
    batch_id: str,
    expenses: list[ExpenseFacts],
    settings: RuleSettings,
) -> list[BankTransactionRecord]:
    if not expenses:
        return []
    rows = session.scalars(
        candidate_transactions_query(condominium_id, batch_id, expenses, settings)
    )
    return [
        BankTransactionRecord(
            id=row.provider_transaction_id,
            account_id=row.account_id,
            date=row.date,
            description=row.description,
            amount=row.amount,
            type=row.type,
            status=row.status,
            receiver_document=row.receiver_document,
        )
        for row in rows
    ]


def load_history(
    session: Session, condominium_id: str, batch_id: str, expenses: list[ExpenseFacts]
) -> list[ExpenseFacts]:
    """The condominium's expenses from other batches over the past year, for history rules."""
    if not expenses:
        return []
    since = min(e.expense_date for e in expenses) - dt.timedelta(days=HISTORY_DAYS)
    rows = session.scalars(
        select(Expense).where(
            Expense.condominium_id == condominium_id,
            Expense.batch_id != batch_id,
            Expense.expense_date >= since,
        )
    )
    return [facts_of(row) for row in rows]


def store_result(
    session: Session, batch_id: str, condominium_id: str, result: BatchEvaluation
) -> None:
    """Replace the batch's findings and bank matches: a re-run leaves the same rows."""
    batch_expenses = select(Expense.id).where(Expense.batch_id == batch_id)
    session.execute(delete(Finding).where(Finding.batch_id == batch_id))
    session.execute(
        update(BankTransaction)
        .where(BankTransaction.matched_expense_id.in_(batch_expenses))
        .values(matched_expense_id=None)
    )
    if result.matches:
        # One executemany (pipelined by psycopg), not a round trip per matched expense.
        table = TRANSACTIONS_TABLE
        session.connection().execute(
            update(table)
            .where(
                table.c.condominium_id == condominium_id,
                table.c.provider_transaction_id == bindparam("transaction_id"),
            )
            .values(matched_expense_id=bindparam("expense_id")),
            [
                {"transaction_id": transaction_id, "expense_id": expense_id}
                for expense_id, transaction_id in result.matches.items()
            ],
        )
    if result.findings:
        session.execute(
            insert(Finding),
            [
                {
                    "batch_id": batch_id,
                    "condominium_id": condominium_id,
                    "expense_id": draft.expense_id,
                    "rule_code": str(draft.rule_code),
                    "severity": str(draft.severity),
                    "message": draft.message,
                    "evidence": draft.evidence,
                    "fingerprint": draft.fingerprint,
                }
                for draft in result.findings
            ],
        )
