"""Scaling simulator: replays a month-end load through KEDA and the HPA, second by second.

It answers "how many worker pods, how big a backlog, and when is everything done?" before a
peak, without a cluster. The model follows the controllers' published algorithms:

- KEDA reads the outstanding work (queued list + ``unacked`` hash, the chart's formula) every
  ``pollingInterval`` and hands it to the HPA as an external ``AverageValue`` metric; it also
  scales 0 <-> 1 itself when ``minReplicaCount`` is 0.
- The HPA (every ``sync_seconds``, 15 s by default) proposes ``ceil(metric / target)`` unless the
  ratio ``metric / (target * current)`` is within ``tolerance`` of 1, stabilizes it (lowest
  recommendation of the scale-up window, highest of the scale-down window) and applies the
  scale-up/scale-down policies (Pods/Percent per period, ``selectPolicy``), as in
  kube-controller-manager's ``normalizeDesiredReplicasWithBehaviors``.
- A new pod serves ``pod_startup_seconds`` after it is created; each pod runs ``concurrency``
  tasks at a time, each task (one batch) holding its slot for ``task_seconds``.
- Provider budgets (CNPJ lookups and Pluggy requests per minute) are shared by the whole fleet,
  as the platform's Redis limiter makes them: a batch starts only when the budget has room for
  its lookups, so past the budget more pods only wait.
- A load may name its tenants, each with its own arrival times (`Load.from_file`, the
  two-tenant month-end the load test writes): free slots then go to the tenants with work
  waiting in equal shares, the fluid limit of the platform's deficit round robin, and the
  summary says when each tenant's last batch finished.

Pure: no Kubernetes, no Celery, no Redis. matplotlib is imported only to draw.
"""

from __future__ import annotations

import csv
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

PolicyKind = Literal["Pods", "Percent"]
SelectPolicy = Literal["Max", "Min", "Disabled"]
Shape = Literal["uniform", "month-end", "burst"]

EPSILON = 1e-9
CHART_VALUES = Path(__file__).resolve().parents[1] / "helm" / "condo-audit" / "values.yaml"


@dataclass(frozen=True)
class ScalingPolicy:
    kind: PolicyKind
    value: int
    period_seconds: int


@dataclass(frozen=True)
class ScalingRules:
    """One direction of ``spec.behavior`` of an autoscaling/v2 HPA."""

    stabilization_seconds: int
    policies: tuple[ScalingPolicy, ...]
    select: SelectPolicy = "Max"


# The HPA's defaults when a direction of spec.behavior is left out (autoscaling/v2).
DEFAULT_SCALE_UP = ScalingRules(
    0, (ScalingPolicy("Pods", 4, 15), ScalingPolicy("Percent", 100, 15)), "Max"
)
DEFAULT_SCALE_DOWN = ScalingRules(300, (ScalingPolicy("Percent", 100, 15),), "Max")


@dataclass(frozen=True)
class Autoscaling:
    """The ScaledObject and the HPA KEDA makes from it."""

    min_replicas: int = 1
    max_replicas: int = 20
    target_per_replica: float = 4.0
    polling_interval_seconds: int = 15
    cooldown_seconds: int = 300
    activation_target: float = 0.0
    sync_seconds: int = 15
    tolerance: float = 0.1
    scale_up: ScalingRules = DEFAULT_SCALE_UP
    scale_down: ScalingRules = DEFAULT_SCALE_DOWN
    # KEDA's metrics server reads Redis on each HPA query unless a trigger sets
    # useCachedMetrics; then the HPA sees the value of the last pollingInterval read.
    use_cached_metrics: bool = False
    # False models keda.enabled=false: the Deployment stays at min_replicas.
    enabled: bool = True


@dataclass(frozen=True)
class Workers:
    concurrency: int = 4
    task_seconds: float = 2.0
    pod_startup_seconds: float = 30.0

    @property
    def batches_per_second_per_pod(self) -> float:
        return self.concurrency / self.task_seconds


