"""The real platform on loopback for tests: a tenant, the simulator, the API under uvicorn
and Celery workers, each platform on its own Redis database and queue."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis
from sqlalchemy import create_engine, text

from audit.auth import create_tenant, issue_key
from audit.db import session_scope, upgrade_database
from cli.processes import (
    ManagedProcess,
    Starting,
    free_port,
    spawn_api,
    spawn_simulator,
    spawn_worker,
    stop_all,
    wait_all,
)
from ops.scratchdb import postgres_unavailable
from tests.support.helpers import BUSY_MACHINE_WAIT_SECONDS
from worker.broker import read_backlog

POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def sqlite_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'condo-audit.db'}"


def postgres_available() -> str | None:
    """None when the local PostgreSQL answers, else the reason to skip."""
    return postgres_unavailable(POSTGRES_ADMIN_URL)


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

    def configure_simulator(self, **providers: dict[str, Any]) -> None:
        """Change how the simulated providers behave, e.g. cnpjws={"latency_ms": 500}."""
        with self.sim() as sim:
            sim.post("/_sim/config", json=providers).raise_for_status()

    def cli(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`condo-audit ARGV` in its own process, configured like the platform's."""
        return subprocess.run(
            [sys.executable, "-m", "cli", *argv],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=BUSY_MACHINE_WAIT_SECONDS,
            check=check,
        )

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
        self, task_id: str, statuses: set[str], timeout: float = BUSY_MACHINE_WAIT_SECONDS
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
        raise AssertionError(
            f"task {task_id} still {body.get('status')} after {timeout}s\n{self.diagnosis()}"
        )

    def diagnosis(self) -> str:
        """Where the work stands when a wait runs out: the queue's keys and each process's log."""
        redis = Redis.from_url(self.redis_url, socket_timeout=5)
        try:
            queue: object = read_backlog(redis, self.env["AUDIT_QUEUE"])
        except Exception as exc:  # the diagnosis must not hide the failure it explains
            queue = repr(exc)
        finally:
            redis.close()
        tails = [
            f"--- {name} ({process.log_path}) ---\n{process.log_tail(40)}"
            for name, process in self.processes.items()
            if name not in {"api", "simulator"}
        ]
        return "\n".join([f"queue: {queue}", *tails])

    def spawn_worker(self, name: str = "worker", concurrency: int = 2, **env: str) -> Starting:
        return spawn_worker(
            {**self.env, **env},
            self.log_dir,
            name=name,
            concurrency=concurrency,
            queue=self.env["AUDIT_QUEUE"],
        )

    def start_worker(self, name: str = "worker", concurrency: int = 2, **env: str) -> None:
        self.processes[name] = self.spawn_worker(name, concurrency, **env).wait()

    def start_webhooks_worker(self, concurrency: int = 4) -> None:
        """The webhook deliveries' worker: its own queue, a thread pool, as the chart runs it."""
        self.processes["webhooks"] = spawn_worker(
            self.env,
            self.log_dir,
            name="webhooks",
            concurrency=concurrency,
            queue="webhooks",
            pool="threads",
        ).wait()

    def start_workers(self, *names: str, concurrency: int = 2) -> None:
        """Several audit workers, started side by side."""
        started = wait_all([self.spawn_worker(name, concurrency) for name in names])
        self.processes.update(zip(names, started, strict=True))

    def stop(self) -> None:
        stop_all(list(self.processes.values()))
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
        # Short leases and recovery passes: a killed worker's batch comes back in seconds.
        "BATCH_LEASE_SECONDS": "10",
        "RECOVERY_INTERVAL_SECONDS": "2",
        # Tests of the per-batch retry policy fail a provider on purpose: the breaker stays out
        # of their way (tests of the outage tolerance set BREAKER_FAILURE_THRESHOLD themselves).
        "BREAKER_FAILURE_THRESHOLD": "1000",
        "BREAKER_COOLDOWN_SECONDS": "1",
        "BREAKER_MAX_WAIT_SECONDS": "5",
        # Tests send bad keys on purpose from one address; tests of the limit set their own.
        "AUTH_FAILURES_PER_MINUTE": "100000",
        "AUTH_FAILURE_BURST": "10000",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
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
        starting = {
            "simulator": spawn_simulator(sim_port, env, log_dir),
            "api": spawn_api(api_port, env, log_dir),
        }
        if worker:
            starting["worker"] = platform.spawn_worker()
        platform.processes.update(zip(starting, wait_all(list(starting.values())), strict=True))
    except BaseException:
        platform.stop()
        raise
    return platform


@contextmanager
def sqlite_platform_for(
    tmp_path_factory: pytest.TempPathFactory,
    redis_url: str,
    *,
    worker: bool = True,
    extra_env: dict[str, str] | None = None,
    kill_on_exit: bool = False,
) -> Iterator[Platform]:
    """A platform on a fresh SQLite database: the one way modules start their own.

    kill_on_exit: SIGKILL instead of a warm stop, for tests that leave work stuck on purpose.
    """
    database_url = sqlite_url(tmp_path_factory.mktemp("db"))
    upgrade_database(database_url)
    running = launch_platform(
        tmp_path_factory, redis_url, database_url, worker=worker, extra_env=extra_env
    )
    try:
        yield running
    finally:
        if kill_on_exit:
            for process in running.processes.values():
                process.kill()
            release_redis_db(running.redis_url)
        else:
            running.stop()
