"""Condominiums belong to the calling tenant; another tenant's are 404. Their monthly report
and their audit settings live here too."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from api.deps import IdPath, SessionDep, TenantDep, not_found
from api.errors import AUTHENTICATED_ERRORS, NOT_FOUND
from api.schemas import CondominiumIn, CondominiumOut, MonthlyReport
from audit.batches import UnknownCondominium, condominium_for_tenant
from audit.models import Condominium
from audit.reports import monthly_report
from audit.rules import RuleSettings

router = APIRouter(prefix="/condominiums", tags=["condominiums"], responses=AUTHENTICATED_ERRORS)


def own_condominium(session: SessionDep, tenant: str, condominium_id: str) -> Condominium:
    try:
        return condominium_for_tenant(session, tenant, condominium_id)
    except UnknownCondominium:
        raise not_found("condominium") from None


@router.post("", status_code=status.HTTP_201_CREATED, response_model=CondominiumOut)
def create_condominium(body: CondominiumIn, session: SessionDep, tenant: TenantDep) -> Condominium:
    condominium = Condominium(
        tenant_id=tenant,
        name=body.name,
        cnpj=body.cnpj,
        pluggy_account_id=body.pluggy_account_id,
        audit_settings={},
    )
    session.add(condominium)
    session.flush()
    return condominium


@router.get("/{condominium_id}", response_model=CondominiumOut, responses=NOT_FOUND)
def get_condominium(condominium_id: IdPath, session: SessionDep, tenant: TenantDep) -> Condominium:
    return own_condominium(session, tenant, condominium_id)


@router.get("/{condominium_id}/report", response_model=MonthlyReport, responses=NOT_FOUND)
def get_report(
    condominium_id: IdPath,
    session: SessionDep,
    tenant: TenantDep,
    period: Annotated[str, Query(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$", examples=["2026-10"])],
) -> MonthlyReport:
    own_condominium(session, tenant, condominium_id)
    try:
        return MonthlyReport.model_validate(monthly_report(session, condominium_id, period))
    except ValueError as exc:  # e.g. year 0000, which the pattern lets through
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [{"loc": ["query", "period"], "msg": str(exc), "type": "value_error"}],
        ) from None


@router.get("/{condominium_id}/audit-settings", response_model=RuleSettings, responses=NOT_FOUND)
def get_audit_settings(
    condominium_id: IdPath, session: SessionDep, tenant: TenantDep
) -> RuleSettings:
    condominium = own_condominium(session, tenant, condominium_id)
    return RuleSettings.from_stored(condominium.audit_settings)


@router.put("/{condominium_id}/audit-settings", response_model=RuleSettings, responses=NOT_FOUND)
def put_audit_settings(
    condominium_id: IdPath, body: RuleSettings, session: SessionDep, tenant: TenantDep
) -> RuleSettings:
    """Replace the condominium's settings; fields left out take the defaults."""
    condominium = own_condominium(session, tenant, condominium_id)
    condominium.audit_settings = body.to_stored()
    return body
