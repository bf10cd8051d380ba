"""Batches: submission (validated, stored whole, idempotent) and the queries the API serves."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, delete, func, insert, select, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, joinedload
from sqlalchemy.sql.dml import ReturningInsert

from audit.asyncdb import AsyncReader
from audit.auditlog import AuditEvent, AuditLogService
from audit.db import json_document
from audit.idempotency import IdempotencyKeyInFlight, IdempotencyKeyReused
from audit.models import AuditLogEntry, Batch, Condominium, Expense, Finding, new_id, utcnow
from audit.tracing_context import current_trace_id


class BatchStatus(StrEnum):
    PENDING = "PENDING"
    STARTED = "STARTED"
    RETRY = "RETRY"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"


@dataclass(frozen=True)
class ExpenseInput:
    external_id: str
    supplier_cnpj: str  # canonical 14 characters
    amount: Decimal
    expense_date: dt.date
    description: str
    category: str
    invoice_number: str | None


@dataclass(frozen=True)
class Submitted:
    batch_id: str
    status: str
    expenses_total: int
    created: bool  # False when an Idempotency-Key matched an earlier submission


class QueueUnavailable(RuntimeError):
    """The batch could not be enqueued; it was withdrawn, so nothing was accepted."""


class UnknownCondominium(LookupError):
    pass


def condominium_for_tenant(session: Session, tenant_id: str, condominium_id: str) -> Condominium:
    condominium = session.get(Condominium, condominium_id)
    if condominium is None or condominium.tenant_id != tenant_id:
        raise UnknownCondominium(condominium_id)
    return condominium


def find_by_idempotency_key(session: Session, tenant_id: str, key: str) -> Batch | None:
    query = select(Batch).where(Batch.tenant_id == tenant_id, Batch.idempotency_key == key)
    return session.scalar(query)


def replay_or_forget(
    session: Session,
    earlier: Batch,
    fingerprint: str | None,
    key_ttl: dt.timedelta | None,
) -> Submitted | None:
    """The earlier batch of this Idempotency-Key when it is a replay; None when the key has
    expired (it is released for the new request); IdempotencyKeyReused when the same key
    came with another request."""
    submitted_at = earlier.submitted_at
    if submitted_at.tzinfo is None:  # SQLite hands back naive UTC
        submitted_at = submitted_at.replace(tzinfo=dt.UTC)
    if key_ttl is not None and submitted_at < dt.datetime.now(dt.UTC) - key_ttl:
        earlier.idempotency_key = None
        session.flush()
        return None
    stored = earlier.idempotency_fingerprint
    if fingerprint is not None and stored is not None and stored != fingerprint:
        raise IdempotencyKeyReused(
            "Idempotency-Key was already used with a different request (another body, "
            "route or condominium); use a new key for a new request"
        )
    return Submitted(earlier.id, earlier.status, earlier.expenses_total, created=False)


# The columns submit_batch sets; the others keep their defaults (NULL).
BATCH_COLUMNS = (
    "id",
    "tenant_id",
    "condominium_id",
    "idempotency_key",
    "idempotency_fingerprint",
    "status",
    "expenses_total",
    "expenses_done",
    "failed_attempts",
    "trace_id",
    "submitted_at",
)


@lru_cache(maxsize=8)
def _insert_batch_statement(dialect: str, with_key: bool) -> ReturningInsert[tuple[str]]:
    """INSERT INTO batches ... SELECT ... FROM condominiums WHERE it is the tenant's [ON
    CONFLICT (tenant_id, idempotency_key) DO NOTHING] RETURNING id, with a bound parameter
    per column. Built once: building it costs more than running it."""
    batches = cast(Table, Batch.__table__)
    condominiums = cast(Table, Condominium.__table__)
    values = {name: bindparam(name, type_=batches.c[name].type) for name in BATCH_COLUMNS}
    owned = select(*values.values()).where(
        condominiums.c.id == values["condominium_id"],
        condominiums.c.tenant_id == values["tenant_id"],
    )
    upsert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    statement = upsert(batches).from_select(list(values), owned)
    if with_key:
        statement = statement.on_conflict_do_nothing(
            index_elements=[batches.c.tenant_id, batches.c.idempotency_key]
        )
    # RETURNING, not rowcount: SQLAlchemy keeps rowcount for UPDATE and DELETE only.
    return statement.returning(batches.c.id)


def _insert_batch(session: Session, row: dict[str, Any]) -> bool:
    """Insert the batch row if its condominium is the tenant's and (with an Idempotency-Key)
    the key is free, in one statement; False when nothing was inserted.

    With a concurrent request holding the same key, PostgreSQL waits for its commit and then
    inserts nothing: the caller finds that request's batch and replays it."""
    connection = session.connection()
    statement = _insert_batch_statement(connection.dialect.name, row["idempotency_key"] is not None)
    return connection.execute(statement, row).first() is not None


