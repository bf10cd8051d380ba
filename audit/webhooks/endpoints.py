"""Webhook endpoints per tenant: register, list, delete, rotate the secret, redeliver.

Every lookup takes the tenant, and another tenant's endpoint is simply not found. Secrets
leave this module only as the return value of `register` and `rotate_secret`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from audit.models import Webhook, WebhookDelivery
from audit.webhooks import DeliveryStatus
from audit.webhooks.secretbox import SecretBox
from audit.webhooks.signing import generate_secret

# After a rotation the previous secret signs too, for a day: receivers switch at their pace.
ROTATION_GRACE = dt.timedelta(hours=24)


@dataclass(frozen=True)
class WithSecret:
    webhook: Webhook
    secret: str  # shown to the client once


def register(
    session: Session, box: SecretBox, tenant_id: str, url: str, events: list[str]
) -> WithSecret:
    """Store an endpoint; the caller has checked the URL (urls.check_url)."""
    secret = generate_secret()
    webhook = Webhook(
        tenant_id=tenant_id,
        url=url,
        events=sorted(set(events)),
        secret_encrypted=box.encrypt(secret),
    )
    session.add(webhook)
    session.flush()
    return WithSecret(webhook, secret)


def list_for_tenant(session: Session, tenant_id: str) -> list[Webhook]:
    query = (
        select(Webhook)
        .where(Webhook.tenant_id == tenant_id, Webhook.deleted_at.is_(None))
        .order_by(Webhook.created_at, Webhook.id)
    )
    return list(session.scalars(query))


def get_for_tenant(session: Session, tenant_id: str, webhook_id: str) -> Webhook | None:
    webhook = session.get(Webhook, webhook_id)
    if webhook is None or webhook.tenant_id != tenant_id or webhook.deleted_at is not None:
        return None
    return webhook


def delete(session: Session, webhook: Webhook) -> int:
    """Soft delete (its deliveries stay as history); pending deliveries are cancelled.
    Returns how many were cancelled."""
    webhook.deleted_at = dt.datetime.now(dt.UTC)
    result = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.webhook_id == webhook.id,
            WebhookDelivery.status == DeliveryStatus.PENDING,
        )
        .values(status=DeliveryStatus.CANCELLED, next_attempt_at=None)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def rotate_secret(session: Session, box: SecretBox, webhook: Webhook) -> str:
    """A new secret; the previous one keeps signing (as a second entry) for ROTATION_GRACE."""
    secret = generate_secret()
    webhook.previous_secret_encrypted = webhook.secret_encrypted
    webhook.previous_secret_expires_at = dt.datetime.now(dt.UTC) + ROTATION_GRACE
    webhook.secret_encrypted = box.encrypt(secret)
    session.flush()
    return secret


def signing_secrets(box: SecretBox, webhook: Webhook, now: dt.datetime) -> list[str]:
    """The current secret, then the previous one while its grace lasts."""
    found = [box.decrypt(webhook.secret_encrypted)]
    expires = webhook.previous_secret_expires_at
    if webhook.previous_secret_encrypted and expires is not None:
        if expires.tzinfo is None:  # SQLite hands back naive UTC
            expires = expires.replace(tzinfo=dt.UTC)
        if expires > now:
            found.append(box.decrypt(webhook.previous_secret_encrypted))
    return found


def deliveries(
    session: Session, webhook_id: str, *, status: str | None, limit: int, offset: int
) -> list[WebhookDelivery]:
    query = select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    query = query.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id)
    return list(session.scalars(query.offset(offset).limit(limit)))


def delivery_of(session: Session, webhook_id: str, delivery_id: str) -> WebhookDelivery | None:
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None or delivery.webhook_id != webhook_id:
        return None
    return delivery


def redeliver(delivery: WebhookDelivery) -> None:
    """Due now with a fresh retry schedule; same message, so the same webhook-id (receivers
    deduplicate on it)."""
    now = dt.datetime.now(dt.UTC)
    delivery.status = DeliveryStatus.PENDING
    delivery.retry_step = 0
    delivery.next_attempt_at = now
    delivery.enqueued_at = now  # the caller enqueues after the commit
    # locked_until stays: an attempt in flight finishes before the redelivery can claim it.
