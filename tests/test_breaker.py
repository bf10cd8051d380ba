"""The fleet's circuit breakers on a real redis-server: when they open, who probes, and
what a success clears."""

from __future__ import annotations

import time

import pytest
from redis import Redis

from audit.breaker import CircuitBreakers
from audit.providers.base import ProviderCircuitOpen

PROVIDER = "cnpjws"


def breakers(redis: Redis, cooldown: float = 0.3) -> CircuitBreakers:
    return CircuitBreakers(redis, failure_threshold=3, cooldown_seconds=cooldown)


def test_consecutive_failures_open_the_breaker(redis: Redis) -> None:
    fleet = breakers(redis)
    assert [fleet.failure(PROVIDER) for _ in range(3)] == [False, False, True]
    with pytest.raises(ProviderCircuitOpen) as opened:
        fleet.before_call(PROVIDER)
    assert 0 < opened.value.wait_seconds <= 0.3
    assert fleet.state(PROVIDER).state == "open"


def test_a_success_between_failures_starts_the_count_again(redis: Redis) -> None:
    fleet = breakers(redis)
    fleet.failure(PROVIDER)
    fleet.failure(PROVIDER)
    permit = fleet.before_call(PROVIDER)
    assert permit.failures_counted
    assert not permit.probe
    fleet.success(PROVIDER, permit)
    assert fleet.state(PROVIDER).failures == 0
    # Two more failures are not three in a row: the breaker stays closed.
    assert [fleet.failure(PROVIDER), fleet.failure(PROVIDER)] == [False, False]
    assert not fleet.before_call(PROVIDER).probe


def test_a_call_that_began_clean_leaves_failures_counted_in_flight_to_the_next_success(
    redis: Redis,
) -> None:
    fleet = breakers(redis)
    in_flight = fleet.before_call(PROVIDER)
    assert not in_flight.failures_counted
    fleet.failure(PROVIDER)  # another process's call fails meanwhile
    fleet.success(PROVIDER, in_flight)  # no round trip: the breaker was clean when it began
    assert fleet.state(PROVIDER).failures == 1
    later = fleet.before_call(PROVIDER)
    fleet.success(PROVIDER, later)
    assert fleet.state(PROVIDER).failures == 0


def test_after_the_cool_down_one_call_probes_and_its_success_closes(redis: Redis) -> None:
    fleet = breakers(redis, cooldown=0.2)
    for _ in range(3):
        fleet.failure(PROVIDER)
    time.sleep(0.25)
    probe = fleet.before_call(PROVIDER)
    assert probe.probe
    assert probe.failures_counted
    with pytest.raises(ProviderCircuitOpen):
        fleet.before_call(PROVIDER)  # only one call of the fleet probes
    fleet.success(PROVIDER, probe)
    state = fleet.state(PROVIDER)
    assert (state.state, state.failures) == ("closed", 0)
    assert not fleet.before_call(PROVIDER).failures_counted


def test_a_failed_probe_opens_it_for_another_cool_down(redis: Redis) -> None:
    fleet = breakers(redis, cooldown=0.2)
    for _ in range(3):
        fleet.failure(PROVIDER)
    time.sleep(0.25)
    assert fleet.before_call(PROVIDER).probe
    assert fleet.failure(PROVIDER)  # reopened
    with pytest.raises(ProviderCircuitOpen) as opened:
        fleet.before_call(PROVIDER)
    assert opened.value.wait_seconds > 0.1