# Published or configured budgets, requests per minute (the platform's *_RATE_PER_MINUTE
# defaults): CNPJ.ws public tier 3, minha-receita 300, Pluggy 360 per endpoint.
PROVIDER_BUDGETS: dict[str, float] = {"cnpjws": 3.0, "minha_receita": 300.0, "pluggy": 360.0}


@dataclass(frozen=True)
class Providers:
    """Fleet-wide budgets and what one batch spends of them (None = no limit).

    Defaults: the chart's CNPJ providers tried in turn (CNPJ.ws, then minha-receita), so their
    budgets add up; per batch, the synthetic 10,000-condominium month of `condo-audit workload`
    (31,401 unique supplier CNPJs, all uncached in a first month: 3.14 lookups per batch;
    10,072 transaction pages: 1.0072 Pluggy requests per batch).
    """

    cnpj_per_minute: float | None = PROVIDER_BUDGETS["cnpjws"] + PROVIDER_BUDGETS["minha_receita"]
    cnpj_lookups_per_batch: float = 3.1401
    pluggy_per_minute: float | None = PROVIDER_BUDGETS["pluggy"]
    pluggy_requests_per_batch: float = 1.0072


@dataclass(frozen=True)
class Load:
    """N condominiums submitting their month's batches within a window; or, when `tenants`
    is given, each tenant's batches at the offsets (seconds) listed for it."""

    condominiums: int = 10_000
    batches_per_condominium: int = 1
    window_minutes: float = 60.0
    shape: Shape = "month-end"
    tenants: tuple[tuple[str, tuple[float, ...]], ...] = ()

    @classmethod
    def from_file(cls, path: Path) -> Load:
        """`{"tenants": {"name": [offset seconds, ...], ...}}` (loadtests.fairness writes it)."""
        import json

        data = json.loads(path.read_text(encoding="utf-8"))
        raw = data.get("tenants") if isinstance(data, dict) else None
        if not isinstance(raw, dict) or not raw:
            raise ValueError(f"{path}: expected {{'tenants': {{name: [offsets...]}}}}")
        tenants = []
        for name, offsets in raw.items():
            if not isinstance(offsets, list) or not all(
                isinstance(o, (int, float)) and o >= 0 for o in offsets
            ):
                raise ValueError(f"{path}: tenant {name!r} needs a list of offsets >= 0 seconds")
            tenants.append((str(name), tuple(sorted(float(o) for o in offsets))))
        count = sum(len(o) for _, o in tenants)
        window = max((o[-1] for _, o in tenants if o), default=0.0) / 60.0
        return cls(
            condominiums=count, window_minutes=window, shape="uniform", tenants=tuple(tenants)
        )

    @property
    def tenant_names(self) -> list[str]:
        return [name for name, _ in self.tenants]

    def tenant_arrivals(self, name: str, second: int) -> float:
        offsets = dict(self.tenants)[name]
        return float(sum(1 for o in offsets if second <= o < second + 1))

    @property
    def total_batches(self) -> float:
        if self.tenants:
            return float(sum(len(o) for _, o in self.tenants))
        return float(self.condominiums * self.batches_per_condominium)

    @property
    def window_seconds(self) -> float:
        return self.window_minutes * 60.0

    def cumulative(self, x: float) -> float:
        """Batches submitted by second x (exact, so per-second arrivals sum to the total)."""
        if self.tenants:
            return float(sum(1 for _, offsets in self.tenants for o in offsets if o < x))
        total, w = self.total_batches, self.window_seconds
        if self.shape == "burst" or w <= 0:
            return total if x > 0 else 0.0
        u = min(max(x / w, 0.0), 1.0)
        if self.shape == "uniform":
            return total * u
        # month-end: a triangle, quiet at the start and end, peaking mid-window at 2x average.
        if u <= 0.5:
            return total * 2.0 * u * u
        return total * (1.0 - 2.0 * (1.0 - u) ** 2)

    def arrivals(self, second: int) -> float:
        return self.cumulative(second + 1) - self.cumulative(second)

    @property
    def last_arrival_second(self) -> int:
        if self.tenants:
            return int(max((o[-1] for _, o in self.tenants if o), default=0.0))
        if self.shape == "burst":
            return 0
        return max(0, math.ceil(self.window_seconds) - 1)


