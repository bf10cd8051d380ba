"""AuditLogService: the one writer of a batch's story (submitted, started, retried, ...)."""

from __future__ import annotations

import datetime as dt
import json
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


# PostgreSQL's batch path (audit.pgbatch) queues its entries in a psycopg pipeline.
_PG_ENTRY = (
    "INSERT INTO audit_log (batch_id, event, attempt, detail, trace_id, created_at) "
    "VALUES (%(batch_id)s, %(event)s, %(attempt)s, CAST(%(detail)s AS json), %(trace_id)s, "
    "%(created_at)s)"
)
# The attempt read from the batch row, only while the batch has `status` (in the pipeline
# that marks it started: nothing when the start found it finished).
_PG_ENTRY_FROM_BATCH = (
    "INSERT INTO audit_log (batch_id, event, attempt, detail, trace_id, created_at) "
    "SELECT id, %(event)s, failed_attempts + 1, CAST(%(detail)s AS json), %(trace_id)s, "
    "%(created_at)s FROM batches WHERE id = %(batch_id)s AND status = %(status)s"
)


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

    def queue(
        self,
        driver_connection: Any,
        batch_id: str,
        event: AuditEvent,
        *,
        now: dt.datetime,
        attempt_while_status: str | None = None,
        **detail: Any,
    ) -> None:
        """As `append`, on the session's psycopg connection in pipeline mode: sent with the
        statements around it, no round trip of its own. `attempt_while_status`: the attempt
        is the batch's failed_attempts + 1, written only while the batch has that status."""
        params = {
            "batch_id": batch_id,
            "event": event.value,
            "attempt": None,
            "detail": json.dumps(detail, separators=(",", ":")),
            "trace_id": current_trace_id(),
            "created_at": now,
            "status": attempt_while_status,
        }
        query = _PG_ENTRY if attempt_while_status is None else _PG_ENTRY_FROM_BATCH
        driver_connection.cursor().execute(query, params)

    def entries(self, batch_id: str) -> list[AuditLogEntry]:
        query = (
            select(AuditLogEntry)
            .where(AuditLogEntry.batch_id == batch_id)
            .order_by(AuditLogEntry.id)
        )
        return list(self.session.scalars(query))
