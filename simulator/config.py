"""Simulator settings, per provider; changed at start (flags, env) or live (POST /_sim/config)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

PROVIDERS = ("cnpjws", "minha_receita", "pluggy")


class ProviderConfig(BaseModel):
    """How one provider behaves: its rate limit and the faults it injects."""

    model_config = ConfigDict(ser_json_inf_nan="strings")

    rate_per_minute: float | None = Field(
        default=None, gt=0, description="Accepted requests a minute, per endpoint; None = no limit."
    )
    window: Literal["sliding", "fixed"] = "sliding"
    window_seconds: float = Field(
        default=60.0,
        gt=0,
        description="Length of the counting window; the budget per window is rate * window / 60.",
    )
    retry_after: bool = Field(default=True, description="Send a Retry-After header with a 429.")
    retry_after_seconds: float | None = Field(
        default=None, ge=0, description="Fixed Retry-After; None = the time until budget frees."
    )
    latency_ms: float = Field(default=0.0, ge=0)
    error_rate: float = Field(default=0.0, ge=0, le=1, description="Share answered with 503.")
    timeout_rate: float = Field(
        default=0.0, ge=0, le=1, description="Share that hangs for timeout_seconds."
    )
    timeout_seconds: float = Field(default=30.0, ge=0)
    fail_next: int = Field(default=0, ge=0, description="The next N requests get fail_status.")
    fail_status: int | Literal["timeout"] = 503
    outage_until: float | None = Field(
        default=None, description="Epoch seconds until which requests get 503; inf = until cleared."
    )


class CnpjWsConfig(ProviderConfig):
    tokens: list[str] = Field(
        default_factory=lambda: ["local-token"], description="Valid commercial x_api_token values."
    )
    commercial_rate_per_minute: float | None = Field(default=None, gt=0)


class PluggyConfig(ProviderConfig):
    rate_per_minute: float | None = Field(default=360.0, gt=0)
    client_id: str = "local-client"
    client_secret: str = "local-secret"  # noqa: S105
    api_key_ttl_seconds: float = Field(default=7200.0, gt=0)
    retry_after_seconds: float | None = Field(default=60.0, ge=0)


class SimConfig(BaseModel):
    cnpjws: CnpjWsConfig = Field(default_factory=lambda: CnpjWsConfig(retry_after=False))
    minha_receita: ProviderConfig = Field(default_factory=ProviderConfig)
    pluggy: PluggyConfig = Field(default_factory=PluggyConfig)
    reference_date: dt.date | None = Field(
        default=None, description="The 'today' derived data is relative to; None = today."
    )
    seed: str = "condo-audit"

    def provider(self, name: str) -> ProviderConfig:
        config: ProviderConfig = getattr(self, name)
        return config
