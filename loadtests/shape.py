"""The month-end peak: every condominium submits its month within a window, more of them
toward the deadline.

Kept free of locust (importing locust patches the standard library with gevent), so the
tests and the run script can use it; the locustfile wraps it in a `LoadTestShape`.

Arrivals follow a rate that rises linearly from zero to twice the mean at the window's
end: ``arrived(t) = n * (t / window) ** 2``. Twice the mean is the burst factor the sizing
model assumes (`CapacityInputs.peak_to_mean`), so a run that passes the gate at this
shape validates that assumption. ``profile="uniform"`` spreads them evenly instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PROFILES = ("rising", "uniform")


@dataclass(frozen=True)
class MonthEndPeak:
    condominiums: int
    window_seconds: float
    drain_seconds: float  # after the window, how long to wait for the last results
    profile: str = "rising"

    def __post_init__(self) -> None:
        if self.condominiums < 1 or self.window_seconds <= 0 or self.drain_seconds < 0:
            raise ValueError("need condominiums >= 1, window_seconds > 0, drain_seconds >= 0")
        if self.profile not in PROFILES:
            raise ValueError(f"profile must be one of {PROFILES}, got {self.profile!r}")

    @property
    def peak_to_mean(self) -> float:
        return 2.0 if self.profile == "rising" else 1.0

    @property
    def mean_rate(self) -> float:
        """Submissions per second over the window."""
        return self.condominiums / self.window_seconds

    def arrived(self, seconds: float) -> int:
        """Condominiums that have submitted `seconds` after the window opened."""
        share = min(1.0, max(0.0, seconds / self.window_seconds))
        if self.profile == "rising":
            share = share * share
        # Round first: 0.1 + 0.2 style float noise must not add a user.
        return min(self.condominiums, math.ceil(round(self.condominiums * share, 6)))

    def tick(self, seconds: float, finished: int) -> tuple[int, float] | None:
        """(users, spawn rate) for locust, or None to stop: all finished or drain over.

        One user is one administrator with one condominium, so users = arrivals. The spawn
        rate is high enough to start each second's arrivals within that second.
        """
        if finished >= self.condominiums or seconds > self.window_seconds + self.drain_seconds:
            return None
        users = self.arrived(seconds)
        spawn_rate = max(1.0, math.ceil(self.peak_to_mean * self.mean_rate * 2))
        return users, spawn_rate
