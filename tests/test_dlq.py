"""Dead-letter operations through the API and `condo-audit dlq`: list, inspect, replay one,
replay all of a provider, discard; a replay is idempotent, even two at once."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.support.helpers import active_registration, expense, make_cnpj
from tests.support.platform import Platform, sqlite_platform_for


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, redis_server: str) -> Iterator[Platform]:
    with sqlite_platform_for(
        tmp_path_factory,
        redis_server,
        extra_env={"MAX_ATTEMPTS": "2", "RETRY_BACKOFF_BASE_SECONDS": "0.1"},
    ) as running:
        yield running


def dead_letter_batches(platform: Platform, count: int) -> list[str]:
    """Submit `count` batches during a CNPJ.ws outage; return their task ids once FAILURE."""
    condominium = platform.create_condominium()
    task_ids = []
    platform.configure_simulator(cnpjws={"outage": True})
    try:
        with platform.client() as client, platform.sim() as sim:
            for _ in range(count):
                cnpj = make_cnpj(f"dlq-{uuid.uuid4()}")
                sim.put(f"/_sim/registrations/{cnpj}", json=active_registration())
                response = client.post(
                    "/batch-expenses",
                    json={"condominium_id": condominium, "expenses": [expense("d1", cnpj)]},
                )
                assert response.status_code == 202, response.text
                task_ids.append(response.json()["task_id"])
        for task_id in task_ids:
            assert platform.wait_for_status(task_id, {"SUCCESS", "FAILURE"})["status"] == "FAILURE"
    finally:
        platform.configure_simulator(cnpjws={"outage": False})
    return task_ids


def letters_by_batch(client: httpx.Client, status: str = "OPEN") -> dict[str, dict[str, Any]]:
    response = client.get("/dead-letters", params={"status": status, "limit": 500})
    assert response.status_code == 200
    return {letter["batch_id"]: letter for letter in response.json()}


def events(client: httpx.Client, task_id: str) -> list[str]:
    return [e["event"] for e in client.get(f"/batches/{task_id}/audit-log").json()]


def test_dead_letters_through_the_api(platform: Platform) -> None:
    first, second, third, fourth = dead_letter_batches(platform, 4)
    with platform.client() as client:
        open_letters = letters_by_batch(client)
        assert {first, second, third, fourth} <= set(open_letters)
        letter = open_letters[first]
        assert letter["provider"] == "cnpjws"
        assert letter["attempts"] == 2
        assert "cnpjws" in letter["error"]
        assert "503" in letter["error"]
        assert letter["payload"] == {"batch_id": first}

        inspected = client.get(f"/dead-letters/{letter['id']}")
        assert inspected.status_code == 200
        assert inspected.json() == letter

        # Discard one: it stays, marked, and is no longer replayable.
        gone = open_letters[second]["id"]
        discarded = client.post(f"/dead-letters/{gone}/discard")
        assert discarded.status_code == 200
        assert discarded.json()["status"] == "DISCARDED"
        assert client.post(f"/dead-letters/{gone}/discard").status_code == 409
        assert client.post(f"/dead-letters/{gone}/replay").json()["enqueued"] is False
        assert second in letters_by_batch(client, "DISCARDED")
        assert client.get(f"/tasks/{second}").json()["status"] == "FAILURE"
        assert events(client, second)[-1] == "discarded"

        # Replay one: it runs again and succeeds; a second replay changes nothing.
        replay = client.post(f"/dead-letters/{letter['id']}/replay")
        assert replay.status_code == 200
        assert replay.json()["enqueued"] is True
        assert replay.json()["status_url"].endswith(f"/tasks/{first}")
        assert platform.wait_for_status(first, {"SUCCESS", "FAILURE"})["status"] == "SUCCESS"
        again = client.post(f"/dead-letters/{letter['id']}/replay")
        assert again.status_code == 200
        assert again.json()["enqueued"] is False
        assert events(client, first).count("replayed") == 1

        # Replay all of the provider, twice at once: each letter is replayed exactly once.
        with ThreadPoolExecutor(2) as pool:
            answers = list(
                pool.map(
                    lambda _: platform.client().post(
                        "/dead-letters/replay", params={"provider": "cnpjws"}
                    ),
                    range(2),
                )
            )
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        replayed = [task for a in answers for task in a.json()["task_ids"]]
        assert sorted(replayed) == sorted(set(replayed))
        assert {third, fourth} <= set(replayed)
        assert second not in replayed  # discarded stays discarded
        for task_id in (third, fourth):
            status = platform.wait_for_status(task_id, {"SUCCESS", "FAILURE"})
            assert status["status"] == "SUCCESS"
            assert events(client, task_id).count("replayed") == 1
        assert (
            client.post("/dead-letters/replay", params={"provider": "cnpjws"}).json()["replayed"]
            == 0
        )
        assert client.post("/dead-letters/replay").status_code == 422  # provider is required


def cli(platform: Platform, *args: str) -> subprocess.CompletedProcess[str]:
    return platform.cli("dlq", *args, check=False)


def test_dead_letters_through_the_cli(platform: Platform) -> None:
    first, second, third = dead_letter_batches(platform, 3)
    listing = cli(platform, "list", "--json", "--provider", "cnpjws")
    assert listing.returncode == 0, listing.stderr
    rows = {row["batch_id"]: row for row in map(json.loads, listing.stdout.splitlines())}
    assert {first, second, third} <= set(rows)
    assert all(row["tenant_id"] == platform.tenant_id for row in rows.values())

    shown = cli(platform, "show", rows[first]["id"])
    assert shown.returncode == 0
    assert json.loads(shown.stdout)["error"] == rows[first]["error"]
    assert cli(platform, "show", str(uuid.uuid4())).returncode == 2

    discarded = cli(platform, "discard", rows[second]["id"])
    assert discarded.returncode == 0
    assert json.loads(discarded.stdout)["status"] == "DISCARDED"
    assert cli(platform, "discard", rows[second]["id"]).returncode == 2

    replayed = cli(platform, "replay", rows[first]["id"])
    assert json.loads(replayed.stdout) == {
        "id": rows[first]["id"],
        "task_id": first,
        "enqueued": True,
    }
    assert json.loads(cli(platform, "replay", rows[first]["id"]).stdout)["enqueued"] is False
    assert platform.wait_for_status(first, {"SUCCESS", "FAILURE"})["status"] == "SUCCESS"

    everything = cli(platform, "replay-all", "--provider", "cnpjws")
    assert everything.returncode == 0, everything.stderr
    assert third in json.loads(everything.stdout)["task_ids"]
    assert platform.wait_for_status(third, {"SUCCESS", "FAILURE"})["status"] == "SUCCESS"
    assert json.loads(cli(platform, "replay-all", "--provider", "cnpjws").stdout)["replayed"] == 0
    assert platform.wait_for_status(second, {"FAILURE"})["status"] == "FAILURE"