@dataclass(frozen=True)
class Scenario:
    autoscaling: Autoscaling = field(default_factory=Autoscaling)
    workers: Workers = field(default_factory=Workers)
    providers: Providers = field(default_factory=Providers)
    load: Load = field(default_factory=Load)
    # Where the parameters came from, printed with the summary.
    source: str = "built-in defaults"


@dataclass(frozen=True)
class Sample:
    """One second of the simulation; the recorder writes the same columns from a cluster."""

    t_seconds: int
    arrivals: float
    queued: float
    in_flight: float
    scheduled: float
    outstanding: float
    metric: float
    desired_replicas: int
    ready_replicas: int
    completions: float
    completed_total: float
    cnpj_per_minute_used: float
    pluggy_per_minute_used: float


CSV_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Sample))


@dataclass(frozen=True)
class Summary:
    total_batches: float
    peak_replicas: int
    peak_replicas_at_seconds: int
    peak_outstanding: float
    peak_outstanding_at_seconds: int
    drain_seconds: int | None
    back_to_min_seconds: int | None
    window_seconds: float
    limiting_factor: str
    pod_rate_at_peak: float
    provider_rate: float | None
    tenant_finished_seconds: dict[str, int | None] = field(default_factory=dict)

    def lines(self) -> list[str]:
        def clock(s: float | None) -> str:
            if s is None:
                return "not within the simulated time"
            return f"{s / 60:.1f} min ({int(s)} s)"

        after = (
            ""
            if self.drain_seconds is None
            else f", {clock(max(0.0, self.drain_seconds - self.window_seconds))} after the window"
        )
        provider = (
            "unlimited" if self.provider_rate is None else f"{self.provider_rate:.2f} batches/s"
        )
        return [
            f"batches submitted     {self.total_batches:,.0f} within {clock(self.window_seconds)}",
            f"peak replicas         {self.peak_replicas} at {clock(self.peak_replicas_at_seconds)}",
            f"peak backlog          {self.peak_outstanding:,.0f} batches (queued + in flight) "
            f"at {clock(self.peak_outstanding_at_seconds)}",
            f"time to drain         {clock(self.drain_seconds)}{after}",
            f"back to min replicas  {clock(self.back_to_min_seconds)}",
            f"pace set by           {self.limiting_factor} (pods at peak: "
            f"{self.pod_rate_at_peak:.2f} batches/s, provider budgets: {provider})",
        ] + [
            f"tenant {name:<14} last batch done at {clock(done)}"
            for name, done in self.tenant_finished_seconds.items()
        ]


@dataclass(frozen=True)
class Result:
    scenario: Scenario
    samples: list[Sample]
    summary: Summary

    def rows(self) -> list[dict[str, float | int]]:
        return [{c: getattr(s, c) for c in CSV_COLUMNS} for s in self.samples]


# ----------------------------------------------------------------------------- HPA


