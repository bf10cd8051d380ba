"""Provider budgets across a fleet of real Celery worker processes, measured at the simulator."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from audit.db import session_scope, upgrade_database
from audit.models import DeadLetter, SupplierRegistration
from tests.support.helpers import (
    BUSY_MACHINE_WAIT_SECONDS,
    active_registration,
    expense,
    make_cnpj,
)
from tests.support.platform import Platform, launch_platform, sqlite_url

RATE_PER_MINUTE = 240  # 4 lookups a second for the whole fleet


@pytest.fixture
def fleet(tmp_path_factory: pytest.TempPathFactory, redis_server: str) -> Iterator[Platform]:
    """The platform with the CNPJ.ws budget at RATE_PER_MINUTE and no workers yet."""
    database_url = sqlite_url(tmp_path_factory.mktemp("db"))
    upgrade_database(database_url)
    running = launch_platform(
        tmp_path_factory,
        redis_server,
        database_url,
        worker=False,
        extra_env={
            "CNPJWS_RATE_PER_MINUTE": str(RATE_PER_MINUTE),
            "CNPJ_PROVIDERS": '["cnpjws", "minha_receita"]',
            "RETRY_BACKOFF_BASE_SECONDS": "0.5",
        },
    )
    yield running
    running.stop()


def start_four_processes(platform: Platform) -> None:
    platform.start_workers("fleet-a", "fleet-b")


def submit_all(
    platform: Platform, condominium: str, batches: list[list[dict[str, Any]]]
) -> list[str]:
    tasks = []
    with platform.client() as client:
        for items in batches:
            response = client.post(
                "/batch-expenses", json={"condominium_id": condominium, "expenses": items}
            )
            assert response.status_code == 202, response.text
            tasks.append(str(response.json()["task_id"]))
    return tasks


def wait_all(
    platform: Platform, tasks: list[str], timeout: float = BUSY_MACHINE_WAIT_SECONDS
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    return [
        platform.wait_for_status(task, {"SUCCESS", "FAILURE"}, max(deadline - time.monotonic(), 1))
        for task in tasks
    ]


def cnpjws_stats(platform: Platform) -> dict[str, Any]:
    with platform.sim() as sim:
        stats: dict[str, Any] = sim.get("/_sim/stats").json()
    return dict(stats.get("cnpjws", {}).get("lookup", {})) or next(
        iter(stats.get("cnpjws", {}).values()), {}
    )


def dead_letters(platform: Platform) -> int:
    with session_scope(platform.database_url) as session:
        return int(session.scalar(select(func.count()).select_from(DeadLetter)) or 0)


def test_four_processes_keep_to_the_budget_and_use_it(fleet: Platform) -> None:
    with fleet.sim() as sim:
        sim.post(
            "/_sim/config",
            json={"cnpjws": {"rate_per_minute": RATE_PER_MINUTE, "window_seconds": 10}},
        ).raise_for_status()
    condominium = fleet.create_condominium()
    batches = [
        [expense(f"b{b}e{i}", make_cnpj(f"budget-{b}-{i}")) for i in range(5)] for b in range(16)
    ]
    tasks = submit_all(fleet, condominium, batches)
    start_four_processes(fleet)
    # A bound against hangs (the budget, not this, sets the pace): on a busy machine the four
    # processes took most of the old two minutes to come up.
    statuses = wait_all(fleet, tasks, timeout=240)
    assert {s["status"] for s in statuses} == {"SUCCESS"}

    stats = cnpjws_stats(fleet)
    assert stats["accepted"] == 80
    assert stats["over_limit"] == 0
    achieved = (stats["accepted"] - 1) / stats["accepted_span_seconds"] * 60
    print(
        f"\nachieved {achieved:.1f}/min of {RATE_PER_MINUTE}/min ({achieved / RATE_PER_MINUTE:.1%})"
    )
    assert achieved >= 0.9 * RATE_PER_MINUTE
    assert achieved <= RATE_PER_MINUTE


def test_fifty_batches_sharing_twenty_unknown_cnpjs_cost_twenty_lookups(fleet: Platform) -> None:
    shared = [make_cnpj(f"shared-{uuid.uuid4()}") for _ in range(20)]
    with fleet.sim() as sim:
        sim.post("/_sim/config", json={"cnpjws": {"latency_ms": 100}}).raise_for_status()
        for cnpj in shared:
            sim.put(f"/_sim/registrations/{cnpj}", json=active_registration()).raise_for_status()
    condominium = fleet.create_condominium()
    batches = [
        [expense(f"s{b}e{i}", shared[(b + i * 3) % 20]) for i in range(6)] for b in range(50)
    ]
    tasks = submit_all(fleet, condominium, batches)
    start_four_processes(fleet)
    assert {s["status"] for s in wait_all(fleet, tasks)} == {"SUCCESS"}
    stats = cnpjws_stats(fleet)
    print(f"\n50 batches, {len(set(shared))} unknown CNPJs: {stats['received']} lookups")
    assert stats["received"] == 20
    assert sorted(stats["by_key"].values()) == [1] * 20


def test_429_storms_and_outages_end_in_success_without_dead_letters(fleet: Platform) -> None:
    condominium = fleet.create_condominium()
    batches = [[expense(f"r{b}e{i}", make_cnpj(f"storm-{uuid.uuid4()}")) for i in range(3)]
               for b in range(8)]  # fmt: skip
    with fleet.sim() as sim:
        sim.post(
            "/_sim/config",
            json={
                "cnpjws": {"fail_next": 12, "fail_status": 429},
                "minha_receita": {"outage": True},
            },
        ).raise_for_status()
    tasks = submit_all(fleet, condominium, batches)
    start_four_processes(fleet)
    statuses = wait_all(fleet, tasks)
    assert {s["status"] for s in statuses} == {"SUCCESS"}
    assert dead_letters(fleet) == 0
    assert cnpjws_stats(fleet)["by_status"].get("429") == 12  # the storm did happen
    with fleet.sim() as sim:
        sim.post("/_sim/config", json={"minha_receita": {"outage": False}}).raise_for_status()
        sim.post("/_sim/config", json={"cnpjws": {"outage_seconds": 6}}).raise_for_status()
    more = submit_all(fleet, condominium, [[expense("o1", make_cnpj(f"out-{uuid.uuid4()}"))]])
    assert wait_all(fleet, more)[0]["status"] == "SUCCESS"
    assert dead_letters(fleet) == 0


def test_the_fallback_provider_answers_when_the_first_is_down(fleet: Platform) -> None:
    supplier = make_cnpj(f"fallback-{uuid.uuid4()}")
    with fleet.sim() as sim:
        sim.put(f"/_sim/registrations/{supplier}", json=active_registration()).raise_for_status()
        sim.post("/_sim/config", json={"cnpjws": {"outage": True}}).raise_for_status()
    condominium = fleet.create_condominium()
    fleet.start_worker("fallback", concurrency=1)
    try:
        [task] = submit_all(fleet, condominium, [[expense("fb1", supplier)]])
        assert wait_all(fleet, [task])[0]["status"] == "SUCCESS"
    finally:
        fleet.configure_simulator(cnpjws={"outage": False})
    with session_scope(fleet.database_url) as session:
        registration = session.get(SupplierRegistration, supplier)
        assert registration is not None
        assert registration.provider == "minha_receita"
        assert registration.status == "ATIVA"


def test_pluggy_pages_and_one_api_key_for_many_fetches(fleet: Platform) -> None:
    account = f"acc-{uuid.uuid4().hex[:8]}"
    supplier = make_cnpj("pluggy-supplier")
    transactions = [
        {
            "id": f"t{i}",
            "date": f"2026-10-{10 + i % 11:02d}",
            "amount": -(100 + i),
            "receiver_cnpj": supplier,
        }
        for i in range(1234)
    ]
    with fleet.sim() as sim:
        sim.put(f"/_sim/registrations/{supplier}", json=active_registration()).raise_for_status()
        sim.put(f"/_sim/accounts/{account}/transactions", json=transactions).raise_for_status()
    condominium = fleet.create_condominium(account)
    batches = [[expense(f"p{b}", supplier, amount=f"{100 + b}.00", date="2026-10-15")]
               for b in range(6)]  # fmt: skip
    tasks = submit_all(fleet, condominium, batches)
    start_four_processes(fleet)
    assert {s["status"] for s in wait_all(fleet, tasks)} == {"SUCCESS"}
    with fleet.sim() as sim:
        stats = sim.get("/_sim/stats").json()["pluggy"]
    assert stats["auth"]["received"] == 1
    # 1234 transactions inside every batch's match window: 3 pages of 500 a fetch
    assert stats["transactions"]["received"] == 6 * 3
