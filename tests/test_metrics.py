"""Prometheus metrics after a real run: the API's /metrics (requests and the scrape-time
queue signal) and a prefork worker's METRICS_PORT (its children's samples, merged)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from audit.db import upgrade_database
from audit.settings import Settings
from cli.processes import free_port
from tests.support.helpers import active_registration, expense, make_cnpj
from tests.support.platform import Platform, launch_platform, sqlite_url
from worker.celery_app import PROCESS_BATCH_TASK, create_celery_app

TASK = PROCESS_BATCH_TASK
Sample = tuple[str, dict[str, str], float]
WORKER_METRICS: dict[str, str] = {}
MULTIPROC_DIRS: dict[str, Path] = {}


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory, redis_server: str) -> Iterator[Platform]:
    database_url = sqlite_url(tmp_path_factory.mktemp("db"))
    upgrade_database(database_url)
    # Lookups may take 6 s (the queue-signal test's slow batches) without timing out.
    extra = {
        "MAX_ATTEMPTS": "2",
        "RATE_LIMIT_MAX_WAIT_SECONDS": "0.5",
        "PROVIDER_TIMEOUT_SECONDS": "15",
    }
    platform = launch_platform(
        tmp_path_factory, redis_server, database_url, worker=False, extra_env=extra
    )
    port = free_port()
    # One directory per worker: the pool children write their samples there.
    directory = tmp_path_factory.mktemp("prometheus")
    # A stale file from an earlier run of this worker must not be counted.
    (directory / "counter_999999.db").write_bytes(b"stale")
    try:
        platform.start_worker(
            concurrency=2,
            METRICS_PORT=str(port),
            METRICS_HOST="127.0.0.1",
            PROMETHEUS_MULTIPROC_DIR=str(directory),
        )
    except BaseException:
        platform.stop()
        raise
    WORKER_METRICS[platform.api_url] = f"http://127.0.0.1:{port}/metrics"
    MULTIPROC_DIRS[platform.api_url] = directory
    yield platform
    platform.stop()


def scrape(url: str) -> list[Sample]:
    text = httpx.get(url, timeout=10).text
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def api_samples(platform: Platform) -> list[Sample]:
    return scrape(f"{platform.api_url}/metrics")


def worker_samples(platform: Platform) -> list[Sample]:
    return scrape(WORKER_METRICS[platform.api_url])


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """Sum of the samples named `name` whose labels include `labels` (0 if none)."""
    return sum(v for n, lab, v in samples if n == name and labels.items() <= lab.items())


def queue_parts(samples: list[Sample], queue: str) -> dict[str, float]:
    """The queue signal's messages by state."""
    return {
        state: value(samples, "condo_audit_queue_messages", queue=queue, state=state)
        for state in ("backlog", "queued", "in_flight", "scheduled")
    }


def label_sets(samples: list[Sample], name: str) -> set[frozenset[str]]:
    return {frozenset(lab) for n, lab, _ in samples if n == name}


def submit(platform: Platform, condominium: str, *suppliers: str) -> str:
    with platform.sim() as sim:
        for cnpj in suppliers:
            sim.put(f"/_sim/registrations/{cnpj}", json=active_registration()).raise_for_status()
    items = [expense(f"m{i}", cnpj) for i, cnpj in enumerate(suppliers)]
    with platform.client() as client:
        response = client.post(
            "/batch-expenses", json={"condominium_id": condominium, "expenses": items}
        )
    assert response.status_code == 202, response.text
    return str(response.json()["task_id"])


def finish(platform: Platform, task_id: str) -> dict[str, Any]:
    return platform.wait_for_status(task_id, {"SUCCESS", "FAILURE"}, timeout=90)


