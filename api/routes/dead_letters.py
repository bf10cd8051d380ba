"""Dead letters of the calling tenant: list, inspect, replay, discard."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, status

from api.deps import SessionDep, TenantDep, not_found
from api.schemas import DeadLetterOut, ReplayOut
from audit.deadletters import DeadLetterService
from worker.enqueue import EnqueueFailed, enqueue_batch

router = APIRouter(prefix="/dead-letters", tags=["dead-letters"])


@router.get("", response_model=list[DeadLetterOut])
def list_dead_letters(
    session: SessionDep,
    tenant: TenantDep,
    status_filter: Annotated[
        str | None, Query(alias="status", pattern="^(OPEN|REPLAYED|DISCARDED)$")
    ] = "OPEN",
    provider: Annotated[str | None, Query(max_length=30)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[DeadLetterOut]:
    letters = DeadLetterService(session).list(
        tenant_id=tenant, status=status_filter, provider=provider, limit=limit, offset=offset
    )
    return [DeadLetterOut.model_validate(letter) for letter in letters]


@router.get("/{dead_letter_id}", response_model=DeadLetterOut)
def get_dead_letter(dead_letter_id: str, session: SessionDep, tenant: TenantDep) -> DeadLetterOut:
    letter = DeadLetterService(session).get(dead_letter_id, tenant)
    if letter is None:
        raise not_found("dead letter")
    return DeadLetterOut.model_validate(letter)


@router.post("/{dead_letter_id}/replay", response_model=ReplayOut)
def replay_dead_letter(
    dead_letter_id: str, request: Request, session: SessionDep, tenant: TenantDep
) -> ReplayOut:
    service = DeadLetterService(session)
    letter = service.get(dead_letter_id, tenant)
    if letter is None:
        raise not_found("dead letter")
    outcome = service.replay(letter)
    session.commit()
    if outcome.enqueue:
        try:
            enqueue_batch(letter.batch_id)
        except EnqueueFailed as exc:
            service.undo_replay(letter, str(exc))
            session.commit()
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                f"the work queue is unavailable ({exc}); the dead letter stays open",
                headers={"Retry-After": "5"},
            ) from None
    return ReplayOut(
        dead_letter=DeadLetterOut.model_validate(letter),
        task_id=letter.batch_id,
        enqueued=outcome.enqueue,
        status_url=str(request.url_for("get_task", task_id=letter.batch_id)),
    )


@router.post("/{dead_letter_id}/discard", response_model=DeadLetterOut)
def discard_dead_letter(
    dead_letter_id: str, session: SessionDep, tenant: TenantDep
) -> DeadLetterOut:
    service = DeadLetterService(session)
    letter = service.get(dead_letter_id, tenant)
    if letter is None:
        raise not_found("dead letter")
    if not service.discard(letter):
        raise HTTPException(status.HTTP_409_CONFLICT, f"dead letter is {letter.status}, not OPEN")
    return DeadLetterOut.model_validate(letter)
