"""The whole platform on loopback for load runs and benchmarks, seeded from the workload.

Built on `cli.processes` (the same launchers `condo-audit run` and the tests use): a private
redis-server, a fresh database (PostgreSQL when it answers, else SQLite), the provider
simulator, the API under uvicorn with several workers and N Celery worker processes.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from audit.auth import create_tenant, issue_key
from audit.db import (
    session_scope,
    upgrade_database,
)
from audit.providers.base import Registration, RegistrationStatus
from audit.suppliers import upsert_registration
from cli.processes import (
    ManagedProcess,
    free_port,
    spawn_worker,
    start_api,
    start_redis,
    start_simulator,
    wait_all,
)
from ops.scratchdb import create_scratch_database, drop_scratch_database, postgres_unavailable
from ops.workload import CondominiumMonth, Supplier

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REGISTRATION_KEYS = ("legal_name", "status", "status_date", "opened_on", "main_cnae")


@dataclass
class Database:
    url: str
    admin_url: str | None = None  # set for a PostgreSQL database this run created

    @property
    def kind(self) -> str:
        return "postgresql" if self.url.startswith("postgresql") else "sqlite"

    def drop(self) -> None:
        if self.admin_url is not None:
            drop_scratch_database(self.admin_url, self.url)


def postgres_reason(admin_url: str = POSTGRES_ADMIN_URL) -> str | None:
    """None when PostgreSQL answers, else why not."""
    return postgres_unavailable(admin_url)


def fresh_database(kind: str, work: Path) -> Database:
    """A migrated, empty database; `kind` is postgresql, sqlite or auto (PostgreSQL if up)."""
    if kind == "auto":
        kind = "postgresql" if postgres_reason() is None else "sqlite"
    if kind == "sqlite":
        database = Database(f"sqlite:///{work / 'condo-audit.db'}")
    else:
        url = create_scratch_database(POSTGRES_ADMIN_URL, "condo_audit_load")
        database = Database(url, POSTGRES_ADMIN_URL)
    upgrade_database(database.url)
    return database


@dataclass
class ProviderLimits:
    """How the simulator behaves and what budget the fleet's limiter enforces (per minute)."""

    cnpj_rate_per_minute: float | None = 300.0
    pluggy_rate_per_minute: float | None = 360.0
    cnpj_latency_ms: float = 150.0
    pluggy_latency_ms: float = 250.0

    def simulator_config(self) -> dict[str, Any]:
        return {
            # The platform's limiter paces under the budget; the simulator enforces it.
            "minha_receita": {
                "rate_per_minute": self.cnpj_rate_per_minute,
                "latency_ms": self.cnpj_latency_ms,
            },
            "pluggy": {
                "rate_per_minute": self.pluggy_rate_per_minute,
                "latency_ms": self.pluggy_latency_ms,
            },
        }

    def platform_env(self) -> dict[str, str]:
        def rate(value: float | None) -> str:
            # No limit at the simulator: a budget no run can reach (the limiter still runs).
            return "1e9" if value is None else f"{value:g}"

        return {
            "CNPJ_PROVIDERS": '["minha_receita"]',
            "MINHA_RECEITA_RATE_PER_MINUTE": rate(self.cnpj_rate_per_minute),
            "PLUGGY_RATE_PER_MINUTE": rate(self.pluggy_rate_per_minute),
        }


@dataclass
class LocalPlatform:
    work: Path
    database: Database
    redis_url: str
    simulator_url: str
    api_url: str
    env: dict[str, str]
    processes: list[ManagedProcess] = field(default_factory=list)

    def start_workers(self, count: int, concurrency: int, include: Iterable[str] = ()) -> None:
        starting = [
            spawn_worker(
                self.env,
                self.work / "logs",
                name=f"worker{number}-{uuid.uuid4().hex[:4]}",
                concurrency=concurrency,
                queue=self.env["AUDIT_QUEUE"],
                include=list(include),
            )
            for number in range(count)
        ]
        self.processes.extend(wait_all(starting))

    def start_webhooks_worker(self, concurrency: int = 8) -> None:
        """Deliveries on their own queue, in threads, like the chart's webhooks Deployment."""
        self.processes.append(
            spawn_worker(
                {**self.env, "METRICS_PORT": "0"},
                self.work / "logs",
                name=f"webhooks-{uuid.uuid4().hex[:4]}",
                concurrency=concurrency,
                queue="webhooks",
                pool="threads",
            ).wait()
        )

    def start_api(self, workers: int) -> None:
        port = int(self.api_url.rsplit(":", 1)[1])
        self.processes.append(start_api(port, self.env, self.work / "logs", workers=workers))

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
        self.database.drop()


# Benchmarks drive all their load through one tenant: lift its API request budget (the
# per-tenant limiter still runs on every request).
ONE_TENANT_LOAD_ENV = {"API_RATE_PER_MINUTE": "100000000", "API_RATE_BURST": "100000"}


