"""Findings across batches, a condominium's monthly report, and its audit settings."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import ValidationError

from api.deps import SessionDep, TenantDep, not_found
from api.errors import AUTHENTICATED_ERRORS, NOT_FOUND
from api.schemas import FindingOut, FindingsPage
from audit.batches import FindingFilter, UnknownCondominium, condominium_for_tenant, list_findings
from audit.models import Batch, Condominium
from audit.reports import monthly_report
from audit.rules import RuleSettings

router = APIRouter(tags=["findings"], responses=AUTHENTICATED_ERRORS)


def own_condominium(session: SessionDep, tenant: str, condominium_id: str) -> Condominium:
    try:
        return condominium_for_tenant(session, tenant, condominium_id)
    except UnknownCondominium:
        raise not_found("condominium") from None


@router.get("/findings", response_model=FindingsPage, responses=NOT_FOUND)
def search_findings(
    session: SessionDep,
    tenant: TenantDep,
    condominium_id: Annotated[str, Query(max_length=36)],
    batch_id: Annotated[str | None, Query(max_length=36)] = None,
    rule: Annotated[str | None, Query(max_length=60)] = None,
    severity: Annotated[str | None, Query(pattern="^(info|warning|critical)$")] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    page_size: Annotated[int, Query(ge=1, le=500)] = 100,
) -> FindingsPage:
    own_condominium(session, tenant, condominium_id)
    if batch_id is not None:
        batch = session.get(Batch, batch_id)
        if batch is None or batch.tenant_id != tenant:
            raise not_found("batch")
    findings, total = list_findings(
        session,
        FindingFilter(
            batch_id=batch_id, condominium_id=condominium_id, rule_code=rule, severity=severity
        ),
        offset=(page - 1) * page_size,
        limit=page_size,
    )
    return FindingsPage(
        items=[FindingOut.model_validate(f) for f in findings],
        total=total,
        page=page,
        page_size=page_size,
    )


@router.get("/condominiums/{condominium_id}/report", responses=NOT_FOUND)
def get_report(
    condominium_id: str,
    session: SessionDep,
    tenant: TenantDep,
    period: Annotated[str, Query(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$", examples=["2026-10"])],
) -> dict[str, Any]:
    own_condominium(session, tenant, condominium_id)
    try:
        return monthly_report(session, condominium_id, period)
    except ValueError as exc:  # e.g. year 0000, which the pattern lets through
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [{"loc": ["query", "period"], "msg": str(exc), "type": "value_error"}],
        ) from None


@router.get("/condominiums/{condominium_id}/audit-settings", responses=NOT_FOUND)
def get_audit_settings(condominium_id: str, session: SessionDep, tenant: TenantDep) -> Any:
    condominium = own_condominium(session, tenant, condominium_id)
    return RuleSettings.from_stored(condominium.audit_settings).to_stored()


@router.put("/condominiums/{condominium_id}/audit-settings", responses=NOT_FOUND)
def put_audit_settings(
    condominium_id: str, body: dict[str, Any], session: SessionDep, tenant: TenantDep
) -> Any:
    """Replace the condominium's settings; fields left out take the defaults."""
    condominium = own_condominium(session, tenant, condominium_id)
    try:
        settings = RuleSettings.from_stored(body)
    except ValidationError as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [
                {"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]}
                for e in exc.errors(include_url=False, include_context=False, include_input=False)
            ],
        ) from None
    condominium.audit_settings = settings.to_stored()
    return condominium.audit_settings
