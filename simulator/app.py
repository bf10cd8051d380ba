"""The simulator's HTTP app: provider paths, and the `/_sim` control paths for tests."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import random
import secrets
import time
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from audit.cnpj import InvalidCNPJ, normalize_cnpj
from simulator import data
from simulator.config import PROVIDERS, ProviderConfig, SimConfig
from simulator.state import SimState

BRASILIA = ZoneInfo("America/Sao_Paulo")
_WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def release_text(at: float) -> str:
    """A release time the way CNPJ.ws writes it (JavaScript's Date.toString, Brasília)."""
    local = dt.datetime.fromtimestamp(at, BRASILIA)
    offset = local.strftime("%z")
    return (
        f"{_WEEKDAYS[local.weekday()]} {_MONTHS[local.month - 1]} {local.day:02d} {local.year} "
        f"{local.strftime('%H:%M:%S')} GMT{offset} (Horário Padrão de Brasília)"
    )


def _too_many(provider: str, wait: float, config: ProviderConfig, now: float) -> JSONResponse:
    wait = config.retry_after_seconds if config.retry_after_seconds is not None else wait
    headers = {"Retry-After": str(max(1, math.ceil(wait)))} if config.retry_after else {}
    body: dict[str, Any]
    if provider == "cnpjws":
        body = {
            "status": 429,
            "titulo": "Muitas requisições",
            "detalhes": (
                "Excedido o limite máximo de consultas por minuto. "
                f"Liberação ocorrerá em {release_text(math.ceil(now + wait))}"
            ),
        }
    elif provider == "pluggy":
        body = {"code": 429, "message": "Too Many Requests"}
    else:
        body = {"message": "Too many requests"}
    return JSONResponse(body, status_code=429, headers=headers)


def _error(provider: str, status: int, message: str) -> JSONResponse:
    if provider == "cnpjws":
        return JSONResponse(
            {"status": status, "titulo": message, "detalhes": message}, status_code=status
        )
    if provider == "pluggy":
        return JSONResponse({"code": status, "message": message}, status_code=status)
    return JSONResponse({"message": message}, status_code=status)


def create_app(config: SimConfig | None = None) -> FastAPI:
    """The simulator app; `config` is what `/_sim/reset` returns to."""
    initial = (config or SimConfig()).model_copy(deep=True)
    app = FastAPI(title="condo-audit provider simulator", docs_url=None, redoc_url=None)
    app.state.config = initial.model_copy(deep=True)
    app.state.sim = SimState()
    rng = random.Random()

    def cfg() -> SimConfig:
        current: SimConfig = app.state.config
        return current

    def sim() -> SimState:
        current: SimState = app.state.sim
        return current

    def today() -> dt.date:
        return cfg().reference_date or dt.datetime.now(BRASILIA).date()

    def registration(cnpj: str) -> dict[str, Any]:
        derived = data.derived_registration(cnpj, cfg().seed, today())
        explicit = sim().registrations.get(cnpj)
        if explicit is None:
            return derived
        if explicit.get("found") is False:
            return {"found": False}
        merged = {key: value for key, value in derived.items() if key != "found"}
        merged.update(explicit)
        merged["found"] = True
        if not derived.get("found"):
            merged.setdefault("status", "ATIVA")
        return merged

    async def serve(
        provider: str,
        endpoint: str,
        key: str | None,
        produce: Callable[[], Response],
        rate: float | str | None = "default",
    ) -> Response:
        """Apply the provider's limit and faults, then answer with `produce()`."""
        now = time.time()
        pconfig = cfg().provider(provider)
        stats = sim().endpoint_stats(provider, endpoint)
        stats.arrive(now, key)
        limit = pconfig.rate_per_minute if rate == "default" else rate
        assert not isinstance(limit, str)
        wait = sim().window(provider, endpoint).admit(now, pconfig, limit)
        response: Response
        if wait > 0:
            stats.over_limit += 1
            response = _too_many(provider, wait, pconfig, now)
        else:
            stats.accept(now)
            response = await faulted(provider, pconfig, now) or produce()
        stats.served(response.status_code)
        return response

    async def faulted(provider: str, pconfig: ProviderConfig, now: float) -> Response | None:
        if pconfig.outage_until is not None:
            if now < pconfig.outage_until:
                return _error(provider, 503, "Serviço indisponível")
            pconfig.outage_until = None
        if pconfig.fail_next > 0:
            pconfig.fail_next -= 1
            if pconfig.fail_status == "timeout":
                await asyncio.sleep(pconfig.timeout_seconds)
                return _error(provider, 504, "Tempo esgotado")
            if pconfig.fail_status == 429:
                return _too_many(provider, 1.0, pconfig, now)
            return _error(provider, int(pconfig.fail_status), "Falha simulada")
        if pconfig.error_rate and rng.random() < pconfig.error_rate:
            return _error(provider, 503, "Serviço indisponível")
        if pconfig.timeout_rate and rng.random() < pconfig.timeout_rate:
            await asyncio.sleep(pconfig.timeout_seconds)
            return _error(provider, 504, "Tempo esgotado")
        if pconfig.latency_ms:
            await asyncio.sleep(pconfig.latency_ms / 1000.0)
        return None

    # CNPJ.ws ------------------------------------------------------------------------------

    @app.get("/cnpjws/cnpj/{cnpj}")
    async def cnpjws_lookup(cnpj: str, request: Request) -> Response:
        token = request.headers.get("x_api_token") or request.headers.get("x-api-token")
        endpoint, rate = "cnpj", cfg().cnpjws.rate_per_minute
        if token is not None:
            endpoint, rate = "cnpj_commercial", cfg().cnpjws.commercial_rate_per_minute

        def produce() -> Response:
            if token is not None and token not in cfg().cnpjws.tokens:
                return _error("cnpjws", 401, "Token inválido")
            try:
                canonical = normalize_cnpj(cnpj)
            except InvalidCNPJ:
                return _error("cnpjws", 400, "CNPJ inválido")
            reg = registration(canonical)
            if not reg.get("found"):
                return _error("cnpjws", 404, "Não encontrado")
            return JSONResponse(data.cnpjws_body(canonical, reg))

        return await serve("cnpjws", endpoint, cnpj.upper(), produce, rate)

    # minha-receita ------------------------------------------------------------------------

    @app.get("/minha-receita/{cnpj}")
    async def minha_receita_lookup(cnpj: str) -> Response:
        def produce() -> Response:
            try:
                canonical = normalize_cnpj(cnpj)
            except InvalidCNPJ:
                return _error("minha_receita", 400, f"CNPJ {cnpj} inválido.")
            reg = registration(canonical)
            if not reg.get("found"):
                return _error("minha_receita", 404, f"CNPJ {canonical} não encontrado.")
            return JSONResponse(data.minha_receita_body(canonical, reg))

        return await serve("minha_receita", "cnpj", cnpj.upper(), produce)

    # Pluggy -------------------------------------------------------------------------------

    @app.post("/pluggy/auth")
    async def pluggy_auth(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            body = None

        def produce() -> Response:
            pconfig = cfg().pluggy
            if (
                not isinstance(body, dict)
                or body.get("clientId") != pconfig.client_id
                or body.get("clientSecret") != pconfig.client_secret
            ):
                return _error("pluggy", 401, "Invalid credentials")
            api_key = secrets.token_urlsafe(24)
            sim().api_keys[api_key] = time.time() + pconfig.api_key_ttl_seconds
            return JSONResponse({"apiKey": api_key})

        client_id = body.get("clientId") if isinstance(body, dict) else None
        return await serve("pluggy", "auth", str(client_id), produce)

    @app.get("/pluggy/transactions")
    async def pluggy_transactions(request: Request) -> Response:
        params = request.query_params
        account_id = params.get("accountId")

        def produce() -> Response:
            api_key = request.headers.get("x-api-key", "")
            expires = sim().api_keys.get(api_key)
            if expires is None or expires < time.time():
                return _error("pluggy", 401, "Unauthorized")
            if not account_id:
                return _error("pluggy", 400, "accountId is required")
            try:
                page = int(params.get("page", "1"))
                page_size = int(params.get("pageSize", "20"))
                start = dt.date.fromisoformat(params.get("from", "1900-01-01")[:10])
                end = dt.date.fromisoformat(params.get("to", today().isoformat())[:10])
            except ValueError:
                return _error("pluggy", 400, "Invalid parameters")
            if page < 1 or not 1 <= page_size <= 500:
                return _error("pluggy", 400, "page must be >= 1 and pageSize between 1 and 500")
            explicit = sim().transactions.get(account_id)
            if explicit is None:
                rows = data.derived_transactions(account_id, start, end, cfg().seed)
            else:
                rows = [tx for tx in explicit if start <= data.transaction_day(tx) <= end]
            rows.sort(key=lambda tx: (str(tx["date"]), str(tx["id"])))
            total = len(rows)
            return JSONResponse(
                {
                    "total": total,
                    "totalPages": math.ceil(total / page_size),
                    "page": page,
                    "results": rows[(page - 1) * page_size : page * page_size],
                }
            )

        return await serve("pluggy", "transactions", account_id, produce)

    # Control ------------------------------------------------------------------------------

    @app.get("/_sim/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/_sim/config")
    async def get_config() -> Response:
        return JSONResponse(json.loads(cfg().model_dump_json()))

    @app.post("/_sim/config")
    async def set_config(request: Request) -> Response:
        """Merge per-provider settings; `outage_seconds` (or `outage`: true/false) is sugar."""
        body = await request.json()
        current = cfg().model_dump()
        for name, changes in body.items():
            if name in ("reference_date", "seed"):
                current[name] = changes
                continue
            if name not in PROVIDERS or not isinstance(changes, dict):
                return JSONResponse({"detail": f"unknown provider {name!r}"}, status_code=400)
            changes = dict(changes)
            if "outage_seconds" in changes:
                seconds = changes.pop("outage_seconds")
                changes["outage_until"] = None if seconds is None else time.time() + seconds
            if "outage" in changes:
                changes["outage_until"] = math.inf if changes.pop("outage") else None
            current[name].update(changes)
        try:
            app.state.config = SimConfig.model_validate(current)
        except ValueError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=400)
        return JSONResponse(json.loads(cfg().model_dump_json()))

    @app.get("/_sim/stats")
    async def stats() -> dict[str, Any]:
        return sim().stats_dict()

    @app.post("/_sim/reset")
    async def reset(request: Request) -> dict[str, str]:
        """Forget counters, windows, keys and explicit data; `keep_config` keeps the config."""
        raw = await request.body()
        keep = bool(raw) and bool((await request.json()).get("keep_config"))
        app.state.sim = SimState()
        if not keep:
            app.state.config = initial.model_copy(deep=True)
        return {"status": "reset"}

    @app.put("/_sim/registrations/{cnpj}")
    async def put_registration(cnpj: str, request: Request) -> Response:
        record = await request.json()
        if not isinstance(record, dict):
            return JSONResponse({"detail": "expected an object"}, status_code=400)
        unknown = set(record) - set(data.REGISTRATION_FIELDS)
        if unknown:
            return JSONResponse({"detail": f"unknown fields {sorted(unknown)}"}, status_code=400)
        key = cnpj.upper()
        sim().registrations[key] = record
        return JSONResponse(registration(key))

    @app.get("/_sim/registrations/{cnpj}")
    async def get_registration(cnpj: str) -> dict[str, Any]:
        """What the lookup endpoints would answer, in neutral field names."""
        return registration(cnpj.upper())

    @app.put("/_sim/accounts/{account_id}/transactions")
    async def put_transactions(account_id: str, request: Request) -> Response:
        rows = await request.json()
        if not isinstance(rows, list):
            return JSONResponse({"detail": "expected a list"}, status_code=400)
        sim().transactions[account_id] = [
            data.normalize_explicit_transaction(account_id, row, index)
            for index, row in enumerate(rows)
        ]
        return JSONResponse({"account_id": account_id, "count": len(rows)})

    @app.post("/_sim/pluggy/expire-keys")
    async def expire_keys() -> dict[str, int]:
        """Invalidate every issued API key, as if they had all reached their 2 hours."""
        count = len(sim().api_keys)
        sim().api_keys.clear()
        return {"expired": count}

    return app
