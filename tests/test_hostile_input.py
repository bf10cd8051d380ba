"""Hostile input over real HTTP: oversized and chunked bodies, oversized batches, strict
schemas, control and unicode characters, malformed JSON. Always a 4xx with a JSON body,
never a 5xx, and nothing stored from a refused request."""

from __future__ import annotations

import datetime as dt
import json
import unicodedata
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from audit.db import session_scope
from audit.models import Batch, Expense
from tests.support.helpers import expense, make_cnpj
from tests.support.platform import Platform, sqlite_platform_for

MAX_BYTES = 200_000
MAX_BATCH = 50


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, redis_server: str) -> Iterator[Platform]:
    with sqlite_platform_for(
        tmp_path_factory,
        redis_server,
        worker=False,
        extra_env={"MAX_REQUEST_BYTES": str(MAX_BYTES), "MAX_BATCH_SIZE": str(MAX_BATCH)},
    ) as running:
        yield running


@pytest.fixture(scope="module")
def condominium(platform: Platform) -> str:
    return platform.create_condominium()


SUPPLIER = make_cnpj("hostile-supplier")


def batch(condominium: str, *items: dict[str, Any]) -> dict[str, Any]:
    return {"condominium_id": condominium, "expenses": list(items or [expense("h1", SUPPLIER)])}


def stored_batches(platform: Platform) -> int:
    with session_scope(platform.database_url) as session:
        return int(session.scalar(select(func.count()).select_from(Batch)) or 0)


def refused(response: httpx.Response, *codes: int) -> dict[str, Any]:
    assert response.status_code in codes, (response.status_code, response.text[:500])
    body: dict[str, Any] = response.json()  # always JSON, always parseable
    assert "detail" in body
    return body


def test_a_body_over_the_limit_is_413_with_or_without_content_length(
    platform: Platform, condominium: str
) -> None:
    padding = "x" * 400
    items = [expense(f"p{i}", SUPPLIER, description=padding) for i in range(MAX_BATCH)]
    body = json.dumps(batch(condominium, *items) | {"pad": "y" * MAX_BYTES}).encode()
    before = stored_batches(platform)
    with platform.client() as client:
        declared = client.post(
            "/batch-expenses", content=body, headers={"content-type": "application/json"}
        )
        assert "detail" in refused(declared, 413)

        def chunks() -> Iterator[bytes]:
            for start in range(0, len(body), 16_384):
                yield body[start : start + 16_384]

        request = client.build_request(
            "POST",
            "/batch-expenses",
            content=chunks(),
            headers={"content-type": "application/json"},
        )
        assert "content-length" not in request.headers
        assert request.headers["transfer-encoding"] == "chunked"
        chunked = client.send(request)
        assert f"larger than {MAX_BYTES} bytes" in refused(chunked, 413)["detail"]

        # A chunked body within the limit is read whole and accepted.
        small = json.dumps(batch(condominium)).encode()
        ok = client.post(
            "/batch-expenses",
            content=iter([small[:10], small[10:]]),
            headers={"content-type": "application/json"},
        )
        assert ok.status_code == 202, ok.text
    assert stored_batches(platform) == before + 1


def test_a_batch_over_the_size_limit_is_413_and_at_the_limit_is_accepted(
    platform: Platform, condominium: str
) -> None:
    items = [expense(f"b{i}", SUPPLIER) for i in range(MAX_BATCH + 1)]
    with platform.client() as client:
        too_many = client.post("/batch-expenses", json=batch(condominium, *items))
        assert f"batch size limit of {MAX_BATCH}" in refused(too_many, 413)["detail"]
        at_limit = client.post("/batch-expenses", json=batch(condominium, *items[:MAX_BATCH]))
        assert at_limit.status_code == 202


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("unexpected", 1),
        ("external_id", "x" * 101),
        ("external_id", "spaces are not allowed"),
        ("description", "d" * 501),
        ("description", "\x00\x01\x1b\u202e  "),
        ("category", "C" * 51),
        ("invoice_number", "n" * 61),
        ("supplier_cnpj", "11.222.333/0001-82"),
        ("supplier_cnpj", ["11222333000181"]),
        ("amount", "0"),
        ("amount", "0.00"),
        ("amount", "-10.00"),
        ("amount", "1.001"),
        ("amount", "NaN"),
        ("amount", "Infinity"),
        ("amount", "1" * 13),
        ("amount", "ten"),
        ("amount", True),
        ("amount", {"value": 1}),
        ("date", "1999-12-31"),
        ("date", (dt.date.today() + dt.timedelta(days=367)).isoformat()),
        ("date", "2026-02-30"),
        ("date", "yesterday"),
        ("date", None),
    ],
)
def test_strict_expense_fields_are_422(
    platform: Platform, condominium: str, field: str, value: Any
) -> None:
    item = {**expense("s1", SUPPLIER), field: value}
    before = stored_batches(platform)
    with platform.client() as client:
        body = refused(client.post("/batch-expenses", json=batch(condominium, item)), 422)
    assert any(field in map(str, error["loc"]) for error in body["detail"]), body
    assert stored_batches(platform) == before


@pytest.mark.parametrize(
    "payload",
    [
        {"condominium_id": "x", "expenses": [], "extra": True},
        {"condominium_id": "x" * 37, "expenses": [{}]},
        {"condominium_id": 12345, "expenses": [{}]},
        {"condominium_id": "x", "expenses": {"0": {}}},
        {"condominium_id": "x", "expenses": "all of them"},
        {"condominium_id": "x"},
        [],
        "just a string",
        None,
    ],
)
def test_wrong_shapes_and_types_are_422(platform: Platform, payload: Any) -> None:
    with platform.client() as client:
        refused(client.post("/batch-expenses", json=payload), 422)