@dataclass
class _Hpa:
    """The part of the HPA controller's state that shapes its decisions."""

    rules: Autoscaling
    recommendations: list[tuple[int, int]] = field(default_factory=list)
    up_events: list[tuple[int, int]] = field(default_factory=list)
    down_events: list[tuple[int, int]] = field(default_factory=list)

    def desired(self, now: int, current: int, metric: float) -> int:
        a = self.rules
        ratio = metric / (a.target_per_replica * current)
        if abs(ratio - 1.0) <= a.tolerance:
            raw = current
        else:
            raw = math.ceil(metric / a.target_per_replica - EPSILON)
        stabilized = self._stabilize(now, current, raw)
        return self._apply_policies(now, current, stabilized)

    def record(self, now: int, before: int, after: int) -> None:
        if after > before:
            self.up_events.append((now, after - before))
        elif after < before:
            self.down_events.append((now, before - after))

    def _stabilize(self, now: int, current: int, raw: int) -> int:
        up_cutoff = now - self.rules.scale_up.stabilization_seconds
        down_cutoff = now - self.rules.scale_down.stabilization_seconds
        up_rec = down_rec = raw
        for at, rec in self.recommendations:
            if at > up_cutoff:
                up_rec = min(up_rec, rec)
            if at > down_cutoff:
                down_rec = max(down_rec, rec)
        keep = min(up_cutoff, down_cutoff)
        self.recommendations = [(at, r) for at, r in self.recommendations if at > keep]
        self.recommendations.append((now, raw))
        recommendation = current
        recommendation = max(recommendation, up_rec)
        return min(recommendation, down_rec)

    def _changed_in(self, now: int, period: int, events: list[tuple[int, int]]) -> int:
        return sum(n for at, n in events if at > now - period)

    def _period_start(self, now: int, current: int, period: int) -> int:
        added = self._changed_in(now, period, self.up_events)
        removed = self._changed_in(now, period, self.down_events)
        return current - added + removed

    def _apply_policies(self, now: int, current: int, desired: int) -> int:
        a = self.rules
        if desired > current:
            limit = self._limit(now, current, a.scale_up, up=True)
            limit = max(limit, current)
            return min(desired, a.max_replicas, limit)
        if desired < current:
            limit = self._limit(now, current, a.scale_down, up=False)
            limit = min(limit, current)
            return max(desired, max(a.min_replicas, 1), limit)
        return desired

    def _limit(self, now: int, current: int, rules: ScalingRules, *, up: bool) -> int:
        if rules.select == "Disabled" or not rules.policies:
            return current
        proposals = []
        for p in rules.policies:
            start = self._period_start(now, current, p.period_seconds)
            if up:
                proposal = (
                    start + p.value
                    if p.kind == "Pods"
                    else math.ceil(start * (1 + p.value / 100) - EPSILON)
                )
            else:
                proposal = start - p.value if p.kind == "Pods" else int(start * (1 - p.value / 100))
            proposals.append(proposal)
        # Max picks the policy allowing the biggest change, in either direction.
        if up:
            return max(proposals) if rules.select == "Max" else min(proposals)
        return min(proposals) if rules.select == "Max" else max(proposals)


# ----------------------------------------------------------------------------- simulation


