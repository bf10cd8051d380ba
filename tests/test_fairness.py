"""Fairness between tenants with real workers: a tenant's few batches finish within
max(3 x their time alone, their time alone + 3 s) while other tenants flood the queue; the
fleet stays busy; a worker SIGKILLed mid-run loses and duplicates nothing.

Real processes: a private redis-server, the simulator, the API and Celery workers (prefork).
Figures are printed (and appended to $FAIRNESS_FIGURES when set) for the report.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis
from sqlalchemy import func, select

from audit.db import session_scope
from audit.fairqueue import FairQueue
from audit.models import Batch
from tests.support.faultkit import Outcome, Workload, child_pids, reference, verify
from tests.support.helpers import expense, make_cnpj
from tests.support.platform import Platform, sqlite_platform_for
from worker.broker import read_backlog

TERMINAL = ("SUCCESS", "FAILURE")
CONCURRENCY = 2


@pytest.fixture
def idle_platform(
    tmp_path_factory: pytest.TempPathFactory, private_redis: str
) -> Iterator[Platform]:
    """No worker yet; a short visibility timeout so a killed worker's message returns soon."""
    with sqlite_platform_for(
        tmp_path_factory,
        private_redis,
        worker=False,
        extra_env={
            "BROKER_VISIBILITY_TIMEOUT_SECONDS": "5",
            # A month-end flood is hundreds of POSTs at once: fairness is tested here, not the
            # per-tenant API budget (which would answer 429 past its burst).
            "API_RATE_PER_MINUTE": "100000",
            "API_RATE_BURST": "10000",
        },
        kill_on_exit=True,  # the flood is left unfinished on purpose
    ) as running:
        yield running


def as_tenant(platform: Platform, name: str) -> Platform:
    """The same platform, seen by another tenant (its own API key)."""
    tenant_id, key = platform.new_tenant(name)
    return dataclasses.replace(platform, tenant_id=tenant_id, api_key=key)


def submit(client: httpx.Client, condominium: str, expenses: int = 2) -> str:
    """A small batch whose suppliers are new (each costs real provider lookups)."""
    items = [
        expense(f"e{i}", make_cnpj(f"fair-{uuid.uuid4()}"), invoice=f"NF-{i}")
        for i in range(expenses)
    ]
    response = client.post(
        "/batch-expenses", json={"condominium_id": condominium, "expenses": items}
    )
    assert response.status_code == 202, response.text
    return str(response.json()["task_id"])


def submit_many(tenant: Platform, count: int) -> list[str]:
    condominium = tenant.create_condominium()
    with tenant.client() as client:
        return [submit(client, condominium) for _ in range(count)]


def finished(platform: Platform, ids: list[str]) -> int:
    with session_scope(platform.database_url) as session:
        query = select(func.count()).where(Batch.id.in_(ids), Batch.status.in_(TERMINAL))
        return int(session.scalar(query) or 0)


