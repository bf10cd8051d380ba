"""A no-op task on the platform's Celery app: the reference for the worker benchmark.

Registered only when a benchmark starts a worker with `--include bench.noop_task`; the
production worker never loads it.
"""

from __future__ import annotations

from worker.celery_app import app

NOOP_TASK = "bench.noop"


@app.task(name=NOOP_TASK)  # type: ignore[untyped-decorator]
def noop(batch_id: str) -> dict[str, str]:
    return {"batch_id": batch_id}
