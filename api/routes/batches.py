"""Batches: submit (202 at once), follow the task, read findings and the audit log."""

from __future__ import annotations

import datetime as dt
from contextlib import AbstractContextManager, nullcontext
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response, status

from api.deps import (
    IdPath,
    SessionDep,
    SettingsDep,
    TenantDep,
    not_found,
    reader,
    status_url,
)
from api.errors import AUTHENTICATED_ERRORS, NOT_FOUND, queue_unavailable
from api.ratelimit import api_redis
from api.schemas import (
    AuditLogEntryOut,
    BatchAccepted,
    BatchIn,
    ErrorOut,
    FindingsPage,
    Progress,
    TaskStatus,
)
from audit import idempotency
from audit.auditlog import AuditLogService
from audit.batches import (
    ExpenseInput,
    FindingFilter,
    QueueUnavailable,
    Submitted,
    UnknownCondominium,
    batch_for_tenant,
    list_findings,
    submit_and_enqueue,
    task_status,
)
from audit.db import session_scope
from worker.enqueue import enqueue_batch

router = APIRouter(tags=["batches"], responses=AUTHENTICATED_ERRORS)


def accepted(request: Request, submitted: Submitted) -> BatchAccepted:
    return BatchAccepted(
        task_id=submitted.batch_id,
        batch_id=submitted.batch_id,
        status=submitted.status,
        status_url=status_url(request, submitted.batch_id),
        expenses=submitted.expenses_total,
    )


@router.post(
    "/batch-expenses",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=BatchAccepted,
    responses={
        400: {
            "model": ErrorOut,
            "description": "The body is not parseable JSON, or the Idempotency-Key is empty",
        },
        404: {"model": ErrorOut, "description": "Unknown condominium"},
        409: {
            "model": ErrorOut,
            "description": "A request with this Idempotency-Key is still being processed",
        },
        413: {"model": ErrorOut, "description": "Batch larger than MAX_BATCH_SIZE"},
        503: {"model": ErrorOut, "description": "The queue is unavailable; nothing was stored"},
    },
)
def submit_batch_expenses(
    body: BatchIn,
    request: Request,
    tenant: TenantDep,
    settings: SettingsDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=200,
            description="Makes the submission safe to retry: the same key with the same "
            "request answers the first task (Idempotent-Replayed: true); with another request "
            "422; while the first is still being processed 409. Keys live "
            "IDEMPOTENCY_KEY_TTL_HOURS (24 h).",
        ),
    ] = None,
) -> Response:
    # The session is opened here rather than injected, and the answer is the model's own
    # JSON: each sync dependency costs trips through the threadpool, and returning a
    # Response skips FastAPI's second validation of the model.
    if idempotency_key is not None and not idempotency_key.strip():
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, "Idempotency-Key: must not be empty; omit the header"
        )
    if len(body.expenses) > settings.max_batch_size:
        raise HTTPException(
            status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            f"expenses: {len(body.expenses)} items exceed the batch size limit of "
            f"{settings.max_batch_size}; split the batch",
        )
    items = [
        ExpenseInput(
            external_id=e.external_id,
            supplier_cnpj=e.supplier_cnpj,
            amount=e.amount,
            expense_date=e.date,
            description=e.description,
            category=e.category,
            invoice_number=e.invoice_number,
        )
        for e in body.expenses
    ]
    fingerprint = None
    held: AbstractContextManager[None] = nullcontext()
    if idempotency_key is not None:
        fingerprint = idempotency.fingerprint(
            tenant, "POST /batch-expenses", body.model_dump(mode="json")
        )
        held = idempotency.processing(api_redis(request, settings), tenant, idempotency_key)
    try:
        with held, session_scope(settings.database_url) as session:
            submitted = submit_and_enqueue(
                session,
                tenant,
                body.condominium_id,
                items,
                idempotency_key,
                lambda batch_id: enqueue_batch(batch_id, tenant, len(items)),
                fingerprint=fingerprint,
                key_ttl=dt.timedelta(hours=settings.idempotency_key_ttl_hours),
            )
    except idempotency.IdempotencyKeyInFlight:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            "Idempotency-Key: a request with this key is still being processed; retry later",
        ) from None
    except idempotency.IdempotencyKeyReused as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [{"loc": ["header", "Idempotency-Key"], "msg": str(exc), "type": "value_error"}],
        ) from None
    except UnknownCondominium:
        raise not_found("condominium") from None
    except QueueUnavailable as exc:
        raise queue_unavailable(exc) from None
    return Response(
        accepted(request, submitted).model_dump_json(),
        status_code=status.HTTP_202_ACCEPTED,
        media_type="application/json",
        headers=None if submitted.created else {"Idempotent-Replayed": "true"},
    )


@router.get("/tasks/{task_id}", response_model=TaskStatus, name="get_task", responses=NOT_FOUND)
async def get_task(task_id: IdPath, tenant: TenantDep, settings: SettingsDep) -> Response:
    # Polled far more often than anything else: async, so a remembered key's request never
    # leaves the event loop; one select; the model's own JSON (returning a Response skips
    # FastAPI's second validation of the model).
    row = await task_status(reader(settings), tenant, task_id)
    if row is None:
        raise not_found("task")
    task = TaskStatus(
        task_id=row["id"],
        batch_id=row["id"],
        condominium_id=row["condominium_id"],
        status=row["status"],
        progress=Progress(done=row["expenses_done"], total=row["expenses_total"]),
        failed_attempts=row["failed_attempts"],
        summary=row["summary"],
        error=row["error"],
        trace_id=row["trace_id"],
        submitted_at=row["submitted_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )
    return Response(task.model_dump_json(), media_type="application/json")


@router.get("/batches/{batch_id}/findings", response_model=FindingsPage, responses=NOT_FOUND)
def get_batch_findings(
    batch_id: IdPath,
    session: SessionDep,
    tenant: TenantDep,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    page_size: Annotated[int, Query(ge=1, le=500)] = 100,
    rule: Annotated[str | None, Query(max_length=60)] = None,
    severity: Annotated[str | None, Query(pattern="^(info|warning|critical)$")] = None,
) -> FindingsPage:
    if batch_for_tenant(session, tenant, batch_id) is None:
        raise not_found("batch")
    findings, total = list_findings(
        session,
        FindingFilter(batch_id=batch_id, rule_code=rule, severity=severity),
        offset=(page - 1) * page_size,
        limit=page_size,
    )
    return FindingsPage.of(findings, total, page, page_size)


@router.get(
    "/batches/{batch_id}/audit-log", response_model=list[AuditLogEntryOut], responses=NOT_FOUND
)
def get_batch_audit_log(
    batch_id: IdPath, session: SessionDep, tenant: TenantDep
) -> list[AuditLogEntryOut]:
    if batch_for_tenant(session, tenant, batch_id) is None:
        raise not_found("batch")
    return [AuditLogEntryOut.model_validate(e) for e in AuditLogService(session).entries(batch_id)]
