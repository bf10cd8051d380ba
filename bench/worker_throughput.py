"""Worker throughput: expenses audited per second by one process, warm supplier cache, beside
a no-op Celery task in the same worker.

    python -m bench.worker_throughput [--batches 200] [--noops 2000]

Starts a private redis-server, a fresh database (PostgreSQL when it answers), the provider
simulator with no latency and no limit, and the API. Submits `--batches` generated months
(about 50 expenses each) through the API with every supplier already in the cache and every
account's bank month in the simulator, stops the API, then starts one Celery worker with
one prefork process (`--include bench.noop_task` adds the reference task) and lets it drain
the queue: each batch does its real work (cached supplier query, one Pluggy page from the
simulator, the rules, the findings). The rate counts the batches after the first tenth,
from the database's started/finished times, so the process's warm-up is left out. Then
`--noops` no-op tasks go through the same worker. Both also report the pool process's CPU
per task (from /proc), a figure that other work on a shared machine does not inflate as it
does wall time. `--profile FILE` records the pool process with py-spy (`--gil`: only the
samples holding the GIL; `--idle`: waiting threads too); `python -m bench.profiling FILE`
summarizes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import func, select

from audit.db import session_scope
from audit.models import Batch
from audit.settings import Settings
from bench import profiling
from bench.enqueue_throughput import _hammer
from bench.noop_task import NOOP_TASK
from loadtests.platform import (
    ONE_TENANT_LOAD_ENV,
    ProviderLimits,
    create_tenants,
    seed_simulator,
    start_platform,
    unique_suppliers,
    warm_supplier_cache,
)
from ops.workload import WorkloadConfig, condominium_month
from worker.celery_app import create_celery_app

NO_LIMITS = ProviderLimits(
    cnpj_rate_per_minute=None, pluggy_rate_per_minute=None, cnpj_latency_ms=0, pluggy_latency_ms=0
)


def pool_process(worker_pid: int) -> int:
    """The worker's one prefork child, the process that runs the tasks."""
    listing = Path(f"/proc/{worker_pid}/task/{worker_pid}/children")  # Linux, like py-spy
    deadline = time.monotonic() + 30
    while not (children := listing.read_text().split()):
        if time.monotonic() > deadline:
            raise TimeoutError("the worker started no pool process")
        time.sleep(0.05)
    return int(children[0])


def cpu_seconds(pid: int) -> float:
    """User plus system CPU of a process so far: unlike wall time, it does not count the
    time other work on a shared machine holds the cores."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_profiler(
    pid: int, out: Path | None, *, gil: bool = False, idle: bool = False
) -> subprocess.Popen[bytes] | None:
    """py-spy on the pool process while it drains the batches."""
    if out is None:
        return None
    return profiling.start(pid, out, gil=gil, idle=idle)


def wait_until_done(database_url: str, count: int, timeout: float, poll: float = 0.5) -> int:
    """Wait until at least `count` batches finished; returns how many have."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope(database_url) as session:
            done = session.scalar(
                select(func.count()).select_from(Batch).where(Batch.finished_at.is_not(None))
            )
        if done is not None and done >= count:
            return done
        time.sleep(poll)
    raise TimeoutError(f"{done} of {count} batches finished within {timeout:.0f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--noops", type=int, default=2000)
    parser.add_argument("--database", choices=("auto", "postgresql", "sqlite"), default="auto")
    parser.add_argument(
        "--profile",
        type=Path,
        help="record the worker process with py-spy while it drains (collapsed stacks here)",
    )
    parser.add_argument(
        "--gil",
        action="store_true",
        help="with --profile: only samples holding the GIL (the Python CPU, not the waits)",
    )
    parser.add_argument(
        "--idle",
        action="store_true",
        help="with --profile: waiting threads too (where the wall time goes, waits included)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-worker-") as tmp:
        platform = start_platform(
            Path(tmp), database=args.database, limits=NO_LIMITS, extra_env=ONE_TENANT_LOAD_ENV
        )
        try:
            config = WorkloadConfig(condominiums=args.batches, seed=11)
            months = [condominium_month(config, i) for i in range(args.batches)]
            seed_simulator(platform.simulator_url, months)
            warm_supplier_cache(platform.database.url, unique_suppliers(months).values())
            key = create_tenants(platform.database.url, 1)[0]
            condominiums = asyncio.run(
                _hammer(
                    platform.api_url, key,
                    [("POST", "/condominiums", m.condominium_request()) for m in months], 4,
                )
            )[1]  # fmt: skip
            asyncio.run(
                _hammer(
                    platform.api_url, key,
                    [("POST", "/batch-expenses", m.batch_request(c["id"]))
                     for m, c in zip(months, condominiums, strict=True)], 4,
                )
            )  # fmt: skip
            api = platform.processes.pop()
            api.stop()
            platform.start_workers(1, 1, include=["bench.noop_task"])
            pool = pool_process(platform.processes[-1].pid)
            profiler = start_profiler(pool, args.profile, gil=args.gil, idle=args.idle)
            # CPU from the first tenth on, like the rate: the process's warm-up left out.
            warm = wait_until_done(platform.database.url, args.batches // 10, 600, poll=0.05)
            cpu_before = cpu_seconds(pool)
            wait_until_done(platform.database.url, args.batches, 600)
            batch_cpu = (cpu_seconds(pool) - cpu_before) / (args.batches - warm)
            profiling.stop(profiler)
            with session_scope(platform.database.url) as session:
                rows = session.execute(
                    select(Batch.started_at, Batch.finished_at, Batch.expenses_total)
                    .where(Batch.status == "SUCCESS")
                    .order_by(Batch.finished_at)
                ).all()
            skip = len(rows) // 10
            measured = rows[skip + 1 :]
            seconds = (measured[-1].finished_at - rows[skip].finished_at).total_seconds()
            expenses = sum(r.expenses_total for r in measured)
            per_batch = [(r.finished_at - r.started_at).total_seconds() for r in measured]

            app = create_celery_app(Settings(redis_url=platform.redis_url))
            app.send_task(NOOP_TASK, args=["warm"], queue="audit").get(timeout=30)
            cpu_before = cpu_seconds(pool)
            started = time.perf_counter()
            results = [
                app.send_task(NOOP_TASK, args=[str(uuid.uuid4())], queue="audit")
                for _ in range(args.noops)
            ]
            results[-1].get(timeout=300)
            noop_seconds = time.perf_counter() - started
            noop_cpu = (cpu_seconds(pool) - cpu_before) / args.noops
            assert all(r.ready() for r in results)
        finally:
            platform.stop()
    rate = expenses / seconds
    batch_rate = len(measured) / seconds
    noop_rate = args.noops / noop_seconds
    print(
        f"worker, 1 process, warm cache ({platform.database.kind}): {rate:.0f} expenses/s "
        f"({batch_rate:.1f} batches/s of {expenses / len(measured):.1f} expenses, "
        f"{len(measured)} batches measured, median {statistics.median(per_batch) * 1000:.0f} ms "
        f"from started to finished)\n"
        f"no-op task in the same worker: {noop_rate:.0f} tasks/s\n"
        f"a no-op task takes {batch_rate / noop_rate:.1%} of a batch's time: the rest is the "
        f"audit (target >= 3,000 expenses/s)\n"
        f"worker process CPU: {batch_cpu * 1000:.1f} ms a batch (after the first tenth), "
        f"{noop_cpu * 1000:.2f} ms a no-op task ({noop_cpu / batch_cpu:.1%} of a batch)"
    )


if __name__ == "__main__":
    main()
