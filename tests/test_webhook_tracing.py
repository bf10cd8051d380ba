"""A webhook delivery joins its batch's trace: each attempt is a span under the task run
that recorded the batch's final status, read from a real OTLP receiver."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from audit.db import upgrade_database
from simulator.otlp_receiver import OtlpReceiver, otlp_receiver
from simulator.webhook_receiver import WebhookReceiver
from tests.support.platform import Platform, launch_platform, sqlite_url
from tests.test_webhooks import WEBHOOK_ENV, register, submit, wait_task

pytestmark = pytest.mark.slow

RUN = "run/audit.process_batch_expenses"


@pytest.fixture(scope="module")
def spans() -> Iterator[OtlpReceiver]:
    with otlp_receiver() as running:
        yield running


@pytest.fixture(scope="module")
def traced(
    tmp_path_factory: pytest.TempPathFactory, redis_server: str, spans: OtlpReceiver
) -> Iterator[Platform]:
    database_url = sqlite_url(tmp_path_factory.mktemp("db"))
    upgrade_database(database_url)
    otel = {
        **spans.exporter_env(),
        "METRICS_PORT": "0",
    }
    platform = launch_platform(
        tmp_path_factory, redis_server, database_url, extra_env={**WEBHOOK_ENV, **otel}
    )
    try:
        platform.start_webhooks_worker(concurrency=1)
    except BaseException:
        platform.stop()
        raise
    yield platform
    platform.stop()


def test_each_attempt_is_a_span_under_the_batch_run(traced: Platform, spans: OtlpReceiver) -> None:
    key = traced.new_tenant(f"traced-{uuid.uuid4().hex[:6]}")[1]
    with WebhookReceiver() as receiver:
        receiver.fail_first = 1
        register(traced, key, receiver)
        with traced.client(api_key=key) as api:
            condominium = api.post("/condominiums", json={"name": "Traced"}).json()["id"]
        status = wait_task(traced, key, submit(traced, key, condominium))
        receiver.wait_for(2)
    trace_id = status["trace_id"]
    assert trace_id

    got = spans.wait_for(
        lambda found: (
            len([s for s in found if s.trace_id == trace_id and s.name == "webhook.attempt"]) == 2
        )
    )
    trace = [s for s in got if s.trace_id == trace_id]
    (run,) = [s for s in trace if s.name == RUN]
    attempts = sorted((s for s in trace if s.name == "webhook.attempt"), key=lambda s: s.start_ns)
    assert [a.parent_id for a in attempts] == [run.span_id, run.span_id]
    assert [a.attributes["webhook.attempt"] for a in attempts] == [1, 2]
    assert [a.attributes["webhook.outcome"] for a in attempts] == ["retry_scheduled", "delivered"]
    assert [a.attributes["http.response.status_code"] for a in attempts] == [500, 200]
    assert {a.service for a in attempts} == {"condo-audit-worker"}
    assert len({a.attributes["webhook.message_id"] for a in attempts}) == 1
