"""The month-end shape the locustfile drives, and the run profiles' scaling."""

from __future__ import annotations

import pytest

from loadtests.run import PRODUCTION_CONDOMINIUMS, PROFILES, scaling_note
from loadtests.shape import MonthEndPeak
from ops.capacity import CapacityInputs


def test_every_condominium_submits_within_the_window() -> None:
    peak = MonthEndPeak(condominiums=500, window_seconds=180, drain_seconds=60)
    counts = [peak.arrived(t) for t in range(0, 200)]
    assert counts[0] == 0
    assert counts[180] == 500
    assert counts[199] == 500
    assert counts == sorted(counts)


def test_arrivals_rise_to_twice_the_mean_at_the_deadline() -> None:
    peak = MonthEndPeak(condominiums=1000, window_seconds=100, drain_seconds=0)
    assert peak.arrived(50) == 250  # a quarter in the first half
    last_second = peak.arrived(100) - peak.arrived(99)
    first_second = peak.arrived(1) - peak.arrived(0)
    assert last_second == pytest.approx(2 * peak.mean_rate, rel=0.06)
    assert first_second <= 1
    # The sizing model's burst factor is this shape's: a gate passed here validates it.
    assert peak.peak_to_mean == CapacityInputs().peak_to_mean


def test_uniform_profile_spreads_evenly() -> None:
    peak = MonthEndPeak(condominiums=300, window_seconds=60, drain_seconds=0, profile="uniform")
    assert peak.arrived(30) == 150
    assert peak.peak_to_mean == 1.0


def test_users_start_within_the_second_they_arrive() -> None:
    peak = MonthEndPeak(condominiums=500, window_seconds=180, drain_seconds=60)
    busiest = max(peak.arrived(t + 1) - peak.arrived(t) for t in range(180))
    for t in range(0, 181, 10):
        tick = peak.tick(t, finished=0)
        assert tick is not None
        users, spawn_rate = tick
        assert users == peak.arrived(t) <= 500
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
    production_rate = PRODUCTION_CONDOMINIUMS / (60 * 60)
    for profile in PROFILES.values():
        assert profile.condominiums / profile.window_seconds == pytest.approx(production_rate)
    ci = PROFILES["ci"]
    # Platform start and seeding take about 10 s here; locust is bounded by the rest.
    assert ci.window_seconds + ci.drain_seconds + 5 <= 90
    assert "same arrival rate (2.78 batches/s mean" in scaling_note(ci)
