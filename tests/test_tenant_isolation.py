"""A second tenant tries every endpoint against the first tenant's records: all 404, and
lists and bulk operations never include or touch them. The table of attempts must cover
every protected route, so a new route cannot be added without its isolation check."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from audit.webhooks.secretbox import new_key
from tests.support.helpers import active_registration, expense, make_cnpj
from tests.support.platform import Platform, sqlite_platform_for
from tests.test_security import protected_routes


@dataclass
class Owned:
    """The first tenant's records."""

    condominium: str
    batch: str
    failed_batch: str
    dead_letter: str
    webhook: str
    delivery: str


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, redis_server: str) -> Iterator[Platform]:
    with sqlite_platform_for(
        tmp_path_factory,
        redis_server,
        extra_env={
            "MAX_ATTEMPTS": "1",
            "WEBHOOK_SECRET_KEYS": new_key(),
            "WEBHOOK_ALLOW_PRIVATE_URLS": "true",
        },
    ) as running:
        yield running


@pytest.fixture(scope="module")
def owned(platform: Platform) -> Owned:
    good, gone = make_cnpj(f"iso-{uuid.uuid4()}"), make_cnpj(f"iso-gone-{uuid.uuid4()}")
    with platform.sim() as sim:
        sim.put(f"/_sim/registrations/{good}", json=active_registration()).raise_for_status()
        sim.put(f"/_sim/registrations/{gone}", json={"found": False}).raise_for_status()
    condominium = platform.create_condominium()
    with platform.client() as client:
        batch = client.post(
            "/batch-expenses",
            json={"condominium_id": condominium, "expenses": [expense("a1", gone)]},
        ).json()["task_id"]
        assert platform.wait_for_status(batch, {"SUCCESS"})["status"] == "SUCCESS"
        hook = client.post(
            "/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["batch.failed"]}
        ).json()["id"]
        platform.configure_simulator(cnpjws={"outage": True})
        try:
            failed = client.post(
                "/batch-expenses",
                json={"condominium_id": condominium, "expenses": [expense("a2", good)]},
            ).json()["task_id"]
            assert platform.wait_for_status(failed, {"FAILURE"})["status"] == "FAILURE"
        finally:
            platform.configure_simulator(cnpjws={"outage": False})
        letters = client.get("/dead-letters").json()
        (delivery,) = client.get(f"/webhooks/{hook}/deliveries").json()
    letter = next(item["id"] for item in letters if item["batch_id"] == failed)
    return Owned(condominium, batch, failed, letter, hook, delivery["id"])


Attempt = Callable[[httpx.Client, Owned, str], httpx.Response]


def submit_to_theirs(client: httpx.Client, owned: Owned, own: str) -> httpx.Response:
    item = expense("x1", make_cnpj("intruder"))
    return client.post(
        "/batch-expenses", json={"condominium_id": owned.condominium, "expenses": [item]}
    )


