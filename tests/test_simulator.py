"""The provider simulator over real HTTP: shapes, deterministic data, limits, faults, stats."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from audit.cnpj import check_digits
from simulator.testing import SimulatorServer

REFERENCE = "2026-06-30"


def cnpj_from(n: int) -> str:
    base = f"{n:08d}0001"
    return base + check_digits(base)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer({"reference_date": REFERENCE}) as server:
        yield server


@pytest.fixture(autouse=True)
def fresh(sim: SimulatorServer) -> Iterator[httpx.Client]:
    sim.reset()
    with httpx.Client(base_url=sim.url, timeout=5) as client:
        yield client


def find(client: httpx.Client, want: str, start: int = 1000) -> str:
    """A CNPJ whose derived registration has status `want` ("missing" for not found)."""
    for n in range(start, start + 3000):
        cnpj = cnpj_from(n)
        reg = client.get(f"/_sim/registrations/{cnpj}").json()
        status = reg.get("status") if reg["found"] else "missing"
        if status == want:
            return cnpj
    raise AssertionError(f"no CNPJ with {want}")


def test_cnpjws_shape_matches_the_derived_registration(fresh: httpx.Client) -> None:
    cnpj = find(fresh, "BAIXADA")
    expected = fresh.get(f"/_sim/registrations/{cnpj}").json()
    body = fresh.get(f"/cnpjws/cnpj/{cnpj}").json()
    assert body["razao_social"] == expected["legal_name"]
    assert body["natureza_juridica"]["descricao"] == expected["legal_nature"]
    est = body["estabelecimento"]
    assert est["situacao_cadastral"] == "Baixada"
    assert est["data_situacao_cadastral"] == expected["status_date"]
    assert est["data_inicio_atividade"] == expected["opened_on"]
    assert est["atividade_principal"]["id"] == expected["main_cnae"]
    assert body["simples"]["mei"] in ("Sim", "Não")
    assert isinstance(body["socios"], list)
    assert expected["opened_on"] < expected["status_date"] <= REFERENCE
    # Deterministic: the same answer again.
    assert fresh.get(f"/cnpjws/cnpj/{cnpj}").json() == body


def test_minha_receita_shape_uses_numeric_status_codes(fresh: httpx.Client) -> None:
    codes = {"ATIVA": 2, "BAIXADA": 8, "INAPTA": 4, "SUSPENSA": 3, "NULA": 1}
    for status, code in codes.items():
        cnpj = find(fresh, status)
        body = fresh.get(f"/minha-receita/{cnpj}").json()
        expected = fresh.get(f"/_sim/registrations/{cnpj}").json()
        assert body["situacao_cadastral"] == code
        assert body["descricao_situacao_cadastral"] == status
        assert str(body["cnae_fiscal"]) == expected["main_cnae"]
        assert body["razao_social"] == expected["legal_name"]
        assert body["opcao_pelo_mei"] is expected["is_mei"]
        assert body["opcao_pelo_simples"] is expected["is_simples"]


def test_derived_registrations_cover_the_cases_audits_look_for(fresh: httpx.Client) -> None:
    seen: Counter[str] = Counter()
    recent = 0
    for n in range(2000, 2600):
        reg = fresh.get(f"/_sim/registrations/{cnpj_from(n)}").json()
        seen[reg["status"] if reg["found"] else "missing"] += 1
        if reg["found"] and reg["opened_on"] >= "2026-04-01":
            recent += 1
    assert seen["ATIVA"] > 400
    for rare in ("BAIXADA", "INAPTA", "SUSPENSA", "missing"):
        assert seen[rare] >= 3, seen
    assert recent >= 10


def test_unknown_is_404_and_invalid_is_400_on_both_registries(fresh: httpx.Client) -> None:
    missing = find(fresh, "missing")
    assert fresh.get(f"/cnpjws/cnpj/{missing}").status_code == 404
    assert fresh.get(f"/minha-receita/{missing}").status_code == 404
    assert fresh.get("/cnpjws/cnpj/11222333000180").status_code == 400
    assert fresh.get("/minha-receita/11222333000180").status_code == 400


def test_alphanumeric_cnpj_is_served(fresh: httpx.Client) -> None:
    cnpj = "12ABC34501DE35"
    reg = fresh.get(f"/_sim/registrations/{cnpj}").json()
    expected_status = 200 if reg["found"] else 404
    assert fresh.get(f"/cnpjws/cnpj/{cnpj}").status_code == expected_status
    assert fresh.get(f"/minha-receita/{cnpj.lower()}").status_code == expected_status


def test_explicit_registration_overrides_derived_data(fresh: httpx.Client) -> None:
    cnpj = find(fresh, "ATIVA")
    fresh.put(
        f"/_sim/registrations/{cnpj}",
        json={"status": "INAPTA", "status_date": "2025-02-03", "legal_name": "FORNECEDOR X"},
    ).raise_for_status()
    body = fresh.get(f"/cnpjws/cnpj/{cnpj}").json()
    assert body["razao_social"] == "FORNECEDOR X"
    assert body["estabelecimento"]["situacao_cadastral"] == "Inapta"
    assert body["estabelecimento"]["data_situacao_cadastral"] == "2025-02-03"
    fresh.put(f"/_sim/registrations/{cnpj}", json={"found": False}).raise_for_status()
    assert fresh.get(f"/minha-receita/{cnpj}").status_code == 404
    # An unknown CNPJ can be made to exist.
    missing = find(fresh, "missing")
    fresh.put(f"/_sim/registrations/{missing}", json={"legal_name": "NOVA"}).raise_for_status()
    assert fresh.get(f"/minha-receita/{missing}").json()["descricao_situacao_cadastral"] == "ATIVA"
    assert fresh.put(f"/_sim/registrations/{cnpj}", json={"colour": "x"}).status_code == 400


def test_cnpjws_rate_limit_answers_429_with_release_time(
    sim: SimulatorServer, fresh: httpx.Client
) -> None:
    sim.configure(cnpjws={"rate_per_minute": 3})
    cnpj = cnpj_from(4242)
    statuses = [fresh.get(f"/cnpjws/cnpj/{cnpj}").status_code for _ in range(4)]
    assert statuses[:3] != [429, 429, 429]
    assert 429 not in statuses[:3]
    limited = fresh.get(f"/cnpjws/cnpj/{cnpj}")
    assert statuses[3] == 429
    assert limited.status_code == 429
    body = limited.json()
    assert body["status"] == 429
    assert body["titulo"] == "Muitas requisições"
    assert "Liberação ocorrerá em" in body["detalhes"]
    assert "retry-after" not in limited.headers  # CNPJ.ws does not promise one
    sim.configure(cnpjws={"retry_after": True})
    retry_after = int(fresh.get(f"/cnpjws/cnpj/{cnpj}").headers["retry-after"])
    assert 1 <= retry_after <= 60
    stats = sim.stats()["cnpjws"]["cnpj"]
    assert stats["received"] == 6
    assert stats["over_limit"] == 3
    assert stats["accepted"] == 3
    assert stats["by_status"]["429"] == 3


def test_sliding_window_frees_budget_as_requests_age(
    sim: SimulatorServer, fresh: httpx.Client
) -> None:
    sim.configure(minha_receita={"rate_per_minute": 120, "window_seconds": 1})  # 2 per second
    cnpj = cnpj_from(77)
    first = [fresh.get(f"/minha-receita/{cnpj}").status_code for _ in range(3)]
    assert first.count(429) == 1
    time.sleep(1.05)
    assert fresh.get(f"/minha-receita/{cnpj}").status_code != 429


def test_fixed_window_resets_at_the_boundary(sim: SimulatorServer, fresh: httpx.Client) -> None:
    sim.configure(minha_receita={"rate_per_minute": 60, "window_seconds": 1, "window": "fixed"})
    cnpj = cnpj_from(78)
    # Align to the start of a window, then two requests in it: the second is over.
    time.sleep(1 - (time.time() % 1) + 0.05)
    assert fresh.get(f"/minha-receita/{cnpj}").status_code != 429
    assert fresh.get(f"/minha-receita/{cnpj}").status_code == 429
    time.sleep(1 - (time.time() % 1) + 0.05)
    assert fresh.get(f"/minha-receita/{cnpj}").status_code != 429


def test_commercial_tier_uses_the_token_header(sim: SimulatorServer, fresh: httpx.Client) -> None:
    sim.configure(cnpjws={"rate_per_minute": 1})
    cnpj = find(fresh, "ATIVA")
    for _ in range(3):
        response = fresh.get(f"/cnpjws/cnpj/{cnpj}", headers={"x_api_token": "local-token"})
        assert response.status_code == 200
    assert fresh.get(f"/cnpjws/cnpj/{cnpj}", headers={"x_api_token": "nope"}).status_code == 401
    stats = sim.stats()["cnpjws"]
    assert stats["cnpj_commercial"]["received"] == 4
    assert "cnpj" not in stats


def test_fail_next_outage_and_error_rate(sim: SimulatorServer, fresh: httpx.Client) -> None:
    cnpj = find(fresh, "ATIVA")
    sim.configure(cnpjws={"fail_next": 2, "fail_status": 503})
    assert [fresh.get(f"/cnpjws/cnpj/{cnpj}").status_code for _ in range(3)] == [503, 503, 200]
    sim.configure(cnpjws={"fail_next": 1, "fail_status": 429})
    assert fresh.get(f"/cnpjws/cnpj/{cnpj}").status_code == 429
    sim.configure(cnpjws={"outage_seconds": 0.5})
    assert fresh.get(f"/cnpjws/cnpj/{cnpj}").status_code == 503
    time.sleep(0.6)
    assert fresh.get(f"/cnpjws/cnpj/{cnpj}").status_code == 200
    sim.configure(cnpjws={"outage": True})
    assert fresh.get(f"/cnpjws/cnpj/{cnpj}").status_code == 503
    assert fresh.get("/_sim/config").json()["cnpjws"]["outage_until"] == "Infinity"
    sim.configure(cnpjws={"outage": False})
    assert fresh.get(f"/cnpjws/cnpj/{cnpj}").status_code == 200
    sim.configure(minha_receita={"error_rate": 1.0})
    assert fresh.get(f"/minha-receita/{cnpj}").status_code == 503
    stats = sim.stats()["cnpjws"]["cnpj"]
    assert stats["by_status"] == {"503": 4, "429": 1, "200": 3}
    assert stats["over_limit"] == 0  # forced failures are not the client's fault


def test_timeouts_and_latency(sim: SimulatorServer, fresh: httpx.Client) -> None:
    cnpj = find(fresh, "ATIVA")
    sim.configure(cnpjws={"fail_next": 1, "fail_status": "timeout", "timeout_seconds": 2})
    with pytest.raises(httpx.ReadTimeout):
        fresh.get(f"/cnpjws/cnpj/{cnpj}", timeout=0.5)
    sim.configure(minha_receita={"timeout_rate": 1.0, "timeout_seconds": 2})
    with pytest.raises(httpx.ReadTimeout):
        fresh.get(f"/minha-receita/{cnpj}", timeout=0.5)
    sim.configure(minha_receita={"timeout_rate": 0.0, "latency_ms": 300})
    started = time.monotonic()
    assert fresh.get(f"/minha-receita/{cnpj}").status_code == 200
    assert time.monotonic() - started >= 0.3


def pluggy_key(client: httpx.Client) -> str:
    response = client.post(
        "/pluggy/auth", json={"clientId": "local-client", "clientSecret": "local-secret"}
    )
    assert response.status_code == 200
    key: str = response.json()["apiKey"]
    return key


def test_pluggy_auth_and_paged_transactions(fresh: httpx.Client) -> None:
    bad = fresh.post("/pluggy/auth", json={"clientId": "local-client", "clientSecret": "x"})
    assert bad.status_code == 401
    params = {"accountId": "acc-1", "from": "2026-01-01", "to": "2026-06-30"}
    assert fresh.get("/pluggy/transactions", params=params).status_code == 401
    headers = {"X-API-KEY": pluggy_key(fresh)}
    too_big = fresh.get("/pluggy/transactions", params={**params, "pageSize": 501}, headers=headers)
    assert too_big.status_code == 400
    whole = fresh.get(
        "/pluggy/transactions", params={**params, "pageSize": 500}, headers=headers
    ).json()
    assert whole["page"] == 1
    assert whole["totalPages"] == 1
    assert 150 < whole["total"] == len(whole["results"]) < 500
    paged = []
    page, total_pages = 1, 1
    while page <= total_pages:
        body = fresh.get(
            "/pluggy/transactions", params={**params, "pageSize": 50, "page": page}, headers=headers
        ).json()
        total_pages = body["totalPages"]
        paged.extend(body["results"])
        page += 1
    assert total_pages == -(-whole["total"] // 50)
    assert paged == whole["results"]
    tx = next(t for t in paged if t["type"] == "DEBIT")
    assert tx["accountId"] == "acc-1"
    assert tx["amount"] < 0
    assert tx["status"] in ("POSTED", "PENDING")
    receiver = tx["paymentData"]["receiver"]["documentNumber"]
    assert receiver["type"] == "CNPJ"
    assert receiver["value"] == tx["merchant"]["cnpj"]
    # Deterministic per account and period; another account differs.
    again = fresh.get("/pluggy/transactions", params={**params, "pageSize": 500}, headers=headers)
    assert again.json()["results"] == whole["results"]
    other = fresh.get(
        "/pluggy/transactions",
        params={**params, "accountId": "acc-2", "pageSize": 500},
        headers=headers,
    ).json()
    assert other["results"] != whole["results"]


def test_pluggy_explicit_transactions_and_key_expiry(
    sim: SimulatorServer, fresh: httpx.Client
) -> None:
    sim.put_transactions(
        "acc-x",
        [
            {"id": "t1", "date": "2026-03-01", "amount": -150.5, "receiver_cnpj": "11222333000181"},
            {"id": "t2", "date": "2026-03-05", "amount": 99.0},
            {"id": "t3", "date": "2026-04-10", "amount": -10.0},
        ],
    )
    headers = {"X-API-KEY": pluggy_key(fresh)}
    body = fresh.get(
        "/pluggy/transactions",
        params={"accountId": "acc-x", "from": "2026-03-01", "to": "2026-03-31"},
        headers=headers,
    ).json()
    assert [t["id"] for t in body["results"]] == ["t1", "t2"]
    assert body["results"][0]["type"] == "DEBIT"
    assert body["results"][0]["paymentData"]["receiver"]["documentNumber"]["value"] == (
        "11222333000181"
    )
    fresh.post("/_sim/pluggy/expire-keys").raise_for_status()
    expired = fresh.get("/pluggy/transactions", params={"accountId": "acc-x"}, headers=headers)
    assert expired.status_code == 401


def test_pluggy_limit_is_per_endpoint_with_retry_after_60(
    sim: SimulatorServer, fresh: httpx.Client
) -> None:
    sim.configure(pluggy={"rate_per_minute": 2})
    key = pluggy_key(fresh)
    pluggy_key(fresh)
    limited = fresh.post(
        "/pluggy/auth", json={"clientId": "local-client", "clientSecret": "local-secret"}
    )
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "60"
    # The transactions endpoint has its own budget.
    params = {"accountId": "a", "from": "2026-01-01", "to": "2026-01-02"}
    assert fresh.get("/pluggy/transactions", params=params, headers={"X-API-KEY": key}).is_success
    stats = sim.stats()["pluggy"]
    assert stats["auth"]["over_limit"] == 1
    assert stats["transactions"]["over_limit"] == 0
    assert stats["transactions"]["by_key"] == {"a": 1}


def test_reset_forgets_counters_and_config(sim: SimulatorServer, fresh: httpx.Client) -> None:
    sim.configure(cnpjws={"rate_per_minute": 1})
    fresh.get(f"/cnpjws/cnpj/{cnpj_from(5)}")
    assert sim.stats()["cnpjws"]["cnpj"]["received"] == 1
    sim.reset()
    assert sim.stats() == {"cnpjws": {}, "minha_receita": {}, "pluggy": {}}
    assert fresh.get("/_sim/config").json()["cnpjws"]["rate_per_minute"] is None
    assert fresh.post("/_sim/config", json={"nope": {}}).status_code == 400
