"""Circuit breakers per provider, shared by the whole fleet through Redis.

closed -> open after BREAKER_FAILURE_THRESHOLD consecutive failed calls (timeouts,
connection errors, 5xx; a 429 is pacing and a 400 is an answer, neither counts);
open -> half-open after BREAKER_COOLDOWN_SECONDS, where exactly one call of the fleet goes
through as the probe; the probe's success closes the breaker, its failure opens it for
another cool-down. While a provider's breaker is open, a batch that needs it is
rescheduled for when the probe is due, without spending one of its attempts
(worker/tasks.py); an outage is the provider's state, not the batch's failure.

Why not pybreaker: its Redis storage (CircuitRedisStorage) keeps the state and the failure
counter in separate keys updated by separate commands, so two workers can both decide to
open or both probe; and its half-open state lets every caller through until one call
finishes. A fleet of prefork processes needs each transition to be one atomic step, which a
few lines of Lua on the Redis the limiter and the fleet locks already use give us, with
Redis' clock (the limiter's too) instead of each host's. No new dependency either.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import cast

from redis import Redis

from audit.observability import metrics
from audit.providers.base import ProviderCircuitOpen

log = logging.getLogger(__name__)

PREFIX = "circuit:"
STATES = ("closed", "half_open", "open")
_KEEP_MS = 7 * 24 * 3600 * 1000  # an idle breaker's record is forgotten after a week

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS[1] breaker hash, KEYS[2] probe key; ARGV[1] cool-down ms, ARGV[2] probe ttl ms.
# Returns {verdict, wait ms, failures counted (0 or 1)}: 0 call, 1 call as the probe, 2 wait.
_ALLOW = (
    _NOW
    + """
if redis.call('HGET', KEYS[1], 'state') ~= 'open' then
  return {0, 0, redis.call('EXISTS', KEYS[1])}
end
local due = tonumber(redis.call('HGET', KEYS[1], 'opened_at')) + tonumber(ARGV[1])
if now < due then
  return {2, due - now, 1}
end
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[2]) then
  return {1, 0, 1}
end
-- Another call is the probe: look again after its answer, or a cool-down at most.
return {2, math.min(math.max(redis.call('PTTL', KEYS[2]), 100), tonumber(ARGV[1])), 1}
"""
)

# KEYS[1] breaker, KEYS[2] probe; ARGV[1] threshold, ARGV[2] keep ms.
# Returns the transition: 'opened', 'reopened' (a failed probe) or '' (none).
_FAILURE = (
    _NOW
    + """
if redis.call('HGET', KEYS[1], 'state') == 'open' then
  redis.call('HSET', KEYS[1], 'opened_at', now)
  redis.call('DEL', KEYS[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 'reopened'
end
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if failures >= tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', now)
  redis.call('DEL', KEYS[2])
  return 'opened'
end
return ''
"""
)

# KEYS[1] breaker, KEYS[2] probe. Returns 'closed' when it closed an open breaker, else ''.
# Either way the failures counted so far were not consecutive: the record goes.
_SUCCESS = """
if redis.call('HGET', KEYS[1], 'state') == 'open' then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 'closed'
end
redis.call('DEL', KEYS[1])
return ''
"""


@dataclass(frozen=True)
class Permit:
    """What before_call found: whether this call is the half-open probe, and whether the
    breaker had failures counted (or was open) when the call began."""

    probe: bool
    failures_counted: bool


@dataclass(frozen=True)
class BreakerState:
    provider: str
    state: str  # closed, half_open or open
    failures: int
    opened_for_seconds: float | None


class CircuitBreakers:
    """The fleet's breakers, one Redis hash per provider."""

    def __init__(
        self,
        redis: Redis,
        *,
        failure_threshold: int = 5,
        cooldown_seconds: float = 15.0,
        probe_timeout_seconds: float = 30.0,
    ) -> None:
        self.redis = redis
        self.failure_threshold = failure_threshold
        self.cooldown_seconds = cooldown_seconds
        self.probe_timeout_seconds = probe_timeout_seconds
        self._allow = redis.register_script(_ALLOW)
        self._failure = redis.register_script(_FAILURE)
        self._success = redis.register_script(_SUCCESS)

    @staticmethod
    def _keys(provider: str) -> list[str]:
        return [PREFIX + provider, PREFIX + provider + ":probe"]

    def before_call(self, provider: str) -> Permit:
        """Raise ProviderCircuitOpen while the breaker is open; else the call's permit."""
        verdict, wait_ms, counted = cast(
            "list[int]",
            self._allow(
                keys=self._keys(provider),
                args=[int(self.cooldown_seconds * 1000), int(self.probe_timeout_seconds * 1000)],
            ),
        )
        if verdict == 2:
            raise ProviderCircuitOpen(provider, int(wait_ms) / 1000)
        return Permit(probe=verdict == 1, failures_counted=counted == 1)

    def release_probe(self, provider: str) -> None:
        """The probe did not call after all (no budget now): let another call probe."""
        self.redis.delete(self._keys(provider)[1])

    def failure(self, provider: str) -> bool:
        """Count a failed call; True when the breaker is open after it (opened or reopened)."""
        raw = self._failure(keys=self._keys(provider), args=[self.failure_threshold, _KEEP_MS])
        transition = raw.decode() if isinstance(raw, bytes) else str(raw or "")
        if transition == "opened":
            self._transition(provider, "open", "opened after consecutive failures")
        elif transition == "reopened":
            self._transition(provider, "open", "probe failed; open for another cool-down")
        return transition != ""

    def success(self, provider: str, permit: Permit) -> None:
        """An answer from the provider: it is up, the breaker closes and its count of
        failures starts again. A call that began with nothing counted skips the round trip
        (most calls, on a healthy day); failures counted while it was in flight are cleared
        by the next call's success instead."""
        if not permit.failures_counted:
            return
        raw = self._success(keys=self._keys(provider))
        if (raw.decode() if isinstance(raw, bytes) else str(raw or "")) == "closed":
            self._transition(provider, "closed", "probe succeeded")

    def _transition(self, provider: str, to: str, why: str) -> None:
        metrics.CIRCUIT_TRANSITIONS.labels(provider, to).inc()
        log.warning("circuit breaker of %s %s: %s", provider, to, why)

    def state(self, provider: str) -> BreakerState:
        """For metrics and operators: where the breaker stands now (Redis' clock)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.time()
        pipe.hgetall(PREFIX + provider)
        (seconds, micros), raw = pipe.execute()
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        failures = int(fields.get("failures", 0))
        if fields.get("state") != "open":
            return BreakerState(provider, "closed", failures, None)
        opened_for = (int(seconds) * 1000 + int(micros) // 1000 - int(fields["opened_at"])) / 1000
        state = "open" if opened_for < self.cooldown_seconds else "half_open"
        return BreakerState(provider, state, failures, opened_for)
