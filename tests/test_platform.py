"""The spine end to end: HTTP -> Redis -> a real Celery worker -> the database, and back."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
from redis import Redis
from sqlalchemy import func, select

from api.schemas import Progress, TaskStatus
from audit.db import session_scope
from audit.models import Batch, Expense, Finding
from audit.settings import Settings
from tests.support.helpers import active_registration, expense, make_cnpj
from tests.support.platform import Platform
from worker.celery_app import PROCESS_BATCH_TASK, create_celery_app


def register_active(platform: Platform, *cnpjs: str) -> None:
    with platform.sim() as sim:
        for cnpj in cnpjs:
            sim.put(f"/_sim/registrations/{cnpj}", json=active_registration()).raise_for_status()


def submit(
    client: httpx.Client, condominium_id: str, expenses: list[dict[str, Any]], **headers: str
) -> httpx.Response:
    return client.post(
        "/batch-expenses",
        json={"condominium_id": condominium_id, "expenses": expenses},
        headers=headers,
    )


def count_rows(platform: Platform, model: type[Any]) -> int:
    with session_scope(platform.database_url) as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def events(platform: Platform, task_id: str) -> list[str]:
    with platform.client() as client:
        response = client.get(f"/batches/{task_id}/audit-log")
    assert response.status_code == 200
    return [entry["event"] for entry in response.json()]


def test_a_batch_is_audited_end_to_end(platform: Platform) -> None:
    good, gone = make_cnpj("good-supplier"), make_cnpj("gone-supplier")
    register_active(platform, good)
    with platform.sim() as sim:
        sim.put(f"/_sim/registrations/{gone}", json={"found": False}).raise_for_status()
    condominium = platform.create_condominium()
    items = [expense("e1", good, "250.00"), expense("e2", gone, "99.90")]
    with platform.client() as client:
        started = time.monotonic()
        response = submit(client, condominium, items)
        elapsed = time.monotonic() - started
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "PENDING"
    assert body["status_url"].endswith(f"/tasks/{body['task_id']}")
    assert elapsed < 5  # answered without waiting for the audit

    status = platform.wait_for_status(body["task_id"], {"SUCCESS", "FAILURE"})
    assert status["status"] == "SUCCESS", status
    assert status["progress"] == {"done": 2, "total": 2}
    assert status["summary"]["by_rule"].get("SUPPLIER_NOT_FOUND") == 1

    with platform.client() as client:
        findings = client.get(f"/batches/{body['task_id']}/findings").json()
    not_found = [f for f in findings["items"] if f["rule_code"] == "SUPPLIER_NOT_FOUND"]
    assert len(not_found) == 1
    assert not_found[0]["severity"] == "critical"
    assert events(platform, body["task_id"]) == ["submitted", "started", "finished"]
    # The status lives in the database: the worker keeps no Celery result in Redis for it.
    with Redis.from_url(platform.redis_url) as redis:
        assert list(redis.scan_iter("celery-task-meta-*")) == []


def test_an_alphanumeric_cnpj_is_accepted_and_stored_canonical(platform: Platform) -> None:
    supplier = make_cnpj("alnum-supplier", alphanumeric=True)
    assert not supplier.isdigit()
    register_active(platform, supplier)
    masked = f"{supplier[:2]}.{supplier[2:5]}.{supplier[5:8]}/{supplier[8:12]}-{supplier[12:]}"
    condominium = platform.create_condominium()
    with platform.client() as client:
        response = submit(client, condominium, [expense("a1", masked.lower())])
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    assert platform.wait_for_status(task_id, {"SUCCESS", "FAILURE"})["status"] == "SUCCESS"
    with session_scope(platform.database_url) as session:
        stored = session.scalar(select(Expense.supplier_cnpj).where(Expense.batch_id == task_id))
    assert stored == supplier


def test_a_provider_failing_twice_then_succeeding_retries_twice(platform: Platform) -> None:
    supplier = make_cnpj(f"flaky-{uuid.uuid4()}")
    register_active(platform, supplier)
    condominium = platform.create_condominium()
    platform.configure_simulator(cnpjws={"fail_next": 2, "fail_status": 503})
    with platform.client() as client:
        task_id = submit(client, condominium, [expense("f1", supplier)]).json()["task_id"]
    seen: set[str] = set()
    deadline = time.monotonic() + 60
    with platform.client() as client:
        while time.monotonic() < deadline:
            status = client.get(f"/tasks/{task_id}").json()
            seen.add(status["status"])
            if status["status"] in {"SUCCESS", "FAILURE"}:
                break
            time.sleep(0.02)
    assert status["status"] == "SUCCESS", status
    assert "RETRY" in seen
    assert status["failed_attempts"] == 2
    assert events(platform, task_id).count("retried") == 2
    assert events(platform, task_id)[-1] == "finished"


def test_a_provider_failing_always_is_dead_lettered_then_replayed(platform: Platform) -> None:
    supplier = make_cnpj(f"down-{uuid.uuid4()}")
    register_active(platform, supplier)
    condominium = platform.create_condominium()
    platform.configure_simulator(cnpjws={"outage": True})
    try:
        with platform.client() as client:
            task_id = submit(client, condominium, [expense("d1", supplier)]).json()["task_id"]
        status = platform.wait_for_status(task_id, {"SUCCESS", "FAILURE"}, timeout=90)
    finally:
        platform.configure_simulator(cnpjws={"outage": False})
    assert status["status"] == "FAILURE"
    assert "dead-lettered after 5 failed attempts" in status["error"]
    log = events(platform, task_id)
    assert log.count("started") == 5
    assert log.count("retried") == 4
    assert log[-1] == "dead_lettered"

    with platform.client() as client:
        letters = client.get("/dead-letters").json()
        mine = [letter for letter in letters if letter["batch_id"] == task_id]
        assert len(mine) == 1
        letter = mine[0]
        assert letter["attempts"] == 5
        assert letter["provider"] == "cnpjws"
        assert letter["payload"] == {"batch_id": task_id}

        replay = client.post(f"/dead-letters/{letter['id']}/replay")
        assert replay.status_code == 200, replay.text
        assert replay.json()["enqueued"] is True
        status = platform.wait_for_status(task_id, {"SUCCESS", "FAILURE"})
        assert status["status"] == "SUCCESS"
        again = client.post(f"/dead-letters/{letter['id']}/replay")
        assert again.json()["enqueued"] is False  # replay is idempotent
    assert events(platform, task_id)[-3:] == ["replayed", "started", "finished"]


def test_the_same_idempotency_key_returns_the_same_task(platform: Platform) -> None:
    supplier = make_cnpj("idem-supplier")
    register_active(platform, supplier)
    condominium = platform.create_condominium()
    key = f"month-{uuid.uuid4()}"
    with platform.client() as client:
        first = submit(client, condominium, [expense("i1", supplier)], **{"Idempotency-Key": key})
        second = submit(client, condominium, [expense("i1", supplier)], **{"Idempotency-Key": key})
    assert first.status_code == 202
    assert second.status_code == 202
    assert second.json()["task_id"] == first.json()["task_id"]
    assert second.headers["Idempotent-Replayed"] == "true"
    with session_scope(platform.database_url) as session:
        batches = session.scalar(
            select(func.count()).select_from(Batch).where(Batch.idempotency_key == key)
        )
    assert batches == 1


def test_invalid_input_is_rejected_whole_and_nothing_is_stored(platform: Platform) -> None:
    supplier = make_cnpj("valid-supplier")
    condominium = platform.create_condominium()
    before = (count_rows(platform, Batch), count_rows(platform, Expense))
    bad = [
        expense("ok", supplier),
        expense("bad-cnpj", "11.222.333/0001-82"),
        {**expense("bad-amount", supplier), "amount": "12.345"},
        {**expense("neg", supplier), "amount": "-5.00"},
        {**expense("bad-date", supplier), "date": "2026-02-30"},
        {**expense("extra", supplier), "unexpected": 1},
    ]
    with platform.client() as client:
        response = submit(client, condominium, bad)
    assert response.status_code == 422
    errors = {(tuple(e["loc"][2:4]), e["msg"]) for e in response.json()["detail"]}
    locations = {loc for loc, _ in errors}
    assert (1, "supplier_cnpj") in locations
    assert (2, "amount") in locations
    assert (3, "amount") in locations
    assert (4, "date") in locations
    assert (5, "unexpected") in locations
    assert any("check digits" in msg for loc, msg in errors if loc == (1, "supplier_cnpj"))
    assert (count_rows(platform, Batch), count_rows(platform, Expense)) == before


def test_a_batch_over_the_size_limit_is_refused(platform: Platform) -> None:
    supplier = make_cnpj("bulk-supplier")
    condominium = platform.create_condominium()
    items = [expense(f"x{i}", supplier) for i in range(1001)]
    with platform.client() as client:
        response = submit(client, condominium, items)
    assert response.status_code == 413
    assert "batch size limit of 1000" in response.json()["detail"]


def test_an_unknown_task_is_404_not_pending(platform: Platform) -> None:
    with platform.client() as client:
        response = client.get(f"/tasks/{uuid.uuid4()}")
    assert response.status_code == 404
    assert response.json() == {"detail": "task not found"}


def test_a_task_reads_whole_for_its_tenant_and_404_for_another(platform: Platform) -> None:
    """GET /tasks/{id} reads on the event loop (audit.asyncdb), on SQLite and PostgreSQL:
    the same answer the ORM's row gives, and nothing for another tenant."""
    supplier = make_cnpj(f"polled-{uuid.uuid4()}")
    register_active(platform, supplier)
    condominium = platform.create_condominium()
    with platform.client() as client:
        task_id = submit(client, condominium, [expense("p1", supplier)]).json()["task_id"]
    assert platform.wait_for_status(task_id, {"SUCCESS", "FAILURE"})["status"] == "SUCCESS"
    with session_scope(platform.database_url) as session:
        batch = session.get_one(Batch, task_id)
        expected = TaskStatus(
            task_id=batch.id,
            batch_id=batch.id,
            condominium_id=batch.condominium_id,
            status=batch.status,
            progress=Progress(done=batch.expenses_done, total=batch.expenses_total),
            failed_attempts=batch.failed_attempts,
            summary=batch.summary,
            error=batch.error,
            trace_id=batch.trace_id,
            submitted_at=batch.submitted_at,
            started_at=batch.started_at,
            finished_at=batch.finished_at,
        ).model_dump(mode="json")
    with platform.client() as client:
        answers = [client.get(f"/tasks/{task_id}") for _ in range(3)]
    for answer in answers:
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/json"
        assert answer.json() == expected

    _, other_key = platform.new_tenant("snoop")
    with platform.client(other_key) as client:
        refused = [client.get(f"/tasks/{task_id}") for _ in range(3)]  # looked up, then cached
    assert [r.status_code for r in refused] == [404] * 3
    assert {r.text for r in refused} == {'{"detail":"task not found"}'}


