"""Fair queuing on a real redis-server: deficit round robin over tenants' backlogs, FIFO within a
tenant, weights, and a move from backlog to queue list that never loses or doubles a batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from redis import Redis

from audit.fairqueue import FairQueue, pending_key
from simulator.testing import RedisServer
from worker.broker import read_backlog, task_ids_in_broker, tenant_backlogs

QUEUE = "audit-fair"


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with RedisServer() as server:
        yield server.url


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


def message(batch_id: str) -> str:
    """A stand-in message carrying the batch id where kombu's consumer reads the task id."""
    return json.dumps({"headers": {"id": batch_id}, "body": ""})


def drain(redis: Redis, fq: FairQueue, n: int) -> list[str]:
    """What workers would take, one free slot at a time (the list kept at one message)."""
    taken: list[str] = []
    for _ in range(n):
        fq.dispatch(1)
        raw = cast("bytes | None", redis.rpop(QUEUE))  # kombu's consumer BRPOPs this end
        if raw is None:
            break
        taken.append(json.loads(raw)["headers"]["id"])
    return taken


def test_a_tenant_behind_a_flood_is_served_in_turn(redis: Redis) -> None:
    fq = FairQueue(redis, QUEUE, quantum=1)
    for i in range(100):
        fq.push(f"a{i}", "A", message(f"a{i}"), cost=1, ahead=0)
    for i in range(5):
        fq.push(f"b{i}", "B", message(f"b{i}"), cost=1, ahead=0)
    order = drain(redis, fq, 12)
    # Equal weights alternate: B's five are all out within the first ten dispatched.
    assert [b for b in order if b.startswith("b")] == ["b0", "b1", "b2", "b3", "b4"]
    assert order.index("b4") <= 10
    # FIFO within each tenant.
    a_order = [a for a in order if a.startswith("a")]
    assert a_order == [f"a{i}" for i in range(len(a_order))]


def test_three_tenants_share_equally_and_the_work_is_conserved(redis: Redis) -> None:
    fq = FairQueue(redis, QUEUE, quantum=1)
    for tenant, count in (("A", 60), ("C", 60), ("B", 5)):
        for i in range(count):
            fq.push(f"{tenant}{i}", tenant, message(f"{tenant}{i}"), ahead=0)
    first = drain(redis, fq, 15)
    assert Counter(b[0] for b in first) == {"A": 5, "B": 5, "C": 5}
    # With only one tenant left, every call still dispatches (nothing idles).
    rest = drain(redis, fq, 200)
    assert len(first) + len(rest) == 125
    assert fq.total() == 0
    assert tenant_backlogs(redis, QUEUE).active_tenants == 0


def test_weights_and_batch_sizes_set_the_shares(redis: Redis) -> None:
    fq = FairQueue(redis, QUEUE, quantum=10)
    fq.set_weight("A", 3)
    for i in range(200):
        fq.push(f"A{i}", "A", message(f"A{i}"), cost=5, ahead=0)
        fq.push(f"B{i}", "B", message(f"B{i}"), cost=5, ahead=0)
        fq.push(f"C{i}", "C", message(f"C{i}"), cost=20, ahead=0)
    shares = Counter(b[0] for b in drain(redis, fq, 120))
    # Credit per round: A 30, B 10, C 10 expenses; A's and B's batches cost 5, C's 20.
    assert shares["A"] == pytest.approx(3 * shares["B"], rel=0.15)
    assert shares["B"] == pytest.approx(4 * shares["C"], rel=0.3)
    assert fq.weights() == {"A": 3.0}
    fq.set_weight("A", 1)
    assert fq.weights() == {}
    with pytest.raises(ValueError, match="weight"):
        fq.set_weight("A", 0)


def test_the_queue_list_is_only_topped_up_to_its_target(redis: Redis) -> None:
    fq = FairQueue(redis, QUEUE)
    for i in range(10):
        fq.push(f"a{i}", "A", message(f"a{i}"), ahead=2)
    assert redis.llen(QUEUE) == 2
    assert fq.total() == 8
    assert fq.dispatch(2) == 0  # already full
    assert fq.dispatch(5) == 3
    assert redis.llen(QUEUE) == 5


