"""The month-end peak: every condominium submits its month within a window, more of them
toward the deadline.

Kept free of locust (importing locust patches the standard library with gevent), so the
tests and the run script can use it; the locustfile wraps it in a `LoadTestShape`.

Arrivals are a Poisson process whose rate rises linearly from zero to twice the mean at the
window's end, so about ``n * (t / window) ** 2`` have arrived at ``t``. Twice the mean is
the burst factor the sizing model assumes (`CapacityInputs.peak_to_mean`), so a run that
passes the gate at this shape validates that assumption. ``profile="uniform"`` keeps the
rate constant instead.

Administrators act independently: their submissions cluster only as chance has it. Locust
asks the shape for a user count once a second and starts the new users together, which
would send each second's arrivals in one burst (20 requests within 30 ms at the peak's
deadline), a load no month end has. So each user is started ahead of its time
(`LEAD_SECONDS`) and waits for its own arrival (`MonthEndPeak.arrivals`).
"""

from __future__ import annotations

import bisect
import functools
import math
import random
from dataclasses import dataclass

PROFILES = ("rising", "uniform")
# How far ahead of its arrival a user is started: locust's once-a-second tick plus the
# time its spawner takes to start a second's users.
LEAD_SECONDS = 2.0


@dataclass(frozen=True)
class MonthEndPeak:
    condominiums: int
    window_seconds: float
    drain_seconds: float  # after the window, how long to wait for the last results
    profile: str = "rising"
    seed: int = 1  # the same seed gives the same arrival times, run after run

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

    @functools.cached_property
    def arrivals(self) -> tuple[float, ...]:
        """Each condominium's submission time, in seconds after the window opens, earliest
        first: n independent draws from the rate's shape, which is a Poisson process with
        that rate given that n arrive."""
        rng = random.Random(self.seed)
        shares = sorted(rng.random() for _ in range(self.condominiums))
        if self.profile == "rising":
            # A rate proportional to t has the distribution (t / window) ** 2, inverted here.
            return tuple(self.window_seconds * math.sqrt(share) for share in shares)
        return tuple(self.window_seconds * share for share in shares)

    def arrived(self, seconds: float) -> int:
        """Condominiums that have submitted `seconds` after the window opened."""
        return bisect.bisect_right(self.arrivals, seconds)

    def tick(self, seconds: float, finished: int) -> tuple[int, float] | None:
        """(users, spawn rate) for locust, or None to stop: all finished or drain over.

        One user is one administrator with one condominium. Users are started
        `LEAD_SECONDS` before they arrive, at a rate that starts a second's arrivals well
        within the second; each then waits for its own time.
        """
        if finished >= self.condominiums or seconds > self.window_seconds + self.drain_seconds:
            return None
        users = self.arrived(seconds + LEAD_SECONDS)
        spawn_rate = max(1.0, math.ceil(self.peak_to_mean * self.mean_rate * 2))
        return users, spawn_rate
