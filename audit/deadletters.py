"""Dead letters: work that failed every attempt, kept with its payload until replayed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from audit.auditlog import AuditEvent, AuditLogService
from audit.batches import BatchStatus
from audit.db import session_factory
from audit.models import AuditLogEntry, Batch, DeadLetter
from audit.observability.tracing import replay_link, tracer


class DeadLetterStatus(StrEnum):
    OPEN = "OPEN"
    REPLAYED = "REPLAYED"
    DISCARDED = "DISCARDED"


@dataclass(frozen=True)
class ReplayOutcome:
    dead_letter: DeadLetter
    enqueue: bool  # False when it was already replayed or discarded (replay is idempotent)


class DeadLetterService:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.audit_log = AuditLogService(session)

    def get(self, dead_letter_id: str, tenant_id: str | None = None) -> DeadLetter | None:
        letter = self.session.get(DeadLetter, dead_letter_id)
        if letter is None or (tenant_id is not None and letter.tenant_id != tenant_id):
            return None
        return letter

    def list(
        self,
        *,
        tenant_id: str | None = None,
        status: str | None = DeadLetterStatus.OPEN,
        provider: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[DeadLetter]:
        query = select(DeadLetter)
        if tenant_id is not None:
            query = query.where(DeadLetter.tenant_id == tenant_id)
        if status is not None:
            query = query.where(DeadLetter.status == status)
        if provider is not None:
            query = query.where(DeadLetter.provider == provider)
        query = query.order_by(DeadLetter.dead_lettered_at, DeadLetter.id)
        return list(self.session.scalars(query.offset(offset).limit(limit)))

    def replay(self, letter: DeadLetter) -> ReplayOutcome:
        """Reset the batch for a fresh run; the caller commits, then enqueues the batch.

        The OPEN -> REPLAYED step is one conditional UPDATE, so of two concurrent replays of
        the same letter only one enqueues: a replay is idempotent even under a race.
        """
        claimed = self.session.execute(
            update(DeadLetter)
            .where(DeadLetter.id == letter.id, DeadLetter.status == DeadLetterStatus.OPEN)
            .values(
                status=DeadLetterStatus.REPLAYED,
                replayed_at=dt.datetime.now(dt.UTC),
                replay_count=DeadLetter.replay_count + 1,
            )
            .execution_options(synchronize_session=False)
        )
        self.session.refresh(letter)
        if getattr(claimed, "rowcount", 0) != 1:
            return ReplayOutcome(letter, enqueue=False)
        # The replay runs in the caller's (new) trace; a span link leads back to the trace
        # in which the batch was dead-lettered.
        link = replay_link(letter.trace_id, self._dead_letter_span_id(letter), letter.id)
        with tracer.start_as_current_span(
            "dead_letter.replay",
            links=[link] if link is not None else None,
            attributes={"dead_letter.id": letter.id, "batch.id": letter.batch_id},
        ):
            return self._replay(letter)

    def _dead_letter_span_id(self, letter: DeadLetter) -> str | None:
        entries = self.session.scalars(
            select(AuditLogEntry)
            .where(
                AuditLogEntry.batch_id == letter.batch_id,
                AuditLogEntry.event == AuditEvent.DEAD_LETTERED,
            )
            .order_by(AuditLogEntry.id.desc())
        )
        for entry in entries:
            if entry.detail.get("dead_letter_id") == letter.id:
                span_id = entry.detail.get("span_id")
                return str(span_id) if span_id else None
        return None

    def _replay(self, letter: DeadLetter) -> ReplayOutcome:
        batch = self.session.get(Batch, letter.batch_id)
        assert batch is not None
        batch.status = BatchStatus.PENDING
        batch.failed_attempts = 0
        batch.error = None
        batch.finished_at = None
        self.audit_log.record(
            batch.id,
            AuditEvent.REPLAYED,
            dead_letter_id=letter.id,
            original_trace_id=letter.trace_id,
        )
        return ReplayOutcome(letter, enqueue=True)

    def replay_and_enqueue(self, letter: DeadLetter, enqueue: Callable[[str], None]) -> bool:
        """Replay, commit, then enqueue; if the enqueue fails the letter is put back OPEN
        (committed) and the error propagates. False when there was nothing to replay."""
        outcome = self.replay(letter)
        self.session.commit()
        if not outcome.enqueue:
            return False
        try:
            enqueue(letter.batch_id)
        except Exception as exc:
            self.undo_replay(letter, str(exc))
            self.session.commit()
            raise
        return True

    def undo_replay(self, letter: DeadLetter, reason: str) -> None:
        """Put a replay back when the enqueue itself failed, so the letter is not lost."""
        batch = self.session.get(Batch, letter.batch_id)
        assert batch is not None
        letter.status = DeadLetterStatus.OPEN
        batch.status = BatchStatus.FAILURE
        batch.failed_attempts = letter.attempts
        batch.error = f"dead-lettered after {letter.attempts} failed attempts: {letter.error}"
        batch.finished_at = dt.datetime.now(dt.UTC)
        self.audit_log.record(batch.id, AuditEvent.DEAD_LETTERED, reason=reason, replay_failed=True)

    def discard(self, letter: DeadLetter) -> bool:
        """OPEN -> DISCARDED in one conditional UPDATE (a concurrent replay wins or loses)."""
        claimed = self.session.execute(
            update(DeadLetter)
            .where(DeadLetter.id == letter.id, DeadLetter.status == DeadLetterStatus.OPEN)
            .values(status=DeadLetterStatus.DISCARDED, discarded_at=dt.datetime.now(dt.UTC))
            .execution_options(synchronize_session=False)
        )
        self.session.refresh(letter)
        if getattr(claimed, "rowcount", 0) != 1:
            return False
        self.audit_log.record(letter.batch_id, AuditEvent.DISCARDED, dead_letter_id=letter.id)
        return True


def open_dead_letter_count(database_url: str) -> int:
    """Dead letters waiting for a replay or a discard (the metrics gauge and `ops status`)."""
    with session_factory(database_url)() as session:
        query = select(func.count()).select_from(DeadLetter)
        return int(session.scalar(query.where(DeadLetter.status == DeadLetterStatus.OPEN)) or 0)