def test_requests_without_a_valid_key_are_401(platform: Platform) -> None:
    with httpx.Client(base_url=platform.api_url) as client:
        assert client.get(f"/tasks/{uuid.uuid4()}").status_code == 401
        bad = client.get(f"/tasks/{uuid.uuid4()}", headers={"X-API-Key": "ca_wrong"})
        assert bad.status_code == 401


def test_health_and_readiness(platform: Platform) -> None:
    with httpx.Client(base_url=platform.api_url) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"redis": "ok", "database": "ok"}


def test_findings_are_never_duplicated_when_a_batch_runs_twice(platform: Platform) -> None:
    supplier = make_cnpj(f"twice-{uuid.uuid4()}")
    with platform.sim() as sim:
        sim.put(f"/_sim/registrations/{supplier}", json={"found": False}).raise_for_status()
    condominium = platform.create_condominium()
    with platform.client() as client:
        task_id = submit(client, condominium, [expense("t1", supplier)]).json()["task_id"]
    platform.wait_for_status(task_id, {"SUCCESS"})
    first = fingerprints(platform, task_id)
    with session_scope(platform.database_url) as session:
        batch = session.get(Batch, task_id)
        assert batch is not None
        batch.status = "STARTED"  # as if the worker had died mid-way and the message came back
    requeue(platform, task_id)
    deadline = time.monotonic() + 30
    while events(platform, task_id).count("finished") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert events(platform, task_id).count("finished") == 2
    assert first
    assert fingerprints(platform, task_id) == first


def fingerprints(platform: Platform, task_id: str) -> list[str]:
    with session_scope(platform.database_url) as session:
        query = select(Finding.fingerprint).where(Finding.batch_id == task_id)
        return sorted(session.scalars(query))


def requeue(platform: Platform, task_id: str) -> None:
    """Publish the task again into the platform's Redis, as a redelivery would."""
    app = create_celery_app(
        Settings(redis_url=platform.redis_url, audit_queue=platform.env["AUDIT_QUEUE"])
    )
    app.send_task(
        PROCESS_BATCH_TASK, args=[task_id], task_id=task_id, queue=platform.env["AUDIT_QUEUE"]
    )
    app.close()
