"""Completion webhooks on the live platform: the API, the audit worker, a webhooks worker
(its own queue, a thread pool) and a signature-verifying receiver on loopback.

The retry schedule is shortened through settings: 0.5 s (within the inline limit, a task
countdown) then 2 s (beyond it, so the dispatcher publishes it), then the delivery fails.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook as ReferenceWebhook

from audit.db import session_factory, session_scope, upgrade_database
from audit.models import Webhook
from audit.settings import Settings
from audit.webhooks import EventType
from audit.webhooks.delivery import Deliverer
from audit.webhooks.outbox import record_batch_event
from audit.webhooks.secretbox import new_key
from cli.processes import free_port, start_api
from simulator.webhook_receiver import WebhookReceiver
from tests.support.helpers import active_registration, expense, make_cnpj
from tests.support.platform import Platform, fresh_postgres_schema, launch_platform, sqlite_url

pytestmark = pytest.mark.slow

ALL_EVENTS = ["batch.succeeded", "batch.failed", "batch.dead_lettered"]
SECRET_KEY = new_key()
WEBHOOK_ENV = {
    "WEBHOOK_SECRET_KEYS": SECRET_KEY,
    "WEBHOOK_ALLOW_PRIVATE_URLS": "true",
    "WEBHOOK_RETRY_SCHEDULE_SECONDS": "[0.5, 2.0]",
    "WEBHOOK_RETRY_JITTER_RATIO": "0",
    "WEBHOOK_INLINE_RETRY_MAX_SECONDS": "1",
    "WEBHOOK_DISPATCH_INTERVAL_SECONDS": "0.3",
    "WEBHOOK_CONNECT_TIMEOUT_SECONDS": "1",
    "WEBHOOK_READ_TIMEOUT_SECONDS": "1",
    "MAX_ATTEMPTS": "2",
    "RETRY_BACKOFF_BASE_SECONDS": "0.1",
}


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def platform(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_server: str
) -> Iterator[Platform]:
    if request.param == "sqlite":
        database_url = sqlite_url(tmp_path_factory.mktemp("db"))
        upgrade_database(database_url)
    else:
        database_url = fresh_postgres_schema(request.getfixturevalue("postgres_database"))
    running = launch_platform(tmp_path_factory, redis_server, database_url, extra_env=WEBHOOK_ENV)
    try:
        running.start_webhooks_worker()
    except BaseException:
        running.stop()
        raise
    yield running
    running.stop()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as server:
        yield server


@pytest.fixture
def tenant(platform: Platform) -> str:
    """A tenant of the test's own: its webhooks see only its batches."""
    return platform.new_tenant(f"hooks-{uuid.uuid4().hex[:6]}")[1]


def client(platform: Platform, key: str) -> httpx.Client:
    return platform.client(api_key=key)


def register(
    platform: Platform, key: str, receiver: WebhookReceiver, events: list[str] | None = None
) -> dict[str, Any]:
    with client(platform, key) as api:
        response = api.post("/webhooks", json={"url": receiver.url, "events": events or ALL_EVENTS})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    receiver.secret = created["secret"]
    return created


def condominium(platform: Platform, key: str) -> str:
    with client(platform, key) as api:
        response = api.post("/condominiums", json={"name": f"Condomínio {uuid.uuid4().hex[:6]}"})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def submit(platform: Platform, key: str, condominium_id: str) -> str:
    cnpj = make_cnpj(f"hook-{uuid.uuid4()}")
    with platform.sim() as sim:
        sim.put(f"/_sim/registrations/{cnpj}", json=active_registration()).raise_for_status()
    with client(platform, key) as api:
        response = api.post(
            "/batch-expenses",
            json={"condominium_id": condominium_id, "expenses": [expense("e1", cnpj)]},
        )
    assert response.status_code == 202, response.text
    return str(response.json()["task_id"])


