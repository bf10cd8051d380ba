"""A batch's two transactions on PostgreSQL, each sent as one psycopg pipeline.

The portable path (audit.pipeline, audit.lifecycle) waits for every statement's answer before
sending the next: about twenty round trips a batch, each a wake-up of the server and of the
worker. None of these statements needs an earlier one's answer to be written (the start's
audit entry reads the attempt from the row the update just wrote, the reads find the batch's
rows by its id), so here they go out together: the start and its reads in one trip plus the
commit, the rule inputs in one, the result and the commit in one.
Plain SQL through the driver also skips SQLAlchemy's per-statement work, which the pipeline
could not use anyway (it reads a result's shape as soon as a statement is sent).

The rows of the page that could pay an expense are candidates straight from the page unless
the condominium already has them stored, in which case the stored row (and whether another
batch took it) counts. The new ones are stored with the result, their matches set as they
are inserted: storing them first and pairing them afterwards wrote every paired row twice
(an UPDATE is a new row version, its indexes and its foreign-key check again). The page's
other rows cannot be paired by this batch: they are sent as soon as the inputs are read, and
the server stores them while the rules run (it was most of the result's round trip).
A transaction-level advisory lock per condominium, taken before the inputs are read, keeps
two batches of one condominium from pairing the same debit.

Driver errors are raised as SQLAlchemy's (OperationalError, DataError, ...), which is what the
worker's retry policy tells apart; a broken connection is invalidated so the pool drops it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_UP
from typing import Any, cast

import psycopg
from opentelemetry import trace
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from audit.auditlog import AuditEvent, AuditLogService
from audit.batches import BatchStatus
from audit.db import json_document
from audit.observability.instrumentation import enabled
from audit.observability.tracing import tracing_requested
from audit.providers.base import BankTransactionRecord, Registration, RegistrationStatus
from audit.rules import BatchEvaluation, ExpenseFacts, RuleSettings
from audit.rules.model import CENT

TERMINAL = (str(BatchStatus.SUCCESS), str(BatchStatus.FAILURE))

# Marks the batch started unless unknown or finished; the columns the run needs, its
# condominium's settings with them.
START = (
    "UPDATE batches SET status = %(started)s, "
    "started_at = COALESCE(batches.started_at, %(now)s) FROM condominiums c "
    "WHERE batches.id = %(batch_id)s AND batches.status <> ALL(%(terminal)s) "
    "AND c.id = batches.condominium_id "
    "RETURNING batches.tenant_id, batches.condominium_id, batches.failed_attempts, "
    "c.pluggy_account_id, c.audit_settings, batches.summary IS NOT NULL"
)
# An ExpenseFacts' fields, in order.
EXPENSES = (
    "SELECT id, condominium_id, external_id, supplier_cnpj, amount, expense_date, description, "
    "category, invoice_number FROM expenses WHERE batch_id = %(batch_id)s ORDER BY id"
)
REGISTRATIONS = (
    "SELECT cnpj, found, provider, legal_name, status, status_date, opened_on, main_cnae, "
    "legal_nature, is_mei, is_simples, fetched_at FROM supplier_registrations "
    "WHERE cnpj IN (SELECT supplier_cnpj FROM expenses WHERE batch_id = %(batch_id)s)"
)

# The second transaction: as audit.pipeline's statements, in the driver's parameter style.
# Held until the commit: a second batch of the condominium reads its inputs once the first's
# matches are stored. The first key keeps these locks apart from any other advisory locks.
CONDOMINIUM_LOCK_SPACE = 0x43_41_55_44  # "CAUD"
LOCK_CONDOMINIUM = "SELECT pg_advisory_xact_lock(%(lock_space)s, hashtext(%(condominium_id)s))"
# The fetched rows that could pay an expense and are stored already: the stored row is the
# candidate (CANDIDATES reads it when no other batch took it), the fetched copy is not.
STORED_TRANSACTIONS = (
    "SELECT provider_transaction_id FROM bank_transactions "
    "WHERE condominium_id = %(condominium_id)s "
    "AND provider_transaction_id = ANY(CAST(%(transaction_ids)s AS varchar[]))"
)
STORE_TRANSACTIONS = (
    "INSERT INTO bank_transactions (condominium_id, provider_transaction_id, account_id, "
    "date, amount, description, type, status, receiver_document, matched_expense_id) "
    "SELECT %(condominium_id)s, r.id, r.account_id, r.date, r.amount, r.description, r.type, "
    "r.status, r.receiver_document, r.matched_expense_id "
    "FROM json_to_recordset(CAST(%(rows)s AS json)) AS r("
    "id varchar, account_id varchar, date date, amount numeric, description varchar, "
    "type varchar, status varchar, receiver_document varchar, matched_expense_id integer) "
    "ON CONFLICT (condominium_id, provider_transaction_id) DO NOTHING"
)
CANDIDATES = (
    "SELECT t.provider_transaction_id, t.account_id, t.date, t.description, t.amount, t.type, "
    "t.status, t.receiver_document FROM bank_transactions t "
    "WHERE t.date BETWEEN %(start)s AND %(end)s "
    "AND t.amount = ANY(CAST(%(amounts)s AS numeric[])) "
    "AND t.condominium_id = %(condominium_id)s "
    "AND (t.matched_expense_id IS NULL OR NOT (EXISTS (SELECT 1 FROM expenses e "
    "WHERE e.id = t.matched_expense_id AND e.condominium_id = %(condominium_id)s "
    "AND e.batch_id <> %(batch_id)s)))"
)
# The history in two parts (see audit.rules.evaluate): the batch's suppliers' expenses in full,
# the duplicate, split and outlier rules cite them; of the others only the amounts by category,
# which is all the category's outlier reads. A year of a condominium's expenses sent as
# facts cost more than the rules that read them (600 rows, about 4 ms to parse and build).
HISTORY = (
    "SELECT id, condominium_id, external_id, supplier_cnpj, amount, expense_date, description, "
    "category, invoice_number FROM expenses WHERE condominium_id = %(condominium_id)s "
    "AND expense_date >= %(since)s AND batch_id <> %(batch_id)s "
    "AND supplier_cnpj = ANY(CAST(%(suppliers)s AS varchar[]))"
)
HISTORY_CENTS_BY_CATEGORY = (
    "SELECT category, array_agg(CAST(amount * 100 AS bigint)) FROM expenses "
    "WHERE condominium_id = %(condominium_id)s AND expense_date >= %(since)s "
    "AND batch_id <> %(batch_id)s AND NOT supplier_cnpj = ANY(CAST(%(suppliers)s AS varchar[])) "
    "GROUP BY category"
)
WEBHOOK_EVENTS = (
    "SELECT events FROM webhooks WHERE tenant_id = %(tenant_id)s AND deleted_at IS NULL"
)
DELETE_FINDINGS = "DELETE FROM findings WHERE batch_id = %(batch_id)s"
# Two statements, not one: an UPDATE joining the pairings to clear with those to set plans
# as a hash join over the whole table (21 ms at 27,000 rows), each of these as index probes.
CLEAR_MATCHES = (
    "UPDATE bank_transactions SET matched_expense_id = NULL "
    "WHERE matched_expense_id = ANY(CAST(%(expense_ids)s AS integer[]))"
)
STORE_MATCHES = (
    "UPDATE bank_transactions SET matched_expense_id = m.expense_id "
    "FROM unnest(CAST(%(transaction_ids)s AS varchar[]), CAST(%(matched_ids)s AS integer[])) "
    "AS m(transaction_id, expense_id) "
    "WHERE bank_transactions.condominium_id = %(condominium_id)s "
    "AND bank_transactions.provider_transaction_id = m.transaction_id"
)
STORE_FINDINGS = (
    "INSERT INTO findings (batch_id, condominium_id, expense_id, rule_code, severity, message, "
    "evidence, fingerprint, created_at) "
    "SELECT %(batch_id)s, %(condominium_id)s, r.expense_id, r.rule_code, r.severity, r.message, "
    "r.evidence, r.fingerprint, %(now)s FROM json_to_recordset(CAST(%(rows)s AS json)) AS r("
    "expense_id integer, rule_code varchar, severity varchar, message text, evidence json, "
    "fingerprint varchar)"
)
FINISH = (
    "UPDATE batches SET status = %(status)s, expenses_done = %(done)s, "
    "summary = CAST(%(summary)s AS json), error = NULL, finished_at = %(now)s "
    "WHERE id = %(batch_id)s"
)


def is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


@contextmanager
def driver(session: Session) -> Iterator[psycopg.Connection[Any]]:
    """The session's psycopg connection (in its transaction), with driver errors raised as
    SQLAlchemy's and a broken connection invalidated, the pool's idle ones with it (as
    SQLAlchemy does on a disconnect it sees itself): a server that dropped one connection
    has usually dropped them all."""
    connection = session.connection()
    raw = connection.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    try:
        yield raw
    except psycopg.Error as exc:
        invalidated = connection.dialect.is_disconnect(cast(Any, exc), connection.connection, None)
        if invalidated:
            connection.invalidate(exc)
            connection.engine.dispose()
        raise DBAPIError.instance(
            None, None, exc, psycopg.Error, connection_invalidated=invalidated
        ) from exc


_tracer = trace.get_tracer("condo_audit.pgbatch")


@contextmanager
def round_trip(session: Session, operation: str) -> Iterator[None]:
    """A client span over one pipelined round trip. The SQLAlchemy instrumentation traces
    the engines' statements but never sees the driver's pipelines, so without this a batch's
    trace would show none of its main database work."""
    if not (tracing_requested() and enabled("sqlalchemy")):
        yield
        return
    url = session.get_bind().engine.url
    attributes: dict[str, str | int] = {
        "db.system": "postgresql",
        "db.name": url.database or "",
        "db.operation": operation,
        "net.peer.name": url.host or "",
        "net.peer.port": url.port or 5432,
    }
    with _tracer.start_as_current_span(
        f"{operation} {url.database}", kind=trace.SpanKind.CLIENT, attributes=attributes
    ):
        yield


@dataclass(frozen=True)
class Started:
    """What the first transaction read: the batch as started, and its inputs."""

    tenant_id: str
    condominium_id: str
    attempt: int
    account_id: str | None
    stored_settings: dict[str, Any] | None
    expenses: list[ExpenseFacts]
    # The cached registrations of its suppliers, with when each was fetched (fresh or not).
    registrations: list[tuple[Registration, dt.datetime]]
    # A result was stored before (its summary is set with it, and only then): its pairings
    # are to be cleared. Otherwise the batch has none, since pairings are stored only with
    # the SUCCESS that ends a batch.
    audited_before: bool


def start(session: Session, batch_id: str) -> Started | None:
    """Mark the batch started (with its audit entry) and read its inputs: one round trip,
    the commit included. None when the batch is unknown or already finished."""
    now = dt.datetime.now(dt.UTC)
    started_status = str(BatchStatus.STARTED)
    params = {
        "batch_id": batch_id,
        "now": now,
        "started": started_status,
        "terminal": list(TERMINAL),
    }
    with driver(session) as raw, round_trip(session, "batch start"), raw.pipeline():
        marked = raw.cursor()
        marked.execute(START, params)
        AuditLogService(session).queue(
            raw, batch_id, AuditEvent.STARTED, now=now, attempt_while_status=started_status
        )
        expenses, registrations = raw.cursor(), raw.cursor()
        expenses.execute(EXPENSES, params)
        registrations.execute(REGISTRATIONS, params)
        raw.commit()
        batch = marked.fetchone()
        facts = [ExpenseFacts(*row) for row in expenses.fetchall()]
        cached = [
            (
                Registration(
                    cnpj, found, provider, legal_name,
                    RegistrationStatus(status) if status else None,
                    status_date, opened_on, main_cnae, legal_nature, is_mei, is_simples,
                ),
                fetched_at,
            )
            for (cnpj, found, provider, legal_name, status, status_date, opened_on, main_cnae,
                 legal_nature, is_mei, is_simples, fetched_at) in registrations.fetchall()
        ]  # fmt: skip
    if batch is None:
        return None
    tenant_id, condominium_id, failed_attempts, account_id, stored_settings, audited = batch
    return Started(
        tenant_id=tenant_id,
        condominium_id=condominium_id,
        attempt=failed_attempts + 1,
        account_id=account_id,
        stored_settings=stored_settings,
        expenses=facts,
        registrations=cached,
        audited_before=audited,
    )


def as_stored(record: BankTransactionRecord) -> BankTransactionRecord:
    """The row PostgreSQL stores for a fetched transaction (amount in cents, rounded half away
    from zero as numeric(14, 2) does; the description cut to its column), so a candidate
    taken from the page is the one a later batch reads back."""
    amount = record.amount.quantize(CENT, ROUND_HALF_UP)
    if amount == record.amount and len(record.description) <= 500:
        return record
    return replace(record, amount=amount, description=record.description[:500])


@dataclass(frozen=True)
class Inputs:
    """The rules' inputs: the candidates (stored ones and the page's new ones), the history
    and the tenant's webhook subscriptions."""

    transactions: list[BankTransactionRecord]
    history: list[ExpenseFacts]  # the batch's suppliers' other expenses
    history_cents_by_category: dict[str, list[int]]  # the other suppliers' amounts
    webhook_events: list[list[str]]
    # The page's candidates that were not stored yet, by id: stored with the result, a
    # pairing inserted with its row; any other pairing updates a stored row.
    new_candidates: dict[str, BankTransactionRecord]


