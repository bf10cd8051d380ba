"""Request and response bodies. Requests are strict: unknown fields and bad values are 422."""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Sequence
from decimal import Decimal
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from audit.batches import BatchStatus
from audit.cnpj import pydantic_cnpj
from audit.deadletters import DeadLetterStatus
from audit.models import Finding

MIN_DATE = dt.date(2000, 1, 1)
# C0 and C1 controls but tab and newline; lone surrogates (not encodable, break UTF-8 storage);
# bidirectional overrides and isolates, which can make a text display as something else.
_UNSAFE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\u202a-\u202e\u2066-\u2069\ufeff]"
)


def _utc(value: dt.datetime) -> dt.datetime:
    """SQLite hands back naive datetimes; every stored time is UTC, so say so (RFC 3339)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


UtcDateTime = Annotated[dt.datetime, AfterValidator(_utc)]

CNPJField = Annotated[str, Field(min_length=14, max_length=18), AfterValidator(pydantic_cnpj)]


def clean_text(value: str) -> str:
    """NFC, without unsafe characters (see _UNSAFE) and surrounding blanks."""
    return unicodedata.normalize("NFC", _UNSAFE.sub("", value)).strip()


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=2000)


class ExpenseIn(StrictModel):
    external_id: str = Field(min_length=1, max_length=100, pattern=r"^[\w.:/\-]+$")
    supplier_cnpj: CNPJField
    amount: Decimal = Field(gt=0, max_digits=12, decimal_places=2)
    date: dt.date
    description: str = Field(min_length=1, max_length=500)
    category: str = Field(min_length=1, max_length=50, pattern=r"^[a-z0-9_\-]+$")
    invoice_number: str | None = Field(default=None, min_length=1, max_length=60)

    @field_validator("description")
    @classmethod
    def _clean_description(cls, value: str) -> str:
        cleaned = clean_text(value)
        if not cleaned:
            raise ValueError("description must contain visible characters")
        return cleaned

    @field_validator("invoice_number")
    @classmethod
    def _clean_invoice(cls, value: str | None) -> str | None:
        if value is None:
            return None
        cleaned = clean_text(value)
        if not cleaned:
            raise ValueError("invoice_number must contain visible characters")
        return cleaned

    @field_validator("date")
    @classmethod
    def _date_in_range(cls, value: dt.date) -> dt.date:
        latest = dt.date.today() + dt.timedelta(days=366)
        if not MIN_DATE <= value <= latest:
            raise ValueError(f"date must be between {MIN_DATE} and {latest}")
        return value


class BatchIn(StrictModel):
    condominium_id: str = Field(min_length=1, max_length=36, pattern=r"^[\w\-]+$")
    expenses: list[ExpenseIn] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_external_ids(self) -> BatchIn:
        seen: set[str] = set()
        for item in self.expenses:
            if item.external_id in seen:
                raise ValueError(f"external_id {item.external_id!r} appears more than once")
            seen.add(item.external_id)
        return self


class BatchAccepted(BaseModel):
    task_id: str
    batch_id: str
    status: BatchStatus
    status_url: str
    expenses: int


class Progress(BaseModel):
    done: int
    total: int


class TaskStatus(BaseModel):
    task_id: str
    batch_id: str
    condominium_id: str
    status: BatchStatus
    progress: Progress
    failed_attempts: int
    summary: dict[str, Any] | None
    error: str | None
    trace_id: str | None
    submitted_at: UtcDateTime
    started_at: UtcDateTime | None
    finished_at: UtcDateTime | None


class FindingOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    batch_id: str
    condominium_id: str
    expense_id: int | None
    expense_external_id: str | None = Field(
        description="The expense's external_id, as the client sent it in the batch"
    )
    rule_code: str
    severity: str
    message: str
    evidence: dict[str, Any]


class FindingsPage(BaseModel):
    items: list[FindingOut]
    total: int
    page: int
    page_size: int

    @classmethod
    def of(cls, findings: Sequence[Finding], total: int, page: int, page_size: int) -> Self:
        """The one page builder for every findings listing."""
        return cls(
            items=[FindingOut.model_validate(f) for f in findings],
            total=total,
            page=page,
            page_size=page_size,
        )


class FindingCounts(BaseModel):
    total: int
    by_rule: dict[str, int]
    by_severity: dict[str, int]


class SupplierTotal(BaseModel):
    cnpj: str
    legal_name: str | None
    expenses: int
    amount: str = Field(description="Sum of the supplier's audited expenses, two decimals")


class UnmatchedExpense(BaseModel):
    expense_id: int
    external_id: str
    supplier_cnpj: str
    amount: str
    date: dt.date


class MonthlyReport(BaseModel):
    """A condominium's month: what was audited, what was found, what the bank never showed."""

    condominium_id: str
    period: str = Field(examples=["2026-10"])
    expenses_audited: int
    amount_audited: str
    expenses_matched_to_bank: int
    findings: FindingCounts
    top_suppliers: list[SupplierTotal]
    unmatched_expenses: list[UnmatchedExpense]


class AuditLogEntryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    event: str
    attempt: int | None
    detail: dict[str, Any]
    trace_id: str | None
    created_at: UtcDateTime


class CondominiumIn(StrictModel):
    name: str = Field(min_length=1, max_length=200)
    cnpj: CNPJField | None = None
    pluggy_account_id: str | None = Field(
        default=None, min_length=1, max_length=100, pattern=r"^[\w.:\-]+$"
    )

    @field_validator("name")
    @classmethod
    def _clean_name(cls, value: str) -> str:
        cleaned = clean_text(value)
        if not cleaned:
            raise ValueError("name must contain visible characters")
        return cleaned


class CondominiumOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    cnpj: str | None
    pluggy_account_id: str | None
    audit_settings: dict[str, Any]


class DeadLetterOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    batch_id: str
    task_name: str
    payload: dict[str, Any]
    provider: str | None
    error: str
    attempts: int
    status: DeadLetterStatus
    trace_id: str | None
    first_failed_at: UtcDateTime | None
    dead_lettered_at: UtcDateTime
    replayed_at: UtcDateTime | None
    replay_count: int
    discarded_at: UtcDateTime | None


class ReplayOut(BaseModel):
    dead_letter: DeadLetterOut
    task_id: str
    enqueued: bool
    status_url: str


class ReplayAllOut(BaseModel):
    provider: str
    replayed: int
    task_ids: list[str]
    status_urls: list[str]


class ErrorOut(BaseModel):
    detail: str


# Webhooks (Standard Webhooks). The secret appears in WebhookCreated and WebhookSecretOut only.
WebhookEvent = Literal["batch.succeeded", "batch.failed", "batch.dead_lettered"]


class WebhookIn(StrictModel):
    url: str = Field(
        min_length=1,
        max_length=2000,
        description="https URL of the receiver; must resolve to public addresses.",
    )
    events: list[WebhookEvent] = Field(min_length=1, max_length=3)

    @field_validator("events")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("events must not repeat")
        return value


class WebhookOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    url: str
    events: list[str]
    created_at: UtcDateTime


class WebhookCreated(WebhookOut):
    secret: str = Field(description="whsec_<base64>: shown once; verify signatures with it.")


class WebhookSecretOut(BaseModel):
    id: str
    secret: str = Field(
        description="The new whsec_ secret, shown once. The previous one also "
        "signs for 24 hours, as a second webhook-signature entry."
    )


class WebhookDeliveryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    message_id: str = Field(description="The webhook-id header: the same on every attempt.")
    event_type: str
    batch_id: str | None
    status: str = Field(description="pending, succeeded, failed or cancelled")
    attempts: int
    last_response_code: int | None
    last_response_body: str | None = Field(description="At most 256 characters of the answer.")
    last_error: str | None
    next_attempt_at: UtcDateTime | None
    last_attempt_at: UtcDateTime | None
    delivered_at: UtcDateTime | None
    created_at: UtcDateTime
