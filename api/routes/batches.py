"""Batches: submit (202 at once), follow the task, read findings and the audit log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response, status

from api.deps import SessionDep, SettingsDep, TenantDep, not_found
from api.errors import AUTHENTICATED_ERRORS, NOT_FOUND, queue_unavailable
from api.schemas import (
    AuditLogEntryOut,
    BatchAccepted,
    BatchIn,
    ErrorOut,
    FindingsPage,
    Progress,
    TaskStatus,
)
from audit.auditlog import AuditLogService
from audit.batches import (
    ExpenseInput,
    FindingFilter,
    QueueUnavailable,
    UnknownCondominium,
    batch_for_tenant,
    list_findings,
    submit_and_enqueue,
)
from audit.models import Batch
from worker.enqueue import enqueue_batch

router = APIRouter(tags=["batches"], responses=AUTHENTICATED_ERRORS)


def accepted(request: Request, batch: Batch) -> BatchAccepted:
    return BatchAccepted(
        task_id=batch.id,
        batch_id=batch.id,
        status=batch.status,
        status_url=str(request.url_for("get_task", task_id=batch.id)),
        expenses=batch.expenses_total,
    )


@router.post(
    "/batch-expenses",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=BatchAccepted,
    responses={
        404: {"model": ErrorOut, "description": "Unknown condominium"},
        413: {"model": ErrorOut, "description": "Batch larger than MAX_BATCH_SIZE"},
        503: {"model": ErrorOut, "description": "The queue is unavailable; nothing was stored"},
    },
)
def submit_batch_expenses(
    body: BatchIn,
    request: Request,
    response: Response,
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> BatchAccepted:
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
    try:
        submitted = submit_and_enqueue(
            session,
            tenant,
            body.condominium_id,
            items,
            idempotency_key,
            lambda batch_id: enqueue_batch(batch_id, tenant, len(items)),
        )
    except UnknownCondominium:
        raise not_found("condominium") from None
    except QueueUnavailable as exc:
        raise queue_unavailable(exc) from None
    if not submitted.created:
        response.headers["Idempotent-Replayed"] = "true"
    return accepted(request, submitted.batch)


@router.get("/tasks/{task_id}", response_model=TaskStatus, name="get_task", responses=NOT_FOUND)
def get_task(task_id: str, session: SessionDep, tenant: TenantDep) -> TaskStatus:
    batch = batch_for_tenant(session, tenant, task_id)
    if batch is None:
        raise not_found("task")
    return TaskStatus(
        task_id=batch.id,
        batch_id=batch.id,
        condominium_id=batch.condominium_id,
        status=batch.status,
        progress=Progress(done=batch.expenses_done, total=batch.expenses_total),
        failed_attempts=batch.failed_attempts,
        summary=batch.summary,
        error=batch.error,
        trace_id=batch.trace_id,
        submitted_at=batch.submitted_at,
        started_at=batch.started_at,
        finished_at=batch.finished_at,
    )


@router.get("/batches/{batch_id}/findings", response_model=FindingsPage, responses=NOT_FOUND)
def get_batch_findings(
    batch_id: str,
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
    batch_id: str, session: SessionDep, tenant: TenantDep
) -> list[AuditLogEntryOut]:
    if batch_for_tenant(session, tenant, batch_id) is None:
        raise not_found("batch")
    return [AuditLogEntryOut.model_validate(e) for e in AuditLogService(session).entries(batch_id)]