def test_a_batch_is_backlogged_once_and_counted_once_everywhere(redis: Redis) -> None:
    fq = FairQueue(redis, QUEUE)
    assert fq.push("x", "A", message("x"), ahead=0) is True
    assert fq.push("x", "A", message("x"), ahead=0) is False  # a requeue of a waiting batch
    for i in range(3):
        fq.push(f"b{i}", "B", message(f"b{i}"), ahead=0)
    assert fq.waiting("A") == 1
    snapshot = tenant_backlogs(redis, QUEUE, top=1)
    assert (snapshot.total, snapshot.active_tenants, snapshot.top) == (4, 2, [("B", 3)])
    fq.dispatch(2)
    backlog = read_backlog(redis, QUEUE)
    assert (backlog.backlogged, backlog.queued, backlog.outstanding) == (2, 2, 4)
    assert backlog.key_lengths[pending_key(QUEUE)] == 2
    # requeue-lost treats backlogged and queued batches alike: held, not lost.
    assert task_ids_in_broker(redis, QUEUE) == {"x", "b0", "b1", "b2"}


def test_every_move_keeps_the_count_of_batches(redis: Redis) -> None:
    """Whatever the interleaving of pushes and dispatches, backlog + list = batches accepted."""
    fq = FairQueue(redis, QUEUE, quantum=3)
    accepted = 0
    for i in range(300):
        tenant = "ABCDE"[i % 5] if i % 3 else "A"
        accepted += fq.push(f"{i}", tenant, message(f"{i}"), cost=1 + i % 7, ahead=i % 4)
        if i % 11 == 0:
            fq.dispatch(i % 9)
        assert fq.total() + redis.llen(QUEUE) == accepted
    ids = [json.loads(raw)["headers"]["id"] for raw in redis.lrange(QUEUE, 0, -1)]
    assert len(ids) == len(set(ids))
    assert set(ids).isdisjoint(fq.batch_ids())


def test_the_backlogged_message_is_the_one_send_task_publishes(redis_url: str) -> None:
    """The dispatcher moves messages built at submission: they must be what Celery sends."""
    from audit.settings import Settings
    from worker.celery_app import create_celery_app
    from worker.enqueue import celery_message

    app = create_celery_app(Settings(redis_url=redis_url))
    headers = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    app.send_task(
        "audit.process_batch_expenses", args=["b-1"], task_id="b-1", queue="probe", headers=headers
    )
    client = Redis.from_url(redis_url)
    sent = json.loads(cast("bytes", client.rpop("probe")))
    built = json.loads(celery_message("b-1", headers, "probe"))
    for message in (sent, built):
        message["properties"].pop("delivery_tag")  # a fresh uuid per publish
        message["properties"].pop("reply_to")  # the publishing app's id
        message["headers"].pop("origin")  # the publishing host and pid
    assert built == sent


def test_a_batch_far_larger_than_the_quantum_is_dispatched_in_one_call(redis: Redis) -> None:
    fq = FairQueue(redis, QUEUE, quantum=1)
    fq.push("huge", "A", message("huge"), cost=1000, ahead=0)
    for i in range(3):
        fq.push(f"b{i}", "B", message(f"b{i}"), cost=400, ahead=0)
    # Credits grow one quantum a round; idle rounds are skipped, not stepped through.
    order = drain(redis, fq, 4)
    assert order == ["b0", "b1", "huge", "b2"]  # B's 400s fit twice in A's 1000


def test_set_weight_from_the_command_line(redis_url: str, tmp_path: Path) -> None:
    from audit.auth import create_tenant
    from audit.db import session_scope, upgrade_database
    from audit.models import Tenant

    database_url = f"sqlite:///{tmp_path / 'weights.db'}"
    upgrade_database(database_url)
    with session_scope(database_url) as session:
        tenant_id = create_tenant(session, "Administradora Grande").id
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url, "AUDIT_QUEUE": QUEUE}

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli", *argv], env=env, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip

    done = cli("tenants", "set-weight", tenant_id, "3")
    assert done.returncode == 0, done.stderr
    assert FairQueue(Redis.from_url(redis_url), QUEUE).weights() == {tenant_id: 3.0}
    with session_scope(database_url) as session:
        assert session.get(Tenant, tenant_id).fair_weight == 3.0  # type: ignore[union-attr]
    assert f"{tenant_id}  weight 3  Administradora Grande" in cli("tenants", "list").stdout
    for argv, reason in (
        ((tenant_id, "0"), "weight must be greater than 0"),
        (("no-such-tenant", "2"), "tenant no-such-tenant does not exist"),
    ):
        refused = cli("tenants", "set-weight", *argv)
        assert refused.returncode != 0
        assert reason in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1  # one line, no traceback
