"""POST /batch-expenses latency for 100-expense batches against a real API, Redis and database.

    python -m bench.post_latency [--batches 200] [--expenses 100] [--database-url URL]

Starts a private redis-server and the API under uvicorn on loopback; no worker runs, so the
figure is the API's own cost: validate, store, enqueue, answer.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from audit.auth import create_tenant, issue_key
from audit.cnpj import check_digits
from audit.db import session_scope, upgrade_database
from cli.processes import free_port, start_api, start_redis


def payload(condominium_id: str, batch: int, size: int) -> dict[str, object]:
    expenses = []
    for i in range(size):
        base = f"{(batch * size + i) % 99_999_999:08d}0001"
        expenses.append(
            {
                "external_id": f"b{batch}-e{i}",
                "supplier_cnpj": base + check_digits(base),
                "amount": f"{100 + i}.{i % 100:02d}",
                "date": "2026-10-15",
                "description": "Serviço de manutenção predial",
                "category": "manutencao",
                "invoice_number": f"NF-{batch}-{i}",
            }
        )
    return {"condominium_id": condominium_id, "expenses": expenses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--expenses", type=int, default=100)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        database_url = args.database_url or f"sqlite:///{work / 'bench.db'}"
        upgrade_database(database_url)
        with session_scope(database_url) as session:
            tenant = create_tenant(session, "bench")
            key = issue_key(session, tenant.id).secret
        redis_port, api_port = free_port(), free_port()
        redis = start_redis(redis_port, work / "redis", work)
        env = {
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "DATABASE_URL": database_url,
            # One tenant sends every request: lift its budget (the limiter still runs).
            "API_RATE_PER_MINUTE": "100000000",
            "API_RATE_BURST": "100000",
        }
        api = start_api(api_port, env, work)
        try:
            with httpx.Client(
                base_url=f"http://127.0.0.1:{api_port}", headers={"X-API-Key": key}, timeout=30
            ) as client:
                condominium = client.post("/condominiums", json={"name": "Bench"}).json()["id"]
                bodies = [payload(condominium, b, args.expenses) for b in range(args.batches)]
                for body in bodies[:5]:  # warm-up
                    client.post("/batch-expenses", json=body).raise_for_status()
                latencies = []
                for body in bodies[5:]:
                    started = time.perf_counter()
                    response = client.post("/batch-expenses", json=body)
                    latencies.append((time.perf_counter() - started) * 1000)
                    response.raise_for_status()
        finally:
            api.stop()
            redis.stop()
    latencies.sort()
    print(
        f"POST /batch-expenses, {args.expenses} expenses, {len(latencies)} requests, "
        f"{database_url.split(':')[0]}: median {statistics.median(latencies):.1f} ms, "
        f"p95 {latencies[int(len(latencies) * 0.95) - 1]:.1f} ms, max {latencies[-1]:.1f} ms"
    )


if __name__ == "__main__":
    main()
