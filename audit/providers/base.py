"""The seam between the audit and the outside world: what a provider returns and raises."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Protocol


class RegistrationStatus(StrEnum):
    """Receita Federal's situação cadastral (minha-receita codes 1, 2, 3, 4, 8)."""

    NULA = "NULA"
    ATIVA = "ATIVA"
    SUSPENSA = "SUSPENSA"
    INAPTA = "INAPTA"
    BAIXADA = "BAIXADA"


@dataclass(frozen=True)
class Registration:
    """A supplier's registration; found=False records that the CNPJ does not exist."""

    cnpj: str
    found: bool
    provider: str
    legal_name: str | None = None
    status: RegistrationStatus | None = None
    status_date: dt.date | None = None
    opened_on: dt.date | None = None
    main_cnae: str | None = None
    legal_nature: str | None = None
    is_mei: bool | None = None
    is_simples: bool | None = None


@dataclass(frozen=True)
class BankTransactionRecord:
    id: str
    account_id: str
    date: dt.date
    description: str
    amount: Decimal
    type: str  # DEBIT or CREDIT
    status: str  # PENDING or POSTED
    receiver_document: str | None = None


class ProviderError(Exception):
    """A provider call that did not give an answer."""

    def __init__(self, provider: str, reason: str) -> None:
        super().__init__(f"{provider}: {reason}")
        self.provider = provider
        self.reason = reason


class ProviderUnavailable(ProviderError):
    """Timeout, connection error, 5xx or 429: worth retrying later."""

    def __init__(self, provider: str, reason: str, retry_after: float | None = None) -> None:
        super().__init__(provider, reason)
        self.retry_after = retry_after


class ProviderRateLimited(ProviderUnavailable):
    """The provider answered 429. The fleet's limiter has already been pushed back to the
    provider's release time; like RateLimitWait this is pacing, not the provider failing."""


class ProviderCircuitOpen(ProviderUnavailable):
    """The provider's fleet-wide circuit breaker is open (audit.breaker): it is down for
    everyone. Not the batch's failure: wait `wait_seconds` (the next probe) uncounted."""

    def __init__(self, provider: str, wait_seconds: float, reason: str = "") -> None:
        super().__init__(
            provider, reason or f"circuit open, next probe in {wait_seconds:.1f}s", wait_seconds
        )
        self.wait_seconds = wait_seconds


class ProviderRejected(ProviderError):
    """The provider refused the request as invalid (400): retrying will not help."""


class RateLimitWait(Exception):
    """The fleet-wide limiter has no budget now; not a failure, just come back later.

    `window`: how long before its turn a caller may ask again and still reserve it (the
    limiter's max_wait)."""

    def __init__(self, provider: str, wait_seconds: float, window: float = 0.0) -> None:
        super().__init__(f"{provider}: rate limit, wait {wait_seconds:.2f}s")
        self.provider = provider
        self.wait_seconds = wait_seconds
        self.window = window

    def come_back_in(self) -> float:
        """When to ask again: a random moment inside the window before the turn. Callers sent
        away from the same slot, back all at once, raced for it in the order their processes
        woke, the same each time (one of four lost all 25 of its turns); back at random
        moments, the first one reserves the slot ahead, and no slot passes unused."""
        return max(0.0, self.wait_seconds - random.uniform(0.0, self.window))


class CnpjLookup(Protocol):
    name: str

    def lookup(self, cnpj: str) -> Registration:
        """The registration, found=False when the registry has no such CNPJ."""
        ...


class TransactionSource(Protocol):
    name: str

    def fetch(self, account_id: str, start: dt.date, end: dt.date) -> list[BankTransactionRecord]:
        """All transactions of an account between start and end, inclusive."""
        ...
