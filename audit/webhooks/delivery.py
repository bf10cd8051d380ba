"""One delivery attempt: claim the row, POST the signed body, record what happened.

The attempt runs wherever it is called (a Celery task in production); it takes the row's
fence (`locked_until`) first, so a duplicate message or a concurrent redelivery does
nothing. Failures (non-2xx, timeout, refused connection, a redirect, a receiver that now
resolves to a forbidden address) schedule the next attempt from the retry schedule; the
caller decides how the retry is carried (countdown or dispatcher) from `retry_in`.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
from dataclasses import dataclass

import httpx
from opentelemetry import trace
from sqlalchemy import or_, update
from sqlalchemy.orm import Session, sessionmaker

from audit.models import Webhook, WebhookDelivery
from audit.observability import metrics
from audit.observability.tracing import tracer
from audit.settings import Settings
from audit.webhooks import DeliveryStatus, endpoints, signing
from audit.webhooks.secretbox import SecretBox
from audit.webhooks.urls import UnsafeUrl, check_url

log = logging.getLogger(__name__)

RESPONSE_PREFIX_CHARS = 256
USER_AGENT = "condo-audit-webhooks/1"
# A message that arrives this early for its slot still runs (clock and countdown rounding).
DUE_TOLERANCE = dt.timedelta(seconds=1)


@dataclass(frozen=True)
class AttemptResult:
    delivery_id: str
    outcome: str  # delivered, retry_scheduled, failed, skipped (not due / taken), cancelled
    attempt: int = 0
    status_code: int | None = None
    error: str | None = None
    retry_in: float | None = None


@dataclass(frozen=True)
class _Claimed:
    url: str
    message_id: str
    event_type: str
    body: bytes
    secrets: list[str]
    attempt: int
    parent: trace.SpanContext | None


def parent_context(trace_id: str | None, span_id: str | None) -> trace.SpanContext | None:
    """The span that emitted the event (the batch's task run): each attempt is its child."""
    if not trace_id:
        return None
    try:
        return trace.SpanContext(
            trace_id=int(trace_id, 16),
            span_id=int(span_id, 16) if span_id else trace.INVALID_SPAN_ID,
            is_remote=True,
            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
        )
    except ValueError:
        return None


def retry_delay(settings: Settings, step: int) -> float | None:
    """Seconds before the retry after `step` earlier retries; None once the schedule is spent."""
    schedule = settings.webhook_retry_schedule_seconds
    if step >= len(schedule):
        return None
    base = float(schedule[step])
    jitter = settings.webhook_retry_jitter_ratio
    return max(0.0, base * (1 + random.uniform(-jitter, jitter)))


class Deliverer:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        client: httpx.Client | None = None,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.box = SecretBox(settings.webhook_secret_keys)
        self.client = client or httpx.Client(
            follow_redirects=False,
            timeout=httpx.Timeout(
                connect=settings.webhook_connect_timeout_seconds,
                read=settings.webhook_read_timeout_seconds,
                write=settings.webhook_read_timeout_seconds,
                pool=settings.webhook_connect_timeout_seconds,
            ),
            headers={"user-agent": USER_AGENT},
        )

    def attempt(self, delivery_id: str) -> AttemptResult:
        claimed = self._claim(delivery_id)
        if isinstance(claimed, AttemptResult):
            return claimed
        started = time.perf_counter()
        context = (
            trace.set_span_in_context(trace.NonRecordingSpan(claimed.parent))
            if claimed.parent is not None
            else None
        )
        with tracer.start_as_current_span(
            "webhook.attempt",
            context=context,
            kind=trace.SpanKind.CLIENT,
            attributes={
                "webhook.delivery_id": delivery_id,
                "webhook.message_id": claimed.message_id,
                "webhook.event": claimed.event_type,
                "webhook.attempt": claimed.attempt,
            },
        ) as span:
            code, prefix, error, refused = self._post(claimed)
            if code is not None:
                span.set_attribute("http.response.status_code", code)
            if error is not None:
                span.set_attribute("error.type", error[:100])
            result = self._record(delivery_id, claimed, code, prefix, error)
            span.set_attribute("webhook.outcome", result.outcome)
            if result.outcome != "delivered":
                span.set_status(trace.StatusCode.ERROR, error or f"HTTP {code}")
        outcome = "refused_url" if refused else result.outcome
        metrics.WEBHOOK_DELIVERIES.labels(claimed.event_type, outcome).inc()
        metrics.WEBHOOK_DELIVERY_DURATION.labels(outcome).observe(time.perf_counter() - started)
        return result

    def _claim(self, delivery_id: str) -> _Claimed | AttemptResult:
        now = dt.datetime.now(dt.UTC)
        lease = (
            self.settings.webhook_connect_timeout_seconds
            + 2 * self.settings.webhook_read_timeout_seconds
            + 30
        )
        with self.sessions.begin() as session:
            taken = session.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == delivery_id,
                    WebhookDelivery.status == DeliveryStatus.PENDING,
                    WebhookDelivery.next_attempt_at <= now + DUE_TOLERANCE,
                    or_(
                        WebhookDelivery.locked_until.is_(None),
                        WebhookDelivery.locked_until < now,
                    ),
                )
                .values(locked_until=now + dt.timedelta(seconds=lease))
            )
            if not getattr(taken, "rowcount", 0):
                return AttemptResult(delivery_id, "skipped")
            delivery = session.get(WebhookDelivery, delivery_id)
            assert delivery is not None
            webhook = session.get(Webhook, delivery.webhook_id)
            if webhook is None or webhook.deleted_at is not None:
                delivery.status = DeliveryStatus.CANCELLED
                delivery.locked_until = None
                return AttemptResult(delivery_id, "cancelled")
            return _Claimed(
                url=webhook.url,
                message_id=delivery.message_id,
                event_type=delivery.event_type,
                body=delivery.body.encode(),
                secrets=endpoints.signing_secrets(self.box, webhook, now),
                attempt=delivery.attempts + 1,
                parent=parent_context(delivery.trace_id, delivery.span_id),
            )

    def _post(self, claimed: _Claimed) -> tuple[int | None, str | None, str | None, bool]:
        """(status code, response prefix, error, refused): never raises for the receiver's
        faults. The URL is checked again here: DNS may have changed since registration."""
        try:
            target = check_url(claimed.url, allow_private=self.settings.webhook_allow_private_urls)
        except UnsafeUrl as exc:
            return None, None, f"refused: {exc}"[:300], True
        timestamp = int(time.time())
        headers = signing.headers(claimed.secrets, claimed.message_id, timestamp, claimed.body)
        headers["host"] = target.host_header()
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        try:
            with self.client.stream(
                "POST",
                target.pinned_url(),
                content=claimed.body,
                headers=headers,
                extensions=extensions,
            ) as response:
                prefix = _read_prefix(response)
                code = response.status_code
        except httpx.TimeoutException as exc:
            return None, None, f"timeout ({type(exc).__name__})", False
        except httpx.HTTPError as exc:
            return None, None, f"{type(exc).__name__}: {str(exc)[:200]}", False
        if 300 <= code < 400:
            return code, prefix, "redirects are not followed", False
        if not 200 <= code < 300:
            return code, prefix, f"HTTP {code}", False
        return code, prefix, None, False

    def _record(
        self,
        delivery_id: str,
        claimed: _Claimed,
        code: int | None,
        prefix: str | None,
        error: str | None,
    ) -> AttemptResult:
        now = dt.datetime.now(dt.UTC)
        with self.sessions.begin() as session:
            delivery = session.get(WebhookDelivery, delivery_id)
            assert delivery is not None
            delivery.attempts += 1
            delivery.last_attempt_at = now
            delivery.last_response_code = code
            delivery.last_response_body = prefix
            delivery.last_error = error
            delivery.locked_until = None
            delivery.enqueued_at = None
            if error is None:
                delivery.status = DeliveryStatus.SUCCEEDED
                delivery.delivered_at = now
                delivery.next_attempt_at = None
                return AttemptResult(delivery_id, "delivered", delivery.attempts, code)
            delay = retry_delay(self.settings, delivery.retry_step)
            if delay is None:
                delivery.status = DeliveryStatus.FAILED
                delivery.next_attempt_at = None
                log.warning(
                    "webhook delivery %s failed for good after %d attempts: %s",
                    delivery_id,
                    delivery.attempts,
                    error,
                )
                return AttemptResult(delivery_id, "failed", delivery.attempts, code, error)
            delivery.retry_step += 1
            delivery.next_attempt_at = now + dt.timedelta(seconds=delay)
            return AttemptResult(
                delivery_id, "retry_scheduled", delivery.attempts, code, error, retry_in=delay
            )


def _read_prefix(response: httpx.Response) -> str:
    """At most RESPONSE_PREFIX_CHARS of the receiver's answer; the rest is never read."""
    taken = b""
    for chunk in response.iter_bytes():
        taken += chunk
        if len(taken) >= RESPONSE_PREFIX_CHARS * 4:
            break
    return taken.decode("utf-8", errors="replace")[:RESPONSE_PREFIX_CHARS]
