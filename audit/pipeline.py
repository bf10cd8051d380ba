"""The audit of one batch: resolve suppliers, fetch bank transactions, apply the rules, store.

Provider errors propagate to the caller (the Celery task), which owns retries. Storing the
findings replaces the batch's earlier ones in one transaction, so any re-run is idempotent.

A batch costs a fixed number of round trips whatever its size or the condominium's history:
the batch, its settings and its cached suppliers are read in the transaction that marks it
started; the fetched transactions, the evaluation and the result in one more. Core
statements read the columns the rules need (no ORM objects to build), multi-row writes are
one statement, and every history or candidate query is bounded by an index and a date
window (migration 0005). On PostgreSQL the same two transactions go out as psycopg pipelines
(audit.pgbatch): three round trips and the commits' for the whole batch.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, cast

from sqlalchemy import (
    Select,
    Table,
    Update,
    bindparam,
    delete,
    exists,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from audit import lifecycle, pgbatch
from audit.auditlog import AuditEvent, AuditLogService
from audit.batches import BatchStatus
from audit.models import BankTransaction, Batch, Condominium, Expense, Finding
from audit.providers.base import BankTransactionRecord, Registration, TransactionSource
from audit.ratelimit import requests_for
from audit.rules import BatchEvaluation, ExpenseFacts, FindingDraft, RuleSettings, evaluate
from audit.webhooks import EventType
from audit.webhooks.outbox import record_batch_event

HISTORY_DAYS = 365
# Core statements on the tables: executemany and plain rows, no ORM bookkeeping per row.
TRANSACTIONS_TABLE = cast(Table, BankTransaction.__table__)
EXPENSES_TABLE = cast(Table, Expense.__table__)
FINDINGS_TABLE = cast(Table, Finding.__table__)
BATCHES_TABLE = cast(Table, Batch.__table__)
# The columns an ExpenseFacts is built from, in its field order.
FACT_COLUMNS = (
    Expense.id,
    Expense.condominium_id,
    Expense.external_id,
    Expense.supplier_cnpj,
    Expense.amount,
    Expense.expense_date,
    Expense.description,
    Expense.category,
    Expense.invoice_number,
)
TRANSACTION_COLUMNS = (
    BankTransaction.provider_transaction_id,
    BankTransaction.account_id,
    BankTransaction.date,
    BankTransaction.description,
    BankTransaction.amount,
    BankTransaction.type,
    BankTransaction.status,
    BankTransaction.receiver_document,
)


class SupplierSource(Protocol):
    def cached(
        self, cnpjs: Iterable[str], session: Session | None = None
    ) -> dict[str, Registration]: ...

    def fresh(
        self, cached: Iterable[tuple[Registration, dt.datetime]]
    ) -> dict[str, Registration]: ...

    def get_many(
        self,
        cnpjs: Iterable[str],
        on_lookup: Callable[[dict[str, Registration]], None] | None = None,
        known: dict[str, Registration] | None = None,
    ) -> dict[str, Registration]: ...


@dataclass(frozen=True)
class BatchWork:
    """What a run reads before calling the providers: the batch, its condominium's settings,
    its expenses and the registrations of its suppliers already in the cache."""

    batch_id: str
    tenant_id: str
    condominium_id: str
    account_id: str | None
    # As stored: validated by `audit`, outside the transaction that marks the batch started,
    # so that settings the rules reject fail the run with the start already recorded.
    stored_settings: dict[str, Any] | None
    expenses: list[ExpenseFacts]
    registrations: dict[str, Registration]
    # False only when the batch is known to have no stored result to replace.
    audited_before: bool = True


@dataclass(frozen=True)
class AuditOutcome:
    summary: dict[str, Any]
    deliveries: int  # webhook outbox rows written with the SUCCESS status (0: none to publish)


@dataclass
class BatchAuditor:
    sessions: sessionmaker[Session]
    suppliers: SupplierSource
    transactions: TransactionSource | None
    progress_interval_seconds: float = 0.5
    clock: Callable[[], float] = time.monotonic

    def run(self, batch_id: str) -> AuditOutcome:
        """Read the batch in a transaction of its own, then audit it (see `audit`)."""
        with self.sessions.begin() as session:
            batch = session.get(Batch, batch_id)
            assert batch is not None
            work = self.load(session, batch)
        return self.audit(work)

    def begin(self, batch_id: str) -> tuple[BatchWork, int] | None:
        """Mark the batch started and read what the run needs before the providers, in one
        transaction; (the work, this run's attempt), or None when the batch is unknown or
        already finished. PostgreSQL sends the transaction as one pipeline (audit.pgbatch)."""
        with self.sessions.begin() as session:
            if not pgbatch.is_postgresql(session):
                batch = lifecycle.start(session, batch_id)
                if batch is None:
                    return None
                return self.load(session, batch), batch.failed_attempts + 1
            started = pgbatch.start(session, batch_id)
        if started is None:
            return None
        work = BatchWork(
            batch_id=batch_id,
            tenant_id=started.tenant_id,
            condominium_id=started.condominium_id,
            account_id=started.account_id,
            stored_settings=started.stored_settings,
            expenses=started.expenses,
            registrations=self.suppliers.fresh(started.registrations),
            audited_before=started.audited_before,
        )
        return work, started.attempt

    def load(self, session: Session, batch: Batch) -> BatchWork:
        """Everything the run reads before the providers, in the caller's transaction (the
        worker's, that marks the batch started)."""
        work = load_work(session, batch)
        cnpjs = {e.supplier_cnpj for e in work.expenses}
        return replace(work, registrations=self.suppliers.cached(cnpjs, session))

    def audit(self, work: BatchWork) -> AuditOutcome:
        """Call the providers, then store their answers, evaluate and store the result in
        one transaction."""
        expenses = work.expenses
        settings = RuleSettings.from_stored(work.stored_settings)
        bank_data_available = False
        records: list[BankTransactionRecord] = []
        with requests_for(work.tenant_id):  # provider budgets are shared fairly between tenants
            registrations = self._resolve_suppliers(work, expenses)
            if work.account_id and self.transactions is not None and expenses:
                window = dt.timedelta(settings.match_window_days)
                start = min(e.expense_date for e in expenses) - window
                end = max(e.expense_date for e in expenses) + window
                records = self.transactions.fetch(work.account_id, start, end)
                bank_data_available = True

        with self.sessions.begin() as session:
            if pgbatch.is_postgresql(session):
                return self._store_pipelined(
                    session, work, records, registrations, settings, bank_data_available
                )
            store_transactions(session, work.condominium_id, records)
            transactions = load_transactions(
                session, work.condominium_id, work.batch_id, expenses, settings
            )
            history = load_history(session, work.condominium_id, work.batch_id, expenses)
            result = evaluate(
                expenses,
                registrations,
                transactions,
                history,
                settings,
                bank_data_available=bank_data_available,
            )
            store_result(session, work.batch_id, work.condominium_id, result, expenses)
            summary = summarize(result.findings)
            session.execute(
                update(BATCHES_TABLE)
                .where(BATCHES_TABLE.c.id == work.batch_id)
                .values(
                    status=BatchStatus.SUCCESS,
                    expenses_done=len(expenses),
                    summary=summary,
                    error=None,
                    finished_at=dt.datetime.now(dt.UTC),
                )
            )
            AuditLogService(session).record(work.batch_id, AuditEvent.FINISHED, **summary)
            # The webhook outbox, in the transaction that records the status.
            deliveries = record_batch_event(session, work.batch_id, EventType.BATCH_SUCCEEDED)
        return AuditOutcome(summary=summary, deliveries=deliveries)

    def _store_pipelined(
        self,
        session: Session,
        work: BatchWork,
        records: list[BankTransactionRecord],
        registrations: dict[str, Registration],
        settings: RuleSettings,
        bank_data_available: bool,
    ) -> AuditOutcome:
        """`audit`'s transaction on PostgreSQL: the rules' inputs read in one round trip; the
        page's rows no expense can pay stored while the rules run; the candidates with their
        pairings, the result and the commit in another round trip. The tenant's webhook
        subscriptions are read with the inputs; only a tenant subscribed to the event takes
        the outbox's own path (record_batch_event) before the commit."""
        expenses = work.expenses
        event = EventType.BATCH_SUCCEEDED
        with pgbatch.driver(session) as raw, raw.pipeline() as pipeline:
            with pgbatch.round_trip(session, "audit inputs"):
                inputs = pgbatch.read_inputs(
                    raw,
                    batch_id=work.batch_id,
                    tenant_id=work.tenant_id,
                    condominium_id=work.condominium_id,
                    records=records,
                    expenses=expenses,
                    settings=settings,
                    history_days=HISTORY_DAYS,
                )
            result = evaluate(
                expenses,
                registrations,
                inputs.transactions,
                inputs.history,
                settings,
                bank_data_available=bank_data_available,
                history_cents_by_category=inputs.history_cents_by_category,
            )
            summary = summarize(result.findings)
            subscribed = any(event.value in events for events in inputs.webhook_events)
            with pgbatch.round_trip(session, "audit result"):
                pgbatch.write_result(
                    session,
                    raw,
                    batch_id=work.batch_id,
                    condominium_id=work.condominium_id,
                    inputs=inputs,
                    result=result,
                    expenses=expenses,
                    summary=summary,
                    audited_before=work.audited_before,
                )
                if subscribed:
                    pipeline.sync()  # the outbox's rows follow before the commit
                else:
                    raw.commit()
        deliveries = record_batch_event(session, work.batch_id, event) if subscribed else 0
        return AuditOutcome(summary=summary, deliveries=deliveries)

    def _resolve_suppliers(
        self, work: BatchWork, expenses: list[ExpenseFacts]
    ) -> dict[str, Registration]:
        """Look every supplier up once, reporting progress as expenses become resolvable."""
        per_supplier: dict[str, int] = {}
        for expense in expenses:
            per_supplier[expense.supplier_cnpj] = per_supplier.get(expense.supplier_cnpj, 0) + 1
        last_report = self.clock()

        def report(resolved: dict[str, Registration]) -> None:
            nonlocal last_report
            if self.clock() - last_report >= self.progress_interval_seconds:
                self._report_progress(work.batch_id, sum(per_supplier[c] for c in resolved))
                last_report = self.clock()

        return self.suppliers.get_many(per_supplier, on_lookup=report, known=work.registrations)

    def _report_progress(self, batch_id: str, done: int) -> None:
        with self.sessions.begin() as session:
            session.execute(
                update(BATCHES_TABLE)
                .where(BATCHES_TABLE.c.id == batch_id)
                .values(expenses_done=done)
            )


def store_transactions(
    session: Session, condominium_id: str, records: list[BankTransactionRecord]
) -> None:
    """Store the fetched transactions, skipping those already stored, in the transaction
    that reads the candidates (the portable path; PostgreSQL's batches use audit.pgbatch)."""
    if not records:
        return
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
    # One statement executed with many parameter sets (SQLite runs in the process).
    upsert = postgresql_insert if pgbatch.is_postgresql(session) else sqlite_insert
    statement = upsert(TRANSACTIONS_TABLE).on_conflict_do_nothing(
        index_elements=["condominium_id", "provider_transaction_id"]
    )
    session.execute(statement, rows)


def load_work(session: Session, batch: Batch) -> BatchWork:
    """The batch's condominium settings and expenses, as plain values (two Core selects)."""
    account_id, stored = session.execute(
        select(Condominium.pluggy_account_id, Condominium.audit_settings).where(
            Condominium.id == batch.condominium_id
        )
    ).one()
    rows = session.execute(
        select(*FACT_COLUMNS).where(Expense.batch_id == batch.id).order_by(Expense.id)
    )
    return BatchWork(
        batch_id=batch.id,
        tenant_id=batch.tenant_id,
        condominium_id=batch.condominium_id,
        account_id=account_id,
        stored_settings=stored,
        expenses=[ExpenseFacts(*row) for row in rows],
        registrations={},
    )


def candidate_transactions_query(
    condominium_id: str,
    batch_id: str,
    expenses: Sequence[ExpenseFacts],
    settings: RuleSettings,
) -> Select[*tuple[Any, ...]]:
    """Transactions that could pay one of the batch's expenses: within the date window and of
    an expense's amount (debits carry Pluggy's negative sign), served by the (condominium_id,
    date, amount) index, and not already taken by another batch's expense (a primary-key
    probe per candidate, not a scan of the condominium's expenses)."""
    window = dt.timedelta(days=settings.match_window_days)
    start = min(e.expense_date for e in expenses) - window
    end = max(e.expense_date for e in expenses) + window
    amounts = {e.amount for e in expenses} | {-e.amount for e in expenses}
    taken_elsewhere = exists().where(
        Expense.id == BankTransaction.matched_expense_id,
        Expense.condominium_id == condominium_id,
        Expense.batch_id != batch_id,
    )
    return select(*TRANSACTION_COLUMNS).where(
        BankTransaction.date.between(start, end),
        BankTransaction.amount.in_(sorted(amounts)),
        BankTransaction.condominium_id == condominium_id,
        or_(BankTransaction.matched_expense_id.is_(None), ~taken_elsewhere),
    )


def load_transactions(
    session: Session,
    condominium_id: str,
    batch_id: str,
    expenses: Sequence[ExpenseFacts],
    settings: RuleSettings,
) -> list[BankTransactionRecord]:
    if not expenses:
        return []
    rows = session.execute(
        candidate_transactions_query(condominium_id, batch_id, expenses, settings)
    )
    return [BankTransactionRecord(*row) for row in rows]


def history_query(
    condominium_id: str, batch_id: str, expenses: Sequence[ExpenseFacts]
) -> Select[*tuple[Any, ...]]:
    """The condominium's expenses from other batches since HISTORY_DAYS before the batch's
    first one: a range on the (condominium_id, expense_date) index, whatever the history."""
    since = min(e.expense_date for e in expenses) - dt.timedelta(days=HISTORY_DAYS)
    return select(*FACT_COLUMNS).where(
        Expense.condominium_id == condominium_id,
        Expense.expense_date >= since,
        Expense.batch_id != batch_id,
    )


def load_history(
    session: Session, condominium_id: str, batch_id: str, expenses: Sequence[ExpenseFacts]
) -> list[ExpenseFacts]:
    """The condominium's expenses from other batches over the past year, for history rules."""
    if not expenses:
        return []
    rows = session.execute(history_query(condominium_id, batch_id, expenses))
    return [ExpenseFacts(*row) for row in rows]


def summarize(findings: Iterable[FindingDraft]) -> dict[str, Any]:
    """The batch's summary from the findings just stored (the batch has no others): the
    shape of audit.batches.findings_summary, without reading them back."""
    by_rule: Counter[str] = Counter()
    by_severity: Counter[str] = Counter()
    for finding in findings:
        by_rule[str(finding.rule_code)] += 1
        by_severity[str(finding.severity)] += 1
    return {
        "findings": sum(by_rule.values()),
        "by_rule": dict(sorted(by_rule.items())),
        "by_severity": dict(sorted(by_severity.items())),
    }


def clear_matches_statement(expense_ids: list[int]) -> Update:
    """Unpair the debits paired with these expenses: probes of the matched_expense_id index,
    the batch's earlier matches only."""
    table = TRANSACTIONS_TABLE
    return (
        update(table)
        .where(table.c.matched_expense_id.in_(expense_ids))
        .values(matched_expense_id=None)
    )


def store_result(
    session: Session,
    batch_id: str,
    condominium_id: str,
    result: BatchEvaluation,
    expenses: Sequence[ExpenseFacts],
) -> None:
    """Replace the batch's findings and bank matches: a re-run leaves the same rows (the
    portable path; PostgreSQL's batches use audit.pgbatch)."""
    table = TRANSACTIONS_TABLE
    session.execute(delete(FINDINGS_TABLE).where(FINDINGS_TABLE.c.batch_id == batch_id))
    if expenses:
        session.execute(clear_matches_statement([e.expense_id for e in expenses]))
    if result.matches:
        session.execute(
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
        now = dt.datetime.now(dt.UTC)
        # One executemany, pipelined by psycopg: one round trip.
        session.execute(
            insert(FINDINGS_TABLE),
            [
                {
                    "batch_id": batch_id,
                    "condominium_id": condominium_id,
                    "created_at": now,
                    **draft.as_dict(),
                }
                for draft in result.findings
            ],
        )
