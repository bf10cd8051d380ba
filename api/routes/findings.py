"""Findings across batches of one condominium, filtered and paged."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import ID_PATTERN, SessionDep, TenantDep, not_found
from api.errors import AUTHENTICATED_ERRORS, NOT_FOUND
from api.routes.condominiums import own_condominium
from api.schemas import FindingsPage
from audit.batches import FindingFilter, batch_for_tenant, list_findings

router = APIRouter(tags=["findings"], responses=AUTHENTICATED_ERRORS)


@router.get("/findings", response_model=FindingsPage, responses=NOT_FOUND)
def search_findings(
    session: SessionDep,
    tenant: TenantDep,
    condominium_id: Annotated[str, Query(max_length=36, pattern=ID_PATTERN)],
    batch_id: Annotated[str | None, Query(max_length=36, pattern=ID_PATTERN)] = None,
    rule: Annotated[str | None, Query(max_length=60)] = None,
    severity: Annotated[str | None, Query(pattern="^(info|warning|critical)$")] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    page_size: Annotated[int, Query(ge=1, le=500)] = 100,
) -> FindingsPage:
    own_condominium(session, tenant, condominium_id)
    if batch_id is not None and batch_for_tenant(session, tenant, batch_id) is None:
        raise not_found("batch")
    findings, total = list_findings(
        session,
        FindingFilter(
            batch_id=batch_id, condominium_id=condominium_id, rule_code=rule, severity=severity
        ),
        offset=(page - 1) * page_size,
        limit=page_size,
    )
    return FindingsPage.of(findings, total, page, page_size)
