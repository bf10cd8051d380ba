"""Provider clients against the simulator over real HTTP, with the limiter on a real Redis."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import time
from decimal import Decimal
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from redis import Redis

from audit.providers.base import (
    ProviderCircuitOpen,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
    RateLimitWait,
    Registration,
    RegistrationStatus,
)
from audit.providers.cnpj import CnpjWsLookup, MinhaReceitaLookup
from audit.providers.factory import build_providers
from audit.providers.http import Budget, json_object, parse_release_time, parse_retry_after
from audit.providers.pluggy import PluggyTransactions
from audit.ratelimit import RateLimiter
from audit.settings import Settings
from simulator.testing import SimulatorServer, free_port
from tests.support.helpers import BUSY_MACHINE_WAIT_SECONDS, cnpj_from


def settings_for(sim: SimulatorServer, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "cnpjws_base_url": f"{sim.url}/cnpjws",
        "minha_receita_base_url": f"{sim.url}/minha-receita",
        "pluggy_base_url": f"{sim.url}/pluggy",
        "cnpjws_rate_per_minute": 600.0,
        "minha_receita_rate_per_minute": 600.0,
        "pluggy_rate_per_minute": 600.0,
        "provider_timeout_seconds": 1.0,
        **overrides,
    }
    return Settings(**values)


def budget(redis: Redis, key: str, rate: float | None = 600.0, max_wait: float = 2.0) -> Budget:
    return Budget(RateLimiter(redis), key, rate, max_wait)


RECORD = {
    "legal_name": "ELEVADORES HORIZONTE LTDA",
    "status": "BAIXADA",
    "status_date": "2024-03-15",
    "opened_on": "2019-07-01",
    "main_cnae": "4329103",
    "legal_nature": "Sociedade Empresária Limitada",
    "legal_nature_code": "2062",
    "is_mei": False,
    "is_simples": True,
}
EXPECTED = {
    "found": True,
    "legal_name": "ELEVADORES HORIZONTE LTDA",
    "status": RegistrationStatus.BAIXADA,
    "status_date": dt.date(2024, 3, 15),
    "opened_on": dt.date(2019, 7, 1),
    "main_cnae": "4329103",
    "legal_nature": "Sociedade Empresária Limitada",
    "is_mei": False,
    "is_simples": True,
}


def fields(reg: Registration) -> dict[str, Any]:
    return {key: getattr(reg, key) for key in EXPECTED}


# CNPJ registries ---------------------------------------------------------------------------


def test_cnpjws_and_minha_receita_map_to_the_same_registration(
    sim: SimulatorServer, redis: Redis, http: httpx.Client
) -> None:
    cnpj = cnpj_from(10)
    sim.put_registration(cnpj, RECORD)
    ws = CnpjWsLookup(http, f"{sim.url}/cnpjws", budget(redis, "cnpjws")).lookup(cnpj)
    mr = MinhaReceitaLookup(http, f"{sim.url}/minha-receita", budget(redis, "mr")).lookup(cnpj)
    assert fields(ws) == EXPECTED
    assert fields(mr) == EXPECTED
    assert (ws.provider, mr.provider) == ("cnpjws", "minha_receita")
    assert ws.cnpj == mr.cnpj == cnpj


@pytest.mark.parametrize("status", list(RegistrationStatus))
def test_every_status_maps_from_both_registries(
    sim: SimulatorServer, redis: Redis, http: httpx.Client, status: RegistrationStatus
) -> None:
    cnpj = cnpj_from(20)
    sim.put_registration(cnpj, {**RECORD, "status": status.value})
    ws = CnpjWsLookup(http, f"{sim.url}/cnpjws", budget(redis, "cnpjws")).lookup(cnpj)
    mr = MinhaReceitaLookup(http, f"{sim.url}/minha-receita", budget(redis, "mr")).lookup(cnpj)
    assert ws.status is status
    assert mr.status is status


def test_masked_and_alphanumeric_input_is_looked_up_canonically(
    sim: SimulatorServer, redis: Redis, http: httpx.Client
) -> None:
    sim.put_registration("12ABC34501DE35", RECORD)
    lookup = CnpjWsLookup(http, f"{sim.url}/cnpjws", budget(redis, "cnpjws"))
    reg = lookup.lookup("12.abc.345/01de-35")
    assert reg.cnpj == "12ABC34501DE35"
    assert reg.found
    assert sim.stats()["cnpjws"]["cnpj"]["by_key"] == {"12ABC34501DE35": 1}


def test_unknown_cnpj_is_found_false_not_an_error(
    sim: SimulatorServer, redis: Redis, http: httpx.Client
) -> None:
    cnpj = cnpj_from(30)
    sim.put_registration(cnpj, {"found": False})
    for lookup in (
        CnpjWsLookup(http, f"{sim.url}/cnpjws", budget(redis, "cnpjws")),
        MinhaReceitaLookup(http, f"{sim.url}/minha-receita", budget(redis, "mr")),
    ):
        reg = lookup.lookup(cnpj)
        assert reg == Registration(cnpj=cnpj, found=False, provider=lookup.name)


def test_invalid_cnpj_is_rejected_without_spending_budget(
    sim: SimulatorServer, redis: Redis, http: httpx.Client
) -> None:
    lookup = CnpjWsLookup(http, f"{sim.url}/cnpjws", budget(redis, "cnpjws"))
    with pytest.raises(ProviderRejected):
        lookup.lookup("11.222.333/0001-80")
    assert sim.stats()["cnpjws"] == {}


def test_commercial_tier_sends_the_token(
    sim: SimulatorServer, redis: Redis, http: httpx.Client
) -> None:
    cnpj = cnpj_from(40)
    good = CnpjWsLookup(http, f"{sim.url}/cnpjws", budget(redis, "c"), token="local-token")
    assert good.lookup(cnpj).provider == "cnpjws"
    bad = CnpjWsLookup(http, f"{sim.url}/cnpjws", budget(redis, "c"), token="wrong")
    with pytest.raises(ProviderRejected, match="token"):
        bad.lookup(cnpj)
    assert sim.stats()["cnpjws"]["cnpj_commercial"]["by_status"] == {"200": 1, "401": 1}


def test_server_errors_timeouts_and_refused_connections_are_retryable(
    sim: SimulatorServer, redis: Redis, http: httpx.Client
) -> None:
    lookup = MinhaReceitaLookup(http, f"{sim.url}/minha-receita", budget(redis, "mr"))
    cnpj = cnpj_from(50)
    sim.configure(minha_receita={"fail_next": 1, "fail_status": 500})
    with pytest.raises(ProviderUnavailable, match="500"):
        lookup.lookup(cnpj)
    sim.configure(minha_receita={"fail_next": 1, "fail_status": "timeout", "timeout_seconds": 3})
    with pytest.raises(ProviderUnavailable, match="timeout"):
        lookup.lookup(cnpj)
    closed = MinhaReceitaLookup(http, f"http://127.0.0.1:{free_port()}", budget(redis, "x"))
    with pytest.raises(ProviderUnavailable, match="connection"):
        closed.lookup(cnpj)
    assert lookup.lookup(cnpj).cnpj == cnpj


def test_cnpjws_429_release_time_slows_the_whole_fleet(
    sim: SimulatorServer, redis: Redis, http: httpx.Client
) -> None:
    """No Retry-After header: the back-off comes from 'Liberação ocorrerá em ...'."""
    sim.configure(cnpjws={"rate_per_minute": 40, "window_seconds": 3})  # 2 per 3 s
    first = CnpjWsLookup(http, f"{sim.url}/cnpjws", budget(redis, "cnpjws", rate=None))
    first.lookup(cnpj_from(60))
    first.lookup(cnpj_from(61))
    with pytest.raises(ProviderRateLimited) as info:
        first.lookup(cnpj_from(62))
    assert info.value.retry_after is not None
    assert 1 <= info.value.retry_after <= 5
    # Another process sharing the budget now waits instead of hitting the provider.
    other = CnpjWsLookup(
        httpx.Client(timeout=2), f"{sim.url}/cnpjws", budget(redis, "cnpjws", max_wait=0.1)
    )
    with pytest.raises(RateLimitWait) as wait:
        other.lookup(cnpj_from(63))
    assert wait.value.wait_seconds > 0.5
    assert sim.stats()["cnpjws"]["cnpj"]["received"] == 3
    time.sleep(wait.value.wait_seconds + 0.1)
    assert other.lookup(cnpj_from(63)).found in (True, False)


def test_fallback_uses_the_next_registry_when_the_first_is_down(
    sim: SimulatorServer, redis: Redis
) -> None:
    """Done-means (4)."""
    cnpj = cnpj_from(70)
    sim.put_registration(cnpj, RECORD)
    providers = build_providers(
        settings_for(sim, cnpj_providers=["cnpjws", "minha_receita"]), redis
    )
    try:
        assert providers.cnpj.lookup(cnpj).provider == "cnpjws"
        sim.configure(cnpjws={"outage": True})
        reg = providers.cnpj.lookup(cnpj)
        assert reg.provider == "minha_receita"
        assert fields(reg) == EXPECTED
        sim.configure(minha_receita={"outage": True})
        with pytest.raises(ProviderUnavailable) as info:
            providers.cnpj.lookup(cnpj)
        assert not isinstance(info.value, ProviderRateLimited)
        sim.configure(cnpjws={"outage": False})
        assert providers.cnpj.lookup(cnpj).provider == "cnpjws"
    finally:
        providers.close()


def test_fallback_when_the_first_is_out_of_budget_and_order_is_configurable(
    sim: SimulatorServer, redis: Redis
) -> None:
    settings = settings_for(
        sim, cnpj_providers=["cnpjws", "minha_receita"], cnpjws_rate_per_minute=1.0
    )
    providers = build_providers(settings, redis)
    try:
        assert providers.cnpj.lookup(cnpj_from(80)).provider == "cnpjws"
        # cnpjws' next slot is a minute away: minha-receita answers instead.
        assert providers.cnpj.lookup(cnpj_from(81)).provider == "minha_receita"
        sim.configure(minha_receita={"outage": True})
        with pytest.raises(RateLimitWait) as info:
            providers.cnpj.lookup(cnpj_from(82))
        assert info.value.provider == "cnpjws"
        assert info.value.wait_seconds > 30
    finally:
        providers.close()
    reverse = build_providers(settings_for(sim, cnpj_providers=["minha_receita"]), redis)
    try:
        sim.configure(minha_receita={"outage": False})
        assert reverse.cnpj.lookup(cnpj_from(83)).provider == "minha_receita"
    finally:
        reverse.close()
    with pytest.raises(ValueError, match="unknown CNPJ provider"):
        build_providers(settings_for(sim, cnpj_providers=["receitaws"]), redis)


def test_release_time_and_retry_after_parsing() -> None:
    now = dt.datetime(2026, 3, 1, 19, 16, 0, tzinfo=dt.timezone(dt.timedelta(hours=-3)))
    text = "Excedido o limite. Liberação ocorrerá em Sun Mar 01 2026 19:16:39 GMT-0300 (Horário)"
    assert parse_release_time(text, now.timestamp()) == pytest.approx(40)
    iso = "Liberação ocorrerá em 2026-03-01T22:17:00Z"
    assert parse_release_time(iso, now.timestamp()) == pytest.approx(61)
    assert parse_release_time("Liberação ocorrerá em 01/03/2026 19:18:00", now.timestamp()) == (
        pytest.approx(121)
    )
    assert parse_release_time("nada aqui", now.timestamp()) is None
    assert parse_retry_after("60") == 60
    assert parse_retry_after("Sun, 01 Mar 2026 22:17:00 GMT", now.timestamp()) == (
        pytest.approx(60)
    )
    assert parse_retry_after("soon") is None


# Pluggy ------------------------------------------------------------------------------------


def pluggy(sim: SimulatorServer, redis: Redis, http: httpx.Client, **kw: Any) -> PluggyTransactions:
    return PluggyTransactions(
        http,
        f"{sim.url}/pluggy",
        kw.pop("client_id", "local-client"),
        kw.pop("client_secret", "local-secret"),
        redis,
        auth_budget=budget(redis, "pluggy:auth"),
        transactions_budget=budget(redis, "pluggy:transactions"),
        **kw,
    )


def test_pluggy_pages_through_500_at_a_time(
    sim: SimulatorServer, redis: Redis, http: httpx.Client
) -> None:
    """Done-means (5), pagination."""
    rows = [
        {
            "id": f"tx-{i:04d}",
            "date": (dt.date(2026, 1, 1) + dt.timedelta(days=i % 28)).isoformat(),
            "amount": -(10 + i),
            "receiver_cnpj": cnpj_from(i % 7),
            "description": f"PAGAMENTO {i}",
        }
        for i in range(1234)
    ]
    sim.put_transactions("acc-big", rows)
    records = pluggy(sim, redis, http).fetch("acc-big", dt.date(2026, 1, 1), dt.date(2026, 1, 31))
    assert len(records) == 1234
    assert len({r.id for r in records}) == 1234
    stats = sim.stats()["pluggy"]
    assert stats["transactions"]["received"] == 3  # 500 + 500 + 234
    assert stats["auth"]["received"] == 1
    one = next(r for r in records if r.id == "tx-0003")
    assert one.amount == Decimal("-13")
    assert one.type == "DEBIT"
    assert one.date == dt.date(2026, 1, 4)
    assert one.receiver_document == cnpj_from(3)
    assert one.account_id == "acc-big"


def test_pluggy_date_is_the_sao_paulo_day_and_period_is_inclusive(
    sim: SimulatorServer, redis: Redis, http: httpx.Client
) -> None:
    sim.put_transactions(
        "acc-tz",
        [
            {"id": "late", "date": "2026-02-02T01:30:00.000Z", "amount": 5},
            {"id": "edge", "date": "2026-02-28", "amount": -7},
            {"id": "out", "date": "2026-03-01", "amount": -9},
        ],
    )
    records = pluggy(sim, redis, http).fetch("acc-tz", dt.date(2026, 2, 1), dt.date(2026, 2, 28))
    by_id = {r.id: r for r in records}
    assert set(by_id) == {"late", "edge"}
    assert by_id["late"].date == dt.date(2026, 2, 1)  # 22:30 in São Paulo
    assert by_id["late"].type == "CREDIT"
    assert by_id["late"].receiver_document is None


def _fetch_many(redis_url: str, sim_url: str, fetches: int, out: Any, start: Any) -> None:
    start.wait(BUSY_MACHINE_WAIT_SECONDS)  # together, however long each took to import
    redis = Redis.from_url(redis_url)
    with httpx.Client(timeout=5) as http:
        client = PluggyTransactions(
            http,
            f"{sim_url}/pluggy",
            "local-client",
            "local-secret",
            redis,
            auth_budget=Budget(RateLimiter(redis), "pluggy:auth", 600.0, 2.0),
            transactions_budget=Budget(RateLimiter(redis), "pluggy:transactions", 6000.0, 2.0),
        )
        total = 0
        for i in range(fetches):
            total += len(client.fetch(f"acc-{i}", dt.date(2026, 1, 1), dt.date(2026, 1, 10)))
    out.put(total)


def test_pluggy_one_key_for_the_fleet(sim: SimulatorServer, redis: Redis, redis_url: str) -> None:
    """Done-means (5), token reuse: four processes starting together, one auth call."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start = ctx.Barrier(5)
    workers = [
        ctx.Process(target=_fetch_many, args=(redis_url, sim.url, 5, out, start)) for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    try:
        start.wait(BUSY_MACHINE_WAIT_SECONDS)
        totals = [out.get(timeout=60) for _ in workers]
    finally:  # none left behind to write the key into the next test's Redis
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
    assert all(total > 0 for total in totals)
    stats = sim.stats()["pluggy"]
    assert stats["auth"]["received"] == 1
    assert stats["transactions"]["received"] == 20
    assert redis.ttl("pluggy:api-key") > 6800


def test_pluggy_reauthenticates_once_when_the_key_is_refused(
    sim: SimulatorServer, redis: Redis, http: httpx.Client
) -> None:
    client = pluggy(sim, redis, http)
    client.fetch("acc-1", dt.date(2026, 1, 1), dt.date(2026, 1, 5))
    httpx.post(f"{sim.url}/_sim/pluggy/expire-keys").raise_for_status()
    client.fetch("acc-1", dt.date(2026, 1, 1), dt.date(2026, 1, 5))
    stats = sim.stats()["pluggy"]
    assert stats["auth"]["received"] == 2
    assert stats["transactions"]["by_status"] == {"200": 2, "401": 1}


def test_pluggy_key_is_kept_in_the_process_no_longer_than_in_redis(
    sim: SimulatorServer, redis: Redis, http: httpx.Client
) -> None:
    """A process reuses the key it read without asking Redis each time, but never past the
    key's expiry there: once Redis forgets the key, the next call authenticates again."""
    client = pluggy(sim, redis, http, key_reuse_seconds=1.0)
    first = client.api_key()
    redis.set("pluggy:api-key", "replaced-elsewhere", px=2000)
    assert client.api_key() == first  # kept locally (the key it read lives 1 s in Redis)
    time.sleep(1.1)
    assert client.api_key() == "replaced-elsewhere"  # read again once its own had expired
    redis.delete("pluggy:api-key")
    time.sleep(0.05)
    assert client.api_key() == "replaced-elsewhere"  # kept no longer than its 2 s in Redis
    time.sleep(2.0)
    assert client.api_key() not in (first, "replaced-elsewhere")
    assert sim.stats()["pluggy"]["auth"]["received"] == 2


def test_pluggy_bad_credentials_are_rejected(
    sim: SimulatorServer, redis: Redis, http: httpx.Client
) -> None:
    client = pluggy(sim, redis, http, client_secret="wrong")
    with pytest.raises(ProviderRejected, match="authentication"):
        client.fetch("acc-1", dt.date(2026, 1, 1), dt.date(2026, 1, 5))
    assert redis.get("pluggy:api-key") is None
    assert redis.get("pluggy:api-key:lock") is None


def test_pluggy_429_retry_after_holds_the_fleet_back(
    sim: SimulatorServer, redis: Redis, http: httpx.Client
) -> None:
    client = pluggy(sim, redis, http)
    client.api_key()
    sim.configure(pluggy={"fail_next": 1, "fail_status": 429, "retry_after_seconds": 3})
    with pytest.raises(ProviderRateLimited) as info:
        client.fetch("acc-1", dt.date(2026, 1, 1), dt.date(2026, 1, 5))
    assert info.value.retry_after == 3
    with pytest.raises(RateLimitWait) as wait:
        client.fetch("acc-1", dt.date(2026, 1, 1), dt.date(2026, 1, 5))
    assert 2 < wait.value.wait_seconds <= 3
    assert sim.stats()["pluggy"]["transactions"]["received"] == 1
    time.sleep(wait.value.wait_seconds + 0.05)
    assert client.fetch("acc-1", dt.date(2026, 1, 1), dt.date(2026, 1, 5))


# A task's retry policy, at the provider level -------------------------------------------------


def _task_like(
    redis_url: str,
    sim_url: str,
    cnpjs: list[str],
    max_attempts: int,
    out: Any,
    ready: Any = None,
    go: Any = None,
) -> None:
    """Look every CNPJ up the way the audit task does: limiter waits and 429s reschedule
    without counting; other provider failures count, with backoff; max_attempts then dead.

    ready/go: a start line, so that faults set after every process is up are all met by it
    (a spawned process can take seconds to start on a busy machine)."""
    redis = Redis.from_url(redis_url)
    settings = Settings(
        cnpjws_base_url=f"{sim_url}/cnpjws",
        minha_receita_base_url=f"{sim_url}/minha-receita",
        cnpj_providers=["cnpjws"],
        cnpjws_rate_per_minute=300.0,
        provider_timeout_seconds=1.0,
        rate_limit_max_wait_seconds=0.5,
        pluggy_client_secret=SecretStr("local-secret"),
    )
    providers = build_providers(settings, redis)
    outcome = {"success": 0, "dead": 0, "reschedules": 0, "failed_attempts": 0}
    if ready is not None and go is not None:
        ready.release()
        go.wait(timeout=120)
    for cnpj in cnpjs:
        attempts = 0
        while True:
            try:
                providers.cnpj.lookup(cnpj)
                outcome["success"] += 1
                break
            except (RateLimitWait, ProviderRateLimited, ProviderCircuitOpen) as exc:
                # Pacing and an open breaker wait uncounted, as the audit task does.
                outcome["reschedules"] += 1
                wait = exc.retry_after if isinstance(exc, ProviderRateLimited) else exc.wait_seconds
                time.sleep(min(wait or 0.5, 5.0))
            except ProviderUnavailable:
                attempts += 1
                outcome["failed_attempts"] += 1
                if attempts >= max_attempts:
                    outcome["dead"] += 1
                    break
                time.sleep(min(0.5 * 2 ** (attempts - 1), 8.0))
    providers.close()
    out.put(outcome)


@pytest.mark.slow
def test_429_storm_and_outage_end_in_success(
    sim: SimulatorServer, redis: Redis, redis_url: str
) -> None:
    """Done-means (3) at the provider level: 4 processes through a 4 s outage and then a
    storm of 12 429s; every lookup succeeds and nothing is dead-lettered."""
    ctx = multiprocessing.get_context("spawn")
    out, ready, go = ctx.Queue(), ctx.Semaphore(0), ctx.Event()
    workers = [
        ctx.Process(
            target=_task_like,
            args=(
                redis_url,
                sim.url,
                [cnpj_from(1000 * p + i) for i in range(10)],
                5,
                out,
                ready,
                go,
            ),
        )
        for p in range(4)
    ]
    for worker in workers:
        worker.start()
    for _ in workers:
        assert ready.acquire(timeout=120), "a lookup process did not start"
    sim.configure(
        cnpjws={"fail_next": 12, "fail_status": 429, "retry_after": True, "outage_seconds": 4}
    )
    go.set()
    outcomes = [out.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=10)
    stats = sim.stats()["cnpjws"]["cnpj"]
    print(f"\nstorm: {outcomes} served {stats['by_status']}")
    assert sum(o["success"] for o in outcomes) == 40
    assert sum(o["dead"] for o in outcomes) == 0
    assert stats["by_status"]["429"] == 12
    assert stats["by_status"]["503"] > 0  # the outage was felt
    assert stats["over_limit"] == 0


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            b'{"results": [{"amount": -10.5}], "totalPages": 1}',
            {"results": [{"amount": -10.5}], "totalPages": 1},
        ),
        ('\ufeff{"apiKey": "k\u00e9"}'.encode(), {"apiKey": "k\u00e9"}),  # a BOM
        ('{"apiKey": "k"}'.encode("utf-16"), {"apiKey": "k"}),
        (b'{"amount": NaN}', None),  # the standard decoder's reading, as before
    ],
)
def test_provider_json_is_decoded_as_before(content: bytes, expected: object) -> None:
    body = json_object("pluggy", httpx.Response(200, content=content))
    if expected is None:
        assert body["amount"] != body["amount"]  # NaN
    else:
        assert body == expected


@pytest.mark.parametrize("content", [b"<html>busy</html>", b"[1, 2]", b""])
def test_provider_answers_that_are_no_json_object_are_failures(content: bytes) -> None:
    with pytest.raises(ProviderUnavailable, match=r"not a JSON object|not JSON"):
        json_object("pluggy", httpx.Response(200, content=content))
