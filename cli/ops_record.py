"""`condo-audit ops record`: what the fleet did during a load test, sampled into CSV and a PNG.

Every interval it reads the worker Deployment (desired and ready replicas), the HPA's current
metric, the backlog parts from Redis and the fleet-wide limiter's budgets. Rows are flushed as
they are taken, so stopping with Ctrl-C keeps what was recorded. The CSV has the simulator's
columns (ops.scaling.CSV_COLUMNS), so one plot draws both; values a cluster cannot tell
(arrivals, completions) stay empty.

Provider budget use comes from the limiter's GCRA keys (audit/ratelimit.py): each key holds the
theoretical arrival time (TAT) of the next free slot in microseconds of Redis' clock, and every
granted request moves it one interval (60 / (rate x (1 - headroom)) seconds) on. So
``booked_seconds = TAT - now`` > 0 means the budget is fully used at that instant, and while it
stays booked the TAT's advance divided by the interval counts the requests granted. When the
budget went idle between two samples the count is unknown and the cell stays empty.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from audit.ratelimit import read_budgets
from audit.settings import Settings
from cli.main import CliError
from ops import OpsError, scaling
from worker.broker import read_backlog

COLUMNS: tuple[str, ...] = (
    "wall_time",
    *scaling.CSV_COLUMNS,
    "cnpj_booked_seconds",
    "pluggy_booked_seconds",
)
_US = 1_000_000


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--duration", type=float, required=True, help="seconds to record")
    p.add_argument("--csv", type=Path, required=True, help="where to write the samples")
    p.add_argument("--png", type=Path, help="draw replicas and backlog over time when done")
    p.add_argument(
        "--cnpj-limiter-key",
        help="limiter key of the CNPJ budget (default: ratelimit:<first of CNPJ_PROVIDERS>)",
    )
    p.add_argument(
        "--cnpj-rate",
        type=float,
        help="its rate per minute (default: the provider's *_RATE_PER_MINUTE setting)",
    )
    p.add_argument("--pluggy-limiter-key", default="ratelimit:pluggy:transactions")
    p.add_argument(
        "--pluggy-rate", type=float, help="its rate per minute (default: PLUGGY_RATE_PER_MINUTE)"
    )


@dataclass
class _Budget:
    column: str
    key: str
    rate_per_minute: float | None
    headroom: float
    last: tuple[int, int] | None = None  # (tat_us, now_us) of the previous sample

    def sample(self, r: redis.Redis) -> tuple[float | None, float | None]:
        """(requests per minute since the last sample or None, seconds booked ahead)."""
        reading = read_budgets(r, [self.key])[self.key]
        now = reading.now_us
        tat = reading.tat_us if reading.tat_us is not None else now
        booked = reading.ahead_seconds
        used: float | None = None
        if self.last is not None and self.rate_per_minute:
            last_tat, last_now = self.last
            interval = 60.0 / (self.rate_per_minute * (1 - self.headroom)) * _US
            # Only while the budget stayed booked does the TAT's advance count grants.
            if last_tat > last_now and tat > now and now > last_now:
                used = (tat - last_tat) / interval / ((now - last_now) / _US) * 60.0
        self.last = (tat, now)
        return used, booked


def _budgets(args: argparse.Namespace, settings: Settings) -> list[_Budget]:
    headroom = float(getattr(settings, "rate_limit_headroom_ratio", 0.02))
    first = settings.cnpj_providers[0] if settings.cnpj_providers else "cnpjws"
    cnpj_key = args.cnpj_limiter_key
    if cnpj_key is None:
        commercial = first == "cnpjws" and settings.cnpjws_token is not None
        cnpj_key = f"ratelimit:{first}" + (":commercial" if commercial else "")
    cnpj_rate = args.cnpj_rate or getattr(settings, f"{first}_rate_per_minute", None)
    pluggy_rate = args.pluggy_rate or getattr(settings, "pluggy_rate_per_minute", None)
    return [
        _Budget("cnpj", cnpj_key, cnpj_rate, headroom),
        _Budget("pluggy", args.pluggy_limiter_key, pluggy_rate, headroom),
    ]


def run(args: argparse.Namespace) -> int:
    from cli import ops
    from ops import cluster as oc

    if args.interval <= 0 or args.duration <= 0:
        raise CliError("--interval and --duration must be positive")
    settings = Settings()
    target = ops._target(args)
    deployment = oc.worker_deployment(target)["metadata"]["name"]
    url = args.redis_url or settings.redis_url
    queue = args.queue or settings.audit_queue
    r = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    budgets = _budgets(args, settings)
    rows: list[dict[str, Any]] = []
    start = time.monotonic()
    print(
        f"recording {deployment} and queue {queue!r} every {args.interval:g} s for "
        f"{args.duration:g} s into {args.csv}",
        file=sys.stderr,
    )
    with args.csv.open("w", newline="") as fh:
        import csv

        writer = csv.DictWriter(fh, fieldnames=list(COLUMNS), extrasaction="ignore")
        writer.writeheader()
        n = 0
        try:
            while True:
                due = start + n * args.interval
                if due - start > args.duration + 1e-9:
                    break
                time.sleep(max(0.0, due - time.monotonic()))
                row = _sample(target, deployment, r, queue, args.unacked_key, budgets, first=n == 0)
                row["t_seconds"] = round(time.monotonic() - start, 3)
                rows.append(row)
                writer.writerow({k: "" if row.get(k) is None else row[k] for k in COLUMNS})
                fh.flush()
                n += 1
        except KeyboardInterrupt:
            print("stopped; keeping the samples taken", file=sys.stderr)
    print(f"wrote {len(rows)} samples to {args.csv}", file=sys.stderr)
    if args.png:
        peak = max((row["desired_replicas"] or 0 for row in rows), default=0)
        scaling.plot(
            rows,
            args.png,
            f"recorded: {deployment}, peak {peak} pods",
            [f"namespace {target.namespace}, every {args.interval:g} s, queue {queue}"],
        )
        print(f"wrote {args.png}", file=sys.stderr)
    return 0


def _sample(
    target: Any,
    deployment: str,
    r: redis.Redis,
    queue: str,
    unacked_key: str,
    budgets: list[_Budget],
    *,
    first: bool,
) -> dict[str, Any]:
    """One row. The first sample fails loudly; later ones leave unreadable cells empty."""
    from cli import ops
    from ops import cluster as oc

    row: dict[str, Any] = {"wall_time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    try:
        dep = oc.worker_deployment(target)
        row["desired_replicas"] = (dep.get("spec") or {}).get("replicas")
        row["ready_replicas"] = (dep.get("status") or {}).get("readyReplicas", 0)
        so = oc.scaled_object(target, deployment)
        hpa = oc.keda_hpa(target, so) if so else None
        if hpa:
            summary = ops._hpa_summary(hpa)
            metric = summary.get("metric") or {}
            if metric.get("averageValue") is not None and summary.get("current"):
                row["metric"] = metric["averageValue"] * summary["current"]
            elif metric.get("value") is not None:
                row["metric"] = metric["value"]
    except (CliError, OpsError) as exc:
        if first:
            raise
        print(f"condo-audit: sample without cluster data: {exc}", file=sys.stderr)
    try:
        parts = read_backlog(r, queue, unacked_key=unacked_key)
        row.update(
            # Waiting for a worker: in the tenants' backlogs or in the queue list.
            queued=parts.backlogged + parts.queued,
            in_flight=parts.in_flight,
            scheduled=parts.scheduled,
            outstanding=parts.outstanding,
        )
        for b in budgets:
            used, booked = b.sample(r)
            row[f"{b.column}_per_minute_used"] = None if used is None else round(used, 2)
            row[f"{b.column}_booked_seconds"] = round(booked, 3) if booked is not None else None
    except (redis.RedisError, OSError, ValueError) as exc:
        if first:
            raise CliError(f"cannot read the queue from Redis: {exc}") from exc
        print(f"condo-audit: sample without queue data: {exc}", file=sys.stderr)
    return row
