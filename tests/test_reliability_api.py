"""The API under attack and misuse, on the real PostgreSQL: NUL bytes in every path id and
query parameter, out-of-range audit settings, Idempotency-Key reuse and races, guessed API
keys, a forged Host header. Real HTTP to the API under uvicorn."""

from __future__ import annotations

import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from audit.db import session_scope
from audit.models import Batch
from tests.support.helpers import expense, make_cnpj
from tests.support.platform import Platform, fresh_postgres_schema, launch_platform

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from probe_unstorable import probe

PUBLIC = "https://audit.example.test/api"
AUTH_LIMIT_BURST = 5


@pytest.fixture(scope="module")
def platform(
    tmp_path_factory: pytest.TempPathFactory, redis_server: str, postgres_database: str
) -> Iterator[Platform]:
    running = launch_platform(
        tmp_path_factory,
        redis_server,
        fresh_postgres_schema(postgres_database),
        worker=False,
        extra_env={
            "PUBLIC_BASE_URL": PUBLIC,
            "AUTH_FAILURES_PER_MINUTE": "6",
            "AUTH_FAILURE_BURST": str(AUTH_LIMIT_BURST),
        },
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def condominium(platform: Platform) -> str:
    return platform.create_condominium()


def body(condominium: str, count: int = 1, tag: str = "x") -> dict[str, Any]:
    supplier = make_cnpj(f"reliability-{tag}")
    return {
        "condominium_id": condominium,
        "expenses": [expense(f"{tag}-{i}", supplier, f"{100 + i}.00") for i in range(count)],
    }


def test_nul_bytes_in_any_path_id_or_query_parameter_are_4xx_on_postgresql(
    platform: Platform,
) -> None:
    sent, failures = probe(platform.api_url, platform.api_key)
    assert sent > 60
    assert failures == []
    with platform.client() as client:
        named = [
            ("GET", "/tasks/%00", 404),
            ("GET", "/batches/%00/findings", 404),
            ("GET", "/condominiums/%00/report?period=2026-10", 404),
            ("GET", "/dead-letters?provider=%00", 422),
            ("GET", "/findings?condominium_id=%00", 422),
        ]
        for method, path, expected in named:
            response = client.request(method, httpx.URL(platform.api_url + path))
            assert response.status_code == expected, (path, response.text)
            assert response.json()["detail"]
        bad_format = client.get("/tasks/not a uuid; drop table")
        assert bad_format.status_code == 422
        assert bad_format.json()["detail"][0]["loc"] == ["path", "task_id"]
        query = client.request("GET", httpx.URL(platform.api_url + "/dead-letters?provider=a%00"))
        assert query.json()["detail"][0]["loc"] == ["query", "provider"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("match_window_days", 1_000_000_000),
        ("match_window_days", -1),
        ("recently_opened_days", 100_000),
        ("duplicate_window_days", 366),
        ("split_window_days", 10_000),
        ("approval_threshold", "99999999999.99"),
        ("outlier_min_history", 1_000_000),
        ("outlier_zscore", "1e9"),
        ("outlier_scale_floor_ratio", 11),
    ],
)
def test_audit_settings_out_of_their_range_are_422_naming_the_field(
    platform: Platform, condominium: str, field: str, value: Any
) -> None:
    with platform.client() as client:
        url = f"/condominiums/{condominium}/audit-settings"
        before = client.get(url).json()
        response = client.put(url, json={field: value})
        assert response.status_code == 422, response.text
        assert any(field in error["loc"] for error in response.json()["detail"])
        assert client.get(url).json() == before  # nothing stored
        at_default = client.put(url, json={field: before[field]})
        assert at_default.status_code == 200, at_default.text


def test_the_documented_ranges_are_in_the_openapi_schema(platform: Platform) -> None:
    schema = httpx.get(f"{platform.api_url}/openapi.json").json()
    fields = schema["components"]["schemas"]["RuleSettings-Input"]["properties"]
    for name, spec in fields.items():
        if name == "cnae_mapping":
            continue
        has_upper = "maximum" in spec or "exclusiveMaximum" in spec or "anyOf" in spec
        assert has_upper, f"{name} has no upper bound: {spec}"