def start_platform(
    work: Path,
    *,
    database: str = "auto",
    limits: ProviderLimits | None = None,
    api_workers: int | None = 2,
    extra_env: dict[str, str] | None = None,
) -> LocalPlatform:
    """Redis, database, simulator and (unless api_workers is None) the API; workers later."""
    work.mkdir(parents=True, exist_ok=True)
    limits = limits or ProviderLimits()
    logs = work / "logs"
    redis_port, sim_port, api_port = free_port(), free_port(), free_port()
    processes = [start_redis(redis_port, work / "redis", logs)]
    try:
        db = fresh_database(database, work)
        simulator_url = f"http://127.0.0.1:{sim_port}"
        env = {
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "DATABASE_URL": db.url,
            "AUDIT_QUEUE": "audit",
            "CNPJWS_BASE_URL": f"{simulator_url}/cnpjws",
            "MINHA_RECEITA_BASE_URL": f"{simulator_url}/minha-receita",
            "PLUGGY_BASE_URL": f"{simulator_url}/pluggy",
            "WORKER_HEARTBEAT_SECONDS": "5",
            "PYTHONPATH": str(ROOT),
            **limits.platform_env(),
            **(extra_env or {}),
        }
        processes.append(
            start_simulator(
                sim_port, env, logs, ["--config", json.dumps(limits.simulator_config())]
            )
        )
        platform = LocalPlatform(
            work, db, env["REDIS_URL"], simulator_url, f"http://127.0.0.1:{api_port}", env,
            processes,
        )  # fmt: skip
    except BaseException:
        for process in reversed(processes):
            process.stop()
        raise
    try:
        if api_workers is not None:
            platform.start_api(api_workers)
    except BaseException:
        platform.stop()
        raise
    return platform


def simulator_record(supplier: Supplier) -> dict[str, Any]:
    """The registry record as `PUT /_sim/registrations/{cnpj}` takes it."""
    record = supplier.registry_record()
    if not record["found"]:
        return {"found": False}
    return {"found": True, **{key: record[key] for key in REGISTRATION_KEYS}}


def registration_of(supplier: Supplier) -> Registration:
    """What the supplier directory would store after looking the supplier up."""
    if not supplier.found:
        return Registration(cnpj=supplier.cnpj, found=False, provider="minha_receita")
    return Registration(
        cnpj=supplier.cnpj,
        found=True,
        provider="minha_receita",
        legal_name=supplier.legal_name,
        status=RegistrationStatus(supplier.status),
        status_date=supplier.status_date,
        opened_on=supplier.opened_on,
        main_cnae=supplier.main_cnae,
        is_mei=False,
        is_simples=True,
    )


def unique_suppliers(months: Iterable[CondominiumMonth]) -> dict[str, Supplier]:
    suppliers: dict[str, Supplier] = {}
    for month in months:
        suppliers.update(month.suppliers)
    return suppliers


def seed_simulator(simulator_url: str, months: list[CondominiumMonth]) -> None:
    """Every account's bank month and every supplier's registration, as the workload says."""
    with httpx.Client(base_url=simulator_url, timeout=30) as sim:
        for month in months:
            sim.put(
                f"/_sim/accounts/{month.pluggy_account_id}/transactions", json=month.transactions
            ).raise_for_status()
        for cnpj, supplier in unique_suppliers(months).items():
            sim.put(f"/_sim/registrations/{cnpj}", json=simulator_record(supplier))


def cached_share(suppliers: dict[str, Supplier], fraction: float) -> list[Supplier]:
    """A deterministic `fraction` of the suppliers (by CNPJ order), the most used first.

    The most used suppliers are the ones a month-old cache holds for sure: the utilities
    and large firms that hundreds of condominiums paid last month as well.
    """
    ranked = sorted(suppliers.values(), key=lambda s: (s.rank, s.cnpj))
    return ranked[: round(len(ranked) * fraction)]


def warm_supplier_cache(database_url: str, suppliers: Iterable[Supplier]) -> int:
    """Store registrations as if looked up yesterday; returns how many."""
    count = 0
    fetched = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    with session_scope(database_url) as session:
        for supplier in suppliers:
            upsert_registration(session, registration_of(supplier))
            count += 1
        session.execute(text("UPDATE supplier_registrations SET fetched_at = :at"), {"at": fetched})
    return count


def create_tenants(database_url: str, count: int) -> list[str]:
    """`count` tenants (administration firms), one API key each."""
    keys = []
    with session_scope(database_url) as session:
        for number in range(count):
            tenant = create_tenant(session, f"administradora-{number:03d}")
            keys.append(issue_key(session, tenant.id, "load").secret)
    return keys


def create_condominiums(
    api_url: str, keys: list[str], months: list[CondominiumMonth]
) -> list[dict[str, Any]]:
    """Register each condominium through the API under one of the tenants (round robin)."""
    created = []
    with httpx.Client(base_url=api_url, timeout=30) as api:
        for month in months:
            key = keys[month.index % len(keys)]
            response = api.post(
                "/condominiums", json=month.condominium_request(), headers={"X-API-Key": key}
            )
            response.raise_for_status()
            created.append({"index": month.index, "id": response.json()["id"], "key": key})
    return created
