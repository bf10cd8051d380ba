"""One trace per batch, read from a real OTLP receiver: the API under uvicorn and a prefork
Celery worker export with their OTLP/HTTP exporters to a receiver on loopback."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterator

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from sqlalchemy import select

from audit.db import session_scope, upgrade_database
from audit.models import AuditLogEntry, Batch, Condominium, DeadLetter
from simulator.otlp_receiver import OtlpReceiver, ReceivedSpan, otlp_receiver
from tests.support.helpers import active_registration, expense, make_cnpj
from tests.support.platform import Platform, launch_platform, sqlite_url

TASK = "audit.process_batch_expenses"
RUN = f"run/{TASK}"
PUBLISH = f"apply_async/{TASK}"
CNPJ_CALL = "cnpjws GET /cnpj/{cnpj}"


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with otlp_receiver() as running:
        yield running


@pytest.fixture(scope="module")
def traced(
    tmp_path_factory: pytest.TempPathFactory, redis_server: str, receiver: OtlpReceiver
) -> Iterator[Platform]:
    database_url = sqlite_url(tmp_path_factory.mktemp("db"))
    upgrade_database(database_url)
    otel = {
        **receiver.exporter_env(),
        "LOG_FORMAT": "json",
        "MAX_ATTEMPTS": "3",
        "METRICS_PORT": "0",
    }
    platform = launch_platform(
        tmp_path_factory, redis_server, database_url, worker=False, extra_env=otel
    )
    try:
        platform.start_worker(concurrency=2)
    except BaseException:
        platform.stop()
        raise
    yield platform
    platform.stop()


def submit_one(platform: Platform, supplier: str) -> str:
    with platform.sim() as sim:
        sim.put(f"/_sim/registrations/{supplier}", json=active_registration()).raise_for_status()
    condominium = platform.create_condominium()
    with platform.client() as client:
        response = client.post(
            "/batch-expenses",
            json={"condominium_id": condominium, "expenses": [expense("t1", supplier)]},
        )
    assert response.status_code == 202, response.text
    return str(response.json()["task_id"])


def named(spans: list[ReceivedSpan], name: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.name == name]


def by_id(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {s.span_id: s for s in spans}


def test_a_batch_that_fails_twice_is_one_trace_from_the_request_to_the_last_call(
    traced: Platform, receiver: OtlpReceiver
) -> None:
    traced.configure_simulator(cnpjws={"fail_next": 2, "fail_status": 503})
    task_id = submit_one(traced, make_cnpj(f"traced-{uuid.uuid4()}"))
    status = traced.wait_for_status(task_id, {"SUCCESS", "FAILURE"})
    assert status["status"] == "SUCCESS", status
    assert status["failed_attempts"] == 2
    trace_id = status["trace_id"]
    assert trace_id is not None
    assert len(trace_id) == 32

    spans = receiver.wait_for(
        lambda got: (
            len(named([s for s in got if s.trace_id == trace_id], RUN)) == 3
            and len(named([s for s in got if s.trace_id == trace_id], CNPJ_CALL)) == 3
        )
    )
    trace = [s for s in spans if s.trace_id == trace_id]
    index = by_id(trace)

    roots = [s for s in trace if s.parent_id is None]
    assert [(r.name, r.service, r.kind) for r in roots] == [
        ("POST /batch-expenses", "condo-audit-api", ProtoSpan.SPAN_KIND_SERVER)
    ]
    root = roots[0]
    (publish,) = [s for s in named(trace, PUBLISH) if s.service == "condo-audit-api"]
    assert publish.parent_id == root.span_id
    assert publish.kind == ProtoSpan.SPAN_KIND_PRODUCER

    runs = sorted(named(trace, RUN), key=lambda s: s.start_ns)
    assert {r.service for r in runs} == {"condo-audit-worker"}
    assert runs[0].parent_id == publish.span_id
    # Each retry is re-published from inside the failed run, and runs under that publish.
    for failed, retried in itertools.pairwise(runs):
        republish = index[retried.parent_id or ""]
        assert republish.name == PUBLISH
        assert republish.parent_id == failed.span_id
        assert "batch.retry_scheduled" in failed.events
    assert [r.attributes["retry.attempt"] for r in runs] == [1, 2, 3]

    calls = sorted(named(trace, CNPJ_CALL), key=lambda s: s.start_ns)
    assert [c.parent_id for c in calls] == [r.span_id for r in runs]
    assert [c.attributes["http.response.status_code"] for c in calls] == [503, 503, 200]
    assert [c.attributes["retry.attempt"] for c in calls] == [1, 2, 3]
    assert calls[-1].end_ns == max(c.end_ns for c in named(trace, CNPJ_CALL))

    waits = named(trace, "ratelimit.wait")
    assert len(waits) == 3
    for call in calls:
        (wait,) = [w for w in waits if w.parent_id == call.span_id]
        assert wait.attributes["ratelimit.provider"] == "cnpjws"
        assert wait.attributes["ratelimit.key"] == "cnpjws"
        assert wait.attributes["ratelimit.granted"] is True
        assert wait.attributes["ratelimit.wait_seconds"] >= 0
        # The standard httpx instrumentation's client span sits under the provider span.
        (http_span,) = [s for s in trace if s.parent_id == call.span_id and s.name == "GET"]
        # (old semantic conventions by default: OTEL_SEMCONV_STABILITY_OPT_IN switches)
        status_code = http_span.attributes.get(
            "http.response.status_code", http_span.attributes.get("http.status_code")
        )
        assert status_code == call.attributes["http.response.status_code"]
    # The SQLAlchemy instrumentation traces the worker's queries inside the runs.
    sql = [
        s for s in trace if s.service == "condo-audit-worker" and "db.system" in str(s.attributes)
    ]
    assert sql, "no database spans from the worker"

    with session_scope(traced.database_url) as session:
        batch = session.get(Batch, task_id)
        assert batch is not None
        assert batch.trace_id == trace_id
        entries = list(
            session.scalars(select(AuditLogEntry).where(AuditLogEntry.batch_id == task_id))
        )
    assert [e.event for e in entries] == [
        "submitted", "started", "retried", "started", "retried", "started", "finished"
    ]  # fmt: skip
    assert {e.trace_id for e in entries} == {trace_id}


def test_worker_log_lines_carry_the_trace_id(traced: Platform) -> None:
    traced.configure_simulator(cnpjws={"fail_next": 1, "fail_status": 503})
    task_id = submit_one(traced, make_cnpj(f"logged-{uuid.uuid4()}"))
    status = traced.wait_for_status(task_id, {"SUCCESS", "FAILURE"})
    assert status["status"] == "SUCCESS"
    log_path = traced.processes["worker"].log_path
    assert log_path is not None
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    retry_lines = [
        line for line in lines if task_id in line["message"] and "retrying" in line["message"]
    ]
    assert len(retry_lines) == 1
    assert retry_lines[0]["trace_id"] == status["trace_id"]
    assert retry_lines[0]["level"] == "WARNING"
    assert retry_lines[0]["service"] == "condo-audit-worker"
    # Lines outside any task say so instead of inventing an id.
    assert any(line["trace_id"] == "-" for line in lines)


def test_a_dead_letter_keeps_its_trace_and_its_replay_links_back(
    traced: Platform, receiver: OtlpReceiver
) -> None:
    traced.configure_simulator(cnpjws={"outage": True})
    try:
        task_id = submit_one(traced, make_cnpj(f"dead-{uuid.uuid4()}"))
        status = traced.wait_for_status(task_id, {"SUCCESS", "FAILURE"})
    finally:
        traced.configure_simulator(cnpjws={"outage": False})
    assert status["status"] == "FAILURE", status
    trace_id = status["trace_id"]
    with session_scope(traced.database_url) as session:
        letter = session.scalar(select(DeadLetter).where(DeadLetter.batch_id == task_id))
        assert letter is not None
        letter_id, letter_trace = letter.id, letter.trace_id
    assert letter_trace == trace_id

    # A run's span ends (and is exported) after the dead-letter span it holds: wait for both.
    spans = receiver.wait_for(
        lambda got: (
            any(s.trace_id == trace_id and s.name == "batch.dead_letter" for s in got)
            and len(named([s for s in got if s.trace_id == trace_id], RUN)) >= 3
        )
    )
    trace = [s for s in spans if s.trace_id == trace_id]
    (dead,) = named(trace, "batch.dead_letter")
    last_run = max(named(trace, RUN), key=lambda s: s.start_ns)
    assert dead.parent_id == last_run.span_id
    assert dead.attributes["dead_letter.id"] == letter_id
    assert len(named(trace, RUN)) == 3

    with traced.client() as client:
        replay = client.post(f"/dead-letters/{letter_id}/replay")
    assert replay.status_code == 200, replay.text
    assert traced.wait_for_status(task_id, {"SUCCESS"})["status"] == "SUCCESS"
    spans = receiver.wait_for(lambda got: bool(named(got, "dead_letter.replay")))
    (replayed,) = [
        s for s in named(spans, "dead_letter.replay") if s.attributes["dead_letter.id"] == letter_id
    ]
    assert replayed.trace_id != trace_id
    assert [(link.trace_id, link.span_id) for link in replayed.links] == [(trace_id, dead.span_id)]
    # The replayed run belongs to the replay's trace.
    spans = receiver.wait_for(
        lambda got: any(s.trace_id == replayed.trace_id and s.name == RUN for s in got)
    )
    runs = [s for s in spans if s.trace_id == replayed.trace_id and s.name == RUN]
    assert runs[0].attributes["retry.attempt"] == 1


def seed_task(platform: Platform) -> str:
    """A batch of the platform's tenant, written straight to the database."""
    with session_scope(platform.database_url) as session:
        condominium = Condominium(tenant_id=platform.tenant_id, name="Traced", audit_settings={})
        session.add(condominium)
        session.flush()
        batch = Batch(tenant_id=platform.tenant_id, condominium_id=condominium.id)
        session.add(batch)
        session.flush()
        return batch.id