def simulate(scenario: Scenario, *, max_seconds: int | None = None) -> Result:
    """Runs until the backlog is gone and the fleet is back at its minimum (or max_seconds)."""
    a, w, p, load = scenario.autoscaling, scenario.workers, scenario.providers, scenario.load
    if a.target_per_replica <= 0 or w.concurrency <= 0 or w.task_seconds <= 0:
        raise ValueError("target, concurrency and task seconds must be positive")
    limit = max_seconds if max_seconds is not None else (load.last_arrival_second + 7 * 24 * 3600)
    hpa = _Hpa(a)
    floor = a.min_replicas
    pods: list[float] = [0.0] * floor  # each pod's ready time
    queued = 0.0
    cohorts: deque[tuple[float, float]] = deque()  # (finish time, batches)
    in_flight = 0.0
    completed = 0.0
    polled = 0.0
    last_active = 0
    cnpj_rate = None if p.cnpj_per_minute is None else p.cnpj_per_minute / 60.0
    pluggy_rate = None if p.pluggy_per_minute is None else p.pluggy_per_minute / 60.0
    # Token buckets holding one second of budget: a per-minute limit spread evenly.
    cnpj_tokens = cnpj_rate or 0.0
    pluggy_tokens = pluggy_rate or 0.0
    samples: list[Sample] = []
    drained_at: int | None = None
    back_at: int | None = None
    # Per tenant (when the load names them): waiting, started batches by finish time, done.
    waiting = {name: 0.0 for name in load.tenant_names}
    splits: deque[tuple[float, dict[str, float]]] = deque()
    done = {name: 0.0 for name in load.tenant_names}
    expected = {name: float(len(offsets)) for name, offsets in load.tenants}
    finished_at: dict[str, int | None] = {name: None for name in load.tenant_names}

    for t in range(limit + 1):
        completions = 0.0
        while cohorts and cohorts[0][0] <= t + EPSILON:
            n = cohorts.popleft()[1]
            completions += n
            in_flight -= n
        while splits and splits[0][0] <= t + EPSILON:
            for name, n in splits.popleft()[1].items():
                done[name] += n
                if finished_at[name] is None and done[name] >= expected[name] - 1e-6:
                    finished_at[name] = t
        completed += completions
        arrivals = load.arrivals(t) if t <= load.last_arrival_second else 0.0
        queued += arrivals
        for name in waiting:
            waiting[name] += load.tenant_arrivals(name, t) if t <= load.last_arrival_second else 0.0

        if cnpj_rate is not None:
            cnpj_tokens = min(cnpj_rate, cnpj_tokens + cnpj_rate) if t else cnpj_tokens
        if pluggy_rate is not None:
            pluggy_tokens = min(pluggy_rate, pluggy_tokens + pluggy_rate) if t else pluggy_tokens
        ready = sum(1 for r in pods if r <= t + EPSILON)
        starts = min(queued, max(0.0, ready * w.concurrency - in_flight))
        if cnpj_rate is not None and p.cnpj_lookups_per_batch > 0:
            starts = min(starts, cnpj_tokens / p.cnpj_lookups_per_batch)
        if pluggy_rate is not None and p.pluggy_requests_per_batch > 0:
            starts = min(starts, pluggy_tokens / p.pluggy_requests_per_batch)
        starts = max(0.0, starts)
        if starts > EPSILON:
            queued -= starts
            in_flight += starts
            cohorts.append((t + w.task_seconds, starts))
            if waiting:
                split = fair_split(waiting, starts)
                for name, n in split.items():
                    waiting[name] -= n
                splits.append((t + w.task_seconds, split))
            cnpj_tokens -= starts * p.cnpj_lookups_per_batch if cnpj_rate is not None else 0.0
            pluggy_tokens -= (
                starts * p.pluggy_requests_per_batch if pluggy_rate is not None else 0.0
            )
        if queued < EPSILON:
            queued = 0.0
        outstanding = queued + in_flight

        replicas = len(pods)
        if a.enabled:
            if t % a.polling_interval_seconds == 0:
                polled = outstanding
                active = polled > a.activation_target + EPSILON
                if active:
                    last_active = t
                if replicas == 0 and active:
                    pods = [t + w.pod_startup_seconds] * max(1, a.min_replicas)
                elif (
                    a.min_replicas == 0
                    and replicas > 0
                    and not active
                    and t - last_active >= a.cooldown_seconds
                ):
                    pods = []
            replicas = len(pods)
            if t % a.sync_seconds == 0 and replicas > 0:
                metric = polled if a.use_cached_metrics else outstanding
                new = hpa.desired(t, replicas, metric)
                hpa.record(t, replicas, new)
                pods = _resize(pods, new, t + w.pod_startup_seconds)
        ready = sum(1 for r in pods if r <= t + EPSILON)
        samples.append(
            Sample(
                t_seconds=t,
                arrivals=arrivals,
                queued=queued,
                in_flight=in_flight,
                scheduled=0.0,
                outstanding=outstanding,
                metric=polled if a.use_cached_metrics else outstanding,
                desired_replicas=len(pods),
                ready_replicas=ready,
                completions=completions,
                completed_total=completed,
                cnpj_per_minute_used=starts * p.cnpj_lookups_per_batch * 60.0,
                pluggy_per_minute_used=starts * p.pluggy_requests_per_batch * 60.0,
            )
        )
        if drained_at is None and t >= load.last_arrival_second and outstanding < EPSILON:
            drained_at = t
        if drained_at is not None and len(pods) <= floor:
            back_at = t
            break

    summary = _summarize(scenario, samples, drained_at, back_at)
    summary = replace(summary, tenant_finished_seconds=finished_at)
    return Result(scenario, samples, summary)


