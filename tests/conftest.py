"""Fixtures that run the real platform on loopback: a private redis-server, SQLite and
PostgreSQL databases, the provider simulator, the API under uvicorn and Celery workers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis

from audit.db import (
    upgrade_database,
)
from cli.processes import (
    free_port,
    start_redis,
)
from ops.scratchdb import create_scratch_database, drop_scratch_database
from simulator.testing import RedisServer, SimulatorServer
from tests.support.platform import (
    POSTGRES_ADMIN_URL,
    Platform,
    fresh_postgres_schema,
    launch_platform,
    postgres_available,
    sqlite_platform_for,
    sqlite_url,
)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server for the whole session; tests never touch a shared Redis."""
    port = free_port()
    base = tmp_path_factory.mktemp("redis")
    process = start_redis(port, base / "data", base)
    yield f"redis://127.0.0.1:{port}"
    process.stop()


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


@pytest.fixture
def postgres_url(postgres_database: str) -> str:
    """A migrated, empty PostgreSQL schema, for behaviour only PostgreSQL has."""
    return fresh_postgres_schema(postgres_database)


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
    with sqlite_platform_for(tmp_path_factory, redis_server) as running:
        yield running


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


# Fixtures that start processes (a redis-server or the simulator; every platform fixture
# builds on one of them). A test that needs any of them, directly or through another
# fixture, is `slow`; `pytest -m "not slow"` is the tier that starts no process.
PROCESS_FIXTURES = frozenset(
    {"redis_server", "private_redis", "private_redis_module", "sim", "redis_url"}
)


# The longest modules, longest first (per-module totals of a whole run, `--junitxml`). `make
# test` keeps each module in one process (--dist loadfile) and hands modules out in collection
# order (--no-loadscope-reorder): started first, the long ones no longer leave one process
# working through a long module alone at the end of the run.
LONGEST_MODULES = (
    "test_provider_fleet.py", "test_fairness.py", "test_webhooks.py", "test_faults_workers.py",
    "test_ratelimit.py", "test_providers.py", "test_scaling_signal.py", "test_dlq.py",
    "test_reliability_providers.py", "test_chart.py", "test_scaling.py",
    "test_faults_providers.py", "test_platform.py", "test_reliability_workers.py",
    "test_readme_by_hand.py", "test_sample_audit.py", "test_faults_database.py",
    "test_security.py", "test_suppliers.py", "test_workload.py", "test_faults_redis.py",
    "test_metrics.py", "test_tracing.py", "test_readme_examples.py", "test_dashboard.py",
)  # fmt: skip


def module_rank(item: pytest.Item) -> int:
    name = item.path.name
    return LONGEST_MODULES.index(name) if name in LONGEST_MODULES else len(LONGEST_MODULES)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    items.sort(key=module_rank)  # stable: the rest keep their order, and so do tests in a module
