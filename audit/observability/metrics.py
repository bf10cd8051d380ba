"""The platform's Prometheus metrics, and the autoscaling signal computed on scrape.

Counters and histograms are recorded where things happen (API middleware, task, provider
calls, limiter, supplier cache). A prefork worker's children record into
prometheus_client's multiprocess files when PROMETHEUS_MULTIPROC_DIR is set (one
directory per worker pod); the worker's parent serves them all on METRICS_PORT.

The queue gauges are not recorded by anyone: `SignalCollector` reads Redis (and the open
dead letters from the database) at scrape time, the same keys KEDA reads, so the numbers
an operator sees are the numbers the autoscaler acts on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from redis import Redis
from redis.exceptions import RedisError

from audit.fairqueue import BacklogSnapshot

log = logging.getLogger(__name__)

PREFIX = "condo_audit"
WORKERS_KEY = "condo-audit:workers"  # sorted set: worker hostname -> last heartbeat (unix s)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_TASK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_WAIT_BUCKETS = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)

# In multiprocess mode an unlabelled metric opens its file as it is defined, below: the
# directory (an emptyDir or tmpfs in the pods, empty at start) must exist before that.
if _multiprocess_dir := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(_multiprocess_dir, exist_ok=True)

# API
HTTP_REQUESTS = Counter(
    f"{PREFIX}_http_requests",
    "HTTP requests by route template and status",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    f"{PREFIX}_http_request_duration_seconds",
    "HTTP request latency by route template",
    ["method", "route"],
    buckets=_LATENCY_BUCKETS,
)

# Worker
TASKS = Counter(f"{PREFIX}_tasks", "Task runs by task name and outcome", ["task", "outcome"])
TASK_DURATION = Histogram(
    f"{PREFIX}_task_duration_seconds",
    "Task run duration by task name and outcome",
    ["task", "outcome"],
    buckets=_TASK_BUCKETS,
)
RETRIES = Counter(
    f"{PREFIX}_task_retries",
    "Retries scheduled, by reason and provider",
    ["task", "reason", "provider"],
)
DEAD_LETTERS = Counter(
    f"{PREFIX}_dead_letters", "Batches dead-lettered after their last attempt", ["task", "provider"]
)
PROVIDER_REQUESTS = Counter(
    f"{PREFIX}_provider_requests",
    "Provider HTTP calls by provider, endpoint and status (code, timeout or connection_error)",
    ["provider", "endpoint", "status"],
)
PROVIDER_LATENCY = Histogram(
    f"{PREFIX}_provider_request_duration_seconds",
    "Provider HTTP call latency",
    ["provider", "endpoint"],
    buckets=_LATENCY_BUCKETS,
)
CIRCUIT_TRANSITIONS = Counter(
    f"{PREFIX}_provider_circuit_transitions",
    "Circuit breaker transitions by provider and the state entered (open, closed)",
    ["provider", "to"],
)
RATELIMIT_WAIT = Histogram(
    f"{PREFIX}_ratelimit_wait_seconds",
    "Time a granted request waited for its slot in the fleet-wide budget",
    ["budget"],
    buckets=_WAIT_BUCKETS,
)
RATELIMIT_DEFERRED = Counter(
    f"{PREFIX}_ratelimit_deferred",
    "Requests whose slot was too far away: the task was rescheduled instead",
    ["budget"],
)
SUPPLIER_CACHE = Counter(
    f"{PREFIX}_supplier_cache_lookups",
    "Supplier registrations served from the database cache (hit) or fetched (miss)",
    ["result"],
)

WEBHOOK_DELIVERIES = Counter(
    f"{PREFIX}_webhook_deliveries",
    "Webhook delivery attempts by event and outcome (delivered, retry_scheduled, failed: the "
    "last attempt failed, refused_url: the receiver's address is not allowed)",
    ["event", "outcome"],
)
WEBHOOK_DELIVERY_DURATION = Histogram(
    f"{PREFIX}_webhook_delivery_duration_seconds",
    "Time a webhook receiver took to answer one attempt",
    ["outcome"],
    buckets=_LATENCY_BUCKETS,
)
WEBHOOK_DISPATCHED = Counter(
    f"{PREFIX}_webhook_dispatched",
    "Deliveries the dispatcher enqueued because they came due (retries, lost messages)",
)


def multiprocess_dir() -> str | None:
    """prometheus_client's own variable: set, every process writes its samples there."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition_registry(*extra: Collector) -> CollectorRegistry:
    """What a /metrics endpoint serves: this process's metrics (or, in multiprocess mode,
    the merged files of every process), plus `extra` collectors."""
    from prometheus_client import REGISTRY

    registry = CollectorRegistry(auto_describe=False)
    directory = multiprocess_dir()
    if directory is not None:
        from prometheus_client.multiprocess import MultiProcessCollector

        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    else:
        registry.register(REGISTRY)
    for collector in extra:
        registry.register(collector)
    return registry


