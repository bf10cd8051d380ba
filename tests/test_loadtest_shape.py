"""The month-end shape the locustfile drives, and the run profiles' scaling."""

from __future__ import annotations

import dataclasses
import itertools
import statistics

import pytest

from loadtests.run import (
    PRODUCTION_CONDOMINIUMS,
    PROFILES,
    gate_slo,
    provider_bound_seconds,
    scaling_note,
)
from loadtests.shape import LEAD_SECONDS, MonthEndPeak
from ops.capacity import CapacityInputs


def test_every_condominium_submits_within_the_window() -> None:
    peak = MonthEndPeak(condominiums=500, window_seconds=180, drain_seconds=60)
    counts = [peak.arrived(t) for t in range(0, 200)]
    assert counts[0] == 0
    assert counts[180] == 500
    assert counts[199] == 500
    assert counts == sorted(counts)


def test_arrivals_rise_to_twice_the_mean_at_the_deadline() -> None:
    peak = MonthEndPeak(condominiums=100_000, window_seconds=1000, drain_seconds=0)
    # A quarter in the first half (binomial spread: 137 either way is one sd).
    assert peak.arrived(500) == pytest.approx(25_000, abs=600)
    last_ten_seconds = (peak.arrived(1000) - peak.arrived(990)) / 10
    first_ten_seconds = peak.arrived(10) / 10
    assert last_ten_seconds == pytest.approx(2 * peak.mean_rate, rel=0.1)
    assert first_ten_seconds < 0.05 * peak.mean_rate
    # The sizing model's burst factor is this shape's: a gate passed here validates it.
    assert peak.peak_to_mean == CapacityInputs().peak_to_mean


def test_uniform_profile_spreads_evenly() -> None:
    peak = MonthEndPeak(condominiums=3000, window_seconds=60, drain_seconds=0, profile="uniform")
    assert peak.arrived(30) == pytest.approx(1500, abs=90)
    assert peak.peak_to_mean == 1.0


def test_arrivals_are_independent_not_bunched_by_the_second() -> None:
    # The peak's deadline rate, 22 a second: a Poisson process has exponential gaps (mean
    # 45 ms, as many above the mean as a constant pace would have, one in ten under 5 ms).
    # Locust's once-a-second tick alone would put a whole second's arrivals within 30 ms.
    peak = MonthEndPeak(condominiums=2000, window_seconds=90, drain_seconds=0, profile="uniform")
    gaps = [b - a for a, b in itertools.pairwise(peak.arrivals)]
    mean = statistics.fmean(gaps)
    assert mean == pytest.approx(0.045, rel=0.05)
    assert statistics.stdev(gaps) / mean == pytest.approx(1.0, abs=0.1)
    assert sum(gap < 0.005 for gap in gaps) / len(gaps) == pytest.approx(0.105, abs=0.03)
    busiest_100ms = max(peak.arrived(t / 10) - peak.arrived(t / 10 - 0.1) for t in range(1, 901))
    assert busiest_100ms <= 10


def test_the_same_seed_gives_the_same_arrivals() -> None:
    first = MonthEndPeak(condominiums=300, window_seconds=60, drain_seconds=0, seed=7)
    again = MonthEndPeak(condominiums=300, window_seconds=60, drain_seconds=0, seed=7)
    other = MonthEndPeak(condominiums=300, window_seconds=60, drain_seconds=0, seed=8)
    assert first.arrivals == again.arrivals
    assert first.arrivals != other.arrivals
    assert list(first.arrivals) == sorted(first.arrivals)
    assert first.arrivals[0] >= 0
    assert first.arrivals[-1] < 60


def test_users_are_started_ahead_of_their_arrival() -> None:
    peak = MonthEndPeak(condominiums=500, window_seconds=180, drain_seconds=60)
    busiest = max(peak.arrived(t + 1) - peak.arrived(t) for t in range(180))
    for t in range(0, 181, 10):
        tick = peak.tick(t, finished=0)
        assert tick is not None
        users, spawn_rate = tick
        # Every user arriving within the next second is already started, and waits.
        assert peak.arrived(t + 1) <= users <= 500
        assert users == peak.arrived(t + LEAD_SECONDS)
        assert spawn_rate >= busiest


def test_the_run_stops_when_all_finished_or_the_drain_is_over() -> None:
    peak = MonthEndPeak(condominiums=40, window_seconds=14, drain_seconds=30)
    assert peak.tick(20, finished=39) is not None
    assert peak.tick(20, finished=40) is None
    assert peak.tick(44, finished=0) is not None
    assert peak.tick(44.5, finished=0) is None


def test_invalid_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="condominiums >= 1"):
        MonthEndPeak(condominiums=0, window_seconds=10, drain_seconds=0)
    with pytest.raises(ValueError, match="profile must be one of"):
        MonthEndPeak(condominiums=10, window_seconds=10, drain_seconds=0, profile="spiky")


def test_profiles_keep_production_arrival_rate_and_ci_fits_two_minutes() -> None:
    for profile in PROFILES.values():
        production_rate = PRODUCTION_CONDOMINIUMS / (profile.production_window_minutes * 60)
        assert profile.condominiums / profile.window_seconds == pytest.approx(production_rate)
    # The peak: 10,000 condominiums' month end in 15 minutes, about 11 batches a second, with
    # POST p99 under 200 ms.
    peak = PROFILES["peak"]
    assert peak.condominiums / peak.window_seconds == pytest.approx(11.1, abs=0.05)
    assert peak.slo.post_p99_ms == 200
    ci = PROFILES["ci"]
    # Platform start and seeding take about 10 s here; locust is bounded by the rest.
    assert ci.window_seconds + ci.drain_seconds + 5 <= 90
    assert "same arrival rate (2.78 batches/s mean" in scaling_note(ci)


def test_the_end_to_end_limit_is_the_provider_bound_when_the_budgets_set_the_pace() -> None:
    peak = PROFILES["peak"]
    # 1,000 Pluggy pages at 360 a minute: 166.7 s; 500 uncached lookups at 300 a minute: 100 s.
    facts = {"transaction_pages": 1000, "unique_cnpjs": 5000, "cached_cnpjs": 4500}
    assert provider_bound_seconds(facts, peak.limits) == pytest.approx(166.7, abs=0.1)
    gate = gate_slo(peak, facts)
    assert gate.e2e_p95_seconds == pytest.approx(166.7, abs=0.1)
    assert gate.post_p99_ms == 200
    # A run the budgets do not bound keeps the profile's own limit.
    small = {"transaction_pages": 40, "unique_cnpjs": 100, "cached_cnpjs": 90}
    assert gate_slo(peak, small).e2e_p95_seconds == peak.slo.e2e_p95_seconds
    unlimited = dataclasses.replace(
        peak.limits, pluggy_rate_per_minute=None, cnpj_rate_per_minute=None
    )
    assert provider_bound_seconds(facts, unlimited) == 0
