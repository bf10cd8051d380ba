"""A provider outage longer than the whole retry budget dead-letters nothing: the fleet's
circuit breaker opens, batches wait for its probe without spending attempts, and every one
ends SUCCESS with the reference's findings, no replay. A deterministic internal error is
dead-lettered at its first attempt, with the reason.

Real Celery workers, the simulator's CNPJ.ws stopped (5xx for every call), short backoff
(5 attempts take 0.3 + 0.6 + 1.2 + 2.4 = 4.5 s) and a 2 s breaker cool-down.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import update

from audit.db import session_scope
from audit.models import Expense
from tests.support.faultkit import Outcome, Workload, reference, verify
from tests.support.platform import Platform, sqlite_platform_for


@pytest.fixture
def platform(tmp_path_factory: pytest.TempPathFactory, private_redis: str) -> Iterator[Platform]:
    with sqlite_platform_for(
        tmp_path_factory,
        private_redis,
        worker=False,
        extra_env={
            "PROVIDER_TIMEOUT_SECONDS": "1",
            "RETRY_BACKOFF_BASE_SECONDS": "0.3",
            "BREAKER_FAILURE_THRESHOLD": "5",
            "BREAKER_COOLDOWN_SECONDS": "2",
            "BREAKER_MAX_WAIT_SECONDS": "600",
        },
        kill_on_exit=True,
    ) as running:
        yield running


def circuit_state(platform: Platform) -> float | None:
    text = httpx.get(f"{platform.api_url}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith('condo_audit_provider_circuit_state{provider="cnpjws"}'):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_an_outage_longer_than_the_retry_budget_dead_letters_nothing(platform: Platform) -> None:
    platform.start_workers("w1", "w2")
    expected = reference(platform)
    assert circuit_state(platform) == 0

    outage_seconds = 25  # more than five times the 4.5 s the five attempts take
    with platform.sim() as sim:
        sim.post("/_sim/config", json={"cnpjws": {"outage_seconds": outage_seconds}})
    started = time.monotonic()
    work = Workload(platform, label="outage")
    work.submit_many(12)
    seen_open = False
    while time.monotonic() - started < outage_seconds - 2:
        seen_open = seen_open or circuit_state(platform) == 2
        time.sleep(0.5)
    assert seen_open, "the breaker never showed open during the outage"
    in_flight, _ = work.in_flight()
    assert in_flight >= 10, f"only {in_flight} batches were in flight during the outage"

    counts = work.wait_all_terminal(180)
    outcome = verify(work, expected, Outcome("provider-outage-breaker"))
    outcome.in_flight_batches = in_flight
    outcome.publish()
    print(f"  after a {outage_seconds}s outage: {dict(counts)}")
    assert outcome.problems == []
    assert outcome.success == outcome.batches == 12
    assert circuit_state(platform) == 0  # the probe closed it
    with platform.client() as client:
        assert client.get("/dead-letters").json() == []
        waited = 0
        for task_id in work.task_ids():
            log = client.get(f"/batches/{task_id}/audit-log").json()
            waited += any(e["event"] == "waiting_for_provider" for e in log)
            assert all(e["event"] != "replayed" for e in log)
            attempts = client.get(f"/tasks/{task_id}").json()["failed_attempts"]
            assert attempts < 5, f"{task_id} spent {attempts} attempts"
    assert waited >= 10, f"only {waited} batches waited for the breaker"


def test_a_deterministic_internal_error_is_dead_lettered_at_once(platform: Platform) -> None:
    work = Workload(platform, label="overflow")
    task_id = work.submit_many(1)[0].task_id
    with session_scope(platform.database_url) as session:  # data no API would accept
        session.execute(
            update(Expense)
            .where(Expense.batch_id == task_id)
            .values(expense_date=dt.date(9999, 12, 31))
        )
    platform.start_worker("w1", concurrency=1)
    body = platform.wait_for_status(task_id, {"FAILURE"}, timeout=60)
    assert body["failed_attempts"] == 1
    assert "OverflowError" in body["error"] or "out of range" in body["error"], body["error"]
    assert "not retried" in body["error"]
    with platform.client() as client:
        letters = client.get("/dead-letters").json()
        log = [e["event"] for e in client.get(f"/batches/{task_id}/audit-log").json()]
    assert [letter["batch_id"] for letter in letters] == [task_id]
    assert "retried" not in log