def fair_split(waiting: Mapping[str, float], starts: float) -> dict[str, float]:
    """Slots that free up go to the tenants with work waiting, in equal shares (a tenant that
    needs less than its share leaves the rest to the others): DRR with equal weights, fluid."""
    left = {name: n for name, n in waiting.items() if n > EPSILON}
    split = dict.fromkeys(waiting, 0.0)
    remaining = starts
    while remaining > EPSILON and left:
        share = remaining / len(left)
        for name in list(left):
            take = min(share, left[name])
            split[name] += take
            left[name] -= take
            remaining -= take
            if left[name] <= EPSILON:
                del left[name]
    return split


def provider_caps(p: Providers) -> dict[str, float]:
    """Batches per second each provider budget allows the whole fleet."""
    caps: dict[str, float] = {}
    if p.cnpj_per_minute is not None and p.cnpj_lookups_per_batch > 0:
        caps["CNPJ lookups"] = p.cnpj_per_minute / 60.0 / p.cnpj_lookups_per_batch
    if p.pluggy_per_minute is not None and p.pluggy_requests_per_batch > 0:
        caps["Pluggy requests"] = p.pluggy_per_minute / 60.0 / p.pluggy_requests_per_batch
    return caps


def _resize(pods: list[float], new: int, ready_at: float) -> list[float]:
    if new >= len(pods):
        return pods + [ready_at] * (new - len(pods))
    # The ReplicaSet deletes pods that are not ready yet before ready ones.
    return sorted(pods)[:new]


def _summarize(
    scenario: Scenario, samples: Sequence[Sample], drained_at: int | None, back_at: int | None
) -> Summary:
    peak = max(samples, key=lambda s: (s.desired_replicas, -s.t_seconds))
    busiest = max(samples, key=lambda s: (s.outstanding, -s.t_seconds))
    w = scenario.workers
    caps = provider_caps(scenario.providers)
    provider_rate = min(caps.values()) if caps else None
    pod_rate = peak.desired_replicas * w.batches_per_second_per_pod
    if max(s.queued for s in samples) < 1.0:
        factor = "arrivals: the fleet kept up, work never waited for a slot or a budget"
    elif provider_rate is not None and provider_rate < pod_rate:
        which = min(caps, key=lambda k: caps[k])
        factor = f"provider budget ({which})"
    else:
        factor = "worker pods"
    return Summary(
        total_batches=scenario.load.total_batches,
        peak_replicas=peak.desired_replicas,
        peak_replicas_at_seconds=peak.t_seconds,
        peak_outstanding=busiest.outstanding,
        peak_outstanding_at_seconds=busiest.t_seconds,
        drain_seconds=drained_at,
        back_to_min_seconds=back_at,
        window_seconds=scenario.load.window_seconds if scenario.load.shape != "burst" else 0.0,
        limiting_factor=factor,
        pod_rate_at_peak=pod_rate,
        provider_rate=provider_rate,
    )


# ----------------------------------------------------------------------------- chart values


def load_values(paths: Iterable[Path]) -> dict[str, Any]:
    """Merges values files in order, later ones winning, as ``helm -f a -f b`` does."""
    import yaml  # the ops extra; imported here so `condo-audit --help` works without it

    merged: dict[str, Any] = {}
    for path in paths:
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a values file must hold a mapping")
        merged = _deep_merge(merged, data)
    return merged


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _rules(
    section: Mapping[str, Any], default: ScalingRules, chart_select: SelectPolicy
) -> ScalingRules:
    """One direction of keda.scaleUp/scaleDown, as the chart's ScaledObject renders it."""
    if not section:
        return default
    window = int(section.get("stabilizationWindowSeconds", default.stabilization_seconds))
    period = int(section.get("periodSeconds", 15))
    policies: list[ScalingPolicy] = []
    if section.get("pods") is not None:
        policies.append(ScalingPolicy("Pods", int(section["pods"]), period))
    if section.get("percent") is not None:
        policies.append(ScalingPolicy("Percent", int(section["percent"]), period))
    select: SelectPolicy = section.get("selectPolicy", chart_select)
    return ScalingRules(window, tuple(policies) or default.policies, select)


