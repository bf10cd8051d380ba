"""Retry policy for provider failures: exponential backoff with jitter, then dead-letter."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    base_seconds: float = 1.0
    max_seconds: float = 600.0
    jitter_ratio: float = 0.1

    def countdown(self, failed_attempts: int, rng: random.Random | None = None) -> float:
        """Delay before the next attempt after `failed_attempts` failures: 1, 2, 4, ... capped."""
        raw = self.base_seconds * (2 ** max(failed_attempts - 1, 0))
        capped = min(raw, self.max_seconds)
        jitter = (rng or random).uniform(-self.jitter_ratio, self.jitter_ratio) * capped
        return float(max(0.0, min(capped + jitter, self.max_seconds)))

    def exhausted(self, failed_attempts: int) -> bool:
        return failed_attempts >= self.max_attempts
