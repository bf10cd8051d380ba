"""Every request example in the README, sent as written to a live platform (API, worker,
webhooks worker, simulator seeded the way `make run` seeds it), gets the documented status
and an answer of the documented shape; the documented webhook delivery is what a receiver
gets. The only substitutions are the ones a reader makes: the API key, the ids the earlier
answers gave, this platform's address, and the receiver's URL for the example one."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cli.run import load_sample, seed_simulator
from simulator.webhook_receiver import WebhookReceiver
from tests.support.platform import Platform, sqlite_platform_for
from tests.support.readme import HttpExample, Matcher, http_blocks, parse_block

WEBHOOK_ENV = {
    "WEBHOOK_SECRET_KEYS": "dGVzdC1rZXktZm9yLXRoZS1yZWFkbWUtZXhhbXBsZXM=",
    "WEBHOOK_ALLOW_PRIVATE_URLS": "true",
    "WEBHOOK_DISPATCH_INTERVAL_SECONDS": "0.5",
}
EXAMPLE_RECEIVER = "https://erp.example.com/hooks/condo-audit"
UNFINISHED = {"PENDING", "STARTED", "RETRY"}
# A delivery's documented body: these keys are compared exactly, the rest by shape.
DELIVERY_LITERALS = frozenset({"type", "status", "summary", "expenses", "failed_attempts"})


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, redis_server: str) -> Iterator[Platform]:
    with sqlite_platform_for(tmp_path_factory, redis_server, extra_env=WEBHOOK_ENV) as running:
        running.start_webhooks_worker(concurrency=2)
        seed_simulator(running.simulator_url, load_sample())  # as `make run` does
        yield running


def send(client: httpx.Client, example: HttpExample, matcher: Matcher) -> httpx.Response:
    headers = {name: matcher.substitute(value) for name, value in example.headers.items()}
    body = matcher.substitute(example.body).encode() if example.body else None
    target = matcher.substitute(example.target)
    response = client.request(example.method, target, headers=headers, content=body)
    # A task example documents the end of the audit: poll, as a client would, until then.
    deadline = time.monotonic() + 60
    while (
        example.method == "GET"
        and response.status_code == 200
        and response.json().get("status") in UNFINISHED
        and time.monotonic() < deadline
    ):
        time.sleep(0.2)
        response = client.request(example.method, target, headers=headers)
    return response


def test_the_readme_has_request_examples_and_a_delivery() -> None:
    examples = [parse_block(block) for block in http_blocks()]
    requests = [e for e in examples if "webhook-id" not in e.headers]
    assert len(requests) >= 5
    assert all(e.status is not None for e in requests), "every request documents its answer"
    assert any("webhook-signature" in e.headers for e in examples)
    # The batch example's CNPJ is a valid one (its check digits were wrong once).
    batch = next(e for e in requests if e.target == "/batch-expenses")
    assert json.loads(batch.body)["expenses"][0]["supplier_cnpj"] == "45.287.123/0001-93"


def test_every_readme_example_gets_its_documented_answer(platform: Platform) -> None:
    examples = [parse_block(block) for block in http_blocks()]
    with WebhookReceiver() as receiver:
        matcher = Matcher(
            replacements={
                "ca_...": platform.api_key,
                "http://127.0.0.1:8000": platform.api_url,
                EXAMPLE_RECEIVER: receiver.url,
            }
        )
        delivery: HttpExample | None = None
        with httpx.Client(base_url=platform.api_url, timeout=10) as client:
            for example in examples:
                if "webhook-id" in example.headers:
                    delivery = example  # a message the platform sends: checked below
                    continue
                response = send(client, example, matcher)
                where = f"{example.method} {example.target}"
                assert response.status_code == example.status, (where, response.text)
                problems = matcher.compare(example.answer, response.json())
                assert not problems, (where, problems, response.json())
                if example.target == "/webhooks" and example.method == "POST":
                    receiver.secret = response.json()["secret"]

            # The documented delivery: the documented batch, in a second condominium (no
            # history there, so the same findings), now that the webhook is registered.
            assert delivery is not None
            by_target = {(e.method, e.target): e for e in examples}
            condominium = send(client, by_target["POST", "/condominiums"], matcher).json()["id"]
            batch_example = by_target["POST", "/batch-expenses"]
            body = json.loads(matcher.substitute(batch_example.body))
            submitted = client.post(
                "/batch-expenses",
                json={**body, "condominium_id": condominium},
                headers={"X-API-Key": platform.api_key},
            )
            assert submitted.status_code == 202, submitted.text
        [received] = receiver.wait_for(1, timeout=60)
    assert received.verified, received.problem
    assert set(delivery.headers) <= set(received.headers), received.headers
    assert received.headers["webhook-signature"].startswith("v1,")
    documented_body = json.loads(delivery.body)
    problems = Matcher(literal_keys=DELIVERY_LITERALS).compare(documented_body, received.json())
    assert not problems, (problems, received.json())
    assert received.json()["data"]["task_id"] == submitted.json()["task_id"]


def test_the_matcher_catches_what_the_readme_once_got_wrong() -> None:
    """The matcher is strict where it matters: a wrong count or status fails it."""
    documented = parse_block(
        'GET /tasks/0b6e...\n\n200 {"task_id": "0b6e...", "status": "SUCCESS",\n'
        ' "summary": {"findings": 1}, "error": null, ...}'
    ).answer
    real: dict[str, Any] = {
        "task_id": "t-1",
        "status": "SUCCESS",
        "summary": {"findings": 2},
        "error": None,
        "extra": 1,
    }
    assert Matcher().compare(documented, real) == ["$.summary.findings: documented 1, got 2"]
    assert Matcher().compare(documented, {**real, "summary": {"findings": 1}}) == []
    strict = parse_block('GET /x\n\n200 {"a": "6f1c...", "b": "6f1c..."}').answer
    assert Matcher().compare(strict, {"a": "x", "b": "y"}) == [
        "$.b: 6f1c... was 'x' before, now 'y'"
    ]
    assert Matcher().compare(strict, {"a": "x", "b": "x", "c": 1}) == ["$: undocumented keys ['c']"]