def clean_multiprocess_dir(keep_pid: int) -> None:
    """Drop the sample files a previous run of this worker left behind (not this pid's)."""
    directory = multiprocess_dir()
    if directory is None:
        return
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        if name.endswith(".db") and not name.endswith(f"_{keep_pid}.db"):
            os.remove(os.path.join(directory, name))


class BacklogReading(Protocol):
    """What the broker reader (worker.broker.Backlog) reports; the domain never parses it."""

    @property
    def queued(self) -> int: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def scheduled(self) -> int: ...
    @property
    def backlogged(self) -> int: ...
    @property
    def outstanding(self) -> int: ...


class SignalCollector(Collector):
    """The autoscaling signal and fleet state, read at scrape time.

    The queue's parts come from `read_backlog` (the broker module's reader, injected so the
    domain never parses kombu's layout): queued, in_flight, scheduled, and outstanding, exactly
    what the KEDA triggers add up.
    """

    def __init__(
        self,
        redis: Redis,
        queue: str,
        read_backlog: Callable[[], BacklogReading],
        *,
        budgets: dict[str, float | None] | None = None,
        open_dead_letters: Callable[[], int] | None = None,
        worker_ttl_seconds: float = 30.0,
        ratelimit_prefix: str = "ratelimit:",
        circuit_states: Callable[[], dict[str, str]] | None = None,
        read_tenants: Callable[[], BacklogSnapshot] | None = None,
    ) -> None:
        self.redis = redis
        self.queue = queue
        self.read_backlog = read_backlog
        self.budgets = budgets or {}
        self.open_dead_letters = open_dead_letters
        self.worker_ttl_seconds = worker_ttl_seconds
        self.ratelimit_prefix = ratelimit_prefix
        self.circuit_states = circuit_states
        self.read_tenants = read_tenants

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            f"{PREFIX}_signal_up", "Whether the scrape-time signal could be read", labels=["source"]
        )
        try:
            yield from self._queue_and_workers()
            up.add_metric(["redis"], 1)
        except RedisError as exc:
            log.warning("metrics: cannot read Redis for the queue signal: %s", exc)
            up.add_metric(["redis"], 0)
        if self.open_dead_letters is not None:
            try:
                letters = GaugeMetricFamily(
                    f"{PREFIX}_dead_letters_open", "Dead letters waiting for replay or discard"
                )
                letters.add_metric([], self.open_dead_letters())
                yield letters
                up.add_metric(["database"], 1)
            except Exception as exc:  # any driver error: the scrape must still answer
                log.warning("metrics: cannot count dead letters: %s", exc)
                up.add_metric(["database"], 0)
        yield up

    def _queue_and_workers(self) -> Iterator[GaugeMetricFamily]:
        backlog = self.read_backlog()
        seconds, _ = self.redis.time()  # Redis' clock, like the limiter's and the heartbeats'
        workers = self.redis.zcount(WORKERS_KEY, seconds - self.worker_ttl_seconds, "+inf")

        parts = GaugeMetricFamily(
            f"{PREFIX}_queue_messages",
            "Outstanding work by state: backlog (in the tenants' backlogs), queued (in the "
            "list), in_flight (reserved by a worker), scheduled (a retry waiting for its eta)",
            labels=["queue", "state"],
        )
        parts.add_metric([self.queue, "backlog"], backlog.backlogged)
        parts.add_metric([self.queue, "queued"], backlog.queued)
        parts.add_metric([self.queue, "in_flight"], backlog.in_flight)
        parts.add_metric([self.queue, "scheduled"], backlog.scheduled)
        yield parts
        outstanding = GaugeMetricFamily(
            f"{PREFIX}_queue_outstanding",
            "HLEN(backlog) + LLEN(queue) + HLEN(unacked): the sum KEDA scales the workers on",
            labels=["queue"],
        )
        outstanding.add_metric([self.queue], backlog.outstanding)
        yield outstanding
        if self.read_tenants is not None:
            # Totals and the largest backlog only: a label per tenant would be unbounded.
            snapshot = self.read_tenants()
            active = GaugeMetricFamily(
                f"{PREFIX}_backlog_tenants", "Tenants with batches waiting in their backlog"
            )
            active.add_metric([], snapshot.active_tenants)
            yield active
            largest = GaugeMetricFamily(
                f"{PREFIX}_backlog_largest_tenant_batches",
                "Batches waiting in the longest tenant backlog (`ops status` names the tenants)",
            )
            largest.add_metric([], snapshot.top[0][1] if snapshot.top else 0)
            yield largest

        live = GaugeMetricFamily(
            f"{PREFIX}_workers", "Workers whose heartbeat reached Redis recently"
        )
        live.add_metric([], workers)
        yield live

        if self.circuit_states is not None:
            circuit = GaugeMetricFamily(
                f"{PREFIX}_provider_circuit_state",
                "Each provider's fleet-wide circuit breaker: 0 closed, 1 half-open (a probe "
                "is due), 2 open (batches that need the provider wait)",
                labels=["provider"],
            )
            codes = {"closed": 0, "half_open": 1, "open": 2}
            for provider, state in sorted(self.circuit_states().items()):
                circuit.add_metric([provider], codes[state])
            yield circuit

        budget_names = sorted(self.budgets)
        if budget_names:
            from audit.ratelimit import read_budgets  # the limiter records into these metrics

            readings = read_budgets(self.redis, [self.ratelimit_prefix + n for n in budget_names])
            rate = GaugeMetricFamily(
                f"{PREFIX}_ratelimit_budget_per_minute",
                "Configured fleet-wide budget, requests per minute",
                labels=["budget"],
            )
            ahead = GaugeMetricFamily(
                f"{PREFIX}_ratelimit_backlog_seconds",
                "How far ahead the budget's next free slot is (0: free now)",
                labels=["budget"],
            )
            for name in budget_names:
                per_minute = self.budgets[name]
                if per_minute is not None:
                    rate.add_metric([name], per_minute)
                ahead.add_metric([name], readings[self.ratelimit_prefix + name].ahead_seconds)
            yield rate
            yield ahead


def heartbeat(redis: Redis, hostname: str, ttl_seconds: float) -> None:
    """Record a live worker for the `workers` gauge; forget ones silent for 10 x ttl."""
    seconds, _ = redis.time()
    now = float(seconds)
    pipe = redis.pipeline(transaction=False)
    pipe.zadd(WORKERS_KEY, {hostname: now})
    pipe.zremrangebyscore(WORKERS_KEY, "-inf", now - 10 * ttl_seconds)
    pipe.execute()


def forget_worker(redis: Redis, hostname: str) -> None:
    redis.zrem(WORKERS_KEY, hostname)
