"""A worker killed hard (SIGKILL of the whole worker, as an OOM kill or a lost node would)
does not leave its batches STARTED until the broker's visibility timeout (an hour here, as
in production): their leases expire, the recovery pass enqueues them again, and they end
SUCCESS with the reference's findings exactly once. The dead worker's own messages, handed
out again by the broker later, change nothing.

Real Celery workers on a private Redis; short leases (3 s) and recovery passes (1 s) so the
test takes seconds; with the defaults (60 s and 30 s) the same path takes at most 90 s.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from redis import Redis

from tests.support.faultkit import Outcome, Workload, reference, verify
from tests.support.platform import Platform, sqlite_platform_for
from worker.broker import UNACKED_HASH, UNACKED_INDEX, message_task_id


@pytest.fixture
def platform(tmp_path_factory: pytest.TempPathFactory, private_redis: str) -> Iterator[Platform]:
    with sqlite_platform_for(
        tmp_path_factory,
        private_redis,
        worker=False,
        extra_env={
            "BROKER_VISIBILITY_TIMEOUT_SECONDS": "3600",  # recovery must not wait for it
            "BATCH_LEASE_SECONDS": "3",
            "RECOVERY_INTERVAL_SECONDS": "1",
        },
        kill_on_exit=True,
    ) as running:
        yield running


def events(platform: Platform, task_id: str) -> list[str]:
    with platform.client() as client:
        return [e["event"] for e in client.get(f"/batches/{task_id}/audit-log").json()]


def status(platform: Platform, task_id: str) -> str:
    with platform.client() as client:
        return str(client.get(f"/tasks/{task_id}").json()["status"])


def test_a_sigkilled_workers_batches_run_again_within_seconds_and_succeed_once(
    platform: Platform,
) -> None:
    platform.start_worker("w1", concurrency=2)
    expected = reference(platform)
    with platform.sim() as sim:  # 6 lookups of 0.8 s: a batch runs about 5 s
        sim.post("/_sim/config", json={"cnpjws": {"latency_ms": 800}}).raise_for_status()

    work = Workload(platform, label="kill")
    work.submit_many(4)
    deadline = time.monotonic() + 30
    running: list[str] = []
    while time.monotonic() < deadline and len(running) < 2:
        running = [s.task_id for s in work.submitted if status(platform, s.task_id) == "STARTED"]
        time.sleep(0.1)
    assert len(running) == 2, "two batches never ran at once"

    platform.processes["w1"].kill()  # main process and pool: nothing is acked or rejected
    killed_at = time.monotonic()
    platform.start_worker("w2", concurrency=2)

    back_after: dict[str, float] = {}
    deadline = killed_at + 120  # the promise: running again within 2 minutes
    while time.monotonic() < deadline and len(back_after) < len(running):
        for task_id in running:
            if task_id not in back_after and events(platform, task_id).count("started") >= 2:
                back_after[task_id] = time.monotonic() - killed_at
        time.sleep(0.2)
    print(
        f"  running again after the SIGKILL in {sorted(round(s, 1) for s in back_after.values())} s"
    )
    assert set(back_after) == set(running), "a killed batch did not run again within 2 minutes"

    work.wait_all_terminal(120)
    outcome = verify(work, expected, Outcome("sigkill-lease-recovery"))
    outcome.publish()
    assert outcome.problems == []
    assert outcome.success == outcome.batches
    for task_id in running:
        log = events(platform, task_id)
        assert "requeued" in log, log
        assert log.count("finished") == 1, log

    # The broker still holds the dead worker's messages in its unacked hash; after the
    # visibility timeout it hands them out again. Do that now, by hand, as kombu would.
    redis = Redis.from_url(platform.redis_url)
    queue = platform.env["AUDIT_QUEUE"]
    handed_out: list[str] = []
    for tag, raw in redis.hgetall(UNACKED_HASH).items():
        late_id = message_task_id(raw, unacked=True)
        if late_id is not None and late_id in running:
            redis.hdel(UNACKED_HASH, tag)
            redis.zrem(UNACKED_INDEX, tag)
            redis.lpush(queue, json.dumps(json.loads(raw)[0]))
            handed_out.append(late_id)
    assert sorted(handed_out) == sorted(running), "the killed runs' messages were not unacked"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (redis.llen(queue) or redis.hlen(UNACKED_HASH)):
        time.sleep(0.2)
    time.sleep(1.0)
    again = verify(work, expected, Outcome("late-duplicates"))
    assert again.problems == [], "a late duplicate changed a finished batch"
    assert again.success == again.batches
    for task_id in running:
        log = events(platform, task_id)
        assert log.count("finished") == 1, log
        assert log[-1] == "finished", log
