"""audit.batches.submit_batch / submit_and_enqueue on both databases: the batch row goes in
only for the tenant's own condominium and a free Idempotency-Key (one statement), with its
expenses and its SUBMITTED entry; replays, reused and expired keys, and withdrawal."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from audit.auth import create_tenant
from audit.batches import (
    ExpenseInput,
    QueueUnavailable,
    UnknownCondominium,
    submit_and_enqueue,
    submit_batch,
)
from audit.db import session_scope
from audit.idempotency import IdempotencyKeyReused
from audit.models import AuditLogEntry, Batch, Condominium, Expense

TTL = dt.timedelta(hours=24)


def items(count: int = 3) -> list[ExpenseInput]:
    return [
        ExpenseInput(
            external_id=f"e{n}",
            supplier_cnpj="11222333000181",
            amount=Decimal("10.50"),
            expense_date=dt.date(2026, 10, 1),
            description="Limpeza",
            category="limpeza",
            invoice_number=None,
        )
        for n in range(count)
    ]


def tenant_with_condominium(database_url: str) -> tuple[str, str]:
    with session_scope(database_url) as session:
        tenant = create_tenant(session, "t")
        condominium = Condominium(tenant_id=tenant.id, name="C", audit_settings={})
        session.add(condominium)
        session.flush()
        return tenant.id, condominium.id


def stored(session: Session) -> tuple[int, int, int]:
    """How many batches, expenses and audit-log entries the database holds."""

    def count(table: type[Batch | Expense | AuditLogEntry]) -> int:
        return session.scalar(select(func.count()).select_from(table)) or 0

    return count(Batch), count(Expense), count(AuditLogEntry)


def test_a_batch_is_stored_with_its_expenses_and_its_submitted_entry(database_url: str) -> None:
    tenant, condominium = tenant_with_condominium(database_url)
    with session_scope(database_url) as session:
        submitted = submit_batch(session, tenant, condominium, items(3), "k1", fingerprint="f1")
    assert submitted.created
    assert (submitted.status, submitted.expenses_total) == ("PENDING", 3)
    with session_scope(database_url) as session:
        batch = session.get_one(Batch, submitted.batch_id)
        assert (batch.tenant_id, batch.condominium_id) == (tenant, condominium)
        assert (batch.idempotency_key, batch.idempotency_fingerprint) == ("k1", "f1")
        assert (batch.expenses_total, batch.expenses_done, batch.failed_attempts) == (3, 0, 0)
        assert batch.submitted_at is not None
        amounts = session.scalars(select(Expense.amount).where(Expense.batch_id == batch.id))
        assert list(amounts) == [Decimal("10.50")] * 3
        entries = session.scalars(select(AuditLogEntry).where(AuditLogEntry.batch_id == batch.id))
        assert [(e.event, e.detail) for e in entries] == [("submitted", {"expenses": 3})]


def test_the_same_key_and_request_replay_the_first_batch(database_url: str) -> None:
    tenant, condominium = tenant_with_condominium(database_url)
    with session_scope(database_url) as session:
        first = submit_batch(session, tenant, condominium, items(), "k", fingerprint="f")
    with session_scope(database_url) as session:
        again = submit_batch(
            session, tenant, condominium, items(), "k", fingerprint="f", key_ttl=TTL
        )
        assert (again.batch_id, again.created) == (first.batch_id, False)
        assert stored(session) == (1, 3, 1)


def test_the_same_key_with_another_request_is_refused(database_url: str) -> None:
    tenant, condominium = tenant_with_condominium(database_url)
    with session_scope(database_url) as session:
        submit_batch(session, tenant, condominium, items(), "k", fingerprint="f")
    with pytest.raises(IdempotencyKeyReused), session_scope(database_url) as session:
        submit_batch(session, tenant, condominium, items(), "k", fingerprint="other", key_ttl=TTL)


def test_keys_belong_to_their_tenant(database_url: str) -> None:
    tenant, condominium = tenant_with_condominium(database_url)
    other, other_condominium = tenant_with_condominium(database_url)
    with session_scope(database_url) as session:
        mine = submit_batch(session, tenant, condominium, items(), "k", fingerprint="f")
        theirs = submit_batch(session, other, other_condominium, items(), "k", fingerprint="g")
    assert theirs.created
    assert theirs.batch_id != mine.batch_id


@pytest.mark.parametrize("key", [None, "k"])
def test_another_tenants_condominium_is_unknown_and_nothing_is_stored(
    database_url: str, key: str | None
) -> None:
    tenant, _ = tenant_with_condominium(database_url)
    _, foreign = tenant_with_condominium(database_url)
    for condominium in (foreign, "no-such-condominium"):
        with pytest.raises(UnknownCondominium), session_scope(database_url) as session:
            submit_batch(session, tenant, condominium, items(), key, fingerprint="f")
    with session_scope(database_url) as session:
        assert stored(session) == (0, 0, 0)


def test_an_expired_key_is_released_for_a_new_batch(database_url: str) -> None:
    tenant, condominium = tenant_with_condominium(database_url)
    with session_scope(database_url) as session:
        old = submit_batch(session, tenant, condominium, items(), "k", fingerprint="f")
    with session_scope(database_url) as session:
        long_ago = dt.datetime.now(dt.UTC) - TTL - dt.timedelta(minutes=1)
        session.execute(update(Batch).values(submitted_at=long_ago))
    with session_scope(database_url) as session:
        new = submit_batch(session, tenant, condominium, items(), "k", fingerprint="g", key_ttl=TTL)
    assert new.created
    assert new.batch_id != old.batch_id
    with session_scope(database_url) as session:
        assert session.get_one(Batch, old.batch_id).idempotency_key is None
        assert session.get_one(Batch, new.batch_id).idempotency_key == "k"


def test_a_batch_the_queue_refused_is_withdrawn_and_its_key_starts_clean(
    database_url: str,
) -> None:
    tenant, condominium = tenant_with_condominium(database_url)
    enqueued: list[str] = []

    def refuse(batch_id: str) -> None:
        raise ConnectionError("queue down")

    with pytest.raises(QueueUnavailable), session_scope(database_url) as session:
        submit_and_enqueue(session, tenant, condominium, items(), "k", refuse, fingerprint="f")
    with session_scope(database_url) as session:
        assert stored(session) == (0, 0, 0)
        retried = submit_and_enqueue(
            session, tenant, condominium, items(), "k", enqueued.append, fingerprint="f"
        )
    assert retried.created
    assert enqueued == [retried.batch_id]


def test_every_field_of_every_expense_is_stored_in_the_batch_s_order(database_url: str) -> None:
    tenant, condominium = tenant_with_condominium(database_url)
    sent = [
        ExpenseInput(
            external_id=f"nf-{n:03d}",
            supplier_cnpj="12ABC34501DE35" if n % 2 else "11222333000181",
            amount=Decimal("1234567.89") if n == 0 else Decimal(f"{n}.05"),
            expense_date=dt.date(2026, 11, 1 + n % 28),
            description=f'Manutenção do elevador nº {n} — peça "B"\ttroca',
            category="manutencao",
            invoice_number=None if n % 3 == 0 else f"NF {n}",
        )
        for n in reversed(range(60))
    ]
    with session_scope(database_url) as session:
        submitted = submit_batch(session, tenant, condominium, sent)
    with session_scope(database_url) as session:
        rows = session.execute(
            select(
                Expense.condominium_id,
                Expense.external_id,
                Expense.supplier_cnpj,
                Expense.amount,
                Expense.expense_date,
                Expense.description,
                Expense.category,
                Expense.invoice_number,
            )
            .where(Expense.batch_id == submitted.batch_id)
            .order_by(Expense.id)
        ).all()
    assert {row.condominium_id for row in rows} == {condominium}
    assert [
        ExpenseInput(
            *row[1:4],
            expense_date=row[4],
            description=row[5],
            category=row[6],
            invoice_number=row[7],
        )
        for row in rows
    ] == sent
