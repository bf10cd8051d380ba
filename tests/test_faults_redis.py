"""Redis restarts mid-run (AOF on): the API says 503 while it is away, nothing accepted is
lost, and the same worker processes carry on by themselves once it is back."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from audit.db import session_scope, upgrade_database
from audit.models import Batch
from cli.processes import free_port, start_redis
from tests.support.faultkit import Outcome, Workload, reference, verify
from tests.support.platform import launch_platform, sqlite_url

# Starts and restarts its own redis-server and a platform.
pytestmark = pytest.mark.slow


def test_redis_restart_mid_run_loses_nothing_and_the_api_says_503(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    port = free_port()
    base = tmp_path_factory.mktemp("aof-redis")
    redis = start_redis(port, base / "data", base, appendonly=True)
    database_url = sqlite_url(tmp_path_factory.mktemp("db"))
    upgrade_database(database_url)
    platform = launch_platform(
        tmp_path_factory,
        f"redis://127.0.0.1:{port}",
        database_url,
        worker=False,
        extra_env={"BROKER_VISIBILITY_TIMEOUT_SECONDS": "5"},
    )
    try:
        platform.start_worker("w1", concurrency=2)
        expected = reference(platform)
        # About 3 s a batch: the worker cannot keep up with the submissions, so Redis goes
        # away with batches in flight and queued however fast the machine submits them.
        platform.configure_simulator(cnpjws={"latency_ms": 500})
        work = Workload(platform)
        work.submit_many(20)
        time.sleep(1.0)
        outcome = Outcome("redis-restart")
        outcome.in_flight_batches, outcome.in_flight_expenses = work.in_flight()
        assert outcome.in_flight_batches > 0
        worker_pid = platform.processes["w1"].pid
        spare = platform.create_condominium()
        some_task = work.submitted[0].task_id

        redis.stop()  # SIGTERM: Redis writes its AOF and exits
        down_since = time.monotonic()
        with platform.client() as client:
            started = time.monotonic()
            refused = client.post(
                "/batch-expenses",
                json={
                    "condominium_id": spare,
                    "expenses": [
                        {
                            "external_id": "while-down",
                            "supplier_cnpj": "11222333000181",
                            "amount": "10.00",
                            "date": "2026-10-10",
                            "description": "Enquanto o Redis está fora",
                            "category": "limpeza",
                        }
                    ],
                },
            )
            refused_after = time.monotonic() - started
            status = client.get(f"/tasks/{some_task}")
            ready = client.get("/readyz")
            listing = client.get("/dead-letters")
        assert refused.status_code == 503, refused.text
        assert refused_after < 5, f"the API took {refused_after:.1f}s to say 503"
        assert "queue is unavailable" in refused.json()["detail"]
        assert refused.headers["Retry-After"]
        assert status.status_code == 200  # reads come from the database
        assert listing.status_code == 200
        assert ready.status_code == 503
        assert ready.json()["checks"]["redis"].startswith("unavailable")
        with session_scope(platform.database_url) as session:
            stored = session.scalar(
                select(func.count()).select_from(Batch).where(Batch.condominium_id == spare)
            )
        assert stored == 0, "a refused batch was kept"

        time.sleep(max(0.0, 6.0 - (time.monotonic() - down_since)))
        redis = start_redis(port, base / "data", base, appendonly=True)
        platform.configure_simulator(cnpjws={"latency_ms": 150})
        work.submit_many(10)  # the API reconnects by itself

        work.wait_all_terminal(240)
        verify(work, expected, outcome)
        outcome.publish()
        assert outcome.problems == []
        assert outcome.success == outcome.batches
        worker = platform.processes["w1"]
        assert worker.pid == worker_pid, "the worker had to be restarted"
        assert worker.alive()
    finally:
        for process in platform.processes.values():
            process.kill()
        redis.stop()
