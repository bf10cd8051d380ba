"""Fixtures that run the real platform on loopback: a private redis-server, SQLite and
PostgreSQL databases, the provider simulator, the API under uvicorn and Celery workers."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis
from sqlalchemy import create_engine, text

from audit.auth import create_tenant, issue_key
from audit.db import (
    session_scope,
    upgrade_database,
)
from cli.processes import (
    ManagedProcess,
    free_port,
    start_api,
    start_redis,
    start_simulator,
    start_worker,
)
from ops.scratchdb import create_scratch_database, drop_scratch_database, postgres_unavailable
from simulator.testing import RedisServer, SimulatorServer

POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server for the whole session; tests never touch a shared Redis."""
    port = free_port()
    base = tmp_path_factory.mktemp("redis")
    process = start_redis(port, base / "data", base)
    yield f"redis://127.0.0.1:{port}"
    process.stop()


def sqlite_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'condo-audit.db'}"


def postgres_available() -> str | None:
    """None when the local PostgreSQL answers, else the reason to skip."""
    return postgres_unavailable(POSTGRES_ADMIN_URL)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for the session, dropped afterwards."""
    reason = postgres_available()
    if reason is not None:
        pytest.skip(reason)
    url = create_scratch_database(POSTGRES_ADMIN_URL, "condo_audit_test")
    yield url
    drop_scratch_database(POSTGRES_ADMIN_URL, url)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database of each kind (function scope)."""
    if request.param == "sqlite":
        url = sqlite_url(tmp_path)
        upgrade_database(url)
        yield url
        return
    base_url: str = request.getfixturevalue("postgres_database")
    schema_url = fresh_postgres_schema(base_url)
    yield schema_url


def fresh_postgres_schema(database_url: str) -> str:
    """Reset the session database's public schema and migrate it."""
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    upgrade_database(database_url)
    return database_url


