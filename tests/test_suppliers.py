"""The supplier directory on SQLite and PostgreSQL: cache, freshness, single flight."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import random
import time
from typing import Any

import httpx
import pytest
from redis import Redis
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from audit.db import make_engine
from audit.models import SupplierRegistration
from audit.providers.base import ProviderRejected, ProviderUnavailable, RateLimitWait
from audit.providers.cnpj import MinhaReceitaLookup
from audit.providers.factory import build_providers
from audit.providers.http import Budget
from audit.ratelimit import RateLimiter
from audit.settings import Settings
from audit.suppliers import SupplierDirectory
from simulator.testing import SimulatorServer
from tests.support.helpers import cnpj_from

POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
def db_url(database_url: str) -> str:
    """A migrated, empty database: SQLite and PostgreSQL (tests/conftest.py)."""
    return database_url


def directory(
    db_url: str, redis: Redis, sim_url: str, http: httpx.Client, **kw: Any
) -> SupplierDirectory:
    budget = Budget(RateLimiter(redis), "minha_receita", 6000.0, 2.0)
    lookup = MinhaReceitaLookup(http, f"{sim_url}/minha-receita", budget)
    factory: sessionmaker[Session] = sessionmaker(make_engine(db_url), expire_on_commit=False)
    return SupplierDirectory(factory, lookup, redis, **kw)


def lookups(sim: SimulatorServer) -> dict[str, int]:
    by_key: dict[str, int] = sim.stats()["minha_receita"].get("cnpj", {}).get("by_key", {})
    return by_key


def rows(db_url: str) -> int:
    engine = make_engine(db_url)
    with engine.connect() as connection:
        count = connection.execute(select(func.count()).select_from(SupplierRegistration))
        result = int(count.scalar_one())
    engine.dispose()
    return result


def test_a_known_cnpj_is_not_looked_up_again(
    db_url: str, redis: Redis, sim: SimulatorServer
) -> None:
    missing, known = cnpj_from(1), cnpj_from(2)
    sim.put_registration(missing, {"found": False})
    sim.put_registration(known, {"status": "INAPTA", "status_date": "2025-01-02"})
    with httpx.Client(timeout=2) as http:
        suppliers = directory(db_url, redis, sim.url, http)
        first = suppliers.get(known)
        assert first.status is not None
        assert first.status.value == "INAPTA"
        assert first.status_date == dt.date(2025, 1, 2)
        assert suppliers.get(missing).found is False
        # Again, and masked: answered from the database, including "does not exist".
        assert suppliers.get(known) == first
        assert suppliers.get(f"{known[:2]}.{known[2:5]}.{known[5:8]}/{known[8:12]}-{known[12:]}")
        assert suppliers.get(missing).found is False
        assert suppliers.get_many([known, missing, known]) == {
            known: first,
            missing: suppliers.get(missing),
        }
    assert lookups(sim) == {known: 1, missing: 1}
    assert rows(db_url) == 2


def test_stale_rows_are_refreshed_in_place(db_url: str, redis: Redis, sim: SimulatorServer) -> None:
    cnpj = cnpj_from(3)
    sim.put_registration(cnpj, {"status": "ATIVA"})
    with httpx.Client(timeout=2) as http:
        suppliers = directory(db_url, redis, sim.url, http, freshness=dt.timedelta(days=30))
        assert suppliers.get(cnpj).status is not None
        engine = make_engine(db_url)
        with engine.begin() as connection:
            connection.execute(
                update(SupplierRegistration).values(
                    fetched_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=31)
                )
            )
        engine.dispose()
        sim.put_registration(cnpj, {"status": "BAIXADA", "status_date": "2026-06-01"})
        refreshed = suppliers.get(cnpj)
        assert refreshed.status is not None
        assert refreshed.status.value == "BAIXADA"
        assert suppliers.get(cnpj) == refreshed
    assert lookups(sim) == {cnpj: 2}
    assert rows(db_url) == 1


def test_a_failed_lookup_releases_the_lock(db_url: str, redis: Redis, sim: SimulatorServer) -> None:
    cnpj = cnpj_from(4)
    sim.configure(minha_receita={"fail_next": 1, "fail_status": 503})
    with httpx.Client(timeout=2) as http:
        suppliers = directory(db_url, redis, sim.url, http)
        with pytest.raises(ProviderUnavailable):
            suppliers.get(cnpj)
        assert redis.keys("supplier-lookup:*") == []
        assert suppliers.get(cnpj).cnpj == cnpj
    assert rows(db_url) == 1


def test_a_waiter_gives_up_with_a_wait_not_a_failure(
    db_url: str, redis: Redis, sim: SimulatorServer
) -> None:
    cnpj = cnpj_from(5)
    redis.set(f"supplier-lookup:{cnpj}", "someone-else", px=5000)
    with httpx.Client(timeout=2) as http:
        suppliers = directory(db_url, redis, sim.url, http, wait=0.3)
        started = time.monotonic()
        with pytest.raises(RateLimitWait) as info:
            suppliers.get(cnpj)
        assert time.monotonic() - started >= 0.3
        assert 3 < info.value.wait_seconds <= 5
        with pytest.raises(ProviderRejected):
            suppliers.get("11222333000180")
    assert lookups(sim) == {}


def _batches(db_url: str, redis_url: str, sim_url: str, batches: list[list[str]], out: Any) -> None:
    """One 'worker process' resolving the suppliers of its batches."""
    redis = Redis.from_url(redis_url)
    with httpx.Client(timeout=5) as http:
        suppliers = directory(db_url, redis, sim_url, http)
        resolved = 0
        for cnpjs in batches:
            resolved += len(suppliers.get_many(cnpjs))
    out.put(resolved)


@pytest.mark.slow
def test_fifty_batches_sharing_twenty_unknown_cnpjs_cause_twenty_lookups(
    db_url: str, redis: Redis, redis_url: str, sim: SimulatorServer
) -> None:
    """Done-means (2) at the provider level, with 4 processes and a slow provider."""
    sim.configure(minha_receita={"latency_ms": 150})
    shared = [cnpj_from(100 + i) for i in range(20)]
    rng = random.Random(7)
    batches = [rng.sample(shared, 8) for _ in range(50)]
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    workers = [
        ctx.Process(target=_batches, args=(db_url, redis_url, sim.url, batches[p::4], out))
        for p in range(4)
    ]
    for worker in workers:
        worker.start()
    resolved = [out.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=10)
    served = lookups(sim)
    print(f"\nsingle flight: {sum(resolved)} resolutions, {sum(served.values())} lookups")
    assert sum(resolved) == 50 * 8
    assert set(served) == set(shared)
    assert sum(served.values()) == 20
    assert rows(db_url) == 20


def test_directory_from_settings_uses_the_configured_freshness(
    db_url: str, redis: Redis, sim: SimulatorServer
) -> None:
    settings = Settings(
        database_url=db_url,
        minha_receita_base_url=f"{sim.url}/minha-receita",
        cnpj_providers=["minha_receita"],
        supplier_cache_freshness_days=0,
    )
    providers = build_providers(settings, redis)
    factory: sessionmaker[Session] = sessionmaker(make_engine(db_url), expire_on_commit=False)
    suppliers = SupplierDirectory.from_settings(settings, factory, providers.cnpj, redis)
    try:
        cnpj = cnpj_from(6)
        suppliers.get(cnpj)
        suppliers.get(cnpj)  # freshness 0: every read is stale
    finally:
        providers.close()
    assert lookups(sim) == {cnpj_from(6): 2}
    assert suppliers.freshness == dt.timedelta(0)
