"""A batch whose message the broker lost (a Redis crash without persistence) is found and
enqueued again by `condo-audit batches requeue-lost`; a batch still queued is left alone."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis import Redis

from audit.db import upgrade_database
from tests.support.helpers import active_registration, expense, make_cnpj
from tests.support.platform import Platform, launch_platform, sqlite_url
from worker.broker import read_backlog, task_ids_in_broker


@pytest.fixture
def idle_platform(
    tmp_path_factory: pytest.TempPathFactory, redis_server: str
) -> Iterator[Platform]:
    database_url = sqlite_url(tmp_path_factory.mktemp("db"))
    upgrade_database(database_url)
    running = launch_platform(tmp_path_factory, redis_server, database_url, worker=False)
    yield running
    running.stop()


def test_a_batch_lost_by_the_broker_is_requeued_once(idle_platform: Platform) -> None:
    platform = idle_platform
    supplier = make_cnpj("requeue-supplier")
    with platform.sim() as sim:
        sim.put(f"/_sim/registrations/{supplier}", json=active_registration()).raise_for_status()
    condominium = platform.create_condominium()
    with platform.client() as client:
        lost, kept = (
            client.post(
                "/batch-expenses",
                json={"condominium_id": condominium, "expenses": [expense(name, supplier)]},
            ).json()["task_id"]
            for name in ("lost", "kept")
        )
    redis = Redis.from_url(platform.redis_url)
    queue = platform.env["AUDIT_QUEUE"]
    assert task_ids_in_broker(redis, queue) == {lost, kept}
    # The broker loses one message, as a crash before its AOF fsync would.
    for raw in redis.lrange(queue, 0, -1):
        message = raw.decode() if isinstance(raw, bytes) else raw
        if lost in message:
            redis.lrem(queue, 1, message)
    assert task_ids_in_broker(redis, queue) == {kept}

    quiet_hour = platform.cli("batches", "requeue-lost", "--quiet-minutes", "60")
    assert "requeued 0 of 0" in quiet_hour.stdout  # nothing quiet for that long yet
    dry = platform.cli("batches", "requeue-lost", "--quiet-minutes", "0", "--dry-run")
    assert "would requeue 1 of 2" in dry.stdout
    assert task_ids_in_broker(redis, queue) == {kept}
    out = platform.cli("batches", "requeue-lost", "--quiet-minutes", "0").stdout
    assert lost in out
    assert kept not in out
    assert task_ids_in_broker(redis, queue) == {lost, kept}
    # The kept batch was not enqueued twice: two messages in all, in the queue list or
    # waiting in the tenant's backlog for their fair turn.
    backlog = read_backlog(redis, queue)
    assert backlog.queued + backlog.backlogged == 2

    platform.start_worker("recovery", concurrency=1)
    for task_id in (lost, kept):
        assert platform.wait_for_status(task_id, {"SUCCESS", "FAILURE"})["status"] == "SUCCESS"
    with platform.client() as client:
        log = [e["event"] for e in client.get(f"/batches/{lost}/audit-log").json()]
    assert log == ["submitted", "requeued", "started", "finished"]
