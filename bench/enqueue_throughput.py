"""API enqueue throughput against bare Celery `send_task` into the same Redis, in one run.

    python -m bench.enqueue_throughput [--batches 600] [--clients 16] [--api-workers 2]

Starts a private redis-server, a fresh database (PostgreSQL when it answers), and the API
under uvicorn with `--api-workers` processes; no Celery worker runs, so every message stays
queued and is counted. The API side is POST /batch-expenses with the workload generator's
months (about 50 expenses each) from `--clients` concurrent connections; it validates,
stores the batch and its expenses, and enqueues. The reference is the same
`audit.process_batch_expenses` message sent by `send_task` (the platform's Celery config,
the same publish options) from as many processes as the API has workers. GET /tasks/{id}
is measured the same way, for the API's request rate at the month-end mix.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from redis import Redis

from audit.settings import Settings
from bench import profiling
from loadtests.platform import ONE_TENANT_LOAD_ENV, create_tenants, start_platform
from ops.workload import WorkloadConfig, condominium_month
from worker.broker import read_backlog
from worker.celery_app import PROCESS_BATCH_TASK, create_celery_app
from worker.enqueue import PUBLISH_RETRY_POLICY


async def _hammer(
    api_url: str, key: str, requests: list[tuple[str, str, Any]], clients: int
) -> tuple[float, list[Any]]:
    """Send `requests` (method, path, body) over `clients` connections; (seconds, bodies)."""
    queue: asyncio.Queue[tuple[int, tuple[str, str, Any]]] = asyncio.Queue()
    for item in enumerate(requests):
        queue.put_nowait(item)
    answers: list[Any] = [None] * len(requests)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=api_url, headers={"X-API-Key": key}, timeout=60, limits=limits
    ) as client:

        async def one_client() -> None:
            while not queue.empty():
                index, (method, path, body) = queue.get_nowait()
                response = await client.request(method, path, json=body)
                response.raise_for_status()
                answers[index] = response.json()

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        return time.perf_counter() - started, answers


def _send(redis_url: str, queue: str, count: int, start: multiprocessing.Event) -> None:  # type: ignore[valid-type]
    app = create_celery_app(Settings(redis_url=redis_url, audit_queue=queue))
    app.send_task(PROCESS_BATCH_TASK, args=["warm-up"], queue=queue)  # connect before the clock
    start.wait()  # type: ignore[attr-defined]
    for _ in range(count):
        batch_id = str(uuid.uuid4())
        app.send_task(
            PROCESS_BATCH_TASK,
            args=[batch_id],
            task_id=batch_id,
            queue=queue,
            retry=True,
            retry_policy=PUBLISH_RETRY_POLICY,
        )


def bare_send_task(redis_url: str, processes: int, per_process: int) -> float:
    """Messages per second that `processes` processes publish with send_task."""
    queue = f"bench-bare-{uuid.uuid4().hex[:6]}"
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    workers = [
        context.Process(target=_send, args=(redis_url, queue, per_process, start))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    redis = Redis.from_url(redis_url)
    while redis.llen(queue) < processes:  # every sender connected and warm
        time.sleep(0.05)
    started = time.perf_counter()
    start.set()
    for worker in workers:
        worker.join()
    seconds = time.perf_counter() - started
    assert redis.llen(queue) == processes * (per_process + 1)
    redis.delete(queue)
    return processes * per_process / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=600)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument("--database", choices=("auto", "postgresql", "sqlite"), default="auto")
    parser.add_argument(
        "--profile", type=Path, help="record the API processes with py-spy during the POSTs"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-enqueue-") as tmp:
        platform = start_platform(
            Path(tmp),
            database=args.database,
            api_workers=args.api_workers,
            extra_env=ONE_TENANT_LOAD_ENV,
        )
        try:
            key = create_tenants(platform.database.url, 1)[0]
            config = WorkloadConfig(condominiums=args.batches, seed=7)
            months = [condominium_month(config, i) for i in range(args.batches)]
            created = asyncio.run(
                _hammer(
                    platform.api_url, key,
                    [("POST", "/condominiums", m.condominium_request()) for m in months], 8,
                )
            )[1]  # fmt: skip
            posts = [
                ("POST", "/batch-expenses", m.batch_request(c["id"]))
                for m, c in zip(months, created, strict=True)
            ]
            warm = len(posts) // 10
            asyncio.run(_hammer(platform.api_url, key, posts[:warm], args.clients))
            api_pid = platform.processes[-1].pid
            profiler = (
                profiling.start(api_pid, args.profile, subprocesses=True) if args.profile else None
            )
            post_seconds, accepted = asyncio.run(
                _hammer(platform.api_url, key, posts[warm:], args.clients)
            )
            profiling.stop(profiler)
            # Accepted batches wait in their tenant's backlog or in the queue list (no worker
            # runs): every one of them is counted once.
            backlog = read_backlog(Redis.from_url(platform.redis_url), "audit")
            queued = backlog.queued + backlog.backlogged
            assert queued == len(posts), f"{queued} batches outstanding for {len(posts)} posted"
            gets = [("GET", f"/tasks/{a['task_id']}", None) for a in accepted] * 2
            get_seconds = asyncio.run(_hammer(platform.api_url, key, gets, args.clients))[0]
            bare = bare_send_task(platform.redis_url, args.api_workers, 5000)
            bare_one = bare_send_task(platform.redis_url, 1, 5000)
        finally:
            platform.stop()
    expenses = sum(len(m.expenses) for m in months[warm:]) / len(posts[warm:])
    post_rate = len(posts[warm:]) / post_seconds
    get_rate = len(gets) / get_seconds
    print(
        f"API ({args.api_workers} uvicorn workers, {platform.database.kind}, {args.clients} "
        f"clients): POST /batch-expenses {post_rate:.1f}/s ({expenses:.1f} expenses each, "
        f"{len(posts[warm:])} batches), GET /tasks/{{id}} {get_rate:.1f}/s\n"
        f"bare send_task into the same Redis: {bare:.0f}/s from {args.api_workers} processes, "
        f"{bare_one:.0f}/s from 1\n"
        f"ratio API enqueue / bare send_task: {post_rate / bare:.1%} (target >= 50%)"
    )


if __name__ == "__main__":
    main()
