"""The platform's one Settings object, read from environment variables.

Defaults run a laptop: SQLite in the working directory, Redis on loopback and the provider
simulator on port 8100. Every deployment setting is an environment variable of the same
name in upper case (``REDIS_URL``, ``DATABASE_URL``, ...).
"""

from __future__ import annotations

import os
from functools import lru_cache

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

# The one local default: `condo-audit run` keeps its state here, and every other command
# (`db upgrade`, `tenants create`, the API and workers started by hand) finds the same
# database when DATABASE_URL is unset. Relative to the working directory.
LOCAL_STATE_DIR = ".local"
DEFAULT_DATABASE_URL = f"sqlite:///{LOCAL_STATE_DIR}/condo-audit.db"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)

    # Infrastructure
    redis_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = DEFAULT_DATABASE_URL

    @field_validator("database_url")
    @classmethod
    def _absolute_sqlite_path(cls, value: str) -> str:
        """A relative SQLite path means the working directory's file: made absolute once,
        so the processes started from here and every engine open that same file."""
        try:
            url = make_url(value)
        except ArgumentError:
            return value  # not a URL: the engine will say so
        path = url.database
        if url.get_backend_name() != "sqlite" or not path or path == ":memory:":
            return value
        if os.path.isabs(path) or path.startswith("file:"):
            return value
        return url.set(database=os.path.abspath(path)).render_as_string(hide_password=False)

    database_pool_size: int = Field(
        default=10,
        ge=1,
        le=100,
        description="PostgreSQL connections each pool keeps open; 10 more are opened in a "
        "burst and closed after use. Keep it above a process's usual concurrency, or those "
        "overflow connections churn. A pool keeps only what its process used at once: an "
        "API process up to this many for its threadpool routes and as many for GET "
        "/tasks/{id} (asyncio); a prefork worker process one or two.",
    )

    audit_queue: str = Field(
        default="audit", description="Celery queue for audit work; KEDA scales on this list."
    )
    broker_visibility_timeout_seconds: int = Field(
        default=3600,
        description="Must exceed the longest retry countdown, or a message is delivered twice.",
    )

    # Fair queuing between tenants (audit/fairqueue.py): batches wait in per-tenant backlogs
    # and are dispatched to the queue list by deficit round robin.
    fair_quantum_expenses: int = Field(
        default=5,
        ge=1,
        description="Credit, in expenses, a tenant of weight 1 earns per turn of the round robin.",
    )
    fair_queue_ahead: int = Field(
        default=1,
        ge=1,
        description="Messages kept in the queue list beyond the free worker slots; a new "
        "tenant's first batch waits behind at most these and the running ones.",
    )
    fair_dispatch_tick_seconds: float = Field(
        default=1.0,
        gt=0,
        description="How often each worker tops the queue list up to its idle slots.",
    )
    fair_provider_share: bool = Field(
        default=True,
        description="Share each provider budget fairly between the tenants waiting for it.",
    )

    # API
    max_batch_size: int = 1000
    max_request_bytes: int = 2_000_000
    api_rate_per_minute: float | None = Field(
        default=3000.0, gt=0, description="API requests a minute per tenant; None = no limit."
    )
    api_rate_burst: int = Field(
        default=100, ge=1, description="Requests a tenant may send at once above the steady rate."
    )

    # Retry policy for provider failures
    max_attempts: int = Field(default=5, ge=1, description="Failed attempts before dead-letter.")
    retry_backoff_base_seconds: float = Field(default=1.0, gt=0)
    retry_backoff_max_seconds: float = Field(default=600.0, gt=0)
    retry_jitter_ratio: float = Field(default=0.1, ge=0, le=1)
    infrastructure_retry_max_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Longest wait before retrying a task whose database or Redis was down; "
        "such retries never count as failed attempts.",
    )

    # Providers
    provider_timeout_seconds: float = 10.0
    cnpj_providers: list[str] = Field(
        default=["cnpjws"], description="CNPJ lookup providers, tried in this order."
    )
    cnpjws_base_url: str = "http://127.0.0.1:8100/cnpjws"
    cnpjws_token: SecretStr | None = None
    minha_receita_base_url: str = "http://127.0.0.1:8100/minha-receita"
    pluggy_base_url: str = "http://127.0.0.1:8100/pluggy"
    pluggy_client_id: str = "local-client"
    pluggy_client_secret: SecretStr = SecretStr("local-secret")
    pluggy_api_key_reuse_seconds: float = Field(
        default=6900.0, gt=0, description="Reuse Pluggy's apiKey (valid 2 h) for this long."
    )

    # Fleet-wide rate limits, requests per minute (None = no limit); one budget per provider,
    # per endpoint for Pluggy. Defaults are the providers' published limits.
    cnpjws_rate_per_minute: float | None = Field(default=3.0, gt=0)
    minha_receita_rate_per_minute: float | None = Field(default=300.0, gt=0)
    pluggy_rate_per_minute: float | None = Field(default=360.0, gt=0)
    max_rate_limited_waits: int = Field(
        default=200,
        ge=1,
        description="Provider 429s a batch may wait out before they count as failed attempts.",
    )
    rate_limit_max_wait_seconds: float = Field(
        default=2.0, ge=0, description="Longer limiter waits release the worker (reschedule)."
    )
    rate_limit_headroom_ratio: float = Field(
        default=0.02, ge=0, lt=1, description="Pace this much under the limit to absorb jitter."
    )
    supplier_cache_freshness_days: float = Field(default=30.0, ge=0)

    # Reliability (README "Reliability"): leases and recovery of batches whose worker died,
    # circuit breakers per provider, Idempotency-Key lifetime, failed-authentication limit.
    batch_lease_seconds: float = Field(
        default=60.0,
        ge=1,
        le=3600,
        description="A running batch's lease; renewed every third of it while the task runs. "
        "A batch whose lease expired (its worker was killed) is enqueued again.",
    )
    recovery_interval_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="How often one worker of the fleet looks for batches with expired leases.",
    )
    breaker_failure_threshold: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Consecutive failed calls to a provider that open its circuit breaker.",
    )
    breaker_cooldown_seconds: float = Field(
        default=15.0,
        gt=0,
        le=3600,
        description="An open breaker lets one probe call through after this long.",
    )
    breaker_max_wait_seconds: float = Field(
        default=1800.0,
        ge=0,
        description="Longest total time a batch waits for open breakers; then it is "
        "dead-lettered with the reason. Above the promised 10-minute outage tolerance.",
    )
    idempotency_key_ttl_hours: float = Field(
        default=24.0,
        gt=0,
        le=24 * 30,
        description="An Idempotency-Key is remembered this long; later it may be reused.",
    )
    auth_failures_per_minute: float | None = Field(
        default=30.0,
        gt=0,
        description="Failed authentications a minute per client address; None = no limit.",
    )
    auth_failure_burst: int = Field(
        default=10, ge=1, description="Failed authentications a client may make at once."
    )
    trusted_proxy_hops: int = Field(
        default=0,
        ge=0,
        le=10,
        description="Proxies in front of the API (ingress): the client address is taken this "
        "many hops from the right of X-Forwarded-For; 0 = the socket's peer address.",
    )
    public_base_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
        description="Absolute URL clients reach the API at (e.g. https://audit.example.com); "
        "status_url is built on it. Unset: status_url is relative (never from Host).",
    )

    # Worker
    worker_heartbeat_file: str = "/tmp/condo-audit-worker-heartbeat"  # noqa: S108
    worker_heartbeat_seconds: float = 10.0

    # Completion webhooks (Standard Webhooks). Retries follow webhook_retry_schedule_seconds;
    # the ones due within webhook_inline_retry_max_seconds ride a task countdown, later ones
    # wait in the database for the dispatcher (a countdown of hours would outlive the
    # broker's visibility timeout and be delivered twice).
    webhook_queue: str = Field(
        default="webhooks", description="Celery queue for deliveries, apart from audit work."
    )
    webhook_secret_keys: SecretStr | None = Field(
        default=None,
        description="Fernet key(s) that encrypt signing secrets at rest, comma-separated: the "
        "first encrypts, all decrypt (rotation). Unset: webhooks cannot be registered.",
    )
    webhook_allow_private_urls: bool = Field(
        default=False,
        description="Allow receivers on private, loopback or link-local addresses, and plain "
        "http: local runs and tests only.",
    )
    webhook_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    webhook_read_timeout_seconds: float = Field(default=10.0, gt=0)
    webhook_retry_schedule_seconds: list[float] = Field(
        default=[5, 300, 1800, 7200, 18000, 36000, 36000],
        min_length=0,
        description="Delay before each retry after a failed attempt; then the delivery fails.",
    )
    webhook_retry_jitter_ratio: float = Field(default=0.1, ge=0, le=1)
    webhook_inline_retry_max_seconds: float = Field(
        default=60.0,
        ge=0,
        description="Retries due sooner than this are published with a countdown; later ones "
        "are enqueued by the dispatcher when due. Keep well under the visibility timeout.",
    )
    webhook_dispatch_interval_seconds: float = Field(
        default=10.0, gt=0, description="How often the dispatcher enqueues due deliveries."
    )
    webhook_requeue_after_seconds: float = Field(
        default=300.0,
        gt=0,
        description="A due delivery enqueued this long ago without an attempt is enqueued "
        "again (its message was lost); duplicates are harmless.",
    )

    # Observability (tracing itself is configured by the standard OTEL_* variables)
    log_format: str = Field(
        default="text", pattern="^(text|json)$", description="json in production."
    )
    log_level: str = "INFO"
    metrics_port: int = Field(
        default=9100, ge=0, le=65535, description="Worker's Prometheus port; 0 turns it off."
    )
    metrics_host: str = Field(
        default="0.0.0.0",  # noqa: S104 - scraped from other pods
        description="Address the worker's metrics server binds.",
    )


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings; tests build their own Settings instead."""
    return Settings()