def transaction_document(
    records: Sequence[BankTransactionRecord], matches: dict[str, int] | None = None
) -> str:
    matches = matches or {}
    return json_document(
        [
            {
                "id": r.id,
                "account_id": r.account_id,
                "date": r.date.isoformat(),
                "amount": str(r.amount),
                "description": r.description,
                "type": r.type,
                "status": r.status,
                "receiver_document": r.receiver_document,
                "matched_expense_id": matches.get(r.id),
            }
            for r in records
        ]
    )


def read_inputs(
    raw: psycopg.Connection[Any],
    *,
    batch_id: str,
    tenant_id: str,
    condominium_id: str,
    records: Sequence[BankTransactionRecord],
    expenses: Sequence[ExpenseFacts],
    settings: RuleSettings,
    history_days: int,
) -> Inputs:
    """Lock the condominium's pairings and read the stored candidates, which of the page's are
    stored already, the history and the tenant's webhook subscriptions: one round trip (call
    inside `raw.pipeline()`). Then send the page's rows that no expense of the batch can pay,
    to be stored while the caller runs the rules; the transaction's commit waits for them."""
    params: dict[str, Any] = {
        "batch_id": batch_id,
        "tenant_id": tenant_id,
        "condominium_id": condominium_id,
    }
    fetched: dict[str, BankTransactionRecord] = {}
    for record in records:  # a row listed twice is stored once, as first listed
        fetched.setdefault(record.id, as_stored(record))
    from_page: list[BankTransactionRecord] = []
    candidates = stored = history = by_category = None
    if expenses:
        raw.cursor().execute(LOCK_CONDOMINIUM, {**params, "lock_space": CONDOMINIUM_LOCK_SPACE})
        window = dt.timedelta(days=settings.match_window_days)
        first = min(e.expense_date for e in expenses)
        start, end = first - window, max(e.expense_date for e in expenses) + window
        amounts = {e.amount for e in expenses} | {-e.amount for e in expenses}
        candidates = raw.cursor()
        candidates.execute(
            CANDIDATES, {**params, "start": start, "end": end, "amounts": sorted(amounts)}
        )
        from_page = [r for r in fetched.values() if start <= r.date <= end and r.amount in amounts]
        if from_page:
            stored = raw.cursor()
            stored.execute(
                STORED_TRANSACTIONS, {**params, "transaction_ids": [r.id for r in from_page]}
            )
        past = {
            **params,
            "since": first - dt.timedelta(days=history_days),
            "suppliers": sorted({e.supplier_cnpj for e in expenses}),
        }
        history = raw.cursor()
        history.execute(HISTORY, past)
        by_category = raw.cursor()
        by_category.execute(HISTORY_CENTS_BY_CATEGORY, past)
    hooks = raw.cursor()
    hooks.execute(WEBHOOK_EVENTS, params)
    transactions = (
        [] if candidates is None else [BankTransactionRecord(*row) for row in candidates.fetchall()]
    )
    known = set() if stored is None else {tx_id for (tx_id,) in stored.fetchall()}
    new_candidates = [r for r in from_page if r.id not in known]
    inputs = Inputs(
        transactions=transactions + new_candidates,
        history=[] if history is None else [ExpenseFacts(*row) for row in history.fetchall()],
        history_cents_by_category={} if by_category is None else dict(by_category.fetchall()),
        webhook_events=[list(events or []) for (events,) in hooks.fetchall()],
        new_candidates={r.id: r for r in new_candidates},
    )
    # Sent only now that every read's answer is in: the server answers in order, so a read
    # queued behind this insert would wait for it.
    candidate_ids = {r.id for r in from_page}
    others = [r for r in fetched.values() if r.id not in candidate_ids]
    if others:
        raw.cursor().execute(STORE_TRANSACTIONS, {**params, "rows": transaction_document(others)})
    return inputs