# On PostgreSQL a batch's expenses go in as one JSON document: one statement and one executor
# run whatever the batch size, where executemany runs the INSERT once per expense (the same
# reasoning as audit.pipeline's bank rows). WITH ORDINALITY keeps the ids in the batch's order.
PG_INSERT_EXPENSES = text(
    "INSERT INTO expenses (batch_id, condominium_id, external_id, supplier_cnpj, amount, "
    "expense_date, description, category, invoice_number) "
    "SELECT :batch_id, :condominium_id, e.external_id, e.supplier_cnpj, e.amount, "
    "e.expense_date, e.description, e.category, e.invoice_number "
    "FROM ROWS FROM (json_to_recordset(CAST(:expenses AS json)) AS ("
    "external_id varchar, supplier_cnpj varchar, amount numeric, expense_date date, "
    "description varchar, category varchar, invoice_number varchar)) WITH ORDINALITY "
    "AS e(external_id, supplier_cnpj, amount, expense_date, description, category, "
    "invoice_number, position) ORDER BY e.position"
)


def _insert_expenses(
    connection: Connection, batch_id: str, condominium_id: str, expenses: list[ExpenseInput]
) -> None:
    if connection.dialect.name == "postgresql":
        document = [
            {
                "external_id": item.external_id,
                "supplier_cnpj": item.supplier_cnpj,
                "amount": str(item.amount),
                "expense_date": item.expense_date.isoformat(),
                "description": item.description,
                "category": item.category,
                "invoice_number": item.invoice_number,
            }
            for item in expenses
        ]
        connection.execute(
            PG_INSERT_EXPENSES,
            {
                "batch_id": batch_id,
                "condominium_id": condominium_id,
                "expenses": json_document(document),
            },
        )
        return
    connection.execute(
        insert(cast(Table, Expense.__table__)),
        [
            {
                "batch_id": batch_id,
                "condominium_id": condominium_id,
                "external_id": item.external_id,
                "supplier_cnpj": item.supplier_cnpj,
                "amount": item.amount,
                "expense_date": item.expense_date,
                "description": item.description,
                "category": item.category,
                "invoice_number": item.invoice_number,
            }
            for item in expenses
        ],
    )


def submit_batch(
    session: Session,
    tenant_id: str,
    condominium_id: str,
    expenses: list[ExpenseInput],
    idempotency_key: str | None = None,
    *,
    fingerprint: str | None = None,
    key_ttl: dt.timedelta | None = None,
) -> Submitted:
    """Store a batch and its expenses in one transaction; the caller commits, then enqueues.

    With an Idempotency-Key: the earlier batch of the key is returned (a replay) when
    `fingerprint` matches, IdempotencyKeyReused is raised when it does not, and a key older
    than `key_ttl` is forgotten (audit.idempotency)."""
    row: dict[str, Any] = {
        "id": new_id(),
        "tenant_id": tenant_id,
        "condominium_id": condominium_id,
        "idempotency_key": idempotency_key,
        "idempotency_fingerprint": fingerprint if idempotency_key is not None else None,
        "status": BatchStatus.PENDING.value,
        "expenses_total": len(expenses),
        "expenses_done": 0,
        "failed_attempts": 0,
        "trace_id": current_trace_id(),
        "submitted_at": utcnow(),
    }
    if not _insert_batch(session, row):
        # Not the tenant's condominium, or the Idempotency-Key is taken.
        condominium_for_tenant(session, tenant_id, condominium_id)
        if idempotency_key is None:
            raise UnknownCondominium(condominium_id)
        earlier = find_by_idempotency_key(session, tenant_id, idempotency_key)
        if earlier is not None:
            replay = replay_or_forget(session, earlier, fingerprint, key_ttl)
            if replay is not None:
                return replay
        # The key's batch was withdrawn (its enqueue failed) or its key expired and was
        # released just now: the key is free, unless another request takes it first.
        if not _insert_batch(session, row):
            raise IdempotencyKeyInFlight(idempotency_key)
    _insert_expenses(session.connection(), row["id"], condominium_id, expenses)
    AuditLogService(session).append(row["id"], AuditEvent.SUBMITTED, expenses=len(expenses))
    return Submitted(row["id"], row["status"], len(expenses), created=True)


