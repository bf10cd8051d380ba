"""The database goes away for a while (PostgreSQL refusing connections, every open one cut).

This is what a failover or a restart looks like to the platform: connections drop and new
ones are refused. The API must say 503, not 500; tasks must wait and retry without burning
the provider attempt budget; when the database is back everything finishes, nothing twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from audit.db import session_scope
from audit.models import Batch
from tests.support.faultkit import Outcome, Workload, reference, verify
from tests.support.platform import POSTGRES_ADMIN_URL, launch_platform


@contextmanager
def database_blocked(database_url: str) -> Iterator[None]:
    name = make_url(database_url).database
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
        yield
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()


@pytest.mark.postgres
def test_database_unavailable_for_a_while_loses_nothing(
    tmp_path_factory: pytest.TempPathFactory, private_redis: str, dedicated_postgres_url: str
) -> None:
    platform = launch_platform(
        tmp_path_factory,
        private_redis,
        dedicated_postgres_url,
        worker=False,
        extra_env={"INFRASTRUCTURE_RETRY_MAX_SECONDS": "2"},
    )
    try:
        platform.start_worker("w1", concurrency=2)
        expected = reference(platform)
        # Slow lookups (6 a batch: about 3 s) keep a backlog past the submissions, however
        # fast the worker or slow the machine, so the outage meets tasks mid-run.
        platform.configure_simulator(cnpjws={"latency_ms": 500})
        work = Workload(platform)
        work.submit_many(16)
        spare = platform.create_condominium()
        time.sleep(0.5)
        outcome = Outcome("database-unavailable")
        outcome.in_flight_batches, outcome.in_flight_expenses = work.in_flight()
        assert outcome.in_flight_batches > 0

        answers: list[tuple[str, int, float, str]] = []
        polled = f"/tasks/{work.submitted[0].task_id}"
        polls: list[httpx.Response] = []
        with database_blocked(dedicated_postgres_url), platform.client() as client:
            down_until = time.monotonic() + 8
            while time.monotonic() < down_until:
                for method, path, body in (
                    ("GET", polled, None),
                    ("POST", "/batch-expenses", {"condominium_id": spare, "expenses": []}),
                    ("POST", "/condominiums", {"name": "Durante a queda"}),
                    ("GET", "/dead-letters", None),
                    ("GET", "/readyz", None),
                ):
                    started = time.monotonic()
                    response = client.request(method, path, json=body)
                    answers.append(
                        (path, response.status_code, time.monotonic() - started, response.text)
                    )
                    if path == polled:
                        polls.append(response)
                time.sleep(0.5)
        statuses = {code for _, code, _, _ in answers}
        assert 500 not in statuses, [a for a in answers if a[1] == 500][:3]
        slowest = max(elapsed for _, _, elapsed, _ in answers)
        assert slowest < 5, f"an answer took {slowest:.1f}s while the database was down"
        unavailable = [a for a in answers if a[1] == 503]
        assert len(unavailable) >= len(answers) // 2
        assert any("database is unavailable" in a[3] for a in unavailable)
        # The status read (asyncio connections of its own) answers the outage as the rest.
        assert polls
        assert [p.status_code for p in polls] == [503] * len(polls)
        assert {p.text for p in polls} == {
            '{"detail":"the database is unavailable; nothing was changed, retry later"}'
        }
        assert {p.headers["retry-after"] for p in polls} == {"5"}
        with platform.client() as client:  # back at the first read
            assert client.get(polled).status_code == 200
        platform.configure_simulator(cnpjws={"latency_ms": 150})

        work.submit_many(6)  # the API is back by itself
        work.wait_all_terminal(240)
        verify(work, expected, outcome)
        outcome.publish()
        assert outcome.problems == []
        assert outcome.success == outcome.batches
        with session_scope(platform.database_url) as session:
            attempts = session.scalars(
                select(Batch.failed_attempts).where(Batch.id.in_(work.task_ids()))
            ).all()
        assert set(attempts) == {0}, "a database outage was counted as a provider failure"
        log = platform.processes["w1"].log_tail(2000)
        assert "database unavailable" in log, "the outage never reached a running task"
    finally:
        for process in platform.processes.values():
            process.kill()
