"""AuditLogService: the one writer of a batch's story (submitted, started, retried, ...)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, cast

from sqlalchemy import Table, insert, select
from sqlalchemy.orm import Session

from audit.models import AuditLogEntry, utcnow
from audit.tracing_context import current_trace_id


class AuditEvent(StrEnum):
    SUBMITTED = "submitted"
    STARTED = "started"
    RATE_LIMITED = "rate_limited"
    WAITING_FOR_PROVIDER = "waiting_for_provider"
    RETRIED = "retried"
    DEAD_LETTERED = "dead_lettered"
    REPLAYED = "replayed"
    REQUEUED = "requeued"
    DISCARDED = "discarded"
    FINISHED = "finished"


class AuditLogService:
    """Appends entries inside the caller's transaction, so a step and its entry commit together."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def record(
        self,
        batch_id: str,
        event: AuditEvent,
        *,
        attempt: int | None = None,
        **detail: Any,
    ) -> AuditLogEntry:
        entry = AuditLogEntry(
            batch_id=batch_id,
            event=event.value,
            attempt=attempt,
            detail=detail,
            trace_id=current_trace_id(),
        )
        self.session.add(entry)
        return entry

    def append(
        self, batch_id: str, event: AuditEvent, *, attempt: int | None = None, **detail: Any
    ) -> None:
        """As `record`, inserted at once with one Core statement and no ORM object: for a
        hot path (a submission) that needs nothing back."""
        self.session.connection().execute(
            insert(cast(Table, AuditLogEntry.__table__)),
            {
                "batch_id": batch_id,
                "event": event.value,
                "attempt": attempt,
                "detail": detail,
                "trace_id": current_trace_id(),
                "created_at": utcnow(),
            },
        )

    def entries(self, batch_id: str) -> list[AuditLogEntry]:
        query = (
            select(AuditLogEntry)
            .where(AuditLogEntry.batch_id == batch_id)
            .order_by(AuditLogEntry.id)
        )
        return list(self.session.scalars(query))