# (method, route) -> the second tenant's attempt on the first tenant's record; must be 404.
ATTEMPTS: dict[tuple[str, str], Attempt] = {
    ("GET", "/condominiums/{condominium_id}"): lambda c, o, _: c.get(
        f"/condominiums/{o.condominium}"
    ),
    ("POST", "/batch-expenses"): submit_to_theirs,
    ("GET", "/tasks/{task_id}"): lambda c, o, _: c.get(f"/tasks/{o.batch}"),
    ("GET", "/batches/{batch_id}/findings"): lambda c, o, _: c.get(f"/batches/{o.batch}/findings"),
    ("GET", "/batches/{batch_id}/audit-log"): lambda c, o, _: c.get(
        f"/batches/{o.batch}/audit-log"
    ),
    ("GET", "/findings"): lambda c, o, _: c.get(
        "/findings", params={"condominium_id": o.condominium}
    ),
    ("GET", "/condominiums/{condominium_id}/report"): lambda c, o, _: c.get(
        f"/condominiums/{o.condominium}/report", params={"period": "2026-10"}
    ),
    ("GET", "/condominiums/{condominium_id}/audit-settings"): lambda c, o, _: c.get(
        f"/condominiums/{o.condominium}/audit-settings"
    ),
    ("PUT", "/condominiums/{condominium_id}/audit-settings"): lambda c, o, _: c.put(
        f"/condominiums/{o.condominium}/audit-settings", json={}
    ),
    ("GET", "/dead-letters/{dead_letter_id}"): lambda c, o, _: c.get(
        f"/dead-letters/{o.dead_letter}"
    ),
    ("POST", "/dead-letters/{dead_letter_id}/replay"): lambda c, o, _: c.post(
        f"/dead-letters/{o.dead_letter}/replay"
    ),
    ("POST", "/dead-letters/{dead_letter_id}/discard"): lambda c, o, _: c.post(
        f"/dead-letters/{o.dead_letter}/discard"
    ),
    ("GET", "/webhooks/{webhook_id}"): lambda c, o, _: c.get(f"/webhooks/{o.webhook}"),
    ("DELETE", "/webhooks/{webhook_id}"): lambda c, o, _: c.delete(f"/webhooks/{o.webhook}"),
    ("POST", "/webhooks/{webhook_id}/rotate-secret"): lambda c, o, _: c.post(
        f"/webhooks/{o.webhook}/rotate-secret"
    ),
    ("GET", "/webhooks/{webhook_id}/deliveries"): lambda c, o, _: c.get(
        f"/webhooks/{o.webhook}/deliveries"
    ),
    ("POST", "/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver"): lambda c, o, _: c.post(
        f"/webhooks/{o.webhook}/deliveries/{o.delivery}/redeliver"
    ),
}
# Routes that act on the caller's own records only; checked below by their effect.
OWN_ONLY = {
    ("POST", "/condominiums"),
    ("GET", "/dead-letters"),
    ("POST", "/dead-letters/replay"),
    ("POST", "/webhooks"),
    ("GET", "/webhooks"),
}


def test_the_table_covers_every_protected_route() -> None:
    assert set(ATTEMPTS) | OWN_ONLY == set(protected_routes())


def test_another_tenant_gets_404_on_every_record(platform: Platform, owned: Owned) -> None:
    _, intruder_key = platform.new_tenant("intruder")
    with platform.client(intruder_key) as intruder:
        own = intruder.post("/condominiums", json={"name": "Do intruso"}).json()["id"]
        for (method, route), attempt in ATTEMPTS.items():
            response = attempt(intruder, owned, own)
            assert response.status_code == 404, (method, route, response.text)
            assert "not found" in response.json()["detail"]
        # Filtering one's own condominium by another tenant's batch is 404 too.
        mixed = intruder.get("/findings", params={"condominium_id": own, "batch_id": owned.batch})
        assert mixed.status_code == 404

        # Lists and bulk operations: only the caller's own.
        for status in ("OPEN", "REPLAYED", "DISCARDED"):
            letters = intruder.get("/dead-letters", params={"status": status}).json()
            assert letters == []
        bulk = intruder.post("/dead-letters/replay", params={"provider": "cnpjws"})
        assert bulk.status_code == 200
        assert bulk.json()["replayed"] == 0
        assert intruder.get("/webhooks").json() == []

    with platform.client() as client:
        # Nothing the intruder did changed the owner's records ...
        letter: dict[str, Any] = client.get(f"/dead-letters/{owned.dead_letter}").json()
        assert letter["status"] == "OPEN"
        assert letter["replay_count"] == 0
        settings = client.get(f"/condominiums/{owned.condominium}/audit-settings")
        assert settings.status_code == 200
        assert client.get(f"/tasks/{owned.failed_batch}").json()["status"] == "FAILURE"
        findings = client.get("/findings", params={"condominium_id": owned.condominium}).json()
        assert findings["total"] >= 1
        assert client.get(f"/webhooks/{owned.webhook}").status_code == 200
        (delivery,) = client.get(f"/webhooks/{owned.webhook}/deliveries").json()
        assert delivery["id"] == owned.delivery
        assert delivery["attempts"] == 0  # no webhooks worker here: never attempted
        # ... and the owner cannot see the intruder's condominium either.
        assert client.get(f"/condominiums/{own}").status_code == 404
