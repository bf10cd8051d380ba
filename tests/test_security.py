"""Authentication on every route, secrets kept out of logs, queues and errors, and the
per-tenant request rate limit (429 with Retry-After)."""

from __future__ import annotations

import ast
import base64
import contextlib
import json
import re
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute
from redis import Redis
from sqlalchemy import select
from starlette.routing import BaseRoute

from api.main import app
from audit.db import session_scope, upgrade_database
from audit.models import ApiKey, AuditLogEntry, Batch, DeadLetter
from tests.support.helpers import (
    BUSY_MACHINE_WAIT_SECONDS,
    active_registration,
    expense,
    make_cnpj,
)
from tests.support.platform import Platform, launch_platform, sqlite_platform_for, sqlite_url

PUBLIC = {"/healthz", "/readyz", "/metrics"}
# FastAPI's own documentation of the API (the schema and its viewers): no data, no actions.
DOCUMENTATION = {app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", lambda _: str(uuid.uuid4()), path)


def walk(routes: Sequence[BaseRoute], prefix: str = "") -> Iterator[tuple[str, BaseRoute]]:
    """Every route with its full path, into included routers (FastAPI keeps those nested)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            inner_prefix = prefix + getattr(route.include_context, "prefix", "")  # type: ignore[attr-defined]
            yield from walk(included.routes, inner_prefix)
        else:
            yield prefix + getattr(route, "path", ""), route


def protected_routes() -> list[tuple[str, str]]:
    routes: list[tuple[str, str]] = []
    for path, route in walk(app.routes):
        if path in PUBLIC or path in DOCUMENTATION:
            continue
        assert isinstance(route, APIRoute), f"{path} is not an API route: who guards it?"
        routes.extend((method, path) for method in sorted(route.methods or ()))
    documented = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
        if path not in PUBLIC
    }
    assert documented <= set(routes), documented - set(routes)  # the walk missed nothing
    return routes


@pytest.fixture(scope="module")
def platform(
    tmp_path_factory: pytest.TempPathFactory, private_redis_module: str
) -> Iterator[Platform]:
    with sqlite_platform_for(
        tmp_path_factory,
        private_redis_module,
        worker=False,
        extra_env={
            "CNPJWS_TOKEN": f"cnpjws-token-{secrets.token_hex(12)}",
            "PLUGGY_CLIENT_SECRET": f"pluggy-secret-{secrets.token_hex(12)}",
            "MAX_ATTEMPTS": "2",
            "RETRY_BACKOFF_BASE_SECONDS": "0.1",
        },
    ) as running:
        yield running


@pytest.fixture(scope="module")
def private_redis_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """This module reads every key of its Redis, so it has one of its own."""
    from cli.processes import free_port, start_redis

    port = free_port()
    base = tmp_path_factory.mktemp("redis-security")
    process = start_redis(port, base / "data", base)
    yield f"redis://127.0.0.1:{port}"
    process.stop()


def test_every_route_but_health_metrics_and_docs_requires_a_key(platform: Platform) -> None:
    routes = protected_routes()
    assert len(routes) >= 14, routes  # the walk found the API
    with httpx.Client(base_url=platform.api_url, timeout=10) as client:
        for method, path in routes:
            for headers in (
                {},
                {"X-API-Key": "ca_" + secrets.token_urlsafe(32)},
                {"X-API-Key": ""},
            ):
                response = client.request(method, concrete(path), json={}, headers=headers)
                assert response.status_code == 401, (method, path, headers, response.text)
                assert response.headers["WWW-Authenticate"] == "ApiKey"
        for path in ("/healthz", "/readyz"):
            assert client.get(path).status_code == 200
    schema = app.openapi()
    for method, path in routes:
        operation = schema["paths"][path][method.lower()]
        assert operation.get("security") == [{"APIKeyHeader": []}], (method, path)


def test_a_revoked_key_is_refused_and_keys_are_stored_hashed(platform: Platform) -> None:
    tenant_id, key = platform.new_tenant("revocable")
    with platform.client(key) as client:
        assert client.get("/dead-letters").status_code == 200
    with session_scope(platform.database_url) as session:
        stored = session.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant_id)).one()
        key_id, key_hash, prefix = stored.id, stored.key_hash, stored.prefix
    assert key not in key_hash
    assert key_hash != key
    assert len(key_hash) == 64
    assert key.startswith(prefix)
    assert len(prefix) <= 10
    env = {**platform.env, "PATH": "/usr/bin:/bin"}
    listed = subprocess.run(
        [sys.executable, "-m", "cli", "keys", "list", tenant_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=BUSY_MACHINE_WAIT_SECONDS,
        check=True,
    )
    assert key_id in listed.stdout
    assert key not in listed.stdout
    subprocess.run(
        [sys.executable, "-m", "cli", "keys", "revoke", key_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=BUSY_MACHINE_WAIT_SECONDS,
        check=True,
    )
    with platform.client(key) as client:
        assert client.get("/dead-letters").status_code == 401


def redis_text(url: str) -> str:
    """Every value in the platform's Redis database, as text: queues, unacked, results."""
    client = Redis.from_url(url, decode_responses=True)
    parts: list[str] = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == "string":
            parts.append(repr(client.get(key)))
        elif kind == "list":
            parts.extend(map(repr, client.lrange(key, 0, -1)))
        elif kind == "hash":
            parts.extend(map(repr, client.hgetall(key).values()))
        elif kind == "zset":
            parts.extend(map(repr, client.zrange(key, 0, -1)))
        elif kind == "set":
            parts.extend(map(repr, client.smembers(key)))
        parts.append(repr(key))
    client.close()
    return "\n".join(parts + [decoded_bodies(part) for part in parts])


def decoded_bodies(text: str) -> str:
    """Kombu stores message bodies base64-encoded: decode them, or a grep sees nothing."""
    found: list[str] = []

    def visit(node: object) -> None:
        if isinstance(node, dict):
            body = node.get("body")
            encoding = node.get("properties", {}).get("body_encoding")
            if isinstance(body, str) and encoding == "base64":
                found.append(base64.b64decode(body).decode("utf-8", "replace"))
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    with contextlib.suppress(ValueError, SyntaxError):
        visit(json.loads(ast.literal_eval(text)))
    return "\n".join(found)


def forget_pluggy_api_key(url: str) -> None:
    client = Redis.from_url(url)
    for key in client.scan_iter(match="pluggy*"):
        client.delete(key)
    client.close()


def test_keys_and_provider_credentials_never_leak(platform: Platform) -> None:
    token = platform.env["CNPJWS_TOKEN"]
    pluggy_secret = platform.env["PLUGGY_CLIENT_SECRET"]
    with platform.sim() as sim:
        sim.post(
            "/_sim/config",
            json={"cnpjws": {"tokens": [token]}, "pluggy": {"client_secret": pluggy_secret}},
        ).raise_for_status()
    supplier = make_cnpj(f"secret-{uuid.uuid4()}")
    with platform.sim() as sim:
        sim.put(f"/_sim/registrations/{supplier}", json=active_registration()).raise_for_status()
    condominium = platform.create_condominium(account_id=f"acct-{uuid.uuid4().hex[:8]}")
    body = {"condominium_id": condominium, "expenses": [expense("s1", supplier)]}
    with platform.client() as client:
        # Queued while no worker runs: the message bodies sit in Redis to be read.
        good = client.post("/batch-expenses", json=body).json()["task_id"]
        queued = redis_text(platform.redis_url)
        platform.start_worker("worker", concurrency=1)
        assert platform.wait_for_status(good, {"SUCCESS", "FAILURE"})["status"] == "SUCCESS"
        # Failures write errors: a 503 burst, then credentials the providers refuse.
        platform.configure_simulator(cnpjws={"fail_next": 1})
        retried = client.post("/batch-expenses", json=body).json()["task_id"]
        platform.wait_for_status(retried, {"SUCCESS", "FAILURE"})
        with platform.sim() as sim:
            sim.post(
                "/_sim/config",
                json={"cnpjws": {"tokens": ["another"]}, "pluggy": {"client_secret": "x"}},
            ).raise_for_status()
            sim.post("/_sim/reset", json={"keep_config": True}).raise_for_status()
        forget_pluggy_api_key(platform.redis_url)  # so the refused secret is really sent
        refused = client.post("/batch-expenses", json=body).json()["task_id"]
        final = platform.wait_for_status(refused, {"SUCCESS", "FAILURE"}, timeout=60)
        answers = [
            client.get(f"/tasks/{task}").text + client.get(f"/batches/{task}/audit-log").text
            for task in (good, retried, refused)
        ] + [client.get("/dead-letters").text]
    assert final["status"] == "FAILURE", final
    assert "refused" in final["error"] or "not authorised" in final["error"]

    with session_scope(platform.database_url) as session:
        stored = "\n".join(
            [repr(r.detail) for r in session.scalars(select(AuditLogEntry))]
            + [f"{d.error} {d.payload}" for d in session.scalars(select(DeadLetter))]
            + [f"{b.error} {b.summary}" for b in session.scalars(select(Batch))]
        )
    logs = "\n".join(
        path.read_text(errors="replace")
        for path in Path(platform.log_dir).glob("*.log")
        if not path.name.startswith("simulator")  # the provider itself may log its tokens
    )
    places = {
        "queued messages": queued,
        "redis after the run": redis_text(platform.redis_url),
        "API and worker logs": logs,
        "API answers": "\n".join(answers),
        "stored errors and audit log": stored,
    }
    assert f'[["{good}"]' in queued  # the snapshot saw the message body, decoded
    for secret_name, secret in (
        ("API key", platform.api_key),
        ("CNPJWS_TOKEN", token),
        ("PLUGGY_CLIENT_SECRET", pluggy_secret),
    ):
        for place, text in places.items():
            assert secret not in text, f"{secret_name} found in {place}"


def test_per_tenant_rate_limit_answers_429_with_retry_after(
    tmp_path_factory: pytest.TempPathFactory, redis_server: str
) -> None:
    database_url = sqlite_url(tmp_path_factory.mktemp("db"))
    upgrade_database(database_url)
    limited = launch_platform(
        tmp_path_factory,
        redis_server,
        database_url,
        worker=False,
        extra_env={"API_RATE_PER_MINUTE": "30", "API_RATE_BURST": "5"},
    )
    try:
        _, other_key = limited.new_tenant("neighbour")
        with limited.client() as client, limited.client(other_key) as other:
            codes = [client.get("/dead-letters").status_code for _ in range(12)]
            assert codes[:5] == [200] * 5, codes
            assert codes.count(429) >= 5, codes
            refused = client.get("/dead-letters")
            assert refused.status_code == 429
            retry_after = int(refused.headers["Retry-After"])
            assert 1 <= retry_after <= 3
            assert "too many requests" in refused.json()["detail"]
            # Another tenant has its own budget.
            assert other.get("/dead-letters").status_code == 200
            time.sleep(retry_after)
            assert client.get("/dead-letters").status_code == 200
            # Health stays outside the limit.
            assert client.get("/healthz").status_code == 200
    finally:
        limited.stop()