def wait_finished(platform: Platform, ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while finished(platform, ids) < len(ids):
        assert time.monotonic() < deadline, f"{finished(platform, ids)}/{len(ids)} finished"
        time.sleep(0.05)


def span_seconds(platform: Platform, ids: list[str]) -> float:
    """From the first submission to the last finish, as the database recorded them."""
    with session_scope(platform.database_url) as session:
        first, last = session.execute(
            select(func.min(Batch.submitted_at), func.max(Batch.finished_at)).where(
                Batch.id.in_(ids)
            )
        ).one()
        statuses = set(session.scalars(select(Batch.status).where(Batch.id.in_(ids))))
    assert statuses == {"SUCCESS"}, statuses
    assert first is not None
    assert last is not None
    return float((last - first).total_seconds())


def publish(line: str) -> None:
    print(line)
    target = os.environ.get("FAIRNESS_FIGURES")
    if target:
        with Path(target).open("a") as out:
            out.write(line + "\n")


def busy_share(platform: Platform, seconds: float) -> float:
    """Share of samples in which every worker slot held a batch (while a backlog waited)."""
    redis = Redis.from_url(platform.redis_url)
    queue = platform.env["AUDIT_QUEUE"]
    busy = samples = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        backlog = read_backlog(redis, queue)
        if backlog.backlogged > 0:
            samples += 1
            busy += backlog.in_flight >= CONCURRENCY
        time.sleep(0.02)
    assert samples > 10
    return busy / samples


def fairness_run(platform: Platform, flooders: int, flood: int) -> None:
    platform.configure_simulator(cnpjws={"latency_ms": 60})
    platform.start_worker("worker", concurrency=CONCURRENCY)
    small = as_tenant(platform, "small")
    big = [platform] + [as_tenant(platform, f"big-{i}") for i in range(1, flooders)]

    warm_up = submit_many(small, 2 * CONCURRENCY)  # every pool process has its connections
    wait_finished(platform, warm_up, 60)
    alone_ids = submit_many(small, 5)
    wait_finished(platform, alone_ids, 60)
    alone = span_seconds(platform, alone_ids)

    flood_ids = [batch for tenant in big for batch in submit_many(tenant, flood)]
    busy = busy_share(platform, 1.5)  # only the flooders have work: no slot idles
    # First in, first out, the small tenant would wait for every one of these.
    waiting = len(flood_ids) - finished(platform, flood_ids)
    behind_ids = submit_many(small, 5)
    wait_finished(platform, behind_ids, 120)
    behind = span_seconds(platform, behind_ids)
    flood_left = len(flood_ids) - finished(platform, flood_ids)

    bound = max(3 * alone, alone + 3)
    publish(
        f"FAIRNESS tenants={flooders + 1} flood={flooders}x{flood} small=5 "
        f"alone={alone:.2f}s behind={behind:.2f}s ratio={behind / alone:.2f} "
        f"bound={bound:.2f}s flood_waiting_at_submit={waiting} "
        f"flood_unfinished_at_end={flood_left} busy_share={busy:.2f}"
    )
    assert flood_left > 0.3 * len(flood_ids), "the flood was not ahead the whole time"
    assert behind <= bound, (alone, behind)
    assert busy >= 0.8  # work-conserving: the flood alone keeps every slot busy


def test_five_batches_finish_within_the_bound_behind_another_tenant_s_flood(
    idle_platform: Platform,
) -> None:
    fairness_run(idle_platform, flooders=1, flood=150)


def test_five_batches_finish_within_the_bound_behind_two_floods(idle_platform: Platform) -> None:
    fairness_run(idle_platform, flooders=2, flood=80)


def test_a_weight_sets_a_tenant_s_share(idle_platform: Platform) -> None:
    platform = idle_platform
    heavy = as_tenant(platform, "heavy")
    FairQueue(Redis.from_url(platform.redis_url), platform.env["AUDIT_QUEUE"]).set_weight(
        heavy.tenant_id, 3
    )
    light_ids = submit_many(platform, 40)
    heavy_ids = submit_many(heavy, 40)
    platform.start_worker("worker", concurrency=CONCURRENCY)
    wait_finished(platform, heavy_ids, 120)
    light_done = finished(platform, light_ids)
    # Weight 3 against 1: about three of the heavy tenant's batches per light one.
    assert 8 <= light_done <= 20, light_done


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(idle_platform: Platform) -> None:
    platform = idle_platform
    platform.configure_simulator(cnpjws={"latency_ms": 80})
    platform.start_workers("w1", "w2")
    expected = reference(platform)
    other = as_tenant(platform, "other")
    work_a, work_b = Workload(platform), Workload(other)
    work_a.submit_many(24)
    work_b.submit_many(8)

    time.sleep(1.5)  # batches of both tenants are running
    platform.processes["w1"].kill()  # main process and pool, as an OOM kill would
    children = child_pids(platform.processes["w2"].pid)
    assert children
    os.kill(children[0], signal.SIGKILL)  # one pool process of the other worker
    platform.start_worker("w1", concurrency=2)

    work_a.wait_all_terminal(180)
    work_b.wait_all_terminal(180)
    for work in (work_a, work_b):
        outcome = verify(work, expected, Outcome("fair-queue-sigkill"))
        outcome.publish()
        assert outcome.problems == []
        assert outcome.success == len(work.submitted)
    # The killed worker's own messages come back from the unacked hash one restore sweep (10 s)
    # after the visibility timeout (5 s); a duplicate that met a live lease looks again once
    # the lease (10 s) could have lapsed. Then they find their batches finished and are
    # acknowledged: nothing stays outstanding.
    redis = Redis.from_url(platform.redis_url)
    deadline = time.monotonic() + 60
    while (backlog := read_backlog(redis, platform.env["AUDIT_QUEUE"])).outstanding:
        assert time.monotonic() < deadline, backlog
        time.sleep(0.5)