def submit_and_enqueue(
    session: Session,
    tenant_id: str,
    condominium_id: str,
    expenses: list[ExpenseInput],
    idempotency_key: str | None,
    enqueue: Callable[[str], None],
    *,
    fingerprint: str | None = None,
    key_ttl: dt.timedelta | None = None,
) -> Submitted:
    """Store, commit, then enqueue; a batch the queue refused is withdrawn again.

    Committing first means a worker never picks up a batch it cannot read; withdrawing on a
    failed enqueue means the client's retry (same Idempotency-Key) starts clean.
    """
    submitted = submit_batch(
        session,
        tenant_id,
        condominium_id,
        expenses,
        idempotency_key,
        fingerprint=fingerprint,
        key_ttl=key_ttl,
    )
    session.commit()
    if not submitted.created:
        return submitted
    try:
        enqueue(submitted.batch_id)
    except Exception as exc:  # whatever the queue raised, the batch was not accepted
        withdraw_batch(session, submitted.batch_id)
        session.commit()
        raise QueueUnavailable(str(exc)) from exc
    return submitted


def withdraw_batch(session: Session, batch_id: str) -> None:
    """Remove a batch that was never enqueued, with its expenses and audit log."""
    session.execute(delete(AuditLogEntry).where(AuditLogEntry.batch_id == batch_id))
    session.execute(delete(Expense).where(Expense.batch_id == batch_id))
    session.execute(delete(Batch).where(Batch.id == batch_id))


def batch_for_tenant(session: Session, tenant_id: str, batch_id: str) -> Batch | None:
    batch = session.get(Batch, batch_id)
    if batch is None or batch.tenant_id != tenant_id:
        return None
    return batch


# Built once: the API answers it more often than anything else.
_TASK_STATUS = select(
    Batch.id,
    Batch.condominium_id,
    Batch.status,
    Batch.expenses_done,
    Batch.expenses_total,
    Batch.failed_attempts,
    Batch.summary,
    Batch.error,
    Batch.trace_id,
    Batch.submitted_at,
    Batch.started_at,
    Batch.finished_at,
).where(Batch.id == bindparam("batch_id"), Batch.tenant_id == bindparam("tenant_id"))


async def task_status(
    reader: AsyncReader, tenant_id: str, batch_id: str
) -> Mapping[str, Any] | None:
    """What a task's status shows, if the batch is the tenant's: one select, no ORM object,
    awaited on the event loop (the most polled read costs no threadpool trip)."""
    return await reader.first(_TASK_STATUS, {"batch_id": batch_id, "tenant_id": tenant_id})


def findings_summary(session: Session, batch_id: str) -> dict[str, Any]:
    rows = session.execute(
        select(Finding.rule_code, Finding.severity, func.count())
        .where(Finding.batch_id == batch_id)
        .group_by(Finding.rule_code, Finding.severity)
    ).all()
    by_rule: Counter[str] = Counter()
    by_severity: Counter[str] = Counter()
    for rule_code, severity, count in rows:
        by_rule[rule_code] += count
        by_severity[severity] += count
    return {
        "findings": sum(by_rule.values()),
        "by_rule": dict(sorted(by_rule.items())),
        "by_severity": dict(sorted(by_severity.items())),
    }


@dataclass(frozen=True)
class FindingFilter:
    batch_id: str | None = None
    condominium_id: str | None = None
    rule_code: str | None = None
    severity: str | None = None


def list_findings(
    session: Session, flt: FindingFilter, *, offset: int, limit: int
) -> tuple[list[Finding], int]:
    query = select(Finding)
    if flt.batch_id is not None:
        query = query.where(Finding.batch_id == flt.batch_id)
    if flt.condominium_id is not None:
        query = query.where(Finding.condominium_id == flt.condominium_id)
    if flt.rule_code is not None:
        query = query.where(Finding.rule_code == flt.rule_code)
    if flt.severity is not None:
        query = query.where(Finding.severity == flt.severity)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    page = session.scalars(
        query.options(joinedload(Finding.expense).load_only(Expense.external_id))
        .order_by(Finding.id)
        .offset(offset)
        .limit(limit)
    )
    return list(page), total


def quiet_unfinished_batches(session: Session, quiet_for: dt.timedelta) -> list[Batch]:
    """Unfinished batches whose audit log has not moved for `quiet_for`: either waiting in
    the queue, or lost with a broker that crashed before persisting their message."""
    since = dt.datetime.now(dt.UTC) - quiet_for
    last_activity = (
        select(AuditLogEntry.batch_id, func.max(AuditLogEntry.created_at).label("last"))
        .group_by(AuditLogEntry.batch_id)
        .subquery()
    )
    query = (
        select(Batch)
        .join(last_activity, last_activity.c.batch_id == Batch.id)
        .where(
            Batch.status.in_([BatchStatus.PENDING, BatchStatus.STARTED, BatchStatus.RETRY]),
            last_activity.c.last < since,
        )
        .order_by(Batch.submitted_at)
    )
    return list(session.scalars(query))
