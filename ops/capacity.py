"""Sizing model: from a month's workload and the measured rates to times, replicas and memory.

A month's audit needs three things that do not overlap in their limits: CNPJ lookups for
the suppliers not yet in the cache (bounded by the CNPJ provider's budget, fleet-wide),
Pluggy transaction pages (bounded by Pluggy's budget, fleet-wide) and worker-process time
(bounded by how many processes run). The month cannot finish before the slowest of the
three, so its lower bound is::

    max(uncached unique CNPJs / CNPJ budget,
        transaction pages / Pluggy budget,
        worker-process seconds / processes)

where worker-process seconds are ``expenses / audit rate per process`` plus the time
processes spend blocked on provider calls (``provider_latency_seconds`` per call). Once
the processes can do their share faster than the providers allow, extra workers only wait
on the rate limiter: that is the worker replica count to stop at (KEDA's maximum).

Everything here is arithmetic over ``CapacityInputs``; the defaults marked ``MEASURED_*``
come from this repository's benchmarks and measurements on one development machine (see
docs/performance.md) and are meant to be replaced by figures measured where it runs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

# Worker throughput, expenses audited per second by one Celery process with a warm supplier
# cache, PostgreSQL 15, the bank month fetched from the simulator at 0 ms:
# `python -m bench.worker_throughput` measured 2,239 to 2,519/s in five runs (median 2,343,
# about 52.5 expenses per batch; a no-op task runs at 360 to 420/s in the same worker) on a
# 2-core machine, with the candidate query on the (condominium_id, date, amount) index. A faster
# machine measured 3,977 to 4,837/s with the code of 2026-12-06 (docs/performance.md); the
# slower figure stays, so the sizing holds on a slow node (the providers set the fleet at
# either).
MEASURED_AUDIT_RATE_PER_PROCESS = 2340.0
AUDIT_RATE_IS_PLACEHOLDER = False
# Requests per second one API replica (uvicorn, 2 processes, 2 cores) serves at the month-end
# mix of 1 POST /batch-expenses, 10 status polls and 3 reads: `python -m
# bench.enqueue_throughput` measured POST at 132.4/s (49 expenses each) and GET /tasks/{id}
# at 483.0/s, so 14 requests take 1/132.4 + 13/483.0 = 34.5 ms -> 400 requests/s (rounded
# down from 406; the client shares the two cores with the API).
MEASURED_API_RPS_PER_REPLICA = 400.0
API_RPS_IS_PLACEHOLDER = False
# One `audit.process_batch_expenses` message as it sits in Redis (task id argument,
# trace context, Celery's JSON envelope): 1,244 bytes of JSON, ~1,520 bytes of Redis
# memory, measured with 2,000 messages sent by the platform's Celery config to Redis 7.
MEASURED_MESSAGE_BYTES = 1_520
# A message that carries the expenses themselves grows by about this much per expense
# (202 bytes of JSON from the workload generator, base64-encoded in the body).
MESSAGE_BYTES_PER_CARRIED_EXPENSE = 280
# Redis with no data, as `INFO memory` used_memory reports it.
REDIS_BASELINE_BYTES = 1_000_000

# PostgreSQL 15 bytes per row, indexes and TOAST included: the growth of
# pg_total_relation_size per row inserted, measured by tests/test_capacity_rowsizes.py on
# 400 generated condominiums (findings and audit-log contents are representative guesses).
ROW_BYTES = {
    "batches": 860,
    "expenses": 440,
    "findings": 1_090,
    "bank_transactions": 435,
    "audit_log": 280,
    "supplier_registrations": 230,
}


@dataclass(frozen=True)
class CapacityInputs:
    condominiums: int = 10_000
    # The next four defaults are the workload generator's figures for 10,000 condominiums
    # (`condo-audit workload generate --condominiums 10000 --seed 1`).
    expenses_per_condominium: float = 50.7
    unique_supplier_fraction: float = 0.0619  # unique supplier CNPJs / expenses
    cached_fraction: float = 0.0  # of those unique CNPJs, already fresh in the lookup cache
    transaction_pages_per_condominium: float = 1.0072  # at 500 per page
    transactions_per_condominium: float = 135.4  # rows stored per condominium and month
    cnpj_lookups_per_minute: float = 3.0  # CNPJ.ws public tier; math.inf for minha-receita
    pluggy_requests_per_minute: float = 360.0  # per endpoint, shared by all pods
    audit_rate_per_process: float = MEASURED_AUDIT_RATE_PER_PROCESS
    provider_latency_seconds: float = 0.0  # a worker process blocks this long per call
    worker_concurrency: int = 2  # Celery processes per worker pod
    min_worker_replicas: int = 1
    max_worker_replicas: int = 100  # what the cluster allows
    target_month_hours: float = 4.0  # used when the providers set no bound
    queue_wait_target_seconds: float = 60.0  # KEDA: outstanding work per replica to aim at
    peak_window_minutes: float = 60.0  # all condominiums submit within this window
    peak_to_mean: float = 2.0  # burstiness within the window
    status_polls_per_batch: float = 10.0
    reads_per_batch: float = 3.0  # findings and report reads after SUCCESS
    api_rps_per_replica: float = MEASURED_API_RPS_PER_REPLICA
    api_target_utilization: float = 0.7
    api_min_replicas: int = 2
    message_bytes: int = MEASURED_MESSAGE_BYTES
    message_carries_expenses: bool = False
    findings_per_expense: float = 0.05
    audit_log_events_per_batch: float = 4.0  # submitted, started, finished + some retries

    def __post_init__(self) -> None:
        if self.condominiums < 1:
            raise ValueError("condominiums must be at least 1")
        for name in ("unique_supplier_fraction", "cached_fraction", "api_target_utilization"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        for name in (
            "expenses_per_condominium",
            "cnpj_lookups_per_minute",
            "pluggy_requests_per_minute",
            "audit_rate_per_process",
            "api_rps_per_replica",
            "target_month_hours",
            "peak_window_minutes",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.worker_concurrency < 1 or self.max_worker_replicas < 1:
            raise ValueError("worker_concurrency and max_worker_replicas must be at least 1")
        if not 0 <= self.min_worker_replicas <= self.max_worker_replicas:
            raise ValueError("need 0 <= min_worker_replicas <= max_worker_replicas")


@dataclass(frozen=True)
class CapacityReport:
    inputs: CapacityInputs
    expenses: int
    unique_cnpjs: int
    uncached_lookups: int
    transaction_pages: int
    cnpj_seconds: float
    pluggy_seconds: float
    provider_bound_seconds: float
    worker_process_seconds: float
    saturation_processes: int | None  # None: the providers set no bound
    worker_replicas: int
    processes: int
    worker_seconds: float
    month_seconds: float
    finish_seconds: float  # from the window's opening to the last result, at least
    bottleneck: str
    api_peak_rps: float
    api_replicas: int
    redis_peak_outstanding: int
    redis_bytes: int
    redis_maxmemory_bytes: int
    db_rows: dict[str, int] = field(default_factory=dict)
    db_bytes: dict[str, int] = field(default_factory=dict)
    keda: dict[str, int] = field(default_factory=dict)

    @property
    def db_total_bytes(self) -> int:
        return sum(self.db_bytes.values())

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["inputs"] = {
            k: (None if isinstance(v, float) and math.isinf(v) else v)
            for k, v in data["inputs"].items()
        }
        data["db_total_bytes"] = self.db_total_bytes
        return data


def _per_second(per_minute: float) -> float:
    return per_minute / 60.0


def _ceil(value: float) -> int:
    # Guard against 2.0000000001 from float division turning into 3.
    return math.ceil(round(value, 9))


def size(inputs: CapacityInputs) -> CapacityReport:
    """The sizing for one month; see the module docstring for the model."""
    n = inputs.condominiums
    expenses = round(n * inputs.expenses_per_condominium)
    unique = round(expenses * inputs.unique_supplier_fraction)
    uncached = round(unique * (1 - inputs.cached_fraction))
    pages = _ceil(n * inputs.transaction_pages_per_condominium)

    cnpj_seconds = uncached / _per_second(inputs.cnpj_lookups_per_minute)
    pluggy_seconds = pages / _per_second(inputs.pluggy_requests_per_minute)
    provider_bound = max(cnpj_seconds, pluggy_seconds)
    process_seconds = (
        expenses / inputs.audit_rate_per_process
        + (uncached + pages) * inputs.provider_latency_seconds
    )

    saturation: int | None
    if provider_bound > 0:
        saturation = max(1, _ceil(process_seconds / provider_bound))
        wanted = saturation
    else:
        saturation = None
        wanted = max(1, _ceil(process_seconds / (inputs.target_month_hours * 3600)))
    replicas = min(
        inputs.max_worker_replicas,
        max(inputs.min_worker_replicas, 1, _ceil(wanted / inputs.worker_concurrency)),
    )
    processes = replicas * inputs.worker_concurrency
    worker_seconds = process_seconds / processes
    month_seconds = max(cnpj_seconds, pluggy_seconds, worker_seconds)
    bottleneck = max(
        (("cnpj", cnpj_seconds), ("pluggy", pluggy_seconds), ("workers", worker_seconds)),
        key=lambda item: item[1],
    )[0]

    window = inputs.peak_window_minutes * 60
    requests_per_batch = 1 + inputs.status_polls_per_batch + inputs.reads_per_batch
    api_peak_rps = n * requests_per_batch / window * inputs.peak_to_mean
    api_replicas = max(
        inputs.api_min_replicas,
        _ceil(api_peak_rps / (inputs.api_rps_per_replica * inputs.api_target_utilization)),
    )

    # Batches arrive evenly over the window and leave at the month's average rate; what
    # is left when the window closes is the peak (never less than the batches in flight).
    drained = min(n, window * n / month_seconds) if month_seconds > 0 else n
    outstanding = max(min(n, processes), round(n - drained))
    message = inputs.message_bytes + (
        round(inputs.expenses_per_condominium * MESSAGE_BYTES_PER_CARRIED_EXPENSE)
        if inputs.message_carries_expenses
        else 0
    )
    # Queued messages only: the audit task stores no Celery result (its status is in
    # PostgreSQL).
    redis_bytes = REDIS_BASELINE_BYTES + outstanding * message
    maxmemory = _ceil(2 * redis_bytes / 2**26) * 2**26  # 2x headroom, in 64 MiB steps

    rows = {
        "batches": n,
        "expenses": expenses,
        "findings": round(expenses * inputs.findings_per_expense),
        "bank_transactions": round(n * inputs.transactions_per_condominium),
        "audit_log": round(n * inputs.audit_log_events_per_batch),
        "supplier_registrations": uncached,
    }
    db_bytes = {table: count * ROW_BYTES[table] for table, count in rows.items()}

    # listLength: the outstanding batches one replica clears in queue_wait_target_seconds
    # at the rate this sizing predicts (provider-bound rates give small targets, which is
    # right: the fleet then sits at maxReplicaCount until the backlog is nearly gone).
    per_replica = n / month_seconds / replicas * inputs.queue_wait_target_seconds
    keda = {
        "minReplicaCount": inputs.min_worker_replicas,
        "maxReplicaCount": replicas,
        "listLength": max(1, math.floor(per_replica)),
        "activationListLength": 0,
        "pollingInterval": 15,
    }
    return CapacityReport(
        inputs=inputs,
        expenses=expenses,
        unique_cnpjs=unique,
        uncached_lookups=uncached,
        transaction_pages=pages,
        cnpj_seconds=cnpj_seconds,
        pluggy_seconds=pluggy_seconds,
        provider_bound_seconds=provider_bound,
        worker_process_seconds=process_seconds,
        saturation_processes=saturation,
        worker_replicas=replicas,
        processes=processes,
        worker_seconds=worker_seconds,
        month_seconds=month_seconds,
        finish_seconds=max(window, month_seconds),
        bottleneck=bottleneck,
        api_peak_rps=api_peak_rps,
        api_replicas=api_replicas,
        redis_peak_outstanding=outstanding,
        redis_bytes=redis_bytes,
        redis_maxmemory_bytes=maxmemory,
        db_rows=rows,
        db_bytes=db_bytes,
        keda=keda,
    )


def duration(seconds: float) -> str:
    """A duration for people: 42 s, 27.8 min, 5.3 h, 8.1 days."""
    if math.isinf(seconds):
        return "unbounded"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def megabytes(count: float) -> str:
    if count >= 2**30:
        return f"{count / 2**30:.2f} GiB"
    return f"{count / 2**20:.1f} MiB"


def render(report: CapacityReport) -> str:
    """The readable report `condo-audit capacity` prints."""
    i = report.inputs
    cnpj_budget = (
        "unlimited"
        if math.isinf(i.cnpj_lookups_per_minute)
        else f"{i.cnpj_lookups_per_minute:g}/min"
    )
    saturation = (
        "none (providers set no bound; sized for the target month time)"
        if report.saturation_processes is None
        else f"{report.saturation_processes} process(es)"
    )
    advice = {
        "cnpj": "more workers only wait on the CNPJ budget: raise it (commercial tier, a "
        "self-hosted minha-receita) or warm the cache before month end",
        "pluggy": "more workers only wait on Pluggy's budget (one egress IP shares it)",
        "workers": "worker-bound: more processes shorten the month until a provider binds",
    }[report.bottleneck]

    def row(label: str, value: object) -> str:
        return f"  {label:<40} {value}"

    cap_note = (
        "  (capped by max_worker_replicas)"
        if report.bottleneck == "workers" and report.worker_replicas == i.max_worker_replicas
        else ""
    )
    requests = 1 + i.status_polls_per_batch + i.reads_per_batch
    lines = [
        f"Sizing for {i.condominiums:,} condominiums x {i.expenses_per_condominium:.1f} expenses",
        "",
        "Workload per month",
        row("expenses", f"{report.expenses:,}"),
        row(
            "unique supplier CNPJs",
            f"{report.unique_cnpjs:,}  ({i.cached_fraction:.0%} "
            f"cached -> {report.uncached_lookups:,} lookups)",
        ),
        row("transaction pages (500 per page)", f"{report.transaction_pages:,}"),
        "",
        "Time for a full month (lower bound: the slowest of the three)",
        row(f"CNPJ lookups at {cnpj_budget}", duration(report.cnpj_seconds)),
        row(
            f"Pluggy pages at {i.pluggy_requests_per_minute:g}/min", duration(report.pluggy_seconds)
        ),
        row(
            f"workers, {report.processes} processes",
            f"{duration(report.worker_seconds)}  "
            f"({i.audit_rate_per_process:g} expenses/s/process, "
            f"{i.provider_latency_seconds * 1000:g} ms blocked per provider call)",
        ),
        row("month", f"{duration(report.month_seconds)}  (bound by {report.bottleneck})"),
        row("last result (incl. submission window)", duration(report.finish_seconds)),
        f"  -> {advice}",
        "",
        "Workers",
        row("processes that keep up with providers", saturation),
        row(
            f"worker replicas ({i.worker_concurrency} processes each)",
            f"{report.worker_replicas}{cap_note}",
        ),
        "",
        "API at the month-end peak",
        row(
            "peak request rate",
            f"{report.api_peak_rps:.1f} req/s  ({i.condominiums:,} "
            f"batches in {i.peak_window_minutes:g} min, {requests:g} requests each, "
            f"x{i.peak_to_mean:g} burst)",
        ),
        row(
            "API replicas",
            f"{report.api_replicas}  ({i.api_rps_per_replica:g} req/s each "
            f"at {i.api_target_utilization:.0%} utilization)",
        ),
        "",
        "Redis",
        row("outstanding batches at the peak", f"{report.redis_peak_outstanding:,}"),
        row("memory (queued messages)", megabytes(report.redis_bytes)),
        row("maxmemory to set (2x headroom)", megabytes(report.redis_maxmemory_bytes)),
        "",
        "Database growth per month (PostgreSQL, indexes included)",
    ]
    for table, rows in report.db_rows.items():
        lines.append(row(table, f"{rows:>12,} rows  {megabytes(report.db_bytes[table]):>10}"))
    lines.append(row("total", f"{'':>12}       {megabytes(report.db_total_bytes):>10}"))
    placeholders = [
        f"{name} {value:g} is a placeholder, not yet measured on this machine"
        for name, value, default, pending in (
            (
                "audit_rate_per_process",
                i.audit_rate_per_process,
                MEASURED_AUDIT_RATE_PER_PROCESS,
                AUDIT_RATE_IS_PLACEHOLDER,
            ),
            (
                "api_rps_per_replica",
                i.api_rps_per_replica,
                MEASURED_API_RPS_PER_REPLICA,
                API_RPS_IS_PLACEHOLDER,
            ),
        )
        if pending and value == default
    ]
    if placeholders:
        lines += ["", "Note"] + [f"  {text}" for text in placeholders]
    lines += ["", "KEDA ScaledObject (worker Deployment)"]
    lines += [row(key, value) for key, value in report.keda.items()]
    return "\n".join(lines)