def test_an_idempotency_key_is_bound_to_its_request(platform: Platform, condominium: str) -> None:
    other = platform.create_condominium()
    key = f"key-{uuid.uuid4()}"
    with platform.client() as client:
        first = client.post(
            "/batch-expenses", json=body(condominium), headers={"Idempotency-Key": key}
        )
        assert first.status_code == 202, first.text
        again = client.post(
            "/batch-expenses", json=body(condominium), headers={"Idempotency-Key": key}
        )
        assert again.status_code == 202
        assert again.json()["task_id"] == first.json()["task_id"]
        assert again.headers["Idempotent-Replayed"] == "true"
        for changed in (body(condominium, tag="other"), body(other), body(condominium, count=2)):
            refused = client.post("/batch-expenses", json=changed, headers={"Idempotency-Key": key})
            assert refused.status_code == 422, refused.text
            assert refused.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
        empty = client.post(
            "/batch-expenses", json=body(condominium), headers={"Idempotency-Key": ""}
        )
        assert empty.status_code == 400
        assert "Idempotency-Key" in empty.json()["detail"]
    # Another tenant may use the same key for its own request.
    _, other_key = platform.new_tenant("idempotency-neighbour")
    with platform.client(other_key) as client:
        own = client.post("/condominiums", json={"name": "Vizinho"}).json()["id"]
        assert (
            client.post(
                "/batch-expenses", json=body(own), headers={"Idempotency-Key": key}
            ).status_code
            == 202
        )


def test_the_same_key_while_the_first_request_is_in_flight_is_409(
    platform: Platform, condominium: str
) -> None:
    key = f"race-{uuid.uuid4()}"
    payload = body(condominium, count=800, tag="race")  # long enough to overlap
    answers: list[httpx.Response] = []
    barrier = threading.Barrier(8)

    def send() -> None:
        with platform.client() as client:
            barrier.wait()
            answers.append(
                client.post("/batch-expenses", json=payload, headers={"Idempotency-Key": key})
            )

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    codes = Counter(a.status_code for a in answers)
    print(f"  8 concurrent requests with one key: {dict(codes)}")
    assert set(codes) <= {202, 409}, codes
    assert codes[409] >= 1, codes
    assert len({a.json()["task_id"] for a in answers if a.status_code == 202}) == 1
    with session_scope(platform.database_url) as session:
        stored = session.scalar(
            select(func.count()).select_from(Batch).where(Batch.idempotency_key == key)
        )
    assert stored == 1
    conflict = next(a for a in answers if a.status_code == 409)
    assert "still being processed" in conflict.json()["detail"]


def test_failed_authentications_are_limited_per_client_address(platform: Platform) -> None:
    attacker = httpx.Client(
        base_url=platform.api_url,
        transport=httpx.HTTPTransport(local_address="127.0.0.2"),
        timeout=10,
    )
    codes = []
    with attacker:
        for i in range(AUTH_LIMIT_BURST + 6):
            response = attacker.get(
                "/tasks/" + str(uuid.uuid4()), headers={"X-API-Key": f"ca_guess{i}"}
            )
            codes.append(response.status_code)
        assert set(codes[:AUTH_LIMIT_BURST]) == {401}, codes
        assert codes[-1] == 429, codes
        assert int(response.headers["Retry-After"]) >= 1
    # Someone else, from another address, is not locked out.
    with platform.client() as client:
        assert client.get("/condominiums/" + str(uuid.uuid4())).status_code == 404


def test_status_url_ignores_a_forged_host_header(platform: Platform, condominium: str) -> None:
    with platform.client() as client:
        response = client.post(
            "/batch-expenses", json=body(condominium, tag="host"), headers={"Host": "evil.example"}
        )
    assert response.status_code == 202, response.text
    url = response.json()["status_url"]
    assert url == f"{PUBLIC}/tasks/{response.json()['task_id']}"
    assert "evil" not in url