def assert_status_read_is_traced(platform: Platform, receiver: OtlpReceiver) -> None:
    """GET /tasks/{id} reads on the event loop; its query is a client span under the
    request's server span, as the engines' queries are under theirs."""
    task_id = seed_task(platform)
    with platform.client() as client:
        assert client.get(f"/tasks/{task_id}").status_code == 200

    def server(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return [
            s
            for s in named(spans, "GET /tasks/{task_id}")
            if s.kind == ProtoSpan.SPAN_KIND_SERVER and task_id in str(s.attributes)
        ]

    def queries(spans: list[ReceivedSpan], parent: ReceivedSpan) -> list[ReceivedSpan]:
        return [
            s
            for s in spans
            if s.parent_id == parent.span_id
            and s.kind == ProtoSpan.SPAN_KIND_CLIENT
            and "db.system" in s.attributes
        ]

    spans = receiver.wait_for(
        lambda got: any("FROM batches" in str(queries(got, s)) for s in server(got))
    )
    (request,) = server(spans)
    # (the key's first use adds the engine's lookup of it to the request)
    (query,) = [q for q in queries(spans, request) if "FROM batches" in str(q.attributes)]
    assert query.service == "condo-audit-api"
    assert query.name.startswith("SELECT")


def test_the_status_read_is_traced_on_sqlite(traced: Platform, receiver: OtlpReceiver) -> None:
    assert_status_read_is_traced(traced, receiver)


@pytest.mark.postgres
def test_the_status_read_is_traced_on_postgresql(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: str,
    dedicated_postgres_url: str,
    receiver: OtlpReceiver,
) -> None:
    otel = {**receiver.exporter_env(), "METRICS_PORT": "0"}
    platform = launch_platform(
        tmp_path_factory, redis_server, dedicated_postgres_url, worker=False, extra_env=otel
    )
    try:
        assert_status_read_is_traced(platform, receiver)
    finally:
        platform.stop()


@pytest.mark.postgres
def test_the_worker_s_database_round_trips_are_traced_on_postgresql(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: str,
    dedicated_postgres_url: str,
    receiver: OtlpReceiver,
) -> None:
    """On PostgreSQL the worker sends its statements as driver pipelines, which the
    SQLAlchemy instrumentation cannot see: each round trip is a client span of its own,
    inside the task's run."""
    otel = {**receiver.exporter_env(), "METRICS_PORT": "0"}
    platform = launch_platform(
        tmp_path_factory, redis_server, dedicated_postgres_url, worker=False, extra_env=otel
    )
    try:
        platform.start_worker(concurrency=1)
        task_id = submit_one(platform, make_cnpj(f"pipelined-{uuid.uuid4()}"))
        status = platform.wait_for_status(task_id, {"SUCCESS", "FAILURE"})
        assert status["status"] == "SUCCESS", status
        trace_id = status["trace_id"]
        operations = ["batch start", "audit inputs", "audit result"]

        def round_trips(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
            return sorted(
                (
                    s
                    for s in spans
                    if s.trace_id == trace_id and s.attributes.get("db.operation") in operations
                ),
                key=lambda s: s.start_ns,
            )

        # The task's run span ends after its round trips and may be exported in a later
        # batch: wait for it too.
        spans = receiver.wait_for(
            lambda got: (
                len(round_trips(got)) == len(operations)
                and any(s.trace_id == trace_id for s in named(got, RUN))
            )
        )
    finally:
        platform.stop()
    trace = [s for s in spans if s.trace_id == trace_id]
    index = by_id(trace)
    (run,) = named(trace, RUN)
    found = round_trips(spans)
    assert [s.attributes["db.operation"] for s in found] == operations
    for span in found:
        assert span.service == "condo-audit-worker"
        assert span.kind == ProtoSpan.SPAN_KIND_CLIENT
        assert span.attributes["db.system"] == "postgresql"
        assert span.end_ns > span.start_ns
        ancestor = index.get(span.parent_id or "")
        while ancestor is not None and ancestor.span_id != run.span_id:
            ancestor = index.get(ancestor.parent_id or "")
        assert ancestor is run, f"{span.name} is not inside the task's run"
