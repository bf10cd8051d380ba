"""Completion webhooks of the calling tenant: register, list, delete, rotate, deliveries.

Another tenant's webhook is 404, like every record here. The signing secret is in the
answer of POST /webhooks and of rotate-secret, and nowhere else, ever.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response, status

from api.deps import IdPath, SessionDep, SettingsDep, TenantDep, not_found
from api.errors import AUTHENTICATED_ERRORS
from api.schemas import (
    ErrorOut,
    WebhookCreated,
    WebhookDeliveryOut,
    WebhookIn,
    WebhookOut,
    WebhookSecretOut,
)
from audit.models import Webhook
from audit.settings import Settings
from audit.webhooks import endpoints, outbox
from audit.webhooks.secretbox import SecretBox, SecretsUnavailable
from audit.webhooks.urls import UnsafeUrl, check_url
from worker.enqueue import EnqueueFailed, enqueue_webhook_delivery

router = APIRouter(prefix="/webhooks", tags=["webhooks"], responses=AUTHENTICATED_ERRORS)

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "No such webhook (another tenant's is 404 too)"}
}
NOT_CONFIGURED: dict[str, Any] = {
    "model": ErrorOut,
    "description": "Webhooks are not configured on this server (WEBHOOK_SECRET_KEYS)",
}


def secret_box(settings: Settings) -> SecretBox:
    try:
        return SecretBox(settings.webhook_secret_keys)
    except SecretsUnavailable as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"webhooks are not configured: {exc}"
        ) from None


def checked_url(url: str, settings: Settings) -> str:
    """422 naming the field, like any invalid input, when the receiver may not be called."""
    try:
        check_url(url, allow_private=settings.webhook_allow_private_urls)
    except UnsafeUrl as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_ENTITY,
            [{"loc": ["body", "url"], "msg": f"url {exc}", "type": "url_refused"}],
        ) from None
    return url


def owned(session: SessionDep, tenant: str, webhook_id: str) -> Webhook:
    webhook = endpoints.get_for_tenant(session, tenant, webhook_id)
    if webhook is None:
        raise not_found("webhook")
    return webhook


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookCreated,
    responses={503: NOT_CONFIGURED},
)
def create_webhook(
    body: WebhookIn, session: SessionDep, tenant: TenantDep, settings: SettingsDep
) -> WebhookCreated:
    """Register a receiver for batch events; the answer holds its secret, shown once."""
    box = secret_box(settings)
    url = checked_url(body.url, settings)
    created = endpoints.register(session, box, tenant, url, list(body.events))
    return WebhookCreated(
        id=created.webhook.id,
        url=created.webhook.url,
        events=created.webhook.events,
        created_at=created.webhook.created_at,
        secret=created.secret,
    )


@router.get("", response_model=list[WebhookOut])
def list_webhooks(session: SessionDep, tenant: TenantDep) -> list[WebhookOut]:
    return [WebhookOut.model_validate(w) for w in endpoints.list_for_tenant(session, tenant)]


@router.get("/{webhook_id}", response_model=WebhookOut, responses=NOT_FOUND)
def get_webhook(webhook_id: IdPath, session: SessionDep, tenant: TenantDep) -> WebhookOut:
    return WebhookOut.model_validate(owned(session, tenant, webhook_id))


@router.delete("/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
def delete_webhook(webhook_id: IdPath, session: SessionDep, tenant: TenantDep) -> Response:
    """Stop sending to it; its pending deliveries are cancelled, their history kept."""
    endpoints.delete(session, owned(session, tenant, webhook_id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{webhook_id}/rotate-secret",
    response_model=WebhookSecretOut,
    responses={**NOT_FOUND, 503: NOT_CONFIGURED},
)
def rotate_webhook_secret(
    webhook_id: IdPath, session: SessionDep, tenant: TenantDep, settings: SettingsDep
) -> WebhookSecretOut:
    box = secret_box(settings)
    webhook = owned(session, tenant, webhook_id)
    return WebhookSecretOut(id=webhook.id, secret=endpoints.rotate_secret(session, box, webhook))


@router.get(
    "/{webhook_id}/deliveries", response_model=list[WebhookDeliveryOut], responses=NOT_FOUND
)
def list_webhook_deliveries(
    webhook_id: IdPath,
    session: SessionDep,
    tenant: TenantDep,
    status_filter: Annotated[
        str | None, Query(alias="status", pattern="^(pending|succeeded|failed|cancelled)$")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> list[WebhookDeliveryOut]:
    """Newest first: status, attempts, the last answer and when the next attempt is due."""
    webhook = owned(session, tenant, webhook_id)
    rows = endpoints.deliveries(
        session, webhook.id, status=status_filter, limit=limit, offset=offset
    )
    return [WebhookDeliveryOut.model_validate(d) for d in rows]


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/redeliver",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=WebhookDeliveryOut,
    responses=NOT_FOUND,
)
def redeliver_webhook_delivery(
    webhook_id: IdPath, delivery_id: IdPath, session: SessionDep, tenant: TenantDep
) -> WebhookDeliveryOut:
    """Send the same message again (same webhook-id) with a fresh retry schedule."""
    webhook = owned(session, tenant, webhook_id)
    delivery = endpoints.delivery_of(session, webhook.id, delivery_id)
    if delivery is None:
        raise not_found("delivery")
    endpoints.redeliver(delivery)
    session.commit()
    try:
        enqueue_webhook_delivery(delivery.id)
    except EnqueueFailed:
        # Committed as due: the dispatcher sends it once the queue is back.
        outbox.mark_enqueued(session, [delivery.id], None)
        session.commit()
    return WebhookDeliveryOut.model_validate(delivery)