def write_result(
    session: Session,
    raw: psycopg.Connection[Any],
    *,
    batch_id: str,
    condominium_id: str,
    inputs: Inputs,
    result: BatchEvaluation,
    expenses: Sequence[ExpenseFacts],
    summary: dict[str, Any],
    audited_before: bool,
) -> None:
    """Store the page's new candidates with their pairings, replace the batch's findings and its
    pairings of stored rows (those of an earlier result only when there was one), record
    SUCCESS and its audit entry: queued in the pipeline, sent with whatever follows (the
    commit). Clearing pairings that cannot exist is not free: before the table's first
    ANALYZE the planner reads the whole table for it."""
    now = dt.datetime.now(dt.UTC)
    params: dict[str, Any] = {"batch_id": batch_id, "condominium_id": condominium_id, "now": now}
    if audited_before:
        raw.cursor().execute(DELETE_FINDINGS, params)
        if expenses:
            raw.cursor().execute(CLEAR_MATCHES, {"expense_ids": [e.expense_id for e in expenses]})
    inserted = {
        tx_id: expense_id
        for expense_id, tx_id in result.matches.items()
        if tx_id in inputs.new_candidates
    }
    if inputs.new_candidates:
        document = transaction_document(list(inputs.new_candidates.values()), inserted)
        raw.cursor().execute(STORE_TRANSACTIONS, {**params, "rows": document})
    updated = {e: tx for e, tx in result.matches.items() if tx not in inserted}
    if updated:
        raw.cursor().execute(
            STORE_MATCHES,
            {
                **params,
                "transaction_ids": list(updated.values()),
                "matched_ids": list(updated.keys()),
            },
        )
    if result.findings:
        rows = [draft.as_dict() for draft in result.findings]
        raw.cursor().execute(STORE_FINDINGS, {**params, "rows": json_document(rows)})
    raw.cursor().execute(
        FINISH,
        {
            **params,
            "status": str(BatchStatus.SUCCESS),
            "done": len(expenses),
            "summary": json_document(summary),
        },
    )
    AuditLogService(session).queue(raw, batch_id, AuditEvent.FINISHED, now=now, **summary)
