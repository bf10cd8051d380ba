"""End-to-end time of a synthetic month against its lower bound.

    python -m bench.month_e2e [--condominiums 120] [--cnpj-per-minute 900]
                              [--pluggy-per-minute 360] [--processes 4]

Starts the platform (private Redis, fresh database, simulator with provider latency and
the given budgets, API, Celery workers), a cold supplier cache, and submits every
condominium's month at once through the API. The month ends when the last batch is
SUCCESS. Its lower bound is the slowest of the three limits the sizing model uses::

    max(unique uncached CNPJs / CNPJ budget,
        transaction pages / Pluggy budget,
        expenses / (measured audit rate per process x processes))

The budgets are the fleet limiter's (the platform paces `RATE_LIMIT_HEADROOM_RATIO` under
them), and the month is measured from the first submission to the last finish, both from
the database.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from sqlalchemy import func, select

from audit.db import session_scope
from audit.models import Batch
from bench.enqueue_throughput import _hammer
from bench.worker_throughput import wait_until_done
from loadtests.platform import (
    ONE_TENANT_LOAD_ENV,
    ProviderLimits,
    create_tenants,
    seed_simulator,
    start_platform,
    unique_suppliers,
)
from ops.capacity import MEASURED_AUDIT_RATE_PER_PROCESS
from ops.workload import WorkloadConfig, condominium_month


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--condominiums", type=int, default=120)
    parser.add_argument("--cnpj-per-minute", type=float, default=900.0)
    parser.add_argument("--pluggy-per-minute", type=float, default=360.0)
    parser.add_argument("--cnpj-latency-ms", type=float, default=100.0)
    parser.add_argument("--pluggy-latency-ms", type=float, default=200.0)
    parser.add_argument("--workers", type=int, default=2, help="Celery worker processes")
    parser.add_argument("--concurrency", type=int, default=3, help="prefork children each")
    parser.add_argument(
        "--audit-rate",
        type=float,
        default=MEASURED_AUDIT_RATE_PER_PROCESS,
        help="expenses/s per process (bench.worker_throughput)",
    )
    parser.add_argument("--database", choices=("auto", "postgresql", "sqlite"), default="auto")
    args = parser.parse_args()
    limits = ProviderLimits(
        cnpj_rate_per_minute=args.cnpj_per_minute,
        pluggy_rate_per_minute=args.pluggy_per_minute,
        cnpj_latency_ms=args.cnpj_latency_ms,
        pluggy_latency_ms=args.pluggy_latency_ms,
    )
    config = WorkloadConfig(condominiums=args.condominiums, seed=3)
    months = [condominium_month(config, i) for i in range(args.condominiums)]
    expenses = sum(len(m.expenses) for m in months)
    unique = len(unique_suppliers(months))
    pages = sum(m.transaction_pages for m in months)
    processes = args.workers * args.concurrency
    with tempfile.TemporaryDirectory(prefix="bench-month-") as tmp:
        platform = start_platform(
            Path(tmp), database=args.database, limits=limits, extra_env=ONE_TENANT_LOAD_ENV
        )
        try:
            seed_simulator(platform.simulator_url, months)
            key = create_tenants(platform.database.url, 1)[0]
            condominiums = asyncio.run(
                _hammer(
                    platform.api_url, key,
                    [("POST", "/condominiums", m.condominium_request()) for m in months], 4,
                )
            )[1]  # fmt: skip
            platform.start_workers(args.workers, args.concurrency)
            asyncio.run(
                _hammer(
                    platform.api_url, key,
                    [("POST", "/batch-expenses", m.batch_request(c["id"]))
                     for m, c in zip(months, condominiums, strict=True)], 8,
                )
            )  # fmt: skip
            wait_until_done(platform.database.url, args.condominiums, 1800)
            with session_scope(platform.database.url) as session:
                first, last, failed = session.execute(
                    select(
                        func.min(Batch.submitted_at),
                        func.max(Batch.finished_at),
                        func.count().filter(Batch.status != "SUCCESS"),
                    )
                ).one()
        finally:
            platform.stop()
    assert first is not None
    assert last is not None
    measured = (last - first).total_seconds()
    bounds = {
        "cnpj": unique / (args.cnpj_per_minute / 60),
        "pluggy": pages / (args.pluggy_per_minute / 60),
        "workers": expenses / (args.audit_rate * processes),
    }
    binding = max(bounds, key=lambda name: bounds[name])
    print(
        f"month of {args.condominiums} condominiums ({platform.database.kind}): {expenses:,} "
        f"expenses, {unique:,} unique CNPJs (cold cache), {pages} Pluggy pages, "
        f"{processes} worker processes, {failed} not SUCCESS\n"
        f"lower bound: CNPJ {bounds['cnpj']:.1f} s at {args.cnpj_per_minute:g}/min, Pluggy "
        f"{bounds['pluggy']:.1f} s at {args.pluggy_per_minute:g}/min, workers "
        f"{bounds['workers']:.1f} s at {args.audit_rate:g} expenses/s/process -> "
        f"{bounds[binding]:.1f} s ({binding})\n"
        f"measured: {measured:.1f} s = {measured / bounds[binding]:.3f}x the lower bound "
        f"(target <= 1.25x)"
    )


if __name__ == "__main__":
    main()
