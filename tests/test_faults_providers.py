"""Providers misbehave: timeouts, 5xx bursts, a 429 storm, then an outage longer than the
retry budget. Batches retry, the outage's batches are dead-lettered with the reason, and
one replay-all for the provider afterwards brings every batch to SUCCESS, findings once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.faultkit import Outcome, Workload, reference, verify
from tests.support.platform import Platform, sqlite_platform_for


@pytest.fixture
def platform(tmp_path_factory: pytest.TempPathFactory, private_redis: str) -> Iterator[Platform]:
    with sqlite_platform_for(
        tmp_path_factory,
        private_redis,
        worker=False,
        extra_env={"PROVIDER_TIMEOUT_SECONDS": "1", "RETRY_BACKOFF_BASE_SECONDS": "0.3"},
        kill_on_exit=True,
    ) as running:
        yield running


def stats(platform: Platform) -> dict[str, Any]:
    with platform.sim() as sim:
        body: dict[str, Any] = sim.get("/_sim/stats").json()
    return body


def test_timeouts_5xx_429_storm_and_a_long_outage_lose_nothing(platform: Platform) -> None:
    platform.start_worker("w1", concurrency=2)
    platform.start_worker("w2", concurrency=2)
    expected = reference(platform)
    outcome = Outcome("providers")
    work = Workload(platform)

    # Timeouts (longer than the client's 1 s) and 5xx bursts on a share of the calls.
    platform.configure_simulator(
        cnpjws={"timeout_rate": 0.1, "timeout_seconds": 2, "error_rate": 0.2}
    )
    work.submit_many(12)
    # A 429 storm with a short release time.
    platform.configure_simulator(
        cnpjws={"fail_next": 25, "fail_status": 429, "retry_after": True, "retry_after_seconds": 1}
    )
    work.submit_many(8)
    counts = work.wait_all_terminal(240)
    platform.configure_simulator(cnpjws={"timeout_rate": 0, "error_rate": 0})

    # An outage longer than the retry budget (5 attempts: 0.3 + 0.6 + 1.2 + 2.4 s).
    platform.configure_simulator(cnpjws={"outage": True})
    outage = Workload(platform, label="outage")
    outage.submit_many(6)
    outage_counts = outage.wait_all_terminal(120)
    outcome.in_flight_batches = len(work.submitted) + len(outage.submitted)
    outcome.in_flight_expenses = outcome.in_flight_batches * 6
    assert outage_counts["FAILURE"] == 6, outage_counts
    verify(outage, expected, Outcome("outage"))  # each FAILURE has its dead letter
    platform.configure_simulator(cnpjws={"outage": False})

    with platform.client() as client:
        letters = client.get("/dead-letters", params={"provider": "cnpjws"}).json()
        assert {letter["batch_id"] for letter in letters} >= set(outage.task_ids())
        assert all("cnpjws" in letter["error"] for letter in letters)
        replay = client.post("/dead-letters/replay", params={"provider": "cnpjws"})
        assert replay.status_code == 200, replay.text
        assert replay.json()["replayed"] == len(letters)
        again = client.post("/dead-letters/replay", params={"provider": "cnpjws"})
        assert again.json()["replayed"] == 0  # nothing left open: idempotent

    every = Workload(platform)
    every.submitted = work.submitted + outage.submitted
    every.wait_all_terminal(180)
    verify(every, expected, outcome)
    seen = stats(platform)
    print(f"  before replay: {dict(counts)}; outage: {dict(outage_counts)}")
    answers = {name: e["by_status"] for name, e in seen.get("cnpjws", {}).items()}
    print(f"  CNPJ.ws simulator answers by status: {answers}")
    outcome.publish()
    assert outcome.problems == []
    assert outcome.success == outcome.batches
