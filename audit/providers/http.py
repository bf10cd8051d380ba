"""What every provider client does around one HTTP request: wait for the fleet's limiter,
send, and turn transport errors, 429 and 5xx into the seam's exceptions."""

from __future__ import annotations

import datetime as dt
import email.utils
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import httpx
import orjson
from opentelemetry.trace import SpanKind, Status, StatusCode

from audit.observability import metrics
from audit.observability.tracing import current_attempt, tracer
from audit.providers.base import (
    ProviderCircuitOpen,
    ProviderRateLimited,
    ProviderUnavailable,
    RateLimitWait,
)
from audit.ratelimit import RateLimiter

if TYPE_CHECKING:
    from audit.breaker import CircuitBreakers, Permit

BRASILIA = ZoneInfo("America/Sao_Paulo")

# A 429 that says nothing about when to come back holds the fleet back this long.
DEFAULT_429_BACKOFF_SECONDS = 30.0

_MONTHS = {
    m: i
    for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1
    )
}
_MONTHS.update({"fev": 2, "abr": 4, "mai": 5, "ago": 8, "set": 9, "out": 10, "dez": 12})
# "Liberação ocorrerá em Sat Dec 02 2023 19:16:39 GMT-0300 (Horário Padrão de Brasília)"
_JS_DATE = re.compile(
    r"(?:[A-Za-z]{3}\s+)?([A-Za-z]{3})\s+(\d{1,2})\s+(\d{4})\s+(\d{1,2}):(\d{2}):(\d{2})"
    r"(?:\s*GMT([+-]\d{2}):?(\d{2}))?"
)
_ISO = re.compile(r"(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?)")
_BR_DATE = re.compile(r"(\d{2})/(\d{2})/(\d{4})\s+(\d{1,2}):(\d{2})(?::(\d{2}))?")
_RELEASE = re.compile(r"Libera\w*\s+ocorrer\w*\s+em\s+(.+)", re.IGNORECASE)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def parse_release_time(text: str, now: float | None = None) -> float | None:
    """Seconds until the release time CNPJ.ws writes in a 429's `detalhes`."""
    match = _RELEASE.search(text)
    if match is None:
        return None
    rest = match.group(1)
    when: dt.datetime | None = None
    js = _JS_DATE.search(rest)
    iso = _ISO.search(rest)
    br = _BR_DATE.search(rest)
    if js is not None and js.group(1).lower() in _MONTHS:
        month = _MONTHS[js.group(1).lower()]
        day, year, hour, minute, second = (int(js.group(i)) for i in range(2, 7))
        if js.group(7) is not None:
            sign = -1 if js.group(7).startswith("-") else 1
            offset = sign * (abs(int(js.group(7))) * 60 + int(js.group(8)))
            tz: dt.tzinfo = dt.timezone(dt.timedelta(minutes=offset))
        else:
            tz = BRASILIA
        when = dt.datetime(year, month, day, hour, minute, second, tzinfo=tz)
    elif iso is not None:
        when = dt.datetime.fromisoformat(iso.group(1).replace("Z", "+00:00"))
        if when.tzinfo is None:
            when = when.replace(tzinfo=BRASILIA)
    elif br is not None:
        day, month, year, hour, minute = (int(br.group(i)) for i in range(1, 6))
        second = int(br.group(6) or 0)
        when = dt.datetime(year, month, day, hour, minute, second, tzinfo=BRASILIA)
    if when is None:
        return None
    # The text has whole seconds; the release may be up to a second later than written.
    return max(0.0, when.timestamp() + 1.0 - (time.time() if now is None else now))


@dataclass(frozen=True)
class Budget:
    """Where a request's turn comes from: one limiter key at one rate, and the provider's
    fleet-wide circuit breaker (None: no breaker)."""

    limiter: RateLimiter | None
    key: str
    rate_per_minute: float | None
    max_wait: float
    breakers: CircuitBreakers | None = None

    def take(self, provider: str) -> None:
        if self.limiter is not None and self.rate_per_minute is not None:
            self.limiter.wait_turn(
                self.key, self.rate_per_minute, provider=provider, max_wait=self.max_wait
            )

    def back_off(self, seconds: float) -> None:
        if self.limiter is not None:
            self.limiter.penalize(self.key, seconds)