def wait_for_event(platform: Platform, task_id: str, event: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    with platform.client() as client:
        while time.monotonic() < deadline:
            log = client.get(f"/batches/{task_id}/audit-log").json()
            if any(entry["event"] == event for entry in log):
                return
            time.sleep(0.05)
    raise AssertionError(f"no {event} in the audit log of {task_id}")


def run_every_path(platform: Platform) -> None:
    """Batches that take every path a metric counts: retry, cache hit, bank account, 429
    and a rescheduled limiter wait, dead letter."""
    condominium = platform.create_condominium(account_id=f"acc-{uuid.uuid4().hex[:8]}")
    shared = make_cnpj(f"metrics-shared-{uuid.uuid4()}")

    # A 503 then success; then the same supplier again (cache hit) with a bank account.
    platform.configure_simulator(cnpjws={"fail_next": 1, "fail_status": 503})
    assert finish(platform, submit(platform, condominium, shared))["status"] == "SUCCESS"
    assert finish(platform, submit(platform, condominium, shared))["status"] == "SUCCESS"
    # A 429 pushes the fleet's budget back by its Retry-After, and its batch waits that out.
    # A batch arriving meanwhile finds its slot too far away (more than
    # RATE_LIMIT_MAX_WAIT_SECONDS) and is rescheduled by the limiter.
    platform.configure_simulator(
        cnpjws={"fail_next": 1, "fail_status": 429, "retry_after": True, "retry_after_seconds": 4},
    )
    try:
        limited = submit(platform, condominium, make_cnpj(f"metrics-429-{uuid.uuid4()}"))
        wait_for_event(platform, limited, "rate_limited")
        deferred = submit(platform, condominium, make_cnpj(f"metrics-deferred-{uuid.uuid4()}"))
        assert finish(platform, limited)["status"] == "SUCCESS"
        assert finish(platform, deferred)["status"] == "SUCCESS"
    finally:
        platform.configure_simulator(cnpjws={"retry_after": False, "retry_after_seconds": None})
    # An outage: both attempts fail, the batch is dead-lettered.
    platform.configure_simulator(cnpjws={"outage": True})
    try:
        dead = submit(platform, condominium, make_cnpj(f"metrics-dead-{uuid.uuid4()}"))
        assert finish(platform, dead)["status"] == "FAILURE"
    finally:
        platform.configure_simulator(cnpjws={"outage": False})


def test_every_metric_is_exported_with_its_labels_after_a_run(metered: Platform) -> None:
    run_every_path(metered)
    worker = worker_samples(metered)
    # Multiprocess mode is really in use: the stale file is gone, the children wrote theirs.
    files = {p.name for p in MULTIPROC_DIRS[metered.api_url].iterdir()}
    assert "counter_999999.db" not in files
    assert any(name.startswith("counter_") for name in files), files
    assert value(worker, "condo_audit_tasks_total", task=TASK, outcome="success") >= 3
    assert value(worker, "condo_audit_tasks_total", task=TASK, outcome="retry") >= 3
    assert value(worker, "condo_audit_tasks_total", task=TASK, outcome="dead_lettered") == 1
    assert label_sets(worker, "condo_audit_task_duration_seconds_bucket") == {
        frozenset({"task", "outcome", "le"})
    }
    assert value(worker, "condo_audit_task_duration_seconds_count", outcome="success") >= 3
    retries = {"task": TASK, "provider": "cnpjws"}
    assert value(worker, "condo_audit_task_retries_total", reason="unavailable", **retries) >= 2
    assert value(worker, "condo_audit_task_retries_total", reason="provider_429", **retries) == 1
    assert value(worker, "condo_audit_task_retries_total", reason="rate_limit_wait") >= 1
    assert value(worker, "condo_audit_dead_letters_total", task=TASK, provider="cnpjws") == 1
    cnpj_endpoint = {"provider": "cnpjws", "endpoint": "/cnpj/{cnpj}"}
    for status in ("200", "503", "429"):
        assert value(worker, "condo_audit_provider_requests_total", status=status, **cnpj_endpoint)
    for endpoint in ("/auth", "/transactions"):
        assert value(
            worker,
            "condo_audit_provider_requests_total",
            provider="pluggy",
            endpoint=endpoint,
            status="200",
        )
    assert value(worker, "condo_audit_provider_request_duration_seconds_count", **cnpj_endpoint)
    assert value(worker, "condo_audit_ratelimit_wait_seconds_count", budget="cnpjws") >= 4
    assert value(worker, "condo_audit_ratelimit_deferred_total", budget="cnpjws") >= 1
    assert value(worker, "condo_audit_supplier_cache_lookups_total", result="hit") >= 1
    assert value(worker, "condo_audit_supplier_cache_lookups_total", result="miss") >= 3

    api = api_samples(metered)
    post = {"method": "POST", "route": "/batch-expenses"}
    assert value(api, "condo_audit_http_requests_total", status="202", **post) == 5
    assert value(api, "condo_audit_http_request_duration_seconds_count", **post) == 5
    # Path parameters are reported by their template, never by value.
    assert value(
        api, "condo_audit_http_requests_total", method="GET", route="/tasks/{task_id}", status="200"
    )
    assert not any(
        "route" in lab and lab["route"].startswith("/tasks/") and "{" not in lab["route"]
        for _, lab, _ in api
    )
    assert value(api, "condo_audit_dead_letters_open") == 1
    assert value(api, "condo_audit_workers") == 1
    assert value(api, "condo_audit_ratelimit_budget_per_minute", budget="cnpjws") == 6000
    assert label_sets(api, "condo_audit_ratelimit_backlog_seconds") == {frozenset({"budget"})}
    assert value(api, "condo_audit_signal_up", source="redis") == 1
    assert value(api, "condo_audit_signal_up", source="database") == 1


def test_the_queue_signal_splits_queued_in_flight_and_scheduled(metered: Platform) -> None:
    queue = metered.env["AUDIT_QUEUE"]
    condominium = metered.create_condominium()
    app = create_celery_app(Settings(redis_url=metered.redis_url, audit_queue=queue))
    # A retry waiting for its eta: the worker holds it in `unacked` until it is due.
    app.send_task(TASK, args=["no-such-batch"], queue=queue, countdown=600)
    # 6 s a batch: the state below lasts until the first two finish, however long the four
    # submissions and the scrapes take on a busy machine.
    metered.configure_simulator(cnpjws={"latency_ms": 6000})
    try:
        tasks = [submit(metered, condominium, make_cnpj(f"slow-{uuid.uuid4()}")) for _ in range(4)]
        deadline = time.monotonic() + 30
        while True:
            api = api_samples(metered)
            parts = queue_parts(api, queue)
            # 4 batches, 2 slots: 2 running, 1 spare in the list, 1 in the tenant's backlog.
            if (
                parts["backlog"] >= 1
                and parts["queued"] >= 1
                and parts["in_flight"] >= 2
                and parts["scheduled"] >= 1
            ):
                break
            assert time.monotonic() < deadline, parts
            time.sleep(0.2)
        assert value(api, "condo_audit_queue_outstanding", queue=queue) == sum(parts.values())
        assert value(api, "condo_audit_backlog_tenants") == 1
        assert value(api, "condo_audit_backlog_largest_tenant_batches") == parts["backlog"]
    finally:
        metered.configure_simulator(cnpjws={"latency_ms": 0})
    for task_id in tasks:
        assert finish(metered, task_id)["status"] == "SUCCESS"
    # The worker acks a message after its task has stored SUCCESS (acks_late): on a busy
    # machine the last ack can come a moment after the status, so the signal gets a bound.
    deadline = time.monotonic() + 30
    while True:
        parts = queue_parts(api_samples(metered), queue)
        if parts == {"backlog": 0, "queued": 0, "in_flight": 0, "scheduled": 1}:
            break
        assert time.monotonic() < deadline, parts
        time.sleep(0.2)
    app.close()


def test_metrics_and_probes_are_not_counted_as_traffic(metered: Platform) -> None:
    httpx.get(f"{metered.api_url}/healthz").raise_for_status()
    api = api_samples(metered)
    assert not value(api, "condo_audit_http_requests_total", route="/healthz")
    assert not value(api, "condo_audit_http_requests_total", route="/metrics")
    with metered.client() as client:
        assert client.get(f"/tasks/{uuid.uuid4()}").status_code == 404
        assert client.get("/no/such/path").status_code == 404
    api = api_samples(metered)
    assert value(api, "condo_audit_http_requests_total", route="/tasks/{task_id}", status="404")
    assert value(api, "condo_audit_http_requests_total", route="<unmatched>", status="404")


def test_metrics_import_creates_a_missing_multiprocess_directory(tmp_path: Path) -> None:
    """A pod's /tmp starts empty: importing the metrics must not fail on the missing dir."""
    directory = tmp_path / "not-yet" / "prometheus"
    result = subprocess.run(
        [sys.executable, "-c", "import audit.observability.metrics"],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert directory.is_dir()
