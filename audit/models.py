"""SQLAlchemy 2 models: the platform's records. Alembic migrations mirror this file."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Money = Numeric(14, 2)


def new_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, Decimal: Money}


class Tenant(Base):
    """An administrator (administradora) of many condominiums; owns its API keys."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Share of the fleet against other tenants with work waiting (audit/fairqueue.py); 1 = equal.
    fair_weight: Mapped[float] = mapped_column(Float, default=1.0, server_default="1")


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    key_hash: Mapped[str] = mapped_column(String(128), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class Condominium(Base):
    __tablename__ = "condominiums"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    cnpj: Mapped[str | None] = mapped_column(String(14))
    pluggy_account_id: Mapped[str | None] = mapped_column(String(100))
    audit_settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Batch(Base):
    """One submitted batch; its id is also the Celery task id."""

    __tablename__ = "batches"
    __table_args__ = (UniqueConstraint("tenant_id", "idempotency_key"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    condominium_id: Mapped[str] = mapped_column(ForeignKey("condominiums.id"), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    # SHA-256 of (tenant, route, body) the key first came with (audit.idempotency).
    idempotency_fingerprint: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="PENDING", index=True)
    expenses_total: Mapped[int] = mapped_column(Integer, default=0)
    expenses_done: Mapped[int] = mapped_column(Integer, default=0)
    failed_attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    trace_id: Mapped[str | None] = mapped_column(String(32))
    submitted_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    expenses: Mapped[list[Expense]] = relationship(back_populates="batch", order_by="Expense.id")


class Expense(Base):
    __tablename__ = "expenses"
    __table_args__ = (
        UniqueConstraint("batch_id", "external_id"),
        Index("ix_expenses_condominium_id_supplier_cnpj", "condominium_id", "supplier_cnpj"),
        # The history rules' window: one range per batch, however long the history (0005).
        Index("ix_expenses_condominium_id_expense_date", "condominium_id", "expense_date"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id"), index=True)
    condominium_id: Mapped[str] = mapped_column(ForeignKey("condominiums.id"))
    external_id: Mapped[str] = mapped_column(String(100))
    supplier_cnpj: Mapped[str] = mapped_column(String(14))
    amount: Mapped[Decimal] = mapped_column(Money)
    expense_date: Mapped[dt.date] = mapped_column(Date)
    description: Mapped[str] = mapped_column(String(500))
    category: Mapped[str] = mapped_column(String(50))
    invoice_number: Mapped[str | None] = mapped_column(String(60))

    batch: Mapped[Batch] = relationship(back_populates="expenses")


class BankTransaction(Base):
    """A condominium's bank transaction as fetched from Pluggy; stored idempotently."""

    __tablename__ = "bank_transactions"
    __table_args__ = (
        UniqueConstraint("condominium_id", "provider_transaction_id"),
        # The candidate query's: one probe of the match window per amount the batch pays. With
        # the date before the amount (0006), every amount walked the whole window: the cost
        # grew with the transactions stored, 3 ms at two years of history against 0.6 ms.
        Index(
            "ix_bank_transactions_condominium_id_amount_date", "condominium_id", "amount", "date"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    condominium_id: Mapped[str] = mapped_column(ForeignKey("condominiums.id"))
    provider_transaction_id: Mapped[str] = mapped_column(String(100))
    account_id: Mapped[str] = mapped_column(String(100))
    date: Mapped[dt.date] = mapped_column(Date)
    amount: Mapped[Decimal] = mapped_column(Money)
    description: Mapped[str] = mapped_column(String(500), default="")
    type: Mapped[str] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(10))
    receiver_document: Mapped[str | None] = mapped_column(String(14))
    # Indexed (0005): a re-run clears its batch's earlier matches without a table scan.
    matched_expense_id: Mapped[int | None] = mapped_column(ForeignKey("expenses.id"), index=True)


class SupplierRegistration(Base):
    """A supplier's registry record (or the fact that it does not exist); the lookup cache."""

    __tablename__ = "supplier_registrations"

    cnpj: Mapped[str] = mapped_column(String(14), primary_key=True)
    found: Mapped[bool] = mapped_column(Boolean)
    legal_name: Mapped[str | None] = mapped_column(String(300))
    status: Mapped[str | None] = mapped_column(String(16))
    status_date: Mapped[dt.date | None] = mapped_column(Date)
    opened_on: Mapped[dt.date | None] = mapped_column(Date)
    main_cnae: Mapped[str | None] = mapped_column(String(10))
    legal_nature: Mapped[str | None] = mapped_column(String(200))
    is_mei: Mapped[bool | None] = mapped_column(Boolean)
    is_simples: Mapped[bool | None] = mapped_column(Boolean)
    provider: Mapped[str] = mapped_column(String(30))
    fetched_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Finding(Base):
    __tablename__ = "findings"
    __table_args__ = (
        UniqueConstraint("batch_id", "fingerprint"),
        Index("ix_findings_condominium_id_rule_code", "condominium_id", "rule_code"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id"), index=True)
    condominium_id: Mapped[str] = mapped_column(ForeignKey("condominiums.id"))
    expense_id: Mapped[int | None] = mapped_column(ForeignKey("expenses.id"), index=True)
    rule_code: Mapped[str] = mapped_column(String(60))
    severity: Mapped[str] = mapped_column(String(10), index=True)
    message: Mapped[str] = mapped_column(Text)
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    fingerprint: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    expense: Mapped[Expense | None] = relationship(viewonly=True)

    @property
    def expense_external_id(self) -> str | None:
        """The client's own id of the expense (its `external_id`); the integer is ours."""
        return self.expense.external_id if self.expense is not None else None


class AuditLogEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id"), index=True)
    event: Mapped[str] = mapped_column(String(30))
    attempt: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    trace_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )


class DeadLetter(Base):
    __tablename__ = "dead_letters"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id"), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    task_name: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    provider: Mapped[str | None] = mapped_column(String(30), index=True)
    error: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(12), default="OPEN", index=True)
    trace_id: Mapped[str | None] = mapped_column(String(32))
    first_failed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    dead_lettered_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    replayed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    replay_count: Mapped[int] = mapped_column(Integer, default=0)
    discarded_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class Webhook(Base):
    """A tenant's completion-webhook endpoint. The signing secret is kept encrypted (Fernet),
    since signing needs it back; the previous one keeps signing during a rotation's grace."""

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    events: Mapped[list[str]] = mapped_column(JSON)
    secret_encrypted: Mapped[str] = mapped_column(Text)
    previous_secret_encrypted: Mapped[str | None] = mapped_column(Text)
    previous_secret_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookDelivery(Base):
    """One message to one endpoint, and the transactional outbox row that schedules it.

    Written in the transaction that records the batch's final status; `next_attempt_at` is
    when it is due, `enqueued_at` when a task message was last published for it, and
    `locked_until` fences a running attempt so a duplicate message does nothing.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id"), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id"), index=True)
    message_id: Mapped[str] = mapped_column(String(40))
    event_type: Mapped[str] = mapped_column(String(40))
    event_key: Mapped[str] = mapped_column(String(120))
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(12), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    retry_step: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    enqueued_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    locked_until: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    last_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    last_response_code: Mapped[int | None] = mapped_column(Integer)
    last_response_body: Mapped[str | None] = mapped_column(String(256))
    last_error: Mapped[str | None] = mapped_column(String(300))
    delivered_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    trace_id: Mapped[str | None] = mapped_column(String(32))
    span_id: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
