"""The providers a worker process uses, built from Settings: what the task calls."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
from redis import Redis

from audit.breaker import CircuitBreakers
from audit.providers.base import CnpjLookup, TransactionSource
from audit.providers.cnpj import CnpjWsLookup, FallbackCnpjLookup, MinhaReceitaLookup
from audit.providers.http import Budget
from audit.providers.pluggy import PluggyTransactions
from audit.ratelimit import RateLimiter
from audit.settings import Settings

CNPJ_PROVIDERS = ("cnpjws", "minha_receita")


@dataclass
class Providers:
    cnpj: CnpjLookup
    transactions: TransactionSource
    limiter: RateLimiter
    http: httpx.Client = field(repr=False)

    def close(self) -> None:
        self.http.close()


def circuit_breakers(settings: Settings, redis: Redis) -> CircuitBreakers:
    """The fleet's breakers as configured; a probe may take as long as one call can (its
    turn in the limiter, then the request)."""
    return CircuitBreakers(
        redis,
        failure_threshold=settings.breaker_failure_threshold,
        cooldown_seconds=settings.breaker_cooldown_seconds,
        probe_timeout_seconds=(
            settings.provider_timeout_seconds + settings.rate_limit_max_wait_seconds + 2
        ),
    )


def build_providers(settings: Settings, redis: Redis) -> Providers:
    """Clients sharing one connection pool and the fleet-wide limiter in `redis`.

    Build once per worker process (after the fork), not per task: the pool is per process.
    """
    http = httpx.Client(
        timeout=httpx.Timeout(settings.provider_timeout_seconds),
        headers={"User-Agent": "condo-audit/0.1"},
    )
    limiter = RateLimiter(
        redis,
        headroom=settings.rate_limit_headroom_ratio,
        fair_share=settings.fair_provider_share,
    )
    breakers = circuit_breakers(settings, redis)
    max_wait = settings.rate_limit_max_wait_seconds
    token = settings.cnpjws_token.get_secret_value() if settings.cnpjws_token else None

    def cnpj_lookup(name: str) -> CnpjLookup:
        if name == "cnpjws":
            # The commercial tier has its own budget, separate from the public one.
            key = "cnpjws:commercial" if token else "cnpjws"
            budget = Budget(limiter, key, settings.cnpjws_rate_per_minute, max_wait, breakers)
            return CnpjWsLookup(http, settings.cnpjws_base_url, budget, token)
        if name == "minha_receita":
            budget = Budget(
                limiter, "minha_receita", settings.minha_receita_rate_per_minute, max_wait, breakers
            )
            return MinhaReceitaLookup(http, settings.minha_receita_base_url, budget)
        raise ValueError(f"unknown CNPJ provider {name!r}; known: {', '.join(CNPJ_PROVIDERS)}")

    lookups = [cnpj_lookup(name) for name in settings.cnpj_providers]
    cnpj: CnpjLookup = lookups[0] if len(lookups) == 1 else FallbackCnpjLookup(lookups)
    pluggy_rate = settings.pluggy_rate_per_minute
    transactions = PluggyTransactions(
        http,
        settings.pluggy_base_url,
        settings.pluggy_client_id,
        settings.pluggy_client_secret.get_secret_value(),
        redis,
        auth_budget=Budget(limiter, "pluggy:auth", pluggy_rate, max_wait, breakers),
        transactions_budget=Budget(limiter, "pluggy:transactions", pluggy_rate, max_wait, breakers),
        key_reuse_seconds=settings.pluggy_api_key_reuse_seconds,
        auth_wait_seconds=max(5.0, 2 * settings.provider_timeout_seconds + max_wait),
    )
    return Providers(cnpj=cnpj, transactions=transactions, limiter=limiter, http=http)
