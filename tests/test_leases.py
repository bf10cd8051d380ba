"""Batch leases on a real Redis: kept leases are renewed by the process's one renewer thread
while their runs work, and no longer once a run ends or loses its lease."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from redis import Redis

from audit.leases import PREFIX, BatchLeases, _Renewer

LEASE = 0.6  # seconds: renewed every 0.2 s while kept


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


def test_kept_leases_live_while_their_runs_work_and_lapse_after(redis: Redis) -> None:
    leases = BatchLeases(redis, LEASE)
    first, second = leases.acquire("b1").value, leases.acquire("b2").value
    assert first is not None
    assert second is not None
    with leases.kept("b1", first):
        with leases.kept("b2", second):
            time.sleep(3 * LEASE)  # three leases long: alive only if renewed
            assert redis.get(PREFIX + "b2") == second.encode()
        time.sleep(2 * LEASE)
        assert redis.get(PREFIX + "b1") == first.encode()
        assert redis.get(PREFIX + "b2") is None  # its run ended: no longer renewed
    time.sleep(1.5 * LEASE)
    assert redis.get(PREFIX + "b1") is None


def test_a_lease_taken_over_is_not_renewed_and_the_others_still_are(redis: Redis) -> None:
    leases = BatchLeases(redis, LEASE)
    lost, kept = leases.acquire("lost").value, leases.acquire("kept").value
    assert lost is not None
    assert kept is not None
    with leases.kept("lost", lost), leases.kept("kept", kept):
        redis.set(PREFIX + "lost", "run:someone-else", px=10_000)
        time.sleep(3 * LEASE)
        assert redis.get(PREFIX + "lost") == b"run:someone-else"
        assert redis.get(PREFIX + "kept") == kept.encode()


def test_runs_on_several_threads_share_the_renewer(redis: Redis) -> None:
    leases = BatchLeases(redis, LEASE)
    errors: list[str] = []

    def run(n: int) -> None:
        value = leases.acquire(f"t{n}").value
        assert value is not None
        with leases.kept(f"t{n}", value):
            time.sleep(2 * LEASE)
            if redis.get(PREFIX + f"t{n}") != value.encode():
                errors.append(f"t{n}")
        leases.release(f"t{n}", value)

    def renewers() -> int:
        return [t.name for t in threading.enumerate()].count("lease")

    before = renewers()
    threads = [threading.Thread(target=run, args=(n,)) for n in range(5)]
    for thread in threads:
        thread.start()
    time.sleep(LEASE)
    assert renewers() == before + 1
    for thread in threads:
        thread.join()
    assert errors == []


def test_the_renewer_ends_when_idle_and_a_later_lease_starts_another(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_Renewer, "IDLE_SECONDS", 2 * LEASE)
    leases = BatchLeases(redis, LEASE)

    def renewers() -> set[threading.Thread]:
        # Other tests' renewers may end meanwhile: only the threads this one starts count.
        return {t for t in threading.enumerate() if t.name == "lease"}

    before = renewers()
    value = leases.acquire("early").value
    assert value is not None
    with leases.kept("early", value):
        time.sleep(0.05)
    started = renewers() - before
    assert len(started) == 1
    (first,) = started
    first.join(timeout=4 * LEASE)
    assert not first.is_alive()  # idle: no thread left behind

    later = leases.acquire("later").value
    assert later is not None
    with leases.kept("later", later):
        time.sleep(3 * LEASE)  # alive only if a new renewer renews it
        assert redis.get(PREFIX + "later") == later.encode()
        assert len(renewers() - before) == 1
