"""Dead letters of the calling tenant: list, inspect, replay, discard."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status

from api.deps import IdPath, SessionDep, TenantDep, not_found, status_url
from api.errors import AUTHENTICATED_ERRORS, queue_unavailable
from api.schemas import DeadLetterOut, ErrorOut, ReplayAllOut, ReplayOut
from audit.deadletters import DeadLetterService, DeadLetterStatus
from worker.enqueue import EnqueueFailed, enqueue_batch

router = APIRouter(prefix="/dead-letters", tags=["dead-letters"], responses=AUTHENTICATED_ERRORS)

QUEUE_DOWN: dict[str, Any] = {
    "model": ErrorOut,
    "description": "The queue is unavailable; nothing changed",
}
NOT_FOUND: dict[str, Any] = {"model": ErrorOut, "description": "No such dead letter"}


@router.get("", response_model=list[DeadLetterOut])
def list_dead_letters(
    session: SessionDep,
    tenant: TenantDep,
    status_filter: Annotated[
        str | None, Query(alias="status", pattern="^(OPEN|REPLAYED|DISCARDED)$")
    ] = "OPEN",
    provider: Annotated[str | None, Query(max_length=30)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> list[DeadLetterOut]:
    letters = DeadLetterService(session).list(
        tenant_id=tenant, status=status_filter, provider=provider, limit=limit, offset=offset
    )
    return [DeadLetterOut.model_validate(letter) for letter in letters]


@router.get("/{dead_letter_id}", response_model=DeadLetterOut, responses={404: NOT_FOUND})
def get_dead_letter(
    dead_letter_id: IdPath, session: SessionDep, tenant: TenantDep
) -> DeadLetterOut:
    letter = DeadLetterService(session).get(dead_letter_id, tenant)
    if letter is None:
        raise not_found("dead letter")
    return DeadLetterOut.model_validate(letter)


@router.post("/replay", response_model=ReplayAllOut, responses={503: QUEUE_DOWN})
def replay_dead_letters_of_provider(
    request: Request,
    session: SessionDep,
    tenant: TenantDep,
    provider: Annotated[str, Query(min_length=1, max_length=30, pattern=r"^[a-z0-9_\-]+$")],
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
) -> ReplayAllOut:
    """Replay every OPEN dead letter of this tenant that a provider caused (after its outage).

    Each letter is replayed on its own; if the queue goes away mid-way, the ones not yet
    enqueued stay OPEN and the answer is 503: calling again replays only what is left.
    """
    service = DeadLetterService(session)
    letters = service.list(
        tenant_id=tenant, status=DeadLetterStatus.OPEN, provider=provider, limit=limit
    )
    replayed: list[str] = []
    for letter in letters:
        try:
            if service.replay_and_enqueue(letter, enqueue_batch):
                replayed.append(letter.batch_id)
        except EnqueueFailed as exc:
            raise queue_unavailable(
                exc, f"{len(replayed)} were replayed and the rest stay open"
            ) from None
    return ReplayAllOut(
        provider=provider,
        replayed=len(replayed),
        task_ids=replayed,
        status_urls=[status_url(request, task_id) for task_id in replayed],
    )


@router.post(
    "/{dead_letter_id}/replay",
    response_model=ReplayOut,
    responses={404: NOT_FOUND, 503: QUEUE_DOWN},
)
def replay_dead_letter(
    dead_letter_id: IdPath, request: Request, session: SessionDep, tenant: TenantDep
) -> ReplayOut:
    """Replay one dead letter; replaying one that is not OPEN changes nothing (enqueued=false)."""
    service = DeadLetterService(session)
    letter = service.get(dead_letter_id, tenant)
    if letter is None:
        raise not_found("dead letter")
    try:
        enqueued = service.replay_and_enqueue(letter, enqueue_batch)
    except EnqueueFailed as exc:
        raise queue_unavailable(exc, "the dead letter stays open") from None
    return ReplayOut(
        dead_letter=DeadLetterOut.model_validate(letter),
        task_id=letter.batch_id,
        enqueued=enqueued,
        status_url=status_url(request, letter.batch_id),
    )


@router.post(
    "/{dead_letter_id}/discard",
    response_model=DeadLetterOut,
    responses={404: NOT_FOUND, 409: {"model": ErrorOut, "description": "Not OPEN"}},
)
def discard_dead_letter(
    dead_letter_id: IdPath, session: SessionDep, tenant: TenantDep
) -> DeadLetterOut:
    service = DeadLetterService(session)
    letter = service.get(dead_letter_id, tenant)
    if letter is None:
        raise not_found("dead letter")
    if not service.discard(letter):
        raise HTTPException(status.HTTP_409_CONFLICT, f"dead letter is {letter.status}, not OPEN")
    return DeadLetterOut.model_validate(letter)