def scenario_from_values(values: Mapping[str, Any], source: str = "values") -> Scenario:
    """The chart's autoscaling and worker settings; anything absent keeps its default.

    Reads the keys the chart's worker ScaledObject template uses: keda.minReplicaCount,
    maxReplicaCount, pollingInterval, cooldownPeriod, activationTarget, tasksPerSlot,
    scaleUp/scaleDown (stabilizationWindowSeconds, pods, periodSeconds) and
    worker.concurrency (target per replica = concurrency x tasksPerSlot); the CNPJ budget is
    the sum over config.cnpjProviders (tried in turn), each at its *_RATE_PER_MINUTE from
    config.extraEnv or the platform's default.
    """
    base = Scenario()
    keda: Mapping[str, Any] = values.get("keda") or {}
    worker: Mapping[str, Any] = values.get("worker") or {}
    concurrency = int(worker.get("concurrency", base.workers.concurrency))
    target = concurrency * float(keda.get("tasksPerSlot", 1))
    enabled = bool(keda.get("enabled", True))
    fixed = int(worker.get("replicas", 1))
    a = base.autoscaling
    autoscaling = replace(
        a,
        enabled=enabled,
        min_replicas=int(keda.get("minReplicaCount", a.min_replicas)) if enabled else fixed,
        max_replicas=int(keda.get("maxReplicaCount", a.max_replicas)) if enabled else fixed,
        target_per_replica=target,
        polling_interval_seconds=int(keda.get("pollingInterval", a.polling_interval_seconds)),
        cooldown_seconds=int(keda.get("cooldownPeriod", a.cooldown_seconds)),
        activation_target=float(keda.get("activationTarget", a.activation_target)),
        # The chart's template renders selectPolicy Max for scale-up and Min for scale-down.
        scale_up=_rules(keda.get("scaleUp") or {}, DEFAULT_SCALE_UP, "Max"),
        scale_down=_rules(keda.get("scaleDown") or {}, DEFAULT_SCALE_DOWN, "Min"),
    )
    workers = replace(base.workers, concurrency=concurrency)
    config: Mapping[str, Any] = values.get("config") or {}
    env: Mapping[str, Any] = config.get("extraEnv") or {}
    names = config.get("cnpjProviders") or ["cnpjws"]
    budgets = [env.get(f"{n.upper()}_RATE_PER_MINUTE", PROVIDER_BUDGETS.get(n)) for n in names]
    providers = replace(
        base.providers,
        cnpj_per_minute=None if None in budgets else float(sum(budgets)),
        pluggy_per_minute=float(env.get("PLUGGY_RATE_PER_MINUTE", PROVIDER_BUDGETS["pluggy"])),
    )
    return Scenario(autoscaling, workers, providers, base.load, source)


# ----------------------------------------------------------------------------- output


def write_csv(
    rows: Iterable[Mapping[str, object]], path: Path, columns: Sequence[str] = CSV_COLUMNS
) -> None:
    """Unknown values (None) become empty cells, never zeros."""
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})


