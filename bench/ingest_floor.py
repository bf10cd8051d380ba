"""Ingest against its floor: the platform's POST /batch-expenses and GET /tasks/{id} beside a
bare FastAPI app doing only the irreducible work, in the same run, on the same PostgreSQL+Redis.

    python -m bench.ingest_floor [--rounds 5] [--posts 400] [--gets 4000] [--clients 8]

The floor (`create_floor_app`, served by `uvicorn --factory`) validates the body with the
platform's own pydantic model (`api.schemas.BatchIn`: CNPJ check digits, amounts, dates,
text), inserts the batch row and its expenses with SQLAlchemy Core (one executemany),
commits, and publishes the `audit.process_batch_expenses` message by name with the
platform's Celery config; its GET is one primary-key select. No auth, no tenant rate limit,
no idempotency, no audit log, no middleware: what any implementation must pay.

Both run as one uvicorn process on the same database and Redis, no worker consuming. Each
round posts `--posts` 50-expense batches (the platform's with an Idempotency-Key each) from
`--clients` keep-alive connections to one then the other (order alternating by round), then
GETs their task ids the same way. The client is a minimal HTTP/1.1 loop on uvloop, so the
load generator costs little of the two cores both servers share with it. Prints every
round and the median of the rounds: throughput, p50/p99 latency, and platform/floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from fastapi import FastAPI, HTTPException
from sqlalchemy import Table, create_engine, insert, select

from api.schemas import BatchIn
from audit.auth import create_tenant, issue_key
from audit.db import session_scope
from audit.models import Batch, Condominium, Expense
from audit.settings import Settings
from bench import profiling
from bench.post_latency import payload
from cli.processes import ManagedProcess, _http_ok, free_port, spawn, wait_for
from loadtests.platform import ONE_TENANT_LOAD_ENV, start_platform
from worker.celery_app import PROCESS_BATCH_TASK, create_celery_app
from worker.enqueue import PUBLISH_RETRY_POLICY

BATCH_SIZE = 50


def create_floor_app() -> FastAPI:
    """The floor: validate, one transaction of Core inserts, commit, send_task by name."""
    batches = cast(Table, Batch.__table__)
    expenses = cast(Table, Expense.__table__)
    engine = create_engine(os.environ["DATABASE_URL"], pool_size=5, max_overflow=10)
    celery = create_celery_app(Settings(redis_url=os.environ["REDIS_URL"]))
    tenant_id = os.environ["FLOOR_TENANT_ID"]
    queue = os.environ.get("FLOOR_QUEUE", "floor")
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/batch-expenses", status_code=202)
    def post_batch(body: BatchIn) -> dict[str, Any]:
        batch_id = str(uuid.uuid4())
        with engine.begin() as connection:
            connection.execute(
                insert(batches),
                {
                    "id": batch_id,
                    "tenant_id": tenant_id,
                    "condominium_id": body.condominium_id,
                    "status": "PENDING",
                    "expenses_total": len(body.expenses),
                },
            )
            connection.execute(
                insert(expenses),
                [
                    {
                        "batch_id": batch_id,
                        "condominium_id": body.condominium_id,
                        "external_id": e.external_id,
                        "supplier_cnpj": e.supplier_cnpj,
                        "amount": e.amount,
                        "expense_date": e.date,
                        "description": e.description,
                        "category": e.category,
                        "invoice_number": e.invoice_number,
                    }
                    for e in body.expenses
                ],
            )
        celery.send_task(
            PROCESS_BATCH_TASK,
            args=[batch_id],
            task_id=batch_id,
            queue=queue,
            retry=True,
            retry_policy=PUBLISH_RETRY_POLICY,
        )
        return {"task_id": batch_id, "status": "PENDING", "expenses": len(body.expenses)}

    @app.get("/tasks/{task_id}")
    def get_task(task_id: str) -> dict[str, Any]:
        with engine.connect() as connection:
            row = connection.execute(select(batches).where(batches.c.id == task_id)).first()
        if row is None:
            raise HTTPException(404, "task not found")
        return {
            "task_id": row.id,
            "status": row.status,
            "progress": {"done": row.expenses_done, "total": row.expenses_total},
            "submitted_at": row.submitted_at.isoformat() if row.submitted_at else None,
        }

    return app


def start_floor(port: int, env: dict[str, str], log_dir: Path) -> ManagedProcess:
    argv = [
        sys.executable, "-m", "uvicorn", "bench.ingest_floor:create_floor_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    process = spawn(f"floor-{port}", argv, env, log_dir)
    wait_for(lambda: _http_ok(f"http://127.0.0.1:{port}/healthz"), "floor app", 30, process)
    return process


def request_bytes(method: str, path: str, key: str, body: Any = None, **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"X-API-Key: {key}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    data = b""
    if body is not None:
        data = json.dumps(body).encode()
        lines += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


@dataclass
class Run:
    seconds: float
    latencies_ms: list[float]
    bodies: list[bytes]

    @property
    def rate(self) -> float:
        return len(self.latencies_ms) / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


async def _load(port: int, requests: list[bytes], clients: int, expect: int) -> Run:
    """Send every request over `clients` keep-alive connections; latency of each."""
    latencies: list[float] = [0.0] * len(requests)
    bodies: list[bytes] = [b""] * len(requests)
    next_index = 0

    async def one_client() -> None:
        nonlocal next_index
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while next_index < len(requests):
                index = next_index
                next_index += 1
                started = time.perf_counter()
                writer.write(requests[index])
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length)
                latencies[index] = (time.perf_counter() - started) * 1000
                if status != expect:
                    raise RuntimeError(f"{status} answered, {expect} expected: {body[:300]!r}")
                bodies[index] = body
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    return Run(time.perf_counter() - started, latencies, bodies)


def load(port: int, requests: list[bytes], clients: int, expect: int) -> Run:
    try:
        import uvloop

        return uvloop.run(_load(port, requests, clients, expect))
    except ImportError:  # pragma: no cover - uvicorn[standard] brings uvloop
        return asyncio.run(_load(port, requests, clients, expect))


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def profile(where: Path | None, round_number: int, pid: int, name: str) -> Any:
    """py-spy on `pid` (the GIL holder: Python CPU) during the first round, where/name.raw."""
    if where is None or round_number != 0:
        return None
    where.mkdir(parents=True, exist_ok=True)
    return profiling.start(pid, where / f"{name}.raw", gil=True)


def _summary(label: str, platform: list[Run], floor: list[Run]) -> str:
    ratios = [p.rate / f.rate for p, f in zip(platform, floor, strict=True)]
    return (
        f"{label}: platform {statistics.median(r.rate for r in platform):.1f}/s "
        f"(p50 {statistics.median(r.percentile(0.5) for r in platform):.1f} ms, "
        f"p99 {statistics.median(r.percentile(0.99) for r in platform):.1f} ms), "
        f"floor {statistics.median(r.rate for r in floor):.1f}/s "
        f"(p50 {statistics.median(r.percentile(0.5) for r in floor):.1f} ms, "
        f"p99 {statistics.median(r.percentile(0.99) for r in floor):.1f} ms), "
        f"platform/floor median {statistics.median(ratios):.2f} "
        f"(rounds {', '.join(f'{r:.2f}' for r in ratios)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--posts", type=int, default=400, help="POSTs per server per round")
    parser.add_argument("--gets", type=int, default=4000, help="GETs per server per round")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--database", choices=("auto", "postgresql", "sqlite"), default="auto")
    parser.add_argument(
        "--profile",
        type=Path,
        help="directory: py-spy records each server's first POST and GET rounds there",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        platform = start_platform(
            Path(tmp), database=args.database, api_workers=1, extra_env=ONE_TENANT_LOAD_ENV
        )
        try:
            with session_scope(platform.database.url) as session:
                tenant = create_tenant(session, "bench")
                key = issue_key(session, tenant.id).secret
                condominium = Condominium(tenant_id=tenant.id, name="Bench", audit_settings={})
                session.add(condominium)
                session.flush()
                tenant_id, condominium_id = tenant.id, condominium.id
            floor_port = free_port()
            platform.processes.append(
                start_floor(
                    floor_port,
                    {**platform.env, "FLOOR_TENANT_ID": tenant_id},
                    platform.work / "logs",
                )
            )
            api_port = _port(platform.api_url)
            pids = {"platform": platform.processes[-2].pid, "floor": platform.processes[-1].pid}
            serial = 0

            def posts(count: int, idempotent: bool) -> list[bytes]:
                nonlocal serial
                made = []
                for _ in range(count):
                    serial += 1
                    body = payload(condominium_id, serial, BATCH_SIZE)
                    headers = {"Idempotency_Key": f"bench-{serial}"} if idempotent else {}
                    made.append(request_bytes("POST", "/batch-expenses", key, body, **headers))
                return made

            # Warm both: connections, caches, the first compiled statements.
            load(api_port, posts(50, True), args.clients, 202)
            load(floor_port, posts(50, False), args.clients, 202)
            post_runs: dict[str, list[Run]] = {"platform": [], "floor": []}
            get_runs: dict[str, list[Run]] = {"platform": [], "floor": []}
            for number in range(args.rounds):
                order = ["platform", "floor"] if number % 2 == 0 else ["floor", "platform"]
                for target in order:
                    port = api_port if target == "platform" else floor_port
                    profiler = profile(args.profile, number, pids[target], f"{target}-post")
                    run = load(port, posts(args.posts, target == "platform"), args.clients, 202)
                    profiling.stop(profiler)
                    post_runs[target].append(run)
                    ids = [json.loads(b)["task_id"] for b in run.bodies]
                    gets = [
                        request_bytes("GET", f"/tasks/{ids[i % len(ids)]}", key)
                        for i in range(args.gets)
                    ]
                    profiler = profile(args.profile, number, pids[target], f"{target}-get")
                    get_runs[target].append(load(port, gets, args.clients, 200))
                    profiling.stop(profiler)
                print(
                    f"round {number + 1}: POST platform {post_runs['platform'][-1].rate:.1f}/s "
                    f"floor {post_runs['floor'][-1].rate:.1f}/s; GET platform "
                    f"{get_runs['platform'][-1].rate:.0f}/s floor "
                    f"{get_runs['floor'][-1].rate:.0f}/s",
                    flush=True,
                )
            kind = platform.database.kind
        finally:
            platform.stop()
    print(f"one uvicorn process each, {kind}, Redis, {args.clients} clients, {args.rounds} rounds")
    print(
        _summary(
            f"POST /batch-expenses ({BATCH_SIZE} expenses, {args.posts} a round)",
            post_runs["platform"],
            post_runs["floor"],
        )
    )
    print(
        _summary(
            f"GET /tasks/{{id}} ({args.gets} a round)", get_runs["platform"], get_runs["floor"]
        )
    )


if __name__ == "__main__":
    main()