@pytest.mark.parametrize(
    ("raw", "codes"),
    [
        (b"[" * 50_000 + b"]" * 50_000, (400, 422)),
        (
            b'{"condominium_id": "x", "expenses": ['
            + b'{"a":' * 20_000
            + b"1"
            + b"}" * 20_000
            + b"]}",
            (400, 422),
        ),
        (b'{"condominium_id": "x", "expenses": [{"amount": ' + b"9" * 5_000 + b"}]}", (400, 422)),
        (b'{"condominium_id": "x", "expenses": [{"amount": 1e400}]}', (400, 422)),
        (b'{"condominium_id": "x", "expenses": [{"amount": -0.0e-99999}]}', (400, 422)),
        # Malformed JSON is 400, as the OpenAPI document says, never 422.
        (b'{"condominium_id": "x", "expenses": [}', (400,)),
        (b"\xff\xfe\x00garbage", (400,)),
        (b"", (400, 422)),
    ],
)
def test_malformed_deep_or_huge_json_is_4xx(
    platform: Platform, raw: bytes, codes: tuple[int, ...]
) -> None:
    with platform.client() as client:
        response = client.post(
            "/batch-expenses", content=raw, headers={"content-type": "application/json"}
        )
        body = refused(response, *codes)
        if codes == (400,):
            assert body["detail"].startswith("the body is not valid JSON: "), body
        # The same endpoints keep working afterwards.
        assert client.get("/dead-letters").status_code == 200


def test_other_bodies_headers_and_queries_are_4xx(platform: Platform, condominium: str) -> None:
    with platform.client() as client:
        refused(
            client.post("/batch-expenses", content=b"a=1", headers={"content-type": "text/plain"}),
            415,
        )
        refused(
            client.post(
                "/batch-expenses",
                json=batch(condominium),
                headers={"Idempotency-Key": "k" * 201},
            ),
            422,
        )
        refused(client.put(f"/condominiums/{condominium}/audit-settings", json=[1, 2]), 422)
        refused(
            client.put(
                f"/condominiums/{condominium}/audit-settings", json={"not_a_setting": {"a": [1]}}
            ),
            422,
        )
        refused(client.get("/findings", params={"condominium_id": condominium, "page": 0}), 422)
        refused(
            client.get("/findings", params={"condominium_id": condominium, "page_size": 10**9}),
            422,
        )
        refused(client.get("/dead-letters", params={"offset": 10**30}), 422)
        refused(client.get("/dead-letters", params={"status": "'; DROP TABLE x; --"}), 422)
        refused(
            client.get(f"/condominiums/{condominium}/report", params={"period": "2026-13"}), 422
        )
        refused(client.post("/condominiums", json={"name": "x" * 201}), 422)
        refused(client.post("/condominiums", json={"name": "ok", "pluggy_account_id": "a b"}), 422)


def test_unicode_and_control_characters_are_stored_clean_and_returned_as_json(
    platform: Platform, condominium: str
) -> None:
    raw = "  Manutenção\x00 do elevador \x1b[31m🛗 ação\u202egnp.exe\x07  "
    expected = unicodedata.normalize("NFC", "Manutenção do elevador [31m🛗 açãognp.exe")
    item = expense(f"u-{uuid.uuid4().hex[:6]}", SUPPLIER, description=raw)
    item["invoice_number"] = "NF\x00-42"
    with platform.client() as client:
        response = client.post("/batch-expenses", json=batch(condominium, item))
        assert response.status_code == 202, response.text
        task_id = response.json()["task_id"]
        # A lone surrogate (valid JSON escape, invalid text) is refused cleanly, echoed escaped.
        lone = client.post(
            "/condominiums",
            content=b'{"name": "a\\ud800b"}',
            headers={"content-type": "application/json"},
        )
        refused(lone, 422)
        created = client.post("/condominiums", json={"name": "\tEdifício 🏢\x00\u2066 Sol\x85 "})
        assert created.status_code == 201
        assert created.json()["name"] == "Edifício 🏢 Sol"
        fetched = client.get(f"/condominiums/{created.json()['id']}")
        assert fetched.json()["name"] == "Edifício 🏢 Sol"
    with session_scope(platform.database_url) as session:
        row = session.scalars(select(Expense).where(Expense.batch_id == task_id)).one()
        assert row.description == expected
        assert row.invoice_number == "NF-42"


def test_a_body_that_is_not_sent_as_json_is_415_with_a_sentence(
    platform: Platform, condominium: str
) -> None:
    body = json.dumps(batch(condominium)).encode()
    with platform.client() as client:
        for headers in ({}, {"content-type": "text/plain"}, {"content-type": "application/xml"}):
            response = client.post("/batch-expenses", content=body, headers=headers)
            detail = refused(response, 415)["detail"]
            assert detail.startswith("the request body must be JSON sent with Content-Type: "), (
                detail
            )
        form = client.post("/condominiums", data={"name": "Edifício Form"})
        assert "Content-Type 'application/x-www-form-urlencoded'" in refused(form, 415)["detail"]
        # The same body as JSON is accepted; a route without a body needs no Content-Type.
        sent = client.post(
            "/batch-expenses", content=body, headers={"content-type": "application/json"}
        )
        assert sent.status_code == 202, sent.text
        assert client.post("/dead-letters/none/replay").status_code == 404
    assert stored_batches(platform) >= 1


def test_the_openapi_document_lists_400_and_415_for_bodies(platform: Platform) -> None:
    with httpx.Client(base_url=platform.api_url) as client:
        document = client.get("/openapi.json").json()
    responses = document["paths"]["/batch-expenses"]["post"]["responses"]
    assert "not parseable JSON" in responses["400"]["description"]
    assert "Content-Type: application/json" in responses["415"]["description"]
