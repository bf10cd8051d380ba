"""The platform's one Settings object, read from environment variables.

Defaults run a laptop: SQLite in the working directory, Redis on loopback and the provider
simulator on port 8100. Every deployment setting is an environment variable of the same
name in upper case (``REDIS_URL``, ``DATABASE_URL``, ...).
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)

    # Infrastructure
    redis_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = "sqlite:///./condo_audit.db"
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
