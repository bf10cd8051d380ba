"""Scale-in loses nothing, and KEDA's formula counts exactly the outstanding work.

Real processes: a private redis-server, the simulator, the API and Celery workers.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator

import pytest
from redis import Redis
from sqlalchemy import func, select

from audit.db import session_scope, upgrade_database
from audit.models import Batch, Finding
from tests.support.helpers import expense, make_cnpj
from tests.support.platform import Platform, launch_platform, sqlite_url
from worker.broker import read_backlog


@pytest.fixture
def idle_platform(
    tmp_path_factory: pytest.TempPathFactory, redis_server: str
) -> Iterator[Platform]:
    """A platform whose test starts (and stops) its own workers."""
    database_url = sqlite_url(tmp_path_factory.mktemp("db"))
    upgrade_database(database_url)
    running = launch_platform(
        tmp_path_factory, redis_server, database_url, worker=False,
        extra_env={"RETRY_BACKOFF_BASE_SECONDS": "30"},
    )  # fmt: skip
    yield running
    running.stop()


def submit_unknown_suppliers(platform: Platform, condominium: str, suppliers: int) -> str:
    """A batch whose suppliers the registry does not know: one finding per expense."""
    cnpjs = [make_cnpj(f"unknown-{uuid.uuid4()}") for _ in range(suppliers)]
    with platform.sim() as sim:
        for cnpj in cnpjs:
            sim.put(f"/_sim/registrations/{cnpj}", json={"found": False}).raise_for_status()
    items = [expense(f"u{i}", cnpj) for i, cnpj in enumerate(cnpjs)]
    with platform.client() as client:
        response = client.post(
            "/batch-expenses", json={"condominium_id": condominium, "expenses": items}
        )
    assert response.status_code == 202, response.text
    return str(response.json()["task_id"])


def unfinished(platform: Platform) -> int:
    with session_scope(platform.database_url) as session:
        query = select(func.count()).where(Batch.status.not_in(["SUCCESS", "FAILURE"]))
        return int(session.scalar(query) or 0)


def test_sigterm_mid_task_finishes_the_task_and_loses_nothing(idle_platform: Platform) -> None:
    platform = idle_platform
    platform.configure_simulator(cnpjws={"latency_ms": 400})
    condominium = platform.create_condominium()
    platform.start_worker("worker-a", concurrency=1)
    task_id = submit_unknown_suppliers(platform, condominium, suppliers=8)
    platform.wait_for_status(task_id, {"STARTED"}, timeout=30)
    time.sleep(0.8)  # well inside the ~3.2 s the lookups take

    worker = platform.processes["worker-a"]
    worker.signal(signal.SIGTERM)
    worker.popen.wait(60)  # warm shutdown: the running task completes first
    assert worker.popen.returncode == 0, worker.log_tail()

    platform.start_worker("worker-b", concurrency=1)  # picks up anything redelivered
    status = platform.wait_for_status(task_id, {"SUCCESS", "FAILURE"}, timeout=60)
    assert status["status"] == "SUCCESS"
    with session_scope(platform.database_url) as session:
        fingerprints = list(
            session.scalars(select(Finding.fingerprint).where(Finding.batch_id == task_id))
        )
    assert len(fingerprints) == 8
    assert len(set(fingerprints)) == 8


def test_the_formula_equals_outstanding_work_while_busy(idle_platform: Platform) -> None:
    platform = idle_platform
    redis = Redis.from_url(platform.redis_url)
    queue = platform.env["AUDIT_QUEUE"]
    platform.configure_simulator(cnpjws={"latency_ms": 700})
    condominium = platform.create_condominium()
    for _ in range(6):
        submit_unknown_suppliers(platform, condominium, suppliers=1)
    platform.start_worker("busy", concurrency=2)

    exact = 0
    samples = 0
    saw_both_parts = False
    saw_backlog = False
    deadline = time.monotonic() + 60
    while unfinished(platform) and time.monotonic() < deadline:
        before = unfinished(platform)
        backlog = read_backlog(redis, queue)
        after = unfinished(platform)
        if before == after and before > 0:
            samples += 1
            # Two moments differ by up to the worker's concurrency: a task that has committed
            # SUCCESS is acknowledged a moment later, and kombu moves a message from the list
            # to the `unacked` hash in two steps. (Backlog to list is one atomic step.)
            assert abs(backlog.outstanding - before) <= 2, (backlog, before)
            exact += backlog.outstanding == before
            saw_both_parts |= backlog.queued > 0 and backlog.in_flight > 0
            saw_backlog |= backlog.backlogged > 0  # batches waiting for their fair turn
        time.sleep(0.05)
    assert unfinished(platform) == 0
    assert saw_both_parts
    assert saw_backlog
    assert samples >= 10
    assert exact / samples >= 0.8, (exact, samples)
    # The last task is acknowledged a moment after its SUCCESS commit: then nothing is left.
    deadline = time.monotonic() + 5
    while read_backlog(redis, queue).outstanding and time.monotonic() < deadline:
        time.sleep(0.05)
    assert read_backlog(redis, queue).outstanding == 0


def test_the_formula_counts_retries_waiting_for_their_countdown(idle_platform: Platform) -> None:
    platform = idle_platform
    redis = Redis.from_url(platform.redis_url)
    queue = platform.env["AUDIT_QUEUE"]
    platform.configure_simulator(cnpjws={"outage": True})
    condominium = platform.create_condominium()
    tasks = [submit_unknown_suppliers(platform, condominium, suppliers=1) for _ in range(4)]
    platform.start_worker("retrying", concurrency=2)
    for task_id in tasks:  # each fails once, then waits ~30 s for its retry
        platform.wait_for_status(task_id, {"RETRY"}, timeout=30)
    deadline = time.monotonic() + 10
    backlog = read_backlog(redis, queue)
    while backlog.scheduled < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
        backlog = read_backlog(redis, queue)
    assert backlog.scheduled == 4
    assert backlog.queued == 0
    assert backlog.outstanding == unfinished(platform) == 4
