"""The supplier directory: registrations cached in the database, fetched once for the fleet.

A CNPJ already known (and fresh) is never looked up again. When concurrent batches need
the same unknown CNPJ, a short Redis lock per CNPJ lets one worker call the provider while
the others wait for its row to appear (single flight across processes and pods).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable
from typing import Any

from redis import Redis
from sqlalchemy import Row, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from audit.cnpj import InvalidCNPJ, normalize_cnpj
from audit.fleetlock import FleetLocks
from audit.models import SupplierRegistration
from audit.observability import metrics
from audit.providers.base import (
    CnpjLookup,
    ProviderRejected,
    RateLimitWait,
    Registration,
    RegistrationStatus,
)
from audit.settings import Settings


def _utc(moment: dt.datetime) -> dt.datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


REGISTRATION_COLUMNS = (
    SupplierRegistration.cnpj,
    SupplierRegistration.found,
    SupplierRegistration.provider,
    SupplierRegistration.legal_name,
    SupplierRegistration.status,
    SupplierRegistration.status_date,
    SupplierRegistration.opened_on,
    SupplierRegistration.main_cnae,
    SupplierRegistration.legal_nature,
    SupplierRegistration.is_mei,
    SupplierRegistration.is_simples,
    SupplierRegistration.fetched_at,
)


def to_registration(row: SupplierRegistration | Row[*tuple[Any, ...]]) -> Registration:
    return Registration(
        cnpj=row.cnpj,
        found=row.found,
        provider=row.provider,
        legal_name=row.legal_name,
        status=RegistrationStatus(row.status) if row.status else None,
        status_date=row.status_date,
        opened_on=row.opened_on,
        main_cnae=row.main_cnae,
        legal_nature=row.legal_nature,
        is_mei=row.is_mei,
        is_simples=row.is_simples,
    )


def upsert_registration(session: Session, registration: Registration) -> None:
    """Insert or refresh one row, atomically on SQLite and PostgreSQL."""
    values: dict[str, Any] = {
        "cnpj": registration.cnpj,
        "found": registration.found,
        "legal_name": registration.legal_name,
        "status": registration.status.value if registration.status else None,
        "status_date": registration.status_date,
        "opened_on": registration.opened_on,
        "main_cnae": registration.main_cnae,
        "legal_nature": registration.legal_nature,
        "is_mei": registration.is_mei,
        "is_simples": registration.is_simples,
        "provider": registration.provider,
        "fetched_at": dt.datetime.now(dt.UTC),
    }
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        pg = postgresql.insert(SupplierRegistration).values(**values)
        session.execute(
            pg.on_conflict_do_update(
                index_elements=["cnpj"], set_={k: pg.excluded[k] for k in values if k != "cnpj"}
            )
        )
    elif dialect == "sqlite":
        lite = sqlite.insert(SupplierRegistration).values(**values)
        session.execute(
            lite.on_conflict_do_update(
                index_elements=["cnpj"], set_={k: lite.excluded[k] for k in values if k != "cnpj"}
            )
        )
    else:
        session.merge(SupplierRegistration(**values))


class SupplierDirectory:
    """Registrations by CNPJ: from the database when fresh, else from `lookup`, once.

    `lock_ttl` must outlast one provider call (limiter wait + HTTP timeout), or a second
    worker may call the provider too; `wait` is how long a worker waits for another's call
    before giving up with RateLimitWait (reschedule, not a failure).
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        lookup: CnpjLookup,
        redis: Redis,
        freshness: dt.timedelta = dt.timedelta(days=30),
        *,
        lock_ttl: float = 30.0,
        wait: float = 10.0,
        poll: float = 0.05,
        prefix: str = "supplier-lookup:",
    ) -> None:
        self.session_factory = session_factory
        self.lookup = lookup
        self.redis = redis
        self.freshness = freshness
        self.lock_ttl = lock_ttl
        self.wait = wait
        self.poll = poll
        self.prefix = prefix
        self.locks = FleetLocks(redis)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        session_factory: sessionmaker[Session],
        lookup: CnpjLookup,
        redis: Redis,
    ) -> SupplierDirectory:
        """Lock long enough for the whole provider chain to answer or time out."""
        one_call = settings.provider_timeout_seconds + settings.rate_limit_max_wait_seconds
        lock_ttl = len(settings.cnpj_providers) * one_call + 5.0
        return cls(
            session_factory,
            lookup,
            redis,
            dt.timedelta(days=settings.supplier_cache_freshness_days),
            lock_ttl=lock_ttl,
            wait=min(lock_ttl, 15.0),
        )

    def cached(
        self, cnpjs: Iterable[str], session: Session | None = None
    ) -> dict[str, Registration]:
        """The fresh registrations among `cnpjs` (canonical form), in one query; in the
        caller's session when given (the worker reads them with the batch)."""
        wanted = list(dict.fromkeys(cnpjs))
        if not wanted:
            return {}
        if session is None:
            with self.session_factory() as own:
                return self.cached(wanted, own)
        oldest = dt.datetime.now(dt.UTC) - self.freshness
        found: dict[str, Registration] = {}
        for start in range(0, len(wanted), 500):
            # The columns, not ORM objects: a batch reads dozens of rows on every run.
            rows = session.execute(
                select(*REGISTRATION_COLUMNS).where(
                    SupplierRegistration.cnpj.in_(wanted[start : start + 500])
                )
            )
            for row in rows:
                if _utc(row.fetched_at) >= oldest:
                    found[row.cnpj] = to_registration(row)
        return found

    def fresh(self, cached: Iterable[tuple[Registration, dt.datetime]]) -> dict[str, Registration]:
        """Those of `cached` (registrations read elsewhere, with when each was fetched) that
        are fresh, as `cached()` would return them."""
        oldest = dt.datetime.now(dt.UTC) - self.freshness
        return {r.cnpj: r for r, fetched_at in cached if _utc(fetched_at) >= oldest}

    def get(self, cnpj: str) -> Registration:
        try:
            canonical = normalize_cnpj(cnpj)
        except InvalidCNPJ as exc:
            raise ProviderRejected("suppliers", f"invalid CNPJ: {exc}") from exc
        deadline = time.monotonic() + self.wait
        known = self.cached([canonical]).get(canonical)
        if known is not None:
            metrics.SUPPLIER_CACHE.labels("hit").inc()
            return known
        metrics.SUPPLIER_CACHE.labels("miss").inc()
        while True:
            lock = self.prefix + canonical
            token = self.locks.try_acquire(lock, self.lock_ttl)
            if token is not None:
                try:
                    # Someone may have finished between our read and our lock.
                    known = self.cached([canonical]).get(canonical)
                    if known is not None:
                        return known
                    registration = self.lookup.lookup(canonical)
                    with self.session_factory() as session, session.begin():
                        upsert_registration(session, registration)
                    return registration
                finally:
                    self.locks.release(lock, token)
            # Another worker is fetching it: wait for its row (or for its lock to go).
            while self.redis.exists(lock):
                if time.monotonic() >= deadline:
                    ttl_ms = self.redis.pttl(lock)
                    raise RateLimitWait("suppliers", max(self.poll, ttl_ms / 1000))
                time.sleep(self.poll)
                known = self.cached([canonical]).get(canonical)
                if known is not None:
                    return known
            known = self.cached([canonical]).get(canonical)
            if known is not None:
                return known

    def get_many(
        self,
        cnpjs: Iterable[str],
        on_lookup: Callable[[dict[str, Registration]], None] | None = None,
        known: dict[str, Registration] | None = None,
    ) -> dict[str, Registration]:
        """Registrations for all of `cnpjs`: one query for the known ones (unless the caller
        read them already: `known`, from cached()), then lookups, calling `on_lookup` with
        what is resolved so far after each one (for progress).

        If a lookup raises, the ones fetched before are already stored: a retry resumes.
        """
        try:
            canonical = list(dict.fromkeys(normalize_cnpj(c) for c in cnpjs))
        except InvalidCNPJ as exc:
            raise ProviderRejected("suppliers", f"invalid CNPJ: {exc}") from exc
        if known is None:
            result = self.cached(canonical)
        else:
            result = {c: known[c] for c in canonical if c in known}
        if result:
            metrics.SUPPLIER_CACHE.labels("hit").inc(len(result))
        for cnpj in canonical:
            if cnpj not in result:
                result[cnpj] = self.get(cnpj)
                if on_lookup is not None:
                    on_lookup(result)
        return result