def wait_task(platform: Platform, key: str, task_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with client(platform, key) as api:
        while time.monotonic() < deadline:
            body: dict[str, Any] = api.get(f"/tasks/{task_id}").json()
            if body["status"] in ("SUCCESS", "FAILURE"):
                return body
            time.sleep(0.1)
    raise AssertionError(f"task {task_id} did not finish")


def deliveries(platform: Platform, key: str, webhook_id: str) -> list[dict[str, Any]]:
    with client(platform, key) as api:
        response = api.get(f"/webhooks/{webhook_id}/deliveries")
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()
    return found


def wait_delivery(
    platform: Platform, key: str, webhook_id: str, status: str, timeout: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = deliveries(platform, key, webhook_id)
        if rows and rows[0]["status"] == status:
            return rows[0]
        time.sleep(0.1)
    tail = platform.processes["webhooks"].log_tail(40)
    raise AssertionError(f"no {status} delivery: {rows}\n{tail}")


def test_registration_is_validated_and_isolated(platform: Platform, tenant: str) -> None:
    url = "http://127.0.0.1:9/hook"
    with client(platform, tenant) as api:
        for body, field in [
            ({"events": ALL_EVENTS}, "url"),
            ({"url": url, "events": []}, "events"),
            ({"url": url, "events": ["batch.started"]}, "events"),
            ({"url": url, "events": ["batch.failed", "batch.failed"]}, "events"),
            ({"url": url, "events": ALL_EVENTS, "secret": "mine"}, "secret"),
            ({"url": "not a url", "events": ALL_EVENTS}, "url"),
            ({"url": "ftp://127.0.0.1/x", "events": ALL_EVENTS}, "url"),
        ]:
            response = api.post("/webhooks", json=body)
            assert response.status_code == 422, (body, response.text)
            assert field in [str(part) for e in response.json()["detail"] for part in e["loc"]]
        created = api.post("/webhooks", json={"url": url, "events": ["batch.failed"]})
        assert created.status_code == 201, created.text
        hook = created.json()
        assert hook["secret"].startswith("whsec_")
        assert hook["events"] == ["batch.failed"]
        listed = api.get("/webhooks").json()
        assert [h["id"] for h in listed] == [hook["id"]]
        assert "secret" not in listed[0]
        assert "secret" not in api.get(f"/webhooks/{hook['id']}").json()

    other = platform.new_tenant("other")[1]
    with client(platform, other) as api:
        assert api.get("/webhooks").json() == []
        for method, path in [
            ("GET", f"/webhooks/{hook['id']}"),
            ("DELETE", f"/webhooks/{hook['id']}"),
            ("POST", f"/webhooks/{hook['id']}/rotate-secret"),
            ("GET", f"/webhooks/{hook['id']}/deliveries"),
            ("POST", f"/webhooks/{hook['id']}/deliveries/x/redeliver"),
        ]:
            assert api.request(method, path).status_code == 404, (method, path)

    with client(platform, tenant) as api:
        assert api.delete(f"/webhooks/{hook['id']}").status_code == 204
        assert api.get(f"/webhooks/{hook['id']}").status_code == 404
        assert api.get("/webhooks").json() == []


def test_a_finished_batch_delivers_a_signed_message(
    platform: Platform, tenant: str, receiver: WebhookReceiver
) -> None:
    hook = register(platform, tenant, receiver)
    with WebhookReceiver() as failed_only:
        register(platform, tenant, failed_only, events=["batch.failed"])
        receiver.secret = hook["secret"]
        condo = condominium(platform, tenant)
        task_id = submit(platform, tenant, condo)
        status = wait_task(platform, tenant, task_id)
        assert status["status"] == "SUCCESS"
        (received,) = receiver.wait_for(1)
        time.sleep(1.0)
        assert failed_only.deliveries() == []  # not subscribed to batch.succeeded
    assert received.verified, received.problem
    payload = ReferenceWebhook(hook["secret"]).verify(received.body, received.headers)
    assert payload["type"] == "batch.succeeded"
    assert payload["timestamp"].endswith("Z")
    data = payload["data"]
    assert data["task_id"] == data["batch_id"] == task_id
    assert data["condominium_id"] == condo
    assert data["status"] == "SUCCESS"
    assert data["summary"] == status["summary"]
    assert received.message_id.startswith("msg_")
    assert abs(int(received.headers["webhook-timestamp"]) - time.time()) < 60
    row = wait_delivery(platform, tenant, hook["id"], "succeeded")
    assert row["message_id"] == received.message_id
    assert row["attempts"] == 1
    assert row["last_response_code"] == 200
    assert row["batch_id"] == task_id
    assert row["event_type"] == "batch.succeeded"
    assert len(receiver.deliveries()) == 1


def test_a_dead_lettered_batch_sends_failed_and_dead_lettered(
    platform: Platform, tenant: str, receiver: WebhookReceiver
) -> None:
    register(platform, tenant, receiver)
    condo = condominium(platform, tenant)
    platform.configure_simulator(cnpjws={"outage": True})
    try:
        task_id = submit(platform, tenant, condo)
        assert wait_task(platform, tenant, task_id)["status"] == "FAILURE"
    finally:
        platform.configure_simulator(cnpjws={"outage": False})
    received = receiver.wait_for(2)
    bodies = {r.json()["type"]: r.json()["data"] for r in received}
    assert set(bodies) == {"batch.failed", "batch.dead_lettered"}
    assert all(r.verified for r in received)
    assert bodies["batch.dead_lettered"]["status"] == "FAILURE"
    assert bodies["batch.dead_lettered"]["dead_letter_id"]
    assert bodies["batch.dead_lettered"]["provider"] == "cnpjws"
    assert len({r.message_id for r in received}) == 2  # two messages, one id each


def test_retries_resend_the_same_message_until_it_is_taken(
    platform: Platform, tenant: str, receiver: WebhookReceiver
) -> None:
    """Fails twice, then answers 200: three attempts of one message (one webhook-id); the
    first retry rides a countdown, the second (2 s, beyond the inline limit) the dispatcher."""
    receiver.fail_first = 2
    hook = register(platform, tenant, receiver)
    wait_task(platform, tenant, submit(platform, tenant, condominium(platform, tenant)))
    row = wait_delivery(platform, tenant, hook["id"], "succeeded")
    received = receiver.deliveries()
    assert [r.answered for r in received] == [500, 500, 200]
    assert len({r.message_id for r in received}) == 1
    assert len({r.body for r in received}) == 1
    assert all(r.verified for r in received)
    assert received[1].at - received[0].at >= 0.4
    assert received[2].at - received[1].at >= 1.8
    assert row["attempts"] == 3
    assert row["last_response_code"] == 200


def test_a_receiver_that_always_fails_ends_failed_and_can_be_redelivered(
    platform: Platform, tenant: str, receiver: WebhookReceiver
) -> None:
    receiver.always_fail = True
    hook = register(platform, tenant, receiver)
    wait_task(platform, tenant, submit(platform, tenant, condominium(platform, tenant)))
    row = wait_delivery(platform, tenant, hook["id"], "failed")
    assert row["attempts"] == 3  # the first attempt and the two of the schedule
    assert row["last_response_code"] == 500
    assert row["next_attempt_at"] is None
    assert len(row["last_response_body"]) <= 256
    time.sleep(1.0)
    assert len(receiver.deliveries()) == 3

    receiver.always_fail = False
    with client(platform, tenant) as api:
        response = api.post(f"/webhooks/{hook['id']}/deliveries/{row['id']}/redeliver")
    assert response.status_code == 202, response.text
    again = wait_delivery(platform, tenant, hook["id"], "succeeded")
    assert again["attempts"] == 4
    assert again["message_id"] == row["message_id"]
    last = receiver.deliveries()[-1]
    assert last.answered == 200
    assert last.message_id == row["message_id"]
    assert last.verified


def test_outbox_rows_never_published_are_dispatched(
    platform: Platform, tenant: str, receiver: WebhookReceiver
) -> None:
    """A delivery committed with no message published (a worker that died right after its
    commit): the dispatcher finds it and sends it."""
    hook = register(platform, tenant, receiver, events=["batch.failed"])
    task_id = submit(platform, tenant, condominium(platform, tenant))
    wait_task(platform, tenant, task_id)
    with session_scope(platform.database_url) as session:
        written = record_batch_event(session, task_id, EventType.BATCH_FAILED, key="by-hand")
    assert written == 1
    (received,) = receiver.wait_for(1, timeout=15)
    assert received.verified
    assert received.json()["data"]["batch_id"] == task_id
    assert wait_delivery(platform, tenant, hook["id"], "succeeded")["attempts"] == 1


def test_a_slow_receiver_does_not_delay_audits(
    platform: Platform, tenant: str, receiver: WebhookReceiver
) -> None:
    receiver.delay_seconds = 5.0  # beyond the 1 s read timeout: every attempt times out
    hook = register(platform, tenant, receiver)
    condo = condominium(platform, tenant)
    started = time.monotonic()
    task_ids = [submit(platform, tenant, condo) for _ in range(6)]
    for task_id in task_ids:
        assert wait_task(platform, tenant, task_id)["status"] == "SUCCESS"
    elapsed = time.monotonic() - started
    rows = deliveries(platform, tenant, hook["id"])
    assert elapsed < 15, elapsed
    assert len(rows) == 6
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(
        (r["last_error"] or "").startswith("timeout") for r in rows
    ):
        time.sleep(0.2)
        rows = deliveries(platform, tenant, hook["id"])
    assert any((r["last_error"] or "").startswith("timeout") for r in rows), rows
    receiver.delay_seconds = 0


def test_private_urls_are_refused_at_registration_and_at_delivery(
    platform: Platform, tenant: str, receiver: WebhookReceiver
) -> None:
    strict_env = {**platform.env, "WEBHOOK_ALLOW_PRIVATE_URLS": "false"}
    port = free_port()
    strict = start_api(port, strict_env, platform.log_dir)
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": tenant}, timeout=10
        ) as api:
            for url in [
                receiver.url,
                receiver.url.replace("http://", "https://"),
                "https://10.0.0.7/hook",
                "https://192.168.1.1/hook",
                "https://169.254.169.254/latest/meta-data",
                "https://[::1]/hook",
                "https://localhost/hook",
                "https://0.0.0.0/hook",
            ]:
                response = api.post("/webhooks", json={"url": url, "events": ALL_EVENTS})
                assert response.status_code == 422, (url, response.text)
                assert response.json()["detail"][0]["loc"] == ["body", "url"]
    finally:
        strict.stop()

    # Registered while allowed, then pointed at https on loopback: the attempt checks again
    # and refuses without connecting. The live webhooks worker is stopped meanwhile, so the
    # strict attempt below is the only one.
    hook = register(platform, tenant, receiver, events=["batch.failed"])
    task_id = submit(platform, tenant, condominium(platform, tenant))
    wait_task(platform, tenant, task_id)
    platform.processes["webhooks"].stop()
    try:
        with session_scope(platform.database_url) as session:
            webhook = session.get(Webhook, hook["id"])
            assert webhook is not None
            webhook.url = receiver.url.replace("http://", "https://")
            record_batch_event(session, task_id, EventType.BATCH_FAILED, key="strict")
        (row,) = deliveries(platform, tenant, hook["id"])
        strict_settings = Settings(
            database_url=platform.database_url,
            webhook_secret_keys=SecretStr(SECRET_KEY),
            webhook_allow_private_urls=False,
        )
        deliverer = Deliverer(session_factory(platform.database_url), strict_settings)
        result = deliverer.attempt(row["id"])
        assert result.outcome == "retry_scheduled"
        assert "loopback" in (result.error or ""), result
        assert result.status_code is None
        assert receiver.deliveries() == []
        assert deliveries(platform, tenant, hook["id"])[0]["last_error"].startswith("refused")
    finally:
        platform.start_webhooks_worker()


def test_rotating_the_secret(platform: Platform, tenant: str, receiver: WebhookReceiver) -> None:
    hook = register(platform, tenant, receiver)
    with client(platform, tenant) as api:
        rotated = api.post(f"/webhooks/{hook['id']}/rotate-secret")
        assert rotated.status_code == 200, rotated.text
        new_secret = rotated.json()["secret"]
        assert new_secret.startswith("whsec_")
        assert new_secret != hook["secret"]
        assert "secret" not in api.get(f"/webhooks/{hook['id']}").json()
    receiver.secret = new_secret
    wait_task(platform, tenant, submit(platform, tenant, condominium(platform, tenant)))
    (received,) = receiver.wait_for(1)
    assert received.verified
    ReferenceWebhook(new_secret).verify(received.body, received.headers)
    # The previous secret still signs during the grace period, as a second entry.
    ReferenceWebhook(hook["secret"]).verify(received.body, received.headers)
    assert len(received.headers["webhook-signature"].split(" ")) == 2
