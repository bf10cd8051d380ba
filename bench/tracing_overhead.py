"""What tracing costs: POST /batch-expenses latency and task throughput, off and on, in one run.

    python -m bench.tracing_overhead [--posts 150] [--batches 40] [--expenses 10] [--rounds 2]

Starts a private redis-server, the provider simulator and an OTLP/HTTP receiver on loopback.
Each round runs the platform twice on fresh SQLite databases, tracing off (no OTEL_*
variables) and on (every span exported over OTLP/HTTP to the receiver, sampler always_on:
the worst case), alternating so drift on a shared machine hits both alike:

`--otel-env NAME=VALUE` adds settings to the traced runs (a sampler ratio, or
OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=sqlalchemy to see what the query spans cost).

- POST latency: the API alone (no worker), `--posts` batches of 100 expenses;
- throughput: the API and a prefork worker (concurrency 2), `--batches` batches of
  `--expenses` expenses with distinct suppliers (one provider call each), submitted at once;
  expenses audited per second from the first submit to the last batch finished.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import func, select

from audit.auth import create_tenant, issue_key
from audit.db import session_scope, upgrade_database
from audit.models import Batch
from bench.post_latency import payload
from cli.processes import (
    ManagedProcess,
    free_port,
    spawn_worker,
    start_api,
    start_redis,
    start_simulator,
)
from simulator.otlp_receiver import OtlpReceiver, otlp_receiver


@dataclass
class Figures:
    post_ms: list[float]
    expenses_per_second: list[float]


def platform_env(redis_url: str, db: int, database_url: str, simulator_url: str) -> dict[str, str]:
    return {
        "REDIS_URL": f"{redis_url}/{db}",
        "DATABASE_URL": database_url,
        "AUDIT_QUEUE": f"bench-{uuid.uuid4().hex[:8]}",
        "CNPJWS_BASE_URL": f"{simulator_url}/cnpjws",
        "MINHA_RECEITA_BASE_URL": f"{simulator_url}/minha-receita",
        "PLUGGY_BASE_URL": f"{simulator_url}/pluggy",
        "CNPJWS_RATE_PER_MINUTE": "600000",
        "API_RATE_PER_MINUTE": "100000000",  # one tenant sends every request
        "API_RATE_BURST": "100000",
        "METRICS_PORT": "0",
        "LOG_LEVEL": "WARNING",
    }


def tracing_env(receiver: OtlpReceiver | None, extra: list[str]) -> dict[str, str]:
    if receiver is None:
        return {"OTEL_SDK_DISABLED": "true"}
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_SAMPLER": "always_on",
        **dict(item.split("=", 1) for item in extra),
    }


def tenant_key(database_url: str) -> str:
    with session_scope(database_url) as session:
        tenant = create_tenant(session, "bench")
        return issue_key(session, tenant.id).secret


def post_latency(api_url: str, key: str, posts: int) -> list[float]:
    with httpx.Client(base_url=api_url, headers={"X-API-Key": key}, timeout=30) as client:
        condominium = client.post("/condominiums", json={"name": "Bench"}).json()["id"]
        salt = uuid.uuid4().int % 1000
        bodies = [payload(condominium, salt * 10_000 + b, 100) for b in range(posts + 5)]
        for body in bodies[:5]:
            client.post("/batch-expenses", json=body).raise_for_status()
        latencies = []
        for body in bodies[5:]:
            started = time.perf_counter()
            response = client.post("/batch-expenses", json=body)
            latencies.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
    return latencies


def throughput(api_url: str, key: str, database_url: str, batches: int, expenses: int) -> float:
    with httpx.Client(base_url=api_url, headers={"X-API-Key": key}, timeout=30) as client:
        condominium = client.post("/condominiums", json={"name": "Bench"}).json()["id"]
        salt = uuid.uuid4().int % 1000
        bodies = [payload(condominium, salt * 10_000 + b, expenses) for b in range(batches)]
        started = time.perf_counter()
        for body in bodies:
            client.post("/batch-expenses", json=body).raise_for_status()
    query = (
        select(func.count())
        .select_from(Batch)
        .where(Batch.condominium_id == condominium, Batch.status.in_(["SUCCESS", "FAILURE"]))
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        with session_scope(database_url) as session:
            if (session.scalar(query) or 0) >= batches:
                return batches * expenses / (time.perf_counter() - started)
        time.sleep(0.05)
    raise TimeoutError("the batches did not finish in 10 minutes")


def run_mode(
    work: Path,
    redis_url: str,
    db: int,
    simulator_url: str,
    receiver: OtlpReceiver | None,
    args: argparse.Namespace,
) -> tuple[list[float], float]:
    name = "on" if receiver else "off"
    database_url = f"sqlite:///{work / f'bench-{name}-{db}.db'}"
    upgrade_database(database_url)
    key = tenant_key(database_url)
    env = {
        **platform_env(redis_url, db, database_url, simulator_url),
        **tracing_env(receiver, args.otel_env),
    }
    processes: list[ManagedProcess] = []
    try:
        api_port = free_port()
        processes.append(start_api(api_port, env, work / f"logs-{name}-{db}"))
        api_url = f"http://127.0.0.1:{api_port}"
        posts = post_latency(api_url, key, args.posts)
        # Drain what the latency phase enqueued before the worker starts: only new work counts.
        from redis import Redis

        Redis.from_url(env["REDIS_URL"]).delete(env["AUDIT_QUEUE"])
        processes.append(
            spawn_worker(
                env, work / f"logs-{name}-{db}", queue=env["AUDIT_QUEUE"], concurrency=2
            ).wait()
        )
        rate = throughput(api_url, key, database_url, args.batches, args.expenses)
    finally:
        for process in reversed(processes):
            process.stop()
    return posts, rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--posts", type=int, default=150)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--expenses", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--otel-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra OTEL_* setting for the traced runs, e.g. OTEL_TRACES_SAMPLER_ARG=0.1",
    )
    args = parser.parse_args()
    figures = {"off": Figures([], []), "on": Figures([], [])}
    # The receiver only counts what arrives: decoding spans in Python here would compete
    # for the same two cores as the platform and be billed to tracing.
    with tempfile.TemporaryDirectory() as tmp, otlp_receiver(decode=False) as receiver:
        work = Path(tmp)
        redis_port, sim_port = free_port(), free_port()
        redis = start_redis(redis_port, work / "redis", work)
        simulator = start_simulator(sim_port, {}, work)
        try:
            db = 0
            for _ in range(args.rounds):
                for mode in ("off", "on"):
                    db += 1
                    posts, rate = run_mode(
                        work,
                        f"redis://127.0.0.1:{redis_port}",
                        db,
                        f"http://127.0.0.1:{sim_port}",
                        receiver if mode == "on" else None,
                        args,
                    )
                    figures[mode].post_ms.extend(posts)
                    figures[mode].expenses_per_second.append(rate)
                    print(
                        f"round {db // 2 + db % 2} tracing {mode:3}: POST median "
                        f"{statistics.median(posts):.1f} ms, throughput {rate:.1f} expenses/s",
                        flush=True,
                    )
        finally:
            simulator.stop()
            redis.stop()
        spans = receiver.span_count
    print()
    for mode in ("off", "on"):
        latencies = sorted(figures[mode].post_ms)
        rates = figures[mode].expenses_per_second
        print(
            f"tracing {mode:3}: POST /batch-expenses (100 expenses) median "
            f"{statistics.median(latencies):.1f} ms, p95 "
            f"{latencies[int(len(latencies) * 0.95) - 1]:.1f} ms over {len(latencies)} requests; "
            f"throughput {statistics.median(rates):.1f} expenses/s "
            f"(median of {len(rates)} runs of {args.batches} x {args.expenses})"
        )
    off, on = figures["off"], figures["on"]
    latency_cost = statistics.median(on.post_ms) / statistics.median(off.post_ms) - 1
    rate_cost = 1 - statistics.median(on.expenses_per_second) / statistics.median(
        off.expenses_per_second
    )
    print(
        f"overhead of tracing: POST median {latency_cost:+.1%}, throughput {-rate_cost:+.1%}; "
        f"{spans} spans exported to the OTLP receiver"
    )


if __name__ == "__main__":
    main()