def send(
    http: httpx.Client,
    provider: str,
    budget: Budget,
    method: str,
    url: str,
    *,
    endpoint: str = "other",
    **kwargs: Any,
) -> httpx.Response:
    """One request in its turn. Returns any answer below 500 except 429, which it turns
    into ProviderRateLimited after pushing the fleet back; 5xx and transport errors become
    ProviderUnavailable. RateLimitWait propagates when the turn is too far away.

    `endpoint` is the path template ("/cnpj/{cnpj}"), the label of the call's metrics."""
    attributes: dict[str, str | int] = {
        "provider.name": provider,
        "provider.endpoint": endpoint,
        "http.request.method": method,
    }
    attempt = current_attempt()
    if attempt is not None:
        attributes["retry.attempt"] = attempt
    with tracer.start_as_current_span(
        f"{provider} {method} {endpoint}",
        kind=SpanKind.CLIENT,
        attributes=attributes,
        # A RateLimitWait from the budget is pacing; failures set the status themselves.
        set_status_on_exception=False,
    ) as span:
        breakers = budget.breakers
        permit: Permit | None = None
        if breakers is not None:
            try:
                permit = breakers.before_call(provider)
            except ProviderCircuitOpen as opened:
                span.add_event("circuit.open", {"circuit.wait_seconds": opened.wait_seconds})
                raise
            span.set_attribute("circuit.probe", permit.probe)
        probing = permit is not None and permit.probe
        try:
            budget.take(provider)
        except RateLimitWait:
            if breakers is not None and probing:
                breakers.release_probe(provider)
            raise
        started = time.perf_counter()
        try:
            try:
                response = http.request(method, url, **kwargs)
            except httpx.TimeoutException as exc:
                _observe(provider, endpoint, "timeout", started)
                span.set_status(Status(StatusCode.ERROR, "timeout"))
                raise ProviderUnavailable(provider, f"timeout ({type(exc).__name__})") from exc
            except httpx.TransportError as exc:
                _observe(provider, endpoint, "connection_error", started)
                span.set_status(Status(StatusCode.ERROR, "connection error"))
                reason = f"connection error ({type(exc).__name__})"
                raise ProviderUnavailable(provider, reason) from exc
            _observe(provider, endpoint, str(response.status_code), started)
            span.set_attribute("http.response.status_code", response.status_code)
            if response.status_code == 429 or response.status_code >= 500:
                span.set_status(Status(StatusCode.ERROR, f"HTTP {response.status_code}"))
            checked = _checked(provider, budget, response)
        except ProviderRateLimited:
            if breakers is not None and probing:
                breakers.release_probe(provider)  # pacing: not an answer about being down
            raise
        except ProviderUnavailable as failed:
            if breakers is not None and breakers.failure(provider):
                # This failure opened the breaker (or was the failed probe): an outage, so
                # the batch waits for the next probe instead of spending an attempt.
                span.add_event("circuit.opened", {"provider.name": provider})
                raise ProviderCircuitOpen(
                    provider, breakers.cooldown_seconds, f"{failed.reason}; circuit open"
                ) from failed
            raise
    if breakers is not None and permit is not None:
        breakers.success(provider, permit)
    return checked


def _observe(provider: str, endpoint: str, status: str, started: float) -> None:
    metrics.PROVIDER_REQUESTS.labels(provider, endpoint, status).inc()
    metrics.PROVIDER_LATENCY.labels(provider, endpoint).observe(time.perf_counter() - started)


def _checked(provider: str, budget: Budget, response: httpx.Response) -> httpx.Response:
    if response.status_code == 429:
        wait = parse_retry_after(response.headers.get("retry-after"))
        if wait is None:
            wait = parse_release_time(_detail_text(response))
        backoff = DEFAULT_429_BACKOFF_SECONDS if wait is None else wait
        budget.back_off(backoff)
        raise ProviderRateLimited(provider, "rate limited (429)", retry_after=backoff)
    if response.status_code >= 500:
        raise ProviderUnavailable(
            provider,
            f"server error {response.status_code}",
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )
    return response


def _detail_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text
    if isinstance(body, dict):
        return " ".join(str(v) for v in body.values())
    return response.text


def json_object(provider: str, response: httpx.Response) -> dict[str, Any]:
    """The body as a JSON object; a garbled answer is a provider failure worth retrying.

    orjson decodes a month of Pluggy transactions in about half the time of the standard
    library; what it refuses (a BOM, another encoding, NaN) gets the standard decoder."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        try:
            body = response.json()
        except ValueError as exc:
            raise ProviderUnavailable(provider, "answer is not JSON") from exc
    if not isinstance(body, dict):
        raise ProviderUnavailable(provider, "answer is not a JSON object")
    return body
