"""Pluggy: one API key for the whole fleet, and paged bank transactions.

Pluggy's apiKey lives two hours. Authenticating per task would spend the auth endpoint's
budget and Pluggy's patience, so the key is kept in Redis (expiring a little before Pluggy
expires it) and a Redis lock makes one worker authenticate while the others wait for it.
Each process also keeps the key it last read for up to LOCAL_KEY_SECONDS (never past its
expiry in Redis), so a batch does not ask Redis for it; a refused key is forgotten locally
too, and the next call reads Redis again.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import httpx
from redis import Redis

from audit.fleetlock import FleetLocks
from audit.providers.base import (
    BankTransactionRecord,
    ProviderRejected,
    ProviderUnavailable,
)
from audit.providers.http import Budget, json_object, send

BRASILIA = ZoneInfo("America/Sao_Paulo")
PAGE_SIZE = 500  # Pluggy's maximum
LOCAL_KEY_SECONDS = 60.0


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else value


class PluggyTransactions:
    """TransactionSource over Pluggy's `GET /transactions`."""

    name = "pluggy"

    def __init__(
        self,
        http: httpx.Client,
        base_url: str,
        client_id: str,
        client_secret: str,
        redis: Redis,
        *,
        auth_budget: Budget,
        transactions_budget: Budget,
        key_reuse_seconds: float = 6900.0,
        auth_wait_seconds: float = 15.0,
        key_name: str = "pluggy:api-key",
    ) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self.client_secret = client_secret
        self.redis = redis
        self.auth_budget = auth_budget
        self.transactions_budget = transactions_budget
        self.key_reuse_seconds = key_reuse_seconds
        self.auth_wait_seconds = auth_wait_seconds
        self.key_name = key_name
        self.lock_name = f"{key_name}:lock"
        self.locks = FleetLocks(redis)
        self._local: tuple[str, float] | None = None  # (key, monotonic time to read Redis again)

    # The fleet's key ---------------------------------------------------------------------

    def api_key(self) -> str:
        """The shared key; authenticates (once for the fleet) when there is none."""
        local = self._local
        if local is not None and time.monotonic() < local[1]:
            return local[0]
        deadline = time.monotonic() + self.auth_wait_seconds
        while True:
            cached = self._read_shared()
            if cached:
                return cached
            token = self.locks.try_acquire(self.lock_name, self.auth_wait_seconds)
            if token is not None:
                try:
                    cached = self._read_shared()
                    if cached:
                        return cached
                    key = self._authenticate()
                    ttl = max(1, int(self.key_reuse_seconds))
                    self.redis.set(self.key_name, key, ex=ttl)
                    self._keep(key, ttl * 1000)
                    return key
                finally:
                    self.locks.release(self.lock_name, token)
            if time.monotonic() > deadline:
                raise ProviderUnavailable(self.name, "another worker's authentication timed out")
            time.sleep(0.05)

    def _read_shared(self) -> str | None:
        """The key in Redis, kept locally until it expires there (LOCAL_KEY_SECONDS at most)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(self.key_name)
        pipe.pttl(self.key_name)
        raw, ttl_ms = pipe.execute()
        key = _text(raw)
        if key:
            self._keep(key, int(ttl_ms))
        return key

    def _keep(self, key: str, ttl_ms: int) -> None:
        if ttl_ms > 0:  # -1: no expiry set (someone stored it by hand): the local bound holds
            seconds = min(LOCAL_KEY_SECONDS, ttl_ms / 1000)
        else:
            seconds = 0.0 if ttl_ms == -2 else LOCAL_KEY_SECONDS
        self._local = (key, time.monotonic() + seconds)

    def forget_key(self, key: str) -> None:
        """Drop the shared key only if it is still the refused one (another worker may
        already have stored a fresh one); locally in any case."""
        if self._local is not None and self._local[0] == key:
            self._local = None
        self.locks.delete_if_equal(self.key_name, key)

    def _authenticate(self) -> str:
        response = send(
            self.http,
            self.name,
            self.auth_budget,
            "POST",
            f"{self.base_url}/auth",
            endpoint="/auth",
            json={"clientId": self.client_id, "clientSecret": self.client_secret},
        )
        if response.status_code in (400, 401, 403):
            raise ProviderRejected(self.name, f"authentication refused ({response.status_code})")
        if response.status_code >= 300:
            raise ProviderUnavailable(self.name, f"authentication answered {response.status_code}")
        key = json_object(self.name, response).get("apiKey")
        if not isinstance(key, str) or not key:
            raise ProviderUnavailable(self.name, "authentication answer has no apiKey")
        return key

    # Transactions ------------------------------------------------------------------------

    def fetch(self, account_id: str, start: dt.date, end: dt.date) -> list[BankTransactionRecord]:
        """Every page, 500 at a time. A 401 (key expired early or revoked) re-authenticates
        once; 429s and limiter waits propagate, the caller retries the whole fetch."""
        key = self.api_key()
        reauthenticated = False
        records: list[BankTransactionRecord] = []
        page, total_pages = 1, 1
        while page <= total_pages:
            response = send(
                self.http,
                self.name,
                self.transactions_budget,
                "GET",
                # The query written here, not passed as `params`: httpx's merging of them
                # into the URL cost a fourth of the request's own CPU.
                f"{self.base_url}/transactions?"
                + urlencode(
                    {
                        "accountId": account_id,
                        "from": start.isoformat(),
                        "to": end.isoformat(),
                        "page": page,
                        "pageSize": PAGE_SIZE,
                    }
                ),
                endpoint="/transactions",
                headers={"X-API-KEY": key},
            )
            if response.status_code in (401, 403) and not reauthenticated:
                self.forget_key(key)
                key = self.api_key()
                reauthenticated = True
                continue
            if response.status_code >= 400:
                detail = response.text[:200]
                raise ProviderRejected(
                    self.name, f"transactions answered {response.status_code}: {detail}"
                )
            body = json_object(self.name, response)
            results = body.get("results")
            if not isinstance(results, list):
                raise ProviderUnavailable(self.name, "transactions answer has no results list")
            records.extend(self.to_record(account_id, raw) for raw in results)
            total_pages = int(body.get("totalPages") or 0)
            page += 1
        return records

    @classmethod
    def to_record(cls, account_id: str, raw: dict[str, Any]) -> BankTransactionRecord:
        """Pluggy's transaction; the date is the São Paulo calendar day of Pluggy's UTC time,
        the amount keeps Pluggy's sign (debits negative on bank accounts)."""
        try:
            amount = Decimal(str(raw["amount"]))
            date = _local_date(str(raw["date"]))
        except (KeyError, InvalidOperation, ValueError) as exc:
            raise ProviderUnavailable(cls.name, f"malformed transaction {raw.get('id')}") from exc
        return BankTransactionRecord(
            id=str(raw["id"]),
            account_id=str(raw.get("accountId") or account_id),
            date=date,
            description=str(raw.get("description") or ""),
            amount=amount,
            type=str(raw.get("type") or ("DEBIT" if amount < 0 else "CREDIT")),
            status=str(raw.get("status") or "POSTED"),
            receiver_document=_receiver_cnpj(raw),
        )


@lru_cache(maxsize=4096)
def _local_date(text: str) -> dt.date:
    """Cached: a month's transactions share a handful of timestamps (a day's, or midnight)."""
    if len(text) == 10:
        return dt.date.fromisoformat(text)
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        return moment.date()
    return moment.astimezone(BRASILIA).date()


_CNPJ_NOISE = re.compile(r"[.\-/\s]")


def _receiver_cnpj(raw: dict[str, Any]) -> str | None:
    """The payee's CNPJ: paymentData's receiver document, else the merchant's CNPJ."""
    payment = raw.get("paymentData") or {}
    document = ((payment.get("receiver") or {}).get("documentNumber")) or {}
    value: Any = None
    if str(document.get("type", "")).upper() == "CNPJ":
        value = document.get("value")
    if not value:
        value = (raw.get("merchant") or {}).get("cnpj")
    if not value:
        return None
    if isinstance(value, str) and len(value) == 14 and value.isdigit():
        return value  # already compact, as Pluggy sends it
    compact = _CNPJ_NOISE.sub("", str(value)).upper()
    return compact if len(compact) == 14 else None