@dataclass
class Platform:
    """The running platform for one test module, and a client authenticated as one tenant."""

    api_url: str
    simulator_url: str
    database_url: str
    redis_url: str
    env: dict[str, str]
    log_dir: Path
    tenant_id: str
    api_key: str
    processes: dict[str, ManagedProcess] = field(default_factory=dict)

    def client(self, api_key: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.api_url,
            headers={"X-API-Key": api_key or self.api_key},
            timeout=10.0,
        )

    def sim(self) -> httpx.Client:
        return httpx.Client(base_url=self.simulator_url, timeout=10.0)

    def new_tenant(self, name: str = "other") -> tuple[str, str]:
        with session_scope(self.database_url) as session:
            tenant = create_tenant(session, name)
            issued = issue_key(session, tenant.id)
        return tenant.id, issued.secret

    def create_condominium(self, account_id: str | None = None, **extra: Any) -> str:
        body = {"name": f"Condomínio {uuid.uuid4().hex[:6]}", "pluggy_account_id": account_id}
        with self.client() as client:
            response = client.post("/condominiums", json={**body, **extra})
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def wait_for_status(
        self, task_id: str, statuses: set[str], timeout: float = 60.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        body: dict[str, Any] = {}
        with self.client() as client:
            while time.monotonic() < deadline:
                response = client.get(f"/tasks/{task_id}")
                assert response.status_code == 200, response.text
                body = response.json()
                if body["status"] in statuses:
                    return body
                time.sleep(0.1)
        worker = self.processes.get("worker")
        tail = worker.log_tail(60) if worker else ""
        raise AssertionError(f"task {task_id} still {body.get('status')} after {timeout}s\n{tail}")

    def start_worker(self, name: str = "worker", concurrency: int = 2, **env: str) -> None:
        self.processes[name] = start_worker(
            {**self.env, **env},
            self.log_dir,
            name=name,
            concurrency=concurrency,
            queue=self.env["AUDIT_QUEUE"],
        )

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            process.stop()
        release_redis_db(self.redis_url)


def platform_env(
    redis_url: str, db_index: int, database_url: str, simulator_url: str, queue: str
) -> dict[str, str]:
    return {
        "REDIS_URL": f"{redis_url}/{db_index}",
        "DATABASE_URL": database_url,
        "AUDIT_QUEUE": queue,
        "CNPJWS_BASE_URL": f"{simulator_url}/cnpjws",
        "MINHA_RECEITA_BASE_URL": f"{simulator_url}/minha-receita",
        "PLUGGY_BASE_URL": f"{simulator_url}/pluggy",
        "RETRY_BACKOFF_BASE_SECONDS": "0.2",
        "RETRY_JITTER_RATIO": "0",
        "PROVIDER_TIMEOUT_SECONDS": "2",
        "CNPJWS_RATE_PER_MINUTE": "6000",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }


# Redis has 16 databases; a long session reuses them (each platform has its own queue name).
# Redis databases 1-15 of the session's private server, one per live platform: a platform
# never inherits another's keys (a cached provider token, a queue, limiter state).
_free_db_indexes = list(range(1, 16))


def claim_redis_db(redis_url: str) -> int:
    if not _free_db_indexes:
        raise RuntimeError("more than 15 platforms alive at once on one redis-server")
    index = _free_db_indexes.pop(0)
    client = Redis.from_url(f"{redis_url}/{index}")
    client.flushdb()
    client.close()
    return index


def release_redis_db(platform_redis_url: str) -> None:
    index = int(platform_redis_url.rsplit("/", 1)[1])
    if index not in _free_db_indexes:
        _free_db_indexes.append(index)


def launch_platform(
    tmp_path_factory: pytest.TempPathFactory,
    redis_url: str,
    database_url: str,
    *,
    worker: bool = True,
    extra_env: dict[str, str] | None = None,
) -> Platform:
    log_dir = tmp_path_factory.mktemp("platform")
    sim_port, api_port = free_port(), free_port()
    simulator_url = f"http://127.0.0.1:{sim_port}"
    env = platform_env(
        redis_url,
        claim_redis_db(redis_url),
        database_url,
        simulator_url,
        f"audit-{uuid.uuid4().hex[:8]}",
    )
    env.update(extra_env or {})
    with session_scope(database_url) as session:
        tenant = create_tenant(session, "tenant-under-test")
        issued = issue_key(session, tenant.id)
    platform = Platform(
        api_url=f"http://127.0.0.1:{api_port}",
        simulator_url=simulator_url,
        database_url=database_url,
        redis_url=env["REDIS_URL"],
        env=env,
        log_dir=log_dir,
        tenant_id=tenant.id,
        api_key=issued.secret,
    )
    try:
        platform.processes["simulator"] = start_simulator(sim_port, env, log_dir)
        platform.processes["api"] = start_api(api_port, env, log_dir)
        if worker:
            platform.start_worker()
    except BaseException:
        platform.stop()
        raise
    return platform


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def platform(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: str,
) -> Iterator[Platform]:
    """The whole platform with one worker, on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        database_url = sqlite_url(tmp_path_factory.mktemp("db"))
        upgrade_database(database_url)
    else:
        database_url = fresh_postgres_schema(request.getfixturevalue("postgres_database"))
    running = launch_platform(tmp_path_factory, redis_server, database_url)
    yield running
    running.stop()


@pytest.fixture
def sqlite_platform(
    tmp_path_factory: pytest.TempPathFactory, redis_server: str
) -> Iterator[Platform]:
    """A platform on SQLite only, for behaviour that does not depend on the database."""
    database_url = sqlite_url(tmp_path_factory.mktemp("db"))
    upgrade_database(database_url)
    running = launch_platform(tmp_path_factory, redis_server, database_url)
    yield running
    running.stop()


@pytest.fixture
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of the test's own, for tests that break or inspect Redis."""
    port = free_port()
    base = tmp_path_factory.mktemp("private-redis")
    process = start_redis(port, base / "data", base)
    yield f"redis://127.0.0.1:{port}"
    process.stop()


@pytest.fixture
def dedicated_postgres_url() -> Iterator[str]:
    """A migrated PostgreSQL database of the test's own: a test may block its connections."""
    reason = postgres_available()
    if reason is not None:
        pytest.skip(reason)
    url = create_scratch_database(POSTGRES_ADMIN_URL, "condo_audit_fault")
    upgrade_database(url)
    yield url
    drop_scratch_database(POSTGRES_ADMIN_URL, url)


# Provider-level tests (test_providers, test_suppliers): a redis-server and a simulator of the
# module's own, both reset before each test. Modules that need another setup define theirs.


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with RedisServer() as server:
        yield server.url


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer({"reference_date": "2026-06-30"}) as server:
        yield server


@pytest.fixture
def redis(redis_url: str, sim: SimulatorServer) -> Iterator[Redis]:
    client = Redis.from_url(redis_url)
    client.flushdb()  # the module's private server only
    sim.reset()
    yield client
    client.close()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=2.0) as client:
        yield client
