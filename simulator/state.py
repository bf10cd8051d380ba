"""The simulator's mutable state: rate windows, counters, explicit data and API keys."""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from simulator.config import ProviderConfig


class RateWindow:
    """Counts accepted requests of one endpoint; answers whether one more fits."""

    def __init__(self) -> None:
        self.accepted: deque[float] = deque()
        self.fixed_start = 0.0
        self.fixed_count = 0

    def admit(self, now: float, config: ProviderConfig, rate: float | None) -> float:
        """0 when the request fits (and is counted), else the seconds until one would fit."""
        if rate is None:
            return 0.0
        budget = rate * config.window_seconds / 60.0
        window = config.window_seconds
        if budget < 1:  # fewer than one request per window: widen it to hold exactly one
            budget, window = 1.0, 60.0 / rate
        if config.window == "fixed":
            start = math.floor(now / window) * window
            if start != self.fixed_start:
                self.fixed_start, self.fixed_count = start, 0
            if self.fixed_count + 1 > budget + 1e-9:
                return max(start + window - now, 0.001)
            self.fixed_count += 1
            return 0.0
        while self.accepted and self.accepted[0] <= now - window:
            self.accepted.popleft()
        if len(self.accepted) + 1 > budget + 1e-9:
            overflow = len(self.accepted) + 1 - math.floor(budget + 1e-9)
            return max(self.accepted[overflow - 1] + window - now, 0.001)
        self.accepted.append(now)
        return 0.0


@dataclass
class EndpointStats:
    received: int = 0
    accepted: int = 0
    over_limit: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    by_key: dict[str, int] = field(default_factory=dict)
    first_at: float | None = None
    last_at: float | None = None
    first_accepted_at: float | None = None
    last_accepted_at: float | None = None

    def arrive(self, now: float, key: str | None) -> None:
        self.received += 1
        self.first_at = now if self.first_at is None else self.first_at
        self.last_at = now
        if key is not None:
            self.by_key[key] = self.by_key.get(key, 0) + 1

    def accept(self, now: float) -> None:
        self.accepted += 1
        self.first_accepted_at = now if self.first_accepted_at is None else self.first_accepted_at
        self.last_accepted_at = now

    def served(self, status: int) -> None:
        self.by_status[str(status)] = self.by_status.get(str(status), 0) + 1

    def as_dict(self) -> dict[str, Any]:
        span = None
        if self.first_accepted_at is not None and self.last_accepted_at is not None:
            span = self.last_accepted_at - self.first_accepted_at
        return {
            "received": self.received,
            "accepted": self.accepted,
            "over_limit": self.over_limit,
            "by_status": dict(self.by_status),
            "by_key": dict(self.by_key),
            "first_at": self.first_at,
            "last_at": self.last_at,
            "first_accepted_at": self.first_accepted_at,
            "last_accepted_at": self.last_accepted_at,
            "accepted_span_seconds": span,
        }


@dataclass
class SimState:
    windows: dict[tuple[str, str], RateWindow] = field(default_factory=dict)
    stats: dict[tuple[str, str], EndpointStats] = field(default_factory=dict)
    registrations: dict[str, dict[str, Any]] = field(default_factory=dict)
    transactions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    api_keys: dict[str, float] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)

    def window(self, provider: str, endpoint: str) -> RateWindow:
        return self.windows.setdefault((provider, endpoint), RateWindow())

    def endpoint_stats(self, provider: str, endpoint: str) -> EndpointStats:
        return self.stats.setdefault((provider, endpoint), EndpointStats())

    def stats_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cnpjws": {}, "minha_receita": {}, "pluggy": {}}
        for (provider, endpoint), stats in sorted(self.stats.items()):
            out.setdefault(provider, {})[endpoint] = stats.as_dict()
        return out
