"""Condominiums belong to the calling tenant; another tenant's are 404."""

from __future__ import annotations

from fastapi import APIRouter, status

from api.deps import SessionDep, TenantDep, not_found
from api.errors import AUTHENTICATED_ERRORS, NOT_FOUND
from api.schemas import CondominiumIn, CondominiumOut
from audit.batches import UnknownCondominium, condominium_for_tenant
from audit.models import Condominium

router = APIRouter(prefix="/condominiums", tags=["condominiums"], responses=AUTHENTICATED_ERRORS)


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
def get_condominium(condominium_id: str, session: SessionDep, tenant: TenantDep) -> Condominium:
    try:
        return condominium_for_tenant(session, tenant, condominium_id)
    except UnknownCondominium:
        raise not_found("condominium") from None