def read_csv(path: Path) -> list[dict[str, float | None]]:
    """Rows of a simulator or recorder CSV; empty cells (unknown values) become None."""

    def number(v: str | None) -> float | None:
        try:
            return float(v) if v not in ("", None) else None
        except ValueError:
            return None

    with path.open(newline="") as fh:
        return [{k: number(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def plot(
    rows: Sequence[Mapping[str, float | int | None]],
    path: Path,
    title: str,
    notes: Sequence[str] = (),
) -> None:
    """PNG: replicas, then backlog, over time (minutes); a throughput panel when known.

    The recorder's rows have no arrivals or completions (a cluster cannot tell them), so its
    PNG has the first two panels only.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def col(name: str) -> list[float]:
        return [math.nan if r.get(name) is None else float(r[name] or 0.0) for r in rows]

    def known(values: list[float]) -> bool:
        return any(not math.isnan(v) and v > 0 for v in values)

    minutes = [float(r["t_seconds"] or 0.0) / 60.0 for r in rows]
    arrivals, completions = col("arrivals"), col("completions")
    panels = 3 if known(arrivals) or known(completions) else 2
    height = 3.2 * panels + 0.4
    fig, axes = plt.subplots(panels, 1, sharex=True, figsize=(10, height), dpi=110)
    top, middle = axes[0], axes[1]
    top.step(minutes, col("desired_replicas"), where="post", label="desired replicas", lw=2)
    top.step(minutes, col("ready_replicas"), where="post", label="ready replicas", lw=1.2)
    top.set_ylabel("worker pods")
    top.set_ylim(bottom=0)
    top.set_title(title)
    middle.plot(
        minutes,
        col("outstanding"),
        label="outstanding = KEDA formula",
        color="black",
        lw=3,
        alpha=0.35,
    )
    middle.plot(minutes, col("queued"), label="queued", lw=1.2)
    middle.plot(minutes, col("in_flight"), label="in flight", lw=1.2)
    scheduled = col("scheduled")
    if known(scheduled):
        middle.plot(minutes, scheduled, label="scheduled retries", lw=1.2)
    middle.set_ylabel("batches")
    middle.set_ylim(bottom=0)
    if panels == 3:
        bottom = axes[2]
        bottom.plot(minutes, _per_minute(arrivals), label="submitted / min", lw=1.2)
        bottom.plot(minutes, _per_minute(completions), label="completed / min", lw=1.2)
        bottom.set_ylabel("batches per minute")
        bottom.set_ylim(bottom=0)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    axes[-1].set_xlabel("minutes")
    fig.tight_layout()
    if notes:
        fig.text(0.01, 0.005, "\n".join(notes), fontsize=7, family="monospace", va="bottom")
        fig.subplots_adjust(bottom=(0.6 + 0.125 * len(notes)) / height)
    fig.savefig(path)
    plt.close(fig)


def _per_minute(per_second: Sequence[float]) -> list[float]:
    """A trailing 60-sample sum: per-second counts shown as a rate per minute."""
    out: list[float] = []
    window: deque[float] = deque()
    total = 0.0
    for v in per_second:
        v = 0.0 if math.isnan(v) else v
        window.append(v)
        total += v
        if len(window) > 60:
            total -= window.popleft()
        out.append(total)
    return out


def describe(scenario: Scenario) -> list[str]:
    """The parameters, one line each, for the summary and the PNG's footnote."""
    a, w, p, load = scenario.autoscaling, scenario.workers, scenario.providers, scenario.load

    def rules(r: ScalingRules) -> str:
        pol = ", ".join(
            f"{x.value}{'%' if x.kind == 'Percent' else ' pods'}/{x.period_seconds}s"
            for x in r.policies
        )
        return f"window {r.stabilization_seconds}s, {pol} ({r.select})"

    def budget(v: float | None) -> str:
        return "unlimited" if v is None else f"{v:g}/min"

    return [
        f"parameters from {scenario.source}",
        (
            "load: "
            + ", ".join(f"tenant {name} {len(offsets)} batches" for name, offsets in load.tenants)
            + f" within {load.window_seconds:.0f} s, shared fairly between tenants"
            if load.tenants
            else f"load: {load.condominiums:,} condominiums x {load.batches_per_condominium} "
            f"batch, {load.shape} window {load.window_minutes:g} min"
        ),
        f"KEDA: min {a.min_replicas}, max {a.max_replicas}, target {a.target_per_replica:g}/pod, "
        f"polling {a.polling_interval_seconds}s; HPA sync {a.sync_seconds}s, tolerance "
        f"{a.tolerance:g}" + ("" if a.enabled else " (KEDA off: fixed replicas)"),
        f"scale-up {rules(a.scale_up)}; scale-down {rules(a.scale_down)}",
        f"pods: concurrency {w.concurrency}, {w.task_seconds:g}s per batch "
        f"({w.batches_per_second_per_pod:g} batches/s/pod), start-up {w.pod_startup_seconds:g}s",
        f"providers: CNPJ {budget(p.cnpj_per_minute)} x {p.cnpj_lookups_per_batch:g}/batch, "
        f"Pluggy {budget(p.pluggy_per_minute)} x {p.pluggy_requests_per_batch:g}/batch",
    ]
